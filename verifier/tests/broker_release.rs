//! Release decisions of the key broker, one test per refusal, each asserting its one-line reason, plus the
//! happy path (unsealed with the TEE's private key, token verified with the published JWK, audit log verified).
//!
//! The evidence verifier is not wired into the broker yet (see `appraisal::VerifierAppraiser`), so these tests
//! give the broker a `StandInAppraiser` that returns the claims a verifier would have produced for this
//! evidence: everything after appraisal (nonce, binding, key store, policy, sealing, token, audit) is the real
//! broker code. Evidence-level refusals (quote signature, AK from another TPM, collateral) belong to the
//! verifier's own tests and join here once it is wired in.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::missing_panics_doc)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sealroom_measurements::binding::{self, Kem, Nonce, TeePublicKey};
use sealroom_measurements::cel::RuntimeEvent;
use sealroom_measurements::evidence::{Evidence, Platform, TpmEvidence};
use sealroom_proto::keybroker::v1 as pb;
use sealroom_verifier::broker::appraisal::{Appraisal, Appraiser, SignedBinding, VerifierAppraiser};
use sealroom_verifier::broker::audit::{self, AuditLog, Decision};
use sealroom_verifier::broker::keystore::{Kek, KeyStore};
use sealroom_verifier::broker::nonce::NonceBook;
use sealroom_verifier::broker::policy::{GoldenDocument, GoldenSet};
use sealroom_verifier::broker::seal::{self, Sealed};
use sealroom_verifier::broker::service::{Broker, BrokerParts, Released};
use sealroom_verifier::broker::token::{self, Signer};
use sealroom_verifier::broker::{Clock, Randomness};
use sha2::{Digest, Sha256};

const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const GOLDEN_DOC: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const SIGNER: &str = "ed25519:3333333333333333333333333333333333333333333333333333333333333333";
const PCR11: &str = "4444444444444444444444444444444444444444444444444444444444444444";
const TTL_MS: u64 = 30_000;

fn policy() -> String {
    format!(
        r#"
version = 1
platforms = ["tpm", "tdx"]
tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
minimum_tcb = {{ "tdx.tee_tcb_svn.0" = 3 }}
debug = "forbidden"
golden = {{ signers = ["{SIGNER}"], documents = ["{GOLDEN_DOC}"] }}
image_digests = ["{IMAGE}"]
args = ["--in", "/data"]
env = ["MODE=batch", "THREADS=*"]
"#
    )
}

#[derive(Debug, Default)]
struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Deterministic randomness: a SHA-256 counter stream.
#[derive(Debug, Default)]
struct TestRandomness(Mutex<u64>);

impl Randomness for TestRandomness {
    fn fill(&self, out: &mut [u8]) -> sealroom_verifier::Result<()> {
        let mut n = self.0.lock().unwrap();
        for chunk in out.chunks_mut(32) {
            *n += 1;
            chunk.copy_from_slice(&Sha256::digest(n.to_be_bytes())[..chunk.len()]);
        }
        Ok(())
    }
}

/// Stands in for the evidence verifier: returns `claims`, with the binding the hardware would have signed for
/// the evidence's own nonce and key unless `binding` overrides it.
#[derive(Debug)]
struct StandInAppraiser {
    claims: Mutex<Appraisal>,
    binding: Mutex<Option<SignedBinding>>,
}

impl Appraiser for StandInAppraiser {
    fn appraise(&self, evidence: &Evidence, _now_ms: u64) -> sealroom_verifier::Result<Appraisal> {
        let mut a = self.claims.lock().unwrap().clone();
        a.binding = self.binding.lock().unwrap().clone().unwrap_or_else(|| {
            SignedBinding::TpmExtraData(hex::encode(binding::binding_digest(
                &evidence.nonce,
                &evidence.tee_public_key,
            )))
        });
        Ok(a)
    }
}

