//! The gRPC attestation service over TCP against a real TPM (swtpm): evidence that verifies, statuses that say
//! why, a bounded queue, deadlines, garbage on the socket, 64 concurrent clients, and the server limits against
//! slow-loris connections and a 256-client flood.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::cast_precision_loss)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sealroom_agent::paths::KernelPaths;
use sealroom_agent::server::{self, Config, Running};
use sealroom_agent::worker::WorkerConfig;
use sealroom_measurements::binding::Nonce;
use sealroom_measurements::cel::{self, CelLog, RuntimeEvent};
use sealroom_measurements::evidence::{Evidence, Platform};
use sealroom_proto::attestation::v1 as pb;
use sealroom_proto::attestation::v1::attestation_client::AttestationClient;
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};
use sealroom_verifier::tpm::quote::{ExpectedExtraData, verify_quote};
use sealroom_verifier::tpm::structures::Public;
use tonic::Code;
use tonic::transport::Channel;

fn worker_config(tcti: Option<String>, depth: usize, timeout: Duration) -> WorkerConfig {
    let root = unique_temp_dir("root");
    std::fs::create_dir_all(&root).unwrap();
    WorkerConfig {
        paths: KernelPaths::new(root),
        no_tpm: tcti.is_none(),
        tcti,
        runtime_log_dir: unique_temp_dir("rtlog"),
        queue_depth: depth,
        request_timeout: timeout,
    }
}

async fn start(worker: WorkerConfig) -> (Running, AttestationClient<Channel>) {
    let running = server::start(Config {
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        vsock: None,
        worker,
        limits: server::agent_limits(),
    })
    .await
    .unwrap();
    let addr = running.tcp_addr.unwrap();
    let client = connect(addr).await;
    (running, client)
}

async fn connect(addr: SocketAddr) -> AttestationClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    AttestationClient::new(channel)
}

