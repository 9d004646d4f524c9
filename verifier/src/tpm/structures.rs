//! TPM 2.0 structures a quote is made of (TPM 2.0 Library Part 2), parsed from untrusted bytes.
//!
//! TPMS_ATTEST (the signed quote body), TPMT_SIGNATURE (RSASSA, RSAPSS, ECDSA) and TPMT_PUBLIC (RSA and ECC
//! attestation keys). All integers are big-endian; every structure must be consumed exactly.

use sealroom_measurements::evidence::HashAlg;
use sealroom_measurements::reader::Reader;

use crate::error::{Error, Result};

/// TPM_GENERATED_VALUE: the magic that proves the TPM produced the structure.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// TPM_ALG_RSA.
pub const TPM_ALG_RSA: u16 = 0x0001;
/// TPM_ALG_ECC.
pub const TPM_ALG_ECC: u16 = 0x0023;
/// TPM_ALG_NULL.
pub const TPM_ALG_NULL: u16 = 0x0010;
/// TPM_ALG_RSASSA.
pub const TPM_ALG_RSASSA: u16 = 0x0014;
/// TPM_ALG_RSAPSS.
pub const TPM_ALG_RSAPSS: u16 = 0x0016;
/// TPM_ALG_ECDSA.
pub const TPM_ALG_ECDSA: u16 = 0x0018;
/// TPM_ECC_NIST_P256.
pub const TPM_ECC_NIST_P256: u16 = 0x0003;
/// TPM_ECC_NIST_P384.
pub const TPM_ECC_NIST_P384: u16 = 0x0004;

/// objectAttributes bits that matter for an attestation key.
pub mod attributes {
    /// fixedTPM: the key cannot leave this TPM.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// sensitiveDataOrigin: the TPM generated the key.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// restricted: signs only TPM-generated structures (so it cannot sign a forged TPMS_ATTEST).
    pub const RESTRICTED: u32 = 1 << 16;
    /// decrypt.
    pub const DECRYPT: u32 = 1 << 17;
    /// sign / encrypt.
    pub const SIGN_ENCRYPT: u32 = 1 << 18;
}

fn hash_alg(id: u16, layer: &'static str, field: &str) -> Result<HashAlg> {
    HashAlg::from_tpm_alg_id(id)
        .ok_or_else(|| Error::check(layer, format!("{field}: hash algorithm {id:#06x} unsupported")))
}

/// One TPMS_PCR_SELECTION: a bank and the PCR indices selected in it (ascending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    /// The bank.
    pub alg: HashAlg,
    /// Selected indices, ascending.
    pub indices: Vec<u32>,
}

/// TPMS_CLOCK_INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered.
    pub clock: u64,
    /// TPM resets since manufacture.
    pub reset_count: u32,
    /// TPM restarts since the last reset.
    pub restart_count: u32,
    /// Whether the clock value was not lost.
    pub safe: bool,
}

/// A TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// Qualified name of the signing key.
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data (nonce or binding digest).
    pub extra_data: Vec<u8>,
    /// Clock state at signing.
    pub clock_info: ClockInfo,
    /// TPM firmware version.
    pub firmware_version: u64,
    /// Which PCRs were quoted, in quote order.
    pub pcr_select: Vec<PcrSelection>,
    /// Digest over the selected PCR values.
    pub pcr_digest: Vec<u8>,
}

const ATTEST: &str = "tpms_attest";

fn read_pcr_selection(r: &mut Reader<'_>, layer: &'static str) -> Result<Vec<PcrSelection>> {
    let m = Error::read(layer);
    let count = r.u32_be("pcrSelect count").map_err(&m)?;
    if count > 16 {
        return Err(Error::check(layer, format!("pcrSelect count {count} exceeds 16")));
    }
    let mut out = Vec::new();
    for _ in 0..count {
        let alg = hash_alg(r.u16_be("pcrSelect hash").map_err(&m)?, layer, "pcrSelect")?;
        let size = r.u8("sizeofSelect").map_err(&m)?;
        if size > 4 {
            return Err(Error::check(layer, format!("sizeofSelect {size} exceeds 4 (24 PCRs)")));
        }
        let bitmap = r.take(usize::from(size), "pcrSelect bitmap").map_err(&m)?;
        let mut indices = Vec::new();
        for (byte_index, byte) in (0u32..).zip(bitmap) {
            for bit in 0..8u32 {
                if byte & (1 << bit) != 0 {
                    indices.push(byte_index * 8 + bit);
                }
            }
        }
        out.push(PcrSelection { alg, indices });
    }
    Ok(out)
}

