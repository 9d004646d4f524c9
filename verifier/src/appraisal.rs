//! Evidence → layered verification → attestation result (EAR).
//!
//! Layers, in order: **platform** (the hardware or vTPM evidence is genuine: signatures, certificate chains,
//! TCB, guest policy), **binding** (freshness: nonce / REPORT_DATA / extraData), **event log** (the logs replay
//! to the quoted registers), then the measured layers **firmware**, **kernel** (image) and **workload**, each
//! judged against explicit reference values: a set of allowed digests per register, or an explicit `skip`.
//! A register belongs to exactly one measured layer (see `docs/architecture.md`, register allocation).

use std::collections::{BTreeMap, BTreeSet};

use sealroom_measurements::binding::{check_report_data, check_tpm_extra_data};
use sealroom_measurements::evidence::{Evidence, HashAlg, PcrBank, Platform};
use serde::Deserialize;
use serde_json::json;

use crate::azure::evidence::{AzureEvidence, AzureQuote};
use crate::azure::verify::verify_azure;
use crate::ear::{Appraisal, Ear, LayerResult, Outcome, TrustworthinessVector, tier};
use crate::error::{Error, Result};
use crate::snp::{Collateral, EndorsementCache, SnpPolicy, verify_report_detailed};
use crate::tdx::{TcbStatus, TdReport, VerifiedCollateral, verify_quote_signatures, verify_tdx_quote};
use crate::tpm::credential::ActivatedAk;
use crate::tpm::gce_proto::GceAttestation;
use crate::tpm::quote::ExpectedExtraData;
use crate::tpm::verify::{AkTrust, QuoteInput, verify_tpm};
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

/// Which measured layer a register belongs to (register allocation in `docs/architecture.md`).
#[must_use]
pub fn layer_of(register: &str) -> Option<Layer> {
    let base = register.split('.').next().unwrap_or(register);
    if register == "snp.measurement" {
        return Some(Layer::Firmware);
    }
    // An SGX enclave's identity is the code running in the TEE: the workload.
    if base == "sgx" && !matches!(register, "sgx.mrenclave" | "sgx.mrsigner") {
        return None;
    }
    match base {
        "mrtd" | "rtmr0" | "pcr0" | "pcr1" | "pcr2" | "pcr3" | "pcr5" | "pcr6" | "pcr7" => {
            Some(Layer::Firmware)
        }
        "rtmr1" | "rtmr2" | "pcr4" | "pcr9" | "pcr11" | "pcr12" => Some(Layer::Kernel),
        "rtmr3" | "pcr15" | "sgx" => Some(Layer::Workload),
        _ => None,
    }
}

