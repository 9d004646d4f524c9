//! The attestation result as an IETF RATS EAR (draft-ietf-rats-ear-04, profile
//! `tag:ietf.org,2026:rats/ear#04`): `ear_status`, an AR4SI trustworthiness vector, the appraisal policy ids,
//! and sealroom's own claims (`sealroom.*`: the platform, its typed claims, registers, per-layer results with a
//! one-line reason for every failed check). The EAR is a serialisation of the typed
//! [`crate::claims::Appraisal`], built here and only here ([`Submodule::of`]); the key broker's release tokens
//! and receipts embed the same submodule.
//!
//! Deterministic: `iat` is the verification time the caller injected, maps are ordered, nothing is random.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::claims::{Appraisal, GpuAppraisal, HexBytes, PlatformClaims, Register, SignedBinding};

/// The EAR profile identifier (draft-ietf-rats-ear-04).
pub const EAR_PROFILE: &str = "tag:ietf.org,2026:rats/ear#04";
/// The overall status: the tier of the worst trustworthiness claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// No claim could be made.
    None,
    /// Every check passed.
    Affirming,
    /// Genuine, but something is not as good as it should be.
    Warning,
    /// A check failed: do not trust.
    Contraindicated,
}

impl Status {
    /// The status tier of one trustworthiness claim value (AR4SI: 0 none, 2..=31 affirming, 32..=95
    /// warning, 96..=127 contraindicated; negative values are reserved and treated as contraindicated).
    #[must_use]
    pub fn of_claim(value: i8) -> Self {
        match value {
            0..=1 => Self::None,
            2..=31 => Self::Affirming,
            32..=95 => Self::Warning,
            _ => Self::Contraindicated,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Affirming => "affirming",
            Self::Warning => "warning",
            Self::Contraindicated => "contraindicated",
        })
    }
}

/// AR4SI trustworthiness claim values used by sealroom.
pub mod tier {
    /// No claim.
    pub const NONE: i8 = 0;
    /// Affirming (instance-identity: recognised; hardware: genuine; configuration: approved; …).
    pub const AFFIRMING: i8 = 2;
    /// executables: only the boot chain was approved (the workload layer was skipped).
    pub const APPROVED_BOOT: i8 = 3;
    /// hardware: genuine, but its TCB is not known to be up to date (out of date, or no collateral).
    pub const OUTDATED_TCB: i8 = 32;
    /// executables: not recognised (some layer skipped and none approved beyond firmware).
    pub const UNRECOGNIZED: i8 = 33;
    /// Contraindicated (a check failed).
    pub const CONTRAINDICATED: i8 = 96;
    /// hardware: unrecognised/unverifiable.
    pub const UNRECOGNIZED_HARDWARE: i8 = 97;
}

/// The AR4SI trustworthiness vector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustworthinessVector {
    /// The attesting key/instance is recognised.
    #[serde(rename = "instance-identity")]
    pub instance_identity: i8,
    /// The configuration (guest policy, debug) is approved.
    pub configuration: i8,
    /// The firmware, kernel and workload measured are the approved ones.
    pub executables: i8,
    /// File system.
    #[serde(rename = "file-system")]
    pub file_system: i8,
    /// The hardware is genuine and its TCB acceptable.
    pub hardware: i8,
    /// Memory is encrypted (a TEE).
    #[serde(rename = "runtime-opaque")]
    pub runtime_opaque: i8,
    /// Storage.
    #[serde(rename = "storage-opaque")]
    pub storage_opaque: i8,
    /// Sourced data.
    #[serde(rename = "sourced-data")]
    pub sourced_data: i8,
}

impl TrustworthinessVector {
    /// Whether any claim was made (a value other than 0, "no claim").
    #[must_use]
    pub fn any_claim(&self) -> bool {
        self.claims().iter().any(|c| *c != tier::NONE)
    }

    fn claims(&self) -> [i8; 8] {
        [
            self.instance_identity,
            self.configuration,
            self.executables,
            self.file_system,
            self.hardware,
            self.runtime_opaque,
            self.storage_opaque,
            self.sourced_data,
        ]
    }

