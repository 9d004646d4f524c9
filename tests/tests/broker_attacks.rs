//! Attacks on the key exchange between the agent and the broker (issue 14, finding 1), each shown failing with
//! genuine swtpm evidence and the real agent client:
//! - a fake broker at an operator-chosen URL "releases" an operator-chosen key (unsigned, or signed with its own
//!   key): the agent refuses it; and the real broker refuses a receipt for a key it never released to this TEE
//!   key, even though the evidence's runtime log shows a `key_release` event;
//! - a man in the middle between the agent and the real broker swaps the sealed key for one he knows, keeping
//!   or replacing the broker's signature: the agent refuses both.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;

use sealroom_agent::workload::broker::BrokerKeys;
use sealroom_agent::workload::spec::BrokerEndpoint;
use sealroom_agent::workload::{KeyProvider, receipt};
use sealroom_broker::appraisal::VerifierAppraiser;
use sealroom_broker::audit::{AuditLog, AuditRecord, Decision};
use sealroom_broker::grpc::KeyBrokerService;
use sealroom_broker::keystore::{Kek, KeyStore};
use sealroom_broker::nonce::NonceBook;
use sealroom_broker::policy::GoldenSet;
use sealroom_broker::service::{Broker, BrokerParts};
use sealroom_broker::token::Signer;
use sealroom_broker::{ManualClock, Randomness, SystemRandomness, seal};
use sealroom_measurements::binding::Nonce;
use sealroom_measurements::broker_response::{self, ReleaseStatement, TeeKeyField};
use sealroom_measurements::evidence::Evidence;
use sealroom_proto::keybroker::v1 as kpb;
use sealroom_proto::keybroker::v1::key_broker_client::KeyBrokerClient;
use sealroom_proto::keybroker::v1::key_broker_server::{KeyBroker, KeyBrokerServer};
use sealroom_tests::agent::ak_of;
use sealroom_tests::analytics::{ARG, DATA_KEY, IMAGE, KEY_ID, launch_events, measure_release_and_output};
use sealroom_tests::broker::{serve_key_broker, tpm_policy};
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};
use tonic::transport::Channel;

/// The key the operator wants the workload to use (he can then read what it encrypts, or feed it his data).
const OPERATOR_KEY: &[u8] = b"operator-chosen key, known to him";

struct RealBroker {
    broker: Arc<Broker>,
    addr: SocketAddr,
    kid: String,
    audit_path: std::path::PathBuf,
}

/// The provider's broker key, made before any VM starts (the provider publishes its JWK; the operator's spec
/// pins its `kid`): (state directory holding it, kid).
fn broker_key() -> (std::path::PathBuf, String) {
    let dir = unique_temp_dir("broker-attacks");
    std::fs::create_dir_all(&dir).unwrap();
    let kid = Signer::load_or_create(&dir.join("signing.pk8")).unwrap().kid().to_owned();
    (dir, kid)
}

/// The provider's broker, in process, with the key in `dir`, trusting the given swtpm AKs.
async fn start_real_broker(dir: &std::path::Path, aks: Vec<Vec<u8>>) -> RealBroker {
    let rng: Arc<dyn Randomness> = Arc::new(SystemRandomness::new());
    let store = Arc::new(
        KeyStore::open(&dir.join("keys.redb"), Kek::from_bytes(&[5; 32]).unwrap(), rng.as_ref()).unwrap(),
    );
    let policy = tpm_policy(IMAGE, &[ARG], &[], None);
    store.add(KEY_ID, "provider-a", &policy, Some(DATA_KEY.to_vec()), rng.as_ref(), 0).unwrap();
    let audit_path = dir.join("audit.log");
    let signer = Signer::load_or_create(&dir.join("signing.pk8")).unwrap();
    let kid = signer.kid().to_owned();
    let nonces = NonceBook::generate(30_000, rng.as_ref()).unwrap();
    let broker = Arc::new(Broker::new(BrokerParts {
        clock: Arc::new(ManualClock::at(1_760_000_000_000)),
        rng,
        appraiser: Arc::new(VerifierAppraiser::with_pinned_tpm_aks(aks)),
        store,
        golden: GoldenSet::default(),
        signer,
        nonces,
        audit: AuditLog::open(&audit_path).unwrap().0,
    }));
    let addr = serve_key_broker(KeyBrokerServer::new(KeyBrokerService(Arc::clone(&broker)))).await;
    RealBroker { broker, addr, kid, audit_path }
}

