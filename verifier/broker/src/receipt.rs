//! Output receipts: after a workload ended, the agent measures the digest of its output directory (the runtime
//! `output` event) and presents fresh evidence; the broker appraises it exactly as for a key release (nonce,
//! verifier, binding, then the key's policy) and signs an EAR JWT that names what ran and what it produced:
//! the verified registers and the golden documents the policy accepts, the workload image (reference, manifest
//! and config digests), its args and env, every key release the runtime log measured (by broker key and key id,
//! whichever provider released it) and every sealed input (name, digest, reply key), and the output digest. Anyone holding the broker's published key can
//! then check a result offline (`sealroom verify-receipt`, [`check`]).
//!
//! The receipt is only issued when the evidence's runtime log has the shape of a finished job: the launch
//! events, the separator, a `key_release` of the key named in the request naming this broker's key (this boot
//! received that key, from this broker), and, last, exactly one `output` event whose digest is the one the
//! agent presents. A `key_release` event only says
//! the agent *received* a key from someone: the receipt is issued only when this broker's own records say it
//! released that key to this TEE key (issue 14, finding 1: a fake broker's key must not earn a real receipt),
//! and the receipt names that release (`sealroom.release`). Every issued or refused receipt is appended to the
//! audit log before the reply, and the response is signed like a release's.

use std::collections::BTreeMap;
use std::sync::Arc;

use sealroom_measurements::binding::Nonce;
use sealroom_measurements::broker_response::{self, ReceiptStatement};
use sealroom_measurements::cel::RuntimeEvent;
use sealroom_measurements::evidence::Evidence;
use sealroom_proto::keybroker::v1 as pb;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::appraisal::Appraisal;
use super::audit::{AuditEntry, AuditRecord, Decision};
use super::check_key_id;
use super::ear_claims::{GoldenDocuments, ReceiptSubmodule, ReleaseRef, TokenClaims, appraised};
use super::keystore::ReleaseRecord;
use super::nonce::NonceRefusal;
use super::policy::{Outcome, Rule};
use super::service::{Broker, ReceivedTeeKey, Refused, tee_key_digest};
use super::store::{AnchoredHead, KeyRead, Recorded};
use super::token::TokenKind;
use crate::error::{Error, Result};

const LAYER: &str = "receipt";
/// The appraisal policy id the receipt's EAR names.
pub const RECEIPT_POLICY_ID: &str = "sealroom.keybroker.v1/receipt";
/// The name of the output event the agent measures (agent `workload::OUTPUT_NAME`).
pub const OUTPUT_EVENT_NAME: &str = "output";

/// A receipt decision.
#[derive(Debug)]
pub struct Receipted {
    /// The signed receipt, or why none was issued.
    pub receipt: std::result::Result<String, Refused>,
    /// The audit record written for it.
    pub audit: Vec<AuditRecord>,
    /// The broker's public key (uncompressed SEC1).
    pub broker_public_key: Vec<u8>,
    /// Its signature over the receipt statement.
    pub signature: Vec<u8>,
}

/// The workload, as measured before it ran (the launch events).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadClaims {
    /// The image reference the operator gave.
    pub image_reference: String,
    /// The manifest digest (what policies call the image digest).
    pub image_digest: String,
    /// The image config digest.
    pub config_digest: String,
    /// The exact argument list.
    pub args: Vec<String>,
    /// The environment.
    pub env: Vec<String>,
}

impl WorkloadClaims {
    /// The claims from the launch events of a runtime log (events before the separator).
    #[must_use]
    pub fn from_events(events: &[RuntimeEvent]) -> Self {
        let mut w = Self::default();
        for e in events.iter().take_while(|e| !matches!(e, RuntimeEvent::LaunchSeparator)) {
            match e {
                RuntimeEvent::ImageReference(s) => w.image_reference.clone_from(s),
                RuntimeEvent::ManifestDigest(s) => w.image_digest.clone_from(s),
                RuntimeEvent::ConfigDigest(s) => w.config_digest.clone_from(s),
                RuntimeEvent::Arg(s) => w.args.push(s.clone()),
                RuntimeEvent::Env(s) => w.env.push(s.clone()),
                _ => {}
            }
        }
        w
    }
}

