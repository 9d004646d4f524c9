//! The one error type of `sealroom-measurements`. Each variant names the layer and field that failed.

use crate::reader::ReadError;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Untrusted bytes were malformed; `layer` says which structure ("uefi event log", "cel record", …).
    #[error("{layer}: {source}")]
    Malformed {
        /// The structure being parsed.
        layer: &'static str,
        /// Where and what.
        source: ReadError,
    },
    /// A field had a value outside what the format allows.
    #[error("{layer}: invalid {field}: {detail}")]
    InvalidField {
        /// The structure being parsed.
        layer: &'static str,
        /// The field.
        field: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// A field exceeded its documented size limit.
    #[error("evidence: {field} is {size} bytes, limit {limit}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its size.
        size: usize,
        /// Its limit.
        limit: usize,
    },
    /// The evidence's REPORT_DATA / extraData does not bind the expected nonce and TEE key.
    #[error("binding: {0}")]
    Binding(String),
    /// A key broker's response is not signed by the broker the workload spec pins ("broker response: …").
    #[error("broker response: {0}")]
    BrokerResponse(String),
    /// A replayed register differs from the value it must have ("pcr 15 (sha256) mismatch: expected …, got …").
    #[error("{register} mismatch: expected {expected}, got {got}")]
    RegisterMismatch {
        /// The register, e.g. "pcr 15 (sha256)" or "rtmr3".
        register: String,
        /// Expected value, hex.
        expected: String,
        /// Replayed value, hex.
        got: String,
    },
}

impl Error {
    /// An [`Error::InvalidField`].
    pub fn invalid(layer: &'static str, field: &'static str, detail: impl Into<String>) -> Self {
        Self::InvalidField { layer, field, detail: detail.into() }
    }

    /// Wraps a reader error with the layer it happened in.
    pub fn malformed(layer: &'static str) -> impl Fn(ReadError) -> Self {
        move |source| Self::Malformed { layer, source }
    }

    /// An [`Error::RegisterMismatch`] with both values printed as hex.
    pub fn mismatch(register: impl Into<String>, expected: &[u8], got: &[u8]) -> Self {
        Self::RegisterMismatch {
            register: register.into(),
            expected: hex::encode(expected),
            got: hex::encode(got),
        }
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
