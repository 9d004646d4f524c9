//! Intel TDX and SGX DCAP quote verification, offline.
//!
//! Two steps, so repeated evidence from the same platforms is cheap:
//! 1. [`Collateral::load`] + [`Collateral::verify`] → [`VerifiedCollateral`]: the root CA CRL, PCK CRLs, their
//!    issuer chains, the TCB infos and QE identities with their signing chain, all verified once at a time.
//! 2. [`verify_quote`] per quote: PCK leaf under a verified PCK CA and not revoked, QE report signature by the
//!    PCK key, attestation-key binding in the QE report, quote signature by the attestation key (three ECDSA
//!    P-256 checks), then QE identity, TCB level and status, and TD attributes.
//!
//! ```no_run
//! # fn main() -> sealroom_verifier::Result<()> {
//! use sealroom_verifier::tdx::{Collateral, VerifiedQuote, verify_quote};
//! let at = sealroom_verifier::x509::parse_time("2025-07-19T10:00:34Z")?;
//! let collateral = Collateral::load(std::path::Path::new("collateral.json"))?.verify(at)?;
//! let quote = std::fs::read("quote.bin").map_err(|e| sealroom_verifier::Error::Input(e.to_string()))?;
//! if let VerifiedQuote::Tdx(td) = verify_quote(&quote, &collateral, at)? {
//!     println!("{} {}", td.tcb_status, hex::encode(td.mr_td));
//! }
//! # Ok(()) }
//! ```
//!
//! Every refusal is one line: "tdx: PCK certificate revoked (serial …)", "tdx: TD is in debug mode …".

pub mod collateral;
pub mod fuzzing;
pub mod pck;
pub mod quote;
pub mod tcb;
#[cfg(any(test, feature = "test-anchors"))]
pub mod test_pki;

use aws_lc_rs::digest;

pub use collateral::{Collateral, INTEL_SGX_ROOT_CA_PEM, IntelRoot, VerifiedCollateral, intel_root};
pub use pck::PckExtension;
pub use quote::{Body, EnclaveReport, INTEL_QE_VENDOR_ID, Quote, TdReport, TeeType};
pub use tcb::{QeIdentity, TcbInfo, TcbLevel, TcbStatus};

use crate::x509::{Certificate, Curve, PublicKey, SignatureAlgorithm, UnixTime, verify_chain};
use crate::{Error, Result};

const LAYER: &str = "tdx";

fn fail(reason: impl Into<String>) -> Error {
    Error::check(LAYER, reason)
}

/// What a verified TDX quote proves about the TD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTdxQuote {
    /// Quote format version (4 or 5).
    pub version: u16,
    /// v5 body type (2 = TD 1.0, 3 = TD 1.5), `None` for v4.
    pub body_type: Option<u16>,
    /// Final TCB status (platform ⊕ TDX module ⊕ QE, and the TD 1.5 relaunch rule). Never `Revoked`.
    pub tcb_status: TcbStatus,
    /// Intel security advisories that apply, from every level that contributed.
    pub advisory_ids: Vec<String>,
    /// The platform TCB level's status alone (before converging with the QE).
    pub platform_tcb_status: TcbStatus,
    /// The QE's TCB status.
    pub qe_tcb_status: TcbStatus,
    /// tcbDate of the matched platform level (oldest of platform and module).
    pub tcb_date: UnixTime,
    /// TCB evaluation data number of the TCB info used.
    pub tcb_evaluation_data_number: u32,
    /// TEE_TCB_SVN.
    pub tee_tcb_svn: [u8; 16],
    /// TEE_TCB_SVN2 (TD 1.5).
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// MRSEAM (TDX module measurement).
    pub mr_seam: [u8; 48],
    /// MRTD: the TD's initial contents (firmware).
    pub mr_td: [u8; 48],
    /// RTMR0..3.
    pub rtmr: [[u8; 48]; 4],
    /// MRCONFIGID.
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
    /// TDATTRIBUTES (checked: no debug, SEPT_VE_DISABLE set, not migratable, no reserved bits).
    pub td_attributes: [u8; 8],
    /// XFAM.
    pub xfam: [u8; 8],
    /// MRSERVICETD (TD 1.5; checked to be zero).
    pub mr_service_td: Option<[u8; 48]>,
    /// REPORTDATA: the 64 bytes the TD bound (nonce and key binding, see `sealroom_measurements::binding`).
    pub report_data: [u8; 64],
    /// The platform's FMSPC.
    pub fmspc: [u8; 6],
    /// Until when this verdict's inputs are valid: earliest of collateral expiry and PCK notAfter.
    pub collateral_expiry: UnixTime,
}

