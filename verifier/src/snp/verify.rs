//! Verifying one SEV-SNP report: endorsement key chain and validity, the P-384 report signature, the
//! endorsed TCB and chip id against the report, guest policy, VMPL and minimum TCB.
//!
//! Every check runs and every failure is reported, so a refusal lists all reasons (a flipped REPORTED_TCB byte
//! shows both the broken signature and the TCB mismatch).

use serde::Serialize;

use super::endorsement::{Endorsement, EndorsementCache, KeyKind, Product};
use super::report::{SIG_ALGO_ECDSA_P384_SHA384, SigningKey, SnpReport, TcbVersion, signed_bytes};
use crate::error::{Error, Result};
use crate::x509::UnixTime;

const LAYER: &str = "snp";

/// What a report must satisfy beyond being genuine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpPolicy {
    /// Accept a guest policy that allows debugging (the host can read guest memory). Default: no.
    pub allow_debug: bool,
    /// Accept association with a migration agent. Default: no.
    pub allow_migration_agent: bool,
    /// Accept SMT. Default: yes (cloud hosts run with SMT on).
    pub allow_smt: bool,
    /// Highest acceptable VMPL (0 is the most privileged); `None` accepts any and reports it. Azure HCL
    /// reports are always held to 0, whatever this says (the paravisor runs at VMPL 0; a report from a higher
    /// VMPL was requested by the guest OS itself and binds whatever it chose).
    pub max_vmpl: Option<u32>,
    /// Lowest acceptable REPORTED_TCB, per component (boot loader, TEE, SNP, microcode, and FMC on Turin);
    /// each component below it is refused by name.
    pub min_tcb: Option<TcbVersion>,
    /// Accept VLEK-signed reports. Default: yes.
    pub allow_vlek: bool,
}

impl Default for SnpPolicy {
    fn default() -> Self {
        Self {
            allow_debug: false,
            allow_migration_agent: false,
            allow_smt: true,
            max_vmpl: None,
            min_tcb: None,
            allow_vlek: true,
        }
    }
}

/// What a verified report proves.
#[derive(Debug, Clone, Serialize)]
pub struct SnpClaims {
    /// Chip generation.
    pub product: Product,
    /// VCEK or VLEK.
    pub signing_key: KeyKind,
    /// Report version.
    pub version: u32,
    /// REPORTED_TCB.
    pub reported_tcb: TcbVersion,
    /// Launch measurement, hex.
    pub measurement: String,
    /// HOST_DATA, hex.
    pub host_data: String,
    /// REPORT_DATA, hex.
    pub report_data: String,
    /// ID key digest, hex.
    pub id_key_digest: String,
    /// VMPL.
    pub vmpl: u32,
    /// Guest policy, raw.
    pub policy: u64,
    /// Debug allowed by the guest policy.
    pub debug_allowed: bool,
    /// CHIP_ID, hex.
    pub chip_id: String,
    /// Endorsement certificate serial, hex.
    pub endorsement_serial: String,
}

/// The endorsement key to verify a report with: DER bytes, checked through the cache.
#[derive(Debug, Clone, Copy)]
pub struct Collateral<'a> {
    /// VCEK or VLEK, DER.
    pub endorsement_der: &'a [u8],
}

/// Verifies a report. `report` is the raw 1184 bytes.
///
/// # Errors
/// Every failed check ([`Error::Checks`] when more than one).
pub fn verify_report(
    report: &[u8],
    collateral: Collateral<'_>,
    cache: &EndorsementCache,
    policy: &SnpPolicy,
    at: UnixTime,
) -> Result<(SnpReport, SnpClaims)> {
    let out = verify_report_detailed(report, collateral, cache, policy, at)?;
    let mut all = out.authenticity;
    all.extend(out.configuration);
    Error::from_all(all)?;
    Ok((out.report, out.claims))
}

