//! No trust on first use between the agent and the key broker (issue 14 item 7): a broker serving with
//! `--tpm-ek-ca` trusts a TPM's AK only after the agent's TPM activated a credential made in `Challenge` for its
//! EK certificate, its AK and that nonce (docs/tpm-ek.md). On real TPMs: swtpm manufactured with EK certificates
//! by local CAs (swtpm-localca), the real agent client and the real `sealroom broker serve` process.
//!
//! Refusals, each with its one-line reason: a credential made for one TPM's EK activated by another TPM, an
//! activated secret presented with another nonce or another TPM's evidence, an EK certificate from another CA;
//! and a TPM whose AK nothing vouches for. The enrolled-AK path (`--tpm-ak`) still works for a TPM that names
//! its EK to a broker without EK CAs.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;

use sealroom_agent::server::Running;
use sealroom_agent::workload::broker::BrokerKeys;
use sealroom_agent::workload::digest::Sha256Digest;
use sealroom_agent::workload::spec::BrokerEndpoint;
use sealroom_agent::workload::{KeyProvider, receipt};
use sealroom_broker::appraisal::VerifierAppraiser;
use sealroom_broker::audit::AuditLog;
use sealroom_broker::ek_path::EkPath;
use sealroom_broker::grpc::KeyBrokerService;
use sealroom_broker::keystore::{Kek, KeyStore};
use sealroom_broker::nonce::NonceBook;
use sealroom_broker::nonce_mac::NonceKeys;
use sealroom_broker::policy::GoldenSet;
use sealroom_broker::service::{Broker, BrokerParts};
use sealroom_broker::token::Signer;
use sealroom_broker::{Randomness, SystemClock, SystemRandomness};
use sealroom_measurements::cel::RuntimeEvent;
use sealroom_proto::attestation::v1 as apb;
use sealroom_proto::attestation::v1::attestation_client::AttestationClient;
use sealroom_proto::keybroker::v1 as kpb;
use sealroom_proto::keybroker::v1::key_broker_client::KeyBrokerClient;
use sealroom_tests::broker::{Provider, tpm_policy};
use sealroom_tests::swtpm::{EkCa, Swtpm, unique_temp_dir};
use sealroom_verifier::tpm::ek::parse_ek_cas;
use tonic::transport::Channel;

const IMAGE: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const KEY_ID: &str = "provider-a/data";
const DATA_KEY: &[u8] = b"the provider's data key";
const OUTPUT: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const UNTRUSTED: &str = "verifier: tpm quote: AK not trusted: no GCE AK certificate, not an enrolled AK (--tpm-ak), \
                         not activated against an EK certificate from a configured EK CA (--tpm-ek-ca); an AK is \
                         never trusted on first use";
const MISMATCH: &str = "tpm credential: the activated secret does not match the issued one: the AK is not resident \
                        in the TPM that holds the certified EK";

fn policy() -> String {
    tpm_policy(IMAGE, &["--input=/data/in.parquet"], &[], None)
}

async fn agent(tpm: &Swtpm, broker_kid: &str) -> Running {
    let events = [
        RuntimeEvent::ImageReference(format!("registry.example/analytics@{IMAGE}")),
        RuntimeEvent::ManifestDigest(IMAGE.into()),
        RuntimeEvent::Arg("--input=/data/in.parquet".into()),
        RuntimeEvent::BrokerKey(broker_kid.into()),
        RuntimeEvent::LaunchSeparator,
    ];
    sealroom_tests::agent::start_agent(tpm, &events).await.unwrap()
}

fn endpoint(addr: &str, kid: &str) -> BrokerEndpoint {
    BrokerEndpoint {
        name: "broker".into(),
        url: format!("http://{addr}"),
        key_id: kid.to_owned(),
        tls_ca: None,
    }
}

/// The agent's own broker client asks for the key.
async fn release(agent: &Running, addr: &str, kid: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    BrokerKeys::new(agent.handle.clone())
        .release(&endpoint(addr, kid), &[KEY_ID.into()])
        .await
        .map_err(|e| e.to_string())
}

async fn agent_client(agent: &Running) -> AttestationClient<Channel> {
    let url = format!("http://{}", agent.tcp_addr.unwrap());
    AttestationClient::new(Channel::from_shared(url).unwrap().connect().await.unwrap())
}

