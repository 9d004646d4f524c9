//! The agent's key release against the broker, on swtpm, side by side with the bare verifier on the same
//! evidence, in one run: `cargo bench -p sealroom-agent --bench broker_release`.
//!
//! - `release/swtpm_round_trip`: what the agent does at boot for one key ([`BrokerKeys`]): Challenge, evidence
//!   from the TPM (a fresh quote over the broker's nonce), Release (nonce, real verifier with the enrolled AK,
//!   binding, policy, HPKE seal, audit append + fdatasync, ES256 token), HPKE open. gRPC over loopback TCP.
//! - `release/verifier_appraise_swtpm`: the broker's verifier alone on one piece of that evidence: the peer.
//! - `release/broker_32_concurrent`: 32 agents' Release requests at once, each with its own nonce and fresh
//!   swtpm evidence made beforehand (untimed: the broker's throughput, not the TPM's).
//!
//! Before criterion's runs a percentile pass prints p50/p99 of the round trip (goal p50 ≤ 10 ms) and the
//! 32-concurrent throughput as a ratio to the bare verifier's throughput on both cores.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    missing_docs
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sealroom_agent::workload::KeyProvider;
use sealroom_agent::workload::broker::BrokerKeys;
use sealroom_agent::workload::spec::BrokerEndpoint;
use sealroom_broker::appraisal::{Appraiser, VerifierAppraiser};
use sealroom_broker::{Clock, SystemClock};
use sealroom_measurements::binding::Nonce;
use sealroom_measurements::cel::RuntimeEvent;
use sealroom_measurements::evidence::Evidence;
use sealroom_proto::keybroker::v1 as pb;
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};

/// The broker set up as in the verifier's broker bench.
#[path = "../../verifier/broker/benches/common/broker.rs"]
mod in_process;
#[path = "common/stats.rs"]
mod stats;

use in_process::IMAGE;
use stats::{ms, percentile};

const KEY: &str = "provider-a/data";
const AGENTS: usize = 32;

type Client = pb::key_broker_client::KeyBrokerClient<tonic::transport::Channel>;

/// `AGENTS` Release requests, each over its own fresh challenge and swtpm evidence (made now, untimed).
async fn prepared_requests(
    client: &Client,
    agent: &sealroom_agent::worker::AttestationHandle,
) -> Vec<pb::ReleaseRequest> {
    let mut out = Vec::with_capacity(AGENTS);
    for _ in 0..AGENTS {
        let ch = client.clone().challenge(pb::ChallengeRequest::default()).await.unwrap().into_inner();
        let nonce = Nonce::from_slice(&ch.nonce).unwrap();
        let ev = agent.evidence(nonce).await.unwrap();
        out.push(pb::ReleaseRequest {
            nonce: nonce.0.to_vec(),
            evidence: Some(ev.into()),
            key_ids: vec![KEY.into()],
            tpm_activation: None,
        });
    }
    out
}

async fn release_all(client: &Client, requests: Vec<pb::ReleaseRequest>) {
    let mut set = tokio::task::JoinSet::new();
    for req in requests {
        let mut c = client.clone();
        set.spawn(async move {
            let r = c.release(req).await.unwrap().into_inner();
            assert_eq!(r.keys.len(), 1, "{:?}", r.refusals);
        });
    }
    set.join_all().await;
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tpm = Swtpm::start().unwrap();
    let events = [
        RuntimeEvent::ManifestDigest(IMAGE.into()),
        RuntimeEvent::Arg("--in".into()),
        RuntimeEvent::Arg("/data".into()),
        RuntimeEvent::Env("MODE=batch".into()),
        RuntimeEvent::LaunchSeparator,
    ];
    let agent = rt.block_on(sealroom_tests::agent::start_agent(&tpm, &events)).unwrap();
    let sample: Evidence = rt.block_on(agent.handle.evidence(Nonce([3; 32]))).unwrap();
    let ak = sample.tpm.as_ref().unwrap().ak_public.clone();
    let appraiser = Arc::new(VerifierAppraiser::with_pinned_tpm_aks(vec![ak]));
    let state = unique_temp_dir("bench-broker-state");
    let broker = Arc::new(in_process::broker(
        &state,
        Arc::new(SystemClock),
        Arc::clone(&appraiser) as Arc<dyn Appraiser>,
        &[KEY],
    ));
    let addr = rt.block_on(in_process::serve(Arc::clone(&broker)));
    let url = format!("http://{addr}");
    let endpoint = BrokerEndpoint {
        name: "bench".into(),
        url: url.clone(),
        key_id: broker.signer_key_id().to_owned(),
        tls_ca: None,
    };
    let keys = BrokerKeys::new(agent.handle.clone());
    let client: Client = rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
        pb::key_broker_client::KeyBrokerClient::new(ch)
    });
    let key_ids = vec![KEY.to_owned()];
    let round_trip = || rt.block_on(keys.release(&endpoint, &key_ids)).unwrap();

    // Percentile pass.
    for _ in 0..20 {
        round_trip();
    }
    let mut lat: Vec<Duration> = (0..400)
        .map(|_| {
            let t = Instant::now();
            let k = round_trip();
            let d = t.elapsed();
            assert_eq!(k.len(), 1);
            d
        })
        .collect();
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let now_ms = SystemClock.now_ms();
    let verify_rate = |threads: usize| -> f64 {
        let per = 400usize;
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..per {
                        appraiser.appraise(&sample, now_ms).unwrap();
                    }
                });
            }
        });
        (threads * per) as f64 / t.elapsed().as_secs_f64()
    };
    let (v1, v2) = (verify_rate(1), verify_rate(2));
    let mut busy = Duration::ZERO;
    let rounds = 15;
    for _ in 0..rounds {
        let reqs = rt.block_on(prepared_requests(&client, &agent.handle));
        let t = Instant::now();
        rt.block_on(release_all(&client, reqs));
        busy += t.elapsed();
    }
    let broker_rate = (rounds * AGENTS) as f64 / busy.as_secs_f64();
    eprintln!(
        "release round trip on swtpm (Challenge + quote + Release + open): p50 {:.2} ms, p99 {:.2} ms (goal p50 ≤ 10 ms)",
        ms(p50),
        ms(p99)
    );
    eprintln!(
        "bare verifier on the same evidence: {v1:.0}/s on 1 thread, {v2:.0}/s on 2 threads; broker with {AGENTS} \
         concurrent agents: {broker_rate:.0} releases/s = {:.2} × the 2-thread verifier ({:.2} × 1 thread)",
        broker_rate / v2,
        broker_rate / v1
    );

    let mut g = c.benchmark_group("release");
    g.sample_size(20);
    g.bench_function("swtpm_round_trip", |b| b.iter(round_trip));
    g.bench_function("verifier_appraise_swtpm", |b| b.iter(|| appraiser.appraise(&sample, now_ms).unwrap()));
    g.throughput(criterion::Throughput::Elements(AGENTS as u64));
    g.bench_function("broker_32_concurrent", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let reqs = rt.block_on(prepared_requests(&client, &agent.handle));
                let t = Instant::now();
                rt.block_on(release_all(&client, reqs));
                total += t.elapsed();
            }
            total
        });
    });
    g.finish();
    rt.block_on(agent.handle.shutdown(Duration::from_secs(5)));
}

criterion_group!(benches, bench);
criterion_main!(benches);
