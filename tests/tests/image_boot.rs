//! Boots the guest image `ci/test` builds (`ci/image` → `target/image/out`: disk.raw, sealroom.efi and the
//! signed golden.json) under QEMU (TCG) + OVMF + swtpm with user networking, and checks the measured boot the
//! way a user does: `sealroom attest --golden golden.json --golden-key <publisher key>` fetches evidence with a
//! fresh nonce and the verifier judges PCR 4, 9, 11 and 12 against the signed golden document. The test also
//! checks, independently, that the UEFI log replays to the quoted PCRs, that every PCR 4/9/11/12 event equals
//! `sealroom_measurements::uki::predict`'s, and that PCR 11 equals `systemd-measure calculate`.
//!
//! Then one byte of the UKI's `.cmdline` changes (`sealroom.image=1` → `=2`, same size: the UKI reassembled
//! with that section replaced), the disk is reassembled (image/assemble-disk), booted, and `sealroom verify`
//! refuses its evidence against the original golden document, naming PCR 11 (and PCR 4, 9); the changed
//! boot matches its own prediction, so the refusal is about the command line and nothing else.
//! Two boots in all; each VM powers off through the ACPI power button and must do so cleanly.
//!
//! Always TCG: the /dev/kvm on our machines opens but cannot run guests, so KVM is never assumed.
//! Skipped (loudly) only when the image has not been built. `SEALROOM_IMAGE_DIR` points the test at
//! another `ci/image --out` directory. The golden document's signer is the public key ci/image wrote beside
//! it (golden.pub, as a verifier receives it from the publisher), passed to the CLI as that file.
//! QEMU, OVMF and swtpm come from the shared launcher, `sealroom_tests::vm`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::missing_panics_doc,
    clippy::cast_possible_truncation
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sealroom_measurements::evidence::HashAlg;
use sealroom_measurements::golden::{self, GoldenDocument};
use sealroom_measurements::tcg2::{Tcg2Log, event_type};
use sealroom_measurements::uki::{self as uki_prediction, BootContext, PredictedRegister};
use sealroom_proto::attestation::v1::{HashAlgorithm, TpmEvidence};
use sealroom_tests::broker::sealroom;
use sealroom_tests::vm::{self, Vm, fresh_nonce, get_evidence, run_checked};

/// Normal boot to serving is ~20 s under TCG; generous for a loaded CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The kernel command line token the negative test changes (see image/mkosi/mkosi.conf).
const CMDLINE_TOKEN: &[u8] = b"sealroom.image=1";

