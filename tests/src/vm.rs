//! Boots the built guest image under QEMU (always TCG: the /dev/kvm on our machines opens but cannot run
//! guests) with OVMF and a swtpm, user networking forwarding a host port to the agent's gRPC port, the serial
//! console in a file and a QMP socket for the ACPI power button. QEMU and swtpm are killed by PID and their
//! directory removed on drop; a failing test prints the serial console.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sealroom_proto::attestation::v1::attestation_client::AttestationClient;
use sealroom_proto::attestation::v1::{Evidence, GetEvidenceRequest};

/// OVMF firmware code (Debian's `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF variable store template (copied per VM).
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The agent's gRPC port in the guest.
pub const AGENT_PORT: u16 = 7443;
/// Printed by PID 1 once it has started the agent.
pub const READY_MARKER: &str = "sealroom-init: ready";
/// Printed by the agent child once its gRPC server listens.
pub const SERVING_MARKER: &str = "sealroom-agent: serving attestation on tcp";
/// Printed by PID 1 right before it powers off.
pub const POWEROFF_MARKER: &str = "sealroom-init: powering off";

/// The built image's output directory: `$SEALROOM_IMAGE_DIR`, else `target/image/out` (what `ci/image` writes).
#[must_use]
pub fn image_dir() -> PathBuf {
    std::env::var_os("SEALROOM_IMAGE_DIR")
        .map_or_else(|| crate::repo_root().join("target/image/out"), PathBuf::from)
}

/// A free loopback TCP port (a tiny window remains in which another process may take it).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

/// Runs `cmd` and returns its stdout, or an error naming the command and its stderr.
///
/// # Errors
/// When it cannot start or exits non-zero.
pub fn run_checked(cmd: &mut Command) -> Result<Vec<u8>, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// 32 bytes from the kernel's CSPRNG: a fresh nonce for each evidence request.
///
/// # Errors
/// When /dev/urandom cannot be read.
pub fn fresh_nonce() -> Result<Vec<u8>, String> {
    let mut nonce = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut nonce))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(nonce)
}

