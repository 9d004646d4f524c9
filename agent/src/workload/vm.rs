//! The VM entry point: where PID 1's agent child starts the workload beside the attestation service.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;

use super::broker::BrokerKeys;
use super::spec::{self, GCE_METADATA_BASE, OnExit, SpecSource, WorkloadSpec};
use super::{KeyProvider, Outcome, WorkloadConfig};
use crate::error::Result;
use crate::worker::AttestationHandle;

/// How often the metadata server is tried before giving up (the network may come up a little late).
const METADATA_ATTEMPTS: u32 = 5;
/// The virtio serial of the config disk that `sealroom.workload=auto` looks for (QEMU:
/// `-device virtio-blk-pci,drive=…,serial=sealroom-workload`).
pub const CONFIG_DISK_SERIAL: &str = "sealroom-workload";
/// How long an unreachable key broker is retried (it may start after the VM, e.g. once it has enrolled this
/// TPM's attestation key).
pub const BROKER_RETRY_WINDOW: Duration = Duration::from_secs(180);
const BROKER_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// The block device (`/dev/NAME`) whose `SYS_BLOCK/NAME/serial` is [`CONFIG_DISK_SERIAL`], if any.
#[must_use]
pub fn find_config_disk(sys_block: &Path) -> Option<PathBuf> {
    super::inputs::find_by_serial(sys_block, CONFIG_DISK_SERIAL)
}

/// True on Google Compute Engine (the DMI product name firmware reports).
#[must_use]
pub fn on_gce(dmi_product_name: &Path) -> bool {
    std::fs::read_to_string(dmi_product_name).is_ok_and(|n| n.trim() == "Google Compute Engine")
}

/// Resolves `sealroom.workload=auto`: the config disk if attached, else GCE metadata on GCE, else none.
#[must_use]
pub fn resolve_auto(sys_block: &Path, dmi_product_name: &Path) -> SpecSource {
    if let Some(disk) = find_config_disk(sys_block) {
        return SpecSource::File(disk);
    }
    if on_gce(dmi_product_name) { SpecSource::Metadata } else { SpecSource::None }
}

/// Finds the workload spec as the kernel command line directs. `Ok(None)` when no workload is configured.
///
/// # Errors
/// A malformed selector or spec, an unreadable config file, a metadata server that does not answer.
pub async fn load_spec(cmdline: &str, metadata_base: &str) -> Result<Option<WorkloadSpec>> {
    let source = match SpecSource::from_cmdline(cmdline)? {
        SpecSource::Auto => {
            let resolved = resolve_auto(Path::new("/sys/block"), Path::new("/sys/class/dmi/id/product_name"));
            super::console(format_args!("sealroom.workload=auto: {resolved:?}"));
            resolved
        }
        other => other,
    };
    match source {
        SpecSource::None | SpecSource::Auto => Ok(None),
        SpecSource::Cmdline(s) => Ok(Some(*s)),
        SpecSource::File(p) => {
            let p2 = p.clone();
            tokio::task::spawn_blocking(move || spec::read_file(&p2))
                .await
                .map_err(|e| crate::Error::workload("spec", format!("config {}: {e}", p.display())))?
                .map(Some)
        }
        SpecSource::Metadata => {
            let mut attempt = 1;
            loop {
                match spec::fetch_metadata(metadata_base, Duration::from_secs(5)).await {
                    Err(e) if attempt < METADATA_ATTEMPTS && e.to_string().contains("unreachable") => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Ok(None) => {
                        return Err(crate::Error::workload(
                            "spec",
                            format!(
                                "sealroom.workload=metadata but the instance has no {} attribute",
                                spec::GCE_ATTRIBUTE
                            ),
                        ));
                    }
                    other => return other,
                }
            }
        }
    }
}

/// crun needs `/sys/fs/cgroup` to be a cgroup2 (or tmpfs) mount; PID 1 does not mount it otherwise.
fn ensure_cgroup2() {
    let target = Path::new("/sys/fs/cgroup");
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(e) = crate::sys::mount_fs("cgroup2", target, flags, None) {
        super::console(format_args!("cgroup2 on /sys/fs/cgroup: {e}"));
    }
}

/// Retries a key provider while the broker is unreachable (it may start after the VM), for up to `window`.
#[derive(Debug, Clone)]
pub struct RetryUnreachable<K> {
    inner: K,
    window: Duration,
    pause: Duration,
}

impl<K> RetryUnreachable<K> {
    /// Wraps `inner`.
    #[must_use]
    pub fn new(inner: K, window: Duration) -> Self {
        Self { inner, window, pause: BROKER_RETRY_PAUSE }
    }
}

