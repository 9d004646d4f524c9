//! The binding layout: how the verifier's nonce and the TEE's ephemeral public key are tied into the evidence.
//!
//! One fixed binary layout, the same on every platform, so an auditor can recompute it with `sha256sum`
//! (no JSON canonicalisation, unlike Trustee). See `docs/binding.md`.
//!
//! ```text
//! input  = "sealroom.binding.v1" || 0x00          (20 bytes, domain separation)
//!          || nonce                                (32 bytes)
//!          || kem_id  (u16 big-endian, RFC 9180)   (2 bytes: 0x0010 P-256, 0x0020 X25519)
//!          || key_len (u16 big-endian)             (2 bytes)
//!          || tee_public_key                       (key_len bytes)
//! digest = SHA-256(input)                          (32 bytes)
//!
//! TPM2_Quote extraData (qualifyingData) = digest  (32 bytes fit every TPM 2.0)
//! REPORT_DATA (TDX, SEV-SNP; 64 bytes)  = digest || "sealroom.binding.v1 report_data" 0x00 (32-byte tag)
//! ```
//!
//! The tag in the second half makes a sealroom binding recognisable in a raw quote and is checked exactly, so
//! no part of REPORT_DATA is left for anyone else to fill.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Layout version carried in `Evidence.binding_version`.
pub const BINDING_VERSION: u32 = 1;
/// Size of every nonce.
pub const NONCE_LEN: usize = 32;
/// Size of REPORT_DATA in TDX quotes and SNP reports.
pub const REPORT_DATA_LEN: usize = 64;
/// Domain separation prefix of the binding input.
pub const DOMAIN: &[u8; 20] = b"sealroom.binding.v1\0";
/// The fixed second half of REPORT_DATA.
pub const REPORT_DATA_TAG: &[u8; 32] = b"sealroom.binding.v1 report_data\0";

/// A verifier's 32-byte nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl Nonce {
    /// A nonce from exactly 32 bytes.
    ///
    /// # Errors
    /// When `bytes` is not 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; NONCE_LEN] = bytes
            .try_into()
            .map_err(|_| Error::invalid("binding", "nonce", format!("{} bytes, expected 32", bytes.len())))?;
        Ok(Self(arr))
    }
}

/// The HPKE KEM of a TEE public key (RFC 9180 identifiers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Kem {
    /// DHKEM(P-256, HKDF-SHA256), 65-byte uncompressed public key.
    P256HkdfSha256,
    /// DHKEM(X25519, HKDF-SHA256), 32-byte public key.
    X25519HkdfSha256,
}

impl Kem {
    /// The RFC 9180 KEM identifier.
    #[must_use]
    pub fn id(self) -> u16 {
        match self {
            Self::P256HkdfSha256 => 0x0010,
            Self::X25519HkdfSha256 => 0x0020,
        }
    }

    /// The KEM with this identifier.
    ///
    /// # Errors
    /// For identifiers sealroom does not support.
    pub fn from_id(id: u16) -> Result<Self> {
        match id {
            0x0010 => Ok(Self::P256HkdfSha256),
            0x0020 => Ok(Self::X25519HkdfSha256),
            other => Err(Error::invalid("binding", "kem id", format!("{other:#06x} unsupported"))),
        }
    }

    /// The public key length of this KEM.
    #[must_use]
    pub fn public_key_len(self) -> usize {
        match self {
            Self::P256HkdfSha256 => 65,
            Self::X25519HkdfSha256 => 32,
        }
    }
}

/// The TEE's ephemeral HPKE public key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TeePublicKey {
    kem: Kem,
    bytes: Vec<u8>,
}

impl TeePublicKey {
    /// A key whose length matches its KEM.
    ///
    /// # Errors
    /// When the length is wrong for the KEM.
    pub fn new(kem: Kem, bytes: Vec<u8>) -> Result<Self> {
        if bytes.len() != kem.public_key_len() {
            return Err(Error::invalid(
                "binding",
                "tee public key",
                format!("{} bytes, {kem:?} needs {}", bytes.len(), kem.public_key_len()),
            ));
        }
        if kem == Kem::P256HkdfSha256 && bytes.first() != Some(&0x04) {
            return Err(Error::invalid("binding", "tee public key", "P-256 key is not uncompressed SEC1"));
        }
        Ok(Self { kem, bytes })
    }

    /// The KEM.
    #[must_use]
    pub fn kem(&self) -> Kem {
        self.kem
    }

    /// The encoded public key.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The 32-byte binding digest of a nonce and a TEE key.
#[must_use]
pub fn binding_digest(nonce: &Nonce, key: &TeePublicKey) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(nonce.0);
    h.update(key.kem.id().to_be_bytes());
    // Key lengths are 32 or 65 bytes (checked in `TeePublicKey::new`), so the cast cannot truncate.
    h.update(u16::try_from(key.bytes.len()).unwrap_or(u16::MAX).to_be_bytes());
    h.update(&key.bytes);
    h.finalize().into()
}

/// The 64-byte REPORT_DATA for TDX and SEV-SNP.
#[must_use]
pub fn report_data(nonce: &Nonce, key: &TeePublicKey) -> [u8; REPORT_DATA_LEN] {
    let mut out = [0u8; REPORT_DATA_LEN];
    let (head, tail) = out.split_at_mut(32);
    head.copy_from_slice(&binding_digest(nonce, key));
    tail.copy_from_slice(REPORT_DATA_TAG);
    out
}

