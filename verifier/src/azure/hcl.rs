//! The Azure HCL (paravisor) report: a 32-byte "HCLA" header, the hardware report (SEV-SNP
//! ATTESTATION_REPORT or TDX TDREPORT) at 0x20, then the IGVM request data at 0x4C0 whose variable part is the
//! runtime-claims JSON. The hardware report's REPORT_DATA[0..32] is SHA-256 of that JSON, which is how the
//! paravisor binds its vTPM attestation key (HCLAkPub) to the hardware.

use aws_lc_rs::digest;
use sealroom_measurements::reader::Reader;

use crate::error::{Error, Result};

const LAYER: &str = "azure hcl report";

/// Size of an HCL report as the paravisor returns it.
pub const HCL_REPORT_LEN: usize = 2600;
/// Offset of the hardware report.
pub const HW_REPORT_OFFSET: usize = 0x20;
/// Size of the hardware report area.
pub const HW_REPORT_LEN: usize = 0x4A0;
/// Size of a TDX TDREPORT.
pub const TDREPORT_LEN: usize = 1024;
/// "HCLA" as a little-endian u32.
pub const HCL_MAGIC: u32 = u32::from_le_bytes(*b"HCLA");

/// The hardware behind the paravisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum HwReportType {
    /// AMD SEV-SNP ATTESTATION_REPORT.
    Snp,
    /// Intel TDX TDREPORT.
    Tdx,
}

/// A parsed HCL report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HclReport {
    /// Header version.
    pub version: u32,
    /// Which hardware report follows.
    pub report_type: HwReportType,
    /// The hardware report: 1184 bytes for SNP, 1024 for TDX.
    pub hw_report: Vec<u8>,
    /// Hash algorithm of the var data (1 = SHA-256, 2 = SHA-384, 3 = SHA-512).
    pub hash_type: u32,
    /// The runtime-claims JSON, exactly as hashed.
    pub var_data: Vec<u8>,
}

impl HclReport {
    /// Parses an HCL report.
    ///
    /// # Errors
    /// On a wrong magic, an unknown report type, or inconsistent sizes.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let m = Error::read(LAYER);
        let mut r = Reader::new(bytes);
        let magic = r.u32_le("signature").map_err(&m)?;
        if magic != HCL_MAGIC {
            return Err(Error::check(LAYER, format!("signature {magic:#010x} is not \"HCLA\"")));
        }
        let version = r.u32_le("version").map_err(&m)?;
        let _report_size = r.u32_le("report_size").map_err(&m)?;
        let _request_type = r.u32_le("request_type").map_err(&m)?;
        let _status = r.u32_le("status").map_err(&m)?;
        r.skip(12, "reserved").map_err(&m)?;
        let mut hw = r.sub(HW_REPORT_LEN, "hardware report").map_err(&m)?;
        let data_size = r.u32_le("igvm data_size").map_err(&m)?;
        let _igvm_version = r.u32_le("igvm version").map_err(&m)?;
        let report_type = match r.u32_le("igvm report_type").map_err(&m)? {
            2 => HwReportType::Snp,
            4 => HwReportType::Tdx,
            other => {
                return Err(Error::check(LAYER, format!("report type {other} unknown (2 = SNP, 4 = TDX)")));
            }
        };
        let hash_type = r.u32_le("igvm hash_type").map_err(&m)?;
        let var_len = Reader::len_u32(r.u32_le("igvm variable_data_size").map_err(&m)?);
        if Reader::len_u32(data_size) != var_len.saturating_add(20) {
            return Err(Error::check(
                LAYER,
                format!("IGVM data size {data_size} does not equal 20 + variable data size {var_len}"),
            ));
        }
        let var_data = r.take(var_len, "igvm variable data").map_err(&m)?.to_vec();
        // The rest is zero padding up to the fixed report size.
        let hw_report = match report_type {
            HwReportType::Snp => hw.rest().to_vec(),
            HwReportType::Tdx => hw.take(TDREPORT_LEN, "tdreport").map_err(&m)?.to_vec(),
        };
        Ok(Self { version, report_type, hw_report, hash_type, var_data })
    }

    /// The digest of the var data under `hash_type`.
    ///
    /// # Errors
    /// For an unknown hash type.
    pub fn var_data_digest(&self) -> Result<Vec<u8>> {
        let alg = match self.hash_type {
            1 => &digest::SHA256,
            2 => &digest::SHA384,
            3 => &digest::SHA512,
            other => return Err(Error::check(LAYER, format!("var data hash type {other} unknown"))),
        };
        Ok(digest::digest(alg, &self.var_data).as_ref().to_vec())
    }

    /// The hardware report's REPORT_DATA (SNP at 0x50, TDREPORT at 0x80).
    ///
    /// # Errors
    /// When the hardware report is too short.
    pub fn report_data(&self) -> Result<[u8; 64]> {
        let offset = match self.report_type {
            HwReportType::Snp => 0x50,
            HwReportType::Tdx => 0x80,
        };
        let mut r = Reader::new(&self.hw_report);
        r.skip(offset, "hardware report head").map_err(Error::read(LAYER))?;
        r.take_array("report_data").map_err(Error::read(LAYER))
    }

    /// Checks that REPORT_DATA[0..32] is the digest of the var data.
    ///
    /// # Errors
    /// "azure hcl report: variable data digest … does not match REPORT_DATA …".
    pub fn check_var_data_binding(&self) -> Result<()> {
        let digest = self.var_data_digest()?;
        let rd = self.report_data()?;
        let head = rd.get(..digest.len().min(64)).unwrap_or_default();
        if head != digest.as_slice() {
            return Err(Error::check(
                LAYER,
                format!(
                    "variable data digest {} does not match REPORT_DATA {}",
                    hex::encode(&digest),
                    hex::encode(head)
                ),
            ));
        }
        Ok(())
    }
}

