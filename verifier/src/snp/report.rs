//! The SEV-SNP ATTESTATION_REPORT (AMD SEV-SNP ABI spec, table "ATTESTATION_REPORT Structure"), versions 2 to 5.
//!
//! Parsed with the bounds-checked reader: every field is read in order, reserved ranges are skipped, and the
//! 1184-byte report must be consumed exactly. The signed part is bytes 0x000..0x2A0; the signature follows as
//! two 72-byte little-endian integers (r, s) and reserved bytes.

use sealroom_measurements::reader::Reader;

use crate::error::{Error, Result};

/// Size of an ATTESTATION_REPORT.
pub const REPORT_LEN: usize = 0x4A0;
/// Offset of the signature; everything before it is signed.
pub const SIGNED_LEN: usize = 0x2A0;
/// ECDSA P-384 with SHA-384, the only algorithm the firmware uses.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

const LAYER: &str = "snp report";

/// The key that signed the report (SIGNING_KEY field, bits 4:2 at 0x48).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum SigningKey {
    /// Versioned Chip Endorsement Key: per chip and TCB.
    Vcek,
    /// Versioned Loaded Endorsement Key: per cloud provider.
    Vlek,
    /// Unsigned report.
    None,
}

/// A TCB_VERSION: security patch levels of each firmware component.
///
/// Milan and Genoa: byte 0 boot loader, 1 TEE, 6 SNP, 7 microcode. Turin adds FMC and moves the fields:
/// byte 0 FMC, 1 boot loader, 2 TEE, 3 SNP, 7 microcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcbVersion {
    /// FMC SPL (Turin and later only).
    pub fmc: Option<u8>,
    /// Boot loader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
}

impl TcbVersion {
    /// Decodes a raw TCB_VERSION for a product generation.
    #[must_use]
    pub fn decode(raw: u64, turin_layout: bool) -> Self {
        let b = raw.to_le_bytes();
        let [b0, b1, b2, b3, _, _, b6, b7] = b;
        if turin_layout {
            Self { fmc: Some(b0), bootloader: b1, tee: b2, snp: b3, microcode: b7 }
        } else {
            Self { fmc: None, bootloader: b0, tee: b1, snp: b6, microcode: b7 }
        }
    }

    /// The components below `min`'s level, each as (name, reported SPL, minimum SPL). FMC counts only when
    /// both sides have one (Turin and later).
    #[must_use]
    pub fn components_below(&self, min: &Self) -> Vec<(&'static str, u8, u8)> {
        let mut out = Vec::new();
        if let (Some(got), Some(want)) = (self.fmc, min.fmc)
            && got < want
        {
            out.push(("fmc", got, want));
        }
        for (name, got, want) in [
            ("bootloader", self.bootloader, min.bootloader),
            ("tee", self.tee, min.tee),
            ("snp", self.snp, min.snp),
            ("microcode", self.microcode, min.microcode),
        ] {
            if got < want {
                out.push((name, got, want));
            }
        }
        out
    }

    /// Whether every component is at least `min`'s level.
    #[must_use]
    pub fn at_least(&self, min: &Self) -> bool {
        self.fmc.unwrap_or(0) >= min.fmc.unwrap_or(0)
            && self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
    }
}

impl std::fmt::Display for TcbVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc {fmc} ")?;
        }
        write!(f, "bl {} tee {} snp {} ucode {}", self.bootloader, self.tee, self.snp, self.microcode)
    }
}

/// Guest policy bits (GUEST_POLICY, ABI spec "Guest Policy Structure").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestPolicy(pub u64);

