//! Running the bundle with crun (an existing, audited OCI runtime; no namespaces are set up by hand here),
//! forwarding its output to the console and applying the restart policy.
//!
//! In the VM crun manages the container's cgroup (cgroup v2, `--cgroup-manager=cgroupfs`): the runtime spec's
//! memory and task limits apply, and an OOM kill is recognised from the parent cgroup's `memory.events`
//! (`oom_kill` grows while the container runs and it ends by SIGKILL).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::spec::RestartPolicy;
use crate::error::{Error, Result};

const STAGE: &str = "runtime";
/// Prefix of every workload output line on the console.
pub const OUTPUT_PREFIX: &str = "workload| ";

fn err(reason: impl Into<String>) -> Error {
    Error::workload(STAGE, reason)
}

/// How long a container asked to stop (the VM is powering off) has between SIGTERM and SIGKILL. The ACPI power
/// button must power the VM off within 5 s with the workload running (issue 14); PID 1 gives the agent a little
/// more than this (`pid1::STOP_GRACE`) and kills everything left after that.
pub const STOP_GRACE: Duration = Duration::from_millis(2000);
/// How long the runtime gets to report a container's end after SIGKILL, and the output forwarders to drain what
/// the container wrote before it ended.
const AFTER_KILL_WAIT: Duration = Duration::from_millis(700);

/// Tells a running workload to stop (the sending half is [`StopHandle`]): the container gets SIGTERM, then
/// SIGKILL after [`STOP_GRACE`], and is not restarted.
#[derive(Debug, Clone)]
pub struct StopSignal(tokio::sync::watch::Receiver<bool>);

/// Asks the workload holding the matching [`StopSignal`] to stop.
#[derive(Debug)]
pub struct StopHandle(tokio::sync::watch::Sender<bool>);

/// A connected stop handle and signal.
#[must_use]
pub fn stop_channel() -> (StopHandle, StopSignal) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    (StopHandle(tx), StopSignal(rx))
}

impl StopHandle {
    /// Asks the workload to stop (idempotent).
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl StopSignal {
    /// A signal nobody can raise (tests and hosts without power-off handling).
    #[must_use]
    pub fn never() -> Self {
        stop_channel().1
    }

    /// Whether a stop was asked for.
    #[must_use]
    pub fn is_raised(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once a stop is asked for; never, when its handle was dropped without asking.
    pub async fn raised(&mut self) {
        loop {
            if *self.0.borrow_and_update() {
                return;
            }
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// How to invoke the OCI runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The runtime binary (crun).
    pub program: PathBuf,
    /// Arguments before the command (`--root`, `--cgroup-manager`).
    pub global_args: Vec<String>,
    /// The runtime's state directory.
    pub state_dir: PathBuf,
    /// Extra arguments of `run` (`--no-pivot` when the host root is an initramfs, where pivot_root(2)
    /// is refused by the kernel; the container then gets MS_MOVE + chroot, and has no capability to leave it).
    pub run_args: Vec<String>,
    /// The cgroup2 mount under which crun places the container (`None`: crun manages no cgroup and the runtime
    /// spec's resource limits are not applied).
    pub cgroup_root: Option<PathBuf>,
    /// Raised when the VM powers off: the running container is stopped and not restarted.
    pub stop: StopSignal,
}

impl RuntimeConfig {
    /// crun from PATH with its state in `state_dir` and no cgroup management (hosts whose cgroup hierarchy the
    /// agent does not own, such as test machines).
    #[must_use]
    pub fn crun(state_dir: &Path) -> Self {
        Self {
            program: PathBuf::from("crun"),
            global_args: vec!["--cgroup-manager=disabled".into()],
            state_dir: state_dir.to_path_buf(),
            run_args: Vec::new(),
            cgroup_root: None,
            stop: StopSignal::never(),
        }
    }

    /// The same runtime, stopping its container when `stop` is raised.
    #[must_use]
    pub fn with_stop(mut self, stop: StopSignal) -> Self {
        self.stop = stop;
        self
    }

    /// crun as managing cgroups under the cgroup2 mount `cgroup_root` (the runtime spec's limits apply).
    #[must_use]
    pub fn with_cgroups(mut self, cgroup_root: &Path) -> Self {
        self.global_args = vec!["--cgroup-manager=cgroupfs".into()];
        self.cgroup_root = Some(cgroup_root.to_path_buf());
        self
    }

    /// crun as installed in the guest image (`/usr/bin/crun`), with `--no-pivot` when `/` is the initramfs,
    /// managing the container's cgroup under `/sys/fs/cgroup` (the agent mounts cgroup2 there).
    #[must_use]
    pub fn guest(state_dir: &Path) -> Self {
        let mut c = Self::crun(state_dir).with_cgroups(Path::new("/sys/fs/cgroup"));
        c.program = PathBuf::from("/usr/bin/crun");
        if root_is_initramfs() {
            c.run_args.push("--no-pivot".into());
        }
        c
    }
}

/// The parent cgroup of the container under `cgroup_root` (the first component of
/// [`super::bundle::CGROUP_PATH`]).
fn parent_cgroup(cgroup_root: &Path) -> PathBuf {
    let first = super::bundle::CGROUP_PATH.trim_start_matches('/').split('/').next().unwrap_or_default();
    cgroup_root.join(first)
}

/// Creates the container's parent cgroup and delegates the memory and pids controllers down to it (cgroup v2
/// enables a controller for children through the parent's `cgroup.subtree_control`).
///
/// # Errors
/// The cgroup cannot be created or a controller is not available (the limits would silently not apply).
pub fn prepare_cgroups(cgroup_root: &Path) -> Result<()> {
    let parent = parent_cgroup(cgroup_root);
    std::fs::create_dir_all(&parent).map_err(|e| err(format!("cgroup {}: {e}", parent.display())))?;
    for dir in [cgroup_root, parent.as_path()] {
        let control = dir.join("cgroup.subtree_control");
        std::fs::write(&control, "+memory +pids")
            .map_err(|e| err(format!("{}: enabling memory and pids: {e}", control.display())))?;
    }
    Ok(())
}

/// `oom_kill` of a cgroup v2 `memory.events` file (hierarchical: the container's kills count in its parent).
#[must_use]
pub fn oom_kills(memory_events: &str) -> u64 {
    memory_events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn read_oom_kills(cgroup_root: Option<&Path>) -> u64 {
    cgroup_root
        .map(|root| parent_cgroup(root).join("memory.events"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map_or(0, |t| oom_kills(&t))
}

/// crun's exit code for a container whose init was killed by SIGKILL.
pub const KILLED_BY_SIGKILL: i32 = 128 + 9;

/// True when `/` is the initramfs (`rootfs` in /proc/self/mounts), where pivot_root(2) fails.
#[must_use]
pub fn root_is_initramfs() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (_, mountpoint, fstype) = (f.next(), f.next(), f.next());
            mountpoint == Some("/") && fstype == Some("rootfs")
        })
    })
}

/// How the workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunResult {
    /// Exit code of the last run (128+N when killed by signal N, as crun reports it).
    pub exit_code: i32,
    /// How many times it ran.
    pub runs: u32,
    /// The last run was ended by the kernel's OOM killer (SIGKILL while the cgroup's `oom_kill` grew): the
    /// workload exceeded its memory limit.
    pub oom_killed: bool,
    /// The last run was stopped because a stop was asked for (the VM is powering off); it was not restarted.
    pub stopped: bool,
}

async fn forward<R: AsyncRead + Unpin>(reader: R, stream: &'static str) {
    let mut lines = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match lines.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                eprintln!("{OUTPUT_PREFIX}{stream}: {}", text.trim_end_matches(['\n', '\r']));
            }
        }
    }
}

