//! Shared by the per-platform release tests: emulated TEE kernels for the real agent and the provider's broker.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

pub mod provider;
pub mod tee_kernel;
