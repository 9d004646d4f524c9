//! Several data providers, one job (issue 15, items 1 and 4), with real processes on loopback: two
//! `sealroom broker serve` processes (hospital A and hospital B, each with its own state, KEK, signing key,
//! version 2 policy naming both broker keys, and audit log), the agent's workload launcher (`workload::run`, as
//! in the VM) measuring into a swtpm, its broker client (`BrokerKeys`), and crun running a job that reads both
//! keys. Then the receipts: one from each broker, written to the result directory and checked by
//! `sealroom verify-receipt` with both receipt/broker-key pairs.
//!
//! The refusals: one provider refuses (nothing is written, the job never starts, the console line names the
//! provider and its policy reason), a broker is never asked for another provider's key ids, an operator who
//! adds a broker of his own gets nothing from a provider whose policy does not list it, and a mismatched
//! receipt/broker-key pair is refused.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::too_many_lines)]

use std::path::{Path, PathBuf};

use sealroom_agent::server::Running;
use sealroom_agent::workload::broker::BrokerKeys;
use sealroom_agent::workload::spec::WorkloadSpec;
use sealroom_agent::workload::{self, Outcome, WorkloadConfig, receipt};
use sealroom_broker::audit::{AuditRecord, Decision};
use sealroom_measurements::cel::RuntimeEvent;
use sealroom_tests::agent::{ak_of, require_root, runtime_events, workload_config};
use sealroom_tests::booted_tpm::{booted_swtpm, sha256_hex, write_golden};
use sealroom_tests::broker::{BrokerProcess, Provider, tpm_policy};
use sealroom_tests::oci_image::OciImage;
use sealroom_tests::registry::Registry;
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};

const KEY_A: &str = "rows-a";
const KEY_B: &str = "rows-b";
const DATA_A: &[u8] = b"hospital A's half of the rows key";
const DATA_B: &[u8] = b"hospital B's half of the rows key";
/// The joint job: proof for the test that it saw both released keys.
const SCRIPT: &str = "sha256sum /run/sealroom/keys/rows-a /run/sealroom/keys/rows-b > /output/keys.sha256";

/// A version 2 policy: this TPM platform, the golden boot state, this image, its argv and env, and the
/// broker keys this provider agrees to share the job with (its own and its co-provider's).
fn policy(image_digest: &str, golden: (&str, &str), broker_keys: &[&str]) -> String {
    tpm_policy(image_digest, &["/bin/busybox", "sh", "-c", SCRIPT], &["PATH=/bin"], Some(golden))
        .replace("version = 1\n", "version = 2\n")
        + &format!(
            "broker_keys = {}\ngpu_required = false\ngpu_architectures = \"skip\"\ngpu_rim_ids = \"skip\"\n",
            serde_json::to_string(broker_keys).unwrap()
        )
}

fn audit_records(path: &Path) -> Vec<AuditRecord> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The (decision, key id) of every release decision in a broker's audit log (key-store anchors left out).
fn decisions(path: &Path) -> Vec<(Decision, String)> {
    audit_records(path)
        .into_iter()
        .filter(|r| r.decision != Decision::KeyStore)
        .map(|r| (r.decision, r.key_id))
        .collect()
}

/// One provider: its CLI-made state, its broker key id, and (once served) its broker process.
struct Hospital {
    name: &'static str,
    provider: Provider,
    kid: String,
}

/// The clean room: a registry with the joint job, a booted TPM per VM, two hospitals' brokers enrolling
/// every VM's AK and trusting the golden boot state.
struct CleanRoom {
    dir: PathBuf,
    registry: Registry,
    image: OciImage,
    reference: String,
    golden_dir: PathBuf,
    golden_key: String,
    a: Hospital,
    b: Hospital,
}

