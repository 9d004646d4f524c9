//! The agent's ephemeral TEE key: an HPKE (RFC 9180) X25519 key pair made at start-up, kept in memory only.
//!
//! Evidence binds its public half; the key broker seals data keys to it in HPKE base mode with
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and AES-256-GCM, so only this agent instance can open them.

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, Serializable};
use sealroom_measurements::binding::{Kem, TeePublicKey};

use crate::error::{Error, Result};

/// The HPKE suite the broker uses to seal keys to the agent.
pub type Suite = (AesGcm256, HkdfSha256, X25519HkdfSha256);

/// The in-memory key pair. The private key never leaves this struct (it is zeroised on drop by `hpke`).
pub struct TeeKey {
    private: <X25519HkdfSha256 as hpke::Kem>::PrivateKey,
    public: TeePublicKey,
}

impl std::fmt::Debug for TeeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeeKey").field("public", &hex::encode(self.public.as_bytes())).finish_non_exhaustive()
    }
}

impl TeeKey {
    /// A fresh key pair from the OS random generator.
    ///
    /// # Errors
    /// Never in practice: the 32-byte X25519 public key always fits the binding.
    pub fn generate() -> Result<Self> {
        let (private, public) = X25519HkdfSha256::gen_keypair();
        let public = TeePublicKey::new(Kem::X25519HkdfSha256, public.to_bytes().to_vec())?;
        Ok(Self { private, public })
    }

    /// The public half, as bound into evidence.
    #[must_use]
    pub fn public(&self) -> &TeePublicKey {
        &self.public
    }

    /// Opens a message the broker sealed to this key (HPKE base mode, single shot).
    ///
    /// # Errors
    /// [`Error::Request`] when the encapsulated key is malformed or the ciphertext does not open.
    pub fn open(
        &self,
        encapsulated_key: &[u8],
        info: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>> {
        let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(encapsulated_key)
            .map_err(|e| Error::Request(format!("hpke: encapsulated key: {e}")))?;
        hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &self.private,
            &enc,
            info,
            ciphertext,
            aad,
        )
        .map_err(|e| Error::Request(format!("hpke: cannot open sealed message: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpke::OpModeS;

    fn seal(public: &[u8], msg: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let pk = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(public).unwrap();
        let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &OpModeS::Base,
            &pk,
            b"sealroom data key",
            msg,
            b"aad",
        )
        .unwrap();
        (enc.to_bytes().to_vec(), ct)
    }

    #[test]
    fn opens_what_is_sealed_to_it_and_nothing_else() {
        let key = TeeKey::generate().unwrap();
        assert_eq!(key.public().as_bytes().len(), 32);
        let (enc, ct) = seal(key.public().as_bytes(), b"data key");
        assert_eq!(key.open(&enc, b"sealroom data key", &ct, b"aad").unwrap(), b"data key");
        // Another instance's key cannot open it.
        let other = TeeKey::generate().unwrap();
        assert_ne!(other.public(), key.public());
        assert!(other.open(&enc, b"sealroom data key", &ct, b"aad").is_err());
        // Changed info, aad or ciphertext do not open.
        assert!(key.open(&enc, b"other info", &ct, b"aad").is_err());
        assert!(key.open(&enc, b"sealroom data key", &ct, b"aaD").is_err());
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(key.open(&enc, b"sealroom data key", &bad, b"aad").is_err());
        assert!(key.open(&enc[..31], b"sealroom data key", &ct, b"aad").is_err());
    }

    #[test]
    fn debug_does_not_print_the_private_key() {
        let key = TeeKey::generate().unwrap();
        let s = format!("{key:?}");
        assert!(s.contains(&hex::encode(key.public().as_bytes())));
        assert!(s.contains(".."));
    }
}