fn endpoint(addr: SocketAddr, kid: &str) -> BrokerEndpoint {
    BrokerEndpoint {
        name: "broker".into(),
        url: format!("http://{addr}"),
        key_id: kid.to_owned(),
        tls_ca: None,
    }
}

/// Seals `material` to the request's TEE key, as anyone can (HPKE base mode needs no secret of the sender).
fn seal_to_request(req: &kpb::ReleaseRequest, material: &[u8]) -> (kpb::SealedKey, Nonce, Evidence) {
    let evidence = Evidence::try_from(req.evidence.clone().unwrap()).unwrap();
    let nonce = Nonce::from_slice(&req.nonce).unwrap();
    let key_id = &req.key_ids[0];
    let s = seal::seal(&evidence.tee_public_key, key_id, &nonce, material, &SystemRandomness::new()).unwrap();
    let sealed = kpb::SealedKey {
        key_id: key_id.clone(),
        kem: i32::from(s.kem.id()),
        encapsulated_key: s.encapsulated_key,
        ciphertext: s.ciphertext,
    };
    (sealed, nonce, evidence)
}

/// Signs a release response with `signer` over exactly what it says.
fn sign_release(signer: &Signer, nonce: &Nonce, evidence: &Evidence, resp: &mut kpb::ReleaseResponse) {
    let digests: Vec<(&str, [u8; 32])> = resp
        .keys
        .iter()
        .map(|k| {
            let kem = u16::try_from(k.kem).unwrap();
            (k.key_id.as_str(), broker_response::sealed_key_digest(kem, &k.encapsulated_key, &k.ciphertext))
        })
        .collect();
    let input = broker_response::release_signing_input(&ReleaseStatement {
        nonce,
        tee_key: TeeKeyField {
            kem_id: evidence.tee_public_key.kem().id(),
            key: evidence.tee_public_key.as_bytes(),
        },
        keys: &digests,
        refusals: &[],
        attestation_result: &resp.attestation_result,
    });
    resp.signature = signer.sign_statement(&input).unwrap();
    resp.broker_public_key = signer.public_key();
}

/// The operator's broker: any nonce, and the operator's key sealed to whatever TEE key asks; signed with its own
/// key or not at all.
struct FakeBroker {
    signer: Option<Signer>,
}

#[tonic::async_trait]
impl KeyBroker for FakeBroker {
    async fn challenge(
        &self,
        _: tonic::Request<kpb::ChallengeRequest>,
    ) -> Result<tonic::Response<kpb::ChallengeResponse>, tonic::Status> {
        Ok(tonic::Response::new(kpb::ChallengeResponse {
            nonce: vec![0x5a; 32],
            ttl_seconds: 60,
            tpm_credential: None,
        }))
    }

    async fn release(
        &self,
        request: tonic::Request<kpb::ReleaseRequest>,
    ) -> Result<tonic::Response<kpb::ReleaseResponse>, tonic::Status> {
        let req = request.into_inner();
        let (sealed, nonce, evidence) = seal_to_request(&req, OPERATOR_KEY);
        let mut resp = kpb::ReleaseResponse { keys: vec![sealed], ..Default::default() };
        if let Some(signer) = &self.signer {
            sign_release(signer, &nonce, &evidence, &mut resp);
        }
        Ok(tonic::Response::new(resp))
    }

    async fn receipt(
        &self,
        _: tonic::Request<kpb::ReceiptRequest>,
    ) -> Result<tonic::Response<kpb::ReceiptResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake broker"))
    }
}

/// A man in the middle in front of the real broker: forwards everything, then replaces the released key with
/// his own (sealed to the same TEE key), keeping the broker's signature or re-signing with his own key.
struct ManInTheMiddle {
    upstream: KeyBrokerClient<Channel>,
    resign: Option<Signer>,
}