/// The outcome of every check, split into authenticity (signature, chain, TCB binding) and configuration
/// (guest policy, VMPL, minimum TCB), so an attestation result can say which tier failed.
#[derive(Debug)]
pub struct SnpOutcome {
    /// The parsed report.
    pub report: SnpReport,
    /// Its claims (meaningful only when `authenticity` is empty).
    pub claims: SnpClaims,
    /// Failed authenticity checks.
    pub authenticity: Vec<Error>,
    /// Failed configuration checks.
    pub configuration: Vec<Error>,
}

/// Runs every check and returns them all.
///
/// # Errors
/// Only when the report cannot be parsed or the endorsement chain does not verify.
pub fn verify_report_detailed(
    report: &[u8],
    collateral: Collateral<'_>,
    cache: &EndorsementCache,
    policy: &SnpPolicy,
    at: UnixTime,
) -> Result<SnpOutcome> {
    let parsed = SnpReport::parse(report)?;
    let endorsement = cache.get(collateral.endorsement_der)?;
    let mut authenticity = Vec::new();
    if let Err(e) = endorsement.check_validity(at) {
        authenticity.push(e);
    }
    authenticity.extend(cache.check_revocation(&endorsement, at));
    if let Err(e) = check_signature(report, &parsed, &endorsement) {
        authenticity.push(e);
    }
    authenticity.extend(check_endorsed_tcb(&parsed, &endorsement));
    let configuration = check_policy(&parsed, &endorsement, policy);
    let claims = claims(&parsed, &endorsement);
    Ok(SnpOutcome { report: parsed, claims, authenticity, configuration })
}

/// The report signature: ECDSA P-384 SHA-384 over bytes 0x000..0x2A0 with the endorsement key.
///
/// # Errors
/// "snp: VCEK signature over report invalid".
pub fn check_signature(report: &[u8], parsed: &SnpReport, endorsement: &Endorsement) -> Result<()> {
    let name = key_name(endorsement.kind);
    if parsed.signature_algo != SIG_ALGO_ECDSA_P384_SHA384 {
        return Err(Error::check(
            LAYER,
            format!("report signature algorithm {} is not ECDSA P-384", parsed.signature_algo),
        ));
    }
    let expected_kind = match parsed.signing_key() {
        SigningKey::Vcek => KeyKind::Vcek,
        SigningKey::Vlek => KeyKind::Vlek,
        SigningKey::None => return Err(Error::check(LAYER, "report is unsigned (SIGNING_KEY = none)")),
    };
    if expected_kind != endorsement.kind {
        return Err(Error::check(
            LAYER,
            format!("report says it is signed by a {}, the certificate is a {name}", key_name(expected_kind)),
        ));
    }
    endorsement
        .key
        .verify_sig(signed_bytes(report)?, &parsed.signature_fixed())
        .map_err(|_| Error::check(LAYER, format!("{name} signature over report invalid")))
}

fn key_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Vcek => "VCEK",
        KeyKind::Vlek => "VLEK",
    }
}