/// Checks a REPORT_DATA field from a quote or report against the expected nonce and key.
///
/// # Errors
/// [`Error::Binding`] naming what differs: length, tag, or digest.
pub fn check_report_data(report_data_field: &[u8], nonce: &Nonce, key: &TeePublicKey) -> Result<()> {
    if report_data_field.len() != REPORT_DATA_LEN {
        return Err(Error::Binding(format!(
            "REPORT_DATA is {} bytes, expected {REPORT_DATA_LEN}",
            report_data_field.len()
        )));
    }
    let (digest, tag) = report_data_field.split_at(32);
    if tag != REPORT_DATA_TAG {
        return Err(Error::Binding("REPORT_DATA does not carry the sealroom binding tag".into()));
    }
    if digest != binding_digest(nonce, key) {
        return Err(Error::Binding("REPORT_DATA does not bind this nonce and TEE public key".into()));
    }
    Ok(())
}

/// Checks a TPM quote's extraData against the expected nonce and key.
///
/// # Errors
/// [`Error::Binding`] when the length or digest differs.
pub fn check_tpm_extra_data(extra_data: &[u8], nonce: &Nonce, key: &TeePublicKey) -> Result<()> {
    if extra_data.len() != 32 {
        return Err(Error::Binding(format!(
            "TPM quote extraData is {} bytes, expected 32",
            extra_data.len()
        )));
    }
    if extra_data != binding_digest(nonce, key) {
        return Err(Error::Binding("TPM quote extraData does not bind this nonce and TEE public key".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> TeePublicKey {
        TeePublicKey::new(Kem::X25519HkdfSha256, vec![byte; 32]).unwrap()
    }

    #[test]
    fn digest_is_the_documented_sha256() {
        // Recompute by hand from the documented layout.
        let nonce = Nonce([7u8; 32]);
        let k = key(9);
        let mut input = Vec::new();
        input.extend_from_slice(b"sealroom.binding.v1\0");
        input.extend_from_slice(&[7u8; 32]);
        input.extend_from_slice(&[0x00, 0x20, 0x00, 0x20]);
        input.extend_from_slice(&[9u8; 32]);
        let expected: [u8; 32] = Sha256::digest(&input).into();
        assert_eq!(binding_digest(&nonce, &k), expected);
        let rd = report_data(&nonce, &k);
        assert_eq!(&rd[..32], &expected);
        assert_eq!(&rd[32..], REPORT_DATA_TAG);
    }

    #[test]
    fn accepts_the_right_binding() {
        let nonce = Nonce([1u8; 32]);
        let k = key(2);
        check_report_data(&report_data(&nonce, &k), &nonce, &k).unwrap();
        check_tpm_extra_data(&binding_digest(&nonce, &k), &nonce, &k).unwrap();
    }

    #[test]
    fn rejects_a_changed_nonce() {
        let k = key(2);
        let rd = report_data(&Nonce([1u8; 32]), &k);
        let mut other = [1u8; 32];
        other[31] ^= 1;
        let err = check_report_data(&rd, &Nonce(other), &k).unwrap_err();
        assert_eq!(err.to_string(), "binding: REPORT_DATA does not bind this nonce and TEE public key");
        let ed = binding_digest(&Nonce([1u8; 32]), &k);
        assert!(check_tpm_extra_data(&ed, &Nonce(other), &k).is_err());
    }

    #[test]
    fn rejects_a_changed_key() {
        let nonce = Nonce([1u8; 32]);
        let rd = report_data(&nonce, &key(2));
        assert!(check_report_data(&rd, &nonce, &key(3)).is_err());
        // Same bytes under another KEM is another key.
        let p256 = TeePublicKey::new(Kem::P256HkdfSha256, {
            let mut v = vec![4u8];
            v.extend_from_slice(&[2u8; 64]);
            v
        })
        .unwrap();
        assert!(check_report_data(&rd, &nonce, &p256).is_err());
    }

    #[test]
    fn rejects_truncated_report_data() {
        let nonce = Nonce([1u8; 32]);
        let k = key(2);
        let rd = report_data(&nonce, &k);
        let err = check_report_data(&rd[..48], &nonce, &k).unwrap_err();
        assert_eq!(err.to_string(), "binding: REPORT_DATA is 48 bytes, expected 64");
        assert!(check_tpm_extra_data(&rd[..31], &nonce, &k).is_err());
    }

    #[test]
    fn rejects_a_changed_tag() {
        let nonce = Nonce([1u8; 32]);
        let k = key(2);
        let mut rd = report_data(&nonce, &k);
        rd[63] ^= 1;
        let err = check_report_data(&rd, &nonce, &k).unwrap_err();
        assert!(err.to_string().contains("binding tag"), "{err}");
    }

    #[test]
    fn key_length_must_match_kem() {
        assert!(TeePublicKey::new(Kem::X25519HkdfSha256, vec![0; 31]).is_err());
        assert!(TeePublicKey::new(Kem::P256HkdfSha256, vec![0; 65]).is_err());
        assert!(Nonce::from_slice(&[0; 31]).is_err());
        assert!(Kem::from_id(0x0011).is_err());
    }
}
