//! The evidence model: Rust types mirrored one-to-one by `sealroom.attestation.v1.Evidence`.
//!
//! Converting from protobuf checks every documented size limit and the nonce/key shapes, so code past this
//! point never sees an oversized field. Contents (quotes, logs) are parsed later, by the layer that checks them.

use std::collections::BTreeMap;

use sealroom_proto::attestation::v1 as pb;

use crate::binding::{BINDING_VERSION, Kem, Nonce, TeePublicKey};
use crate::error::{Error, Result};

/// Size limits, as documented in `evidence.proto`.
pub mod limits {
    /// TPMS_ATTEST bytes.
    pub const TPM_ATTEST: usize = 2 * 1024;
    /// TPMT_SIGNATURE bytes.
    pub const TPM_SIGNATURE: usize = 1024;
    /// TPMT_PUBLIC of the AK.
    pub const TPM_AK_PUBLIC: usize = 1024;
    /// Certificates in a chain.
    pub const CERT_COUNT: usize = 8;
    /// One DER certificate.
    pub const CERT_LEN: usize = 8 * 1024;
    /// PCR banks.
    pub const PCR_BANKS: usize = 4;
    /// Event logs (UEFI, CCEL, runtime).
    pub const EVENT_LOG: usize = 1024 * 1024;
    /// TDX quotes.
    pub const TDX_QUOTE: usize = 16 * 1024;
    /// The CCEL ACPI table.
    pub const CCEL_TABLE: usize = 1024;
    /// SEV-SNP report.
    pub const SNP_REPORT: usize = 1184;
    /// SEV-SNP certificate chain entries.
    pub const SNP_CERTS: usize = 4;
    /// Azure HCL report.
    pub const HCL_REPORT: usize = 2600;
    /// GPUs in one `Evidence`.
    pub const GPU_COUNT: usize = 8;
    /// One NVIDIA GPU attestation report (SPDM request + response).
    pub const GPU_REPORT: usize = 64 * 1024;
}

/// The platform the agent probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Platform {
    /// TPM 2.0 only.
    Tpm,
    /// Intel TDX.
    Tdx,
    /// AMD SEV-SNP.
    SevSnp,
    /// Azure SNP CVM through the paravisor's vTPM.
    AzureSnpVtpm,
    /// Azure TDX CVM through the paravisor's vTPM.
    AzureTdxVtpm,
}

/// A TPM hash algorithm (TPM_ALG_ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum HashAlg {
    /// TPM_ALG_SHA1.
    Sha1,
    /// TPM_ALG_SHA256.
    Sha256,
    /// TPM_ALG_SHA384.
    Sha384,
    /// TPM_ALG_SHA512.
    Sha512,
}

impl HashAlg {
    /// The TCG algorithm identifier.
    #[must_use]
    pub fn tpm_alg_id(self) -> u16 {
        match self {
            Self::Sha1 => 0x0004,
            Self::Sha256 => 0x000b,
            Self::Sha384 => 0x000c,
            Self::Sha512 => 0x000d,
        }
    }

    /// The algorithm with this TCG identifier, if sealroom knows it.
    #[must_use]
    pub fn from_tpm_alg_id(id: u16) -> Option<Self> {
        match id {
            0x0004 => Some(Self::Sha1),
            0x000b => Some(Self::Sha256),
            0x000c => Some(Self::Sha384),
            0x000d => Some(Self::Sha512),
            _ => None,
        }
    }

    /// Digest size in bytes.
    #[must_use]
    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// Lower-case name, as printed.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }
}

/// One PCR bank: index → value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrBank {
    /// The bank's hash.
    pub alg: HashAlg,
    /// PCR index (0..=23) → value (`alg.digest_len()` bytes).
    pub values: BTreeMap<u32, Vec<u8>>,
}

/// TPM 2.0 quote evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TpmEvidence {
    /// Marshalled TPMS_ATTEST.
    pub attest: Vec<u8>,
    /// Marshalled TPMT_SIGNATURE.
    pub signature: Vec<u8>,
    /// Marshalled TPMT_PUBLIC of the AK.
    pub ak_public: Vec<u8>,
    /// DER certificates, AK certificate first.
    pub ak_cert_chain: Vec<Vec<u8>>,
    /// PCR values per bank.
    pub pcr_banks: Vec<PcrBank>,
    /// UEFI TCG2 event log.
    pub uefi_event_log: Vec<u8>,
}

