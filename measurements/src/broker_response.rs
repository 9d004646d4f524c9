//! Signed key-broker responses: what the broker signs in every `Release` and `Receipt` answer, and how the
//! agent checks it against the broker key its workload spec pins.
//!
//! HPKE base mode authenticates nobody: anyone can seal a key to the TEE's public key. Without a signature a
//! fake broker (or a man in the middle) could hand the workload an operator-chosen key. The broker therefore
//! signs, with its ES256 key (the one that signs its EAR tokens), a fixed binary layout covering the nonce, the
//! TEE key, every key id and the digest of every sealed key, and the agent accepts a response only when the
//! signature verifies under a public key whose RFC 7638 thumbprint equals the `broker_key` of the spec (which
//! is measured as a launch event before the separator). The layout is specified in `docs/binding.md`
//! ("Broker response signatures"); it is independent of the transport (TLS or not).

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::binding::Nonce;
use crate::error::{Error, Result};

/// Domain separation prefix of every signed response.
pub const DOMAIN: &[u8; 28] = b"sealroom.broker-response.v1\0";
/// Domain separation prefix of a sealed key's digest.
pub const SEALED_KEY_DOMAIN: &[u8; 23] = b"sealroom.sealed-key.v1\0";
/// Length of an ECDSA P-256 signature in fixed (r ‖ s) form.
pub const SIGNATURE_LEN: usize = 64;
/// Length of an uncompressed SEC1 P-256 public key.
pub const PUBLIC_KEY_LEN: usize = 65;

/// Which response is signed (the byte after the domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseKind {
    /// `KeyBroker.Release`.
    Release,
    /// `KeyBroker.Receipt`.
    Receipt,
}

impl ResponseKind {
    fn code(self) -> u8 {
        match self {
            Self::Release => 1,
            Self::Receipt => 2,
        }
    }
}

/// The TEE key a response is for, exactly as the request's evidence carried it (kem id and raw bytes; the
/// broker signs what it received even when it could not use it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TeeKeyField<'a> {
    /// RFC 9180 KEM id.
    pub kem_id: u16,
    /// The public key bytes.
    pub key: &'a [u8],
}

/// What a `Release` response says, in response order.
#[derive(Debug, Clone, Copy)]
pub struct ReleaseStatement<'a> {
    /// The request's nonce.
    pub nonce: &'a Nonce,
    /// The TEE key the keys are sealed to.
    pub tee_key: TeeKeyField<'a>,
    /// Released keys: (key id, [`sealed_key_digest`]).
    pub keys: &'a [(&'a str, [u8; 32])],
    /// Refused keys: (key id, reason).
    pub refusals: &'a [(&'a str, &'a str)],
    /// The EAR JWT of the response.
    pub attestation_result: &'a str,
}

/// What a `Receipt` response says.
#[derive(Debug, Clone, Copy)]
pub struct ReceiptStatement<'a> {
    /// The request's nonce.
    pub nonce: &'a Nonce,
    /// The TEE key of the request's evidence.
    pub tee_key: TeeKeyField<'a>,
    /// The key whose policy judged the evidence.
    pub key_id: &'a str,
    /// The output digest the request presented.
    pub output_digest: &'a str,
    /// The receipt JWT (empty when refused).
    pub receipt: &'a str,
    /// The refusal (empty when issued).
    pub refusal: &'a str,
}