#[tonic::async_trait]
impl KeyBroker for ManInTheMiddle {
    async fn challenge(
        &self,
        request: tonic::Request<kpb::ChallengeRequest>,
    ) -> Result<tonic::Response<kpb::ChallengeResponse>, tonic::Status> {
        self.upstream.clone().challenge(request.into_inner()).await
    }

    async fn release(
        &self,
        request: tonic::Request<kpb::ReleaseRequest>,
    ) -> Result<tonic::Response<kpb::ReleaseResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut resp = self.upstream.clone().release(req.clone()).await?.into_inner();
        assert_eq!(resp.keys.len(), 1, "the real broker released the key: {:?}", resp.refusals);
        let (sealed, nonce, evidence) = seal_to_request(&req, OPERATOR_KEY);
        resp.keys = vec![sealed];
        if let Some(signer) = &self.resign {
            sign_release(signer, &nonce, &evidence, &mut resp);
        }
        Ok(tonic::Response::new(resp))
    }

    async fn receipt(
        &self,
        request: tonic::Request<kpb::ReceiptRequest>,
    ) -> Result<tonic::Response<kpb::ReceiptResponse>, tonic::Status> {
        self.upstream.clone().receipt(request.into_inner()).await
    }
}

fn audit_records(path: &std::path::Path) -> Vec<AuditRecord> {
    let text = std::fs::read_to_string(path).unwrap();
    sealroom_broker::audit::verify(text.as_bytes()).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_fake_broker_receipt() {
    let (dir, kid) = broker_key();
    let (tpm, tpm2) = (Swtpm::start().unwrap(), Swtpm::start().unwrap());
    let agent = sealroom_tests::agent::start_agent(&tpm, &launch_events(&kid)).await.unwrap();
    let agent2 = sealroom_tests::agent::start_agent(&tpm2, &launch_events(&kid)).await.unwrap();
    let real = start_real_broker(&dir, vec![ak_of(&agent).await, ak_of(&agent2).await]).await;
    let keys = BrokerKeys::new(agent.handle.clone());

    // The operator points the VM at his own broker. Unsigned: refused before anything is opened.
    let fake = serve_key_broker(KeyBrokerServer::new(FakeBroker { signer: None })).await;
    let e = keys.release(&endpoint(fake, &real.kid), &[KEY_ID.into()]).await.unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "workload keys: provider broker ({}): broker response: unsigned response; the workload spec pins broker key {}",
            real.kid, real.kid
        )
    );
    // Signed with the operator's own key: a valid signature, by a key the spec does not pin.
    let operator_signer =
        Signer::load_or_create(&unique_temp_dir("operator-key").with_extension("pk8")).unwrap();
    let operator_kid = operator_signer.kid().to_owned();
    let fake = serve_key_broker(KeyBrokerServer::new(FakeBroker { signer: Some(operator_signer) })).await;
    let e = keys.release(&endpoint(fake, &real.kid), &[KEY_ID.into()]).await.unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "workload keys: provider broker ({}): broker response: signed by broker key {operator_kid}, but the workload spec pins broker key {}",
            real.kid, real.kid
        )
    );

    // An agent that had accepted the fake key (as before the fix) would have measured key_release and, after the
    // job, its output. The real broker still refuses the receipt: it never released this key to this TEE key.
    let digest = measure_release_and_output(&agent, &real.kid).await;
    let e = receipt::obtain(&agent.handle, &endpoint(real.addr, &real.kid), KEY_ID, &digest)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "workload receipt: broker refused the receipt: receipt: this broker never released key {KEY_ID} to this TEE key"
        )
    );
    let records = audit_records(&real.audit_path);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].decision, Decision::Refused);
    assert_eq!(records[0].rule, "receipt/receipt");

    // Control: another VM that really got the key from this broker obtains a receipt, naming that release.
    let real_endpoint = endpoint(real.addr, &real.kid);
    let got = BrokerKeys::new(agent2.handle.clone()).release(&real_endpoint, &[KEY_ID.into()]).await.unwrap();
    assert_eq!(got, vec![(KEY_ID.to_owned(), DATA_KEY.to_vec())]);
    measure_release_and_output(&agent2, &real.kid).await;
    let r = receipt::obtain(&agent2.handle, &real_endpoint, KEY_ID, &digest).await.unwrap();
    let records = audit_records(&real.audit_path);
    let release = records.iter().find(|r| r.decision == Decision::Released).unwrap();
    let jwk = Signer::load_or_create(&dir.join("signing.pk8")).unwrap().jwk();
    let claims = sealroom_broker::token::verify(&r.token, &jwk).unwrap();
    assert_eq!(claims["submods"]["sealroom"]["sealroom.release"]["audit_seq"], release.seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_mitm_key() {
    let (dir, kid) = broker_key();
    let tpm = Swtpm::start().unwrap();
    let agent = sealroom_tests::agent::start_agent(&tpm, &launch_events(&kid)).await.unwrap();
    let real = start_real_broker(&dir, vec![ak_of(&agent).await]).await;
    let upstream = KeyBrokerClient::new(
        Channel::from_shared(format!("http://{}", real.addr)).unwrap().connect().await.unwrap(),
    );
    let keys = BrokerKeys::new(agent.handle.clone());

    // Keeping the broker's signature: it no longer covers the swapped key.
    let mitm =
        serve_key_broker(KeyBrokerServer::new(ManInTheMiddle { upstream: upstream.clone(), resign: None }))
            .await;
    let e = keys.release(&endpoint(mitm, &real.kid), &[KEY_ID.into()]).await.unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "workload keys: provider broker ({}): broker response: signature by broker key {} does not verify over this response",
            real.kid, real.kid
        )
    );
    // Re-signing with his own key: not the pinned broker.
    let own = Signer::load_or_create(&unique_temp_dir("mitm-key").with_extension("pk8")).unwrap();
    let own_kid = own.kid().to_owned();
    let mitm = serve_key_broker(KeyBrokerServer::new(ManInTheMiddle { upstream, resign: Some(own) })).await;
    let e = keys.release(&endpoint(mitm, &real.kid), &[KEY_ID.into()]).await.unwrap_err().to_string();
    assert!(e.contains(&format!("signed by broker key {own_kid}, but the workload spec pins")), "{e}");

    // Straight to the broker, the same agent gets the provider's key.
    let got = keys.release(&endpoint(real.addr, &real.kid), &[KEY_ID.into()]).await.unwrap();
    assert_eq!(got, vec![(KEY_ID.to_owned(), DATA_KEY.to_vec())]);
}

