//! The seed demo's core on this host, every part real: the data provider seals the diabetes table and registers
//! the data key in the key broker with a policy (job image digest + fixed args); the researcher's job image sits
//! in a loopback docker-registry; the agent's workload launcher (as in the VM) measures the job into a swtpm,
//! obtains the key from the broker with TPM evidence, runs the job in crun (it decrypts the data and trains a
//! ridge regression), measures the output, and obtains an output receipt; the result directory is checked as
//! `sealroom verify-receipt` checks it. Then the refusals: a changed output file, a changed claim, a wrong broker
//! key, and a modified job (another image digest) that gets no key, with the policy's reason in the audit log.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::too_many_lines)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sealroom_agent::paths::KernelPaths;
use sealroom_agent::tee_key::TeeKey;
use sealroom_agent::worker::{AttestationHandle, WorkerConfig};
use sealroom_agent::workload::broker::BrokerKeys;
use sealroom_agent::workload::fetch::FetchOptions;
use sealroom_agent::workload::receipt::{self, names};
use sealroom_agent::workload::spec::WorkloadSpec;
use sealroom_agent::workload::{self, WorkloadConfig};
use sealroom_broker::appraisal::VerifierAppraiser;
use sealroom_broker::audit::AuditLog;
use sealroom_broker::grpc::KeyBrokerService;
use sealroom_broker::keystore::{Kek, KeyStore};
use sealroom_broker::nonce::NonceBook;
use sealroom_broker::nonce_mac::NonceKeys;
use sealroom_broker::policy::GoldenSet;
use sealroom_broker::receipt::{CheckInput, check};
use sealroom_broker::service::{Broker, BrokerParts};
use sealroom_broker::token::Signer;
use sealroom_broker::{ManualClock, Randomness, SystemRandomness};
use sealroom_demo::{KEY_ID, job_image, policy, seal_dataset};
use sealroom_proto::keybroker::v1 as kpb;
use sealroom_tests::registry::Registry;
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};

async fn handle(tpm: &Swtpm) -> AttestationHandle {
    let root = unique_temp_dir("demo-root");
    std::fs::create_dir_all(&root).unwrap();
    let cfg = WorkerConfig {
        paths: KernelPaths::new(root),
        no_tpm: false,
        tcti: Some(tpm.tcti()),
        runtime_log_dir: unique_temp_dir("demo-rtlog"),
        queue_depth: 16,
        request_timeout: Duration::from_secs(20),
    };
    tokio::task::spawn_blocking(move || AttestationHandle::start(&cfg, TeeKey::generate().unwrap()))
        .await
        .unwrap()
        .unwrap()
}

