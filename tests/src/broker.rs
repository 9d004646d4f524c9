//! The real `sealroom broker serve` process for end-to-end tests, and the `sealroom` binary of this build.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

/// The `sealroom` binary of this build: `cargo test/nextest --workspace` builds it in the directory above the
/// test executable's `deps/`.
///
/// # Panics
/// When the binary is missing (build the workspace first).
#[must_use]
#[allow(clippy::unwrap_used, clippy::panic)]
pub fn sealroom() -> Command {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("sealroom");
    assert!(bin.exists(), "{} missing: build the workspace (cargo build --workspace) first", bin.display());
    Command::new(bin)
}

/// Runs a `sealroom` command and returns stdout + stderr, or both as the error when it exits non-zero.
///
/// # Errors
/// When the command cannot run or fails.
pub fn run_sealroom(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(text) } else { Err(format!("{cmd:?} failed ({}): {text}", out.status)) }
}

/// A running `sealroom broker serve`, killed by PID (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    /// `host:port` of the gRPC service, as the broker printed it.
    pub addr: String,
    /// The state directory (keys.redb, audit.log, signing-key.jwk.json, admin.sock).
    pub state_dir: PathBuf,
    /// Kept open so the broker never writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl BrokerProcess {
    /// Starts `sealroom broker serve --listen 127.0.0.1:0 --state-dir STATE --kek KEK EXTRA…` and reads the
    /// bound address from its first stdout line.
    ///
    /// # Errors
    /// When the process cannot start or does not announce its address.
    pub fn start(state_dir: &Path, kek: &Path, extra: &[&std::ffi::OsStr]) -> Result<Self, String> {
        let mut child = sealroom()
            .args(["broker", "serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state_dir)
            .arg("--kek")
            .arg(kek)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("sealroom broker serve: {e}"))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("no stdout".into());
        };
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let addr = line.trim().strip_prefix("sealroom broker listening on ").map(str::to_owned);
        match (read, addr) {
            (Ok(_), Some(addr)) => {
                Ok(Self { child, addr, state_dir: state_dir.to_path_buf(), _stdout: stdout })
            }
            (r, _) => {
                let _ = child.kill();
                let status = child.wait();
                Err(format!("broker did not start: first line {line:?} ({r:?}), exit {status:?}"))
            }
        }
    }

    /// `http://host:port`, as the agent is configured with it.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The audit log's path.
    #[must_use]
    pub fn audit_log(&self) -> PathBuf {
        self.state_dir.join("audit.log")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