/// What a verified SGX quote proves about the enclave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSgxQuote {
    /// Quote format version (3).
    pub version: u16,
    /// Final TCB status (platform ⊕ QE). Never `Revoked`.
    pub tcb_status: TcbStatus,
    /// Advisories.
    pub advisory_ids: Vec<String>,
    /// Platform level status alone.
    pub platform_tcb_status: TcbStatus,
    /// QE status.
    pub qe_tcb_status: TcbStatus,
    /// tcbDate of the matched level.
    pub tcb_date: UnixTime,
    /// TCB evaluation data number.
    pub tcb_evaluation_data_number: u32,
    /// MRENCLAVE.
    pub mr_enclave: [u8; 32],
    /// MRSIGNER.
    pub mr_signer: [u8; 32],
    /// ISVPRODID.
    pub isv_prod_id: u16,
    /// ISVSVN.
    pub isv_svn: u16,
    /// ATTRIBUTES (checked: not debug).
    pub attributes: [u8; 16],
    /// MISCSELECT.
    pub misc_select: u32,
    /// CPUSVN.
    pub cpu_svn: [u8; 16],
    /// REPORTDATA.
    pub report_data: [u8; 64],
    /// FMSPC.
    pub fmspc: [u8; 6],
    /// Earliest of collateral expiry and PCK notAfter.
    pub collateral_expiry: UnixTime,
}

/// A verified DCAP quote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant, reason = "built once per quote and matched at once; boxing buys nothing")]
pub enum VerifiedQuote {
    /// A TD.
    Tdx(VerifiedTdxQuote),
    /// An SGX enclave.
    Sgx(VerifiedSgxQuote),
}

/// A quote whose signatures verified (PCK chain, QE report, binding, quote) without TCB collateral.
#[derive(Debug, Clone)]
pub struct SignedQuote<'a> {
    /// The parsed quote.
    pub quote: Quote<'a>,
    /// The PCK leaf certificate.
    pub pck: Certificate,
    /// The PCK's SGX extension.
    pub pck_extension: PckExtension,
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The checks every quote gets once its PCK leaf is trusted: QE report signature, attestation key binding,
/// quote signature.
fn check_quote_signatures(quote: &Quote<'_>, pck: &Certificate) -> Result<()> {
    check_vendor(quote)?;
    pck.public_key()
        .verify(SignatureAlgorithm::EcdsaSha256Fixed, quote.qe_report_bytes, &quote.qe_report_signature)
        .map_err(|_| fail("QE report signature invalid (not signed by the PCK key)"))?;
    check_attestation_key(quote)
}

fn check_vendor(quote: &Quote<'_>) -> Result<()> {
    if quote.qe_vendor_id != INTEL_QE_VENDOR_ID {
        return Err(fail(format!("QE vendor id {} is not Intel's", hex::encode(quote.qe_vendor_id))));
    }
    Ok(())
}

/// The per-quote part: the QE report binds the attestation key, which signed the quote's header and body.
fn check_attestation_key(quote: &Quote<'_>) -> Result<()> {
    check_vendor(quote)?;
    let binding = sha256(&[&quote.attestation_key, quote.qe_auth_data]);
    let (head, tail) = quote.qe_report.report_data.split_at(32);
    if head != binding || tail.iter().any(|&b| b != 0) {
        return Err(fail(
            "QE report does not bind the attestation key (REPORTDATA != SHA-256(attestation key || QE auth data) || 0^32)",
        ));
    }
    let key = PublicKey::ec_from_xy(Curve::P256, &quote.attestation_key)
        .map_err(|e| e.within(LAYER, "attestation key"))?;
    key.verify(SignatureAlgorithm::EcdsaSha256Fixed, quote.signed_bytes, &quote.signature)
        .map_err(|_| fail("quote signature invalid (header and body not signed by the attestation key)"))
}