fn config(tag: &str) -> WorkloadConfig {
    let dir = unique_temp_dir(tag);
    WorkloadConfig {
        work_dir: dir.join("work"),
        keys_dir: dir.join("keys"),
        output_dir: dir.join("output"),
        runtime: sealroom_tests::agent::host_crun(&dir.join("crun-state")).unwrap(),
        fetch: FetchOptions {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenario_on_this_host_key_job_receipt_and_refusals() {
    if !sealroom_tests::agent::is_root() {
        eprintln!("SKIPPED: crun needs root to create namespaces; run the tests as root (CI does)");
        return;
    }
    let job = tokio::task::spawn_blocking(sealroom_demo::build_job_binary).await.unwrap().unwrap();
    let registry = Registry::start().unwrap();
    let image = job_image(&job, None).unwrap();
    let reference = registry.push("research/diabetes-ridge", "v1", &image).unwrap();
    let digest = image.manifest_digest();

    // The data provider: a fresh data key, the sealed table on its "disk", the key and policy in the broker.
    let mut data_key = [0u8; 32];
    sealroom_demo::random(&mut data_key).unwrap();
    let mut nonce = [0u8; 12];
    sealroom_demo::random(&mut nonce).unwrap();
    let plain = sealroom_demo::dataset().unwrap();
    let mut disk = seal_dataset(&plain, &data_key, nonce).unwrap();
    disk.resize(disk.len().next_multiple_of(4096) + 4096, 0); // a raw disk's zero padding
    let data_dir = unique_temp_dir("demo-data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let data_disk = data_dir.join("data.raw");
    std::fs::write(&data_disk, &disk).unwrap();
    assert!(!disk.windows(20).any(|w| plain.starts_with(w)), "the disk must not hold plaintext");

    let tpm = Swtpm::start().unwrap();
    let h = handle(&tpm).await;
    let ak = h.evidence(sealroom_measurements::binding::Nonce([1; 32])).await.unwrap().tpm.unwrap().ak_public;
    // A second enrolled machine, for the modified job's run (a fresh boot: PCR 15 starts at zero).
    let tpm2 = Swtpm::start().unwrap();
    let h2 = handle(&tpm2).await;
    let ak2 =
        h2.evidence(sealroom_measurements::binding::Nonce([1; 32])).await.unwrap().tpm.unwrap().ak_public;
    let state = unique_temp_dir("demo-broker");
    std::fs::create_dir_all(&state).unwrap();
    let rng: Arc<dyn Randomness> = Arc::new(SystemRandomness::new());
    let store = Arc::new(
        KeyStore::open(&state.join("keys.redb"), Kek::from_bytes(&[5; 32]).unwrap(), rng.as_ref()).unwrap(),
    );
    store
        .add(
            KEY_ID,
            "diabetes-provider",
            &policy("\"tpm\"", None, &digest, None),
            Some(data_key.to_vec()),
            rng.as_ref(),
            0,
        )
        .unwrap();
    let signer = Signer::load_or_create(&state.join("signing.pk8")).unwrap();
    let jwk = signer.jwk();
    let broker_kid = signer.kid().to_owned();
    let audit_path = state.join("audit.log");
    let broker = Arc::new(Broker::new(BrokerParts {
        clock: Arc::new(ManualClock::at(1_760_000_000_000)),
        rng,
        appraiser: Arc::new(VerifierAppraiser::with_pinned_tpm_aks(vec![ak.clone(), ak2])),
        store,
        golden: GoldenSet::default(),
        signer,
        nonces: NonceBook::new(NonceKeys::new(&[0x6e; 32], None, 30_000).unwrap()),
        audit: AuditLog::open(&audit_path).unwrap().0,
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(kpb::key_broker_server::KeyBrokerServer::new(KeyBrokerService(broker)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // The operator's spec, the agent's run (as in the VM: BrokerKeys), the receipt.
    let spec_json = |image_ref: &str| {
        serde_json::json!({
            "image": image_ref, "insecure_registries": [registry.host()], "broker": broker_url,
            "broker_key": broker_kid, "key_ids": [KEY_ID], "inputs": {"dataset": data_disk.display().to_string()},
        })
    };
    let spec = WorkloadSpec::from_json(spec_json(&reference).to_string().as_bytes()).unwrap();
    let cfg = config("demo-run");
    let outcome = workload::run(&spec, &cfg, &h, &BrokerKeys::new(h.clone())).await.unwrap();
    assert_eq!(outcome.exit_code, 0);
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.output_dir.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["rows"]["train"], 354);
    let r2 = metrics["test"]["r2"].as_f64().unwrap();
    assert!(r2 > 0.3 && r2 < 0.7, "held-out R² {r2}");
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.output_dir.join("model.json")).unwrap()).unwrap();
    assert_eq!(model["coefficients"].as_object().unwrap().len(), 10);

    let r = receipt::obtain(&h, &spec.brokers[0].broker, KEY_ID, &outcome.output_digest).await.unwrap();
    let result = unique_temp_dir("demo-result");
    receipt::write_result(&result, &cfg.output_dir, &outcome.output_listing, &[("broker".into(), r)])
        .unwrap();

    // Checked as `sealroom verify-receipt` does: the files, the signature, the claims, the registers.
    let quoted = {
        let ev: sealroom_proto::attestation::v1::Evidence =
            prost_decode(&std::fs::read(result.join(names::EVIDENCE)).unwrap());
        let ev = sealroom_measurements::evidence::Evidence::try_from(ev).unwrap();
        let a = sealroom_broker::appraisal::Appraiser::appraise(
            &VerifierAppraiser::with_pinned_tpm_aks(vec![ak.clone()]),
            &ev,
            1_760_000_000_000,
        )
        .unwrap();
        // The "golden" registers of this host: what the swtpm quoted for the firmware PCRs (none were extended).
        a.registers
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_hex()))
            .filter(|(k, _)| k.starts_with("pcr0."))
            .collect::<BTreeMap<_, _>>()
    };
    assert!(!quoted.is_empty());
    let dir_digest = |dir: &std::path::Path| {
        format!(
            "sha256:{}",
            hex::encode(sealroom_measurements::output::digest_dir(&dir.join("output")).unwrap().0)
        )
    };
    let ev_digest = |dir: &std::path::Path| -> [u8; 32] {
        aws_digest(&std::fs::read(dir.join(names::EVIDENCE)).unwrap())
    };
    let token = std::fs::read_to_string(result.join(names::RECEIPT)).unwrap();
    let good = check(&CheckInput {
        token: &token,
        broker_jwk: &jwk,
        output_digest: &dir_digest(&result),
        golden_registers: &quoted,
        evidence_digest: Some(ev_digest(&result)),
    })
    .unwrap();
    assert_eq!(good.workload.image_digest, digest);
    assert_eq!(good.workload.args, sealroom_demo::job_argv());
    assert_eq!(good.output_digest, outcome.output_digest.to_string());
    assert_eq!(good.claims["submods"]["sealroom"]["sealroom.key_id"], KEY_ID);

    // A changed output file.
    std::fs::write(result.join("output/metrics.json"), b"{\"test\": {\"r2\": 0.99}}\n").unwrap();
    let e = check(&CheckInput {
        token: &token,
        broker_jwk: &jwk,
        output_digest: &dir_digest(&result),
        golden_registers: &quoted,
        evidence_digest: None,
    })
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("receipt: output digest mismatch"), "{e}");
    // A changed claim (the payload edited, the signature kept).
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    let payload = b64d(&parts[1]).replace(&digest, &image.config_digest());
    parts[1] = b64e(&payload);
    let forged = parts.join(".");
    let e = check(&CheckInput {
        token: &forged,
        broker_jwk: &jwk,
        output_digest: &outcome.output_digest.to_string(),
        golden_registers: &quoted,
        evidence_digest: None,
    })
    .unwrap_err()
    .to_string();
    assert_eq!(e, "token: signature does not verify");
    // Another broker's key.
    let other = Signer::load_or_create(&unique_temp_dir("demo-other").with_extension("pk8")).unwrap().jwk();
    let e = check(&CheckInput {
        token: &token,
        broker_jwk: &other,
        output_digest: &outcome.output_digest.to_string(),
        golden_registers: &quoted,
        evidence_digest: None,
    })
    .unwrap_err()
    .to_string();
    assert_eq!(e, "token: signature does not verify");

    // The modified job: another image digest gets no key; the launcher stops with the policy's reason.
    let modified = job_image(&job, Some("modified")).unwrap();
    let modified_ref = registry.push("research/diabetes-ridge", "v2", &modified).unwrap();
    let spec2 = WorkloadSpec::from_json(spec_json(&modified_ref).to_string().as_bytes()).unwrap();
    let cfg2 = config("demo-modified");
    let e = workload::run(&spec2, &cfg2, &h2, &BrokerKeys::new(h2.clone())).await.unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "provider broker ({broker_kid}) refused key {KEY_ID}: policy.image_digests: workload image digest {} not allowed",
            modified.manifest_digest()
        )),
        "{e}"
    );
    assert!(std::fs::read_dir(&cfg2.output_dir).unwrap().next().is_none(), "the modified job never ran");
    let log = std::fs::read_to_string(&audit_path).unwrap();
    let records: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let decisions: Vec<&str> = records.iter().map(|r| r["decision"].as_str().unwrap()).collect();
    assert_eq!(decisions, ["released", "receipt", "refused"]);
    assert_eq!(records[2]["rule"], "policy.image_digests");
}

fn prost_decode<M: prost::Message + Default>(b: &[u8]) -> M {
    M::decode(b).unwrap()
}

fn aws_digest(b: &[u8]) -> [u8; 32] {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref().try_into().unwrap()
}

fn b64d(s: &str) -> String {
    use base64::Engine;
    String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap()
}

fn b64e(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}
