//! The attestation worker: one OS thread owns the TPM context and every attester (the TPM is serial and swtpm has
//! no resource manager). Requests queue in FIFO order through a bounded channel; a full queue is refused at once
//! (RESOURCE_EXHAUSTED) and every request carries a deadline (DEADLINE_EXCEEDED). A request whose caller gave up
//! is dropped without touching the TPM, so a burst of abandoned requests cannot wedge the agent.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use sealroom_measurements::binding::{Nonce, TeePublicKey};
use sealroom_measurements::cel::{CelRecord, RuntimeEvent};
use sealroom_measurements::evidence::{Evidence, HashAlg, Platform};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::attester::snp::SnpAttester;
use crate::attester::tdx::TdxAttester;
use crate::attester::{Attester, Part};
use crate::error::{Error, Result};
use crate::paths::KernelPaths;
use crate::runtime::{LogState, RuntimeLog};
use crate::tee_key::TeeKey;

/// What to probe and where the runtime log lives.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Kernel interface root.
    pub paths: KernelPaths,
    /// TPM TCTI; `None` probes `/dev/tpmrm0` then `/dev/tpm0` under the root.
    pub tcti: Option<String>,
    /// Do not use a TPM even if present.
    pub no_tpm: bool,
    /// Directory of the runtime log and its intent file.
    pub runtime_log_dir: std::path::PathBuf,
    /// Requests that may wait for the worker.
    pub queue_depth: usize,
    /// Longest a request may wait and run.
    pub request_timeout: Duration,
}

/// What the worker found at start-up (immutable afterwards).
#[derive(Debug, Clone)]
pub struct PlatformInfo {
    /// The strongest platform found, `None` when no attester is present.
    pub platform: Option<Platform>,
    /// Attester names, strongest first.
    pub attesters: Vec<&'static str>,
    /// Allocated PCR banks.
    pub pcr_banks: Vec<HashAlg>,
    /// The UEFI event log.
    pub uefi_event_log: Vec<u8>,
    /// The CCEL log.
    pub ccel_log: Vec<u8>,
    /// The TPM's EK certificate (DER) and the AK (TPMT_PUBLIC), when the TPM was provisioned with an EK
    /// certificate: `GetTpmIdentity`.
    pub tpm_identity: Option<(Vec<u8>, Vec<u8>)>,
}

enum Job {
    Evidence {
        nonce: Nonce,
        deadline: Instant,
        reply: oneshot::Sender<Result<Evidence>>,
    },
    Measure {
        event: RuntimeEvent,
        reply: oneshot::Sender<Result<CelRecord>>,
    },
    Activate {
        id_object: Vec<u8>,
        encrypted_secret: Vec<u8>,
        deadline: Instant,
        reply: oneshot::Sender<Result<Vec<u8>>>,
    },
}

/// The cheap, clonable handle to the worker.
#[derive(Debug, Clone)]
pub struct AttestationHandle {
    tx: mpsc::Sender<Job>,
    depth: usize,
    timeout: Duration,
    key: Arc<TeeKey>,
    info: Arc<PlatformInfo>,
    runtime_log: Arc<RwLock<(Vec<u8>, LogState)>>,
    sealed: Arc<crate::sealed_inbox::SealedInbox>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Evidence { .. } => "Job::Evidence",
            Self::Measure { .. } => "Job::Measure",
            Self::Activate { .. } => "Job::Activate",
        })
    }
}

/// Finds the attesters of this platform: a TEE (TDX, SEV-SNP) first, then the TPM (Azure's vTPM when its HCL
/// report is in NV, else the plain TPM).
///
/// # Errors
/// When an interface that is present fails to open (a present but broken TPM is an error, not an absence).
pub fn probe(cfg: &WorkerConfig) -> Result<Vec<Box<dyn Attester>>> {
    let mut out: Vec<Box<dyn Attester>> = Vec::new();
    let p = &cfg.paths;
    let tsm = p.tsm_report().is_dir();
    if tsm && p.tdx_guest_device().exists() {
        out.push(Box::new(TdxAttester::open(p)?));
    } else if p.sev_guest_device().exists() {
        // configfs-tsm when present, else /dev/sev-guest through the sev crate.
        out.push(Box::new(SnpAttester::open(p)?));
    }
    if !cfg.no_tpm {
        let tcti = match &cfg.tcti {
            Some(t) => Some(t.clone()),
            None if p.tpm_rm_device().exists() => Some(format!("device:{}", p.tpm_rm_device().display())),
            None if p.tpm_device().exists() => Some(format!("device:{}", p.tpm_device().display())),
            None => None,
        };
        if let Some(tcti) = tcti {
            // Azure (HCL report NV index present) before the plain TPM: same TPM, the paravisor's AK.
            out.push(crate::attester::azure::open_tpm(&tcti, p)?);
        }
    }
    Ok(out)
}

