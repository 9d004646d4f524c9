//! The output digest: one SHA-256 over a workload's output directory, so that a result can be bound into an
//! attestation (the `output` runtime event) and recomputed by anyone holding the files.
//!
//! Canonical form: every regular file under the directory, by its path relative to it (components joined with
//! `/`, no leading `./`), sorted by the path's bytes; the listing has one line per file in `sha256sum` format,
//! `<64 lowercase hex>  <path>\n`; the output digest is the SHA-256 of the listing. Directories contribute only
//! through the files in them. Anything else (symbolic links, sockets, devices, FIFOs) and paths containing a
//! newline or a backslash make the digest fail: they cannot be recomputed unambiguously. With coreutils:
//!
//! ```text
//! cd output && find . -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0r sha256sum | sha256sum
//! ```

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::digest::Hasher;
use crate::error::{Error, Result};
use crate::evidence::HashAlg;

const LAYER: &str = "output";
/// Most files an output directory may hold.
pub const MAX_FILES: usize = 100_000;

/// The output digest of `dir` and the listing it covers.
///
/// # Errors
/// Unreadable entries, special files, symlinks, paths with newline or backslash, too many files.
pub fn digest_dir(dir: &Path) -> Result<([u8; 32], String)> {
    let mut files: Vec<(Vec<u8>, PathBuf)> = Vec::new();
    walk(dir, &mut Vec::new(), &mut files)?;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut listing = String::new();
    let mut buf = vec![0u8; 1 << 16];
    for (rel, path) in &files {
        let mut h = Hasher::new(HashAlg::Sha256);
        let mut f = std::fs::File::open(path).map_err(|e| io("file", path, &e))?;
        loop {
            let n = f.read(&mut buf).map_err(|e| io("file", path, &e))?;
            let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else { break };
            h.update(chunk);
        }
        listing.push_str(&hex::encode(h.finish()));
        listing.push_str("  ");
        listing.push_str(&String::from_utf8_lossy(rel));
        listing.push('\n');
    }
    Ok((crate::digest::sha256(listing.as_bytes()), listing))
}

fn io(field: &'static str, path: &Path, e: &std::io::Error) -> Error {
    Error::invalid(LAYER, field, format!("{}: {e}", path.display()))
}

fn walk(dir: &Path, rel: &mut Vec<u8>, out: &mut Vec<(Vec<u8>, PathBuf)>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| io("directory", dir, &e))?;
    for entry in rd {
        let entry = entry.map_err(|e| io("directory", dir, &e))?;
        let name = entry.file_name();
        let bytes = name.as_bytes();
        if bytes.iter().any(|b| *b == b'\n' || *b == b'\\') {
            return Err(Error::invalid(
                LAYER,
                "path",
                format!("{}: names with a newline or backslash are not allowed", entry.path().display()),
            ));
        }
        if std::str::from_utf8(bytes).is_err() {
            return Err(Error::invalid(LAYER, "path", format!("{}: not UTF-8", entry.path().display())));
        }
        let ty = entry.file_type().map_err(|e| io("file type", &entry.path(), &e))?;
        let len = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(bytes);
        if ty.is_dir() {
            walk(&entry.path(), rel, out)?;
        } else if ty.is_file() {
            if out.len() >= MAX_FILES {
                return Err(Error::invalid(LAYER, "files", format!("more than {MAX_FILES}")));
            }
            out.push((rel.clone(), entry.path()));
        } else {
            return Err(Error::invalid(
                LAYER,
                "file type",
                format!("{}: only regular files and directories are allowed", entry.path().display()),
            ));
        }
        rel.truncate(len);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_is_sorted_by_bytes_and_matches_sha256sum_format() {
        let dir = std::env::temp_dir().join(format!("sealroom-output-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::write(dir.join("a/b"), b"1").unwrap();
        std::fs::write(dir.join("a.txt"), b"2").unwrap();
        std::fs::create_dir_all(dir.join("empty")).unwrap();
        let (d, listing) = digest_dir(&dir).unwrap();
        let lines: Vec<&str> = listing.lines().map(|l| l.split_once("  ").unwrap().1).collect();
        // '.' (0x2e) sorts before '/' (0x2f), as in `LC_ALL=C sort`.
        assert_eq!(lines, vec!["a.txt", "a/b"]);
        assert_eq!(d, crate::digest::sha256(listing.as_bytes()));
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
        assert!(digest_dir(&dir).unwrap_err().to_string().contains("only regular files"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
