//! The operator's side of a run: the spec disk, booting the image with its disks, following the console,
//! the provider's enrolment of the VM's TPM key.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sealroom_tests::vm::Vm;

use crate::common::{sealroom_output, sha256_hex, write};

pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
pub const RUN_TIMEOUT: Duration = Duration::from_secs(900);
pub const OUTPUT_SERIAL: &str = "sealroom-output";
const OUTPUT_DISK_BYTES: u64 = 16 << 20;
pub const REFUSAL_MARKER: &str = "sealroom-workload: REFUSED/FAILED:";
pub const RECEIPT_WRITTEN: &str = "sealroom-workload: receipt: result (";

/// One extra disk: its virtio serial (what the spec's `serial:` names), file, and whether the guest may write.
pub struct Disk {
    pub serial: String,
    pub file: PathBuf,
    pub writable: bool,
}

impl Disk {
    pub fn data(serial: &str, file: &Path) -> Self {
        Self { serial: serial.to_owned(), file: file.to_path_buf(), writable: false }
    }

    /// A zero-filled (sparse) output disk of OUTPUT_DISK_BYTES at `file`, for the agent's result tar.
    pub fn blank_output(file: &Path) -> Result<Self> {
        std::fs::File::create(file)?.set_len(OUTPUT_DISK_BYTES)?;
        Ok(Self { serial: OUTPUT_SERIAL.to_owned(), file: file.to_path_buf(), writable: true })
    }
}

/// Writes the operator's spec (JSON next to it too) onto `dir/TAG-spec.img` and boots the image with the spec
/// disk and `disks`.
pub fn boot(image: &Path, dir: &Path, tag: &str, spec: &serde_json::Value, disks: &[Disk]) -> Result<Vm> {
    let spec_path = dir.join(format!("{tag}-spec.img"));
    let mut bytes = serde_json::to_vec(spec)?;
    bytes.resize(bytes.len().div_ceil(4096) * 4096, 0);
    write(&spec_path, bytes)?;
    write(&dir.join(format!("{tag}-spec.json")), serde_json::to_string_pretty(spec)?)?;
    // PCI slots after the boot disk, so that OVMF does not try to boot from these disks first.
    let all = std::iter::once(Disk { serial: "sealroom-workload".into(), file: spec_path, writable: false })
        .chain(disks.iter().map(|d| Disk {
            serial: d.serial.clone(),
            file: d.file.clone(),
            writable: d.writable,
        }));
    let mut extra = Vec::new();
    for (i, d) in all.enumerate() {
        let ro = if d.writable { "" } else { ",readonly=on" };
        extra.extend([
            "-drive".to_owned(),
            format!("if=none,id=d{i},format=raw{ro},file={}", d.file.display()),
            "-device".to_owned(),
            format!("virtio-blk-pci,drive=d{i},serial={},addr={:#x}", d.serial, 0x10 + i),
        ]);
    }
    Vm::boot(image, &format!("demo-{tag}"), &extra).map_err(anyhow::Error::msg)
}

/// Prints the VM's new `sealroom-workload:` and job console lines since `seen` lines.
pub fn echo_console(vm: &Vm, tag: &str, seen: &mut usize) {
    let text = vm.serial_text();
    let lines: Vec<&str> = text.lines().collect();
    for line in lines.iter().skip(*seen) {
        let line = line.trim_end_matches('\r');
        if line.contains("sealroom-workload:")
            || line.contains("workload|")
            || line.contains("sealroom-init: power")
        {
            println!("         {tag}| {}", line.trim());
        }
    }
    *seen = lines.len().max(*seen);
}

/// A VM being followed: its console lines are echoed once each.
pub struct Followed {
    pub vm: Vm,
    pub tag: String,
    seen: usize,
}

impl Followed {
    pub fn new(vm: Vm, tag: &str) -> Self {
        Self { vm, tag: tag.to_owned(), seen: 0 }
    }

    /// Waits for `marker` while echoing the console; fails at once when `failure` appears first (its line is
    /// the error), on a kernel panic or when QEMU exits. On failure, shows the console's end.
    pub fn until(&mut self, marker: &str, failure: Option<&str>, timeout: Duration) -> Result<()> {
        let r = self.until_inner(marker, failure, timeout);
        if r.is_err() {
            let text = self.vm.serial_text();
            let lines: Vec<&str> = text.lines().collect();
            println!("[demo]   --- last console lines of {} ---", self.tag);
            for l in lines.iter().skip(lines.len().saturating_sub(40)) {
                println!("         {}| {}", self.tag, l.trim_end());
            }
        }
        r
    }