struct Worker {
    attesters: Vec<Box<dyn Attester>>,
    log: RuntimeLog,
    key: Arc<TeeKey>,
    platform: Option<Platform>,
    shared_log: Arc<RwLock<(Vec<u8>, LogState)>>,
}

impl Worker {
    fn evidence(&mut self, nonce: Nonce) -> Result<Evidence> {
        let platform = self.platform.ok_or_else(|| Error::Platform("no attester on this machine".into()))?;
        self.log.ensure_consistent()?;
        let key: &TeePublicKey = self.key.public();
        let mut ev = Evidence {
            nonce,
            tee_public_key: key.clone(),
            platform,
            tpm: None,
            tdx: None,
            sev_snp: None,
            azure: None,
            runtime_event_log: self.log.encode(),
            gpus: Vec::new(),
        };
        for a in &mut self.attesters {
            match a.attest(&nonce, key)? {
                Part::Tpm(t) => ev.tpm = Some(t),
                Part::Tdx(t) => ev.tdx = Some(t),
                Part::SevSnp(s) => ev.sev_snp = Some(s),
                Part::Azure(a) => ev.azure = Some(a),
            }
        }
        Ok(ev)
    }

    fn measure(&mut self, event: &RuntimeEvent) -> Result<CelRecord> {
        let r = self.log.measure(event, &mut self.attesters);
        self.publish_log();
        r
    }

    /// Credential activation by the attester whose TPM holds the EK certificate `GetTpmIdentity` named.
    fn activate(&mut self, id_object: &[u8], encrypted_secret: &[u8]) -> Result<Vec<u8>> {
        let a = self.attesters.iter_mut().find(|a| a.tpm_identity().is_some()).ok_or_else(|| {
            Error::Platform("tpm: no TPM with an EK certificate to activate a credential".into())
        })?;
        a.activate_credential(id_object, encrypted_secret)
    }

