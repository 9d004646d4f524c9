//! The data provider's key broker, in process and served over gRPC on loopback (the real `Broker`, its
//! `VerifierAppraiser`, key store, audit log and signer), and the signed golden document its policy pins.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use sealroom_agent::server::Running;
use sealroom_agent::workload::KeyProvider;
use sealroom_agent::workload::broker::BrokerKeys;
use sealroom_agent::workload::spec::BrokerEndpoint;
use sealroom_broker::appraisal::Appraiser;
use sealroom_broker::audit::AuditLog;
use sealroom_broker::grpc::KeyBrokerService;
use sealroom_broker::keystore::{Kek, KeyStore};
use sealroom_broker::nonce::NonceBook;
use sealroom_broker::policy::{GoldenFile, GoldenSet};
use sealroom_broker::service::{Broker, BrokerParts};
use sealroom_broker::token::Signer;
use sealroom_broker::{ManualClock, Randomness, SystemRandomness};
use sealroom_proto::keybroker::v1::key_broker_server::KeyBrokerServer;
use sealroom_tests::broker::serve_key_broker;
use sealroom_tests::swtpm::unique_temp_dir;

pub use sealroom_tests::analytics::{ARG, DATA_KEY, IMAGE, KEY_ID};

/// A running broker.
#[derive(Debug)]
pub struct ProviderBroker {
    /// The broker.
    pub broker: Arc<Broker>,
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// Its signing key's id (what the workload spec pins and the launcher measures as `broker_key`).
    pub kid: String,
    /// Its state directory.
    pub dir: PathBuf,
}

impl ProviderBroker {
    /// Starts a broker whose clock stands at `now_ms`, holding [`KEY_ID`] under `policy`.
    pub async fn start(appraiser: Arc<dyn Appraiser>, policy: &str, golden: GoldenSet, now_ms: u64) -> Self {
        let dir = unique_temp_dir("release-broker");
        std::fs::create_dir_all(&dir).unwrap();
        let rng: Arc<dyn Randomness> = Arc::new(SystemRandomness::new());
        let store = Arc::new(
            KeyStore::open(&dir.join("keys.redb"), Kek::from_bytes(&[5; 32]).unwrap(), rng.as_ref()).unwrap(),
        );
        store.add(KEY_ID, "provider-a", policy, Some(DATA_KEY.to_vec()), rng.as_ref(), 0).unwrap();
        let signer = Signer::load_or_create(&dir.join("signing.pk8")).unwrap();
        let kid = signer.kid().to_owned();
        let nonces = NonceBook::generate(30_000, rng.as_ref()).unwrap();
        let broker = Arc::new(Broker::new(BrokerParts {
            clock: Arc::new(ManualClock::at(now_ms)),
            rng,
            appraiser,
            store,
            golden,
            signer,
            nonces,
            audit: AuditLog::open(&dir.join("audit.log")).unwrap().0,
        }));
        let addr = serve_key_broker(KeyBrokerServer::new(KeyBrokerService(Arc::clone(&broker)))).await;
        Self { broker, addr, kid, dir }
    }

    /// The endpoint a workload spec names, pinning this broker's key.
    pub fn endpoint(&self) -> BrokerEndpoint {
        BrokerEndpoint {
            name: "provider-a".into(),
            url: format!("http://{}", self.addr),
            key_id: self.kid.clone(),
            tls_ca: None,
        }
    }
}

/// A key policy: `platforms` and `tcb_statuses` as TOML arrays (or `"skip"`), debug forbidden, the golden
/// document `golden` (`Some((document digest, signer))`) or `"skip"`, [`IMAGE`], [`ARG`], no environment.
pub fn policy(platforms: &str, tcb_statuses: &str, golden: Option<(&str, &str)>) -> String {
    let golden = golden.map_or_else(
        || "\"skip\"".to_owned(),
        |(document, signer)| format!("{{ signers = [\"{signer}\"], documents = [\"{document}\"] }}"),
    );
    format!(
        "version = 1\nplatforms = {platforms}\ntcb_statuses = {tcb_statuses}\nminimum_tcb = \"skip\"\n\
         debug = \"forbidden\"\ngolden = {golden}\nimage_digests = [\"{IMAGE}\"]\nargs = [\"{ARG}\"]\nenv = []\n"
    )
}

/// A golden document predicting `registers` (name, bank, value), signed with a fixed-seed Ed25519 key:
/// (the document as the broker loads it, `ed25519:<public key>`).
pub fn golden_document(registers: &[(&str, &str, &[u8])]) -> (GoldenFile, String) {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use sealroom_measurements::golden;
    let doc = golden::GoldenDocument {
        schema: golden::SCHEMA.into(),
        image: golden::ImageInfo { id: "sealroom-test".into(), version: "0.1.0".into(), disk_sha256: None },
        uki: golden::UkiInfo {
            file_sha256: "0".repeat(64),
            authenticode_sha256: "0".repeat(64),
            authenticode_sha384: "0".repeat(96),
            sections: vec![],
        },
        registers: registers
            .iter()
            .map(|(register, alg, value)| sealroom_measurements::uki::PredictedRegister {
                register: (*register).into(),
                alg: (*alg).into(),
                events: vec![],
                value: hex::encode(value),
                complete: true,
            })
            .collect(),
        platforms: golden::default_platforms(),
        packages: BTreeMap::new(),
    };
    let bytes = doc.to_json().unwrap();
    let key = Ed25519KeyPair::from_seed_unchecked(&[0x61; 32]).unwrap();
    let sig = hex::encode(key.sign(&bytes).as_ref());
    (GoldenFile::new(bytes, Some(sig)), format!("ed25519:{}", hex::encode(key.public_key().as_ref())))
}

/// The agent asks the broker for the key: the key, or the broker's one-line reason.
pub async fn release(agent: &Running, broker: &ProviderBroker) -> Result<Vec<u8>, String> {
    let mut keys = BrokerKeys::new(agent.handle.clone())
        .release(&broker.endpoint(), &[KEY_ID.into()])
        .await
        .map_err(|e| {
            let e = e.to_string();
            let prefix =
                format!("workload keys: provider provider-a ({}) refused key {KEY_ID}: ", broker.kid);
            e.strip_prefix(&prefix).map_or(e.clone(), str::to_owned)
        })?;
    assert_eq!(keys.len(), 1);
    Ok(keys.remove(0).1)
}
