//! AMD endorsement keys (VCEK, VLEK) and their chain to the pinned AMD roots (ARK → ASK/ASVK).
//!
//! The roots of Milan, Genoa and Turin are compiled into the binary. A VCEK is checked once against them
//! (RSA-PSS SHA-384 signatures) and then kept, with its parsed P-384 key and TCB extensions, in a bounded cache:
//! repeated reports from the same chip cost one ECDSA P-384 verification and no certificate work.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED, ParsedPublicKey};
use sealroom_measurements::reader::Reader;

use super::report::TcbVersion;
use crate::error::{Error, Result};
use crate::x509::{self, Certificate, UnixTime};

const LAYER: &str = "snp";

/// The AMD product generation of a chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Product {
    /// EPYC 7003.
    Milan,
    /// EPYC 9004.
    Genoa,
    /// EPYC 9005.
    Turin,
}

impl Product {
    /// The name AMD uses in certificate CNs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Milan => "Milan",
            Self::Genoa => "Genoa",
            Self::Turin => "Turin",
        }
    }

    /// Whether TCB_VERSION uses the Turin layout (with FMC).
    #[must_use]
    pub fn turin_layout(self) -> bool {
        matches!(self, Self::Turin)
    }
}

/// Which kind of endorsement key signed a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum KeyKind {
    /// Per-chip VCEK, issued by the ASK.
    Vcek,
    /// Per-cloud-provider VLEK, issued by the ASVK.
    Vlek,
}

/// One product's pinned certificates.
#[derive(Debug)]
pub struct AmdRoot {
    /// The product.
    pub product: Product,
    /// AMD Root Key (self-signed).
    pub ark: Certificate,
    /// AMD SEV Key: issues VCEKs.
    pub ask: Certificate,
    /// AMD SEV VLEK Key: issues VLEKs.
    pub asvk: Certificate,
}

const MILAN: &[u8] = include_bytes!("../../testdata/certs/amd/trustee_milan_ask_ark_asvk.pem");
const GENOA: &[u8] = include_bytes!("../../testdata/certs/amd/trustee_genoa_ask_ark_asvk.pem");
const TURIN: &[u8] = include_bytes!("../../testdata/certs/amd/trustee_turin_ask_ark_asvk.pem");

impl AmdRoot {
    /// One product's ARK, ASK and ASVK, checked to be signed by the ARK (the ARK by itself). Signatures do not
    /// depend on time: they are checked once, here.
    ///
    /// # Errors
    /// When a signature does not verify.
    pub fn new(product: Product, ark: Certificate, ask: Certificate, asvk: Certificate) -> Result<Self> {
        ark.verify_signed_by(&ark)?;
        ask.verify_signed_by(&ark)?;
        asvk.verify_signed_by(&ark)?;
        Ok(Self { product, ark, ask, asvk })
    }

    fn certificates(&self) -> [&Certificate; 3] {
        [&self.ark, &self.ask, &self.asvk]
    }
}

fn load_root(product: Product, pem: &[u8]) -> Result<AmdRoot> {
    let certs = Certificate::chain_from_pem(pem)?;
    let find = |cn: String| {
        certs
            .iter()
            .find(|c| c.subject_cn() == cn)
            .cloned()
            .ok_or_else(|| Error::check(LAYER, format!("embedded AMD roots lack '{cn}'")))
    };
    let name = product.name();
    AmdRoot::new(
        product,
        find(format!("ARK-{name}"))?,
        find(format!("SEV-{name}"))?,
        find(format!("SEV-VLEK-{name}"))?,
    )
}

/// The embedded AMD roots, parsed and self-checked on first use.
///
/// # Errors
/// Only if the embedded certificates are broken (a build defect).
pub fn amd_roots() -> Result<&'static [AmdRoot]> {
    static ROOTS: OnceLock<std::result::Result<Vec<AmdRoot>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            [(Product::Milan, MILAN), (Product::Genoa, GENOA), (Product::Turin, TURIN)]
                .into_iter()
                .map(|(p, pem)| load_root(p, pem))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| e.to_string())
        })
        .as_deref()
        .map_err(|e| Error::check(LAYER, format!("embedded AMD roots: {e}")))
}

