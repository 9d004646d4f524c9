//! The one error type of `sealroom-verifier`. Variants name the layer and the check that failed, so every
//! refusal reads as one line: "tdx quote: QE report signature invalid".

/// Everything that can go wrong while verifying evidence.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The evidence (or a part of it) could not be decoded or breaks a limit.
    #[error(transparent)]
    Measurements(#[from] sealroom_measurements::Error),
    /// A check of a layer failed: `layer` is "tdx quote", "snp report", "tpm quote", …
    #[error("{layer}: {reason}")]
    Check {
        /// The verification layer.
        layer: &'static str,
        /// One line saying why.
        reason: String,
    },
    /// Reference values, collateral or policy input could not be read.
    #[error("input: {0}")]
    Input(String),
}

impl Error {
    /// A failed check in `layer`.
    pub fn check(layer: &'static str, reason: impl Into<String>) -> Self {
        Self::Check { layer, reason: reason.into() }
    }

    /// Re-labels a failure under `layer`, keeping what it said as context: an x509 failure inside the TDX PCK
    /// chain reads "tdx quote: PCK chain: certificate 'Intel SGX PCK Certificate': expired (…)".
    #[must_use]
    pub fn within(self, layer: &'static str, context: &str) -> Self {
        match self {
            Self::Check { reason, .. } => Self::check(layer, format!("{context}: {reason}")),
            other => Self::check(layer, format!("{context}: {other}")),
        }
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
