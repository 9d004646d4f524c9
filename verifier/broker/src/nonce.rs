//! Challenges that cannot be exhausted: stateless MACed nonces ([`crate::nonce_mac`], the layout of
//! docs/broker-scaling.md) plus a set of the nonces actually presented, each kept only until it expires.
//!
//! Issuing a nonce stores nothing, so no number of `Challenge` calls can crowd out an agent (issue 14, finding
//! 4: 100,000 unauthenticated challenges used to fill a table shared by everyone for 10 × TTL). "Never issued"
//! (the tag does not verify) and "expired" are decided from the nonce alone; only single use needs memory, and
//! only for presented nonces, each forgotten once it has expired (it is then refused as expired anyway). The
//! embedded broker's MAC key is random per process: after a restart every outstanding nonce is refused (fail
//! closed) and the agent asks again. Replicas share the key and keep the used set in PostgreSQL instead.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use sealroom_measurements::binding::{NONCE_LEN, Nonce};

use super::Randomness;
use crate::error::Result;
use crate::nonce_mac::NonceKeys;

/// Most presented, unexpired nonces remembered at once (about 100 bytes each); beyond it redemption is
/// refused (fail closed) until some expire. Per-peer rate limits on `Release` keep honest load far below it.
pub const DEFAULT_MAX_USED: usize = 1 << 20;

/// Why a nonce was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceRefusal {
    /// This broker never issued it (its MAC does not verify under any current key).
    NeverIssued,
    /// It was issued but its time to live is over.
    Expired {
        /// How long ago it expired, milliseconds.
        ago_ms: u64,
    },
    /// It was already presented once.
    AlreadyUsed,
    /// Too many presented nonces are still live to remember another one.
    Busy,
}

impl std::fmt::Display for NonceRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NeverIssued => f.write_str("nonce: not issued by this broker"),
            Self::Expired { ago_ms } => write!(f, "nonce: expired {ago_ms} ms ago"),
            Self::AlreadyUsed => f.write_str("nonce: already used (replay)"),
            Self::Busy => f.write_str("nonce: too many nonces presented recently; retry later"),
        }
    }
}

/// The presented nonces, until they expire.
#[derive(Debug, Default)]
struct UsedNonces {
    expiry: HashMap<[u8; NONCE_LEN], u64>,
    /// The same nonces by expiry, to forget them in order.
    by_expiry: BTreeMap<(u64, [u8; NONCE_LEN]), ()>,
}

impl UsedNonces {
    fn forget_expired(&mut self, now_ms: u64) {
        while let Some((&(exp, n), ())) = self.by_expiry.first_key_value() {
            if exp > now_ms {
                break;
            }
            self.by_expiry.remove(&(exp, n));
            self.expiry.remove(&n);
        }
    }
}

/// Issues and redeems nonces: stateless issue (no lock, nothing stored), a used set for single use.
#[derive(Debug)]
pub struct NonceBook {
    keys: NonceKeys,
    max_used: usize,
    used: Mutex<UsedNonces>,
}

impl NonceBook {
    /// A book issuing and checking nonces under `keys` (which also set the time to live).
    #[must_use]
    pub fn new(keys: NonceKeys) -> Self {
        Self { keys, max_used: DEFAULT_MAX_USED, used: Mutex::new(UsedNonces::default()) }
    }

    /// A book under a fresh random MAC key (one process: its nonces die with it).
    ///
    /// # Errors
    /// When randomness fails.
    pub fn generate(ttl_ms: u64, rng: &dyn Randomness) -> Result<Self> {
        let mut secret = [0u8; 32];
        rng.fill(&mut secret)?;
        Ok(Self::new(NonceKeys::new(&secret, None, ttl_ms)?))
    }

    /// Sets the most presented, unexpired nonces remembered at once.
    #[must_use]
    pub fn with_max_used(mut self, max_used: usize) -> Self {
        self.max_used = max_used;
        self
    }

    /// The time to live, milliseconds.
    #[must_use]
    pub fn ttl_ms(&self) -> u64 {
        self.keys.ttl_ms()
    }

