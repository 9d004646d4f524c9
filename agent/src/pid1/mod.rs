//! The agent as PID 1 of the confidential VM: no systemd, no shell.
//!
//! PID 1 mounts the kernel file systems, loads the image's kernel modules (before mounting configfs,
//! which is a module in Debian's cloud kernel), configures the network, then starts the agent proper
//! as its child (`/init` again, with the arguments in `/etc/sealroom/agent.args`) and stays behind as
//! a small supervisor: it reaps every orphan, and powers the VM off cleanly on SIGTERM, Ctrl-Alt-Del,
//! the ACPI power button or when the agent ends (or restarts it, per `sealroom.agent_exit=`).
//!
//! PID 1 must never exit or panic (either is a kernel panic): every step logs its failure and goes
//! on; a panic hook logs any panic and the last resort is to idle forever.

pub mod cmdline;
pub mod dhcp;
pub mod modules;
pub mod net;
pub mod power;

use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::sys;
use cmdline::{OnAgentExit, Settings};

/// Printed once PID 1 has started the agent; the boot test waits for it on the serial console.
pub const READY_MARKER: &str = "sealroom-init: ready";
/// The file listing the agent's arguments, one per line.
pub const AGENT_ARGS: &str = "/etc/sealroom/agent.args";
/// Set in the agent child's environment so that it knows PID 1 supervises it.
pub const CHILD_ENV: &str = "SEALROOM_PID1_CHILD";

/// How long the agent gets to stop after SIGTERM before everything is killed. The agent stops a running workload
/// within [`crate::workload::runner::STOP_GRACE`] (SIGTERM, then SIGKILL) and then its server; this bound is a
/// little more than that, so that the power button powers the VM off within 5 s even with a workload running
/// (issue 14), and a stuck agent cannot hold the VM up.
pub const STOP_GRACE: Duration = Duration::from_millis(3500);
/// How long the agent waits, after asking the workload to stop, before abandoning it (PID 1 kills what is left).
const WORKLOAD_STOP_BOUND: Duration = Duration::from_millis(3000);
/// How long the agent waits for its server to close its listeners and the attestation worker to finish.
const SERVER_STOP_BOUND: Duration = Duration::from_millis(300);
/// How often the agent is restarted under `sealroom.agent_exit=restart` before giving up.
const MAX_RESTARTS: u32 = 5;

/// Writes one line to the console, prefixed `sealroom-init:`; never fails (there is nowhere to
/// report a failing console).
pub fn write_line(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "sealroom-init: {args}");
}

macro_rules! log {
    ($($arg:tt)*) => { $crate::pid1::write_line(format_args!($($arg)*)) };
}
pub(crate) use log;

