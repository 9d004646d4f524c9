//! The workload: take the container image the operator names, prove exactly what it is before it runs, run it,
//! and give it its data keys and an output place.
//!
//! [`run`] does it in this order, and stops at the first failure with one console line saying why:
//! 1. fetch the image pinned by digest and verify every blob while streaming ([`fetch`]); nothing is unpacked
//!    until all of them matched;
//! 2. read the image's launch policy and refuse operator settings it forbids ([`policy`]), before anything is
//!    measured or run;
//! 3. measure, in order (Confidential Space's order): image reference, manifest digest, config digest, each
//!    arg, each env var, each mount, the key of each broker the workload trusts (in spec order), the launch
//!    policy (with `seal_output_to`, a `sealed_output_to` event before it), then — once every sealed input
//!    the spec names arrived through `SubmitInput` and was measured ([`sealed`]) — the launch separator ([`launch_events`]) into
//!    PCR 15 + RTMR3 + the runtime CEL log; a failed measurement stops the launch;
//! 4. unpack the layers into the root ([`rootfs`]);
//! 5. only now, request the data keys from each broker in turn, each for its own key ids only (every one
//!    appraises the same measured launch: no `key_release` is measured until all have released); one refusal
//!    stops the launch with `provider NAME (KID) refused key ID: REASON` and nothing written. Then write them
//!    read-only to the keys directory, each measured as a `key_release` event naming its broker's key;
//! 6. run it with crun ([`runner`]) under the restart policy;
//! 7. measure an `output` event: the digest of the output directory
//!    ([`sealroom_measurements::output::digest_dir`]), and return; the caller decides about power-off.
//!
//! Whatever fails, the agent's attestation service keeps answering: this runs beside it.

pub mod broker;
pub mod bundle;
pub mod digest;
pub mod fetch;
pub mod image;
pub mod inputs;
pub mod policy;
pub mod receipt;
pub mod rootfs;
pub mod runner;
pub mod sealed;
pub mod seccomp;
pub mod spec;
pub mod vm;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use sealroom_measurements::cel::{CelRecord, RuntimeEvent};

use self::bundle::LaunchPlan;
use self::digest::Sha256Digest;
use self::fetch::{BlobStore, FetchOptions, FetchedImage};
use self::policy::LaunchPolicy;
use self::runner::RuntimeConfig;
use self::spec::WorkloadSpec;
use crate::error::{Error, Result};
use crate::worker::AttestationHandle;

/// Name of the output in the `output` event.
pub const OUTPUT_NAME: &str = "output";
/// The container id given to the runtime.
pub const CONTAINER_ID: &str = "sealroom-workload";

/// Writes one console line prefixed `sealroom-workload:`.
pub fn console(args: std::fmt::Arguments<'_>) {
    eprintln!("sealroom-workload: {args}");
}

macro_rules! say {
    ($($arg:tt)*) => { $crate::workload::console(format_args!($($arg)*)) };
}

/// Something that measures runtime events into the registers and the log (the agent's worker).
pub trait Measurer {
    /// Measures one event; the launch stops if it fails.
    fn measure(&self, event: RuntimeEvent) -> impl Future<Output = Result<CelRecord>> + Send;

    /// The inbox sealed inputs arrive in (`Attestation.SubmitInput`), when this measurer is an agent serving it.
    fn sealed_inbox(&self) -> Option<&crate::sealed_inbox::SealedInbox> {
        None
    }
}

impl Measurer for AttestationHandle {
    fn measure(&self, event: RuntimeEvent) -> impl Future<Output = Result<CelRecord>> + Send {
        AttestationHandle::measure(self, event)
    }

    fn sealed_inbox(&self) -> Option<&crate::sealed_inbox::SealedInbox> {
        Some(AttestationHandle::sealed_inbox(self))
    }
}

/// Something that obtains data keys for a measured workload (the key broker client). It is called only after
/// the launch separator was measured.
pub trait KeyProvider {
    /// The keys named `key_ids`, as (id, secret bytes).
    fn release(
        &self,
        broker: &spec::BrokerEndpoint,
        key_ids: &[String],
    ) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>>> + Send;
}

/// A key provider for workloads that need no keys: asking it for one is an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKeys;

impl KeyProvider for NoKeys {
    async fn release(
        &self,
        _broker: &spec::BrokerEndpoint,
        key_ids: &[String],
    ) -> Result<Vec<(String, Vec<u8>)>> {
        Err(Error::workload(
            "keys",
            format!("no key broker client configured; cannot release {}", key_ids.join(", ")),
        ))
    }
}

