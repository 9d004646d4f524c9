//! `sealroom verify` as a real process on corpus evidence: verdict, exit status, reasons, JSON EAR.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use common::{sealroom, td, text};

/// Every measured layer skipped by choice.
const ALL: &str = "firmware,kernel,workload";

/// The warning of a DCAP quote checked without Intel collateral.
const NO_COLLATERAL: &str = "tdx: no collateral: TCB status not evaluated (quote signatures and PCK chain verified, \
                             PCK revocation not checked)";

#[test]
fn snp_report_affirming_only_with_its_measurement_judged_or_skipped_by_choice() {
    let args = [
        "--evidence",
        &td("snp/trustee/test-report.bin"),
        "--vcek",
        &td("snp/trustee/test-vcek.der"),
        "--at",
        "2024-01-01T00:00:00Z",
    ];
    // No reference values: genuine, but the launch measurement was compared with nothing: a warning, exit 3.
    let o = sealroom(&args);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}");
    assert!(out.starts_with("verdict: warning"), "{out}");
    assert_eq!(
        err.trim(),
        "warning: firmware: not checked: no reference values given (snp.measurement)",
        "{out}"
    );
    // Skipped by an explicit choice: affirming.
    let o = sealroom(&[&args[..], &["--skip", "firmware"]].concat());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.starts_with("verdict: affirming"), "{out}");
    assert!(out.contains("snp.measurement=a1f39304"), "{out}");
    assert!(err.is_empty(), "{err}");
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
        "--skip",
        "firmware",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["iat"], 1_748_736_000);
    assert_eq!(v["eat_profile"], "tag:ietf.org,2026:rats/ear#04");
    let s = &v["submods"]["sealroom"];
    assert_eq!(s["ear_status"], "affirming");
    assert_eq!(s["ear_trustworthiness_vector"]["hardware"], 2);
    assert_eq!(s["sealroom.layers"][0]["claims"]["signing_key"], "Vlek");
}

#[test]
fn snp_report_refusals_exit_nonzero_with_reason() {
    // Debug-enabled guest policy (go-sev-guest report) under the default policy.
    let debug_guest = [
        "--evidence",
        &td("snp/go-sev-guest/attestation.bin"),
        "--collateral",
        &td("snp/go-sev-guest"),
        "--at",
        "2024-01-01T00:00:00Z",
    ];
    let o = sealroom(&debug_guest);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains("refused (contraindicated): snp: guest policy allows debugging"), "{err}");
    // Allowed explicitly: affirming.
    let o = sealroom(&[&debug_guest[..], &["--allow-debug", "--skip", "firmware"]].concat());
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
    let o = sealroom(&["--evidence", &f, "--at", "2024-01-01T00:00:00Z", "--nonce", "9009", "--skip", ALL]);
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
    // The same evidence judged against a reference-value file.
    let judged = |reference: &std::path::Path| {
        let r = reference.to_str().unwrap();
        sealroom(&["--evidence", &f, "--at", "2024-01-01T00:00:00Z", "--nonce", "9009", "--reference", r])
    };
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        format!(r#"{{"firmware": {{"pcr0.sha256": ["{pcr0}"]}}, "kernel": "skip", "workload": "skip"}}"#),
    )
    .unwrap();
    let o = judged(&good);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("firmware     passed   digests"), "{out}");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"firmware": {"pcr0.sha256": ["00"]}, "kernel": "skip", "workload": "skip"}"#)
        .unwrap();
    let o = judged(&bad);
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

/// `sealroom verify` of the Azure corpus evidence `file` at 2026-01-01 with the nonce `nonce` (its bytes, hex
/// on the command line) and `extra` arguments. The corpus was made for the nonce "challenge".
fn azure(file: &str, nonce: &str, extra: &[&str]) -> std::process::Output {
    let nonce = hex::encode(nonce);
    sealroom(&[&["--evidence", file, "--at", "2026-01-01T00:00:00Z", "--nonce", &nonce], extra].concat())
}

#[test]
fn azure_evidence_affirming_and_refused() {
    let f = td("azure/az-snp-vtpm/evidence-v0.json");
    let o = azure(&f, "challenge", &["--skip", ALL]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("[azure sev-snp vtpm evidence]"), "{:?}", text(&o));
    let o = azure(&f, "egnellahc", &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("tpm quote: extraData"), "{:?}", text(&o));
}

#[test]
fn unrecognised_input_is_no_verdict() {
    let o = sealroom(&["--evidence", &td("snp/MANIFEST.md"), "--at", "0"]);
    assert_eq!(o.status.code(), Some(4), "{:?}", text(&o));
    assert!(text(&o).1.contains(": evidence: unrecognised ("), "{:?}", text(&o));
}