fn pck_chain(quote: &Quote<'_>) -> Result<Vec<Certificate>> {
    if quote.certification_data_type != 5 {
        return Err(fail(format!(
            "PCK certification data type {} not supported (expected 5 = PCK certificate chain)",
            quote.certification_data_type
        )));
    }
    let chain =
        Certificate::chain_from_pem(quote.certification_data).map_err(|e| e.within(LAYER, "PCK chain"))?;
    if chain.len() != 3 {
        return Err(fail(format!("PCK chain has {} certificates, expected 3 (PCK, CA, root)", chain.len())));
    }
    Ok(chain)
}

/// Verifies a quote's signatures without TCB collateral: the embedded PCK chain to the pinned Intel SGX Root CA
/// at `at` (no revocation check: that needs CRLs), the QE report signature, the attestation key binding and the
/// quote signature. For evidence whose collateral is not available; a verdict needs [`verify_quote`].
///
/// # Errors
/// The first failed check.
pub fn verify_quote_signatures(bytes: &[u8], at: UnixTime) -> Result<SignedQuote<'_>> {
    verify_quote_signatures_under(bytes, &IntelRoot::pinned()?, at)
}

/// [`verify_quote_signatures`] with the PCK chain ending at `root`: the pinned Intel root in a release build,
/// a test root only with the `test-anchors` feature (see [`IntelRoot`]).
///
/// # Errors
/// The first failed check.
pub fn verify_quote_signatures_under<'a>(
    bytes: &'a [u8],
    root: &IntelRoot,
    at: UnixTime,
) -> Result<SignedQuote<'a>> {
    let quote = Quote::parse(bytes)?;
    let chain = pck_chain(&quote)?;
    verify_chain(&chain, std::slice::from_ref(root.certificate()), at)
        .map_err(|e| e.within(LAYER, "PCK chain"))?;
    let pck = chain.into_iter().next().ok_or_else(|| fail("PCK chain empty"))?;
    check_quote_signatures(&quote, &pck)?;
    let pck_extension =
        PckExtension::from_certificate(&pck).map_err(|e| e.within(LAYER, "PCK certificate"))?;
    Ok(SignedQuote { quote, pck, pck_extension })
}

/// TD attribute bits (Intel TDX module ABI 348551-008US, table 3.23).
const TD_DEBUG: u64 = 1;
const TD_TUD_OTHER: u64 = 0x70;
const TD_SERVTD_EXT: u64 = 1 << 17;
const TD_SEPT_VE_DISABLE: u64 = 1 << 28;
const TD_MIGRATABLE: u64 = 1 << 29;
const fn ones(lo: u32, hi: u32) -> u64 {
    (u64::MAX << lo) & !((u64::MAX << hi) << 1)
}
const TD_RESERVED: u64 = ones(1, 3) | ones(7, 15) | ones(23, 26) | ones(32, 61);

fn check_td_attributes(td: &TdReport) -> Result<()> {
    let a = u64::from_le_bytes(td.td_attributes);
    let hexa = hex::encode(td.td_attributes);
    if a & TD_DEBUG != 0 {
        return Err(fail(format!("TD is in debug mode (TDATTRIBUTES {hexa}: DEBUG set)")));
    }
    if a & TD_TUD_OTHER != 0 {
        return Err(fail(format!("TD is under debug/profiling (TDATTRIBUTES {hexa}: TUD bits set)")));
    }
    if a & TD_RESERVED != 0 {
        return Err(fail(format!("TDATTRIBUTES {hexa} has reserved bits set")));
    }
    if a & TD_MIGRATABLE != 0 {
        return Err(fail(format!("TD is migratable (TDATTRIBUTES {hexa})")));
    }
    if a & TD_SERVTD_EXT != 0 {
        return Err(fail(format!(
            "TD has SERVTD_EXT set (TDATTRIBUTES {hexa}); service TDs are not accepted"
        )));
    }
    if a & TD_SEPT_VE_DISABLE == 0 {
        return Err(fail(format!("TD does not set SEPT_VE_DISABLE (TDATTRIBUTES {hexa})")));
    }
    if td.mr_service_td.is_some_and(|m| m != [0u8; 48]) {
        return Err(fail("MRSERVICETD is not zero; service TDs are not accepted"));
    }
    Ok(())
}

