//! The typed appraisal: everything the verifier established about one piece of evidence, as Rust types.
//!
//! [`crate::appraisal::appraise`] returns an [`Appraisal`]; the key broker's policy evaluates it directly, and
//! the attestation result (EAR, [`crate::ear`]) and the broker's tokens are serialisations of it. No security
//! fact is read back out of JSON: a platform's debug mode, TCB status, registers, the signed binding value and
//! the replayed runtime events are fields here, filled only from evidence whose signatures verified.

mod events;
pub mod gpu;
pub mod platform;
pub mod register;

use std::collections::BTreeMap;

use sealroom_measurements::cel::RuntimeEvent;
use sealroom_measurements::evidence::Platform;
use serde::{Deserialize, Serialize};

pub use gpu::{GpuAppraisal, GpuMeasurement, GpuRevocation};
pub use platform::{AkTrustClaims, SnpClaims, SnpGuestPolicy, TdAttributes, TdxClaims, TdxTcb, TpmClaims};
pub use register::{Family, HexBytes, Register, UnknownRegister};

use crate::ear::{LayerResult, Outcome, Status, TrustworthinessVector};
use crate::error::{Error, Result};
use crate::tdx::TcbStatus;
use crate::x509::UnixTime;

/// Every platform sealroom knows, in the order policies list them.
pub const PLATFORMS: [Platform; 5] =
    [Platform::Tpm, Platform::Tdx, Platform::SevSnp, Platform::AzureSnpVtpm, Platform::AzureTdxVtpm];

/// A platform's name in policies and tokens: `tpm`, `tdx`, `sev-snp`, `azure-snp-vtpm`, `azure-tdx-vtpm`.
#[must_use]
pub fn platform_name(p: Platform) -> &'static str {
    match p {
        Platform::Tpm => "tpm",
        Platform::Tdx => "tdx",
        Platform::SevSnp => "sev-snp",
        Platform::AzureSnpVtpm => "azure-snp-vtpm",
        Platform::AzureTdxVtpm => "azure-tdx-vtpm",
        _ => "unknown",
    }
}

/// The platform with this policy name.
#[must_use]
pub fn platform_by_name(name: &str) -> Option<Platform> {
    PLATFORMS.into_iter().find(|p| platform_name(*p) == name)
}

/// What the platform's verified evidence says. The variant names (in JSON) are the policy's platform names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum PlatformClaims {
    /// A TPM quote alone (swtpm, an on-premises TPM, a GCE vTPM without a hardware report).
    Tpm(TpmClaims),
    /// An Intel TDX quote.
    Tdx(TdxClaims),
    /// An SEV-SNP report, and the vTPM quote when the evidence has one (GCP).
    SevSnp {
        /// The report.
        report: SnpClaims,
        /// The vTPM (its PCR 15 carries the runtime log).
        vtpm: Option<TpmClaims>,
    },
    /// Azure SNP CVM: the HCL report's SNP report and the paravisor's vTPM quote.
    AzureSnpVtpm {
        /// The HCL report's SNP part.
        snp: SnpClaims,
        /// The vTPM quote.
        vtpm: TpmClaims,
    },
    /// Azure TDX CVM: the TD quote over the HCL report and the paravisor's vTPM quote.
    AzureTdxVtpm {
        /// The TD quote.
        tdx: TdxClaims,
        /// The vTPM quote.
        vtpm: TpmClaims,
    },
}

impl PlatformClaims {
    /// The platform.
    #[must_use]
    pub fn platform(&self) -> Platform {
        match self {
            Self::Tpm(_) => Platform::Tpm,
            Self::Tdx(_) => Platform::Tdx,
            Self::SevSnp { .. } => Platform::SevSnp,
            Self::AzureSnpVtpm { .. } => Platform::AzureSnpVtpm,
            Self::AzureTdxVtpm { .. } => Platform::AzureTdxVtpm,
        }
    }

