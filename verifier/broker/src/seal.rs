//! Sealing released keys to the TEE's ephemeral public key with HPKE (RFC 9180), base mode.
//!
//! Suites: DHKEM(X25519, HKDF-SHA256) or DHKEM(P-256, HKDF-SHA256), with HKDF-SHA256 and AES-256-GCM, through the
//! `hpke` crate (rozbb/rust-hpke, the RFC 9180 implementation the agent also uses, tested against the RFC's
//! vectors). The key id goes into `info` and the nonce into `aad` (keybroker.proto), so a sealed key cannot be
//! passed off as another key or replayed into another release:
//!
//! ```text
//! info = "sealroom.keybroker.v1/key" || 0x00 || key_id
//! aad  = nonce (32 bytes)
//! ```

use std::cell::Cell;
use std::convert::Infallible;

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::{DhP256HkdfSha256, X25519HkdfSha256};
use hpke::rand_core::{TryCryptoRng, TryRng};
use hpke::{Deserializable, Kem as HpkeKem, OpModeR, OpModeS, Serializable};
use sealroom_measurements::binding::{Kem, Nonce, TeePublicKey};

use super::Randomness;
use crate::error::{Error, Result};

const LAYER: &str = "hpke";
/// The prefix of `info`.
pub const INFO_PREFIX: &[u8] = b"sealroom.keybroker.v1/key";

/// `info` for one key id.
#[must_use]
pub fn info(key_id: &str) -> Vec<u8> {
    let mut info = INFO_PREFIX.to_vec();
    info.push(0);
    info.extend_from_slice(key_id.as_bytes());
    info
}

/// One key sealed to a TEE key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The recipient's KEM.
    pub kem: Kem,
    /// HPKE `enc`.
    pub encapsulated_key: Vec<u8>,
    /// AEAD ciphertext with tag.
    pub ciphertext: Vec<u8>,
}

/// Adapts the injected [`Randomness`] to the infallible RNG `hpke` wants: a failure is remembered and the
/// caller discards the output (the bytes handed out after a failure are zeros, never used).
struct InjectedRng<'a> {
    source: &'a dyn Randomness,
    failed: Cell<Option<Error>>,
}

impl TryRng for InjectedRng<'_> {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> std::result::Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> std::result::Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> std::result::Result<(), Infallible> {
        if let Err(e) = self.source.fill(dst) {
            dst.fill(0);
            self.failed.set(Some(e));
        }
        Ok(())
    }
}

impl TryCryptoRng for InjectedRng<'_> {}

fn seal_with<K: HpkeKem>(
    recipient: &[u8],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
    rng: &mut InjectedRng<'_>,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let pk = K::PublicKey::from_bytes(recipient)
        .map_err(|e| Error::check(LAYER, format!("TEE public key rejected: {e}")))?;
    let (enc, ct) = hpke::single_shot_seal_with_rng::<AesGcm256, HkdfSha256, K>(
        &OpModeS::Base,
        &pk,
        info,
        plaintext,
        aad,
        rng,
    )
    .map_err(|e| Error::check(LAYER, format!("seal failed: {e}")))?;
    Ok((enc.to_bytes().to_vec(), ct))
}

/// Seals `material` for `key_id` to the TEE key, bound to `nonce`.
///
/// # Errors
/// When the public key is not a valid point, or randomness fails.
pub fn seal(
    tee_key: &TeePublicKey,
    key_id: &str,
    nonce: &Nonce,
    material: &[u8],
    rng: &dyn Randomness,
) -> Result<Sealed> {
    let mut adapter = InjectedRng { source: rng, failed: Cell::new(None) };
    let info = info(key_id);
    let (encapsulated_key, ciphertext) = match tee_key.kem() {
        Kem::X25519HkdfSha256 => {
            seal_with::<X25519HkdfSha256>(tee_key.as_bytes(), &info, &nonce.0, material, &mut adapter)?
        }
        Kem::P256HkdfSha256 => {
            seal_with::<DhP256HkdfSha256>(tee_key.as_bytes(), &info, &nonce.0, material, &mut adapter)?
        }
        other => return Err(Error::check(LAYER, format!("KEM {other:?} not supported"))),
    };
    if let Some(e) = adapter.failed.take() {
        return Err(e);
    }
    Ok(Sealed { kem: tee_key.kem(), encapsulated_key, ciphertext })
}