/// The parts of the runtime claims sealroom uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeClaims {
    /// HCLAkPub modulus, big-endian.
    pub ak_modulus: Vec<u8>,
    /// HCLAkPub exponent, big-endian.
    pub ak_exponent: Vec<u8>,
    /// user-data (64 bytes), if present.
    pub user_data: Option<Vec<u8>>,
    /// vm-configuration, as JSON.
    pub vm_configuration: serde_json::Value,
}

impl RuntimeClaims {
    /// Parses the runtime-claims JSON.
    ///
    /// # Errors
    /// When it is not JSON, or HCLAkPub is missing or not an RSA JWK.
    pub fn parse(var_data: &[u8]) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_slice(var_data)
            .map_err(|e| Error::check(LAYER, format!("runtime claims are not JSON: {e}")))?;
        let no_ak = || Error::check(LAYER, "runtime claims lack the HCLAkPub RSA key");
        let keys = v.get("keys").and_then(|k| k.as_array()).ok_or_else(no_ak)?;
        let ak = keys
            .iter()
            .find(|k| k.get("kid").and_then(|x| x.as_str()) == Some("HCLAkPub"))
            .ok_or_else(no_ak)?;
        if ak.get("kty").and_then(|x| x.as_str()) != Some("RSA") {
            return Err(no_ak());
        }
        let b64 = |field: &str| -> Result<Vec<u8>> {
            let s = ak.get(field).and_then(|x| x.as_str()).ok_or_else(no_ak)?;
            base64_url_decode(s).map_err(|e| Error::check(LAYER, format!("HCLAkPub {field}: {e}")))
        };
        let user_data = match v.get("user-data").and_then(|x| x.as_str()) {
            Some(s) => Some(hex::decode(s).map_err(|e| Error::check(LAYER, format!("user-data: {e}")))?),
            None => None,
        };
        Ok(Self {
            ak_modulus: b64("n")?,
            ak_exponent: b64("e")?,
            user_data,
            vm_configuration: v.get("vm-configuration").cloned().unwrap_or(serde_json::Value::Null),
        })
    }
}

/// Decodes base64url with or without padding.
///
/// # Errors
/// On invalid characters.
pub fn base64_url_decode(s: &str) -> std::result::Result<Vec<u8>, String> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| e.to_string())
}
