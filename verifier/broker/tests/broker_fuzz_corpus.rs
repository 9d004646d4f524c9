//! Replays the checked-in `broker_inputs` fuzz corpus (and simple mutations: truncations, byte flips) through
//! the broker's parsers of outside input, as the fuzz target does, so CI proves no corpus input panics.
//! `SEALROOM_WRITE_BROKER_CORPUS=1` regenerates the seed files from the real code.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

#[path = "../../tests/common/corpus.rs"]
mod common_corpus;

use std::path::PathBuf;

use common_corpus::mutations;
use sealroom_broker::admin::AdminRequest;
use sealroom_broker::appraisal::Appraisal;
use sealroom_broker::audit::{self, AuditEntry, AuditLog, Decision};
use sealroom_broker::policy::Policy;

fn corpus_dir() -> PathBuf {
    common_corpus::corpus_root().join("broker_inputs")
}

fn feed(data: &[u8]) {
    let _ = audit::verify(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Policy::parse(text);
    }
    let _ = Appraisal::from_json(data);
    let _ = AdminRequest::from_json(data);
}

fn write_seeds() {
    let dir = corpus_dir();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("audit.log");
    let (mut log, _) = AuditLog::open(&path).unwrap();
    for (i, decision) in [Decision::Released, Decision::Refused, Decision::Refused].into_iter().enumerate() {
        log.append(
            &[AuditEntry {
                decision,
                key_id: format!("provider-a/key-{i}"),
                evidence_digest: [u8::try_from(i).unwrap(); 32],
                rule: "policy.env".into(),
                reason: "policy.env: environment variable \"X=1\" not allowed".into(),
            }],
            1_700_000_000_000,
        )
        .unwrap();
    }
    std::fs::write(dir.join("audit.log"), std::fs::read(&path).unwrap()).unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        r#"version = 1
platforms = ["tpm", "tdx"]
tcb_statuses = ["UpToDate"]
minimum_tcb = { "snp.microcode" = 213 }
debug = "forbidden"
golden = { signers = ["ed25519:3333333333333333333333333333333333333333333333333333333333333333"], documents = ["sha256:2222222222222222222222222222222222222222222222222222222222222222"] }
image_digests = ["sha256:1111111111111111111111111111111111111111111111111111111111111111"]
args = ["--in", "/data"]
env = ["MODE=batch", "THREADS=*"]
"#,
    )
    .unwrap();
    use sealroom_broker::appraisal::{HexBytes, PlatformClaims, RuntimeReplay, SignedBinding};
    use sealroom_verifier::claims::{AkTrustClaims, TpmClaims};
    let appraisal = Appraisal {
        evidence: "sealroom evidence".into(),
        policy_id: "sealroom.keybroker.v1".into(),
        at: 1_700_000_000,
        status: sealroom_verifier::ear::Status::Affirming,
        trust_vector: sealroom_verifier::ear::TrustworthinessVector {
            instance_identity: 2,
            configuration: 2,
            hardware: 2,
            ..Default::default()
        },
        platform: Some(PlatformClaims::Tpm(TpmClaims {
            ak: AkTrustClaims::Enrolled { ak_public_sha256: HexBytes(vec![0x55; 32]) },
            quoted_banks: vec![sealroom_measurements::evidence::HashAlg::Sha256],
            firmware_version: Some(1),
            reset_count: Some(0),
        })),
        registers: [("pcr11.sha256".parse().unwrap(), HexBytes(vec![0x44; 32]))].into(),
        binding: Some(SignedBinding::TpmExtraData(HexBytes(vec![0; 32]))),
        runtime: Some(RuntimeReplay {
            registers: vec!["pcr15.sha256".parse().unwrap()],
            events: vec![
                sealroom_measurements::cel::RuntimeEvent::Arg("--in".into()),
                sealroom_measurements::cel::RuntimeEvent::LaunchSeparator,
            ],
        }),
        gpus: vec![],
        layers: vec![],
        warnings: vec![],
    };
    std::fs::write(dir.join("appraisal.json"), serde_json::to_vec_pretty(&appraisal).unwrap()).unwrap();
    std::fs::write(
        dir.join("admin-add.json"),
        r#"{"token":null,"operation":{"op":"add","key_id":"a/1","owner":"provider-a","policy":"version = 1","material_hex":"00ff"}}"#,
    )
    .unwrap();
}

#[test]
fn broker_inputs_corpus() {
    if std::env::var_os("SEALROOM_WRITE_BROKER_CORPUS").is_some() {
        write_seeds();
    }
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 4, "corpus missing: {files:?}");
    for f in &files {
        let input = std::fs::read(f).unwrap();
        for m in mutations(&input) {
            feed(&m);
        }
    }
    // The seeds themselves are valid inputs of their parser.
    audit::verify(&std::fs::read(corpus_dir().join("audit.log")).unwrap()).unwrap();
    Policy::parse(&std::fs::read_to_string(corpus_dir().join("policy.toml")).unwrap()).unwrap();
    Appraisal::from_json(&std::fs::read(corpus_dir().join("appraisal.json")).unwrap()).unwrap();
    AdminRequest::from_json(&std::fs::read(corpus_dir().join("admin-add.json")).unwrap()).unwrap();
}
