//! Replays the checked-in fuzz corpus of the agent's parsers (plus truncations and byte flips): every input
//! returns Ok or Err, none panics. The fuzz targets themselves live in fuzz/ (cargo-fuzz, nightly).
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::Path;

use sealroom_agent::attester::snp::parse_cert_table;

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files.into_iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn mutations(seed: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![seed.to_vec()];
    for cut in [0, 1, 23, 24, 25, 47, 48, seed.len() / 2, seed.len().saturating_sub(1)] {
        out.push(seed[..cut.min(seed.len())].to_vec());
    }
    for i in (0..seed.len()).step_by(7) {
        let mut m = seed.to_vec();
        m[i] ^= 0xff;
        out.push(m);
    }
    out
}

#[test]
fn snp_cert_table_corpus_never_panics() {
    let mut ok = 0;
    for seed in corpus("snp_cert_table") {
        for input in mutations(&seed) {
            if parse_cert_table(&input).is_ok() {
                ok += 1;
            }
        }
    }
    // The well-formed seeds parse.
    assert!(ok >= 3, "{ok}");
}
