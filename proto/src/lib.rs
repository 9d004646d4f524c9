//! The sealroom gRPC API, generated from `proto/sealroom/**.proto`.
//!
//! Packages are versioned (`v1`); a breaking change gets a new package rather than an edit. The gRPC clients
//! and servers come with the `grpc` feature (default); without it only the messages (prost) are built, which
//! is all the evidence model and the verifier library need.
#![forbid(unsafe_code)]

/// `sealroom.attestation.v1`: the agent's `Attestation` service and the evidence model.
pub mod attestation {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]
        include!(concat!(env!("OUT_DIR"), "/sealroom.attestation.v1.rs"));
    }
}

/// `sealroom.keybroker.v1`: the data provider's `KeyBroker` service.
pub mod keybroker {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]
        include!(concat!(env!("OUT_DIR"), "/sealroom.keybroker.v1.rs"));
    }
}

/// The encoded `FileDescriptorSet` of every sealroom proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sealroom_descriptor.bin"));

#[cfg(feature = "grpc")]
pub mod limits;
