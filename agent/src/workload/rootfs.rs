//! Unpacking verified layers into the container's root file system (a tmpfs in the VM).
//!
//! Layers are applied lowest first, following the OCI image layer specification: `.wh.NAME` removes `NAME`
//! from lower layers, `.wh..wh..opq` empties its directory of lower-layer content, and an entry replaces
//! whatever was at its path. Paths are confined to the root: `..` in an entry name is refused, and every
//! symbolic link met while resolving a parent directory is resolved *inside* the root (an absolute target
//! starts at the root, `..` stops at the root), so no layer can write outside it, however its links point.
//! Device nodes are skipped (the runtime provides `/dev`). The tar format is parsed by the `tar` crate; what
//! is done with each entry is decided here.
//!
//! Modes and owners are changed through descriptors that never follow a symbolic link
//! ([`crate::sys::beneath`]): regular files through the handle that wrote them, directories (whose modes are
//! applied last) by re-opening them beneath the root with symbolic links refused and checking they are still
//! the directory that was created. A layer that lists a directory and then replaces it (with a link to a host
//! path, say) is refused: a layer built from a file system snapshot never holds both.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::image::{Compression, Descriptor};
use crate::error::{Error, Result};
use crate::sys::beneath::{Beneath, BeneathError};

const STAGE: &str = "unpack";
/// Symbolic links followed while resolving one path (as the kernel's limit).
const MAX_LINK_HOPS: u32 = 40;
/// Most entries in one image.
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Most bytes written for one image.
pub const MAX_UNPACKED_BYTES: u64 = 32 << 30;

fn err(reason: impl Into<String>) -> Error {
    Error::workload(STAGE, reason)
}

/// What unpacking did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries applied.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Whiteouts applied.
    pub whiteouts: u64,
    /// Device nodes and FIFOs skipped.
    pub skipped_special: u64,
}

/// Applies `layers` (verified blobs) in order into a fresh directory `root`.
///
/// # Errors
/// A path escaping the root, a malformed archive, a hard link to something not in the image, limits.
pub fn unpack(layers: &[(Descriptor, PathBuf)], root: &Path) -> Result<UnpackStats> {
    if root.exists() {
        std::fs::remove_dir_all(root).map_err(|e| err(format!("{}: {e}", root.display())))?;
    }
    std::fs::create_dir_all(root).map_err(|e| err(format!("{}: {e}", root.display())))?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| err(format!("{}: {e}", root.display())))?;
    let mut stats = UnpackStats::default();
    for (i, (desc, path)) in layers.iter().enumerate() {
        let compression = Compression::of_media_type(&desc.media_type)
            .ok_or_else(|| err(format!("layer {i}: media type {:?} not supported", desc.media_type)))?;
        let file =
            std::fs::File::open(path).map_err(|e| err(format!("layer {i} {}: {e}", path.display())))?;
        let reader: Box<dyn Read> = match compression {
            Compression::None => Box::new(std::io::BufReader::new(file)),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file))),
        };
        apply_layer(reader, root, &mut stats).map_err(|e| match e {
            Error::Workload { stage, reason } => {
                Error::workload(stage, format!("layer {i} {}: {reason}", desc.digest))
            }
            other => other,
        })?;
    }
    Ok(stats)
}

/// The path inside the archive, as normal components only.
fn entry_components(path: &Path) -> Result<Vec<OsString>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                return Err(err(format!("entry {:?}: '..' is not allowed", path.display())));
            }
            Component::Prefix(_) => return Err(err(format!("entry {:?}: not a Unix path", path.display()))),
        }
    }
    Ok(out)
}

