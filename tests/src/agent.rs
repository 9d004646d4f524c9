//! The sealroom agent on a real TPM (swtpm) for end-to-end tests: the attestation server started in-process on
//! loopback (the same `server::start` the `sealroom-agent` binary runs), with its own kernel-paths root and
//! runtime log, and the runtime events a test's workload would have measured.
//!
//! Also: crun as this host allows it, for tests that run a real container, and the few things every such test
//! asks of an agent (its AK for enrolment, its runtime log, a gRPC client, a workload launcher's directories),
//! written once here so the end-to-end tests differ only in what they check.

use std::path::Path;
use std::time::Duration;

use sealroom_agent::paths::KernelPaths;
use sealroom_agent::server::{self, Config, Running};
use sealroom_agent::worker::WorkerConfig;
use sealroom_agent::workload::WorkloadConfig;
use sealroom_agent::workload::fetch::FetchOptions;
use sealroom_agent::workload::runner::RuntimeConfig;
use sealroom_measurements::binding::Nonce;
use sealroom_measurements::cel::{CelLog, RuntimeEvent};
use sealroom_proto::attestation::v1::attestation_client::AttestationClient;
use tonic::transport::Channel;

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

/// Fails the test unless it runs as root, saying why: crun needs root to create the container's namespaces, and
/// a test that skipped instead would pass without running its workload.
///
/// # Panics
/// When not root.
#[allow(clippy::panic)]
pub fn require_root() {
    assert!(
        is_root(),
        "crun needs root to create the container's namespaces: run this test as root (CI does)"
    );
}

/// A workload launcher's configuration under a fresh temporary directory named for `tag`: `work/`, `keys/`
/// (a tmpfs at /run/sealroom/keys in the VM), `output/`, crun as this host allows it ([`host_crun`]) with its
/// state in `crun-state/`, and registry timeouts generous enough for a loaded CI machine.
///
/// # Panics
/// When the crun wrapper cannot be written (a test harness: the message says which file).
#[must_use]
#[allow(clippy::panic)]
pub fn workload_config(tag: &str) -> WorkloadConfig {
    let dir = unique_temp_dir(tag);
    let state = dir.join("crun-state");
    let runtime = host_crun(&state).unwrap_or_else(|e| panic!("crun wrapper for {}: {e}", state.display()));
    WorkloadConfig {
        work_dir: dir.join("work"),
        keys_dir: dir.join("keys"),
        output_dir: dir.join("output"),
        runtime,
        fetch: FetchOptions {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
        },
    }
}

/// The agent's AK public area (TPM2B_PUBLIC), as a provider records it out of band to enrol the TPM (a broker's
/// `--tpm-ak`): read from one evidence taken in process, since enrolment is not what these tests exercise.
///
/// # Panics
/// When the agent gives no evidence or its evidence has no TPM part.
#[allow(clippy::panic)]
pub async fn ak_of(agent: &Running) -> Vec<u8> {
    let evidence =
        agent.handle.evidence(Nonce([0x42; 32])).await.unwrap_or_else(|e| panic!("agent evidence: {e}"));
    evidence.tpm.unwrap_or_else(|| panic!("agent evidence without a TPM part")).ak_public
}

/// What the agent measured so far (PCR 15's runtime log), decoded.
///
/// # Panics
/// When the agent's own runtime log does not decode.
#[must_use]
#[allow(clippy::panic)]
pub fn runtime_events(agent: &Running) -> Vec<RuntimeEvent> {
    CelLog::decode(&agent.handle.runtime_log().0)
        .unwrap_or_else(|e| panic!("the agent's runtime log: {e}"))
        .into_iter()
        .map(|r| r.event)
        .collect()
}

/// A gRPC `Attestation` client connected to the agent's TCP listener, as a relying party or sender talks to it.
///
/// # Panics
/// When the agent has no TCP listener or the connection fails.
#[allow(clippy::panic)]
pub async fn attestation_client(agent: &Running) -> AttestationClient<Channel> {
    let url = format!("http://{}", agent.tcp_addr.unwrap_or_else(|| panic!("the agent has no TCP listener")));
    let channel = Channel::from_shared(url.clone())
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to the agent at {url}: {e}"));
    AttestationClient::new(channel)
}
