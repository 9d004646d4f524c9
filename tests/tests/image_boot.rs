//! Boots the built guest image (`ci/image` → `target/image/out/disk.raw`) under QEMU (TCG) + OVMF +
//! swtpm with user networking, asks the agent (PID 1's child) for evidence over gRPC with a fresh
//! nonce, and checks the measured boot: the UEFI event log replays to the quoted PCRs; PCR 4, 11 and
//! 12 equal `sealroom_measurements::uki::predict` (what the golden document holds); PCR 11 also
//! equals `systemd-measure calculate` over the UKI's sections; PCR 9's load-options event equals the
//! prediction. Then flips one byte of the UKI's command line, re-assembles the disk, boots it and
//! shows PCR 4, 9 and 11 no longer match the original's predictions. Each VM is powered off through
//! the ACPI power button and must power off cleanly.
//!
//! Always TCG: the /dev/kvm on our machines opens but cannot run guests, so KVM is never assumed.
//! Skipped (loudly) only when the image has not been built.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::missing_panics_doc,
    clippy::cast_possible_truncation
)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sealroom_measurements::evidence::HashAlg;
use sealroom_measurements::tcg2::Tcg2Log;
use sealroom_measurements::uki::{self as uki_prediction, BootContext};
use sealroom_proto::attestation::v1::attestation_client::AttestationClient;
use sealroom_proto::attestation::v1::{GetEvidenceRequest, HashAlgorithm, TpmEvidence};

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const AGENT_PORT: u16 = 7443;
/// Printed by the agent child once its gRPC server listens.
const SERVING_MARKER: &str = "sealroom-agent: serving attestation on tcp";
/// Printed by PID 1 right before it powers off.
const POWEROFF_MARKER: &str = "sealroom-init: powering off";
/// Normal boot to serving is ~20 s under TCG; generous for a loaded CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The kernel command line token the negative test changes (see image/mkosi/mkosi.conf).
const CMDLINE_TOKEN: &[u8] = b"sealroom.image=1";

fn image_dir() -> PathBuf {
    sealroom_tests::repo_root().join("target/image/out")
}

