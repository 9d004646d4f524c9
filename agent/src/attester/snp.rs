//! AMD SEV-SNP attester: attestation reports through configfs-tsm, with the certificate table from `auxblob`.
//!
//! SNP has no runtime-extendable register: runtime events are rooted in the vTPM (PCR 15) when one is present.

use sealroom_measurements::binding::{Nonce, TeePublicKey, report_data};
use sealroom_measurements::evidence::{HashAlg, Platform, SevSnpEvidence, limits};
use sealroom_measurements::reader::Reader;

use super::tsm::TsmReport;
use super::{Attester, EventDigests, Part};
use crate::error::{Error, Result};
use crate::paths::KernelPaths;

const NAME: &str = "sev-snp";
/// GUIDs of the GHCB extended-report certificate table (little-endian byte order as stored).
const GUID_VCEK: [u8; 16] =
    guid_le(0x63da_758d, 0xe664, 0x4564, [0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd]);
const GUID_VLEK: [u8; 16] =
    guid_le(0xa807_4bc2, 0xa25a, 0x483e, [0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1]);
const GUID_ASK: [u8; 16] =
    guid_le(0x4ab7_b379, 0xbbac, 0x4fe4, [0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82]);
const GUID_ARK: [u8; 16] =
    guid_le(0xc0b4_06a4, 0xa803, 0x4952, [0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae]);
/// Largest auxblob read: the table plus four certificates.
const AUX_LIMIT: usize = 64 * 1024;

const fn guid_le(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]
}

/// Parses the certificate table: `{guid[16], offset u32 LE, length u32 LE}*` ended by an all-zero entry, with
/// offsets from the start of the blob. Returns the VCEK/VLEK first, then ASK (ASVK), then ARK.
///
/// # Errors
/// When an entry points outside the blob or a certificate breaks the size limit.
pub fn parse_cert_table(blob: &[u8]) -> Result<Vec<Vec<u8>>> {
    let malformed = |e| Error::attester(NAME, format!("certificate table: {e}"));
    let mut r = Reader::new(blob);
    let mut found: Vec<(u8, Vec<u8>)> = Vec::new();
    loop {
        let guid: [u8; 16] = r.take_array("cert table guid").map_err(malformed)?;
        let offset = Reader::len_u32(r.u32_le("cert table offset").map_err(malformed)?);
        let length = Reader::len_u32(r.u32_le("cert table length").map_err(malformed)?);
        if guid == [0; 16] {
            break;
        }
        let rank = match guid {
            GUID_VCEK | GUID_VLEK => 0,
            GUID_ASK => 1,
            GUID_ARK => 2,
            _ => continue,
        };
        if length > limits::CERT_LEN {
            return Err(Error::attester(NAME, format!("certificate table: entry of {length} bytes")));
        }
        let mut body = Reader::new(blob);
        body.skip(offset, "cert offset").map_err(malformed)?;
        let cert = body.take(length, "cert body").map_err(malformed)?;
        if found.len() >= limits::SNP_CERTS {
            return Err(Error::attester(NAME, "certificate table: too many certificates"));
        }
        found.push((rank, cert.to_vec()));
    }
    found.sort_by_key(|(rank, _)| *rank);
    Ok(found.into_iter().map(|(_, c)| c).collect())
}

/// The SEV-SNP attester.
#[derive(Debug)]
pub struct SnpAttester {
    tsm: TsmReport,
}

impl SnpAttester {
    /// Opens the configfs-tsm entry.
    ///
    /// # Errors
    /// When configfs-tsm is missing.
    pub fn open(paths: &KernelPaths) -> Result<Self> {
        Ok(Self { tsm: TsmReport::open(&paths.tsm_report())? })
    }
}

impl Attester for SnpAttester {
    fn name(&self) -> &'static str {
        NAME
    }

    fn platform(&self) -> Platform {
        Platform::SevSnp
    }

    fn attest(&mut self, nonce: &Nonce, key: &TeePublicKey) -> Result<Part> {
        let report = self.tsm.report(&report_data(nonce, key), limits::SNP_REPORT, Some(AUX_LIMIT))?;
        let cert_chain = match report.auxblob {
            Some(aux) if !aux.is_empty() => parse_cert_table(&aux)?,
            _ => Vec::new(),
        };
        Ok(Part::SevSnp(SevSnpEvidence { report: report.outblob, cert_chain }))
    }

    fn runtime_algorithms(&self) -> Vec<HashAlg> {
        Vec::new()
    }

    fn extend_runtime(&mut self, _digests: &EventDigests) -> Result<()> {
        // No SNP register can be extended at runtime; PCR 15 of the vTPM carries runtime events.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
        let header = (entries.len() + 1) * 24;
        let mut out = Vec::new();
        let mut body = Vec::new();
        for (guid, cert) in entries {
            out.extend_from_slice(guid);
            out.extend_from_slice(&u32::try_from(header + body.len()).unwrap().to_le_bytes());
            out.extend_from_slice(&u32::try_from(cert.len()).unwrap().to_le_bytes());
            body.extend_from_slice(cert);
        }
        out.extend_from_slice(&[0; 24]);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn orders_vcek_then_ask_then_ark() {
        let t = table(&[(GUID_ARK, b"ark"), (GUID_ASK, b"ask"), (GUID_VCEK, b"vcek")]);
        assert_eq!(parse_cert_table(&t).unwrap(), vec![b"vcek".to_vec(), b"ask".to_vec(), b"ark".to_vec()]);
    }

    #[test]
    fn rejects_entries_outside_the_blob_and_never_panics() {
        let t = table(&[(GUID_VCEK, b"vcek")]);
        for n in 0..t.len() {
            let _ = parse_cert_table(&t[..n]);
        }
        let mut bad = t.clone();
        bad[16] = 0xff; // offset far beyond the end
        assert!(parse_cert_table(&bad).unwrap_err().to_string().contains("cert offset"));
        assert!(parse_cert_table(&[]).is_err());
    }
}
