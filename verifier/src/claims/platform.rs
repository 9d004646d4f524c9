//! What each platform's verified evidence says, typed: the TD's attributes and TCB, the SNP guest's policy,
//! VMPL and TCB levels, the TPM's attestation-key identity. Built only from evidence whose signatures and
//! chains verified; a policy reads these fields, never a string it has to look up.

use sealroom_measurements::evidence::HashAlg;
use serde::{Deserialize, Serialize};

use super::register::HexBytes;
use crate::snp::report::{SnpReport, TcbVersion};
use crate::snp::{KeyKind, Product};
use crate::tdx::TcbStatus;
use crate::tpm::ak_cert::AkIdentity;
use crate::tpm::ek::EkIdentity;
use crate::x509::UnixTime;

/// TDATTRIBUTES, decoded (Intel TDX module ABI, TD attributes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdAttributes {
    /// Bit 0: the TD runs in debug mode (the host can read and write its memory).
    pub debug: bool,
    /// Bit 28: EPT violations are not converted to #VE (required against a malicious VMM).
    pub sept_ve_disable: bool,
    /// Bit 29: the TD may be migrated.
    pub migratable: bool,
    /// Bit 63: the TD may use performance monitoring.
    pub perfmon: bool,
    /// The 8 bytes as quoted.
    pub raw: HexBytes,
}

impl TdAttributes {
    /// Decodes the quote's TDATTRIBUTES (little-endian).
    #[must_use]
    pub fn decode(raw: [u8; 8]) -> Self {
        let a = u64::from_le_bytes(raw);
        Self {
            debug: a & 1 != 0,
            sept_ve_disable: a & (1 << 28) != 0,
            migratable: a & (1 << 29) != 0,
            perfmon: a & (1 << 63) != 0,
            raw: raw.into(),
        }
    }
}

/// The TCB verdict Intel's collateral gives a TD quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxTcb {
    /// The converged TCB status (platform, TDX module, QE).
    pub status: TcbStatus,
    /// Intel security advisories that apply (INTEL-SA-…).
    pub advisory_ids: Vec<String>,
    /// The TCB level's date (Unix seconds).
    pub tcb_date: UnixTime,
    /// The collateral's TCB evaluation data number.
    pub evaluation_data_number: u32,
}

/// A verified TD quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxClaims {
    /// Quote version (4 or 5).
    pub quote_version: u16,
    /// TDATTRIBUTES, decoded. Read from the signed quote body, so known with or without collateral.
    pub td_attributes: TdAttributes,
    /// TCB status, advisories and date: present only when Intel collateral was given.
    pub tcb: Option<TdxTcb>,
    /// TEE_TCB_SVN (16 bytes).
    pub tee_tcb_svn: HexBytes,
    /// The platform's FMSPC (from the PCK certificate).
    pub fmspc: HexBytes,
    /// MRSEAM: the TDX module.
    pub mr_seam: HexBytes,
    /// MRTD.
    pub mr_td: HexBytes,
    /// RTMR0..3.
    pub rtmr: [HexBytes; 4],
    /// MRCONFIGID.
    pub mr_config_id: HexBytes,
    /// MROWNER.
    pub mr_owner: HexBytes,
    /// MROWNERCONFIG.
    pub mr_owner_config: HexBytes,
    /// XFAM.
    pub xfam: HexBytes,
}

impl TdxClaims {
    /// From a TD report body and what the quote's verification established.
    #[must_use]
    pub fn from_td_report(
        quote_version: u16,
        td: &crate::tdx::TdReport,
        fmspc: [u8; 6],
        tcb: Option<TdxTcb>,
    ) -> Self {
        Self {
            quote_version,
            td_attributes: TdAttributes::decode(td.td_attributes),
            tcb,
            tee_tcb_svn: td.tee_tcb_svn.into(),
            fmspc: fmspc.into(),
            mr_seam: td.mr_seam.into(),
            mr_td: td.mr_td.into(),
            rtmr: td.rtmr.map(HexBytes::from),
            mr_config_id: td.mr_config_id.into(),
            mr_owner: td.mr_owner.into(),
            mr_owner_config: td.mr_owner_config.into(),
            xfam: td.xfam.into(),
        }
    }

    /// From a quote verified against Intel collateral.
    #[must_use]
    pub fn from_verified(q: &crate::tdx::VerifiedTdxQuote) -> Self {
        Self {
            quote_version: q.version,
            td_attributes: TdAttributes::decode(q.td_attributes),
            tcb: Some(TdxTcb {
                status: q.tcb_status,
                advisory_ids: q.advisory_ids.clone(),
                tcb_date: q.tcb_date,
                evaluation_data_number: q.tcb_evaluation_data_number,
            }),
            tee_tcb_svn: q.tee_tcb_svn.into(),
            fmspc: q.fmspc.into(),
            mr_seam: q.mr_seam.into(),
            mr_td: q.mr_td.into(),
            rtmr: q.rtmr.map(HexBytes::from),
            mr_config_id: q.mr_config_id.into(),
            mr_owner: q.mr_owner.into(),
            mr_owner_config: q.mr_owner_config.into(),
            xfam: q.xfam.into(),
        }
    }
}

