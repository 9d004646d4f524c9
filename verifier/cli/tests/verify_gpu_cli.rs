//! `sealroom verify --evidence REPORT --gpu-certs CHAIN --gpu-rims DIR --nonce HEX --at TIME` on the real H100
//! data in verifier/testdata/gpu (MANIFEST.md there), run as the built binary.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::Path;
use std::process::{Command, Output};

const AT: &str = "2024-06-01T00:00:00Z";
const OLDER_NONCE: &str = "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e";
const NEWER_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

fn td(file: &str) -> String {
    format!("{}/../testdata/gpu/nvtrust/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// A RIM directory holding copies of the given files.
fn rim_dir(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        std::fs::copy(td(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn verify(report: &str, chain: &str, rims: &Path, nonce: &str, at: &str) -> (bool, String, String) {
    let o: Output = Command::new(env!("CARGO_BIN_EXE_sealroom"))
        .args(["verify", "--evidence", &td(report), "--gpu-certs", &td(chain)])
        .args(["--gpu-rims".as_ref(), rims.as_os_str()])
        .args(["--nonce", nonce, "--at", at])
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

const DRIVER: &str = "Driver_RIM_test_no_gpu.swidtag";
const VBIOS: &str = "1010_0200_882_96005E0001_test_no_gpu.swidtag";
const PROD: &str = "1010_0200_882_96005E0001_PROD.swidtag";

#[test]
fn older_h100_report_verifies_offline_and_says_revocation_was_not_checked() {
    let rims = rim_dir(&[DRIVER, VBIOS]);
    let (ok, out, err) = verify("attestationReport.txt", "gpuAkCertChain.txt", rims.path(), OLDER_NONCE, AT);
    assert!(ok, "{out}{err}");
    assert!(out.contains("gpu            affirming"), "{out}");
    assert!(out.contains("measurements   33 compared, all match"), "{out}");
    assert!(out.contains("revocation     revocation not checked"), "{out}");
}

#[test]
fn refusals_exit_non_zero_with_the_reason() {
    let rims = rim_dir(&[DRIVER, VBIOS]);
    let (ok, _, err) =
        verify("hopperAttestationReport.txt", "hopperCertChain.txt", rims.path(), NEWER_NONCE, AT);
    assert!(!ok);
    assert_eq!(err.trim(), "refused: gpu: no matching RIM for driver 550.90.07 on GH100");
    let (ok, _, err) = verify("attestationReport.txt", "gpuAkCertChain.txt", rims.path(), NEWER_NONCE, AT);
    assert!(!ok);
    assert!(err.starts_with("refused: gpu: nonce mismatch"), "{err}");
    let prod = rim_dir(&[DRIVER, PROD]);
    let (ok, out, _) = verify("attestationReport.txt", "gpuAkCertChain.txt", prod.path(), OLDER_NONCE, AT);
    assert!(!ok);
    assert_eq!(out.lines().filter(|l| l.starts_with("failed: gpu: VBIOS RIM index")).count(), 4, "{out}");
    // At 2026-12-01 the RIM signing chain has expired: a RIM in the directory that does not verify is an error.
    let (ok, _, err) = verify(
        "attestationReport.txt",
        "gpuAkCertChain.txt",
        rims.path(),
        OLDER_NONCE,
        "2026-12-01T00:00:00Z",
    );
    assert!(!ok);
    assert!(err.contains("signer chain: certificate 'HCC RIM L4 Signer': expired"), "{err}");
}

/// sealroom Evidence carrying a GPU: the gpu layer checks the GPU report against the evidence's binding digest
/// (a real report replayed into other evidence fails), and `gpu_required` refuses evidence without a GPU.
#[test]
fn attack_gpu_report_replayed_into_sealroom_evidence_fails_the_gpu_layer() {
    use sealroom_measurements::binding::{Kem, Nonce, TeePublicKey};
    use sealroom_measurements::evidence::{Evidence, GpuEvidence, Platform, SevSnpEvidence};
    use sealroom_verifier::x509::Certificate;
    let snp_td = |f: &str| format!("{}/../testdata/snp/trustee/{f}", env!("CARGO_MANIFEST_DIR"));
    let chain = Certificate::chain_from_pem(&std::fs::read(td("gpuAkCertChain.txt")).unwrap()).unwrap();
    let gpu = GpuEvidence {
        report: hex::decode(std::fs::read_to_string(td("attestationReport.txt")).unwrap().trim()).unwrap(),
        cert_chain: chain.iter().map(|c| c.der().to_vec()).collect(),
    };
    let mut ev = Evidence {
        nonce: Nonce([7; 32]),
        tee_public_key: TeePublicKey::new(Kem::X25519HkdfSha256, vec![9; 32]).unwrap(),
        platform: Platform::SevSnp,
        tpm: None,
        tdx: None,
        sev_snp: Some(SevSnpEvidence {
            report: std::fs::read(snp_td("test-report.bin")).unwrap(),
            cert_chain: vec![std::fs::read(snp_td("test-vcek.der")).unwrap()],
        }),
        azure: None,
        runtime_event_log: vec![],
        gpus: vec![gpu],
    };
    let dir = tempfile::tempdir().unwrap();
    let rims = rim_dir(&[DRIVER, VBIOS]);
    let run = |ev: &Evidence, extra: &[&str]| -> serde_json::Value {
        let f = dir.path().join("ev.pb");
        std::fs::write(&f, ev.clone().encode()).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_sealroom"))
            .args(["verify", "--evidence", f.to_str().unwrap(), "--at", "2024-01-01T00:00:00Z", "--json"])
            .args(["--gpu-rims".as_ref(), rims.path().as_os_str()])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let v = run(&ev, &[]);
    let layers = v["submods"]["sealroom"]["sealroom.layers"].as_array().unwrap();
    let gpu = layers.iter().find(|l| l["layer"] == "gpu").unwrap();
    assert_eq!(gpu["outcome"], "failed");
    assert_eq!(gpu["reference"], "nvidia rims; revocation not checked");
    let reason = gpu["failures"][0].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("gpu 0: gpu: nonce mismatch (report {OLDER_NONCE}, expected ")),
        "{reason}"
    );
    // No GPU, but the policy requires one.
    ev.gpus.clear();
    let policy = dir.path().join("gpu.json");
    std::fs::write(
        &policy,
        r#"{"gpu_required": true, "allowed_architectures": ["hopper"], "driver_rims": "skip", "vbios_rims": "skip"}"#,
    )
    .unwrap();
    let v = run(&ev, &["--gpu-policy", policy.to_str().unwrap()]);
    let layers = v["submods"]["sealroom"]["sealroom.layers"].as_array().unwrap();
    let gpu = layers.iter().find(|l| l["layer"] == "gpu").unwrap();
    assert_eq!(gpu["failures"][0], "gpu: the policy requires a GPU, the evidence has none");
}
