//! `sealroom broker`: run the key broker, manage its keys, and explain policy decisions.
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sealroom_broker::admin::{self, AdminContext, AdminRequest, AdminResponse, Operation};
use sealroom_broker::appraisal::{Appraisal, Appraiser, VerifierAppraiser};
use sealroom_broker::audit::{AuditLog, GroupCommitLog, Recovery};
use sealroom_broker::ek_path::EkPath;
use sealroom_broker::jwks::{KeySource, StaticKeys};
use sealroom_broker::keystore::{Kek, KeyStore};
use sealroom_broker::nonce::NonceBook;
use sealroom_broker::nonce_mac::NonceKeys;
use sealroom_broker::policy::{GoldenSet, Outcome, Policy};
use sealroom_broker::service::{Broker, StoreParts};
use sealroom_broker::store::{EmbeddedLedger, KeyRecords, Ledger};
use sealroom_broker::token::Signer;
use sealroom_broker::{Clock, Randomness, SystemClock, SystemRandomness};
use sealroom_measurements::evidence::Evidence;
use sealroom_proto::limits::{LimitStats, ServerLimits};

/// Arguments of `sealroom broker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: BrokerCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BrokerCommand {
    /// Run the KeyBroker gRPC service (and the admin socket).
    Serve(Box<ServeArgs>),
    /// Manage keys: add, list, rotate, revoke, set-policy.
    Keys(KeysArgs),
    /// Explain which rule allows or refuses each key's policy for given evidence.
    Policy(PolicyArgs),
    /// Print the broker's key id (the RFC 7638 thumbprint a workload spec pins as `broker_key`), creating the
    /// signing key (and its JWK) in the state directory when it does not exist yet.
    KeyId {
        /// The broker's state directory.
        #[arg(long)]
        state_dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address of the gRPC service (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// Directory of the key store (keys.redb), audit log (audit.log), signing key and admin socket.
    #[arg(long)]
    state_dir: PathBuf,
    /// The key-encryption key file (32 raw bytes or 64 hex digits, mode 0600).
    #[arg(long)]
    kek: PathBuf,
    /// Keep keys, used nonces and the audit chain in PostgreSQL (`postgres://user:password@host:port/db`)
    /// instead of STATE_DIR, as one of several replicas sharing that database (docs/broker-scaling.md). The
    /// state directory then holds only this replica's signing key and admin socket. A database on another
    /// machine needs `?sslmode=verify-full&sslrootcert=CA.pem` (TLS, the server's certificate checked against
    /// those CA certificates and the host name); plaintext only to loopback or a unix socket. A database that
    /// requires client certificates: add `&sslcert=CERT.pem&sslkey=KEY.pem` (PEM, key file mode 0600); a CA
    /// that revokes: `&sslcrl=CRL.pem`.
    #[arg(long, requires_all = ["replica", "nonce_key"])]
    store: Option<String>,
    /// With --store: this replica's id (its audit chain's name; [A-Za-z0-9._/-]). Each running replica needs
    /// its own.
    #[arg(long, requires = "store")]
    replica: Option<String>,
    /// With --store: the nonce MAC key shared by all replicas (32 raw bytes or 64 hex digits, mode 0600).
    #[arg(long, requires = "store")]
    nonce_key: Option<PathBuf>,
    /// With --store: the MAC key the last nonce-key rotation replaced, accepted until its nonces expired.
    #[arg(long, requires = "nonce_key")]
    previous_nonce_key: Option<PathBuf>,
    /// Serve the token signing keys as a JWKS (`/.well-known/jwks.json`; with --store every replica's key) and
    /// an OpenID-style discovery document (`/.well-known/openid-configuration`) over HTTP on this address.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// The `iss` of issued tokens: the public base URL where relying parties find the discovery document
    /// (default: http://HTTP_LISTEN, or urn:sealroom:broker without --http-listen).
    #[arg(long)]
    issuer: Option<String>,
    /// Lifetime of release tokens (`exp` - `iat`), seconds.
    #[arg(long, default_value_t = sealroom_broker::token::DEFAULT_RELEASE_LIFETIME_S)]
    token_lifetime: u64,
    /// Lifetime of output receipts, seconds (default five years: receipts are read long after the job).
    #[arg(long, default_value_t = sealroom_broker::token::DEFAULT_RECEIPT_LIFETIME_S)]
    receipt_lifetime: u64,
    /// Nonce time to live, seconds.
    #[arg(long, default_value_t = 60)]
    nonce_ttl: u64,
    /// TLS certificate chain (PEM) of the gRPC listener; agents trust it through their spec's `broker_ca`.
    /// With --tls-key. Without both the listener speaks plain HTTP/2 (responses are signed either way).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, SEC1 or PKCS#1) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// File holding an admin token every admin request must carry (besides the socket's uid check).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Directory of golden measurement documents (`*.json` with `*.json.sig`) that key policies may name.
    #[arg(long)]
    golden: Option<PathBuf>,
    /// An enrolled TPM attestation key (marshalled TPMT_PUBLIC file) whose quotes are trusted without a vendor
    /// certificate (on-premises TPMs, swtpm). Repeatable.
    #[arg(long)]
    tpm_ak: Vec<PathBuf>,
    /// TPM EK CA certificates (PEM, possibly several, or DER); repeatable. An agent whose TPM names its EK
    /// certificate in `Challenge` gets a credential for its AK (TPM2_MakeCredential) when that certificate
    /// chains to one of these, and its quotes are trusted once its TPM activated it (no trust on first use;
    /// docs/tpm-ek.md). An EK certificate from another CA is refused at `Challenge`.
    #[arg(long = "tpm-ek-ca", value_name = "FILE")]
    tpm_ek_ca: Vec<PathBuf>,
    /// Intel PCS collateral for TDX quotes: a directory of PCS files (TCB info, QE identity, CRLs, issuer
    /// chains) or a dcap-qvl collateral JSON. Verified once at start; each quote is then checked against it
    /// (TCB status, revocation, validity window). Without it TDX evidence has no TCB status.
    #[arg(long)]
    tdx_collateral: Option<PathBuf>,
    /// Directory of NVIDIA driver and VBIOS RIMs (signed SWID tags) for the GPUs evidence may carry: every file
    /// is verified at start against NVIDIA's pinned RIM root. Without it, evidence carrying GPUs is refused.
    /// See docs/gpu.md.
    #[arg(long, value_name = "DIR")]
    gpu_rims: Option<PathBuf>,
    /// A CRL snapshot (PEM or DER) for the GPU device and RIM chains; without one, GPU claims say
    /// "revocation not checked". Repeatable.
    #[arg(long, value_name = "CRL", requires = "gpu_rims")]
    gpu_crl: Vec<PathBuf>,
    /// Verify evidence at this fixed time (RFC 3339 or Unix seconds) instead of the clock: for tests and
    /// replays with recorded collateral. Nonces still expire by the clock.
    #[arg(long)]
    verification_time: Option<String>,
    /// How many releases are appraised at once, each on a thread of its own; the rest wait in a queue
    /// (default: one per core this process may use).
    #[arg(long, value_name = "N")]
    appraisal_threads: Option<std::num::NonZeroUsize>,
}

#[derive(Debug, clap::Args)]
struct Target {
    /// The running broker's admin socket (default: STATE_DIR/admin.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Broker state directory: with --kek and no running broker, operate on the store directly.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// A replicated broker's PostgreSQL database: with --kek, operate on its keys directly. Another machine's
    /// database needs `?sslmode=verify-full&sslrootcert=CA.pem` in the URL, `&sslcert=…&sslkey=…` where it
    /// requires client certificates and `&sslcrl=…` for revocation lists (as `broker serve --store`).
    #[arg(long, global = true)]
    store: Option<String>,
    /// Key-encryption key file, for direct access.
    #[arg(long, global = true)]
    kek: Option<PathBuf>,
    /// File holding the admin token.
    #[arg(long, global = true)]
    admin_token_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct KeysArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    op: KeysOp,
}

#[derive(Debug, clap::Subcommand)]
enum KeysOp {
    /// Register a key (material generated unless --material-file is given).
    Add {
        /// Key id ([A-Za-z0-9._/-], 1..128 bytes).
        #[arg(long)]
        id: String,
        /// The data provider that owns the key.
        #[arg(long)]
        owner: String,
        /// Policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// Key material file (raw bytes).
        #[arg(long)]
        material_file: Option<PathBuf>,
    },
    /// List keys.
    List {
        /// Only this provider's keys.
        #[arg(long)]
        owner: Option<String>,
    },
    /// New key material version.
    Rotate {
        /// Key id.
        #[arg(long)]
        id: String,
        /// Key material file (raw bytes); generated when absent.
        #[arg(long)]
        material_file: Option<PathBuf>,
    },
    /// Never release the key again.
    Revoke {
        /// Key id.
        #[arg(long)]
        id: String,
    },
    /// Replace a key's policy.
    SetPolicy {
        /// Key id.
        #[arg(long)]
        id: String,
        /// Policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct PolicyArgs {
    #[command(subcommand)]
    op: PolicyOp,
}

#[derive(Debug, clap::Subcommand)]
enum PolicyOp {
    /// Evaluate policies against evidence and print every rule's outcome.
    Check {
        /// Policy file(s); each is reported under its file name.
        #[arg(long, required = true)]
        policy: Vec<PathBuf>,
        /// Evidence (protobuf `sealroom.attestation.v1.Evidence`), verified by the verifier first.
        #[arg(long, conflicts_with = "appraisal", required_unless_present = "appraisal")]
        evidence: Option<PathBuf>,
        /// An already-verified appraisal (JSON), to explain policy without the verifier.
        #[arg(long)]
        appraisal: Option<PathBuf>,
        /// Verification time, Unix milliseconds (collateral validity); required with --evidence.
        #[arg(long)]
        time_ms: Option<u64>,
        /// Directory of golden measurement documents (`*.json` with `*.json.sig`).
        #[arg(long)]
        golden: Option<PathBuf>,
        /// Directory of NVIDIA driver and VBIOS RIMs for the GPUs in --evidence (as `serve --gpu-rims`),
        /// verified at --time-ms. Without it, evidence carrying GPUs is refused.
        #[arg(long, value_name = "DIR", requires = "evidence")]
        gpu_rims: Option<PathBuf>,
    },
}

pub fn run(args: &Args) -> Result<()> {
    match &args.command {
        BrokerCommand::Serve(s) => serve(s),
        BrokerCommand::Keys(k) => keys(k),
        BrokerCommand::Policy(PolicyArgs {
            op: PolicyOp::Check { policy, evidence, appraisal, time_ms, golden, gpu_rims },
        }) => {
            let golden = golden.as_deref().map(GoldenSet::load_dir).transpose()?.unwrap_or_default();
            let input = PolicyInput {
                evidence: evidence.as_deref(),
                appraisal: appraisal.as_deref(),
                gpu_rims: gpu_rims.as_deref(),
            };
            policy_check(policy, &input, *time_ms, &golden)
        }
        BrokerCommand::KeyId { state_dir } => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .with_context(|| format!("creating {}", state_dir.display()))?;
            let signer = signer_and_jwk(state_dir)?;
            println!("{}", signer.kid());
            Ok(())
        }
    }
}

/// The broker's signing key in `state_dir` (created when absent), with its JWK written next to it.
fn signer_and_jwk(state_dir: &Path) -> Result<Signer> {
    let signer = Signer::load_or_create(&state_dir.join("signing-key.pk8"))?;
    let jwk_path = state_dir.join("signing-key.jwk.json");
    std::fs::write(&jwk_path, serde_json::to_string_pretty(&signer.jwk())?)
        .with_context(|| format!("writing {}", jwk_path.display()))?;
    Ok(signer)
}

fn read_token(path: Option<&Path>) -> Result<Option<String>> {
    path.map(|p| {
        std::fs::read_to_string(p)
            .map(|t| t.trim().to_owned())
            .with_context(|| format!("reading {}", p.display()))
    })
    .transpose()
}

fn serve(a: &ServeArgs) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&a.state_dir)
        .with_context(|| format!("creating {}", a.state_dir.display()))?;
    let rng: Arc<dyn Randomness> = Arc::new(SystemRandomness::new());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let kek = Kek::load(&a.kek)?;
    let http_listener = a
        .http_listen
        .map(|addr| {
            let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
            l.set_nonblocking(true)?;
            anyhow::Ok(l)
        })
        .transpose()?;
    let http_addr = http_listener.as_ref().map(std::net::TcpListener::local_addr).transpose()?;
    let issuer = match (&a.issuer, http_addr) {
        (Some(i), _) => i.clone(),
        (None, Some(addr)) => format!("http://{addr}"),
        (None, None) => sealroom_broker::token::DEFAULT_ISSUER.to_owned(),
    };
    let signer = Signer::load_or_create(&a.state_dir.join("signing-key.pk8"))?.with_issuer(
        &issuer,
        a.token_lifetime,
        a.receipt_lifetime,
    );
    let jwk_path = a.state_dir.join("signing-key.jwk.json");
    std::fs::write(&jwk_path, serde_json::to_string_pretty(&signer.jwk())?)?;
    let (store, ledger, published) = open_store(a, kek, rng.as_ref(), &signer.jwk())?;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            Some(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?)),
            )
        }
        _ => None,
    };
    let admin_token = read_token(a.admin_token_file.as_deref())?;
    let appraiser = appraiser(a, clock.as_ref())?;
    let broker = Broker::on_store(StoreParts {
        clock: Arc::clone(&clock),
        rng: Arc::clone(&rng),
        appraiser: Arc::new(appraiser),
        store: Arc::clone(&store),
        ledger,
        golden: match &a.golden {
            Some(dir) => GoldenSet::load_dir(dir)?,
            None => GoldenSet::default(),
        },
        signer,
    });
    let broker = match a.appraisal_threads {
        Some(n) => broker.with_appraisal_threads(n),
        None => broker,
    };
    let broker = Arc::new(match ek_path(a, rng.as_ref())? {
        Some(ek) => broker.with_tpm_ek_path(ek),
        None => broker,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("binding {}", a.listen))?;
        let addr = listener.local_addr()?;
        let admin_listener = admin::bind(&a.state_dir.join("admin.sock"))?;
        if let (Some(l), Some(http_addr)) = (http_listener, http_addr) {
            let l = tokio::net::TcpListener::from_std(l)?;
            eprintln!("sealroom broker: JWKS and discovery on http://{http_addr}/.well-known/ (issuer {issuer})");
            tokio::spawn(async move {
                if let Err(e) = sealroom_broker::jwks::serve(l, issuer, published).await {
                    eprintln!("sealroom broker: {e}");
                }
            });
        }
        let ctx = AdminContext { store, rng, clock, token: admin_token };
        tokio::spawn(async move {
            if let Err(e) = admin::serve(admin_listener, ctx).await {
                eprintln!("sealroom broker: {e}");
            }
        });
        // On stdout the bound addresses, for scripts and tests (`--listen`/`--http-listen` may name port 0):
        // the gRPC one, then with `--http-listen` the JWKS one. The rest goes to stderr.
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "sealroom broker listening on {addr}")
                .and_then(|()| match http_addr {
                    Some(h) => writeln!(out, "sealroom broker publishing keys on {h}"),
                    None => Ok(()),
                })
                .and_then(|()| out.flush());
        }
        eprintln!(
            "sealroom broker: tokens and responses are signed by key {} ({}); {}",
            broker.signer_key_id(),
            jwk_path.display(),
            if tls.is_some() { "TLS on" } else { "plain HTTP/2 (no --tls-cert)" }
        );
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        // Bounded like the agent's server: connections, preface deadline, streams, header and frame sizes,
        // keepalive, request timeout, message size, connection age (sealroom_proto::limits).
        let limits = ServerLimits::default();
        // No Nagle delay: a Release reply is one small write the agent waits for.
        let incoming = limits.incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            Arc::new(LimitStats::default()),
        );
        let mut server = sealroom_broker::grpc::server(&limits);
        if let Some(tls) = tls {
            server = server.tls_config(tls).context("TLS certificate or key")?;
        }
        server
            .add_service(sealroom_broker::grpc::service(broker, &limits))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .context("serving")
    })
}

