//! Replays the `evidence_kind` fuzz corpus (and every truncation and byte flips of each seed) through the
//! same entry point as the fuzz target, so CI proves no input makes kind detection panic; the seeds themselves
//! are recognised as their kind, and the truncated SNP report is named as such.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;

use sealroom_verifier::evidence_kind::{Detected, detect};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/evidence_kind");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let out: Vec<_> = files
        .iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(p).unwrap()))
        .collect();
    assert!(!out.is_empty(), "empty corpus {}", dir.display());
    out
}

/// The input, every prefix (bounded count), and byte flips at spread-out offsets.
fn mutations(input: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![input.to_vec()];
    let step = (input.len() / 64).max(1);
    for cut in (0..input.len()).step_by(step) {
        out.push(input[..cut].to_vec());
    }
    for at in (0..input.len()).step_by(step) {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut m = input.to_vec();
            m[at] ^= mask;
            out.push(m);
        }
    }
    out
}

#[test]
fn evidence_kind_corpus() {
    for (_, input) in corpus() {
        for m in mutations(&input) {
            if let Ok(detected) = detect(&m) {
                let _ = detected.into_input();
            }
        }
    }
}

#[test]
fn evidence_kind_seeds_are_recognised() {
    for (name, input) in corpus() {
        let kind = match detect(&input) {
            Ok(Detected::SgxQuote(_)) => "sgx",
            Ok(Detected::TdxQuote(_)) => "tdx",
            Ok(Detected::SnpReport(_)) => "snp",
            Ok(Detected::Azure(_)) => "azure",
            Ok(Detected::Gce(_)) => "gce",
            Ok(Detected::Sealroom(_)) => "sealroom",
            Ok(other) => panic!("{name}: {other:?}"),
            Err(e) => {
                assert_eq!(name, "snp_report_truncated.bin", "{e}");
                assert_eq!(
                    e.to_string(),
                    "sev-snp report: version 2, 1183 bytes: a report is exactly 1184 (truncated: 1 byte missing)"
                );
                continue;
            }
        };
        let expected = match name.as_str() {
            "sgx_quote_v3" | "sgx_quote_v3.hex" => "sgx",
            "tdx_quote_v4" => "tdx",
            "snp_report.bin" => "snp",
            "azure_tdx_evidence.json" => "azure",
            "gce_attestation.pb" => "gce",
            other => panic!("unexpected seed {other}"),
        };
        assert_eq!(kind, expected, "{name}");
    }
}
