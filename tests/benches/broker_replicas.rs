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
//! - `verifier_32_concurrent`: the peer — 32 appraisals of the evidence, as many at once as the machine has
//!   cores (one blocking thread per core, as the brokers' appraisal pools run them: at its best);
//! - `embedded_32_concurrent`: Challenge + Release over loopback gRPC, embedded store (redb, audit file);
//! - `postgres_1_replica_32_concurrent`: the same against one replica on PostgreSQL;
//! - `postgres_3_replicas_32_concurrent`: three replicas on one PostgreSQL, each agent challenged by replica
//!   i and released by replica i+1.
//!
//! The CPU pass also measures the *transport floor*: a server configured exactly as the broker's (builder,
//! limits, listener) whose `KeyBroker` answers every Challenge and Release with the responses the embedded broker
//! gave once before the runs ([`TransportFloor`]): what HTTP/2, gRPC, decoding the ~30 KB request and loopback
//! TCP cost the server per Challenge + Release with no broker work at all, and so the best ratio any broker
//! served this way could reach.
//!
//! PostgreSQL is a real server started by the test harness (fsync and synchronous_commit on). After the runs
//! the ratios of each broker's releases/s to the bare verifier's appraisals/s are printed.
//!
//! Each agent has its own connection to each broker it talks to (as real agents, each on its own machine, do).
//! The peer, the brokers and the agents run on three runtimes of their own (threads `sr-verifier`,
//! `sr-broker`, `sr-agent`), so that after the timed runs a second pass can count the CPU time each side's
//! threads spent per appraisal and per release (`/proc/self/task/*/schedstat`), and for the replica also the
//! CPU time of PostgreSQL's processes (`Postgres::server_cpu_ns`): the in-process agents share
//! the machine's cores with the broker in the timed runs, which a broker serving agents on other machines does
//! not, and CPU time per operation moves far less with the load of other jobs than wall-clock throughput.
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
use sealroom_proto::keybroker::v1::key_broker_server::{KeyBroker, KeyBrokerServer};
use sealroom_proto::limits::ServerLimits;
use sealroom_tests::postgres::Postgres;
use sealroom_verifier::tpm::gce_proto::GceAttestation;

/// The allocator of the `sealroom` binary (`verifier/cli/src/main.rs`), so the brokers run here as they do
/// there; the bare verifier, in the same process, gets it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    pb::key_broker_client::KeyBrokerClient::new(ch)
}

/// One connection per agent to each of `addrs`: `[agent][broker]`.
async fn connections(addrs: &[std::net::SocketAddr]) -> Vec<Vec<Client>> {
    let mut agents = Vec::new();
    for _ in 0..AGENTS {
        let mut per_broker = Vec::new();
        for a in addrs {
            per_broker.push(client(*a).await);
        }
        agents.push(per_broker);
    }
    agents
}

/// A runtime whose threads (workers and blocking pool) are all named `name`, kept alive for the whole run so
/// that their CPU time can be read at the end ([`thread_cpu_ns`]).
fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .thread_keep_alive(std::time::Duration::from_secs(3600))
        .enable_all()
        .build()
        .unwrap()
}

/// CPU time (ns) run so far by this process's threads named `name` (`/proc/self/task/*/schedstat`), or `None`
/// where /proc does not say.
fn thread_cpu_ns(name: &str) -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else { continue };
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("schedstat")) else { continue };
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

type WireEvidence = sealroom_proto::attestation::v1::Evidence;

/// One agent: a challenge at `at`, the release of its evidence at `to`. The evidence is decoded from the
/// recording once ahead of the runs (`template`) and only its nonce set here: what an agent does to produce it
/// is not the broker's cost.
async fn agent(mut at: Client, mut to: Client, template: Arc<WireEvidence>) {
    let (_, r) = challenge_and_release(&mut at, &mut to, &template).await;
    // Refused after full appraisal (the recorded GCE quote cannot bind this nonce), never at the nonce.
    assert_binding_refusal(&r.refusals[0].reason);
}

