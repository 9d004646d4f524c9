//! sealroom-agent: the guest side. Probes the platform, measures the workload before it runs, serves
//! attestation over gRPC, fetches data keys from the broker and supervises the workload.
#![forbid(unsafe_code)]

pub mod attester;
pub mod error;
pub mod paths;
pub mod pid1;
pub mod runtime;
pub mod sealed_inbox;
pub mod server;
pub mod service;
pub mod sys;
pub mod tee_key;
pub mod worker;
pub mod workload;

pub use error::{Error, Result};