/// A key release the runtime log measured: which broker (its key's RFC 7638 thumbprint) released which key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseClaim {
    /// The releasing broker's key id.
    pub broker_key: String,
    /// The key id.
    pub key_id: String,
}

/// A sealed input the launch measured: its name, plaintext digest and the sender's reply key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedInputClaim {
    /// The input's name (`/input/NAME`).
    pub name: String,
    /// `sha256:` of the plaintext.
    pub digest: String,
    /// The sender's reply key (`x25519:<hex>`).
    pub reply_key: String,
}

/// Every release and sealed input of a replayed runtime log, in log order: what a receipt names, taken only
/// from measured events.
#[must_use]
pub fn measured_releases_and_inputs(events: &[RuntimeEvent]) -> (Vec<ReleaseClaim>, Vec<SealedInputClaim>) {
    let (mut releases, mut inputs) = (Vec::new(), Vec::new());
    for e in events {
        match e {
            RuntimeEvent::KeyRelease { key_id, broker_key } => {
                releases.push(ReleaseClaim { broker_key: broker_key.clone(), key_id: key_id.clone() });
            }
            RuntimeEvent::SealedInput { name, digest, reply_key } => inputs.push(SealedInputClaim {
                name: name.clone(),
                digest: digest.clone(),
                reply_key: reply_key.clone(),
            }),
            _ => {}
        }
    }
    (releases, inputs)
}

fn check_output_digest(d: &str) -> Result<()> {
    let hex_part = d
        .strip_prefix("sha256:")
        .ok_or_else(|| Error::check(LAYER, format!("output digest {d:?} is not sha256:<hex>")))?;
    if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(Error::check(LAYER, format!("output digest {d:?} is not sha256:<64 lower-case hex>")));
    }
    Ok(())
}

/// The runtime log of a finished job: the last event is the only `output` event, named
/// [`OUTPUT_EVENT_NAME`], with the presented digest; `key_id` was released after the separator, by this
/// broker (`own_kid`: the measured `key_release` names the broker key whose signed response the agent
/// accepted).
fn check_finished_job(
    events: &[RuntimeEvent],
    key_id: &str,
    own_kid: &str,
    output_digest: &str,
) -> std::result::Result<(), String> {
    let outputs = events.iter().filter(|e| matches!(e, RuntimeEvent::Output { .. })).count();
    match events.last() {
        Some(RuntimeEvent::Output { name, digest }) if outputs == 1 => {
            if name != OUTPUT_EVENT_NAME {
                return Err(format!("the output event is named {name:?}, expected {OUTPUT_EVENT_NAME:?}"));
            }
            if digest != output_digest {
                return Err(format!(
                    "the measured output digest is {digest}, the request presents {output_digest}"
                ));
            }
        }
        Some(RuntimeEvent::Output { .. }) => {
            return Err(format!("{outputs} output events in the runtime log, expected exactly one"));
        }
        Some(e) => return Err(format!("the runtime log's last event is {}, not an output event", e.name())),
        None => return Err("the evidence has no runtime log".into()),
    }
    let sep = events
        .iter()
        .position(|e| matches!(e, RuntimeEvent::LaunchSeparator))
        .ok_or("no launch separator in the runtime log")?;
    let release = events.iter().skip(sep).find_map(|e| match e {
        RuntimeEvent::KeyRelease { key_id: k, broker_key } if k == key_id => Some(broker_key),
        _ => None,
    });
    match release {
        None => Err(format!("key {key_id} was not released to this workload (no key_release event)")),
        Some(b) if b != own_kid => Err(format!(
            "the measured release of key {key_id} names broker key {b}, not this broker's ({own_kid})"
        )),
        Some(_) => Ok(()),
    }
}