impl GuestPolicy {
    /// Minimum ABI minor version.
    #[must_use]
    pub fn abi_minor(self) -> u8 {
        self.0.to_le_bytes()[0]
    }
    /// Minimum ABI major version.
    #[must_use]
    pub fn abi_major(self) -> u8 {
        self.0.to_le_bytes()[1]
    }
    /// Bit 16: SMT allowed.
    #[must_use]
    pub fn smt_allowed(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Bit 17: reserved, must be one.
    #[must_use]
    pub fn reserved_one(self) -> bool {
        self.0 & (1 << 17) != 0
    }
    /// Bit 18: association with a migration agent allowed.
    #[must_use]
    pub fn migrate_ma_allowed(self) -> bool {
        self.0 & (1 << 18) != 0
    }
    /// Bit 19: debugging allowed (the hypervisor can read guest memory).
    #[must_use]
    pub fn debug_allowed(self) -> bool {
        self.0 & (1 << 19) != 0
    }
    /// Bit 20: single socket only.
    #[must_use]
    pub fn single_socket(self) -> bool {
        self.0 & (1 << 20) != 0
    }
}

/// A parsed ATTESTATION_REPORT. Byte arrays are exactly as in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpReport {
    /// Report format version (2 = Milan ≥ 1.55, 3 adds CPUID fields, 5 adds mitigation vectors).
    pub version: u32,
    /// Guest SVN from the ID block.
    pub guest_svn: u32,
    /// Guest policy.
    pub policy: GuestPolicy,
    /// FAMILY_ID from the ID block.
    pub family_id: [u8; 16],
    /// IMAGE_ID from the ID block.
    pub image_id: [u8; 16],
    /// VMPL the report was requested from.
    pub vmpl: u32,
    /// Signature algorithm (1 = ECDSA P-384 SHA-384).
    pub signature_algo: u32,
    /// CURRENT_TCB, raw.
    pub current_tcb: u64,
    /// PLATFORM_INFO bits (bit 0 SMT enabled, bit 1 TSME enabled, …).
    pub platform_info: u64,
    /// Bits at 0x48: AUTHOR_KEY_EN (0), MASK_CHIP_KEY (1), SIGNING_KEY (4:2).
    pub key_info: u32,
    /// REPORT_DATA supplied by the guest.
    pub report_data: [u8; 64],
    /// Launch MEASUREMENT.
    pub measurement: [u8; 48],
    /// HOST_DATA supplied at launch.
    pub host_data: [u8; 32],
    /// SHA-384 of the ID key.
    pub id_key_digest: [u8; 48],
    /// SHA-384 of the author key.
    pub author_key_digest: [u8; 48],
    /// REPORT_ID.
    pub report_id: [u8; 32],
    /// REPORT_ID of the migration agent.
    pub report_id_ma: [u8; 32],
    /// REPORTED_TCB, raw: the TCB the VCEK was derived from.
    pub reported_tcb: u64,
    /// CPUID family/model/stepping (version ≥ 3), else zeros.
    pub cpuid_fam_mod_step: [u8; 3],
    /// CHIP_ID (zero when MASK_CHIP_ID is set or the key is a VLEK).
    pub chip_id: [u8; 64],
    /// COMMITTED_TCB, raw.
    pub committed_tcb: u64,
    /// Current firmware build, minor, major.
    pub current_version: [u8; 3],
    /// Committed firmware build, minor, major.
    pub committed_version: [u8; 3],
    /// LAUNCH_TCB, raw.
    pub launch_tcb: u64,
    /// Signature r, big-endian, 48 bytes.
    pub signature_r: [u8; 48],
    /// Signature s, big-endian, 48 bytes.
    pub signature_s: [u8; 48],
}

fn le72_to_be48(le: &[u8; 72], what: &'static str) -> Result<[u8; 48]> {
    let mut r = Reader::new(le);
    let low: [u8; 48] = r.take_array(what).map_err(Error::read(LAYER))?;
    let high = r.rest();
    if high.iter().any(|b| *b != 0) {
        return Err(Error::check(LAYER, format!("{what} does not fit in 384 bits")));
    }
    let mut be = low;
    be.reverse();
    Ok(be)
}

