//! Tokens anyone can verify (issue 16 item 4): a release token and an output receipt issued by the real broker
//! code are decoded and validated by Veraison's `ear` crate 0.6, the reference implementation of
//! draft-ietf-rats-ear-04 (profile `tag:ietf.org,2026:rats/ear#04`): ES256 signature under the broker's published
//! JWK, `ear_verifier_id` with a non-empty build and developer, a non-empty trustworthiness vector filled from the
//! appraisal, the appraisal policy ids, `eat_nonce` (base64url), `iat`/`exp`.
//!
//! The appraisal is a stand-in (no TEE here produces evidence this broker's verifier accepts for a fabricated
//! job), so what is under test is everything after it: the broker's release and receipt decisions and the one
//! place a typed appraisal becomes EAR claims. The broker's clock is the wall clock, because the `ear` crate
//! checks `exp` against it.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::missing_panics_doc)]

use std::collections::BTreeMap;
use std::sync::Arc;

use sealroom_broker::appraisal::{
    Appraisal, Appraiser, HexBytes, PlatformClaims, RuntimeReplay, SignedBinding,
};
use sealroom_broker::audit::AuditLog;
use sealroom_broker::keystore::{Kek, KeyStore};
use sealroom_broker::nonce::NonceBook;
use sealroom_broker::nonce_mac::NonceKeys;
use sealroom_broker::policy::GoldenSet;
use sealroom_broker::service::{Broker, BrokerParts};
use sealroom_broker::token::Signer;
use sealroom_broker::{Clock, ManualClock, SystemClock, SystemRandomness, seal};
use sealroom_measurements::binding::{self, Kem, Nonce, TeePublicKey};
use sealroom_measurements::cel::RuntimeEvent;
use sealroom_measurements::evidence::{Evidence, Platform, TdxEvidence};
use sealroom_proto::keybroker::v1 as pb;
use sealroom_verifier::claims::{TdAttributes, TdxClaims, TdxTcb};
use sealroom_verifier::ear::{Status, TrustworthinessVector};

const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const OUTPUT: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const KEY: &str = "provider-a/data";

const POLICY: &str = r#"
version = 1
platforms = ["tdx"]
tcb_statuses = ["UpToDate"]
minimum_tcb = { "tdx.tee_tcb_svn.0" = 3 }
debug = "forbidden"
golden = "skip"
image_digests = ["sha256:1111111111111111111111111111111111111111111111111111111111111111"]
args = ["--in", "/data"]
env = "skip"
"#;

/// What the verifier establishes for a finished job on a TD verified against Intel collateral: UpToDate, the
/// runtime log (launch, the key's release, the output) replayed to RTMR3.
#[derive(Debug)]
struct FinishedTdJob(String);

impl Appraiser for FinishedTdJob {
    fn appraise(&self, e: &Evidence, now_ms: u64) -> sealroom_verifier::Result<Appraisal> {
        let zeros = |n: usize| HexBytes(vec![0; n]);
        let td = TdxClaims {
            quote_version: 4,
            td_attributes: TdAttributes::decode((1u64 << 28).to_le_bytes()),
            tcb: Some(TdxTcb {
                status: sealroom_verifier::tdx::TcbStatus::UpToDate,
                advisory_ids: vec![],
                tcb_date: 1_690_000_000,
                evaluation_data_number: 17,
            }),
            tee_tcb_svn: HexBytes([4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0].to_vec()),
            fmspc: zeros(6),
            mr_seam: zeros(48),
            mr_td: HexBytes(vec![0x11; 48]),
            rtmr: [zeros(48), zeros(48), zeros(48), HexBytes(vec![0x33; 48])],
            mr_config_id: zeros(48),
            mr_owner: zeros(48),
            mr_owner_config: zeros(48),
            xfam: zeros(8),
        };
        Ok(Appraisal {
            evidence: "sealroom evidence".into(),
            policy_id: "sealroom.keybroker.v1".into(),
            at: i64::try_from(now_ms / 1000).unwrap(),
            status: Status::Affirming,
            trust_vector: TrustworthinessVector {
                instance_identity: 2,
                configuration: 2,
                hardware: 2,
                runtime_opaque: 2,
                ..TrustworthinessVector::default()
            },
            registers: BTreeMap::from([
                ("mrtd".parse().unwrap(), td.mr_td.clone()),
                ("rtmr3".parse().unwrap(), td.rtmr[3].clone()),
            ]),
            platform: Some(PlatformClaims::Tdx(td)),
            binding: Some(SignedBinding::ReportData(HexBytes(
                binding::report_data(&e.nonce, &e.tee_public_key).to_vec(),
            ))),
            runtime: Some(RuntimeReplay {
                registers: vec!["rtmr3".parse().unwrap()],
                events: vec![
                    RuntimeEvent::ManifestDigest(IMAGE.into()),
                    RuntimeEvent::Arg("--in".into()),
                    RuntimeEvent::Arg("/data".into()),
                    RuntimeEvent::LaunchSeparator,
                    RuntimeEvent::KeyRelease { key_id: KEY.into(), broker_key: self.0.clone() },
                    RuntimeEvent::Output { name: "output".into(), digest: OUTPUT.into() },
                ],
            }),
            gpus: vec![],
            layers: vec![],
            warnings: vec![],
        })
    }
}

