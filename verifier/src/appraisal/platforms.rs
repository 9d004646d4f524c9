//! The platform layer of each kind of evidence: signatures, chains, TCB and guest policy, then the typed
//! platform claims ([`crate::claims::PlatformClaims`]), the registers and the signed binding value.

use sealroom_measurements::binding::{binding_digest, check_report_data, check_tpm_extra_data};
use sealroom_measurements::evidence::{Evidence, HashAlg, PcrBank, Platform, TpmEvidence};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::replay::{replay_ccel, replay_event_log, replay_runtime_log, replay_runtime_rtmr3};
use super::{
    Ctx, Established, Policy, UNTRUSTED_AK, binding_layer, layer, no_collateral_warning,
    raw_report_data_binding, reasons,
};
use crate::azure::evidence::{AzureEvidence, AzureQuote};
use crate::azure::verify::{AzureHardware, verify_azure};
use crate::claims::{
    AkTrustClaims, HexBytes, PlatformClaims, Register, SignedBinding, SnpClaims, TdxClaims, TpmClaims,
};
use crate::ear::{LayerResult, Outcome};
use crate::error::{Error, Result};
use crate::snp::{Collateral, verify_report_detailed};
use crate::tdx::{verify_quote_signatures, verify_quote_signatures_under, verify_tdx_quote};
use crate::tpm::gce_proto::GceAttestation;
use crate::tpm::quote::ExpectedExtraData;
use crate::tpm::verify::{AkTrust, QuoteInput, VerifiedTpm, verify_tpm};

pub(super) fn add_pcrs(est: &mut Established, banks: &[PcrBank]) {
    for b in banks {
        for (i, v) in &b.values {
            if let Ok(index) = u8::try_from(*i) {
                est.registers.insert(Register::Pcr { index, bank: b.alg }, HexBytes(v.clone()));
            }
        }
    }
}

/// The typed claims of a verified TPM quote; `None` when the AK's identity is missing (cannot happen for a
/// quote that verified under `trust`).
fn tpm_claims(v: &VerifiedTpm, trust: &AkTrust, ak_public: &[u8]) -> Option<TpmClaims> {
    let ak = match trust {
        AkTrust::GoogleCa => v.claims.ak.clone().map(AkTrustClaims::GoogleCa),
        AkTrust::Pinned(_) => {
            Some(AkTrustClaims::Enrolled { ak_public_sha256: HexBytes(Sha256::digest(ak_public).to_vec()) })
        }
        AkTrust::EkCertified(_) => v.claims.ek.clone().map(AkTrustClaims::EkCertified),
    }?;
    Some(TpmClaims {
        ak,
        quoted_banks: v.pcrs.iter().map(|b| b.alg).collect(),
        firmware_version: Some(v.claims.firmware_version),
        reset_count: Some(v.claims.reset_count),
    })
}

/// Verifies an SEV-SNP report. Returns its REPORT_DATA (for the binding layer) and, when the report is
/// authentic (signature, chain, TCB binding), its typed claims.
pub(super) fn snp_platform(
    report: &[u8],
    endorsement: &[u8],
    policy: &Policy,
    ctx: &Ctx<'_>,
    est: &mut Established,
) -> Option<([u8; 64], Option<SnpClaims>)> {
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
            let authentic = out.authenticity.is_empty();
            est.identity_ok = authentic;
            est.hardware_ok = authentic;
            est.config_ok = out.configuration.is_empty();
            est.tee = true;
            let mut failures = reasons(&out.authenticity);
            failures.extend(reasons(&out.configuration));
            let typed = authentic.then(|| {
                est.registers.insert(Register::SnpMeasurement, out.report.measurement.into());
                SnpClaims::from_report(&out.report, out.claims.product, out.claims.signing_key)
            });
            let claims = serde_json::to_value(&out.claims).unwrap_or_default();
            est.layers.push(layer("platform", "policy", claims, failures));
            Some((out.report.report_data, typed))
        }
    }
}

fn add_td_registers(est: &mut Established, td: &TdxClaims) {
    est.registers.insert(Register::Mrtd, td.mr_td.clone());
    for (i, r) in (0u8..).zip(td.rtmr.iter()) {
        est.registers.insert(Register::Rtmr(i), r.clone());
    }
}