/// Keys, ledger, and the published signing keys of one broker process.
type OpenedStore = (Arc<dyn KeyRecords>, Arc<dyn Ledger>, Arc<dyn KeySource>);

/// The key records and the ledger: the embedded store in STATE_DIR, or this replica's view of PostgreSQL.
fn open_store(a: &ServeArgs, kek: Kek, rng: &dyn Randomness, jwk: &serde_json::Value) -> Result<OpenedStore> {
    let ttl_ms = a.nonce_ttl.saturating_mul(1000);
    if let (Some(url), Some(replica), Some(nonce_key)) = (&a.store, &a.replica, &a.nonce_key) {
        let nonce_keys = NonceKeys::load(nonce_key, a.previous_nonce_key.as_deref(), ttl_ms)?;
        let pg = sealroom_broker::pg::open(url, kek, rng, nonce_keys, replica)?;
        pg.keys.publish_signing_key(replica, jwk)?;
        eprintln!("sealroom broker: replica {replica} on PostgreSQL (schema migrated, KEK checked)");
        return Ok((pg.keys.clone(), pg.ledger, pg.keys));
    }
    let store = Arc::new(KeyStore::open(&a.state_dir.join("keys.redb"), kek, rng)?);
    let (audit, recovery) = AuditLog::open(&a.state_dir.join("audit.log"))?;
    if let Recovery::TornTailRemoved { bytes } = recovery {
        eprintln!("sealroom broker: audit log: removed a torn, unacknowledged last record ({bytes} bytes)");
    }
    let ledger = EmbeddedLedger::new(NonceBook::generate(ttl_ms, rng)?, GroupCommitLog::new(audit));
    // A keys.redb older than the audit log says (restored from an old copy) is refused before serving.
    store.anchor_to(ledger.audit_log(), Arc::new(SystemClock))?;
    Ok((store, Arc::new(ledger), Arc::new(StaticKeys(vec![jwk.clone()]))))
}

