//! No trust on first use for TPMs, on real TPMs (swtpm manufactured with an EK certificate by a local CA,
//! swtpm-localca): the verifier checks the EK certificate against its configured EK CA, makes a credential for
//! the agent's AK (TPM2_MakeCredential in software), the agent's TPM activates it (TPM2_ActivateCredential), and
//! only then are the AK's quotes trusted. Refusals, each for its reason: an EK from another CA, a credential
//! activated by a different TPM, an AK that is not resident in the certified TPM, a quote by another AK.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use sealroom_agent::attester::Attester;
use sealroom_agent::attester::tpm::TpmAttester;
use sealroom_agent::paths::KernelPaths;
use sealroom_measurements::binding::{Kem, Nonce, TeePublicKey};
use sealroom_measurements::evidence::TpmEvidence;
use sealroom_tests::swtpm::{EkCa, Swtpm};
use sealroom_verifier::tpm::credential::{accept_activation, issue_challenge};
use sealroom_verifier::tpm::ek::parse_ek_cas;
use sealroom_verifier::tpm::quote::ExpectedExtraData;
use sealroom_verifier::tpm::verify::{AkTrust, QuoteInput, verify_tpm};
use sealroom_verifier::x509::{Certificate, UnixTime};

fn now() -> UnixTime {
    // swtpm_localca issues certificates valid from now: the test verifies at the time it runs.
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().try_into().unwrap()
}

fn attester(tpm: &Swtpm) -> TpmAttester {
    let root = sealroom_tests::swtpm::unique_temp_dir("ek-paths");
    TpmAttester::open(&tpm.tcti(), &KernelPaths::new(root)).unwrap()
}

fn cas(ca: &EkCa) -> Vec<Certificate> {
    parse_ek_cas(&[std::fs::read(ca.bundle_pem().unwrap()).unwrap()]).unwrap()
}

fn quote(a: &mut TpmAttester, nonce: [u8; 32]) -> (TpmEvidence, TeePublicKey) {
    let key = TeePublicKey::new(Kem::X25519HkdfSha256, vec![9u8; 32]).unwrap();
    match a.attest(&Nonce(nonce), &key).unwrap() {
        sealroom_agent::attester::Part::Tpm(t) => (t, key),
        other => panic!("not a TPM part: {other:?}"),
    }
}

fn verify(ev: &TpmEvidence, nonce: [u8; 32], key: &TeePublicKey, trust: &AkTrust) -> Result<String, String> {
    let quotes = [QuoteInput { attest: &ev.attest, signature: &ev.signature }];
    verify_tpm(
        &ev.ak_public,
        &ev.ak_cert_chain,
        &quotes,
        &ev.pcr_banks,
        &ExpectedExtraData::Binding(Nonce(nonce), key.clone()),
        trust,
        now(),
    )
    .map(|v| serde_json::to_string(&v.claims.ek).unwrap())
    .map_err(|e| e.to_string())
}