fn outcome_text(o: &Outcome) -> String {
    match o {
        Outcome::Pass(why) => format!("pass: {why}"),
        Outcome::Skipped => "skip".into(),
        Outcome::Fail(why) => format!("fail: {why}"),
    }
}

impl Broker {
    /// Handles one receipt request. A refusal is part of the result; `Err` means a malformed request or a
    /// broker failure (the audit log could not be written): no receipt then.
    ///
    /// # Errors
    /// A malformed key id or output digest, or an internal failure.
    pub fn receipt(&self, req: &pb::ReceiptRequest) -> Result<Receipted> {
        let assessed = self.assess_receipt(req)?;
        self.finish_receipt(req, assessed)
    }

    /// The first part of a receipt, all of it CPU: the request's checks, the evidence's digest and decoding,
    /// the nonce check and the appraisal. The gRPC service runs it on the broker's appraisal pool.
    ///
    /// # Errors
    /// A malformed key id or output digest.
    pub(crate) fn assess_receipt(&self, req: &pb::ReceiptRequest) -> Result<AssessedReceipt> {
        check_key_id(&req.key_id)?;
        check_output_digest(&req.output_digest)?;
        let now = self.clock.now_ms();
        let evidence_digest: [u8; 32] = Sha256::digest(&req.evidence).into();
        // A decoding failure leaves the evidence out; appraisal then refuses it as missing.
        let decoded: Option<sealroom_proto::attestation::v1::Evidence> =
            prost::Message::decode(req.evidence.as_slice()).ok();
        let tee_key = ReceivedTeeKey::of(decoded.as_ref());
        let redeemed = self.check_nonce(&req.nonce, now);
        let accepted = redeemed
            .clone()
            .and_then(|nonce| self.appraise(nonce, decoded, req.tpm_activation.as_ref(), now));
        Ok(AssessedReceipt { now, evidence_digest, tee_key, redeemed, accepted })
    }

    /// The rest of a receipt: the finished job's events, this broker's release record and the key's policy
    /// (key-store reads), the audit record (durable before the reply) and the signatures. Blocks this thread
    /// for the reads and the record; the gRPC service uses [`Broker::finish_receipt_awaiting`].
    ///
    /// # Errors
    /// An internal failure (the audit log could not be written, signing failed).
    pub(crate) fn finish_receipt(
        &self,
        req: &pb::ReceiptRequest,
        assessed: AssessedReceipt,
    ) -> Result<Receipted> {
        let AssessedReceipt { now, evidence_digest, tee_key, redeemed, accepted } = assessed;
        let mut decided = self.decide_receipt(req, accepted, None);
        // Durable before the reply, with the nonce's single use in the same commit.
        let first = self.ledger.record(
            redeemed.as_ref().ok(),
            &[receipt_entry(req, evidence_digest, &decided)],
            now,
        )?;
        let (records, head) = match committed_or_replayed(first, &mut decided) {
            Some(committed) => committed,
            None => {
                let again =
                    self.ledger.record(None, &[receipt_entry(req, evidence_digest, &decided)], now)?;
                committed_or_replayed(again, &mut decided).ok_or_else(record_without_nonce_replayed)?
            }
        };
        self.sign_receipt(req, Finished { now, evidence_digest, tee_key, decided, records, head })
    }

