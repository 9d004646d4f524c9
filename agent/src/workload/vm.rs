//! The VM entry point: where PID 1's agent child starts the workload beside the attestation service.

use std::path::Path;
use std::time::Duration;

use nix::mount::MsFlags;

use super::broker::BrokerKeys;
use super::spec::{self, GCE_METADATA_BASE, SpecSource, WorkloadSpec};
use super::{Outcome, WorkloadConfig};
use crate::error::Result;
use crate::worker::AttestationHandle;

/// How often the metadata server is tried before giving up (the network may come up a little late).
const METADATA_ATTEMPTS: u32 = 5;

/// Finds the workload spec as the kernel command line directs. `Ok(None)` when no workload is configured.
///
/// # Errors
/// A malformed selector or spec, an unreadable config file, a metadata server that does not answer.
pub async fn load_spec(cmdline: &str, metadata_base: &str) -> Result<Option<WorkloadSpec>> {
    match SpecSource::from_cmdline(cmdline)? {
        SpecSource::None => Ok(None),
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

/// Runs the operator's workload, if any, in the VM: reads `/proc/cmdline`, loads the spec, runs it with keys
/// from the broker, and returns how it ended (`None`: no workload configured, or it could not be started; the
/// reason is on the console). Never panics; the attestation service keeps serving throughout.
pub async fn run_in_vm(handle: AttestationHandle) -> Option<Outcome> {
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
    let keys = BrokerKeys::new(handle.clone());
    super::run(&spec, &WorkloadConfig::vm_defaults(), &handle, &keys).await.ok()
}
