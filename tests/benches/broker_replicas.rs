//! Release throughput of the key broker by store, side by side in one run, 32 concurrent agents each, on the
//! same real GCE vTPM evidence judged by the real verifier, then audit commit and ES256 token.
//!
//! The recorded GCE quote cannot bind a fresh nonce (its extraData is the 2-byte nonce it was recorded with), so
//! every arm does the full appraisal (AK chain to Google's roots, RSA quote signature, PCR digest, event-log
//! replay, binding) and stops at the same point: the broker's acceptance of the appraisal
//! ([`sealroom_broker::appraisal::accept`]) refuses the failed binding layer. The peer runs exactly the broker's
//! appraiser ([`VerifierAppraiser`]: the same policy, the same acceptance) and is checked to refuse for the same
//! reason; the broker arms add what a release costs besides appraisal (gRPC, nonce check, evidence decode,
//! audit commit, token, response signature), but no key policy, HPKE seal or release record (see
//! `verifier/broker/benches/broker.rs` `broker_release_sealed` for those).
//! - `verifier_32_concurrent`: the peer — 32 appraisals of the evidence at once (blocking pool, both cores);
//! - `embedded_32_concurrent`: Challenge + Release over loopback gRPC, embedded store (redb, audit file);
//! - `postgres_1_replica_32_concurrent`: the same against one replica on PostgreSQL;
//! - `postgres_3_replicas_32_concurrent`: three replicas on one PostgreSQL, each agent challenged by replica
//!   i and released by replica i+1.
//!
//! PostgreSQL is a real server started by the test harness (fsync and synchronous_commit on). After the runs
//! the ratios of each broker's releases/s to the bare verifier's appraisals/s are printed.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sealroom_broker::appraisal::{Appraiser, VerifierAppraiser};
use sealroom_broker::nonce_mac::NonceKeys;
use sealroom_broker::policy::GoldenSet;
use sealroom_broker::ratelimit::RateLimit;
use sealroom_broker::service::{Broker, StoreParts};
use sealroom_broker::store::KeyRecords;
use sealroom_broker::token::Signer;
use sealroom_broker::{Clock, Randomness, SystemRandomness, seal};
use sealroom_measurements::binding::{Kem, Nonce, TeePublicKey};
use sealroom_measurements::evidence::{Evidence, HashAlg, Platform};
use sealroom_proto::keybroker::v1 as pb;
use sealroom_tests::postgres::Postgres;
use sealroom_verifier::tpm::gce_proto::GceAttestation;

#[path = "../../verifier/broker/benches/common/broker.rs"]
mod in_process;

const JAN_2024_MS: u64 = 1_704_067_200_000;
const KEY: &str = "provider-a/data";
const AGENTS: usize = 32;
fn policy() -> String {
    format!(
        "version = 1\nplatforms = [\"tpm\"]\ntcb_statuses = \"skip\"\nminimum_tcb = \"skip\"\ndebug = \"forbidden\"\n\
         golden = \"skip\"\nimage_digests = [\"{}\"]\nargs = \"skip\"\nenv = \"skip\"\n",
        in_process::IMAGE
    )
}

#[derive(Debug)]
struct FixedClock;

impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        JAN_2024_MS
    }
}

fn gce_evidence(nonce: Nonce, tee: &TeePublicKey) -> Evidence {
    let path = sealroom_tests::repo_root().join("verifier/testdata/tpm/attestations/gce-cos-85-nonce9009.pb");
    let att = GceAttestation::decode(&std::fs::read(path).unwrap()).unwrap();
    let quote = att.quotes.iter().find(|q| q.bank.alg == HashAlg::Sha256).unwrap();
    Evidence {
        nonce,
        tee_public_key: tee.clone(),
        platform: Platform::Tpm,
        tpm: Some(att.to_tpm_evidence(quote)),
        tdx: None,
        sev_snp: None,
        azure: None,
        runtime_event_log: vec![],
        gpus: Vec::new(),
    }
}

type Client = pb::key_broker_client::KeyBrokerClient<tonic::transport::Channel>;

async fn client(addr: std::net::SocketAddr) -> Client {
    let ch =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    pb::key_broker_client::KeyBrokerClient::new(ch)
}

type WireEvidence = sealroom_proto::attestation::v1::Evidence;

/// One agent: a challenge at `at`, the release of its evidence at `to`. The evidence is decoded from the
/// recording once ahead of the runs (`template`) and only its nonce set here: what an agent does to produce it
/// is not the broker's cost.
async fn agent(mut at: Client, mut to: Client, template: Arc<WireEvidence>) {
    let ch = at.challenge(pb::ChallengeRequest::default()).await.unwrap().into_inner();
    let nonce = Nonce::from_slice(&ch.nonce).unwrap();
    let mut evidence = (*template).clone();
    evidence.nonce = nonce.0.to_vec();
    let req = pb::ReleaseRequest {
        nonce: nonce.0.to_vec(),
        evidence: Some(evidence),
        key_ids: vec![KEY.into()],
        tpm_activation: None,
    };
    let r = to.release(req).await.unwrap().into_inner();
    // Refused after full appraisal (the recorded GCE quote cannot bind this nonce), never at the nonce.
    assert_binding_refusal(&r.refusals[0].reason);
}