    /// [`Broker::finish_receipt`] on a Tokio runtime. Where the key store's reads are round trips to a
    /// database ([`crate::store::KeyRecords::find_release_awaitable`] and `get_for_release_awaitable`) they are
    /// awaited, as are the audit commit and its sync, holding no thread; so is the audit record of a receipt
    /// refused before any read. Accepted evidence on a key store that reads the local disk is finished on the
    /// blocking pool.
    ///
    /// # Errors
    /// As [`Broker::finish_receipt`].
    pub(crate) async fn finish_receipt_awaiting(
        self: Arc<Self>,
        req: Arc<pb::ReceiptRequest>,
        assessed: AssessedReceipt,
    ) -> Result<Receipted> {
        let AssessedReceipt { now, evidence_digest, tee_key, redeemed, accepted } = assessed;
        let reads = match &accepted {
            Ok((_, evidence, _)) => {
                let tee_key = tee_key_digest(evidence.tee_public_key.as_bytes());
                match (
                    self.store.find_release_awaitable(&tee_key, &req.key_id),
                    self.store.get_for_release_awaitable(&req.key_id),
                ) {
                    (Some(release), Some(key)) => {
                        Some(ReceiptReads { release: release.await, key: key.await })
                    }
                    _ => None,
                }
            }
            Err(_) => None,
        };
        if reads.is_none() && accepted.is_ok() {
            let assessed = AssessedReceipt { now, evidence_digest, tee_key, redeemed, accepted };
            return tokio::task::spawn_blocking(move || self.finish_receipt(&req, assessed))
                .await
                .map_err(|e| Error::check("broker", format!("receipt task failed: {e}")))?;
        }
        let mut decided = self.decide_receipt(&req, accepted, reads);
        let redeemed = redeemed.ok();
        let first = self
            .record_awaiting(redeemed.as_ref(), receipt_entry(&req, evidence_digest, &decided), now)
            .await?;
        let (records, head) = match committed_or_replayed(first, &mut decided) {
            Some(committed) => committed,
            None => {
                let again =
                    self.record_awaiting(None, receipt_entry(&req, evidence_digest, &decided), now).await?;
                committed_or_replayed(again, &mut decided).ok_or_else(record_without_nonce_replayed)?
            }
        };
        self.sign_receipt(&req, Finished { now, evidence_digest, tee_key, decided, records, head })
    }

    /// One audit record through the ledger, awaited until durable without holding a thread.
    async fn record_awaiting(
        &self,
        redeemed: Option<&Nonce>,
        entry: AuditEntry,
        now: u64,
    ) -> Result<Recorded> {
        let (recorded, durability) = self.ledger.submit(redeemed, &[entry], now)?.outcome().await?;
        durability.wait().await?;
        Ok(recorded)
    }

    /// What a receipt states, decided before its audit record is written: the finished job's events, this
    /// broker's own release record and the key's policy (re-evaluated) on accepted evidence. `reads` are the
    /// key store's answers when they were awaited already; `None` reads them on this thread.
    fn decide_receipt(
        &self,
        req: &pb::ReceiptRequest,
        accepted: std::result::Result<(Nonce, Evidence, Appraisal), Refused>,
        reads: Option<ReceiptReads>,
    ) -> std::result::Result<DecidedReceipt, Refused> {
        let (_, evidence, appraisal) = accepted?;
        check_finished_job(appraisal.runtime_events(), &req.key_id, self.signer.kid(), &req.output_digest)
            .map_err(|why| Refused::new(LAYER, format!("{LAYER}: {why}")))?;
        let (release, key) = match reads {
            Some(ReceiptReads { release, key }) => (release, key),
            None => (
                self.store.find_release(&tee_key_digest(evidence.tee_public_key.as_bytes()), &req.key_id),
                self.store.get_for_release(&req.key_id),
            ),
        };
        let release = release
            .map_err(|e| Refused::new("key store", e.to_string().replace('\n', " ")))?
            .ok_or_else(|| {
                Refused::new(
                    LAYER,
                    format!("{LAYER}: this broker never released key {} to this TEE key", req.key_id),
                )
            })?;
        // A key-store failure refuses the receipt with its reason (the release path fails the call instead).
        let (key, policy, verdict) = self
            .key_verdict(&req.key_id, key, &appraisal)
            .map_err(|e| Refused::new("key store", e.to_string().replace('\n', " ")))??;
        Ok(DecidedReceipt {
            tee_public_key: hex::encode(evidence.tee_public_key.as_bytes()),
            golden_documents: match &policy.golden {
                Rule::Skip => None,
                Rule::Require(g) => Some(g.documents.clone()),
            },
            release: ReleaseRef {
                audit_seq: release.audit_seq,
                time_ms: release.time_ms,
                key_version: release.key_version,
            },
            policy_digest: format!("sha256:{}", hex::encode(Sha256::digest(key.info.policy.as_bytes()))),
            policy_rules: verdict.rules.iter().map(|(rule, o)| (*rule, outcome_text(o))).collect(),
            appraisal,
        })
    }

