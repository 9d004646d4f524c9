//! Endorsement-key certificates (TCG EK Credential Profile 2.0): the certificate a TPM manufacturer (or a cloud,
//! or swtpm's local CA) issues for a TPM's endorsement key, checked against the EK CAs the verifier was given.
//!
//! An EK is a decryption key, so it never signs anything: it vouches for an attestation key only through
//! credential activation (see `credential`). This module establishes the EK half: the certificate chains to a
//! configured CA at the verification time, is an end-entity certificate for a key-encipherment (RSA) or
//! key-agreement (ECC) key, carries the EK extended key usage when it names any, and says which TPM it is
//! (manufacturer, model, firmware version from the subjectAltName directory name).

use serde::Serialize;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{Error, Result};
use crate::x509::{self, Certificate, Curve, UnixTime};

const LAYER: &str = "tpm ek certificate";

/// tcg-at-tpmManufacturer.
pub const OID_TPM_MANUFACTURER: &str = "2.23.133.2.1";
/// tcg-at-tpmModel.
pub const OID_TPM_MODEL: &str = "2.23.133.2.2";
/// tcg-at-tpmVersion.
pub const OID_TPM_VERSION: &str = "2.23.133.2.3";
/// tcg-kp-EKCertificate: the extended key usage of an EK certificate.
pub const OID_EK_CERTIFICATE_EKU: &str = "2.23.133.8.1";
/// Largest EK certificate accepted (DER). Real ones are 0.8-2 KiB.
pub const MAX_EK_CERT_LEN: usize = 8 * 1024;

/// The key an EK certificate certifies: the only kinds the default EK templates produce (TCG EK Credential
/// Profile: L-1 RSA 2048, L-2 ECC P-256; H-2/H-3 ECC P-256/P-384).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EkPublicKey {
    /// RSA 2048 (or larger): `spki` is the SubjectPublicKeyInfo DER, `n` the modulus.
    Rsa {
        /// SubjectPublicKeyInfo DER.
        spki: Vec<u8>,
        /// Modulus, big-endian, without leading zeros.
        n: Vec<u8>,
    },
    /// ECC: the uncompressed SEC1 point.
    Ecc {
        /// The curve.
        curve: Curve,
        /// 0x04 || x || y.
        point: Vec<u8>,
    },
}

/// Which TPM an EK certificate names (TCG subjectAltName attributes); empty strings when absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TpmDevice {
    /// tpmManufacturer, e.g. "id:474F4F47" (as written), and its four ASCII letters when printable ("GOOG").
    pub manufacturer: String,
    /// The manufacturer's vendor id decoded to ASCII, when it is printable.
    pub manufacturer_ascii: String,
    /// tpmModel, e.g. "vTPM", "swtpm".
    pub model: String,
    /// tpmVersion (firmware), e.g. "id:20160511".
    pub version: String,
}

/// A parsed EK certificate (not yet checked against any CA).
#[derive(Debug, Clone)]
pub struct EkCertificate {
    cert: Certificate,
    key: EkPublicKey,
    device: TpmDevice,
}

/// What a verified EK certificate says, for attestation results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EkIdentity {
    /// Issuer common name (the CA that certified the TPM).
    pub issuer: String,
    /// Subject common name (often empty: TCG EK certificates name the TPM in the subjectAltName).
    pub subject: String,
    /// Serial, hex.
    pub serial: String,
    /// "RSA-2048", "ECC-P256", "ECC-P384".
    pub key: String,
    /// The TPM.
    pub device: TpmDevice,
}

fn manufacturer_ascii(id: &str) -> String {
    let Some(hex_part) = id.strip_prefix("id:") else { return String::new() };
    match hex::decode(hex_part) {
        Ok(bytes) if bytes.len() == 4 => {
            let text: String = bytes.iter().filter(|b| **b != 0).map(|b| char::from(*b)).collect();
            if !text.is_empty() && text.chars().all(|c| c.is_ascii_graphic()) { text } else { String::new() }
        }
        _ => String::new(),
    }
}

