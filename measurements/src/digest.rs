//! Hashing and register extension for every TPM bank and TDX RTMR, through aws-lc-rs.
//!
//! One place for digests so replay, prediction and benchmarks all use the same implementation (aws-lc-rs is about
//! three times faster than the `sha2` crate on this class of machine).

use aws_lc_rs::digest as lc;

use crate::evidence::HashAlg;

fn algorithm(alg: HashAlg) -> &'static lc::Algorithm {
    match alg {
        // SHA-1 only exists to replay the legacy SHA-1 PCR bank of old firmware; never used for new measurements.
        HashAlg::Sha1 => &lc::SHA1_FOR_LEGACY_USE_ONLY,
        HashAlg::Sha256 => &lc::SHA256,
        HashAlg::Sha384 => &lc::SHA384,
        HashAlg::Sha512 => &lc::SHA512,
    }
}

/// `alg(data)`.
#[must_use]
pub fn hash(alg: HashAlg, data: &[u8]) -> Vec<u8> {
    lc::digest(algorithm(alg), data).as_ref().to_vec()
}

/// SHA-384 of `data` as a fixed array (RTMR digests).
#[must_use]
pub fn sha384(data: &[u8]) -> [u8; 48] {
    let mut out = [0u8; 48];
    out.copy_from_slice(lc::digest(&lc::SHA384, data).as_ref());
    out
}

/// SHA-256 of `data` as a fixed array.
#[must_use]
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(lc::digest(&lc::SHA256, data).as_ref());
    out
}

/// An incremental hash (Authenticode, file digests).
#[derive(Clone)]
pub struct Hasher {
    alg: HashAlg,
    ctx: lc::Context,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher").field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl Hasher {
    /// A fresh hash of `alg`.
    #[must_use]
    pub fn new(alg: HashAlg) -> Self {
        Self { alg, ctx: lc::Context::new(algorithm(alg)) }
    }

    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
    }

    /// The digest.
    #[must_use]
    pub fn finish(self) -> Vec<u8> {
        self.ctx.finish().as_ref().to_vec()
    }

    /// The algorithm.
    #[must_use]
    pub fn alg(&self) -> HashAlg {
        self.alg
    }
}

/// A register (PCR bank entry or RTMR): starts at zero (or a locality byte), grows by `new = H(old || digest)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    alg: HashAlg,
    value: Vec<u8>,
}

impl Register {
    /// A register of `alg` reset to all zeros.
    #[must_use]
    pub fn zero(alg: HashAlg) -> Self {
        Self { alg, value: vec![0u8; alg.digest_len()] }
    }

    /// A register whose last byte is `locality` (PCR 0 after an EV_NO_ACTION StartupLocality event).
    #[must_use]
    pub fn with_locality(alg: HashAlg, locality: u8) -> Self {
        let mut value = vec![0u8; alg.digest_len()];
        if let Some(last) = value.last_mut() {
            *last = locality;
        }
        Self { alg, value }
    }

    /// `value = H(value || digest)`.
    pub fn extend(&mut self, digest: &[u8]) {
        let mut ctx = lc::Context::new(algorithm(self.alg));
        ctx.update(&self.value);
        ctx.update(digest);
        self.value = ctx.finish().as_ref().to_vec();
    }

    /// The current value.
    #[must_use]
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The register's hash.
    #[must_use]
    pub fn alg(&self) -> HashAlg {
        self.alg
    }

    /// Consumes the register, returning its value.
    #[must_use]
    pub fn into_value(self) -> Vec<u8> {
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        assert_eq!(hex::encode(hash(HashAlg::Sha1, b"abc")), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            hex::encode(hash(HashAlg::Sha256, b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex::encode(sha384(b"abc")).get(..16), Some("cb00753f45a35e8b"));
    }

    #[test]
    fn extend_is_hash_of_concatenation() {
        let mut r = Register::zero(HashAlg::Sha256);
        r.extend(&[1u8; 32]);
        let mut cat = vec![0u8; 32];
        cat.extend_from_slice(&[1u8; 32]);
        assert_eq!(r.value(), hash(HashAlg::Sha256, &cat).as_slice());
        let l = Register::with_locality(HashAlg::Sha1, 3);
        assert_eq!(l.value()[19], 3);
        assert!(l.value()[..19].iter().all(|b| *b == 0));
    }
}
