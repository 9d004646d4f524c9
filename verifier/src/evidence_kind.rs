//! Which kind of evidence bytes hold, decided from their first bytes before anything is parsed in earnest.
//!
//! Each kind has a recognisable start, so a defect is reported against the kind it belongs to ("sev-snp
//! report: version 2, 1183 bytes: …", "dcap quote: v3, 1000 bytes: …") instead of falling through to the
//! protobuf decoder and its "invalid protobuf". Only bytes that match no signature are tried as protobuf
//! (sealroom `Evidence`, then a go-tpm-tools GCE `Attestation`); hex text of any kind is decoded first. Fuzz
//! target `evidence_kind`.
use sealroom_measurements::evidence::Evidence;
use sealroom_measurements::reader::Reader;

use crate::appraisal::EvidenceInput;
use crate::azure::evidence::AzureEvidence;
use crate::error::{Error, Result};
use crate::snp::report::REPORT_LEN;
use crate::tdx::{Quote, TeeType};
use crate::tpm::gce_proto::GceAttestation;

/// Evidence as recognised, before its verification.
#[derive(Debug)]
#[non_exhaustive]
pub enum Detected {
    /// Azure vTPM evidence JSON.
    Azure(Box<AzureEvidence>),
    /// A raw SEV-SNP attestation report, exactly [`REPORT_LEN`] bytes.
    SnpReport(Vec<u8>),
    /// A TDX DCAP quote (v4, v5).
    TdxQuote(Vec<u8>),
    /// An SGX DCAP quote (v3, or v5 with an SGX body).
    SgxQuote(Vec<u8>),
    /// sealroom `Evidence` protobuf.
    Sealroom(Box<Evidence>),
    /// go-tpm-tools GCE `Attestation` protobuf.
    Gce(Box<GceAttestation>),
}

impl Detected {
    /// The appraisal's input, for every kind that needs nothing more. A raw SEV-SNP report comes back as
    /// `Err(report)`: it needs its VCEK/VLEK first (`EvidenceInput::SnpReport`).
    ///
    /// # Errors
    /// The report bytes of [`Detected::SnpReport`].
    pub fn into_input(self) -> std::result::Result<EvidenceInput, Vec<u8>> {
        Ok(match self {
            Self::Azure(a) => EvidenceInput::Azure(a),
            Self::SnpReport(report) => return Err(report),
            Self::TdxQuote(q) => EvidenceInput::TdxQuote(q),
            Self::SgxQuote(q) => EvidenceInput::SgxQuote(q),
            Self::Sealroom(ev) => EvidenceInput::Sealroom(ev),
            Self::Gce(att) => EvidenceInput::Gce(att),
        })
    }
}

/// Offset of the SNP report's SIGNATURE_ALGO field (1 = ECDSA P-384 with SHA-384).
const SNP_SIGNATURE_ALGO_OFFSET: usize = 0x34;

/// Recognises `bytes` (raw, or hex text of any kind).
///
/// # Errors
/// One line naming the kind and what is wrong with it, or, for bytes of no known kind, why each protobuf
/// reading failed.
pub fn detect(bytes: &[u8]) -> Result<Detected> {
    if let Some(decoded) = hex_text(bytes)? {
        return detect_binary(&decoded).map_err(|e| Error::check("hex evidence", e.to_string()));
    }
    detect_binary(bytes)
}

/// The bytes hex text stands for: `Some` when the input is nothing but hex digits (whitespace and one leading
/// `0x` allowed), as quotes are often shipped.
fn hex_text(bytes: &[u8]) -> Result<Option<Vec<u8>>> {
    let text = bytes.trim_ascii();
    let text = text.strip_prefix(b"0x").unwrap_or(text);
    if text.is_empty() || !text.iter().all(|c| c.is_ascii_hexdigit() || c.is_ascii_whitespace()) {
        return Ok(None);
    }
    let digits: Vec<u8> = text.iter().copied().filter(|c| !c.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(Error::check("hex evidence", format!("{} hex digits, an odd number", digits.len())));
    }
    hex::decode(&digits).map(Some).map_err(|e| Error::check("hex evidence", e.to_string()))
}

fn detect_binary(bytes: &[u8]) -> Result<Detected> {
    if bytes.is_empty() {
        return Err(Error::check("evidence", "empty"));
    }
    if bytes.trim_ascii_start().starts_with(b"{") {
        return json(bytes);
    }
    let mut r = Reader::new(bytes);
    let first_u16 = r.u16_le("version").ok();
    let second_u16 = r.u16_le("key type").ok();
    // DCAP quote header: version 3..=5, attestation key type 2 (ECDSA P-256) or 3 (P-384).
    if let (Some(version @ 3..=5), Some(2..=3)) = (first_u16, second_u16) {
        return match Quote::parse(bytes) {
            Ok(q) if q.tee_type == TeeType::Sgx => Ok(Detected::SgxQuote(bytes.to_vec())),
            Ok(_) => Ok(Detected::TdxQuote(bytes.to_vec())),
            Err(e) => Err(Error::check("dcap quote", format!("v{version}, {} bytes: {e}", bytes.len()))),
        };
    }
    // SEV-SNP report: VERSION is a little-endian u32 in 2..=5 (field number 0: never the start of protobuf).
    if let (Some(version @ 2..=5), Some(0)) = (first_u16, second_u16) {
        return snp_report(bytes, version);
    }
    protobuf(bytes)
}

