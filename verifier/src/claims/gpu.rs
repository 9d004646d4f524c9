//! What the verified NVIDIA GPU reports of a sealroom `Evidence` say, typed (`docs/gpu.md`). One entry per
//! GPU, present only when the GPU's device chain, report signature, nonce and every RIM measurement verified:
//! a GPU that fails any check fails the appraisal's `gpu` layer instead.

use serde::{Deserialize, Serialize};

use super::register::HexBytes;
use crate::gpu::{GpuArchitecture, GpuClaims, RevocationStatus, RimKind};
use crate::x509::UnixTime;

/// One RIM measurement index and how it compared with the report's block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuMeasurement {
    /// The RIM that lists the index.
    pub rim: RimKind,
    /// The RIM index (SPDM measurement block index + 1 is the block).
    pub index: u8,
    /// Whether the block's value is one of the RIM's golden values.
    pub matched: bool,
}

/// Whether the device and RIM chains were checked for revocation; never silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum GpuRevocation {
    /// No CRL snapshot was configured: revocation is unknown.
    NotChecked,
    /// Every covered certificate was checked against a verified CRL current at this time (Unix seconds).
    CheckedAt(UnixTime),
}

/// One verified GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuAppraisal {
    /// Architecture, from the chip the NVIDIA-signed attestation certificate names.
    pub architecture: GpuArchitecture,
    /// Chip ("GH100").
    pub chip: String,
    /// Driver version, from the signed report.
    pub driver_version: String,
    /// VBIOS version, from the signed report.
    pub vbios_version: String,
    /// NVIDIA RIM id of the matched driver RIM ("NV_GPU_DRIVER_GH100_545.00").
    pub driver_rim_id: String,
    /// NVIDIA RIM id of the matched VBIOS RIM ("NV_GPU_VBIOS_1010_0200_882_96005E0001").
    pub vbios_rim_id: String,
    /// Every measurement index the two RIMs list, with its outcome.
    pub measurements: Vec<GpuMeasurement>,
    /// Whether the report's FWID was present and equal to the attestation certificate's.
    pub fwid_bound: bool,
    /// Attestation certificate serial, hex.
    pub attestation_cert_serial: String,
    /// Revocation of the device chain and both RIM chains.
    pub revocation: GpuRevocation,
    /// The report's signed request nonce: checked equal to this evidence's binding digest (SHA-256 over the
    /// nonce and the TEE key, `docs/binding.md`), so the GPU answered the same challenge as the CPU TEE.
    pub bound_nonce: HexBytes,
}

impl GpuAppraisal {
    /// From a report verified against `binding_digest` at `at`.
    #[must_use]
    pub fn from_verified(c: &GpuClaims, binding_digest: &[u8; 32], at: UnixTime) -> Self {
        Self {
            architecture: c.architecture,
            chip: c.chip.clone(),
            driver_version: c.driver_version.clone(),
            vbios_version: c.vbios_version.clone(),
            driver_rim_id: c.driver_rim_id.clone(),
            vbios_rim_id: c.vbios_rim_id.clone(),
            measurements: c
                .measurements_matched
                .iter()
                .map(|(rim, index)| GpuMeasurement { rim: *rim, index: *index, matched: true })
                .collect(),
            fwid_bound: c.fwid_bound,
            attestation_cert_serial: c.attestation_cert_serial.clone(),
            revocation: match c.revocation {
                RevocationStatus::CheckedCrl => GpuRevocation::CheckedAt(at),
                RevocationStatus::NotChecked => GpuRevocation::NotChecked,
            },
            bound_nonce: binding_digest.to_vec().into(),
        }
    }
}
