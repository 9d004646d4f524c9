//! Shared PKI helpers: X.509 certificates and CRLs parsed with `x509-parser` (parse only) and verified with
//! `aws-lc-rs`, at a verification time the caller injects.
//!
//! Why our own and not `webpki`: attestation PKIs are not TLS PKIs. AMD signs with RSA-PSS parameters webpki
//! rejects, Intel's PCK leaves carry SGX extensions we must read, and the verification time must be an input
//! (collateral expires; tests replay evidence at the time its manifest states). The checks done here are the
//! ones RFC 5280 path validation needs for pinned, name-chained attestation PKIs: name chaining, signatures,
//! validity windows, CA flag, keyCertSign, path length, unknown critical extensions, and CRLs.
//!
//! Every error names the certificate (subject CN) and the check: "x509: certificate 'Intel SGX PCK Certificate':
//! expired (notAfter 2029-09-20T13:20:31Z, time 2053-07-01T01:00:00Z)".

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey as ParsedKey;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo, X509Name};

use crate::{Error, Result};

mod crl;
pub(crate) mod der;
mod text;
pub use crl::Crl;
pub use text::pem_blocks;

const LAYER: &str = "x509";

fn fail(reason: impl Into<String>) -> Error {
    Error::check(LAYER, reason)
}

/// Seconds since the Unix epoch (UTC). Verification time is always an input, never the wall clock.
pub type UnixTime = i64;

// ---------------------------------------------------------------------------------------------------------------
// Keys and signature algorithms
// ---------------------------------------------------------------------------------------------------------------

/// An elliptic curve we verify on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Curve {
    /// NIST P-256 (secp256r1): Intel DCAP.
    P256,
    /// NIST P-384 (secp384r1): AMD VCEK/VLEK, SNP reports.
    P384,
}

/// A public key that signs attestation evidence or certificates.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublicKey {
    /// An EC key as an uncompressed SEC1 point (0x04 || X || Y).
    Ec {
        /// The curve.
        curve: Curve,
        /// Uncompressed point.
        point: Vec<u8>,
    },
    /// An RSA key as big-endian modulus and exponent without leading zero bytes.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ec { curve, point } => write!(f, "Ec({curve:?}, {})", hex::encode(point)),
            Self::Rsa { n, .. } => write!(f, "Rsa({} bits)", n.len().saturating_mul(8)),
        }
    }
}

/// How a signature is computed and encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureAlgorithm {
    /// ECDSA with SHA-256, signature DER-encoded `Ecdsa-Sig-Value` (as in certificates and CRLs).
    EcdsaSha256Der,
    /// ECDSA with SHA-384, DER-encoded signature.
    EcdsaSha384Der,
    /// ECDSA with SHA-512, DER-encoded signature.
    EcdsaSha512Der,
    /// ECDSA with SHA-256, signature as fixed-size big-endian `r || s` (DCAP quotes, Intel collateral JSON).
    EcdsaSha256Fixed,
    /// ECDSA with SHA-384, fixed-size big-endian `r || s` (SNP reports after byte-order conversion).
    EcdsaSha384Fixed,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RsaPkcs1Sha256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RsaPkcs1Sha384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RsaPkcs1Sha512,
    /// RSASSA-PSS, SHA-256, MGF1-SHA-256, salt length 32.
    RsaPssSha256,
    /// RSASSA-PSS, SHA-384, MGF1-SHA-384, salt length 48 (AMD ARK/ASK/VCEK).
    RsaPssSha384,
    /// RSASSA-PSS, SHA-512, MGF1-SHA-512, salt length 64.
    RsaPssSha512,
}

impl PublicKey {
    /// An EC public key from an uncompressed point (65 bytes for P-256, 97 for P-384).
    ///
    /// # Errors
    /// When the length does not fit the curve or the point is not uncompressed.
    pub fn ec(curve: Curve, point: &[u8]) -> Result<Self> {
        let want = match curve {
            Curve::P256 => 65,
            Curve::P384 => 97,
        };
        if point.len() != want || point.first() != Some(&0x04) {
            return Err(fail(format!("{curve:?} public key: expected a {want}-byte uncompressed point")));
        }
        Ok(Self::Ec { curve, point: point.to_vec() })
    }