fn unique_dir(tag: &str) -> PathBuf {
    let dir = sealroom_tests::swtpm::unique_temp_dir(tag);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) -> Vec<u8> {
    run_checked(cmd).unwrap()
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

/// The host's predictions for one UKI: PCR 4, 9, 11 and 12 (SHA-256, with their events) from
/// `sealroom_measurements::uki::predict`, and PCR 11 a second time, independently, from
/// `systemd-measure calculate` over the UKI's sections.
struct Predicted {
    pcrs: BTreeMap<u32, PredictedRegister>,
    pcr11_systemd_measure: Vec<u8>,
}

fn predict(uki: &Path, work: &Path) -> Predicted {
    let bytes = std::fs::read(uki).unwrap();
    let prediction = uki_prediction::predict(&bytes, &[HashAlg::Sha256], &BootContext::default()).unwrap();
    let mut pcrs = BTreeMap::new();
    for i in [4u32, 9, 11, 12] {
        let reg = prediction.register(&format!("pcr{i}"), HashAlg::Sha256).unwrap();
        assert!(reg.complete, "pcr{i} prediction incomplete");
        pcrs.insert(i, reg.clone());
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
    Predicted { pcrs, pcr11_systemd_measure }
}

/// What one boot left for the verifier: the evidence (protobuf) and the AK, in `work`.
struct Booted {
    pcrs: BTreeMap<u32, Vec<u8>>,
    evidence_file: PathBuf,
    ak_file: PathBuf,
    nonce_hex: String,
}

/// Boots `disk`, fetches evidence, checks the event log against the quoted PCRs and, event by event, the
/// host's predictions for `uki`; `with_vm` then runs while the VM still serves; the VM powers off.
fn boot_and_check(
    disk: &Path,
    uki: &Path,
    tag: &str,
    work: &Path,
    with_vm: impl FnOnce(&Vm, &Booted),
) -> Booted {
    let predicted = predict(uki, work);
    let mut vm = Vm::boot(disk, tag, &[]).unwrap();
    let ready = vm.wait_for(vm::READY_MARKER, BOOT_TIMEOUT).unwrap();
    let serving = vm.wait_for(vm::SERVING_MARKER, BOOT_TIMEOUT).unwrap();
    eprintln!(
        "[{tag}] VM start → PID 1 ready {:.1} s, agent serving gRPC {:.1} s",
        ready.as_secs_f64(),
        serving.as_secs_f64()
    );
    let nonce = fresh_nonce().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let evidence = rt.block_on(get_evidence(&vm.agent_url(), &nonce)).unwrap();
    eprintln!("[{tag}] evidence after {:.1} s", vm.started.elapsed().as_secs_f64());
    let tpm = evidence.tpm.clone().expect("no TPM evidence from a VM with a TPM");
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
    // Every event of PCR 4, 9, 11 and 12 as predicted, in order, and so the values. PCR 9 included: the
    // kernel's LoadOptions (the command line) and the initrd as systemd-stub 257 hands it over (.initrd plus
    // its generated cpio of .extra/os-release), which `uki::predict` models.
    for (i, want) in &predicted.pcrs {
        let booted: Vec<String> = log
            .events
            .iter()
            .filter(|e| e.index == *i && e.event_type != event_type::NO_ACTION)
            .map(|e| hex::encode(e.digest(HashAlg::Sha256).unwrap()))
            .collect();
        let predicted_events: Vec<String> = want.events.iter().map(|e| e.digest.clone()).collect();
        assert_eq!(booted, predicted_events, "PCR {i}: booted events != predicted events");
        assert_eq!(hex::encode(&pcrs[i]), want.value, "PCR {i}: booted != predicted");
    }
    assert_eq!(
        hex::encode(&pcrs[&11]),
        hex::encode(&predicted.pcr11_systemd_measure),
        "PCR 11 != systemd-measure's prediction"
    );

    // Trust in the swtpm's AK: no CA certifies it, so it is enrolled on first contact (the platform layer is
    // not what this test is about; the measured boot is).
    let ak_file = work.join(format!("{tag}-ak.tpmt_public"));
    std::fs::write(&ak_file, &tpm.ak_public).unwrap();
    let evidence_file = work.join(format!("{tag}-evidence.pb"));
    std::fs::write(&evidence_file, prost::Message::encode_to_vec(&evidence)).unwrap();
    let booted = Booted { pcrs, evidence_file, ak_file, nonce_hex: hex::encode(&evidence.nonce) };
    with_vm(&vm, &booted);
    vm.power_off().unwrap();
    booted
}

/// The EAR's layer `name` (from `--json` output).
fn ear_layer<'a>(ear: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    ear["submods"]["sealroom"]["sealroom.layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == name)
        .unwrap_or_else(|| panic!("no {name} layer in {ear}"))
}

fn golden_register(doc: &GoldenDocument, pcr: u32) -> &str {
    &doc.register(&format!("pcr{pcr}"), HashAlg::Sha256).expect("golden PCR").value
}

#[test]
fn built_image_boots_attests_against_its_golden_document_and_a_changed_cmdline_is_refused() {
    let out = vm::image_dir();
    let (disk, uki, golden_json) = (out.join("disk.raw"), out.join("sealroom.efi"), out.join("golden.json"));
    if !disk.exists() || !uki.exists() {
        eprintln!(
            "\n!!!!!!!!!! SKIPPED image_boot: no built image at {} — run ci/image first (ci/test does) !!!!!!!!!!\n",
            out.display()
        );
        return;
    }
    let golden_pub = out.join("golden.pub");
    for f in [&golden_json, &golden_pub] {
        assert!(f.exists(), "{} missing: ci/image writes it with --golden-key", f.display());
    }
    // The publisher's key as a verifier has it: golden.pub (hex), given to the CLI as the file.
    let key = std::fs::read_to_string(&golden_pub).unwrap();
    let doc_bytes = std::fs::read(&golden_json).unwrap();
    let sig = std::fs::read_to_string(out.join("golden.json.sig")).unwrap();
    let doc =
        golden::verify(&doc_bytes, &sig, key.trim()).expect("golden.json is signed by golden.pub's key");
    let golden_args = |cmd: &mut Command| {
        cmd.arg("--golden").arg(&golden_json).arg("--golden-key").arg(&golden_pub);
        // The golden document predicts the kernel layer; firmware and workload are skipped by choice here.
        cmd.args(["--skip", "firmware,workload"]);
    };
    let work = unique_dir("image-boot");

    // 1. The built image: `sealroom attest` against the signed golden document, while the VM serves.
    let original = boot_and_check(&disk, &uki, "image", &work, |vm, booted| {
        let mut attest = sealroom();
        attest.args(["attest", "--agent", &vm.agent_url(), "--json", "--tpm-ak"]).arg(&booted.ak_file);
        golden_args(&mut attest);
        let outp = attest.output().unwrap();
        let stdout = String::from_utf8_lossy(&outp.stdout);
        assert!(
            outp.status.success(),
            "sealroom attest --golden refused the built image:\n{stdout}\n{}",
            String::from_utf8_lossy(&outp.stderr)
        );
        let ear: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let kernel = ear_layer(&ear, "kernel");
        assert_eq!(kernel["outcome"], "passed", "{ear}");
        assert_eq!(kernel["reference"], "digests", "{ear}");
        for i in [4u32, 9, 11, 12] {
            assert_eq!(kernel["claims"][format!("pcr{i}.sha256")], golden_register(&doc, i), "{ear}");
        }
        assert_eq!(ear_layer(&ear, "binding")["outcome"], "passed", "{ear}");
        let policy = ear["submods"]["sealroom"]["ear_appraisal_policy_ids"][0].as_str().unwrap();
        assert!(policy.starts_with("sealroom/golden/sealroom@"), "{policy}");
    });
    // The golden document holds exactly what booted (and what the host predicted from the UKI).
    for i in [4u32, 9, 11, 12] {
        assert_eq!(golden_register(&doc, i), hex::encode(&original.pcrs[&i]), "PCR {i}: golden != booted");
    }
    // `sealroom verify` of the same evidence, offline, agrees.
    let mut verify = sealroom();
    verify.args(["verify", "--evidence"]).arg(&original.evidence_file);
    verify.args(["--nonce", &original.nonce_hex, "--tpm-ak"]).arg(&original.ak_file);
    golden_args(&mut verify);
    let outp = verify.output().unwrap();
    assert!(
        outp.status.success(),
        "sealroom verify --golden refused the built image's evidence:\n{}{}",
        String::from_utf8_lossy(&outp.stdout),
        String::from_utf8_lossy(&outp.stderr)
    );

    // 2. One byte of the command line changed: the same UKI with `.cmdline` replaced by a section of the
    // same size, so nothing else in the file moves. ukify leaves the PE checksum at zero, so these bytes are
    // what reassembling the UKI with the changed `.cmdline` gives.
    let mut bytes = std::fs::read(&uki).unwrap();
    let pe_header = u32::from_le_bytes(bytes[0x3c..0x40].try_into().unwrap()) as usize;
    let checksum = pe_header + 24 + 64; // PE signature + COFF header, then OptionalHeader.CheckSum
    assert_eq!(bytes[checksum..checksum + 4], [0; 4], "the UKI carries a PE checksum: recompute it here");
    let hits: Vec<usize> = bytes
        .windows(CMDLINE_TOKEN.len())
        .enumerate()
        .filter(|(_, w)| *w == CMDLINE_TOKEN)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "the UKI must hold {:?} exactly once", String::from_utf8_lossy(CMDLINE_TOKEN));
    let last = hits[0] + CMDLINE_TOKEN.len() - 1;
    bytes[last] = b'2';
    let changed_dir = work.join("changed");
    std::fs::create_dir_all(&changed_dir).unwrap();
    let changed_uki = changed_dir.join("sealroom.efi");
    std::fs::write(&changed_uki, &bytes).unwrap();
    run(Command::new(sealroom_tests::repo_root().join("image/assemble-disk"))
        .arg(&changed_uki)
        .arg(&changed_dir));
    let changed =
        boot_and_check(&changed_dir.join("disk.raw"), &changed_uki, "image-changed", &work, |_, _| {});

    // The verifier refuses the changed image's real evidence against the original golden document, first
    // for PCR 11 (systemd-stub measured the new .cmdline), and also for PCR 4 (the UKI's Authenticode digest)
    // and PCR 9 (the kernel's load options); PCR 12 still matches.
    let mut verify = sealroom();
    verify.args(["verify", "--json", "--evidence"]).arg(&changed.evidence_file);
    verify.args(["--nonce", &changed.nonce_hex, "--tpm-ak"]).arg(&changed.ak_file);
    golden_args(&mut verify);
    let outp = verify.output().unwrap();
    let stdout = String::from_utf8_lossy(&outp.stdout);
    let stderr = String::from_utf8_lossy(&outp.stderr);
    assert_eq!(outp.status.code(), Some(1), "the changed image was not refused:\n{stdout}\n{stderr}");
    let reason = format!(
        "refused (contraindicated): kernel: pcr11.sha256 is {}, not a reference value",
        hex::encode(&changed.pcrs[&11])
    );
    assert_eq!(stderr.trim(), reason);
    eprintln!("[image-changed] sealroom verify --golden (original golden.json): {}", stderr.trim());
    let ear: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for layer in ["platform", "binding", "event log"] {
        assert_eq!(ear_layer(&ear, layer)["outcome"], "passed", "{layer}: {ear}");
    }
    let kernel = ear_layer(&ear, "kernel");
    assert_eq!(kernel["outcome"], "failed", "{ear}");
    let failures: Vec<&str> =
        kernel["failures"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    let expected: Vec<String> = [11u32, 4, 9]
        .iter()
        .map(|i| format!("kernel: pcr{i}.sha256 is {}, not a reference value", hex::encode(&changed.pcrs[i])))
        .collect();
    assert_eq!(failures, expected, "{ear}");
    for i in [4u32, 9, 11] {
        assert_ne!(changed.pcrs[&i], original.pcrs[&i], "PCR {i} must change with the command line");
    }
    assert_eq!(changed.pcrs[&12], original.pcrs[&12]);
    let _ = std::fs::remove_dir_all(&work);
}