/// Resolves `components` under `root`, following symbolic links inside the root; the last component is
/// followed only if `follow_last`. Missing components are kept as names (they will be created).
fn resolve_in_root(root: &Path, components: &[OsString], follow_last: bool) -> Result<PathBuf> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: Vec<(OsString, bool)> =
        components.iter().enumerate().rev().map(|(i, c)| (c.clone(), i + 1 == components.len())).collect();
    let mut hops = 0u32;
    while let Some((name, is_last)) = pending.pop() {
        if name == "." || name.is_empty() {
            continue;
        }
        if name == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&name);
        let is_link = std::fs::symlink_metadata(&candidate).is_ok_and(|m| m.file_type().is_symlink());
        if is_link && (!is_last || follow_last) {
            hops += 1;
            if hops > MAX_LINK_HOPS {
                return Err(err(format!("too many symbolic links resolving {}", candidate.display())));
            }
            let target =
                std::fs::read_link(&candidate).map_err(|e| err(format!("{}: {e}", candidate.display())))?;
            if target.is_absolute() {
                resolved.clear();
            }
            let parts: Vec<OsString> = target
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_os_string()),
                    Component::ParentDir => Some(OsString::from("..")),
                    _ => None,
                })
                .collect();
            let n = parts.len();
            for (j, p) in parts.into_iter().enumerate().rev() {
                pending.push((p, is_last && j + 1 == n));
            }
            continue;
        }
        resolved.push(name);
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

fn remove_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(path).map_err(|e| err(format!("{}: {e}", path.display())))
        }
        Ok(_) => std::fs::remove_file(path).map_err(|e| err(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(format!("{}: {e}", path.display()))),
    }
}

fn ensure_dir(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(err(format!("{}: a parent is not a directory", path.display()))),
        Err(_) => std::fs::create_dir_all(path).map_err(|e| err(format!("{}: {e}", path.display()))),
    }
}

/// `path` relative to `root` (every target is built as `root` joined with resolved components).
fn relative<'a>(root: &Path, path: &'a Path) -> Result<&'a Path> {
    path.strip_prefix(root).map_err(|_| err(format!("{}: outside the root", path.display())))
}

fn beneath_err(e: BeneathError) -> Error {
    match e {
        BeneathError::Failed(e) => e,
        other => err(other.to_string()),
    }
}