    /// An EC public key from raw big-endian `X || Y` coordinates (as DCAP quotes carry them: 64 bytes for P-256).
    ///
    /// # Errors
    /// When the length does not fit the curve.
    pub fn ec_from_xy(curve: Curve, xy: &[u8]) -> Result<Self> {
        let mut point = Vec::with_capacity(xy.len().saturating_add(1));
        point.push(0x04);
        point.extend_from_slice(xy);
        Self::ec(curve, &point)
    }

    /// An RSA public key from big-endian modulus and exponent (leading zero bytes are ignored).
    ///
    /// # Errors
    /// When either component is zero.
    pub fn rsa(n: &[u8], e: &[u8]) -> Result<Self> {
        let n = strip_leading_zeros(n);
        let e = strip_leading_zeros(e);
        if n.is_empty() || e.is_empty() {
            return Err(fail("RSA public key: zero modulus or exponent"));
        }
        Ok(Self::Rsa { n: n.to_vec(), e: e.to_vec() })
    }

    /// Parses a DER `SubjectPublicKeyInfo` (EC P-256/P-384 or RSA).
    ///
    /// # Errors
    /// When the structure is malformed or the key type is unsupported.
    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
        let (rest, spki) =
            SubjectPublicKeyInfo::from_der(der).map_err(|e| fail(format!("SubjectPublicKeyInfo: {e}")))?;
        if !rest.is_empty() {
            return Err(fail("SubjectPublicKeyInfo: trailing bytes"));
        }
        Self::from_spki(&spki)
    }

    fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self> {
        let parsed = spki.parsed().map_err(|e| fail(format!("public key: {e}")))?;
        match parsed {
            ParsedKey::EC(point) => {
                let curve_oid = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                let curve = match curve_oid.as_str() {
                    "1.2.840.10045.3.1.7" => Curve::P256,
                    "1.3.132.0.34" => Curve::P384,
                    other => return Err(fail(format!("unsupported EC curve {other:?}"))),
                };
                Self::ec(curve, point.data())
            }
            ParsedKey::RSA(rsa) => Self::rsa(rsa.modulus, rsa.exponent),
            _ => Err(fail(format!("unsupported public key algorithm {}", spki.algorithm.algorithm))),
        }
    }

    /// Verifies `signature` over `message`.
    ///
    /// # Errors
    /// When the algorithm does not fit the key type or the signature does not verify.
    pub fn verify(&self, algorithm: SignatureAlgorithm, message: &[u8], signature: &[u8]) -> Result<()> {
        use SignatureAlgorithm as A;
        let ok = match self {
            Self::Ec { curve, point } => {
                let alg: &'static sig::EcdsaVerificationAlgorithm = match (curve, algorithm) {
                    (Curve::P256, A::EcdsaSha256Der) => &sig::ECDSA_P256_SHA256_ASN1,
                    (Curve::P256, A::EcdsaSha384Der) => &sig::ECDSA_P256_SHA384_ASN1,
                    (Curve::P256, A::EcdsaSha512Der) => &sig::ECDSA_P256_SHA512_ASN1,
                    (Curve::P256, A::EcdsaSha256Fixed) => &sig::ECDSA_P256_SHA256_FIXED,
                    (Curve::P384, A::EcdsaSha256Der) => &sig::ECDSA_P384_SHA256_ASN1,
                    (Curve::P384, A::EcdsaSha384Der) => &sig::ECDSA_P384_SHA384_ASN1,
                    (Curve::P384, A::EcdsaSha512Der) => &sig::ECDSA_P384_SHA512_ASN1,
                    (Curve::P384, A::EcdsaSha384Fixed) => &sig::ECDSA_P384_SHA384_FIXED,
                    _ => return Err(fail(format!("{algorithm:?} cannot be verified with a {curve:?} key"))),
                };
                UnparsedPublicKey::new(alg, point).verify(message, signature).is_ok()
            }
            Self::Rsa { n, e } => {
                let params: &'static sig::RsaParameters = match algorithm {
                    A::RsaPkcs1Sha256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                    A::RsaPkcs1Sha384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                    A::RsaPkcs1Sha512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                    A::RsaPssSha256 => &sig::RSA_PSS_2048_8192_SHA256,
                    A::RsaPssSha384 => &sig::RSA_PSS_2048_8192_SHA384,
                    A::RsaPssSha512 => &sig::RSA_PSS_2048_8192_SHA512,
                    _ => return Err(fail(format!("{algorithm:?} cannot be verified with an RSA key"))),
                };
                RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }
                    .verify(params, message, signature)
                    .is_ok()
            }
        };
        if ok { Ok(()) } else { Err(fail(format!("{algorithm:?} signature invalid"))) }
    }
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b.get(first..).unwrap_or_default()
}