fn evidence(nonce: Nonce, tee: &TeePublicKey) -> Evidence {
    Evidence {
        nonce,
        tee_public_key: tee.clone(),
        platform: Platform::Tdx,
        tpm: None,
        tdx: Some(TdxEvidence { quote: vec![4, 0], ..TdxEvidence::default() }),
        sev_snp: None,
        azure: None,
        runtime_event_log: vec![],
        gpus: Vec::new(),
    }
}

/// Decodes and validates a token with the reference implementation, under the broker's JWK.
fn decode(token: &str, jwk: &serde_json::Value) -> ear::Ear {
    ear::Ear::from_jwt_jwk(token, ear::Algorithm::ES256, jwk.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("the ear crate refuses the token: {e}\n{token}"))
}

/// What both kinds of token must satisfy.
fn assert_conforms(ear: &ear::Ear, policy_id: &str, nonce: &Nonce, now_s: i64) {
    assert_eq!(ear.profile, "tag:ietf.org,2026:rats/ear#04");
    assert_eq!(ear.profile, ear::EAR_PROFILE);
    assert_eq!(ear.vid.developer, "sealroom");
    assert!(ear.vid.build.starts_with("sealroom-broker "), "{}", ear.vid.build);
    assert!((now_s - 5..=now_s + 5).contains(&ear.iat), "iat {} now {now_s}", ear.iat);
    assert!(ear.exp.is_some_and(|exp| exp > ear.iat));
    assert_eq!(ear.status, Some(ear::TrustTier::Affirming));
    let nonce_json = serde_json::to_value(ear.nonce.as_ref().unwrap()).unwrap();
    assert_eq!(nonce_json, sealroom_verifier::ear::eat_nonce(&nonce.0));
    let sub = &ear.submods["sealroom"];
    assert_eq!(sub.status, ear::TrustTier::Affirming);
    assert_eq!(sub.policy_ids, vec![policy_id.to_owned()]);
    // The vector is the appraisal's.
    let tv = &sub.trust_vector;
    assert!(tv.any_set());
    for (claim, value) in [
        (&tv.instance_identity, 2),
        (&tv.configuration, 2),
        (&tv.executables, 0),
        (&tv.hardware, 2),
        (&tv.runtime_opaque, 2),
    ] {
        assert_eq!(claim.value(), value, "{}", claim.tag());
    }
}

