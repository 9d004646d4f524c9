//! The real `sealroom broker serve` process on loopback: gRPC Challenge/Release, key management over the admin
//! socket, the published JWK, and crash safety under `kill -9`.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sealroom_broker::audit::{self, AuditRecord, Decision};
use sealroom_broker::{seal, token};
use sealroom_measurements::binding::{Kem, Nonce};
use sealroom_measurements::evidence::{Evidence, Platform};
use sealroom_proto::keybroker::v1 as pb;
use sealroom_proto::keybroker::v1::key_broker_client::KeyBrokerClient;
use sealroom_tests::broker::{BrokerProcess, KillSchedule};
use sealroom_tests::placeholder::{REFUSAL, TPM_POLICY, release_request};
use sha2::{Digest, Sha256};

fn sealroom() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sealroom"))
}

struct Setup {
    _dir: tempfile::TempDir,
    state: PathBuf,
    kek: PathBuf,
    policy: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let kek = dir.path().join("kek");
    std::fs::write(&kek, [0x17u8; 32]).unwrap();
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, TPM_POLICY).unwrap();
    Setup { _dir: dir, state, kek, policy }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

/// `sealroom broker keys add` of provider A's key under the setup's policy, before the broker starts.
fn add_provider_a(s: &Setup) {
    run_ok(
        sealroom()
            .args(["broker", "keys", "add", "--id", "provider-a/data", "--owner", "provider-a", "--policy"])
            .arg(&s.policy)
            .arg("--state-dir")
            .arg(&s.state)
            .arg("--kek")
            .arg(&s.kek),
    );
}

/// `sealroom broker serve` over the setup's state and KEK (nonces live 30 s), killed by PID (SIGKILL) on drop.
fn start(s: &Setup) -> BrokerProcess {
    start_with(s, &[])
}

/// [`start`] with `extra` arguments.
fn start_with(s: &Setup, extra: &[&str]) -> BrokerProcess {
    let mut args: Vec<&OsStr> = vec![OsStr::new("--nonce-ttl"), OsStr::new("30")];
    args.extend(extra.iter().map(OsStr::new));
    BrokerProcess::start(&s.state, &s.kek, &args).unwrap()
}

/// The placeholder release of provider A's key.
fn evidence(nonce: Nonce, tee: &sealroom_measurements::binding::TeePublicKey) -> pb::ReleaseRequest {
    release_request(nonce, tee, "provider-a/data")
}

async fn connect(addr: &str) -> Result<KeyBrokerClient<tonic::transport::Channel>, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    Ok(KeyBrokerClient::new(channel))
}