impl EkCertificate {
    /// Parses a DER EK certificate and checks its shape: an end-entity certificate (basicConstraints CA
    /// false or absent) for an RSA key (at least 2048 bits, keyEncipherment when keyUsage is present) or an ECC
    /// P-256/P-384 key (keyAgreement when keyUsage is present), with tcg-kp-EKCertificate among its extended key
    /// usages when it has any.
    ///
    /// # Errors
    /// "tpm ek certificate: …" naming the field.
    pub fn parse(der: &[u8]) -> Result<Self> {
        if der.len() > MAX_EK_CERT_LEN {
            return Err(Error::check(LAYER, format!("{} bytes, limit {MAX_EK_CERT_LEN}", der.len())));
        }
        let cert = Certificate::from_der(der).map_err(|e| e.within(LAYER, "DER"))?;
        if cert.is_ca() {
            return Err(Error::check(LAYER, "basicConstraints says CA: an EK certificate is an end entity"));
        }
        let (_, parsed) =
            X509Certificate::from_der(der).map_err(|e| Error::check(LAYER, format!("DER: {e}")))?;
        let key_usage =
            parsed.key_usage().map_err(|e| Error::check(LAYER, format!("keyUsage: {e}")))?.map(|k| *k.value);
        let key = match cert.public_key() {
            x509::PublicKey::Rsa { n, .. } => {
                let n = n.iter().position(|b| *b != 0).and_then(|i| n.get(i..)).unwrap_or_default().to_vec();
                if n.len() < 256 {
                    return Err(Error::check(
                        LAYER,
                        format!("RSA key of {} bits, at least 2048", n.len() * 8),
                    ));
                }
                if key_usage.is_some_and(|k| !k.key_encipherment()) {
                    return Err(Error::check(LAYER, "RSA EK without keyEncipherment in keyUsage"));
                }
                EkPublicKey::Rsa { spki: parsed.tbs_certificate.subject_pki.raw.to_vec(), n }
            }
            x509::PublicKey::Ec { curve, point } => {
                if !matches!(curve, Curve::P256 | Curve::P384) {
                    return Err(Error::check(LAYER, format!("ECC curve {curve:?} is not an EK curve")));
                }
                if key_usage.is_some_and(|k| !k.key_agreement()) {
                    return Err(Error::check(LAYER, "ECC EK without keyAgreement in keyUsage"));
                }
                EkPublicKey::Ecc { curve: *curve, point: point.clone() }
            }
        };
        if let Some(eku) =
            parsed.extended_key_usage().map_err(|e| Error::check(LAYER, format!("extKeyUsage: {e}")))?
            && !eku.value.other.iter().any(|o| o.to_id_string() == OID_EK_CERTIFICATE_EKU)
        {
            return Err(Error::check(
                LAYER,
                "extKeyUsage does not include tcg-kp-EKCertificate (2.23.133.8.1)",
            ));
        }
        let mut device = TpmDevice::default();
        if let Some(san) = parsed
            .subject_alternative_name()
            .map_err(|e| Error::check(LAYER, format!("subjectAltName: {e}")))?
        {
            for name in &san.value.general_names {
                let GeneralName::DirectoryName(dn) = name else { continue };
                for attr in dn.iter_attributes() {
                    let value = attr.as_str().unwrap_or_default().to_owned();
                    match attr.attr_type().to_id_string().as_str() {
                        OID_TPM_MANUFACTURER => device.manufacturer = value,
                        OID_TPM_MODEL => device.model = value,
                        OID_TPM_VERSION => device.version = value,
                        _ => {}
                    }
                }
            }
        }
        device.manufacturer_ascii = manufacturer_ascii(&device.manufacturer);
        Ok(Self { cert, key, device })
    }

    /// The certified endorsement key.
    #[must_use]
    pub fn key(&self) -> &EkPublicKey {
        &self.key
    }

    /// The TPM the certificate names.
    #[must_use]
    pub fn device(&self) -> &TpmDevice {
        &self.device
    }

    /// The certificate.
    #[must_use]
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// Checks the certificate against the configured EK CAs at `at`: every certificate in `cas` is a trust
    /// anchor (a manufacturer root, or an intermediate the operator pinned on purpose); intermediates the TPM
    /// supplied in `chain` (issuer first) may bridge to one of them. Returns what the certificate says.
    ///
    /// # Errors
    /// "tpm ek certificate: …": no CA configured, no issuer found, a bad signature, an expired certificate.
    pub fn verify(&self, chain: &[Certificate], cas: &[Certificate], at: UnixTime) -> Result<EkIdentity> {
        if cas.is_empty() {
            return Err(Error::check(LAYER, "no EK CA configured"));
        }
        let mut path = vec![self.cert.clone()];
        let mut cur = self.cert.clone();
        for _ in 0..4 {
            if cas.iter().any(|c| c.subject_raw() == cur.issuer_raw()) {
                break;
            }
            let Some(next) = chain.iter().find(|c| c.subject_raw() == cur.issuer_raw()) else {
                return Err(Error::check(
                    LAYER,
                    format!("issuer '{}' is not a configured EK CA (--tpm-ek-ca)", cur.issuer_cn()),
                ));
            };
            path.push(next.clone());
            cur = next.clone();
        }
        x509::verify_chain(&path, cas, at).map_err(|e| e.within(LAYER, "chain to a configured EK CA"))?;
        Ok(self.identity())
    }

    fn identity(&self) -> EkIdentity {
        EkIdentity {
            issuer: self.cert.issuer_cn().to_owned(),
            subject: self.cert.subject_cn().to_owned(),
            serial: hex::encode(self.cert.serial()),
            key: match &self.key {
                EkPublicKey::Rsa { n, .. } => format!("RSA-{}", n.len() * 8),
                EkPublicKey::Ecc { curve: Curve::P384, .. } => "ECC-P384".to_owned(),
                EkPublicKey::Ecc { .. } => "ECC-P256".to_owned(),
            },
            device: self.device.clone(),
        }
    }
}

/// Reads EK CA certificates (PEM blocks or one DER certificate per file's bytes).
///
/// # Errors
/// When a file's bytes hold no certificate.
pub fn parse_ek_cas(files: &[Vec<u8>]) -> Result<Vec<Certificate>> {
    let mut out = Vec::new();
    for bytes in files {
        out.extend(Certificate::chain_from_pem_or_der(bytes).map_err(|e| e.within(LAYER, "EK CA"))?);
    }
    Ok(out)
}
