//! Verifying Azure vTPM evidence: the HCL report binds HCLAkPub to the hardware report (SHA-256 of the
//! runtime claims in REPORT_DATA), the hardware report is verified as SNP (or TDX), and the vTPM quote is
//! verified with HCLAkPub against the nonce and the claimed PCRs.

use std::collections::BTreeMap;

use sealroom_measurements::evidence::{HashAlg, PcrBank};
use serde::Serialize;

use super::evidence::AzureEvidence;
use super::hcl::{HclReport, HwReportType, RuntimeClaims};
use crate::error::{Error, Result};
use crate::snp::{Collateral, EndorsementCache, SnpClaims, SnpPolicy, verify_report};
use crate::tpm::quote::verify_signature;
use crate::tpm::quote::{
    ExpectedExtraData, check_extra_data, check_pcr_digest, quoted_banks, verify_rsa_raw,
};
use crate::tpm::structures::{Attest, Public, PublicKey, Signature};
use crate::x509::UnixTime;

const LAYER: &str = "azure";

/// What verified Azure evidence proves.
#[derive(Debug, Clone, Serialize)]
pub struct AzureClaims {
    /// SNP or TDX.
    pub hardware: HwReportType,
    /// The SNP report's claims (SNP CVMs).
    pub snp: Option<SnpClaims>,
    /// The TD quote's REPORT_DATA (TDX CVMs), hex.
    pub td_report_data: Option<String>,
    /// vm-configuration from the runtime claims.
    pub vm_configuration: serde_json::Value,
    /// The quoted PCRs (SHA-256), index → hex.
    pub pcrs: BTreeMap<u32, String>,
    /// The quote's extraData, hex.
    pub extra_data: String,
}

/// The verified hardware part, typed.
#[derive(Debug, Clone)]
pub enum AzureHardware {
    /// The HCL report's SNP report.
    Snp(crate::claims::SnpClaims),
    /// The TD quote over the HCL report.
    Tdx(crate::claims::TdxClaims),
}

/// Verified Azure evidence.
#[derive(Debug, Clone)]
pub struct VerifiedAzure {
    /// Claims, for display.
    pub claims: AzureClaims,
    /// The hardware part, typed.
    pub hardware: AzureHardware,
    /// The vTPM quote, typed.
    pub vtpm: crate::claims::TpmClaims,
    /// The PCR values the quote proves.
    pub pcrs: Vec<PcrBank>,
}

/// How the TDX part is checked: a function verifying a TD quote and returning its REPORT_DATA and claims.
/// Supplied by the caller (the TDX verifier with its collateral), so this module needs no Intel collateral of
/// its own.
pub type TdQuoteCheck<'a> = &'a dyn Fn(&[u8]) -> Result<([u8; 64], crate::claims::TdxClaims)>;

