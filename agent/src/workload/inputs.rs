//! Input data for the workload: files or raw disks the operator attaches (a data provider's ciphertext, for
//! example), each copied into the agent's work directory and bind-mounted read-only at `/input/<name>`.
//!
//! The spec names them: `"inputs": {"dataset": "serial:sealroom-data"}` (the virtio disk whose serial is
//! `sealroom-data`, QEMU `-device virtio-blk-pci,drive=…,serial=sealroom-data`) or `{"dataset": "/abs/path"}`.
//! A disk is copied whole (up to [`MAX_INPUT_BYTES`]; the zero padding of a raw disk stays, so a format on it
//! must carry its own length). The mount (destination and the work-directory copy) is measured with the other
//! launch events; the contents are not: inputs are expected to be authenticated by whoever consumes them (the
//! demo's dataset is AES-256-GCM ciphertext that only the key the broker releases opens).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sealroom_measurements::cel::Mount;

use crate::error::{Error, Result};

const STAGE: &str = "inputs";
/// Where inputs appear in the container.
pub const INPUT_DESTINATION: &str = "/input";
/// Largest input copied.
pub const MAX_INPUT_BYTES: u64 = 256 << 20;
/// Most inputs.
pub const MAX_INPUTS: usize = 16;

fn err(reason: impl Into<String>) -> Error {
    Error::workload(STAGE, reason)
}

/// Checks input names (1..=64 of `[a-z0-9._-]`, not starting with a dot) and sources (`serial:…` or an
/// absolute path).
///
/// # Errors
/// The first bad name or source.
pub fn check(inputs: &BTreeMap<String, String>) -> Result<()> {
    if inputs.len() > MAX_INPUTS {
        return Err(err(format!("{} inputs, at most {MAX_INPUTS}", inputs.len())));
    }
    for (name, source) in inputs {
        let ok_name = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !ok_name {
            return Err(err(format!("input name {name:?}: use 1..64 of [a-z0-9._-], not starting with '.'")));
        }
        match source.strip_prefix("serial:") {
            Some(s) if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_graphic()) => {}
            Some(_) => {
                return Err(err(format!("input {name}: serial {source:?} must be 1..20 printable bytes")));
            }
            None if source.starts_with('/') && !source.contains('\0') => {}
            None => {
                return Err(err(format!(
                    "input {name}: source {source:?} is not serial:… or an absolute path"
                )));
            }
        }
    }
    Ok(())
}

/// Where the copy of input `name` lives.
#[must_use]
pub fn copy_path(work_dir: &Path, name: &str) -> PathBuf {
    work_dir.join("inputs").join(name)
}

/// The read-only bind mounts of the inputs' copies.
#[must_use]
pub fn mounts(inputs: &BTreeMap<String, String>, work_dir: &Path) -> Vec<Mount> {
    inputs
        .keys()
        .map(|name| Mount {
            destination: format!("{INPUT_DESTINATION}/{name}"),
            source: copy_path(work_dir, name).display().to_string(),
            fs_type: "bind".into(),
            options: "rbind,ro,nosuid,nodev,noexec".into(),
        })
        .collect()
}

/// The block device (`/dev/NAME`) whose `SYS_BLOCK/NAME/serial` is `serial` (the first by name), if any.
#[must_use]
pub fn find_by_serial(sys_block: &Path, serial: &str) -> Option<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .ok()?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let s = std::fs::read_to_string(sys_block.join(&name).join("serial")).ok()?;
        (s.trim_end_matches(['\n', '\0']) == serial).then(|| Path::new("/dev").join(name))
    })
}

/// Resolves a source to a path (`serial:` through `/sys/block`).
///
/// # Errors
/// No disk with that serial.
pub fn resolve(source: &str, sys_block: &Path) -> Result<PathBuf> {
    match source.strip_prefix("serial:") {
        Some(serial) => find_by_serial(sys_block, serial)
            .ok_or_else(|| err(format!("no disk with serial {serial} is attached"))),
        None => Ok(PathBuf::from(source)),
    }
}

/// Copies every input to its place in the work directory (read-only, owned by `uid:gid` when root).
///
/// # Errors
/// A missing source, an input over [`MAX_INPUT_BYTES`], I/O failures.
pub fn copy_all(inputs: &BTreeMap<String, String>, work_dir: &Path, uid: u32, gid: u32) -> Result<u64> {
    let mut total = 0u64;
    for (name, source) in inputs {
        let from = resolve(source, Path::new("/sys/block"))?;
        let to = copy_path(work_dir, name);
        let io = |p: &Path, e: std::io::Error| err(format!("input {name}: {}: {e}", p.display()));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        let src = std::fs::File::open(&from).map_err(|e| io(&from, e))?;
        let mut limited = src.take(MAX_INPUT_BYTES.saturating_add(1));
        let mut dst = std::fs::File::create(&to).map_err(|e| io(&to, e))?;
        let n = std::io::copy(&mut limited, &mut dst).map_err(|e| io(&to, e))?;
        if n > MAX_INPUT_BYTES {
            return Err(err(format!("input {name}: more than {MAX_INPUT_BYTES} bytes")));
        }
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o444))
            .map_err(|e| io(&to, e))?;
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::lchown(&to, Some(uid), Some(gid)).map_err(|e| io(&to, e))?;
        }
        super::console(format_args!(
            "input {name}: {n} bytes from {} at {INPUT_DESTINATION}/{name}",
            from.display()
        ));
        total = total.saturating_add(n);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sources_are_checked_and_serials_resolve() {
        let ok: BTreeMap<String, String> =
            [("dataset".to_owned(), "serial:sealroom-data".to_owned()), ("b.1".into(), "/x/y".into())].into();
        check(&ok).unwrap();
        for (n, s) in [
            ("Data", "/x"),
            (".x", "/x"),
            ("d", "rel/path"),
            ("d", "serial:"),
            ("d", "serial:waytoolongserialnumber1"),
        ] {
            let bad: BTreeMap<String, String> = [(n.to_owned(), s.to_owned())].into();
            assert!(check(&bad).is_err(), "{n} {s}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("vdb")).unwrap();
        std::fs::write(dir.path().join("vdb/serial"), "sealroom-data\n").unwrap();
        assert_eq!(resolve("serial:sealroom-data", dir.path()).unwrap(), PathBuf::from("/dev/vdb"));
        assert!(
            resolve("serial:other", dir.path())
                .unwrap_err()
                .to_string()
                .contains("no disk with serial other")
        );
        let m = mounts(&ok, Path::new("/w"));
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].destination, "/input/dataset");
    }
}
