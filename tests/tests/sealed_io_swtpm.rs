//! Sealed inputs and sealed outputs end to end with real parts: agents on swtpm (the in-process server the
//! binary runs), the workload launcher with crun, a registry, a `sealroom broker serve` process for the receipt,
//! and the `sealroom` binary on the sender's side (`seal keygen`, `seal --agent … --submit`, `open`).
//!
//! Agent A's workload waits for two sealed inputs (`patient`, `notes`) and seals its output to the reply key
//! that came with `patient`. The user verifies A's evidence with a policy and the golden document and submits
//! both; the workload runs; its result directory holds only ciphertext of the output; `sealroom open` decrypts
//! it and checks it against the broker's receipt. Agent B waits for `patient` too and is where envelopes for
//! another TEE key, unexpected names and a failing policy are tried. Each attack is refused with its one-line
//! reason, checked in its own `attack_*` function. They share one setup (two booted swtpms and agents, a
//! registry, a broker process, crun) rather than each being a test of its own: every attack needs a workload
//! that is waiting for, or has taken, its sealed inputs, and setting that up per attack would multiply the
//! test's run time for no extra coverage.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use sealroom_agent::server::Running;
use sealroom_agent::workload::broker::BrokerKeys;
use sealroom_agent::workload::spec::WorkloadSpec;
use sealroom_agent::workload::{self, Outcome};
use sealroom_broker::{SystemRandomness, seal};
use sealroom_measurements::cel::RuntimeEvent;
use sealroom_measurements::sealed::{self, Archive, SealedInput, SealedOutput};
use sealroom_proto::attestation::v1 as apb;
use sealroom_tests::agent::{
    ak_of, attestation_client, require_root, runtime_events as events, workload_config,
};
use sealroom_tests::booted_tpm::{boot, booted_swtpm, sha256_hex, write_golden};
use sealroom_tests::broker::{Provider, run_sealroom, sealroom, tpm_policy};
use sealroom_tests::oci_image::OciImage;
use sealroom_tests::registry::Registry;
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};

const KEY_ID: &str = "model-owner.weights";
const MODEL_KEY: &[u8] = b"the model owner's 32-byte key...";
/// The inference job: reads both sealed inputs, writes a "prediction" (the patient record upper-cased) and the
/// notes' size.
const SCRIPT: &str =
    "tr a-z A-Z < /input/patient > /output/prediction.txt && wc -c < /input/notes > /output/notes.size";
const PATIENT: &[u8] = b"patient 4711: age 59, bmi 32.1, bp 101";
const NOTES: &[u8] = b"fasting sample";

