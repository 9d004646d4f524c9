//! Stateless challenges for replicated brokers: a nonce carries its own proof of origin and expiry, so any
//! replica holding the shared MAC key can check a nonce another replica issued without shared state. Single use
//! still needs shared state, but only for nonces actually presented: the `used_nonces` table of [`crate::pg`],
//! written in the same transaction as the release's audit records.
//!
//! The nonce stays exactly 32 bytes (the binding layout of `docs/binding.md` fixes the size):
//!
//! ```text
//! nonce = kid (1) || random (11) || expiry (u32 BE, Unix seconds)
//!         || HMAC-SHA256(K, "sealroom.nonce.v1" 0x00 || kid || random || expiry)[0..16]
//! kid   = first byte of SHA-256("sealroom.nonce-kid.v1" 0x00 || K)
//! ```
//!
//! A 128-bit tag makes forging infeasible; 88 random bits make two issued nonces collide with negligible
//! probability. `previous` keeps the key a rotation replaced until every nonce under it has expired (one TTL).

use aws_lc_rs::{constant_time, hmac};
use sealroom_measurements::binding::{NONCE_LEN, Nonce};
use sha2::{Digest, Sha256};

use crate::Randomness;
use crate::error::{Error, Result};
use crate::nonce::NonceRefusal;

const DOMAIN: &[u8] = b"sealroom.nonce.v1\0";
const KID_DOMAIN: &[u8] = b"sealroom.nonce-kid.v1\0";
const RANDOM_LEN: usize = 11;
const TAG_LEN: usize = 16;
/// Offsets in the nonce.
const RANDOM_END: usize = 1 + RANDOM_LEN;
const EXPIRY_END: usize = RANDOM_END + 4;

/// The shared MAC key(s) and the time to live of issued nonces.
pub struct NonceKeys {
    current: (u8, hmac::Key),
    previous: Option<(u8, hmac::Key)>,
    ttl_ms: u64,
}

impl std::fmt::Debug for NonceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NonceKeys(kid={}, ttl_ms={})", self.current.0, self.ttl_ms)
    }
}

fn keyed(secret: &[u8]) -> Result<(u8, hmac::Key)> {
    if secret.len() != 32 {
        return Err(Error::check("nonce", format!("MAC key of {} bytes, expected 32", secret.len())));
    }
    let kid = Sha256::new().chain_update(KID_DOMAIN).chain_update(secret).finalize();
    Ok((kid.first().copied().unwrap_or(0), hmac::Key::new(hmac::HMAC_SHA256, secret)))
}

impl NonceKeys {
    /// Keys from 32-byte secrets; nonces issued live `ttl_ms` (at least one second).
    ///
    /// # Errors
    /// When a secret is not 32 bytes, or the previous key has the same key id as the current one.
    pub fn new(current: &[u8], previous: Option<&[u8]>, ttl_ms: u64) -> Result<Self> {
        let current = keyed(current)?;
        let previous = previous.map(keyed).transpose()?;
        if previous.as_ref().is_some_and(|p| p.0 == current.0) {
            return Err(Error::check(
                "nonce",
                "previous and current MAC keys have the same key id; pick another",
            ));
        }
        Ok(Self { current, previous, ttl_ms: ttl_ms.max(1000) })
    }

    /// Reads the shared MAC key (and the one a rotation replaced) from files with the KEK's rules (0600, 32
    /// raw bytes or 64 hex digits).
    ///
    /// # Errors
    /// As [`crate::keystore::read_secret`] and [`NonceKeys::new`].
    pub fn load(current: &std::path::Path, previous: Option<&std::path::Path>, ttl_ms: u64) -> Result<Self> {
        let current = crate::keystore::read_secret(current, "nonce MAC key")?;
        let previous =
            previous.map(|p| crate::keystore::read_secret(p, "previous nonce MAC key")).transpose()?;
        Self::new(&current, previous.as_deref(), ttl_ms)
    }

    /// The time to live, milliseconds.
    #[must_use]
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    fn tag(key: &hmac::Key, signed: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(DOMAIN);
        ctx.update(signed);
        ctx.sign()
    }

