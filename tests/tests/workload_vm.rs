//! The workload inside the booted guest image, end to end, in one VM boot (QEMU TCG + OVMF + swtpm):
//!
//! 1. the test builds a busybox workload image and pushes it to a loopback `docker-registry`;
//! 2. the VM boots the built image (`ci/image`) with a config disk (virtio serial `sealroom-workload`) holding
//!    the workload spec: the image pinned by digest at `10.0.2.2:PORT` (QEMU user networking's host address),
//!    the key broker's address and the key id;
//! 3. once the agent serves, the test enrols the VM's TPM attestation key with a real `sealroom broker serve`
//!    process (the agent retries the broker meanwhile), which releases the data key only for evidence whose
//!    runtime log shows exactly the approved image, args and env;
//! 4. the workload reads its key from `/run/sealroom/keys/<id>`, writes `/output`, and its output appears on
//!    the serial console; the agent measures the output event and keeps serving;
//! 5. the test fetches evidence with a fresh nonce: the runtime log replays to the quoted PCR 15 and holds
//!    the launch events, the key release and the output digest the host computes from the key it released;
//!    `sealroom verify` shows the image digest and args as verified claims; the broker refuses the same
//!    VM a key whose policy names another image; finally the ACPI power button powers the VM off cleanly.
//!
//! Skipped (loudly) only when the image has not been built.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::missing_panics_doc
)]

use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;
use sealroom_measurements::cel::{CelLog, RuntimeEvent};
use sealroom_measurements::evidence::HashAlg;
use sealroom_proto::attestation::v1 as apb;
use sealroom_proto::keybroker::v1 as kpb;
use sealroom_proto::keybroker::v1::key_broker_client::KeyBrokerClient;
use sealroom_tests::broker::{Provider, run_sealroom, sealroom, tpm_policy};
use sealroom_tests::oci_image::OciImage;
use sealroom_tests::registry::Registry;
use sealroom_tests::swtpm::unique_temp_dir;
use sealroom_tests::vm::{self, Vm, fresh_nonce, get_evidence};

const KEY_ID: &str = "provider-a.dataset";
const OTHER_KEY_ID: &str = "provider-b.dataset";
const DATA_KEY: &[u8] = b"provider-a's 32-byte dataset key";
/// Proves to the host that the workload saw exactly the released key, and says so on the console.
const WORKLOAD_SCRIPT: &str = "sha256sum /run/sealroom/keys/provider-a.dataset > /output/key.sha256 && \
                               echo workload-vm-test: key digest written";
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(300);
const WORKLOAD_ENDED: &str = "sealroom-workload: workload ended: exit code 0";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

fn workload_image() -> OciImage {
    let labels = [
        ("tee.launch_policy.log_redirect".to_owned(), "always".to_owned()),
        ("tee.launch_policy.allow_cmd_override".to_owned(), "false".to_owned()),
    ];
    OciImage::busybox_script(WORKLOAD_SCRIPT, b"workload_vm test", labels.into_iter().collect())
}

fn workload_args() -> [&'static str; 4] {
    ["/bin/busybox", "sh", "-c", WORKLOAD_SCRIPT]
}

/// GetEvidence from the VM's agent, failing the test on any error.
async fn evidence(url: &str, nonce: &[u8]) -> apb::Evidence {
    get_evidence(url, nonce).await.unwrap()
}

