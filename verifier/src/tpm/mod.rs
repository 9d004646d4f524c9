//! TPM 2.0 quote verification (GCE vTPM, swtpm, Azure vTPM): structures, quote checks, AK certificates.

pub mod gce_proto;
pub mod quote;
pub mod structures;