/// Verifies a DCAP quote (TDX v4/v5 or SGX v3/v5) against verified collateral at `at`.
///
/// Checks, in order: collateral window contains `at`; quote structure; PCK chain = (leaf, a PCK CA verified
/// in the collateral, the pinned root); PCK leaf validity, signature and revocation (PCK CRL); QE report
/// signature; attestation key binding; quote signature; QE identity (MRSIGNER, ISVPRODID, MISCSELECT and
/// ATTRIBUTES under masks, not debug) → QE TCB status; TCB info for the PCK's FMSPC → platform level (SGX
/// components + PCESVN, and TDX components), TDX module identity and level, TD 1.5 current TCB; status
/// convergence; `Revoked` refused; TD attributes (debug, SEPT_VE_DISABLE, migratable, reserved, service TD)
/// or SGX debug enclaves refused.
///
/// A status other than `UpToDate` is returned, not refused: appraisal policy decides what to accept.
///
/// # Errors
/// One line naming the failed check.
pub fn verify_quote(bytes: &[u8], collateral: &VerifiedCollateral, at: UnixTime) -> Result<VerifiedQuote> {
    collateral.check_time(at).map_err(|e| e.within(LAYER, "collateral"))?;
    let quote = Quote::parse(bytes)?;
    if quote.certification_data_type != 5 {
        return Err(fail(format!(
            "PCK certification data type {} not supported (expected 5 = PCK certificate chain)",
            quote.certification_data_type
        )));
    }
    // Only the leaf is new per quote: the CA and root must be byte-for-byte the ones verified with the
    // collateral, so they are compared, not parsed again.
    let blocks =
        crate::x509::pem_blocks(quote.certification_data).map_err(|e| e.within(LAYER, "PCK chain"))?;
    let [(l0, pck_der), (l1, ca_der), (l2, root_der)] = blocks.as_slice() else {
        return Err(fail(format!("PCK chain has {} PEM blocks, expected 3 (PCK, CA, root)", blocks.len())));
    };
    if [l0, l1, l2].iter().any(|l| l.as_str() != "CERTIFICATE") {
        return Err(fail("PCK chain has a PEM block that is not a CERTIFICATE"));
    }
    if root_der.as_slice() != collateral.root.der() {
        return Err(fail("PCK chain root is not the pinned Intel SGX Root CA"));
    }
    let verified_ca =
        collateral.pck_cas.iter().find(|v| v.ca.der() == ca_der.as_slice()).ok_or_else(|| {
            let name = Certificate::from_der(ca_der)
                .map_or_else(|_| "unparsable".to_owned(), |c| c.subject_cn().to_owned());
            fail(format!("PCK issuer '{name}' is not a CA verified with the collateral (no PCK CRL for it)"))
        })?;
    let pck = Certificate::from_der(pck_der).map_err(|e| e.within(LAYER, "PCK certificate"))?;
    pck.check_validity(at).map_err(|e| e.within(LAYER, "PCK certificate"))?;
    if verified_ca.crl.is_revoked(pck.serial()) {
        return Err(fail(format!("PCK certificate revoked (serial {})", hex::encode(pck.serial()))));
    }
    let platform_key =
        sha256(&[pck_der, ca_der, quote.qe_report_bytes, quote.qe_report_signature.as_slice()]);
    if collateral.platform_signatures.contains(&platform_key) {
        check_attestation_key(&quote)?;
    } else {
        pck.verify_signed_by(&verified_ca.ca).map_err(|e| e.within(LAYER, "PCK certificate"))?;
        check_quote_signatures(&quote, &pck)?;
        collateral.platform_signatures.insert(platform_key);
    }
    let pck_ext = PckExtension::from_certificate(&pck).map_err(|e| e.within(LAYER, "PCK certificate"))?;
    let collateral_expiry = collateral.valid_until().min(pck.not_after());

    let td = quote.td_report();
    let (qe_id, tcb_id) = if td.is_some() { ("TD_QE", "TDX") } else { ("QE", "SGX") };
    let qe_identity = collateral
        .qe_identities
        .iter()
        .find(|q| q.id == qe_id)
        .ok_or_else(|| fail(format!("collateral has no {qe_id} identity")))?;
    let qe_level = qe_identity.evaluate(&quote.qe_report).map_err(|e| e.within(LAYER, "QE identity"))?;
    let tcb_info =
        collateral.tcb_infos.iter().find(|t| t.id == tcb_id && t.fmspc == pck_ext.fmspc).ok_or_else(
            || fail(format!("collateral has no {tcb_id} TCB info for FMSPC {}", hex::encode(pck_ext.fmspc))),
        )?;
    let (platform, current) = tcb_info.evaluate(&pck_ext, td).map_err(|e| e.within(LAYER, "TCB"))?;

    let mut status = platform.status.converge_with_component(qe_level.status);
    let mut advisory_ids = platform.advisory_ids.clone();
    for a in &qe_level.advisory_ids {
        if !advisory_ids.contains(a) {
            advisory_ids.push(a.clone());
        }
    }
    let current_status = current.as_ref().map(|c| c.status.converge_with_component(qe_level.status));
    if status == TcbStatus::Revoked || current_status == Some(TcbStatus::Revoked) {
        return Err(fail(format!(
            "TCB status Revoked (platform {}, QE {}; advisories {})",
            platform.status,
            qe_level.status,
            advisory_ids.join(",")
        )));
    }
    if let Some(c) = current_status {
        status = status.check_for_relaunch(c);
    }

    match &quote.body {
        Body::Td(td) => {
            check_td_attributes(td)?;
            Ok(VerifiedQuote::Tdx(VerifiedTdxQuote {
                version: quote.version,
                body_type: quote.body_type,
                tcb_status: status,
                advisory_ids,
                platform_tcb_status: platform.status,
                qe_tcb_status: qe_level.status,
                tcb_date: platform.tcb_date,
                tcb_evaluation_data_number: tcb_info.tcb_evaluation_data_number,
                tee_tcb_svn: td.tee_tcb_svn,
                tee_tcb_svn2: td.tee_tcb_svn2,
                mr_seam: td.mr_seam,
                mr_td: td.mr_td,
                rtmr: td.rtmr,
                mr_config_id: td.mr_config_id,
                mr_owner: td.mr_owner,
                mr_owner_config: td.mr_owner_config,
                td_attributes: td.td_attributes,
                xfam: td.xfam,
                mr_service_td: td.mr_service_td,
                report_data: td.report_data,
                fmspc: pck_ext.fmspc,
                collateral_expiry,
            }))
        }
        Body::Sgx(e) => {
            if e.attributes[0] & 0x02 != 0 {
                return Err(fail("enclave is in debug mode (ATTRIBUTES.DEBUG set)"));
            }
            Ok(VerifiedQuote::Sgx(VerifiedSgxQuote {
                version: quote.version,
                tcb_status: status,
                advisory_ids,
                platform_tcb_status: platform.status,
                qe_tcb_status: qe_level.status,
                tcb_date: platform.tcb_date,
                tcb_evaluation_data_number: tcb_info.tcb_evaluation_data_number,
                mr_enclave: e.mr_enclave,
                mr_signer: e.mr_signer,
                isv_prod_id: e.isv_prod_id,
                isv_svn: e.isv_svn,
                attributes: e.attributes,
                misc_select: e.misc_select,
                cpu_svn: e.cpu_svn,
                report_data: e.report_data,
                fmspc: pck_ext.fmspc,
                collateral_expiry,
            }))
        }
    }
}