impl CleanRoom {
    /// Every test here runs the job in crun, so this fails first unless the test runs as root.
    fn new(tag: &str) -> Self {
        require_root();
        let registry = Registry::start().unwrap();
        let image = OciImage::busybox_script(SCRIPT, b"joint job", std::collections::BTreeMap::new());
        let reference = registry.push("clean-room/joint", "v1", &image).unwrap();
        let dir = unique_temp_dir(tag);
        let golden_dir = dir.join("golden");
        let golden = write_golden(&golden_dir);
        let (golden_doc, signer, golden_key) = (golden.digest, golden.signer, golden.public_key);
        let hospital = |name: &'static str| {
            let provider = Provider::new(&dir.join(name)).unwrap();
            let kid = provider.key_id().unwrap();
            Hospital { name, provider, kid }
        };
        let (a, b) = (hospital("hospital-a"), hospital("hospital-b"));
        let both = [a.kid.as_str(), b.kid.as_str()];
        let pa = policy(&image.manifest_digest(), (&golden_doc, &signer), &both);
        a.provider.add_key(KEY_A, "hospital-a", &pa, DATA_A).unwrap();
        let pb = policy(&image.manifest_digest(), (&golden_doc, &signer), &both);
        b.provider.add_key(KEY_B, "hospital-b", &pb, DATA_B).unwrap();
        Self { dir, registry, image, reference, golden_dir, golden_key, a, b }
    }

    /// Both brokers, enrolling `aks` (files) and trusting the golden document.
    fn serve(&self, aks: &[PathBuf]) -> (BrokerProcess, BrokerProcess) {
        let mut extra: Vec<&std::ffi::OsStr> = vec!["--golden".as_ref(), self.golden_dir.as_os_str()];
        for ak in aks {
            extra.push("--tpm-ak".as_ref());
            extra.push(ak.as_os_str());
        }
        (
            self.a.provider.serve("127.0.0.1:0", &extra).unwrap(),
            self.b.provider.serve("127.0.0.1:0", &extra).unwrap(),
        )
    }

    /// The operator's spec: one entry per (hospital, broker process, key ids).
    fn spec(&self, brokers: &[(&Hospital, &BrokerProcess, &[&str])]) -> WorkloadSpec {
        let list: Vec<serde_json::Value> = brokers
            .iter()
            .map(|(h, p, keys)| serde_json::json!({"name": h.name, "url": p.url(), "key": h.kid, "key_ids": keys}))
            .collect();
        let doc = serde_json::json!({
            "image": self.reference, "insecure_registries": [self.registry.host()], "brokers": list,
        });
        WorkloadSpec::from_json(doc.to_string().as_bytes()).unwrap()
    }

    /// A booted VM's agent and its AK written to `NAME.ak` in the room's directory for the brokers' `--tpm-ak`.
    async fn vm(&self, name: &str) -> (Swtpm, Running, PathBuf) {
        let tpm = booted_swtpm();
        let agent = sealroom_tests::agent::start_agent(&tpm, &[]).await.unwrap();
        std::fs::create_dir_all(&self.dir).unwrap();
        let ak = self.dir.join(format!("{name}.ak"));
        std::fs::write(&ak, ak_of(&agent).await).unwrap();
        (tpm, agent, ak)
    }
}