    /// The signed receipt (or refusal) and the signed response of a recorded receipt decision.
    fn sign_receipt(&self, req: &pb::ReceiptRequest, finished: Finished) -> Result<Receipted> {
        let Finished { now, evidence_digest, tee_key, decided, records, head } = finished;
        let receipt = match decided {
            Ok(d) => {
                let (releases, sealed_inputs) = measured_releases_and_inputs(d.appraisal.runtime_events());
                let sub = ReceiptSubmodule {
                    appraisal: appraised(&d.appraisal).with_policy_id(RECEIPT_POLICY_ID),
                    tee_public_key: d.tee_public_key,
                    evidence_digest: hex::encode(evidence_digest),
                    golden_documents: d
                        .golden_documents
                        .as_deref()
                        .map_or(GoldenDocuments::Skip("skip"), GoldenDocuments::Documents),
                    workload: WorkloadClaims::from_events(d.appraisal.runtime_events()),
                    releases,
                    sealed_inputs,
                    output_digest: &req.output_digest,
                    key_id: &req.key_id,
                    release: d.release,
                    policy_digest: d.policy_digest,
                    policy_rules: d.policy_rules,
                };
                let claims = TokenClaims::new(now / 1000, d.appraisal.status, &req.nonce, sub, &head);
                Ok(self.signer.sign_token(&claims, TokenKind::Receipt, now / 1000)?)
            }
            Err(r) => Err(r),
        };
        let (token, refusal) = match &receipt {
            Ok(t) => (t.as_str(), ""),
            Err(r) => ("", r.reason.as_str()),
        };
        let statement = broker_response::receipt_signing_input(&ReceiptStatement {
            nonce: &Nonce::from_slice(&req.nonce).unwrap_or(Nonce([0; 32])),
            tee_key: tee_key.field(),
            key_id: &req.key_id,
            output_digest: &req.output_digest,
            receipt: token,
            refusal,
        });
        let signature = self.signer.sign_statement(&statement)?;
        Ok(Receipted { receipt, audit: records, broker_public_key: self.signer.public_key(), signature })
    }
}

/// What a receipt states ([`Broker::decide_receipt`]): the appraisal, the key's policy (re-evaluated) and this
/// broker's own release record.
struct DecidedReceipt {
    appraisal: Appraisal,
    tee_public_key: String,
    golden_documents: Option<Vec<String>>,
    release: ReleaseRef,
    policy_digest: String,
    policy_rules: BTreeMap<&'static str, String>,
}

/// The key store's answers for a receipt: this broker's record of the release, and the key.
struct ReceiptReads {
    release: Result<Option<ReleaseRecord>>,
    key: KeyRead,
}

/// A receipt decision with its durable audit record, to be signed.
struct Finished {
    now: u64,
    evidence_digest: [u8; 32],
    tee_key: ReceivedTeeKey,
    decided: std::result::Result<DecidedReceipt, Refused>,
    records: Vec<AuditRecord>,
    head: AnchoredHead,
}

/// The audit entry of a receipt decision.
fn receipt_entry(
    req: &pb::ReceiptRequest,
    evidence_digest: [u8; 32],
    decided: &std::result::Result<DecidedReceipt, Refused>,
) -> AuditEntry {
    match decided {
        Ok(_) => AuditEntry {
            decision: Decision::Receipt,
            key_id: req.key_id.clone(),
            evidence_digest,
            rule: LAYER.into(),
            reason: format!("receipt issued for output {}", req.output_digest),
        },
        Err(r) => AuditEntry {
            decision: Decision::Refused,
            key_id: req.key_id.clone(),
            evidence_digest,
            rule: format!("receipt/{}", r.rule),
            reason: r.reason.clone(),
        },
    }
}

