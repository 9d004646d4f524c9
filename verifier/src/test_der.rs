//! Minimal DER writing for the test PKIs (`snp::test_pki`, `tdx::test_pki`; feature `test-anchors`, never in a
//! release build): just enough X.509 to issue certificates and CRLs that the verifier then parses with the same
//! parser as real ones.
#![allow(
    clippy::missing_panics_doc,
    clippy::expect_used,
    reason = "test support: a failure is a broken test"
)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _};

use crate::x509::{UnixTime, format_time};

/// One ECDSA key held twice: for DER signatures (certificates, CRLs) and for fixed-size `r || s` signatures
/// (quotes, reports, collateral), as vendors sign both with the same key.
#[derive(Debug)]
pub(crate) struct SigningKey {
    asn1: EcdsaKeyPair,
    fixed: EcdsaKeyPair,
}

impl SigningKey {
    /// A fresh key for the curve of the two (matching) algorithms.
    pub(crate) fn generate(
        asn1: &'static EcdsaSigningAlgorithm,
        fixed: &'static EcdsaSigningAlgorithm,
    ) -> Self {
        let asn1 = EcdsaKeyPair::generate(asn1).expect("ECDSA key");
        let pkcs8 = asn1.to_pkcs8v1().expect("PKCS#8");
        let fixed = EcdsaKeyPair::from_pkcs8(fixed, pkcs8.as_ref()).expect("reload");
        Self { asn1, fixed }
    }

    /// The uncompressed SEC1 point (0x04 || X || Y).
    pub(crate) fn public_point(&self) -> Vec<u8> {
        self.asn1.public_key().as_ref().to_vec()
    }

    /// A DER-encoded ECDSA signature over `message`.
    pub(crate) fn sign_der(&self, message: &[u8]) -> Vec<u8> {
        self.asn1.sign(&SystemRandom::new(), message).expect("sign").as_ref().to_vec()
    }

    /// A fixed-size `r || s` ECDSA signature over `message`.
    pub(crate) fn sign_fixed(&self, message: &[u8]) -> Vec<u8> {
        self.fixed.sign(&SystemRandom::new(), message).expect("sign").as_ref().to_vec()
    }
}

/// One DER TLV.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(u8::try_from(len).expect("short length"));
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | u8::try_from(bytes.len()).expect("length of length"));
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A SEQUENCE of already encoded parts.
pub(crate) fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// A non-negative INTEGER from big-endian bytes.
pub(crate) fn uint(be: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
    let mut content = if trimmed.is_empty() { vec![0] } else { trimmed };
    if content.first().is_some_and(|b| b & 0x80 != 0) {
        content.insert(0, 0);
    }
    tlv(0x02, &content)
}

/// An OBJECT IDENTIFIER from its dotted form.
pub(crate) fn oid_der(dotted: &str) -> Vec<u8> {
    let arcs: Vec<u64> = dotted.split('.').map(|a| a.parse().expect("OID arc")).collect();
    let mut content = Vec::new();
    let first = arcs.first().copied().unwrap_or(0) * 40 + arcs.get(1).copied().unwrap_or(0);
    for arc in std::iter::once(first).chain(arcs.iter().skip(2).copied()) {
        let mut groups = vec![u8::try_from(arc & 0x7f).expect("7 bits")];
        let mut rest = arc >> 7;
        while rest > 0 {
            groups.push(0x80 | u8::try_from(rest & 0x7f).expect("7 bits"));
            rest >>= 7;
        }
        content.extend(groups.into_iter().rev());
    }
    tlv(0x06, &content)
}

/// UTCTime (years 1950-2049) or GeneralizedTime.
pub(crate) fn time(t: UnixTime) -> Vec<u8> {
    // "2025-07-19T10:00:34Z" → UTCTime "250719100034Z".
    let mut text: String = format_time(t).chars().filter(char::is_ascii_digit).collect();
    text.push('Z');
    let year: i64 = text.get(..4).and_then(|y| y.parse().ok()).expect("year");
    if (1950..2050).contains(&year) {
        tlv(0x17, text.get(2..).expect("UTCTime").as_bytes())
    } else {
        tlv(0x18, text.as_bytes())
    }
}