/// Verifies a TD quote: with collateral fully (TCB status), without only signatures and the PCK chain (the TD
/// attributes are read from the signed body either way).
pub(super) fn tdx_platform(
    quote: &[u8],
    policy: &Policy,
    ctx: &Ctx<'_>,
    est: &mut Established,
) -> Option<([u8; 64], TdxClaims)> {
    let (reference, verified) = match ctx.tdx_collateral {
        Some(collateral) => ("intel collateral", check_td_quote(quote, Some(collateral), ctx)),
        None => ("intel root", check_td_quote(quote, None, ctx)),
    };
    match verified {
        Err(e) => {
            est.layers.push(layer("platform", reference, json!({}), e.reasons()));
            None
        }
        Ok((rd, td)) => {
            est.identity_ok = true;
            est.hardware_ok = true;
            est.config_ok = true;
            est.tee = true;
            tdx_warnings(&td, policy, est);
            add_td_registers(est, &td);
            let tcb_status = td.tcb.as_ref().map_or_else(
                || {
                    "unknown: no Intel collateral given (signatures and PCK chain verified, no CRLs)"
                        .to_owned()
                },
                |t| t.status.as_str().to_owned(),
            );
            let claims = json!({
                "version": td.quote_version,
                "tcb_status": tcb_status,
                "advisory_ids": td.tcb.as_ref().map(|t| t.advisory_ids.clone()).unwrap_or_default(),
                "fmspc": td.fmspc,
                "mr_seam": td.mr_seam,
                "td_attributes": td.td_attributes.raw,
                "debug": td.td_attributes.debug,
                "report_data": hex::encode(rd),
            });
            est.layers.push(layer("platform", reference, claims, vec![]));
            Some((rd, td))
        }
    }
}

/// Why a verified TD quote is only a warning: no collateral, or a TCB status the policy does not accept.
fn tdx_warnings(td: &TdxClaims, policy: &Policy, est: &mut Established) {
    match &td.tcb {
        None => est.hardware_warnings.push(no_collateral_warning("tdx")),
        Some(t) => est.hardware_warnings.extend(policy.tcb_warning("tdx", t.status, &t.advisory_ids)),
    }
}

/// A TD quote's REPORT_DATA and typed claims: against Intel collateral when given, else signatures and PCK
/// chain only.
fn check_td_quote(
    quote: &[u8],
    collateral: Option<&crate::tdx::VerifiedCollateral>,
    ctx: &Ctx<'_>,
) -> Result<([u8; 64], TdxClaims)> {
    if let Some(c) = collateral {
        let td = verify_tdx_quote(quote, c, ctx.at)?;
        return Ok((td.report_data, TdxClaims::from_verified(&td)));
    }
    let signed = match ctx.tdx_root {
        Some(root) => verify_quote_signatures_under(quote, root, ctx.at)?,
        None => verify_quote_signatures(quote, ctx.at)?,
    };
    match &signed.quote.body {
        crate::tdx::Body::Td(td) => Ok((
            td.report_data,
            TdxClaims::from_td_report(signed.quote.version, td, signed.pck_extension.fmspc, None),
        )),
        _ => Err(Error::check("tdx", "not a TD quote")),
    }
}

pub(super) fn platform_gce(att: &GceAttestation, ctx: &Ctx<'_>, est: &mut Established) {
    let quotes: Vec<_> =
        att.quotes.iter().map(|q| QuoteInput { attest: &q.attest, signature: &q.signature }).collect();
    let banks: Vec<_> = att.quotes.iter().map(|q| q.bank.clone()).collect();
    // Freshness is judged in its own layer: verify the quotes without it, then compare extraData.
    let trust = AkTrust::GoogleCa;
    match verify_tpm(
        &att.ak_public,
        &att.ak_cert_chain,
        &quotes,
        &banks,
        &ExpectedExtraData::Unchecked,
        &trust,
        ctx.at,
    ) {
        Err(e) => est.layers.push(layer("platform", "google ak ca", json!({}), e.reasons())),
        Ok(v) => {
            let Some(typed) = tpm_claims(&v, &trust, &att.ak_public) else {
                est.layers.push(layer(
                    "platform",
                    "google ak ca",
                    json!({}),
                    vec!["tpm quote: AK identity missing".into()],
                ));
                return;
            };
            est.identity_ok = true;
            est.hardware_ok = true;
            est.config_ok = true;
            add_pcrs(est, &v.pcrs);
            est.platform = Some(PlatformClaims::Tpm(typed));
            let extra = hex::decode(&v.claims.extra_data).unwrap_or_default();
            est.binding = Some(SignedBinding::TpmExtraData(HexBytes(extra.clone())));
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
                    let r = if extra == *n {
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
                    binding_layer(r, "extraData", est);
                }
            }
            replay_event_log(&att.event_log, &v.pcrs, est);
        }
    }
}