/// The records and chain head of a committed receipt record; `None` when its nonce had been used already
/// (another request redeemed it), after which `decided` is that refusal, to be recorded without the nonce.
fn committed_or_replayed(
    recorded: Recorded,
    decided: &mut std::result::Result<DecidedReceipt, Refused>,
) -> Option<(Vec<AuditRecord>, AnchoredHead)> {
    match recorded {
        Recorded::Committed(records, head) => Some((records, head)),
        Recorded::Replay => {
            *decided = Err(Refused::new("nonce", NonceRefusal::AlreadyUsed.to_string()));
            None
        }
    }
}

/// A record without a nonce cannot be a replay: the ledger is broken.
fn record_without_nonce_replayed() -> Error {
    Error::check("broker", "audit: a record without nonce was refused as a replay")
}

/// A receipt request's nonce checked and its evidence appraised ([`Broker::assess_receipt`]).
#[derive(Debug)]
pub(crate) struct AssessedReceipt {
    now: u64,
    evidence_digest: [u8; 32],
    tee_key: ReceivedTeeKey,
    redeemed: std::result::Result<Nonce, Refused>,
    accepted: std::result::Result<(Nonce, Evidence, Appraisal), Refused>,
}

/// The gRPC handler (`KeyBroker.Receipt`).
pub(super) async fn serve(
    broker: Arc<Broker>,
    req: pb::ReceiptRequest,
) -> std::result::Result<tonic::Response<pb::ReceiptResponse>, tonic::Status> {
    check_key_id(&req.key_id).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    check_output_digest(&req.output_digest).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    // The appraisal on the appraisal pool, as a release's; the key-store reads, the audit commit and its sync,
    // which wait on a database or a disk, awaited (or on the blocking pool for a key store on the local disk).
    let req = Arc::new(req);
    let assessing = (Arc::clone(&broker), Arc::clone(&req));
    let assessed = broker
        .appraisal_pool()
        .run(move || assessing.0.assess_receipt(&assessing.1))
        .await
        .and_then(|a| a)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let r = broker
        .finish_receipt_awaiting(req, assessed)
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let (receipt, refusal) = match r.receipt {
        Ok(receipt) => (receipt, String::new()),
        Err(refused) => (String::new(), refused.reason),
    };
    Ok(tonic::Response::new(pb::ReceiptResponse {
        receipt,
        refusal,
        broker_public_key: r.broker_public_key,
        signature: r.signature,
    }))
}

/// What an offline check of a receipt established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedReceipt {
    /// The receipt's claims (verified signature).
    pub claims: Value,
    /// The workload it names.
    pub workload: WorkloadClaims,
    /// The output digest it names (and the files have).
    pub output_digest: String,
    /// Registers compared against the golden document.
    pub golden_registers: usize,
    /// Every key release it names (broker key and key id), in log order.
    pub releases: Vec<ReleaseClaim>,
    /// Every sealed input it names, in log order.
    pub sealed_inputs: Vec<SealedInputClaim>,
    /// The TEE key it names (hex).
    pub tee_public_key: String,
    /// The registers it names.
    pub registers: BTreeMap<String, String>,
}

/// What [`check`] needs.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    /// The JWT.
    pub token: &'a str,
    /// The broker's published JWK.
    pub broker_jwk: &'a Value,
    /// The output digest recomputed from the files (`sha256:<hex>`).
    pub output_digest: &'a str,
    /// The golden registers (names as in the appraisal, e.g. "pcr11.sha256"; complete registers only).
    pub golden_registers: &'a BTreeMap<String, String>,
    /// SHA-256 of the evidence file, when one is checked against the receipt.
    pub evidence_digest: Option<[u8; 32]>,
}