/// The config disk: the spec JSON, NUL-padded to whole sectors.
fn write_spec_disk(path: &Path, spec: &serde_json::Value) {
    let mut bytes = serde_json::to_vec(spec).unwrap();
    bytes.resize(bytes.len().div_ceil(4096) * 4096, 0);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn booted_image_runs_the_measured_workload_with_its_released_key_and_the_verifier_sees_it() {
    let test_started = Instant::now();
    let out = vm::image_dir();
    let disk = out.join("disk.raw");
    if !disk.exists() {
        eprintln!(
            "\n!!!!!!!!!! SKIPPED workload_vm: no built image at {} — run ci/image first (ci/test does) !!!!!!!!!!\n",
            out.display()
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = unique_temp_dir("workload-vm");
    std::fs::create_dir_all(&dir).unwrap();

    // The workload image, in a registry the VM reaches at 10.0.2.2 (QEMU user networking → host loopback).
    let registry = Registry::start().unwrap();
    let image = workload_image();
    registry.push("provider-a/analytics", "v1", &image).unwrap();
    let guest_registry = format!("10.0.2.2:{}", registry.port());
    let reference = format!("{guest_registry}/provider-a/analytics@{}", image.manifest_digest());

    // The provider's side, with the CLI: KEK, policy, key; the broker process starts once the AK is known.
    let provider = Provider::new(&dir.join("provider")).unwrap();
    let other_digest = format!("sha256:{}", "9".repeat(64));
    for (id, owner, digest) in
        [(KEY_ID, "provider-a", image.manifest_digest()), (OTHER_KEY_ID, "provider-b", other_digest.clone())]
    {
        let policy = tpm_policy(&digest, &workload_args(), &["PATH=/bin"], None);
        provider.add_key(id, owner, &policy, DATA_KEY).unwrap();
    }
    let broker_port = vm::free_port().unwrap();

    let spec_disk = dir.join("spec.img");
    write_spec_disk(
        &spec_disk,
        &serde_json::json!({
            "image": reference,
            "insecure_registries": [guest_registry],
            "log_redirect": true,
            "broker": format!("http://10.0.2.2:{broker_port}"),
            "broker_key": provider.key_id().unwrap(),
            "key_ids": [KEY_ID],
        }),
    );
    let mut vm = Vm::boot(
        &disk,
        "workload-vm",
        &[
            "-drive".into(),
            format!("if=none,id=spec,format=raw,readonly=on,file={}", spec_disk.display()),
            "-device".into(),
            // A PCI slot after the boot disk, so that OVMF does not try to boot the config disk first.
            "virtio-blk-pci,drive=spec,serial=sealroom-workload,addr=0x10".into(),
        ],
    )
    .unwrap();
    let serving = vm.wait_for(vm::SERVING_MARKER, BOOT_TIMEOUT).unwrap();
    let url = vm.agent_url();

    // Enrolment, out of band: the provider records this VM's TPM AK (from one GetEvidence), then serves.
    let enrol = rt.block_on(evidence(&url, &[0x42; 32]));
    let ak = dir.join("ak.tpmt_public");
    std::fs::write(&ak, &enrol.tpm.as_ref().unwrap().ak_public).unwrap();
    let broker =
        provider.serve(&format!("127.0.0.1:{broker_port}"), &["--tpm-ak".as_ref(), ak.as_os_str()]).unwrap();
    let broker_up = vm.started.elapsed();

    let ended = vm.wait_for(WORKLOAD_ENDED, WORKLOAD_TIMEOUT).unwrap();
    vm.wait_for("the agent keeps serving attestation", Duration::from_secs(30)).unwrap();
    let console = vm.serial_text();
    eprintln!(
        "[workload_vm] VM start → agent serving {:.1} s, broker up {:.1} s, workload ended {:.1} s",
        serving.as_secs_f64(),
        broker_up.as_secs_f64(),
        ended.as_secs_f64()
    );
    for line in [
        format!("sealroom-workload: key {KEY_ID} released to the workload"),
        "workload| stdout: workload-vm-test: key digest written".to_owned(),
    ] {
        assert!(console.contains(&line), "no {line:?} on the console");
    }
    let key_events = console.matches("measured record").count();
    assert!(key_events >= 8, "expected the launch events on the console, saw {key_events}");

    // Fresh evidence after the workload ended: the runtime log holds the launch, key release and output.
    let nonce = fresh_nonce().unwrap();
    let ev = rt.block_on(evidence(&url, &nonce));
    let records = CelLog::decode(&ev.runtime_event_log).unwrap();
    let events: Vec<RuntimeEvent> = records.iter().map(|r| r.event.clone()).collect();
    assert_eq!(events[0], RuntimeEvent::ImageReference(reference.clone()));
    assert_eq!(events[1], RuntimeEvent::ManifestDigest(image.manifest_digest()));
    assert_eq!(events[2], RuntimeEvent::ConfigDigest(image.config_digest()));
    let args: Vec<String> = events
        .iter()
        .filter_map(|e| if let RuntimeEvent::Arg(a) = e { Some(a.clone()) } else { None })
        .collect();
    assert_eq!(args, workload_args());
    let sep = events.iter().position(|e| *e == RuntimeEvent::LaunchSeparator).unwrap();
    assert!(matches!(events[sep - 1], RuntimeEvent::LaunchPolicy(_)), "{events:?}");
    assert_eq!(
        events[sep + 1],
        RuntimeEvent::KeyRelease { key_id: KEY_ID.into(), broker_key: provider.key_id().unwrap() }
    );
    // The output event: the digest of /output as the host predicts it from the key it released.
    let expected_out = dir.join("expected-output");
    std::fs::create_dir_all(&expected_out).unwrap();
    let key_file = format!("{}  /run/sealroom/keys/{KEY_ID}\n", sha256_hex(DATA_KEY));
    std::fs::write(expected_out.join("key.sha256"), key_file).unwrap();
    let (digest, _) = sealroom_measurements::output::digest_dir(&expected_out).unwrap();
    assert_eq!(
        events[sep + 2],
        RuntimeEvent::Output { name: "output".into(), digest: format!("sha256:{}", hex::encode(digest)) }
    );
    assert_eq!(events.len(), sep + 3, "{events:?}");
    // …and replays to the quoted PCR 15 of every bank.
    let tpm = ev.tpm.as_ref().unwrap();
    let mut banks = 0;
    for bank in &tpm.pcr_banks {
        let alg = match apb::HashAlgorithm::try_from(bank.algorithm).unwrap() {
            apb::HashAlgorithm::Sha256 => HashAlg::Sha256,
            apb::HashAlgorithm::Sha384 => HashAlg::Sha384,
            _ => continue,
        };
        let quoted = bank.values.get(&15).expect("PCR 15 is quoted");
        sealroom_measurements::cel::check_pcr(&records, alg, quoted).unwrap();
        banks += 1;
    }
    assert!(banks >= 1);

    // `sealroom verify` on that evidence: affirming for the enrolled AK, and the workload as verified claims.
    let ev_file = dir.join("evidence.pb");
    std::fs::write(&ev_file, ev.encode_to_vec()).unwrap();
    let verify = |json: bool| {
        let mut cmd = sealroom();
        cmd.args(["verify", "--evidence"])
            .arg(&ev_file)
            .args(["--nonce", &hex::encode(&nonce), "--skip", "firmware,kernel,workload", "--tpm-ak"])
            .arg(&ak);
        if json {
            cmd.arg("--json");
        }
        run_sealroom(&mut cmd).unwrap()
    };
    let table = verify(false);
    eprintln!("[workload_vm] sealroom verify:\n{table}");
    assert!(table.contains(&format!("workload.image_digest: {}", image.manifest_digest())), "{table}");
    assert!(
        table.contains(&format!("workload.args: {}", serde_json::to_string(&workload_args()).unwrap())),
        "{table}"
    );
    let ear: serde_json::Value = serde_json::from_str(verify(true).trim()).unwrap();
    let runtime = ear["submods"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|s| s["sealroom.layers"].as_array().unwrap().iter())
        .find(|l| l["layer"] == "runtime log")
        .expect("a runtime log layer")
        .clone();
    assert_eq!(runtime["outcome"], "passed", "{runtime}");
    let w = &runtime["claims"]["workload"];
    assert_eq!(w["image_digest"], image.manifest_digest());
    assert_eq!(w["image_reference"], reference);
    assert_eq!(w["args"], serde_json::json!(workload_args()));
    assert_eq!(
        w["key_releases"],
        serde_json::json!([{"key_id": KEY_ID, "broker_key": provider.key_id().unwrap()}])
    );

    // The broker refuses this VM a key whose policy names another image, and says why.
    let refusal = rt.block_on(async {
        let ch = tonic::transport::Channel::from_shared(broker.url()).unwrap().connect().await.unwrap();
        let mut c = KeyBrokerClient::new(ch);
        let nonce = c.challenge(kpb::ChallengeRequest::default()).await.unwrap().into_inner().nonce;
        let ev = evidence(&url, &nonce).await;
        c.release(kpb::ReleaseRequest {
            nonce,
            evidence: Some(ev),
            key_ids: vec![OTHER_KEY_ID.into()],
            tpm_activation: None,
        })
        .await
        .unwrap()
        .into_inner()
    });
    assert!(refusal.keys.is_empty());
    assert_eq!(
        refusal.refusals[0].reason,
        format!("policy.image_digests: workload image digest {} not allowed", image.manifest_digest())
    );
    drop(broker);
    provider.verify_audit().unwrap();
    let audit_log = provider.audit_log();
    // The decisions about data keys, in order (receipts for the output, if any, and the key store's anchors are
    // other records).
    let decisions: Vec<(String, String)> = std::fs::read_to_string(&audit_log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["decision"] != "receipt" && r["decision"] != "key_store")
        .map(|r| (r["decision"].as_str().unwrap().to_owned(), r["key_id"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        decisions,
        [("released".to_owned(), KEY_ID.to_owned()), ("refused".to_owned(), OTHER_KEY_ID.to_owned())]
    );

    vm.power_off().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("[workload_vm] test wall time {:.1} s", test_started.elapsed().as_secs_f64());
}