/// [`verify_quote`] for a TDX quote; an SGX quote is refused.
///
/// # Errors
/// As [`verify_quote`], or "not a TDX quote".
pub fn verify_tdx_quote(
    bytes: &[u8],
    collateral: &VerifiedCollateral,
    at: UnixTime,
) -> Result<VerifiedTdxQuote> {
    match verify_quote(bytes, collateral, at)? {
        VerifiedQuote::Tdx(t) => Ok(t),
        VerifiedQuote::Sgx(_) => Err(fail("not a TDX quote (SGX enclave quote)")),
    }
}

#[cfg(test)]
mod tests {
    //! Checks that cannot be reached by mutating signed evidence (the signature check fires first): PCK
    //! revocation, TCB statuses, TD attributes. The collateral is the real one, altered after verification.
    use super::*;
    use crate::x509::parse_time;

    const QUOTE: &[u8] = include_bytes!("../../testdata/tdx/dcap-qvl/tdx_quote");
    const COLLATERAL: &[u8] = include_bytes!("../../testdata/tdx/dcap-qvl/tdx_quote_collateral.json");

    fn at() -> UnixTime {
        parse_time("2025-07-19T10:00:34Z").unwrap()
    }

    fn verified() -> VerifiedCollateral {
        let mut c = Collateral::default();
        c.add_bytes(COLLATERAL, "test").unwrap();
        c.verify(at()).unwrap()
    }

