//! The key broker: releases a data provider's keys only to a TEE whose evidence the verifier accepted and whose
//! workload the provider's policy approves, sealed (HPKE) to the TEE's ephemeral key, with every decision in a
//! hash-chained audit log.
//!
//! One module per part: [`nonce`] (stateless MACed single-use challenges), [`ek_path`] (TPM AKs trusted through
//! an EK certificate and credential activation), [`ratelimit`] (per-peer token buckets), [`keystore`] (keys encrypted at rest in redb; [`keystate`] its
//! state record and rollback anchor),
//! [`policy`] (declarative per-key rules over an [`appraisal::Appraisal`]), [`seal`] (RFC 9180 HPKE),
//! [`token`] (the EAR JWT), [`service`] (challenge and release), [`receipt`] (output receipts), [`grpc`] (the
//! gRPC `KeyBroker` over both; releases appraised on an [`appraisal_pool`]), [`audit`] (the log), [`admin`] (key management over a local socket). Evidence
//! is appraised by the `sealroom-verifier` library. Time and randomness are injected through [`Clock`] and
//! [`Randomness`], so the broker's logic never reads the wall clock or the system RNG itself; the `sealroom
//! broker` binary supplies both ([`SystemClock`], [`SystemRandomness`]; tests pin time with [`ManualClock`]).
#![forbid(unsafe_code)]

pub mod admin;
pub mod appraisal;
pub mod appraisal_pool;
pub mod audit;
pub mod ear_claims;
pub mod ek_path;
pub mod error;
pub mod grpc;
pub mod jwks;
pub mod keystate;
pub mod keystore;
pub mod nonce;
pub mod nonce_mac;
pub mod pg;
pub mod policy;
pub mod ratelimit;
pub mod receipt;
pub mod seal;
pub mod service;
pub mod store;
pub mod token;

pub use error::{Error, Result};

/// The broker's notion of now.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The broker's source of secret random bytes (nonces, generated keys, AES-GCM nonces, HPKE ephemeral keys,
/// ECDSA signatures).
pub trait Randomness: Send + Sync + std::fmt::Debug {
    /// Fills `out` with cryptographically secure random bytes.
    ///
    /// # Errors
    /// When the source fails; callers fail closed.
    fn fill(&self, out: &mut [u8]) -> Result<()>;
}

/// Validates a key id: 1..=128 bytes of `[A-Za-z0-9._/-]` (keybroker.proto).
///
/// # Errors
/// [`crate::Error::Check`] saying what is wrong.
pub fn check_key_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 128 {
        return Err(crate::Error::check("key id", format!("{} bytes, expected 1..=128", id.len())));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))) {
        return Err(crate::Error::check(
            "key id",
            format!("character {c:?} not allowed (use [A-Za-z0-9._/-])"),
        ));
    }
    Ok(())
}

/// The wall clock. The broker's logic never uses it itself; the `sealroom broker` binary, benches and tests that
/// run a broker against real agents choose it explicitly.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told: the time a test or a replay of recorded evidence pins.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock standing at `now_ms` (milliseconds since the Unix epoch).
    #[must_use]
    pub fn at(now_ms: u64) -> Self {
        Self(std::sync::atomic::AtomicU64::new(now_ms))
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The operating system's CSPRNG (through aws-lc-rs); like [`SystemClock`], chosen by the caller.
#[derive(Debug, Default)]
pub struct SystemRandomness(aws_lc_rs::rand::SystemRandom);

impl SystemRandomness {
    /// The system random source.
    #[must_use]
    pub fn new() -> Self {
        Self(aws_lc_rs::rand::SystemRandom::new())
    }
}

impl Randomness for SystemRandomness {
    fn fill(&self, out: &mut [u8]) -> Result<()> {
        aws_lc_rs::rand::SecureRandom::fill(&self.0, out)
            .map_err(|_| crate::error::Error::check("randomness", "system random source failed"))
    }
}

/// Deterministic sources for unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Mutex;

    use sha2::{Digest, Sha256};

    use super::Randomness;
    use crate::error::{Error, Result};

    /// A SHA-256 counter stream: deterministic, distinct outputs.
    #[derive(Debug, Default)]
    pub struct CountingRandomness(Mutex<u64>);

    impl Randomness for CountingRandomness {
        fn fill(&self, out: &mut [u8]) -> Result<()> {
            let mut n = self.0.lock().unwrap();
            for chunk in out.chunks_mut(32) {
                *n += 1;
                let block = Sha256::digest(n.to_be_bytes());
                chunk.copy_from_slice(&block[..chunk.len()]);
            }
            Ok(())
        }
    }

    /// Always fails.
    #[derive(Debug)]
    pub struct FailingRandomness;

    impl Randomness for FailingRandomness {
        fn fill(&self, _out: &mut [u8]) -> Result<()> {
            Err(Error::check("randomness", "source failed"))
        }
    }
}