    /// The status implied by the worst claim.
    #[must_use]
    pub fn status(&self) -> Status {
        self.claims().into_iter().map(Status::of_claim).max().unwrap_or(Status::None)
    }
}

/// The verifier's identity (`ear_verifier_id`): both fields non-empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifierId {
    /// Who built it.
    pub developer: String,
    /// Which build.
    pub build: String,
}

impl Default for VerifierId {
    fn default() -> Self {
        Self {
            developer: "sealroom".into(),
            build: format!("sealroom-verifier {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// The outcome of one verification layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerResult {
    /// "platform", "firmware", "kernel", "workload", "event log", …
    pub layer: String,
    /// passed | failed | skipped.
    pub outcome: Outcome,
    /// What the reference values were: "digests" or "skip".
    pub reference: String,
    /// What was verified, for readers (the typed facts are in [`Appraisal`]).
    pub claims: serde_json::Value,
    /// One line per failed check.
    pub failures: Vec<String>,
}

/// A layer's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every check passed.
    Passed,
    /// A check failed.
    Failed,
    /// Explicitly skipped by the reference values.
    Skipped,
}

/// One EAR submodule: the appraisal of one piece of evidence, as the EAR carries it.
#[derive(Debug, Clone, Serialize)]
pub struct Submodule<'a> {
    /// Status.
    pub ear_status: Status,
    /// The trustworthiness vector; absent when no claim was made (the draft forbids an empty one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ear_trustworthiness_vector: Option<&'a TrustworthinessVector>,
    /// The policies that judged it.
    pub ear_appraisal_policy_ids: Vec<String>,
    /// The evidence kind.
    #[serde(rename = "sealroom.evidence", skip_serializing_if = "Option::is_none")]
    pub evidence: Option<&'a str>,
    /// The platform's policy name (`tpm`, `tdx`, `sev-snp`, `azure-snp-vtpm`, `azure-tdx-vtpm`).
    #[serde(rename = "sealroom.platform", skip_serializing_if = "Option::is_none")]
    pub platform: Option<&'static str>,
    /// Whether the TEE runs in debug mode.
    #[serde(rename = "sealroom.debug", skip_serializing_if = "Option::is_none")]
    pub debug: Option<bool>,
    /// The platform's typed claims.
    #[serde(rename = "sealroom.claims", skip_serializing_if = "Option::is_none")]
    pub claims: Option<&'a PlatformClaims>,
    /// Verified register values.
    #[serde(rename = "sealroom.registers", skip_serializing_if = "Option::is_none")]
    pub registers: Option<&'a BTreeMap<Register, HexBytes>>,
    /// The signed binding value.
    #[serde(rename = "sealroom.binding", skip_serializing_if = "Option::is_none")]
    pub binding: Option<&'a SignedBinding>,
    /// The runtime registers the runtime log replayed to.
    #[serde(rename = "sealroom.runtime_registers", skip_serializing_if = "Option::is_none")]
    pub runtime_registers: Option<&'a [Register]>,
    /// The verified NVIDIA GPUs (architecture, matched RIM ids, per-index outcomes, revocation, bound nonce).
    #[serde(rename = "sealroom.gpus", skip_serializing_if = "<[GpuAppraisal]>::is_empty")]
    pub gpus: &'a [GpuAppraisal],
    /// Per-layer results.
    #[serde(rename = "sealroom.layers", skip_serializing_if = "<[LayerResult]>::is_empty")]
    pub layers: &'a [LayerResult],
    /// One line per reason the status is not affirming although nothing failed.
    #[serde(rename = "sealroom.warnings", skip_serializing_if = "Option::is_none")]
    pub warnings: Option<&'a [String]>,
}

impl<'a> Submodule<'a> {
    /// The submodule of an appraisal: the one place an appraisal becomes EAR claims.
    #[must_use]
    pub fn of(a: &'a Appraisal) -> Self {
        Self {
            ear_status: a.status,
            ear_trustworthiness_vector: a.trust_vector.any_claim().then_some(&a.trust_vector),
            ear_appraisal_policy_ids: vec![a.policy_id.clone()],
            evidence: Some(&a.evidence),
            platform: a.platform.as_ref().map(PlatformClaims::name),
            debug: a.platform.as_ref().map(PlatformClaims::debug),
            claims: a.platform.as_ref(),
            registers: (!a.registers.is_empty()).then_some(&a.registers),
            binding: a.binding.as_ref(),
            runtime_registers: a.runtime.as_ref().map(|r| r.registers.as_slice()),
            gpus: &a.gpus,
            layers: &a.layers,
            warnings: Some(&a.warnings),
        }
    }