/// Checks a receipt offline: the signature under the broker's key, an affirming receipt of this kind, the
/// output digest, and every golden register that the receipt's registers have (at least one must be compared,
/// and a register family the receipt has may not lack a golden register), and optionally the evidence digest.
///
/// # Errors
/// The first failed check, one line.
pub fn check(input: &CheckInput<'_>) -> Result<CheckedReceipt> {
    let claims = super::token::verify(input.token, input.broker_jwk)?;
    let sub = claims
        .pointer("/submods/sealroom")
        .ok_or_else(|| Error::check(LAYER, "token has no submods.sealroom claims"))?;
    let s = |name: &str| sub.get(name).and_then(Value::as_str).unwrap_or_default();
    let policy_ids = sub.get("ear_appraisal_policy_ids").cloned().unwrap_or_default();
    if policy_ids != serde_json::json!([RECEIPT_POLICY_ID]) {
        return Err(Error::check(LAYER, format!("token is not an output receipt (policy ids {policy_ids})")));
    }
    if s("ear_status") != "affirming" {
        return Err(Error::check(LAYER, format!("receipt status is {:?}, not affirming", s("ear_status"))));
    }
    if s("sealroom.output_digest") != input.output_digest {
        return Err(Error::check(
            LAYER,
            format!(
                "output digest mismatch: the receipt names {}, the files digest to {}",
                s("sealroom.output_digest"),
                input.output_digest
            ),
        ));
    }
    if let Some(d) = input.evidence_digest
        && s("sealroom.evidence_digest") != hex::encode(d)
    {
        return Err(Error::check(LAYER, "the evidence file is not the evidence the receipt was issued for"));
    }
    let registers: BTreeMap<String, String> = sub
        .get("sealroom.registers")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| Error::check(LAYER, format!("registers claim: {e}")))?
        .unwrap_or_default();
    let family = |r: &str| match r.split_once('.') {
        Some((base, alg)) if base.starts_with("pcr") => format!("pcr.{alg}"),
        _ => r.trim_end_matches(|c: char| c.is_ascii_digit()).to_owned(),
    };
    let families: std::collections::BTreeSet<String> = registers.keys().map(|r| family(r)).collect();
    let mut compared = 0usize;
    for (reg, want) in input.golden_registers {
        match registers.get(reg) {
            Some(got) if got.eq_ignore_ascii_case(want) => compared += 1,
            Some(got) => {
                return Err(Error::check(
                    LAYER,
                    format!("{reg} not golden: expected {want}, receipt has {got}"),
                ));
            }
            None if families.contains(&family(reg)) => {
                return Err(Error::check(
                    LAYER,
                    format!("{reg} of the golden document is not in the receipt"),
                ));
            }
            None => {}
        }
    }
    if compared == 0 {
        return Err(Error::check(LAYER, "no register of the golden document is in the receipt"));
    }
    let workload: WorkloadClaims = sub
        .get("sealroom.workload")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| Error::check(LAYER, format!("workload claim: {e}")))?
        .ok_or_else(|| Error::check(LAYER, "receipt has no workload claim"))?;
    let list = |name: &str| {
        sub.get(name).cloned().ok_or_else(|| Error::check(LAYER, format!("receipt has no {name} claim")))
    };
    let releases: Vec<ReleaseClaim> = serde_json::from_value(list("sealroom.releases")?)
        .map_err(|e| Error::check(LAYER, format!("releases claim: {e}")))?;
    let sealed_inputs: Vec<SealedInputClaim> = serde_json::from_value(list("sealroom.sealed_inputs")?)
        .map_err(|e| Error::check(LAYER, format!("sealed inputs claim: {e}")))?;
    Ok(CheckedReceipt {
        claims: claims.clone(),
        workload,
        output_digest: input.output_digest.to_owned(),
        golden_registers: compared,
        releases,
        sealed_inputs,
        tee_public_key: s("sealroom.tee_public_key").to_owned(),
        registers,
    })
}