fn open_with<K: HpkeKem>(secret: &[u8], sealed: &Sealed, info: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let sk =
        K::PrivateKey::from_bytes(secret).map_err(|e| Error::check(LAYER, format!("private key: {e}")))?;
    let enc = K::EncappedKey::from_bytes(&sealed.encapsulated_key)
        .map_err(|e| Error::check(LAYER, format!("encapsulated key: {e}")))?;
    hpke::single_shot_open::<AesGcm256, HkdfSha256, K>(
        &OpModeR::Base,
        &sk,
        &enc,
        info,
        &sealed.ciphertext,
        aad,
    )
    .map_err(|e| Error::check(LAYER, format!("open failed: {e}")))
}

/// Opens a sealed key with the TEE's private key (what the agent does; here for tests and tools).
///
/// # Errors
/// When the key, id or nonce do not match.
pub fn open(kem: Kem, private_key: &[u8], key_id: &str, nonce: &Nonce, sealed: &Sealed) -> Result<Vec<u8>> {
    let info = info(key_id);
    match kem {
        Kem::X25519HkdfSha256 => open_with::<X25519HkdfSha256>(private_key, sealed, &info, &nonce.0),
        Kem::P256HkdfSha256 => open_with::<DhP256HkdfSha256>(private_key, sealed, &info, &nonce.0),
        other => Err(Error::check(LAYER, format!("KEM {other:?} not supported"))),
    }
}

/// A fresh HPKE key pair `(private, public)` from `ikm` (RFC 9180 DeriveKeyPair), for agents and tests.
#[must_use]
pub fn derive_keypair(kem: Kem, ikm: &[u8]) -> Option<(Vec<u8>, TeePublicKey)> {
    let (sk, pk) = match kem {
        Kem::X25519HkdfSha256 => {
            let (sk, pk) = X25519HkdfSha256::derive_keypair(ikm);
            (sk.to_bytes().to_vec(), pk.to_bytes().to_vec())
        }
        Kem::P256HkdfSha256 => {
            let (sk, pk) = DhP256HkdfSha256::derive_keypair(ikm);
            (sk.to_bytes().to_vec(), pk.to_bytes().to_vec())
        }
        _ => return None,
    };
    TeePublicKey::new(kem, pk).ok().map(|pk| (sk, pk))
}

/// Seals `plaintext` to an X25519 public key (HPKE base mode, this module's suite) with an `aad` that may
/// depend on the encapsulated key (sealed inputs and outputs put their whole header, `enc` included, in it):
/// `(enc, ciphertext)`. For `sealroom seal` and tests; the formats are `sealroom_measurements::sealed`.
///
/// # Errors
/// An invalid public key, or failing randomness.
pub fn seal_x25519(
    recipient: &[u8; 32],
    info: &[u8],
    aad: impl FnOnce(&[u8; 32]) -> Vec<u8>,
    plaintext: &[u8],
    rng: &dyn Randomness,
) -> Result<([u8; 32], Vec<u8>)> {
    let pk = <X25519HkdfSha256 as HpkeKem>::PublicKey::from_bytes(recipient)
        .map_err(|e| Error::check(LAYER, format!("recipient key rejected: {e}")))?;
    let mut adapter = InjectedRng { source: rng, failed: Cell::new(None) };
    let (enc, mut ctx) = hpke::setup_sender_with_rng::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
        &OpModeS::Base,
        &pk,
        info,
        &mut adapter,
    )
    .map_err(|e| Error::check(LAYER, format!("seal failed: {e}")))?;
    if let Some(e) = adapter.failed.take() {
        return Err(e);
    }
    let enc: [u8; 32] = enc
        .to_bytes()
        .as_slice()
        .try_into()
        .map_err(|_| Error::check(LAYER, "X25519 encapsulated key is not 32 bytes"))?;
    let ct = ctx.seal(plaintext, &aad(&enc)).map_err(|e| Error::check(LAYER, format!("seal failed: {e}")))?;
    Ok((enc, ct))
}

