//! TPM2_Quote verification: the AK signature over TPMS_ATTEST, the qualifying data, and the PCR digest
//! recomputed from the PCR values the evidence claims.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use sealroom_measurements::binding::{Nonce, TeePublicKey, binding_digest};
use sealroom_measurements::evidence::{HashAlg, PcrBank};

use super::structures::{Attest, Public, PublicKey, Signature, TPM_ECC_NIST_P256, TPM_ECC_NIST_P384};
use crate::error::{Error, Result};

const LAYER: &str = "tpm quote";

/// The aws-lc-rs digest algorithm for a TPM hash.
#[must_use]
pub fn digest_alg(alg: HashAlg) -> &'static digest::Algorithm {
    match alg {
        HashAlg::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        HashAlg::Sha256 => &digest::SHA256,
        HashAlg::Sha384 => &digest::SHA384,
        _ => &digest::SHA512,
    }
}

/// Hashes `data` with a TPM hash algorithm.
#[must_use]
pub fn hash(alg: HashAlg, data: &[u8]) -> Vec<u8> {
    digest::digest(digest_alg(alg), data).as_ref().to_vec()
}

fn pad_left(v: &[u8], len: usize) -> Result<Vec<u8>> {
    let trimmed: &[u8] = {
        let start = v.iter().position(|b| *b != 0).unwrap_or(v.len());
        v.get(start..).unwrap_or_default()
    };
    if trimmed.len() > len {
        return Err(Error::check(
            LAYER,
            format!("ECDSA signature component is {} bytes, curve needs {len}", v.len()),
        ));
    }
    let mut out = vec![0u8; len - trimmed.len()];
    out.extend_from_slice(trimmed);
    Ok(out)
}

/// Verifies a TPMT_SIGNATURE over `message` (the marshalled TPMS_ATTEST) with the AK.
///
/// # Errors
/// "tpm quote: AK signature over TPMS_ATTEST invalid" or a scheme/key mismatch.
pub fn verify_signature(message: &[u8], sig: &Signature, ak: &PublicKey) -> Result<()> {
    let bad = || Error::check(LAYER, "AK signature over TPMS_ATTEST invalid");
    match (sig, ak) {
        (Signature::RsaSsa { hash, sig }, PublicKey::Rsa { modulus, exponent }) => {
            let params: &signature::RsaParameters = match hash {
                HashAlg::Sha1 => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                HashAlg::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                HashAlg::Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                _ => &signature::RSA_PKCS1_2048_8192_SHA512,
            };
            verify_rsa(params, modulus, *exponent, message, sig).map_err(|()| bad())
        }
        (Signature::RsaPss { hash, sig }, PublicKey::Rsa { modulus, exponent }) => {
            let params: &signature::RsaParameters = match hash {
                HashAlg::Sha256 => &signature::RSA_PSS_2048_8192_SHA256,
                HashAlg::Sha384 => &signature::RSA_PSS_2048_8192_SHA384,
                HashAlg::Sha512 => &signature::RSA_PSS_2048_8192_SHA512,
                _ => return Err(Error::check(LAYER, "RSA-PSS with SHA-1 unsupported")),
            };
            verify_rsa(params, modulus, *exponent, message, sig).map_err(|()| bad())
        }
        (Signature::Ecdsa { hash, r, s }, PublicKey::Ecc { curve, x, y }) => {
            let (alg, len): (&'static signature::EcdsaVerificationAlgorithm, usize) = match (*curve, hash) {
                (TPM_ECC_NIST_P256, HashAlg::Sha256) => (&signature::ECDSA_P256_SHA256_FIXED, 32),
                (TPM_ECC_NIST_P384, HashAlg::Sha384) => (&signature::ECDSA_P384_SHA384_FIXED, 48),
                (c, h) => {
                    return Err(Error::check(
                        LAYER,
                        format!("ECDSA on curve {c:#06x} with {} unsupported", h.name()),
                    ));
                }
            };
            let mut point = vec![4u8];
            point.extend(pad_left(x, len)?);
            point.extend(pad_left(y, len)?);
            let mut fixed = pad_left(r, len)?;
            fixed.extend(pad_left(s, len)?);
            UnparsedPublicKey::new(alg, point).verify(message, &fixed).map_err(|_| bad())
        }
        _ => Err(Error::check(LAYER, "signature scheme does not match the AK key type")),
    }
}

/// Verifies a raw RSA signature (Azure's vTPM returns the bare signature, RSASSA-PKCS1-v1_5 SHA-256).
///
/// # Errors
/// When the signature does not verify.
pub fn verify_rsa_raw(message: &[u8], sig: &[u8], modulus: &[u8], exponent: u32) -> Result<()> {
    verify_rsa(&signature::RSA_PKCS1_2048_8192_SHA256, modulus, exponent, message, sig)
        .map_err(|()| Error::check(LAYER, "AK signature over TPMS_ATTEST invalid"))
}

