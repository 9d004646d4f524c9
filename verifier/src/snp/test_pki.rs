//! An AMD-like PKI for tests (feature `test-anchors`, never in a release build): a fresh ARK, ASK and ASVK
//! (ECDSA P-384 instead of AMD's RSA-PSS: the chain logic is the same and key generation is instant), VCEKs
//! carrying the TCB and hwID extensions AMD's KDS puts in them, CRLs issued by the ARK or the ASK, and report
//! signing. With [`super::EndorsementCache::with_test_roots`] it lets tests model attacks that need a genuine
//! signature over altered report fields (a VMPL 2 report, a revoked VCEK) without AMD hardware.
//!
//! The DER written here is the minimum X.509 needs; it is parsed back by the same parser as real certificates.
#![allow(
    clippy::missing_panics_doc,
    clippy::expect_used,
    reason = "test support: a failure is a broken test"
)]

use aws_lc_rs::signature::{ECDSA_P384_SHA384_ASN1_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING};

use super::endorsement::{AmdRoot, Product, oid};
use super::report::{SIGNED_LEN, TcbVersion};
use crate::test_der::{CertSpec, Profile, SigningKey, extension, name, tlv, uint};
use crate::x509::{Certificate, UnixTime};

/// AMD's certificates: P-384, ECDSA with SHA-384, names with just a CN, no key usage on the VCEK.
const AMD: Profile =
    Profile { curve_oid: "1.3.132.0.34", signature_oid: "1.2.840.10045.4.3.3", name, leaf_key_usage: None };

// ----- keys and certificates -------------------------------------------------------------------------------

/// A P-384 key that signs certificates, CRLs (DER signatures) and SNP reports (fixed r || s).
#[derive(Debug)]
pub struct TestKey(SigningKey);

impl TestKey {
    /// A fresh key.
    #[must_use]
    pub fn generate() -> Self {
        Self(SigningKey::generate(&ECDSA_P384_SHA384_ASN1_SIGNING, &ECDSA_P384_SHA384_FIXED_SIGNING))
    }

    /// Signs an SNP report in place: ECDSA P-384 SHA-384 over bytes 0..0x2A0, r and s written as 72-byte
    /// little-endian integers at 0x2A0 and 0x2E8 (AMD SEV-SNP ABI, "Signature Format").
    pub fn sign_report(&self, report: &mut [u8]) {
        let signed = report.get(..SIGNED_LEN).expect("1184-byte report").to_vec();
        let sig = self.0.sign_fixed(&signed);
        let (r, s) = sig.split_at(48);
        for (offset, be) in [(SIGNED_LEN, r), (SIGNED_LEN + 72, s)] {
            let field = report.get_mut(offset..offset + 72).expect("signature field");
            field.fill(0);
            for (dst, src) in field.iter_mut().zip(be.iter().rev()) {
                *dst = *src;
            }
        }
    }
}

/// An AMD-like PKI for one product: ARK (self-signed), ASK and ASVK, valid over the given window.
#[derive(Debug)]
pub struct TestAmdPki {
    /// The product the certificates name (`ARK-Milan`, `SEV-Milan`, …).
    pub product: Product,
    /// The ARK's key.
    pub ark_key: TestKey,
    /// The ASK's key.
    pub ask_key: TestKey,
    ark: Vec<u8>,
    ask: Vec<u8>,
    asvk: Vec<u8>,
    not_before: UnixTime,
    not_after: UnixTime,
}

impl TestAmdPki {
    /// A fresh ARK/ASK/ASVK for `product`, valid from `not_before` to `not_after`.
    #[must_use]
    pub fn new(product: Product, not_before: UnixTime, not_after: UnixTime) -> Self {
        let (ark_key, ask_key, asvk_key) = (TestKey::generate(), TestKey::generate(), TestKey::generate());
        let p = product.name();
        let ark_name = format!("ARK-{p}");
        let (ask_name, asvk_name) = (format!("SEV-{p}"), format!("SEV-VLEK-{p}"));
        let issued = |serial: u64, subject: &str, key: &TestKey| {
            let spec = CertSpec {
                serial: &serial.to_be_bytes(),
                issuer: &ark_name,
                subject,
                not_before,
                not_after,
                ca: true,
                extra: Vec::new(),
            };
            AMD.certificate(&spec, &key.0, &ark_key.0)
        };
        let ark = issued(1, &ark_name, &ark_key);
        let ask = issued(2, &ask_name, &ask_key);
        let asvk = issued(3, &asvk_name, &asvk_key);
        Self { product, ark_key, ask_key, ark, ask, asvk, not_before, not_after }
    }

    /// The roots to give [`super::EndorsementCache::with_test_roots`].
    #[must_use]
    pub fn roots(&self) -> Vec<AmdRoot> {
        let parse = |der: &[u8]| Certificate::from_der(der).expect("test certificate parses");
        vec![
            AmdRoot::new(self.product, parse(&self.ark), parse(&self.ask), parse(&self.asvk))
                .expect("test root"),
        ]
    }

    /// A VCEK for `chip_id` at `tcb`, issued by the ASK; returns its DER and its key.
    #[must_use]
    pub fn issue_vcek(&self, serial: u64, tcb: &TcbVersion, chip_id: &[u8; 64]) -> (Vec<u8>, TestKey) {
        let key = TestKey::generate();
        let spl = |o: &str, v: u8| extension(o, false, &uint(&[v]));
        let mut extra = vec![
            extension(oid::PRODUCT_NAME, false, &tlv(0x16, format!("{}-B0", self.product.name()).as_bytes())),
            spl(oid::BL_SPL, tcb.bootloader),
            spl(oid::TEE_SPL, tcb.tee),
            spl(oid::SNP_SPL, tcb.snp),
            spl(oid::UCODE_SPL, tcb.microcode),
            extension(oid::HW_ID, false, &tlv(0x04, chip_id)),
        ];
        if let Some(fmc) = tcb.fmc {
            extra.push(spl(oid::FMC_SPL, fmc));
        }
        let spec = CertSpec {
            serial: &serial.to_be_bytes(),
            issuer: &format!("SEV-{}", self.product.name()),
            subject: "SEV-VCEK",
            not_before: self.not_before,
            not_after: self.not_after,
            ca: false,
            extra,
        };
        (AMD.certificate(&spec, &key.0, &self.ask_key.0), key)
    }

    /// The ASK's serial, as the ARK's CRL lists it.
    #[must_use]
    pub fn ask_serial(&self) -> Vec<u8> {
        Certificate::from_der(&self.ask).expect("test certificate parses").serial().to_vec()
    }

    /// A CRL issued by the ARK (AMD's KDS CRL: it revokes ASKs/ASVKs) listing `revoked` serials.
    #[must_use]
    pub fn ark_crl(&self, revoked: &[&[u8]], this_update: UnixTime, next_update: UnixTime) -> Vec<u8> {
        AMD.crl(&format!("ARK-{}", self.product.name()), &self.ark_key.0, revoked, this_update, next_update)
    }

    /// A CRL issued by the ASK (it revokes VCEKs) listing `revoked` serials.
    #[must_use]
    pub fn ask_crl(&self, revoked: &[&[u8]], this_update: UnixTime, next_update: UnixTime) -> Vec<u8> {
        AMD.crl(&format!("SEV-{}", self.product.name()), &self.ask_key.0, revoked, this_update, next_update)
    }
}
