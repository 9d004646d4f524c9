//! Serving: the attestation service, gRPC health and reflection, on TCP and/or vsock, each listener under
//! [`agent_limits`] (connection cap, preface deadline, HTTP/2 stream/header/frame bounds, keepalive, request
//! timeout, request size): anyone who can reach the port may call it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use sealroom_proto::attestation::v1::attestation_server::AttestationServer;
use sealroom_proto::limits::{LimitStats, ServerLimits};

use crate::error::{Error, Result};
use crate::paths::KernelPaths;
use crate::service::AttestationService;
use crate::tee_key::TeeKey;
use crate::worker::{AttestationHandle, WorkerConfig};

/// Largest request message accepted: a sealed input envelope (`SubmitInput`, at most 60 KiB of plaintext
/// plus its header) is the largest request; every other is a nonce and a key. 64 KiB is also HTTP/2's initial
/// flow-control window per stream, so a request this size buffers no more than a window already allows.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The agent's server limits: sealroom's defaults with requests capped at [`MAX_REQUEST_BYTES`] and at most
/// 512 connections per listener (each open connection costs some 10-30 KiB; 512 keep the agent's memory small
/// in a VM that also runs the workload).
#[must_use]
pub fn agent_limits() -> ServerLimits {
    ServerLimits { max_request_bytes: MAX_REQUEST_BYTES, max_connections: 512, ..ServerLimits::default() }
}

/// Everything the agent's server needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP listen address, e.g. `0.0.0.0:7443`; port 0 picks a free port.
    pub tcp: Option<SocketAddr>,
    /// vsock (CID, port) to listen on; CID `u32::MAX` (VMADDR_CID_ANY) for any.
    pub vsock: Option<(u32, u32)>,
    /// Probing and queueing.
    pub worker: WorkerConfig,
    /// Bounds on connections and requests ([`agent_limits`] by default).
    pub limits: ServerLimits,
}

impl Config {
    /// Defaults for the VM: TCP 0.0.0.0:7443, vsock any:7443, kernel root `/`, log in `/run/sealroom`.
    #[must_use]
    pub fn vm_defaults() -> Self {
        Self {
            tcp: Some(SocketAddr::from(([0, 0, 0, 0], 7443))),
            vsock: Some((u32::MAX, 7443)),
            worker: WorkerConfig {
                paths: KernelPaths::default(),
                tcti: None,
                no_tpm: false,
                runtime_log_dir: PathBuf::from("/run/sealroom"),
                queue_depth: 256,
                request_timeout: Duration::from_secs(10),
            },
            limits: agent_limits(),
        }
    }
}

/// A running server: its handle (for measuring events) and the TCP address it bound.
#[derive(Debug)]
pub struct Running {
    /// The worker handle.
    pub handle: AttestationHandle,
    /// The bound TCP address.
    pub tcp_addr: Option<SocketAddr>,
    /// What the connection limits refused so far (both listeners).
    pub limit_stats: Arc<LimitStats>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Running {
    /// Stops serving and waits for the listeners to close.
    ///
    /// # Errors
    /// When a listener failed.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let served = self.task.await.map_err(|e| Error::Server(format!("server task: {e}")))?;
        // Let the worker flush its TPM handles before the caller tears the TPM down.
        if !self.handle.shutdown(Duration::from_secs(5)).await {
            eprintln!("sealroom-agent: attestation worker still busy after 5 s; leaving it");
        }
        served
    }

    /// Waits until serving ends (it does not, unless a listener fails).
    ///
    /// # Errors
    /// When a listener failed.
    pub async fn wait(self) -> Result<()> {
        self.task.await.map_err(|e| Error::Server(format!("server task: {e}")))?
    }
}

/// Starts the worker and serves on the configured listeners (inside a Tokio runtime).
///
/// # Errors
/// When probing, the runtime log or binding a listener fails.
pub async fn start(config: Config) -> Result<Running> {
    let key = TeeKey::generate()?;
    let worker_cfg = config.worker.clone();
    let handle = tokio::task::spawn_blocking(move || AttestationHandle::start(&worker_cfg, key))
        .await
        .map_err(|e| Error::Server(format!("worker start: {e}")))??;
    if let crate::runtime::LogState::Diverged(why) = handle.runtime_log().1 {
        eprintln!("sealroom-agent: runtime log state: diverged: {why}");
    }
    let tcp = match config.tcp {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Server(format!("bind tcp {addr}: {e}")))?,
        ),
        None => None,
    };
    let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
    // A guest without a vsock transport (no virtio-vsock device) still serves on TCP: say so and go on.
    let vsock = match config.vsock {
        Some((cid, port)) => match tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(cid, port)) {
            Ok(l) => Some(l),
            Err(e) if config.tcp.is_some() => {
                eprintln!("sealroom-agent: vsock {cid}:{port} unavailable ({e}); serving on tcp only");
                None
            }
            Err(e) => return Err(Error::Server(format!("bind vsock {cid}:{port}: {e}"))),
        },
        None => None,
    };
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let svc = AttestationService::new(handle.clone());
    let limits = config.limits;
    let limit_stats = Arc::new(LimitStats::default());
    let stats = Arc::clone(&limit_stats);
    let stats_vsock = Arc::clone(&limit_stats);
    let task = tokio::spawn(async move {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<AttestationServer<AttestationService>>().await;
        // Reflection v1 (grpcurl, tonic) and v1alpha (grpcio-reflection's Python client, older grpcurl).
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sealroom_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| Error::Server(format!("reflection: {e}")))?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sealroom_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| Error::Server(format!("reflection: {e}")))?;
        let router = limits
            .apply(tonic::transport::Server::builder())
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(AttestationServer::new(svc).max_decoding_message_size(limits.max_request_bytes));
        let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut serving = tokio::task::JoinSet::new();
        if let Some(l) = tcp {
            let r = router.clone();
            let mut stop = stop_tx.subscribe();
            serving.spawn(async move {
                // TCP_NODELAY: without it small gRPC replies wait for the peer's delayed ACK (~40 ms).
                let incoming = tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true));
                let incoming = limits.incoming(incoming, stats);
                r.serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.recv().await;
                })
                .await
                .map_err(|e| Error::Server(format!("tcp: {e}")))
            });
        }
        if let Some(l) = vsock {
            let r = router.clone();
            let mut stop = stop_tx.subscribe();
            let incoming = limits.incoming(Box::pin(l.incoming()), Arc::clone(&stats_vsock));
            serving.spawn(async move {
                r.serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.recv().await;
                })
                .await
                .map_err(|e| Error::Server(format!("vsock: {e}")))
            });
        }
        let _ = shutdown_rx.await;
        let _ = stop_tx.send(());
        while let Some(r) = serving.join_next().await {
            r.map_err(|e| Error::Server(format!("listener task: {e}")))??;
        }
        Ok(())
    });
    Ok(Running { handle, tcp_addr, limit_stats, shutdown: Some(shutdown_tx), task })
}

/// Runs the server until SIGINT/SIGTERM (the entry point `main` and PID 1 call).
///
/// # Errors
/// As [`start`].
pub async fn run(config: Config) -> Result<()> {
    let running = start(config).await?;
    if let Some(addr) = running.tcp_addr {
        eprintln!("sealroom-agent: serving attestation on tcp {addr}");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Server(format!("signal: {e}")))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    running.stop().await
}