fn hash_oid_name(oid: &str) -> Option<&'static str> {
    match oid {
        "2.16.840.1.101.3.4.2.1" => Some("sha256"),
        "2.16.840.1.101.3.4.2.2" => Some("sha384"),
        "2.16.840.1.101.3.4.2.3" => Some("sha512"),
        _ => None,
    }
}

/// Maps a certificate/CRL `AlgorithmIdentifier` to a [`SignatureAlgorithm`], checking RSA-PSS parameters
/// (hash, MGF1 hash and salt length must agree, as AMD uses them) instead of rejecting them outright.
fn signature_algorithm(alg: &AlgorithmIdentifier<'_>) -> Result<SignatureAlgorithm> {
    use SignatureAlgorithm as A;
    let oid = alg.algorithm.to_id_string();
    Ok(match oid.as_str() {
        "1.2.840.10045.4.3.2" => A::EcdsaSha256Der,
        "1.2.840.10045.4.3.3" => A::EcdsaSha384Der,
        "1.2.840.10045.4.3.4" => A::EcdsaSha512Der,
        "1.2.840.113549.1.1.11" => A::RsaPkcs1Sha256,
        "1.2.840.113549.1.1.12" => A::RsaPkcs1Sha384,
        "1.2.840.113549.1.1.13" => A::RsaPkcs1Sha512,
        "1.2.840.113549.1.1.10" => {
            let parsed = x509_parser::signature_algorithm::SignatureAlgorithm::try_from(alg)
                .map_err(|e| fail(format!("RSA-PSS parameters: {e}")))?;
            let x509_parser::signature_algorithm::SignatureAlgorithm::RSASSA_PSS(params) = parsed else {
                return Err(fail("RSA-PSS parameters missing"));
            };
            let hash = params.hash_algorithm_oid().to_id_string();
            let mgf = params.mask_gen_algorithm().map_err(|e| fail(format!("RSA-PSS MGF: {e}")))?;
            if mgf.mgf.to_id_string() != "1.2.840.113549.1.1.8" {
                return Err(fail(format!("RSA-PSS: unsupported mask generation function {}", mgf.mgf)));
            }
            if mgf.hash.to_id_string() != hash {
                return Err(fail("RSA-PSS: MGF1 hash differs from the signature hash"));
            }
            if params.trailer_field() != 1 {
                return Err(fail("RSA-PSS: trailer field is not 1"));
            }
            let (algorithm, salt) = match hash_oid_name(&hash) {
                Some("sha256") => (A::RsaPssSha256, 32),
                Some("sha384") => (A::RsaPssSha384, 48),
                Some("sha512") => (A::RsaPssSha512, 64),
                _ => return Err(fail(format!("RSA-PSS: unsupported hash {hash}"))),
            };
            if params.salt_length() != salt {
                return Err(fail(format!("RSA-PSS: salt length {} (expected {salt})", params.salt_length())));
            }
            algorithm
        }
        other => return Err(fail(format!("unsupported signature algorithm {other}"))),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------------------------

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats a Unix time as RFC 3339 UTC (`2025-07-19T10:00:34Z`), for messages.
#[must_use]
pub fn format_time(t: UnixTime) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Parses an RFC 3339 / ISO 8601 UTC timestamp as Intel PCS writes them (`2025-06-19T10:32:27Z`, also with
/// fractional seconds or a `+00:00` offset). Other offsets are applied.
///
/// # Errors
/// When the text is not such a timestamp.
pub fn parse_time(text: &str) -> Result<UnixTime> {
    let bad = || Error::Input(format!("not an RFC 3339 timestamp: {text:?}"));
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Result<i64> {
        let s = text.get(r).ok_or_else(bad)?;
        if s.bytes().all(|c| c.is_ascii_digit()) { s.parse::<i64>().map_err(|_| bad()) } else { Err(bad()) }
    };
    if b.len() < 20 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || b.get(13) != Some(&b':') {
        return Err(bad());
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) || b.get(16) != Some(&b':') {
        return Err(bad());
    }
    let (y, mo, d, h, mi, s) =
        (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    let mut rest = text.get(19..).ok_or_else(bad)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = frac.get(digits..).ok_or_else(bad)?;
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return Err(bad()),
            };
            if rest.len() != 6 || rest.as_bytes().get(3) != Some(&b':') {
                return Err(bad());
            }
            let oh = rest.get(1..3).and_then(|x| x.parse::<i64>().ok()).ok_or_else(bad)?;
            let om = rest.get(4..6).and_then(|x| x.parse::<i64>().ok()).ok_or_else(bad)?;
            sign * (oh * 3600 + om * 60)
        }
    };
    Ok(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset)
}

// ---------------------------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------------------------

/// One extension of a certificate, kept raw so callers can decode vendor extensions (Intel SGX, AMD VCEK TCB,
/// Google instance info).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// Dotted OID.
    pub oid: String,
    /// Whether it is marked critical.
    pub critical: bool,
    /// The extnValue OCTET STRING contents (DER of the extension's own type).
    pub value: Vec<u8>,
}

/// Extensions this module understands well enough to accept when marked critical.
const KNOWN_CRITICAL: &[&str] = &[
    "2.5.29.15", // keyUsage
    "2.5.29.19", // basicConstraints
    "2.5.29.37", // extKeyUsage
    "2.5.29.17", // subjectAltName (TPM EK/AK certs have an empty subject and a critical SAN)
    "2.5.29.9",  // subjectDirectoryAttributes (TPM specification attributes)
    "2.5.29.32", // certificatePolicies (no policy processing: anchors are pinned)
    "2.5.29.14", // subjectKeyIdentifier
    "2.5.29.35", // authorityKeyIdentifier
    "2.5.29.31", // cRLDistributionPoints
];

/// A parsed X.509 certificate that owns its bytes. Cloning is cheap (the parsed fields are shared): verified
/// collateral keeps the certificates it was verified with, and chains reuse the pinned root as parsed once.
#[derive(Clone)]
pub struct Certificate(Arc<CertificateFields>);

#[derive(Clone)]
struct CertificateFields {
    der: Vec<u8>,
    tbs: Vec<u8>,
    signature_algorithm: Result<SignatureAlgorithm, String>,
    signature: Vec<u8>,
    subject: Vec<u8>,
    issuer: Vec<u8>,
    subject_cn: String,
    issuer_cn: String,
    serial: Vec<u8>,
    not_before: UnixTime,
    not_after: UnixTime,
    public_key: PublicKey,
    ca: Option<(bool, Option<u32>)>,
    key_cert_sign: Option<bool>,
    crl_sign: Option<bool>,
    extensions: Vec<Extension>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("subject_cn", &self.0.subject_cn)
            .field("issuer_cn", &self.0.issuer_cn)
            .field("serial", &hex::encode(&self.0.serial))
            .field("not_before", &format_time(self.0.not_before))
            .field("not_after", &format_time(self.0.not_after))
            .finish_non_exhaustive()
    }
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        // The same shared parse is the same certificate; otherwise the DER decides.
        Arc::ptr_eq(&self.0, &other.0) || self.0.der == other.0.der
    }
}
impl Eq for Certificate {}