impl<K: KeyProvider + Sync> KeyProvider for RetryUnreachable<K> {
    async fn release(
        &self,
        broker: &super::spec::BrokerEndpoint,
        key_ids: &[String],
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let deadline = Instant::now() + self.window;
        let mut said = false;
        loop {
            match self.inner.release(broker, key_ids).await {
                Err(e) if e.to_string().contains("unreachable") && Instant::now() < deadline => {
                    if !said {
                        super::console(format_args!("{e}; retrying for up to {} s", self.window.as_secs()));
                        said = true;
                    }
                    tokio::time::sleep(self.pause).await;
                }
                other => return other,
            }
        }
    }
}

/// How a workload in the VM ended, and what the operator asked the VM to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmOutcome {
    /// The workload's outcome (its output measured).
    pub outcome: Outcome,
    /// The spec's `on_exit`.
    pub on_exit: OnExit,
}

/// Runs the operator's workload, if any, in the VM: reads `/proc/cmdline`, loads the spec, runs it with keys
/// from the broker, and returns how it ended (`None`: no workload configured, or it could not be started or
/// failed; the reason is on the console). Never panics; the attestation service keeps serving throughout.
///
/// `stop` is raised when the VM powers off: a running container is then stopped (SIGTERM, then SIGKILL after
/// [`super::runner::STOP_GRACE`]) and its output is not measured.
pub async fn run_in_vm(handle: AttestationHandle, stop: super::runner::StopSignal) -> Option<VmOutcome> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let spec = match load_spec(&cmdline, GCE_METADATA_BASE).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            super::console(format_args!("no workload configured (sealroom.workload=…)"));
            return None;
        }
        Err(e) => {
            super::console(format_args!("REFUSED/FAILED: {e}"));
            return None;
        }
    };
    ensure_cgroup2();
    let keys = RetryUnreachable::new(BrokerKeys::new(handle.clone()), BROKER_RETRY_WINDOW);
    let mut cfg = WorkloadConfig::vm_defaults();
    cfg.runtime = cfg.runtime.with_stop(stop);
    let outcome = super::run(&spec, &cfg, &handle, &keys).await.ok()?;
    super::receipt::finish_in_vm(&handle, &spec, &cfg, &outcome).await;
    Some(VmOutcome { outcome, on_exit: spec.on_exit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_finds_the_config_disk_by_serial_then_gce_then_none() {
        let dir = std::env::temp_dir().join(format!("sealroom-vm-auto-{}", std::process::id()));
        let block = dir.join("block");
        for (name, serial) in [("vda", None), ("vdb", Some("other\n")), ("vdc", Some("sealroom-workload\n"))]
        {
            std::fs::create_dir_all(block.join(name)).unwrap();
            if let Some(s) = serial {
                std::fs::write(block.join(name).join("serial"), s).unwrap();
            }
        }
        let product = dir.join("product_name");
        std::fs::write(&product, "Google Compute Engine\n").unwrap();
        assert_eq!(resolve_auto(&block, &product), SpecSource::File(PathBuf::from("/dev/vdc")));
        std::fs::remove_dir_all(block.join("vdc")).unwrap();
        assert_eq!(resolve_auto(&block, &product), SpecSource::Metadata);
        std::fs::write(&product, "Standard PC (Q35 + ICH9, 2009)\n").unwrap();
        assert_eq!(resolve_auto(&block, &product), SpecSource::None);
        assert_eq!(resolve_auto(&dir.join("absent"), &dir.join("absent")), SpecSource::None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[derive(Debug)]
    struct FlakyBroker(std::sync::atomic::AtomicU32);

    impl KeyProvider for FlakyBroker {
        async fn release(
            &self,
            broker: &crate::workload::spec::BrokerEndpoint,
            _: &[String],
        ) -> Result<Vec<(String, Vec<u8>)>> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match n {
                0 => Err(crate::Error::workload(
                    "keys",
                    format!("broker {}: unreachable: refused", broker.url),
                )),
                1 => Ok(vec![("k".into(), b"secret".to_vec())]),
                _ => Err(crate::Error::workload("keys", "refused by policy")),
            }
        }
    }

    #[tokio::test]
    async fn unreachable_brokers_are_retried_other_refusals_are_not() {
        let pause = Duration::from_millis(10);
        let b = crate::workload::spec::BrokerEndpoint {
            name: "b".into(),
            url: "http://b".into(),
            key_id: "3Mfj4cM9KvTWQ7pmqfyIXlM3YzZ2r3JN0a4cDnmWc8I".into(),
            tls_ca: None,
        };
        let k = RetryUnreachable { inner: FlakyBroker(0.into()), window: Duration::from_secs(60), pause };
        assert_eq!(k.release(&b, &[]).await.unwrap(), vec![("k".to_owned(), b"secret".to_vec())]);
        assert!(k.release(&b, &[]).await.unwrap_err().to_string().contains("refused by policy"));
        assert_eq!(k.inner.0.load(std::sync::atomic::Ordering::SeqCst), 3);
        let gone = RetryUnreachable { inner: FlakyBroker(0.into()), window: Duration::ZERO, pause };
        assert!(gone.release(&b, &[]).await.unwrap_err().to_string().contains("unreachable"));
    }
}