/// OIDs of AMD's VCEK/VLEK extensions (AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS
/// Interface Specification").
pub mod oid {
    /// Boot loader SPL.
    pub const BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
    /// TEE SPL.
    pub const TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
    /// SNP SPL.
    pub const SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
    /// Microcode SPL.
    pub const UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
    /// FMC SPL (Turin).
    pub const FMC_SPL: &str = "1.3.6.1.4.1.3704.1.3.9";
    /// Hardware id (CHIP_ID), VCEK only.
    pub const HW_ID: &str = "1.3.6.1.4.1.3704.1.4";
    /// Product name ("Milan-B0").
    pub const PRODUCT_NAME: &str = "1.3.6.1.4.1.3704.1.2";
}

/// Reads one DER TLV (the crate's strict reader) with the expected tag; returns its contents.
fn der_tlv<'a>(r: &mut Reader<'a>, tag: u8, what: &'static str) -> Result<&'a [u8]> {
    let t = crate::x509::der::read_tlv(r, what)?;
    if t.tag != tag {
        return Err(Error::check(LAYER, format!("VCEK {what}: DER tag {:#04x}, expected {tag:#04x}", t.tag)));
    }
    Ok(t.contents)
}

fn spl(cert: &Certificate, oid_str: &str, what: &'static str) -> Result<Option<u8>> {
    let Some(ext) = cert.extension(oid_str) else { return Ok(None) };
    let mut r = Reader::new(&ext.value);
    let body = der_tlv(&mut r, 0x02, what)?;
    r.finish(what).map_err(Error::read("vcek extension"))?;
    // A non-negative INTEGER below 256: one byte, or a 0x00 sign byte then one byte.
    let value = match body {
        [v] if *v < 0x80 => *v,
        [0, v] if *v >= 0x80 => *v,
        _ => return Err(Error::check(LAYER, format!("VCEK {what}: not an integer 0..=255"))),
    };
    Ok(Some(value))
}

fn hw_id(cert: &Certificate) -> Result<Option<Vec<u8>>> {
    let Some(ext) = cert.extension(oid::HW_ID) else { return Ok(None) };
    // New KDS encoding wraps the id in an OCTET STRING; legacy certificates carry the raw bytes.
    let mut r = Reader::new(&ext.value);
    if let Ok(inner) = der_tlv(&mut r, 0x04, "hwID")
        && r.is_empty()
        && matches!(inner.len(), 8 | 64)
    {
        return Ok(Some(inner.to_vec()));
    }
    if matches!(ext.value.len(), 8 | 64) {
        return Ok(Some(ext.value.clone()));
    }
    Err(Error::check(
        LAYER,
        format!("VCEK hwID extension is {} bytes, expected 64 (or 8 on Turin)", ext.value.len()),
    ))
}

/// The TCB and hardware id an endorsement key was issued for, read from its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndorsedTcb {
    /// The TCB.
    pub tcb: TcbVersion,
    /// CHIP_ID (VCEK only).
    pub hw_id: Option<Vec<u8>>,
}

/// Reads the TCB extensions of a VCEK or VLEK.
///
/// # Errors
/// When a required extension is missing or malformed.
pub fn endorsed_tcb(cert: &Certificate, product: Product) -> Result<EndorsedTcb> {
    let need = |v: Option<u8>, what: &str| {
        v.ok_or_else(|| {
            Error::check(LAYER, format!("endorsement key certificate lacks the {what} extension"))
        })
    };
    let tcb = TcbVersion {
        fmc: if product.turin_layout() {
            Some(need(spl(cert, oid::FMC_SPL, "fmcSPL")?, "fmcSPL")?)
        } else {
            None
        },
        bootloader: need(spl(cert, oid::BL_SPL, "blSPL")?, "blSPL")?,
        tee: need(spl(cert, oid::TEE_SPL, "teeSPL")?, "teeSPL")?,
        snp: need(spl(cert, oid::SNP_SPL, "snpSPL")?, "snpSPL")?,
        microcode: need(spl(cert, oid::UCODE_SPL, "ucodeSPL")?, "ucodeSPL")?,
    };
    Ok(EndorsedTcb { tcb, hw_id: hw_id(cert)? })
}

/// A VCEK or VLEK whose chain to a pinned AMD root verified. Validity windows are checked per use.
#[derive(Debug)]
pub struct Endorsement {
    /// VCEK or VLEK.
    pub kind: KeyKind,
    /// The chip generation.
    pub product: Product,
    /// The certificate chain, leaf first: VCEK/VLEK, ASK/ASVK, ARK.
    pub chain: [Certificate; 3],
    /// TCB and hardware id from the extensions.
    pub endorsed: EndorsedTcb,
    /// The parsed P-384 key that signs reports.
    pub key: ParsedPublicKey,
}

