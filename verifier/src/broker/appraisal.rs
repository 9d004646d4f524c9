//! What the broker needs from the verifier: an already-verified appraisal of one piece of evidence.
//!
//! Policy is evaluated against this abstract form, never against raw evidence, so the policy engine does not
//! depend on how each platform's evidence is checked. The [`Appraiser`] is the seam to the evidence verifier:
//! it must check signatures, certificate chains, collateral and event-log replay, and may only return an
//! [`Appraisal`] for evidence it accepted.

use std::collections::BTreeMap;

use sealroom_measurements::cel::RuntimeEvent;
use sealroom_measurements::evidence::{Evidence, Platform};

use crate::error::{Error, Result};

/// The value the hardware signed that carries the nonce/key binding (see `docs/binding.md`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "hex")]
pub enum SignedBinding {
    /// TDX or SEV-SNP REPORT_DATA (64 bytes), hex.
    ReportData(String),
    /// TPM quote extraData (32 bytes), hex.
    TpmExtraData(String),
}

/// Verified claims about one piece of evidence.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Appraisal {
    /// The platform whose evidence was verified.
    pub platform: Platform,
    /// The platform's TCB status from the vendor's collateral ("UpToDate", "OutOfDate", …), when it has one.
    pub tcb_status: Option<String>,
    /// Security version numbers of TCB components ("snp.microcode" → 213, "tdx.tee_tcb_svn.0" → 3).
    pub tcb_levels: BTreeMap<String, u64>,
    /// Whether the TEE runs in debug mode (TD ATTRIBUTES.DEBUG, SNP POLICY.DEBUG).
    pub debug: bool,
    /// Verified register values, lower-case hex: "pcr11.sha256", "mrtd", "rtmr2", …
    pub registers: BTreeMap<String, String>,
    /// The signed binding field, to be checked against the request's nonce and the TEE key.
    pub binding: SignedBinding,
    /// The runtime (workload) events, replayed against PCR 15 / RTMR3 by the verifier, in log order.
    pub workload_events: Vec<RuntimeEvent>,
}

/// The evidence verifier, as the broker sees it.
pub trait Appraiser: Send + Sync + std::fmt::Debug {
    /// Verifies `evidence` at time `now_ms` and returns its claims.
    ///
    /// # Errors
    /// One-line reason when the evidence is not accepted.
    fn appraise(&self, evidence: &Evidence, now_ms: u64) -> Result<Appraisal>;
}

/// The integration point with the evidence verifier (`crate::tdx`, `crate::snp`, `crate::tpm`, `crate::azure`),
/// which is not wired yet: until it is, this appraiser refuses all evidence, so the broker fails closed and
/// releases nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct VerifierAppraiser;

impl Appraiser for VerifierAppraiser {
    fn appraise(&self, evidence: &Evidence, _now_ms: u64) -> Result<Appraisal> {
        // INTEGRATION POINT (issue 6 ↔ verifier): call the verifier's appraisal API here and map its verdict into
        // `Appraisal`. Until then no evidence is accepted.
        Err(Error::check(
            "verifier",
            format!("{:?} evidence appraisal is not wired into the broker yet", evidence.platform),
        ))
    }
}