/// A challenge at `at` and the release at `to` of `template` bound to its nonce: both answers.
async fn challenge_and_release(
    at: &mut Client,
    to: &mut Client,
    template: &WireEvidence,
) -> (pb::ChallengeResponse, pb::ReleaseResponse) {
    let ch = at.challenge(pb::ChallengeRequest::default()).await.unwrap().into_inner();
    let nonce = Nonce::from_slice(&ch.nonce).unwrap();
    let mut evidence = template.clone();
    evidence.nonce = nonce.0.to_vec();
    let req = pb::ReleaseRequest {
        nonce: nonce.0.to_vec(),
        evidence: Some(evidence),
        key_ids: vec![KEY.into()],
        tpm_activation: None,
    };
    (ch, to.release(req).await.unwrap().into_inner())
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

/// The transport floor: answers every Challenge and Release with responses a broker gave (recorded once, before
/// the runs), decoding each request as the broker's server does and doing nothing else.
#[derive(Debug, Clone)]
struct TransportFloor {
    challenge: pb::ChallengeResponse,
    release: pb::ReleaseResponse,
}

#[tonic::async_trait]
impl KeyBroker for TransportFloor {
    async fn challenge(
        &self,
        _: tonic::Request<pb::ChallengeRequest>,
    ) -> Result<tonic::Response<pb::ChallengeResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.challenge.clone()))
    }

    async fn release(
        &self,
        _: tonic::Request<pb::ReleaseRequest>,
    ) -> Result<tonic::Response<pb::ReleaseResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.release.clone()))
    }

    async fn receipt(
        &self,
        _: tonic::Request<pb::ReceiptRequest>,
    ) -> Result<tonic::Response<pb::ReceiptResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("the transport floor answers Challenge and Release only"))
    }
}