    /// A fresh nonce valid until `now_ms + ttl` (rounded up to whole seconds).
    ///
    /// # Errors
    /// When randomness fails or the expiry does not fit the nonce's 32-bit seconds field.
    pub fn issue(&self, rng: &dyn Randomness, now_ms: u64) -> Result<Nonce> {
        let expiry_s = u32::try_from(now_ms.saturating_add(self.ttl_ms).div_ceil(1000))
            .map_err(|_| Error::check("nonce", "expiry beyond 2106 does not fit the nonce"))?;
        let mut n = [0u8; NONCE_LEN];
        let (kid, key) = &self.current;
        let (head, tag_out) = n.split_at_mut(EXPIRY_END);
        let (kid_out, rest) = head.split_at_mut(1);
        let (random_out, expiry_out) = rest.split_at_mut(RANDOM_LEN);
        kid_out.copy_from_slice(&[*kid]);
        rng.fill(random_out)?;
        expiry_out.copy_from_slice(&expiry_s.to_be_bytes());
        let tag = Self::tag(key, head);
        tag_out.copy_from_slice(tag.as_ref().get(..TAG_LEN).unwrap_or_default());
        Ok(Nonce(n))
    }

    /// Checks origin and expiry; returns the expiry (Unix milliseconds) for the used-nonce table.
    ///
    /// # Errors
    /// [`NonceRefusal::NeverIssued`] when the tag does not verify under any known key,
    /// [`NonceRefusal::Expired`] when `now_ms` is at or past the expiry.
    pub fn check(&self, nonce: &Nonce, now_ms: u64) -> std::result::Result<u64, NonceRefusal> {
        let (signed, tag) = nonce.0.split_at(EXPIRY_END);
        let kid = signed.first().copied().ok_or(NonceRefusal::NeverIssued)?;
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|(k, _)| *k == kid)
            .map(|(_, key)| key)
            .ok_or(NonceRefusal::NeverIssued)?;
        let want = Self::tag(key, signed);
        let want = want.as_ref().get(..TAG_LEN).ok_or(NonceRefusal::NeverIssued)?;
        constant_time::verify_slices_are_equal(want, tag).map_err(|_| NonceRefusal::NeverIssued)?;
        let expiry: [u8; 4] = signed
            .get(RANDOM_END..EXPIRY_END)
            .and_then(|b| b.try_into().ok())
            .ok_or(NonceRefusal::NeverIssued)?;
        let expires_ms = u64::from(u32::from_be_bytes(expiry)).saturating_mul(1000);
        if now_ms >= expires_ms {
            return Err(NonceRefusal::Expired { ago_ms: now_ms.saturating_sub(expires_ms) });
        }
        Ok(expires_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::CountingRandomness;

    #[test]
    fn issued_nonces_verify_until_expiry_on_any_holder_of_the_key() {
        let rng = CountingRandomness::default();
        let replica1 = NonceKeys::new(&[7; 32], None, 30_000).unwrap();
        let replica2 = NonceKeys::new(&[7; 32], None, 30_000).unwrap();
        let n = replica1.issue(&rng, 1_000_000).unwrap();
        assert_eq!(replica2.check(&n, 1_000_000), Ok(1_030_000));
        assert_eq!(replica2.check(&n, 1_029_999), Ok(1_030_000));
        assert_eq!(replica2.check(&n, 1_030_000), Err(NonceRefusal::Expired { ago_ms: 0 }));
        assert_ne!(n, replica1.issue(&rng, 1_000_000).unwrap());
    }

    #[test]
    fn attack_forged_or_altered_nonce_is_never_issued() {
        let rng = CountingRandomness::default();
        let keys = NonceKeys::new(&[7; 32], None, 30_000).unwrap();
        let other = NonceKeys::new(&[8; 32], None, 30_000).unwrap();
        // Another key (an attacker's own broker) or a random value: not issued here.
        assert_eq!(keys.check(&other.issue(&rng, 0).unwrap(), 0), Err(NonceRefusal::NeverIssued));
        assert_eq!(keys.check(&Nonce([0x5a; 32]), 0), Err(NonceRefusal::NeverIssued));
        // Extending the expiry (or flipping any bit) breaks the tag.
        let n = keys.issue(&rng, 0).unwrap();
        for i in 0..NONCE_LEN {
            let mut m = n;
            if let Some(b) = m.0.get_mut(i) {
                *b ^= 1;
            }
            assert_eq!(keys.check(&m, 0), Err(NonceRefusal::NeverIssued), "bit flip at byte {i} accepted");
        }
    }

    #[test]
    fn previous_key_verifies_after_rotation() {
        let rng = CountingRandomness::default();
        let old = NonceKeys::new(&[1; 32], None, 30_000).unwrap();
        let n = old.issue(&rng, 0).unwrap();
        let rotated = NonceKeys::new(&[2; 32], Some(&[1; 32]), 30_000).unwrap();
        assert!(rotated.check(&n, 1).is_ok());
        let dropped = NonceKeys::new(&[2; 32], None, 30_000).unwrap();
        assert_eq!(dropped.check(&n, 1), Err(NonceRefusal::NeverIssued));
    }
}