/// The SNP guest policy, decoded (ABI spec, guest policy structure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpGuestPolicy {
    /// Bit 19: the hypervisor may debug the guest (read its memory).
    pub debug: bool,
    /// Bit 18: a migration agent may be associated.
    pub migration_agent: bool,
    /// Bit 16: SMT allowed.
    pub smt: bool,
    /// Bit 20: single socket only.
    pub single_socket: bool,
    /// Minimum ABI major.minor.
    pub abi_major: u8,
    /// Minimum ABI minor.
    pub abi_minor: u8,
    /// The raw 64-bit policy.
    pub raw: u64,
}

/// A verified SEV-SNP attestation report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpClaims {
    /// Chip generation.
    pub product: Product,
    /// VCEK or VLEK.
    pub signing_key: KeyKind,
    /// Report version.
    pub report_version: u32,
    /// Guest policy.
    pub policy: SnpGuestPolicy,
    /// The VMPL the report was requested from (0 is the most privileged: the guest kernel itself).
    pub vmpl: u32,
    /// REPORTED_TCB: the TCB the VCEK was derived from.
    pub reported_tcb: TcbVersion,
    /// COMMITTED_TCB.
    pub committed_tcb: TcbVersion,
    /// LAUNCH_TCB.
    pub launch_tcb: TcbVersion,
    /// CURRENT_TCB.
    pub current_tcb: TcbVersion,
    /// Launch MEASUREMENT.
    pub measurement: HexBytes,
    /// HOST_DATA.
    pub host_data: HexBytes,
    /// SHA-384 of the ID key.
    pub id_key_digest: HexBytes,
    /// SHA-384 of the author key.
    pub author_key_digest: HexBytes,
    /// CHIP_ID (zero when masked or for a VLEK).
    pub chip_id: HexBytes,
    /// Guest SVN.
    pub guest_svn: u32,
    /// FAMILY_ID.
    pub family_id: HexBytes,
    /// IMAGE_ID.
    pub image_id: HexBytes,
}

impl SnpClaims {
    /// From a verified report and the product whose keys verified it.
    #[must_use]
    pub fn from_report(r: &SnpReport, product: Product, signing_key: KeyKind) -> Self {
        let turin = product.turin_layout();
        let p = r.policy;
        Self {
            product,
            signing_key,
            report_version: r.version,
            policy: SnpGuestPolicy {
                debug: p.debug_allowed(),
                migration_agent: p.migrate_ma_allowed(),
                smt: p.smt_allowed(),
                single_socket: p.single_socket(),
                abi_major: p.abi_major(),
                abi_minor: p.abi_minor(),
                raw: p.0,
            },
            vmpl: r.vmpl,
            reported_tcb: TcbVersion::decode(r.reported_tcb, turin),
            committed_tcb: TcbVersion::decode(r.committed_tcb, turin),
            launch_tcb: TcbVersion::decode(r.launch_tcb, turin),
            current_tcb: TcbVersion::decode(r.current_tcb, turin),
            measurement: r.measurement.into(),
            host_data: r.host_data.into(),
            id_key_digest: r.id_key_digest.into(),
            author_key_digest: r.author_key_digest.into(),
            chip_id: r.chip_id.into(),
            guest_svn: r.guest_svn,
            family_id: r.family_id.into(),
            image_id: r.image_id.into(),
        }
    }
}

/// Why the TPM's attestation key is trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AkTrustClaims {
    /// Certified by Google's AK CA (a GCE vTPM); names the instance when the certificate does.
    GoogleCa(AkIdentity),
    /// Enrolled out of band (swtpm, an on-premises TPM): SHA-256 of its TPMT_PUBLIC.
    Enrolled {
        /// SHA-256 of the marshalled TPMT_PUBLIC.
        ak_public_sha256: HexBytes,
    },
    /// Proven resident, by credential activation, in a TPM whose EK certificate chains to a configured EK CA.
    EkCertified(EkIdentity),
    /// The Azure paravisor's HCLAkPub, vouched for by the hardware report (its REPORT_DATA covers the key).
    AzureHcl,
}

/// What a verified TPM quote proves (the PCR values are in [`super::Appraisal::registers`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmClaims {
    /// Why the AK is trusted.
    pub ak: AkTrustClaims,
    /// The banks the quote covers.
    pub quoted_banks: Vec<HashAlg>,
    /// TPM firmware version, when the quote carries it (Azure's tooling strips it).
    pub firmware_version: Option<u64>,
    /// TPM reset count, when the quote carries it.
    pub reset_count: Option<u32>,
}