/// What the embedded broker answers one agent (the floor's recorded responses).
async fn record_responses(client: Client, template: &WireEvidence) -> TransportFloor {
    let (challenge, release) =
        challenge_and_release(&mut client.clone(), &mut client.clone(), template).await;
    assert_binding_refusal(&release.refusals[0].reason);
    TransportFloor { challenge, release }
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
    let url = pg.create_database("bench").unwrap();
    let verifier_rt = runtime(VERIFIER_THREADS);
    let broker_rt = runtime(BROKER_THREADS);
    let rt = runtime(AGENT_THREADS);

    let embedded = Arc::new(in_process::broker(
        &tmp.path().join("embedded"),
        Arc::new(FixedClock),
        Arc::new(VerifierAppraiser::default()),
        &[KEY],
    ));
    let replicas: Vec<Arc<Broker>> =
        ["r1", "r2", "r3"].iter().map(|n| Arc::new(replica(&url, n, &tmp.path().join("pg")))).collect();
    // The brokers serve from their own runtime; the agents connect from theirs.
    let embedded_addr = broker_rt.block_on(in_process::serve(embedded));
    let replica_addrs: Vec<_> =
        replicas.iter().map(|r| broker_rt.block_on(in_process::serve(Arc::clone(r)))).collect();
    let embedded_clients = rt.block_on(connections(&[embedded_addr]));
    let replica_clients = rt.block_on(connections(&replica_addrs));
    let template: Arc<WireEvidence> = Arc::new(gce_evidence(Nonce([0; 32]), &tee).into());
    let floor = rt.block_on(record_responses(embedded_clients[0][0].clone(), &template));
    let limits = ServerLimits::default();
    let floor_addr = broker_rt.block_on(in_process::serve_service(KeyBrokerServer::new(floor), &limits));
    let floor_clients = rt.block_on(connections(&[floor_addr]));

    let group = "broker_stores";
    let mut g = c.benchmark_group(group);
    g.sample_size(20);
    g.throughput(Throughput::Elements(AGENTS as u64));

    let verifier = Arc::new(VerifierAppraiser::default());
    // The peer at its best: as many appraisals at once as the machine has cores, as the brokers appraise
    // (their `AppraisalPool`). 32 appraisals at once on 32 threads cost 6–27 % more CPU each (docs/broker-scaling.md).
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let ev = Arc::new(gce_evidence(Nonce([3; 32]), &tee));
    let appraise_32 = || {
        verifier_rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for worker in 0..workers {
                let (v, ev) = (Arc::clone(&verifier), Arc::clone(&ev));
                set.spawn_blocking(move || {
                    for _ in (worker..AGENTS).step_by(workers) {
                        assert_binding_refusal(&v.appraise(&ev, JAN_2024_MS).unwrap_err().to_string());
                    }
                });
            }
            set.join_all().await;
        });
    };
    g.bench_function("verifier_32_concurrent", |b| b.iter(appraise_32));
    // Agent i challenges at broker i mod n and releases at broker i+1 mod n (`rotate`) or the same one.
    let run = |clients: &[Vec<Client>], rotate: bool| {
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (i, own) in clients.iter().enumerate() {
                let at = own[i % own.len()].clone();
                let to = own[(i + usize::from(rotate)) % own.len()].clone();
                set.spawn(agent(at, to, Arc::clone(&template)));
            }
            set.join_all().await;
        });
    };
    let embedded_32 = || run(&embedded_clients, false);
    g.bench_function("embedded_32_concurrent", |b| b.iter(embedded_32));
    let first_replica: Vec<Vec<Client>> = replica_clients.iter().map(|c| c[..1].to_vec()).collect();
    g.bench_function("postgres_1_replica_32_concurrent", |b| {
        b.iter(|| run(&first_replica, false));
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
    let replica_32 = || run(&first_replica, false);
    let floor_32 = || run(&floor_clients, false);
    cpu_per_operation(appraise_32, embedded_32, replica_32, floor_32, || pg.server_cpu_ns());
}

/// Names of the threads of each side (at most 15 bytes: the kernel's limit).
const VERIFIER_THREADS: &str = "sr-verifier";
const BROKER_THREADS: &str = "sr-broker";
const AGENT_THREADS: &str = "sr-agent";
/// The brokers' appraisal threads.
const APPRAISAL_THREADS: &str = sealroom_broker::appraisal_pool::AppraisalPool::THREAD_NAME;

/// The untimed second pass: CPU time per appraisal of the peer's threads, and per release of the brokers'
/// threads (gRPC server, blocking pool, appraisal pool), of the agents' threads and, for the replica, of PostgreSQL's
/// processes, over the same 32-concurrent rounds. Their ratio is a broker's throughput against the bare
/// verifier's on cores of its own (with the replica's database on cores of its own too, or counted with it).
/// Each broker's rounds alternate with rounds of the bare verifier, so that a change in the load of other
/// jobs on the machine falls on both alike (run one after the other, the same build gave ratios from 0.41 to
/// 0.59 ×); the embedded broker and the replica are measured in passes of their own, since rounds of one
/// moved the other's figure (a replica holding a blocked thread per release made the embedded broker's
/// rounds between them ≈ 0.03 × cheaper). A third pass does the same for the transport floor
/// ([`TransportFloor`]): its CPU per Challenge + Release bounds the ratio of any broker served this way.
fn cpu_per_operation(
    appraise_32: impl Fn(),
    embedded_32: impl Fn(),
    replica_32: impl Fn(),
    floor_32: impl Fn(),
    database_cpu_ns: impl Fn() -> Option<u64>,
) {
    const ROUNDS: usize = 200;
    let cpu_now = || -> Option<[u64; 4]> {
        Some([
            thread_cpu_ns(VERIFIER_THREADS)?,
            thread_cpu_ns(BROKER_THREADS)? + thread_cpu_ns(APPRAISAL_THREADS)?,
            thread_cpu_ns(AGENT_THREADS)?,
            database_cpu_ns()?,
        ])
    };
    // Per arm, µs per operation: the verifier's, the brokers', the agents' threads and the database.
    let alternate = |arms: [&dyn Fn(); 2]| -> Option<[[f64; 4]; 2]> {
        let mut spent = [[0u64; 4]; 2];
        for _ in 0..ROUNDS {
            for (arm, f) in spent.iter_mut().zip(arms) {
                let before = cpu_now()?;
                f();
                for ((s, b), a) in arm.iter_mut().zip(before).zip(cpu_now()?) {
                    *s += a.saturating_sub(b);
                }
            }
        }
        Some(spent.map(|arm| arm.map(|ns| ns as f64 / (ROUNDS * AGENTS) as f64 / 1000.0)))
    };
    let Some([peer, embedded]) = alternate([&appraise_32, &embedded_32]) else {
        println!("CPU per operation: /proc not readable here");
        return;
    };
    println!(
        "CPU per operation ({ROUNDS} rounds of 32 each, alternating): bare verifier {:.0} us/appraisal; \
         embedded broker {:.0} us/release ({:.2} x the bare verifier on cores of its own), its in-process \
         agents {:.0} us/release",
        peer[0],
        embedded[1],
        peer[0] / embedded[1],
        embedded[2]
    );
    let Some([peer, replica]) = alternate([&appraise_32, &replica_32]) else { return };
    println!(
        "CPU per operation, 1 replica on PostgreSQL ({ROUNDS} rounds each, alternating): bare verifier {:.0} \
         us/appraisal; replica {:.0} us/release in the broker ({:.2} x) + {:.0} us/release in PostgreSQL \
         ({:.2} x counting both), its agents {:.0} us/release",
        peer[0],
        replica[1],
        peer[0] / replica[1],
        replica[3],
        peer[0] / (replica[1] + replica[3]),
        replica[2]
    );
    let Some([peer, floor]) = alternate([&appraise_32, &floor_32]) else { return };
    println!(
        "CPU per operation, transport floor ({ROUNDS} rounds each, alternating): bare verifier {:.0} \
         us/appraisal; a server configured as the broker's answering with recorded responses {:.0} us per \
         Challenge + Release: a broker served this way reaches at most {:.2} x the bare verifier even with no \
         work of its own besides the appraisal",
        peer[0],
        floor[1],
        peer[0] / (peer[0] + floor[1])
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
