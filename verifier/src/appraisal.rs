//! Evidence → layered verification → attestation result (EAR).
//!
//! Layers, in order: **platform** (the hardware or vTPM evidence is genuine: signatures, certificate chains,
//! TCB, guest policy), **binding** (freshness: nonce / REPORT_DATA / extraData), **event log** (the logs replay
//! to the quoted registers), then the measured layers **firmware**, **kernel** (image) and **workload**, each
//! judged against explicit reference values: a set of allowed digests per register, or an explicit `skip`.
//! A register belongs to exactly one measured layer (see `docs/architecture.md`, register allocation).

mod platforms;
mod replay;

use std::collections::{BTreeMap, BTreeSet};

use sealroom_measurements::evidence::Evidence;
use serde::Deserialize;
use serde_json::json;

use crate::azure::evidence::AzureEvidence;
use crate::claims::{Appraisal, HexBytes, PlatformClaims, Register, RuntimeReplay, SignedBinding};
use crate::ear::{LayerResult, Outcome, TrustworthinessVector, tier};
use crate::error::{Error, Result};
use crate::snp::{EndorsementCache, SnpPolicy};
use crate::tdx::{TcbStatus, VerifiedCollateral};
use crate::tpm::credential::ActivatedAk;
use crate::tpm::gce_proto::GceAttestation;
use crate::x509::UnixTime;

/// Reference values of one measured layer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Reference {
    /// Explicitly not checked (the string "skip").
    Skip(SkipMarker),
    /// Register name ("pcr11.sha256", "snp.measurement", "rtmr2") → allowed values (lower-case hex).
    Digests(BTreeMap<String, BTreeSet<String>>),
    /// Nothing was given for this layer and nobody chose to skip it. The layer is reported as not checked and
    /// the verdict is at best a warning naming it, so a check is never skipped silently. Never parsed: it is
    /// the absence of input.
    #[serde(skip)]
    NotGiven,
}

/// The literal `"skip"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SkipMarker {
    /// skip.
    Skip,
}

impl Reference {
    /// An explicit skip.
    #[must_use]
    pub fn skip() -> Self {
        Self::Skip(SkipMarker::Skip)
    }
}

/// Reference values per measured layer. Every layer must be given: digests or `"skip"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceValues {
    /// Firmware: PCR 0–3, 5–7, MRTD, RTMR0, SNP MEASUREMENT.
    pub firmware: Reference,
    /// Kernel/image: PCR 4, 9, 11, 12, RTMR1, RTMR2.
    pub kernel: Reference,
    /// Workload: PCR 15, RTMR3.
    pub workload: Reference,
}

impl ReferenceValues {
    /// Every layer skipped, explicitly.
    #[must_use]
    pub fn skip_all() -> Self {
        Self { firmware: Reference::skip(), kernel: Reference::skip(), workload: Reference::skip() }
    }

    /// No reference values at all: every measured layer the evidence has is reported as not checked.
    #[must_use]
    pub fn not_given() -> Self {
        Self { firmware: Reference::NotGiven, kernel: Reference::NotGiven, workload: Reference::NotGiven }
    }

    /// The reference of one layer.
    pub fn layer_mut(&mut self, layer: Layer) -> &mut Reference {
        match layer {
            Layer::Firmware => &mut self.firmware,
            Layer::Kernel => &mut self.kernel,
            Layer::Workload => &mut self.workload,
        }
    }

    /// Parses the JSON form: `{"firmware": {"snp.measurement": ["…"]}, "kernel": "skip", "workload": "skip"}`.
    ///
    /// # Errors
    /// On malformed JSON, a missing layer, or a register placed in the wrong layer.
    pub fn from_json(text: &[u8]) -> Result<Self> {
        let v: Self =
            serde_json::from_slice(text).map_err(|e| Error::Input(format!("reference values: {e}")))?;
        for (layer, r) in
            [(Layer::Firmware, &v.firmware), (Layer::Kernel, &v.kernel), (Layer::Workload, &v.workload)]
        {
            if let Reference::Digests(map) = r {
                if map.is_empty() {
                    return Err(Error::Input(format!(
                        "reference values: {} has no registers; use \"skip\"",
                        layer.name()
                    )));
                }
                for reg in map.keys() {
                    if layer_of(reg) != Some(layer) {
                        return Err(Error::Input(format!(
                            "reference values: register {reg} does not belong to the {} layer",
                            layer.name()
                        )));
                    }
                }
            }
        }
        Ok(v)
    }
}