async fn run_once(cfg: &RuntimeConfig, bundle: &Path, id: &str, forward_logs: bool) -> Result<RunEnd> {
    let log = cfg.state_dir.join(format!("{id}.crun.log"));
    let _ = std::fs::remove_file(&log);
    // A container left from an earlier attempt would make `run` fail.
    let _ = tokio::process::Command::new(&cfg.program)
        .args(&cfg.global_args)
        .arg("--root")
        .arg(&cfg.state_dir)
        .args(["delete", "--force", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    let out = if forward_logs { Stdio::piped() } else { Stdio::null() };
    let err_out = if forward_logs { Stdio::piped() } else { Stdio::null() };
    let mut child = tokio::process::Command::new(&cfg.program)
        .args(&cfg.global_args)
        .arg("--root")
        .arg(&cfg.state_dir)
        .arg(format!("--log={}", log.display()))
        .arg("run")
        .args(&cfg.run_args)
        .arg("--bundle")
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err_out)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| err(format!("cannot start {}: {e}", cfg.program.display())))?;
    let fwd_out = child.stdout.take().map(|o| tokio::spawn(forward(o, "stdout")));
    let fwd_err = child.stderr.take().map(|e| tokio::spawn(forward(e, "stderr")));
    let mut stop = cfg.stop.clone();
    let (status, stopped) = tokio::select! {
        status = child.wait() => (status, false),
        () = stop.raised() => (stop_container(cfg, id, &mut child).await, true),
    };
    let status = status.map_err(|e| err(format!("waiting for {}: {e}", cfg.program.display())))?;
    for t in [fwd_out, fwd_err].into_iter().flatten() {
        // Everything the container wrote before it ended is forwarded; after a stop, its pipes close when its
        // last process is gone, so this waits briefly at most.
        if stopped {
            let _ = tokio::time::timeout(AFTER_KILL_WAIT, t).await;
        } else {
            let _ = t.await;
        }
    }
    // crun's own diagnostics (not the workload's output) go to its log file: always show them.
    if let Ok(text) = std::fs::read_to_string(&log) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            eprintln!("sealroom-workload: crun: {line}");
        }
    }
    Ok(RunEnd { code: status.code().unwrap_or(-1), stopped })
}

