//! Intel DCAP ECDSA quote parsing: SGX quote v3, TDX quote v4 (TD 1.0 body) and v5 (body descriptor: SGX,
//! TD 1.0 or TD 1.5 body). Layouts from Intel's "TDX DCAP Quote Generation Library and Quote Verification
//! Library" API spec (quote format appendix). Parsing only: nothing here is trusted until `verify` ran.

use sealroom_measurements::reader::Reader;

use crate::{Error, Result};

const LAYER: &str = "tdx quote";

/// TEE type of a quote header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TeeType {
    /// An SGX enclave (header tee_type 0x00000000).
    Sgx,
    /// A TDX trust domain (header tee_type 0x00000081).
    Tdx,
}

/// The SGX enclave report (384 bytes): the ISV enclave body of an SGX quote, and the QE report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnclaveReport {
    /// CPUSVN.
    pub cpu_svn: [u8; 16],
    /// MISCSELECT.
    pub misc_select: u32,
    /// ATTRIBUTES (flags || xfrm); flags bit 1 = DEBUG.
    pub attributes: [u8; 16],
    /// MRENCLAVE.
    pub mr_enclave: [u8; 32],
    /// MRSIGNER.
    pub mr_signer: [u8; 32],
    /// ISVPRODID.
    pub isv_prod_id: u16,
    /// ISVSVN.
    pub isv_svn: u16,
    /// REPORTDATA.
    pub report_data: [u8; 64],
}

/// A TD report body (TDX 1.0 fields; the TDX 1.5 extras are `Some`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdReport {
    /// TEE_TCB_SVN: byte 0 = TDX module ISVSVN, byte 1 = module major version, rest as TCB info describes.
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM: TDX module measurement.
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM: TDX module signer (zero for Intel's module).
    pub mr_signer_seam: [u8; 48],
    /// SEAMATTRIBUTES.
    pub seam_attributes: [u8; 8],
    /// TDATTRIBUTES (little-endian bit field; bit 0 = DEBUG).
    pub td_attributes: [u8; 8],
    /// XFAM.
    pub xfam: [u8; 8],
    /// MRTD: initial TD contents (firmware).
    pub mr_td: [u8; 48],
    /// MRCONFIGID.
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
    /// RTMR0..3.
    pub rtmr: [[u8; 48]; 4],
    /// REPORTDATA.
    pub report_data: [u8; 64],
    /// TDX 1.5: TEE_TCB_SVN2 (the current TCB after a TD-preserving module update).
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// TDX 1.5: MRSERVICETD.
    pub mr_service_td: Option<[u8; 48]>,
}

/// The report body of a quote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Body {
    /// SGX enclave report (quote v3).
    Sgx(EnclaveReport),
    /// TD report, TDX 1.0 (v4, or v5 body type 2) or 1.5 (v5 body type 3).
    Td(Box<TdReport>),
}

/// A parsed DCAP quote with borrowed views of the signed bytes.
#[derive(Debug, Clone)]
pub struct Quote<'a> {
    /// Quote format version: 3, 4 or 5.
    pub version: u16,
    /// TEE type from the header.
    pub tee_type: TeeType,
    /// QE SVN from the header (informational; the QE report's ISVSVN is what is checked).
    pub qe_svn: u16,
    /// PCE SVN from the header (informational; the PCK certificate's PCESVN is what is checked).
    pub pce_svn: u16,
    /// QE vendor id (Intel: 939a7233f79c4ca9940a0db3957f0607).
    pub qe_vendor_id: [u8; 16],
    /// v5 body type (1 SGX, 2 TD 1.0, 3 TD 1.5); `None` before v5.
    pub body_type: Option<u16>,
    /// The report body.
    pub body: Body,
    /// Header and body as signed by the attestation key.
    pub signed_bytes: &'a [u8],
    /// ECDSA P-256 signature (r || s) over `signed_bytes` by the attestation key.
    pub signature: [u8; 64],
    /// The attestation public key (X || Y).
    pub attestation_key: [u8; 64],
    /// The QE's enclave report, raw (signed by the PCK key).
    pub qe_report_bytes: &'a [u8],
    /// The QE's enclave report, parsed.
    pub qe_report: EnclaveReport,
    /// ECDSA P-256 signature (r || s) over `qe_report_bytes` by the PCK key.
    pub qe_report_signature: [u8; 64],
    /// QE authentication data, hashed with the attestation key into the QE report's REPORTDATA.
    pub qe_auth_data: &'a [u8],
    /// Certification data type (5 = PCK certificate chain, PEM).
    pub certification_data_type: u16,
    /// Certification data (for type 5: leaf, intermediate CA, root as PEM).
    pub certification_data: &'a [u8],
    /// Bytes after the quote structure. They are not signed and carry no claims; configfs-tsm buffers and some
    /// tools leave padding there.
    pub trailing_bytes: usize,
}

/// Intel's QE vendor id.
pub const INTEL_QE_VENDOR_ID: [u8; 16] =
    [0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07];

const ENCLAVE_REPORT_LEN: usize = 384;
const TD10_LEN: usize = 584;
const TD15_LEN: usize = 648;

