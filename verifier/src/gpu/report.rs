//! The NVIDIA GPU attestation report: an SPDM 1.1 GET_MEASUREMENTS request followed directly by the
//! MEASUREMENTS response, as NVML's `nvmlDeviceGetConfComputeGpuAttestationReport` returns it.
//!
//! ```text
//! request  (37 bytes): version 0x11, code 0xE0, param1 (bit 0: signature requested), param2 (0xFF: all
//!                      blocks), nonce[32], slot id
//! response           : version, code 0x60, param1, param2, NumberOfBlocks u8, MeasurementRecordLength LE24,
//!                      record (blocks), responder nonce[32], OpaqueDataLength LE16, opaque data,
//!                      signature (ECDSA P-384, r || s, 96 bytes)
//! block              : index u8, specification u8 (0x01 DMTF), size LE16, DMTF type u8, value size LE16, value
//! opaque data        : NVIDIA TLVs, each type LE16, length LE16, value
//! ```
//!
//! The signature covers everything before it (request and response), hashed with SHA-384. Everything is read
//! with the bounds-checked reader, every length must be consumed exactly, and nothing may follow the
//! signature.

use std::collections::BTreeSet;

use sealroom_measurements::reader::Reader;

use crate::error::{Error, Result};

const LAYER: &str = "gpu report";

/// SPDM version 1.1, the version NVIDIA Hopper GPUs answer with.
pub const SPDM_VERSION_1_1: u8 = 0x11;
/// GET_MEASUREMENTS request code.
pub const GET_MEASUREMENTS: u8 = 0xE0;
/// MEASUREMENTS response code.
pub const MEASUREMENTS: u8 = 0x60;
/// Size of the P-384 `r || s` signature that ends the report.
pub const SIGNATURE_LEN: usize = 96;
/// Largest report accepted (a Hopper report is about 4 KiB; the SPDM fields could describe ~16 MiB).
pub const MAX_REPORT_LEN: usize = 64 * 1024;
/// Measurement specification "DMTF" (the only one SPDM 1.1 defines).
const SPEC_DMTF: u8 = 0x01;

/// NVIDIA opaque-data field types (nvtrust `OpaqueDataField`), the ones this verifier reads.
pub mod opaque {
    /// Driver version, NUL-terminated ASCII.
    pub const DRIVER_VERSION: u16 = 3;
    /// GPU information.
    pub const GPU_INFO: u16 = 4;
    /// VBIOS version, 8 bytes.
    pub const VBIOS_VERSION: u16 = 6;
    /// NVDEC0 status: 0xAA enabled, 0x55 disabled.
    pub const NVDEC0_STATUS: u16 = 11;
    /// Measurement counts, 64 LE32.
    pub const MSRSCNT: u16 = 12;
    /// Board id.
    pub const BOARD_ID: u16 = 14;
    /// Chip SKU, NUL-padded ASCII.
    pub const CHIP_SKU: u16 = 15;
    /// Chip SKU modifier.
    pub const CHIP_SKU_MOD: u16 = 16;
    /// Project, NUL-padded ASCII.
    pub const PROJECT: u16 = 17;
    /// Project SKU, NUL-padded ASCII.
    pub const PROJECT_SKU: u16 = 18;
    /// Project SKU modifier.
    pub const PROJECT_SKU_MOD: u16 = 19;
    /// FWID: the SHA-384 the attestation certificate's DICE extension also carries (newer firmware only).
    pub const FWID: u16 = 20;
}

/// One DMTF measurement block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementBlock {
    /// SPDM measurement index (1-based; RIM index i describes block i + 1).
    pub index: u8,
    /// DMTF measurement value type (bit 7: raw bit stream instead of a digest).
    pub value_type: u8,
    /// The measurement value (a SHA-384 digest on Hopper).
    pub value: Vec<u8>,
}

/// One opaque-data TLV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueField {
    /// Field type (see [`opaque`]).
    pub kind: u16,
    /// Raw value.
    pub value: Vec<u8>,
}

