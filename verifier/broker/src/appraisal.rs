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
    #[serde(with = "events_json")]
    pub workload_events: Vec<RuntimeEvent>,
}

impl Appraisal {
    /// Parses the JSON form (as `sealroom broker policy check --appraisal` reads it).
    ///
    /// # Errors
    /// Malformed JSON, unknown fields, or runtime events whose content does not decode.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::Input(format!("appraisal: {e}")))
    }
}

/// JSON form of runtime events: `{"event": "<name>", "content": "<hex of the CEL content TLV>"}`, the exact bytes
/// the digests cover (the event name is for readers and must agree with the content).
mod events_json {
    use sealroom_measurements::cel::RuntimeEvent;
    use sealroom_measurements::reader::Reader;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Encoded {
        event: String,
        content: String,
    }

    pub fn serialize<S: Serializer>(events: &[RuntimeEvent], s: S) -> Result<S::Ok, S::Error> {
        events
            .iter()
            .map(|e| Encoded { event: e.name().to_owned(), content: hex::encode(e.encode_content()) })
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RuntimeEvent>, D::Error> {
        use serde::de::Error;
        Vec::<Encoded>::deserialize(d)?
            .into_iter()
            .map(|e| {
                let bytes = hex::decode(&e.content).map_err(D::Error::custom)?;
                let mut r = Reader::new(&bytes);
                let event = RuntimeEvent::decode_content(&mut r).map_err(D::Error::custom)?;
                r.finish("event").map_err(D::Error::custom)?;
                if event.name() != e.event {
                    return Err(D::Error::custom(format!("event {} has {} content", e.event, event.name())));
                }
                Ok(event)
            })
            .collect()
    }
}

/// The evidence verifier, as the broker sees it.
pub trait Appraiser: Send + Sync + std::fmt::Debug {
    /// Verifies `evidence` at time `now_ms` and returns its claims.
    ///
    /// # Errors
    /// One-line reason when the evidence is not accepted.
    fn appraise(&self, evidence: &Evidence, now_ms: u64) -> Result<Appraisal>;
}

/// The broker's appraiser: the verifier's layered appraisal ([`sealroom_verifier::appraisal::appraise`]) of sealroom
/// evidence, reduced to the claims policy needs.
///
/// The verifier checks the platform (signatures, certificate chains, TCB), the binding, and replays the event
/// logs; it runs with every measured layer on `skip`, because each key's own policy judges registers (golden
/// documents) and the workload. On top of the verifier's verdict this adapter fails closed when the appraisal
/// does not prove what the broker relies on: a signed binding value, and runtime events replayed to a quoted
/// PCR 15.
#[derive(Debug, Default)]
pub struct VerifierAppraiser {
    snp_cache: sealroom_verifier::snp::EndorsementCache,
    pinned_tpm_aks: Vec<Vec<u8>>,
    tdx_collateral: Option<sealroom_verifier::tdx::VerifiedCollateral>,
    verification_time_ms: Option<u64>,
}

impl VerifierAppraiser {
    /// Also accepts TPM evidence whose AK (marshalled TPMT_PUBLIC) is one of `aks`, enrolled out of band (an
    /// on-premises TPM, or swtpm in tests): such evidence has no certificate chain to a vendor CA.
    #[must_use]
    pub fn with_pinned_tpm_aks(aks: Vec<Vec<u8>>) -> Self {
        Self { pinned_tpm_aks: aks, ..Self::default() }
    }

    /// Appraises TDX quotes (bare or inside Azure vTPM evidence) against Intel collateral verified once, here:
    /// the TCB status then comes from Intel's TCB info and QE identity, and each quote is checked against the
    /// collateral's CRLs and validity window at its own verification time. Without collateral a TDX quote's
    /// signatures and PCK chain are still verified, but it has no TCB status (policies requiring one refuse).
    #[must_use]
    pub fn with_tdx_collateral(mut self, collateral: sealroom_verifier::tdx::VerifiedCollateral) -> Self {
        self.tdx_collateral = Some(collateral);
        self
    }

    /// Verifies all evidence at this fixed time (Unix milliseconds) instead of the broker's clock: for tests
    /// and replays with recorded collateral, which expires. Nonce lifetimes still follow the broker's clock.
    #[must_use]
    pub fn with_verification_time_ms(mut self, time_ms: u64) -> Self {
        self.verification_time_ms = Some(time_ms);
        self
    }