#[test]
fn release_token_and_receipt_validate_with_veraisons_ear_crate() {
    let dir = tempfile::tempdir().unwrap();
    let rng = Arc::new(SystemRandomness::new());
    let store = Arc::new(
        KeyStore::open(&dir.path().join("keys.redb"), Kek::from_bytes(&[9; 32]).unwrap(), rng.as_ref())
            .unwrap(),
    );
    store.add(KEY, "provider-a", POLICY, Some(b"data key A".to_vec()), rng.as_ref(), 1).unwrap();
    let signer = Signer::load_or_create(&dir.path().join("signing.pk8")).unwrap();
    let jwk = signer.jwk();
    let kid = signer.kid().to_owned();
    let clock = Arc::new(ManualClock::at(SystemClock.now_ms()));
    let broker = Broker::new(BrokerParts {
        clock: clock.clone(),
        rng,
        appraiser: Arc::new(FinishedTdJob(kid)),
        store,
        golden: GoldenSet::default(),
        signer,
        nonces: NonceBook::new(NonceKeys::new(&[0x6e; 32], None, 30_000).unwrap()),
        audit: AuditLog::open(&dir.path().join("audit.log")).unwrap().0,
    });
    let now_s = i64::try_from(clock.now_ms() / 1000).unwrap();
    let (_, tee) = seal::derive_keypair(Kem::X25519HkdfSha256, b"ear conformance tee").unwrap();

    // The release token.
    let (nonce, _) = broker.challenge().unwrap();
    let req = pb::ReleaseRequest {
        nonce: nonce.0.to_vec(),
        evidence: Some(evidence(nonce, &tee).into()),
        key_ids: vec![KEY.into()],
        tpm_activation: None,
    };
    let released = broker.release(req).unwrap();
    assert!(released.refusals.is_empty(), "{:?}", released.refusals);
    let token = decode(&released.attestation_result, &jwk);
    assert_conforms(&token, "sealroom.keybroker.v1", &nonce, now_s);

    // The receipt for the job's output, on fresh evidence from the same TEE key.
    let (nonce, _) = broker.challenge().unwrap();
    let ev: sealroom_proto::attestation::v1::Evidence = evidence(nonce, &tee).into();
    let receipted = broker
        .receipt(&pb::ReceiptRequest {
            nonce: nonce.0.to_vec(),
            evidence: prost::Message::encode_to_vec(&ev),
            key_id: KEY.into(),
            output_digest: OUTPUT.into(),
            tpm_activation: None,
        })
        .unwrap();
    let receipt = receipted.receipt.unwrap_or_else(|r| panic!("receipt refused: {}", r.reason));
    let decoded = decode(&receipt, &jwk);
    assert_conforms(&decoded, sealroom_broker::receipt::RECEIPT_POLICY_ID, &nonce, now_s);

    // A token whose signature does not verify under the JWK is refused by the reference implementation too.
    let mut forged: Vec<&str> = receipt.split('.').collect();
    let other = released.attestation_result.split('.').nth(2).unwrap();
    forged[2] = other;
    assert!(
        ear::Ear::from_jwt_jwk(&forged.join("."), ear::Algorithm::ES256, jwk.to_string().as_bytes()).is_err()
    );
}

/// The draft's rules the reference implementation enforces fail our tokens when broken: an empty build in
/// `ear_verifier_id` (what the old profile's receipts had) and an empty trustworthiness vector.
#[test]
fn the_reference_implementation_refuses_what_the_old_tokens_had() {
    let sign = |claims: serde_json::Value| {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(&dir.path().join("s.pk8")).unwrap();
        (signer.sign(&claims).unwrap(), signer.jwk())
    };
    let now = i64::try_from(SystemClock.now_ms() / 1000).unwrap();
    let good = serde_json::json!({
        "eat_profile": "tag:ietf.org,2026:rats/ear#04",
        "iat": now,
        "ear_verifier_id": {"developer": "sealroom", "build": "sealroom-broker 0.1.0"},
        "submods": {"sealroom": {"ear_status": "affirming", "ear_trustworthiness_vector": {"hardware": 2}}},
    });
    let (t, jwk) = sign(good.clone());
    decode(&t, &jwk);
    let mut empty_build = good.clone();
    empty_build["ear_verifier_id"]["build"] = "".into();
    let (t, jwk) = sign(empty_build);
    let err = ear::Ear::from_jwt_jwk(&t, ear::Algorithm::ES256, jwk.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("empty build"), "{err}");
    let mut empty_vector = good;
    empty_vector["submods"]["sealroom"]["ear_trustworthiness_vector"] = serde_json::json!({});
    let (t, jwk) = sign(empty_vector);
    assert!(ear::Ear::from_jwt_jwk(&t, ear::Algorithm::ES256, jwk.to_string().as_bytes()).is_err());
}