/// Where the workload's files live.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Blob store, bundle and root file system (a tmpfs in the VM).
    pub work_dir: PathBuf,
    /// Where keys are written (bind-mounted read-only into the container).
    pub keys_dir: PathBuf,
    /// The writable output directory (bind-mounted at `/output`).
    pub output_dir: PathBuf,
    /// The OCI runtime.
    pub runtime: RuntimeConfig,
    /// Registry timeouts.
    pub fetch: FetchOptions,
}

impl WorkloadConfig {
    /// The VM's layout: everything under `/run/sealroom` (tmpfs).
    #[must_use]
    pub fn vm_defaults() -> Self {
        Self {
            work_dir: PathBuf::from("/run/sealroom/workload"),
            keys_dir: PathBuf::from("/run/sealroom/keys"),
            output_dir: PathBuf::from("/run/sealroom/output"),
            runtime: RuntimeConfig::guest(&PathBuf::from("/run/sealroom/crun")),
            fetch: FetchOptions::default(),
        }
    }
}

/// How a workload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The container's exit code (last run).
    pub exit_code: i32,
    /// Runs (1 + restarts).
    pub runs: u32,
    /// The output digest that was measured.
    pub output_digest: Sha256Digest,
    /// The output listing it covers (`sha256sum` format).
    pub output_listing: String,
}

/// The launch events, in measurement order (see the module documentation).
#[must_use]
pub fn launch_events(
    spec: &WorkloadSpec,
    image: &FetchedImage,
    plan: &LaunchPlan,
    policy: &LaunchPolicy,
) -> Vec<RuntimeEvent> {
    let mut events = vec![
        RuntimeEvent::ImageReference(spec.image.clone()),
        RuntimeEvent::ManifestDigest(image.manifest_digest.to_string()),
        RuntimeEvent::ConfigDigest(image.config_digest.to_string()),
    ];
    events.extend(plan.args.iter().cloned().map(RuntimeEvent::Arg));
    events.extend(plan.env.iter().cloned().map(RuntimeEvent::Env));
    events.extend(plan.mounts.iter().cloned().map(RuntimeEvent::Mount));
    events.extend(spec.brokers.iter().map(|s| RuntimeEvent::BrokerKey(s.broker.key_id.clone())));
    if let Some(to) = &spec.sealed.output_to {
        events.push(RuntimeEvent::SealedOutputTo(to.text()));
    }
    events.push(RuntimeEvent::LaunchPolicy(policy.canonical_text(spec)));
    events.push(RuntimeEvent::LaunchSeparator);
    events
}

/// Fetches, checks and measures the workload without running it: the launch plan and image, ready to run.
/// After this returns `Ok`, the launch separator is measured.
///
/// # Errors
/// Fetch, digest, policy or measurement failures (nothing ran; no key was requested).
pub async fn prepare<M: Measurer>(
    spec: &WorkloadSpec,
    cfg: &WorkloadConfig,
    measurer: &M,
) -> Result<(FetchedImage, LaunchPlan)> {
    say!("fetching {}", spec.image);
    let store = BlobStore::new(&cfg.work_dir.join("blobs"))?;
    let image = fetch::fetch(spec, &store, &cfg.fetch).await?;
    say!(
        "verified manifest {}, config {}, {} layer(s)",
        image.manifest_digest,
        image.config_digest,
        image.layers.len()
    );
    let policy = LaunchPolicy::from_labels(&image.config.labels)?;
    policy.check(spec)?;
    let mut plan = bundle::plan(spec, &image, &cfg.keys_dir, &cfg.output_dir)?;
    plan.mounts.extend(inputs::mounts(&spec.inputs, &cfg.work_dir));
    plan.mounts.extend(sealed::mounts(&spec.sealed, &cfg.work_dir));
    for event in launch_events(spec, &image, &plan, &policy) {
        if event == RuntimeEvent::LaunchSeparator {
            sealed::before_separator(&spec.sealed, &cfg.work_dir, measurer).await?;
        }
        let rec = measurer.measure(event).await?;
        say!("measured record {}: {}", rec.recnum, rec.event);
    }
    Ok((image, plan))
}

/// Runs the workload from spec to measured output (see the module documentation). Every failure is also
/// printed on the console, one line.
///
/// # Errors
/// Any step's failure.
pub async fn run<M: Measurer, K: KeyProvider>(
    spec: &WorkloadSpec,
    cfg: &WorkloadConfig,
    measurer: &M,
    keys: &K,
) -> Result<Outcome> {
    let r = run_inner(spec, cfg, measurer, keys).await;
    if let Err(e) = &r {
        say!("REFUSED/FAILED: {e}");
    }
    r
}