fn good_claims() -> Appraisal {
    Appraisal {
        platform: Platform::Tpm,
        tcb_status: Some("UpToDate".into()),
        tcb_levels: BTreeMap::from([("tdx.tee_tcb_svn.0".to_owned(), 4)]),
        debug: false,
        registers: BTreeMap::from([("pcr11.sha256".to_owned(), PCR11.to_owned())]),
        binding: SignedBinding::TpmExtraData(String::new()),
        workload_events: vec![
            RuntimeEvent::ImageReference(format!("registry.example/analytics@{IMAGE}")),
            RuntimeEvent::ManifestDigest(IMAGE.into()),
            RuntimeEvent::Arg("--in".into()),
            RuntimeEvent::Arg("/data".into()),
            RuntimeEvent::Env("MODE=batch".into()),
            RuntimeEvent::Env("THREADS=4".into()),
            RuntimeEvent::LaunchSeparator,
            RuntimeEvent::KeyRelease { key_id: "provider-a/data".into() },
        ],
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    audit_path: std::path::PathBuf,
    clock: Arc<TestClock>,
    rng: Arc<TestRandomness>,
    appraiser: Arc<StandInAppraiser>,
    store: Arc<KeyStore>,
    broker: Broker,
    tee_private: Vec<u8>,
    tee_public: TeePublicKey,
    signer_jwk: serde_json::Value,
}

impl Fixture {
    fn new() -> Self {
        Self::with_appraiser_and_kem(Kem::X25519HkdfSha256)
    }

    fn with_appraiser_and_kem(kem: Kem) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(TestClock(AtomicU64::new(1_700_000_000_000)));
        let rng = Arc::new(TestRandomness::default());
        let store = Arc::new(
            KeyStore::open(&dir.path().join("keys.redb"), Kek::from_bytes(&[9; 32]).unwrap(), rng.as_ref())
                .unwrap(),
        );
        store
            .add("provider-a/data", "provider-a", &policy(), Some(b"data key A".to_vec()), rng.as_ref(), 1)
            .unwrap();
        store
            .add("provider-b/data", "provider-b", &policy(), Some(b"data key B".to_vec()), rng.as_ref(), 1)
            .unwrap();
        let appraiser =
            Arc::new(StandInAppraiser { claims: Mutex::new(good_claims()), binding: Mutex::new(None) });
        let golden = GoldenSet {
            accepted: vec![GoldenDocument {
                digest: GOLDEN_DOC.into(),
                signer: SIGNER.into(),
                registers: BTreeMap::from([("pcr11.sha256".to_owned(), PCR11.to_owned())]),
            }],
            rejected: BTreeMap::new(),
        };
        let audit_path = dir.path().join("audit.log");
        let (audit, _) = AuditLog::open(&audit_path).unwrap();
        let signer = Signer::load_or_create(&dir.path().join("signing.pk8")).unwrap();
        let signer_jwk = signer.jwk();
        let broker = Broker::new(BrokerParts {
            clock: clock.clone(),
            rng: rng.clone(),
            appraiser: appraiser.clone(),
            store: store.clone(),
            golden,
            signer,
            nonces: NonceBook::new(TTL_MS, 1000),
            audit,
        });
        let (tee_private, tee_public) =
            seal::derive_keypair(kem, b"tee key ikm for the broker tests").unwrap();
        Self {
            _dir: dir,
            audit_path,
            clock,
            rng,
            appraiser,
            store,
            broker,
            tee_private,
            tee_public,
            signer_jwk,
        }
    }

    fn evidence(&self, nonce: Nonce) -> Evidence {
        Evidence {
            nonce,
            tee_public_key: self.tee_public.clone(),
            platform: Platform::Tpm,
            tpm: Some(TpmEvidence { attest: vec![0xff, 0x54, 0x43, 0x47], ..TpmEvidence::default() }),
            tdx: None,
            sev_snp: None,
            azure: None,
            runtime_event_log: vec![],
        }
    }

    fn request(nonce: &Nonce, evidence: Evidence, keys: &[&str]) -> pb::ReleaseRequest {
        pb::ReleaseRequest {
            nonce: nonce.0.to_vec(),
            evidence: Some(evidence.into()),
            key_ids: keys.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    /// Challenge, then release `keys` with fresh evidence bound to the nonce.
    fn release(&self, keys: &[&str]) -> Released {
        let (nonce, _) = self.broker.challenge().unwrap();
        self.broker.release(&Self::request(&nonce, self.evidence(nonce), keys)).unwrap()
    }

    fn tweak(&self, f: impl FnOnce(&mut Appraisal)) {
        f(&mut self.appraiser.claims.lock().unwrap());
    }

    fn open(&self, key_id: &str, nonce: &Nonce, sealed: &Sealed) -> Vec<u8> {
        seal::open(self.tee_public.kem(), &self.tee_private, key_id, nonce, sealed).unwrap()
    }
}

/// Asserts one key was refused with exactly `reason`, nothing released, and the refusal audited.
fn assert_refused(f: &Fixture, r: &Released, key: &str, reason: &str) {
    assert!(r.keys.is_empty(), "released {:?}", r.keys.iter().map(|k| &k.0).collect::<Vec<_>>());
    let got: Vec<(&str, &str)> = r.refusals.iter().map(|(k, x)| (k.as_str(), x.reason.as_str())).collect();
    assert_eq!(got, vec![(key, reason)]);
    let last = r.audit.last().unwrap();
    assert_eq!((last.decision, last.key_id.as_str(), last.reason.as_str()), (Decision::Refused, key, reason));
    audit::verify(&std::fs::read(&f.audit_path).unwrap()).unwrap();
}

fn refusal_for(f: &Fixture, key: &str, tweak: impl FnOnce(&mut Appraisal)) -> Released {
    f.tweak(tweak);
    f.release(&[key])
}

#[test]
fn happy_path_releases_sealed_keys_with_a_signed_token_and_audit_records() {
    for kem in [Kem::X25519HkdfSha256, Kem::P256HkdfSha256] {
        let f = Fixture::with_appraiser_and_kem(kem);
        let (nonce, ttl) = f.broker.challenge().unwrap();
        assert_eq!(ttl, 30);
        let r = f
            .broker
            .release(&Fixture::request(&nonce, f.evidence(nonce), &["provider-a/data", "provider-b/data"]))
            .unwrap();
        assert!(r.refusals.is_empty(), "{:?}", r.refusals);
        assert_eq!(r.keys.len(), 2);
        assert_eq!(f.open("provider-a/data", &nonce, &r.keys[0].1), b"data key A");
        assert_eq!(f.open("provider-b/data", &nonce, &r.keys[1].1), b"data key B");
        // Sealed to this key id: it does not open as the other.
        assert!(seal::open(kem, &f.tee_private, "provider-b/data", &nonce, &r.keys[0].1).is_err());
        let claims = token::verify(&r.attestation_result, &f.signer_jwk).unwrap();
        let sub = &claims["submods"]["sealroom"];
        assert_eq!(sub["ear.status"], "affirming");
        assert_eq!(sub["sealroom.keys.released"], serde_json::json!(["provider-a/data", "provider-b/data"]));
        assert_eq!(claims["eat_nonce"], hex::encode(nonce.0));
        let head = audit::verify(&std::fs::read(&f.audit_path).unwrap()).unwrap();
        assert_eq!(claims["sealroom.audit"]["records"], 2);
        assert_eq!(claims["sealroom.audit"]["head"], hex::encode(head.hash));
        assert!(r.audit.iter().all(|a| a.decision == Decision::Released));
    }
}

#[test]
fn refuses_wrong_workload_digest() {
    let f = Fixture::new();
    let other = "sha256:5555555555555555555555555555555555555555555555555555555555555555";
    let r = refusal_for(&f, "provider-a/data", |a| {
        a.workload_events[1] = RuntimeEvent::ManifestDigest(other.into())
    });
    assert_refused(
        &f,
        &r,
        "provider-a/data",
        &format!("policy.image_digests: workload image digest {other} not allowed"),
    );
}

#[test]
fn refuses_workload_without_image_digest() {
    let f = Fixture::new();
    let r = refusal_for(&f, "provider-a/data", |a| {
        a.workload_events.remove(1);
    });
    assert_refused(&f, &r, "provider-a/data", "policy.image_digests: no workload image digest was measured");
}

#[test]
fn refuses_extra_env_var() {
    let f = Fixture::new();
    let r = refusal_for(&f, "provider-a/data", |a| {
        a.workload_events.insert(6, RuntimeEvent::Env("LD_PRELOAD=/x.so".into()))
    });
    assert_refused(
        &f,
        &r,
        "provider-a/data",
        "policy.env: environment variable \"LD_PRELOAD=/x.so\" not allowed",
    );
}

#[test]
fn refuses_changed_args() {
    let f = Fixture::new();
    let r = refusal_for(&f, "provider-a/data", |a| a.workload_events[3] = RuntimeEvent::Arg("/etc".into()));
    assert_refused(
        &f,
        &r,
        "provider-a/data",
        "policy.args: argument 1 is \"/etc\", policy requires \"/data\"",
    );
}

#[test]
fn refuses_extra_arg() {
    let f = Fixture::new();
    let r = refusal_for(&f, "provider-a/data", |a| {
        a.workload_events.insert(4, RuntimeEvent::Arg("--debug".into()))
    });
    assert_refused(&f, &r, "provider-a/data", "policy.args: 3 arguments, policy requires 2");
}

#[test]
fn refuses_launch_event_after_the_separator() {
    let f = Fixture::new();
    let r =
        refusal_for(&f, "provider-a/data", |a| a.workload_events.push(RuntimeEvent::Env("EXTRA=1".into())));
    assert_refused(
        &f,
        &r,
        "provider-a/data",
        "workload.launch: launch event env at position 8 after the launch separator",
    );
}

#[test]
fn refuses_workload_without_launch_separator() {
    let f = Fixture::new();
    let r = refusal_for(&f, "provider-a/data", |a| a.workload_events.truncate(6));
    assert_refused(
        &f,
        &r,
        "provider-a/data",
        "workload.launch: no launch separator: the workload was not launched by the agent",
    );
}

#[test]
fn refuses_pcr11_not_golden() {
    let f = Fixture::new();
    let bad = "5".repeat(64);
    let r = refusal_for(&f, "provider-a/data", |a| {
        a.registers.insert("pcr11.sha256".into(), bad.clone());
    });
    assert_refused(
        &f,
        &r,
        "provider-a/data",
        &format!("policy.golden: pcr11.sha256 not golden: expected {PCR11}, got {bad} ({GOLDEN_DOC})"),
    );
}

#[test]
fn refuses_golden_register_missing_from_evidence() {
    let f = Fixture::new();
    let r = refusal_for(&f, "provider-a/data", |a| a.registers.clear());
    assert_refused(
        &f,
        &r,
        "provider-a/data",
        &format!("policy.golden: pcr11.sha256 not in the evidence ({GOLDEN_DOC})"),
    );
}

#[test]
fn refuses_debug_tee() {
    let f = Fixture::new();
    let r = refusal_for(&f, "provider-a/data", |a| a.debug = true);
    assert_refused(&f, &r, "provider-a/data", "policy.debug: TEE runs in debug mode");
}

#[test]
fn refuses_tcb_below_minimum() {
    let f = Fixture::new();
    let r = refusal_for(&f, "provider-a/data", |a| {
        a.tcb_levels.insert("tdx.tee_tcb_svn.0".into(), 2);
    });
    assert_refused(
        &f,
        &r,
        "provider-a/data",
        "policy.minimum_tcb: TCB tdx.tee_tcb_svn.0 is 2, below the minimum 3",
    );
}

#[test]
fn refuses_tcb_status_not_accepted() {
    let f = Fixture::new();
    let r = refusal_for(&f, "provider-a/data", |a| a.tcb_status = Some("OutOfDate".into()));
    assert_refused(
        &f,
        &r,
        "provider-a/data",
        "policy.tcb_statuses: TCB status OutOfDate not accepted (accepted: UpToDate, SWHardeningNeeded)",
    );
}

#[test]
fn refuses_platform_not_allowed() {
    let f = Fixture::new();
    // The evidence says SEV-SNP and so does the verifier; the policy allows only TPM and TDX.
    f.tweak(|a| a.platform = Platform::SevSnp);
    let (nonce, _) = f.broker.challenge().unwrap();
    let mut ev = f.evidence(nonce);
    ev.platform = Platform::SevSnp;
    ev.sev_snp = Some(sealroom_measurements::evidence::SevSnpEvidence::default());
    let r = f.broker.release(&Fixture::request(&nonce, ev, &["provider-a/data"])).unwrap();
    assert_refused(
        &f,
        &r,
        "provider-a/data",
        "policy.platforms: platform sev-snp not allowed (allowed: tpm, tdx)",
    );
}

#[test]
fn refuses_replayed_nonce() {
    let f = Fixture::new();
    let (nonce, _) = f.broker.challenge().unwrap();
    let req = Fixture::request(&nonce, f.evidence(nonce), &["provider-a/data"]);
    assert_eq!(f.broker.release(&req).unwrap().keys.len(), 1);
    let r = f.broker.release(&req).unwrap();
    assert_refused(&f, &r, "provider-a/data", "nonce: already used (replay)");
}

#[test]
fn refuses_expired_nonce() {
    let f = Fixture::new();
    let (nonce, _) = f.broker.challenge().unwrap();
    f.clock.0.fetch_add(TTL_MS + 5, Ordering::SeqCst);
    let r = f.broker.release(&Fixture::request(&nonce, f.evidence(nonce), &["provider-a/data"])).unwrap();
    assert_refused(&f, &r, "provider-a/data", "nonce: expired 5 ms ago");
}

#[test]
fn refuses_nonce_never_issued() {
    let f = Fixture::new();
    let nonce = Nonce([0x5a; 32]);
    let r = f.broker.release(&Fixture::request(&nonce, f.evidence(nonce), &["provider-a/data"])).unwrap();
    assert_refused(&f, &r, "provider-a/data", "nonce: not issued by this broker");
}

#[test]
fn refuses_evidence_bound_to_another_challenge() {
    let f = Fixture::new();
    let (first, _) = f.broker.challenge().unwrap();
    let (second, _) = f.broker.challenge().unwrap();
    // Evidence produced for the first challenge, presented with the second nonce.
    let r = f.broker.release(&Fixture::request(&second, f.evidence(first), &["provider-a/data"])).unwrap();
    assert_refused(
        &f,
        &r,
        "provider-a/data",
        "binding: evidence was produced for another nonce than the one presented",
    );
}

#[test]
fn refuses_quote_that_binds_another_nonce() {
    let f = Fixture::new();
    // The evidence claims the right nonce but the signed extraData binds a different one.
    *f.appraiser.binding.lock().unwrap() = Some(SignedBinding::TpmExtraData(hex::encode(
        binding::binding_digest(&Nonce([1; 32]), &f.tee_public),
    )));
    let r = f.release(&["provider-a/data"]);
    assert_refused(
        &f,
        &r,
        "provider-a/data",
        "binding: TPM quote extraData does not bind this nonce and TEE public key",
    );
}

#[test]
fn refuses_tee_key_not_bound() {
    let f = Fixture::new();
    let (nonce, _) = f.broker.challenge().unwrap();
    // The quote binds the genuine TEE key; the request swaps in an attacker's key to receive the data key.
    let (_, attacker) = seal::derive_keypair(Kem::X25519HkdfSha256, b"attacker").unwrap();
    *f.appraiser.binding.lock().unwrap() =
        Some(SignedBinding::TpmExtraData(hex::encode(binding::binding_digest(&nonce, &f.tee_public))));
    let mut ev = f.evidence(nonce);
    ev.tee_public_key = attacker;
    let r = f.broker.release(&Fixture::request(&nonce, ev, &["provider-a/data"])).unwrap();
    assert_refused(
        &f,
        &r,
        "provider-a/data",
        "binding: TPM quote extraData does not bind this nonce and TEE public key",
    );
}

#[test]
fn refuses_report_data_without_the_sealroom_tag() {
    let f = Fixture::new();
    let (nonce, _) = f.broker.challenge().unwrap();
    let mut rd = binding::report_data(&nonce, &f.tee_public);
    rd[40] ^= 1;
    *f.appraiser.binding.lock().unwrap() = Some(SignedBinding::ReportData(hex::encode(rd)));
    let r = f.broker.release(&Fixture::request(&nonce, f.evidence(nonce), &["provider-a/data"])).unwrap();
    assert_refused(&f, &r, "provider-a/data", "binding: REPORT_DATA does not carry the sealroom binding tag");
}

#[test]
fn refuses_revoked_key() {
    let f = Fixture::new();
    f.store.revoke("provider-a/data", 42).unwrap();
    let r = f.release(&["provider-a/data"]);
    assert_refused(&f, &r, "provider-a/data", "key store: key provider-a/data was revoked at 42 ms");
}

#[test]
fn refuses_unknown_key_id() {
    let f = Fixture::new();
    let r = f.release(&["provider-c/data"]);
    assert_refused(&f, &r, "provider-c/data", "key store: unknown key id provider-c/data");
}

#[test]
fn refuses_to_store_a_key_whose_policy_misses_a_rule() {
    let f = Fixture::new();
    let without_env: String =
        policy().lines().filter(|l| !l.starts_with("env")).collect::<Vec<_>>().join("\n");
    let err =
        f.store.add("provider-c/data", "provider-c", &without_env, None, f.rng.as_ref(), 1).unwrap_err();
    assert_eq!(err.to_string(), "policy: missing field `env` (give reference values or \"skip\")");
    // And the key therefore does not exist: a release of it is refused.
    let r = f.release(&["provider-c/data"]);
    assert_refused(&f, &r, "provider-c/data", "key store: unknown key id provider-c/data");
}

#[test]
fn refuses_evidence_the_verifier_rejects_and_fails_closed_until_it_is_wired() {
    // The real broker appraiser, today: no evidence is accepted, so nothing is released.
    let dir = tempfile::tempdir().unwrap();
    let rng = Arc::new(TestRandomness::default());
    let store = Arc::new(
        KeyStore::open(&dir.path().join("k"), Kek::from_bytes(&[9; 32]).unwrap(), rng.as_ref()).unwrap(),
    );
    store.add("provider-a/data", "provider-a", &policy(), None, rng.as_ref(), 1).unwrap();
    let (audit_log, _) = AuditLog::open(&dir.path().join("audit.log")).unwrap();
    let broker = Broker::new(BrokerParts {
        clock: Arc::new(TestClock::default()),
        rng,
        appraiser: Arc::new(VerifierAppraiser),
        store,
        golden: GoldenSet::default(),
        signer: Signer::load_or_create(&dir.path().join("s")).unwrap(),
        nonces: NonceBook::new(TTL_MS, 10),
        audit: audit_log,
    });
    let (nonce, _) = broker.challenge().unwrap();
    let f = Fixture::new();
    let r = broker.release(&Fixture::request(&nonce, f.evidence(nonce), &["provider-a/data"])).unwrap();
    assert!(r.keys.is_empty());
    assert_eq!(r.refusals[0].1.reason, "verifier: Tpm evidence appraisal is not wired into the broker yet");
}

#[test]
fn refuses_malformed_nonce() {
    let f = Fixture::new();
    let (nonce, _) = f.broker.challenge().unwrap();
    let mut req = Fixture::request(&nonce, f.evidence(nonce), &["provider-a/data"]);
    req.nonce.pop();
    let r = f.broker.release(&req).unwrap();
    assert_refused(&f, &r, "provider-a/data", "binding: invalid nonce: 31 bytes, expected 32");
}

#[test]
fn refuses_missing_evidence() {
    let f = Fixture::new();
    let (nonce, _) = f.broker.challenge().unwrap();
    let mut req = Fixture::request(&nonce, f.evidence(nonce), &["provider-a/data"]);
    req.evidence = None;
    let r = f.broker.release(&req).unwrap();
    assert_refused(&f, &r, "provider-a/data", "evidence: missing");
}

#[test]
fn refuses_unknown_binding_version() {
    let f = Fixture::new();
    let (nonce, _) = f.broker.challenge().unwrap();
    let mut req = Fixture::request(&nonce, f.evidence(nonce), &["provider-a/data"]);
    req.evidence.as_mut().unwrap().binding_version = 2;
    let r = f.broker.release(&req).unwrap();
    assert_refused(&f, &r, "provider-a/data", "evidence: invalid binding_version: 2 (this verifier knows 1)");
}

#[test]
fn refuses_invalid_p256_tee_key() {
    let f = Fixture::with_appraiser_and_kem(Kem::P256HkdfSha256);
    let (nonce, _) = f.broker.challenge().unwrap();
    let mut bad = vec![4u8];
    bad.extend_from_slice(&[0xff; 64]);
    let mut ev = f.evidence(nonce);
    ev.tee_public_key = TeePublicKey::new(Kem::P256HkdfSha256, bad).unwrap();
    let r = f.broker.release(&Fixture::request(&nonce, ev, &["provider-a/data"])).unwrap();
    assert_refused(&f, &r, "provider-a/data", "hpke: TEE public key rejected: Input value is invalid");
}

#[test]
fn each_key_is_judged_by_its_owners_policy() {
    let f = Fixture::new();
    // Provider B tightens its policy to another image; provider A's key is still released.
    let other = "sha256:6666666666666666666666666666666666666666666666666666666666666666";
    f.store.set_policy("provider-b/data", &policy().replace(IMAGE, other)).unwrap();
    let r = f.release(&["provider-a/data", "provider-b/data"]);
    assert_eq!(r.keys.iter().map(|k| k.0.as_str()).collect::<Vec<_>>(), ["provider-a/data"]);
    assert_eq!(r.refusals[0].0, "provider-b/data");
    assert_eq!(
        r.refusals[0].1.reason,
        format!("policy.image_digests: workload image digest {IMAGE} not allowed")
    );
    let claims = token::verify(&r.attestation_result, &f.signer_jwk).unwrap();
    assert_eq!(claims["submods"]["sealroom"]["sealroom.keys.refused"][0]["key_id"], "provider-b/data");
}

#[test]
fn rejects_malformed_requests_without_deciding() {
    let f = Fixture::new();
    let (nonce, _) = f.broker.challenge().unwrap();
    for (keys, want) in [
        (vec![], "request: 0 key ids, expected 1..=64"),
        (vec!["a b"], "key id: character ' ' not allowed (use [A-Za-z0-9._/-])"),
        (vec!["k", "k"], "request: key id k requested twice"),
    ] {
        let err = f.broker.release(&Fixture::request(&nonce, f.evidence(nonce), &keys)).unwrap_err();
        assert_eq!(err.to_string(), want);
    }
    let many: Vec<String> = (0..65).map(|i| format!("k{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let err = f.broker.release(&Fixture::request(&nonce, f.evidence(nonce), &many)).unwrap_err();
    assert_eq!(err.to_string(), "request: 65 key ids, expected 1..=64");
}

#[test]
fn broker_refuses_to_start_on_a_tampered_audit_log() {
    let f = Fixture::new();
    f.release(&["provider-a/data"]);
    let mut bytes = std::fs::read(&f.audit_path).unwrap();
    let pos = bytes.windows(8).position(|w| w == b"released").unwrap();
    bytes[pos] = b'R';
    std::fs::write(&f.audit_path, &bytes).unwrap();
    let err = AuditLog::open(&f.audit_path).unwrap_err().to_string();
    assert!(err.starts_with("audit log: record 0 (byte offset 0): not a record"), "{err}");
}