impl Attest {
    /// Parses a marshalled TPMS_ATTEST that must be a quote.
    ///
    /// # Errors
    /// On a wrong magic or type, or malformed/trailing bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let m = Error::read(ATTEST);
        let mut r = Reader::new(bytes);
        let magic = r.u32_be("magic").map_err(&m)?;
        if magic != TPM_GENERATED_VALUE {
            return Err(Error::check(ATTEST, format!("magic {magic:#010x} is not TPM_GENERATED_VALUE")));
        }
        let ty = r.u16_be("type").map_err(&m)?;
        if ty != TPM_ST_ATTEST_QUOTE {
            return Err(Error::check(ATTEST, format!("type {ty:#06x} is not TPM_ST_ATTEST_QUOTE")));
        }
        let qualified_signer = r.tpm2b("qualifiedSigner").map_err(&m)?.to_vec();
        let extra_data = r.tpm2b("extraData").map_err(&m)?.to_vec();
        let clock_info = ClockInfo {
            clock: r.u64_be("clock").map_err(&m)?,
            reset_count: r.u32_be("resetCount").map_err(&m)?,
            restart_count: r.u32_be("restartCount").map_err(&m)?,
            safe: r.u8("safe").map_err(&m)? != 0,
        };
        let firmware_version = r.u64_be("firmwareVersion").map_err(&m)?;
        let pcr_select = read_pcr_selection(&mut r, ATTEST)?;
        let pcr_digest = r.tpm2b("pcrDigest").map_err(&m)?.to_vec();
        r.finish(ATTEST).map_err(&m)?;
        Ok(Self { qualified_signer, extra_data, clock_info, firmware_version, pcr_select, pcr_digest })
    }
}

/// A TPMT_SIGNATURE.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signature {
    /// RSASSA-PKCS1-v1_5.
    RsaSsa {
        /// Digest of the signed message.
        hash: HashAlg,
        /// The signature.
        sig: Vec<u8>,
    },
    /// RSASSA-PSS.
    RsaPss {
        /// Digest of the signed message.
        hash: HashAlg,
        /// The signature.
        sig: Vec<u8>,
    },
    /// ECDSA.
    Ecdsa {
        /// Digest of the signed message.
        hash: HashAlg,
        /// r, big-endian.
        r: Vec<u8>,
        /// s, big-endian.
        s: Vec<u8>,
    },
}

const SIG: &str = "tpmt_signature";

impl Signature {
    /// Parses a marshalled TPMT_SIGNATURE.
    ///
    /// # Errors
    /// On an unsupported scheme or hash, or malformed/trailing bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let m = Error::read(SIG);
        let mut r = Reader::new(bytes);
        let scheme = r.u16_be("sigAlg").map_err(&m)?;
        let hash = hash_alg(r.u16_be("hash").map_err(&m)?, SIG, "hash")?;
        let out = match scheme {
            TPM_ALG_RSASSA => Self::RsaSsa { hash, sig: r.tpm2b("signature").map_err(&m)?.to_vec() },
            TPM_ALG_RSAPSS => Self::RsaPss { hash, sig: r.tpm2b("signature").map_err(&m)?.to_vec() },
            TPM_ALG_ECDSA => Self::Ecdsa {
                hash,
                r: r.tpm2b("signatureR").map_err(&m)?.to_vec(),
                s: r.tpm2b("signatureS").map_err(&m)?.to_vec(),
            },
            other => return Err(Error::check(SIG, format!("signature scheme {other:#06x} unsupported"))),
        };
        r.finish(SIG).map_err(&m)?;
        Ok(out)
    }

    /// The hash the signature was made over.
    #[must_use]
    pub fn hash(&self) -> HashAlg {
        match self {
            Self::RsaSsa { hash, .. } | Self::RsaPss { hash, .. } | Self::Ecdsa { hash, .. } => *hash,
        }
    }
}