fn unique_dir(tag: &str) -> PathBuf {
    let dir = sealroom_tests::swtpm::unique_temp_dir(tag);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A booted VM: QEMU and its swtpm, both killed (by PID) and their directory removed on drop.
struct Vm {
    qemu: Child,
    swtpm: Child,
    dir: PathBuf,
    serial: PathBuf,
    qmp: PathBuf,
    port: u16,
    started: Instant,
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
    fn boot(disk: &Path, tag: &str) -> Self {
        let dir = unique_dir(tag);
        let tpm_state = dir.join("tpm");
        std::fs::create_dir_all(&tpm_state).unwrap();
        run(Command::new("swtpm_setup")
            .args(["--tpm2", "--create-ek-cert", "--overwrite", "--tpmstate"])
            .arg(&tpm_state));
        let tpm_sock = dir.join("swtpm.sock");
        let swtpm = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", tpm_state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", tpm_sock.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("swtpm");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !tpm_sock.exists() {
            assert!(Instant::now() < deadline, "swtpm did not create {}", tpm_sock.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars).unwrap();
        let serial = dir.join("serial.log");
        let qmp = dir.join("qmp.sock");
        let port = free_port();
        let started = Instant::now();
        let qemu = Command::new("qemu-system-x86_64")
            // -nodefaults: no default CD-ROM, whose failed boot attempt would add events to PCR 4.
            .args([
                "-nodefaults",
                "-accel",
                "tcg",
                "-machine",
                "q35",
                "-m",
                "1024",
                "-smp",
                "1",
                "-no-reboot",
            ])
            .args(["-display", "none", "-monitor", "none"])
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64");
        Self { qemu, swtpm, dir, serial, qmp, port, started }
    }

    fn serial_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits for `marker` on the serial console; fails at once on a kernel panic or QEMU exit.
    fn wait_for(&mut self, marker: &str, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.serial_text();
            if text.contains(marker) {
                return self.started.elapsed();
            }
            assert!(!text.contains("Kernel panic"), "kernel panic before {marker:?}");
            if let Some(status) = self.qemu.try_wait().unwrap() {
                panic!("QEMU exited ({status}) before {marker:?}");
            }
            assert!(Instant::now() < deadline, "no {marker:?} on the serial console within {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Presses the ACPI power button (QMP `system_powerdown`) and requires PID 1 to power off cleanly.
    fn power_off(mut self) {
        let mut qmp = UnixStream::connect(&self.qmp).unwrap();
        qmp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        qmp.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"system_powerdown\"}\n").unwrap();
        let mut buf = [0u8; 512];
        let _ = qmp.read(&mut buf);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.qemu.try_wait().unwrap() {
                assert!(status.success(), "QEMU exit status {status}");
                break;
            }
            assert!(Instant::now() < deadline, "the VM did not power off within 60 s of the power button");
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = self.serial_text();
        assert!(
            text.contains("sealroom-init: power: power button pressed"),
            "PID 1 did not see the power button"
        );
        assert!(text.contains(POWEROFF_MARKER), "PID 1 did not power off cleanly");
        assert!(!text.contains("Kernel panic"), "kernel panic during power-off");
    }

    /// GetEvidence with a fresh random nonce; returns the TPM evidence, checking the nonce echo.
    fn tpm_evidence(&self) -> TpmEvidence {
        let mut nonce = vec![0u8; 32];
        std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut nonce).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let evidence = rt.block_on(async {
            let url = format!("http://127.0.0.1:{}", self.port);
            // The server logs before user networking has forwarded its first connection: retry briefly.
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut client = loop {
                match tonic::transport::Channel::from_shared(url.clone()).unwrap().connect().await {
                    Ok(channel) => break AttestationClient::new(channel),
                    Err(e) => {
                        assert!(Instant::now() < deadline, "cannot connect to the agent at {url}: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            };
            let reply = tokio::time::timeout(
                Duration::from_secs(60),
                client.get_evidence(GetEvidenceRequest { nonce: nonce.clone(), tee_public_key: Vec::new() }),
            )
            .await
            .expect("GetEvidence timed out")
            .expect("GetEvidence failed");
            reply.into_inner().evidence.expect("no evidence in the reply")
        });
        assert_eq!(evidence.nonce, nonce, "the evidence does not echo our nonce");
        evidence.tpm.expect("no TPM evidence from a VM with a TPM")
    }
}

/// PCR values of the SHA-256 bank in the evidence.
fn sha256_bank(tpm: &TpmEvidence) -> BTreeMap<u32, Vec<u8>> {
    tpm.pcr_banks
        .iter()
        .find(|b| b.algorithm == HashAlgorithm::Sha256 as i32)
        .expect("no SHA-256 PCR bank in the evidence")
        .values
        .clone()
        .into_iter()
        .collect()
}

/// The host's predictions for one UKI: PCR 4, 9, 11 and 12 (SHA-256) from
/// `sealroom_measurements::uki::predict` (what the golden document holds), and PCR 11 a second time,
/// independently, from `systemd-measure calculate` over the UKI's sections.
struct Predicted {
    pcrs: BTreeMap<u32, Vec<u8>>,
    /// The kernel's `LOADED_IMAGE::LoadOptions` event (PCR 9): the command line systemd-stub passes.
    load_options_digest: String,
    pcr11_systemd_measure: Vec<u8>,
}

fn predict(uki: &Path, work: &Path) -> Predicted {
    let bytes = std::fs::read(uki).unwrap();
    let prediction = uki_prediction::predict(&bytes, &[HashAlg::Sha256], &BootContext::default()).unwrap();
    let pcr9 = prediction.register("pcr9", HashAlg::Sha256).unwrap();
    let load_options_digest = pcr9
        .events
        .iter()
        .find(|e| e.description == "LOADED_IMAGE::LoadOptions")
        .map(|e| e.digest.clone())
        .expect("predicted LoadOptions event");
    let mut pcrs = BTreeMap::new();
    for i in [4u32, 9, 11, 12] {
        let reg = prediction.register(&format!("pcr{i}"), HashAlg::Sha256).unwrap();
        assert!(reg.complete, "pcr{i} prediction incomplete");
        pcrs.insert(i, hex::decode(&reg.value).unwrap());
    }

    let sections = ["linux", "osrel", "cmdline", "initrd", "uname", "sbat"];
    let mut objcopy = Command::new("objcopy");
    for s in sections {
        objcopy.arg(format!("--dump-section=.{s}={}", work.join(s).display()));
    }
    run(objcopy.arg(uki).arg(work.join("uki.discard")));
    let mut measure = Command::new("/usr/lib/systemd/systemd-measure");
    // --phase= : the value right after systemd-stub, without systemd-pcrphase's boot-phase strings
    // (there is no systemd in this image to extend them).
    measure.args(["calculate", "--bank=sha256", "--phase=", "--json=short"]);
    for s in sections {
        measure.arg(format!("--{s}={}", work.join(s).display()));
    }
    let json: serde_json::Value = serde_json::from_slice(&run(&mut measure)).unwrap();
    let entries = json["sha256"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "systemd-measure: expected one PCR 11 value, got {json}");
    let pcr11_systemd_measure = hex::decode(entries[0]["hash"].as_str().unwrap()).unwrap();
    Predicted { pcrs, load_options_digest, pcr11_systemd_measure }
}

/// Boots `disk`, fetches evidence, checks the event log against the quoted PCRs and the host's
/// predictions for `uki`; returns the quoted SHA-256 PCRs.
fn boot_and_check(disk: &Path, uki: &Path, tag: &str) -> (BTreeMap<u32, Vec<u8>>, Predicted) {
    let work = unique_dir(&format!("{tag}-predict"));
    let predicted = predict(uki, &work);
    let mut vm = Vm::boot(disk, tag);
    let ready = vm.wait_for("sealroom-init: ready", BOOT_TIMEOUT);
    let serving = vm.wait_for(SERVING_MARKER, BOOT_TIMEOUT);
    eprintln!(
        "[{tag}] VM start → PID 1 ready {:.1} s, agent serving gRPC {:.1} s",
        ready.as_secs_f64(),
        serving.as_secs_f64()
    );
    let tpm = vm.tpm_evidence();
    eprintln!("[{tag}] evidence after {:.1} s", vm.started.elapsed().as_secs_f64());
    let pcrs = sha256_bank(&tpm);
    for i in [4u32, 9, 11, 12] {
        assert!(pcrs.contains_key(&i), "PCR {i} not quoted");
    }

    let log = Tcg2Log::parse(&tpm.uefi_event_log).expect("UEFI event log parses");
    let replay = log.replay(true).expect("UEFI event log replays");
    for i in [4u32, 9, 11] {
        assert_eq!(
            hex::encode(replay.value(HashAlg::Sha256, i).unwrap()),
            hex::encode(&pcrs[&i]),
            "PCR {i}: event log replay differs from the quoted value"
        );
    }
    assert_eq!(pcrs[&12], vec![0u8; 32], "PCR 12 must stay zero (no cmdline overrides or credentials)");
    for i in [4u32, 11, 12] {
        assert_eq!(hex::encode(&pcrs[&i]), hex::encode(&predicted.pcrs[&i]), "PCR {i}: booted != predicted");
    }
    // PCR 9: the kernel measures its load options (predicted exactly), then the initrd as systemd-stub
    // hands it over. systemd-stub 257 appends a small generated cpio to `.initrd` (the booted initrd is
    // 435..4531 bytes longer, per the kernel's RAMDISK range), which the predictor does not model yet,
    // so the initrd event is checked for presence and the register through the log replay above.
    let pcr9_events: Vec<_> = log.events.iter().filter(|e| e.index == 9).collect();
    assert_eq!(pcr9_events.len(), 2, "PCR 9: expected LoadOptions and initrd events");
    assert_eq!(
        hex::encode(pcr9_events[0].digest(HashAlg::Sha256).unwrap()),
        predicted.load_options_digest,
        "PCR 9: LoadOptions (kernel command line) != predicted"
    );
    assert!(pcr9_events[1].data.ends_with(b"Linux initrd\0"), "PCR 9: second event is not the initrd");
    assert_eq!(
        hex::encode(&pcrs[&11]),
        hex::encode(&predicted.pcr11_systemd_measure),
        "PCR 11 != systemd-measure's prediction"
    );
    vm.power_off();
    let _ = std::fs::remove_dir_all(&work);
    (pcrs, predicted)
}

#[test]
fn built_image_boots_attests_and_a_changed_cmdline_moves_the_measurements() {
    let out = image_dir();
    let (disk, uki) = (out.join("disk.raw"), out.join("sealroom.efi"));
    if !disk.exists() || !uki.exists() {
        eprintln!(
            "\n!!!!!!!!!! SKIPPED image_boot: no built image at {} — run ci/image first (ci/test does) !!!!!!!!!!\n",
            out.display()
        );
        return;
    }
    let (original, golden) = boot_and_check(&disk, &uki, "image");

    let work = unique_dir("image-changed");
    let mut bytes = std::fs::read(&uki).unwrap();
    let hits: Vec<usize> = bytes
        .windows(CMDLINE_TOKEN.len())
        .enumerate()
        .filter(|(_, w)| *w == CMDLINE_TOKEN)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "the UKI must hold {:?} exactly once", String::from_utf8_lossy(CMDLINE_TOKEN));
    let last = hits[0] + CMDLINE_TOKEN.len() - 1;
    bytes[last] = b'2';
    let changed_uki = work.join("sealroom.efi");
    std::fs::write(&changed_uki, &bytes).unwrap();
    run(Command::new(sealroom_tests::repo_root().join("image/assemble-disk")).arg(&changed_uki).arg(&work));
    let (changed, _) = boot_and_check(&work.join("disk.raw"), &changed_uki, "image-changed");
    // Against the original image's predictions (its golden values) the changed image is refused:
    // PCR 11 (.cmdline), PCR 4 (the UKI's Authenticode digest) and PCR 9 (the kernel's load options)
    // all differ from the original's.
    for i in [4u32, 9, 11] {
        assert_ne!(
            changed[&i], golden.pcrs[&i],
            "PCR {i} of the changed image matches the original's golden value"
        );
        assert_ne!(changed[&i], original[&i], "PCR {i} must change with the command line");
    }
    assert_eq!(changed[&12], golden.pcrs[&12]);
    let _ = std::fs::remove_dir_all(&work);
}