    fn until_inner(&mut self, marker: &str, failure: Option<&str>, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            echo_console(&self.vm, &self.tag, &mut self.seen);
            match self.vm.wait_for(marker, Duration::from_millis(500)) {
                Ok(_) => {
                    echo_console(&self.vm, &self.tag, &mut self.seen);
                    return Ok(());
                }
                Err(e) if !e.starts_with("no ") => bail!("{e}"),
                Err(_) if Instant::now() > deadline => {
                    bail!("no {marker:?} on the console within {timeout:?}")
                }
                Err(_) => {}
            }
            if let Some(f) = failure {
                let text = self.vm.serial_text();
                if let Some(line) = text.lines().find(|l| l.contains(f)) {
                    echo_console(&self.vm, &self.tag, &mut self.seen);
                    bail!("{}", line.trim());
                }
            }
        }
    }

    /// Waits until the agent serves (fails on an early refusal).
    pub fn serving(&mut self) -> Result<()> {
        self.until(sealroom_tests::vm::SERVING_MARKER, Some(REFUSAL_MARKER), BOOT_TIMEOUT)?;
        println!(
            "[demo]   agent serving {:.1} s after QEMU started",
            self.vm.started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Waits for the receipt line, then for the VM to power off; fails on any refusal line.
    pub fn until_result(&mut self) -> Result<()> {
        self.until(RECEIPT_WRITTEN, Some("REFUSED/FAILED"), RUN_TIMEOUT)?;
        if let Some(line) = self.vm.serial_text().lines().find(|l| l.contains("REFUSED/FAILED")) {
            bail!("{}", line.trim());
        }
        self.vm.wait_for_exit(Duration::from_secs(120)).map_err(anyhow::Error::msg)?;
        echo_console(&self.vm, &self.tag, &mut self.seen);
        println!(
            "[demo]   VM powered off {:.1} s after QEMU started",
            self.vm.started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Waits for the refusal line (fails if the job ends first) and returns it.
    pub fn until_refused(&mut self) -> Result<String> {
        self.until(REFUSAL_MARKER, Some("workload ended"), RUN_TIMEOUT)?;
        let text = self.vm.serial_text();
        Ok(text.lines().find(|l| l.contains(REFUSAL_MARKER)).map(|l| l.trim().to_owned()).unwrap_or_default())
    }

    /// Saves the console to `path`.
    pub fn save_console(&self, path: &Path) -> Result<()> {
        write(path, self.vm.serial_text())
    }
}

/// The VM's TPM attestation key as its EK proves it, never as the VM presents it (docs/tpm-ek.md): `sealroom
/// attest --tpm-ek-ca` checks the TPM's EK certificate against the CA that manufactured the VM's swtpm
/// ([`Vm::ek_ca_bundle`]) and has the TPM activate a credential for its AK; only then is the AK written to
/// `path`, for offline checks of the VM's evidence later (`--tpm-ak`). That CA is copied next to it
/// ([`ek_ca_of`]): the providers' brokers trust the VM's TPM through it (`--tpm-ek-ca`), not through the AK.
pub fn enrol(vm: &Vm, path: &Path) -> Result<()> {
    let url = vm.agent_url();
    let (ok, out) = sealroom_output(&[
        "attest".as_ref(),
        "--agent".as_ref(),
        url.as_ref(),
        "--skip".as_ref(),
        "firmware,kernel,workload".as_ref(),
        "--timeout".as_ref(),
        "120".as_ref(),
        "--tpm-ek-ca".as_ref(),
        vm.ek_ca_bundle().as_os_str(),
        "--tpm-ak-out".as_ref(),
        path.as_os_str(),
        "--json".as_ref(),
    ])?;
    ensure!(ok && path.exists(), "sealroom attest --tpm-ek-ca did not prove the VM's AK: {out}");
    ensure!(out.contains("ek-certified ak"), "the attestation does not name the EK-certified AK: {out}");
    std::fs::copy(vm.ek_ca_bundle(), ek_ca_of(path))
        .with_context(|| format!("copying {}", vm.ek_ca_bundle().display()))?;
    let ak = std::fs::read(path)?;
    println!(
        "[demo]   AK proved by EK credential activation (EK CA of this VM's TPM): sha256 {}",
        sha256_hex(&ak)
    );
    Ok(())
}

/// Where [`enrol`] keeps the EK CA of the VM whose AK it wrote to `ak`.
#[must_use]
pub fn ek_ca_of(ak: &Path) -> PathBuf {
    ak.with_extension("ek-ca.pem")
}
