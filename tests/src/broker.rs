//! The real `sealroom broker serve` process for end-to-end tests, the provider's side set up with the CLI
//! (KEK, policies, `sealroom broker keys add`, `sealroom audit verify`), and the `sealroom` binary of this build.
//! Also: any `KeyBroker` service (the real one in process, or an attacker's) served on loopback.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use sealroom_proto::keybroker::v1::key_broker_server::{KeyBroker, KeyBrokerServer};

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
    /// `host:port` of the JWKS and discovery documents, as the broker printed it (with `--http-listen`).
    pub http_addr: Option<String>,
    /// The state directory (keys.redb, audit.log, signing-key.jwk.json, admin.sock).
    pub state_dir: PathBuf,
    /// Kept open so the broker never writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl BrokerProcess {
    /// Starts `sealroom broker serve --listen 127.0.0.1:0 --state-dir STATE --kek KEK EXTRA…` and reads the
    /// bound address from its first stdout line (and with `--http-listen` in `extra`, the JWKS address from
    /// the second: pass port 0 rather than a port picked beforehand, which another test may take first).
    ///
    /// # Errors
    /// When the process cannot start or does not announce its address.
    pub fn start(state_dir: &Path, kek: &Path, extra: &[&std::ffi::OsStr]) -> Result<Self, String> {
        Self::start_on("127.0.0.1:0", state_dir, kek, extra)
    }

    /// [`BrokerProcess::start`] on a given `--listen` address, e.g. a port a VM's spec named before the broker
    /// could start.
    ///
    /// # Errors
    /// When the process cannot start or does not announce its address.
    pub fn start_on(
        listen: &str,
        state_dir: &Path,
        kek: &Path,
        extra: &[&std::ffi::OsStr],
    ) -> Result<Self, String> {
        let mut child = sealroom()
            .args(["broker", "serve", "--listen", listen, "--state-dir"])
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
        let wants_http = extra.iter().any(|a| *a == "--http-listen");
        let mut http_line = String::new();
        let http_addr = match (&addr, wants_http) {
            (Some(_), true) => {
                let _ = stdout.read_line(&mut http_line);
                match http_line.trim().strip_prefix("sealroom broker publishing keys on ") {
                    Some(a) => Some(a.to_owned()),
                    None => {
                        let _ = child.kill();
                        let status = child.wait();
                        return Err(format!(
                            "broker did not announce its JWKS address: {http_line:?}, exit {status:?}"
                        ));
                    }
                }
            }
            _ => None,
        };
        match (read, addr) {
            (Ok(_), Some(addr)) => {
                Ok(Self { child, addr, http_addr, state_dir: state_dir.to_path_buf(), _stdout: stdout })
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

    /// Kills the process with SIGKILL (`kill -9`: no cleanup, no flush) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The audit log's path.
    #[must_use]
    pub fn audit_log(&self) -> PathBuf {
        self.state_dir.join("audit.log")
    }
    /// The broker's key id (the `kid` of the JWK it wrote): what a workload spec pins as `broker_key`.
    ///
    /// # Errors
    /// When the JWK file is missing or has no `kid`.
    pub fn key_id(&self) -> Result<String, String> {
        key_id(&self.state_dir)
    }
}

/// The key id of the broker whose state directory is `state_dir`, from its `signing-key.jwk.json`.
///
/// # Errors
/// When the JWK file is missing or has no `kid`.
pub fn key_id(state_dir: &Path) -> Result<String, String> {
    let path = state_dir.join("signing-key.jwk.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let jwk: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    jwk.get("kid")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("{}: no kid", path.display()))
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A key policy (TOML) for TPM platforms with TCB checks skipped and debugging forbidden, pinning the
/// workload's image digest, args and env patterns; `golden` is `Some((document digest, signer))` to pin the
/// boot state to a signed golden document, or `None` for `golden = "skip"`.
#[must_use]
pub fn tpm_policy(image_digest: &str, args: &[&str], env: &[&str], golden: Option<(&str, &str)>) -> String {
    // JSON string arrays are TOML string arrays (the same escapes for what these tests pass).
    let toml_array = |items: &[&str]| serde_json::to_string(items).unwrap_or_default();
    let golden = golden.map_or_else(
        || "\"skip\"".to_owned(),
        |(document, signer)| format!("{{ signers = [\"{signer}\"], documents = [\"{document}\"] }}"),
    );
    format!(
        "version = 1\nplatforms = [\"tpm\"]\ntcb_statuses = \"skip\"\nminimum_tcb = \"skip\"\ndebug = \"forbidden\"\n\
         golden = {golden}\nimage_digests = [\"{image_digest}\"]\nargs = {}\nenv = {}\n",
        toml_array(args),
        toml_array(env)
    )
}

/// The data provider's side of a broker, set up with the CLI as a provider does: a KEK file and a state
/// directory in `dir`, keys added with `sealroom broker keys add`, `sealroom broker serve` over that state,
/// and `sealroom audit verify` of its audit log afterwards.
#[derive(Debug)]
pub struct Provider {
    dir: PathBuf,
    /// The key-encryption key file (hex, mode 0600).
    pub kek: PathBuf,
    /// The broker's state directory (`--state-dir`).
    pub state: PathBuf,
}

impl Provider {
    /// Writes a KEK to `dir/kek` (the directory is created); the state directory is `dir/state`.
    ///
    /// # Errors
    /// When the files cannot be written.
    pub fn new(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let kek = dir.join("kek");
        std::fs::write(&kek, hex::encode([0x2a; 32]))
            .and_then(|()| {
                std::fs::set_permissions(&kek, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            })
            .map_err(|e| format!("{}: {e}", kek.display()))?;
        Ok(Self { dir: dir.to_path_buf(), kek, state: dir.join("state") })
    }

    /// `sealroom broker keys add --id ID --owner OWNER --policy P --material-file M`, the policy and the key
    /// material written to files in the provider's directory first; returns the command's output.
    ///
    /// # Errors
    /// When a file cannot be written or the command fails.
    pub fn add_key(
        &self,
        id: &str,
        owner: &str,
        policy_toml: &str,
        material: &[u8],
    ) -> Result<String, String> {
        let stem: String = id.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        let policy = self.dir.join(format!("{stem}.policy.toml"));
        let material_file = self.dir.join(format!("{stem}.material"));
        std::fs::write(&policy, policy_toml).map_err(|e| format!("{}: {e}", policy.display()))?;
        std::fs::write(&material_file, material).map_err(|e| format!("{}: {e}", material_file.display()))?;
        run_sealroom(
            sealroom()
                .args(["broker", "keys", "add", "--id", id, "--owner", owner, "--policy"])
                .arg(&policy)
                .arg("--material-file")
                .arg(&material_file)
                .arg("--state-dir")
                .arg(&self.state)
                .arg("--kek")
                .arg(&self.kek),
        )
    }

    /// `sealroom broker key-id`: the id of the broker's signing key (created now if the broker never ran), which
    /// the operator's workload spec pins as `broker_key` before the VM boots.
    ///
    /// # Errors
    /// When the command fails.
    pub fn key_id(&self) -> Result<String, String> {
        run_sealroom(sealroom().args(["broker", "key-id", "--state-dir"]).arg(&self.state))
            .map(|s| s.trim().to_owned())
    }

    /// `sealroom broker serve --listen LISTEN` over this provider's state and KEK, with `extra` arguments
    /// (`--tpm-ak`, `--golden`, …); `127.0.0.1:0` picks a free port.
    ///
    /// # Errors
    /// When the broker does not start.
    pub fn serve(&self, listen: &str, extra: &[&std::ffi::OsStr]) -> Result<BrokerProcess, String> {
        BrokerProcess::start_on(listen, &self.state, &self.kek, extra)
    }

    /// The broker's audit log.
    #[must_use]
    pub fn audit_log(&self) -> PathBuf {
        self.state.join("audit.log")
    }

    /// `sealroom audit verify` of the audit log (after the broker stopped); returns its output, which says
    /// `audit log ok: N records`.
    ///
    /// # Errors
    /// When the command fails (a broken chain, a bad signature, no log) or does not say the log is ok.
    pub fn verify_audit(&self) -> Result<String, String> {
        let out = run_sealroom(sealroom().args(["audit", "verify"]).arg(self.audit_log()))?;
        if out.contains("audit log ok") { Ok(out) } else { Err(format!("sealroom audit verify: {out}")) }
    }
}

/// Serves `svc` (the real broker's `KeyBrokerService` in process, or a fake or man-in-the-middle one) over gRPC
/// on `127.0.0.1:<free port>` in a background task; returns the bound address.
///
/// # Panics
/// When no loopback port can be bound.
#[allow(clippy::panic)]
pub async fn serve_key_broker<S: KeyBroker>(svc: KeyBrokerServer<S>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("local address: {e}"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// xorshift64*: a seeded, reproducible schedule of the points at which a crash test kills a broker process, so a
/// failure can be replayed with the same seed.
#[derive(Debug)]
pub struct KillSchedule(pub u64);

impl KillSchedule {
    /// The next point, in `0..below`.
    pub fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % below
    }
}