fn snp_report(bytes: &[u8], version: u16) -> Result<Detected> {
    let len = bytes.len();
    let fail =
        |reason: String| Error::check("sev-snp report", format!("version {version}, {len} bytes: {reason}"));
    if len != REPORT_LEN {
        let bytes_word = |n: usize| if n == 1 { "1 byte".to_owned() } else { format!("{n} bytes") };
        let defect = if len < REPORT_LEN {
            format!("truncated: {} missing", bytes_word(REPORT_LEN - len))
        } else {
            format!("overlong: {} after the report", bytes_word(len - REPORT_LEN))
        };
        return Err(fail(format!("a report is exactly {REPORT_LEN} ({defect})")));
    }
    let mut r = Reader::new(bytes);
    let algo = r
        .skip(SNP_SIGNATURE_ALGO_OFFSET, "header")
        .and_then(|()| r.u32_le("SIGNATURE_ALGO"))
        .map_err(Error::read("sev-snp report"))?;
    if algo != 1 {
        return Err(fail(format!("SIGNATURE_ALGO {algo}, expected 1 (ECDSA P-384 with SHA-384)")));
    }
    Ok(Detected::SnpReport(bytes.to_vec()))
}

fn json(bytes: &[u8]) -> Result<Detected> {
    if AzureEvidence::looks_like(bytes) {
        return Ok(Detected::Azure(Box::new(AzureEvidence::parse_json(bytes)?)));
    }
    Err(Error::check(
        "json evidence",
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Err(e) => format!("does not parse: {e}"),
            Ok(_) => {
                "not Azure vTPM evidence (it needs \"tpm_quote\" and \"hcl_report\"), the only JSON evidence \
                      sealroom verifies"
                    .to_owned()
            }
        },
    ))
}

fn protobuf(bytes: &[u8]) -> Result<Detected> {
    let sealroom = match Evidence::decode(bytes) {
        Ok(ev) => return Ok(Detected::Sealroom(Box::new(ev))),
        Err(e) => e,
    };
    let gce = match GceAttestation::decode(bytes) {
        Ok(att) => return Ok(Detected::Gce(Box::new(att))),
        Err(e) => e,
    };
    Err(Error::check(
        "evidence",
        format!(
            "unrecognised ({} bytes starting {}): not a TDX/SGX quote, an SEV-SNP report, Azure vTPM JSON or hex \
             text; as protobuf neither sealroom Evidence ({sealroom}) nor a GCE attestation ({gce})",
            bytes.len(),
            hex::encode(bytes.get(..8).unwrap_or(bytes))
        ),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    fn td(path: &str) -> Vec<u8> {
        std::fs::read(format!("{}/testdata/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn every_kind_is_recognised_raw_and_as_hex() {
        for (path, kind) in [
            ("tdx/dcap-qvl/sgx_quote", "sgx"),
            ("tdx/dcap-qvl/tdx_quote", "tdx"),
            ("tdx/dcap-qvl/tdx_quote_outdated", "tdx"),
            ("snp/trustee/test-report.bin", "snp"),
            ("tpm/attestations/gce-cos-85-nonce9009.pb", "gce"),
            ("azure/az-snp-vtpm/evidence-v0.json", "azure"),
            ("azure/az-tdx-vtpm/evidence-v1.json", "azure"),
        ] {
            let raw = td(path);
            let mut hex_lines = String::new();
            for chunk in raw.chunks(32) {
                hex_lines.push_str(&hex::encode(chunk));
                hex_lines.push('\n');
            }
            for bytes in [raw.clone(), hex_lines.into_bytes()] {
                let got = match detect(&bytes).unwrap() {
                    Detected::SgxQuote(_) => "sgx",
                    Detected::TdxQuote(_) => "tdx",
                    Detected::SnpReport(_) => "snp",
                    Detected::Gce(_) => "gce",
                    Detected::Azure(_) => "azure",
                    Detected::Sealroom(_) => "sealroom",
                };
                assert_eq!(got, kind, "{path}");
            }
        }
    }

    #[test]
    fn defects_are_named_by_kind() {
        let report = td("snp/trustee/test-report.bin");
        let err = |b: &[u8]| detect(b).unwrap_err().to_string();
        assert_eq!(
            err(&report[..1183]),
            "sev-snp report: version 2, 1183 bytes: a report is exactly 1184 (truncated: 1 byte missing)"
        );
        let mut long = report.clone();
        long.push(0);
        assert_eq!(
            err(&long),
            "sev-snp report: version 2, 1185 bytes: a report is exactly 1184 (overlong: 1 byte after the report)"
        );
        let quote = td("tdx/dcap-qvl/sgx_quote");
        assert!(
            err(&quote[..1000]).starts_with("dcap quote: v3, 1000 bytes: tdx quote: "),
            "{}",
            err(&quote[..1000])
        );
        // As hex text: the same reason, said to be of hex evidence.
        let mut long_hex = hex::encode(&long).into_bytes();
        long_hex.push(b'\n');
        assert_eq!(
            err(&long_hex),
            "hex evidence: sev-snp report: version 2, 1185 bytes: a report is exactly 1184 (overlong: 1 byte after \
             the report)"
        );
        let mut wrong_algo = report.clone();
        wrong_algo[SNP_SIGNATURE_ALGO_OFFSET] = 2;
        assert_eq!(
            err(&wrong_algo),
            "sev-snp report: version 2, 1184 bytes: SIGNATURE_ALGO 2, expected 1 (ECDSA P-384 with SHA-384)"
        );
        assert_eq!(err(b"abc"), "hex evidence: 3 hex digits, an odd number");
        assert_eq!(err(b""), "evidence: empty");
        assert!(err(b"{\"a\": 1}").starts_with("json evidence: not Azure vTPM evidence"));
        assert!(err(b"{\"a\": ").starts_with("json evidence: does not parse"));
        assert!(err(b"\x0a\x03xyz").starts_with("evidence: unrecognised (5 bytes starting 0a0378797a)"));
    }
}