/// `GetEvidence` with `nonce` from the agent at `url` (e.g. [`Vm::agent_url`]); checks that the evidence
/// echoes the nonce. The agent logs that it serves before QEMU's user networking forwards its first
/// connection, so connecting is retried for 30 s; the request itself may take 60 s (a TPM quote under TCG).
///
/// # Errors
/// No connection, a failed or timed-out request, no evidence, a nonce that is not echoed.
pub async fn get_evidence(url: &str, nonce: &[u8]) -> Result<Evidence, String> {
    let endpoint =
        tonic::transport::Channel::from_shared(url.to_owned()).map_err(|e| format!("{url}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = loop {
        match endpoint.connect().await {
            Ok(channel) => break AttestationClient::new(channel),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("cannot connect to the agent at {url}: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let request = GetEvidenceRequest { nonce: nonce.to_vec(), tee_public_key: Vec::new() };
    let reply = tokio::time::timeout(Duration::from_secs(60), client.get_evidence(request))
        .await
        .map_err(|_| format!("GetEvidence from {url} timed out after 60 s"))?
        .map_err(|e| format!("GetEvidence from {url} failed: {e}"))?;
    let evidence = reply.into_inner().evidence.ok_or("no evidence in the GetEvidence reply")?;
    if evidence.nonce != nonce {
        return Err("the evidence does not echo our nonce".into());
    }
    Ok(evidence)
}

/// A booted VM: QEMU and its swtpm.
#[derive(Debug)]
pub struct Vm {
    qemu: Child,
    swtpm: Child,
    dir: PathBuf,
    serial: PathBuf,
    qmp: PathBuf,
    /// The CA that issued this VM's TPM EK certificate, when the VM made its own (see [`Vm::boot`]).
    own_ek_ca: Option<crate::swtpm::EkCa>,
    /// Where the EK CA bundle (intermediate + root PEM) of this VM's TPM is.
    ek_ca_bundle: PathBuf,
    /// The host port forwarded to the agent's gRPC port.
    pub port: u16,
    /// When QEMU was started.
    pub started: Instant,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        let _ = self.swtpm.kill();
        let _ = self.swtpm.wait();
        if std::thread::panicking() {
            eprintln!("--- serial console of the failed VM ---\n{}", self.serial_text());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Vm {
    /// Boots `disk` (snapshot mode: the file is never written) with a fresh swtpm whose EK certificate comes from
    /// a new local EK CA of this VM's own ([`Vm::ek_ca_bundle`]); `extra` QEMU arguments are appended (e.g. a
    /// config disk).
    ///
    /// # Errors
    /// When swtpm or QEMU cannot start.
    pub fn boot(disk: &Path, tag: &str, extra: &[String]) -> Result<Self, String> {
        let dir = crate::swtpm::unique_temp_dir(tag);
        let ca = crate::swtpm::EkCa::create_in(&dir.join("ek-ca")).map_err(|e| e.to_string())?;
        Self::boot_in(dir, disk, extra, &ca).map(|mut vm| {
            vm.own_ek_ca = Some(ca);
            vm
        })
    }

    /// Like [`Vm::boot`], with the TPM manufactured by `ca` (a verifier configured with `ca` beforehand trusts the
    /// VM's TPM through its EK certificate).
    ///
    /// # Errors
    /// When swtpm or QEMU cannot start.
    pub fn boot_with_ek_ca(
        disk: &Path,
        tag: &str,
        extra: &[String],
        ca: &crate::swtpm::EkCa,
    ) -> Result<Self, String> {
        Self::boot_in(crate::swtpm::unique_temp_dir(tag), disk, extra, ca)
    }

    fn boot_in(dir: PathBuf, disk: &Path, extra: &[String], ca: &crate::swtpm::EkCa) -> Result<Self, String> {
        let tpm_state = dir.join("tpm");
        std::fs::create_dir_all(&tpm_state).map_err(|e| format!("{}: {e}", tpm_state.display()))?;
        ca.manufacture(&tpm_state).map_err(|e| e.to_string())?;
        let ek_ca_bundle = ca.bundle_pem().map_err(|e| e.to_string())?;
        let tpm_sock = dir.join("swtpm.sock");
        let mut swtpm = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", tpm_state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", tpm_sock.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("swtpm: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !tpm_sock.exists() {
            if Instant::now() > deadline {
                let _ = swtpm.kill();
                let _ = swtpm.wait();
                return Err(format!("swtpm did not create {}", tpm_sock.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let vars = dir.join("OVMF_VARS.fd");
        let serial = dir.join("serial.log");
        let qmp = dir.join("qmp.sock");
        let port = free_port()?;
        let spawned =
            std::fs::copy(OVMF_VARS, &vars).map_err(|e| format!("{OVMF_VARS}: {e}")).and_then(|_| {
                Command::new("qemu-system-x86_64")
                    // -nodefaults: no default CD-ROM, whose failed boot attempt would add events to PCR 4.
                    .args(["-nodefaults", "-accel", "tcg", "-machine", "q35", "-m", "1024", "-smp", "1"])
                    .args(["-no-reboot", "-display", "none", "-monitor", "none"])
                    .arg("-drive")
                    .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"))
                    .arg("-drive")
                    .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()))
                    .arg("-drive")
                    .arg(format!("file={},format=raw,if=virtio,snapshot=on", disk.display()))
                    .arg("-chardev")
                    .arg(format!("socket,id=chrtpm,path={}", tpm_sock.display()))
                    .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"])
                    .arg("-netdev")
                    .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:{AGENT_PORT}"))
                    .args(["-device", "virtio-net-pci,netdev=n0"])
                    .arg("-serial")
                    .arg(format!("file:{}", serial.display()))
                    .arg("-qmp")
                    .arg(format!("unix:{},server=on,wait=off", qmp.display()))
                    .args(extra)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|e| format!("qemu-system-x86_64: {e}"))
            });
        match spawned {
            Ok(qemu) => Ok(Self {
                qemu,
                swtpm,
                dir,
                serial,
                qmp,
                own_ek_ca: None,
                ek_ca_bundle,
                port,
                started: Instant::now(),
            }),
            Err(e) => {
                let _ = swtpm.kill();
                let _ = swtpm.wait();
                Err(e)
            }
        }
    }

    /// The PEM bundle (intermediate, root) of the CA that issued this VM's TPM EK certificate: what a verifier's
    /// `--tpm-ek-ca` takes.
    #[must_use]
    pub fn ek_ca_bundle(&self) -> &Path {
        &self.ek_ca_bundle
    }

    /// The VM's scratch directory (removed on drop).
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `http://127.0.0.1:PORT` of the agent's gRPC service.
    #[must_use]
    pub fn agent_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The serial console so far.
    #[must_use]
    pub fn serial_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits for `marker` on the serial console and returns the time since QEMU started; fails at once on a
    /// kernel panic or when QEMU exits.
    ///
    /// # Errors
    /// Timeout, kernel panic, QEMU exit.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.serial_text();
            if text.contains(marker) {
                return Ok(self.started.elapsed());
            }
            if text.contains("Kernel panic") {
                return Err(format!("kernel panic before {marker:?}"));
            }
            if let Ok(Some(status)) = self.qemu.try_wait() {
                return Err(format!("QEMU exited ({status}) before {marker:?}"));
            }
            if Instant::now() > deadline {
                return Err(format!("no {marker:?} on the serial console within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Presses the ACPI power button (QMP `system_powerdown`) and requires PID 1 to power off cleanly within
    /// 60 s.
    ///
    /// # Errors
    /// QMP failures, no power-off, an unclean one.
    pub fn power_off(&mut self) -> Result<(), String> {
        let mut qmp = UnixStream::connect(&self.qmp).map_err(|e| format!("qmp: {e}"))?;
        qmp.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| format!("qmp: {e}"))?;
        qmp.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"system_powerdown\"}\n")
            .map_err(|e| format!("qmp: {e}"))?;
        let mut buf = [0u8; 512];
        let _ = qmp.read(&mut buf);
        self.wait_for_exit(Duration::from_secs(60))?;
        let text = self.serial_text();
        if !text.contains("sealroom-init: power: power button pressed") {
            return Err("PID 1 did not see the power button".into());
        }
        Ok(())
    }

    /// Waits until QEMU exits by itself (the guest powered off) and requires a clean power-off by PID 1.
    ///
    /// # Errors
    /// No exit within `timeout`, a failing exit status, no power-off marker, a kernel panic.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.qemu.try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(status)) => return Err(format!("QEMU exit status {status}")),
                Ok(None) if Instant::now() > deadline => {
                    return Err(format!("the VM did not power off within {timeout:?}"));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return Err(format!("waiting for QEMU: {e}")),
            }
        }
        let text = self.serial_text();
        if !text.contains(POWEROFF_MARKER) {
            return Err("PID 1 did not power off cleanly".into());
        }
        if text.contains("Kernel panic") {
            return Err("kernel panic during power-off".into());
        }
        Ok(())
    }
}