/// A measured layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// Firmware.
    Firmware,
    /// Kernel / image.
    Kernel,
    /// Workload.
    Workload,
}

impl Layer {
    /// Every measured layer, in order.
    pub const ALL: [Self; 3] = [Self::Firmware, Self::Kernel, Self::Workload];

    /// Its name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Firmware => "firmware",
            Self::Kernel => "kernel",
            Self::Workload => "workload",
        }
    }
}

/// Which measured layer a register (by name) belongs to (register allocation in `docs/architecture.md`).
#[must_use]
pub fn layer_of(register: &str) -> Option<Layer> {
    register.parse::<Register>().ok().and_then(Register::layer)
}

/// The appraisal policy: platform policy plus reference values.
#[derive(Debug, Clone)]
pub struct Policy {
    /// SEV-SNP guest policy and minimum TCB.
    pub snp: SnpPolicy,
    /// Reference values per measured layer.
    pub references: ReferenceValues,
    /// A name for the EAR's `ear_appraisal_policy_ids`.
    pub id: String,
    /// Intel TCB statuses (TDX and SGX, with collateral) accepted without a warning. Default: `UpToDate`.
    pub tcb_statuses: Vec<TcbStatus>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            snp: SnpPolicy::default(),
            references: ReferenceValues::not_given(),
            id: "sealroom/default".into(),
            tcb_statuses: vec![TcbStatus::UpToDate],
        }
    }
}

impl Policy {
    /// The warning for an Intel TCB status this policy does not accept, `None` when accepted.
    pub(crate) fn tcb_warning(
        &self,
        layer: &str,
        status: TcbStatus,
        advisories: &[String],
    ) -> Option<String> {
        if self.tcb_statuses.contains(&status) {
            return None;
        }
        let accepted = self.tcb_statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        let advisories = if advisories.is_empty() {
            String::new()
        } else {
            format!(" (advisories {})", advisories.join(", "))
        };
        Some(format!("{layer}: TCB status {status}{advisories} is not an accepted status ({accepted})"))
    }
}

/// The warning when a quote was checked without Intel collateral.
pub(crate) fn no_collateral_warning(layer: &str) -> String {
    format!(
        "{layer}: no collateral: TCB status not evaluated (quote signatures and PCK chain verified, PCK revocation \
         not checked)"
    )
}

/// The refusal of a TPM AK that nothing vouches for.
pub const UNTRUSTED_AK: &str = "tpm quote: AK not trusted: no GCE AK certificate, not an enrolled AK (--tpm-ak), \
     not activated against an EK certificate from a configured EK CA (--tpm-ek-ca); an AK is never trusted on \
     first use";

/// Evidence as the verifier receives it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum EvidenceInput {
    /// sealroom's own `Evidence` (from the agent).
    Sealroom(Box<Evidence>),
    /// A raw SEV-SNP report with its VCEK/VLEK (DER).
    SnpReport {
        /// 1184 bytes.
        report: Vec<u8>,
        /// VCEK or VLEK, DER.
        endorsement: Vec<u8>,
    },
    /// A go-tpm-tools GCE attestation.
    Gce(Box<GceAttestation>),
    /// Azure vTPM evidence.
    Azure(Box<AzureEvidence>),
    /// A raw TDX DCAP quote (v4/v5).
    TdxQuote(Vec<u8>),
    /// A raw SGX DCAP quote (v3, or v5 with an SGX body).
    SgxQuote(Vec<u8>),
}

/// What an appraisal of sealroom's own evidence names as its evidence.
const SEALROOM_KIND: &str = "sealroom evidence";

