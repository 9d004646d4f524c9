//! Thin, typed wrappers over the Linux system calls PID 1 needs (mounts, module loading, console,
//! signals, power-off), the rtnetlink messages that configure interfaces, and link-proof mode/owner changes
//! inside the workload's root file system ([`beneath`]).
//!
//! This is the one module of the agent allowed to talk to the kernel below std. Everything here goes
//! through `nix`'s safe wrappers or plain sockets, so no `unsafe` is needed (the crate keeps
//! `forbid(unsafe_code)`); every call returns the crate's [`Error`] naming the call and its target.

pub mod beneath;
pub mod netlink;

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::path::Path;

use nix::mount::MsFlags;

use crate::error::{Error, Result};

fn sys_err(call: &'static str, target: &Path, err: impl std::fmt::Display) -> Error {
    Error::System { call, reason: format!("{}: {err}", target.display()) }
}

/// Mounts `fstype` at `target` (created if missing) unless something is already mounted there.
pub fn mount_fs(fstype: &str, target: &Path, flags: MsFlags, data: Option<&str>) -> Result<bool> {
    if is_mount_point(target) {
        return Ok(false);
    }
    std::fs::create_dir_all(target).map_err(|e| sys_err("mkdir", target, e))?;
    nix::mount::mount(Some(fstype), target, Some(fstype), flags, data)
        .map_err(|e| sys_err("mount", target, e))?;
    Ok(true)
}

/// True when `path` is the root of a mounted file system (its device differs from its parent's).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(own), Some(parent)) = (std::fs::metadata(path), path.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != own.dev())
}

/// Loads one kernel module from an uncompressed `.ko` file with `finit_module(2)`.
/// Returns `Ok(false)` when the module was already loaded (built in or loaded before).
pub fn load_module(path: &Path) -> Result<bool> {
    let file = File::open(path).map_err(|e| sys_err("open", path, e))?;
    let no_params = CString::default();
    match nix::kmod::finit_module(&file, &no_params, nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EEXIST) => Ok(false),
        Err(e) => Err(sys_err("finit_module", path, e)),
    }
}

/// Points stdin, stdout and stderr at `/dev/console` (the kernel may start init without them when
/// the initrd has no `/dev/console` node; devtmpfs provides it).
pub fn attach_console() -> Result<()> {
    let path = Path::new("/dev/console");
    let console =
        OpenOptions::new().read(true).write(true).open(path).map_err(|e| sys_err("open", path, e))?;
    nix::unistd::dup2_stdin(&console).map_err(|e| sys_err("dup2", path, e))?;
    nix::unistd::dup2_stdout(&console).map_err(|e| sys_err("dup2", path, e))?;
    nix::unistd::dup2_stderr(&console).map_err(|e| sys_err("dup2", path, e))?;
    Ok(())
}

/// Makes Ctrl-Alt-Del send SIGINT to PID 1 instead of rebooting at once.
pub fn route_ctrl_alt_del_to_init() -> Result<()> {
    nix::sys::reboot::set_cad_enabled(false).map_err(|e| sys_err("reboot(CAD_OFF)", Path::new("/"), e))
}

/// Unblocks every signal in the calling thread (threads it starts afterwards inherit the empty mask).
///
/// PID 1 blocks SIGTERM, SIGINT, SIGCHLD, SIGHUP and SIGPWR to take them from a signalfd, and the signal mask
/// survives fork and exec: the agent child it starts (and, through it, crun and the workload) began with those
/// signals blocked, so the agent never saw the SIGTERM PID 1 sends it at power-off (measured in the VM:
/// `SigBlk: 20014003`, SIGTERM pending) and the power button took PID 1's whole stop grace.
///
/// # Errors
/// When the kernel refuses (it does not for `SIG_SETMASK` with a valid set).
pub fn unblock_all_signals() -> Result<()> {
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
    .map_err(|e| sys_err("pthread_sigmask(SIG_SETMASK, {})", Path::new("/"), e))
}

/// Flushes file systems and powers the machine off. Returns only if the kernel refused.
pub fn power_off() -> Error {
    nix::unistd::sync();
    match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF) {
        Ok(never) => match never {},
        Err(e) => sys_err("reboot(POWER_OFF)", Path::new("/"), e),
    }
}
