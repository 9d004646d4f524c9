//! The claims of the broker's tokens: a release token and a receipt are each an EAR (draft-ietf-rats-ear-04)
//! whose one submodule is the verifier's appraisal ([`Submodule::of`], the one place an appraisal becomes EAR
//! claims) extended with what the broker decided. Typed end to end; serialised once, when signed.

use std::collections::BTreeMap;

use sealroom_verifier::claims::Appraisal;
use sealroom_verifier::ear::{Ear, Status, Submodule, VerifierId};
use serde::Serialize;

use super::store::AnchoredHead;

/// The broker's `ear_verifier_id`.
#[must_use]
pub fn broker_verifier_id() -> VerifierId {
    VerifierId {
        developer: "sealroom".into(),
        build: concat!("sealroom-broker ", env!("CARGO_PKG_VERSION")).into(),
    }
}

/// The `sealroom.audit` claim: the audit chain's head after this decision, and whose chain it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditClaim {
    /// Records in the chain.
    pub records: u64,
    /// The last record's hash, hex.
    pub head: String,
    /// The replica whose chain it is (PostgreSQL stores).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

impl AuditClaim {
    /// The claim for a chain head.
    #[must_use]
    pub fn of(head: &AnchoredHead) -> Self {
        Self { records: head.head.records, head: hex::encode(head.head.hash), replica: head.replica.clone() }
    }
}

/// A token's claims set: an EAR plus the audit head.
#[derive(Debug, Serialize)]
pub struct TokenClaims<S> {
    /// The EAR.
    #[serde(flatten)]
    pub ear: Ear<S>,
    /// The audit chain head.
    #[serde(rename = "sealroom.audit")]
    pub audit: AuditClaim,
}

impl<S: Serialize> TokenClaims<S> {
    /// One submodule, the broker as verifier, `eat_nonce` = the request's nonce when it has a valid size.
    #[must_use]
    pub fn new(now_s: u64, status: Status, nonce: &[u8], sub: S, head: &AnchoredHead) -> Self {
        // RFC 9711: a nonce is 8..=64 bytes; a malformed request nonce is left out rather than mis-encoded.
        let nonce = (8..=64).contains(&nonce.len()).then_some(nonce);
        let iat = i64::try_from(now_s).unwrap_or(i64::MAX);
        Self { ear: Ear::one(iat, broker_verifier_id(), status, nonce, sub), audit: AuditClaim::of(head) }
    }
}

/// A key refused, and why.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedKey<'a> {
    /// The key id.
    pub key_id: &'a str,
    /// One line.
    pub reason: &'a str,
}

/// The release token's submodule.
#[derive(Debug, Serialize)]
pub struct ReleaseSubmodule<'a> {
    /// The appraisal (or a refusal before one), without per-layer detail.
    #[serde(flatten)]
    pub appraisal: Submodule<'a>,
    /// The TEE key the keys were sealed to, hex.
    #[serde(rename = "sealroom.tee_public_key", skip_serializing_if = "Option::is_none")]
    pub tee_public_key: Option<String>,
    /// SHA-256 of the request's evidence, hex.
    #[serde(rename = "sealroom.evidence_digest")]
    pub evidence_digest: String,
    /// Released key ids.
    #[serde(rename = "sealroom.keys.released")]
    pub released: Vec<&'a str>,
    /// Refused key ids with reasons.
    #[serde(rename = "sealroom.keys.refused")]
    pub refused: Vec<RefusedKey<'a>>,
}

/// The submodule of an accepted appraisal, as tokens carry it.
#[must_use]
pub fn appraised(a: &Appraisal) -> Submodule<'_> {
    Submodule::of(a).summary()
}

/// The release this receipt names.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseRef {
    /// Its audit record.
    pub audit_seq: u64,
    /// When (Unix ms).
    pub time_ms: u64,
    /// The key version released.
    pub key_version: u32,
}

/// The golden documents the key's policy accepts, or `"skip"`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum GoldenDocuments<'a> {
    /// `"skip"`.
    Skip(&'static str),
    /// `sha256:<hex>` of each accepted document.
    Documents(&'a [String]),
}

/// The receipt's submodule.
#[derive(Debug, Serialize)]
pub struct ReceiptSubmodule<'a> {
    /// The appraisal, named by the receipt policy id, without per-layer detail.
    #[serde(flatten)]
    pub appraisal: Submodule<'a>,
    /// The TEE key, hex.
    #[serde(rename = "sealroom.tee_public_key")]
    pub tee_public_key: String,
    /// SHA-256 of the evidence, hex.
    #[serde(rename = "sealroom.evidence_digest")]
    pub evidence_digest: String,
    /// The accepted golden documents.
    #[serde(rename = "sealroom.golden_documents")]
    pub golden_documents: GoldenDocuments<'a>,
    /// The workload, from the launch events.
    #[serde(rename = "sealroom.workload")]
    pub workload: super::receipt::WorkloadClaims,
    /// Every key release the runtime log measured (by any broker of the job), in log order.
    #[serde(rename = "sealroom.releases")]
    pub releases: Vec<super::receipt::ReleaseClaim>,
    /// Every sealed input the launch measured, in log order.
    #[serde(rename = "sealroom.sealed_inputs")]
    pub sealed_inputs: Vec<super::receipt::SealedInputClaim>,
    /// The output digest.
    #[serde(rename = "sealroom.output_digest")]
    pub output_digest: &'a str,
    /// The key.
    #[serde(rename = "sealroom.key_id")]
    pub key_id: &'a str,
    /// This broker's release of that key to this TEE key.
    #[serde(rename = "sealroom.release")]
    pub release: ReleaseRef,
    /// `sha256:<hex>` of the key's policy.
    #[serde(rename = "sealroom.policy_digest")]
    pub policy_digest: String,
    /// Each rule's outcome.
    #[serde(rename = "sealroom.policy_rules")]
    pub policy_rules: BTreeMap<&'static str, String>,
}