fn audit_records(path: &Path) -> Vec<AuditRecord> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn serves_challenge_release_and_admin_over_loopback() {
    let s = setup();
    let p = s.policy.to_str().unwrap();
    // Before the broker runs: direct store access with the KEK.
    let st = s.state.to_str().unwrap();
    let kek = s.kek.to_str().unwrap();
    run_ok(
        sealroom()
            .args(["broker", "keys", "--state-dir", st, "--kek", kek, "add", "--id", "provider-a/data"])
            .args(["--owner", "provider-a", "--policy", p]),
    );
    let broker = start(&s);
    // While it runs: the admin socket (the store is locked by the broker process).
    let sock = s.state.join("admin.sock");
    let sock = sock.to_str().unwrap();
    assert_eq!(std::fs::metadata(sock).unwrap().permissions().mode() & 0o777, 0o600);
    run_ok(
        sealroom()
            .args(["broker", "keys", "--socket", sock, "add", "--id", "provider-b/data", "--owner"])
            .args(["provider-b", "--policy", p]),
    );
    run_ok(sealroom().args(["broker", "keys", "--socket", sock, "rotate", "--id", "provider-b/data"]));
    run_ok(sealroom().args(["broker", "keys", "--socket", sock, "revoke", "--id", "provider-b/data"]));
    let listed = run_ok(sealroom().args(["broker", "keys", "--socket", sock, "list"]));
    assert!(listed.contains("provider-a/data\towner=provider-a\tversion=1\tactive"), "{listed}");
    assert!(listed.contains("provider-b/data\towner=provider-b\tversion=2\trevoked@"), "{listed}");
    let only_b =
        run_ok(sealroom().args(["broker", "keys", "--socket", sock, "list", "--owner", "provider-b"]));
    assert!(!only_b.contains("provider-a"), "{only_b}");
    let bad =
        sealroom().args(["broker", "keys", "--socket", sock, "revoke", "--id", "nope"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("key store: unknown key id nope"));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut client = connect(&broker.addr).await.unwrap();
        let ch = client.challenge(pb::ChallengeRequest::default()).await.unwrap().into_inner();
        assert_eq!((ch.nonce.len(), ch.ttl_seconds), (32, 30));
        let (_, tee) = seal::derive_keypair(Kem::X25519HkdfSha256, b"grpc test tee key").unwrap();
        let nonce = Nonce::from_slice(&ch.nonce).unwrap();
        let req = evidence(nonce, &tee);
        let resp = client.release(req.clone()).await.unwrap().into_inner();
        // The placeholder quote is refused by the real verifier; genuine evidence comes from the agent (e2e test).
        assert!(resp.keys.is_empty());
        assert_eq!(resp.refusals[0].reason, REFUSAL);
        let jwk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(s.state.join("signing-key.jwk.json")).unwrap()).unwrap();
        let claims = token::verify(&resp.attestation_result, &jwk).unwrap();
        assert_eq!(claims["submods"]["sealroom"]["ear_status"], "contraindicated");
        let replay = client.release(req).await.unwrap().into_inner();
        assert_eq!(replay.refusals[0].reason, "nonce: already used (replay)");
        let bad = client
            .release(pb::ReleaseRequest {
                nonce: ch.nonce.clone(),
                evidence: None,
                key_ids: vec![],
                tpm_activation: None,
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    });
    drop(broker);
    run_ok(sealroom().args(["audit", "verify"]).arg(s.state.join("audit.log")));
    let records = audit_records(&s.state.join("audit.log"));
    // Two release decisions; every key change (before the start and over the admin socket) is anchored in the
    // same chain as a key_store record (the key store's generation, against rollback).
    assert_eq!(records.iter().filter(|r| r.decision != Decision::KeyStore).count(), 2, "{records:?}");
    assert!(records.iter().any(|r| r.decision == Decision::KeyStore), "{records:?}");
}