/// True when this process is PID 1.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Runs PID 1. Never returns: the VM ends by powering off.
pub fn run() -> ! {
    std::panic::set_hook(Box::new(|info| log!("PANIC (PID 1 keeps running): {info}")));
    if std::panic::catch_unwind(supervise).is_err() {
        log!("the supervisor panicked; idling (power off from the hypervisor)");
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Mounts one file system, logging the outcome.
fn mount(fstype: &str, target: &str, flags: MsFlags, data: Option<&str>) {
    if let Err(e) = sys::mount_fs(fstype, Path::new(target), flags, data) {
        log!("{e}");
    }
}

fn supervise() {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755"));
    if let Err(e) = sys::attach_console() {
        // Nothing can be printed without a console; keep going regardless.
        let _ = e;
    }
    log!("starting sealroom-agent {} as PID 1", env!("CARGO_PKG_VERSION"));
    mount("proc", "/proc", hardened, None);
    mount("sysfs", "/sys", hardened, None);
    mount("securityfs", "/sys/kernel/security", hardened, None);
    mount("tmpfs", "/run", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"));
    mount("tmpfs", "/tmp", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"));

    // Signals are taken synchronously from a signalfd: block them before any thread starts so that
    // every thread inherits the mask (blocked signals are queued even for PID 1).
    let mut mask = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGPWR, Signal::SIGHUP] {
        mask.add(s);
    }
    if let Err(e) = mask.thread_block() {
        log!("sigprocmask: {e}");
    }
    if let Err(e) = sys::route_ctrl_alt_del_to_init() {
        log!("{e}");
    }

    load_modules();
    mount("configfs", "/sys/kernel/config", hardened, None);

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let settings = Settings::parse(&cmdline);
    for w in &settings.warnings {
        log!("cmdline: {w}");
    }
    power::watch_power_button();
    net::configure(&settings.net);

    let signals = match SignalFd::new(&mask) {
        Ok(fd) => fd,
        Err(e) => {
            log!("signalfd: {e}; cannot supervise, starting the agent unsupervised");
            let _ = start_agent();
            return;
        }
    };
    let mut agent = start_agent();
    log!("{}", READY_MARKER.trim_start_matches("sealroom-init: "));
    let mut restarts = 0u32;
    loop {
        let signo = next_signal(&signals, None);
        match signo.and_then(|s| Signal::try_from(s).ok()) {
            Some(Signal::SIGCHLD) => {
                if let Some(status) = reap(agent.as_ref().map(Child::id)) {
                    log!("agent exited: {status}");
                    agent = match settings.on_agent_exit {
                        OnAgentExit::Restart if restarts < MAX_RESTARTS => {
                            restarts += 1;
                            std::thread::sleep(Duration::from_secs(2));
                            log!("restarting the agent ({restarts}/{MAX_RESTARTS})");
                            start_agent()
                        }
                        _ => shutdown(&signals, None, "the agent ended"),
                    };
                }
            }
            Some(s @ (Signal::SIGTERM | Signal::SIGINT | Signal::SIGPWR)) => {
                shutdown(&signals, agent.as_ref().map(Child::id), &format!("{s} received"));
            }
            Some(other) => log!("ignoring {other}"),
            None => {}
        }
    }
}

fn load_modules() {
    let dir = modules::modules_dir();
    let deps = match std::fs::read_to_string(dir.join("modules.dep")) {
        Ok(text) => modules::ModuleDeps::parse(&text),
        Err(e) => return log!("modules: {}: {e}", dir.join("modules.dep").display()),
    };
    let started = Instant::now();
    let mut loaded = Vec::new();
    for module in deps.load_order() {
        let name = Path::new(&module).file_stem().and_then(|s| s.to_str()).unwrap_or("?").to_owned();
        match sys::load_module(&dir.join(&module)) {
            Ok(_) => loaded.push(name),
            // Drivers for absent hardware refuse to load (ENODEV): expected, say so briefly.
            Err(e) if e.to_string().contains("ENODEV") => log!("modules: {name}: no such device here"),
            Err(e) => log!("modules: {e}"),
        }
    }
    log!("modules: loaded {} in {} ms", loaded.join(" "), started.elapsed().as_millis());
}

fn start_agent() -> Option<Child> {
    let args: Vec<String> = std::fs::read_to_string(AGENT_ARGS)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    match Command::new("/proc/self/exe").args(&args).env(CHILD_ENV, "1").spawn() {
        Ok(child) => {
            log!("agent started (pid {}, args {:?})", child.id(), args);
            Some(child)
        }
        Err(e) => {
            log!("cannot start the agent: {e}");
            None
        }
    }
}

/// Waits for the next signal (up to `timeout`); `None` on timeout or error.
fn next_signal(signals: &SignalFd, timeout: Option<Duration>) -> Option<i32> {
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
    };
    let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
    match nix::poll::poll(&mut fds, timeout) {
        Ok(0) => None,
        Ok(_) => match signals.read_signal() {
            Ok(Some(info)) => i32::try_from(info.ssi_signo).ok(),
            Ok(None) => None,
            Err(e) => {
                log!("signalfd read: {e}");
                None
            }
        },
        Err(e) => {
            log!("poll: {e}");
            std::thread::sleep(Duration::from_millis(100));
            None
        }
    }
}

/// Reaps every exited child; returns the agent's status if it was among them.
fn reap(agent: Option<u32>) -> Option<String> {
    let mut agent_status = None;
    loop {
        match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return agent_status,
            Ok(status) => {
                let pid = status.pid().map(Pid::as_raw);
                if pid.is_some() && pid.and_then(|p| u32::try_from(p).ok()) == agent {
                    agent_status = Some(format!("{status:?}"));
                }
            }
        }
    }
}

/// Stops the agent (SIGTERM, then SIGKILL for everything after the grace period), flushes and powers
/// off. Never returns; if the kernel refuses to power off, idles.
fn shutdown(signals: &SignalFd, agent: Option<u32>, why: &str) -> ! {
    let started = Instant::now();
    log!("shutting down: {why}");
    if let Some(pid) = agent.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = started + STOP_GRACE;
        let mut gone = false;
        while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            if next_signal(signals, Some(left)) == Some(Signal::SIGCHLD as i32) && reap(agent).is_some() {
                gone = true;
                break;
            }
        }
        if gone {
            log!("the agent stopped {} ms after SIGTERM", started.elapsed().as_millis());
        } else {
            log!("the agent did not stop within {} ms; killing it", STOP_GRACE.as_millis());
            log_process_state(pid);
        }
    }
    // Everything else (workload leftovers): kill and reap.
    let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
    let _ = reap(None);
    log!("powering off ({} ms after the request)", started.elapsed().as_millis());
    let err = sys::power_off();
    log!("{err}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Logs what a process that did not stop was doing: its signal masks and each thread's state and wait channel.
fn log_process_state(pid: i32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let fields: Vec<&str> = status
        .lines()
        .filter(|l| {
            ["State:", "SigPnd:", "ShdPnd:", "SigBlk:", "SigIgn:", "SigCgt:"].iter().any(|f| l.starts_with(f))
        })
        .collect();
    log!("agent {pid}: {}", fields.join("; "));
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    for task in tasks {
        let path = task.path();
        let read =
            |name: &str| std::fs::read_to_string(path.join(name)).unwrap_or_default().trim().to_owned();
        let state = read("status").lines().find(|l| l.starts_with("State:")).unwrap_or_default().to_owned();
        log!(
            "agent thread {} {:?}: {state}; wchan {}",
            task.file_name().to_string_lossy(),
            read("comm"),
            read("wchan")
        );
    }
}

/// True when this process is the agent child that PID 1 started.
pub fn is_pid1_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Printed by the agent child once its gRPC server listens (the boot tests wait for it).
pub const SERVING_MARKER: &str = "sealroom-agent: serving attestation on tcp";

/// The agent child's job in the VM: serve attestation (TCP 0.0.0.0:7443 and vsock) and, beside it, run the
/// operator's workload if one is configured (`crate::workload::vm`). Serving goes on after the workload ends or
/// fails, until SIGTERM; when the workload ended and its spec says `"on_exit": "poweroff"`, PID 1 is asked to
/// power the VM off (SIGTERM to PID 1, which stops this process cleanly first).
///
/// # Errors
/// When the runtime or the server cannot start.
pub fn serve_in_vm() -> crate::Result<()> {
    // Before any thread starts: PID 1's blocked signals were inherited through exec.
    crate::sys::unblock_all_signals()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::Error::Server(format!("tokio runtime: {e}")))?;
    let served = runtime.block_on(serve_and_run_workload());
    // Dropping a runtime waits for its blocking tasks without bound; the VM is powering off, so wait briefly.
    runtime.shutdown_timeout(SERVER_STOP_BOUND);
    served
}