fn common_name(name: &X509Name<'_>) -> String {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map_or_else(|| name.to_string(), str::to_owned)
}

impl Certificate {
    /// Parses one DER certificate; the input must hold exactly one.
    ///
    /// # Errors
    /// When the DER is malformed, has trailing bytes, or its key type is unsupported.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| fail(format!("certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(fail(format!("certificate: {} trailing bytes after the DER", rest.len())));
        }
        Self::from_parsed(&cert)
    }

    fn from_parsed(cert: &X509Certificate<'_>) -> Result<Self> {
        let subject_cn = common_name(cert.subject());
        let tbs = &cert.tbs_certificate;
        let public_key = PublicKey::from_spki(&tbs.subject_pki)
            .map_err(|e| fail(format!("certificate '{subject_cn}': {}", reason_of(&e))))?;
        let ca = cert
            .basic_constraints()
            .map_err(|e| fail(format!("certificate '{subject_cn}': basicConstraints: {e}")))?
            .map(|bc| (bc.value.ca, bc.value.path_len_constraint));
        let ku = cert.key_usage().map_err(|e| fail(format!("certificate '{subject_cn}': keyUsage: {e}")))?;
        let mut extensions = Vec::with_capacity(cert.extensions().len());
        for ext in cert.extensions() {
            let oid = ext.oid.to_id_string();
            if extensions.iter().any(|e: &Extension| e.oid == oid) {
                return Err(fail(format!("certificate '{subject_cn}': duplicate extension {oid}")));
            }
            extensions.push(Extension { oid, critical: ext.critical, value: ext.value.to_vec() });
        }
        Ok(Self(Arc::new(CertificateFields {
            der: cert.as_raw().to_vec(),
            tbs: tbs.as_ref().to_vec(),
            signature_algorithm: signature_algorithm(&cert.signature_algorithm).map_err(|e| reason_of(&e)),
            signature: cert.signature_value.data.to_vec(),
            subject: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
            issuer_cn: common_name(cert.issuer()),
            serial: strip_leading_zeros(cert.raw_serial()).to_vec(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            public_key,
            ca,
            key_cert_sign: ku.as_ref().map(|k| k.value.key_cert_sign()),
            crl_sign: ku.as_ref().map(|k| k.value.crl_sign()),
            extensions,
            subject_cn,
        })))
    }

    /// Parses every `CERTIFICATE` block of a PEM text, in order (a chain as Intel and AMD ship them).
    ///
    /// # Errors
    /// When a block is malformed or there is none.
    pub fn chain_from_pem(pem: &[u8]) -> Result<Vec<Self>> {
        Self::chain_from_pem_reusing(pem, &[])
    }

    /// [`Certificate::chain_from_pem`], taking a block whose DER equals one of `known` byte for byte from `known`
    /// instead of parsing it again (the same bytes parse to the same certificate). Every DCAP collateral chain
    /// ends with the pinned Intel root: parsing it again for each chain was a measurable part of a cold
    /// collateral verification. Nothing is trusted because of this; chains are verified as before.
    ///
    /// # Errors
    /// As [`Certificate::chain_from_pem`].
    pub fn chain_from_pem_reusing(pem: &[u8], known: &[Self]) -> Result<Vec<Self>> {
        let mut out = Vec::new();
        for (label, der) in pem_blocks(pem)? {
            if label == "CERTIFICATE" {
                match known.iter().find(|k| k.0.der == der) {
                    Some(k) => out.push(k.clone()),
                    None => out.push(Self::from_der(&der)?),
                }
            }
        }
        if out.is_empty() {
            return Err(fail("PEM: no CERTIFICATE block"));
        }
        Ok(out)
    }

    /// Parses a certificate chain given as PEM blocks or a single DER certificate.
    ///
    /// # Errors
    /// When nothing parses.
    pub fn chain_from_pem_or_der(bytes: &[u8]) -> Result<Vec<Self>> {
        if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            Self::chain_from_pem(bytes)
        } else {
            Ok(vec![Self::from_der(bytes)?])
        }
    }

    /// The DER encoding.
    #[must_use]
    pub fn der(&self) -> &[u8] {
        &self.0.der
    }
    /// The DER of the signed `TBSCertificate`.
    #[must_use]
    pub fn tbs(&self) -> &[u8] {
        &self.0.tbs
    }
    /// Subject common name (or the whole subject when it has no CN), for messages.
    #[must_use]
    pub fn subject_cn(&self) -> &str {
        &self.0.subject_cn
    }
    /// Issuer common name, for messages.
    #[must_use]
    pub fn issuer_cn(&self) -> &str {
        &self.0.issuer_cn
    }
    /// Raw DER of the subject name (compared byte for byte when chaining).
    #[must_use]
    pub fn subject_raw(&self) -> &[u8] {
        &self.0.subject
    }
    /// Raw DER of the issuer name.
    #[must_use]
    pub fn issuer_raw(&self) -> &[u8] {
        &self.0.issuer
    }
    /// Serial number, big-endian, without leading zero bytes.
    #[must_use]
    pub fn serial(&self) -> &[u8] {
        &self.0.serial
    }
    /// Start of the validity window.
    #[must_use]
    pub fn not_before(&self) -> UnixTime {
        self.0.not_before
    }
    /// End of the validity window.
    #[must_use]
    pub fn not_after(&self) -> UnixTime {
        self.0.not_after
    }
    /// The subject public key.
    #[must_use]
    pub fn public_key(&self) -> &PublicKey {
        &self.0.public_key
    }
    /// All extensions, raw.
    #[must_use]
    pub fn extensions(&self) -> &[Extension] {
        &self.0.extensions
    }
    /// The extension with this dotted OID, if present.
    #[must_use]
    pub fn extension(&self, oid: &str) -> Option<&Extension> {
        self.0.extensions.iter().find(|e| e.oid == oid)
    }
    /// Whether basicConstraints marks this a CA.
    #[must_use]
    pub fn is_ca(&self) -> bool {
        matches!(self.0.ca, Some((true, _)))
    }
    /// Whether subject and issuer names are equal.
    #[must_use]
    pub fn is_self_issued(&self) -> bool {
        self.0.subject == self.0.issuer
    }

    /// The signature algorithm of this certificate's own signature.
    ///
    /// # Errors
    /// When the algorithm (or its RSA-PSS parameters) is unsupported.
    pub fn signature_algorithm(&self) -> Result<SignatureAlgorithm> {
        self.0
            .signature_algorithm
            .clone()
            .map_err(|reason| fail(format!("certificate '{}': {reason}", self.0.subject_cn)))
    }

    /// Errors unless `not_before <= at <= not_after`.
    ///
    /// # Errors
    /// "not yet valid" or "expired", naming the certificate and both times.
    pub fn check_validity(&self, at: UnixTime) -> Result<()> {
        if at < self.0.not_before {
            return Err(fail(format!(
                "certificate '{}': not yet valid (notBefore {}, time {})",
                self.0.subject_cn,
                format_time(self.0.not_before),
                format_time(at)
            )));
        }
        if at > self.0.not_after {
            return Err(fail(format!(
                "certificate '{}': expired (notAfter {}, time {})",
                self.0.subject_cn,
                format_time(self.0.not_after),
                format_time(at)
            )));
        }
        Ok(())
    }

    /// Verifies that `issuer` signed this certificate (names chain, signature verifies). Validity and CA
    /// constraints are checked by [`verify_chain`].
    ///
    /// # Errors
    /// When the names do not chain or the signature does not verify.
    pub fn verify_signed_by(&self, issuer: &Certificate) -> Result<()> {
        if self.0.issuer != issuer.0.subject {
            return Err(fail(format!(
                "certificate '{}': issuer '{}' is not '{}'",
                self.0.subject_cn, self.0.issuer_cn, issuer.0.subject_cn
            )));
        }
        let algorithm = self.signature_algorithm()?;
        issuer.0.public_key.verify(algorithm, &self.0.tbs, &self.0.signature).map_err(|_| {
            fail(format!(
                "certificate '{}': signature invalid under '{}'",
                self.0.subject_cn, issuer.0.subject_cn
            ))
        })
    }

    fn check_critical_extensions(&self) -> Result<()> {
        for ext in &self.0.extensions {
            if ext.critical && !KNOWN_CRITICAL.contains(&ext.oid.as_str()) {
                return Err(fail(format!(
                    "certificate '{}': unsupported critical extension {}",
                    self.0.subject_cn, ext.oid
                )));
            }
        }
        Ok(())
    }

    fn check_may_sign_certificates(&self, intermediates_below: usize) -> Result<()> {
        match self.0.ca {
            Some((true, path_len)) => {
                if let Some(max) = path_len
                    && usize::try_from(max).unwrap_or(usize::MAX) < intermediates_below
                {
                    return Err(fail(format!(
                        "certificate '{}': path length constraint {max} exceeded",
                        self.0.subject_cn
                    )));
                }
            }
            _ => {
                return Err(fail(format!(
                    "certificate '{}': not a CA but issues certificates",
                    self.0.subject_cn
                )));
            }
        }
        if self.0.key_cert_sign == Some(false) {
            return Err(fail(format!("certificate '{}': keyUsage lacks keyCertSign", self.0.subject_cn)));
        }
        Ok(())
    }
}