/// The EK path of `--tpm-ek-ca`: its MAC key random per process, or, for replicas (`--store`), derived from the
/// shared nonce MAC key so that any replica checks an activation another one's `Challenge` issued.
fn ek_path(a: &ServeArgs, rng: &dyn Randomness) -> Result<Option<EkPath>> {
    if a.tpm_ek_ca.is_empty() {
        return Ok(None);
    }
    let files = a
        .tpm_ek_ca
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading --tpm-ek-ca {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let cas = sealroom_verifier::tpm::ek::parse_ek_cas(&files).context("--tpm-ek-ca")?;
    let count = cas.len();
    let ek = match &a.nonce_key {
        Some(path) => EkPath::new(cas, &sealroom_broker::keystore::read_secret(path, "nonce MAC key")?)?,
        None => EkPath::generate(cas, rng)?,
    };
    eprintln!("sealroom broker: TPM AKs trusted through EK certificates from {count} EK CA certificate(s)");
    Ok(Some(ek))
}

/// The verifier as `serve` is configured: enrolled TPM AKs, TDX collateral (verified now, at the verification
/// time), and the pinned verification time.
fn appraiser(a: &ServeArgs, clock: &dyn Clock) -> Result<VerifierAppraiser> {
    let aks =
        a.tpm_ak.iter().map(std::fs::read).collect::<std::io::Result<_>>().context("reading --tpm-ak")?;
    let mut appraiser = VerifierAppraiser::with_pinned_tpm_aks(aks);
    let fixed_ms = match &a.verification_time {
        Some(t) => {
            let secs = if !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()) {
                t.parse::<i64>().context("--verification-time")?
            } else {
                sealroom_verifier::x509::parse_time(t).context("--verification-time")?
            };
            let ms = u64::try_from(secs).context("--verification-time before 1970")?.saturating_mul(1000);
            appraiser = appraiser.with_verification_time_ms(ms);
            Some(ms)
        }
        None => None,
    };
    if let Some(path) = &a.tdx_collateral {
        let at_ms = fixed_ms.unwrap_or_else(|| clock.now_ms());
        let at = i64::try_from(at_ms / 1000).unwrap_or(i64::MAX);
        let verified = sealroom_verifier::tdx::Collateral::load(path)
            .and_then(|c| c.verify(at))
            .with_context(|| format!("--tdx-collateral {}", path.display()))?;
        eprintln!(
            "sealroom broker: TDX collateral verified; valid {} .. {}",
            sealroom_verifier::x509::format_time(verified.valid_from()),
            sealroom_verifier::x509::format_time(verified.valid_until())
        );
        appraiser = appraiser.with_tdx_collateral(verified);
    }
    if let Some(dir) = &a.gpu_rims {
        let at_ms = fixed_ms.unwrap_or_else(|| clock.now_ms());
        let at = i64::try_from(at_ms / 1000).unwrap_or(i64::MAX);
        let ctx = crate::verify_gpu::gpu_context_with_crls(dir, &a.gpu_crl, at)?;
        eprintln!("sealroom broker: {} NVIDIA RIMs verified from {}", ctx.rims.len(), dir.display());
        appraiser = appraiser.with_gpu_context(ctx);
    }
    Ok(appraiser)
}

