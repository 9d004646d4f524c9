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
    /// Untrusted bytes of `layer` were malformed (truncated, trailing data).
    #[error("{layer}: {source}")]
    Malformed {
        /// The structure being parsed ("snp report", "tpms_attest", …).
        layer: &'static str,
        /// Where and what.
        source: sealroom_measurements::reader::ReadError,
    },
    /// Several checks failed; the first is the headline, all are listed.
    #[error("{}", join_reasons(.0))]
    Checks(Vec<Error>),
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

    /// Wraps a reader error with the layer it happened in.
    pub fn read(layer: &'static str) -> impl Fn(sealroom_measurements::reader::ReadError) -> Self {
        move |source| Self::Malformed { layer, source }
    }
}

fn join_reasons(errors: &[Error]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl Error {
    /// Every single failure inside this error (flattening [`Error::Checks`]).
    #[must_use]
    pub fn reasons(&self) -> Vec<String> {
        match self {
            Self::Checks(v) => v.iter().flat_map(Self::reasons).collect(),
            other => vec![other.to_string()],
        }
    }

    /// `Ok(())` when `errors` is empty, the single error, or [`Error::Checks`].
    ///
    /// # Errors
    /// When `errors` is not empty.
    pub fn from_all(mut errors: Vec<Error>) -> Result<()> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Self::Checks(errors)),
        }
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
