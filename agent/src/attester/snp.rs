//! AMD SEV-SNP attester: attestation reports through configfs-tsm (Linux ≥ 6.7), with the certificate table
//! from `auxblob`; on kernels without configfs-tsm, through `/dev/sev-guest` with the `sev` crate's firmware API
//! (`SNP_GET_EXT_REPORT`, which returns the same certificate table).
//!
//! configfs-tsm is preferred: it is the kernel's vendor-neutral interface, its `generation` counter detects a
//! concurrent writer, and it needs no ioctl. The device path is a fallback for older guest kernels. The `sev`
//! crate opens the fixed path `/dev/sev-guest` (its `Firmware` cannot be built from another file), so the
//! configurable kernel root only decides *whether* the device is there; a device under any other root is refused
//! with that reason rather than silently reading the real one.
//!
//! SNP has no runtime-extendable register: runtime events are rooted in the vTPM (PCR 15) when one is present.

use sealroom_measurements::binding::{Nonce, TeePublicKey, report_data};
use sealroom_measurements::evidence::{HashAlg, Platform, SevSnpEvidence, limits};
use sealroom_measurements::reader::Reader;
use sev::firmware::host::{CertTableEntry, CertType};

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

/// The only path the `sev` crate opens.
pub const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";
/// The highest VMPL a report can be requested for (VMPL 0..=3).
const MAX_VMPL: u32 = 3;

/// One `SNP_GET_EXT_REPORT` request, checked before it reaches the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRequest {
    /// REPORT_DATA: the binding value (nonce digest || tag).
    pub report_data: [u8; 64],
    /// VMPL to report for; `None` lets the kernel use the guest's own VMPL.
    pub vmpl: Option<u32>,
}

impl ReportRequest {
    /// A request over `report_data` for `vmpl`.
    ///
    /// # Errors
    /// When `vmpl` is above 3.
    pub fn new(report_data: [u8; 64], vmpl: Option<u32>) -> Result<Self> {
        if let Some(v) = vmpl
            && v > MAX_VMPL
        {
            return Err(Error::attester(NAME, format!("sev-guest request: VMPL {v} is not 0..=3")));
        }
        Ok(Self { report_data, vmpl })
    }
}

/// Orders the certificates `SNP_GET_EXT_REPORT` returned as the verifier expects them: VCEK/VLEK, then ASK (ASVK),
/// then ARK; CRLs and unknown GUIDs are dropped.
///
/// # Errors
/// When a certificate breaks the size limit or there are too many.
pub fn order_cert_entries(entries: &[CertTableEntry]) -> Result<Vec<Vec<u8>>> {
    let mut found: Vec<(u8, Vec<u8>)> = Vec::new();
    for e in entries {
        let rank = match e.cert_type {
            CertType::VCEK | CertType::VLEK => 0,
            CertType::ASK => 1,
            CertType::ARK => 2,
            _ => continue,
        };
        if e.data.len() > limits::CERT_LEN {
            return Err(Error::attester(
                NAME,
                format!("sev-guest certificates: entry of {} bytes", e.data.len()),
            ));
        }
        if found.len() >= limits::SNP_CERTS {
            return Err(Error::attester(NAME, "sev-guest certificates: too many certificates"));
        }
        found.push((rank, e.data.clone()));
    }
    found.sort_by_key(|(rank, _)| *rank);
    Ok(found.into_iter().map(|(_, c)| c).collect())
}

/// `/dev/sev-guest` through the `sev` crate.
#[derive(Debug)]
pub struct SevGuestDevice {
    firmware: sev::firmware::guest::Firmware,
}

impl SevGuestDevice {
    /// Opens the device found at `path` (under the kernel root).
    ///
    /// # Errors
    /// When the device does not exist, is not at [`SEV_GUEST_DEVICE`] (the only path the `sev` crate opens), or
    /// cannot be opened.
    pub fn open(path: &std::path::Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::attester(
                NAME,
                format!(
                    "{}: no SEV-SNP guest device (not an SNP guest, or the sev-guest driver is not loaded)",
                    path.display()
                ),
            ));
        }
        if path != std::path::Path::new(SEV_GUEST_DEVICE) {
            return Err(Error::attester(
                NAME,
                format!(
                    "{}: the sev crate opens only {SEV_GUEST_DEVICE}, not a device elsewhere",
                    path.display()
                ),
            ));
        }
        let firmware = sev::firmware::guest::Firmware::open()
            .map_err(|e| Error::attester(NAME, format!("{SEV_GUEST_DEVICE}: {e}")))?;
        Ok(Self { firmware })
    }

    /// An extended report: the attestation report and its certificate chain (empty when the host has none).
    ///
    /// # Errors
    /// When the kernel, the hypervisor or the PSP refuses, or the report has the wrong size.
    pub fn report(&mut self, request: &ReportRequest) -> Result<(Vec<u8>, Vec<Vec<u8>>)> {
        let (report, certs) = self
            .firmware
            .get_ext_report(None, Some(request.report_data), request.vmpl)
            .map_err(|e| Error::attester(NAME, format!("SNP_GET_EXT_REPORT: {e}")))?;
        if report.len() != limits::SNP_REPORT {
            return Err(Error::attester(
                NAME,
                format!(
                    "SNP_GET_EXT_REPORT: report of {} bytes, expected {}",
                    report.len(),
                    limits::SNP_REPORT
                ),
            ));
        }
        let chain = order_cert_entries(certs.as_deref().unwrap_or_default())?;
        Ok((report, chain))
    }
}

