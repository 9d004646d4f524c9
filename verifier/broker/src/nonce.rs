//! Challenges: 32 random bytes, single use, short time to live.
//!
//! The broker remembers every nonce it issued until well after it expires, so a refusal can say exactly why:
//! never issued, expired, or already used. Nonces live in memory only: after a restart every outstanding nonce
//! is unknown and refused (fail closed); the agent simply asks again. `docs/broker-scaling.md` describes the
//! stateless form (MACed tokens) for several replicas.

use std::collections::HashMap;

use sealroom_measurements::binding::{NONCE_LEN, Nonce};

use super::Randomness;
use crate::error::{Error, Result};

/// Why a nonce was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceRefusal {
    /// This broker never issued it (or forgot it after a restart or long after it expired).
    NeverIssued,
    /// It was issued but its time to live is over.
    Expired {
        /// How long ago it expired, milliseconds.
        ago_ms: u64,
    },
    /// It was already presented once.
    AlreadyUsed,
}

impl std::fmt::Display for NonceRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NeverIssued => f.write_str("nonce: not issued by this broker"),
            Self::Expired { ago_ms } => write!(f, "nonce: expired {ago_ms} ms ago"),
            Self::AlreadyUsed => f.write_str("nonce: already used (replay)"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Outstanding { expires_ms: u64 },
    Used,
}

/// Issues and redeems nonces.
#[derive(Debug)]
pub struct NonceBook {
    ttl_ms: u64,
    /// How long after expiry a nonce is still remembered (for precise refusal reasons).
    retention_ms: u64,
    max_outstanding: usize,
    entries: HashMap<[u8; NONCE_LEN], (State, u64)>,
}

impl NonceBook {
    /// A book whose nonces live `ttl_ms`; at most `max_outstanding` may be unredeemed at once.
    #[must_use]
    pub fn new(ttl_ms: u64, max_outstanding: usize) -> Self {
        Self { ttl_ms, retention_ms: ttl_ms.saturating_mul(10), max_outstanding, entries: HashMap::new() }
    }

    /// The time to live, milliseconds.
    #[must_use]
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// A fresh nonce, valid until `now_ms + ttl`.
    ///
    /// # Errors
    /// When randomness fails or too many challenges are outstanding.
    pub fn issue(&mut self, rng: &dyn Randomness, now_ms: u64) -> Result<Nonce> {
        self.forget_old(now_ms);
        if self.entries.len() >= self.max_outstanding {
            return Err(Error::check("nonce", "too many outstanding challenges; retry later"));
        }
        let mut n = [0u8; NONCE_LEN];
        rng.fill(&mut n)?;
        let expires_ms = now_ms.saturating_add(self.ttl_ms);
        // A collision of 256-bit random values means the randomness is broken: refuse rather than reuse.
        if self.entries.insert(n, (State::Outstanding { expires_ms }, expires_ms)).is_some() {
            return Err(Error::check("nonce", "randomness produced a repeated nonce"));
        }
        Ok(Nonce(n))
    }

    /// Redeems a nonce: succeeds once, within its time to live.
    ///
    /// # Errors
    /// The precise [`NonceRefusal`].
    pub fn redeem(&mut self, nonce: &Nonce, now_ms: u64) -> std::result::Result<(), NonceRefusal> {
        let Some((state, expires_ms)) = self.entries.get_mut(&nonce.0) else {
            return Err(NonceRefusal::NeverIssued);
        };
        match *state {
            State::Used => Err(NonceRefusal::AlreadyUsed),
            State::Outstanding { expires_ms: exp } if now_ms >= exp => {
                Err(NonceRefusal::Expired { ago_ms: now_ms.saturating_sub(exp) })
            }
            State::Outstanding { .. } => {
                *state = State::Used;
                // Keep it long enough to recognise replays.
                *expires_ms = (*expires_ms).max(now_ms);
                Ok(())
            }
        }
    }

    fn forget_old(&mut self, now_ms: u64) {
        let retention = self.retention_ms;
        self.entries.retain(|_, (_, exp)| exp.saturating_add(retention) > now_ms);
    }

    /// Nonces currently remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no nonce is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::CountingRandomness;

    #[test]
    fn single_use_within_ttl() {
        let rng = CountingRandomness::default();
        let mut book = NonceBook::new(30_000, 10);
        let n = book.issue(&rng, 1_000).unwrap();
        assert_eq!(book.redeem(&n, 30_999), Ok(()));
        assert_eq!(book.redeem(&n, 31_000), Err(NonceRefusal::AlreadyUsed));
        let m = book.issue(&rng, 1_000).unwrap();
        assert_ne!(n, m);
        assert_eq!(book.redeem(&m, 31_000), Err(NonceRefusal::Expired { ago_ms: 0 }));
        assert_eq!(book.redeem(&Nonce([0xee; 32]), 1_000), Err(NonceRefusal::NeverIssued));
    }

    #[test]
    fn bounded_and_forgets_long_expired() {
        let rng = CountingRandomness::default();
        let mut book = NonceBook::new(1_000, 2);
        book.issue(&rng, 0).unwrap();
        book.issue(&rng, 0).unwrap();
        assert!(book.issue(&rng, 0).unwrap_err().to_string().contains("too many outstanding"));
        // After expiry + retention (10 × ttl), they are forgotten and room is made.
        book.issue(&rng, 11_001).unwrap();
        assert_eq!(book.len(), 1);
    }
}
