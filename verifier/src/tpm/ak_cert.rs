//! AK certificates: the chain from a vTPM's attestation key certificate to Google's pinned EK/AK roots, the
//! match between the certificate key and the AK the quote was verified with, and the GCE instance-info
//! extension (OID 1.3.6.1.4.1.11129.2.1.21) that names the VM the AK belongs to.

use std::sync::OnceLock;

use sealroom_measurements::reader::Reader;
use serde::Serialize;

use super::structures::{PublicKey, TPM_ECC_NIST_P256, TPM_ECC_NIST_P384};
use crate::error::{Error, Result};
use crate::x509::{self, Certificate, Curve, UnixTime};

const LAYER: &str = "tpm ak certificate";

/// OID of Google's instance-info extension in GCE AK/EK certificates.
pub const GCE_INSTANCE_INFO_OID: &str = "1.3.6.1.4.1.11129.2.1.21";

const ROOTS: [&[u8]; 2] = [
    include_bytes!("../../testdata/certs/google/tpm_ek_root_1.cer"),
    include_bytes!("../../testdata/certs/google/gcp_ek_ak_ca_root.crt"),
];
const INTERMEDIATES: [&[u8]; 3] = [
    include_bytes!("../../testdata/certs/google/tpm_ek_intermediate_2.crt"),
    include_bytes!("../../testdata/certs/google/tpm_ek_intermediate_3.crt"),
    include_bytes!("../../testdata/certs/google/gcp_ek_ak_ca_intermediate_v3.crt"),
];

/// Google's vTPM EK/AK roots and intermediates, embedded in the binary.
#[derive(Debug)]
pub struct GoogleCas {
    /// Trust anchors.
    pub roots: Vec<Certificate>,
    /// Known intermediates (an attestation may also carry its own).
    pub intermediates: Vec<Certificate>,
}

/// The embedded Google CAs.
///
/// # Errors
/// Only if the embedded certificates are broken (a build defect).
pub fn google_cas() -> Result<&'static GoogleCas> {
    static CAS: OnceLock<std::result::Result<GoogleCas, String>> = OnceLock::new();
    CAS.get_or_init(|| {
        let parse = |list: &[&[u8]]| {
            list.iter()
                .map(|b| Certificate::chain_from_pem_or_der(b).map(|mut v| v.remove(0)))
                .collect::<Result<Vec<_>>>()
        };
        Ok(GoogleCas {
            roots: parse(&ROOTS).map_err(|e| e.to_string())?,
            intermediates: parse(&INTERMEDIATES).map_err(|e| e.to_string())?,
        })
    })
    .as_ref()
    .map_err(|e| Error::check(LAYER, format!("embedded Google CAs: {e}")))
}

/// The GCE instance-info extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GceInstance {
    /// Zone, e.g. "us-central1-a".
    pub zone: String,
    /// Project number.
    pub project_number: i64,
    /// Project id.
    pub project_id: String,
    /// Instance id.
    pub instance_id: i64,
    /// Instance name.
    pub instance_name: String,
    /// Security version, if present.
    pub security_version: Option<i64>,
    /// Whether the instance runs on production infrastructure, if present.
    pub is_production: Option<bool>,
}

fn tlv<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<(u8, &'a [u8])> {
    let t = crate::x509::der::read_tlv(r, what)?;
    Ok((t.tag, t.contents))
}

fn expect<'a>(r: &mut Reader<'a>, tag: u8, what: &'static str) -> Result<&'a [u8]> {
    let (t, v) = tlv(r, what)?;
    if t != tag {
        return Err(Error::check(
            LAYER,
            format!("instance info {what}: DER tag {t:#04x}, expected {tag:#04x}"),
        ));
    }
    Ok(v)
}

fn utf8(r: &mut Reader<'_>, what: &'static str) -> Result<String> {
    let v = expect(r, 0x0c, what)?;
    String::from_utf8(v.to_vec()).map_err(|_| Error::check(LAYER, format!("instance info {what}: not UTF-8")))
}

fn integer(bytes: &[u8], what: &'static str) -> Result<i64> {
    if bytes.is_empty() || bytes.len() > 8 {
        return Err(Error::check(LAYER, format!("instance info {what}: integer of {} bytes", bytes.len())));
    }
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut v: i64 = if negative { -1 } else { 0 };
    for b in bytes {
        v = (v << 8) | i64::from(*b);
    }
    Ok(v)
}