/// Waits until the agent's launch is measured up to its launch policy (the workload then waits for inputs).
async fn wait_for_launch_policy(agent: &Running) {
    for _ in 0..600 {
        if events(agent).iter().any(|e| matches!(e, RuntimeEvent::LaunchPolicy(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the workload never reached its launch policy: {:?}", events(agent));
}

/// Runs `sealroom ARGS` off the runtime's threads: Ok(output) or Err(output).
async fn cli(args: Vec<std::ffi::OsString>) -> Result<String, String> {
    tokio::task::spawn_blocking(move || run_sealroom(sealroom().args(args))).await.unwrap()
}

/// `SubmitInput` straight from a gRPC client: Ok(digest) or Err(the agent's one-line reason).
async fn submit(agent: &Running, name: &str, sealed: Vec<u8>) -> Result<String, String> {
    attestation_client(agent)
        .await
        .submit_input(apb::SubmitInputRequest { name: name.into(), sealed })
        .await
        .map(|r| r.into_inner().digest)
        .map_err(|s| s.message().to_owned())
}

/// An envelope sealed to `agent`'s TEE key by hand (what any client holding its public key can make).
fn envelope_for(agent: &Running, name: &str, reply_key: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    let tee_key: [u8; 32] = agent.handle.key().public().as_bytes().try_into().unwrap();
    let (enc, ciphertext) = seal::seal_x25519(
        &tee_key,
        &sealed::input_info(name, reply_key),
        |enc| sealed::input_aad(name, &tee_key, reply_key, enc),
        plaintext,
        &SystemRandomness::new(),
    )
    .unwrap();
    SealedInput { name: name.into(), tee_key, reply_key: *reply_key, enc, ciphertext }.encode()
}

struct Sender {
    dir: PathBuf,
    golden: PathBuf,
    golden_key: String,
    policy: PathBuf,
}

impl Sender {
    /// `sealroom seal --agent … --name … [--submit]` with this sender's golden document, policy and reply key.
    async fn seal(
        &self,
        agent: &Running,
        ak: &Path,
        name: &str,
        input: &[u8],
        extra: &[&str],
    ) -> Result<String, String> {
        let input_path = self.dir.join(format!("{name}.plain"));
        std::fs::write(&input_path, input).unwrap();
        let mut args: Vec<std::ffi::OsString> = vec![
            "seal".into(),
            "--agent".into(),
            format!("http://{}", agent.tcp_addr.unwrap()).into(),
            "--golden".into(),
            self.golden.clone().into(),
            "--golden-key".into(),
            self.golden_key.clone().into(),
            "--policy".into(),
            self.policy.clone().into(),
            "--name".into(),
            name.into(),
            "--input".into(),
            input_path.into(),
            "--reply-key".into(),
            self.dir.join("user.pub").into(),
            "--tpm-ak".into(),
            ak.into(),
        ];
        args.extend(extra.iter().map(Into::into));
        cli(args).await
    }

    /// `sealroom open --key … --result RESULT --broker-key KEY --out OUT` with this sender's key and golden
    /// document: decrypts the sealed output and checks it against the broker's receipt.
    async fn open(&self, result: &Path, broker_key: &Path, out: &Path) -> Result<String, String> {
        cli(vec![
            "open".into(),
            "--key".into(),
            self.dir.join("user.key").into(),
            "--result".into(),
            result.into(),
            "--broker-key".into(),
            broker_key.into(),
            "--golden".into(),
            self.golden.clone().into(),
            "--golden-key".into(),
            self.golden_key.clone().into(),
            "--out".into(),
            out.into(),
        ])
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_inputs_reach_only_the_attested_workload_and_its_output_only_the_reply_key() {
    require_root();
    let registry = Registry::start().unwrap();
    let image = OciImage::busybox_script(SCRIPT, b"inference v1", std::collections::BTreeMap::new());
    let reference = registry.push("model-owner/inference", "v1", &image).unwrap();
    let (tpm_a, tpm_b) = (booted_swtpm(), booted_swtpm());
    let agent_a = sealroom_tests::agent::start_agent(&tpm_a, &[]).await.unwrap();
    let agent_b = sealroom_tests::agent::start_agent(&tpm_b, &[]).await.unwrap();

    let dir = unique_temp_dir("sealed-io");
    std::fs::create_dir_all(&dir).unwrap();
    let golden = write_golden(&dir.join("golden"));
    let (golden_doc, golden_key) = (golden.digest, golden.public_key);
    let args = ["/bin/busybox", "sh", "-c", SCRIPT];
    let policy = tpm_policy(
        &image.manifest_digest(),
        &args,
        &["PATH=/bin"],
        Some((&golden_doc, &format!("ed25519:{golden_key}"))),
    );
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, &policy).unwrap();
    let (ak_a, ak_b) = (dir.join("ak-a"), dir.join("ak-b"));
    std::fs::write(&ak_a, ak_of(&agent_a).await).unwrap();
    std::fs::write(&ak_b, ak_of(&agent_b).await).unwrap();

    // The model owner's broker, for the key and the output receipt.
    let provider = Provider::new(&dir.join("provider")).unwrap();
    provider.add_key(KEY_ID, "model-owner", &policy, MODEL_KEY).unwrap();
    let golden_dir = dir.join("golden");
    let broker = provider
        .serve(
            "127.0.0.1:0",
            &["--golden".as_ref(), golden_dir.as_os_str(), "--tpm-ak".as_ref(), ak_a.as_os_str()],
        )
        .unwrap();

    // The user's reply key.
    let out = cli(vec![
        "seal".into(),
        "keygen".into(),
        "--out".into(),
        dir.join("user.key").into(),
        "--public".into(),
        dir.join("user.pub").into(),
    ])
    .await
    .unwrap();
    let user_pub = sealed::parse_key_text(&std::fs::read_to_string(dir.join("user.pub")).unwrap()).unwrap();
    assert_eq!(out.trim(), sealed::key_text(&user_pub));
    let sender =
        Sender { dir: dir.clone(), golden: golden_dir.join("boot.json"), golden_key, policy: policy_path };

    // Agent A: waits for patient and notes, output sealed to patient's reply key; a receipt from the broker.
    let spec_a = WorkloadSpec::from_json(
        serde_json::json!({
            "image": reference, "insecure_registries": [registry.host()],
            "broker": broker.url(), "broker_key": broker.key_id().unwrap(), "key_ids": [KEY_ID],
            "sealed_inputs": {"patient": {"max_bytes": 4096}, "notes": {"max_bytes": 64}},
            "seal_output_to": "input:patient",
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let cfg_a = workload_config("sealed-io-a");
    let run_a = {
        let (spec, cfg, handle) = (spec_a.clone(), cfg_a.clone(), agent_a.handle.clone());
        tokio::spawn(async move {
            let keys = BrokerKeys::new(handle.clone());
            workload::run(&spec, &cfg, &handle, &keys).await
        })
    };
    // Agent B: waits for patient only, for 75 s (its attacks must fit in that window even on a loaded machine), no broker.
    let spec_b = WorkloadSpec::from_json(
        serde_json::json!({
            "image": reference, "insecure_registries": [registry.host()],
            "sealed_inputs": {"patient": {"max_bytes": 4096}}, "sealed_input_timeout_secs": 75,
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let cfg_b = workload_config("sealed-io-b");
    let run_b = {
        let (spec, cfg, handle) = (spec_b.clone(), cfg_b.clone(), agent_b.handle.clone());
        tokio::spawn(async move { workload::run(&spec, &cfg, &handle, &workload::NoKeys).await })
    };
    // The user verifies A and seals patient to it, writing the envelope and submitting it; started while A may
    // still be fetching its image, `--wait` asks again until the launch is measured.
    let envelope_path = dir.join("patient.sealed");
    let out = sender
        .seal(
            &agent_a,
            &ak_a,
            "patient",
            PATIENT,
            &[
                "--out",
                envelope_path.to_str().unwrap(),
                "--submit",
                "--wait",
                "120",
                "--require-output-to-me",
            ],
        )
        .await
        .unwrap();
    wait_for_launch_policy(&agent_b).await;
    assert!(out.contains("pass  policy.image_digests: workload image"), "{out}");
    assert!(
        out.contains("pass  workload.launch:") && out.contains("waiting for sealed inputs, no separator yet"),
        "{out}"
    );
    assert!(out.contains("the workload's output is sealed to input:patient: your reply key"), "{out}");
    let patient_digest = format!("sha256:{}", sha256_hex(PATIENT));
    assert!(
        out.contains(&format!("submitted: the agent measured sealed_input patient {patient_digest}")),
        "{out}"
    );
    let envelope = std::fs::read(&envelope_path).unwrap();
    assert!(!envelope.windows(11).any(|w| w == &PATIENT[..11]), "the envelope holds no plaintext");

    attack_sealed_input_replayed(&agent_a, &envelope).await;
    attack_sealed_input_for_another_tee_key(&agent_a, &agent_b, &envelope).await;
    attack_output_in_plaintext_when_required_to_me(&sender, &agent_b, &ak_b).await;
    attack_unexpected_input_name(&sender, &agent_b, &ak_b).await;
    attack_envelope_for_another_input_name(&agent_b, &user_pub).await;
    let other_policy = dir.join("other-image.toml");
    let other_digest = format!("sha256:{}", "ab".repeat(32));
    std::fs::write(&other_policy, policy.replace(&image.manifest_digest(), &other_digest)).unwrap();
    let picky = Sender { policy: other_policy, ..sender_clone(&sender) };
    attack_evidence_fails_the_senders_policy(&picky, &agent_b, &ak_b, &image.manifest_digest()).await;

    // Offline: B's evidence saved to a file (as `sealroom attest --out` writes it), judged and sealed without
    // asking the agent; the tool says it could not check freshness, and the envelope is for B's key.
    let key_b = agent_b.handle.key().public().as_bytes();
    let ev = attestation_client(&agent_b)
        .await
        .get_evidence(apb::GetEvidenceRequest { nonce: vec![7; 32], tee_public_key: Vec::new() })
        .await
        .unwrap()
        .into_inner()
        .evidence
        .unwrap();
    let ev_path = dir.join("b-evidence.pb");
    std::fs::write(&ev_path, prost::Message::encode_to_vec(&ev)).unwrap();
    std::fs::write(dir.join("patient.plain"), PATIENT).unwrap();
    let offline_path = dir.join("b-patient.sealed");
    let mut args: Vec<std::ffi::OsString> = vec!["seal".into(), "--evidence".into(), ev_path.into()];
    for (flag, value) in [
        ("--golden", sender.golden.clone()),
        ("--golden-key", PathBuf::from(&sender.golden_key)),
        ("--policy", sender.policy.clone()),
        ("--name", PathBuf::from("patient")),
        ("--input", dir.join("patient.plain")),
        ("--reply-key", dir.join("user.pub")),
        ("--tpm-ak", ak_b.clone()),
        ("--out", offline_path.clone()),
    ] {
        args.extend([flag.into(), value.into()]);
    }
    let out = cli(args).await.unwrap();
    assert!(out.contains("freshness not checked"), "{out}");
    let offline = SealedInput::parse(&std::fs::read(&offline_path).unwrap()).unwrap();
    assert_eq!(offline.tee_key.as_slice(), key_b);

    // The second input: A launches and runs.
    sender.seal(&agent_a, &ak_a, "notes", NOTES, &["--submit"]).await.unwrap();
    let outcome = run_a.await.unwrap().unwrap();
    assert_eq!(outcome.exit_code, 0, "listing: {}", outcome.output_listing);
    let ev = events(&agent_a);
    let sep = ev.iter().position(|e| *e == RuntimeEvent::LaunchSeparator).unwrap();
    let sealed_events: Vec<&RuntimeEvent> =
        ev[..sep].iter().filter(|e| matches!(e, RuntimeEvent::SealedInput { .. })).collect();
    assert_eq!(
        sealed_events,
        [
            &RuntimeEvent::SealedInput {
                name: "patient".into(),
                digest: patient_digest.clone(),
                reply_key: sealed::key_text(&user_pub)
            },
            &RuntimeEvent::SealedInput {
                name: "notes".into(),
                digest: format!("sha256:{}", sha256_hex(NOTES)),
                reply_key: sealed::key_text(&user_pub)
            },
        ]
    );
    assert!(ev.contains(&RuntimeEvent::SealedOutputTo("input:patient".into())));

    attack_sealed_input_after_separator(&sender, &agent_a, &ak_a, &user_pub).await;

    // The result leaves as ciphertext only; the receipt names the (salted) output digest.
    workload::receipt::finish_in_vm(&agent_a.handle, &spec_a, &cfg_a, &outcome).await;
    let result = cfg_a.work_dir.join("result");
    let listed = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(listed(&result), ["evidence.pb", "output.sealed", "receipt.jwt", "receipts"]);
    // Every broker's receipt (one here, the single-broker form names it "broker").
    assert_eq!(listed(&result.join("receipts")), ["broker.evidence.pb", "broker.jwt"]);
    let names =
        ["evidence.pb", "output.sealed", "receipt.jwt", "receipts/broker.evidence.pb", "receipts/broker.jwt"];
    let prediction = PATIENT.to_ascii_uppercase();
    for name in &names {
        let bytes = std::fs::read(result.join(name)).unwrap();
        for secret in [&prediction[..], PATIENT, b"fasting"] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret), "{name} holds plaintext");
        }
    }
    let env = SealedOutput::parse(&std::fs::read(result.join("output.sealed")).unwrap()).unwrap();
    assert_eq!(env.reply_key, user_pub);
    assert_eq!(env.output_digest, outcome.output_digest.0);

    // An auditor without the key checks the receipt and the evidence against the digest the envelope names.
    let jwk = broker.state_dir.join("signing-key.jwk.json");
    let out = cli(vec![
        "verify-receipt".into(),
        result.clone().into(),
        "--golden".into(),
        sender.golden.clone().into(),
        "--golden-key".into(),
        sender.golden_key.clone().into(),
        "--broker-key".into(),
        jwk.clone().into(),
        "--tpm-ak".into(),
        ak_a.clone().into(),
    ])
    .await
    .unwrap();
    assert!(out.contains("receipt ok"), "{out}");
    assert!(
        out.contains(&format!(
            "output       {} (sealed to {}",
            outcome.output_digest,
            sealed::key_text(&user_pub)
        )),
        "{out}"
    );
    assert!(out.contains("evidence re-verified"), "{out}");

    // The receipt names what was measured: the key's release by this broker and both sealed inputs.
    let claims = sealroom_broker::token::verify(
        std::fs::read_to_string(result.join("receipt.jwt")).unwrap().trim(),
        &serde_json::from_slice(&std::fs::read(&jwk).unwrap()).unwrap(),
    )
    .unwrap();
    let sub = &claims["submods"]["sealroom"];
    assert_eq!(
        sub["sealroom.releases"],
        serde_json::json!([{"broker_key": broker.key_id().unwrap(), "key_id": KEY_ID}])
    );
    assert_eq!(
        sub["sealroom.sealed_inputs"],
        serde_json::json!([
            {"name": "patient", "digest": patient_digest, "reply_key": sealed::key_text(&user_pub)},
            {"name": "notes", "digest": format!("sha256:{}", sha256_hex(NOTES)), "reply_key": sealed::key_text(&user_pub)},
        ])
    );

    // The user opens it and checks it against the receipt.
    let opened = dir.join("opened");
    let out = sender.open(&result, &jwk, &opened).await.unwrap();
    assert!(out.contains(&format!("output       {} (matches the receipt)", outcome.output_digest)), "{out}");
    assert_eq!(std::fs::read(opened.join("prediction.txt")).unwrap(), prediction);
    assert_eq!(std::fs::read_to_string(opened.join("notes.size")).unwrap().trim(), NOTES.len().to_string());
    let (d, _) = sealroom_measurements::output::digest_dir(&opened).unwrap();
    assert_eq!(d, outcome.output_digest.0);
    attack_output_swapped(&sender, &result, &jwk, &outcome, user_pub).await;

    // B never got its input: it gives up after its timeout, and a late input is refused as such.
    let err = run_b.await.unwrap().unwrap_err().to_string();
    assert_eq!(err, "workload sealed inputs: patient not received within 75 s");
    attack_sealed_input_after_timeout(&agent_b, &user_pub).await;

    drop(broker);
    agent_a.stop().await.unwrap();
    agent_b.stop().await.unwrap();
}

/// The same envelope again is refused as a replay.
async fn attack_sealed_input_replayed(agent_a: &Running, envelope: &[u8]) {
    let err = submit(agent_a, "patient", envelope.to_vec()).await.unwrap_err();
    assert_eq!(err, "sealed input: \"patient\" refused: replay: this envelope was already submitted");
}

/// A's envelope handed to B (waiting for `patient` too).
async fn attack_sealed_input_for_another_tee_key(agent_a: &Running, agent_b: &Running, envelope: &[u8]) {
    let err = submit(agent_b, "patient", envelope.to_vec()).await.unwrap_err();
    let (key_a, key_b) = (agent_a.handle.key().public().as_bytes(), agent_b.handle.key().public().as_bytes());
    assert_eq!(
        err,
        format!(
            "sealed input: \"patient\" refused: sealed to another TEE key ({}…), this agent's is {}…",
            hex::encode(&key_a[..8]),
            hex::encode(&key_b[..8])
        )
    );
}

/// B's output is not sealed: a sender who requires it to come back to them refuses to seal.
async fn attack_output_in_plaintext_when_required_to_me(sender: &Sender, agent_b: &Running, ak_b: &Path) {
    let err = sender.seal(agent_b, ak_b, "patient", PATIENT, &["--require-output-to-me"]).await.unwrap_err();
    assert!(err.contains("the workload's output is not sealed: it leaves the VM in plaintext"), "{err}");
    assert!(
        err.contains("refused: --require-output-to-me: the workload's output goes out in plaintext"),
        "{err}"
    );
}

/// A genuine envelope for B, under a name its spec does not list.
async fn attack_unexpected_input_name(sender: &Sender, agent_b: &Running, ak_b: &Path) {
    let err = sender.seal(agent_b, ak_b, "extra", b"x", &["--submit"]).await.unwrap_err();
    assert!(err.contains("refused by the agent: sealed input: unexpected input name \"extra\": the workload waits for patient"), "{err}");
}

/// A request naming another input than the one sealed in the envelope.
async fn attack_envelope_for_another_input_name(agent_b: &Running, user_pub: &[u8; 32]) {
    let other = envelope_for(agent_b, "patient", user_pub, PATIENT);
    let err = submit(agent_b, "notes", other).await.unwrap_err();
    assert!(err.contains("the envelope is sealed for input \"patient\""), "{err}");
}

/// `seal` refuses evidence whose policy fails: `picky`'s policy names another image digest than B runs
/// (`image_digest`); nothing is submitted.
async fn attack_evidence_fails_the_senders_policy(
    picky: &Sender,
    agent_b: &Running,
    ak_b: &Path,
    image_digest: &str,
) {
    let err = picky.seal(agent_b, ak_b, "patient", PATIENT, &["--submit"]).await.unwrap_err();
    assert!(
        err.contains(&format!(
            "refused: policy.image_digests: workload image digest {image_digest} not allowed"
        )),
        "{err}"
    );
    assert!(!err.contains("submitted"), "{err}");
}

/// A well-formed envelope for A's key, after launch; and the sender's own check refuses it before sealing.
async fn attack_sealed_input_after_separator(
    sender: &Sender,
    agent_a: &Running,
    ak_a: &Path,
    user_pub: &[u8; 32],
) {
    let late = envelope_for(agent_a, "notes", user_pub, b"late notes");
    let err = submit(agent_a, "notes", late).await.unwrap_err();
    assert_eq!(
        err,
        "sealed input: \"notes\" refused: the workload has all its sealed inputs and is launching: sealed inputs are \
         accepted before the launch separator only"
    );
    let err = sender.seal(agent_a, ak_a, "notes", NOTES, &[]).await.unwrap_err();
    assert!(err.contains("refused: workload.launch: the launch separator was measured"), "{err}");
}

/// The operator swaps in another output sealed to the user's key (anyone can seal to a public key) next to
/// the genuine evidence and receipt of `result`: refused, whether its header names its own digest or claims the
/// receipt's, and nothing is written.
async fn attack_output_swapped(
    sender: &Sender,
    result: &Path,
    broker_key: &Path,
    outcome: &Outcome,
    user_pub: [u8; 32],
) {
    let forged = Archive { files: vec![("prediction.txt".into(), b"FORGED".to_vec())] };
    for claim in [forged.digest().0, outcome.output_digest.0] {
        let (enc, ciphertext) = seal::seal_x25519(
            &user_pub,
            sealed::OUTPUT_INFO,
            |enc| sealed::output_aad(&user_pub, &claim, enc),
            &forged.encode(),
            &SystemRandomness::new(),
        )
        .unwrap();
        let swapped = sender.dir.join(format!("swapped-{}", hex::encode(&claim[..4])));
        std::fs::create_dir_all(&swapped).unwrap();
        for f in ["evidence.pb", "receipt.jwt"] {
            std::fs::copy(result.join(f), swapped.join(f)).unwrap();
        }
        let bytes = SealedOutput { reply_key: user_pub, output_digest: claim, enc, ciphertext }.encode();
        std::fs::write(swapped.join("output.sealed"), bytes).unwrap();
        let err = sender.open(&swapped, broker_key, &swapped.join("out")).await.unwrap_err();
        let want = if claim == outcome.output_digest.0 {
            format!(
                "refused: the decrypted output digests to sha256:{}, the receipt names {}",
                hex::encode(forged.digest().0),
                outcome.output_digest
            )
        } else {
            format!("output digest mismatch: the receipt names {}", outcome.output_digest)
        };
        assert!(err.contains(&want), "{err}");
        assert!(!swapped.join("out").exists(), "nothing written for a refused result");
    }
}

/// B gave up waiting for its input: a late one is refused as such, and B never launched.
async fn attack_sealed_input_after_timeout(agent_b: &Running, user_pub: &[u8; 32]) {
    let err =
        submit(agent_b, "patient", envelope_for(agent_b, "patient", user_pub, PATIENT)).await.unwrap_err();
    assert!(
        err.contains("the launch gave up waiting for sealed inputs (patient missing after 75 s)"),
        "{err}"
    );
    assert!(!events(agent_b).contains(&RuntimeEvent::LaunchSeparator));
}

fn sender_clone(s: &Sender) -> Sender {
    Sender {
        dir: s.dir.clone(),
        golden: s.golden.clone(),
        golden_key: s.golden_key.clone(),
        policy: s.policy.clone(),
    }
}

/// The agent's inbox on its own (a real agent on swtpm, its gRPC service): every refusal the workload test does
/// not reach, with its status code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_refuses_early_oversized_unopenable_and_late_inputs_with_their_codes() {
    let tpm = Swtpm::start().unwrap();
    let agent = sealroom_tests::agent::start_agent(&tpm, &[]).await.unwrap();
    let reply = [9u8; 32];
    /// `SubmitInput` that must fail: the status code and message (requests up to 16 MiB leave the client).
    async fn code(agent: &Running, name: &str, sealed: Vec<u8>) -> (tonic::Code, String) {
        let s = attestation_client(agent)
            .await
            .max_encoding_message_size(16 << 20)
            .submit_input(apb::SubmitInputRequest { name: name.into(), sealed })
            .await
            .unwrap_err();
        (s.code(), s.message().to_owned())
    }
    // Nothing waits yet.
    let (c, m) = code(&agent, "p", envelope_for(&agent, "p", &reply, b"x")).await;
    assert_eq!(c, tonic::Code::FailedPrecondition);
    assert!(m.contains("no workload is waiting for sealed inputs"), "{m}");
    // Request limits, before anything else.
    let (c, m) = code(&agent, "../p", vec![1]).await;
    assert_eq!(c, tonic::Code::InvalidArgument);
    assert!(m.starts_with("request: sealed input: invalid name"), "{m}");
    let (c, m) = code(&agent, "p", vec![0; sealed::MAX_INPUT_BYTES + 1024]).await;
    assert_eq!(c, tonic::Code::InvalidArgument);
    assert!(m.contains("limit"), "{m}");
    let (c, _) = code(&agent, "p", vec![0; sealroom_agent::server::MAX_REQUEST_BYTES]).await;
    assert_eq!(c, tonic::Code::OutOfRange, "over the agent's request limit: refused by the transport");

    // The launch waits for p (at most 8 bytes).
    let waiting = {
        let handle = agent.handle.clone();
        tokio::spawn(async move {
            handle
                .sealed_inbox()
                .await_inputs(
                    std::collections::BTreeMap::from([("p".to_owned(), 8)]),
                    Duration::from_secs(60),
                )
                .await
        })
    };
    let mut opened = false;
    for _ in 0..100 {
        let (_, m) = code(&agent, "p", b"not an envelope".to_vec()).await;
        if m.contains("not a sealed input") {
            opened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(opened, "the inbox never opened");
    let (c, m) = code(&agent, "p", envelope_for(&agent, "p", &reply, b"123456789")).await;
    assert_eq!(c, tonic::Code::InvalidArgument);
    assert_eq!(m, "sealed input: \"p\" refused: 9 bytes, the spec allows 8");
    let mut tampered = envelope_for(&agent, "p", &reply, b"1234");
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let (_, m) = code(&agent, "p", tampered).await;
    assert_eq!(m, "sealed input: \"p\" refused: does not open with this agent's TEE key");
    // The same plaintext under another reply key than the one it was sealed with (info binds it).
    let mut swapped = SealedInput::parse(&envelope_for(&agent, "p", &reply, b"1234")).unwrap();
    swapped.reply_key = [8; 32];
    let (_, m) = code(&agent, "p", swapped.encode()).await;
    assert!(m.ends_with("does not open with this agent's TEE key"), "{m}");
    assert!(
        !events(&agent).iter().any(|e| matches!(e, RuntimeEvent::SealedInput { .. })),
        "nothing measured"
    );

    submit(&agent, "p", envelope_for(&agent, "p", &reply, b"1234")).await.unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got["p"].plaintext, b"1234");
    assert_eq!(agent.handle.sealed_inbox().reply_key("p").await, Some(reply));
    let (c, m) = code(&agent, "p", envelope_for(&agent, "p", &reply, b"5678")).await;
    assert_eq!(c, tonic::Code::FailedPrecondition);
    assert!(m.contains("is launching: sealed inputs are accepted before the launch separator only"), "{m}");
    let again =
        agent.handle.sealed_inbox().await_inputs(std::collections::BTreeMap::new(), Duration::ZERO).await;
    assert!(again.unwrap_err().to_string().contains("already opened once"));
    agent.stop().await.unwrap();

    // A workload launched without sealed inputs closes the inbox: a later one is late, and says why.
    let tpm2 = Swtpm::start().unwrap();
    let agent2 = sealroom_tests::agent::start_agent(&tpm2, &[]).await.unwrap();
    agent2.handle.sealed_inbox().close_for_launch().await;
    let (c, m) = code(&agent2, "p", envelope_for(&agent2, "p", &reply, b"x")).await;
    assert_eq!(c, tonic::Code::FailedPrecondition);
    assert!(m.contains("launched without sealed inputs"), "{m}");
    agent2.stop().await.unwrap();
}

/// `sealroom seal --tpm-ek-ca`: the agent's AK is trusted through credential activation against its TPM's EK
/// certificate, not because the agent presented it; a TPM certified by another CA gets nothing sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_trusts_the_agents_tpm_through_its_ek_certificate() {
    use sealroom_tests::swtpm::EkCa;
    let digest = format!("sha256:{}", "cd".repeat(32));
    let launch = [
        RuntimeEvent::ImageReference(format!("registry.example/inference@{digest}")),
        RuntimeEvent::ManifestDigest(digest.clone()),
        RuntimeEvent::Arg("/job".into()),
        RuntimeEvent::SealedOutputTo("input:patient".into()),
        RuntimeEvent::LaunchPolicy("allow_env_override=[]".into()),
    ];
    let (ca, rogue) = (EkCa::create().unwrap(), EkCa::create().unwrap());
    let dir = unique_temp_dir("sealed-ek");
    std::fs::create_dir_all(&dir).unwrap();
    let golden = write_golden(&dir.join("golden"));
    let (golden_doc, golden_key) = (golden.digest, golden.public_key);
    let policy = tpm_policy(&digest, &["/job"], &[], Some((&golden_doc, &format!("ed25519:{golden_key}"))));
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    std::fs::write(dir.join("user.pub"), format!("{}\n", sealed::key_text(&[5; 32]))).unwrap();
    std::fs::write(dir.join("record"), PATIENT).unwrap();
    for (tpm_ca, ok) in [(&ca, true), (&rogue, false)] {
        let tpm = Swtpm::start_with_ek_cert(tpm_ca).unwrap();
        boot(&tpm);
        let agent = sealroom_tests::agent::start_agent(&tpm, &launch).await.unwrap();
        let mut args: Vec<std::ffi::OsString> =
            vec!["seal".into(), "--agent".into(), format!("http://{}", agent.tcp_addr.unwrap()).into()];
        for (flag, value) in [
            ("--tpm-ek-ca", ca.bundle_pem().unwrap()),
            ("--golden", dir.join("golden/boot.json")),
            ("--golden-key", PathBuf::from(&golden_key)),
            ("--policy", dir.join("policy.toml")),
            ("--name", PathBuf::from("patient")),
            ("--input", dir.join("record")),
            ("--reply-key", dir.join("user.pub")),
            ("--out", dir.join("record.sealed")),
        ] {
            args.extend([flag.into(), value.into()]);
        }
        args.push("--require-output-to-me".into());
        let r = cli(args).await;
        if ok {
            let out = r.unwrap();
            assert!(out.contains("(activated)"), "{out}");
            assert!(out.contains("pass  policy.golden"), "{out}");
            let env = SealedInput::parse(&std::fs::read(dir.join("record.sealed")).unwrap()).unwrap();
            assert_eq!(env.tee_key.as_slice(), agent.handle.key().public().as_bytes());
            std::fs::remove_file(dir.join("record.sealed")).unwrap();
        } else {
            let err = r.unwrap_err();
            assert!(err.contains("refused: tpm ek certificate: chain to a configured EK CA"), "{err}");
            assert!(!dir.join("record.sealed").exists(), "nothing sealed for a TPM of another CA");
        }
        agent.stop().await.unwrap();
    }
}