#[test]
fn tdx_quote_with_collateral_affirming_and_expired_collateral_refused() {
    // Manifest: dcap-qvl tdx_quote is VALID, UpToDate, at 2025-07-19T10:00:34Z with its collateral.
    let q = td("tdx/dcap-qvl/tdx_quote");
    let c = td("tdx/dcap-qvl/tdx_quote_collateral.json");
    let o = sealroom(&["--evidence", &q, "--collateral", &c, "--at", "2025-07-19T10:00:34Z", "--skip", ALL]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("[tdx quote]") && out.contains("tcb_status=UpToDate"), "{out}");
    assert!(out.contains("mrtd=91eb2b44"), "{out}");
    // The collateral's CRLs expire right after: refused with the reason.
    let o = sealroom(&["--evidence", &q, "--collateral", &c, "--at", "2025-08-19T10:00:34Z"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("expired"), "{:?}", text(&o));
    // Without collateral: signatures and PCK chain verified, TCB unknown -> warning, exit 3, and it says why.
    let o = sealroom(&["--evidence", &q, "--at", "2025-07-19T10:00:34Z", "--json", "--skip", ALL]);
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["submods"]["sealroom"]["ear_status"], "warning");
    assert_eq!(v["submods"]["sealroom"]["ear_trustworthiness_vector"]["hardware"], 32);
    assert_eq!(v["submods"]["sealroom"]["sealroom.warnings"], serde_json::json!([NO_COLLATERAL]));
    assert_eq!(text(&o).1.trim(), format!("warning: {NO_COLLATERAL}"));
}

#[test]
fn azure_tdx_evidence_is_genuine_but_tcb_unknown_without_collateral() {
    let f = td("azure/az-tdx-vtpm/evidence-v1.json");
    let o = azure(&f, "challenge", &["--json", "--skip", ALL]);
    assert_eq!(o.status.code(), Some(3), "{:?}", text(&o));
    assert_eq!(text(&o).1.trim(), format!("warning: {NO_COLLATERAL}"));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = &v["submods"]["sealroom"];
    assert_eq!(s["ear_status"], "warning");
    assert_eq!(s["sealroom.evidence"], "azure tdx vtpm evidence");
    assert_eq!(s["sealroom.layers"][0]["outcome"], "passed");
    assert_eq!(
        s["sealroom.layers"][0]["claims"]["pcrs"]["0"],
        "782b20b10f55cc46e2142cc2145d548698073e5beb82752c8d7f9279f0d8a273"
    );
    // A reversed nonce is refused.
    let o = azure(&f, "egnellahc", &[]);
    assert!(text(&o).1.contains("refused (contraindicated): tpm quote: extraData"), "{:?}", text(&o));
}

/// sealroom `Evidence` protobuf built around real hardware evidence: the platform layer verifies, and the
/// binding layer refuses because that hardware evidence was not made for this nonce and TEE key.
#[test]
fn sealroom_evidence_protobuf_checks_the_binding() {
    use sealroom_measurements::binding::{Kem, Nonce, TeePublicKey};
    use sealroom_measurements::evidence::{Evidence, Platform, SevSnpEvidence, TpmEvidence};
    let dir = std::env::temp_dir().join(format!("sealroom-verify-ev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snp = Evidence {
        nonce: Nonce([7; 32]),
        tee_public_key: TeePublicKey::new(Kem::X25519HkdfSha256, vec![9; 32]).unwrap(),
        platform: Platform::SevSnp,
        tpm: None,
        tdx: None,
        sev_snp: Some(SevSnpEvidence {
            report: std::fs::read(td("snp/trustee/test-report.bin")).unwrap(),
            cert_chain: vec![std::fs::read(td("snp/trustee/test-vcek.der")).unwrap()],
        }),
        azure: None,
        runtime_event_log: vec![],
        gpus: Vec::new(),
    };
    let f = dir.join("snp.pb");
    std::fs::write(&f, snp.clone().encode()).unwrap();
    let o = sealroom(&["--evidence", f.to_str().unwrap(), "--at", "2024-01-01T00:00:00Z", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let layers = &v["submods"]["sealroom"]["sealroom.layers"];
    assert_eq!(layers[0]["layer"], "platform");
    assert_eq!(layers[0]["outcome"], "passed");
    assert_eq!(layers[1]["layer"], "binding");
    assert!(
        layers[1]["failures"][0]
            .as_str()
            .unwrap()
            .contains("REPORT_DATA does not carry the sealroom binding tag"),
        "{layers}"
    );
    // The expected nonce must be the evidence's.
    let o = sealroom(&[
        "--evidence",
        f.to_str().unwrap(),
        "--at",
        "2024-01-01T00:00:00Z",
        "--nonce",
        &"08".repeat(32),
    ]);
    assert!(text(&o).1.contains("binding: evidence nonce 0707"), "{:?}", text(&o));

    let gce = sealroom_verifier::tpm::gce_proto::GceAttestation::decode(
        &std::fs::read(td("tpm/attestations/gce-cos-85-nonce9009.pb")).unwrap(),
    )
    .unwrap();
    let q = &gce.quotes[1];
    let tpm = Evidence {
        platform: Platform::Tpm,
        tpm: Some(TpmEvidence {
            attest: q.attest.clone(),
            signature: q.signature.clone(),
            ak_public: gce.ak_public.clone(),
            ak_cert_chain: gce.ak_cert_chain.clone(),
            pcr_banks: vec![q.bank.clone()],
            uefi_event_log: gce.event_log.clone(),
        }),
        sev_snp: None,
        ..snp
    };
    let f = dir.join("tpm.pb");
    std::fs::write(&f, tpm.encode()).unwrap();
    let o = sealroom(&["--evidence", f.to_str().unwrap(), "--at", "2024-01-01T00:00:00Z"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(out.contains("platform     passed") && out.contains("event log    passed"), "{out}");
    assert!(err.contains("binding: TPM quote extraData is 2 bytes, expected 32"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