    fn err(c: &VerifiedCollateral) -> String {
        verify_quote(QUOTE, c, at()).unwrap_err().to_string()
    }

    #[test]
    fn revoked_pck_is_refused_with_its_serial() {
        let mut c = verified();
        let pck = verify_quote_signatures(QUOTE, at()).unwrap().pck;
        let crl = c.pck_cas[0].crl.clone();
        c.pck_cas[0].crl = crl.with_revoked_serial(pck.serial());
        assert_eq!(err(&c), format!("tdx: PCK certificate revoked (serial {})", hex::encode(pck.serial())));
    }

    #[test]
    fn revoked_platform_tcb_level_is_refused() {
        let mut c = verified();
        for l in &mut c.tcb_infos[0].levels {
            l.status = TcbStatus::Revoked;
        }
        assert!(err(&c).starts_with("tdx: TCB status Revoked (platform Revoked, QE UpToDate"));
    }

    #[test]
    fn revoked_qe_level_is_refused() {
        let mut c = verified();
        c.qe_identities[0].levels[0].status = TcbStatus::Revoked;
        assert!(err(&c).starts_with("tdx: TCB status Revoked (platform UpToDate, QE Revoked"));
    }

    #[test]
    fn out_of_date_platform_is_reported_not_refused() {
        let mut c = verified();
        for l in &mut c.tcb_infos[0].levels {
            l.status = TcbStatus::OutOfDate;
            l.advisory_ids = vec!["INTEL-SA-00999".into()];
        }
        let VerifiedQuote::Tdx(q) = verify_quote(QUOTE, &c, at()).unwrap() else { panic!() };
        assert_eq!(q.tcb_status, TcbStatus::OutOfDate);
        assert_eq!(q.advisory_ids, ["INTEL-SA-00999"]);
    }

    #[test]
    fn out_of_date_qe_converges_configuration_needed() {
        let mut c = verified();
        for l in &mut c.tcb_infos[0].levels {
            l.status = TcbStatus::ConfigurationNeeded;
        }
        c.qe_identities[0].levels[0].status = TcbStatus::OutOfDate;
        let VerifiedQuote::Tdx(q) = verify_quote(QUOTE, &c, at()).unwrap() else { panic!() };
        assert_eq!(q.tcb_status, TcbStatus::OutOfDateConfigurationNeeded);
        assert_eq!(q.qe_tcb_status, TcbStatus::OutOfDate);
    }

    #[test]
    fn qe_isvsvn_below_every_level_is_refused() {
        let mut c = verified();
        c.qe_identities[0].levels[0].isv_svn = 99;
        assert!(err(&c).contains("QE ISVSVN 6 is below the minimum 99"), "{}", err(&c));
    }

    #[test]
    fn td_attribute_checks() {
        let quote = Quote::parse(QUOTE).unwrap();
        let td = quote.td_report().unwrap().clone();
        check_td_attributes(&td).unwrap();
        let with = |f: &dyn Fn(&mut TdReport)| {
            let mut t = td.clone();
            f(&mut t);
            check_td_attributes(&t).unwrap_err().to_string()
        };
        assert!(with(&|t| t.td_attributes[0] |= 0x01).contains("TD is in debug mode"));
        assert!(with(&|t| t.td_attributes[0] |= 0x10).contains("under debug/profiling"));
        assert!(with(&|t| t.td_attributes[3] &= !0x10).contains("does not set SEPT_VE_DISABLE"));
        assert!(with(&|t| t.td_attributes[3] |= 0x20).contains("TD is migratable"));
        assert!(with(&|t| t.td_attributes[2] |= 0x02).contains("SERVTD_EXT"));
        assert!(with(&|t| t.td_attributes[5] |= 0x01).contains("reserved bits"));
        assert!(with(&|t| t.mr_service_td = Some([1; 48])).contains("MRSERVICETD"));
    }

    #[test]
    fn missing_tcb_info_for_the_fmspc_is_refused() {
        let mut c = verified();
        c.tcb_infos[0].fmspc = [0; 6];
        assert!(err(&c).contains("collateral has no TDX TCB info for FMSPC b0c06f000000"));
    }
}