/// Runs the job of `spec` on `agent` with the agent's broker client, in a fresh workload directory named for
/// `tag`: (that directory's configuration, the outcome or the launcher's one-line error).
async fn run_job(
    spec: &WorkloadSpec,
    tag: &str,
    agent: &Running,
) -> (WorkloadConfig, Result<Outcome, String>) {
    let cfg = workload_config(tag);
    let outcome = workload::run(spec, &cfg, &agent.handle, &BrokerKeys::new(agent.handle.clone()))
        .await
        .map_err(|e| e.to_string());
    (cfg, outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_both_release_keys_written_both_releases_measured() {
    let room = CleanRoom::new("multi-broker-both");
    let (_tpm, agent, ak) = room.vm("vm").await;
    let (broker_a, broker_b) = room.serve(&[ak]);

    let spec = room.spec(&[(&room.a, &broker_a, &[KEY_A]), (&room.b, &broker_b, &[KEY_B])]);
    let (cfg, outcome) = run_job(&spec, "multi-broker-both-run", &agent).await;
    let outcome = outcome.unwrap();
    assert_eq!(outcome.exit_code, 0, "listing: {}", outcome.output_listing);
    let proof = std::fs::read_to_string(cfg.output_dir.join("keys.sha256")).unwrap();
    let seen: Vec<&str> = proof.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(seen, [sha256_hex(DATA_A), sha256_hex(DATA_B)], "{proof}");

    // Measured: both broker keys before the separator (spec order), both releases after it, each naming the
    // broker whose signed response carried the key.
    let events = runtime_events(&agent);
    let sep = events.iter().position(|e| *e == RuntimeEvent::LaunchSeparator).unwrap();
    let pinned: Vec<&RuntimeEvent> =
        events[..sep].iter().filter(|e| matches!(e, RuntimeEvent::BrokerKey(_))).collect();
    assert_eq!(
        pinned,
        [&RuntimeEvent::BrokerKey(room.a.kid.clone()), &RuntimeEvent::BrokerKey(room.b.kid.clone())]
    );
    assert_eq!(
        events[sep + 1..sep + 3],
        [
            RuntimeEvent::KeyRelease { key_id: KEY_A.into(), broker_key: room.a.kid.clone() },
            RuntimeEvent::KeyRelease { key_id: KEY_B.into(), broker_key: room.b.kid.clone() },
        ]
    );
    drop((broker_a, broker_b));
    for h in [&room.a, &room.b] {
        h.provider.verify_audit().unwrap();
    }
    assert_eq!(decisions(&room.a.provider.audit_log()), [(Decision::Released, KEY_A.to_owned())]);
    assert_eq!(decisions(&room.b.provider.audit_log()), [(Decision::Released, KEY_B.to_owned())]);
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_one_provider_refuses_nothing_runs() {
    let room = CleanRoom::new("multi-broker-refuse");
    let (_tpm, agent, ak) = room.vm("vm").await;
    // Hospital B withdrew its approval of this job: its key's policy now names another image.
    let other = OciImage::busybox_script(SCRIPT, b"another job", std::collections::BTreeMap::new());
    let (golden_doc, signer) = {
        let bytes = std::fs::read(room.golden_dir.join("boot.json")).unwrap();
        (format!("sha256:{}", sha256_hex(&bytes)), format!("ed25519:{}", room.golden_key))
    };
    let withdrawn = policy(&other.manifest_digest(), (&golden_doc, &signer), &[&room.a.kid, &room.b.kid]);
    room.b.provider.add_key("rows-b2", "hospital-b", &withdrawn, DATA_B).unwrap();
    let (broker_a, broker_b) = room.serve(&[ak]);

    let spec = room.spec(&[(&room.a, &broker_a, &[KEY_A]), (&room.b, &broker_b, &["rows-b2"])]);
    let (cfg, outcome) = run_job(&spec, "multi-broker-refuse-run", &agent).await;
    let e = outcome.unwrap_err();
    // The policy now approves another job; the measured one is refused.
    let reason =
        format!("policy.image_digests: workload image digest {} not allowed", room.image.manifest_digest());
    assert_eq!(
        e,
        format!("workload keys: provider hospital-b ({}) refused key rows-b2: {reason}", room.b.kid)
    );
    // All or nothing: hospital A released (its audit log says so), but its key was never written, the job
    // never started, and no release was measured.
    assert!(!cfg.keys_dir.join(KEY_A).exists(), "A's key must not be written when B refused");
    assert_eq!(std::fs::read_dir(&cfg.keys_dir).unwrap().count(), 0, "the keys directory stays empty");
    assert_eq!(std::fs::read_dir(&cfg.output_dir).unwrap().count(), 0, "the job must not have run");
    let events = runtime_events(&agent);
    assert!(events.iter().all(|e| !matches!(e, RuntimeEvent::KeyRelease { .. })), "{events:?}");
    assert_eq!(events.last(), Some(&RuntimeEvent::LaunchSeparator));
    drop((broker_a, broker_b));
    assert_eq!(decisions(&room.a.provider.audit_log()), [(Decision::Released, KEY_A.to_owned())]);
    let b_log = audit_records(&room.b.provider.audit_log());
    let refused = b_log.iter().find(|r| r.decision == Decision::Refused).unwrap();
    assert_eq!((refused.key_id.as_str(), refused.reason.as_str()), ("rows-b2", reason.as_str()));
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_broker_asked_for_another_providers_key() {
    let room = CleanRoom::new("multi-broker-foreign");
    let (_tpm1, agent1, ak1) = room.vm("vm1").await;
    let (_tpm2, agent2, ak2) = room.vm("vm2").await;
    let (broker_a, broker_b) = room.serve(&[ak1, ak2]);

    // The spec may not name one key under two brokers (one key id, one provider).
    let doc = serde_json::json!({
        "image": room.reference, "brokers": [
            {"name": "hospital-a", "url": broker_a.url(), "key": room.a.kid, "key_ids": [KEY_A]},
            {"name": "hospital-b", "url": broker_b.url(), "key": room.b.kid, "key_ids": [KEY_B, KEY_A]},
        ],
    });
    let e = WorkloadSpec::from_json(doc.to_string().as_bytes()).unwrap_err().to_string();
    assert_eq!(e, "workload spec: key id \"rows-a\" listed for both broker hospital-a and broker hospital-b");

    // A's key id routed to B's broker: B does not hold it and refuses; A's key is never asked for, so A's
    // broker releases nothing, and nothing runs.
    let spec = room.spec(&[(&room.b, &broker_b, &[KEY_A])]);
    let (cfg, outcome) = run_job(&spec, "multi-broker-foreign-run", &agent1).await;
    let e = outcome.unwrap_err();
    assert!(
        e.starts_with(&format!("workload keys: provider hospital-b ({}) refused key rows-a: ", room.b.kid)),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(&cfg.output_dir).unwrap().count(), 0, "the job must not have run");

    // A normal two-broker run: each broker is asked only for its own key ids, and before either release is
    // measured (no key_release in the evidence either broker appraised).
    let spec = room.spec(&[(&room.a, &broker_a, &[KEY_A]), (&room.b, &broker_b, &[KEY_B])]);
    let (_, outcome) = run_job(&spec, "multi-broker-foreign-ok", &agent2).await;
    assert_eq!(outcome.unwrap().exit_code, 0);
    drop((broker_a, broker_b));
    let asked = |h: &Hospital| -> Vec<String> {
        let mut ids: Vec<String> = decisions(&h.provider.audit_log()).into_iter().map(|(_, k)| k).collect();
        ids.dedup();
        ids
    };
    assert_eq!(asked(&room.a), [KEY_A], "hospital A's broker saw only its own key id");
    assert_eq!(asked(&room.b), [KEY_A, KEY_B], "B saw rows-a only when the operator routed it there");
    let b_decisions = decisions(&room.b.provider.audit_log());
    assert_eq!(b_decisions[0].0, Decision::Refused);
    agent1.stop().await.unwrap();
    agent2.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_operator_adds_a_broker_of_his_own_and_gets_nothing() {
    let room = CleanRoom::new("multi-broker-rogue");
    let (_tpm, agent, ak) = room.vm("vm").await;
    // The operator's own broker, holding a key of his choosing for the job.
    let rogue = Provider::new(&unique_temp_dir("multi-broker-rogue-op")).unwrap();
    let rogue_kid = rogue.key_id().unwrap();
    let anything = tpm_policy(
        &room.image.manifest_digest(),
        &["/bin/busybox", "sh", "-c", SCRIPT],
        &["PATH=/bin"],
        None,
    );
    rogue.add_key("fake-rows", "operator", &anything, b"operator-chosen rows").unwrap();
    let (broker_a, broker_b) = room.serve(std::slice::from_ref(&ak));
    let ak_arg: [&std::ffi::OsStr; 2] = ["--tpm-ak".as_ref(), ak.as_os_str()];
    let rogue_broker = rogue.serve("127.0.0.1:0", &ak_arg).unwrap();
    let rogue_h = Hospital { name: "operator", provider: rogue, kid: rogue_kid.clone() };

    let spec = room.spec(&[
        (&rogue_h, &rogue_broker, &["fake-rows"]),
        (&room.a, &broker_a, &[KEY_A]),
        (&room.b, &broker_b, &[KEY_B]),
    ]);
    let (cfg, outcome) = run_job(&spec, "multi-broker-rogue-run", &agent).await;
    let e = outcome.unwrap_err();
    assert_eq!(
        e,
        format!(
            "workload keys: provider hospital-a ({}) refused key rows-a: policy.broker_keys: the VM pins broker key \
             {rogue_kid}, not one this policy allows",
            room.a.kid
        )
    );
    assert_eq!(
        std::fs::read_dir(&cfg.keys_dir).unwrap().count(),
        0,
        "not even the operator's own key is written"
    );
    assert_eq!(std::fs::read_dir(&cfg.output_dir).unwrap().count(), 0, "the job must not have run");
    agent.stop().await.unwrap();
}

/// `sealroom verify-receipt DIR` against the room's golden document; the caller adds receipts and keys.
fn verify_receipt_cmd(room: &CleanRoom, dir: &Path) -> std::process::Command {
    let mut cmd = sealroom_tests::broker::sealroom();
    cmd.arg("verify-receipt")
        .arg(dir)
        .arg("--golden")
        .arg(room.golden_dir.join("boot.json"))
        .args(["--golden-key", &room.golden_key]);
    cmd
}

/// `sealroom verify-receipt` over a result directory with `pairs` of (receipt file, broker key file), the
/// evidence re-verified with the AK `ak` when given: (success, stdout + stderr).
fn verify_receipt(
    room: &CleanRoom,
    dir: &Path,
    pairs: &[(PathBuf, PathBuf)],
    ak: Option<&Path>,
) -> (bool, String) {
    let mut cmd = verify_receipt_cmd(room, dir);
    if let Some(ak) = ak {
        cmd.arg("--tpm-ak").arg(ak);
    }
    for (receipt, key) in pairs {
        cmd.arg("--receipt").arg(receipt).arg("--broker-key").arg(key);
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_provider_signs_a_receipt_naming_every_release_and_verify_receipt_checks_them_together() {
    let room = CleanRoom::new("multi-broker-receipts");
    let (_tpm1, agent1, ak1) = room.vm("vm1").await;
    let (_tpm2, agent2, ak2) = room.vm("vm2").await;
    let (broker_a, broker_b) = room.serve(&[ak1.clone(), ak2]);
    let spec = room.spec(&[(&room.a, &broker_a, &[KEY_A]), (&room.b, &broker_b, &[KEY_B])]);

    // The same job on two VMs (the same output), each result with a receipt from each broker.
    let mut results = Vec::new();
    for (tag, agent) in [("multi-broker-receipts-1", &agent1), ("multi-broker-receipts-2", &agent2)] {
        let (cfg, outcome) = run_job(&spec, tag, agent).await;
        let outcome = outcome.unwrap();
        assert_eq!(outcome.exit_code, 0);
        let (receipts, failures) = receipt::obtain_all(&agent.handle, &spec, &outcome.output_digest).await;
        assert!(failures.is_empty(), "{failures:?}");
        let names: Vec<&str> = receipts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["hospital-a", "hospital-b"]);
        let dir = unique_temp_dir(&format!("{tag}-result"));
        receipt::write_result(&dir, &cfg.output_dir, &outcome.output_listing, &receipts).unwrap();
        results.push(dir);
    }
    let key_a = room.a.provider.state.join("signing-key.jwk.json");
    let key_b = room.b.provider.state.join("signing-key.jwk.json");
    let (r1, r2) = (&results[0], &results[1]);
    let a1 = r1.join("receipts/hospital-a.jwt");
    let b1 = r1.join("receipts/hospital-b.jwt");

    // Each receipt names both releases (by broker key and key id) and no sealed input.
    let claims = sealroom_broker::token::verify(
        std::fs::read_to_string(&b1).unwrap().trim(),
        &serde_json::from_slice(&std::fs::read(&key_b).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["submods"]["sealroom"]["sealroom.releases"],
        serde_json::json!([
            {"broker_key": room.a.kid, "key_id": KEY_A},
            {"broker_key": room.b.kid, "key_id": KEY_B},
        ])
    );
    assert_eq!(claims["submods"]["sealroom"]["sealroom.sealed_inputs"], serde_json::json!([]));

    // Both providers' receipts, checked together (evidence re-verified with the enrolled AK).
    let (ok, out) =
        verify_receipt(&room, r1, &[(a1.clone(), key_a.clone()), (b1.clone(), key_b.clone())], Some(&ak1));
    assert!(ok, "{out}");
    assert!(out.contains("receipt ok") && out.contains("2 brokers vouch for the same run"), "{out}");
    assert!(out.contains(&format!("release      {KEY_A} from broker key {}", room.a.kid)), "{out}");
    assert!(out.contains(&format!("release      {KEY_B} from broker key {}", room.b.kid)), "{out}");

    // A mismatched pair: hospital A's receipt presented under hospital B's key.
    let (ok, out) =
        verify_receipt(&room, r1, &[(a1.clone(), key_b.clone()), (b1.clone(), key_a.clone())], Some(&ak1));
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("refused: {}: token: signature does not verify", a1.display())), "{out}");
    // B's receipt from the other VM's run (same job, same output): a different run, refused.
    let b2 = r2.join("receipts/hospital-b.jwt");
    std::fs::copy(r2.join("receipts/hospital-b.evidence.pb"), r1.join("receipts/other-b.evidence.pb"))
        .unwrap();
    std::fs::copy(&b2, r1.join("receipts/other-b.jwt")).unwrap();
    let mixed = [(a1.clone(), key_a.clone()), (r1.join("receipts/other-b.jwt"), key_b.clone())];
    // Without --tpm-ak (each evidence is from another VM's TPM): the receipts themselves disagree.
    let (ok, out) = verify_receipt(&room, r1, &mixed, None);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "refused: {} and {} name different TEE keys (another run)",
            a1.display(),
            r1.join("receipts/other-b.jwt").display()
        )),
        "{out}"
    );
    // The same broker key twice (one provider counted as two).
    let (ok, out) =
        verify_receipt(&room, r1, &[(a1.clone(), key_a.clone()), (a1.clone(), key_a.clone())], Some(&ak1));
    assert!(!ok && out.contains("given twice"), "{out}");
    // Several broker keys need their receipts named.
    let o = verify_receipt_cmd(&room, r1)
        .arg("--broker-key")
        .arg(&key_a)
        .arg("--broker-key")
        .arg(&key_b)
        .output();
    let o = o.unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("2 --broker-key given without --receipt"));
    // The single-receipt form still checks receipt.jwt (the first broker's).
    let o = verify_receipt_cmd(&room, r1).arg("--broker-key").arg(&key_a).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    drop((broker_a, broker_b));
    agent1.stop().await.unwrap();
    agent2.stop().await.unwrap();
}
