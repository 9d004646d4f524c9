//! TPM 2.0 quote verification (GCE vTPM, swtpm, Azure vTPM): structures, quote checks, AK certificates, EK
//! certificates and credential activation.

pub mod ak_cert;
pub mod credential;
pub mod ek;
pub mod gce_proto;
pub mod quote;
pub mod structures;
pub mod verify;