fn apply_layer(reader: Box<dyn Read>, root: &Path, stats: &mut UnpackStats) -> Result<()> {
    let is_root = nix::unistd::geteuid().is_root();
    let tree = Beneath::open(root)?;
    let mut archive = tar::Archive::new(reader);
    let mut created: HashSet<PathBuf> = HashSet::new();
    // (directory relative to the root, mode, inode when created)
    let mut dir_modes: Vec<(PathBuf, u32, u64)> = Vec::new();
    let entries = archive.entries().map_err(|e| err(format!("tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| err(format!("tar: {e}")))?;
        stats.entries += 1;
        if stats.entries > MAX_ENTRIES {
            return Err(err(format!("more than {MAX_ENTRIES} entries")));
        }
        let raw_path = entry.path().map_err(|e| err(format!("tar entry path: {e}")))?.into_owned();
        let comps = entry_components(&raw_path)?;
        let Some((name, parents)) = comps.split_last() else { continue };
        let parent = resolve_in_root(root, parents, true)?;
        let name_str = name.to_string_lossy();

        // Whiteouts remove lower-layer content and create nothing.
        if name_str == ".wh..wh..opq" {
            stats.whiteouts += 1;
            if let Ok(rd) = std::fs::read_dir(&parent) {
                for child in rd.flatten() {
                    let p = child.path();
                    if !created.contains(&p) {
                        remove_any(&p)?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name_str.strip_prefix(".wh.") {
            stats.whiteouts += 1;
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(err(format!("entry {:?}: malformed whiteout", raw_path.display())));
            }
            remove_any(&parent.join(hidden))?;
            continue;
        }

        ensure_dir(&parent)?;
        let target = parent.join(name);
        let header = entry.header();
        let mode = header.mode().map_err(|e| err(format!("{}: mode: {e}", raw_path.display())))? & 0o7777;
        let uid = header.uid().ok().and_then(|u| u32::try_from(u).ok()).unwrap_or(0);
        let gid = header.gid().ok().and_then(|g| u32::try_from(g).ok()).unwrap_or(0);
        let kind = header.entry_type();
        match kind {
            tar::EntryType::Directory => {
                if !std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                    remove_any(&target)?;
                    std::fs::create_dir(&target).map_err(|e| err(format!("{}: {e}", target.display())))?;
                }
                let rel = relative(root, &target)?.to_path_buf();
                let ino = tree.dir_inode(&rel).map_err(beneath_err)?;
                dir_modes.push((rel, mode, ino));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_any(&target)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(|e| err(format!("{}: {e}", target.display())))?;
                let n = std::io::copy(&mut entry, &mut f)
                    .map_err(|e| err(format!("{}: {e}", target.display())))?;
                stats.bytes = stats.bytes.saturating_add(n);
                if stats.bytes > MAX_UNPACKED_BYTES {
                    return Err(err(format!("more than {MAX_UNPACKED_BYTES} bytes unpacked")));
                }
                // Owner first, then mode, both on the handle (chown clears setuid/setgid bits).
                if is_root {
                    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                        .map_err(|e| err(format!("{}: fchown: {e}", target.display())))?;
                }
                f.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(|e| err(format!("{}: {e}", target.display())))?;
                created.insert(target);
                continue;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| err(format!("{}: link name: {e}", raw_path.display())))?
                    .ok_or_else(|| err(format!("{}: symlink without target", raw_path.display())))?
                    .into_owned();
                remove_any(&target)?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(|e| err(format!("{}: {e}", target.display())))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(|e| err(format!("{}: link name: {e}", raw_path.display())))?
                    .ok_or_else(|| err(format!("{}: hard link without target", raw_path.display())))?
                    .into_owned();
                let link_comps = entry_components(&link)?;
                let Some((lname, lparents)) = link_comps.split_last() else {
                    return Err(err(format!("{}: hard link to the root", raw_path.display())));
                };
                let source = resolve_in_root(root, lparents, true)?.join(lname);
                if !std::fs::symlink_metadata(&source).is_ok_and(|m| m.is_file()) {
                    return Err(err(format!(
                        "{}: hard link to {:?}, which is not a regular file in the image",
                        raw_path.display(),
                        link.display()
                    )));
                }
                remove_any(&target)?;
                std::fs::hard_link(&source, &target)
                    .map_err(|e| err(format!("{}: {e}", target.display())))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                stats.skipped_special += 1;
                continue;
            }
            other => {
                return Err(err(format!("{}: unsupported tar entry type {other:?}", raw_path.display())));
            }
        }
        if is_root {
            tree.chown(relative(root, &target)?, uid, gid).map_err(beneath_err)?;
        }
        created.insert(target);
    }
    // Directory modes last (a read-only directory must not stop its own entries from being written), each
    // through a descriptor of the very directory created, opened without following links.
    for (dir, mode, ino) in dir_modes.into_iter().rev() {
        tree.chmod_dir(&dir, mode, ino).map_err(|e| {
            err(format!(
                "directory {:?} (mode {mode:o}) was replaced later in the same layer, refusing: {e}",
                dir.display()
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_layer(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            // Bypass the builder's own path checks: layers from the network are not built by us.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn layer(dir: &Path, n: usize, bytes: &[u8]) -> (Descriptor, PathBuf) {
        let p = dir.join(format!("layer{n}.tar"));
        std::fs::write(&p, bytes).unwrap();
        (
            Descriptor {
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                digest: super::super::digest::Sha256Digest::of(bytes),
                size: bytes.len() as u64,
            },
            p,
        )
    }

    use tar::EntryType as T;

    #[test]
    fn layers_whiteouts_and_opaque_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let l0 = tar_layer(&[
            ("etc/", T::Directory, b"", ""),
            ("etc/a", T::Regular, b"a0", ""),
            ("etc/b", T::Regular, b"b0", ""),
            ("data/", T::Directory, b"", ""),
            ("data/x", T::Regular, b"x", ""),
            ("bin", T::Symlink, b"", "usr/bin"),
            ("usr/bin/tool", T::Regular, b"tool", ""),
            ("usr/bin/hl", T::Link, b"", "usr/bin/tool"),
        ]);
        let l1 = tar_layer(&[
            ("etc/.wh.a", T::Regular, b"", ""),
            ("etc/b", T::Regular, b"b1", ""),
            ("data/.wh..wh..opq", T::Regular, b"", ""),
            ("data/y", T::Regular, b"y", ""),
            ("bin/new", T::Regular, b"new", ""),
        ]);
        let layers = vec![layer(tmp.path(), 0, &l0), layer(tmp.path(), 1, &l1)];
        let stats = unpack(&layers, &root).unwrap();
        assert_eq!(stats.whiteouts, 2);
        assert!(!root.join("etc/a").exists());
        assert_eq!(std::fs::read(root.join("etc/b")).unwrap(), b"b1");
        assert!(!root.join("data/x").exists());
        assert_eq!(std::fs::read(root.join("data/y")).unwrap(), b"y");
        // Written through the in-root symlink bin -> usr/bin.
        assert_eq!(std::fs::read(root.join("usr/bin/new")).unwrap(), b"new");
        assert_eq!(std::fs::read(root.join("usr/bin/hl")).unwrap(), b"tool");
    }

    #[test]
    fn path_traversal_is_refused_or_confined() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();

        let dotdot = tar_layer(&[("../escape", T::Regular, b"x", "")]);
        let e = unpack(&[layer(tmp.path(), 0, &dotdot)], &root).unwrap_err().to_string();
        assert!(e.contains("'..' is not allowed"), "{e}");

        // An absolute symlink to the host, then a write through it: lands inside the root.
        let abs_link = format!("{}", outside.display());
        let l = tar_layer(&[("evil", T::Symlink, b"", &abs_link), ("evil/pwned", T::Regular, b"x", "")]);
        unpack(&[layer(tmp.path(), 1, &l)], &root).unwrap();
        assert!(!outside.join("pwned").exists());
        assert!(root.join(abs_link.trim_start_matches('/')).join("pwned").exists());

        // A relative symlink climbing out: clamped at the root.
        let l = tar_layer(&[("up", T::Symlink, b"", "../../../../.."), ("up/pwned2", T::Regular, b"x", "")]);
        unpack(&[layer(tmp.path(), 2, &l)], &root).unwrap();
        assert!(root.join("pwned2").exists());
        assert!(!tmp.path().join("pwned2").exists());

        // A hard link to a host file is refused.
        let l = tar_layer(&[("hl", T::Link, b"", "etc/passwd")]);
        assert!(unpack(&[layer(tmp.path(), 3, &l)], &root).is_err());
    }

    /// Issue 14 finding 6: a directory `x/` with mode 7777, then a symbolic link `x` to a host directory, in
    /// one layer. The delayed chmod used to follow the link and make the host directory world-writable.
    #[test]
    fn attack_directory_mode_applied_through_a_later_symlink_to_a_host_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let host_dir = tmp.path().join("host-dir");
        std::fs::create_dir(&host_dir).unwrap();
        std::fs::set_permissions(&host_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(T::Directory);
        dir.set_mode(0o7777);
        dir.set_size(0);
        dir.set_path("x/").unwrap();
        dir.set_cksum();
        b.append(&dir, &b""[..]).unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(T::Symlink);
        link.set_mode(0o777);
        link.set_size(0);
        link.set_path("x").unwrap();
        link.set_link_name(&host_dir).unwrap();
        link.set_cksum();
        b.append(&link, &b""[..]).unwrap();
        let bytes = b.into_inner().unwrap();

        let e = unpack(&[layer(tmp.path(), 0, &bytes)], &root).unwrap_err().to_string();
        assert!(
            e.contains("directory \"x\" (mode 7777) was replaced later in the same layer, refusing"),
            "{e}"
        );
        assert!(e.contains("a symbolic link is in the way (not followed)"), "{e}");
        let mode = std::fs::metadata(&host_dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "the host directory's mode changed");
    }

    #[test]
    fn directory_modes_and_setuid_files_are_applied() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, mode) in [("d/", T::Directory, 0o1750), ("d/f", T::Regular, 0o4755)] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(0);
            h.set_uid(1000);
            h.set_gid(1000);
            h.set_path(path).unwrap();
            h.set_cksum();
            b.append(&h, &b""[..]).unwrap();
        }
        unpack(&[layer(tmp.path(), 0, &b.into_inner().unwrap())], &root).unwrap();
        let mode = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("d"), 0o1750);
        assert_eq!(mode("d/f"), 0o4755);
        if nix::unistd::geteuid().is_root() {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(std::fs::metadata(root.join("d/f")).unwrap().uid(), 1000);
            assert_eq!(std::fs::metadata(root.join("d")).unwrap().gid(), 1000);
        }
    }
}