impl Endorsement {
    /// Checks every certificate's validity window at `at`.
    ///
    /// # Errors
    /// "snp: VCEK chain: certificate 'SEV-VCEK': expired (…)".
    pub fn check_validity(&self, at: UnixTime) -> Result<()> {
        for c in &self.chain {
            c.check_validity(at).map_err(|e| e.within(LAYER, self.chain_name()))?;
        }
        Ok(())
    }

    fn chain_name(&self) -> &'static str {
        match self.kind {
            KeyKind::Vcek => "VCEK chain",
            KeyKind::Vlek => "VLEK chain",
        }
    }
}

/// Verifies a DER VCEK/VLEK against the pinned roots (signatures and CA constraints; not time).
///
/// # Errors
/// "snp: VCEK chain: …" naming the failed certificate.
pub fn verify_endorsement(der: &[u8]) -> Result<Endorsement> {
    verify_endorsement_under(der, amd_roots()?)
}

fn verify_endorsement_under(der: &[u8], roots: &[AmdRoot]) -> Result<Endorsement> {
    let leaf = Certificate::from_der(der).map_err(|e| e.within(LAYER, "endorsement key certificate"))?;
    let (root, kind) = roots
        .iter()
        .find_map(|r| {
            if leaf.issuer_raw() == r.ask.subject_raw() {
                Some((r, KeyKind::Vcek))
            } else if leaf.issuer_raw() == r.asvk.subject_raw() {
                Some((r, KeyKind::Vlek))
            } else {
                None
            }
        })
        .ok_or_else(|| {
            Error::check(
                LAYER,
                format!("endorsement key issuer '{}' is not an AMD ASK or ASVK", leaf.issuer_cn()),
            )
        })?;
    let intermediate = match kind {
        KeyKind::Vcek => &root.ask,
        KeyKind::Vlek => &root.asvk,
    };
    let context = match kind {
        KeyKind::Vcek => "VCEK chain",
        KeyKind::Vlek => "VLEK chain",
    };
    // Chain signatures and constraints are time-independent; verify them at a time inside every window so
    // that `verify_chain` checks signatures only, and check validity at the caller's time on each use.
    let inside = leaf.not_before().max(intermediate.not_before()).max(root.ark.not_before());
    x509::verify_chain(&[leaf.clone(), intermediate.clone()], std::slice::from_ref(&root.ark), inside)
        .map_err(|e| e.within(LAYER, context))?;
    let endorsed = endorsed_tcb(&leaf, root.product)?;
    let point = match leaf.public_key() {
        x509::PublicKey::Ec { curve: x509::Curve::P384, point } => point.clone(),
        other => {
            return Err(Error::check(LAYER, format!("endorsement key is {other:?}, expected ECDSA P-384")));
        }
    };
    let key = ParsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point)
        .map_err(|e| Error::check(LAYER, format!("endorsement key P-384 point rejected: {e}")))?;
    Ok(Endorsement {
        kind,
        product: root.product,
        chain: [leaf, intermediate.clone(), root.ark.clone()],
        endorsed,
        key,
    })
}

/// A bounded cache of verified endorsement keys, keyed by their DER, with the AMD CRLs verified into it.
///
/// It is the SEV-SNP trust context of a verifier: the AMD roots it trusts (the pinned ones; test-only roots
/// exist only in builds with the `test-anchors` feature) and the CRLs given to it. Revocation is checked on
/// every report, cached key or not, at the report's verification time.
#[derive(Debug, Default)]
pub struct EndorsementCache {
    map: RwLock<HashMap<Vec<u8>, Arc<Endorsement>>>,
    /// `None`: the pinned AMD roots.
    roots: Option<Arc<[AmdRoot]>>,
    crls: RwLock<Vec<Arc<AmdCrl>>>,
}

/// An AMD CRL whose signature verified under the certificate that issued it: an ARK (its CRL revokes ASKs and
/// ASVKs, which is the CRL AMD's KDS publishes per product) or an ASK/ASVK (revoking VCEKs/VLEKs).
#[derive(Debug)]
pub struct AmdCrl {
    /// The product of the issuing root.
    pub product: Product,
    /// The verified CRL; its currency is checked at each use.
    pub crl: x509::Crl,
}