/// Verifies Azure vTPM evidence; returns the PCR banks its quote proves.
pub(super) fn platform_azure(
    ev: &AzureEvidence,
    policy: &Policy,
    ctx: &Ctx<'_>,
    est: &mut Established,
) -> Option<Vec<PcrBank>> {
    let td_check = |q: &[u8]| check_td_quote(q, ctx.tdx_collateral, ctx);
    let result = verify_azure(ev, ctx.nonce.as_deref(), ctx.snp_cache, &policy.snp, Some(&td_check), ctx.at);
    match result {
        Err(e) => {
            est.layers.push(layer("platform", "policy", json!({}), e.reasons()));
            None
        }
        Ok(v) => {
            est.identity_ok = true;
            est.hardware_ok = true;
            est.config_ok = true;
            est.tee = true;
            add_pcrs(est, &v.pcrs);
            est.platform = Some(match v.hardware {
                AzureHardware::Snp(snp) => {
                    est.registers.insert(Register::SnpMeasurement, snp.measurement.clone());
                    PlatformClaims::AzureSnpVtpm { snp, vtpm: v.vtpm }
                }
                AzureHardware::Tdx(tdx) => {
                    tdx_warnings(&tdx, policy, est);
                    PlatformClaims::AzureTdxVtpm { tdx, vtpm: v.vtpm }
                }
            });
            est.binding = Some(SignedBinding::TpmExtraData(HexBytes(
                hex::decode(&v.claims.extra_data).unwrap_or_default(),
            )));
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
            Some(v.pcrs)
        }
    }
}

/// The TPM part of sealroom evidence: the AK trusted through an activated EK, an enrolled AK or Google's AK CA;
/// extraData must bind the nonce and the TEE key; the UEFI log replays to the quoted PCRs. Returns the claims and
/// the PCR banks the quote proves.
fn sealroom_tpm(
    ev: &Evidence,
    tpm: &TpmEvidence,
    ctx: &Ctx<'_>,
    est: &mut Established,
) -> Option<(TpmClaims, Vec<PcrBank>)> {
    let quotes = [QuoteInput { attest: &tpm.attest, signature: &tpm.signature }];
    let (trust, trust_name) = if let Some(a) =
        ctx.tpm_ek_activated.filter(|a| a.ak_public() == tpm.ak_public.as_slice())
    {
        (AkTrust::EkCertified(a.clone()), "ek-certified ak")
    } else if ctx.enrolled_tpm_aks.contains(&tpm.ak_public) {
        (AkTrust::Pinned(tpm.ak_public.clone()), "enrolled ak")
    } else if tpm.ak_cert_chain.is_empty() && crate::tpm::structures::Public::parse(&tpm.ak_public).is_ok() {
        // A well-formed AK with no way left to trust it: never on first use. (A malformed one is refused for
        // its structure by the quote verification below.)
        est.layers.push(layer("platform", "ak trust", json!({}), vec![UNTRUSTED_AK.into()]));
        return None;
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
        Err(e) => {
            est.layers.push(layer("platform", trust_name, json!({}), e.reasons()));
            None
        }
        Ok(v) => {
            let Some(typed) = tpm_claims(&v, &trust, &tpm.ak_public) else {
                est.layers.push(layer(
                    "platform",
                    trust_name,
                    json!({}),
                    vec!["tpm quote: AK identity missing".into()],
                ));
                return None;
            };
            add_pcrs(est, &v.pcrs);
            est.layers.push(layer(
                "platform",
                trust_name,
                serde_json::to_value(&v.claims).unwrap_or_default(),
                vec![],
            ));
            let extra = hex::decode(&v.claims.extra_data).unwrap_or_default();
            let r = check_tpm_extra_data(&extra, &ev.nonce, &ev.tee_public_key).map_err(Error::from);
            binding_layer(r, "extraData", est);
            est.binding.get_or_insert(SignedBinding::TpmExtraData(HexBytes(extra)));
            replay_event_log(&tpm.uefi_event_log, &v.pcrs, est);
            Some((typed, v.pcrs))
        }
    }
}