impl SnpReport {
    /// Parses exactly [`REPORT_LEN`] bytes.
    ///
    /// # Errors
    /// When the input is not 1184 bytes, the version is unknown, or a reserved/signature field is malformed.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let m = Error::read(LAYER);
        if bytes.len() != REPORT_LEN {
            return Err(Error::check(LAYER, format!("{} bytes, expected {REPORT_LEN}", bytes.len())));
        }
        let mut r = Reader::new(bytes);
        let version = r.u32_le("version").map_err(&m)?;
        if !(2..=5).contains(&version) {
            return Err(Error::check(LAYER, format!("version {version} unsupported (2..=5)")));
        }
        let guest_svn = r.u32_le("guest_svn").map_err(&m)?;
        let policy = GuestPolicy(r.u64_le("policy").map_err(&m)?);
        let family_id = r.take_array("family_id").map_err(&m)?;
        let image_id = r.take_array("image_id").map_err(&m)?;
        let vmpl = r.u32_le("vmpl").map_err(&m)?;
        let signature_algo = r.u32_le("signature_algo").map_err(&m)?;
        let current_tcb = r.u64_le("current_tcb").map_err(&m)?;
        let platform_info = r.u64_le("platform_info").map_err(&m)?;
        let key_info = r.u32_le("key_info").map_err(&m)?;
        r.skip(4, "reserved 0x4c").map_err(&m)?;
        let report_data = r.take_array("report_data").map_err(&m)?;
        let measurement = r.take_array("measurement").map_err(&m)?;
        let host_data = r.take_array("host_data").map_err(&m)?;
        let id_key_digest = r.take_array("id_key_digest").map_err(&m)?;
        let author_key_digest = r.take_array("author_key_digest").map_err(&m)?;
        let report_id = r.take_array("report_id").map_err(&m)?;
        let report_id_ma = r.take_array("report_id_ma").map_err(&m)?;
        let reported_tcb = r.u64_le("reported_tcb").map_err(&m)?;
        let cpuid: [u8; 3] = r.take_array("cpuid_fam_mod_step").map_err(&m)?;
        let cpuid_fam_mod_step = if version >= 3 { cpuid } else { [0; 3] };
        r.skip(0x1A0 - 0x18B, "reserved 0x18b").map_err(&m)?;
        let chip_id = r.take_array("chip_id").map_err(&m)?;
        let committed_tcb = r.u64_le("committed_tcb").map_err(&m)?;
        let current_version = r.take_array("current_version").map_err(&m)?;
        r.skip(1, "reserved 0x1eb").map_err(&m)?;
        let committed_version = r.take_array("committed_version").map_err(&m)?;
        r.skip(1, "reserved 0x1ef").map_err(&m)?;
        let launch_tcb = r.u64_le("launch_tcb").map_err(&m)?;
        r.skip(SIGNED_LEN - 0x1F8, "reserved 0x1f8").map_err(&m)?;
        let r_le: [u8; 72] = r.take_array("signature r").map_err(&m)?;
        let s_le: [u8; 72] = r.take_array("signature s").map_err(&m)?;
        r.skip(REPORT_LEN - SIGNED_LEN - 144, "signature reserved").map_err(&m)?;
        r.finish("snp report").map_err(&m)?;
        Ok(Self {
            version,
            guest_svn,
            policy,
            family_id,
            image_id,
            vmpl,
            signature_algo,
            current_tcb,
            platform_info,
            key_info,
            report_data,
            measurement,
            host_data,
            id_key_digest,
            author_key_digest,
            report_id,
            report_id_ma,
            reported_tcb,
            cpuid_fam_mod_step,
            chip_id,
            committed_tcb,
            current_version,
            committed_version,
            launch_tcb,
            signature_r: le72_to_be48(&r_le, "signature r")?,
            signature_s: le72_to_be48(&s_le, "signature s")?,
        })
    }

    /// The key that signed the report.
    #[must_use]
    pub fn signing_key(&self) -> SigningKey {
        match (self.key_info >> 2) & 0b111 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            _ => SigningKey::None,
        }
    }

    /// Whether the chip id was masked by the guest (MASK_CHIP_KEY).
    #[must_use]
    pub fn chip_id_masked(&self) -> bool {
        self.key_info & 0b10 != 0
    }

    /// The fixed-width r||s signature aws-lc-rs expects (`ECDSA_P384_SHA384_FIXED`).
    #[must_use]
    pub fn signature_fixed(&self) -> [u8; 96] {
        let mut out = [0u8; 96];
        let (r, s) = out.split_at_mut(48);
        r.copy_from_slice(&self.signature_r);
        s.copy_from_slice(&self.signature_s);
        out
    }

    /// Whether PLATFORM_INFO says SMT is enabled on the host.
    #[must_use]
    pub fn smt_enabled(&self) -> bool {
        self.platform_info & 1 != 0
    }
}

/// The signed bytes of a report: everything before the signature.
///
/// # Errors
/// When the input is shorter than the signed part.
pub fn signed_bytes(bytes: &[u8]) -> Result<&[u8]> {
    Reader::new(bytes).take(SIGNED_LEN, "signed part").map_err(Error::read(LAYER))
}