fn keys(k: &KeysArgs) -> Result<()> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let read_text = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let operation = match &k.op {
        KeysOp::Add { id, owner, policy, material_file } => Operation::Add {
            key_id: id.clone(),
            owner: owner.clone(),
            policy: read_text(policy)?,
            material_hex: material_file.as_deref().map(read).transpose()?.map(hex::encode),
        },
        KeysOp::List { owner } => Operation::List { owner: owner.clone() },
        KeysOp::Rotate { id, material_file } => Operation::Rotate {
            key_id: id.clone(),
            material_hex: material_file.as_deref().map(read).transpose()?.map(hex::encode),
        },
        KeysOp::Revoke { id } => Operation::Revoke { key_id: id.clone() },
        KeysOp::SetPolicy { id, policy } => {
            Operation::SetPolicy { key_id: id.clone(), policy: read_text(policy)? }
        }
    };
    let t = &k.target;
    let response = match (&t.socket, &t.state_dir, &t.kek) {
        (None, _, Some(kek)) if t.store.is_some() => {
            let rng = SystemRandomness::new();
            let url = t.store.as_deref().unwrap_or_default();
            let keys = sealroom_broker::pg::open_keys(url, Kek::load(kek)?, &rng)?;
            admin::apply(keys.as_ref(), &rng, &SystemClock, &operation)
        }
        (None, Some(dir), Some(kek)) => {
            let rng = SystemRandomness::new();
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            let store = KeyStore::open(&dir.join("keys.redb"), Kek::load(kek)?, &rng)?;
            // Changes made without the broker are anchored in its audit log all the same.
            let (audit, _) = AuditLog::open(&dir.join("audit.log"))?;
            store.anchor_to(Arc::new(GroupCommitLog::new(audit)), Arc::new(SystemClock))?;
            admin::apply(&store, &rng, &SystemClock, &operation)
        }
        (socket, dir, None) => {
            let socket = match (socket, dir) {
                (Some(s), _) => s.clone(),
                (None, Some(d)) => d.join("admin.sock"),
                (None, None) => bail!("give --socket, or --state-dir (with --kek when no broker runs)"),
            };
            let token = read_token(t.admin_token_file.as_deref())?;
            admin::request(&socket, &AdminRequest { token, operation })?
        }
        (Some(_), _, Some(_)) | (None, None, Some(_)) => {
            bail!(
                "--kek is for direct store access with --state-dir; a running broker is reached by --socket"
            )
        }
    };
    match response {
        AdminResponse::Ok { keys } => {
            for key in keys {
                let state = match key.state {
                    sealroom_broker::keystore::KeyState::Active => "active".to_owned(),
                    sealroom_broker::keystore::KeyState::Revoked { time_ms } => {
                        format!("revoked@{time_ms}")
                    }
                };
                println!("{}\towner={}\tversion={}\t{state}", key.id, key.owner, key.version);
            }
            Ok(())
        }
        AdminResponse::Error { message } => bail!("{message}"),
    }
}