async fn serve_and_run_workload() -> crate::Result<()> {
    use crate::workload::spec::OnExit;
    let running = crate::server::start(crate::server::Config::vm_defaults()).await?;
    if let Some(addr) = running.tcp_addr {
        eprintln!("{SERVING_MARKER} {addr}");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| crate::Error::Server(format!("signal: {e}")))?;
    // The workload runs in its own task: a panic there ends the task, never the agent.
    let (stop_workload, stop) = crate::workload::runner::stop_channel();
    let mut workload = tokio::spawn(crate::workload::vm::run_in_vm(running.handle.clone(), stop));
    let mut workload_done = false;
    loop {
        tokio::select! {
            _ = term.recv() => {
                eprintln!("sealroom-agent: SIGTERM: stopping");
                break;
            }
            _ = tokio::signal::ctrl_c() => break,
            ended = &mut workload, if !workload_done => {
                workload_done = true;
                match ended {
                    Ok(Some(done)) if done.on_exit == OnExit::PowerOff => {
                        crate::workload::console(format_args!(
                            "workload finished (exit code {}); on_exit=poweroff: asking PID 1 to power off",
                            done.outcome.exit_code
                        ));
                        request_poweroff();
                    }
                    Ok(Some(done)) => crate::workload::console(format_args!(
                        "workload finished (exit code {}); the agent keeps serving attestation",
                        done.outcome.exit_code
                    )),
                    Ok(None) => crate::workload::console(format_args!(
                        "no workload running; the agent keeps serving attestation"
                    )),
                    Err(e) => crate::workload::console(format_args!(
                        "FAILED: the workload task ended abnormally ({e}); the agent keeps serving attestation"
                    )),
                }
            }
        }
    }
    if !workload_done {
        // A running container is stopped (SIGTERM, SIGKILL after the grace) and its output forwarded to the
        // last line; a workload still being fetched or waiting for its broker is simply dropped.
        stop_workload.stop();
        if tokio::time::timeout(WORKLOAD_STOP_BOUND, &mut workload).await.is_err() {
            crate::workload::console(format_args!(
                "the workload did not stop within {} ms; abandoning it",
                WORKLOAD_STOP_BOUND.as_millis()
            ));
            workload.abort();
        }
    }
    // Connections a client keeps open would hold a graceful server shutdown without bound.
    match tokio::time::timeout(SERVER_STOP_BOUND, running.stop()).await {
        Ok(stopped) => stopped,
        Err(_) => {
            eprintln!(
                "sealroom-agent: the server did not stop within {} ms; exiting",
                SERVER_STOP_BOUND.as_millis()
            );
            Ok(())
        }
    }
}

/// Asks PID 1 to shut down and power off (its SIGTERM path); only as PID 1's child in the VM.
fn request_poweroff() {
    if !is_pid1_child() {
        return crate::workload::console(format_args!("not PID 1's child: not powering off"));
    }
    if let Err(e) = nix::sys::signal::kill(Pid::from_raw(1), Signal::SIGTERM) {
        crate::workload::console(format_args!("cannot ask PID 1 to power off: {e}"));
    }
}
