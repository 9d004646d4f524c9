//! The attestation result, shaped as an IETF RATS EAR (draft-fv-rats-ear): `ear.status`, a trustworthiness
//! vector (draft-ietf-rats-ar4si tiers), per-layer claims and a one-line reason for every failed check.
//!
//! Deterministic: `iat` is the verification time the caller injected, maps are ordered, nothing is random.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// The EAR profile identifier.
pub const EAR_PROFILE: &str = "tag:github.com,2023:veraison/ear";

/// The overall status: the tier of the worst trustworthiness claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
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
    /// The status implied by the worst claim.
    #[must_use]
    pub fn status(&self) -> Status {
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
        .into_iter()
        .map(Status::of_claim)
        .max()
        .unwrap_or(Status::None)
    }
}

/// The verifier's identity.
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerResult {
    /// "platform", "firmware", "kernel", "workload", "event log", …
    pub layer: String,
    /// passed | failed | skipped.
    pub outcome: Outcome,
    /// What the reference values were: "digests" or "skip".
    pub reference: String,
    /// What was verified (register values, TCB, identities, …).
    pub claims: serde_json::Value,
    /// One line per failed check.
    pub failures: Vec<String>,
}

/// A layer's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every check passed.
    Passed,
    /// A check failed.
    Failed,
    /// Explicitly skipped by the reference values.
    Skipped,
}

/// One appraisal submodule (sealroom uses one per evidence).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Appraisal {
    /// Overall status.
    #[serde(rename = "ear.status")]
    pub status: Status,
    /// Trustworthiness vector.
    #[serde(rename = "ear.trustworthiness-vector")]
    pub trust_vector: TrustworthinessVector,
    /// Which policy judged it.
    #[serde(rename = "ear.appraisal-policy-id")]
    pub policy_id: String,
    /// The evidence kind ("sev-snp report", "gce vtpm attestation", …).
    #[serde(rename = "sealroom.evidence")]
    pub evidence: String,
    /// Per-layer results, in verification order.
    #[serde(rename = "sealroom.layers")]
    pub layers: Vec<LayerResult>,
    /// One line per reason the status is not affirming although nothing failed ("tdx: no collateral: TCB
    /// status not evaluated …", "workload: not checked: …"). A warning status always has at least one.
    #[serde(rename = "sealroom.warnings")]
    pub warnings: Vec<String>,
}

/// An EAR.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ear {
    /// The profile.
    pub eat_profile: String,
    /// Issued at: the injected verification time (Unix seconds).
    pub iat: i64,
    /// The verifier.
    #[serde(rename = "ear.verifier-id")]
    pub verifier_id: VerifierId,
    /// Appraisals by name.
    pub submods: BTreeMap<String, Appraisal>,
}

impl Ear {
    /// An EAR with one submodule.
    #[must_use]
    pub fn single(iat: i64, name: &str, appraisal: Appraisal) -> Self {
        let mut submods = BTreeMap::new();
        submods.insert(name.to_owned(), appraisal);
        Self { eat_profile: EAR_PROFILE.into(), iat, verifier_id: VerifierId::default(), submods }
    }

    /// The worst status over all submodules.
    #[must_use]
    pub fn status(&self) -> Status {
        self.submods.values().map(|a| a.status).max().unwrap_or(Status::None)
    }

    /// Every failure line, prefixed by nothing (each already names its layer).
    #[must_use]
    pub fn failures(&self) -> Vec<String> {
        self.submods.values().flat_map(|a| a.layers.iter().flat_map(|l| l.failures.clone())).collect()
    }

    /// Every warning line, in submodule order.
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        self.submods.values().flat_map(|a| a.warnings.clone()).collect()
    }

    /// Pretty JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A human-readable table.
    #[must_use]
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "verdict: {}   (at {})", self.status(), crate::x509::format_time(self.iat));
        for (name, a) in &self.submods {
            let _ = writeln!(out, "\n{name}: {}  [{}]", a.status, a.evidence);
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
        }
        out
    }
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
    fn json_has_the_ear_names_and_is_deterministic() {
        let a = Appraisal {
            status: Status::Affirming,
            trust_vector: TrustworthinessVector { hardware: 2, ..TrustworthinessVector::default() },
            policy_id: "p".into(),
            evidence: "e".into(),
            layers: vec![LayerResult {
                layer: "platform".into(),
                outcome: Outcome::Passed,
                reference: "policy".into(),
                claims: serde_json::json!({}),
                failures: vec![],
            }],
            warnings: vec![],
        };
        let ear = Ear::single(1_700_000_000, "sealroom", a);
        let json = ear.to_json();
        assert_eq!(json, ear.clone().to_json());
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["iat"], 1_700_000_000);
        assert_eq!(v["eat_profile"], EAR_PROFILE);
        assert_eq!(v["ear.verifier-id"]["developer"], "sealroom");
        assert_eq!(v["submods"]["sealroom"]["ear.status"], "affirming");
        assert_eq!(v["submods"]["sealroom"]["ear.trustworthiness-vector"]["instance-identity"], 0);
        assert!(ear.to_table().starts_with("verdict: affirming   (at 2023-11-14T22:13:20Z)"));
    }
}
