//! Mode and owner changes inside a directory tree (the workload's root file system being unpacked) through
//! file descriptors opened without following any symbolic link: every path is resolved from a descriptor of
//! the tree's root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a link planted by a layer (even
//! one replacing a directory after its mode was recorded) can never redirect a `chmod` or `chown` to the
//! host. Path-based calls (`chmod(2)`, `chown(2)`) follow links and are not used for this.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

use crate::error::{Error, Result};

fn sys_err(call: &'static str, target: &Path, err: impl std::fmt::Display) -> Error {
    Error::System { call, reason: format!("{}: {err}", target.display()) }
}

/// Why a change inside the tree was not made.
#[derive(Debug)]
pub enum BeneathError {
    /// A component of the path is a symbolic link (or leaves the tree): nothing was changed.
    SymlinkInPath(PathBuf),
    /// The path names something else than expected (not a directory, another inode, gone).
    Replaced(PathBuf, String),
    /// Any other failure of the system call.
    Failed(Error),
}

impl std::fmt::Display for BeneathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SymlinkInPath(p) => {
                write!(f, "{}: a symbolic link is in the way (not followed)", p.display())
            }
            Self::Replaced(p, why) => write!(f, "{}: {why}", p.display()),
            Self::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// A directory tree whose root is held open; all changes are made beneath it without following links.
#[derive(Debug)]
pub struct Beneath {
    root: OwnedFd,
    root_path: PathBuf,
}

impl Beneath {
    /// Opens the tree's root (itself not a symbolic link).
    ///
    /// # Errors
    /// When `root` cannot be opened as a directory.
    pub fn open(root: &Path) -> Result<Self> {
        let fd = nix::fcntl::open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| sys_err("open", root, e))?;
        Ok(Self { root: fd, root_path: root.to_path_buf() })
    }

    fn display(&self, rel: &Path) -> PathBuf {
        self.root_path.join(rel)
    }

    /// Opens `rel` (relative to the root; empty is the root) with `flags`, refusing any symbolic link on the
    /// way, the last component included.
    fn open_beneath(&self, rel: &Path, flags: OFlag) -> std::result::Result<OwnedFd, BeneathError> {
        let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        nix::fcntl::openat2(self.root.as_fd(), rel, how).map_err(|e| match e {
            // ELOOP: a link on the way (RESOLVE_NO_SYMLINKS, O_NOFOLLOW); EXDEV: the path left the tree.
            Errno::ELOOP | Errno::EXDEV => BeneathError::SymlinkInPath(self.display(rel)),
            // O_DIRECTORY reports a link as the last component as ENOTDIR; say which it is (the lstat only
            // words the refusal, nothing is done through it).
            Errno::ENOTDIR
                if std::fs::symlink_metadata(self.display(rel)).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                BeneathError::SymlinkInPath(self.display(rel))
            }
            Errno::ENOTDIR | Errno::ENOENT => BeneathError::Replaced(self.display(rel), e.desc().to_owned()),
            other => BeneathError::Failed(sys_err("openat2", &self.display(rel), other)),
        })
    }

    /// Sets the mode (permission bits, setuid/setgid/sticky) of the directory `rel`, which must still be the
    /// directory with inode `ino` (the one unpacking created), through a descriptor of it.
    ///
    /// # Errors
    /// A symbolic link on the path, another object at the path, or the call failing.
    pub fn chmod_dir(&self, rel: &Path, mode: u32, ino: u64) -> std::result::Result<(), BeneathError> {
        let fd = self.open_beneath(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let st = nix::sys::stat::fstat(&fd)
            .map_err(|e| BeneathError::Failed(sys_err("fstat", &self.display(rel), e)))?;
        if st.st_ino != ino {
            return Err(BeneathError::Replaced(
                self.display(rel),
                "no longer the directory that was unpacked there".into(),
            ));
        }
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode & 0o7777))
            .map_err(|e| BeneathError::Failed(sys_err("fchmod", &self.display(rel), e)))
    }

    /// The inode of the directory `rel` (opened without following links).
    ///
    /// # Errors
    /// As [`Beneath::chmod_dir`].
    pub fn dir_inode(&self, rel: &Path) -> std::result::Result<u64, BeneathError> {
        let fd = self.open_beneath(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        nix::sys::stat::fstat(&fd)
            .map(|st| st.st_ino)
            .map_err(|e| BeneathError::Failed(sys_err("fstat", &self.display(rel), e)))
    }

    /// Changes the owner of `rel` itself (a symbolic link's own owner for a link): its parent directory is
    /// opened without following links, then `fchownat(AT_SYMLINK_NOFOLLOW)` on the last component.
    ///
    /// # Errors
    /// A symbolic link among the parents, or the call failing.
    pub fn chown(&self, rel: &Path, uid: u32, gid: u32) -> std::result::Result<(), BeneathError> {
        let (parent, name) = match (rel.parent(), rel.file_name()) {
            (Some(p), Some(n)) => (p, Path::new(n)),
            // The root itself.
            _ => (Path::new(""), Path::new(".")),
        };
        let dir = self.open_beneath(parent, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        nix::unistd::fchownat(
            &dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| BeneathError::Failed(sys_err("fchownat", &self.display(rel), e)))
    }
}
