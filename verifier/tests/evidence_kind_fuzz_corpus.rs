//! Replays the `evidence_kind` fuzz corpus (and every truncation and byte flips of each seed) through the
//! same entry point as the fuzz target, so CI proves no input makes kind detection panic; the seeds themselves
//! are recognised as their kind, and the truncated SNP report is named as such.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

#[path = "common/corpus.rs"]
mod common_corpus;

use common_corpus::{mutations, seeds};

use sealroom_verifier::evidence_kind::{Detected, detect};

#[test]
fn evidence_kind_corpus() {
    for (_, input) in seeds("evidence_kind") {
        for m in mutations(&input) {
            if let Ok(detected) = detect(&m) {
                let _ = detected.into_input();
            }
        }
    }
}

#[test]
fn evidence_kind_seeds_are_recognised() {
    for (name, input) in seeds("evidence_kind") {
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