async fn broker_client(addr: SocketAddr) -> KeyBrokerClient<Channel> {
    KeyBrokerClient::new(Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap())
}

/// The provider's broker key, made before any VM starts (the spec pins it): (state directory, kid).
fn broker_key() -> (std::path::PathBuf, String) {
    let dir = unique_temp_dir("broker-ek-path");
    std::fs::create_dir_all(&dir).unwrap();
    let kid = Signer::load_or_create(&dir.join("signing.pk8")).unwrap().kid().to_owned();
    (dir, kid)
}

/// The provider's broker in process with the key in `dir`: the EK path under `ca` (or none), and `aks`
/// enrolled. `shared`: the nonce MAC key and the EK path's MAC secret a replica shares with its fellows (random
/// per broker when `None`). Returns its address and signing key id.
async fn start_broker_in(
    dir: &std::path::Path,
    ca: Option<&EkCa>,
    aks: Vec<Vec<u8>>,
    shared: Option<([u8; 32], [u8; 32])>,
) -> (SocketAddr, String) {
    let rng: Arc<dyn Randomness> = Arc::new(SystemRandomness::new());
    let store = Arc::new(
        KeyStore::open(&dir.join("keys.redb"), Kek::from_bytes(&[5; 32]).unwrap(), rng.as_ref()).unwrap(),
    );
    store.add(KEY_ID, "provider-a", &policy(), Some(DATA_KEY.to_vec()), rng.as_ref(), 0).unwrap();
    let signer = Signer::load_or_create(&dir.join("signing.pk8")).unwrap();
    let kid = signer.kid().to_owned();
    let mut broker = Broker::new(BrokerParts {
        // The EK certificates swtpm-localca issued are valid from now: the wall clock.
        clock: Arc::new(SystemClock),
        rng: Arc::clone(&rng),
        appraiser: Arc::new(VerifierAppraiser::with_pinned_tpm_aks(aks)),
        store,
        golden: GoldenSet::default(),
        signer,
        nonces: match shared {
            Some((nonce_key, _)) => NonceBook::new(NonceKeys::new(&nonce_key, None, 30_000).unwrap()),
            None => NonceBook::generate(30_000, rng.as_ref()).unwrap(),
        },
        audit: AuditLog::open(&dir.join("audit.log")).unwrap().0,
    });
    if let Some(ca) = ca {
        let cas = parse_ek_cas(&[std::fs::read(ca.bundle_pem().unwrap()).unwrap()]).unwrap();
        let ek = match shared {
            Some((_, secret)) => EkPath::new(cas, &secret).unwrap(),
            None => EkPath::generate(cas, rng.as_ref()).unwrap(),
        };
        broker = broker.with_tpm_ek_path(ek);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(kpb::key_broker_server::KeyBrokerServer::new(KeyBrokerService(Arc::new(broker))))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, kid)
}

async fn start_broker(ca: Option<&EkCa>, aks: Vec<Vec<u8>>) -> (SocketAddr, String) {
    start_broker_in(&broker_key().0, ca, aks, None).await
}

async fn identity(agent: &Running) -> apb::GetTpmIdentityResponse {
    agent_client(agent).await.get_tpm_identity(apb::GetTpmIdentityRequest {}).await.unwrap().into_inner()
}

async fn evidence(agent: &Running, nonce: &[u8]) -> apb::Evidence {
    let req = apb::GetEvidenceRequest { nonce: nonce.to_vec(), tee_public_key: Vec::new() };
    agent_client(agent).await.get_evidence(req).await.unwrap().into_inner().evidence.unwrap()
}

/// Challenge naming `id`'s EK certificate and AK: (nonce, credential).
async fn challenge(c: &mut KeyBrokerClient<Channel>, ek: &[u8], ak: &[u8]) -> (Vec<u8>, apb::TpmCredential) {
    let req = kpb::ChallengeRequest { tpm_ek_certificate: ek.to_vec(), tpm_ak_public: ak.to_vec() };
    let resp = c.challenge(req).await.unwrap().into_inner();
    (resp.nonce, resp.tpm_credential.expect("a broker with EK CAs answers a TPM identity with a credential"))
}

async fn activate(agent: &Running, credential: apb::TpmCredential) -> Result<Vec<u8>, String> {
    let req = apb::ActivateCredentialRequest { credential: Some(credential) };
    match agent_client(agent).await.activate_credential(req).await {
        Ok(r) => Ok(r.into_inner().secret),
        Err(s) => Err(s.message().to_owned()),
    }
}

