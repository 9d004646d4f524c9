//! The sealroom agent on a real TPM (swtpm) for end-to-end tests: the attestation server started in-process on
//! loopback (the same `server::start` the `sealroom-agent` binary runs), with its own kernel-paths root and
//! runtime log, and the runtime events a test's workload would have measured.
//!
//! Also: crun as this host allows it, for tests that run a real container.

use std::path::Path;
use std::time::Duration;

use sealroom_agent::paths::KernelPaths;
use sealroom_agent::server::{self, Config, Running};
use sealroom_agent::worker::WorkerConfig;
use sealroom_agent::workload::runner::RuntimeConfig;
use sealroom_measurements::cel::RuntimeEvent;

use crate::swtpm::{Swtpm, unique_temp_dir};

/// Why a test agent could not be started.
#[derive(Debug)]
pub struct AgentError(pub String);

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "test agent: {}", self.0)
    }
}

impl std::error::Error for AgentError {}

/// Starts the agent's gRPC server on `127.0.0.1:<free port>` with the TPM `tpm`, then measures `events` (in
/// order) into PCR 15 and the runtime log, as the workload launcher would have.
///
/// # Errors
/// When the server cannot start (TPM unreachable, no port) or a measurement fails.
pub async fn start_agent(tpm: &Swtpm, events: &[RuntimeEvent]) -> Result<Running, AgentError> {
    let root = unique_temp_dir("agent-root");
    std::fs::create_dir_all(&root).map_err(|e| AgentError(format!("{}: {e}", root.display())))?;
    let worker = WorkerConfig {
        paths: KernelPaths::new(root),
        tcti: Some(tpm.tcti()),
        no_tpm: false,
        runtime_log_dir: unique_temp_dir("agent-rtlog"),
        queue_depth: 64,
        // Generous: CI has 2 cores shared with QEMU and compilers; a timeout here is a harness limit, not a result.
        request_timeout: Duration::from_secs(60),
    };
    let tcp = "127.0.0.1:0".parse().map_err(|e| AgentError(format!("address: {e}")))?;
    let running =
        server::start(Config { tcp: Some(tcp), vsock: None, worker, limits: server::agent_limits() })
            .await
            .map_err(|e| AgentError(format!("start: {e}")))?;
    for e in events {
        running.handle.measure(e.clone()).await.map_err(|err| AgentError(format!("measure {e:?}: {err}")))?;
    }
    Ok(running)
}

/// crun as this host allows it: directly when /sys/fs/cgroup is a pure cgroup2 (or legacy) hierarchy; in a
/// private mount namespace with its own cgroup2 mount when the host has the hybrid layout with controllers
/// enabled on the cgroup2 side (some sandboxes), which crun 1.8 refuses even with `--cgroup-manager=disabled`.
///
/// # Errors
/// When the wrapper script cannot be written.
pub fn host_crun(state_dir: &Path) -> std::io::Result<RuntimeConfig> {
    let mut rt = RuntimeConfig::crun(state_dir);
    let hybrid_controllers = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
        .is_ok_and(|c| !c.trim().is_empty());
    if hybrid_controllers {
        let wrapper = state_dir.with_extension("crun-wrapper.sh");
        if let Some(parent) = wrapper.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(
            &wrapper,
            "#!/bin/sh\nexec unshare --mount --propagation private sh -c \
             'mount -t cgroup2 none /sys/fs/cgroup && exec crun \"$@\"' crun \"$@\"\n",
        )?;
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        rt.program = wrapper;
    }
    Ok(rt)
}

/// True when this process runs as root (crun needs it to create the container's namespaces).
#[must_use]
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines().find(|l| l.starts_with("Uid:")).is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
    })
}