async fn run_inner<M: Measurer, K: KeyProvider>(
    spec: &WorkloadSpec,
    cfg: &WorkloadConfig,
    measurer: &M,
    keys: &K,
) -> Result<Outcome> {
    let (image, mut plan) = prepare(spec, cfg, measurer).await?;

    let bundle_dir = cfg.work_dir.join("bundle");
    let rootfs = bundle_dir.join("rootfs");
    let layers = image.layers.clone();
    let root2 = rootfs.clone();
    let stats = tokio::task::spawn_blocking(move || rootfs::unpack(&layers, &root2))
        .await
        .map_err(|e| Error::workload("unpack", format!("task: {e}")))??;
    say!("unpacked {} entries ({} bytes, {} whiteouts)", stats.entries, stats.bytes, stats.whiteouts);
    let (uid, gid) = bundle::resolve_user(&image.config.user, &rootfs)?;
    plan.uid = uid;
    plan.gid = gid;

    for dir in [&cfg.keys_dir, &cfg.output_dir] {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::workload("bundle", format!("{}: {e}", dir.display())))?;
    }
    inputs::copy_all(&spec.inputs, &cfg.work_dir, uid, gid)?;
    sealed::chown_all(&spec.sealed, &cfg.work_dir, uid, gid)?;
    // All or nothing: every broker is asked (for its own key ids only) before anything is written, so one
    // provider's refusal leaves no key on disk and the workload never starts. A provider that already released
    // has its release in its own audit log; the key it sent is dropped here, unused.
    let mut released = Vec::new();
    for source in &spec.brokers {
        let b = &source.broker;
        let keys = keys.release(b, &source.key_ids).await?;
        say!("provider {} ({}) released {} key(s)", b.name, b.key_id, keys.len());
        released.extend(keys.into_iter().map(|(id, secret)| (b.key_id.clone(), id, secret)));
    }
    for (broker_key, id, secret) in released {
        // The spec admitted only plain-name components, so the path stays under keys_dir.
        let path = cfg.keys_dir.join(&id);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::workload("keys", format!("{}: {e}", parent.display())))?;
        }
        std::fs::write(&path, &secret)
            .map_err(|e| Error::workload("keys", format!("{}: {e}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))
            .map_err(|e| Error::workload("keys", format!("{}: {e}", path.display())))?;
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .map_err(|e| Error::workload("keys", format!("{}: {e}", path.display())))?;
        }
        measurer.measure(RuntimeEvent::KeyRelease { key_id: id.clone(), broker_key }).await?;
        say!("key {id} released to the workload");
    }
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::lchown(&cfg.output_dir, Some(uid), Some(gid))
            .map_err(|e| Error::workload("bundle", format!("{}: {e}", cfg.output_dir.display())))?;
    }

    bundle::write_bundle(&bundle_dir, &bundle::runtime_spec(&plan, &rootfs))?;
    let result =
        runner::run(&cfg.runtime, &bundle_dir, CONTAINER_ID, spec.restart, spec.log_redirect).await?;
    if result.oom_killed {
        say!(
            "REPORTED: the workload exceeded its memory limit ({} bytes) and was killed by the kernel's OOM killer",
            plan.memory_limit
        );
    }
    if result.stopped {
        // The run did not finish: its output is not measured (no receipt can name it), and the VM is going down.
        return Err(Error::workload(
            "runtime",
            format!(
                "the workload was stopped because the VM is powering off (exit code {}); its output is not measured",
                result.exit_code
            ),
        ));
    }

    if spec.sealed.output_to.is_some() {
        sealed::write_salt(&cfg.output_dir)?;
    }
    let out_dir = cfg.output_dir.clone();
    let (digest, listing) =
        tokio::task::spawn_blocking(move || sealroom_measurements::output::digest_dir(&out_dir))
            .await
            .map_err(|e| Error::workload("output", format!("task: {e}")))?
            .map_err(|e| Error::workload("output", e.to_string()))?;
    let output_digest = Sha256Digest(digest);
    measurer
        .measure(RuntimeEvent::Output { name: OUTPUT_NAME.into(), digest: output_digest.to_string() })
        .await?;
    say!(
        "workload ended: exit code {} after {} run(s); output {} ({} file(s)) measured",
        result.exit_code,
        result.runs,
        output_digest,
        listing.lines().count()
    );
    Ok(Outcome { exit_code: result.exit_code, runs: result.runs, output_digest, output_listing: listing })
}