fn request(nonce: &[u8]) -> pb::GetEvidenceRequest {
    pb::GetEvidenceRequest { nonce: nonce.to_vec(), tee_public_key: Vec::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_over_grpc_verifies_with_the_runtime_log() {
    let tpm = Swtpm::start().unwrap();
    let (running, mut client) = start(worker_config(Some(tpm.tcti()), 16, Duration::from_secs(10))).await;
    for e in [RuntimeEvent::ImageReference("app@sha256:aa".into()), RuntimeEvent::LaunchSeparator] {
        running.handle.measure(e).await.unwrap();
    }
    let info = client.get_platform_info(pb::GetPlatformInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.platform, pb::Platform::Tpm as i32);
    assert_eq!(info.attesters, vec!["tpm".to_owned()]);
    assert_eq!(info.tee_public_key.len(), 32);

    let nonce = [0x5a; 32];
    let ev = client.get_evidence(request(&nonce)).await.unwrap().into_inner().evidence.unwrap();
    let ev = Evidence::try_from(ev).unwrap();
    assert_eq!(ev.platform, Platform::Tpm);
    assert_eq!(ev.nonce, Nonce(nonce));
    assert_eq!(ev.tee_public_key.as_bytes(), info.tee_public_key.as_slice());
    let tpm_ev = ev.tpm.as_ref().unwrap();
    let ak = Public::parse(&tpm_ev.ak_public).unwrap();
    let verified = verify_quote(
        &tpm_ev.attest,
        &tpm_ev.signature,
        &ak,
        &tpm_ev.pcr_banks,
        &ExpectedExtraData::Binding(Nonce(nonce), ev.tee_public_key.clone()),
    )
    .unwrap();
    let records = CelLog::decode(&ev.runtime_event_log).unwrap();
    assert_eq!(records.len(), 2);
    for bank in &verified.pcrs {
        cel::check_pcr(&records, bank.alg, &bank.values[&15]).unwrap();
    }
    // The event log endpoint serves the same runtime log.
    let logs = client.get_event_log(pb::GetEventLogRequest {}).await.unwrap().into_inner();
    assert_eq!(logs.runtime_event_log, ev.runtime_event_log);
    // Echoing the agent's own key is accepted.
    let mut r = request(&nonce);
    r.tee_public_key = info.tee_public_key.clone();
    client.get_evidence(r).await.unwrap();
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_clear_status() {
    let tpm = Swtpm::start().unwrap();
    let (running, mut client) = start(worker_config(Some(tpm.tcti()), 16, Duration::from_secs(10))).await;
    let s = client.get_evidence(request(&[1; 31])).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(s.message(), "request: nonce is 31 bytes, expected 32");
    let s = client.get_evidence(request(&[])).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    let mut r = request(&[1; 32]);
    r.tee_public_key = vec![4; 200];
    let s = client.get_evidence(r).await.unwrap_err();
    assert_eq!(
        (s.code(), s.message()),
        (Code::InvalidArgument, "request: tee_public_key is 200 bytes, limit 133")
    );
    let mut r = request(&[1; 32]);
    r.tee_public_key = vec![9; 32];
    let s = client.get_evidence(r).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("not this agent's key"), "{}", s.message());
    // An oversized message is refused by the transport before decoding.
    let s = client.get_evidence(request(&vec![0; 64 * 1024])).await.unwrap_err();
    assert!(matches!(s.code(), Code::ResourceExhausted | Code::OutOfRange), "{s:?}");
    // The agent still answers.
    client.get_evidence(request(&[2; 32])).await.unwrap();
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_attester_is_a_failed_precondition() {
    let (running, mut client) = start(worker_config(None, 16, Duration::from_secs(10))).await;
    let s = client.get_evidence(request(&[1; 32])).await.unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().starts_with("platform: no attester"), "{}", s.message());
    let info = client.get_platform_info(pb::GetPlatformInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.platform, pb::Platform::Unspecified as i32);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_resource_exhausted_and_the_agent_recovers() {
    let tpm = Swtpm::start().unwrap();
    let (running, client) = start(worker_config(Some(tpm.tcti()), 1, Duration::from_secs(10))).await;
    // One answered request first, so the connection's HTTP/2 settings (the server's concurrent-stream cap) have
    // arrived: before them the client may open more streams than the cap, and the server resets the extra ones
    // (REFUSED_STREAM) before they reach the queue this test is about (seen under load).
    client.clone().get_evidence(request(&[0xff; 32])).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..48u8 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move { c.get_evidence(request(&[i; 32])).await }));
    }
    let mut ok = 0;
    let mut exhausted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().starts_with("attestation queue: full"), "{}", s.message());
                exhausted += 1;
            }
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    assert!(ok >= 1 && exhausted >= 1, "ok {ok}, exhausted {exhausted}");
    assert_eq!(ok + exhausted, 48);
    let mut c = client.clone();
    c.get_evidence(request(&[1; 32])).await.unwrap();
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_is_deadline_exceeded() {
    let tpm = Swtpm::start().unwrap();
    let (running, mut client) = start(worker_config(Some(tpm.tcti()), 8, Duration::ZERO)).await;
    let s = client.get_evidence(request(&[1; 32])).await.unwrap_err();
    assert_eq!(s.code(), Code::DeadlineExceeded);
    assert!(s.message().starts_with("attestation queue: no answer within"), "{}", s.message());
    running.stop().await.unwrap();
}

/// The agent binary as a separate process (so its memory can be measured), stopped by PID on drop.
struct AgentProcess {
    child: Child,
    addr: SocketAddr,
}