#[allow(clippy::needless_pass_by_value, reason = "used as map_err(malformed)")]
fn malformed(e: sealroom_measurements::reader::ReadError) -> Error {
    Error::check(LAYER, e.to_string())
}

fn parse_enclave_report(r: &mut Reader<'_>) -> Result<EnclaveReport> {
    let cpu_svn = r.take_array("enclave report CPUSVN").map_err(malformed)?;
    let misc_select = r.u32_le("enclave report MISCSELECT").map_err(malformed)?;
    r.skip(28, "enclave report reserved1").map_err(malformed)?;
    let attributes = r.take_array("enclave report ATTRIBUTES").map_err(malformed)?;
    let mr_enclave = r.take_array("enclave report MRENCLAVE").map_err(malformed)?;
    r.skip(32, "enclave report reserved2").map_err(malformed)?;
    let mr_signer = r.take_array("enclave report MRSIGNER").map_err(malformed)?;
    r.skip(96, "enclave report reserved3").map_err(malformed)?;
    let isv_prod_id = r.u16_le("enclave report ISVPRODID").map_err(malformed)?;
    let isv_svn = r.u16_le("enclave report ISVSVN").map_err(malformed)?;
    r.skip(60, "enclave report reserved4").map_err(malformed)?;
    let report_data = r.take_array("enclave report REPORTDATA").map_err(malformed)?;
    Ok(EnclaveReport {
        cpu_svn,
        misc_select,
        attributes,
        mr_enclave,
        mr_signer,
        isv_prod_id,
        isv_svn,
        report_data,
    })
}

fn parse_td_report(r: &mut Reader<'_>, td15: bool) -> Result<TdReport> {
    let tee_tcb_svn = r.take_array("TD report TEE_TCB_SVN").map_err(malformed)?;
    let mr_seam = r.take_array("TD report MRSEAM").map_err(malformed)?;
    let mr_signer_seam = r.take_array("TD report MRSIGNERSEAM").map_err(malformed)?;
    let seam_attributes = r.take_array("TD report SEAMATTRIBUTES").map_err(malformed)?;
    let td_attributes = r.take_array("TD report TDATTRIBUTES").map_err(malformed)?;
    let xfam = r.take_array("TD report XFAM").map_err(malformed)?;
    let mr_td = r.take_array("TD report MRTD").map_err(malformed)?;
    let mr_config_id = r.take_array("TD report MRCONFIGID").map_err(malformed)?;
    let mr_owner = r.take_array("TD report MROWNER").map_err(malformed)?;
    let mr_owner_config = r.take_array("TD report MROWNERCONFIG").map_err(malformed)?;
    let rtmr = [
        r.take_array("TD report RTMR0").map_err(malformed)?,
        r.take_array("TD report RTMR1").map_err(malformed)?,
        r.take_array("TD report RTMR2").map_err(malformed)?,
        r.take_array("TD report RTMR3").map_err(malformed)?,
    ];
    let report_data = r.take_array("TD report REPORTDATA").map_err(malformed)?;
    let (tee_tcb_svn2, mr_service_td) = if td15 {
        (
            Some(r.take_array("TD report TEE_TCB_SVN2").map_err(malformed)?),
            Some(r.take_array("TD report MRSERVICETD").map_err(malformed)?),
        )
    } else {
        (None, None)
    };
    Ok(TdReport {
        tee_tcb_svn,
        mr_seam,
        mr_signer_seam,
        seam_attributes,
        td_attributes,
        xfam,
        mr_td,
        mr_config_id,
        mr_owner,
        mr_owner_config,
        rtmr,
        report_data,
        tee_tcb_svn2,
        mr_service_td,
    })
}

impl<'a> Quote<'a> {
    /// Parses a quote. Accepts v3 (SGX), v4 (TDX, TD 1.0) and v5 (SGX, TD 1.0, TD 1.5) with ECDSA-256 P-256
    /// attestation keys; bytes after the quote structure are counted in `trailing_bytes`, not parsed.
    ///
    /// # Errors
    /// A one-line reason naming the field: truncation, unsupported version/key type/TEE type/body type, a
    /// body size that does not match its type, certification data that is not type 6 (QE report) in v4/v5.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let version = r.u16_le("header version").map_err(malformed)?;
        if !matches!(version, 3..=5) {
            return Err(Error::check(LAYER, format!("quote format version {version} not supported")));
        }
        let att_key_type = r.u16_le("header attestation key type").map_err(malformed)?;
        if att_key_type != 2 {
            return Err(Error::check(
                LAYER,
                format!("attestation key type {att_key_type} not supported (only 2 = ECDSA-256 with P-256)"),
            ));
        }
        let tee_raw = r.u32_le("header TEE type").map_err(malformed)?;
        let tee_type = match (version, tee_raw) {
            (3, _) | (4 | 5, 0) => TeeType::Sgx,
            (4 | 5, 0x81) => TeeType::Tdx,
            (_, other) => return Err(Error::check(LAYER, format!("TEE type {other:#x} not supported"))),
        };
        if version == 3 && tee_raw != 0 {
            return Err(Error::check(
                LAYER,
                format!("v3 quote with non-zero reserved/TEE type {tee_raw:#x}"),
            ));
        }
        let qe_svn = r.u16_le("header QE SVN").map_err(malformed)?;
        let pce_svn = r.u16_le("header PCE SVN").map_err(malformed)?;
        let qe_vendor_id = r.take_array("header QE vendor id").map_err(malformed)?;
        r.skip(20, "header user data").map_err(malformed)?;

