//! Azure confidential VMs (SEV-SNP and TDX behind the paravisor): evidence is the HCL report plus a vTPM quote.
//!
//! On Azure the guest does not talk to the TEE; the paravisor (HCL) does. At boot it asks the hardware for a
//! report whose REPORT_DATA is the SHA-256 of its runtime claims, which carry the vTPM attestation key
//! (HCLAkPub), and stores the whole "HCL report" in vTPM NV index 0x01400001. The AK itself is persistent at
//! 0x81000003. So evidence is: the HCL report (hardware → AK), and a vTPM quote by that AK over SHA-256 PCRs
//! 0..=23 with extraData = the binding digest (AK → nonce and TEE key). The verifier's `azure` module checks
//! exactly that chain.
//!
//! Why not the `az-snp-vtpm` crate (0.8.2, the suggestion, checked with `cargo tree`/`cargo deny`):
//! its licences and advisories pass, but every call opens its own context on the hard-coded `/dev/tpm0`
//! (`TctiNameConf::Device(DeviceConfig::default())`), so it cannot be pointed at swtpm (no test against a real
//! TPM here) and it would collide with the agent's own open `/dev/tpm0` (one opener at a time); it reads the
//! PCRs after the quote without checking `pcrDigest` (a concurrent extend yields inconsistent evidence); and it
//! pulls `clap` and `ureq` unconditionally even with only the `attester` feature, `sev` 7 next to the `sev` 8
//! the `/dev/sev-guest` path uses, and the unmaintained `jsonwebkey` 0.3 (45 crates in all). The protocol is
//! small, so this module speaks it with the agent's own tss-esapi context: same TPM code path as the plain TPM
//! attester, tested against swtpm.
//!
//! The HCL report is read once, when the agent starts (before any workload runs): it only changes when someone
//! writes a new user-data to NV 0x01400002, and freshness comes from the quote's extraData, not from the report.
//! It is returned with user-data as the paravisor left it (zero at boot); the verifier compares a non-zero
//! user-data with the nonce. The collateral that lets a verifier check the hardware report (the VCEK, or a TD
//! quote over the TDREPORT) comes from Azure's IMDS, also once at start-up (`azure_imds`).

use sealroom_measurements::binding::{Nonce, TeePublicKey};
use sealroom_measurements::evidence::{AzureVtpmEvidence, HashAlg, Platform, limits};
use sealroom_measurements::reader::Reader;

use super::azure_imds::Imds;
use super::tpm::{self, TpmAttester};
use super::{Attester, EventDigests, Part};
use crate::error::{Error, Result};
use crate::paths::KernelPaths;

const NAME: &str = "azure-vtpm";
/// vTPM NV index holding the HCL report (Azure paravisor contract).
pub const HCL_REPORT_NV_INDEX: u32 = 0x0140_0001;
/// "HCLA", little-endian, at offset 0 of the HCL report.
const HCL_MAGIC: [u8; 4] = *b"HCLA";
/// Offset of the IGVM request data (after the 32-byte header and the 0x4A0-byte hardware report area).
const IGVM_OFFSET: usize = 0x4C0;

/// The TEE behind the paravisor, from the HCL report's IGVM request type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AzureTee {
    /// IGVM report type 2: an SEV-SNP ATTESTATION_REPORT.
    SevSnp,
    /// IGVM report type 4: a TDX TDREPORT.
    Tdx,
}

/// Reads which TEE an HCL report comes from, checking its magic (the full parse is the verifier's job).
///
/// # Errors
/// When the bytes are not an HCL report or name an unknown report type.
pub fn hcl_tee(report: &[u8]) -> Result<AzureTee> {
    let bad = |e| Error::attester(NAME, format!("hcl report: {e}"));
    let mut r = Reader::new(report);
    let magic: [u8; 4] = r.take_array("signature").map_err(bad)?;
    if magic != HCL_MAGIC {
        return Err(Error::attester(
            NAME,
            format!("hcl report: signature {} is not \"HCLA\"", hex::encode(magic)),
        ));
    }
    r.skip(IGVM_OFFSET - 4, "header and hardware report").map_err(bad)?;
    let _data_size = r.u32_le("igvm data_size").map_err(bad)?;
    let _version = r.u32_le("igvm version").map_err(bad)?;
    match r.u32_le("igvm report_type").map_err(bad)? {
        2 => Ok(AzureTee::SevSnp),
        4 => Ok(AzureTee::Tdx),
        other => {
            Err(Error::attester(NAME, format!("hcl report: report type {other} unknown (2 = SNP, 4 = TDX)")))
        }
    }
}