/// The public key of a TPMT_PUBLIC.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublicKey {
    /// RSA: modulus and exponent (big-endian, exponent 0 means 65537).
    Rsa {
        /// Modulus.
        modulus: Vec<u8>,
        /// Public exponent.
        exponent: u32,
    },
    /// ECC on a NIST curve.
    Ecc {
        /// TPM_ECC_CURVE.
        curve: u16,
        /// x, big-endian.
        x: Vec<u8>,
        /// y, big-endian.
        y: Vec<u8>,
    },
}

/// A TPMT_PUBLIC of an RSA or ECC key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Public {
    /// nameAlg.
    pub name_alg: HashAlg,
    /// objectAttributes.
    pub attributes: u32,
    /// The key's signing scheme and its hash, if fixed (TPM_ALG_NULL = any).
    pub scheme: Option<(u16, HashAlg)>,
    /// The key.
    pub key: PublicKey,
}

const PUB: &str = "tpmt_public";

fn read_scheme(r: &mut Reader<'_>, what: &'static str) -> Result<Option<(u16, HashAlg)>> {
    let m = Error::read(PUB);
    let scheme = r.u16_be(what).map_err(&m)?;
    if scheme == TPM_ALG_NULL {
        return Ok(None);
    }
    let hash = hash_alg(r.u16_be(what).map_err(&m)?, PUB, what)?;
    Ok(Some((scheme, hash)))
}

impl Public {
    /// Parses a marshalled TPMT_PUBLIC.
    ///
    /// # Errors
    /// On an unsupported type or malformed/trailing bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let m = Error::read(PUB);
        let mut r = Reader::new(bytes);
        let ty = r.u16_be("type").map_err(&m)?;
        let name_alg = hash_alg(r.u16_be("nameAlg").map_err(&m)?, PUB, "nameAlg")?;
        let attributes = r.u32_be("objectAttributes").map_err(&m)?;
        r.tpm2b("authPolicy").map_err(&m)?;
        // symmetric: TPMT_SYM_DEF_OBJECT (algorithm, then keyBits and mode unless NULL).
        let sym = r.u16_be("symmetric").map_err(&m)?;
        if sym != TPM_ALG_NULL {
            r.skip(4, "symmetric keyBits/mode").map_err(&m)?;
        }
        let (scheme, key) = match ty {
            TPM_ALG_RSA => {
                let scheme = read_scheme(&mut r, "rsa scheme")?;
                let _key_bits = r.u16_be("keyBits").map_err(&m)?;
                let exponent = r.u32_be("exponent").map_err(&m)?;
                let modulus = r.tpm2b("modulus").map_err(&m)?.to_vec();
                (scheme, PublicKey::Rsa { modulus, exponent })
            }
            TPM_ALG_ECC => {
                let scheme = read_scheme(&mut r, "ecc scheme")?;
                let curve = r.u16_be("curveID").map_err(&m)?;
                read_scheme(&mut r, "kdf")?;
                let x = r.tpm2b("x").map_err(&m)?.to_vec();
                let y = r.tpm2b("y").map_err(&m)?.to_vec();
                (scheme, PublicKey::Ecc { curve, x, y })
            }
            other => return Err(Error::check(PUB, format!("key type {other:#06x} unsupported"))),
        };
        r.finish(PUB).map_err(&m)?;
        Ok(Self { name_alg, attributes, scheme, key })
    }

    /// Whether this is a restricted signing key that the TPM generated and cannot export: the shape of an AK.
    #[must_use]
    pub fn is_attestation_key(&self) -> bool {
        let need = attributes::FIXED_TPM
            | attributes::SENSITIVE_DATA_ORIGIN
            | attributes::RESTRICTED
            | attributes::SIGN_ENCRYPT;
        self.attributes & need == need && self.attributes & attributes::DECRYPT == 0
    }
}

/// Parses a TPML_PCR_SELECTION on its own (used by fuzzing and by quotes without TPMS_ATTEST wrappers).
///
/// # Errors
/// On malformed or trailing bytes.
pub fn parse_pcr_selection(bytes: &[u8]) -> Result<Vec<PcrSelection>> {
    let mut r = Reader::new(bytes);
    let out = read_pcr_selection(&mut r, "tpml_pcr_selection")?;
    r.finish("tpml_pcr_selection").map_err(Error::read("tpml_pcr_selection"))?;
    Ok(out)
}