/// Intel TDX evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TdxEvidence {
    /// DCAP quote v4/v5.
    pub quote: Vec<u8>,
    /// ACPI CCEL table.
    pub ccel_table: Vec<u8>,
    /// CC event log.
    pub ccel_log: Vec<u8>,
}

/// AMD SEV-SNP evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SevSnpEvidence {
    /// ATTESTATION_REPORT.
    pub report: Vec<u8>,
    /// VCEK/VLEK then ASK/ASVK, DER.
    pub cert_chain: Vec<Vec<u8>>,
}

/// Azure CVM evidence through the paravisor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AzureVtpmEvidence {
    /// The HCL report.
    pub hcl_report: Vec<u8>,
    /// The vTPM quote.
    pub vtpm: TpmEvidence,
    /// Azure TDX: the TD quote.
    pub td_quote: Vec<u8>,
    /// Azure SNP: the VCEK.
    pub vcek: Vec<u8>,
}

/// NVIDIA GPU evidence for one GPU (see docs/gpu.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuEvidence {
    /// SPDM GET_MEASUREMENTS request + signed MEASUREMENTS response, as NVML returns them.
    pub report: Vec<u8>,
    /// DER certificates of the attestation key, leaf first.
    pub cert_chain: Vec<Vec<u8>>,
}

/// Everything the agent returns from `GetEvidence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The verifier's nonce.
    pub nonce: Nonce,
    /// The TEE's ephemeral public key the evidence is bound to.
    pub tee_public_key: TeePublicKey,
    /// The platform the agent probed.
    pub platform: Platform,
    /// TPM part.
    pub tpm: Option<TpmEvidence>,
    /// TDX part.
    pub tdx: Option<TdxEvidence>,
    /// SEV-SNP part.
    pub sev_snp: Option<SevSnpEvidence>,
    /// Azure part.
    pub azure: Option<AzureVtpmEvidence>,
    /// CEL-TLV runtime event log.
    pub runtime_event_log: Vec<u8>,
    /// GPUs in confidential-computing mode (empty when none), bound by the same binding digest.
    pub gpus: Vec<GpuEvidence>,
}

fn limit(field: &'static str, bytes: &[u8], max: usize) -> Result<()> {
    if bytes.len() > max { Err(Error::TooLarge { field, size: bytes.len(), limit: max }) } else { Ok(()) }
}

fn limit_chain(field: &'static str, chain: &[Vec<u8>], count: usize) -> Result<()> {
    if chain.len() > count {
        return Err(Error::TooLarge { field, size: chain.len(), limit: count });
    }
    chain.iter().try_for_each(|c| limit(field, c, limits::CERT_LEN))
}

impl From<Platform> for pb::Platform {
    fn from(p: Platform) -> Self {
        match p {
            Platform::Tpm => Self::Tpm,
            Platform::Tdx => Self::Tdx,
            Platform::SevSnp => Self::SevSnp,
            Platform::AzureSnpVtpm => Self::AzureSnpVtpm,
            Platform::AzureTdxVtpm => Self::AzureTdxVtpm,
        }
    }
}

impl TryFrom<pb::Platform> for Platform {
    type Error = Error;
    fn try_from(p: pb::Platform) -> Result<Self> {
        match p {
            pb::Platform::Tpm => Ok(Self::Tpm),
            pb::Platform::Tdx => Ok(Self::Tdx),
            pb::Platform::SevSnp => Ok(Self::SevSnp),
            pb::Platform::AzureSnpVtpm => Ok(Self::AzureSnpVtpm),
            pb::Platform::AzureTdxVtpm => Ok(Self::AzureTdxVtpm),
            pb::Platform::Unspecified => Err(Error::invalid("evidence", "platform", "unspecified")),
        }
    }
}

impl From<HashAlg> for pb::HashAlgorithm {
    fn from(a: HashAlg) -> Self {
        match a {
            HashAlg::Sha1 => Self::Sha1,
            HashAlg::Sha256 => Self::Sha256,
            HashAlg::Sha384 => Self::Sha384,
            HashAlg::Sha512 => Self::Sha512,
        }
    }
}

impl From<Kem> for pb::KemId {
    fn from(k: Kem) -> Self {
        match k {
            Kem::P256HkdfSha256 => Self::P256HkdfSha256,
            Kem::X25519HkdfSha256 => Self::X25519HkdfSha256,
        }
    }
}