#[test]
fn ek_certified_ak_is_trusted_after_credential_activation() {
    let ca = EkCa::create().unwrap();
    let tpm = Swtpm::start_with_ek_cert(&ca).unwrap();
    let mut agent = attester(&tpm);
    let ek_cert = agent.ek_certificate().expect("swtpm_setup wrote an EK certificate").to_vec();
    let ak = agent.ak_public().to_vec();
    let secret = [0x5a; 32];
    let (ek, credential) = issue_challenge(&ek_cert, &[], &cas(&ca), &ak, &secret, now()).unwrap();
    assert_eq!(ek.key, "RSA-2048");
    assert_eq!(ek.device.model, "swtpm", "the TCG subjectAltName names the TPM model");
    assert_eq!(ek.device.manufacturer, "id:00001014");
    let returned = agent.activate_credential(&credential.id_object, &credential.encrypted_secret).unwrap();
    assert_eq!(returned, secret);
    let activated = accept_activation(&ek_cert, &[], &cas(&ca), &ak, &secret, &returned, now()).unwrap();
    let (ev, key) = quote(&mut agent, [1; 32]);
    let claims = verify(&ev, [1; 32], &key, &AkTrust::EkCertified(activated.clone())).unwrap();
    assert!(claims.contains("\"model\":\"swtpm\""), "{claims}");
    // Activation works again with a fresh secret (the EK and session are flushed each time).
    let (_, c2) = issue_challenge(&ek_cert, &[], &cas(&ca), &ak, &[0x33; 32], now()).unwrap();
    assert_eq!(agent.activate_credential(&c2.id_object, &c2.encrypted_secret).unwrap(), [0x33; 32]);

    // A quote by another TPM's AK does not ride on this activation.
    let other_ca = EkCa::create().unwrap();
    let other = Swtpm::start_with_ek_cert(&other_ca).unwrap();
    let mut other_agent = attester(&other);
    let (ev2, key2) = quote(&mut other_agent, [1; 32]);
    let err = verify(&ev2, [1; 32], &key2, &AkTrust::EkCertified(activated)).unwrap_err();
    assert!(err.contains("AK public key is not the AK activated against the EK"), "{err}");
}

#[test]
fn attack_tofu_ak_from_a_tpm_whose_ek_is_not_under_the_configured_ca() {
    let trusted = EkCa::create().unwrap();
    let rogue = EkCa::create().unwrap();
    let tpm = Swtpm::start_with_ek_cert(&rogue).unwrap();
    let agent = attester(&tpm);
    let ek_cert = agent.ek_certificate().unwrap().to_vec();
    let err = issue_challenge(&ek_cert, &[], &cas(&trusted), agent.ak_public(), &[1; 32], now())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("tpm ek certificate: "), "{err}");
    assert!(err.contains("configured EK CA"), "{err}");
    // Accepting an activation re-checks the certificate, so a secret from elsewhere does not help either.
    let err = accept_activation(&ek_cert, &[], &cas(&trusted), agent.ak_public(), &[1; 32], &[1; 32], now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("configured EK CA"), "{err}");
}

#[test]
fn attack_credential_activated_by_a_different_tpm_fails() {
    let ca = EkCa::create().unwrap();
    let certified = Swtpm::start_with_ek_cert(&ca).unwrap();
    let impostor = Swtpm::start_with_ek_cert(&ca).unwrap();
    let honest = attester(&certified);
    let mut other = attester(&impostor);
    let ek_cert = honest.ek_certificate().unwrap().to_vec();
    let secret = [0x42; 32];

    // 1. The credential for the certified TPM's EK and AK, handed to another TPM (same CA): it cannot decrypt.
    let (_, c) = issue_challenge(&ek_cert, &[], &cas(&ca), honest.ak_public(), &secret, now()).unwrap();
    let err = other.activate_credential(&c.id_object, &c.encrypted_secret).unwrap_err().to_string();
    assert!(err.contains("activate credential"), "{err}");

    // 2. The impostor presents the certified TPM's EK certificate with its own AK (the AK is not resident in the
    //    certified TPM). The certified TPM refuses to activate for an AK it does not hold, and the impostor's
    //    TPM cannot open a credential made for another EK: nobody recovers the secret.
    let (_, c) = issue_challenge(&ek_cert, &[], &cas(&ca), other.ak_public(), &secret, now()).unwrap();
    let mut honest = honest;
    let err = honest.activate_credential(&c.id_object, &c.encrypted_secret).unwrap_err().to_string();
    assert!(err.contains("activate credential"), "{err}");
    let err = other.activate_credential(&c.id_object, &c.encrypted_secret).unwrap_err().to_string();
    assert!(err.contains("activate credential"), "{err}");
    // Guessing the secret is refused with the reason.
    let err = accept_activation(&ek_cert, &[], &cas(&ca), other.ak_public(), &secret, &[0; 32], now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("the activated secret does not match the issued one"), "{err}");
}
