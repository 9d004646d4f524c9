//! Credential activation (TPM 2.0 Library Part 1, "Credential Protection"; Part 3 TPM2_MakeCredential and
//! TPM2_ActivateCredential): how a verifier learns that an attestation key lives in the same TPM as a
//! certified endorsement key, without trusting the machine that presents them.
//!
//! The verifier encrypts a fresh secret to the EK so that only a TPM holding that EK's private key *and* a
//! loaded object whose name equals the AK's name can recover it: the AK's name (nameAlg || H(TPMT_PUBLIC)) is
//! bound into the symmetric key and the integrity HMAC. The TPM then returns the secret through
//! TPM2_ActivateCredential. Because the name covers the AK's attributes, the verifier also insists the AK is a
//! restricted signing key the TPM generated and cannot export (fixedTPM, sensitiveDataOrigin), so a key the
//! operator made elsewhere and loaded as an external object does not qualify. This is the check keylime's
//! registrar performs before it trusts an agent's AK.
//!
//! Computed here in software (TPM2_MakeCredential needs no TPM): RSA EKs get an OAEP-encrypted seed (label
//! "IDENTITY"), ECC EKs an ephemeral ECDH point with the seed from KDFe; the EK template's nameAlg and symmetric
//! key follow from the key (TCG EK Credential Profile default templates: RSA 2048 and P-256 with SHA-256 and
//! AES-128, P-384 with SHA-384 and AES-256).

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey};
use aws_lc_rs::cipher::{AES_128, AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{
    OAEP_SHA256_MGF1SHA256, OAEP_SHA384_MGF1SHA384, OaepPublicEncryptingKey, PublicEncryptingKey,
};
use aws_lc_rs::{digest, hmac, rand};
use sealroom_measurements::evidence::HashAlg;

use super::ek::{EkCertificate, EkIdentity, EkPublicKey};
use super::structures::Public;
use crate::error::{Error, Result};
use crate::x509::{Certificate, Curve, UnixTime};

const LAYER: &str = "tpm credential";

/// Length of the secret a verifier asks the TPM to recover.
pub const SECRET_LEN: usize = 32;
/// Largest TPM2B_ID_OBJECT contents the agent accepts (HMAC, size and an encrypted 64-byte digest fit in 160).
pub const MAX_ID_OBJECT_LEN: usize = 256;
/// Largest TPM2B_ENCRYPTED_SECRET contents the agent accepts (RSA 4096 ciphertext).
pub const MAX_ENCRYPTED_SECRET_LEN: usize = 512;

/// The output of TPM2_MakeCredential, as the agent hands it to TPM2_ActivateCredential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// TPM2B_ID_OBJECT contents: integrityHMAC (TPM2B_DIGEST) || encIdentity.
    pub id_object: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents: the OAEP ciphertext (RSA EK) or the ephemeral TPMS_ECC_POINT (ECC EK).
    pub encrypted_secret: Vec<u8>,
}

/// The TPM name of an object: nameAlg (big-endian TPM_ALG_ID) || nameAlg digest of the marshalled TPMT_PUBLIC.
///
/// # Errors
/// When `public` is not a TPMT_PUBLIC this verifier understands.
pub fn object_name(public: &[u8]) -> Result<Vec<u8>> {
    let parsed = Public::parse(public)?;
    let mut name = parsed.name_alg.tpm_alg_id().to_be_bytes().to_vec();
    name.extend_from_slice(digest::digest(digest_alg(parsed.name_alg)?, public).as_ref());
    Ok(name)
}

fn digest_alg(alg: HashAlg) -> Result<&'static digest::Algorithm> {
    match alg {
        HashAlg::Sha1 => Ok(&digest::SHA1_FOR_LEGACY_USE_ONLY),
        HashAlg::Sha256 => Ok(&digest::SHA256),
        HashAlg::Sha384 => Ok(&digest::SHA384),
        HashAlg::Sha512 => Ok(&digest::SHA512),
        other => Err(Error::check(LAYER, format!("name algorithm {} unsupported", other.name()))),
    }
}

/// The EK template's nameAlg and AES key length for an EK key (TCG default templates).
fn ek_template(ek: &EkPublicKey) -> (HashAlg, usize) {
    match ek {
        EkPublicKey::Ecc { curve: Curve::P384, .. } => (HashAlg::Sha384, 32),
        _ => (HashAlg::Sha256, 16),
    }
}

fn hmac_alg(alg: HashAlg) -> hmac::Algorithm {
    if alg == HashAlg::Sha384 { hmac::HMAC_SHA384 } else { hmac::HMAC_SHA256 }
}

