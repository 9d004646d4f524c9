//! Shared harness for sealroom's end-to-end tests (process management, free ports, test data paths).
#![forbid(unsafe_code)]

use std::path::PathBuf;

pub mod agent;
pub mod analytics;
pub mod booted_tpm;
pub mod broker;
pub mod oci_image;
pub mod placeholder;
pub mod postgres;
pub mod registry;
pub mod swtpm;
pub mod tls;
pub mod vm;

/// The repository root (the workspace directory).
#[must_use]
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}