/// Opens what [`seal_x25519`] sealed, with the X25519 private key.
///
/// # Errors
/// A malformed key or `enc`, or a ciphertext that does not open (another key, `info` or `aad`).
pub fn open_x25519(
    private_key: &[u8],
    enc: &[u8; 32],
    info: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>> {
    let sealed = Sealed {
        kem: Kem::X25519HkdfSha256,
        encapsulated_key: enc.to_vec(),
        ciphertext: ciphertext.to_vec(),
    };
    open_with::<X25519HkdfSha256>(private_key, &sealed, info, aad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{CountingRandomness, FailingRandomness};

    #[test]
    fn round_trips_for_both_kems_and_binds_id_and_nonce() {
        let rng = CountingRandomness::default();
        for kem in [Kem::X25519HkdfSha256, Kem::P256HkdfSha256] {
            let (sk, pk) = derive_keypair(kem, &[7u8; 32]).unwrap();
            let nonce = Nonce([1; 32]);
            let sealed = seal(&pk, "dataset/a", &nonce, b"secret key bytes", &rng).unwrap();
            assert_eq!(sealed.encapsulated_key.len(), kem.public_key_len());
            assert_eq!(open(kem, &sk, "dataset/a", &nonce, &sealed).unwrap(), b"secret key bytes");
            assert!(open(kem, &sk, "dataset/b", &nonce, &sealed).is_err(), "other key id");
            assert!(open(kem, &sk, "dataset/a", &Nonce([2; 32]), &sealed).is_err(), "other nonce");
            let (other_sk, _) = derive_keypair(kem, &[8u8; 32]).unwrap();
            assert!(open(kem, &other_sk, "dataset/a", &nonce, &sealed).is_err(), "other TEE key");
        }
    }

    #[test]
    fn x25519_seal_binds_info_and_the_enc_dependent_aad() {
        let rng = CountingRandomness::default();
        let (sk, pk) = derive_keypair(Kem::X25519HkdfSha256, &[7u8; 32]).unwrap();
        let pk: [u8; 32] = pk.as_bytes().try_into().unwrap();
        let (enc, ct) = seal_x25519(&pk, b"info", |e| [b"hdr".as_slice(), e].concat(), b"msg", &rng).unwrap();
        let aad = [b"hdr".as_slice(), &enc].concat();
        assert_eq!(open_x25519(&sk, &enc, b"info", &aad, &ct).unwrap(), b"msg");
        assert!(open_x25519(&sk, &enc, b"other", &aad, &ct).is_err());
        assert!(open_x25519(&sk, &enc, b"info", b"hdr", &ct).is_err());
        assert!(seal_x25519(&pk, b"i", |_| Vec::new(), b"m", &FailingRandomness).is_err());
    }

    #[test]
    fn failing_randomness_yields_no_output() {
        let (_, pk) = derive_keypair(Kem::X25519HkdfSha256, &[7u8; 32]).unwrap();
        let err = seal(&pk, "k", &Nonce([1; 32]), b"x", &FailingRandomness).unwrap_err();
        assert!(err.to_string().contains("randomness"), "{err}");
    }

    #[test]
    fn rejects_an_invalid_p256_point() {
        let mut bytes = vec![4u8];
        bytes.extend_from_slice(&[0xff; 64]);
        let pk = TeePublicKey::new(Kem::P256HkdfSha256, bytes).unwrap();
        let err = seal(&pk, "k", &Nonce([1; 32]), b"x", &CountingRandomness::default()).unwrap_err();
        assert!(err.to_string().starts_with("hpke: TEE public key rejected"), "{err}");
    }
}
