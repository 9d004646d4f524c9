//! The gRPC attestation service over TCP against a real TPM (swtpm): evidence that verifies, statuses that say
//! why, a bounded queue, deadlines, garbage on the socket, and 64 concurrent clients.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::cast_precision_loss)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
    let garbage: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        (0..4096u32).map(|i| i.wrapping_mul(2_654_435_761).to_be_bytes()[1]).collect(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
            &[0xff, 0xff, 0xff, 0x00, 0x00, 0, 0, 0, 1],
            &[0; 64],
        ]
        .concat(),
        b"PRI * HTTP/2.0\r\n".to_vec(),
    ];
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
