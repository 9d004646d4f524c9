//! A real TPM 2.0 for tests: one `swtpm socket` process per test, on free loopback ports, with its own state
//! directory, stopped by PID when dropped. [`EkCa`] is a TPM manufacturer's CA for tests: `swtpm_setup
//! --create-ek-cert` with swtpm-localca writes an EK certificate it issued into the TPM's NV, as a real TPM
//! vendor does, so verifiers trust the TPM through its EK certificate instead of on first use.
//!
//! swtpm has no resource manager: the code under test must flush its transient handles.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A running swtpm. Dropping it kills the process (by its PID) and removes its state directory.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    port: u16,
    state_dir: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Why swtpm could not be started.
#[derive(Debug)]
pub struct SwtpmError(pub String);

impl std::fmt::Display for SwtpmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "swtpm: {}", self.0)
    }
}

impl std::error::Error for SwtpmError {}

/// Two consecutive free TCP ports (server, control) on loopback.
fn free_port_pair() -> Option<u16> {
    for _ in 0..64 {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
        let port = l.local_addr().ok()?.port();
        let Some(next) = port.checked_add(1) else { continue };
        if TcpListener::bind((Ipv4Addr::LOCALHOST, next)).is_ok() {
            return Some(port);
        }
    }
    None
}

/// A fresh, unique, absolute directory under the system temp dir.
#[must_use]
pub fn unique_temp_dir(tag: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("sealroom-{tag}-{}-{n}-{nanos}", std::process::id()))
}

/// A local EK CA (swtpm-localca: a self-signed root and an intermediate that signs EK certificates), in its own
/// directory, removed when dropped. Created by manufacturing one scratch TPM, so the CA exists before any TPM a
/// test uses (a verifier can be configured with it first).
#[derive(Debug)]
pub struct EkCa {
    dir: PathBuf,
}