/// What `broker policy check` judges: evidence (with the GPU RIMs) or an appraisal.
struct PolicyInput<'a> {
    evidence: Option<&'a Path>,
    appraisal: Option<&'a Path>,
    gpu_rims: Option<&'a Path>,
}

fn policy_check(
    policies: &[PathBuf],
    input: &PolicyInput<'_>,
    time_ms: Option<u64>,
    golden: &GoldenSet,
) -> Result<()> {
    let appraisal: Appraisal = match (input.evidence, input.appraisal) {
        (_, Some(path)) => Appraisal::from_json(&std::fs::read(path)?)?,
        (Some(path), None) => {
            let time = time_ms.context("--time-ms is required with --evidence (verification time)")?;
            let ev = Evidence::decode(&std::fs::read(path)?)?;
            let mut appraiser = VerifierAppraiser::default();
            if let Some(dir) = input.gpu_rims {
                let at = i64::try_from(time / 1000).unwrap_or(i64::MAX);
                appraiser =
                    appraiser.with_gpu_context(crate::verify_gpu::gpu_context_with_crls(dir, &[], at)?);
            }
            appraiser.appraise(&ev, time).map_err(|e| anyhow::anyhow!("evidence refused: {e}"))?
        }
        (None, None) => bail!("give --evidence or --appraisal"),
    };
    let mut all_allowed = true;
    for path in policies {
        let name =
            path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned());
        let policy =
            Policy::parse(&std::fs::read_to_string(path)?).with_context(|| path.display().to_string())?;
        let verdict = policy.evaluate(&appraisal, golden);
        match verdict.refusal() {
            None => println!("{name}: RELEASE"),
            Some((_, reason)) => {
                all_allowed = false;
                println!("{name}: REFUSE ({reason})");
            }
        }
        for (rule, outcome) in &verdict.rules {
            match outcome {
                Outcome::Pass(why) => println!("  allow   {rule}: {why}"),
                Outcome::Skipped => println!("  skip    {rule}"),
                Outcome::Fail(why) => println!("  refuse  {rule}: {why}"),
            }
        }
    }
    if !all_allowed {
        std::process::exit(2);
    }
    Ok(())
}