#[test]
fn kill_9_during_1000_releases_loses_no_acknowledged_decision() {
    let s = setup();
    add_provider_a(&s);
    let (_, tee) = seal::derive_keypair(Kem::X25519HkdfSha256, b"crash test tee key").unwrap();
    let mut schedule = KillSchedule(0x5ea1_0000_0000_0001);
    // evidence digest → the decision the client was told.
    let mut acknowledged: HashMap<String, String> = HashMap::new();
    let mut kills = 0u32;
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    while acknowledged.len() < 1000 {
        assert!(started.elapsed() < Duration::from_secs(600), "crash test took too long");
        let mut broker = start(&s);
        let kill_after = Duration::from_millis(20 + schedule.next(250));
        let addr = broker.addr.clone();
        let tee = tee.clone();
        let acks: Vec<(String, String)> = rt.block_on(async {
            let deadline = tokio::time::Instant::now() + kill_after;
            let mut acks = Vec::new();
            let Ok(client) = connect(&addr).await else { return acks };
            // Four releases in flight at once, so kills land mid-append and mid-fsync, not only between calls.
            let mut inflight = tokio::task::JoinSet::new();
            loop {
                while inflight.len() < 4 {
                    let mut c = client.clone();
                    let tee = tee.clone();
                    inflight.spawn(async move {
                        let ch = c.challenge(pb::ChallengeRequest::default()).await.ok()?.into_inner();
                        let req = evidence(Nonce::from_slice(&ch.nonce).ok()?, &tee);
                        let digest = hex::encode(Sha256::digest(prost::Message::encode_to_vec(
                            req.evidence.as_ref().unwrap(),
                        )));
                        let resp = c.release(req).await.ok()?.into_inner();
                        Some((digest, resp.refusals.first()?.reason.clone()))
                    });
                }
                match tokio::time::timeout_at(deadline, inflight.join_next()).await {
                    Ok(Some(Ok(Some(ack)))) => acks.push(ack),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            // kill -9 while four releases are in flight; any reply that still arrived was acknowledged.
            broker.kill9();
            acks.extend(inflight.join_all().await.into_iter().flatten());
            acks
        });
        broker.kill9();
        kills += 1;
        acknowledged.extend(acks);
    }
    // Restart once more: the broker must open the store and the log (cutting a torn, unacknowledged tail).
    let broker = start(&s);
    drop(broker);
    let log = s.state.join("audit.log");
    let verified = run_ok(sealroom().args(["audit", "verify"]).arg(&log));
    let records = audit_records(&log);
    assert!(verified.contains(&format!("audit log ok: {} records", records.len())), "{verified}");
    let logged: HashMap<&str, &AuditRecord> =
        records.iter().map(|r| (r.evidence_digest.as_str(), r)).collect();
    for (digest, reason) in &acknowledged {
        let rec = logged
            .get(digest.as_str())
            .unwrap_or_else(|| panic!("acknowledged release {digest} not in the log"));
        assert_eq!(
            (rec.decision, rec.reason.as_str(), rec.key_id.as_str()),
            (Decision::Refused, reason.as_str(), "provider-a/data")
        );
    }
    audit::verify(&std::fs::read(&log).unwrap()).unwrap();
    let listed = run_ok(
        sealroom().args(["broker", "keys", "list"]).arg("--state-dir").arg(&s.state).arg("--kek").arg(&s.kek),
    );
    assert!(listed.contains("provider-a/data\towner=provider-a\tversion=1\tactive"), "{listed}");
    eprintln!(
        "crash test: {} acknowledged releases across {kills} kill -9s; {} audit records",
        acknowledged.len(),
        records.len()
    );
    assert!(kills >= 3, "the schedule must actually kill the broker mid-run ({kills} kills)");
}

#[test]
fn policy_check_explains_every_rule_per_key() {
    use sealroom_broker::appraisal::{Appraisal, HexBytes, PlatformClaims, RuntimeReplay, SignedBinding};
    use sealroom_measurements::cel::RuntimeEvent;
    use sealroom_verifier::claims::{AkTrustClaims, TpmClaims};
    let dir = tempfile::tempdir().unwrap();
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
        registers: std::collections::BTreeMap::new(),
        binding: Some(SignedBinding::TpmExtraData(HexBytes(vec![0; 32]))),
        runtime: Some(RuntimeReplay {
            registers: vec!["pcr15.sha256".parse().unwrap()],
            events: vec![
                RuntimeEvent::ManifestDigest(
                    "sha256:1111111111111111111111111111111111111111111111111111111111111111".into(),
                ),
                RuntimeEvent::Env("DEBUG=1".into()),
                RuntimeEvent::LaunchSeparator,
            ],
        }),
        gpus: vec![],
        layers: vec![],
        warnings: vec![],
    };
    let a = dir.path().join("appraisal.json");
    std::fs::write(&a, serde_json::to_vec(&appraisal).unwrap()).unwrap();
    let strict = dir.path().join("strict.toml");
    std::fs::write(&strict, TPM_POLICY).unwrap();
    let lenient = dir.path().join("lenient.toml");
    std::fs::write(&lenient, TPM_POLICY.replace("env = []", "env = [\"DEBUG=*\"]")).unwrap();
    let out = sealroom()
        .args(["broker", "policy", "check", "--appraisal"])
        .arg(&a)
        .arg("--policy")
        .arg(&lenient)
        .arg("--policy")
        .arg(&strict)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    for line in [
        "lenient: RELEASE",
        "  allow   policy.platforms: platform tpm",
        "  skip    policy.tcb_statuses",
        "  allow   policy.env: 1 environment variables allowed",
        "strict: REFUSE (policy.env: environment variable \"DEBUG=1\" not allowed)",
        "  refuse  policy.env: environment variable \"DEBUG=1\" not allowed",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
}

fn testdata(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata").join(rel).to_str().unwrap().to_owned()
}

/// TDX through the broker process: the real dcap-qvl sample quote with its Intel collateral (MANIFEST: VALID,
/// UpToDate at 2025-07-19T10:00:34Z). The quote's REPORT_DATA was made long before this broker's challenge, so
/// it cannot bind the broker's nonce and TEE key: the refusal must be exactly that binding, and nothing else
/// (no "(and N more)"): the quote, QE report, PCK chain, CRLs, TCB info and QE identity all verified. With
/// collateral for another platform the same quote is refused by the platform layer instead.
#[test]
fn tdx_quote_with_collateral_passes_platform_checks_and_is_refused_for_the_binding_only() {
    let s = setup();
    std::fs::write(&s.policy, TPM_POLICY.replace(r#"platforms = ["tpm"]"#, r#"platforms = ["tdx"]"#))
        .unwrap();
    add_provider_a(&s);
    let collateral = testdata("tdx/dcap-qvl/tdx_quote_collateral.json");
    let quote = std::fs::read(testdata("tdx/dcap-qvl/tdx_quote")).unwrap();
    let broker =
        start_with(&s, &["--tdx-collateral", &collateral, "--verification-time", "2025-07-19T10:00:34Z"]);
    let reason = release_tdx(&broker.addr, &quote);
    assert_eq!(reason, "verifier: binding: REPORT_DATA does not carry the sealroom binding tag");
    drop(broker);
    let log = s.state.join("audit.log");
    run_ok(sealroom().args(["audit", "verify"]).arg(&log));
    // The key added before the broker started is anchored first (Decision::KeyStore); then the decision.
    let records: Vec<AuditRecord> =
        audit_records(&log).into_iter().filter(|r| r.decision != Decision::KeyStore).collect();
    assert_eq!((records[0].decision, records[0].reason.as_str()), (Decision::Refused, reason.as_str()));

    // The same collateral a month later (CRLs past nextUpdate): the broker will not start on it.
    let out = sealroom()
        .args(["broker", "serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&s.state)
        .arg("--kek")
        .arg(&s.kek)
        .args(["--tdx-collateral", &collateral, "--verification-time", "2025-08-19T10:00:34Z"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--tdx-collateral") && stderr.contains("2025-08-19"), "{stderr}");

    // Collateral for another platform (valid at its own time): the platform layer refuses first.
    let other = testdata("tdx/dcap-qvl/tdx_quote_outdated_collateral.json");
    let broker = start_with(&s, &["--tdx-collateral", &other, "--verification-time", "2026-03-20T10:41:14Z"]);
    let reason = release_tdx(&broker.addr, &std::fs::read(testdata("tdx/dcap-qvl/tdx_quote")).unwrap());
    assert_eq!(reason, "verifier: tdx: collateral has no TDX TCB info for FMSPC b0c06f000000");
}

/// One Challenge + Release of `quote` as TDX evidence for a fresh TEE key; the first refusal's reason.
fn release_tdx(addr: &str, quote: &[u8]) -> String {
    let (_, tee) = seal::derive_keypair(Kem::X25519HkdfSha256, b"tdx test tee key").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut client = connect(addr).await.unwrap();
        let ch = client.challenge(pb::ChallengeRequest::default()).await.unwrap().into_inner();
        let nonce = Nonce::from_slice(&ch.nonce).unwrap();
        let ev = Evidence {
            nonce,
            tee_public_key: tee.clone(),
            platform: Platform::Tdx,
            tpm: None,
            tdx: Some(sealroom_measurements::evidence::TdxEvidence {
                quote: quote.to_vec(),
                ..Default::default()
            }),
            sev_snp: None,
            azure: None,
            runtime_event_log: vec![],
            gpus: Vec::new(),
        };
        let req = pb::ReleaseRequest {
            nonce: nonce.0.to_vec(),
            evidence: Some(ev.into()),
            key_ids: vec!["provider-a/data".into()],
            tpm_activation: None,
        };
        let resp = client.release(req).await.unwrap().into_inner();
        assert!(resp.keys.is_empty());
        resp.refusals[0].reason.clone()
    })
}
