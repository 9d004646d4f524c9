//! `sealroom verify` as a real process on corpus evidence: verdict, exit status, reasons, JSON EAR.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::process::{Command, Output};

fn td(path: &str) -> String {
    format!("{}/testdata/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn sealroom(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sealroom"))
        .arg("verify")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn snp_report_affirming_exits_zero() {
    let o = sealroom(&[
        "--evidence",
        &td("snp/trustee/test-report.bin"),
        "--vcek",
        &td("snp/trustee/test-vcek.der"),
        "--at",
        "2024-01-01T00:00:00Z",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.starts_with("verdict: affirming"), "{out}");
    assert!(out.contains("snp.measurement=a1f39304"), "{out}");
}

#[test]
fn snp_report_with_collateral_dir_and_json() {
    let o = sealroom(&[
        "--evidence",
        &td("snp/trustee/test-vlek-report.bin"),
        "--collateral",
        &td("snp/trustee"),
        "--at",
        "1748736000",
        "--json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["iat"], 1_748_736_000);
    assert_eq!(v["eat_profile"], "tag:github.com,2023:veraison/ear");
    let s = &v["submods"]["sealroom"];
    assert_eq!(s["ear.status"], "affirming");
    assert_eq!(s["ear.trustworthiness-vector"]["hardware"], 2);
    assert_eq!(s["sealroom.layers"][0]["claims"]["signing_key"], "Vlek");
}

#[test]
fn snp_report_refusals_exit_nonzero_with_reason() {
    // Debug-enabled guest policy (go-sev-guest report) under the default policy.
    let o = sealroom(&[
        "--evidence",
        &td("snp/go-sev-guest/attestation.bin"),
        "--collateral",
        &td("snp/go-sev-guest"),
        "--at",
        "2024-01-01T00:00:00Z",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains("refused (contraindicated): snp: guest policy allows debugging"), "{err}");
    // Allowed explicitly: affirming.
    let o = sealroom(&[
        "--evidence",
        &td("snp/go-sev-guest/attestation.bin"),
        "--collateral",
        &td("snp/go-sev-guest"),
        "--at",
        "2024-01-01T00:00:00Z",
        "--allow-debug",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    // Expired VLEK.
    let o = sealroom(&[
        "--evidence",
        &td("snp/trustee/test-vlek-report.bin"),
        "--vcek",
        &td("snp/trustee/test-vlek.der"),
        "--at",
        "2026-01-01T00:00:00Z",
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("snp: VLEK chain: certificate 'SEV-VLEK': expired"), "{err}");
    // Wrong nonce.
    let o = sealroom(&[
        "--evidence",
        &td("snp/trustee/test-report.bin"),
        "--vcek",
        &td("snp/trustee/test-vcek.der"),
        "--at",
        "2024-01-01T00:00:00Z",
        "--nonce",
        "00",
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("does not carry the expected nonce 00"), "{err}");
}

#[test]
fn gce_attestation_affirming_and_wrong_nonce() {
    let f = td("tpm/attestations/gce-cos-85-nonce9009.pb");
    let o = sealroom(&["--evidence", &f, "--at", "2024-01-01T00:00:00Z", "--nonce", "9009"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("[gce vtpm attestation]") && out.contains("event log    passed"), "{out}");
    let o = sealroom(&["--evidence", &f, "--at", "2024-01-01T00:00:00Z", "--nonce", "9010"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("tpm quote: extraData 9009 does not match the expected nonce 9010"), "{err}");
}

#[test]
fn gce_reference_values_judge_layers() {
    let dir = std::env::temp_dir().join(format!("sealroom-verify-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = td("tpm/attestations/gce-cos-85-nonce9009.pb");
    // Take the real PCR 0 (sha256) from the JSON output and use it as the firmware reference.
    let o = sealroom(&["--evidence", &f, "--at", "2024-01-01T00:00:00Z", "--nonce", "9009", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let layers = v["submods"]["sealroom"]["sealroom.layers"].as_array().unwrap();
    let fw = layers.iter().find(|l| l["layer"] == "firmware").unwrap();
    let pcr0 = fw["claims"]["pcr0.sha256"].as_str().unwrap().to_owned();
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        format!(r#"{{"firmware": {{"pcr0.sha256": ["{pcr0}"]}}, "kernel": "skip", "workload": "skip"}}"#),
    )
    .unwrap();
    let o = sealroom(&[
        "--evidence",
        &f,
        "--at",
        "2024-01-01T00:00:00Z",
        "--nonce",
        "9009",
        "--reference",
        good.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("firmware     passed   digests"), "{out}");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"firmware": {"pcr0.sha256": ["00"]}, "kernel": "skip", "workload": "skip"}"#)
        .unwrap();
    let o = sealroom(&[
        "--evidence",
        &f,
        "--at",
        "2024-01-01T00:00:00Z",
        "--nonce",
        "9009",
        "--reference",
        bad.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains(&format!("firmware: pcr0.sha256 is {pcr0}, not a reference value")), "{err}");
    // A register in the wrong layer is an input error.
    let wrong = dir.join("wrong.json");
    std::fs::write(&wrong, r#"{"firmware": {"pcr15.sha256": ["00"]}, "kernel": "skip", "workload": "skip"}"#)
        .unwrap();
    let o =
        sealroom(&["--evidence", &f, "--at", "2024-01-01T00:00:00Z", "--reference", wrong.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("does not belong to the firmware layer"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn azure_evidence_affirming_and_refused() {
    let f = td("azure/az-snp-vtpm/evidence-v0.json");
    let o =
        sealroom(&["--evidence", &f, "--at", "2026-01-01T00:00:00Z", "--nonce", &hex::encode("challenge")]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o =
        sealroom(&["--evidence", &f, "--at", "2026-01-01T00:00:00Z", "--nonce", &hex::encode("egnellahc")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("tpm quote: extraData"), "{:?}", text(&o));
}

#[test]
fn unrecognised_input_is_an_error() {
    let o = sealroom(&["--evidence", &td("snp/MANIFEST.md"), "--at", "0"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("unrecognised evidence"), "{:?}", text(&o));
}