/// KDFa (SP 800-108 counter mode with HMAC), as TPM 2.0 Part 1 defines it: the label is followed by one zero
/// byte, the output length in bits closes every block.
fn kdfa(alg: HashAlg, key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bytes: usize) -> Vec<u8> {
    let key = hmac::Key::new(hmac_alg(alg), key);
    let bits = u32::try_from(bytes.saturating_mul(8)).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(bytes);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(&counter.to_be_bytes());
        ctx.update(label.as_bytes());
        ctx.update(&[0]);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits.to_be_bytes());
        out.extend_from_slice(ctx.sign().as_ref());
        counter = counter.wrapping_add(1);
    }
    out.truncate(bytes);
    out
}

/// KDFe (SP 800-56A concatenation KDF), as TPM 2.0 Part 1 defines it for ECDH-derived seeds.
fn kdfe(
    alg: HashAlg,
    z: &[u8],
    label: &str,
    party_u: &[u8],
    party_v: &[u8],
    bytes: usize,
) -> Result<Vec<u8>> {
    let d = digest_alg(alg)?;
    let mut out = Vec::with_capacity(bytes);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut ctx = digest::Context::new(d);
        ctx.update(&counter.to_be_bytes());
        ctx.update(z);
        ctx.update(label.as_bytes());
        ctx.update(&[0]);
        ctx.update(party_u);
        ctx.update(party_v);
        out.extend_from_slice(ctx.finish().as_ref());
        counter = counter.wrapping_add(1);
    }
    out.truncate(bytes);
    Ok(out)
}

fn tpm2b(bytes: &[u8]) -> Result<Vec<u8>> {
    let len = u16::try_from(bytes.len()).map_err(|_| Error::check(LAYER, "TPM2B longer than 65535 bytes"))?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    Ok(out)
}

/// The seed and its encryption to the EK.
fn seed_for(ek: &EkPublicKey, name_alg: HashAlg) -> Result<(Vec<u8>, Vec<u8>)> {
    let seed_len = name_alg.digest_len();
    let fail = |what: &str| Error::check(LAYER, format!("{what} failed"));
    match ek {
        EkPublicKey::Rsa { spki, .. } => {
            let mut seed = vec![0u8; seed_len];
            rand::fill(&mut seed).map_err(|_| fail("randomness for the seed"))?;
            let key = PublicEncryptingKey::from_der(spki)
                .map_err(|e| Error::check(LAYER, format!("EK RSA key rejected: {e}")))?;
            let oaep = OaepPublicEncryptingKey::new(key).map_err(|_| fail("OAEP key"))?;
            let alg =
                if name_alg == HashAlg::Sha384 { &OAEP_SHA384_MGF1SHA384 } else { &OAEP_SHA256_MGF1SHA256 };
            let mut out = vec![0u8; oaep.ciphertext_size()];
            let ct = oaep
                .encrypt(alg, &seed, &mut out, Some(b"IDENTITY\0"))
                .map_err(|_| fail("OAEP encryption"))?;
            Ok((seed, ct.to_vec()))
        }
        EkPublicKey::Ecc { curve, point } => {
            let (alg, coord) = match curve {
                Curve::P384 => (&agreement::ECDH_P384, 48),
                _ => (&agreement::ECDH_P256, 32),
            };
            let eph = EphemeralPrivateKey::generate(alg, &rand::SystemRandom::new())
                .map_err(|_| fail("ephemeral ECDH key"))?;
            let eph_public = eph.compute_public_key().map_err(|_| fail("ephemeral ECDH public key"))?;
            let eph_point = eph_public.as_ref();
            let (eph_x, eph_y) = split_point(eph_point, coord)?;
            let (ek_x, _) = split_point(point, coord)?;
            let z = agreement::agree_ephemeral(eph, UnparsedPublicKey::new(alg, point), fail("ECDH"), |z| {
                Ok(z.to_vec())
            })?;
            let seed = kdfe(name_alg, &z, "IDENTITY", eph_x, ek_x, seed_len)?;
            let mut encrypted = tpm2b(eph_x)?;
            encrypted.extend_from_slice(&tpm2b(eph_y)?);
            Ok((seed, encrypted))
        }
    }
}

fn split_point(point: &[u8], coord: usize) -> Result<(&[u8], &[u8])> {
    match point.split_first() {
        Some((4, xy)) if xy.len() == coord * 2 => Ok(xy.split_at(coord)),
        _ => Err(Error::check(LAYER, "EK ECC point is not an uncompressed point of its curve")),
    }
}