    /// The submodule of a request refused before any evidence was appraised (a bad nonce, undecodable or
    /// refused evidence): contraindicated, no claims.
    #[must_use]
    pub fn refused(policy_id: &str) -> Self {
        Self {
            ear_status: Status::Contraindicated,
            ear_trustworthiness_vector: None,
            ear_appraisal_policy_ids: vec![policy_id.to_owned()],
            evidence: None,
            platform: None,
            debug: None,
            claims: None,
            registers: None,
            binding: None,
            runtime_registers: None,
            gpus: &[],
            layers: &[],
            warnings: None,
        }
    }

    /// Only the appraisal's summary: status, vector, policy, platform, debug, registers and binding, without
    /// the per-layer detail (what tokens carry).
    #[must_use]
    pub fn summary(mut self) -> Self {
        self.layers = &[];
        self
    }

    /// Replaces the policy ids (the broker names its own policy).
    #[must_use]
    pub fn with_policy_id(mut self, id: &str) -> Self {
        self.ear_appraisal_policy_ids = vec![id.to_owned()];
        self
    }
}

/// An EAR (JSON claims set), generic over the submodule's form (the broker extends it with its own claims).
#[derive(Debug, Clone, Serialize)]
pub struct Ear<S> {
    /// The profile.
    pub eat_profile: &'static str,
    /// Issued at (Unix seconds): the injected verification time.
    pub iat: i64,
    /// The verifier.
    pub ear_verifier_id: VerifierId,
    /// The worst submodule status.
    pub ear_status: Status,
    /// The verifier's nonce, base64url (RFC 9711), when the appraisal answered one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eat_nonce: Option<String>,
    /// Appraisals by name.
    pub submods: BTreeMap<String, S>,
}

/// The JSON form of an `eat_nonce` (RFC 9711 §4.1): base64url without padding.
#[must_use]
pub fn eat_nonce(nonce: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(nonce)
}

impl<S> Ear<S> {
    /// An EAR with one submodule named "sealroom".
    #[must_use]
    pub fn one(iat: i64, verifier_id: VerifierId, status: Status, nonce: Option<&[u8]>, sub: S) -> Self {
        Self {
            eat_profile: EAR_PROFILE,
            iat,
            ear_verifier_id: verifier_id,
            ear_status: status,
            eat_nonce: nonce.map(eat_nonce),
            submods: BTreeMap::from([("sealroom".to_owned(), sub)]),
        }
    }
}

impl<'a> Ear<Submodule<'a>> {
    /// The EAR of one appraisal, as `sealroom verify` prints it.
    #[must_use]
    pub fn single(a: &'a Appraisal) -> Self {
        Self::one(a.at, VerifierId::default(), a.status, None, Submodule::of(a))
    }
}

/// A human-readable table of an appraisal.
#[must_use]
pub fn table(a: &Appraisal) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "verdict: {}   (at {})", a.status, crate::x509::format_time(a.at));
    let _ = writeln!(out, "\nsealroom: {}  [{}]", a.status, a.evidence);
    match &a.platform {
        Some(p) => {
            let _ = writeln!(out, "  platform: {}  debug: {}", p.name(), p.debug());
        }
        // Verified evidence of a kind no key policy names (an SGX enclave quote) has no platform claims.
        None if a.layers.iter().any(|l| l.layer == "platform" && l.outcome == Outcome::Passed) => {
            let _ = writeln!(out, "  platform: verified, not a key-policy platform ({})", a.evidence);
        }
        None => {
            let _ = writeln!(out, "  platform: not verified");
        }
    }
    let tv = &a.trust_vector;
    let _ = writeln!(
        out,
        "  trustworthiness: instance-identity {} configuration {} executables {} hardware {} runtime-opaque {}",
        tv.instance_identity, tv.configuration, tv.executables, tv.hardware, tv.runtime_opaque
    );
    let _ = writeln!(out, "  {:<12} {:<8} {:<9} detail", "layer", "outcome", "reference");
    for l in &a.layers {
        let outcome = match l.outcome {
            Outcome::Passed => "passed",
            Outcome::Failed => "FAILED",
            Outcome::Skipped => "skipped",
        };
        let detail = summarize(&l.claims);
        let _ = writeln!(out, "  {:<12} {:<8} {:<9} {detail}", l.layer, outcome, l.reference);
        for f in &l.failures {
            let _ = writeln!(out, "  {:<12} ! {f}", "");
        }
        // The verified workload (runtime log replayed to a quoted register): one line per claim, in full.
        if let Some(w) = l.claims.get("workload").and_then(serde_json::Value::as_object) {
            for (k, v) in w {
                let text = match v {
                    serde_json::Value::String(s) => s.trim_end().replace('\n', "; "),
                    other => other.to_string(),
                };
                let _ = writeln!(out, "  {:<12}   workload.{k}: {text}", "");
            }
        }
    }
    for w in &a.warnings {
        let _ = writeln!(out, "  warning: {w}");
    }
    out
}