impl EvidenceInput {
    fn kind(&self) -> &'static str {
        match self {
            Self::Sealroom(_) => SEALROOM_KIND,
            Self::SnpReport { .. } => "sev-snp report",
            Self::Gce(_) => "gce vtpm attestation",
            // Named by the HCL report's hardware type, not by which parts happen to be present: TDX evidence
            // without its TD quote is still TDX evidence (and is refused for the missing quote).
            Self::Azure(a) => match crate::azure::hcl::HclReport::parse(&a.hcl_report).map(|h| h.report_type)
            {
                Ok(crate::azure::hcl::HwReportType::Tdx) => "azure tdx vtpm evidence",
                Ok(crate::azure::hcl::HwReportType::Snp) => "azure sev-snp vtpm evidence",
                _ => "azure vtpm evidence (unreadable HCL report)",
            },
            Self::TdxQuote(_) => "tdx quote",
            Self::SgxQuote(_) => "sgx quote",
        }
    }
}

/// Verification context: the injected time, the expected nonce and shared caches.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// Verification time.
    pub at: UnixTime,
    /// The verifier's nonce, if freshness is to be checked.
    pub nonce: Option<Vec<u8>>,
    /// Verified AMD endorsement keys.
    pub snp_cache: &'a EndorsementCache,
    /// Verified Intel collateral for TDX quotes; without it only the quote's signatures and PCK chain are
    /// checked and the TCB status is unknown (a warning).
    pub tdx_collateral: Option<&'a VerifiedCollateral>,
    /// The root a TDX quote verified without collateral must chain to; `None` is the pinned Intel SGX Root CA.
    /// A release build can make no other [`crate::tdx::IntelRoot`] (a test root needs the `test-anchors`
    /// feature); a quote verified against collateral chains to the root the collateral was verified under.
    pub tdx_root: Option<&'a crate::tdx::IntelRoot>,
    /// TPM attestation keys (marshalled TPMT_PUBLIC) enrolled out of band: swtpm, on-premises TPMs. Sealroom TPM
    /// evidence whose AK equals one of these is trusted through the enrolment instead of Google's AK CA.
    pub enrolled_tpm_aks: &'a [Vec<u8>],
    /// A TPM attestation key proven resident, by credential activation, in a TPM whose EK certificate chains to
    /// a configured EK CA (`sealroom attest --tpm-ek-ca`). Evidence whose AK is this one is trusted through the
    /// EK certificate, and the EAR names the EK and the TPM.
    pub tpm_ek_activated: Option<&'a ActivatedAk>,
    /// NVIDIA roots, verified RIMs and revocation data for the GPUs sealroom evidence may carry. Without it,
    /// evidence that carries GPUs fails the `gpu` layer (they cannot be checked); evidence without GPUs is
    /// unaffected.
    pub gpu: Option<&'a crate::gpu::appraise::GpuContext>,
}

type Ctx<'a> = Context<'a>;

/// What the layers established so far.
#[derive(Default)]
struct Established {
    layers: Vec<LayerResult>,
    registers: BTreeMap<Register, HexBytes>,
    platform: Option<PlatformClaims>,
    binding: Option<SignedBinding>,
    runtime: Option<RuntimeReplay>,
    gpus: Vec<crate::claims::GpuAppraisal>,
    identity_ok: bool,
    config_ok: bool,
    hardware_ok: bool,
    /// Genuine, but the TCB is not known to be up to date: one line per reason.
    hardware_warnings: Vec<String>,
    tee: bool,
}

fn layer(name: &str, reference: &str, claims: serde_json::Value, failures: Vec<String>) -> LayerResult {
    let outcome = if failures.is_empty() { Outcome::Passed } else { Outcome::Failed };
    LayerResult { layer: name.into(), outcome, reference: reference.into(), claims, failures }
}

fn reasons(errors: &[Error]) -> Vec<String> {
    errors.iter().flat_map(Error::reasons).collect()
}

fn nonce_for_report_data(nonce: &[u8]) -> Vec<u8> {
    let mut v = nonce.to_vec();
    if v.len() < 64 {
        v.resize(64, 0);
    }
    v
}

fn binding_layer(checked: Result<()>, what: &str, est: &mut Established) {
    let failures = match checked {
        Ok(()) => vec![],
        Err(e) => e.reasons(),
    };
    est.layers.push(layer("binding", "nonce", json!({ "checked": what }), failures));
}