/// A raw release of the key with `evidence` and `activation`: the refusal's reason (panics when released).
async fn refusal(
    c: &mut KeyBrokerClient<Channel>,
    nonce: Vec<u8>,
    evidence: apb::Evidence,
    activation: Option<kpb::TpmActivation>,
) -> String {
    let req = kpb::ReleaseRequest {
        nonce,
        evidence: Some(evidence),
        key_ids: vec![KEY_ID.into()],
        tpm_activation: activation,
    };
    let resp = c.release(req).await.unwrap().into_inner();
    assert!(resp.keys.is_empty(), "released");
    resp.refusals[0].reason.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_and_receipt_through_the_ek_path_of_broker_serve() {
    let ca = EkCa::create().unwrap();
    let tpm = Swtpm::start_with_ek_cert(&ca).unwrap();
    let provider = Provider::new(&unique_temp_dir("broker-ek-provider")).unwrap();
    provider.add_key(KEY_ID, "provider-a", &policy(), DATA_KEY).unwrap();
    let kid = provider.key_id().unwrap();
    let bundle = ca.bundle_pem().unwrap();
    let broker = provider.serve("127.0.0.1:0", &["--tpm-ek-ca".as_ref(), bundle.as_os_str()]).unwrap();
    let vm = agent(&tpm, &kid).await;
    let e = endpoint(&broker.addr, &kid);

    // No AK enrolled anywhere: the agent's TPM names its EK, activates the broker's credential, gets the key.
    let got = release(&vm, &broker.addr, &kid).await.unwrap();
    assert_eq!(got, vec![(KEY_ID.to_owned(), DATA_KEY.to_vec())]);
    // The receipt takes the same path (its own challenge, credential and activation).
    vm.handle
        .measure(RuntimeEvent::KeyRelease { key_id: KEY_ID.into(), broker_key: kid.clone() })
        .await
        .unwrap();
    vm.handle.measure(RuntimeEvent::Output { name: "output".into(), digest: OUTPUT.into() }).await.unwrap();
    let digest = Sha256Digest::parse(OUTPUT, "output").unwrap();
    let r = receipt::obtain(&vm.handle, &e, KEY_ID, &digest).await.unwrap();
    let claims = sealroom_broker::token::verify(
        &r.token,
        &serde_json::from_slice(&std::fs::read(provider.state.join("signing-key.jwk.json")).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["submods"]["sealroom"]["ear_status"], "affirming", "{claims}");

    // A TPM without an EK certificate (nothing vouches for its AK, and it is enrolled nowhere): refused.
    let bare = Swtpm::start().unwrap();
    let bare_agent = agent(&bare, &kid).await;
    let err = release(&bare_agent, &broker.addr, &kid).await.unwrap_err();
    assert_eq!(err, format!("workload keys: provider broker ({kid}) refused key {KEY_ID}: {UNTRUSTED}"));
    drop(broker);
    provider.verify_audit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_ak_from_another_tpm() {
    let ca = EkCa::create().unwrap();
    let (tpm_a, tpm_b) = (Swtpm::start_with_ek_cert(&ca).unwrap(), Swtpm::start_with_ek_cert(&ca).unwrap());
    let (addr, kid) = start_broker(Some(&ca), vec![]).await;
    let (a, b) = (agent(&tpm_a, &kid).await, agent(&tpm_b, &kid).await);
    let (id_a, id_b) = (identity(&a).await, identity(&b).await);
    let mut c = broker_client(addr).await;

    // A credential made for TPM A's EK and AK: TPM B cannot activate it (it does not hold EK A).
    let (_, for_a) = challenge(&mut c, &id_a.ek_certificate, &id_a.ak_public).await;
    let e = activate(&b, for_a).await.unwrap_err();
    assert!(e.contains("activate credential"), "{e}");

    // The operator's own TPM B claims to be the certified TPM A: EK A's certificate with B's AK. TPM A cannot
    // activate it (B's AK is not loaded in A), TPM B cannot (not its EK); a guessed secret does not match.
    let (nonce, for_b_as_a) = challenge(&mut c, &id_a.ek_certificate, &id_b.ak_public).await;
    let e = activate(&a, for_b_as_a.clone()).await.unwrap_err();
    assert!(e.contains("activate credential"), "{e}");
    let e = activate(&b, for_b_as_a).await.unwrap_err();
    assert!(e.contains("activate credential"), "{e}");
    let guessed = kpb::TpmActivation { ek_certificate: id_a.ek_certificate.clone(), secret: vec![0; 32] };
    let ev_b = evidence(&b, &nonce).await;
    assert_eq!(refusal(&mut c, nonce, ev_b, Some(guessed)).await, MISMATCH);

    // TPM A's genuine activation presented with TPM B's evidence (B's AK signed the quote): no match either.
    let (nonce, for_a) = challenge(&mut c, &id_a.ek_certificate, &id_a.ak_public).await;
    let secret = activate(&a, for_a).await.unwrap();
    let ev_b = evidence(&b, &nonce).await;
    let stolen = kpb::TpmActivation { ek_certificate: id_a.ek_certificate.clone(), secret };
    assert_eq!(refusal(&mut c, nonce, ev_b, Some(stolen)).await, MISMATCH);

    // Control: each TPM through its own EK gets the key.
    for agent in [&a, &b] {
        let got = release(agent, &addr.to_string(), &kid).await.unwrap();
        assert_eq!(got, vec![(KEY_ID.to_owned(), DATA_KEY.to_vec())]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_activation_secret_replayed_on_another_nonce() {
    let ca = EkCa::create().unwrap();
    let tpm = Swtpm::start_with_ek_cert(&ca).unwrap();
    let (addr, kid) = start_broker(Some(&ca), vec![]).await;
    let a = agent(&tpm, &kid).await;
    let id = identity(&a).await;
    let mut c = broker_client(addr).await;

    // One genuine activation, for the first nonce.
    let (first, credential) = challenge(&mut c, &id.ek_certificate, &id.ak_public).await;
    let secret = activate(&a, credential).await.unwrap();
    let activation = kpb::TpmActivation { ek_certificate: id.ek_certificate.clone(), secret };

    // Replayed with a second nonce (plain, or with its own credential left unactivated): refused.
    let second = c.challenge(kpb::ChallengeRequest::default()).await.unwrap().into_inner().nonce;
    let ev = evidence(&a, &second).await;
    assert_eq!(refusal(&mut c, second, ev, Some(activation.clone())).await, MISMATCH);
    let (third, _) = challenge(&mut c, &id.ek_certificate, &id.ak_public).await;
    let ev = evidence(&a, &third).await;
    assert_eq!(refusal(&mut c, third, ev, Some(activation.clone())).await, MISMATCH);
    // Without any activation the AK is not trusted on its own.
    let (fourth, _) = challenge(&mut c, &id.ek_certificate, &id.ak_public).await;
    let ev = evidence(&a, &fourth).await;
    assert_eq!(refusal(&mut c, fourth, ev, None).await, UNTRUSTED);

    // Control: with its own nonce the activation releases the key, once (the nonce is single use).
    let ev = evidence(&a, &first).await;
    let req = kpb::ReleaseRequest {
        nonce: first,
        evidence: Some(ev),
        key_ids: vec![KEY_ID.into()],
        tpm_activation: Some(activation),
    };
    let resp = c.release(req.clone()).await.unwrap().into_inner();
    assert_eq!(resp.keys.len(), 1, "{:?}", resp.refusals);
    assert_eq!(
        refusal(&mut c, req.nonce, req.evidence.unwrap(), req.tpm_activation).await,
        "nonce: already used (replay)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_ek_cert_from_another_ca() {
    let (trusted, other) = (EkCa::create().unwrap(), EkCa::create().unwrap());
    let tpm = Swtpm::start_with_ek_cert(&other).unwrap();
    let (addr, kid) = start_broker(Some(&trusted), vec![]).await;
    let a = agent(&tpm, &kid).await;
    let id = identity(&a).await;
    let mut c = broker_client(addr).await;

    // Challenge refuses to make a credential for it, with the reason; the agent reports it.
    let req =
        kpb::ChallengeRequest { tpm_ek_certificate: id.ek_certificate.clone(), tpm_ak_public: id.ak_public };
    let status = c.challenge(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    // swtpm-localca names every CA alike: the certificate's issuer is found by name among the configured CAs,
    // and its signature does not verify under it.
    let reason = status.message().to_owned();
    assert_eq!(
        reason,
        "tpm ek certificate: chain to a configured EK CA: certificate 'unknown': issuer 'swtpm-localca' is not a \
         pinned root (or its signature does not verify)"
    );
    let err = release(&a, &addr.to_string(), &kid).await.unwrap_err();
    assert_eq!(
        err,
        format!("workload keys: provider broker ({kid}): broker http://{addr}: challenge: {reason}")
    );

    // An activation naming that certificate at Release is refused for the certificate, whatever the secret.
    let nonce = c.challenge(kpb::ChallengeRequest::default()).await.unwrap().into_inner().nonce;
    let ev = evidence(&a, &nonce).await;
    let forged = kpb::TpmActivation { ek_certificate: id.ek_certificate, secret: vec![7; 32] };
    assert_eq!(refusal(&mut c, nonce, ev, Some(forged)).await, reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_ak_still_works_and_a_broker_without_ek_cas_takes_no_activation() {
    let ca = EkCa::create().unwrap();
    let tpm = Swtpm::start_with_ek_cert(&ca).unwrap();
    let (dir, kid) = broker_key();
    let a = agent(&tpm, &kid).await;
    let id = identity(&a).await;
    // The agent names its EK to a broker without EK CAs that enrolled its AK out of band: a plain nonce, no
    // credential, and the enrolled AK is trusted as before.
    let (addr, _) = start_broker_in(&dir, None, vec![id.ak_public.clone()], None).await;
    let mut c = broker_client(addr).await;
    let resp = c
        .challenge(kpb::ChallengeRequest {
            tpm_ek_certificate: id.ek_certificate.clone(),
            tpm_ak_public: id.ak_public,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.tpm_credential.is_none());
    let got = release(&a, &addr.to_string(), &kid).await.unwrap();
    assert_eq!(got, vec![(KEY_ID.to_owned(), DATA_KEY.to_vec())]);
    // An activation presented to it is refused: it never issued a credential.
    let ev = evidence(&a, &resp.nonce).await;
    let bogus = kpb::TpmActivation { ek_certificate: id.ek_certificate, secret: vec![1; 32] };
    assert_eq!(
        refusal(&mut c, resp.nonce, ev, Some(bogus)).await,
        "tpm credential: an activated credential was presented, but this broker issues none (no --tpm-ek-ca)"
    );
}

/// Replicas (`--store`, `--nonce-key`) derive the EK path's MAC key from the shared nonce key, so an activation
/// of a credential one replica made is accepted by another; a broker with the same nonce key but its own EK
/// secret (what a per-process random key would be) refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_made_at_one_replica_is_accepted_by_another() {
    let ca = EkCa::create().unwrap();
    let tpm = Swtpm::start_with_ek_cert(&ca).unwrap();
    // As `serve --store --nonce-key`: the EK path's key is derived from the nonce key itself.
    let (nonce_key, ek_secret) = ([0x31; 32], [0x31; 32]);
    // Released through raw calls below: the agent's pinned broker key plays no part.
    let (_, kid) = broker_key();
    let replica = |shared| {
        let ca = &ca;
        async move { start_broker_in(&broker_key().0, Some(ca), vec![], Some(shared)).await.0 }
    };
    let (a, b, lone) = (
        replica((nonce_key, ek_secret)).await,
        replica((nonce_key, ek_secret)).await,
        replica((nonce_key, [0x33; 32])).await,
    );
    let vm = agent(&tpm, &kid).await;
    let id = identity(&vm).await;
    for (other, want) in [(b, None), (lone, Some(MISMATCH))] {
        let (nonce, credential) =
            challenge(&mut broker_client(a).await, &id.ek_certificate, &id.ak_public).await;
        let secret = activate(&vm, credential).await.unwrap();
        let activation = kpb::TpmActivation { ek_certificate: id.ek_certificate.clone(), secret };
        let req = kpb::ReleaseRequest {
            nonce: nonce.clone(),
            evidence: Some(evidence(&vm, &nonce).await),
            key_ids: vec![KEY_ID.into()],
            tpm_activation: Some(activation),
        };
        let resp = broker_client(other).await.release(req).await.unwrap().into_inner();
        match want {
            None => assert_eq!(resp.keys.len(), 1, "{:?}", resp.refusals),
            Some(reason) => assert_eq!(resp.refusals[0].reason, reason),
        }
    }
}
