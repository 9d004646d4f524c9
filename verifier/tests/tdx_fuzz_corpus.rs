//! Replays the checked-in corpus of the Intel fuzz targets (`fuzz/corpus/{tdx_quote,tdx_collateral,
//! intel_cert_chain}`) plus simple mutations (truncations, byte flips) through the same entry points the fuzzer
//! runs: every input must return (accepted or refused) without panicking.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::path::Path;

use sealroom_verifier::tdx::{Collateral, VerifiedCollateral, fuzzing};

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(name);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "empty corpus {}", dir.display());
    out
}

/// The input, its truncations at a spread of lengths, and single-byte flips at a stride.
fn mutations(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![data.to_vec()];
    let n = data.len();
    for len in [0, 1, 2, 4, 47, 48, 49, 100, 631, 632, 636, 700, n / 3, n / 2, n.saturating_sub(1)] {
        if len <= n {
            out.push(data[..len].to_vec());
        }
    }
    let stride = (n / 97).max(1);
    for off in (0..n).step_by(stride) {
        let mut m = data.to_vec();
        m[off] ^= 0xff;
        out.push(m);
    }
    out
}

fn collateral() -> VerifiedCollateral {
    let mut c = Collateral::default();
    c.add_bytes(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tdx/dcap-qvl/tdx_quote_collateral.json"),
        )
        .unwrap(),
        "corpus",
    )
    .unwrap();
    c.verify(fuzzing::FUZZ_TIME).unwrap()
}

#[test]
fn tdx_quote_corpus_and_mutations_never_panic() {
    let c = collateral();
    let mut runs = 0;
    for (_, data) in corpus("tdx_quote") {
        for m in mutations(&data) {
            fuzzing::tdx_quote(&m, Some(&c));
            runs += 1;
        }
    }
    assert!(runs > 500, "{runs}");
}

#[test]
fn tdx_collateral_corpus_and_mutations_never_panic() {
    for (_, data) in corpus("tdx_collateral") {
        for m in mutations(&data) {
            fuzzing::tdx_collateral(&m);
        }
    }
}

#[test]
fn intel_cert_chain_corpus_and_mutations_never_panic() {
    for (_, data) in corpus("intel_cert_chain") {
        for m in mutations(&data) {
            fuzzing::intel_cert_chain(&m);
        }
    }
}
