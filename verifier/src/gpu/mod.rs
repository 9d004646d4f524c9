//! NVIDIA GPU confidential computing (Hopper): the SPDM attestation report, its device certificate chain to
//! NVIDIA's pinned device identity root, and the signed RIMs (reference values) chained to NVIDIA's pinned RIM
//! root, all verified offline at an injected time. See `docs/gpu.md`.

pub mod appraise;
mod c14n;
pub mod fuzzing;
pub mod report;
pub mod rim;
pub mod verify;

pub use report::GpuReport;
pub use rim::Rim;
pub use verify::{
    DeviceChain, GpuArchitecture, GpuClaims, GpuTrust, Revocation, RevocationStatus, RimKind, VerifiedRim,
    verify_device_chain, verify_gpu_report, verify_rim,
};