    /// A fresh nonce, valid until `now_ms + ttl` (rounded up to the second). Stores nothing.
    ///
    /// # Errors
    /// When randomness fails or the expiry does not fit the format (after 2106).
    pub fn issue(&self, rng: &dyn Randomness, now_ms: u64) -> Result<Nonce> {
        self.keys.issue(rng, now_ms)
    }

    /// Redeems a nonce: succeeds once, before it expires, when this broker made it.
    ///
    /// # Errors
    /// The precise [`NonceRefusal`].
    pub fn redeem(&self, nonce: &Nonce, now_ms: u64) -> std::result::Result<(), NonceRefusal> {
        // Forged and expired nonces are refused before the lock is taken.
        let expires_ms = self.keys.check(nonce, now_ms)?;
        let mut used = self.used.lock().map_err(|_| NonceRefusal::Busy)?;
        used.forget_expired(now_ms);
        if used.expiry.contains_key(&nonce.0) {
            return Err(NonceRefusal::AlreadyUsed);
        }
        if used.expiry.len() >= self.max_used {
            return Err(NonceRefusal::Busy);
        }
        used.expiry.insert(nonce.0, expires_ms);
        used.by_expiry.insert((expires_ms, nonce.0), ());
        Ok(())
    }

    /// Presented nonces currently remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.used.lock().map_or(0, |u| u.expiry.len())
    }

    /// Whether no presented nonce is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::CountingRandomness;

    fn book(ttl_ms: u64) -> NonceBook {
        NonceBook::new(NonceKeys::new(&[9; 32], None, ttl_ms).unwrap())
    }

    #[test]
    fn single_use_within_ttl() {
        let rng = CountingRandomness::default();
        let b = book(30_000);
        let n = b.issue(&rng, 1_000).unwrap();
        assert_eq!(b.redeem(&n, 30_999), Ok(()));
        assert_eq!(b.redeem(&n, 30_999), Err(NonceRefusal::AlreadyUsed));
        let m = b.issue(&rng, 1_000).unwrap();
        assert_ne!(n, m);
        assert_eq!(b.redeem(&m, 31_000), Err(NonceRefusal::Expired { ago_ms: 0 }));
        assert_eq!(b.redeem(&Nonce([0xee; 32]), 1_000), Err(NonceRefusal::NeverIssued));
        // Any changed bit (kid, random, expiry, tag) makes it a nonce this broker never issued.
        for byte in 0..NONCE_LEN {
            let mut forged = b.issue(&rng, 1_000).unwrap();
            forged.0[byte] ^= 1;
            assert_eq!(b.redeem(&forged, 2_000), Err(NonceRefusal::NeverIssued), "byte {byte}");
        }
        // Another broker's key: never issued here.
        let other =
            NonceBook::new(NonceKeys::new(&[8; 32], None, 30_000).unwrap()).issue(&rng, 1_000).unwrap();
        assert_eq!(b.redeem(&other, 2_000), Err(NonceRefusal::NeverIssued));
    }

    #[test]
    fn issuing_stores_nothing_and_used_nonces_are_forgotten_after_expiry() {
        let rng = CountingRandomness::default();
        let b = book(1_000).with_max_used(2);
        for _ in 0..100_000 {
            b.issue(&rng, 0).unwrap();
        }
        assert!(b.is_empty());
        let (x, y, z) = (b.issue(&rng, 0).unwrap(), b.issue(&rng, 0).unwrap(), b.issue(&rng, 0).unwrap());
        b.redeem(&x, 10).unwrap();
        b.redeem(&y, 10).unwrap();
        assert_eq!(b.redeem(&z, 10), Err(NonceRefusal::Busy));
        // Once x and y expired they are forgotten (and would be refused as expired); room is made.
        let w = b.issue(&rng, 1_000).unwrap();
        b.redeem(&w, 1_000).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b.redeem(&x, 1_000), Err(NonceRefusal::Expired { ago_ms: 0 }));
    }
}