/// How a measured layer was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judged {
    /// Compared with reference values.
    Compared(Outcome),
    /// Skipped by an explicit choice, or not measured by this evidence at all.
    Skipped,
    /// Measured, but no reference values were given and nobody chose to skip it.
    NotChecked,
}

/// Registers named compactly for a one-line reason: PCRs by index with their banks ("PCR 0, 1, 7 in sha1,
/// sha256"), the others by name ("mrtd, rtmr0").
fn register_list<'a>(registers: impl Iterator<Item = &'a Register>) -> String {
    let mut pcrs = BTreeSet::new();
    let mut banks = BTreeSet::new();
    let mut others = Vec::new();
    for r in registers {
        match r {
            Register::Pcr { index, bank } => {
                pcrs.insert(*index);
                banks.insert(bank.name());
            }
            other => others.push(other.to_string()),
        }
    }
    if !pcrs.is_empty() {
        let indices = pcrs.iter().map(u8::to_string).collect::<Vec<_>>().join(", ");
        let banks = banks.into_iter().collect::<Vec<_>>().join(", ");
        others.insert(0, format!("PCR {indices} in {banks}"));
    }
    others.join(", ")
}

fn measured_layers(refs: &ReferenceValues, est: &mut Established) -> (Vec<(Layer, Judged)>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (l, r) in
        [(Layer::Firmware, &refs.firmware), (Layer::Kernel, &refs.kernel), (Layer::Workload, &refs.workload)]
    {
        let in_layer: Vec<&Register> = est.registers.keys().filter(|k| k.layer() == Some(l)).collect();
        let present: BTreeMap<String, String> = est
            .registers
            .iter()
            .filter(|(k, _)| k.layer() == Some(l))
            .map(|(k, v)| (k.to_string(), v.to_hex()))
            .collect();
        match r {
            Reference::NotGiven => {
                let judged = if present.is_empty() {
                    Judged::Skipped
                } else {
                    let names = register_list(in_layer.into_iter());
                    warnings.push(format!("{}: not checked: no reference values given ({names})", l.name()));
                    Judged::NotChecked
                };
                est.layers.push(LayerResult {
                    layer: l.name().into(),
                    outcome: Outcome::Skipped,
                    reference: "not given".into(),
                    claims: json!(present),
                    failures: vec![],
                });
                out.push((l, judged));
            }
            Reference::Skip(_) => {
                est.layers.push(LayerResult {
                    layer: l.name().into(),
                    outcome: Outcome::Skipped,
                    reference: "skip".into(),
                    claims: json!(present),
                    failures: vec![],
                });
                out.push((l, Judged::Skipped));
            }
            Reference::Digests(map) => {
                let mut failures = Vec::new();
                for (reg, allowed) in map {
                    match present.get(reg) {
                        None => failures
                            .push(format!("{}: register {reg} is not in the verified evidence", l.name())),
                        Some(v) if allowed.contains(&v.to_lowercase()) => {}
                        Some(v) => {
                            failures.push(format!("{}: {reg} is {v}, not a reference value", l.name()));
                        }
                    }
                }
                let res = layer(l.name(), "digests", json!(present), failures);
                out.push((l, Judged::Compared(res.outcome)));
                est.layers.push(res);
            }
        }
    }
    (out, warnings)
}

/// The binding layer of a raw quote or report (not sealroom Evidence): REPORT_DATA must carry the caller's
/// nonce, zero-padded to 64 bytes; without a nonce freshness is explicitly skipped.
fn raw_report_data_binding(layer_name: &'static str, rd: &[u8; 64], ctx: &Ctx<'_>, est: &mut Established) {
    match &ctx.nonce {
        None => est.layers.push(LayerResult {
            layer: "binding".into(),
            outcome: Outcome::Skipped,
            reference: "skip".into(),
            claims: json!({ "report_data": hex::encode(rd) }),
            failures: vec![],
        }),
        Some(n) => {
            let r = if nonce_for_report_data(n).as_slice() == rd.as_slice() {
                Ok(())
            } else {
                Err(Error::check(
                    layer_name,
                    format!(
                        "REPORT_DATA {} does not carry the expected nonce {}",
                        hex::encode(rd),
                        hex::encode(n)
                    ),
                ))
            };
            binding_layer(r, "REPORT_DATA", est);
        }
    }
}