/// How one run ended.
#[derive(Debug, Clone, Copy)]
struct RunEnd {
    code: i32,
    stopped: bool,
}

/// `crun kill ID SIGNAL`; failures are reported, not fatal (the container may already be gone).
async fn crun_kill(cfg: &RuntimeConfig, id: &str, signal: &str) {
    let status = tokio::process::Command::new(&cfg.program)
        .args(&cfg.global_args)
        .arg("--root")
        .arg(&cfg.state_dir)
        .args(["kill", id, signal])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("sealroom-workload: crun kill {signal}: {s} (the container may have ended already)");
        }
        Err(e) => eprintln!("sealroom-workload: crun kill {signal}: {e}"),
    }
}

/// Stops the container for power-off: SIGTERM (a workload that handles it can save its state and exit), SIGKILL
/// after [`STOP_GRACE`] (the container's init is killed and the kernel kills its whole PID namespace), and, should
/// the runtime itself not end, SIGKILL to the runtime. Returns the runtime's exit status.
async fn stop_container(
    cfg: &RuntimeConfig,
    id: &str,
    child: &mut tokio::process::Child,
) -> std::io::Result<std::process::ExitStatus> {
    let started = Instant::now();
    eprintln!(
        "sealroom-workload: stopping the container (the VM is powering off): SIGTERM, SIGKILL after {} ms",
        STOP_GRACE.as_millis()
    );
    crun_kill(cfg, id, "TERM").await;
    if let Ok(status) = tokio::time::timeout(STOP_GRACE.saturating_sub(started.elapsed()), child.wait()).await
    {
        eprintln!(
            "sealroom-workload: the container ended {} ms after SIGTERM",
            started.elapsed().as_millis()
        );
        return status;
    }
    eprintln!("sealroom-workload: the container did not end within {} ms: SIGKILL", STOP_GRACE.as_millis());
    crun_kill(cfg, id, "KILL").await;
    if let Ok(status) = tokio::time::timeout(AFTER_KILL_WAIT, child.wait()).await {
        return status;
    }
    eprintln!(
        "sealroom-workload: {} did not end after SIGKILL to the container; killing it",
        cfg.program.display()
    );
    child.start_kill()?;
    child.wait().await
}

/// Runs the bundle until it exits for good under `restart`.
///
/// # Errors
/// When the runtime cannot be started at all.
pub async fn run(
    cfg: &RuntimeConfig,
    bundle: &Path,
    id: &str,
    restart: RestartPolicy,
    forward_logs: bool,
) -> Result<RunResult> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(|e| err(format!("{}: {e}", cfg.state_dir.display())))?;
    if let Some(root) = &cfg.cgroup_root {
        prepare_cgroups(root)?;
    }
    if cfg.stop.is_raised() {
        return Err(err("not started: the VM is powering off"));
    }
    let mut runs = 0u32;
    loop {
        runs += 1;
        eprintln!("sealroom-workload: starting the container (run {runs})");
        let kills_before = read_oom_kills(cfg.cgroup_root.as_deref());
        let RunEnd { code, stopped } = run_once(cfg, bundle, id, forward_logs).await?;
        let oom_killed = !stopped
            && code == KILLED_BY_SIGKILL
            && read_oom_kills(cfg.cgroup_root.as_deref()) > kills_before;
        if stopped {
            eprintln!(
                "sealroom-workload: the container was stopped for power-off (exit code {code}); no restart"
            );
            return Ok(RunResult { exit_code: code, runs, oom_killed, stopped });
        }
        if oom_killed {
            eprintln!(
                "sealroom-workload: the container exited with code {code}: killed by the kernel's OOM killer \
                 (it exceeded its memory limit)"
            );
        } else {
            eprintln!("sealroom-workload: the container exited with code {code}");
        }
        let again = match restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure(max) => code != 0 && runs <= max,
        };
        if !again || cfg.stop.is_raised() {
            return Ok(RunResult { exit_code: code, runs, oom_killed, stopped: cfg.stop.is_raised() });
        }
        eprintln!(
            "sealroom-workload: restart policy {}: restarting ({runs} of {})",
            restart.as_text(),
            match restart {
                RestartPolicy::OnFailure(m) => m,
                RestartPolicy::Never => 0,
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kills_are_read_from_memory_events() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(oom_kills(events), 2);
        assert_eq!(oom_kills("low 0\n"), 0);
        assert_eq!(oom_kills("oom_kill x\n"), 0);
    }

    #[test]
    fn the_guest_runtime_manages_the_workload_cgroup_and_the_host_one_does_not() {
        let guest = RuntimeConfig::guest(Path::new("/run/x"));
        assert_eq!(guest.global_args, ["--cgroup-manager=cgroupfs"]);
        assert_eq!(guest.cgroup_root.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert_eq!(parent_cgroup(Path::new("/sys/fs/cgroup")), Path::new("/sys/fs/cgroup/sealroom"));
        let host = RuntimeConfig::crun(Path::new("/run/x"));
        assert_eq!(host.cgroup_root, None);
    }
}