    /// TPM evidence from an enrolled AK: the verifier's TPM layer with `AkTrust::Pinned`, the UEFI log replayed
    /// to the quoted PCRs, and the runtime log replayed to every quoted PCR 15 (at least one must be quoted).
    ///
    /// Replace with `sealroom_verifier::appraisal::appraise` once its context can carry enrolled AKs (it trusts Google's CA
    /// only today).
    fn appraise_pinned_tpm(&self, ev: &Evidence, now_ms: u64) -> Result<Appraisal> {
        use sealroom_verifier::tpm::quote::ExpectedExtraData;
        use sealroom_verifier::tpm::verify::{AkTrust, QuoteInput, verify_tpm};
        let tpm = ev.tpm.as_ref().ok_or_else(|| Error::check(VERIFIER, "evidence has no TPM part"))?;
        let quotes = [QuoteInput { attest: &tpm.attest, signature: &tpm.signature }];
        let v = verify_tpm(
            &tpm.ak_public,
            &tpm.ak_cert_chain,
            &quotes,
            &tpm.pcr_banks,
            &ExpectedExtraData::Binding(ev.nonce, ev.tee_public_key.clone()),
            &AkTrust::Pinned(tpm.ak_public.clone()),
            i64::try_from(now_ms / 1000).unwrap_or(i64::MAX),
        )
        .map_err(|e| Error::check(VERIFIER, e.reasons().join("; ")))?;
        let mut registers = BTreeMap::new();
        for b in &v.pcrs {
            for (i, val) in &b.values {
                registers.insert(format!("pcr{i}.{}", b.alg.name()), hex::encode(val));
            }
        }
        if !tpm.uefi_event_log.is_empty() {
            let replay = sealroom_measurements::tcg2::Tcg2Log::parse(&tpm.uefi_event_log)
                .and_then(|l| l.replay(true))
                .map_err(|e| Error::check(VERIFIER, format!("event log: {e}")))?;
            for b in &v.pcrs {
                for (i, want) in replay.banks.get(&b.alg).into_iter().flatten() {
                    if b.values.get(i).is_some_and(|q| q != want) {
                        return Err(Error::check(
                            VERIFIER,
                            format!(
                                "event log: pcr {i} ({}) does not replay to the quoted value",
                                b.alg.name()
                            ),
                        ));
                    }
                }
            }
        }
        let mut workload_events = Vec::new();
        if !ev.runtime_event_log.is_empty() {
            let records = sealroom_measurements::cel::CelLog::decode(&ev.runtime_event_log)?;
            let mut replayed = 0usize;
            for b in &v.pcrs {
                if let Some(q) = b.values.get(&u32::from(sealroom_measurements::cel::RUNTIME_PCR)) {
                    sealroom_measurements::cel::check_pcr(&records, b.alg, q)
                        .map_err(|e| Error::check(VERIFIER, format!("runtime log: {e}")))?;
                    replayed += 1;
                }
            }
            if replayed == 0 {
                return Err(Error::check(VERIFIER, "runtime log is not bound to a quoted PCR 15"));
            }
            if let Some(r) = records.iter().find(|r| r.pcr != sealroom_measurements::cel::RUNTIME_PCR) {
                return Err(Error::check(
                    VERIFIER,
                    format!("runtime log record {} extends PCR {}", r.recnum, r.pcr),
                ));
            }
            workload_events = records.into_iter().map(|r| r.event).collect();
        }
        Ok(Appraisal {
            platform: ev.platform,
            tcb_status: None,
            tcb_levels: BTreeMap::new(),
            debug: false,
            registers,
            binding: SignedBinding::TpmExtraData(v.claims.extra_data.clone()),
            workload_events,
        })
    }
}

const VERIFIER: &str = "verifier";

fn layer<'a>(
    sub: &'a sealroom_verifier::ear::Appraisal,
    name: &str,
) -> Option<&'a sealroom_verifier::ear::LayerResult> {
    sub.layers.iter().find(|l| l.layer == name)
}

/// The signed value carrying the binding, as the verifier read it from the hardware-signed evidence.
fn signed_binding(sub: &sealroom_verifier::ear::Appraisal) -> Option<SignedBinding> {
    let claims = [layer(sub, "platform"), layer(sub, "binding")];
    for c in claims.iter().flatten().map(|l| &l.claims) {
        if let Some(rd) = c.get("report_data").and_then(serde_json::Value::as_str) {
            return Some(SignedBinding::ReportData(rd.to_owned()));
        }
        if let Some(ed) = c.get("extra_data").and_then(serde_json::Value::as_str) {
            return Some(SignedBinding::TpmExtraData(ed.to_owned()));
        }
    }
    None
}

fn snp_tcb(platform: &serde_json::Value, levels: &mut BTreeMap<String, u64>) {
    if let Some(tcb) = platform.get("reported_tcb").and_then(serde_json::Value::as_object) {
        for (k, v) in tcb {
            if let Some(n) = v.as_u64() {
                levels.insert(format!("snp.{k}"), n);
            }
        }
    }
}