/// At most this many endorsement keys are cached (one per chip and TCB; evicted wholesale when full).
pub const CACHE_CAPACITY: usize = 4096;

impl EndorsementCache {
    /// A cache that trusts `roots` instead of the pinned AMD roots: for tests that sign their own reports with
    /// an AMD-like ARK/ASK/VCEK. Compiled only with the `test-anchors` feature (never in a release build).
    #[cfg(any(test, feature = "test-anchors"))]
    #[must_use]
    pub fn with_test_roots(roots: Vec<AmdRoot>) -> Self {
        Self { roots: Some(roots.into()), ..Self::default() }
    }

    fn roots(&self) -> Result<&[AmdRoot]> {
        match &self.roots {
            Some(r) => Ok(r),
            None => amd_roots(),
        }
    }

    /// A verified endorsement for `der`, from the cache or verified now.
    ///
    /// # Errors
    /// When the chain does not verify (failures are not cached).
    pub fn get(&self, der: &[u8]) -> Result<Arc<Endorsement>> {
        if let Ok(map) = self.map.read()
            && let Some(hit) = map.get(der)
        {
            return Ok(Arc::clone(hit));
        }
        let verified = Arc::new(verify_endorsement_under(der, self.roots()?)?);
        if let Ok(mut map) = self.map.write() {
            if map.len() >= CACHE_CAPACITY {
                map.clear();
            }
            map.insert(der.to_vec(), Arc::clone(&verified));
        }
        Ok(verified)
    }

    /// Adds an AMD CRL (DER or PEM): its issuer must be a trusted ARK, ASK or ASVK and its signature must
    /// verify under it. Whether it is current is checked per report, at the report's verification time.
    ///
    /// # Errors
    /// "snp: AMD CRL: …" when it does not parse, its issuer is not an AMD root certificate, or its signature
    /// does not verify.
    pub fn add_crl(&self, bytes: &[u8]) -> Result<()> {
        let crl = x509::Crl::from_any(bytes).map_err(|e| e.within(LAYER, "AMD CRL"))?;
        let (product, issuer) = self
            .roots()?
            .iter()
            .find_map(|r| {
                r.certificates()
                    .into_iter()
                    .find(|c| c.subject_raw() == crl.issuer_raw())
                    .map(|c| (r.product, c))
            })
            .ok_or_else(|| {
                Error::check(
                    LAYER,
                    format!("AMD CRL: issuer '{}' is not an AMD ARK, ASK or ASVK", crl.issuer_cn()),
                )
            })?;
        crl.verify_signature(issuer).map_err(|e| e.within(LAYER, "AMD CRL"))?;
        if let Ok(mut crls) = self.crls.write() {
            crls.push(Arc::new(AmdCrl { product, crl }));
        }
        Ok(())
    }

    /// Number of CRLs added.
    #[must_use]
    pub fn crl_count(&self) -> usize {
        self.crls.read().map(|c| c.len()).unwrap_or(0)
    }

    /// Revocation of an endorsement's chain at `at`, against every CRL given for its product: each such CRL
    /// must be current, and no certificate it covers (issued by the CRL's issuer) may be listed.
    #[must_use]
    pub fn check_revocation(&self, endorsement: &Endorsement, at: UnixTime) -> Vec<Error> {
        let Ok(crls) = self.crls.read() else {
            return vec![Error::check(LAYER, "AMD CRLs unavailable (lock poisoned)")];
        };
        let mut out = Vec::new();
        for c in crls.iter().filter(|c| c.product == endorsement.product) {
            if let Err(e) = c.crl.check_time(at) {
                out.push(e.within(LAYER, "AMD CRL"));
                continue;
            }
            for (cert, role) in endorsement.chain.iter().zip(chain_roles(endorsement.kind)) {
                if cert.issuer_raw() == c.crl.issuer_raw() && c.crl.is_revoked(cert.serial()) {
                    out.push(Error::check(
                        LAYER,
                        format!(
                            "{role} '{}' revoked by the AMD CRL of '{}' (serial {})",
                            cert.subject_cn(),
                            c.crl.issuer_cn(),
                            hex::encode(cert.serial())
                        ),
                    ));
                }
            }
        }
        out
    }

    /// Number of cached keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether the cache is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn chain_roles(kind: KeyKind) -> [&'static str; 3] {
    match kind {
        KeyKind::Vcek => ["VCEK", "ASK", "ARK"],
        KeyKind::Vlek => ["VLEK", "ASVK", "ARK"],
    }
}