/// The Azure vTPM attester: a TPM attester on the paravisor's AK plus the HCL report.
#[derive(Debug)]
pub struct AzureVtpmAttester {
    tpm: TpmAttester,
    hcl_report: Vec<u8>,
    tee: AzureTee,
    vcek: Vec<u8>,
    td_quote: Vec<u8>,
}

impl AzureVtpmAttester {
    /// Builds the attester on an open TPM context: reads the HCL report from NV 0x01400001 and loads the AK at
    /// 0x81000003 (with its certificate from NV 0x01c101d0 when present).
    ///
    /// # Errors
    /// When the NV index or the AK is missing, the report is not an HCL report, or the TPM refuses.
    pub fn with_context(mut ctx: tss_esapi::Context, paths: &KernelPaths) -> Result<Self> {
        let hcl_report = tpm::read_nv(&mut ctx, HCL_REPORT_NV_INDEX)?
            .ok_or_else(|| Error::attester(NAME, format!("no HCL report at NV {HCL_REPORT_NV_INDEX:#x}")))?;
        Self::with_report(ctx, paths, hcl_report)
    }

    /// Builds the attester from an HCL report obtained some other way, with the AK and quote still from the
    /// vTPM. swtpm (libtpms) caps NV indices at 2048 bytes while an HCL report is 2600, so the test of the full
    /// verification chain hands the real report in here; [`Self::with_context`] covers the NV path.
    ///
    /// # Errors
    /// As [`Self::with_context`].
    pub fn with_report(ctx: tss_esapi::Context, paths: &KernelPaths, hcl_report: Vec<u8>) -> Result<Self> {
        if hcl_report.len() > limits::HCL_REPORT {
            return Err(Error::attester(
                NAME,
                format!("hcl report of {} bytes exceeds {} bytes", hcl_report.len(), limits::HCL_REPORT),
            ));
        }
        let tee = hcl_tee(&hcl_report)?;
        let tpm = TpmAttester::with_context(ctx, paths, true)?;
        Ok(Self { tpm, hcl_report, tee, vcek: Vec::new(), td_quote: Vec::new() })
    }

    /// The HCL report as read at start-up.
    #[must_use]
    pub fn hcl_report(&self) -> &[u8] {
        &self.hcl_report
    }

    /// The TEE behind the paravisor.
    #[must_use]
    pub fn tee(&self) -> AzureTee {
        self.tee
    }

    /// The vTPM part (AK public, AK source).
    #[must_use]
    pub fn tpm(&self) -> &TpmAttester {
        &self.tpm
    }

    /// Platform collateral to ship with the evidence: the VCEK (SNP, DER) or the TD quote (TDX) that Azure's
    /// IMDS returns for this VM (an empty value is sent as absent; the verifier then refuses with its reason).
    pub fn set_collateral(&mut self, vcek: Vec<u8>, td_quote: Vec<u8>) {
        self.vcek = vcek;
        self.td_quote = td_quote;
    }

    /// Fetches this VM's collateral from IMDS and ships it with every evidence from now on: the VCEK (SNP) or
    /// the TD quote over the HCL report's TDREPORT (TDX). Called once at start-up; on failure the collateral
    /// stays empty (the verifier then refuses with its own reason).
    ///
    /// # Errors
    /// One line naming the URL and the cause (see [`Imds`]).
    pub fn fetch_collateral(&mut self, imds: &Imds) -> Result<()> {
        match self.tee {
            AzureTee::SevSnp => {
                let certs = imds.amd_certificates()?;
                self.set_collateral(certs.vcek, Vec::new());
            }
            AzureTee::Tdx => {
                let quote = imds.td_quote(&self.hcl_report)?;
                self.set_collateral(Vec::new(), quote);
            }
        }
        Ok(())
    }

    /// [`Self::fetch_collateral`], logging a failure as one line instead of returning it: an Azure VM whose
    /// IMDS does not answer still serves evidence, which verifiers refuse for want of the collateral.
    pub fn fetch_collateral_or_log(&mut self, imds: &Imds) {
        if let Err(e) = self.fetch_collateral(imds) {
            let missing = match self.tee {
                AzureTee::SevSnp => "VCEK",
                AzureTee::Tdx => "TD quote",
            };
            eprintln!("sealroom-agent: {e}; evidence carries no {missing}, so verifiers will refuse it");
        }
    }
}

