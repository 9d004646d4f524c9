//! End to end on loopback: swtpm (a real TPM 2.0) → sealroom agent (gRPC GetEvidence, its own ephemeral HPKE key)
//! → key broker (gRPC Challenge/Release, the real verifier with the swtpm AK enrolled) → the agent's key opens
//! the sealed data key. Refusals with genuine swtpm evidence: a workload the policy does not allow, evidence from
//! another (not enrolled) TPM, a replayed nonce.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sealroom_agent::paths::KernelPaths;
use sealroom_agent::server::{self, Config, Running};
use sealroom_agent::worker::WorkerConfig;
use sealroom_measurements::cel::RuntimeEvent;
use sealroom_proto::attestation::v1 as apb;
use sealroom_proto::attestation::v1::attestation_client::AttestationClient;
use sealroom_proto::keybroker::v1 as kpb;
use sealroom_proto::keybroker::v1::key_broker_client::KeyBrokerClient;
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};
use sealroom_verifier::broker::appraisal::VerifierAppraiser;
use sealroom_verifier::broker::audit::{self, AuditLog};
use sealroom_verifier::broker::keystore::{Kek, KeyStore};
use sealroom_verifier::broker::nonce::NonceBook;
use sealroom_verifier::broker::policy::GoldenSet;
use sealroom_verifier::broker::service::{Broker, BrokerParts, KeyBrokerService};
use sealroom_verifier::broker::token::{self, Signer};
use sealroom_verifier::broker::{Clock, Randomness, seal};
use tonic::transport::Channel;

const IMAGE: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn policy(image: &str) -> String {
    format!(
        r#"
version = 1
platforms = ["tpm"]
tcb_statuses = "skip"
minimum_tcb = "skip"
debug = "forbidden"
golden = "skip"
image_digests = ["{image}"]
args = ["--input=/data/in.parquet"]
env = ["THREADS=*"]
"#
    )
}

#[derive(Debug)]
struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The kernel's CSPRNG.
#[derive(Debug)]
struct OsRandomness;

impl Randomness for OsRandomness {
    fn fill(&self, out: &mut [u8]) -> sealroom_verifier::Result<()> {
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(out))
            .map_err(|e| sealroom_verifier::Error::check("randomness", e.to_string()))
    }
}

async fn start_agent(tpm: &Swtpm) -> Running {
    let root = unique_temp_dir("broker-e2e-root");
    std::fs::create_dir_all(&root).unwrap();
    let worker = WorkerConfig {
        paths: KernelPaths::new(root),
        tcti: Some(tpm.tcti()),
        no_tpm: false,
        runtime_log_dir: unique_temp_dir("broker-e2e-rtlog"),
        queue_depth: 64,
        request_timeout: Duration::from_secs(10),
    };
    let running = server::start(Config { tcp: Some("127.0.0.1:0".parse().unwrap()), vsock: None, worker })
        .await
        .unwrap();
    for e in [
        RuntimeEvent::ImageReference(format!("registry.example/analytics@{IMAGE}")),
        RuntimeEvent::ManifestDigest(IMAGE.into()),
        RuntimeEvent::Arg("--input=/data/in.parquet".into()),
        RuntimeEvent::Env("THREADS=2".into()),
        RuntimeEvent::LaunchSeparator,
    ] {
        running.handle.measure(e).await.unwrap();
    }
    running
}

async fn evidence(agent: SocketAddr, nonce: &[u8]) -> apb::Evidence {
    let ch = Channel::from_shared(format!("http://{agent}")).unwrap().connect().await.unwrap();
    let r = AttestationClient::new(ch)
        .get_evidence(apb::GetEvidenceRequest { nonce: nonce.to_vec(), tee_public_key: Vec::new() })
        .await
        .unwrap();
    r.into_inner().evidence.unwrap()
}

struct RunningBroker {
    addr: SocketAddr,
    store: Arc<KeyStore>,
    audit_path: std::path::PathBuf,
    jwk: serde_json::Value,
}