/// A parsed GPU attestation report that owns its bytes (the signature is checked over them later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuReport {
    bytes: Vec<u8>,
    signed_len: usize,
    /// The requester's nonce: the verifier's challenge (sealroom: the binding digest).
    pub request_nonce: [u8; 32],
    /// Certificate slot the requester asked the GPU to sign with.
    pub slot_id: u8,
    /// Measurement blocks in report order; indices are unique.
    pub blocks: Vec<MeasurementBlock>,
    /// The responder's nonce (freshness is the requester's nonce; this one is not checked).
    pub responder_nonce: [u8; 32],
    /// Opaque-data fields in report order; types are unique.
    pub opaque: Vec<OpaqueField>,
    /// The signature, `r || s` big-endian.
    pub signature: [u8; SIGNATURE_LEN],
}

impl GpuReport {
    /// Parses a report from its raw bytes.
    ///
    /// # Errors
    /// When a field is truncated, a code or version is not the expected one, a length is inconsistent, an
    /// index or opaque type repeats, or bytes follow the signature.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let m = Error::read(LAYER);
        if bytes.len() > MAX_REPORT_LEN {
            return Err(Error::check(LAYER, format!("{} bytes, at most {MAX_REPORT_LEN}", bytes.len())));
        }
        let mut r = Reader::new(bytes);
        // GET_MEASUREMENTS request.
        let version = r.u8("request version").map_err(&m)?;
        let code = r.u8("request code").map_err(&m)?;
        let param1 = r.u8("request param1").map_err(&m)?;
        let _operation = r.u8("request param2").map_err(&m)?;
        if version != SPDM_VERSION_1_1 || code != GET_MEASUREMENTS {
            return Err(Error::check(
                LAYER,
                format!(
                    "request is not SPDM 1.1 GET_MEASUREMENTS (version {version:#04x}, code {code:#04x})"
                ),
            ));
        }
        if param1 & 1 == 0 {
            return Err(Error::check(LAYER, "request did not ask for a signature"));
        }
        let request_nonce = r.take_array("request nonce").map_err(&m)?;
        let slot_id = r.u8("request slot id").map_err(&m)?;
        // MEASUREMENTS response.
        let version = r.u8("response version").map_err(&m)?;
        let code = r.u8("response code").map_err(&m)?;
        if version != SPDM_VERSION_1_1 || code != MEASUREMENTS {
            return Err(Error::check(
                LAYER,
                format!("response is not SPDM 1.1 MEASUREMENTS (version {version:#04x}, code {code:#04x})"),
            ));
        }
        r.skip(2, "response param1, param2").map_err(&m)?;
        let count = r.u8("number of blocks").map_err(&m)?;
        let record_len = le24(r.take_array("measurement record length").map_err(&m)?);
        let mut record = r.sub(record_len, "measurement record").map_err(&m)?;
        let blocks = parse_blocks(&mut record, count)?;
        let responder_nonce = r.take_array("responder nonce").map_err(&m)?;
        let opaque_len = r.u16_le("opaque data length").map_err(&m)?;
        let mut opaque_reader = r.sub(usize::from(opaque_len), "opaque data").map_err(&m)?;
        let opaque = parse_opaque(&mut opaque_reader)?;
        let signed_len = r.offset();
        let signature = r.take_array("signature").map_err(&m)?;
        r.finish("gpu report").map_err(&m)?;
        Ok(Self {
            bytes: bytes.to_vec(),
            signed_len,
            request_nonce,
            slot_id,
            blocks,
            responder_nonce,
            opaque,
            signature,
        })
    }

    /// The raw report.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes the signature covers: request and response up to the signature.
    #[must_use]
    pub fn signed_bytes(&self) -> &[u8] {
        self.bytes.get(..self.signed_len).unwrap_or_default()
    }

    /// The block with SPDM index `index`.
    #[must_use]
    pub fn block(&self, index: u8) -> Option<&MeasurementBlock> {
        self.blocks.iter().find(|b| b.index == index)
    }

    /// The opaque field of type `kind`.
    #[must_use]
    pub fn opaque_field(&self, kind: u16) -> Option<&[u8]> {
        self.opaque.iter().find(|f| f.kind == kind).map(|f| f.value.as_slice())
    }

    fn required(&self, kind: u16, name: &'static str) -> Result<&[u8]> {
        self.opaque_field(kind)
            .ok_or_else(|| Error::check(LAYER, format!("opaque data has no {name} (type {kind})")))
    }

    /// The driver version ("545.00", "550.90.07").
    ///
    /// # Errors
    /// When the field is missing or not printable ASCII.
    pub fn driver_version(&self) -> Result<String> {
        nul_terminated_ascii(self.required(opaque::DRIVER_VERSION, "driver version")?, "driver version")
    }

    /// The VBIOS version as NVIDIA prints it: bytes b3.b2.b1.b0.b4 in lower-case hex ("96.00.5e.00.01").
    ///
    /// # Errors
    /// When the field is missing or not 8 bytes.
    pub fn vbios_version(&self) -> Result<String> {
        let raw = self.required(opaque::VBIOS_VERSION, "VBIOS version")?;
        let Ok([b0, b1, b2, b3, b4, _, _, _]) = <[u8; 8]>::try_from(raw) else {
            return Err(Error::check(LAYER, format!("VBIOS version: {} bytes, expected 8", raw.len())));
        };
        Ok(format!("{b3:02x}.{b2:02x}.{b1:02x}.{b0:02x}.{b4:02x}"))
    }

    /// Project ("1010"), project SKU ("0200") and chip SKU ("882"), which name the board's VBIOS RIM.
    ///
    /// # Errors
    /// When a field is missing or not printable ASCII.
    pub fn board(&self) -> Result<(String, String, String)> {
        Ok((
            nul_terminated_ascii(self.required(opaque::PROJECT, "project")?, "project")?,
            nul_terminated_ascii(self.required(opaque::PROJECT_SKU, "project SKU")?, "project SKU")?,
            nul_terminated_ascii(self.required(opaque::CHIP_SKU, "chip SKU")?, "chip SKU")?,
        ))
    }

    /// The FWID (48 bytes) when the firmware reports one (2024 and later firmware; the 2023 sample has none).
    ///
    /// # Errors
    /// When the field is present but not 48 bytes.
    pub fn fwid(&self) -> Result<Option<[u8; 48]>> {
        self.opaque_field(opaque::FWID)
            .map(|v| {
                <[u8; 48]>::try_from(v)
                    .map_err(|_| Error::check(LAYER, format!("FWID: {} bytes, expected 48", v.len())))
            })
            .transpose()
    }

    /// NVDEC0 status: `Some(true)` enabled (0xAA), `Some(false)` disabled (0x55), `None` absent.
    ///
    /// # Errors
    /// When the field holds another value.
    pub fn nvdec0_enabled(&self) -> Result<Option<bool>> {
        match self.opaque_field(opaque::NVDEC0_STATUS) {
            None => Ok(None),
            Some([0xAA]) => Ok(Some(true)),
            Some([0x55]) => Ok(Some(false)),
            Some(other) => Err(Error::check(LAYER, format!("NVDEC0 status {} unknown", hex::encode(other)))),
        }
    }
}

