//! Release decisions of the key broker, one test per refusal, each asserting its one-line reason, plus the
//! happy path (unsealed with the TEE's private key, token verified with the published JWK, audit log verified).
//!
//! Most tests give the broker a `StandInAppraiser` returning the claims the verifier would produce, so each
//! policy, nonce, binding and key-store refusal can be caused precisely; everything after appraisal (nonce,
//! binding, key store, policy, sealing, token, audit) is the real broker code. The tests named `*_gce_*`,
//! `*another_tpm*`, `*forged*` and `*expired*` run the real verifier (`VerifierAppraiser`) on genuine GCE vTPM
//! evidence from `verifier/testdata/tpm`.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::missing_panics_doc)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sealroom_broker::appraisal::{
    Appraisal, Appraiser, HexBytes, PlatformClaims, Register, RuntimeReplay, SignedBinding, VerifierAppraiser,
};
use sealroom_broker::audit::{self, AuditLog, Decision};
use sealroom_broker::keystore::{Kek, KeyStore};
use sealroom_broker::nonce::NonceBook;
use sealroom_broker::nonce_mac::NonceKeys;
use sealroom_broker::policy::{GoldenFile, GoldenSet};
use sealroom_broker::seal::{self, Sealed};
use sealroom_broker::service::{Broker, BrokerParts, Call, Released};
use sealroom_broker::token::{self, Signer};
use sealroom_broker::{ManualClock, Randomness};
use sealroom_measurements::binding::{self, Kem, Nonce, TeePublicKey};
use sealroom_measurements::broker_response::{self, ReleaseStatement, TeeKeyField};
use sealroom_measurements::cel::RuntimeEvent;
use sealroom_measurements::evidence::{Evidence, HashAlg, Platform, TpmEvidence};
use sealroom_proto::keybroker::v1 as pb;
use sealroom_verifier::claims::{AkTrustClaims, TdAttributes, TdxClaims, TdxTcb, TpmClaims};
use sealroom_verifier::ear::{Status, TrustworthinessVector};
use sealroom_verifier::tpm::gce_proto::GceAttestation;
use sha2::{Digest, Sha256};

const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const PCR11: &str = "4444444444444444444444444444444444444444444444444444444444444444";
const TTL_MS: u64 = 30_000;

/// A golden document for an image whose PCR 11 is `PCR11`, signed with a fixed-seed Ed25519 key.
fn golden_document(seed: u8) -> (Vec<u8>, String, String) {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let doc = sealroom_measurements::golden::GoldenDocument {
        schema: sealroom_measurements::golden::SCHEMA.into(),
        image: sealroom_measurements::golden::ImageInfo {
            id: "sealroom-test".into(),
            version: "0.1.0".into(),
            disk_sha256: None,
        },
        uki: sealroom_measurements::golden::UkiInfo {
            file_sha256: "0".repeat(64),
            authenticode_sha256: "0".repeat(64),
            authenticode_sha384: "0".repeat(96),
            sections: vec![],
        },
        registers: vec![sealroom_measurements::uki::PredictedRegister {
            register: "pcr11".into(),
            alg: "sha256".into(),
            events: vec![],
            value: PCR11.into(),
            complete: true,
        }],
        platforms: sealroom_measurements::golden::default_platforms(),
        packages: BTreeMap::new(),
    };
    let bytes = doc.to_json().unwrap();
    let key = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
    let sig = hex::encode(key.sign(&bytes).as_ref());
    (bytes, sig, format!("ed25519:{}", hex::encode(key.public_key().as_ref())))
}

fn golden_file() -> GoldenFile {
    let (bytes, sig, _) = golden_document(1);
    GoldenFile::new(bytes, Some(sig))
}

fn golden_doc_digest() -> String {
    golden_file().digest
}

fn golden_signer() -> String {
    golden_document(1).2
}