impl AgentProcess {
    fn spawn(tcti: &str) -> Self {
        let root = unique_temp_dir("root");
        std::fs::create_dir_all(&root).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sealroom-agent"))
            .args(["--tcp", "127.0.0.1:0", "--vsock", "none", "--tcti", tcti, "--root"])
            .arg(&root)
            .arg("--runtime-log-dir")
            .arg(unique_temp_dir("rtlog"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("agent exited before serving").unwrap();
            if let Some(a) = line.strip_prefix("sealroom-agent: serving attestation on tcp ") {
                break a.parse().unwrap();
            }
        };
        // Keep draining stderr so the agent never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raw garbage, HTTP/1.1, a bare preface, a preface followed by an oversized bogus frame, a truncated preface.
fn malformed_frames() -> Vec<Vec<u8>> {
    vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        (0..4096u32).map(|i| i.wrapping_mul(2_654_435_761).to_be_bytes()[1]).collect(),
        HTTP2_PREFACE.to_vec(),
        [HTTP2_PREFACE.as_slice(), &[0xff, 0xff, 0xff, 0x00, 0x00, 0, 0, 0, 1], &[0; 64]].concat(),
        b"PRI * HTTP/2.0\r\n".to_vec(),
    ]
}

const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn load(addr: SocketAddr, clients: usize, per_client: usize) -> usize {
    let mut tasks = Vec::new();
    for c in 0..clients {
        tasks.push(tokio::spawn(async move {
            let mut client = connect(addr).await;
            let mut errors = 0;
            for i in 0..per_client {
                let mut nonce = [0u8; 32];
                nonce[..8].copy_from_slice(&(c * 1000 + i).to_be_bytes());
                match client.get_evidence(request(&nonce)).await {
                    Ok(r) => {
                        let ev = Evidence::try_from(r.into_inner().evidence.unwrap()).unwrap();
                        assert_eq!(ev.nonce, Nonce(nonce));
                    }
                    Err(s) => {
                        eprintln!("client {c} request {i}: {s:?}");
                        errors += 1;
                    }
                }
            }
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await.unwrap();
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_clients_fifty_requests_each_zero_errors_bounded_memory_and_garbage_survived() {
    let tpm = Swtpm::start().unwrap();
    let mut agent = AgentProcess::spawn(&tpm.tcti());
    let addr = agent.addr;
    // Warm up (connections, allocator), then measure resident memory around the full load.
    assert_eq!(load(addr, 8, 5).await, 0);
    let rss_before = agent.rss_kib();
    assert_eq!(load(addr, 64, 50).await, 0);
    let rss_after = agent.rss_kib();
    eprintln!("agent RSS: {rss_before} KiB before, {rss_after} KiB after 3200 requests");
    assert!(rss_after < rss_before + 32 * 1024, "RSS grew from {rss_before} to {rss_after} KiB");

    // Malformed frames: raw garbage, a truncated HTTP/2 preface, a bogus frame header, a slow half-open socket.
    let garbage = malformed_frames();
    let half_open = TcpStream::connect(addr).unwrap();
    for _ in 0..20 {
        for g in &garbage {
            let mut s = TcpStream::connect(addr).unwrap();
            let _ = s.write_all(g);
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
    }
    assert!(agent.alive(), "the agent died on garbage");
    assert_eq!(load(addr, 4, 5).await, 0);
    drop(half_open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vsock_is_served_when_the_kernel_has_it_and_tcp_goes_on_when_it_has_not() {
    let tpm = Swtpm::start().unwrap();
    // VMADDR_CID_LOCAL (1): loopback vsock, present with the vsock_loopback transport.
    let port = 20_000 + (std::process::id() % 20_000);
    let running = server::start(Config {
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        vsock: Some((1, port)),
        worker: worker_config(Some(tpm.tcti()), 8, Duration::from_secs(10)),
        limits: server::agent_limits(),
    })
    .await
    .unwrap();
    let mut tcp = connect(running.tcp_addr.unwrap()).await;
    tcp.get_evidence(request(&[4; 32])).await.unwrap();
    if let Ok(stream) = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(1, port)).await {
        // A vsock transport exists here: the same service answers over it.
        let mut stream = Some(stream);
        let channel = tonic::transport::Endpoint::from_static("http://vsock.invalid")
            .connect_with_connector(tower::service_fn(move |_| {
                let s = stream.take();
                async move { s.map(hyper_util::rt::TokioIo::new).ok_or_else(|| std::io::Error::other("used")) }
            }))
            .await
            .unwrap();
        AttestationClient::new(channel).get_evidence(request(&[5; 32])).await.unwrap();
    }
    running.stop().await.unwrap();
}

/// A slow-loris connection: sends `prefix` and then nothing, never reading.
fn stall(addr: SocketAddr, prefix: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(prefix).unwrap();
    s
}

/// True once the server has closed `s` (EOF or reset), reading whatever it sent first, within `deadline`.
fn closed_by_server(s: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
    false
}

/// One well-behaved client: a fresh connection and GetEvidence, retried while the agent sheds load
/// (connection refused or closed at the connection cap — a close arrives as CANCELLED "connection closed" —,
/// RESOURCE_EXHAUSTED from the full queue); returns the time to verified evidence for its own nonce.
async fn well_behaved_get_evidence(addr: SocketAddr, nonce: [u8; 32], bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < bound, "no evidence for a well-behaved client within {bound:?}");
        let Ok(channel) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        match AttestationClient::new(channel).get_evidence(request(&nonce)).await {
            Ok(r) => {
                let ev = Evidence::try_from(r.into_inner().evidence.unwrap()).unwrap();
                assert_eq!(ev.nonce, Nonce(nonce));
                return started.elapsed();
            }
            Err(s)
                if matches!(
                    s.code(),
                    Code::ResourceExhausted | Code::Unavailable | Code::Unknown | Code::Cancelled
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("well-behaved client refused: {s:?}"),
        }
    }
}

/// Issue 14 item 4: 300 slow-loris connections (silent, a partial preface, a full preface then a HEADERS frame
/// cut short), malformed frames and 256 concurrent clients at once against the real `sealroom-agent` process.
/// Bounds checked: a well-behaved client gets verified evidence within 30 s; the agent's resident memory stays
/// under its post-warm-up size + 64 MiB; every slow-loris connection is closed by the agent within 40 s (the
/// 5 s preface deadline, the 10 s + 5 s keepalive); the agent is alive and serves normally afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_slow_loris_malformed_frames_and_256_clients_do_not_stop_get_evidence_or_grow_memory() {
    const BOUND: Duration = Duration::from_secs(30);
    const RSS_GROWTH_KIB: u64 = 64 * 1024;
    let tpm = Swtpm::start().unwrap();
    let mut agent = AgentProcess::spawn(&tpm.tcti());
    let addr = agent.addr;
    assert_eq!(load(addr, 8, 5).await, 0);
    let rss_before = agent.rss_kib();

    let started = Instant::now();
    // A HEADERS frame header announcing 16 KiB of header block, then 5 bytes of it.
    let cut_headers =
        [HTTP2_PREFACE.as_slice(), &[0, 0, 0, 4, 0, 0, 0, 0, 0], &[0, 0x40, 0, 1, 4, 0, 0, 0, 1], &[0x82; 5]]
            .concat();
    let mut lorises: Vec<TcpStream> = Vec::new();
    for _ in 0..100 {
        lorises.push(stall(addr, b""));
        lorises.push(stall(addr, b"PRI * HTTP/2.0\r\n"));
        lorises.push(stall(addr, &cut_headers));
    }
    let garbage = malformed_frames();
    let rss_peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_before));
    let pid = agent.child.id();
    let sampler_peak = std::sync::Arc::clone(&rss_peak);
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let keep_sampling = std::sync::Arc::clone(&sampling);
    let sampler = std::thread::spawn(move || {
        while keep_sampling.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(kib) = rss_kib_of(pid) {
                sampler_peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let flood = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for c in 0..256usize {
            tasks.push(tokio::spawn(async move {
                let Ok(channel) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await
                else {
                    return (0usize, 1usize);
                };
                let mut client = AttestationClient::new(channel);
                let (mut ok, mut refused) = (0, 0);
                for i in 0..4usize {
                    let mut nonce = [0xAAu8; 32];
                    nonce[..8].copy_from_slice(&(c * 10 + i).to_be_bytes());
                    match client.get_evidence(request(&nonce)).await {
                        Ok(_) => ok += 1,
                        Err(_) => refused += 1,
                    }
                }
                (ok, refused)
            }));
        }
        let (mut ok, mut refused) = (0, 0);
        for t in tasks {
            let (o, r) = t.await.unwrap();
            ok += o;
            refused += r;
        }
        (ok, refused)
    });
    let garbage_thread = std::thread::spawn(move || {
        for _ in 0..20 {
            for g in &garbage {
                if let Ok(mut s) = TcpStream::connect(addr) {
                    let _ = s.write_all(g);
                    let _ = s.shutdown(std::net::Shutdown::Write);
                }
            }
        }
    });
    let waited = well_behaved_get_evidence(addr, [0x5A; 32], BOUND).await;
    let (ok, refused) = flood.await.unwrap();
    garbage_thread.join().unwrap();
    eprintln!(
        "[attack] well-behaved GetEvidence after {:.2} s under attack; 256 clients: {ok} answered, {refused} shed",
        waited.as_secs_f64()
    );

    // Every slow-loris connection is closed by the agent, not left to hold a slot.
    let deadline = started + Duration::from_secs(40);
    let still_open =
        lorises.iter_mut().map(|s| closed_by_server(s, deadline)).filter(|closed| !closed).count();
    assert_eq!(still_open, 0, "slow-loris connections still open after 40 s");
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = rss_peak.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "[attack] agent RSS {rss_before} KiB after warm-up, peak {peak} KiB under attack (bound +{RSS_GROWTH_KIB} KiB); \
         slow-loris connections closed after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(peak < rss_before + RSS_GROWTH_KIB, "agent RSS peaked at {peak} KiB (from {rss_before} KiB)");
    assert!(agent.alive(), "the agent died under the attack");
    assert_eq!(load(addr, 4, 5).await, 0, "the agent does not serve normally after the attack");
}

fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}