/// Opens the TPM behind `tcti` and returns the Azure attester when the HCL report's NV index exists, else the
/// plain TPM attester (one TPM context either way). The Azure attester fetches its collateral from IMDS at
/// `$SEALROOM_AZURE_IMDS_URL`, else the link-local address (see [`super::azure_imds`]).
///
/// # Errors
/// When the TPM cannot be reached or the chosen attester fails to open.
pub fn open_tpm(tcti: &str, paths: &KernelPaths) -> Result<Box<dyn Attester>> {
    open_tpm_with_imds(tcti, paths, &Imds::from_env())
}

/// [`open_tpm`] asking `imds` for the Azure collateral (once, here) when the Azure attester is chosen.
///
/// # Errors
/// As [`open_tpm`]; an IMDS failure is logged, not returned.
pub fn open_tpm_with_imds(tcti: &str, paths: &KernelPaths, imds: &Imds) -> Result<Box<dyn Attester>> {
    let mut ctx = tpm::connect(tcti)?;
    if tpm::handle_defined(&mut ctx, HCL_REPORT_NV_INDEX)? {
        let mut att = AzureVtpmAttester::with_context(ctx, paths)?;
        att.fetch_collateral_or_log(imds);
        Ok(Box::new(att))
    } else {
        Ok(Box::new(TpmAttester::with_context(ctx, paths, false)?))
    }
}

impl Attester for AzureVtpmAttester {
    fn name(&self) -> &'static str {
        NAME
    }

    fn platform(&self) -> Platform {
        match self.tee {
            AzureTee::SevSnp => Platform::AzureSnpVtpm,
            AzureTee::Tdx => Platform::AzureTdxVtpm,
        }
    }

    fn attest(&mut self, nonce: &Nonce, key: &TeePublicKey) -> Result<Part> {
        let Part::Tpm(vtpm) = self.tpm.attest(nonce, key)? else {
            return Err(Error::attester(NAME, "vtpm quote: unexpected evidence part"));
        };
        // extraData = binding_digest(nonce, key), as for the plain TPM; only the SHA-256 bank is quoted.
        Ok(Part::Azure(AzureVtpmEvidence {
            hcl_report: self.hcl_report.clone(),
            vtpm,
            td_quote: self.td_quote.clone(),
            vcek: self.vcek.clone(),
        }))
    }

    fn runtime_algorithms(&self) -> Vec<HashAlg> {
        self.tpm.runtime_algorithms()
    }

    fn extend_runtime(&mut self, digests: &EventDigests) -> Result<()> {
        self.tpm.extend_runtime(digests)
    }

    fn runtime_register(&mut self) -> Result<Vec<(HashAlg, Vec<u8>)>> {
        self.tpm.runtime_register()
    }

    fn pcr_banks(&self) -> Vec<HashAlg> {
        self.tpm.pcr_banks()
    }

    fn event_logs(&self) -> (Vec<u8>, Vec<u8>) {
        self.tpm.event_logs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(rel: &str) -> Vec<u8> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../verifier/testdata/azure");
        std::fs::read(root.join(rel)).unwrap()
    }

    #[test]
    fn reads_the_tee_of_real_hcl_reports() {
        assert_eq!(hcl_tee(&testdata("az-snp-vtpm/hcl-report.bin")).unwrap(), AzureTee::SevSnp);
        assert_eq!(hcl_tee(&testdata("az-tdx-vtpm/hcl-report.bin")).unwrap(), AzureTee::Tdx);
    }

    #[test]
    fn refuses_non_hcl_bytes_and_never_panics() {
        let real = testdata("az-snp-vtpm/hcl-report.bin");
        for n in 0..IGVM_OFFSET + 12 {
            assert!(hcl_tee(&real[..n]).is_err(), "truncated at {n}");
        }
        let mut bad = real.clone();
        bad[0] = b'X';
        assert!(hcl_tee(&bad).unwrap_err().to_string().contains("is not \"HCLA\""));
        let mut unknown = real;
        unknown[IGVM_OFFSET + 8] = 3;
        assert!(hcl_tee(&unknown).unwrap_err().to_string().contains("report type 3 unknown"));
    }
}