impl From<TpmEvidence> for pb::TpmEvidence {
    fn from(t: TpmEvidence) -> Self {
        Self {
            attest: t.attest,
            signature: t.signature,
            ak_public: t.ak_public,
            ak_cert_chain: t.ak_cert_chain,
            pcr_banks: t
                .pcr_banks
                .into_iter()
                .map(|b| pb::PcrBank {
                    algorithm: pb::HashAlgorithm::from(b.alg).into(),
                    values: b.values.into_iter().collect(),
                })
                .collect(),
            uefi_event_log: t.uefi_event_log,
        }
    }
}

impl TryFrom<pb::TpmEvidence> for TpmEvidence {
    type Error = Error;
    fn try_from(t: pb::TpmEvidence) -> Result<Self> {
        limit("tpm.attest", &t.attest, limits::TPM_ATTEST)?;
        limit("tpm.signature", &t.signature, limits::TPM_SIGNATURE)?;
        limit("tpm.ak_public", &t.ak_public, limits::TPM_AK_PUBLIC)?;
        limit_chain("tpm.ak_cert_chain", &t.ak_cert_chain, limits::CERT_COUNT)?;
        limit("tpm.uefi_event_log", &t.uefi_event_log, limits::EVENT_LOG)?;
        if t.pcr_banks.len() > limits::PCR_BANKS {
            return Err(Error::TooLarge {
                field: "tpm.pcr_banks",
                size: t.pcr_banks.len(),
                limit: limits::PCR_BANKS,
            });
        }
        let mut banks = Vec::with_capacity(t.pcr_banks.len());
        for b in t.pcr_banks {
            let id = u16::try_from(b.algorithm).unwrap_or(0);
            let alg = HashAlg::from_tpm_alg_id(id).ok_or_else(|| {
                Error::invalid("evidence", "tpm.pcr_banks.algorithm", format!("{} unknown", b.algorithm))
            })?;
            if banks.iter().any(|x: &PcrBank| x.alg == alg) {
                return Err(Error::invalid(
                    "evidence",
                    "tpm.pcr_banks",
                    format!("{} bank twice", alg.name()),
                ));
            }
            for (idx, v) in &b.values {
                if *idx > 23 {
                    return Err(Error::invalid(
                        "evidence",
                        "tpm.pcr_banks.values",
                        format!("PCR index {idx}"),
                    ));
                }
                if v.len() != alg.digest_len() {
                    return Err(Error::invalid(
                        "evidence",
                        "tpm.pcr_banks.values",
                        format!("{} PCR {idx} is {} bytes", alg.name(), v.len()),
                    ));
                }
            }
            banks.push(PcrBank { alg, values: b.values.into_iter().collect() });
        }
        Ok(Self {
            attest: t.attest,
            signature: t.signature,
            ak_public: t.ak_public,
            ak_cert_chain: t.ak_cert_chain,
            pcr_banks: banks,
            uefi_event_log: t.uefi_event_log,
        })
    }
}

impl From<TdxEvidence> for pb::TdxEvidence {
    fn from(t: TdxEvidence) -> Self {
        Self { quote: t.quote, ccel_table: t.ccel_table, ccel_log: t.ccel_log }
    }
}

impl TryFrom<pb::TdxEvidence> for TdxEvidence {
    type Error = Error;
    fn try_from(t: pb::TdxEvidence) -> Result<Self> {
        limit("tdx.quote", &t.quote, limits::TDX_QUOTE)?;
        limit("tdx.ccel_table", &t.ccel_table, limits::CCEL_TABLE)?;
        limit("tdx.ccel_log", &t.ccel_log, limits::EVENT_LOG)?;
        Ok(Self { quote: t.quote, ccel_table: t.ccel_table, ccel_log: t.ccel_log })
    }
}

impl From<SevSnpEvidence> for pb::SevSnpEvidence {
    fn from(s: SevSnpEvidence) -> Self {
        Self { report: s.report, cert_chain: s.cert_chain }
    }
}

impl TryFrom<pb::SevSnpEvidence> for SevSnpEvidence {
    type Error = Error;
    fn try_from(s: pb::SevSnpEvidence) -> Result<Self> {
        limit("sev_snp.report", &s.report, limits::SNP_REPORT)?;
        limit_chain("sev_snp.cert_chain", &s.cert_chain, limits::SNP_CERTS)?;
        Ok(Self { report: s.report, cert_chain: s.cert_chain })
    }
}