    /// Its policy name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        platform_name(self.platform())
    }

    /// Whether the TEE runs in debug mode: TDATTRIBUTES.DEBUG, or the SNP guest policy's DEBUG bit. A TPM
    /// alone has no debug mode (and is no TEE): false.
    #[must_use]
    pub fn debug(&self) -> bool {
        match self {
            Self::Tpm(_) => false,
            Self::Tdx(td) | Self::AzureTdxVtpm { tdx: td, .. } => td.td_attributes.debug,
            Self::SevSnp { report: snp, .. } | Self::AzureSnpVtpm { snp, .. } => snp.policy.debug,
        }
    }

    /// The vendor's TCB status: TDX quotes verified against Intel collateral. `None` for platforms without one
    /// and for TD quotes verified without collateral.
    #[must_use]
    pub fn tcb_status(&self) -> Option<TcbStatus> {
        match self {
            Self::Tdx(td) | Self::AzureTdxVtpm { tdx: td, .. } => td.tcb.as_ref().map(|t| t.status),
            _ => None,
        }
    }

    /// Security version numbers of TCB components, named as policies name them: "snp.microcode",
    /// "snp.bootloader", "snp.tee", "snp.snp", "snp.fmc" (REPORTED_TCB), "tdx.tee_tcb_svn.N".
    #[must_use]
    pub fn tcb_components(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        match self {
            Self::Tpm(_) => {}
            Self::Tdx(td) | Self::AzureTdxVtpm { tdx: td, .. } => {
                for (i, svn) in td.tee_tcb_svn.as_slice().iter().enumerate() {
                    out.insert(format!("tdx.tee_tcb_svn.{i}"), u64::from(*svn));
                }
            }
            Self::SevSnp { report: snp, .. } | Self::AzureSnpVtpm { snp, .. } => {
                let t = &snp.reported_tcb;
                if let Some(fmc) = t.fmc {
                    out.insert("snp.fmc".into(), u64::from(fmc));
                }
                out.insert("snp.bootloader".into(), u64::from(t.bootloader));
                out.insert("snp.tee".into(), u64::from(t.tee));
                out.insert("snp.snp".into(), u64::from(t.snp));
                out.insert("snp.microcode".into(), u64::from(t.microcode));
            }
        }
        out
    }
}

/// The value the hardware (or TPM) signed that carries the nonce/key binding (`docs/binding.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "hex")]
pub enum SignedBinding {
    /// TDX or SEV-SNP REPORT_DATA (64 bytes).
    ReportData(HexBytes),
    /// TPM quote extraData.
    TpmExtraData(HexBytes),
}

/// The runtime (workload) log, replayed: the registers it replayed to and its events, in log order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeReplay {
    /// The quoted runtime registers the log replays to (PCR 15 of each quoted bank, or RTMR3); never empty.
    pub registers: Vec<Register>,
    /// The events.
    #[serde(with = "events")]
    pub events: Vec<RuntimeEvent>,
}

/// The verifier's appraisal of one piece of evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Appraisal {
    /// The evidence kind ("sealroom evidence", "tdx quote", …).
    pub evidence: String,
    /// The appraisal policy that judged it.
    pub policy_id: String,
    /// The verification time (Unix seconds): the EAR's `iat`.
    pub at: UnixTime,
    /// Overall status.
    pub status: Status,
    /// AR4SI trustworthiness vector.
    pub trust_vector: TrustworthinessVector,
    /// The platform's claims; `None` when the platform's evidence did not verify.
    pub platform: Option<PlatformClaims>,
    /// Register values read from verified quotes and reports.
    pub registers: BTreeMap<Register, HexBytes>,
    /// The signed binding value, as the verified evidence carries it.
    pub binding: Option<SignedBinding>,
    /// The runtime log, present only when it replayed to a quoted runtime register.
    pub runtime: Option<RuntimeReplay>,
    /// The evidence's NVIDIA GPUs that verified (device chain, signature, nonce = binding digest, every RIM
    /// measurement), in evidence order; empty when it has none. A GPU that failed is a failed `gpu` layer.
    pub gpus: Vec<GpuAppraisal>,
    /// Per-layer results, in verification order, with a one-line reason per failed check.
    pub layers: Vec<LayerResult>,
    /// One line per reason the status is not affirming although nothing failed ("tdx: no collateral: TCB
    /// status not evaluated …", "workload: not checked: …"). A warning status always has at least one.
    pub warnings: Vec<String>,
}

impl Appraisal {
    /// Parses the JSON form (as `sealroom broker policy check --appraisal` reads it): strict, every field
    /// required, unknown fields refused.
    ///
    /// # Errors
    /// Malformed JSON, a missing or unknown field, or runtime events whose content does not decode.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::Input(format!("appraisal: {e}")))
    }

    /// The overall status.
    #[must_use]
    pub fn status(&self) -> Status {
        self.status
    }

    /// Every failure line (each names its layer).
    #[must_use]
    pub fn failures(&self) -> Vec<String> {
        self.layers.iter().flat_map(|l| l.failures.iter().cloned()).collect()
    }

    /// Every warning line.
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    /// The result of a named layer ("platform", "binding", "runtime log", …).
    #[must_use]
    pub fn layer(&self, name: &str) -> Option<&LayerResult> {
        self.layers.iter().find(|l| l.layer == name)
    }

    /// Whether the layer ran and passed.
    #[must_use]
    pub fn passed(&self, name: &str) -> bool {
        self.layer(name).is_some_and(|l| l.outcome == Outcome::Passed)
    }

    /// The replayed runtime events (empty when no runtime log replayed).
    #[must_use]
    pub fn runtime_events(&self) -> &[RuntimeEvent] {
        self.runtime.as_ref().map_or(&[], |r| r.events.as_slice())
    }

    /// Pretty JSON of the attestation result (EAR).
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&crate::ear::Ear::single(self))
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A human-readable table.
    #[must_use]
    pub fn to_table(&self) -> String {
        crate::ear::table(self)
    }
}
