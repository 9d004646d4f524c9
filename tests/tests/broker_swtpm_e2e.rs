//! End to end on loopback: swtpm (a real TPM 2.0) → sealroom agent (gRPC GetEvidence, its own ephemeral HPKE key)
//! → key broker (gRPC Challenge/Release, the real verifier with the swtpm AK enrolled) → the agent's key opens
//! the sealed data key. Refusals with genuine swtpm evidence: a workload the policy does not allow, evidence from
//! another (not enrolled) TPM, a replayed nonce.
//!
//! And the production path with real processes: the workload launcher on swtpm asks a `sealroom broker serve`
//! process (keys added with `sealroom broker keys add`, a policy pinning the image digest, args, env and a signed
//! golden document of the TPM's boot state) for its key, and crun runs the workload, which reads it; a changed
//! image digest gets no key, the reason comes back, and `sealroom audit verify` passes with the refusal logged.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;

use sealroom_agent::server::Running;
use sealroom_agent::workload;
use sealroom_agent::workload::broker::BrokerKeys;
use sealroom_agent::workload::spec::WorkloadSpec;
use sealroom_broker::appraisal::VerifierAppraiser;
use sealroom_broker::audit::{self, AuditLog, AuditRecord, Decision};
use sealroom_broker::grpc::KeyBrokerService;
use sealroom_broker::keystore::{Kek, KeyStore};
use sealroom_broker::nonce::NonceBook;
use sealroom_broker::nonce_mac::NonceKeys;
use sealroom_broker::policy::GoldenSet;
use sealroom_broker::service::{Broker, BrokerParts};
use sealroom_broker::token::{self, Signer};
use sealroom_broker::{Randomness, SystemClock, SystemRandomness, seal};
use sealroom_measurements::cel::RuntimeEvent;
use sealroom_proto::attestation::v1 as apb;
use sealroom_proto::attestation::v1::attestation_client::AttestationClient;
use sealroom_proto::keybroker::v1 as kpb;
use sealroom_proto::keybroker::v1::key_broker_client::KeyBrokerClient;
use sealroom_tests::agent::{ak_of, require_root, runtime_events, workload_config};
use sealroom_tests::booted_tpm::{booted_swtpm, sha256_hex, write_golden};
use sealroom_tests::broker::{BrokerProcess, Provider, serve_key_broker, tpm_policy};
use sealroom_tests::oci_image::OciImage;
use sealroom_tests::registry::Registry;
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};
use tonic::transport::Channel;

const IMAGE: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The in-process broker's policy: this image, its argument, any THREADS.
fn policy(image: &str) -> String {
    tpm_policy(image, &["--input=/data/in.parquet"], &["THREADS=*"], None)
}

async fn start_agent(tpm: &Swtpm) -> Running {
    let events = [
        RuntimeEvent::ImageReference(format!("registry.example/analytics@{IMAGE}")),
        RuntimeEvent::ManifestDigest(IMAGE.into()),
        RuntimeEvent::Arg("--input=/data/in.parquet".into()),
        RuntimeEvent::Env("THREADS=2".into()),
        RuntimeEvent::LaunchSeparator,
    ];
    sealroom_tests::agent::start_agent(tpm, &events).await.unwrap()
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
    let rng: Arc<dyn Randomness> = Arc::new(SystemRandomness::new());
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
        // swtpm AKs carry no certificate, so no validity window depends on the time; the wall clock, because a
        // relying party (and the EAR reference implementation below) checks the token's exp against it.
        clock: Arc::new(SystemClock),
        rng,
        appraiser: Arc::new(VerifierAppraiser::with_pinned_tpm_aks(vec![enrolled_ak])),
        store: Arc::clone(&store),
        golden: GoldenSet::default(),
        signer,
        nonces: NonceBook::new(NonceKeys::new(&[0x6e; 32], None, 30_000).unwrap()),
        audit: AuditLog::open(&audit_path).unwrap().0,
    }));
    let addr = serve_key_broker(kpb::key_broker_server::KeyBrokerServer::new(KeyBrokerService(broker))).await;
    RunningBroker { addr, store, audit_path, jwk }
}