/// A Name holding one common name.
pub(crate) fn name(cn: &str) -> Vec<u8> {
    seq(&[tlv(0x31, &seq(&[oid_der("2.5.4.3"), tlv(0x0c, cn.as_bytes())]))])
}

/// A BIT STRING without unused bits.
pub(crate) fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = vec![0];
    content.extend_from_slice(bytes);
    tlv(0x03, &content)
}

/// One certificate extension.
pub(crate) fn extension(oid: &str, critical: bool, value: &[u8]) -> Vec<u8> {
    let mut parts = vec![oid_der(oid)];
    if critical {
        parts.push(tlv(0x01, &[0xff]));
    }
    parts.push(tlv(0x04, value));
    seq(&parts)
}

/// How one vendor's test PKI writes certificates and CRLs: its curve, its signature algorithm, its names, and
/// the key usage of its leaf certificates. Both test PKIs issue through this one writer.
pub(crate) struct Profile {
    /// The named curve of every key (SubjectPublicKeyInfo parameters).
    pub curve_oid: &'static str,
    /// The ECDSA signature algorithm of every certificate and CRL.
    pub signature_oid: &'static str,
    /// Writes a distinguished name for a common name.
    pub name: fn(&str) -> Vec<u8>,
    /// The key usage bits (BIT STRING content) of non-CA certificates, if they carry one.
    pub leaf_key_usage: Option<[u8; 2]>,
}

/// What a test certificate says.
pub(crate) struct CertSpec<'a> {
    pub serial: &'a [u8],
    pub issuer: &'a str,
    pub subject: &'a str,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
    pub ca: bool,
    pub extra: Vec<Vec<u8>>,
}

impl Profile {
    fn signature_algorithm(&self) -> Vec<u8> {
        seq(&[oid_der(self.signature_oid)])
    }

    /// An X.509 v3 certificate for `subject`'s key, signed by `issuer`'s; CA certificates carry basic
    /// constraints and keyCertSign | cRLSign.
    pub(crate) fn certificate(
        &self,
        spec: &CertSpec<'_>,
        subject: &SigningKey,
        issuer: &SigningKey,
    ) -> Vec<u8> {
        let spki = seq(&[
            seq(&[oid_der("1.2.840.10045.2.1"), oid_der(self.curve_oid)]),
            bit_string(&subject.public_point()),
        ]);
        let mut extensions = Vec::new();
        if spec.ca {
            extensions.push(extension("2.5.29.19", true, &seq(&[tlv(0x01, &[0xff])])));
            // keyCertSign | cRLSign.
            extensions.push(extension("2.5.29.15", true, &tlv(0x03, &[0x01, 0x06])));
        } else if let Some(usage) = self.leaf_key_usage {
            extensions.push(extension("2.5.29.15", true, &tlv(0x03, &usage)));
        }
        extensions.extend(spec.extra.iter().cloned());
        let tbs = seq(&[
            tlv(0xa0, &uint(&[2])),
            uint(spec.serial),
            self.signature_algorithm(),
            (self.name)(spec.issuer),
            seq(&[time(spec.not_before), time(spec.not_after)]),
            (self.name)(spec.subject),
            spki,
            tlv(0xa3, &seq(&extensions)),
        ]);
        let sig = issuer.sign_der(&tbs);
        seq(&[tbs, self.signature_algorithm(), bit_string(&sig)])
    }

    /// A v2 CRL by `issuer` revoking `revoked` serials (at `this_update`).
    pub(crate) fn crl(
        &self,
        issuer: &str,
        key: &SigningKey,
        revoked: &[&[u8]],
        this_update: UnixTime,
        next_update: UnixTime,
    ) -> Vec<u8> {
        let mut tbs = vec![
            uint(&[1]),
            self.signature_algorithm(),
            (self.name)(issuer),
            time(this_update),
            time(next_update),
        ];
        if !revoked.is_empty() {
            tbs.push(seq(&revoked
                .iter()
                .map(|serial| seq(&[uint(serial), time(this_update)]))
                .collect::<Vec<_>>()));
        }
        let tbs = seq(&tbs);
        let sig = key.sign_der(&tbs);
        seq(&[tbs, self.signature_algorithm(), bit_string(&sig)])
    }
}