/// Verifies Azure evidence against a nonce (the TPM quote's extraData); `None` leaves freshness unchecked.
///
/// # Errors
/// Every failed check ([`Error::Checks`] when several).
pub fn verify_azure(
    ev: &AzureEvidence,
    nonce: Option<&[u8]>,
    snp_cache: &EndorsementCache,
    snp_policy: &SnpPolicy,
    td_quote_check: Option<TdQuoteCheck<'_>>,
    at: UnixTime,
) -> Result<VerifiedAzure> {
    let hcl = HclReport::parse(&ev.hcl_report)?;
    let mut failures = Vec::new();
    if let Err(e) = hcl.check_var_data_binding() {
        failures.push(e);
    }
    // Hardware part.
    let mut snp = None;
    let mut hardware = None;
    let mut td_report_data = None;
    match hcl.report_type {
        HwReportType::Snp => match &ev.vcek {
            None => failures.push(Error::check(LAYER, "SNP evidence without a VCEK")),
            Some(vcek) => match verify_report(
                &hcl.hw_report,
                Collateral { endorsement_der: vcek },
                snp_cache,
                &azure_snp_policy(snp_policy),
                at,
            ) {
                Ok((report, c)) => {
                    hardware = Some(AzureHardware::Snp(crate::claims::SnpClaims::from_report(
                        &report,
                        c.product,
                        c.signing_key,
                    )));
                    snp = Some(c);
                }
                Err(e) => failures.push(e),
            },
        },
        HwReportType::Tdx => match (&ev.td_quote, td_quote_check) {
            (None, _) => failures.push(Error::check(LAYER, "TDX evidence without a TD quote")),
            (Some(_), None) => {
                failures.push(Error::check(LAYER, "TD quote not verified: no TDX verifier/collateral given"));
            }
            (Some(q), Some(check)) => match check(q) {
                Ok((rd, td)) => {
                    hardware = Some(AzureHardware::Tdx(td));
                    let ours = hcl.report_data()?;
                    if rd != ours {
                        failures.push(Error::check(
                            LAYER,
                            "TD quote REPORT_DATA does not match the HCL TDREPORT",
                        ));
                    }
                    td_report_data = Some(hex::encode(rd));
                }
                Err(e) => failures.push(e),
            },
        },
    }
    // vTPM part.
    let claims_json = match RuntimeClaims::parse(&hcl.var_data) {
        Ok(c) => Some(c),
        Err(e) => {
            failures.push(e);
            None
        }
    };
    let mut pcrs = Vec::new();
    let mut extra_data = String::new();
    let mut quote_info = None;
    if let Some(rc) = &claims_json {
        let exponent = rc.ak_exponent.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        match u32::try_from(exponent) {
            Err(_) => failures.push(Error::check(LAYER, "HCLAkPub exponent too large")),
            Ok(e) => {
                // When the evidence names its AK, a key other than HCLAkPub is refused by name: the generic
                // signature failure would not say that the quote came from a key the hardware never vouched for.
                let ak_mismatch = ev.ak_public.as_deref().map(|ak| quote_ak_is_hcl_ak(ak, &rc.ak_modulus, e));
                // Azure tooling ships the bare RSA signature; sealroom's agent ships the TPMT_SIGNATURE.
                let result = match ak_mismatch {
                    Some(Err(err)) => Err(err),
                    Some(Ok(())) | None => match Signature::parse(&ev.quote.signature) {
                        Ok(sig) => {
                            let ak = PublicKey::Rsa { modulus: rc.ak_modulus.clone(), exponent: e };
                            verify_signature(&ev.quote.message, &sig, &ak)
                        }
                        Err(_) => verify_rsa_raw(&ev.quote.message, &ev.quote.signature, &rc.ak_modulus, e),
                    },
                };
                if let Err(err) = result {
                    failures.push(err);
                }
            }
        }
        if let Some(ud) = &rc.user_data
            && let Some(nonce) = nonce
            && ud.iter().any(|b| *b != 0)
        {
            let mut want = nonce.to_vec();
            want.resize(ud.len().max(nonce.len()), 0);
            if *ud != want {
                failures.push(Error::check(LAYER, "HCL user-data does not match the nonce"));
            }
        }
    }
    match Attest::parse(&ev.quote.message) {
        Err(e) => failures.push(e),
        Ok(attest) => {
            if let Err(e) = check_extra_data(
                &attest,
                &nonce.map_or(ExpectedExtraData::Unchecked, |n| ExpectedExtraData::Exact(n.to_vec())),
            ) {
                failures.push(e);
            }
            let bank = PcrBank {
                alg: HashAlg::Sha256,
                values: (0u32..).zip(ev.quote.pcrs.iter().cloned()).collect(),
            };
            if let Err(e) = check_pcr_digest(&attest, std::slice::from_ref(&bank), HashAlg::Sha256) {
                failures.push(e);
            }
            pcrs = quoted_banks(&attest, &[bank]);
            extra_data = hex::encode(&attest.extra_data);
            quote_info = Some((attest.firmware_version, attest.clock_info.reset_count));
        }
    }
    Error::from_all(failures)?;
    // Unreachable: without a verified hardware report a failure was recorded above.
    let hardware = hardware.ok_or_else(|| Error::check(LAYER, "hardware report not verified"))?;
    let vtpm = crate::claims::TpmClaims {
        ak: crate::claims::AkTrustClaims::AzureHcl,
        quoted_banks: pcrs.iter().map(|b| b.alg).collect(),
        firmware_version: quote_info.map(|(f, _)| f),
        reset_count: quote_info.map(|(_, r)| r),
    };
    let claims = AzureClaims {
        hardware: hcl.report_type,
        snp,
        td_report_data,
        vm_configuration: claims_json.map(|c| c.vm_configuration).unwrap_or_default(),
        pcrs: pcrs
            .first()
            .map(|b| b.values.iter().map(|(i, v)| (*i, hex::encode(v))).collect())
            .unwrap_or_default(),
        extra_data,
    };
    Ok(VerifiedAzure { claims, hardware, vtpm, pcrs })
}

/// The caller's SNP policy with VMPL held to 0: on Azure the paravisor (HCL) runs at VMPL 0 and asks for the
/// report that binds HCLAkPub; the guest OS runs at a higher VMPL and can ask for a report binding any runtime
/// claims it likes (its own AK), so only a VMPL 0 report vouches for the vTPM.
fn azure_snp_policy(policy: &SnpPolicy) -> SnpPolicy {
    SnpPolicy { max_vmpl: Some(0), ..policy.clone() }
}

/// Checks that the quote's AK (a marshalled TPMT_PUBLIC) is the RSA key HCLAkPub (TPM exponent 0 = 65537).
fn quote_ak_is_hcl_ak(ak_public: &[u8], hcl_modulus: &[u8], hcl_exponent: u32) -> Result<()> {
    let normalise = |e: u32| if e == 0 { 65_537 } else { e };
    let strip = |m: &[u8]| -> Vec<u8> { m.iter().copied().skip_while(|b| *b == 0).collect() };
    let ak = Public::parse(ak_public).map_err(|e| e.within("azure vtpm", "quote AK"))?;
    match ak.key {
        PublicKey::Rsa { modulus, exponent }
            if strip(&modulus) == strip(hcl_modulus) && normalise(exponent) == normalise(hcl_exponent) =>
        {
            Ok(())
        }
        _ => Err(Error::check("azure vtpm", "quote AK is not the HCL report's HCLAkPub")),
    }
}
