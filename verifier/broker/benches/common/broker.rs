//! The key broker in-process for benchmarks: a fresh key store, audit log and signing key in a directory, each
//! key under one policy approving [`IMAGE`] with `--in /data` and `MODE=batch`. Shared by
//! `verifier/broker/benches/broker.rs` and `agent/benches/broker_release.rs` (each includes it with `#[path]`), so
//! the broker both measure is set up the same way.

use std::path::Path;
use std::sync::Arc;

use sealroom_broker::appraisal::Appraiser;
use sealroom_broker::audit::AuditLog;
use sealroom_broker::grpc;
use sealroom_broker::keystore::{Kek, KeyStore};
use sealroom_broker::nonce::NonceBook;
use sealroom_broker::nonce_mac::NonceKeys;
use sealroom_broker::policy::GoldenSet;
use sealroom_broker::ratelimit::RateLimit;
use sealroom_broker::service::{Broker, BrokerParts};
use sealroom_broker::token::Signer;
use sealroom_broker::{Clock, Randomness, SystemRandomness};
use sealroom_proto::keybroker::v1::key_broker_server::{KeyBroker, KeyBrokerServer};
use sealroom_proto::limits::{LimitStats, ServerLimits};

/// The workload image the policy approves.
pub const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const POLICY: &str = r#"
version = 1
platforms = ["tpm"]
tcb_statuses = "skip"
minimum_tcb = "skip"
debug = "forbidden"
golden = "skip"
image_digests = ["sha256:1111111111111111111111111111111111111111111111111111111111111111"]
args = ["--in", "/data"]
env = ["MODE=batch"]
"#;

/// Serves `broker`'s gRPC API on a fresh loopback port and returns it, configured as `sealroom broker serve`
/// configures it (`verifier/cli/src/broker_cmd.rs`): [`ServerLimits`] on the builder, the listener and the
/// service, TCP_NODELAY; plain HTTP/2 (no TLS).
pub async fn serve(broker: Arc<Broker>) -> std::net::SocketAddr {
    let limits = ServerLimits::default();
    serve_service(grpc::service(broker, &limits), &limits).await
}

/// Serves any implementation of the `KeyBroker` API exactly as [`serve`] serves the broker's.
pub async fn serve_service<S: KeyBroker>(
    service: KeyBrokerServer<S>,
    limits: &ServerLimits,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = limits.incoming(
        tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        Arc::new(LimitStats::default()),
    );
    tokio::spawn(
        grpc::server(limits)
            .add_service(service.max_decoding_message_size(limits.max_request_bytes))
            .serve_with_incoming(incoming),
    );
    addr
}

/// A broker with its state in `dir` (created), holding `key_ids` under the policy, judging evidence with
/// `appraiser` at `clock`'s time. Nonces live 10 minutes, so requests prepared ahead of a timed run stay valid.
pub fn broker(dir: &Path, clock: Arc<dyn Clock>, appraiser: Arc<dyn Appraiser>, key_ids: &[&str]) -> Broker {
    std::fs::create_dir_all(dir).unwrap();
    let rng: Arc<dyn Randomness> = Arc::new(SystemRandomness::new());
    let store = Arc::new(
        KeyStore::open(&dir.join("keys.redb"), Kek::from_bytes(&[7; 32]).unwrap(), rng.as_ref()).unwrap(),
    );
    for id in key_ids {
        store.add(id, "provider", POLICY, None, rng.as_ref(), 0).unwrap();
    }
    Broker::new(BrokerParts {
        clock,
        rng,
        appraiser,
        store,
        golden: GoldenSet::default(),
        signer: Signer::load_or_create(&dir.join("signing.pk8")).unwrap(),
        nonces: NonceBook::new(NonceKeys::new(&[0x6e; 32], None, 600_000).unwrap()),
        audit: AuditLog::open(&dir.join("audit.log")).unwrap().0,
    })
    // Every benchmark client is one loopback peer: the per-peer limits would measure the limiter, not the broker.
    .with_rate_limits(UNLIMITED, UNLIMITED)
}

/// A rate limit no benchmark reaches.
const UNLIMITED: RateLimit = RateLimit { per_second: u32::MAX, burst: u32::MAX };