/// TPM2_MakeCredential: encrypts `secret` (1..=32 bytes) so that only the TPM holding `ek` can recover it, and
/// only while an object named like `ak_public` is loaded in it. Refuses an AK that is not a TPM-generated,
/// non-exportable restricted signing key.
///
/// # Errors
/// "tpm credential: …" for an unacceptable AK, a malformed EK key or a failed primitive.
pub fn make_credential(ek: &EkPublicKey, ak_public: &[u8], secret: &[u8]) -> Result<Credential> {
    if secret.is_empty() || secret.len() > SECRET_LEN {
        return Err(Error::check(
            LAYER,
            format!("secret of {} bytes, expected 1..={SECRET_LEN}", secret.len()),
        ));
    }
    let ak = Public::parse(ak_public).map_err(|e| e.within(LAYER, "AK public area"))?;
    if !ak.is_attestation_key() {
        return Err(Error::check(
            LAYER,
            format!(
                "the AK is not a TPM-resident restricted signing key (objectAttributes {:#010x}: needs fixedTPM, \
                 sensitiveDataOrigin, restricted, sign and no decrypt)",
                ak.attributes
            ),
        ));
    }
    let name = object_name(ak_public)?;
    let (name_alg, sym_len) = ek_template(ek);
    let (seed, encrypted_secret) = seed_for(ek, name_alg)?;
    let sym_key = kdfa(name_alg, &seed, "STORAGE", &name, &[], sym_len);
    let mut enc_identity = tpm2b(secret)?;
    let aes = if sym_len == 32 { &AES_256 } else { &AES_128 };
    let key = UnboundCipherKey::new(aes, &sym_key).map_err(|_| Error::check(LAYER, "AES key"))?;
    EncryptingKey::cfb128(key)
        .and_then(|k| {
            k.less_safe_encrypt(&mut enc_identity, EncryptionContext::Iv128(FixedLength::from([0u8; 16])))
        })
        .map_err(|_| Error::check(LAYER, "AES-CFB encryption failed"))?;
    let hmac_key = kdfa(name_alg, &seed, "INTEGRITY", &[], &[], name_alg.digest_len());
    let mut mac = hmac::Context::with_key(&hmac::Key::new(hmac_alg(name_alg), &hmac_key));
    mac.update(&enc_identity);
    mac.update(&name);
    let mut id_object = tpm2b(mac.sign().as_ref())?;
    id_object.extend_from_slice(&enc_identity);
    Ok(Credential { id_object, encrypted_secret })
}

/// Compares the secret the TPM recovered with the one the verifier issued, in constant time.
///
/// # Errors
/// "tpm credential: the activated secret does not match …" when they differ (another TPM, another AK).
pub fn check_activated_secret(issued: &[u8], returned: &[u8]) -> Result<()> {
    aws_lc_rs::constant_time::verify_slices_are_equal(issued, returned).map_err(|_| {
        Error::check(
            LAYER,
            "the activated secret does not match the issued one: the AK is not resident in the TPM that holds \
             the certified EK",
        )
    })
}

/// An attestation key proven resident in a TPM whose EK certificate chains to a configured EK CA: the only
/// value [`crate::tpm::verify::AkTrust::EkCertified`] accepts, made only by [`accept_activation`].
#[derive(Debug, Clone)]
pub struct ActivatedAk {
    ak_public: Vec<u8>,
    ek: EkIdentity,
}

impl ActivatedAk {
    /// The AK's marshalled TPMT_PUBLIC.
    #[must_use]
    pub fn ak_public(&self) -> &[u8] {
        &self.ak_public
    }

    /// The EK certificate that vouched for the TPM.
    #[must_use]
    pub fn ek(&self) -> &EkIdentity {
        &self.ek
    }
}

/// The verifier's first step: checks the EK certificate against the EK CAs at `at`, then makes the credential
/// for `ak_public` that only that TPM can activate. `secret` is the caller's fresh random value (or a MAC a
/// stateless broker can recompute).
///
/// # Errors
/// The EK certificate's or the AK's refusal, one line.
pub fn issue_challenge(
    ek_cert: &[u8],
    ek_chain: &[Vec<u8>],
    cas: &[Certificate],
    ak_public: &[u8],
    secret: &[u8],
    at: UnixTime,
) -> Result<(EkIdentity, Credential)> {
    let ek = EkCertificate::parse(ek_cert)?;
    let chain = ek_chain.iter().map(|d| Certificate::from_der(d)).collect::<Result<Vec<_>>>()?;
    let identity = ek.verify(&chain, cas, at)?;
    let credential = make_credential(ek.key(), ak_public, secret)?;
    Ok((identity, credential))
}

/// The verifier's second step: the secret the agent's TPM returned equals the one issued for this EK
/// certificate and AK, so the AK is trusted as the EK's (the EK certificate is checked again at `at`).
///
/// # Errors
/// A mismatch ("… not resident in the TPM that holds the certified EK") or the EK certificate's refusal.
pub fn accept_activation(
    ek_cert: &[u8],
    ek_chain: &[Vec<u8>],
    cas: &[Certificate],
    ak_public: &[u8],
    issued: &[u8],
    returned: &[u8],
    at: UnixTime,
) -> Result<ActivatedAk> {
    let ek = EkCertificate::parse(ek_cert)?;
    let chain = ek_chain.iter().map(|d| Certificate::from_der(d)).collect::<Result<Vec<_>>>()?;
    let identity = ek.verify(&chain, cas, at)?;
    check_activated_secret(issued, returned)?;
    Ok(ActivatedAk { ak_public: ak_public.to_vec(), ek: identity })
}