        let (body_type, body) = if version == 5 {
            let body_type = r.u16_le("v5 body type").map_err(malformed)?;
            let size = Reader::len_u32(r.u32_le("v5 body size").map_err(malformed)?);
            let (want, td15) = match body_type {
                1 => (ENCLAVE_REPORT_LEN, false),
                2 => (TD10_LEN, false),
                3 => (TD15_LEN, true),
                other => return Err(Error::check(LAYER, format!("v5 body type {other} not supported"))),
            };
            if size != want {
                return Err(Error::check(
                    LAYER,
                    format!("v5 body type {body_type} has size {size}, expected {want}"),
                ));
            }
            if (body_type == 1) != (tee_type == TeeType::Sgx) {
                return Err(Error::check(LAYER, format!("v5 body type {body_type} does not match TEE type")));
            }
            let mut b = r.sub(size, "v5 body").map_err(malformed)?;
            let body = if body_type == 1 {
                Body::Sgx(parse_enclave_report(&mut b)?)
            } else {
                Body::Td(Box::new(parse_td_report(&mut b, td15)?))
            };
            b.finish("v5 body").map_err(malformed)?;
            (Some(body_type), body)
        } else if tee_type == TeeType::Tdx {
            (None, Body::Td(Box::new(parse_td_report(&mut r, false)?)))
        } else {
            (None, Body::Sgx(parse_enclave_report(&mut r)?))
        };
        let signed_len = r.offset();
        let signed_bytes =
            bytes.get(..signed_len).ok_or_else(|| Error::check(LAYER, "signed region out of range"))?;

        let sig_len = Reader::len_u32(r.u32_le("signature data length").map_err(malformed)?);
        let mut s = r.sub(sig_len, "signature data").map_err(malformed)?;
        let trailing_bytes = r.left();
        let signature = s.take_array("quote signature").map_err(malformed)?;
        let attestation_key = s.take_array("attestation public key").map_err(malformed)?;

        // v4/v5 wrap the QE report certification data in a type-6 envelope; v3 has its fields inline.
        let mut qe = if version == 3 {
            s.clone()
        } else {
            let cert_type = s.u16_le("certification data type").map_err(malformed)?;
            if cert_type != 6 {
                return Err(Error::check(
                    LAYER,
                    format!("certification data type {cert_type} not supported (expected 6 = QE report)"),
                ));
            }
            let size = Reader::len_u32(s.u32_le("certification data size").map_err(malformed)?);
            let inner = s.sub(size, "QE report certification data").map_err(malformed)?;
            s.finish("signature data").map_err(malformed)?;
            inner
        };
        let qe_start = qe.offset();
        let mut qe_report_reader = qe.sub(ENCLAVE_REPORT_LEN, "QE report").map_err(malformed)?;
        let qe_report_bytes = bytes
            .get(qe_start..qe_start.saturating_add(ENCLAVE_REPORT_LEN))
            .ok_or_else(|| Error::check(LAYER, "QE report out of range"))?;
        let qe_report = parse_enclave_report(&mut qe_report_reader)?;
        let qe_report_signature = qe.take_array("QE report signature").map_err(malformed)?;
        let auth_len = usize::from(qe.u16_le("QE authentication data size").map_err(malformed)?);
        let qe_auth_data = qe.take(auth_len, "QE authentication data").map_err(malformed)?;
        let certification_data_type = qe.u16_le("PCK certification data type").map_err(malformed)?;
        let cert_size = Reader::len_u32(qe.u32_le("PCK certification data size").map_err(malformed)?);
        let certification_data = qe.take(cert_size, "PCK certification data").map_err(malformed)?;
        qe.finish("QE report certification data").map_err(malformed)?;

        Ok(Self {
            version,
            tee_type,
            qe_svn,
            pce_svn,
            qe_vendor_id,
            body_type,
            body,
            signed_bytes,
            signature,
            attestation_key,
            qe_report_bytes,
            qe_report,
            qe_report_signature,
            qe_auth_data,
            certification_data_type,
            certification_data,
            trailing_bytes,
        })
    }

    /// The TD report, for TDX quotes.
    #[must_use]
    pub fn td_report(&self) -> Option<&TdReport> {
        match &self.body {
            Body::Td(td) => Some(td),
            Body::Sgx(_) => None,
        }
    }

    /// The enclave report, for SGX quotes.
    #[must_use]
    pub fn enclave_report(&self) -> Option<&EnclaveReport> {
        match &self.body {
            Body::Sgx(e) => Some(e),
            Body::Td(_) => None,
        }
    }
}
