//! sealroom-verifier: decides whether evidence from a confidential VM is genuine and what it proves.
//!
//! Verification is layered (platform, firmware, kernel/image, workload), one module per layer, each with
//! explicit reference values. Time is an input; nothing here reads the clock or uses randomness.
#![forbid(unsafe_code)]

pub mod appraisal;
pub mod azure;
pub mod claims;
pub mod ear;
pub mod error;
pub mod evidence_kind;
pub mod golden_refs;
pub mod gpu;
pub mod snp;
pub mod tdx;
#[cfg(any(test, feature = "test-anchors"))]
pub(crate) mod test_der;
pub mod tpm;
pub mod x509;

pub use error::{Error, Result};