impl GceInstance {
    /// Parses the DER of the extension value.
    ///
    /// # Errors
    /// When the structure is malformed.
    pub fn parse(der: &[u8]) -> Result<Self> {
        let mut outer = Reader::new(der);
        let body = expect(&mut outer, 0x30, "sequence")?;
        outer.finish("gce instance info").map_err(Error::read("gce instance info"))?;
        let mut r = Reader::new(body);
        let zone = utf8(&mut r, "zone")?;
        let project_number = integer(expect(&mut r, 0x02, "project number")?, "project number")?;
        let project_id = utf8(&mut r, "project id")?;
        let instance_id = integer(expect(&mut r, 0x02, "instance id")?, "instance id")?;
        let instance_name = utf8(&mut r, "instance name")?;
        let mut security_version = None;
        let mut is_production = None;
        if !r.is_empty() {
            let props = expect(&mut r, 0xa0, "security properties")?;
            let mut p = Reader::new(props);
            let seq = expect(&mut p, 0x30, "security properties")?;
            let mut s = Reader::new(seq);
            while !s.is_empty() {
                let (tag, inner) = tlv(&mut s, "security property")?;
                let mut i = Reader::new(inner);
                match tag {
                    0xa0 => {
                        security_version =
                            Some(integer(expect(&mut i, 0x02, "security version")?, "security version")?);
                    }
                    0xa1 => is_production = Some(expect(&mut i, 0x01, "is production")? != [0]),
                    _ => {}
                }
            }
        }
        r.finish("gce instance info").map_err(Error::read("gce instance info"))?;
        Ok(Self {
            zone,
            project_number,
            project_id,
            instance_id,
            instance_name,
            security_version,
            is_production,
        })
    }
}

/// What a verified AK certificate says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AkIdentity {
    /// Subject common name of the AK certificate (may be empty for GCE UCA certificates).
    pub subject: String,
    /// Issuer common name.
    pub issuer: String,
    /// Serial, hex.
    pub serial: String,
    /// The GCE instance, when the extension is present.
    pub gce_instance: Option<GceInstance>,
}

fn same_key(cert: &x509::PublicKey, ak: &PublicKey) -> bool {
    match (cert, ak) {
        (x509::PublicKey::Rsa { n, e }, PublicKey::Rsa { modulus, exponent }) => {
            let exp = if *exponent == 0 { 65537 } else { *exponent };
            let strip = |v: &[u8]| {
                v.iter().position(|b| *b != 0).and_then(|i| v.get(i..)).unwrap_or_default().to_vec()
            };
            strip(n) == strip(modulus) && strip(e) == strip(&exp.to_be_bytes())
        }
        (x509::PublicKey::Ec { curve, point }, PublicKey::Ecc { curve: tc, x, y }) => {
            let (want_curve, len) = match *tc {
                TPM_ECC_NIST_P256 => (Curve::P256, 32),
                TPM_ECC_NIST_P384 => (Curve::P384, 48),
                _ => return false,
            };
            if *curve != want_curve || x.len() != len || y.len() != len {
                return false;
            }
            let mut p = vec![4u8];
            p.extend_from_slice(x);
            p.extend_from_slice(y);
            &p == point
        }
        _ => false,
    }
}

/// Verifies an AK certificate chain (leaf first, optional intermediates) to the embedded Google roots at
/// `at`, and that the certificate certifies `ak`.
///
/// # Errors
/// "tpm ak certificate: …" naming the failed check.
pub fn verify_ak_certificate(chain_der: &[Vec<u8>], ak: &PublicKey, at: UnixTime) -> Result<AkIdentity> {
    let cas = google_cas()?;
    let (leaf_der, rest) = chain_der.split_first().ok_or_else(|| Error::check(LAYER, "no AK certificate"))?;
    let leaf = Certificate::from_der(leaf_der).map_err(|e| e.within(LAYER, "AK certificate"))?;
    let supplied = rest.iter().map(|d| Certificate::from_der(d)).collect::<Result<Vec<_>>>()?;
    let mut chain = vec![leaf.clone()];
    let mut cur = leaf.clone();
    // Build up to the root by name: supplied intermediates first, then the embedded ones.
    for _ in 0..4 {
        if cas.roots.iter().any(|r| r.subject_raw() == cur.issuer_raw()) {
            break;
        }
        let next = supplied
            .iter()
            .chain(&cas.intermediates)
            .find(|c| c.subject_raw() == cur.issuer_raw())
            .cloned()
            .ok_or_else(|| {
                Error::check(LAYER, format!("no known intermediate named '{}'", cur.issuer_cn()))
            })?;
        chain.push(next.clone());
        cur = next;
    }
    x509::verify_chain(&chain, &cas.roots, at).map_err(|e| e.within(LAYER, "chain to Google EK/AK root"))?;
    if !same_key(leaf.public_key(), ak) {
        return Err(Error::check(LAYER, "the AK certificate certifies another key than the quote's AK"));
    }
    let gce_instance = match leaf.extension(GCE_INSTANCE_INFO_OID) {
        Some(ext) => Some(GceInstance::parse(&ext.value)?),
        None => None,
    };
    Ok(AkIdentity {
        subject: leaf.subject_cn().to_owned(),
        issuer: leaf.issuer_cn().to_owned(),
        serial: hex::encode(leaf.serial()),
        gce_instance,
    })
}