fn le24(b: [u8; 3]) -> usize {
    let [a, b, c] = b;
    usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16
}

fn parse_blocks(record: &mut Reader<'_>, count: u8) -> Result<Vec<MeasurementBlock>> {
    let m = Error::read(LAYER);
    let mut blocks = Vec::with_capacity(usize::from(count));
    let mut seen = BTreeSet::new();
    for _ in 0..count {
        let index = record.u8("block index").map_err(&m)?;
        let spec = record.u8("block measurement specification").map_err(&m)?;
        let size = record.u16_le("block size").map_err(&m)?;
        let mut body = record.sub(usize::from(size), "block measurement").map_err(&m)?;
        if spec != SPEC_DMTF {
            return Err(Error::check(
                LAYER,
                format!("block {index}: measurement specification {spec:#04x} is not DMTF"),
            ));
        }
        let value_type = body.u8("DMTF value type").map_err(&m)?;
        let value_len = body.u16_le("DMTF value size").map_err(&m)?;
        let value = body.take(usize::from(value_len), "DMTF value").map_err(&m)?.to_vec();
        body.finish("measurement block").map_err(&m)?;
        if index == 0 || index == 0xFF || !seen.insert(index) {
            return Err(Error::check(LAYER, format!("block index {index} is reserved or repeated")));
        }
        blocks.push(MeasurementBlock { index, value_type, value });
    }
    record.finish("measurement record").map_err(&m)?;
    Ok(blocks)
}