impl From<AzureVtpmEvidence> for pb::AzureVtpmEvidence {
    fn from(a: AzureVtpmEvidence) -> Self {
        Self { hcl_report: a.hcl_report, vtpm: Some(a.vtpm.into()), td_quote: a.td_quote, vcek: a.vcek }
    }
}

impl TryFrom<pb::AzureVtpmEvidence> for AzureVtpmEvidence {
    type Error = Error;
    fn try_from(a: pb::AzureVtpmEvidence) -> Result<Self> {
        limit("azure.hcl_report", &a.hcl_report, limits::HCL_REPORT)?;
        limit("azure.td_quote", &a.td_quote, limits::TDX_QUOTE)?;
        limit("azure.vcek", &a.vcek, limits::CERT_LEN)?;
        let vtpm = a.vtpm.ok_or_else(|| Error::invalid("evidence", "azure.vtpm", "missing"))?.try_into()?;
        Ok(Self { hcl_report: a.hcl_report, vtpm, td_quote: a.td_quote, vcek: a.vcek })
    }
}

impl From<GpuEvidence> for pb::GpuEvidence {
    fn from(g: GpuEvidence) -> Self {
        Self { report: g.report, cert_chain: g.cert_chain }
    }
}

impl TryFrom<pb::GpuEvidence> for GpuEvidence {
    type Error = Error;
    fn try_from(g: pb::GpuEvidence) -> Result<Self> {
        limit("gpus.report", &g.report, limits::GPU_REPORT)?;
        limit_chain("gpus.cert_chain", &g.cert_chain, limits::CERT_COUNT)?;
        Ok(Self { report: g.report, cert_chain: g.cert_chain })
    }
}

