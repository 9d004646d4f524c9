//! Replaying a checked-in fuzz corpus in a plain test, so CI proves no seed (and no simple mutation of one)
//! makes a parser panic even where cargo-fuzz does not run. Shared by the corpus tests of the verifier and the
//! broker (each includes this file with `#[path]`), so they mutate the seeds the same way.

use std::path::{Path, PathBuf};

/// The seeds of `fuzz/corpus/TARGET` with their file names, in name order; an empty corpus fails the test.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_root().join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let out: Vec<_> = files
        .iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(p).unwrap()))
        .collect();
    assert!(!out.is_empty(), "empty corpus {}", dir.display());
    out
}

/// The seeds of `fuzz/corpus/TARGET` without their names.
#[allow(dead_code)]
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    seeds(target).into_iter().map(|(_, data)| data).collect()
}

/// The repository's `fuzz/corpus`, found above the including crate's manifest (`verifier/`, `verifier/broker/`).
pub fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("fuzz/corpus"))
        .find(|dir| dir.is_dir())
        .unwrap()
}

/// The input, every 64th-length prefix, and byte flips (four masks) at spread-out offsets.
pub fn mutations(input: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![input.to_vec()];
    let step = (input.len() / 64).max(1);
    for cut in (0..input.len()).step_by(step) {
        out.push(input[..cut].to_vec());
    }
    for at in (0..input.len()).step_by(step) {
        for mask in [0x01u8, 0x20, 0x80, 0xff] {
            let mut m = input.to_vec();
            m[at] ^= mask;
            out.push(m);
        }
    }
    out
}
