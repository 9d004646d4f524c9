//! `sealroom verify` as a real process: every evidence kind the README lists is recognised (raw and hex), a
//! defect is named by its kind, every warning says why, and "affirming" needs every measured layer judged or
//! skipped by choice. Each refusal and warning is checked by its exact line.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use common::{sealroom, stderr_lines, td, text};

const SGX_QUOTE: &str = "tdx/dcap-qvl/sgx_quote";
const SGX_COLLATERAL: &str = "tdx/dcap-qvl/sgx_quote_collateral.json";
const SGX_AT: &str = "2025-07-19T10:01:17Z";
/// MRENCLAVE of the dcap-qvl SGX quote (verifier/testdata/tdx/MANIFEST.md).
const SGX_MRENCLAVE: &str = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb";
const SGX_TCB_WARNING: &str = "warning: sgx: TCB status ConfigurationAndSWHardeningNeeded (advisories \
                               INTEL-SA-00289, INTEL-SA-00615) is not an accepted status (UpToDate)";

/// The issue's acceptance command: the repository's SGX v3 quote with its collateral is recognised and fully
/// verified (PCK chain and CRL, QE identity, TCB level, three signatures). Its verdict is a warning, for two
/// stated reasons: Intel rates this platform ConfigurationAndSWHardeningNeeded (two advisories), and nothing
/// was compared with the enclave's identity. Accepting that status and giving the MRENCLAVE affirms (exit 0);
/// another MRENCLAVE is refused.
#[test]
fn sgx_v3_quote_with_collateral_verifies_and_says_why_it_is_not_affirming() {
    let base = ["--evidence", &td(SGX_QUOTE), "--collateral", &td(SGX_COLLATERAL), "--at", SGX_AT];
    let o = sealroom(&base);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}");
    assert!(out.starts_with("verdict: warning"), "{out}");
    assert!(out.contains("[sgx quote]"), "{out}");
    assert!(out.contains("platform     passed   intel collateral"), "{out}");
    assert!(out.contains("  platform: verified, not a key-policy platform (sgx quote)\n"), "{out}");
    assert_eq!(
        stderr_lines(&o),
        [
            SGX_TCB_WARNING,
            "warning: workload: not checked: no reference values given (sgx.mrenclave, sgx.mrsigner)"
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("enclave.json");
    std::fs::write(
        &reference,
        format!(r#"{{"firmware": "skip", "kernel": "skip", "workload": {{"sgx.mrenclave": ["{SGX_MRENCLAVE}"]}}}}"#),
    )
    .unwrap();
    let accept =
        ["--tcb-status", "ConfigurationAndSWHardeningNeeded", "--reference", reference.to_str().unwrap()];
    let o = sealroom(&[&base[..], &accept[..], &["--json"]].concat());
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = &v["submods"]["sealroom"];
    assert_eq!(s["ear_status"], "affirming");
    assert_eq!(s["sealroom.evidence"], "sgx quote");
    assert_eq!(s["sealroom.layers"][0]["claims"]["tcb_status"], "ConfigurationAndSWHardeningNeeded");
    assert_eq!(s["sealroom.layers"][4]["layer"], "workload");
    assert_eq!(s["sealroom.layers"][4]["outcome"], "passed");
    assert_eq!(s["sealroom.warnings"], serde_json::json!([]));

    // Only the status is accepted: the enclave is still compared.
    let other = dir.path().join("other.json");
    std::fs::write(
        &other,
        format!(
            r#"{{"firmware": "skip", "kernel": "skip", "workload": {{"sgx.mrenclave": ["{}"]}}}}"#,
            "00".repeat(32)
        ),
    )
    .unwrap();
    let o = sealroom(
        &[
            &base[..],
            &["--tcb-status", "ConfigurationAndSWHardeningNeeded", "--reference", other.to_str().unwrap()],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&o),
        [format!(
            "refused (contraindicated): workload: sgx.mrenclave is {SGX_MRENCLAVE}, not a reference value"
        )]
    );

    // The enclave skipped by choice: only the TCB status is left to warn about.
    let o = sealroom(&[&base[..], &["--skip", "workload"]].concat());
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(stderr_lines(&o), [SGX_TCB_WARNING]);
}

/// Quotes are often shipped as hex text: the same verdict as the raw bytes, for SGX and TDX.
#[test]
fn hex_quotes_verify_like_raw_ones() {
    let dir = tempfile::tempdir().unwrap();
    for (quote, collateral, at) in [
        (SGX_QUOTE, SGX_COLLATERAL, SGX_AT),
        ("tdx/dcap-qvl/tdx_quote", "tdx/dcap-qvl/tdx_quote_collateral.json", "2025-07-19T10:00:34Z"),
    ] {
        let raw = std::fs::read(td(quote)).unwrap();
        let hex_file = dir.path().join("quote.hex");
        std::fs::write(&hex_file, format!("0x{}\n", hex::encode(&raw))).unwrap();
        let args = |f: &str| {
            sealroom(&[
                "--evidence",
                f,
                "--collateral",
                &td(collateral),
                "--at",
                at,
                "--skip",
                "firmware,kernel,workload",
                "--tcb-status",
                "ConfigurationAndSWHardeningNeeded",
                "--json",
            ])
        };
        let from_raw = args(&td(quote));
        let from_hex = args(hex_file.to_str().unwrap());
        assert_eq!(from_raw.status.code(), Some(0), "{quote}: {:?}", text(&from_raw));
        assert_eq!(from_hex.status.code(), Some(0), "{quote}: {:?}", text(&from_hex));
        assert_eq!(from_raw.stdout, from_hex.stdout, "{quote}");
    }
}

/// A TDX quote without collateral: genuine, but the TCB was not evaluated, and with no reference values each
/// measured layer is named as not checked.
#[test]
fn tdx_quote_without_collateral_warns_with_one_line_per_reason() {
    let o = sealroom(&["--evidence", &td("tdx/dcap-qvl/tdx_quote"), "--at", "2025-07-19T10:00:34Z"]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert_eq!(
        stderr_lines(&o),
        [
            "warning: tdx: no collateral: TCB status not evaluated (quote signatures and PCK chain verified, PCK \
             revocation not checked)",
            "warning: firmware: not checked: no reference values given (mrtd, rtmr0)",
            "warning: kernel: not checked: no reference values given (rtmr1, rtmr2)",
            "warning: workload: not checked: no reference values given (rtmr3)",
        ]
    );
    // The table carries the same lines.
    assert!(out.contains("  warning: tdx: no collateral: TCB status not evaluated"), "{out}");
    assert!(out.contains("  warning: kernel: not checked"), "{out}");
}

/// A truncated or overlong SEV-SNP report is a size error of an SNP report (no verdict, exit 4), not an
/// "invalid protobuf"; so is a hex one.
#[test]
fn snp_report_size_defects_are_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let report = std::fs::read(td("snp/trustee/test-report.bin")).unwrap();
    let short = dir.path().join("short.bin");
    std::fs::write(&short, &report[..1183]).unwrap();
    let mut longer = report.clone();
    longer.push(0);
    let long = dir.path().join("long.bin");
    std::fs::write(&long, &longer).unwrap();
    let long_hex = dir.path().join("long.hex");
    std::fs::write(&long_hex, hex::encode(&longer)).unwrap();
    let vcek = td("snp/trustee/test-vcek.der");
    for (file, reason) in [
        (
            &short,
            "sev-snp report: version 2, 1183 bytes: a report is exactly 1184 (truncated: 1 byte missing)",
        ),
        (
            &long,
            "sev-snp report: version 2, 1185 bytes: a report is exactly 1184 (overlong: 1 byte after the report)",
        ),
        (
            &long_hex,
            "hex evidence: sev-snp report: version 2, 1185 bytes: a report is exactly 1184 (overlong: 1 byte after \
             the report)",
        ),
    ] {
        let f = file.to_str().unwrap();
        let o = sealroom(&["--evidence", f, "--vcek", &vcek, "--at", "2024-01-01T00:00:00Z"]);
        assert_eq!(o.status.code(), Some(4), "{:?}", text(&o));
        assert_eq!(stderr_lines(&o), [format!("error: {f}: {reason}")]);
    }
}

/// Azure TDX evidence whose TD quote is missing is named for what it is (the HCL report says TDX) and refused
/// for what is missing, not labelled "azure sev-snp".
#[test]
fn azure_tdx_evidence_without_td_quote_is_named_tdx_and_refused_for_the_quote() {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(td("azure/az-tdx-vtpm/evidence-v1.json")).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("td_quote").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("no-td-quote.json");
    std::fs::write(&f, v.to_string()).unwrap();
    let o = sealroom(&[
        "--evidence",
        f.to_str().unwrap(),
        "--at",
        "2026-01-01T00:00:00Z",
        "--nonce",
        &hex::encode("challenge"),
    ]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("[azure tdx vtpm evidence]"), "{out}");
    assert!(!out.contains("sev-snp"), "{out}");
    assert_eq!(stderr_lines(&o), ["refused (contraindicated): azure: TDX evidence without a TD quote"]);
}

/// GCE evidence with no reference values names every unchecked layer with its registers; a partial reference
/// names the rest; skipping by choice affirms; a layer cannot be both given and skipped.
#[test]
fn no_reference_values_is_a_warning_naming_the_unchecked_layers() {
    let f = td("tpm/attestations/gce-cos-85-nonce9009.pb");
    let base = ["--evidence", f.as_str(), "--at", "2024-01-01T00:00:00Z", "--nonce", "9009"];
    let o = sealroom(&base);
    assert_eq!(o.status.code(), Some(3), "{:?}", text(&o));
    let lines = stderr_lines(&o);
    let unchecked = |layer: &str, pcrs: &str| {
        format!(
            "warning: {layer}: not checked: no reference values given (PCR {pcrs} in sha1, sha256, sha384)"
        )
    };
    assert_eq!(
        lines,
        [
            unchecked("firmware", "0, 1, 2, 3, 5, 6, 7"),
            unchecked("kernel", "4, 9, 11, 12"),
            unchecked("workload", "15")
        ]
    );

    // Firmware skipped by choice: the two others are still named.
    let o = sealroom(&[&base[..], &["--skip", "firmware"]].concat());
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(stderr_lines(&o), [unchecked("kernel", "4, 9, 11, 12"), unchecked("workload", "15")]);

    // Every layer skipped by choice (repeated and comma forms): affirming.
    let o = sealroom(&[&base[..], &["--skip", "firmware,kernel", "--skip", "workload"]].concat());
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert!(text(&o).1.is_empty(), "{:?}", text(&o));

    // A layer with reference values cannot be skipped too.
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("r.json");
    std::fs::write(&r, r#"{"firmware": "skip", "kernel": {"pcr11.sha256": ["00"]}, "workload": "skip"}"#)
        .unwrap();
    let o = sealroom(&[&base[..], &["--reference", r.to_str().unwrap(), "--skip", "kernel"]].concat());
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(stderr_lines(&o), ["error: --skip kernel: --reference gives reference values for that layer"]);
}

/// The exit statuses are part of `--help`.
#[test]
fn help_documents_the_exit_statuses() {
    let o = sealroom(&["--help"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    for line in ["Exit status:", "  0  affirming", "  1  contraindicated", "  3  warning", "  4  no verdict"]
    {
        assert!(out.contains(line), "{line}: {out}");
    }
}

/// A golden document judges the kernel layer only: the firmware and workload layers it does not cover are
/// named as not checked (even in a refused verdict's EAR), and the kernel layer it covers cannot be skipped.
#[test]
fn golden_covers_the_kernel_layer_and_names_the_others_as_not_checked() {
    let golden = format!("{}/../../measurements/golden/fixture-uki/golden.json", env!("CARGO_MANIFEST_DIR"));
    let f = td("tpm/attestations/gce-cos-85-nonce9009.pb");
    let base =
        ["--evidence", f.as_str(), "--at", "2024-01-01T00:00:00Z", "--nonce", "9009", "--golden", &golden];
    // The fixture UKI is not what this GCE VM booted: refused for the kernel layer.
    let o = sealroom(&[&base[..], &["--json"]].concat());
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    let line = &stderr_lines(&o)[0];
    assert!(line.starts_with("refused (contraindicated): kernel: pcr"), "{line}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = &v["submods"]["sealroom"];
    assert!(s["ear_appraisal_policy_ids"][0].as_str().unwrap().starts_with("sealroom/golden/"), "{s}");
    assert_eq!(
        s["sealroom.warnings"],
        serde_json::json!([
            "firmware: not checked: no reference values given (PCR 0, 1, 2, 3, 5, 6, 7 in sha1, sha256, sha384)",
            "workload: not checked: no reference values given (PCR 15 in sha1, sha256, sha384)"
        ])
    );
    let o = sealroom(&[&base[..], &["--skip", "kernel"]].concat());
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(stderr_lines(&o), ["error: --skip kernel: --golden gives reference values for that layer"]);
}