impl From<Evidence> for pb::Evidence {
    fn from(e: Evidence) -> Self {
        Self {
            binding_version: BINDING_VERSION,
            nonce: e.nonce.0.to_vec(),
            tee_key_kem: pb::KemId::from(e.tee_public_key.kem()).into(),
            tee_public_key: e.tee_public_key.as_bytes().to_vec(),
            platform: pb::Platform::from(e.platform).into(),
            tpm: e.tpm.map(Into::into),
            tdx: e.tdx.map(Into::into),
            sev_snp: e.sev_snp.map(Into::into),
            azure: e.azure.map(Into::into),
            runtime_event_log: e.runtime_event_log,
            gpus: e.gpus.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::Evidence> for Evidence {
    type Error = Error;
    fn try_from(e: pb::Evidence) -> Result<Self> {
        if e.binding_version != BINDING_VERSION {
            return Err(Error::invalid(
                "evidence",
                "binding_version",
                format!("{} (this verifier knows {BINDING_VERSION})", e.binding_version),
            ));
        }
        let nonce = Nonce::from_slice(&e.nonce)?;
        let kem_id = u16::try_from(e.tee_key_kem).unwrap_or(0);
        let tee_public_key = TeePublicKey::new(Kem::from_id(kem_id)?, e.tee_public_key)?;
        let platform = pb::Platform::try_from(e.platform)
            .map_err(|_| Error::invalid("evidence", "platform", format!("{} unknown", e.platform)))?
            .try_into()?;
        limit("runtime_event_log", &e.runtime_event_log, limits::EVENT_LOG)?;
        if e.gpus.len() > limits::GPU_COUNT {
            let detail = format!("{} GPUs, at most {}", e.gpus.len(), limits::GPU_COUNT);
            return Err(Error::invalid("evidence", "gpus", detail));
        }
        let ev = Self {
            nonce,
            tee_public_key,
            platform,
            tpm: e.tpm.map(TryInto::try_into).transpose()?,
            tdx: e.tdx.map(TryInto::try_into).transpose()?,
            sev_snp: e.sev_snp.map(TryInto::try_into).transpose()?,
            azure: e.azure.map(TryInto::try_into).transpose()?,
            runtime_event_log: e.runtime_event_log,
            gpus: e.gpus.into_iter().map(TryInto::try_into).collect::<Result<_>>()?,
        };
        let has_part = match ev.platform {
            Platform::Tpm => ev.tpm.is_some(),
            Platform::Tdx => ev.tdx.is_some(),
            Platform::SevSnp => ev.sev_snp.is_some(),
            Platform::AzureSnpVtpm | Platform::AzureTdxVtpm => ev.azure.is_some(),
        };
        if !has_part {
            return Err(Error::invalid(
                "evidence",
                "platform",
                format!("{:?} evidence part missing", ev.platform),
            ));
        }
        Ok(ev)
    }
}

impl Evidence {
    /// Decodes and checks a protobuf-encoded `Evidence`.
    ///
    /// # Errors
    /// When the bytes are not valid protobuf, or a field breaks its limit.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let msg = <pb::Evidence as prost::Message>::decode(bytes)
            .map_err(|e| Error::invalid("evidence", "protobuf", e.to_string()))?;
        msg.try_into()
    }

    /// Encodes as protobuf.
    #[must_use]
    pub fn encode(self) -> Vec<u8> {
        prost::Message::encode_to_vec(&pb::Evidence::from(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Evidence {
        let mut values = BTreeMap::new();
        values.insert(0, vec![0xaa; 32]);
        values.insert(11, vec![0xbb; 32]);
        Evidence {
            nonce: Nonce([3; 32]),
            tee_public_key: TeePublicKey::new(Kem::X25519HkdfSha256, vec![5; 32]).unwrap(),
            platform: Platform::Tdx,
            tpm: Some(TpmEvidence {
                attest: vec![0xff, 0x54, 0x43, 0x47],
                signature: vec![1, 2, 3],
                ak_public: vec![4, 5],
                ak_cert_chain: vec![vec![0x30, 0x82], vec![0x30, 0x81]],
                pcr_banks: vec![PcrBank { alg: HashAlg::Sha256, values }],
                uefi_event_log: vec![9; 100],
            }),
            tdx: Some(TdxEvidence {
                quote: vec![4, 0, 2, 0],
                ccel_table: b"CCEL".to_vec(),
                ccel_log: vec![1; 10],
            }),
            sev_snp: Some(SevSnpEvidence { report: vec![2; 1184], cert_chain: vec![vec![0x30]] }),
            azure: Some(AzureVtpmEvidence {
                hcl_report: b"HCLA".to_vec(),
                vtpm: TpmEvidence::default(),
                td_quote: vec![],
                vcek: vec![0x30],
            }),
            runtime_event_log: vec![0, 0, 0, 0, 8],
            gpus: vec![GpuEvidence { report: vec![0x11, 0xe0, 1, 0xff], cert_chain: vec![vec![0x30]] }],
        }
    }

    #[test]
    fn round_trips_through_protobuf() {
        let ev = sample();
        let bytes = ev.clone().encode();
        assert_eq!(Evidence::decode(&bytes).unwrap(), ev);
    }

    #[test]
    fn rejects_oversized_fields() {
        let mut ev = sample();
        ev.runtime_event_log = vec![0; limits::EVENT_LOG + 1];
        let err = Evidence::decode(&ev.encode()).unwrap_err();
        assert_eq!(err.to_string(), "evidence: runtime_event_log is 1048577 bytes, limit 1048576");
        let mut ev = sample();
        ev.tdx.as_mut().unwrap().quote = vec![0; limits::TDX_QUOTE + 1];
        assert!(Evidence::decode(&ev.encode()).unwrap_err().to_string().contains("tdx.quote"));
        let mut ev = sample();
        ev.gpus[0].report = vec![0; limits::GPU_REPORT + 1];
        assert_eq!(
            Evidence::decode(&ev.encode()).unwrap_err().to_string(),
            "evidence: gpus.report is 65537 bytes, limit 65536"
        );
        let mut ev = sample();
        ev.gpus = vec![GpuEvidence::default(); limits::GPU_COUNT + 1];
        assert_eq!(
            Evidence::decode(&ev.encode()).unwrap_err().to_string(),
            "evidence: invalid gpus: 9 GPUs, at most 8"
        );
    }

    #[test]
    fn rejects_bad_shapes() {
        let mut msg = pb::Evidence::from(sample());
        msg.nonce.pop();
        assert!(Evidence::try_from(msg).unwrap_err().to_string().contains("nonce"));
        let mut msg = pb::Evidence::from(sample());
        msg.binding_version = 2;
        assert!(Evidence::try_from(msg).unwrap_err().to_string().contains("binding_version"));
        let mut msg = pb::Evidence::from(sample());
        msg.tpm.as_mut().unwrap().pcr_banks[0].values.insert(24, vec![0; 32]);
        assert!(Evidence::try_from(msg).unwrap_err().to_string().contains("PCR index 24"));
        let mut msg = pb::Evidence::from(sample());
        msg.tdx = None;
        assert!(Evidence::try_from(msg).unwrap_err().to_string().contains("evidence part missing"));
        assert!(Evidence::decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
