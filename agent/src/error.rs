//! The one error type of `sealroom-agent`'s library. Variants name the subsystem that failed.

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Building or checking evidence values failed.
    #[error(transparent)]
    Measurements(#[from] sealroom_measurements::Error),
    /// An attester (TPM, TDX, SEV-SNP) failed; `attester` names it.
    #[error("{attester}: {reason}")]
    Attester {
        /// Which attester.
        attester: &'static str,
        /// One line saying why.
        reason: String,
    },
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