/// Verifies `input` and returns the typed appraisal. Never panics, never fails: every problem becomes a failed
/// layer with a one-line reason, and the status says contraindicated.
#[must_use]
pub fn appraise(input: &EvidenceInput, policy: &Policy, ctx: &Context<'_>) -> Appraisal {
    let mut est = Established::default();
    match input {
        EvidenceInput::SnpReport { report, endorsement } => {
            platforms::platform_snp_report(report, endorsement, policy, ctx, &mut est);
        }
        EvidenceInput::Gce(att) => platforms::platform_gce(att, ctx, &mut est),
        EvidenceInput::Azure(az) => {
            let _ = platforms::platform_azure(az, policy, ctx, &mut est);
        }
        EvidenceInput::Sealroom(ev) => establish_sealroom(ev, policy, ctx, &mut est),
        EvidenceInput::TdxQuote(q) => platforms::platform_td_quote(q, policy, ctx, &mut est),
        EvidenceInput::SgxQuote(q) => platforms::platform_sgx_quote(q, policy, ctx, &mut est),
    }
    judge(input.kind(), est, policy, ctx)
}

/// [`appraise`] of sealroom's own evidence, by reference: a caller holding the evidence (the key broker, once
/// per release) need not copy ~30 KB into an [`EvidenceInput`] to have it appraised.
#[must_use]
pub fn appraise_sealroom(ev: &Evidence, policy: &Policy, ctx: &Context<'_>) -> Appraisal {
    let mut est = Established::default();
    establish_sealroom(ev, policy, ctx, &mut est);
    judge(SEALROOM_KIND, est, policy, ctx)
}

fn establish_sealroom(ev: &Evidence, policy: &Policy, ctx: &Context<'_>, est: &mut Established) {
    platforms::platform_sealroom(ev, policy, ctx, est);
    let gpus = crate::gpu::appraise::appraise_gpus(ev, ctx.gpu, ctx.at);
    est.layers.extend(gpus.result());
    est.gpus = match gpus {
        crate::gpu::appraise::GpuLayer::Absent => vec![],
        crate::gpu::appraise::GpuLayer::Passed(g)
        | crate::gpu::appraise::GpuLayer::Failed { claims: g, .. } => g,
    };
}