/// The appraisal policy: platform policy plus reference values.
#[derive(Debug, Clone)]
pub struct Policy {
    /// SEV-SNP guest policy and minimum TCB.
    pub snp: SnpPolicy,
    /// Reference values per measured layer.
    pub references: ReferenceValues,
    /// A name for the EAR's `ear.appraisal-policy-id`.
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
    fn tcb_warning(&self, layer: &str, status: TcbStatus, advisories: &[String]) -> Option<String> {
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
fn no_collateral_warning(layer: &str) -> String {
    format!(
        "{layer}: no collateral: TCB status not evaluated (quote signatures and PCK chain verified, PCK revocation \
         not checked)"
    )
}

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

impl EvidenceInput {
    fn kind(&self) -> &'static str {
        match self {
            Self::Sealroom(_) => "sealroom evidence",
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
    /// TPM attestation keys (marshalled TPMT_PUBLIC) enrolled out of band: swtpm, on-premises TPMs. Sealroom TPM
    /// evidence whose AK equals one of these is trusted through the enrolment instead of Google's AK CA.
    pub enrolled_tpm_aks: &'a [Vec<u8>],
    /// A TPM attestation key proven resident, by credential activation, in a TPM whose EK certificate chains to
    /// a configured EK CA (`sealroom attest --tpm-ek-ca`). Evidence whose AK is this one is trusted through the
    /// EK certificate, and the EAR names the EK and the TPM.
    pub tpm_ek_activated: Option<&'a ActivatedAk>,
}

type Ctx<'a> = Context<'a>;

/// What the platform layer established.
#[derive(Default)]
struct Established {
    layers: Vec<LayerResult>,
    registers: BTreeMap<String, String>,
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

fn add_pcrs(registers: &mut BTreeMap<String, String>, banks: &[PcrBank]) {
    for b in banks {
        for (i, v) in &b.values {
            registers.insert(format!("pcr{i}.{}", b.alg.name()), hex::encode(v));
        }
    }
}

fn nonce_for_report_data(nonce: &[u8]) -> Vec<u8> {
    let mut v = nonce.to_vec();
    if v.len() < 64 {
        v.resize(64, 0);
    }
    v
}

fn snp_platform(
    report: &[u8],
    endorsement: &[u8],
    policy: &Policy,
    ctx: &Ctx<'_>,
    est: &mut Established,
) -> Option<[u8; 64]> {
    match verify_report_detailed(
        report,
        Collateral { endorsement_der: endorsement },
        ctx.snp_cache,
        &policy.snp,
        ctx.at,
    ) {
        Err(e) => {
            est.layers.push(layer("platform", "policy", json!({}), e.reasons()));
            None
        }
        Ok(out) => {
            est.identity_ok = out.authenticity.is_empty();
            est.hardware_ok = out.authenticity.is_empty();
            est.config_ok = out.configuration.is_empty();
            est.tee = true;
            let mut failures = reasons(&out.authenticity);
            failures.extend(reasons(&out.configuration));
            est.registers.insert("snp.measurement".into(), out.claims.measurement.clone());
            est.registers.insert("snp.host_data".into(), out.claims.host_data.clone());
            let claims = serde_json::to_value(&out.claims).unwrap_or_default();
            est.layers.push(layer("platform", "policy", claims, failures));
            Some(out.report.report_data)
        }
    }
}

fn add_td_registers(registers: &mut BTreeMap<String, String>, mr_td: &[u8; 48], rtmr: &[[u8; 48]; 4]) {
    registers.insert("mrtd".into(), hex::encode(mr_td));
    for (i, r) in rtmr.iter().enumerate() {
        registers.insert(format!("rtmr{i}"), hex::encode(r));
    }
}

/// Verifies a TD quote: with collateral fully (TCB status), without only signatures and the PCK chain.
fn tdx_platform(quote: &[u8], policy: &Policy, ctx: &Ctx<'_>, est: &mut Established) -> Option<[u8; 64]> {
    if let Some(collateral) = ctx.tdx_collateral {
        match verify_tdx_quote(quote, collateral, ctx.at) {
            Err(e) => {
                est.layers.push(layer("platform", "intel collateral", json!({}), e.reasons()));
                None
            }
            Ok(td) => {
                est.identity_ok = true;
                est.hardware_ok = true;
                est.config_ok = true;
                est.tee = true;
                est.hardware_warnings.extend(policy.tcb_warning("tdx", td.tcb_status, &td.advisory_ids));
                add_td_registers(&mut est.registers, &td.mr_td, &td.rtmr);
                let claims = json!({
                    "version": td.version,
                    "tcb_status": td.tcb_status.as_str(),
                    "advisory_ids": td.advisory_ids,
                    "fmspc": hex::encode(td.fmspc),
                    "mr_seam": hex::encode(td.mr_seam),
                    "td_attributes": hex::encode(td.td_attributes),
                    "report_data": hex::encode(td.report_data),
                });
                est.layers.push(layer("platform", "intel collateral", claims, vec![]));
                Some(td.report_data)
            }
        }
    } else {
        match verify_quote_signatures(quote, ctx.at) {
            Err(e) => {
                est.layers.push(layer("platform", "intel root", json!({}), e.reasons()));
                None
            }
            Ok(signed) => {
                let crate::tdx::Body::Td(td) = &signed.quote.body else {
                    est.layers.push(layer(
                        "platform",
                        "intel root",
                        json!({}),
                        vec!["tdx: not a TD quote".into()],
                    ));
                    return None;
                };
                let td: &TdReport = td;
                est.identity_ok = true;
                est.hardware_ok = true;
                est.config_ok = true;
                est.tee = true;
                est.hardware_warnings.push(no_collateral_warning("tdx"));
                add_td_registers(&mut est.registers, &td.mr_td, &td.rtmr);
                let claims = json!({
                    "version": signed.quote.version,
                    "tcb_status": "unknown: no Intel collateral given (signatures and PCK chain verified, no CRLs)",
                    "fmspc": hex::encode(signed.pck_extension.fmspc),
                    "td_attributes": hex::encode(td.td_attributes),
                    "report_data": hex::encode(td.report_data),
                });
                est.layers.push(layer("platform", "intel root", claims, vec![]));
                Some(td.report_data)
            }
        }
    }
}

/// Verifies an SGX enclave quote: with collateral fully (QE identity, TCB status, debug enclaves refused),
/// without only its signatures and PCK chain. The enclave's identity (MRENCLAVE, MRSIGNER) is the workload.
fn sgx_platform(quote: &[u8], policy: &Policy, ctx: &Ctx<'_>, est: &mut Established) -> Option<[u8; 64]> {
    let enclave = |est: &mut Established, mr_enclave: &[u8; 32], mr_signer: &[u8; 32]| {
        est.identity_ok = true;
        est.hardware_ok = true;
        est.config_ok = true;
        est.tee = true;
        est.registers.insert("sgx.mrenclave".into(), hex::encode(mr_enclave));
        est.registers.insert("sgx.mrsigner".into(), hex::encode(mr_signer));
    };
    if let Some(collateral) = ctx.tdx_collateral {
        match crate::tdx::verify_quote(quote, collateral, ctx.at) {
            Err(e) => {
                est.layers.push(layer("platform", "intel collateral", json!({}), e.reasons()));
                None
            }
            Ok(crate::tdx::VerifiedQuote::Sgx(q)) => {
                enclave(est, &q.mr_enclave, &q.mr_signer);
                est.hardware_warnings.extend(policy.tcb_warning("sgx", q.tcb_status, &q.advisory_ids));
                let claims = json!({
                    "version": q.version,
                    "tcb_status": q.tcb_status.as_str(),
                    "advisory_ids": q.advisory_ids,
                    "fmspc": hex::encode(q.fmspc),
                    "isv_prod_id": q.isv_prod_id,
                    "isv_svn": q.isv_svn,
                    "attributes": hex::encode(q.attributes),
                    "report_data": hex::encode(q.report_data),
                });
                est.layers.push(layer("platform", "intel collateral", claims, vec![]));
                Some(q.report_data)
            }
            Ok(_) => {
                est.layers.push(layer(
                    "platform",
                    "intel collateral",
                    json!({}),
                    vec!["sgx: not an SGX enclave quote".into()],
                ));
                None
            }
        }
    } else {
        match verify_quote_signatures(quote, ctx.at) {
            Err(e) => {
                est.layers.push(layer("platform", "intel root", json!({}), e.reasons()));
                None
            }
            Ok(signed) => {
                let Some(report) = signed.quote.enclave_report() else {
                    est.layers.push(layer(
                        "platform",
                        "intel root",
                        json!({}),
                        vec!["sgx: not an SGX enclave quote".into()],
                    ));
                    return None;
                };
                enclave(est, &report.mr_enclave, &report.mr_signer);
                est.hardware_warnings.push(no_collateral_warning("sgx"));
                let claims = json!({
                    "version": signed.quote.version,
                    "tcb_status": "unknown: no Intel collateral given (signatures and PCK chain verified, no CRLs)",
                    "fmspc": hex::encode(signed.pck_extension.fmspc),
                    "isv_prod_id": report.isv_prod_id,
                    "isv_svn": report.isv_svn,
                    "attributes": hex::encode(report.attributes),
                    "report_data": hex::encode(report.report_data),
                });
                est.layers.push(layer("platform", "intel root", claims, vec![]));
                Some(report.report_data)
            }
        }
    }
}

fn replay_event_log(log: &[u8], quoted: &[PcrBank], est: &mut Established) {
    if log.is_empty() {
        return;
    }
    let mut failures = Vec::new();
    let mut checked = Vec::new();
    match sealroom_measurements::tcg2::Tcg2Log::parse(log).and_then(|l| l.replay(true)) {
        Err(e) => failures.push(format!("event log: {e}")),
        Ok(replay) => {
            for bank in quoted {
                let Some(replayed) = replay.banks.get(&bank.alg) else { continue };
                for (index, value) in replayed {
                    if let Some(q) = bank.values.get(index) {
                        checked.push(format!("pcr{index}.{}", bank.alg.name()));
                        if q != value {
                            failures.push(format!(
                                "event log: pcr {index} ({}) replays to {}, quoted {}",
                                bank.alg.name(),
                                hex::encode(value),
                                hex::encode(q)
                            ));
                        }
                    }
                }
            }
            if checked.is_empty() {
                failures.push("event log: no bank of the log was quoted".into());
            }
        }
    }
    est.layers.push(layer("event log", "replay", json!({ "replayed": checked.len() }), failures));
}

fn tpm_binding_layer(extra: Result<()>, what: &str, est: &mut Established) {
    let failures = match extra {
        Ok(()) => vec![],
        Err(e) => e.reasons(),
    };
    est.layers.push(layer("binding", "nonce", json!({ "checked": what }), failures));
}

fn platform_gce(att: &GceAttestation, ctx: &Ctx<'_>, est: &mut Established) {
    let quotes: Vec<_> =
        att.quotes.iter().map(|q| QuoteInput { attest: &q.attest, signature: &q.signature }).collect();
    let banks: Vec<_> = att.quotes.iter().map(|q| q.bank.clone()).collect();
    // Freshness is judged in its own layer: verify the quotes without it, then compare extraData.
    match verify_tpm(
        &att.ak_public,
        &att.ak_cert_chain,
        &quotes,
        &banks,
        &ExpectedExtraData::Unchecked,
        &AkTrust::GoogleCa,
        ctx.at,
    ) {
        Err(e) => est.layers.push(layer("platform", "google ak ca", json!({}), e.reasons())),
        Ok(v) => {
            est.identity_ok = true;
            est.hardware_ok = true;
            est.config_ok = true;
            add_pcrs(&mut est.registers, &v.pcrs);
            let claims = json!({ "ak": v.claims.ak, "ak_key": v.claims.ak_key, "firmware_version": v.claims.firmware_version, "reset_count": v.claims.reset_count });
            est.layers.push(layer("platform", "google ak ca", claims, vec![]));
            match &ctx.nonce {
                None => est.layers.push(LayerResult {
                    layer: "binding".into(),
                    outcome: Outcome::Skipped,
                    reference: "skip".into(),
                    claims: json!({ "extra_data": v.claims.extra_data }),
                    failures: vec![],
                }),
                Some(n) => {
                    let r = if hex::decode(&v.claims.extra_data).ok().as_deref() == Some(n.as_slice()) {
                        Ok(())
                    } else {
                        Err(Error::check(
                            "tpm quote",
                            format!(
                                "extraData {} does not match the expected nonce {}",
                                v.claims.extra_data,
                                hex::encode(n)
                            ),
                        ))
                    };
                    tpm_binding_layer(r, "extraData", est);
                }
            }
            replay_event_log(&att.event_log, &v.pcrs, est);
        }
    }
}

fn platform_azure(ev: &AzureEvidence, policy: &Policy, ctx: &Ctx<'_>, est: &mut Established) {
    let tdx_warning = std::cell::RefCell::new(None);
    let td_check = |q: &[u8]| -> Result<[u8; 64]> {
        if let Some(c) = ctx.tdx_collateral {
            let td = verify_tdx_quote(q, c, ctx.at)?;
            tdx_warning.replace(policy.tcb_warning("tdx", td.tcb_status, &td.advisory_ids));
            Ok(td.report_data)
        } else {
            let signed = verify_quote_signatures(q, ctx.at)?;
            tdx_warning.replace(Some(no_collateral_warning("tdx")));
            match &signed.quote.body {
                crate::tdx::Body::Td(td) => Ok(td.report_data),
                _ => Err(Error::check("tdx", "not a TD quote")),
            }
        }
    };
    let result = verify_azure(ev, ctx.nonce.as_deref(), ctx.snp_cache, &policy.snp, Some(&td_check), ctx.at);
    est.hardware_warnings.extend(tdx_warning.into_inner());
    match result {
        Err(e) => est.layers.push(layer("platform", "policy", json!({}), e.reasons())),
        Ok(v) => {
            est.identity_ok = true;
            est.hardware_ok = true;
            est.config_ok = true;
            est.tee = true;
            add_pcrs(&mut est.registers, &v.pcrs);
            if let Some(snp) = &v.claims.snp {
                est.registers.insert("snp.measurement".into(), snp.measurement.clone());
            }
            let claims = serde_json::to_value(&v.claims).unwrap_or_default();
            est.layers.push(layer("platform", "policy", claims, vec![]));
            let (outcome, reference) =
                if ctx.nonce.is_some() { (Outcome::Passed, "nonce") } else { (Outcome::Skipped, "skip") };
            est.layers.push(LayerResult {
                layer: "binding".into(),
                outcome,
                reference: reference.into(),
                claims: json!({ "extra_data": v.claims.extra_data }),
                failures: vec![],
            });
        }
    }
}

/// The refusal of a TPM AK that nothing vouches for.
pub const UNTRUSTED_AK: &str = "tpm quote: AK not trusted: no GCE AK certificate, not an enrolled AK (--tpm-ak), \
     not activated against an EK certificate from a configured EK CA (--tpm-ek-ca); an AK is never trusted on \
     first use";

fn platform_sealroom(ev: &Evidence, policy: &Policy, ctx: &Ctx<'_>, est: &mut Established) {
    if let Some(n) = &ctx.nonce
        && n.as_slice() != ev.nonce.0.as_slice()
    {
        est.layers.push(layer(
            "binding",
            "nonce",
            json!({}),
            vec![format!(
                "binding: evidence nonce {} is not the expected nonce {}",
                hex::encode(ev.nonce.0),
                hex::encode(n)
            )],
        ));
    }
    match ev.platform {
        Platform::SevSnp => {
            let Some(snp) = &ev.sev_snp else { return };
            let Some(vcek) = snp.cert_chain.first() else {
                est.layers.push(layer(
                    "platform",
                    "policy",
                    json!({}),
                    vec!["snp: evidence carries no VCEK/VLEK".into()],
                ));
                return;
            };
            if let Some(rd) = snp_platform(&snp.report, vcek, policy, ctx, est) {
                let r = check_report_data(&rd, &ev.nonce, &ev.tee_public_key).map_err(Error::from);
                tpm_binding_layer(r, "REPORT_DATA", est);
            }
        }
        Platform::Tpm => {
            let Some(tpm) = &ev.tpm else { return };
            let quotes = [QuoteInput { attest: &tpm.attest, signature: &tpm.signature }];
            let expected = ExpectedExtraData::Binding(ev.nonce, ev.tee_public_key.clone());
            let (trust, trust_name) =
                if let Some(a) = ctx.tpm_ek_activated.filter(|a| a.ak_public() == tpm.ak_public.as_slice()) {
                    (AkTrust::EkCertified(a.clone()), "ek-certified ak")
                } else if ctx.enrolled_tpm_aks.contains(&tpm.ak_public) {
                    (AkTrust::Pinned(tpm.ak_public.clone()), "enrolled ak")
                } else if tpm.ak_cert_chain.is_empty()
                    && crate::tpm::structures::Public::parse(&tpm.ak_public).is_ok()
                {
                    // A well-formed AK with no way left to trust it: never on first use. (A malformed one is
                    // refused for its structure by the quote verification below.)
                    est.layers.push(layer("platform", "ak trust", json!({}), vec![UNTRUSTED_AK.into()]));
                    return;
                } else {
                    (AkTrust::GoogleCa, "google ak ca")
                };
            match verify_tpm(
                &tpm.ak_public,
                &tpm.ak_cert_chain,
                &quotes,
                &tpm.pcr_banks,
                &ExpectedExtraData::Unchecked,
                &trust,
                ctx.at,
            ) {
                Err(e) => est.layers.push(layer("platform", trust_name, json!({}), e.reasons())),
                Ok(v) => {
                    est.identity_ok = true;
                    est.hardware_ok = true;
                    est.config_ok = true;
                    add_pcrs(&mut est.registers, &v.pcrs);
                    est.layers.push(layer(
                        "platform",
                        trust_name,
                        serde_json::to_value(&v.claims).unwrap_or_default(),
                        vec![],
                    ));
                    let extra = hex::decode(&v.claims.extra_data).unwrap_or_default();
                    let r = match &expected {
                        ExpectedExtraData::Binding(n, k) => {
                            check_tpm_extra_data(&extra, n, k).map_err(Error::from)
                        }
                        _ => Ok(()),
                    };
                    tpm_binding_layer(r, "extraData", est);
                    replay_event_log(&tpm.uefi_event_log, &v.pcrs, est);
                    replay_runtime_log(&ev.runtime_event_log, &v.pcrs, est);
                }
            }
        }
        Platform::AzureSnpVtpm | Platform::AzureTdxVtpm => {
            let Some(az) = &ev.azure else { return };
            let sha256 = az.vtpm.pcr_banks.iter().find(|b| b.alg == HashAlg::Sha256);
            let pcrs = (0u32..24)
                .map(|i| sha256.and_then(|b| b.values.get(&i).cloned()).unwrap_or_else(|| vec![0; 32]))
                .collect();
            let converted = AzureEvidence {
                hcl_report: az.hcl_report.clone(),
                quote: AzureQuote {
                    message: az.vtpm.attest.clone(),
                    signature: az.vtpm.signature.clone(),
                    pcrs,
                },
                vcek: (!az.vcek.is_empty()).then(|| az.vcek.clone()),
                td_quote: (!az.td_quote.is_empty()).then(|| az.td_quote.clone()),
                ak_public: Some(az.vtpm.ak_public.clone()),
            };
            let binding =
                sealroom_measurements::binding::binding_digest(&ev.nonce, &ev.tee_public_key).to_vec();
            let inner = Ctx { nonce: Some(binding), ..ctx.clone() };
            platform_azure(&converted, policy, &inner, est);
        }
        Platform::Tdx => {
            let Some(tdx) = &ev.tdx else { return };
            if let Some(rd) = tdx_platform(&tdx.quote, policy, ctx, est) {
                let r = check_report_data(&rd, &ev.nonce, &ev.tee_public_key).map_err(Error::from);
                tpm_binding_layer(r, "REPORT_DATA", est);
                replay_ccel(&tdx.ccel_log, est);
                replay_runtime_rtmr3(&ev.runtime_event_log, est);
            }
        }
        _ => {
            est.layers.push(layer(
                "platform",
                "policy",
                json!({}),
                vec!["evidence: unknown platform".into()],
            ));
        }
    }
}

fn replay_ccel(log: &[u8], est: &mut Established) {
    if log.is_empty() {
        return;
    }
    let mut failures = Vec::new();
    match sealroom_measurements::ccel::CcelLog::parse(log).and_then(|l| l.replay()) {
        Err(e) => failures.push(format!("ccel log: {e}")),
        Ok(replayed) => {
            for (i, value) in replayed.0.iter().enumerate().take(3) {
                let name = format!("rtmr{i}");
                if let Some(quoted) = est.registers.get(&name)
                    && *quoted != hex::encode(value)
                {
                    failures
                        .push(format!("ccel log: {name} replays to {}, quoted {quoted}", hex::encode(value)));
                }
            }
        }
    }
    est.layers.push(layer("event log", "replay", json!({ "registers": "rtmr0..rtmr2" }), failures));
}

fn replay_runtime_rtmr3(log: &[u8], est: &mut Established) {
    if log.is_empty() {
        return;
    }
    let mut failures = Vec::new();
    let mut claims = json!({ "register": "rtmr3" });
    let quoted = est.registers.get("rtmr3").and_then(|h| hex::decode(h).ok()).unwrap_or_default();
    match sealroom_measurements::cel::CelLog::decode(log) {
        Err(e) => failures.push(format!("runtime log: {e}")),
        Ok(records) => match sealroom_measurements::cel::check_rtmr3(&records, &quoted) {
            Err(e) => failures.push(format!("runtime log: {e}")),
            Ok(()) => claims = json!({ "register": "rtmr3", "workload": workload_claims(&records) }),
        },
    }
    est.layers.push(layer("runtime log", "replay", claims, failures));
}

fn replay_runtime_log(log: &[u8], quoted: &[PcrBank], est: &mut Established) {
    if log.is_empty() {
        return;
    }
    let mut failures = Vec::new();
    let mut claims = json!({});
    match sealroom_measurements::cel::CelLog::decode(log) {
        Err(e) => failures.push(format!("runtime log: {e}")),
        Ok(records) => {
            let mut replayed = Vec::new();
            for bank in quoted {
                if let Some(v) = bank.values.get(&15) {
                    match sealroom_measurements::cel::check_pcr(&records, bank.alg, v) {
                        Err(e) => failures.push(format!("runtime log: {e}")),
                        Ok(()) => replayed.push(format!("pcr15.{}", bank.alg.name())),
                    }
                }
            }
            // The events are claims only once they replayed to a quoted register.
            if failures.is_empty() && !replayed.is_empty() {
                claims = json!({ "registers": replayed, "workload": workload_claims(&records) });
            }
        }
    }
    est.layers.push(layer("runtime log", "replay", claims, failures));
}

/// The workload the replayed runtime log describes: the launch events before the launch separator (image
/// reference and digests, args, env, mounts, launch policy) and what happened after it (keys released, outputs).
fn workload_claims(records: &[sealroom_measurements::cel::CelRecord]) -> serde_json::Value {
    use sealroom_measurements::cel::RuntimeEvent as E;
    let mut launch = serde_json::Map::new();
    let (mut args, mut env, mut mounts, mut keys, mut outputs) = (vec![], vec![], vec![], vec![], vec![]);
    let mut launched = false;
    for r in records {
        match &r.event {
            E::ImageReference(s) => {
                launch.insert("image_reference".into(), json!(s));
            }
            E::ManifestDigest(s) => {
                launch.insert("image_digest".into(), json!(s));
            }
            E::ConfigDigest(s) => {
                launch.insert("config_digest".into(), json!(s));
            }
            E::Arg(s) => args.push(json!(s)),
            E::Env(s) => env.push(json!(s)),
            E::Mount(m) => mounts.push(json!(m)),
            E::LaunchPolicy(s) => {
                launch.insert("launch_policy".into(), json!(s));
            }
            E::LaunchSeparator => launched = true,
            E::KeyRelease { key_id } => keys.push(json!(key_id)),
            E::Output { name, digest } => outputs.push(json!({ "name": name, "digest": digest })),
            // Event kinds this verifier does not know yet still replayed; they claim nothing here.
            _ => {}
        }
    }
    launch.insert("args".into(), json!(args));
    launch.insert("env".into(), json!(env));
    launch.insert("mounts".into(), json!(mounts));
    launch.insert("launched".into(), json!(launched));
    launch.insert("key_releases".into(), json!(keys));
    launch.insert("outputs".into(), json!(outputs));
    serde_json::Value::Object(launch)
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
fn register_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut pcrs = BTreeSet::new();
    let mut banks = BTreeSet::new();
    let mut others = Vec::new();
    for name in names {
        let parsed = name
            .strip_prefix("pcr")
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(index, bank)| Some((index.parse::<u32>().ok()?, bank)));
        match parsed {
            Some((index, bank)) => {
                pcrs.insert(index);
                banks.insert(bank);
            }
            None => others.push(name.to_owned()),
        }
    }
    if !pcrs.is_empty() {
        let indices = pcrs.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
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
        let present: BTreeMap<&String, &String> =
            est.registers.iter().filter(|(k, _)| layer_of(k) == Some(l)).collect();
        match r {
            Reference::NotGiven => {
                let judged = if present.is_empty() {
                    Judged::Skipped
                } else {
                    let names = register_list(present.keys().map(|k| k.as_str()));
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
                    match est.registers.get(reg) {
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
            tpm_binding_layer(r, "REPORT_DATA", est);
        }
    }
}

/// Verifies `input` and returns the attestation result. Never panics, never fails: every problem becomes
/// a failed layer with a one-line reason, and the status says contraindicated.
#[must_use]
pub fn appraise(input: &EvidenceInput, policy: &Policy, ctx: &Context<'_>) -> Ear {
    let mut est = Established::default();
    match input {
        EvidenceInput::SnpReport { report, endorsement } => {
            if let Some(rd) = snp_platform(report, endorsement, policy, ctx, &mut est) {
                raw_report_data_binding("snp", &rd, ctx, &mut est);
            }
        }
        EvidenceInput::Gce(att) => platform_gce(att, ctx, &mut est),
        EvidenceInput::Azure(az) => platform_azure(az, policy, ctx, &mut est),
        EvidenceInput::Sealroom(ev) => platform_sealroom(ev, policy, ctx, &mut est),
        EvidenceInput::TdxQuote(q) => {
            if let Some(rd) = tdx_platform(q, policy, ctx, &mut est) {
                raw_report_data_binding("tdx", &rd, ctx, &mut est);
            }
        }
        EvidenceInput::SgxQuote(q) => {
            if let Some(rd) = sgx_platform(q, policy, ctx, &mut est) {
                raw_report_data_binding("sgx", &rd, ctx, &mut est);
            }
        }
    }
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
    let appraisal = Appraisal {
        status,
        trust_vector: tv,
        policy_id: policy.id.clone(),
        evidence: input.kind().into(),
        layers: est.layers,
        warnings,
    };
    Ear::single(ctx.at, "sealroom", appraisal)
}

#[cfg(test)]
mod tests {
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
            E::KeyRelease { key_id: "k".into() },
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
        assert_eq!(w["key_releases"], json!(["k"]));
        assert_eq!(w["outputs"], json!([{"name": "output", "digest": "sha256:cc"}]));

        let mut est = Established::default();
        replay_runtime_log(&log, &[bank(vec![0; 32])], &mut est);
        assert_eq!(est.layers[0].outcome, Outcome::Failed);
        assert!(est.layers[0].claims.get("workload").is_none(), "no claims from a log that does not replay");
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