async fn start_broker(enrolled_ak: Vec<u8>) -> RunningBroker {
    let dir = unique_temp_dir("broker-e2e-state");
    std::fs::create_dir_all(&dir).unwrap();
    let rng: Arc<dyn Randomness> = Arc::new(OsRandomness);
    let store = Arc::new(
        KeyStore::open(&dir.join("keys.redb"), Kek::from_bytes(&[5; 32]).unwrap(), rng.as_ref()).unwrap(),
    );
    store
        .add("provider-a/data", "provider-a", &policy(IMAGE), Some(b"the data key".to_vec()), rng.as_ref(), 0)
        .unwrap();
    let other = "sha256:9999999999999999999999999999999999999999999999999999999999999999";
    store.add("provider-b/data", "provider-b", &policy(other), None, rng.as_ref(), 0).unwrap();
    let audit_path = dir.join("audit.log");
    let signer = Signer::load_or_create(&dir.join("signing.pk8")).unwrap();
    let jwk = signer.jwk();
    let broker = Arc::new(Broker::new(BrokerParts {
        // swtpm AKs carry no certificate: no validity window depends on the time.
        clock: Arc::new(TestClock(AtomicU64::new(1_760_000_000_000))),
        rng,
        appraiser: Arc::new(VerifierAppraiser::with_pinned_tpm_aks(vec![enrolled_ak])),
        store: Arc::clone(&store),
        golden: GoldenSet::default(),
        signer,
        nonces: NonceBook::new(30_000, 1000),
        audit: AuditLog::open(&audit_path).unwrap().0,
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(kpb::key_broker_server::KeyBrokerServer::new(KeyBrokerService(broker)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    RunningBroker { addr, store, audit_path, jwk }
}

async fn broker_client(addr: SocketAddr) -> KeyBrokerClient<Channel> {
    KeyBrokerClient::new(Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_on_swtpm_receives_its_data_key_and_refusals_say_why() {
    let tpm = Swtpm::start().unwrap();
    let agent = start_agent(&tpm).await;
    let agent_addr = agent.tcp_addr.unwrap();
    // Enrolment, out of band: the provider records this TPM's AK (here from one GetEvidence).
    let enrol = evidence(agent_addr, &[0x42; 32]).await;
    let ak = enrol.tpm.as_ref().unwrap().ak_public.clone();
    let broker = start_broker(ak).await;
    let mut c = broker_client(broker.addr).await;

    let nonce = c.challenge(kpb::ChallengeRequest {}).await.unwrap().into_inner().nonce;
    let ev = evidence(agent_addr, &nonce).await;
    let req = kpb::ReleaseRequest {
        nonce: nonce.clone(),
        evidence: Some(ev),
        key_ids: vec!["provider-a/data".into(), "provider-b/data".into()],
    };
    let resp = c.release(req.clone()).await.unwrap().into_inner();
    // Provider A's policy allows this workload; provider B's names another image.
    assert_eq!(resp.keys.len(), 1, "refusals: {:?}", resp.refusals);
    let sealed = &resp.keys[0];
    assert_eq!(sealed.key_id, "provider-a/data");
    let key = agent
        .handle
        .key()
        .open(&sealed.encapsulated_key, &seal::info("provider-a/data"), &sealed.ciphertext, &nonce)
        .unwrap();
    assert_eq!(key, b"the data key");
    assert_eq!(resp.refusals.len(), 1);
    assert_eq!(resp.refusals[0].key_id, "provider-b/data");
    assert_eq!(
        resp.refusals[0].reason,
        format!("policy.image_digests: workload image digest {IMAGE} not allowed")
    );
    let claims = token::verify(&resp.attestation_result, &broker.jwk).unwrap();
    assert_eq!(claims["submods"]["sealroom"]["ear.status"], "affirming");

    // The same nonce again: refused as a replay, even with genuine evidence.
    let replay = c.release(req).await.unwrap().into_inner();
    assert!(replay.keys.is_empty());
    assert_eq!(replay.refusals[0].reason, "nonce: already used (replay)");

    // Evidence from another TPM (a second swtpm, not enrolled): no vendor certificate, so it is refused.
    let other_tpm = Swtpm::start().unwrap();
    let other_agent = start_agent(&other_tpm).await;
    let nonce = c.challenge(kpb::ChallengeRequest {}).await.unwrap().into_inner().nonce;
    let ev = evidence(other_agent.tcp_addr.unwrap(), &nonce).await;
    let resp = c
        .release(kpb::ReleaseRequest { nonce, evidence: Some(ev), key_ids: vec!["provider-a/data".into()] })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.keys.is_empty());
    assert!(
        resp.refusals[0].reason.starts_with("verifier: tpm ak certificate"),
        "{}",
        resp.refusals[0].reason
    );

    // Revoked: the provider revokes its key; the next genuine request is refused for that reason.
    broker.store.revoke("provider-a/data", 1).unwrap();
    let nonce = c.challenge(kpb::ChallengeRequest {}).await.unwrap().into_inner().nonce;
    let ev = evidence(agent_addr, &nonce).await;
    let resp = c
        .release(kpb::ReleaseRequest { nonce, evidence: Some(ev), key_ids: vec!["provider-a/data".into()] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.refusals[0].reason, "key store: key provider-a/data was revoked at 1 ms");

    let head = audit::verify(&std::fs::read(&broker.audit_path).unwrap()).unwrap();
    // 2 keys in the first release, 2 in the replay, 1 for the other TPM, 1 for the revoked key.
    assert_eq!(head.records, 6);
}
