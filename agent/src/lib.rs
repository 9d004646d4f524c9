//! sealroom-agent: the guest side. Probes the platform, measures the workload before it runs, serves
//! attestation over gRPC, fetches data keys from the broker and supervises the workload.
#![forbid(unsafe_code)]

pub mod error;

pub use error::{Error, Result};