fn run_quiet(cmd: &mut Command, what: &str) -> Result<(), SwtpmError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SwtpmError(format!("cannot run {what} (swtpm-tools installed by ci/setup?): {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SwtpmError(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl EkCa {
    /// Creates the CA in a fresh directory under the system temp dir.
    ///
    /// # Errors
    /// When swtpm_setup or swtpm_localca (certtool) fails.
    pub fn create() -> Result<Self, SwtpmError> {
        Self::create_in(&unique_temp_dir("ekca"))
    }

    /// Creates the CA in `dir` (absolute; created if missing).
    ///
    /// # Errors
    /// As [`EkCa::create`].
    pub fn create_in(dir: &Path) -> Result<Self, SwtpmError> {
        let ca = Self { dir: dir.to_path_buf() };
        let io = |e: std::io::Error| SwtpmError(format!("EK CA dir {}: {e}", dir.display()));
        std::fs::create_dir_all(ca.dir.join("ca")).map_err(io)?;
        let ca_dir = ca.dir.join("ca");
        std::fs::write(
            ca.dir.join("localca.conf"),
            format!(
                "statedir = {d}\nsigningkey = {d}/signkey.pem\nissuercert = {d}/issuercert.pem\n\
                 certserial = {d}/certserial\n",
                d = ca_dir.display()
            ),
        )
        .map_err(io)?;
        std::fs::write(
            ca.dir.join("localca.options"),
            "--platform-manufacturer sealroom\n--platform-version 2.1\n--platform-model swtpm\n",
        )
        .map_err(io)?;
        std::fs::write(
            ca.dir.join("swtpm_setup.conf"),
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\n\
                 create_certs_tool_options = {}\nactive_pcr_banks = sha256\n",
                ca.dir.join("localca.conf").display(),
                ca.dir.join("localca.options").display()
            ),
        )
        .map_err(io)?;
        let scratch = ca.dir.join("scratch-tpm");
        std::fs::create_dir_all(&scratch).map_err(io)?;
        ca.manufacture(&scratch)?;
        let _ = std::fs::remove_dir_all(&scratch);
        if !ca.root_pem().exists() || !ca.issuer_pem().exists() {
            return Err(SwtpmError(format!("swtpm_localca created no CA in {}", ca_dir.display())));
        }
        Ok(ca)
    }

    /// Manufactures a TPM in `state_dir`: RSA 2048 and ECC EKs, each with an EK certificate this CA issued in
    /// NV (0x01c00002 for RSA), the SHA-256 PCR bank active.
    ///
    /// # Errors
    /// When swtpm_setup fails.
    pub fn manufacture(&self, state_dir: &Path) -> Result<(), SwtpmError> {
        run_quiet(
            Command::new("swtpm_setup")
                .args(["--tpm2", "--create-ek-cert", "--overwrite", "--config"])
                .arg(self.dir.join("swtpm_setup.conf"))
                .arg("--tpmstate")
                .arg(state_dir),
            "swtpm_setup --create-ek-cert",
        )
    }

    /// The self-signed root certificate (PEM).
    #[must_use]
    pub fn root_pem(&self) -> PathBuf {
        self.dir.join("ca/swtpm-localca-rootca-cert.pem")
    }

    /// The intermediate that signs EK certificates (PEM).
    #[must_use]
    pub fn issuer_pem(&self) -> PathBuf {
        self.dir.join("ca/issuercert.pem")
    }

    /// Root and intermediate as one PEM bundle, written next to them: what a verifier's `--tpm-ek-ca` takes
    /// (TPMs do not carry the intermediate).
    ///
    /// # Errors
    /// When the files cannot be read or written.
    pub fn bundle_pem(&self) -> Result<PathBuf, SwtpmError> {
        let io = |e: std::io::Error| SwtpmError(format!("EK CA bundle: {e}"));
        let mut bundle = std::fs::read(self.issuer_pem()).map_err(io)?;
        bundle.extend(std::fs::read(self.root_pem()).map_err(io)?);
        let path = self.dir.join("ek-ca-bundle.pem");
        std::fs::write(&path, bundle).map_err(io)?;
        Ok(path)
    }

    /// The CA's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for EkCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Swtpm {
    /// Starts a TPM manufactured by `ca`: its EK certificates in NV were issued by that CA.
    ///
    /// # Errors
    /// As [`Swtpm::start`], or when manufacturing fails.
    pub fn start_with_ek_cert(ca: &EkCa) -> Result<Self, SwtpmError> {
        let state_dir = unique_temp_dir("swtpm");
        std::fs::create_dir_all(&state_dir).map_err(|e| SwtpmError(format!("state dir: {e}")))?;
        if let Err(e) = ca.manufacture(&state_dir) {
            let _ = std::fs::remove_dir_all(&state_dir);
            return Err(e);
        }
        Self::start_in(&state_dir)
    }

    /// Starts a fresh swtpm (new state: a newly manufactured TPM) and waits until its port accepts connections.
    ///
    /// # Errors
    /// When swtpm is not installed (run `ci/setup`) or does not come up within 10 s.
    pub fn start() -> Result<Self, SwtpmError> {
        let state_dir = unique_temp_dir("swtpm");
        std::fs::create_dir_all(&state_dir).map_err(|e| SwtpmError(format!("state dir: {e}")))?;
        Self::start_in(&state_dir)
    }

    /// Starts swtpm with the state in `state_dir` (absolute), e.g. to restart a TPM with its old state.
    ///
    /// # Errors
    /// As [`Swtpm::start`].
    pub fn start_in(state_dir: &Path) -> Result<Self, SwtpmError> {
        let mut last = String::from("no free port pair");
        for _ in 0..5 {
            let Some(port) = free_port_pair() else { continue };
            let ctrl = port.saturating_add(1);
            let child = Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
                .arg("--tpmstate")
                .arg(format!("dir={}", state_dir.display()))
                .arg("--flags")
                .arg("not-need-init,startup-clear")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| SwtpmError(format!("cannot run swtpm (installed by ci/setup?): {e}")))?;
            let mut tpm = Self { child, port, state_dir: state_dir.to_path_buf() };
            match tpm.wait_ready(Duration::from_secs(10)) {
                Ok(()) => return Ok(tpm),
                Err(e) => last = e,
            }
            // Dropping `tpm` kills this attempt; keep the state dir for the next one.
            tpm.state_dir = PathBuf::new();
        }
        Err(SwtpmError(last))
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited early with {status} (port {} taken?)", self.port));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(format!("port {} not ready after {limit:?}", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The command port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TCTI configuration string for tpm2-tss / tss-esapi.
    #[must_use]
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The state directory.
    #[must_use]
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        // Kill exactly our own child by PID, then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.state_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
}