    fn publish_log(&self) {
        if let Ok(mut g) = self.shared_log.write() {
            *g = (self.log.encode(), self.log.state().clone());
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.blocking_recv() {
            match job {
                Job::Evidence { nonce, deadline, reply } => {
                    // The caller gave up (timeout or disconnect): skip the TPM work entirely.
                    if reply.is_closed() || Instant::now() >= deadline {
                        continue;
                    }
                    let _ = reply.send(self.evidence(nonce));
                }
                Job::Measure { event, reply } => {
                    let _ = reply.send(self.measure(&event));
                }
                Job::Activate { id_object, encrypted_secret, deadline, reply } => {
                    if reply.is_closed() || Instant::now() >= deadline {
                        continue;
                    }
                    let _ = reply.send(self.activate(&id_object, &encrypted_secret));
                }
            }
        }
    }
}

impl AttestationHandle {
    /// Starts the worker thread: probes the platform, opens the runtime log and checks it against PCR 15.
    ///
    /// # Errors
    /// When probing or opening the log fails.
    pub fn start(cfg: &WorkerConfig, key: TeeKey) -> Result<Self> {
        let (tx, rx) = mpsc::channel(cfg.queue_depth.max(1));
        let key = Arc::new(key);
        let (init_tx, init_rx) = std::sync::mpsc::sync_channel(1);
        let cfg2 = cfg.clone();
        let key2 = Arc::clone(&key);
        let thread = std::thread::Builder::new()
            .name("sealroom-attest".into())
            .spawn(move || {
                let init = (|| {
                    let mut attesters = probe(&cfg2)?;
                    let mut log = RuntimeLog::open(&cfg2.runtime_log_dir)?;
                    for a in &mut attesters {
                        let values = a.runtime_register()?;
                        log.check_against(&values);
                    }
                    Ok::<_, Error>((attesters, log))
                })();
                let (attesters, log) = match init {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = init_tx.send(Err(e));
                        return;
                    }
                };
                let info = PlatformInfo {
                    platform: attesters.first().map(|a| a.platform()),
                    attesters: attesters.iter().map(|a| a.name()).collect(),
                    pcr_banks: attesters.iter().flat_map(|a| a.pcr_banks()).collect(),
                    uefi_event_log: attesters
                        .iter()
                        .map(|a| a.event_logs().0)
                        .find(|l| !l.is_empty())
                        .unwrap_or_default(),
                    ccel_log: attesters
                        .iter()
                        .map(|a| a.event_logs().1)
                        .find(|l| !l.is_empty())
                        .unwrap_or_default(),
                    tpm_identity: attesters.iter().find_map(|a| a.tpm_identity()),
                };
                let shared_log = Arc::new(RwLock::new((log.encode(), log.state().clone())));
                let platform = info.platform;
                let _ = init_tx.send(Ok((info, Arc::clone(&shared_log))));
                let worker = Worker { attesters, log, key: key2, platform, shared_log };
                worker.run(rx);
            })
            .map_err(|e| Error::Server(format!("cannot start the attestation worker: {e}")))?;
        let (info, runtime_log) = init_rx.recv().map_err(|_| Error::WorkerGone)??;
        Ok(Self {
            tx,
            depth: cfg.queue_depth.max(1),
            timeout: cfg.request_timeout,
            key,
            info: Arc::new(info),
            runtime_log,
            sealed: Arc::new(crate::sealed_inbox::SealedInbox::new()),
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Drops this handle and waits (up to `limit`) for the worker to exit and release the TPM (flushing the
    /// AK). The worker exits once every clone of the handle is gone; returns whether it did in time.
    pub async fn shutdown(self, limit: Duration) -> bool {
        let thread = self.thread.lock().ok().and_then(|mut g| g.take());
        drop(self);
        let Some(thread) = thread else { return true };
        let join = tokio::task::spawn_blocking(move || thread.join());
        matches!(tokio::time::timeout(limit, join).await, Ok(Ok(Ok(()))))
    }

    /// What was probed.
    #[must_use]
    pub fn info(&self) -> &PlatformInfo {
        &self.info
    }

    /// The agent's TEE key.
    #[must_use]
    pub fn key(&self) -> &TeeKey {
        &self.key
    }

    /// The inbox of sealed inputs (`SubmitInput`) this agent's workload waits for before launch.
    #[must_use]
    pub fn sealed_inbox(&self) -> &crate::sealed_inbox::SealedInbox {
        &self.sealed
    }

    /// The encoded runtime log and its state, without queueing.
    #[must_use]
    pub fn runtime_log(&self) -> (Vec<u8>, LogState) {
        self.runtime_log.read().map(|g| g.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    fn enqueue(&self, job: Job) -> Result<()> {
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Busy(self.depth),
            mpsc::error::TrySendError::Closed(_) => Error::WorkerGone,
        })
    }

    async fn wait<T>(&self, deadline: Instant, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(Error::Timeout(self.timeout)),
            // The worker drops a request it finds past its deadline without answering it.
            Ok(Err(_)) if Instant::now() >= deadline => Err(Error::Timeout(self.timeout)),
            Ok(Err(_)) => Err(Error::WorkerGone),
            Ok(Ok(r)) => r,
        }
    }

    /// Fresh evidence bound to `nonce` and the agent's key.
    ///
    /// # Errors
    /// [`Error::Busy`] when the queue is full, [`Error::Timeout`] past the deadline, or the attester's error.
    pub async fn evidence(&self, nonce: Nonce) -> Result<Evidence> {
        let deadline = Instant::now() + self.timeout;
        let (reply, rx) = oneshot::channel();
        self.enqueue(Job::Evidence { nonce, deadline, reply })?;
        self.wait(deadline, rx).await
    }

    /// TPM2_ActivateCredential of a verifier's credential (TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET contents)
    /// for the agent's AK and certified EK: the recovered secret.
    ///
    /// # Errors
    /// [`Error::Busy`], [`Error::Timeout`], [`Error::Platform`] without a certified EK, or the TPM's refusal.
    pub async fn activate_credential(
        &self,
        id_object: Vec<u8>,
        encrypted_secret: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.timeout;
        let (reply, rx) = oneshot::channel();
        self.enqueue(Job::Activate { id_object, encrypted_secret, deadline, reply })?;
        self.wait(deadline, rx).await
    }

    /// Measures a workload event into the registers and the runtime log (see [`RuntimeLog::measure`]).
    ///
    /// # Errors
    /// As [`RuntimeLog::measure`], or when the queue is full. Measuring waits without a deadline: abandoning a
    /// measurement half-way is exactly what the intent record guards against, so it is never timed out.
    pub async fn measure(&self, event: RuntimeEvent) -> Result<CelRecord> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job::Measure { event, reply }).await.map_err(|_| Error::WorkerGone)?;
        rx.await.map_err(|_| Error::WorkerGone)?
    }
}
