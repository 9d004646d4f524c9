//! The private-inference scenario's last check: search what the operator holds (the serial console, the VM's
//! disks, the broker's state directory) for a secret's plaintext. A hit names the file and offset; no hit over
//! every byte of every file is the claim "the operator never saw it" made checkable.
//!
//! Needles shorter than [`MIN_NEEDLE`] bytes are not searched for: a short number matches by chance in
//! megabytes of ciphertext and file-system metadata, so a hit would prove nothing and a miss would claim too
//! much.

use std::path::{Path, PathBuf};

/// The shortest needle searched for.
pub const MIN_NEEDLE: usize = 8;

/// One secret, as bytes that would appear if it were stored in plaintext.
#[derive(Debug, Clone)]
pub struct Needle {
    /// What it is ("patient record", "coefficient bmi", …).
    pub what: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Needle {
    /// A needle, or `None` when it is shorter than [`MIN_NEEDLE`] (see the module's note).
    #[must_use]
    pub fn new(what: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Option<Self> {
        let bytes = bytes.into();
        (bytes.len() >= MIN_NEEDLE).then(|| Self { what: what.into(), bytes })
    }
}

/// Where a needle was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The needle's `what`.
    pub what: String,
    /// The file.
    pub file: PathBuf,
    /// Byte offset of the first occurrence.
    pub offset: usize,
}

/// What a search covered and found.
#[derive(Debug, Default)]
pub struct Report {
    /// Regular files read.
    pub files: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Every needle's first occurrence in every file.
    pub hits: Vec<Hit>,
}

/// The offset of the first occurrence of `needle` in `hay`.
#[must_use]
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, _) = needle.split_first()?;
    let mut from = 0;
    while let Some(rest) = hay.get(from..) {
        let i = from + rest.iter().position(|b| *b == first)?;
        if hay.get(i..i + needle.len())? == needle {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// Searches every regular file under `roots` (files or directories, recursively; symlinks not followed) for
/// every needle.
///
/// # Errors
/// A root that does not exist or a file that cannot be read: an unsearched file must not pass as clean.
pub fn search(roots: &[PathBuf], needles: &[Needle]) -> std::io::Result<Report> {
    let mut report = Report::default();
    for root in roots {
        walk(root, needles, &mut report)?;
    }
    Ok(report)
}

fn walk(path: &Path, needles: &[Needle], report: &mut Report) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| with_path(path, &e))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| with_path(path, &e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for e in entries {
            walk(&e, needles, report)?;
        }
    } else if meta.is_file() {
        let hay = std::fs::read(path).map_err(|e| with_path(path, &e))?;
        report.files += 1;
        report.bytes += meta.len();
        for n in needles {
            if let Some(offset) = find(&hay, &n.bytes) {
                report.hits.push(Hit { what: n.what.clone(), file: path.to_path_buf(), offset });
            }
        }
    }
    // Sockets (the broker's admin socket) and other special files hold no stored bytes.
    Ok(())
}

fn with_path(path: &Path, e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn finds_each_needle_where_it_is_and_nowhere_else() {
        assert_eq!(find(b"xxabcabcd", b"abcd"), Some(5));
        assert_eq!(find(b"abcd", b"abcd"), Some(0));
        assert_eq!(find(b"abc", b"abcd"), None);
        assert_eq!(find(b"", b"a"), None);
        assert_eq!(find(b"abc", b""), None);

        let dir = sealroom_tests::swtpm::unique_temp_dir("plaintext");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.bin"), b"ciphertext only").unwrap();
        std::fs::write(dir.join("sub/b.log"), b"console: 59 2 32.1 101 157 93.2 38 4 4.8598 87\n").unwrap();
        let record = Needle::new("patient record", "59 2 32.1 101 157 93.2 38 4 4.8598 87").unwrap();
        let coef = Needle::new("coefficient bmi", "5.602146").unwrap();
        let r = search(std::slice::from_ref(&dir), &[record, coef]).unwrap();
        assert_eq!(r.files, 2);
        assert_eq!(r.hits, [Hit { what: "patient record".into(), file: dir.join("sub/b.log"), offset: 9 }]);
        // A root that is missing is an error, not a clean result.
        assert!(search(&[dir.join("missing")], &[]).unwrap_err().to_string().contains("missing"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn short_needles_are_not_searched_for() {
        assert!(Needle::new("age", "59").is_none());
        assert!(Needle::new("eight", "12345678").is_some());
    }
}