/// The status and trustworthiness vector of what the platform's checks established.
fn judge(kind: &str, mut est: Established, policy: &Policy, ctx: &Context<'_>) -> Appraisal {
    let (measured, mut warnings) = measured_layers(&policy.references, &mut est);
    let any_failed = est.layers.iter().any(|l| l.outcome == Outcome::Failed);
    let bound_failed = est.layers.iter().any(|l| {
        l.outcome == Outcome::Failed && matches!(l.layer.as_str(), "binding" | "event log" | "runtime log")
    });
    // Affirming only when every measured layer was compared or skipped by choice; a layer nobody judged is a
    // warning that names it.
    let executables = if measured.iter().any(|(_, j)| *j == Judged::Compared(Outcome::Failed)) {
        tier::CONTRAINDICATED
    } else if measured.iter().any(|(_, j)| *j == Judged::NotChecked) {
        tier::UNRECOGNIZED
    } else if measured.iter().all(|(_, j)| *j == Judged::Skipped) {
        tier::NONE
    } else if measured.iter().all(|(_, j)| *j == Judged::Compared(Outcome::Passed)) {
        tier::AFFIRMING
    } else if measured.iter().any(|(l, j)| *l == Layer::Workload && *j == Judged::Skipped) {
        tier::APPROVED_BOOT
    } else {
        // Some layer skipped by choice, the workload compared and passed.
        tier::AFFIRMING
    };
    let tv = TrustworthinessVector {
        instance_identity: if est.identity_ok && !bound_failed {
            tier::AFFIRMING
        } else {
            tier::CONTRAINDICATED
        },
        configuration: if est.config_ok { tier::AFFIRMING } else { tier::CONTRAINDICATED },
        executables,
        hardware: if !est.hardware_ok {
            tier::UNRECOGNIZED_HARDWARE
        } else if !est.hardware_warnings.is_empty() {
            tier::OUTDATED_TCB
        } else {
            tier::AFFIRMING
        },
        runtime_opaque: if est.tee && est.hardware_ok { tier::AFFIRMING } else { tier::NONE },
        ..TrustworthinessVector::default()
    };
    let mut status = tv.status();
    if any_failed {
        status = crate::ear::Status::Contraindicated;
    }
    warnings.splice(0..0, est.hardware_warnings);
    Appraisal {
        evidence: kind.into(),
        policy_id: policy.id.clone(),
        at: ctx.at,
        status,
        trust_vector: tv,
        platform: est.platform,
        registers: est.registers,
        binding: est.binding,
        runtime: est.runtime,
        gpus: est.gpus,
        layers: est.layers,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use sealroom_measurements::evidence::{HashAlg, PcrBank};

    use super::replay::{replay_runtime_log, replay_runtime_rtmr3};
    use super::*;

    #[test]
    fn reference_values_parse_skip_and_digests() {
        let r = ReferenceValues::from_json(
            br#"{"firmware": {"snp.measurement": ["aa"], "pcr0.sha256": ["bb", "cc"]}, "kernel": "skip", "workload": {"rtmr3": ["dd"]}}"#,
        )
        .unwrap();
        assert_eq!(r.kernel, Reference::skip());
        let Reference::Digests(fw) = &r.firmware else { panic!() };
        assert_eq!(fw["pcr0.sha256"].len(), 2);
        // Every layer is required; "skip" is the only string; registers must be in their layer; no empty maps.
        for bad in [
            r#"{"firmware": "skip", "kernel": "skip"}"#,
            r#"{"firmware": "none", "kernel": "skip", "workload": "skip"}"#,
            r#"{"firmware": {"pcr11.sha256": ["aa"]}, "kernel": "skip", "workload": "skip"}"#,
            r#"{"firmware": {}, "kernel": "skip", "workload": "skip"}"#,
            r#"{"firmware": "skip", "kernel": "skip", "workload": "skip", "extra": 1}"#,
        ] {
            assert!(ReferenceValues::from_json(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_replayed_runtime_log_claims_its_workload_and_a_mismatched_one_claims_nothing() {
        use sealroom_measurements::cel::{CelRecord, RuntimeEvent as E, encode_records, replay_pcr};
        let events = [
            E::ImageReference("r.example/app@sha256:aa".into()),
            E::ManifestDigest("sha256:aa".into()),
            E::ConfigDigest("sha256:bb".into()),
            E::Arg("/bin/app".into()),
            E::Arg("--fast".into()),
            E::Env("PATH=/bin".into()),
            E::LaunchPolicy("log_redirect=never\n".into()),
            E::LaunchSeparator,
            E::KeyRelease { key_id: "k".into(), broker_key: "b".into() },
            E::Output { name: "output".into(), digest: "sha256:cc".into() },
        ];
        let records: Vec<CelRecord> = events
            .iter()
            .enumerate()
            .map(|(i, e)| CelRecord::new(i as u64, 15, &[HashAlg::Sha256], e))
            .collect();
        let log = encode_records(&records);
        let good = replay_pcr(&records, HashAlg::Sha256).unwrap();
        let bank = |v: Vec<u8>| PcrBank { alg: HashAlg::Sha256, values: [(15u32, v)].into_iter().collect() };

        let mut est = Established::default();
        replay_runtime_log(&log, &[bank(good)], &mut est);
        let l = &est.layers[0];
        assert_eq!(l.outcome, Outcome::Passed, "{:?}", l.failures);
        let w = &l.claims["workload"];
        assert_eq!(w["image_digest"], "sha256:aa");
        assert_eq!(w["image_reference"], "r.example/app@sha256:aa");
        assert_eq!(w["args"], json!(["/bin/app", "--fast"]));
        assert_eq!(w["env"], json!(["PATH=/bin"]));
        assert_eq!(w["launched"], json!(true));
        assert_eq!(w["key_releases"], json!([{"key_id": "k", "broker_key": "b"}]));
        assert_eq!(w["outputs"], json!([{"name": "output", "digest": "sha256:cc"}]));

        let mut est = Established::default();
        replay_runtime_log(&log, &[bank(vec![0; 32])], &mut est);
        assert_eq!(est.layers[0].outcome, Outcome::Failed);
        assert!(est.layers[0].claims.get("workload").is_none(), "no claims from a log that does not replay");
        assert!(est.runtime.is_none(), "no typed events from a log that does not replay");

        // A quote without PCR 15: the log replays to nothing, which is a failure, not a silent pass.
        let mut est = Established::default();
        let pcr0 = PcrBank { alg: HashAlg::Sha256, values: [(0u32, vec![0; 32])].into_iter().collect() };
        replay_runtime_log(&log, &[pcr0], &mut est);
        assert_eq!(
            est.layers[0].failures,
            vec!["runtime log: no runtime register (PCR 15 or RTMR3) was quoted".to_owned()]
        );
        assert!(est.runtime.is_none());
    }

    #[test]
    fn a_runtime_log_replays_to_rtmr3_and_records_for_other_registers_are_refused() {
        use sealroom_measurements::cel::{CelRecord, RuntimeEvent as E, encode_records, replay_rtmr3};
        let events = [E::ManifestDigest("sha256:aa".into()), E::Arg("/bin/app".into()), E::LaunchSeparator];
        let records: Vec<CelRecord> = events
            .iter()
            .enumerate()
            .map(|(i, e)| CelRecord::new(i as u64, 15, &[HashAlg::Sha384], e))
            .collect();
        let log = encode_records(&records);
        let rtmr3 = replay_rtmr3(&records).unwrap();

        let mut est = Established::default();
        est.registers.insert(Register::Rtmr(3), rtmr3.into());
        replay_runtime_rtmr3(&log, &mut est);
        assert_eq!(est.layers[0].outcome, Outcome::Passed, "{:?}", est.layers[0].failures);
        let runtime = est.runtime.expect("replayed");
        assert_eq!(runtime.registers, vec![Register::Rtmr(3)]);
        assert_eq!(runtime.events, events.to_vec());

        let mut est = Established::default();
        est.registers.insert(Register::Rtmr(3), HexBytes(vec![0; 48]));
        replay_runtime_rtmr3(&log, &mut est);
        assert_eq!(est.layers[0].outcome, Outcome::Failed);
        assert!(
            est.layers[0].failures[0].starts_with("runtime log: rtmr3 mismatch"),
            "{:?}",
            est.layers[0].failures
        );
        assert!(est.runtime.is_none());

        // An event extended into another register would ride along unreplayed: the log is refused.
        let mut other = records.clone();
        other.push(CelRecord::new(3, 8, &[HashAlg::Sha384], &E::Env("X=1".into())));
        let mut est = Established::default();
        est.registers.insert(Register::Rtmr(3), rtmr3.into());
        replay_runtime_rtmr3(&encode_records(&other), &mut est);
        assert_eq!(
            est.layers[0].failures,
            vec![
                "runtime log: cel record: invalid pcr index: record 3 names pcr 8, the runtime log uses 15"
                    .to_owned()
            ]
        );
        assert!(est.runtime.is_none());
    }

    #[test]
    fn registers_belong_to_one_layer() {
        for (reg, layer) in [
            ("pcr0.sha256", Some(Layer::Firmware)),
            ("pcr7.sha1", Some(Layer::Firmware)),
            ("mrtd", Some(Layer::Firmware)),
            ("rtmr0", Some(Layer::Firmware)),
            ("snp.measurement", Some(Layer::Firmware)),
            ("pcr4.sha256", Some(Layer::Kernel)),
            ("pcr11.sha384", Some(Layer::Kernel)),
            ("rtmr2", Some(Layer::Kernel)),
            ("pcr15.sha256", Some(Layer::Workload)),
            ("rtmr3", Some(Layer::Workload)),
            ("pcr8.sha256", None),
            ("snp.host_data", None),
        ] {
            assert_eq!(layer_of(reg), layer, "{reg}");
        }
    }
}