/// REPORTED_TCB must equal the TCB the key was issued for; CHIP_ID must equal the VCEK's hwID.
#[must_use]
pub fn check_endorsed_tcb(parsed: &SnpReport, endorsement: &Endorsement) -> Vec<Error> {
    let mut out = Vec::new();
    let name = key_name(endorsement.kind);
    let reported = TcbVersion::decode(parsed.reported_tcb, endorsement.product.turin_layout());
    let endorsed = endorsement.endorsed.tcb;
    let mut field = |what: &str, got: u8, want: u8| {
        if got != want {
            out.push(Error::check(
                LAYER,
                format!("REPORTED_TCB {what} SPL {got} does not match the {name}'s {what} SPL {want}"),
            ));
        }
    };
    field("boot loader", reported.bootloader, endorsed.bootloader);
    field("TEE", reported.tee, endorsed.tee);
    field("SNP", reported.snp, endorsed.snp);
    field("microcode", reported.microcode, endorsed.microcode);
    if let (Some(got), Some(want)) = (reported.fmc, endorsed.fmc) {
        field("FMC", got, want);
    }
    if endorsement.kind == KeyKind::Vcek && !parsed.chip_id_masked() {
        match &endorsement.endorsed.hw_id {
            Some(hw) if parsed.chip_id.starts_with(hw) => {}
            Some(hw) => out.push(Error::check(
                LAYER,
                format!(
                    "CHIP_ID {} does not match the VCEK hwID {}",
                    hex::encode(parsed.chip_id),
                    hex::encode(hw)
                ),
            )),
            None => out.push(Error::check(LAYER, "VCEK has no hwID extension")),
        }
    }
    if parsed.version >= 3 && parsed.cpuid_fam_mod_step != [0, 0, 0] {
        let family = parsed.cpuid_fam_mod_step[0];
        let model = parsed.cpuid_fam_mod_step[1];
        let product = match (family, model) {
            (0x19, 0x00..=0x0f) => Some(Product::Milan),
            (0x19, 0x10..=0x1f | 0xa0..=0xaf) => Some(Product::Genoa),
            (0x1a, 0x00..=0x11) => Some(Product::Turin),
            _ => None,
        };
        if let Some(p) = product
            && p != endorsement.product
        {
            out.push(Error::check(
                LAYER,
                format!(
                    "report CPUID says {} but the {name} is for {}",
                    p.name(),
                    endorsement.product.name()
                ),
            ));
        }
    }
    out
}

/// Guest policy bits, VMPL and minimum TCB.
#[must_use]
pub fn check_policy(parsed: &SnpReport, endorsement: &Endorsement, policy: &SnpPolicy) -> Vec<Error> {
    let mut out = Vec::new();
    let p = parsed.policy;
    if !p.reserved_one() {
        out.push(Error::check(LAYER, "guest policy bit 17 (reserved, must be 1) is 0"));
    }
    if p.debug_allowed() && !policy.allow_debug {
        out.push(Error::check(LAYER, "guest policy allows debugging (the host can read guest memory)"));
    }
    if p.migrate_ma_allowed() && !policy.allow_migration_agent {
        out.push(Error::check(LAYER, "guest policy allows a migration agent"));
    }
    if p.smt_allowed() && !policy.allow_smt {
        out.push(Error::check(LAYER, "guest policy allows SMT, which this policy forbids"));
    }
    if let Some(max) = policy.max_vmpl
        && parsed.vmpl > max
    {
        out.push(Error::check(LAYER, format!("report VMPL {} exceeds the allowed {max}", parsed.vmpl)));
    }
    if endorsement.kind == KeyKind::Vlek && !policy.allow_vlek {
        out.push(Error::check(LAYER, "report is VLEK-signed, which this policy forbids"));
    }
    if let Some(min) = &policy.min_tcb {
        let reported = TcbVersion::decode(parsed.reported_tcb, endorsement.product.turin_layout());
        // A floor with FMC given for a pre-Turin chip: FMC does not exist there, the other components count.
        for (component, got, want) in reported.components_below(min) {
            out.push(Error::check(
                LAYER,
                format!(
                    "REPORTED_TCB {component} SPL {got} is below the policy's minimum {want} ({reported})"
                ),
            ));
        }
    }
    out
}

fn claims(parsed: &SnpReport, endorsement: &Endorsement) -> SnpClaims {
    SnpClaims {
        product: endorsement.product,
        signing_key: endorsement.kind,
        version: parsed.version,
        reported_tcb: TcbVersion::decode(parsed.reported_tcb, endorsement.product.turin_layout()),
        measurement: hex::encode(parsed.measurement),
        host_data: hex::encode(parsed.host_data),
        report_data: hex::encode(parsed.report_data),
        id_key_digest: hex::encode(parsed.id_key_digest),
        vmpl: parsed.vmpl,
        policy: parsed.policy.0,
        debug_allowed: parsed.policy.debug_allowed(),
        chip_id: hex::encode(parsed.chip_id),
        endorsement_serial: match hex::encode(endorsement.chain[0].serial()) {
            s if s.is_empty() => "00".into(),
            s => s,
        },
    }
}