/// Verifies `chain` (leaf first; it may or may not end with the root) up to one of the pinned `roots`, at `at`:
/// name chaining, every signature, every validity window (roots included), CA flag, keyCertSign and path
/// length of each issuer, no unknown critical extension. A chain that contains a root must contain a pinned
/// one byte for byte. Returns the index in `roots` of the anchor used.
///
/// # Errors
/// The first failed check, naming the certificate.
pub fn verify_chain(chain: &[Certificate], roots: &[Certificate], at: UnixTime) -> Result<usize> {
    let Some(last) = chain.last() else {
        return Err(fail("empty certificate chain"));
    };
    // The chain may carry the root itself; if so it must be a pinned one, byte for byte.
    let (body, anchor_index) = if let Some(i) = roots.iter().position(|r| r == last) {
        (chain.split_last().map_or(&[][..], |(_, rest)| rest), i)
    } else if last.is_self_issued() {
        return Err(fail(format!(
            "certificate '{}': self-issued root is not a pinned anchor",
            last.0.subject_cn
        )));
    } else {
        let i = roots
            .iter()
            .position(|r| r.0.subject == last.0.issuer && last.verify_signed_by(r).is_ok())
            .ok_or_else(|| {
            fail(format!(
                "certificate '{}': issuer '{}' is not a pinned root (or its signature does not verify)",
                last.0.subject_cn, last.0.issuer_cn
            ))
        })?;
        (chain, i)
    };
    let anchor = roots.get(anchor_index).ok_or_else(|| fail("anchor index out of range"))?;
    for (i, cert) in body.iter().enumerate() {
        cert.check_validity(at)?;
        cert.check_critical_extensions()?;
        let issuer = body.get(i.saturating_add(1)).unwrap_or(anchor);
        cert.verify_signed_by(issuer)?;
        issuer.check_may_sign_certificates(i)?;
    }
    anchor.check_validity(at)?;
    Ok(anchor_index)
}