fn verify_rsa(
    params: &'static signature::RsaParameters,
    modulus: &[u8],
    exponent: u32,
    message: &[u8],
    sig: &[u8],
) -> std::result::Result<(), ()> {
    let e = if exponent == 0 { 65537 } else { exponent };
    let e_bytes = e.to_be_bytes();
    let start = e_bytes.iter().position(|b| *b != 0).unwrap_or(3);
    let e = e_bytes.get(start..).unwrap_or_default();
    RsaPublicKeyComponents { n: modulus, e }.verify(params, message, sig).map_err(|_| ())
}

/// What the quote's extraData must be.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ExpectedExtraData {
    /// The sealroom binding digest of a nonce and TEE key (see `sealroom_measurements::binding`).
    Binding(Nonce, TeePublicKey),
    /// These exact bytes (a verifier challenge as other agents use it; empty for "no nonce").
    Exact(Vec<u8>),
    /// Not checked: the caller reports freshness as unverified.
    Unchecked,
}

/// Checks extraData.
///
/// # Errors
/// "tpm quote: extraData … does not match the expected nonce".
pub fn check_extra_data(attest: &Attest, expected: &ExpectedExtraData) -> Result<()> {
    let want = match expected {
        ExpectedExtraData::Binding(nonce, key) => binding_digest(nonce, key).to_vec(),
        ExpectedExtraData::Exact(v) => v.clone(),
        ExpectedExtraData::Unchecked => return Ok(()),
    };
    if attest.extra_data != want {
        return Err(Error::check(
            LAYER,
            format!(
                "extraData {} does not match the expected nonce {}",
                hex::encode(&attest.extra_data),
                hex::encode(&want)
            ),
        ));
    }
    Ok(())
}

/// Recomputes the quote's pcrDigest from the claimed PCR values and compares.
///
/// pcrDigest = H_sig(PCR values concatenated in selection order), H_sig being the signing scheme's hash.
///
/// # Errors
/// When a selected PCR is missing from `banks`, or the digest differs.
pub fn check_pcr_digest(attest: &Attest, banks: &[PcrBank], sig_hash: HashAlg) -> Result<()> {
    let mut concat = Vec::new();
    for sel in &attest.pcr_select {
        let bank = banks.iter().find(|b| b.alg == sel.alg).ok_or_else(|| {
            Error::check(
                LAYER,
                format!("quote selects the {} bank but the evidence has no such PCR values", sel.alg.name()),
            )
        })?;
        for idx in &sel.indices {
            let v = bank.values.get(idx).ok_or_else(|| {
                Error::check(
                    LAYER,
                    format!("quote selects {} PCR {idx} but the evidence lacks its value", sel.alg.name()),
                )
            })?;
            concat.extend_from_slice(v);
        }
    }
    let got = hash(sig_hash, &concat);
    if got != attest.pcr_digest {
        return Err(Error::check(
            LAYER,
            format!(
                "PCR digest mismatch: quote has {}, claimed PCR values hash to {}",
                hex::encode(&attest.pcr_digest),
                hex::encode(&got)
            ),
        ));
    }
    Ok(())
}

/// A TPM quote that passed every check, with what it proves.
#[derive(Debug, Clone)]
pub struct VerifiedQuote {
    /// The parsed quote.
    pub attest: Attest,
    /// The PCR values now proven by the quote (only the selected ones).
    pub pcrs: Vec<PcrBank>,
}

/// Verifies one quote completely: parse, AK signature, extraData, PCR digest.
///
/// # Errors
/// The first failed check.
pub fn verify_quote(
    attest_bytes: &[u8],
    sig_bytes: &[u8],
    ak: &Public,
    banks: &[PcrBank],
    expected: &ExpectedExtraData,
) -> Result<VerifiedQuote> {
    if !ak.is_attestation_key() {
        return Err(Error::check(LAYER, "AK is not a restricted, TPM-generated signing key"));
    }
    let sig = Signature::parse(sig_bytes)?;
    verify_signature(attest_bytes, &sig, &ak.key)?;
    let attest = Attest::parse(attest_bytes)?;
    check_extra_data(&attest, expected)?;
    check_pcr_digest(&attest, banks, sig.hash())?;
    let pcrs = quoted_banks(&attest, banks);
    Ok(VerifiedQuote { attest, pcrs })
}

/// The subset of `banks` that the quote covers.
#[must_use]
pub fn quoted_banks(attest: &Attest, banks: &[PcrBank]) -> Vec<PcrBank> {
    attest
        .pcr_select
        .iter()
        .filter_map(|sel| {
            let bank = banks.iter().find(|b| b.alg == sel.alg)?;
            let values = sel.indices.iter().filter_map(|i| Some((*i, bank.values.get(i)?.clone()))).collect();
            Some(PcrBank { alg: sel.alg, values })
        })
        .collect()
}
