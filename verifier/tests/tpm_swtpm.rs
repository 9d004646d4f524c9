//! TPM quote verification against a real TPM 2.0 (swtpm, installed by ci/setup with tpm2-tools): ECDSA P-256
//! and RSA-PSS attestation keys, which the GCE corpus (RSASSA only) does not cover. The AK is trusted by pinning
//! its TPMT_PUBLIC, as sealroom does for swtpm.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use sealroom_measurements::evidence::{HashAlg, PcrBank};
use sealroom_verifier::tpm::quote::ExpectedExtraData;
use sealroom_verifier::tpm::structures::{Public, Signature};
use sealroom_verifier::tpm::verify::{AkTrust, QuoteInput, verify_tpm};

struct Swtpm {
    child: Child,
    dir: PathBuf,
    tcti: String,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port whose successor is free too: the swtpm TCTI expects the control port at port + 1.
fn free_port_pair() -> u16 {
    loop {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

fn start(name: &str) -> Swtpm {
    let dir = std::env::temp_dir().join(format!("sealroom-swtpm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for _ in 0..5 {
        let port = free_port_pair();
        let ctrl = port + 1;
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.display()))
            .args(["--server", &format!("type=tcp,port={port},bindaddr=127.0.0.1")])
            .args(["--ctrl", &format!("type=tcp,port={ctrl},bindaddr=127.0.0.1")])
            .spawn()
            .expect("swtpm must be installed (ci/setup)");
        let mut tpm = Swtpm { child, dir: dir.clone(), tcti: format!("swtpm:host=127.0.0.1,port={port}") };
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return tpm;
            }
            if tpm.child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = tpm.child.kill();
        std::mem::forget(tpm);
    }
    panic!("swtpm did not start");
}

impl Swtpm {
    fn run(&self, args: &[&str]) {
        let out = Command::new(args[0])
            .args(&args[1..])
            .current_dir(&self.dir)
            .env("TPM2TOOLS_TCTI", &self.tcti)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        // swtpm has no resource manager: flush every transient object after each command.
        let _ = Command::new("tpm2_flushcontext").arg("-t").env("TPM2TOOLS_TCTI", &self.tcti).output();
    }
    fn file(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).unwrap()
    }
}

const PCRS: [u32; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 15];

/// Creates a restricted signing AK of `alg` under an ECC primary and quotes PCRs with `nonce`.
fn quote(tpm: &Swtpm, alg: &str, scheme: Option<&str>, nonce: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>, PcrBank) {
    tpm.run(&["tpm2_createprimary", "-C", "e", "-g", "sha256", "-G", "ecc", "-c", "primary.ctx"]);
    tpm.run(&[
        "tpm2_create",
        "-C",
        "primary.ctx",
        "-G",
        alg,
        "-a",
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
        "-u",
        "ak.pub",
        "-r",
        "ak.priv",
    ]);
    tpm.run(&["tpm2_load", "-C", "primary.ctx", "-u", "ak.pub", "-r", "ak.priv", "-c", "ak.ctx"]);
    // Extend PCR 15 so the quote covers a non-trivial value.
    tpm.run(&["tpm2_pcrextend", &format!("15:sha256={}", "ab".repeat(32))]);
    let sel = format!("sha256:{}", PCRS.map(|i| i.to_string()).join(","));
    let mut args = vec![
        "tpm2_quote",
        "-c",
        "ak.ctx",
        "-l",
        &sel,
        "-q",
        nonce,
        "-m",
        "quote.msg",
        "-s",
        "quote.sig",
        "-g",
        "sha256",
    ];
    if let Some(s) = scheme {
        args.extend(["--scheme", s]);
    }
    tpm.run(&args);
    tpm.run(&["tpm2_pcrread", &sel, "-o", "pcrs.bin"]);
    let pcrs = tpm.file("pcrs.bin");
    let values: BTreeMap<u32, Vec<u8>> =
        PCRS.iter().zip(pcrs.chunks(32)).map(|(i, v)| (*i, v.to_vec())).collect();
    // tpm2_create writes a TPM2B_PUBLIC: drop the size prefix to get the TPMT_PUBLIC.
    let ak = tpm.file("ak.pub")[2..].to_vec();
    (tpm.file("quote.msg"), tpm.file("quote.sig"), ak, PcrBank { alg: HashAlg::Sha256, values })
}

fn verify(msg: &[u8], sig: &[u8], ak: &[u8], bank: &PcrBank, nonce: &[u8]) -> Result<(), String> {
    verify_tpm(
        ak,
        &[],
        &[QuoteInput { attest: msg, signature: sig }],
        std::slice::from_ref(bank),
        &ExpectedExtraData::Exact(nonce.to_vec()),
        &AkTrust::Pinned(ak.to_vec()),
        0,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn exercise(alg: &str, scheme: Option<&str>, expect_sig: fn(&Signature) -> bool) {
    let tpm = start(&alg.replace(':', "-"));
    let nonce = hex::decode("abcdef0123").unwrap();
    let (msg, sig, ak, bank) = quote(&tpm, alg, scheme, "abcdef0123");
    assert!(expect_sig(&Signature::parse(&sig).unwrap()), "{alg}: unexpected signature scheme");
    assert!(Public::parse(&ak).unwrap().is_attestation_key());
    verify(&msg, &sig, &ak, &bank, &nonce).unwrap();
    // Single-field mutations: nonce, signature, claimed PCR, quote body, pinned AK.
    assert!(
        verify(&msg, &sig, &ak, &bank, b"other").unwrap_err().contains("does not match the expected nonce")
    );
    let mut bad = sig.clone();
    let n = bad.len();
    bad[n - 5] ^= 1;
    assert!(
        verify(&msg, &bad, &ak, &bank, &nonce).unwrap_err().contains("AK signature over TPMS_ATTEST invalid")
    );
    let mut b2 = bank.clone();
    b2.values.get_mut(&15).unwrap()[0] ^= 1;
    assert!(verify(&msg, &sig, &ak, &b2, &nonce).unwrap_err().contains("PCR digest mismatch"));
    let mut m2 = msg.clone();
    m2[20] ^= 1;
    assert!(
        verify(&m2, &sig, &ak, &bank, &nonce).unwrap_err().contains("AK signature over TPMS_ATTEST invalid")
    );
    let err = verify_tpm(
        &ak,
        &[],
        &[QuoteInput { attest: &msg, signature: &sig }],
        &[bank],
        &ExpectedExtraData::Exact(nonce),
        &AkTrust::Pinned(vec![0; 4]),
        0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("not the pinned AK"), "{err}");
    let dir = tpm.dir.clone();
    drop(tpm);
    assert!(!Path::new(&dir).exists());
}

#[test]
fn swtpm_ecdsa_p256_quote() {
    exercise("ecc256:ecdsa-sha256:null", None, |s| matches!(s, Signature::Ecdsa { .. }));
}

#[test]
fn swtpm_rsa_pss_quote() {
    exercise("rsa2048:rsapss-sha256:null", Some("rsapss"), |s| matches!(s, Signature::RsaPss { .. }));
}

#[test]
fn swtpm_rsassa_quote() {
    exercise("rsa2048:rsassa-sha256:null", None, |s| matches!(s, Signature::RsaSsa { .. }));
}