fn reason_of(e: &Error) -> String {
    match e {
        Error::Check { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_PEM: &[u8] = include_bytes!("../testdata/certs/intel/Intel_SGX_Root_CA.pem");
    const TCB_CHAIN_PEM: &[u8] = include_bytes!("../testdata/tdx/go-tdx-guest/tcb_signing_issuer_chain.pem");
    const PCK_CRL_CHAIN_PEM: &[u8] = include_bytes!("../testdata/tdx/go-tdx-guest/pck_crl_issuer_chain.pem");
    const ROOT_CRL: &[u8] = include_bytes!("../testdata/tdx/go-tdx-guest/rootcrl.der");
    const PCK_CRL: &[u8] = include_bytes!("../testdata/tdx/go-tdx-guest/pckcrl_platform.der");
    /// 2023-07-01T01:00:00Z, the go-tdx-guest manifest time.
    const AT: UnixTime = 1_688_173_200;

    fn root() -> Certificate {
        Certificate::chain_from_pem(ROOT_PEM).unwrap().remove(0)
    }

    #[test]
    fn intel_chains_verify_to_the_pinned_root() {
        let root = root();
        assert_eq!(root.subject_cn(), "Intel SGX Root CA");
        assert!(root.is_ca() && root.is_self_issued());
        let tcb = Certificate::chain_from_pem(TCB_CHAIN_PEM).unwrap();
        assert_eq!(tcb.len(), 2);
        assert_eq!(tcb[0].subject_cn(), "Intel SGX TCB Signing");
        assert_eq!(verify_chain(&tcb, std::slice::from_ref(&root), AT).unwrap(), 0);
        // Without the root in the chain, the anchor is found by name and signature.
        verify_chain(&tcb[..1], std::slice::from_ref(&root), AT).unwrap();
        let pck = Certificate::chain_from_pem(PCK_CRL_CHAIN_PEM).unwrap();
        assert_eq!(pck[0].subject_cn(), "Intel SGX PCK Platform CA");
        verify_chain(&pck, std::slice::from_ref(&root), AT).unwrap();
    }

    #[test]
    fn chain_failures_name_the_certificate_and_check() {
        let root = root();
        let roots = std::slice::from_ref(&root);
        let tcb = Certificate::chain_from_pem(TCB_CHAIN_PEM).unwrap();
        let pck = Certificate::chain_from_pem(PCK_CRL_CHAIN_PEM).unwrap();
        // Expired leaf (TCB Signing cert notAfter 2025-05-21).
        let err =
            verify_chain(&tcb, roots, parse_time("2053-07-01T01:00:00Z").unwrap()).unwrap_err().to_string();
        assert!(err.starts_with("x509: certificate 'Intel SGX TCB Signing': expired (notAfter"), "{err}");
        // Before notBefore.
        let err = verify_chain(&tcb, roots, 0).unwrap_err().to_string();
        assert!(err.contains("'Intel SGX TCB Signing': not yet valid"), "{err}");
        // A leaf issued by a non-CA: the PCK Platform CA presented as issuer of the TCB signing cert.
        let err = verify_chain(&[tcb[0].clone(), pck[0].clone()], roots, AT).unwrap_err().to_string();
        assert!(err.contains("issuer 'Intel SGX Root CA' is not 'Intel SGX PCK Platform CA'"), "{err}");
        // A flipped signature byte.
        let mut der = tcb[0].der().to_vec();
        let last = der.len() - 5;
        der[last] ^= 0x01;
        let forged = Certificate::from_der(&der).unwrap();
        let err = verify_chain(&[forged], roots, AT).unwrap_err().to_string();
        assert!(
            err.contains("'Intel SGX TCB Signing': issuer 'Intel SGX Root CA' is not a pinned root"),
            "{err}"
        );
        let err = tcb[0].verify_signed_by(&tcb[0]).unwrap_err().to_string();
        assert!(err.contains("is not 'Intel SGX TCB Signing'"), "{err}");
        // An unpinned self-signed root.
        let err = verify_chain(&tcb, &[], AT).unwrap_err().to_string();
        assert!(err.contains("self-issued root is not a pinned anchor"), "{err}");
        assert!(verify_chain(&[], roots, AT).is_err());
    }

    #[test]
    fn intel_crls_verify_and_list_serials() {
        let root = root();
        let crl = Crl::from_any(ROOT_CRL).unwrap();
        assert_eq!(crl.issuer_cn(), "Intel SGX Root CA");
        assert_eq!(crl.revoked_count(), 0);
        crl.verify(&root, AT).unwrap();
        let err = crl.verify(&root, parse_time("2024-04-03T00:00:00Z").unwrap()).unwrap_err().to_string();
        assert!(
            err.starts_with("x509: CRL of 'Intel SGX Root CA': expired (nextUpdate 2024-04-02T10:22:51Z"),
            "{err}"
        );
        let platform_ca = Certificate::chain_from_pem(PCK_CRL_CHAIN_PEM).unwrap().remove(0);
        let pck = Crl::from_any(PCK_CRL).unwrap();
        assert_eq!(pck.revoked_count(), 44);
        pck.verify(&platform_ca, AT).unwrap();
        let err = pck.verify(&root, AT).unwrap_err().to_string();
        assert!(err.contains("not issued by 'Intel SGX Root CA'"), "{err}");
        // Hex and PEM encodings parse to the same CRL.
        let hexed = Crl::from_any(hex::encode(PCK_CRL).as_bytes()).unwrap();
        assert_eq!(hexed.der(), pck.der());
        // Tampered signature.
        let mut der = PCK_CRL.to_vec();
        let at = der.len() - 3;
        der[at] ^= 0x40;
        let err = Crl::from_der(&der).unwrap().verify(&platform_ca, AT).unwrap_err().to_string();
        assert!(err.contains("signature invalid under 'Intel SGX PCK Platform CA'"), "{err}");
        // Every listed serial is revoked; the CA's own serial is not.
        assert!(!pck.is_revoked(platform_ca.serial()));
    }

    #[test]
    fn time_round_trips() {
        for (text, t) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2025-07-19T10:00:34Z", 1_752_919_234),
            ("2026-03-20T10:41:14Z", 1_774_003_274),
            ("2000-02-29T23:59:59Z", 951_868_799),
        ] {
            assert_eq!(parse_time(text).unwrap(), t, "{text}");
            assert_eq!(format_time(t), text);
        }
        assert_eq!(parse_time("2025-07-19T10:00:34.123Z").unwrap(), 1_752_919_234);
        assert_eq!(parse_time("2025-07-19T12:00:34+02:00").unwrap(), 1_752_919_234);
        for bad in ["", "2025-07-19", "2025-13-19T10:00:34Z", "2025-07-19T10:00:34", "2025-07-19T10:00:34+2"]
        {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(Certificate::from_der(&[]).is_err());
        assert!(Certificate::from_der(&[0x30, 0x82, 0xff, 0xff]).is_err());
        assert!(Crl::from_any(b"zz").is_err());
        assert!(Certificate::chain_from_pem(b"no pem here").is_err());
        assert!(PublicKey::ec(Curve::P256, &[4; 10]).is_err());
        assert!(PublicKey::rsa(&[0, 0], &[1]).is_err());
    }
}