pub(super) fn platform_sealroom(ev: &Evidence, policy: &Policy, ctx: &Ctx<'_>, est: &mut Established) {
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
    let missing = |est: &mut Established, what: &str| {
        est.layers.push(layer(
            "platform",
            "policy",
            json!({}),
            vec![format!(
                "evidence: platform {} without its {what} part",
                crate::claims::platform_name(ev.platform)
            )],
        ));
    };
    match ev.platform {
        Platform::SevSnp => {
            let Some(snp) = &ev.sev_snp else { return missing(est, "sev-snp") };
            let Some(vcek) = snp.cert_chain.first() else {
                est.layers.push(layer(
                    "platform",
                    "policy",
                    json!({}),
                    vec!["snp: evidence carries no VCEK/VLEK".into()],
                ));
                return;
            };
            let Some((rd, report)) = snp_platform(&snp.report, vcek, policy, ctx, est) else { return };
            let r = check_report_data(&rd, &ev.nonce, &ev.tee_public_key).map_err(Error::from);
            binding_layer(r, "REPORT_DATA", est);
            let Some(report) = report else { return };
            est.binding = Some(SignedBinding::ReportData(rd.into()));
            // On GCP the vTPM's PCR 15 carries the runtime log (no SNP register can be extended at runtime).
            let vtpm = match &ev.tpm {
                None => None,
                Some(tpm) => match sealroom_tpm(ev, tpm, ctx, est) {
                    None => return,
                    Some((claims, pcrs)) => {
                        replay_runtime_log(&ev.runtime_event_log, &pcrs, est);
                        Some(claims)
                    }
                },
            };
            est.platform = Some(PlatformClaims::SevSnp { report, vtpm });
        }
        Platform::Tpm => {
            let Some(tpm) = &ev.tpm else { return missing(est, "tpm") };
            if let Some((claims, pcrs)) = sealroom_tpm(ev, tpm, ctx, est) {
                est.identity_ok = true;
                est.hardware_ok = true;
                est.config_ok = true;
                est.platform = Some(PlatformClaims::Tpm(claims));
                replay_runtime_log(&ev.runtime_event_log, &pcrs, est);
            }
        }
        Platform::AzureSnpVtpm | Platform::AzureTdxVtpm => {
            let Some(az) = &ev.azure else { return missing(est, "azure") };
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
            let binding = binding_digest(&ev.nonce, &ev.tee_public_key).to_vec();
            let inner = Ctx { nonce: Some(binding), ..ctx.clone() };
            if let Some(pcrs) = platform_azure(&converted, policy, &inner, est) {
                if est.platform.as_ref().map(PlatformClaims::platform) != Some(ev.platform) {
                    est.layers.push(layer(
                        "platform",
                        "policy",
                        json!({}),
                        vec![format!(
                            "azure: evidence says {} but its HCL report is {}",
                            crate::claims::platform_name(ev.platform),
                            est.platform.as_ref().map_or("unverified", PlatformClaims::name)
                        )],
                    ));
                }
                replay_runtime_log(&ev.runtime_event_log, &pcrs, est);
            }
        }
        Platform::Tdx => {
            let Some(tdx) = &ev.tdx else { return missing(est, "tdx") };
            if let Some((rd, td)) = tdx_platform(&tdx.quote, policy, ctx, est) {
                let r = check_report_data(&rd, &ev.nonce, &ev.tee_public_key).map_err(Error::from);
                binding_layer(r, "REPORT_DATA", est);
                est.binding = Some(SignedBinding::ReportData(rd.into()));
                est.platform = Some(PlatformClaims::Tdx(td));
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

/// A raw SEV-SNP report.
pub(super) fn platform_snp_report(
    report: &[u8],
    endorsement: &[u8],
    policy: &Policy,
    ctx: &Ctx<'_>,
    est: &mut Established,
) {
    if let Some((rd, claims)) = snp_platform(report, endorsement, policy, ctx, est) {
        raw_report_data_binding("snp", &rd, ctx, est);
        if let Some(report) = claims {
            est.binding = Some(SignedBinding::ReportData(rd.into()));
            est.platform = Some(PlatformClaims::SevSnp { report, vtpm: None });
        }
    }
}

/// A raw TD quote.
pub(super) fn platform_td_quote(quote: &[u8], policy: &Policy, ctx: &Ctx<'_>, est: &mut Established) {
    if let Some((rd, td)) = tdx_platform(quote, policy, ctx, est) {
        raw_report_data_binding("tdx", &rd, ctx, est);
        est.binding = Some(SignedBinding::ReportData(rd.into()));
        est.platform = Some(PlatformClaims::Tdx(td));
    }
}

/// A raw SGX enclave quote: with collateral fully (QE identity, TCB status, debug enclaves refused), without only
/// its signatures and PCK chain. The enclave's identity (MRENCLAVE, MRSIGNER) is the workload. SGX is not a
/// platform the key broker releases to, so the appraisal has no platform claims.
pub(super) fn platform_sgx_quote(quote: &[u8], policy: &Policy, ctx: &Ctx<'_>, est: &mut Established) {
    if let Some(rd) = sgx_platform(quote, policy, ctx, est) {
        raw_report_data_binding("sgx", &rd, ctx, est);
    }
}

fn sgx_platform(quote: &[u8], policy: &Policy, ctx: &Ctx<'_>, est: &mut Established) -> Option<[u8; 64]> {
    let enclave = |est: &mut Established, mr_enclave: &[u8; 32], mr_signer: &[u8; 32]| {
        est.identity_ok = true;
        est.hardware_ok = true;
        est.config_ok = true;
        est.tee = true;
        est.registers.insert(Register::SgxMrEnclave, HexBytes(mr_enclave.to_vec()));
        est.registers.insert(Register::SgxMrSigner, HexBytes(mr_signer.to_vec()));
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
