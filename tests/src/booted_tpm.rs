//! A swtpm in the "booted" state a small signed golden document describes, for host-level tests that run the
//! real agent and broker without booting an image: PCRs 0–7 untouched (no firmware ran) and PCR 11 extended
//! once with a fixed stand-in for what systemd-stub measures. The golden document is predicted from that
//! description, never read back from the TPM, so a test that passes shows the verifier's replay agrees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use sealroom_measurements::digest::sha256;
use sealroom_measurements::golden::{self, GoldenDocument, ImageInfo, SCHEMA, UkiInfo};
use sealroom_measurements::uki::PredictedRegister;

use crate::swtpm::Swtpm;

/// Lower-case hex SHA-256.
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha256(bytes))
}

/// The stand-in for a boot: the digest "systemd-stub" extends into PCR 11 (SHA-256 bank) on every test TPM.
#[must_use]
pub fn boot_digest() -> [u8; 32] {
    sha256(b"sealroom test UKI: .linux .osrel .cmdline")
}

/// A fresh swtpm with PCR 11 extended once by [`boot_digest`] (tpm2-tools, installed by `ci/setup`).
///
/// # Panics
/// When swtpm or `tpm2_pcrextend` cannot run (a test harness: the message says which).
#[must_use]
pub fn booted_swtpm() -> Swtpm {
    let tpm = Swtpm::start().unwrap();
    boot(&tpm);
    tpm
}

/// Extends PCR 11 of `tpm` once by [`boot_digest`], as a boot would: for a swtpm started otherwise (e.g. with an
/// EK certificate) that should match the golden document too.
///
/// # Panics
/// When `tpm2_pcrextend` cannot run or fails.
pub fn boot(tpm: &Swtpm) {
    let out = std::process::Command::new("tpm2_pcrextend")
        .arg(format!("11:sha256={}", hex::encode(boot_digest())))
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .output()
        .expect("tpm2_pcrextend (tpm2-tools, installed by ci/setup)");
    assert!(out.status.success(), "tpm2_pcrextend: {}", String::from_utf8_lossy(&out.stderr));
}

/// The signed golden document [`write_golden`] wrote.
#[derive(Debug, Clone)]
pub struct Golden {
    /// `sha256:<hex>` of the document (what a policy's `golden` rule names).
    pub digest: String,
    /// `ed25519:<hex>`: the signer as a policy names it.
    pub signer: String,
    /// The signer's raw Ed25519 public key, hex (what `--golden-key` takes).
    pub public_key: String,
}

/// Writes the golden document of a [`booted_swtpm`] as `dir/boot.json` + `dir/boot.json.sig`, signed with a fresh
/// Ed25519 key: PCRs 0–7 all zero, PCR 11 = SHA-256(0³² ‖ boot digest).
///
/// # Panics
/// On I/O errors (a test harness).
#[must_use]
pub fn write_golden(dir: &Path) -> Golden {
    let mut pcr11 = vec![0u8; 32];
    pcr11.extend_from_slice(&boot_digest());
    let register = |n: u32, value: String| PredictedRegister {
        register: format!("pcr{n}"),
        alg: "sha256".into(),
        events: vec![],
        value,
        complete: true,
    };
    let mut registers: Vec<PredictedRegister> = (0..8).map(|n| register(n, "00".repeat(32))).collect();
    registers.push(register(11, sha256_hex(&pcr11)));
    let doc = GoldenDocument {
        schema: SCHEMA.into(),
        image: ImageInfo { id: "swtpm-test-boot".into(), version: "1".into(), disk_sha256: None },
        uki: UkiInfo {
            file_sha256: "0".repeat(64),
            authenticode_sha256: "0".repeat(64),
            authenticode_sha384: "0".repeat(96),
            sections: vec![],
        },
        registers,
        platforms: golden::default_platforms(),
        packages: std::collections::BTreeMap::new(),
    };
    let bytes = doc.to_json().unwrap();
    let (pkcs8, public) = golden::generate_signing_key().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("boot.json"), &bytes).unwrap();
    std::fs::write(dir.join("boot.json.sig"), golden::sign(&bytes, &pkcs8).unwrap()).unwrap();
    Golden {
        digest: format!("sha256:{}", sha256_hex(&bytes)),
        signer: format!("ed25519:{public}"),
        public_key: public,
    }
}