fn policy() -> String {
    let (golden_doc, signer) = (golden_doc_digest(), golden_signer());
    format!(
        r#"
version = 1
platforms = ["tdx", "azure-tdx-vtpm"]
tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
minimum_tcb = {{ "tdx.tee_tcb_svn.0" = 3 }}
debug = "forbidden"
golden = {{ signers = ["{signer}"], documents = ["{golden_doc}"] }}
image_digests = ["{IMAGE}"]
args = ["--in", "/data"]
env = ["MODE=batch", "THREADS=*"]
"#
    )
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
        a.binding = Some(self.binding.lock().unwrap().clone().unwrap_or_else(|| {
            SignedBinding::TpmExtraData(HexBytes(
                binding::binding_digest(&evidence.nonce, &evidence.tee_public_key).to_vec(),
            ))
        }));
        Ok(a)
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn reg(name: &str) -> Register {
    name.parse().unwrap()
}

fn hex_value(h: &str) -> HexBytes {
    HexBytes(hex::decode(h).unwrap())
}

/// A TD quote verified against Intel collateral: UpToDate, TEE_TCB_SVN[0] = 4, SEPT_VE_DISABLE set, no debug.
fn td_claims() -> TdxClaims {
    let zeros = |n: usize| HexBytes(vec![0; n]);
    TdxClaims {
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
        mr_td: zeros(48),
        rtmr: [zeros(48), zeros(48), zeros(48), zeros(48)],
        mr_config_id: zeros(48),
        mr_owner: zeros(48),
        mr_owner_config: zeros(48),
        xfam: zeros(8),
    }
}

/// What the verifier establishes for an Azure TDX CVM: the TD quote's claims, the vTPM's PCRs (PCR 11 golden)
/// and the runtime log replayed to PCR 15.
fn good_claims() -> Appraisal {
    Appraisal {
        evidence: "sealroom evidence".into(),
        policy_id: "sealroom.keybroker.v1".into(),
        at: 1_700_000_000,
        status: Status::Affirming,
        trust_vector: TrustworthinessVector {
            instance_identity: 2,
            configuration: 2,
            hardware: 2,
            runtime_opaque: 2,
            ..TrustworthinessVector::default()
        },
        platform: Some(PlatformClaims::AzureTdxVtpm {
            tdx: td_claims(),
            vtpm: TpmClaims {
                ak: AkTrustClaims::AzureHcl,
                quoted_banks: vec![HashAlg::Sha256],
                firmware_version: Some(1),
                reset_count: Some(0),
            },
        }),
        registers: BTreeMap::from([(reg("pcr11.sha256"), hex_value(PCR11))]),
        binding: None,
        runtime: Some(RuntimeReplay {
            registers: vec![reg("pcr15.sha256")],
            events: vec![
                RuntimeEvent::ImageReference(format!("registry.example/analytics@{IMAGE}")),
                RuntimeEvent::ManifestDigest(IMAGE.into()),
                RuntimeEvent::Arg("--in".into()),
                RuntimeEvent::Arg("/data".into()),
                RuntimeEvent::Env("MODE=batch".into()),
                RuntimeEvent::Env("THREADS=4".into()),
                RuntimeEvent::LaunchSeparator,
                RuntimeEvent::KeyRelease { key_id: "provider-a/data".into(), broker_key: "b".into() },
            ],
        }),
        gpus: vec![],
        layers: vec![],
        warnings: vec![],
    }
}

/// The replayed runtime events of a stand-in appraisal.
fn events(a: &mut Appraisal) -> &mut Vec<RuntimeEvent> {
    &mut a.runtime.as_mut().unwrap().events
}

/// The TD claims of a stand-in appraisal.
fn td(a: &mut Appraisal) -> &mut TdxClaims {
    match a.platform.as_mut().unwrap() {
        PlatformClaims::AzureTdxVtpm { tdx, .. } | PlatformClaims::Tdx(tdx) => tdx,
        other => panic!("not a TD: {other:?}"),
    }
}

/// The broker of a [`Fixture`] over the state directory `dir` (its signing key and audit log there): the stand-in
/// appraiser, the given store and golden documents, nonces living [`TTL_MS`].
fn start_broker(
    dir: &std::path::Path,
    clock: &Arc<ManualClock>,
    rng: &Arc<TestRandomness>,
    appraiser: &Arc<StandInAppraiser>,
    store: &Arc<KeyStore>,
    golden: GoldenSet,
) -> Broker {
    Broker::new(BrokerParts {
        clock: clock.clone(),
        rng: rng.clone(),
        appraiser: appraiser.clone(),
        store: store.clone(),
        golden,
        signer: Signer::load_or_create(&dir.join("signing.pk8")).unwrap(),
        nonces: NonceBook::new(NonceKeys::new(&[0x6e; 32], None, TTL_MS).unwrap()),
        audit: AuditLog::open(&dir.join("audit.log")).unwrap().0,
    })
}

struct Fixture {
    _dir: tempfile::TempDir,
    audit_path: std::path::PathBuf,
    clock: Arc<ManualClock>,
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
        let clock = Arc::new(ManualClock::at(1_700_000_000_000));
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
        let audit_path = dir.path().join("audit.log");
        let golden = GoldenSet { files: vec![golden_file()] };
        let broker = start_broker(dir.path(), &clock, &rng, &appraiser, &store, golden);
        let signer_jwk = Signer::load_or_create(&dir.path().join("signing.pk8")).unwrap().jwk();
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

    /// Stops the broker and closes its key store, runs `between` on the state directory, and opens both again on
    /// the same state (same KEK, signing key, audit log, clock, randomness and appraiser), trusting `golden`.
    fn restarted(self, golden: GoldenSet, between: impl FnOnce(&std::path::Path)) -> Self {
        let Self {
            _dir,
            audit_path,
            clock,
            rng,
            appraiser,
            store,
            broker,
            tee_private,
            tee_public,
            signer_jwk,
        } = self;
        drop(broker);
        drop(store);
        between(_dir.path());
        let db_path = _dir.path().join("keys.redb");
        let store =
            Arc::new(KeyStore::open(&db_path, Kek::from_bytes(&[9; 32]).unwrap(), rng.as_ref()).unwrap());
        let broker = start_broker(_dir.path(), &clock, &rng, &appraiser, &store, golden);
        Self { _dir, audit_path, clock, rng, appraiser, store, broker, tee_private, tee_public, signer_jwk }
    }

    /// Stops the broker, lets `edit` change keys.redb directly (as someone who can write the file but does not
    /// hold the KEK), and starts the broker again on the same state directory.
    fn with_store_edited(self, edit: impl FnOnce(&redb::Database)) -> Self {
        self.restarted(GoldenSet { files: vec![golden_file()] }, |dir| {
            edit(&redb::Database::open(dir.join("keys.redb")).unwrap());
        })
    }

    fn evidence(&self, nonce: Nonce) -> Evidence {
        Evidence {
            nonce,
            tee_public_key: self.tee_public.clone(),
            platform: Platform::AzureTdxVtpm,
            tpm: None,
            tdx: None,
            sev_snp: None,
            azure: Some(sealroom_measurements::evidence::AzureVtpmEvidence {
                hcl_report: vec![0x48, 0x43, 0x4c],
                vtpm: TpmEvidence { attest: vec![0xff, 0x54, 0x43, 0x47], ..TpmEvidence::default() },
                td_quote: vec![4, 0],
                vcek: vec![],
            }),
            runtime_event_log: vec![],
            gpus: Vec::new(),
        }
    }

    fn request(nonce: &Nonce, evidence: Evidence, keys: &[&str]) -> pb::ReleaseRequest {
        pb::ReleaseRequest {
            nonce: nonce.0.to_vec(),
            evidence: Some(evidence.into()),
            key_ids: keys.iter().map(|k| (*k).to_owned()).collect(),
            tpm_activation: None,
        }
    }

    /// Challenge, then release `keys` with fresh evidence bound to the nonce.
    fn release(&self, keys: &[&str]) -> Released {
        let (nonce, _) = self.broker.challenge().unwrap();
        self.broker.release(Self::request(&nonce, self.evidence(nonce), keys)).unwrap()
    }

    /// A release of provider A's key on `nonce` with `evidence` as given (another challenge's, an attacker's TEE
    /// key, …).
    fn release_with(&self, nonce: &Nonce, evidence: Evidence) -> Released {
        self.broker.release(Self::request(nonce, evidence, &["provider-a/data"])).unwrap()
    }

    /// Makes the appraiser report `binding` as what the evidence's signed part binds.
    fn bind(&self, binding: SignedBinding) {
        *self.appraiser.binding.lock().unwrap() = Some(binding);
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

/// [`assert_refused`] for provider A's key, the one almost every refusal below is about.
fn assert_a_refused(f: &Fixture, r: &Released, reason: &str) {
    assert_refused(f, r, "provider-a/data", reason);
}

fn refusal_for(f: &Fixture, key: &str, tweak: impl FnOnce(&mut Appraisal)) -> Released {
    f.tweak(tweak);
    f.release(&[key])
}

/// A fresh fixture whose appraisal `tweak` changes asks for provider A's key: refused with exactly `reason`
/// (and audited, as [`assert_refused`] checks). One line per policy rule the tests below break.
fn assert_tweak_refused(tweak: impl FnOnce(&mut Appraisal), reason: &str) {
    let f = Fixture::new();
    let r = refusal_for(&f, "provider-a/data", tweak);
    assert_a_refused(&f, &r, reason);
}

#[test]
fn happy_path_releases_sealed_keys_with_a_signed_token_and_audit_records() {
    for kem in [Kem::X25519HkdfSha256, Kem::P256HkdfSha256] {
        let f = Fixture::with_appraiser_and_kem(kem);
        let (nonce, ttl) = f.broker.challenge().unwrap();
        assert_eq!(ttl, 30);
        let r = f
            .broker
            .release(Fixture::request(&nonce, f.evidence(nonce), &["provider-a/data", "provider-b/data"]))
            .unwrap();
        assert!(r.refusals.is_empty(), "{:?}", r.refusals);
        assert_eq!(r.keys.len(), 2);
        assert_eq!(f.open("provider-a/data", &nonce, &r.keys[0].1), b"data key A");
        assert_eq!(f.open("provider-b/data", &nonce, &r.keys[1].1), b"data key B");
        // Sealed to this key id: it does not open as the other.
        assert!(seal::open(kem, &f.tee_private, "provider-b/data", &nonce, &r.keys[0].1).is_err());
        let claims = token::verify(&r.attestation_result, &f.signer_jwk).unwrap();
        let sub = &claims["submods"]["sealroom"];
        assert_eq!(claims["eat_profile"], "tag:ietf.org,2026:rats/ear#04");
        assert_eq!(claims["ear_status"], "affirming");
        assert_eq!(sub["ear_status"], "affirming");
        assert_eq!(sub["ear_appraisal_policy_ids"], serde_json::json!(["sealroom.keybroker.v1"]));
        assert_eq!(sub["ear_trustworthiness_vector"]["hardware"], 2);
        // The platform by the policy's name, and its typed claims.
        assert_eq!(sub["sealroom.platform"], "azure-tdx-vtpm");
        assert_eq!(sub["sealroom.debug"], false);
        assert_eq!(sub["sealroom.claims"]["azure-tdx-vtpm"]["tdx"]["tcb"]["status"], "UpToDate");
        assert_eq!(sub["sealroom.runtime_registers"], serde_json::json!(["pcr15.sha256"]));
        assert_eq!(sub["sealroom.keys.released"], serde_json::json!(["provider-a/data", "provider-b/data"]));
        assert_eq!(claims["eat_nonce"], base64_url(&nonce.0));
        let head = audit::verify(&std::fs::read(&f.audit_path).unwrap()).unwrap();
        assert_eq!(claims["sealroom.audit"]["records"], 2);
        assert_eq!(claims["sealroom.audit"]["head"], hex::encode(head.hash));
        assert!(r.audit.iter().all(|a| a.decision == Decision::Released));
        // The response is signed by the broker's key over exactly what it says.
        let digests: Vec<(&str, [u8; 32])> = r
            .keys
            .iter()
            .map(|(id, s)| {
                (
                    id.as_str(),
                    broker_response::sealed_key_digest(s.kem.id(), &s.encapsulated_key, &s.ciphertext),
                )
            })
            .collect();
        let statement = broker_response::release_signing_input(&ReleaseStatement {
            nonce: &nonce,
            tee_key: TeeKeyField { kem_id: kem.id(), key: f.tee_public.as_bytes() },
            keys: &digests,
            refusals: &[],
            attestation_result: &r.attestation_result,
        });
        let kid = f.signer_jwk["kid"].as_str().unwrap();
        broker_response::verify(kid, &r.broker_public_key, &r.signature, &statement).unwrap();
        let other_nonce = broker_response::release_signing_input(&ReleaseStatement {
            nonce: &Nonce([0; 32]),
            tee_key: TeeKeyField { kem_id: kem.id(), key: f.tee_public.as_bytes() },
            keys: &digests,
            refusals: &[],
            attestation_result: &r.attestation_result,
        });
        assert!(broker_response::verify(kid, &r.broker_public_key, &r.signature, &other_nonce).is_err());
    }
}

/// Issue 14, finding 3: someone who can write keys.redb but does not hold the KEK un-revokes a key and gives it
/// an all-`skip` policy by editing its record in place (keeping the old tag), by writing a record without a
/// tag, or by copying another key's valid record under its id. Each edit is refused with its reason, and the
/// refusal is audited.
#[test]
fn attack_keystore_record_edits() {
    let f = Fixture::new();
    f.store.revoke("provider-a/data", 5).unwrap();
    assert_refused(
        &f,
        &f.release(&["provider-a/data"]),
        "provider-a/data",
        "key store: key provider-a/data was revoked at 5 ms",
    );
    let all_skip = "version = 1\nplatforms = \"skip\"\ntcb_statuses = \"skip\"\nminimum_tcb = \"skip\"\n\
                    debug = \"skip\"\ngolden = \"skip\"\nimage_digests = \"skip\"\nargs = \"skip\"\nenv = \"skip\"\n";
    let keys_table: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("keys");
    let tampered = "key store: the record of key provider-a/data fails its integrity check (changed without the \
                    key-encryption key)";
    type Edit = Box<dyn Fn(&[u8], &[u8]) -> Vec<u8>>;
    let edits: [(&str, Edit); 3] = [
        (
            "un-revoked, all-skip policy, old tag kept",
            Box::new(move |mine: &[u8], _| {
                let (json, tag) = mine.split_at(mine.len() - 32);
                let mut record: serde_json::Value = serde_json::from_slice(json).unwrap();
                record["state"] = serde_json::json!({"state": "active"});
                record["policy"] = serde_json::json!(all_skip);
                let mut forged = serde_json::to_vec(&record).unwrap();
                forged.extend_from_slice(tag);
                forged
            }),
        ),
        (
            "record without a tag",
            Box::new(move |mine: &[u8], _| {
                let mut record: serde_json::Value = serde_json::from_slice(&mine[..mine.len() - 32]).unwrap();
                record["state"] = serde_json::json!({"state": "active"});
                serde_json::to_vec(&record).unwrap()
            }),
        ),
        ("another key's valid record", Box::new(|_, other: &[u8]| other.to_vec())),
    ];
    let mut f = f;
    for (what, edit) in edits {
        f = f.with_store_edited(|db| {
            use redb::ReadableTable;
            let txn = db.begin_write().unwrap();
            {
                let mut keys = txn.open_table(keys_table).unwrap();
                let mine = keys.get("provider-a/data").unwrap().unwrap().value().to_vec();
                let other = keys.get("provider-b/data").unwrap().unwrap().value().to_vec();
                keys.insert("provider-a/data", edit(&mine, &other).as_slice()).unwrap();
            }
            txn.commit().unwrap();
        });
        let r = f.release(&["provider-a/data"]);
        assert_a_refused(&f, &r, tampered);
        assert_eq!(r.audit.last().unwrap().rule, "key store", "{what}");
        assert_eq!(f.store.list(None).unwrap_err().to_string(), tampered, "{what}");
        // The other key's record is untouched and still released.
        assert_eq!(f.release(&["provider-b/data"]).keys.len(), 1, "{what}");
    }
}

/// Issue 14, finding 5: one unauthenticated `Release` with a never-issued nonce and 64 key ids used to append 64
/// fsync'd audit records. Now it is one record naming all 64, and a peer repeating it is rate-limited.
#[test]
fn attack_release_audit_amplification() {
    let f = Fixture::new();
    let ids: Vec<String> = (0..64).map(|i| format!("provider-x/k{i}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let nonce = Nonce([0x5a; 32]);
    let r = f.broker.release(Fixture::request(&nonce, f.evidence(nonce), &id_refs)).unwrap();
    assert_eq!(r.refusals.len(), 64);
    assert!(r.refusals.iter().all(|(_, x)| x.reason == "nonce: not issued by this broker"));
    assert_eq!(r.audit.len(), 1);
    assert_eq!(
        (r.audit[0].decision, r.audit[0].key_id.as_str()),
        (Decision::Refused, ids.join(",").as_str())
    );
    assert_eq!(audit::verify(&std::fs::read(&f.audit_path).unwrap()).unwrap().records, 1);
    // A peer that keeps sending them is cut off after its burst; other peers are not.
    let peer: std::net::IpAddr = "192.0.2.7".parse().unwrap();
    let allowed = (0..100).take_while(|_| f.broker.check_rate(Call::Release, peer).is_ok()).count();
    assert_eq!(allowed, 20);
    assert_eq!(
        f.broker.check_rate(Call::Release, peer).unwrap_err().to_string(),
        "rate limit: too many Release/Receipt calls from 192.0.2.7; retry in 100 ms"
    );
    f.broker.check_rate(Call::Release, "192.0.2.8".parse().unwrap()).unwrap();
    f.clock.advance(100);
    f.broker.check_rate(Call::Release, peer).unwrap();
}

#[test]
fn refuses_wrong_workload_digest() {
    let other = "sha256:5555555555555555555555555555555555555555555555555555555555555555";
    assert_tweak_refused(
        |a| {
            events(a)[1] = RuntimeEvent::ManifestDigest(other.into());
        },
        &format!("policy.image_digests: workload image digest {other} not allowed"),
    );
}

#[test]
fn refuses_workload_without_image_digest() {
    assert_tweak_refused(
        |a| {
            events(a).remove(1);
        },
        "policy.image_digests: no workload image digest was measured",
    );
}

#[test]
fn refuses_extra_env_var() {
    assert_tweak_refused(
        |a| {
            events(a).insert(6, RuntimeEvent::Env("LD_PRELOAD=/x.so".into()));
        },
        "policy.env: environment variable \"LD_PRELOAD=/x.so\" not allowed",
    );
}

#[test]
fn refuses_changed_args() {
    assert_tweak_refused(
        |a| events(a)[3] = RuntimeEvent::Arg("/etc".into()),
        "policy.args: argument 1 is \"/etc\", policy requires \"/data\"",
    );
}

#[test]
fn refuses_extra_arg() {
    assert_tweak_refused(
        |a| {
            events(a).insert(4, RuntimeEvent::Arg("--debug".into()));
        },
        "policy.args: 3 arguments, policy requires 2",
    );
}

#[test]
fn refuses_launch_event_after_the_separator() {
    assert_tweak_refused(
        |a| events(a).push(RuntimeEvent::Env("EXTRA=1".into())),
        "workload.launch: launch event env at position 8 after the launch separator",
    );
}

#[test]
fn refuses_workload_without_launch_separator() {
    assert_tweak_refused(
        |a| events(a).truncate(6),
        "workload.launch: no launch separator: the workload was not launched by the agent",
    );
}

#[test]
fn refuses_pcr11_not_golden() {
    let bad = "5".repeat(64);
    assert_tweak_refused(
        |a| {
            a.registers.insert(reg("pcr11.sha256"), hex_value(&bad));
        },
        &format!(
            "policy.golden: pcr11.sha256 not golden: expected {PCR11}, got {bad} ({})",
            golden_doc_digest()
        ),
    );
}

#[test]
fn refuses_golden_register_missing_from_evidence() {
    assert_tweak_refused(
        |a| a.registers.clear(),
        &format!("policy.golden: no register of golden document {} is in the evidence", golden_doc_digest()),
    );
}

#[test]
fn refuses_golden_register_not_quoted() {
    // The quote covers other sha256 PCRs but not PCR 11: the golden register cannot be checked.
    assert_tweak_refused(
        |a| {
            a.registers.remove(&reg("pcr11.sha256"));
            a.registers.insert(reg("pcr4.sha256"), hex_value(&"7".repeat(64)));
        },
        &format!("policy.golden: pcr11.sha256 not in the evidence ({})", golden_doc_digest()),
    );
}

/// A fixture whose broker trusts exactly the golden documents `files`.
fn with_golden(files: Vec<GoldenFile>) -> Fixture {
    Fixture::new().restarted(GoldenSet { files }, |_| ())
}

#[test]
fn refuses_unsigned_golden_document() {
    let (bytes, _, _) = golden_document(1);
    let f = with_golden(vec![GoldenFile::new(bytes, None)]);
    let r = f.release(&["provider-a/data"]);
    assert_a_refused(
        &f,
        &r,
        &format!("policy.golden: golden document {} is unsigned (no .sig file)", golden_doc_digest()),
    );
}

#[test]
fn refuses_golden_document_signed_by_another_key() {
    // Same document bytes, signed by a key the policy does not accept.
    let (bytes, _, _) = golden_document(1);
    let (_, other_sig, _) = {
        use aws_lc_rs::signature::Ed25519KeyPair;
        let key = Ed25519KeyPair::from_seed_unchecked(&[2; 32]).unwrap();
        ((), hex::encode(key.sign(&bytes).as_ref()), ())
    };
    let f = with_golden(vec![GoldenFile::new(bytes, Some(other_sig))]);
    let r = f.release(&["provider-a/data"]);
    assert_a_refused(
        &f,
        &r,
        &format!(
            "policy.golden: golden document {} signature does not verify under any accepted signer",
            golden_doc_digest()
        ),
    );
}

#[test]
fn refuses_tampered_golden_document() {
    // The signature is genuine but the document was edited after signing (another PCR 11 value).
    let (bytes, sig, _) = golden_document(1);
    let edited = String::from_utf8(bytes).unwrap().replace(PCR11, &"5".repeat(64)).into_bytes();
    let edited = GoldenFile::new(edited, Some(sig));
    let digest = edited.digest.clone();
    let f = with_golden(vec![edited]);
    // The policy names the original digest, which the broker no longer has.
    let r = f.release(&["provider-a/data"]);
    assert_a_refused(
        &f,
        &r,
        &format!("policy.golden: golden document {} not loaded by the broker", golden_doc_digest()),
    );
    // And a policy naming the edited document's digest is refused on the signature.
    f.store.set_policy("provider-a/data", &policy().replace(&golden_doc_digest(), &digest)).unwrap();
    let r = f.release(&["provider-a/data"]);
    assert_eq!(
        r.refusals[0].1.reason,
        format!(
            "policy.golden: golden document {digest} signature does not verify under any accepted signer"
        )
    );
}

#[test]
fn refuses_debug_tee() {
    assert_tweak_refused(|a| td(a).td_attributes.debug = true, "policy.debug: TEE runs in debug mode");
}

#[test]
fn refuses_tcb_below_minimum() {
    assert_tweak_refused(
        |a| {
            td(a).tee_tcb_svn.0[0] = 2;
        },
        "policy.minimum_tcb: TCB tdx.tee_tcb_svn.0 is 2, below the minimum 3",
    );
}

#[test]
fn refuses_tcb_status_not_accepted() {
    assert_tweak_refused(
        |a| {
            td(a).tcb.as_mut().unwrap().status = sealroom_verifier::tdx::TcbStatus::OutOfDate;
        },
        "policy.tcb_statuses: TCB status OutOfDate not accepted (accepted: UpToDate, SWHardeningNeeded)",
    );
}

#[test]
fn refuses_platform_not_allowed() {
    let f = Fixture::new();
    // The evidence says TPM and so does the verifier; the policy allows only TDX and Azure TDX vTPM.
    f.tweak(|a| {
        a.platform = Some(PlatformClaims::Tpm(TpmClaims {
            ak: AkTrustClaims::Enrolled { ak_public_sha256: HexBytes(vec![0x55; 32]) },
            quoted_banks: vec![HashAlg::Sha256],
            firmware_version: Some(1),
            reset_count: Some(0),
        }));
    });
    let (nonce, _) = f.broker.challenge().unwrap();
    let mut ev = f.evidence(nonce);
    ev.platform = Platform::Tpm;
    ev.azure = None;
    ev.tpm = Some(TpmEvidence { attest: vec![0xff, 0x54, 0x43, 0x47], ..TpmEvidence::default() });
    let r = f.release_with(&nonce, ev);
    assert_a_refused(&f, &r, "policy.platforms: platform tpm not allowed (allowed: tdx, azure-tdx-vtpm)");
}

/// Evidence of a bare TD (no vTPM): the stand-in says what the verifier establishes for it.
fn tdx_evidence(f: &Fixture, nonce: Nonce) -> Evidence {
    let mut ev = f.evidence(nonce);
    ev.platform = Platform::Tdx;
    ev.azure = None;
    ev.tdx = Some(sealroom_measurements::evidence::TdxEvidence { quote: vec![4, 0], ..Default::default() });
    ev
}

/// A bare TD: its runtime log replayed to RTMR3; the golden register is RTMR2.
fn tdx_appraisal(a: &mut Appraisal) {
    a.platform = Some(PlatformClaims::Tdx(td_claims()));
    a.runtime.as_mut().unwrap().registers = vec![reg("rtmr3")];
}

#[test]
fn releases_on_tdx_with_the_runtime_log_replayed_to_rtmr3_and_names_the_platform_in_the_token() {
    let f = Fixture::new();
    f.tweak(tdx_appraisal);
    let (nonce, _) = f.broker.challenge().unwrap();
    let r = f.release_with(&nonce, tdx_evidence(&f, nonce));
    assert!(r.refusals.is_empty(), "{:?}", r.refusals);
    assert_eq!(f.open("provider-a/data", &nonce, &r.keys[0].1), b"data key A");
    let claims = token::verify(&r.attestation_result, &f.signer_jwk).unwrap();
    let sub = &claims["submods"]["sealroom"];
    assert_eq!(sub["sealroom.platform"], "tdx");
    assert_eq!(sub["sealroom.runtime_registers"], serde_json::json!(["rtmr3"]));
    assert_eq!(sub["sealroom.claims"]["tdx"]["td_attributes"]["sept_ve_disable"], true);
    // The launch rule says where the log was replayed.
    let policy = sealroom_broker::policy::Policy::parse(&policy()).unwrap();
    let mut a = good_claims();
    tdx_appraisal(&mut a);
    let verdict = policy.evaluate(&a, &GoldenSet { files: vec![golden_file()] });
    let launch = verdict.rules.iter().find(|(rule, _)| *rule == "workload.launch").unwrap();
    assert_eq!(
        launch.1,
        sealroom_broker::policy::Outcome::Pass(
            "6 launch events, then the separator (replayed to rtmr3)".into()
        )
    );
}

#[test]
fn refuses_evidence_whose_runtime_log_replayed_to_no_runtime_register() {
    let f = Fixture::new();
    f.tweak(|a| {
        tdx_appraisal(a);
        a.runtime = None;
    });
    let (nonce, _) = f.broker.challenge().unwrap();
    let r = f.release_with(&nonce, tdx_evidence(&f, nonce));
    assert_a_refused(
        &f,
        &r,
        "workload.launch: no runtime log replayed to a quoted runtime register (PCR 15 or RTMR3): the workload \
         was not measured",
    );
}

#[test]
fn refuses_a_debug_td_verified_without_collateral() {
    let f = Fixture::new();
    // Without Intel collateral there is no TCB status, but TDATTRIBUTES is in the signed quote body: DEBUG set.
    f.tweak(|a| {
        tdx_appraisal(a);
        td(a).tcb = None;
        td(a).td_attributes = TdAttributes::decode((1u64 | (1 << 28)).to_le_bytes());
    });
    let (nonce, _) = f.broker.challenge().unwrap();
    let r = f.release_with(&nonce, tdx_evidence(&f, nonce));
    assert_a_refused(&f, &r, "policy.debug: TEE runs in debug mode");
}

#[test]
fn refuses_a_debug_azure_td() {
    let f = Fixture::new();
    f.tweak(|a| td(a).td_attributes.debug = true);
    let r = f.release(&["provider-a/data"]);
    assert_a_refused(&f, &r, "policy.debug: TEE runs in debug mode");
}

#[test]
fn refuses_replayed_nonce() {
    let f = Fixture::new();
    let (nonce, _) = f.broker.challenge().unwrap();
    let req = Fixture::request(&nonce, f.evidence(nonce), &["provider-a/data"]);
    assert_eq!(f.broker.release(req.clone()).unwrap().keys.len(), 1);
    let r = f.broker.release(req).unwrap();
    assert_a_refused(&f, &r, "nonce: already used (replay)");
}

#[test]
fn refuses_expired_nonce() {
    let f = Fixture::new();
    let (nonce, _) = f.broker.challenge().unwrap();
    f.clock.advance(TTL_MS + 5);
    let r = f.release_with(&nonce, f.evidence(nonce));
    assert_a_refused(&f, &r, "nonce: expired 5 ms ago");
}

#[test]
fn refuses_nonce_never_issued() {
    let f = Fixture::new();
    let nonce = Nonce([0x5a; 32]);
    let r = f.release_with(&nonce, f.evidence(nonce));
    assert_a_refused(&f, &r, "nonce: not issued by this broker");
}

#[test]
fn refuses_evidence_bound_to_another_challenge() {
    let f = Fixture::new();
    let (first, _) = f.broker.challenge().unwrap();
    let (second, _) = f.broker.challenge().unwrap();
    // Evidence produced for the first challenge, presented with the second nonce.
    let r = f.release_with(&second, f.evidence(first));
    assert_a_refused(&f, &r, "binding: evidence was produced for another nonce than the one presented");
}

#[test]
fn refuses_quote_that_binds_another_nonce() {
    let f = Fixture::new();
    // The evidence claims the right nonce but the signed extraData binds a different one.
    f.bind(SignedBinding::TpmExtraData(HexBytes(
        binding::binding_digest(&Nonce([1; 32]), &f.tee_public).to_vec(),
    )));
    let r = f.release(&["provider-a/data"]);
    assert_a_refused(&f, &r, "binding: TPM quote extraData does not bind this nonce and TEE public key");
}

#[test]
fn refuses_tee_key_not_bound() {
    let f = Fixture::new();
    let (nonce, _) = f.broker.challenge().unwrap();
    // The quote binds the genuine TEE key; the request swaps in an attacker's key to receive the data key.
    let (_, attacker) = seal::derive_keypair(Kem::X25519HkdfSha256, b"attacker").unwrap();
    f.bind(SignedBinding::TpmExtraData(HexBytes(binding::binding_digest(&nonce, &f.tee_public).to_vec())));
    let mut ev = f.evidence(nonce);
    ev.tee_public_key = attacker;
    let r = f.release_with(&nonce, ev);
    assert_a_refused(&f, &r, "binding: TPM quote extraData does not bind this nonce and TEE public key");
}

#[test]
fn refuses_report_data_without_the_sealroom_tag() {
    let f = Fixture::new();
    let (nonce, _) = f.broker.challenge().unwrap();
    let mut rd = binding::report_data(&nonce, &f.tee_public);
    rd[40] ^= 1;
    f.bind(SignedBinding::ReportData(HexBytes(rd.to_vec())));
    let r = f.release_with(&nonce, f.evidence(nonce));
    assert_a_refused(&f, &r, "binding: REPORT_DATA does not carry the sealroom binding tag");
}

#[test]
fn refuses_revoked_key() {
    let f = Fixture::new();
    f.store.revoke("provider-a/data", 42).unwrap();
    let r = f.release(&["provider-a/data"]);
    assert_a_refused(&f, &r, "key store: key provider-a/data was revoked at 42 ms");
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

/// A broker with the real verifier (`VerifierAppraiser`) and a permissive-but-complete policy, at `now_ms`.
fn real_verifier_broker(dir: &std::path::Path, now_ms: u64) -> Broker {
    let rng = Arc::new(TestRandomness::default());
    let store =
        Arc::new(KeyStore::open(&dir.join("k"), Kek::from_bytes(&[9; 32]).unwrap(), rng.as_ref()).unwrap());
    store.add("provider-a/data", "provider-a", &policy(), None, rng.as_ref(), 1).unwrap();
    let (audit_log, _) = AuditLog::open(&dir.join("audit.log")).unwrap();
    Broker::new(BrokerParts {
        clock: Arc::new(ManualClock::at(now_ms)),
        rng,
        appraiser: Arc::new(VerifierAppraiser::default()),
        store,
        golden: GoldenSet::default(),
        signer: Signer::load_or_create(&dir.join("s")).unwrap(),
        nonces: NonceBook::new(NonceKeys::new(&[0x6e; 32], None, TTL_MS).unwrap()),
        audit: audit_log,
    })
}

fn testdata(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/../testdata/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Real GCE vTPM evidence (verifier/testdata/tpm, MANIFEST.md there): its quote's extraData is go-tpm-tools'
/// nonce 0x9009, not a sealroom binding. AK certificate valid 2021-08-31..2051-08-24.
fn gce_evidence(nonce: Nonce, tee: &TeePublicKey) -> Evidence {
    let att = GceAttestation::decode(&testdata("tpm/attestations/gce-cos-85-nonce9009.pb")).unwrap();
    let quote = att.quotes.iter().find(|q| q.bank.alg == HashAlg::Sha256).unwrap();
    Evidence {
        nonce,
        tee_public_key: tee.clone(),
        platform: Platform::Tpm,
        tpm: Some(att.to_tpm_evidence(quote)),
        tdx: None,
        sev_snp: None,
        azure: None,
        runtime_event_log: vec![],
        gpus: Vec::new(),
    }
}

const JAN_2024_MS: u64 = 1_704_067_200_000;

fn release_real(now_ms: u64, tweak: impl FnOnce(&mut Evidence)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let broker = real_verifier_broker(dir.path(), now_ms);
    let (nonce, _) = broker.challenge().unwrap();
    let (_, tee) = seal::derive_keypair(Kem::X25519HkdfSha256, b"gce").unwrap();
    let mut ev = gce_evidence(nonce, &tee);
    tweak(&mut ev);
    let r = broker.release(Fixture::request(&nonce, ev, &["provider-a/data"])).unwrap();
    assert!(r.keys.is_empty());
    let audited = audit::verify(&std::fs::read(dir.path().join("audit.log")).unwrap()).unwrap();
    assert_eq!(audited.records, 1);
    r.refusals[0].1.reason.clone()
}

#[test]
fn refuses_genuine_gce_quote_that_does_not_bind_nonce_and_tee_key() {
    assert_eq!(
        release_real(JAN_2024_MS, |_| {}),
        "verifier: binding: TPM quote extraData is 2 bytes, expected 32"
    );
}

#[test]
fn refuses_evidence_from_another_tpm() {
    // The AK certificate of another GCE vTPM: the chain is genuine but it does not certify this quote's AK.
    let other = sealroom_verifier::x509::Certificate::chain_from_pem(&testdata(
        "tpm/gce-ak-ek-certs/pca_tpm_rsa_sign_cert.pem",
    ))
    .unwrap()
    .remove(0);
    let reason =
        release_real(JAN_2024_MS, |ev| ev.tpm.as_mut().unwrap().ak_cert_chain[0] = other.der().to_vec());
    assert_eq!(
        reason,
        "verifier: tpm ak certificate: the AK certificate certifies another key than the quote's AK"
    );
}

#[test]
fn refuses_forged_quote_signature() {
    let reason = release_real(JAN_2024_MS, |ev| {
        let sig = &mut ev.tpm.as_mut().unwrap().signature;
        let last = sig.len() - 1;
        sig[last] ^= 1;
    });
    assert_eq!(reason, "verifier: tpm quote: AK signature over TPMS_ATTEST invalid");
}

#[test]
fn refuses_evidence_whose_ak_certificate_expired_at_verification_time() {
    // 2052-01-01: after the AK certificate's notAfter (2051-08-24). Time is the broker's injected clock.
    assert_eq!(
        release_real(2_587_680_000_000, |_| {}),
        "verifier: tpm ak certificate: chain to Google EK/AK root: certificate '': expired (notAfter \
         2051-08-24T23:16:05Z, time 2052-01-01T00:00:00Z)"
    );
}

#[test]
fn refuses_malformed_nonce() {
    let f = Fixture::new();
    let (nonce, _) = f.broker.challenge().unwrap();
    let mut req = Fixture::request(&nonce, f.evidence(nonce), &["provider-a/data"]);
    req.nonce.pop();
    let r = f.broker.release(req).unwrap();
    assert_a_refused(&f, &r, "binding: invalid nonce: 31 bytes, expected 32");
}

#[test]
fn refuses_missing_evidence() {
    let f = Fixture::new();
    let (nonce, _) = f.broker.challenge().unwrap();
    let mut req = Fixture::request(&nonce, f.evidence(nonce), &["provider-a/data"]);
    req.evidence = None;
    let r = f.broker.release(req).unwrap();
    assert_a_refused(&f, &r, "evidence: missing");
}

#[test]
fn refuses_unknown_binding_version() {
    let f = Fixture::new();
    let (nonce, _) = f.broker.challenge().unwrap();
    let mut req = Fixture::request(&nonce, f.evidence(nonce), &["provider-a/data"]);
    req.evidence.as_mut().unwrap().binding_version = 2;
    let r = f.broker.release(req).unwrap();
    assert_a_refused(&f, &r, "evidence: invalid binding_version: 2 (this verifier knows 1)");
}

#[test]
fn refuses_invalid_p256_tee_key() {
    let f = Fixture::with_appraiser_and_kem(Kem::P256HkdfSha256);
    let (nonce, _) = f.broker.challenge().unwrap();
    let mut bad = vec![4u8];
    bad.extend_from_slice(&[0xff; 64]);
    let mut ev = f.evidence(nonce);
    ev.tee_public_key = TeePublicKey::new(Kem::P256HkdfSha256, bad).unwrap();
    let r = f.release_with(&nonce, ev);
    assert_a_refused(&f, &r, "hpke: TEE public key rejected: Input value is invalid");
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
        let err = f.broker.release(Fixture::request(&nonce, f.evidence(nonce), &keys)).unwrap_err();
        assert_eq!(err.to_string(), want);
    }
    let many: Vec<String> = (0..65).map(|i| format!("k{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let err = f.broker.release(Fixture::request(&nonce, f.evidence(nonce), &many)).unwrap_err();
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

/// A version 2 policy for `provider-c/data` whose `broker_keys` lists `kid`.
fn add_key_pinning_broker(f: &Fixture, kid: &str) {
    let policy = policy().replace("version = 1", "version = 2")
        + &format!(
            "broker_keys = [\"{kid}\"]\ngpu_required = false\ngpu_architectures = \"skip\"\ngpu_rim_ids = \"skip\"\n"
        );
    f.store
        .add("provider-c/data", "provider-c", &policy, Some(b"data key C".to_vec()), f.rng.as_ref(), 1)
        .unwrap();
}

/// Inserts a measured `broker_key` launch event (before the separator).
fn pin_broker_key(a: &mut Appraisal, kid: &str) {
    events(a).insert(0, RuntimeEvent::BrokerKey(kid.into()));
}

#[test]
fn a_policy_naming_its_broker_key_releases_only_to_a_vm_pinning_it() {
    let f = Fixture::new();
    let own = f.signer_jwk["kid"].as_str().unwrap().to_owned();
    add_key_pinning_broker(&f, &own);
    f.tweak(|a| pin_broker_key(a, &own));
    let r = f.release(&["provider-c/data"]);
    assert_eq!(r.keys.len(), 1, "{:?}", r.refusals);
}

#[test]
fn attack_vm_pinning_a_foreign_broker_gets_no_key() {
    let f = Fixture::new();
    let own = f.signer_jwk["kid"].as_str().unwrap().to_owned();
    add_key_pinning_broker(&f, &own);
    // The operator's spec pinned its own broker (which could hand the job operator-chosen keys or issue
    // receipts for releases that never happened); the real broker sees that in the measured launch.
    let foreign = "f".repeat(43);
    let r = refusal_for(&f, "provider-c/data", |a| pin_broker_key(a, &foreign));
    assert_refused(
        &f,
        &r,
        "provider-c/data",
        &format!("policy.broker_keys: the VM pins broker key {foreign}, not one this policy allows"),
    );
    // Nothing measured at all is refused too.
    let f = Fixture::new();
    add_key_pinning_broker(&f, &own);
    let r = f.release(&["provider-c/data"]);
    assert_refused(&f, &r, "provider-c/data", "policy.broker_keys: no broker key was measured at launch");
}