/// The refusal every arm must end in: the verifier's binding layer failed (after every other layer ran).
fn assert_binding_refusal(reason: &str) {
    assert!(reason.starts_with("verifier: ") && reason.contains("extraData is 2 bytes"), "{reason}");
}

fn replica(pg_url: &str, name: &str, dir: &std::path::Path) -> Broker {
    let rng: Arc<dyn Randomness> = Arc::new(SystemRandomness::new());
    let kek = sealroom_broker::keystore::Kek::from_bytes(&[7; 32]).unwrap();
    let nonces = NonceKeys::new(&[9; 32], None, 600_000).unwrap();
    let store = sealroom_broker::pg::open(pg_url, kek, rng.as_ref(), nonces, name).unwrap();
    if store.keys.list(None).unwrap().is_empty() {
        store.keys.add(KEY, "provider", &policy(), None, rng.as_ref(), 0).unwrap();
    }
    std::fs::create_dir_all(dir).unwrap();
    Broker::on_store(StoreParts {
        clock: Arc::new(FixedClock),
        rng,
        appraiser: Arc::new(VerifierAppraiser::default()),
        store: store.keys,
        golden: GoldenSet::default(),
        signer: Signer::load_or_create(&dir.join(format!("{name}.pk8"))).unwrap(),
        ledger: store.ledger,
    })
    // Every benchmark client is one loopback peer: the per-peer limits would measure the limiter, not the broker
    // (as in_process::broker does for the embedded arm).
    .with_rate_limits(UNLIMITED, UNLIMITED)
}

/// A rate limit no benchmark reaches.
const UNLIMITED: RateLimit = RateLimit { per_second: u32::MAX, burst: u32::MAX };

fn median_ns(group: &str, name: &str) -> Option<f64> {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()?
        .join(format!("criterion/{group}/{name}/new/estimates.json"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (_, tee) = seal::derive_keypair(Kem::X25519HkdfSha256, b"bench tee key").unwrap();
    let pg = Postgres::start().unwrap();
    pg.psql("postgres", "create database bench").unwrap();
    let url = pg.superuser_url("bench");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    let embedded = Arc::new(in_process::broker(
        &tmp.path().join("embedded"),
        Arc::new(FixedClock),
        Arc::new(VerifierAppraiser::default()),
        &[KEY],
    ));
    let replicas: Vec<Arc<Broker>> =
        ["r1", "r2", "r3"].iter().map(|n| Arc::new(replica(&url, n, &tmp.path().join("pg")))).collect();
    let embedded_client = rt.block_on(async { client(in_process::serve(embedded).await).await });
    let replica_clients: Vec<Client> = rt.block_on(async {
        let mut v = Vec::new();
        for r in &replicas {
            v.push(client(in_process::serve(Arc::clone(r)).await).await);
        }
        v
    });

    let group = "broker_stores";
    let mut g = c.benchmark_group(group);
    g.sample_size(20);
    g.throughput(Throughput::Elements(AGENTS as u64));

    let verifier = Arc::new(VerifierAppraiser::default());
    let ev = Arc::new(gce_evidence(Nonce([3; 32]), &tee));
    let template: Arc<WireEvidence> = Arc::new(gce_evidence(Nonce([0; 32]), &tee).into());
    g.bench_function("verifier_32_concurrent", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..AGENTS {
                    let (v, ev) = (Arc::clone(&verifier), Arc::clone(&ev));
                    set.spawn_blocking(move || {
                        assert_binding_refusal(&v.appraise(&ev, JAN_2024_MS).unwrap_err().to_string());
                    });
                }
                set.join_all().await;
            });
        });
    });
    let run = |clients: &[Client], rotate: bool| {
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..AGENTS {
                let at = clients[i % clients.len()].clone();
                let to = clients[(i + usize::from(rotate)) % clients.len()].clone();
                set.spawn(agent(at, to, Arc::clone(&template)));
            }
            set.join_all().await;
        });
    };
    g.bench_function("embedded_32_concurrent", |b| {
        b.iter(|| run(std::slice::from_ref(&embedded_client), false));
    });
    g.bench_function("postgres_1_replica_32_concurrent", |b| {
        b.iter(|| run(&replica_clients[..1], false));
    });
    g.bench_function("postgres_3_replicas_32_concurrent", |b| {
        b.iter(|| run(&replica_clients, true));
    });
    g.finish();

    if let Some(peer) = median_ns(group, "verifier_32_concurrent") {
        let per_s = |ns: f64| AGENTS as f64 / (ns / 1e9);
        println!("bare verifier: {:.0} appraisals/s (32 concurrent)", per_s(peer));
        for name in [
            "embedded_32_concurrent",
            "postgres_1_replica_32_concurrent",
            "postgres_3_replicas_32_concurrent",
        ] {
            if let Some(ns) = median_ns(group, name) {
                println!("{name}: {:.0} releases/s, {:.2} x the bare verifier", per_s(ns), peer / ns);
            }
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
