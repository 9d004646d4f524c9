//! The sealroom gRPC API, generated from `proto/sealroom/**.proto`.
//!
//! Packages are versioned (`v1`); a breaking change gets a new package rather than an edit.
#![forbid(unsafe_code)]

/// `sealroom.attestation.v1`: the agent's `Attestation` service and the evidence model.
pub mod attestation {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]
        tonic::include_proto!("sealroom.attestation.v1");
    }
}

/// `sealroom.keybroker.v1`: the data provider's `KeyBroker` service.
pub mod keybroker {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]
        tonic::include_proto!("sealroom.keybroker.v1");
    }
}

/// The encoded `FileDescriptorSet` of every sealroom proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sealroom_descriptor.bin"));

pub mod limits;