fn summarize(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(map) => {
            let mut parts = Vec::new();
            for (k, val) in map {
                let s = match val {
                    serde_json::Value::String(s) if s.len() > 24 => format!("{}…", s.get(..16).unwrap_or(s)),
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Object(_) | serde_json::Value::Array(_) => continue,
                    other => other.to_string(),
                };
                parts.push(format!("{k}={s}"));
                if parts.len() >= 5 {
                    break;
                }
            }
            parts.join(" ")
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_the_worst_claim() {
        assert_eq!(TrustworthinessVector::default().status(), Status::None);
        let mut tv = TrustworthinessVector { hardware: tier::AFFIRMING, ..TrustworthinessVector::default() };
        assert_eq!(tv.status(), Status::Affirming);
        tv.executables = tier::UNRECOGNIZED;
        assert_eq!(tv.status(), Status::Warning);
        tv.configuration = tier::CONTRAINDICATED;
        assert_eq!(tv.status(), Status::Contraindicated);
        assert_eq!(Status::of_claim(-1), Status::Contraindicated);
    }

    #[test]
    fn json_has_the_ear_04_names_and_is_deterministic() {
        let a = Appraisal {
            evidence: "e".into(),
            policy_id: "p".into(),
            at: 1_700_000_000,
            status: Status::Affirming,
            trust_vector: TrustworthinessVector { hardware: 2, ..TrustworthinessVector::default() },
            platform: None,
            registers: BTreeMap::new(),
            binding: None,
            runtime: None,
            gpus: vec![],
            layers: vec![LayerResult {
                layer: "platform".into(),
                outcome: Outcome::Passed,
                reference: "policy".into(),
                claims: serde_json::json!({}),
                failures: vec![],
            }],
            warnings: vec![],
        };
        let json = a.to_json();
        assert_eq!(json, a.clone().to_json());
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["iat"], 1_700_000_000);
        assert_eq!(v["eat_profile"], "tag:ietf.org,2026:rats/ear#04");
        assert_eq!(v["ear_verifier_id"]["developer"], "sealroom");
        assert!(v["ear_verifier_id"]["build"].as_str().unwrap().starts_with("sealroom-verifier "));
        assert_eq!(v["ear_status"], "affirming");
        let sub = &v["submods"]["sealroom"];
        assert_eq!(sub["ear_status"], "affirming");
        assert_eq!(sub["ear_appraisal_policy_ids"], serde_json::json!(["p"]));
        assert_eq!(sub["ear_trustworthiness_vector"]["instance-identity"], 0);
        assert_eq!(sub["ear_trustworthiness_vector"]["hardware"], 2);
        assert!(a.to_table().starts_with("verdict: affirming   (at 2023-11-14T22:13:20Z)"));
        // No claim at all: the vector is left out rather than sent empty.
        let none = Appraisal { trust_vector: TrustworthinessVector::default(), ..a };
        let v: serde_json::Value = serde_json::from_str(&none.to_json()).unwrap();
        assert!(v["submods"]["sealroom"].get("ear_trustworthiness_vector").is_none());
    }
}
