//! OCI content digests and the streaming verifier every fetched blob goes through.
//!
//! Only `sha256:` digests are accepted (the OCI default; a reference pinned with anything else is refused rather
//! than trusted with a weaker or unknown check). Hashing uses aws-lc-rs, the same implementation as the rest of
//! the project (see `benches/workload_digest.rs` for its speed against OpenSSL).

use std::fmt;

use aws_lc_rs::digest;

use crate::error::{Error, Result};

/// A SHA-256 content digest, printed and parsed as `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Parses `sha256:<64 lowercase hex>` strictly.
    ///
    /// # Errors
    /// Any other algorithm, length or character; `what` names the field in the message.
    pub fn parse(s: &str, what: &str) -> Result<Self> {
        let (alg, hex_part) = s
            .split_once(':')
            .ok_or_else(|| Error::workload("digest", format!("{what} {s:?}: expected sha256:<64 hex>")))?;
        if alg != "sha256" {
            return Err(Error::workload(
                "digest",
                format!("{what} {s:?}: algorithm {alg:?} is not accepted (only sha256)"),
            ));
        }
        if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::workload("digest", format!("{what} {s:?}: expected 64 lowercase hex digits")));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out)
            .map_err(|e| Error::workload("digest", format!("{what} {s:?}: {e}")))?;
        Ok(Self(out))
    }

    /// The digest of `bytes`.
    #[must_use]
    pub fn of(bytes: &[u8]) -> Self {
        let d = digest::digest(&digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// The hex part (the blob's file name in an OCI layout).
    #[must_use]
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Checks a blob while it streams: the size may never exceed the descriptor's, and at the end both the size
/// and the digest must match. Nothing downstream may use the bytes before [`BlobVerifier::finish`] succeeds.
pub struct BlobVerifier {
    ctx: digest::Context,
    expected: Sha256Digest,
    expected_size: u64,
    seen: u64,
    what: String,
}

impl fmt::Debug for BlobVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobVerifier")
            .field("expected", &self.expected)
            .field("expected_size", &self.expected_size)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl BlobVerifier {
    /// A verifier for the blob `what` (e.g. "layer 2") described as `expected` of `expected_size` bytes.
    #[must_use]
    pub fn new(what: impl Into<String>, expected: Sha256Digest, expected_size: u64) -> Self {
        Self {
            ctx: digest::Context::new(&digest::SHA256),
            expected,
            expected_size,
            seen: 0,
            what: what.into(),
        }
    }

    /// Feeds one chunk.
    ///
    /// # Errors
    /// When the blob grows past its declared size (the rest is not even read).
    pub fn update(&mut self, chunk: &[u8]) -> Result<()> {
        let len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        self.seen = self.seen.saturating_add(len);
        if self.seen > self.expected_size {
            return Err(Error::workload(
                "fetch",
                format!(
                    "{} {}: more than the declared {} bytes",
                    self.what, self.expected, self.expected_size
                ),
            ));
        }
        self.ctx.update(chunk);
        Ok(())
    }

    /// Bytes seen so far.
    #[must_use]
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Checks size and digest.
    ///
    /// # Errors
    /// A short blob or a digest mismatch, naming both digests.
    pub fn finish(self) -> Result<Sha256Digest> {
        if self.seen != self.expected_size {
            return Err(Error::workload(
                "fetch",
                format!(
                    "{} {}: {} bytes received, the descriptor says {}",
                    self.what, self.expected, self.seen, self.expected_size
                ),
            ));
        }
        let d = self.ctx.finish();
        let mut got = [0u8; 32];
        got.copy_from_slice(d.as_ref());
        let got = Sha256Digest(got);
        if got != self.expected {
            return Err(Error::workload(
                "fetch",
                format!(
                    "{} digest mismatch: expected {}, got {got}; refused before unpacking",
                    self.what, self.expected
                ),
            ));
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_is_strict() {
        let good = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(Sha256Digest::parse(&good, "x").unwrap().to_string(), good);
        for bad in [
            "sha256:".to_owned(),
            format!("sha512:{}", "ab".repeat(64)),
            format!("sha256:{}", "AB".repeat(32)),
            format!("sha256:{}", "ab".repeat(31)),
            "ab".repeat(32),
        ] {
            assert!(Sha256Digest::parse(&bad, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn verifier_checks_size_and_digest() {
        let data = b"hello world";
        let d = Sha256Digest::of(data);
        let mut v = BlobVerifier::new("layer 0", d, 11);
        v.update(&data[..5]).unwrap();
        v.update(&data[5..]).unwrap();
        assert_eq!(v.finish().unwrap(), d);

        let mut v = BlobVerifier::new("layer 0", d, 11);
        v.update(b"hello wor1d").unwrap();
        let e = v.finish().unwrap_err().to_string();
        assert!(e.contains("digest mismatch"), "{e}");

        let mut v = BlobVerifier::new("layer 0", d, 10);
        assert!(v.update(data).unwrap_err().to_string().contains("more than the declared 10 bytes"));

        let mut v = BlobVerifier::new("layer 0", d, 12);
        v.update(data).unwrap();
        assert!(v.finish().unwrap_err().to_string().contains("11 bytes received"));
    }
}
