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

async fn client(
    url: String,
) -> sealroom_proto::attestation::v1::attestation_client::AttestationClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();
    sealroom_proto::attestation::v1::attestation_client::AttestationClient::new(channel)
}

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

/// The same flow over the agent's gRPC API, as a remote verifier runs it: GetTpmIdentity, a credential,
/// ActivateCredential, then GetEvidence whose quote is trusted through the activation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ek_path_over_the_agent_grpc_api() {
    use sealroom_measurements::evidence::Evidence;
    use sealroom_proto::attestation::v1 as pb;

    let ca = EkCa::create().unwrap();
    let tpm = Swtpm::start_with_ek_cert(&ca).unwrap();
    let agent = sealroom_tests::agent::start_agent(&tpm, &[]).await.unwrap();
    let url = format!("http://{}", agent.tcp_addr.unwrap());
    let mut c = client(url).await;
    let id = c.get_tpm_identity(pb::GetTpmIdentityRequest {}).await.unwrap().into_inner();
    let secret = [0x77; 32];
    let (_, cred) =
        issue_challenge(&id.ek_certificate, &[], &cas(&ca), &id.ak_public, &secret, now()).unwrap();
    let credential = pb::TpmCredential {
        id_object: cred.id_object.clone(),
        encrypted_secret: cred.encrypted_secret.clone(),
    };
    let returned = c
        .activate_credential(pb::ActivateCredentialRequest { credential: Some(credential) })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let activated =
        accept_activation(&id.ek_certificate, &[], &cas(&ca), &id.ak_public, &secret, &returned, now())
            .unwrap();
    let nonce = [3u8; 32];
    let ev = c
        .get_evidence(pb::GetEvidenceRequest { nonce: nonce.to_vec(), tee_public_key: Vec::new() })
        .await
        .unwrap()
        .into_inner()
        .evidence
        .unwrap();
    let ev = Evidence::try_from(ev).unwrap();
    let tpm_ev = ev.tpm.unwrap();
    assert_eq!(tpm_ev.ak_public, id.ak_public, "GetTpmIdentity names the AK that quotes");
    verify(&tpm_ev, nonce, &ev.tee_public_key, &AkTrust::EkCertified(activated)).unwrap();

    // Refusals: oversized fields, a missing credential, a corrupted credential (the TPM's integrity check).
    let big = pb::TpmCredential { id_object: vec![0; 257], encrypted_secret: cred.encrypted_secret.clone() };
    let s = c.activate_credential(pb::ActivateCredentialRequest { credential: Some(big) }).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("credential.id_object is 257 bytes"), "{}", s.message());
    let s = c.activate_credential(pb::ActivateCredentialRequest { credential: None }).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    let mut bad = cred.id_object.clone();
    bad[5] ^= 1;
    let s = c
        .activate_credential(pb::ActivateCredentialRequest {
            credential: Some(pb::TpmCredential { id_object: bad, encrypted_secret: cred.encrypted_secret }),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("activate credential"), "{}", s.message());
    agent.stop().await.unwrap();
}

/// A TPM without an EK certificate (a plain swtpm) has no identity to offer: the verifier falls back to nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_without_ek_certificate_has_no_identity() {
    use sealroom_proto::attestation::v1 as pb;

    let tpm = Swtpm::start().unwrap();
    let agent = sealroom_tests::agent::start_agent(&tpm, &[]).await.unwrap();
    let mut c = client(format!("http://{}", agent.tcp_addr.unwrap())).await;
    let s = c.get_tpm_identity(pb::GetTpmIdentityRequest {}).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::FailedPrecondition);
    assert!(s.message().contains("no TPM with an EK certificate"), "{}", s.message());
    agent.stop().await.unwrap();
}