/// Where the SNP attester gets its reports.
#[derive(Debug)]
enum ReportSource {
    Tsm(TsmReport),
    SevGuest(SevGuestDevice),
}

/// The SEV-SNP attester.
#[derive(Debug)]
pub struct SnpAttester {
    source: ReportSource,
}

impl SnpAttester {
    /// Opens the configfs-tsm entry, or `/dev/sev-guest` when configfs-tsm is absent.
    ///
    /// # Errors
    /// When neither interface is usable (the message names both).
    pub fn open(paths: &KernelPaths) -> Result<Self> {
        let tsm_dir = paths.tsm_report();
        if tsm_dir.is_dir() {
            return Ok(Self { source: ReportSource::Tsm(TsmReport::open(&tsm_dir)?) });
        }
        let device = SevGuestDevice::open(&paths.sev_guest_device()).map_err(|e| {
            Error::attester(NAME, format!("no configfs-tsm at {} and {e}", tsm_dir.display()))
        })?;
        Ok(Self { source: ReportSource::SevGuest(device) })
    }

    /// Which interface is in use: "configfs-tsm" or "sev-guest".
    #[must_use]
    pub fn interface(&self) -> &'static str {
        match self.source {
            ReportSource::Tsm(_) => "configfs-tsm",
            ReportSource::SevGuest(_) => "sev-guest",
        }
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
        let data = report_data(nonce, key);
        let (report, cert_chain) = match &mut self.source {
            ReportSource::Tsm(tsm) => {
                let report = tsm.report(&data, limits::SNP_REPORT, Some(AUX_LIMIT))?;
                let chain = match report.auxblob {
                    Some(aux) if !aux.is_empty() => parse_cert_table(&aux)?,
                    _ => Vec::new(),
                };
                (report.outblob, chain)
            }
            ReportSource::SevGuest(dev) => dev.report(&ReportRequest::new(data, None)?)?,
        };
        Ok(Part::SevSnp(SevSnpEvidence { report, cert_chain }))
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
    fn sev_guest_requests_carry_the_binding_and_a_valid_vmpl() {
        let data = [7u8; 64];
        assert_eq!(ReportRequest::new(data, None).unwrap(), ReportRequest { report_data: data, vmpl: None });
        for v in 0..=3 {
            assert_eq!(ReportRequest::new(data, Some(v)).unwrap().vmpl, Some(v));
        }
        let err = ReportRequest::new(data, Some(4)).unwrap_err().to_string();
        assert_eq!(err, "sev-snp: sev-guest request: VMPL 4 is not 0..=3");
    }

    #[test]
    fn sev_guest_certificates_are_ordered_vcek_ask_ark_and_others_dropped() {
        let entries = vec![
            CertTableEntry::new(CertType::ARK, b"ark".to_vec()),
            CertTableEntry::new(CertType::CRL, b"crl".to_vec()),
            CertTableEntry::new(CertType::ASK, b"ask".to_vec()),
            CertTableEntry::new(CertType::VLEK, b"vlek".to_vec()),
        ];
        assert_eq!(
            order_cert_entries(&entries).unwrap(),
            vec![b"vlek".to_vec(), b"ask".to_vec(), b"ark".to_vec()]
        );
        let huge = vec![CertTableEntry::new(CertType::VCEK, vec![0; limits::CERT_LEN + 1])];
        assert!(order_cert_entries(&huge).unwrap_err().to_string().contains("entry of"));
        let many = vec![CertTableEntry::new(CertType::ASK, vec![1]); limits::SNP_CERTS + 1];
        assert!(order_cert_entries(&many).unwrap_err().to_string().contains("too many"));
    }

    #[test]
    fn a_missing_device_and_a_device_outside_dev_are_refused_with_the_reason() {
        let root = std::env::temp_dir().join(format!("sealroom-snp-{}", std::process::id()));
        std::fs::create_dir_all(root.join("dev")).unwrap();
        let paths = KernelPaths::new(&root);
        let err = SnpAttester::open(&paths).unwrap_err().to_string();
        assert!(err.contains("no configfs-tsm at"), "{err}");
        assert!(err.contains("no SEV-SNP guest device"), "{err}");
        // A device node under another root: the sev crate would open the real /dev/sev-guest, so it is refused.
        std::fs::write(root.join("dev/sev-guest"), b"").unwrap();
        let err = SnpAttester::open(&paths).unwrap_err().to_string();
        assert!(err.contains("the sev crate opens only /dev/sev-guest"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
        // This machine is no SNP guest: the real path is absent and says so.
        if !std::path::Path::new(SEV_GUEST_DEVICE).exists() {
            let err = SevGuestDevice::open(std::path::Path::new(SEV_GUEST_DEVICE)).unwrap_err().to_string();
            assert_eq!(
                err,
                "sev-snp: /dev/sev-guest: no SEV-SNP guest device (not an SNP guest, or the sev-guest driver is not loaded)"
            );
        }
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
