//! GetEvidence against its floor, on one swtpm in one run: `cargo bench -p sealroom-agent --bench get_evidence`.
//!
//! - `tpm/raw_quote`: one TPM2_Quote with the agent's ECC P-256 AK over the same PCR selection (every allocated
//!   bank, PCRs 0–23), over one open connection: the cost floor.
//! - `tpm/get_evidence_grpc`: one GetEvidence over gRPC on loopback TCP (request checks, queue, quote, pcrDigest
//!   check, protobuf encoding, HTTP/2), one client.
//! - `tpm/get_evidence_64_clients`: time per request while 64 concurrent clients call GetEvidence; its inverse
//!   is the throughput, to compare with the serial quote rate (1 / raw_quote).
//!
//! Before criterion's runs, a percentile pass prints p50/p99 of both single-client latencies and the ratios
//! against the goals (p50 ≤ 2 × raw quote + 1 ms; 64-client throughput ≥ 0.8 × serial quote rate).
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    missing_docs
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sealroom_agent::attester::tpm::TpmAttester;
use sealroom_agent::paths::KernelPaths;
use sealroom_agent::server::{self, Config};
use sealroom_agent::worker::WorkerConfig;
use sealroom_proto::attestation::v1 as pb;
use sealroom_proto::attestation::v1::attestation_client::AttestationClient;
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};
use tonic::transport::Channel;

#[path = "common/stats.rs"]
mod stats;

use stats::{ms, percentile};

const CLIENTS: usize = 64;

async fn connect(addr: SocketAddr) -> AttestationClient<Channel> {
    AttestationClient::new(Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap())
}

fn request(i: u64) -> pb::GetEvidenceRequest {
    let mut nonce = vec![0u8; 32];
    nonce[..8].copy_from_slice(&i.to_be_bytes());
    pb::GetEvidenceRequest { nonce, tee_public_key: Vec::new() }
}

/// At least `requested` GetEvidence calls spread evenly over `CLIENTS` clients (one connection each); returns
/// the wall time scaled to `requested` calls (criterion divides by its iteration count).
async fn concurrent(clients: &[AttestationClient<Channel>], requested: u64) -> Duration {
    let per = requested.max(1).div_ceil(CLIENTS as u64);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                client.get_evidence(request((c as u64) << 32 | i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed().mul_f64(requested as f64 / (per * CLIENTS as u64) as f64)
}

fn bench(c: &mut Criterion) {
    let tpm = Swtpm::start().unwrap();
    let root = unique_temp_dir("bench-root");
    std::fs::create_dir_all(&root).unwrap();
    let paths = KernelPaths::new(&root);

    // Phase 1: the floor, on this swtpm (swtpm serves one connection at a time, so the agent starts after).
    let mut raw = TpmAttester::open(&tpm.tcti(), &paths).unwrap();
    let mut raw_lat = Vec::new();
    for i in 0..400u32 {
        let mut extra = [0u8; 32];
        extra[..4].copy_from_slice(&i.to_be_bytes());
        let t = Instant::now();
        raw.raw_quote(&extra).unwrap();
        raw_lat.push(t.elapsed());
    }
    raw_lat.sort();
    let mut g = c.benchmark_group("tpm");
    g.bench_function("raw_quote", |b| {
        let mut i = 0u32;
        b.iter(|| {
            i = i.wrapping_add(1);
            raw.raw_quote(&[u8::try_from(i % 251).unwrap(); 32]).unwrap()
        });
    });
    drop(raw);

    // Phase 2: the agent on the same swtpm.
    let rt =
        Arc::new(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap());
    let worker = WorkerConfig {
        paths,
        tcti: Some(tpm.tcti()),
        no_tpm: false,
        runtime_log_dir: unique_temp_dir("bench-log"),
        queue_depth: 256,
        request_timeout: Duration::from_secs(30),
    };
    let running = rt
        .block_on(server::start(Config {
            tcp: Some("127.0.0.1:0".parse().unwrap()),
            vsock: None,
            worker,
            limits: server::agent_limits(),
        }))
        .unwrap();
    let addr = running.tcp_addr.unwrap();
    let mut one = rt.block_on(connect(addr));
    let mut ev_lat = Vec::new();
    for i in 0..400u64 {
        let t = Instant::now();
        rt.block_on(one.get_evidence(request(i))).unwrap();
        ev_lat.push(t.elapsed());
    }
    ev_lat.sort();
    let clients: Vec<_> = (0..CLIENTS).map(|_| rt.block_on(connect(addr))).collect();
    let total = 3200u64;
    let wall = rt.block_on(concurrent(&clients, total));

    let (raw50, raw99) = (percentile(&raw_lat, 0.5), percentile(&raw_lat, 0.99));
    let (ev50, ev99) = (percentile(&ev_lat, 0.5), percentile(&ev_lat, 0.99));
    let serial_rate = 1.0 / raw50.as_secs_f64();
    let rate = total as f64 / wall.as_secs_f64();
    let goal = 2.0 * ms(raw50) + 1.0;
    eprintln!("\n== GetEvidence vs TPM2_Quote on one swtpm (ECC P-256 AK, all banks, PCR 0-23) ==");
    eprintln!("raw TPM2_Quote      p50 {:.3} ms  p99 {:.3} ms  (400 quotes)", ms(raw50), ms(raw99));
    eprintln!("GetEvidence, 1 cli  p50 {:.3} ms  p99 {:.3} ms  (400 calls)", ms(ev50), ms(ev99));
    eprintln!(
        "p50 ratio {:.2}x raw; goal p50 <= 2 x raw + 1 ms = {goal:.3} ms: {}",
        ms(ev50) / ms(raw50),
        if ms(ev50) <= goal { "met" } else { "MISSED" }
    );
    eprintln!(
        "{CLIENTS} clients x {} calls: {rate:.0}/s vs serial quote rate {serial_rate:.0}/s = {:.2}x (goal >= 0.8x): {}\n",
        total / CLIENTS as u64,
        rate / serial_rate,
        if rate >= 0.8 * serial_rate { "met" } else { "MISSED" }
    );

    g.bench_function("get_evidence_grpc", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            rt.block_on(one.get_evidence(request(i))).unwrap()
        });
    });
    g.bench_function("get_evidence_64_clients", |b| {
        b.iter_custom(|iters| rt.block_on(concurrent(&clients, iters)));
    });
    g.finish();
    drop(clients);
    rt.block_on(running.stop()).unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