fn lp(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every field is bounded by the gRPC message limit (a few MiB), far below u32::MAX.
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn count(out: &mut Vec<u8>, n: usize) {
    // At most 64 keys per request (keybroker.proto).
    out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
}

fn header(kind: ResponseKind, nonce: &Nonce, tee: TeeKeyField<'_>) -> Vec<u8> {
    let mut out = DOMAIN.to_vec();
    out.push(kind.code());
    out.extend_from_slice(&nonce.0);
    out.extend_from_slice(&tee.kem_id.to_be_bytes());
    count(&mut out, tee.key.len());
    out.extend_from_slice(tee.key);
    out
}

/// `SHA-256("sealroom.sealed-key.v1" 0x00 || kem_id u16 BE || lp(encapsulated_key) || lp(ciphertext))`.
#[must_use]
pub fn sealed_key_digest(kem_id: u16, encapsulated_key: &[u8], ciphertext: &[u8]) -> [u8; 32] {
    let mut input = SEALED_KEY_DOMAIN.to_vec();
    input.extend_from_slice(&kem_id.to_be_bytes());
    lp(&mut input, encapsulated_key);
    lp(&mut input, ciphertext);
    let d = digest(&SHA256, &input);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The bytes the broker signs for a `Release` response.
#[must_use]
pub fn release_signing_input(s: &ReleaseStatement<'_>) -> Vec<u8> {
    let mut out = header(ResponseKind::Release, s.nonce, s.tee_key);
    count(&mut out, s.keys.len());
    for (id, d) in s.keys {
        lp(&mut out, id.as_bytes());
        out.extend_from_slice(d);
    }
    count(&mut out, s.refusals.len());
    for (id, reason) in s.refusals {
        lp(&mut out, id.as_bytes());
        lp(&mut out, reason.as_bytes());
    }
    lp(&mut out, s.attestation_result.as_bytes());
    out
}

/// The bytes the broker signs for a `Receipt` response.
#[must_use]
pub fn receipt_signing_input(s: &ReceiptStatement<'_>) -> Vec<u8> {
    let mut out = header(ResponseKind::Receipt, s.nonce, s.tee_key);
    lp(&mut out, s.key_id.as_bytes());
    lp(&mut out, s.output_digest.as_bytes());
    lp(&mut out, s.receipt.as_bytes());
    lp(&mut out, s.refusal.as_bytes());
    out
}

/// The broker key id: the RFC 7638 JWK thumbprint (SHA-256, base64url) of an uncompressed SEC1 P-256 public
/// key, as in the `kid` of the broker's JWK file and token headers. This is what a workload spec pins.
///
/// # Errors
/// When `public_key` is not 65 bytes starting with 0x04.
pub fn broker_key_id(public_key: &[u8]) -> Result<String> {
    let (x, y) = match public_key {
        [4, rest @ ..] if rest.len() == 64 => rest.split_at(32),
        _ => {
            return Err(Error::BrokerResponse(format!(
                "broker public key of {} bytes is not an uncompressed P-256 key",
                public_key.len()
            )));
        }
    };
    let canonical =
        format!(r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#, B64.encode(x), B64.encode(y));
    Ok(B64.encode(digest(&SHA256, canonical.as_bytes())))
}

/// Checks that a pinned broker key id has the shape of a thumbprint (43 base64url characters).
///
/// # Errors
/// Anything else, one line.
pub fn check_broker_key_id(kid: &str) -> Result<()> {
    let ok = kid.len() == 43 && kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::BrokerResponse(format!(
            "broker key {kid:?} is not an RFC 7638 thumbprint (43 base64url characters, the `kid` of the broker's JWK)"
        )))
    }
}

/// Verifies a response's signature: present, made by a key whose id is `pinned_kid`, over `signing_input`.
///
/// # Errors
/// [`Error::BrokerResponse`] saying which: unsigned, signed by another broker, or a signature that does not
/// verify (the response was changed on the way).
pub fn verify(pinned_kid: &str, public_key: &[u8], signature: &[u8], signing_input: &[u8]) -> Result<()> {
    if signature.is_empty() || public_key.is_empty() {
        return Err(Error::BrokerResponse(format!(
            "unsigned response; the workload spec pins broker key {pinned_kid}"
        )));
    }
    let kid = broker_key_id(public_key)?;
    if kid != pinned_kid {
        return Err(Error::BrokerResponse(format!(
            "signed by broker key {kid}, but the workload spec pins broker key {pinned_kid}"
        )));
    }
    if signature.len() != SIGNATURE_LEN {
        return Err(Error::BrokerResponse(format!(
            "signature of {} bytes, expected {SIGNATURE_LEN}",
            signature.len()
        )));
    }
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key).verify(signing_input, signature).map_err(
        |_| {
            Error::BrokerResponse(format!("signature by broker key {kid} does not verify over this response"))
        },
    )
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    use super::*;

    fn statement_bytes(nonce: &Nonce, digest_byte: u8) -> Vec<u8> {
        let keys = [("k1", [digest_byte; 32])];
        release_signing_input(&ReleaseStatement {
            nonce,
            tee_key: TeeKeyField { kem_id: 0x20, key: &[7; 32] },
            keys: &keys,
            refusals: &[("k2", "policy: no")],
            attestation_result: "a.b.c",
        })
    }

    #[test]
    fn verifies_only_the_pinned_key_over_the_exact_statement() {
        let rng = SystemRandom::new();
        let broker = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let other = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let pk = broker.public_key().as_ref().to_vec();
        let kid = broker_key_id(&pk).unwrap();
        check_broker_key_id(&kid).unwrap();
        let nonce = Nonce([3; 32]);
        let input = statement_bytes(&nonce, 1);
        let sig = broker.sign(&rng, &input).unwrap().as_ref().to_vec();
        verify(&kid, &pk, &sig, &input).unwrap();
        // A changed sealed-key digest (another key sealed on the way) does not verify.
        let err = verify(&kid, &pk, &sig, &statement_bytes(&nonce, 2)).unwrap_err().to_string();
        assert!(err.ends_with("does not verify over this response"), "{err}");
        // Another broker's valid signature is refused for its key, before any signature check.
        let other_pk = other.public_key().as_ref().to_vec();
        let other_sig = other.sign(&rng, &input).unwrap().as_ref().to_vec();
        let err = verify(&kid, &other_pk, &other_sig, &input).unwrap_err().to_string();
        assert!(err.contains("but the workload spec pins broker key"), "{err}");
        let err = verify(&kid, &[], &[], &input).unwrap_err().to_string();
        assert!(err.starts_with("broker response: unsigned response"), "{err}");
        assert!(check_broker_key_id("sha256:abc").is_err());
    }

    #[test]
    fn layouts_are_domain_separated_and_length_prefixed() {
        let nonce = Nonce([0; 32]);
        let tee = TeeKeyField { kem_id: 0x20, key: &[1; 32] };
        let release = release_signing_input(&ReleaseStatement {
            nonce: &nonce,
            tee_key: tee,
            keys: &[],
            refusals: &[],
            attestation_result: "",
        });
        let receipt = receipt_signing_input(&ReceiptStatement {
            nonce: &nonce,
            tee_key: tee,
            key_id: "",
            output_digest: "",
            receipt: "",
            refusal: "",
        });
        assert!(release.starts_with(DOMAIN) && receipt.starts_with(DOMAIN));
        assert_ne!(release.get(DOMAIN.len()), receipt.get(DOMAIN.len()));
        // Moving bytes between adjacent fields changes the input.
        let a = receipt_signing_input(&ReceiptStatement {
            nonce: &nonce,
            tee_key: tee,
            key_id: "ab",
            output_digest: "c",
            receipt: "",
            refusal: "",
        });
        let b = receipt_signing_input(&ReceiptStatement {
            nonce: &nonce,
            tee_key: tee,
            key_id: "a",
            output_digest: "bc",
            receipt: "",
            refusal: "",
        });
        assert_ne!(a, b);
        assert_ne!(sealed_key_digest(0x20, b"ab", b"c"), sealed_key_digest(0x20, b"a", b"bc"));
    }
}