fn parse_opaque(data: &mut Reader<'_>) -> Result<Vec<OpaqueField>> {
    let m = Error::read(LAYER);
    let mut fields: Vec<OpaqueField> = Vec::new();
    while !data.is_empty() {
        let kind = data.u16_le("opaque field type").map_err(&m)?;
        let len = data.u16_le("opaque field length").map_err(&m)?;
        let value = data.take(usize::from(len), "opaque field value").map_err(&m)?.to_vec();
        if fields.iter().any(|f| f.kind == kind) {
            return Err(Error::check(LAYER, format!("opaque field type {kind} repeated")));
        }
        fields.push(OpaqueField { kind, value });
    }
    Ok(fields)
}

/// ASCII up to the first NUL; the padding after it must be NULs too, and the text must be printable.
fn nul_terminated_ascii(raw: &[u8], what: &str) -> Result<String> {
    let (text, padding) = raw.split_at(raw.iter().position(|b| *b == 0).unwrap_or(raw.len()));
    if text.is_empty() || !text.iter().all(u8::is_ascii_graphic) || padding.iter().any(|b| *b != 0) {
        return Err(Error::check(
            LAYER,
            format!("{what}: not NUL-terminated printable ASCII ({})", hex::encode(raw)),
        ));
    }
    Ok(String::from_utf8_lossy(text).into_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn older() -> Vec<u8> {
        hex::decode(include_str!("../../testdata/gpu/nvtrust/attestationReport.txt").trim()).unwrap()
    }

    #[test]
    fn parses_the_2023_h100_report_at_the_manifest_offsets() {
        let bytes = older();
        let r = GpuReport::parse(&bytes).unwrap();
        assert_eq!(
            hex::encode(r.request_nonce),
            "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e"
        );
        assert_eq!(r.blocks.len(), 64);
        assert!(
            r.blocks.iter().enumerate().all(|(i, b)| usize::from(b.index) == i + 1 && b.value.len() == 48)
        );
        // Block 2's digest sits at 0x2D + 55 + 7.
        assert_eq!(r.block(2).unwrap().value, bytes[0x2D + 55 + 7..0x2D + 55 + 7 + 48]);
        assert_eq!(r.signed_bytes().len(), 0xF71);
        assert_eq!(r.driver_version().unwrap(), "545.00");
        assert_eq!(r.vbios_version().unwrap(), "96.00.5e.00.01");
        assert_eq!(r.board().unwrap(), ("1010".into(), "0200".into(), "882".into()));
        assert_eq!(r.fwid().unwrap(), None);
        assert_eq!(r.nvdec0_enabled().unwrap(), Some(false));
    }

    #[test]
    fn refuses_truncation_trailing_bytes_and_wrong_codes() {
        let bytes = older();
        let err = GpuReport::parse(&bytes[..bytes.len() - 1]).unwrap_err().to_string();
        assert_eq!(err, "gpu report: signature at offset 0xf71: needs 96 bytes, 95 left");
        let mut longer = bytes.clone();
        longer.push(0);
        let err = GpuReport::parse(&longer).unwrap_err().to_string();
        assert!(err.contains("1 unexpected trailing bytes"), "{err}");
        let mut wrong = bytes.clone();
        wrong[0x26] = 0x61;
        let err = GpuReport::parse(&wrong).unwrap_err().to_string();
        assert!(err.contains("response is not SPDM 1.1 MEASUREMENTS"), "{err}");
        let mut unsigned = bytes;
        unsigned[2] = 0;
        let err = GpuReport::parse(&unsigned).unwrap_err().to_string();
        assert_eq!(err, "gpu report: request did not ask for a signature");
    }
}
