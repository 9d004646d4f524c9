//! The one error type of `sealroom-agent`'s library. Variants name the subsystem that failed.

use std::path::PathBuf;
use std::time::Duration;

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
    /// A kernel interface or state file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What the file is ("configfs-tsm inblob", "runtime log", …).
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The runtime event log and the registers may disagree (an intent without its record): the agent
    /// refuses to measure more or to attest until an operator looks.
    #[error("runtime log: {0}")]
    RuntimeLog(String),
    /// A caller's request was malformed (wrong nonce size, oversized or foreign key, …).
    #[error("request: {0}")]
    Request(String),
    /// No attester is available on this platform (or not the one asked for).
    #[error("platform: {0}")]
    Platform(String),
    /// The attestation worker's queue is full.
    #[error("attestation queue: full ({0} requests waiting)")]
    Busy(usize),
    /// The request waited or ran longer than its deadline.
    #[error("attestation queue: no answer within {0:?}")]
    Timeout(Duration),
    /// The attestation worker has stopped.
    #[error("attestation worker: stopped")]
    WorkerGone,
    /// Configuration or server start-up failed.
    #[error("server: {0}")]
    Server(String),
    /// A system call made by PID 1 (mount, finit_module, rtnetlink, …) failed; `call` names it.
    #[error("pid1: {call}: {reason}")]
    System {
        /// The system call or interface.
        call: &'static str,
        /// Its target and the OS error, in one line.
        reason: String,
    },
    /// A sealed input was refused (`Attestation.SubmitInput`); `late` when no workload waits for sealed inputs
    /// (none yet, or the launch separator was measured), otherwise the envelope itself was refused.
    #[error("sealed input: {reason}")]
    SealedInput {
        /// Whether it arrived when none is accepted (FAILED_PRECONDITION rather than INVALID_ARGUMENT).
        late: bool,
        /// One line saying why.
        reason: String,
    },
    /// The workload could not be specified, fetched, verified, admitted by its launch policy, unpacked, run or
    /// measured; `stage` names the step ("spec", "fetch", "launch policy", "unpack", "runtime", "output", …).
    #[error("workload {stage}: {reason}")]
    Workload {
        /// The step that failed.
        stage: &'static str,
        /// One line saying why.
        reason: String,
    },
}

impl Error {
    /// An [`Error::Attester`].
    pub fn attester(attester: &'static str, reason: impl Into<String>) -> Self {
        Self::Attester { attester, reason: reason.into() }
    }

    /// An [`Error::Workload`].
    pub fn workload(stage: &'static str, reason: impl Into<String>) -> Self {
        Self::Workload { stage, reason: reason.into() }
    }

    /// An [`Error::Io`] builder for `map_err`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
