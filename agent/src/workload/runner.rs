//! Running the bundle with crun (an existing, audited OCI runtime; no namespaces are set up by hand here),
//! forwarding its output to the console and applying the restart policy.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::spec::RestartPolicy;
use crate::error::{Error, Result};

const STAGE: &str = "runtime";
/// Prefix of every workload output line on the console.
pub const OUTPUT_PREFIX: &str = "workload| ";

fn err(reason: impl Into<String>) -> Error {
    Error::workload(STAGE, reason)
}

/// How to invoke the OCI runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl RuntimeConfig {
    /// crun from PATH with its state in `state_dir` and no cgroup management (the VM is the workload's
    /// resource boundary; the agent has no cgroup hierarchy to delegate).
    #[must_use]
    pub fn crun(state_dir: &Path) -> Self {
        Self {
            program: PathBuf::from("crun"),
            global_args: vec!["--cgroup-manager=disabled".into()],
            state_dir: state_dir.to_path_buf(),
            run_args: Vec::new(),
        }
    }

    /// crun as installed in the guest image (`/usr/bin/crun`), with `--no-pivot` when `/` is the initramfs.
    #[must_use]
    pub fn guest(state_dir: &Path) -> Self {
        let mut c = Self::crun(state_dir);
        c.program = PathBuf::from("/usr/bin/crun");
        if root_is_initramfs() {
            c.run_args.push("--no-pivot".into());
        }
        c
    }
}

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

async fn run_once(cfg: &RuntimeConfig, bundle: &Path, id: &str, forward_logs: bool) -> Result<i32> {
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
    let status =
        child.wait().await.map_err(|e| err(format!("waiting for {}: {e}", cfg.program.display())))?;
    for t in [fwd_out, fwd_err].into_iter().flatten() {
        let _ = t.await;
    }
    // crun's own diagnostics (not the workload's output) go to its log file: always show them.
    if let Ok(text) = std::fs::read_to_string(&log) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            eprintln!("sealroom-workload: crun: {line}");
        }
    }
    Ok(status.code().unwrap_or(-1))
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
    let mut runs = 0u32;
    loop {
        runs += 1;
        eprintln!("sealroom-workload: starting the container (run {runs})");
        let code = run_once(cfg, bundle, id, forward_logs).await?;
        eprintln!("sealroom-workload: the container exited with code {code}");
        let again = match restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure(max) => code != 0 && runs <= max,
        };
        if !again {
            return Ok(RunResult { exit_code: code, runs });
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
