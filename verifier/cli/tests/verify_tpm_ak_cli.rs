//! `sealroom verify` trusts a TPM attestation key in exactly three ways, never on first use: a GCE AK
//! certificate chaining to Google's pinned roots, an AK pinned with `--tpm-ak`, or (live only, through
//! `sealroom attest`) credential activation against an EK certificate from `--tpm-ek-ca`. Real GCE quotes,
//! repackaged as sealroom TPM evidence, with and without their AK certificate.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use common::{sealroom, stderr_lines, td};

use sealroom_measurements::binding::{Kem, Nonce, TeePublicKey};
use sealroom_measurements::evidence::{Evidence, Platform, TpmEvidence};
use sealroom_verifier::appraisal::UNTRUSTED_AK;
use sealroom_verifier::tpm::gce_proto::GceAttestation;

/// sealroom TPM evidence around a real GCE quote; `with_chain` keeps its AK certificate chain.
fn tpm_evidence(with_chain: bool) -> (Evidence, Vec<u8>) {
    let gce = GceAttestation::decode(&std::fs::read(td("tpm/attestations/gce-cos-85-nonce9009.pb")).unwrap())
        .unwrap();
    let q = &gce.quotes[1];
    let ev = Evidence {
        nonce: Nonce([7; 32]),
        tee_public_key: TeePublicKey::new(Kem::X25519HkdfSha256, vec![9; 32]).unwrap(),
        platform: Platform::Tpm,
        tpm: Some(TpmEvidence {
            attest: q.attest.clone(),
            signature: q.signature.clone(),
            ak_public: gce.ak_public.clone(),
            ak_cert_chain: if with_chain { gce.ak_cert_chain.clone() } else { Vec::new() },
            pcr_banks: vec![q.bank.clone()],
            uefi_event_log: gce.event_log.clone(),
        }),
        tdx: None,
        sev_snp: None,
        azure: None,
        runtime_event_log: vec![],
        gpus: Vec::new(),
    };
    (ev, gce.ak_public)
}

const AT: &str = "2024-01-01T00:00:00Z";
/// Every measured layer skipped by choice: only the AK's trust and the binding decide.
const ALL: &str = "firmware,kernel,workload";
/// The real GCE quote's extraData is the 2-byte nonce it was made for, not a sealroom binding: once the AK is
/// trusted, this is what refuses the repackaged evidence.
const BINDING_REFUSAL: &str =
    "refused (contraindicated): binding: TPM quote extraData is 2 bytes, expected 32";

#[test]
fn attack_tofu_ak_verify_refuses_an_ak_nothing_vouches_for() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, ak) = tpm_evidence(false);
    let bare = dir.path().join("bare.pb");
    std::fs::write(&bare, ev.encode()).unwrap();
    let bare = bare.to_str().unwrap();

    // No AK certificate, no pinned AK: refused, naming the ways an AK can be trusted.
    let o = sealroom(&["--evidence", bare, "--at", AT, "--skip", ALL]);
    assert_eq!(o.status.code(), Some(1), "{:?}", stderr_lines(&o));
    assert_eq!(stderr_lines(&o), [format!("refused (contraindicated): {UNTRUSTED_AK}")]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("platform     FAILED   ak trust"));

    // Another pinned AK (one modulus byte changed, still a well-formed TPMT_PUBLIC) is not this one.
    let mut other = ak.clone();
    let last = other.len() - 1;
    other[last] ^= 1;
    let other_file = dir.path().join("other-ak.bin");
    std::fs::write(&other_file, &other).unwrap();
    let o =
        sealroom(&["--evidence", bare, "--at", AT, "--skip", ALL, "--tpm-ak", other_file.to_str().unwrap()]);
    assert_eq!(stderr_lines(&o), [format!("refused (contraindicated): {UNTRUSTED_AK}")]);

    // The AK pinned explicitly: trusted ("enrolled ak"); what is left is the binding.
    let ak_file = dir.path().join("ak.bin");
    std::fs::write(&ak_file, &ak).unwrap();
    let o = sealroom(&["--evidence", bare, "--at", AT, "--skip", ALL, "--tpm-ak", ak_file.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("platform     passed   enrolled ak"), "{out}");
    assert_eq!(stderr_lines(&o), [BINDING_REFUSAL]);

    // With its GCE AK certificate: trusted through Google's CA.
    let (ev, _) = tpm_evidence(true);
    let chained = dir.path().join("chained.pb");
    std::fs::write(&chained, ev.encode()).unwrap();
    let o = sealroom(&["--evidence", chained.to_str().unwrap(), "--at", AT, "--skip", ALL]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("platform     passed   google ak ca"), "{out}");
    assert_eq!(stderr_lines(&o), [BINDING_REFUSAL]);
}

/// An EK CA cannot vouch for an AK offline (the EK cannot sign; activation needs the live TPM): `--tpm-ek-ca`
/// is refused with that reason and the two commands that do it, rather than accepted and ignored.
#[test]
fn tpm_ek_ca_is_refused_offline_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (ev, _) = tpm_evidence(false);
    let f = dir.path().join("bare.pb");
    std::fs::write(&f, ev.encode()).unwrap();
    let o = sealroom(&[
        "--evidence",
        f.to_str().unwrap(),
        "--at",
        AT,
        "--tpm-ek-ca",
        &td("certs/google/tpm_ek_root_1.cer"),
    ]);
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(
        stderr_lines(&o),
        ["error: --tpm-ek-ca: an EK certificate vouches for an AK only through credential activation \
             (TPM2_MakeCredential / TPM2_ActivateCredential) with the live TPM, and the EK cannot sign, so no \
             evidence file can prove it offline; run `sealroom attest --agent URL --tpm-ek-ca CA --out ev.pb \
             --tpm-ak-out ak.bin`, then `sealroom verify --evidence ev.pb --tpm-ak ak.bin`"]
    );
}