async fn broker_client(addr: SocketAddr) -> KeyBrokerClient<Channel> {
    KeyBrokerClient::new(Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap())
}

/// A fresh challenge, the agent's evidence for its nonce, and a release request for provider A's key alone.
async fn release_provider_a(c: &mut KeyBrokerClient<Channel>, agent: SocketAddr) -> kpb::ReleaseResponse {
    let nonce = c.challenge(kpb::ChallengeRequest::default()).await.unwrap().into_inner().nonce;
    let ev = evidence(agent, &nonce).await;
    let req = kpb::ReleaseRequest {
        nonce,
        evidence: Some(ev),
        key_ids: vec!["provider-a/data".into()],
        tpm_activation: None,
    };
    c.release(req).await.unwrap().into_inner()
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

    let nonce = c.challenge(kpb::ChallengeRequest::default()).await.unwrap().into_inner().nonce;
    let ev = evidence(agent_addr, &nonce).await;
    let req = kpb::ReleaseRequest {
        nonce: nonce.clone(),
        evidence: Some(ev),
        key_ids: vec!["provider-a/data".into(), "provider-b/data".into()],
        tpm_activation: None,
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
    assert_eq!(claims["submods"]["sealroom"]["ear_status"], "affirming");
    assert_eq!(claims["submods"]["sealroom"]["sealroom.platform"], "tpm");
    // The runtime log replayed to PCR 15 of every bank the quote covers.
    assert_eq!(
        claims["submods"]["sealroom"]["sealroom.runtime_registers"],
        serde_json::json!(["pcr15.sha1", "pcr15.sha256", "pcr15.sha384", "pcr15.sha512"])
    );
    // The token of a real appraisal (swtpm quote, enrolled AK, runtime log replayed to PCR 15) is a valid EAR
    // to Veraison's reference implementation of draft-ietf-rats-ear-04, with the appraisal's vector.
    let ear = ear::Ear::from_jwt_jwk(
        &resp.attestation_result,
        ear::Algorithm::ES256,
        broker.jwk.to_string().as_bytes(),
    )
    .unwrap_or_else(|e| panic!("the ear crate refuses the release token: {e}"));
    assert_eq!(ear.profile, ear::EAR_PROFILE);
    let sub = &ear.submods["sealroom"];
    assert_eq!(sub.status, ear::TrustTier::Affirming);
    assert_eq!(sub.policy_ids, vec!["sealroom.keybroker.v1".to_owned()]);
    // TPM only: an identified, genuine TPM and approved configuration; no TEE (runtime-opaque: no claim).
    let tv = &sub.trust_vector;
    assert_eq!(
        [
            tv.instance_identity.value(),
            tv.configuration.value(),
            tv.hardware.value(),
            tv.runtime_opaque.value()
        ],
        [2, 2, 2, 0]
    );

    // The same nonce again: refused as a replay, even with genuine evidence.
    let replay = c.release(req).await.unwrap().into_inner();
    assert!(replay.keys.is_empty());
    assert_eq!(replay.refusals[0].reason, "nonce: already used (replay)");

    // Evidence from another TPM (a second swtpm, not enrolled): nothing vouches for its AK, so it is refused.
    let other_tpm = Swtpm::start().unwrap();
    let other_agent = start_agent(&other_tpm).await;
    let resp = release_provider_a(&mut c, other_agent.tcp_addr.unwrap()).await;
    assert!(resp.keys.is_empty());
    assert_eq!(resp.refusals[0].reason, format!("verifier: {}", sealroom_verifier::appraisal::UNTRUSTED_AK));

    // Revoked: the provider revokes its key; the next genuine request is refused for that reason.
    broker.store.revoke("provider-a/data", 1).unwrap();
    let resp = release_provider_a(&mut c, agent_addr).await;
    assert_eq!(resp.refusals[0].reason, "key store: key provider-a/data was revoked at 1 ms");

    let head = audit::verify(&std::fs::read(&broker.audit_path).unwrap()).unwrap();
    // 2 keys in the first release, 1 for the replay (refused as a whole), 1 for the other TPM, 1 for the revoked key.
    assert_eq!(head.records, 5);
}

// ---------------------------------------------------------------------------------------------------------------
// The production path with real processes: the agent's workload launcher (`workload::run`, as PID 1's agent
// child runs it in the VM) on swtpm, its broker client (`BrokerKeys`) against a `sealroom broker serve` process,
// and crun running the workload that reads the released key.
// ---------------------------------------------------------------------------------------------------------------

/// The data key the provider registers (`sealroom broker keys add --material-file`).
const DATA_KEY: &[u8] = b"provider-a's 32-byte dataset key";
/// No `/` in it: the agent writes `<keys dir>/<id>` without creating subdirectories (see the report).
const KEY_ID: &str = "provider-a.dataset";
/// What the workload does with its key: proof for the test that it saw exactly the released bytes, and how the
/// key file looked from inside the container.
const WORKLOAD_SCRIPT: &str = "sha256sum /run/sealroom/keys/provider-a.dataset > /output/key.sha256 && \
                               ls -ln /run/sealroom/keys > /output/keys-ls";

/// The analytics image: busybox running `WORKLOAD_SCRIPT` as the unprivileged `worker`; `variant` changes one
/// file (and so the manifest digest) without changing what is launched.
fn analytics_image(variant: &str) -> OciImage {
    OciImage::busybox_script(WORKLOAD_SCRIPT, variant.as_bytes(), std::collections::BTreeMap::new())
}

/// Provider A's policy: this TPM platform, the golden boot state, exactly this image, its arguments and env.
fn workload_policy(image_digest: &str, golden_doc: &str, signer: &str) -> String {
    tpm_policy(
        image_digest,
        &["/bin/busybox", "sh", "-c", WORKLOAD_SCRIPT],
        &["PATH=/bin"],
        Some((golden_doc, signer)),
    )
}

fn workload_spec(reference: &str, registry: &Registry, broker: &BrokerProcess) -> WorkloadSpec {
    let doc = serde_json::json!({
        "image": reference, "insecure_registries": [registry.host()],
        "broker": broker.url(), "broker_key": broker.key_id().unwrap(), "key_ids": [KEY_ID],
    });
    WorkloadSpec::from_json(doc.to_string().as_bytes()).unwrap()
}

fn audit_records(path: &std::path::Path) -> Vec<AuditRecord> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_in_crun_reads_the_key_a_broker_process_released_and_a_changed_image_gets_none() {
    require_root();
    let registry = Registry::start().unwrap();
    let approved = analytics_image("approved build");
    let approved_ref = registry.push("provider-a/analytics", "v1", &approved).unwrap();
    let changed = analytics_image("changed build");
    let changed_ref = registry.push("provider-a/analytics", "v2", &changed).unwrap();
    assert_ne!(approved.manifest_digest(), changed.manifest_digest());

    // Two booted VMs' TPMs and agents, both enrolled with the provider (their AKs).
    let (tpm_a, tpm_b) = (booted_swtpm(), booted_swtpm());
    let agent_a = sealroom_tests::agent::start_agent(&tpm_a, &[]).await.unwrap();
    let agent_b = sealroom_tests::agent::start_agent(&tpm_b, &[]).await.unwrap();

    // The provider's side, with the CLI: KEK, golden document, policy, key, then the broker process.
    let dir = unique_temp_dir("broker-process-e2e");
    let provider = Provider::new(&dir).unwrap();
    let golden = write_golden(&dir.join("golden"));
    let (golden_doc, signer) = (golden.digest, golden.signer);
    let policy = workload_policy(&approved.manifest_digest(), &golden_doc, &signer);
    provider.add_key(KEY_ID, "provider-a", &policy, DATA_KEY).unwrap();
    let mut aks = Vec::new();
    for (name, agent) in [("ak-a", &agent_a), ("ak-b", &agent_b)] {
        let path = dir.join(name);
        std::fs::write(&path, ak_of(agent).await).unwrap();
        aks.push(path);
    }
    let golden_dir = dir.join("golden");
    let broker = provider
        .serve(
            "127.0.0.1:0",
            &[
                "--golden".as_ref(),
                golden_dir.as_os_str(),
                "--tpm-ak".as_ref(),
                aks[0].as_os_str(),
                "--tpm-ak".as_ref(),
                aks[1].as_os_str(),
            ],
        )
        .unwrap();

    // Agent A runs the approved image: measured, key released by the broker process, run by crun.
    let cfg = workload_config("broker-e2e-approved");
    let spec = workload_spec(&approved_ref, &registry, &broker);
    let keys = BrokerKeys::new(agent_a.handle.clone());
    let outcome = workload::run(&spec, &cfg, &agent_a.handle, &keys).await.unwrap();
    assert_eq!(outcome.exit_code, 0, "listing: {}", outcome.output_listing);
    let proof = std::fs::read_to_string(cfg.output_dir.join("key.sha256")).unwrap();
    assert_eq!(proof.split_whitespace().next(), Some(sha256_hex(DATA_KEY).as_str()), "{proof}");
    let key_file = cfg.keys_dir.join(KEY_ID);
    let meta = std::fs::metadata(&key_file).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o400);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 1000, "owned by the workload's user");
    let listing = std::fs::read_to_string(cfg.output_dir.join("keys-ls")).unwrap();
    assert!(listing.contains("-r--------") && listing.contains(" 1000 "), "{listing}");
    let events = runtime_events(&agent_a);
    let sep = events.iter().position(|e| *e == RuntimeEvent::LaunchSeparator).unwrap();
    assert_eq!(events[1], RuntimeEvent::ManifestDigest(approved.manifest_digest()));
    assert_eq!(
        events[sep + 1],
        RuntimeEvent::KeyRelease { key_id: KEY_ID.into(), broker_key: broker.key_id().unwrap() }
    );

    // Agent B runs a changed image: the broker refuses, the agent says why, the workload never runs.
    let cfg_b = workload_config("broker-e2e-changed");
    let spec_b = workload_spec(&changed_ref, &registry, &broker);
    let keys_b = BrokerKeys::new(agent_b.handle.clone());
    let err = workload::run(&spec_b, &cfg_b, &agent_b.handle, &keys_b).await.unwrap_err().to_string();
    let reason =
        format!("policy.image_digests: workload image digest {} not allowed", changed.manifest_digest());
    assert_eq!(
        err,
        format!(
            "workload keys: provider broker ({}) refused key {KEY_ID}: {reason}",
            broker.key_id().unwrap()
        )
    );
    assert!(!cfg_b.keys_dir.join(KEY_ID).exists(), "no key for a refused workload");
    assert!(std::fs::read_dir(&cfg_b.output_dir).unwrap().next().is_none(), "the workload must not have run");

    // The audit log verifies with the CLI and holds the key's anchor (added before the broker started) and both
    // decisions, in order.
    drop(broker);
    let verified = provider.verify_audit().unwrap();
    assert!(verified.contains("audit log ok: 3 records"), "{verified}");
    let records = audit_records(&provider.audit_log());
    assert_eq!(
        records.iter().map(|r| (r.decision, r.key_id.as_str(), r.reason.as_str())).collect::<Vec<_>>(),
        [
            (Decision::KeyStore, KEY_ID, "generation 1: key added"),
            (Decision::Released, KEY_ID, "every rule of the key's policy allowed"),
            (Decision::Refused, KEY_ID, reason.as_str()),
        ]
    );
    agent_a.stop().await.unwrap();
    agent_b.stop().await.unwrap();
}