/// Issue 14, finding 4: 100,000 unauthenticated challenges used to fill the broker's nonce table and lock every
/// agent out for minutes. Nonces are now stateless (nothing is stored until one is presented): after a flood
/// of 100,000 challenges, a legitimate agent still obtains its key, within 1 s from its Challenge to its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_challenge_flood() {
    let (dir, kid) = broker_key();
    let tpm = Swtpm::start().unwrap();
    let agent = sealroom_tests::agent::start_agent(&tpm, &launch_events(&kid)).await.unwrap();
    let real = start_real_broker(&dir, vec![ak_of(&agent).await]).await;
    let keys = BrokerKeys::new(agent.handle.clone());
    let e = endpoint(real.addr, &real.kid);
    // Warm-up (connection set-up and first appraisal are not what is measured).
    keys.release(&e, &[KEY_ID.into()]).await.unwrap();
    let broker = Arc::clone(&real.broker);
    let flooded =
        tokio::task::spawn_blocking(move || (0..100_000).filter(|_| broker.challenge().is_ok()).count())
            .await
            .unwrap();
    assert_eq!(flooded, 100_000, "every flood challenge is answered; none is stored");
    let start = std::time::Instant::now();
    let got = keys.release(&e, &[KEY_ID.into()]).await.unwrap();
    let took = start.elapsed();
    assert_eq!(got, vec![(KEY_ID.to_owned(), DATA_KEY.to_vec())]);
    assert!(took < std::time::Duration::from_secs(1), "the legitimate agent took {took:?}");
}