impl Appraiser for VerifierAppraiser {
    fn appraise(&self, evidence: &Evidence, now_ms: u64) -> Result<Appraisal> {
        let now_ms = self.verification_time_ms.unwrap_or(now_ms);
        if evidence.platform == sealroom_measurements::evidence::Platform::Tpm
            && evidence.tpm.as_ref().is_some_and(|t| self.pinned_tpm_aks.contains(&t.ak_public))
        {
            return self.appraise_pinned_tpm(evidence, now_ms);
        }
        use sealroom_verifier::appraisal::{Context, EvidenceInput, Policy, ReferenceValues, appraise};
        let policy = Policy {
            // Debug is a per-key policy rule in the broker, so the verifier reports it rather than refusing.
            snp: sealroom_verifier::snp::SnpPolicy {
                allow_debug: true,
                ..sealroom_verifier::snp::SnpPolicy::default()
            },
            references: ReferenceValues::skip_all(),
            id: "sealroom.keybroker.v1".into(),
            ..Policy::default()
        };
        let ctx = Context {
            at: i64::try_from(now_ms / 1000).unwrap_or(i64::MAX),
            nonce: Some(evidence.nonce.0.to_vec()),
            snp_cache: &self.snp_cache,
            tdx_collateral: self.tdx_collateral.as_ref(),
            enrolled_tpm_aks: &[],
            tpm_ek_activated: None,
        };
        let ear = appraise(&EvidenceInput::Sealroom(Box::new(evidence.clone())), &policy, &ctx);
        let failures = ear.failures();
        if let Some(first) = failures.first() {
            let more = failures.len().saturating_sub(1);
            let tail = if more > 0 { format!(" (and {more} more)") } else { String::new() };
            return Err(Error::check(VERIFIER, format!("{first}{tail}")));
        }
        if ear.status() == sealroom_verifier::ear::Status::Contraindicated {
            return Err(Error::check(VERIFIER, "evidence contraindicated"));
        }
        let sub =
            ear.submods.values().next().ok_or_else(|| Error::check(VERIFIER, "appraisal has no result"))?;
        if layer(sub, "binding").map(|l| l.outcome) != Some(sealroom_verifier::ear::Outcome::Passed) {
            return Err(Error::check(VERIFIER, "the binding of nonce and TEE key was not checked"));
        }
        let binding = signed_binding(sub)
            .ok_or_else(|| Error::check(VERIFIER, "appraisal carries no signed binding value"))?;
        let mut registers = BTreeMap::new();
        for name in ["firmware", "kernel", "workload"] {
            if let Some(map) = layer(sub, name).and_then(|l| l.claims.as_object()) {
                for (k, v) in map {
                    if let Some(v) = v.as_str() {
                        registers.insert(k.clone(), v.to_lowercase());
                    }
                }
            }
        }
        let platform_claims = layer(sub, "platform").map(|l| l.claims.clone()).unwrap_or_default();
        let mut tcb_levels = BTreeMap::new();
        snp_tcb(&platform_claims, &mut tcb_levels);
        let debug =
            platform_claims.get("debug_allowed").and_then(serde_json::Value::as_bool).unwrap_or(false);
        let workload_events = if evidence.runtime_event_log.is_empty() {
            Vec::new()
        } else {
            // The events count only when the verifier replayed them to a PCR 15 the quote covers.
            let replayed =
                layer(sub, "runtime log").map(|l| l.outcome) == Some(sealroom_verifier::ear::Outcome::Passed);
            if !replayed || !registers.keys().any(|r| r.starts_with("pcr15.")) {
                return Err(Error::check(VERIFIER, "runtime log is not bound to a quoted PCR 15"));
            }
            let records = sealroom_measurements::cel::CelLog::decode(&evidence.runtime_event_log)?;
            if let Some(r) = records.iter().find(|r| r.pcr != sealroom_measurements::cel::RUNTIME_PCR) {
                return Err(Error::check(
                    VERIFIER,
                    format!("runtime log record {} extends PCR {}", r.recnum, r.pcr),
                ));
            }
            records.into_iter().map(|r| r.event).collect()
        };
        // Only a vendor-evaluated status counts (TDX with collateral: "UpToDate", "SWHardeningNeeded", …); the
        // verifier's "unknown: …" note when it had no collateral is no status.
        let tcb_status = platform_claims
            .get("tcb_status")
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.starts_with("unknown"))
            .map(str::to_owned);
        Ok(Appraisal {
            platform: evidence.platform,
            tcb_status,
            tcb_levels,
            debug,
            registers,
            binding,
            workload_events,
        })
    }
}
