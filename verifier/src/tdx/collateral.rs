//! Intel DCAP collateral: loading (PCS files in a directory, or dcap-qvl's `QuoteCollateralV3` JSON) and
//! verifying it once into a [`VerifiedCollateral`] that every quote from the same platforms reuses.

use std::borrow::Cow;
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::tcb::{QeIdentity, TcbInfo, Text};
use crate::x509::{Certificate, Crl, SignatureAlgorithm, UnixTime, format_time, verify_chain};
use crate::{Error, Result};

const LAYER: &str = "tdx collateral";

fn fail(reason: impl Into<String>) -> Error {
    Error::check(LAYER, reason)
}

/// The Intel SGX Root CA, pinned (SHA-256 fingerprint 44:A0:19:6B:…:74:D3). Every DCAP chain ends here.
pub const INTEL_SGX_ROOT_CA_PEM: &[u8] = include_bytes!("Intel_SGX_Root_CA.pem");

/// The pinned Intel SGX Root CA.
///
/// # Errors
/// Never in practice (the embedded certificate parses); kept fallible to avoid a panic path.
pub fn intel_root() -> Result<Certificate> {
    // Parsed once per process: it is a constant, and every cold collateral verification starts from it.
    static ROOT: std::sync::OnceLock<std::result::Result<Certificate, String>> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        Certificate::chain_from_pem(INTEL_SGX_ROOT_CA_PEM)
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .ok_or_else(|| "embedded root missing".to_owned())
    })
    .clone()
    .map_err(fail)
}

/// The root every DCAP chain (PCK chain, PCK CRL issuer chain, TCB signing chain) must end at.
///
/// A release build can only make [`IntelRoot::pinned`]: the Intel SGX Root CA embedded in this crate. Tests that
/// sign their own quotes (`tdx::test_pki`) make a test root with `IntelRoot::test_root`, which exists only with
/// the `test-anchors` feature, mirroring `snp::EndorsementCache::with_test_roots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntelRoot(Certificate);

impl IntelRoot {
    /// The pinned Intel SGX Root CA.
    ///
    /// # Errors
    /// Never in practice (the embedded certificate parses).
    pub fn pinned() -> Result<Self> {
        intel_root().map(Self)
    }

    /// A test-only trust anchor (an Intel-like root from `tdx::test_pki`). Compiled only with the
    /// `test-anchors` feature: never in a release build.
    #[cfg(any(test, feature = "test-anchors"))]
    #[must_use]
    pub fn test_root(root: Certificate) -> Self {
        Self(root)
    }

    /// The root certificate.
    #[must_use]
    pub fn certificate(&self) -> &Certificate {
        &self.0
    }
}

/// A JSON document Intel signed (TCB info or QE identity): the exact signed bytes, the signature (r || s) and
/// the issuer chain that came with it.
#[derive(Debug, Clone)]
struct SignedJson {
    body: String,
    signature: Vec<u8>,
    chain: Option<Vec<Certificate>>,
    source: String,
}

/// Collateral as loaded, not yet trusted. Several TCB infos (one per FMSPC) and both PCK CRLs (platform and
/// processor CA) may be present: a verifier serving a fleet loads them all once.
#[derive(Debug, Clone, Default)]
pub struct Collateral {
    root_ca_crls: Vec<Crl>,
    pck_crls: Vec<(Crl, Option<Vec<Certificate>>)>,
    chains: Vec<Vec<Certificate>>,
    tcb_infos: Vec<SignedJson>,
    qe_identities: Vec<SignedJson>,
}

/// Every JSON collateral shape in one pass: dcap-qvl's `QuoteCollateralV3` (snake_case fields), a PCS
/// `tcbInfo` response or a PCS `enclaveIdentity` response. Parsed once, typed; which shape it is follows from
/// the fields present.
#[derive(Deserialize)]
struct CollateralJson<'a> {
    #[serde(borrow)]
    pck_crl_issuer_chain: Option<Text<'a>>,
    #[serde(borrow)]
    root_ca_crl: Option<Text<'a>>,
    #[serde(borrow)]
    pck_crl: Option<Text<'a>>,
    #[serde(borrow)]
    tcb_info_issuer_chain: Option<Text<'a>>,
    #[serde(borrow)]
    tcb_info: Option<Text<'a>>,
    #[serde(borrow)]
    tcb_info_signature: Option<Text<'a>>,
    #[serde(borrow)]
    qe_identity_issuer_chain: Option<Text<'a>>,
    #[serde(borrow)]
    qe_identity: Option<Text<'a>>,
    #[serde(borrow)]
    qe_identity_signature: Option<Text<'a>>,
    #[serde(rename = "tcbInfo", borrow)]
    pcs_tcb_info: Option<&'a RawValue>,
    #[serde(rename = "enclaveIdentity", borrow)]
    pcs_enclave_identity: Option<&'a RawValue>,
    #[serde(borrow)]
    signature: Option<Text<'a>>,
}

/// A field of a `QuoteCollateralV3` document (strings without escapes, such as the hex CRLs, stay borrowed).
fn field<'a>(value: Option<Text<'a>>, source: &str, name: &str) -> Result<Cow<'a, str>> {
    value.map(|t| t.0).ok_or_else(|| fail(format!("{source}: QuoteCollateralV3: missing field `{name}`")))
}

fn sig_hex(s: &str, what: &str) -> Result<Vec<u8>> {
    let v = hex::decode(s.trim()).map_err(|e| fail(format!("{what} signature: not hex: {e}")))?;
    if v.len() != 64 {
        return Err(fail(format!("{what} signature: {} bytes, expected 64 (r || s)", v.len())));
    }
    Ok(v)
}

impl Collateral {
    /// Loads collateral from a file (dcap-qvl `QuoteCollateralV3` JSON, or a single PCS file) or a directory of
    /// PCS files: `*.json` with `tcbInfo` or `enclaveIdentity` (PCS response bodies), CRLs (DER, PEM or hex;
    /// the root CA CRL is recognised by its issuer), and PEM issuer chains (TCB signing chain, PCK CRL issuer
    /// chain). Unrecognised files are an error, so a typo cannot silently drop a CRL.
    ///
    /// # Errors
    /// When a file cannot be read or parsed.
    pub fn load(path: &Path) -> Result<Self> {
        let mut c = Self::default();
        if path.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(path)
                .map_err(|e| Error::Input(format!("collateral directory {}: {e}", path.display())))?
                .filter_map(std::result::Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            entries.sort();
            for p in entries {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if name.starts_with('.') || name.eq_ignore_ascii_case("MANIFEST.md") || name.ends_with(".md")
                {
                    continue;
                }
                c.add_file(&p)?;
            }
        } else {
            c.add_file(path)?;
        }
        Ok(c)
    }

    fn add_file(&mut self, p: &Path) -> Result<()> {
        let bytes =
            std::fs::read(p).map_err(|e| Error::Input(format!("collateral file {}: {e}", p.display())))?;
        self.add_bytes(&bytes, &p.display().to_string())
    }

    /// Adds one collateral document (any of the formats [`Collateral::load`] accepts) from memory.
    ///
    /// # Errors
    /// When the bytes are not a recognised collateral format.
    pub fn add_bytes(&mut self, bytes: &[u8], source: &str) -> Result<()> {
        let text = std::str::from_utf8(bytes).ok();
        if let Some(t) = text
            && t.trim_start().starts_with('{')
        {
            return self.add_json(t, source);
        }
        if let Some(t) = text
            && t.contains("-----BEGIN CERTIFICATE-----")
        {
            self.chains.push(Certificate::chain_from_pem(bytes).map_err(|e| e.within(LAYER, source))?);
            return Ok(());
        }
        let crl = Crl::from_any(bytes)
            .map_err(|e| e.within(LAYER, &format!("{source}: not a CRL, chain or JSON")))?;
        self.add_crl(crl, None);
        Ok(())
    }

    fn add_crl(&mut self, crl: Crl, chain: Option<Vec<Certificate>>) {
        if crl.issuer_cn() == "Intel SGX Root CA" {
            self.root_ca_crls.push(crl);
        } else {
            self.pck_crls.push((crl, chain));
        }
    }

    fn add_json<'t>(&mut self, text: &'t str, source: &str) -> Result<()> {
        let j: CollateralJson<'t> =
            serde_json::from_str(text).map_err(|e| fail(format!("{source}: JSON: {e}")))?;
        if j.tcb_info.is_some() && j.pck_crl.is_some() {
            // The pinned root, when a chain carries it, is taken as parsed once rather than parsed per chain.
            let pinned: Vec<Certificate> = intel_root().ok().into_iter().collect();
            let chain = |pem: Option<Text<'t>>, name: &str| -> Result<(Cow<'t, str>, Vec<Certificate>)> {
                let pem = field(pem, source, name)?;
                let certs = Certificate::chain_from_pem_reusing(pem.as_bytes(), &pinned)
                    .map_err(|e| e.within(LAYER, &format!("{source}: {name}")))?;
                Ok((pem, certs))
            };
            let (_, pck_chain) = chain(j.pck_crl_issuer_chain, "pck_crl_issuer_chain")?;
            let root_crl = Crl::from_any(field(j.root_ca_crl, source, "root_ca_crl")?.as_bytes())
                .map_err(|e| e.within(LAYER, &format!("{source}: root_ca_crl")))?;
            let pck_crl = Crl::from_any(field(j.pck_crl, source, "pck_crl")?.as_bytes())
                .map_err(|e| e.within(LAYER, &format!("{source}: pck_crl")))?;
            self.add_crl(root_crl, None);
            self.add_crl(pck_crl, Some(pck_chain));
            let (tcb_pem, tcb_chain) = chain(j.tcb_info_issuer_chain, "tcb_info_issuer_chain")?;
            // Intel signs TCB infos and QE identities with the same key: the same chain is parsed once.
            let qe_chain = match j.qe_identity_issuer_chain {
                Some(pem) if *pem == *tcb_pem => tcb_chain.clone(),
                other => chain(other, "qe_identity_issuer_chain")?.1,
            };
            self.tcb_infos.push(SignedJson {
                signature: sig_hex(&field(j.tcb_info_signature, source, "tcb_info_signature")?, "tcb_info")?,
                body: field(j.tcb_info, source, "tcb_info")?.into_owned(),
                chain: Some(tcb_chain),
                source: format!("{source}: tcb_info"),
            });
            self.qe_identities.push(SignedJson {
                signature: sig_hex(
                    &field(j.qe_identity_signature, source, "qe_identity_signature")?,
                    "qe_identity",
                )?,
                body: field(j.qe_identity, source, "qe_identity")?.into_owned(),
                chain: Some(qe_chain),
                source: format!("{source}: qe_identity"),
            });
            return Ok(());
        }
        let pcs_signature = |what: &str| -> Result<Vec<u8>> {
            let s =
                j.signature.as_deref().ok_or_else(|| fail(format!("{source}: missing field `signature`")))?;
            sig_hex(s, what)
        };
        if let Some(body) = j.pcs_tcb_info {
            self.tcb_infos.push(SignedJson {
                body: body.get().to_owned(),
                signature: pcs_signature("tcbInfo")?,
                chain: None,
                source: source.to_owned(),
            });
            return Ok(());
        }
        if let Some(body) = j.pcs_enclave_identity {
            self.qe_identities.push(SignedJson {
                body: body.get().to_owned(),
                signature: pcs_signature("enclaveIdentity")?,
                chain: None,
                source: source.to_owned(),
            });
            return Ok(());
        }
        Err(fail(format!("{source}: JSON is neither tcbInfo, enclaveIdentity nor QuoteCollateralV3")))
    }

    /// Verifies everything once at `at`: every chain to the pinned Intel root (name chaining, signatures,
    /// validity), the root CA CRL (and that no collateral CA is revoked by it), every PCK CRL under its CA,
    /// every TCB info and QE identity signature under the Intel SGX TCB Signing certificate, and every
    /// issueDate/nextUpdate window. The result is valid for the intersection of all windows.
    ///
    /// # Errors
    /// The first failed check, naming the document and the check.
    pub fn verify(&self, at: UnixTime) -> Result<VerifiedCollateral> {
        self.verify_under(&IntelRoot::pinned()?, at)
    }

    /// [`Collateral::verify`] under the given root: the pinned Intel SGX Root CA in every release build
    /// ([`IntelRoot::pinned`]); a test root only with the `test-anchors` feature (`IntelRoot::test_root`).
    /// Every quote checked against the result must chain to this same root.
    ///
    /// # Errors
    /// As [`Collateral::verify`].
    pub fn verify_under(&self, root: &IntelRoot, at: UnixTime) -> Result<VerifiedCollateral> {
        let root = &root.0;
        let roots = std::slice::from_ref(root);
        let mut window = Window { from: root.not_before(), until: root.not_after() };

        let [root_crl] = self.root_ca_crls.as_slice() else {
            return Err(fail(format!(
                "expected exactly one Intel SGX Root CA CRL, found {}",
                self.root_ca_crls.len()
            )));
        };
        root_crl.verify(root, at).map_err(|e| e.within(LAYER, "root CA CRL"))?;
        window.crl(root_crl);

        let check_chain = |chain: &[Certificate], window: &mut Window, what: &str| -> Result<()> {
            verify_chain(chain, roots, at).map_err(|e| e.within(LAYER, what))?;
            for c in chain {
                if c != root && root_crl.is_revoked(c.serial()) {
                    return Err(fail(format!(
                        "{what}: certificate '{}' revoked by the root CA CRL (serial {})",
                        c.subject_cn(),
                        hex::encode(c.serial())
                    )));
                }
                window.cert(c);
            }
            Ok(())
        };

        // PCK CAs (platform / processor) with their CRLs.
        let mut pck_cas = Vec::new();
        for (crl, chain) in &self.pck_crls {
            let chain: &[Certificate] = match chain {
                Some(c) => c,
                None => self
                    .chains
                    .iter()
                    .find(|c| c.first().is_some_and(|ca| ca.subject_cn() == crl.issuer_cn()))
                    .ok_or_else(|| {
                        fail(format!("no issuer chain for the PCK CRL of '{}'", crl.issuer_cn()))
                    })?,
            };
            let what = format!("PCK CRL issuer chain ({})", crl.issuer_cn());
            check_chain(chain, &mut window, &what)?;
            let ca = chain.first().ok_or_else(|| fail("empty PCK CRL issuer chain"))?;
            crl.verify(ca, at).map_err(|e| e.within(LAYER, "PCK CRL"))?;
            window.crl(crl);
            if !pck_cas.iter().any(|v: &VerifiedPckCa| v.ca == *ca) {
                pck_cas.push(VerifiedPckCa { ca: ca.clone(), crl: crl.clone() });
            }
        }
        if pck_cas.is_empty() {
            return Err(fail("no PCK CRL in collateral"));
        }

        // TCB infos and QE identities come with the same signing chain: each distinct chain is verified once.
        let mut verified_signing_chains: Vec<&[Certificate]> = Vec::new();
        let mut verify_doc = |doc, window: &mut Window, what: &str| -> Result<()> {
            let chain = tcb_signing_chain(doc, &self.chains)?;
            if !verified_signing_chains.contains(&chain) {
                check_chain(chain, window, &format!("{what} issuer chain"))?;
                verified_signing_chains.push(chain);
            }
            let signer = chain.first().ok_or_else(|| fail("empty TCB signing chain"))?;
            if signer.subject_cn() != "Intel SGX TCB Signing" {
                return Err(fail(format!(
                    "{what}: signed by '{}', not 'Intel SGX TCB Signing'",
                    signer.subject_cn()
                )));
            }
            signer
                .public_key()
                .verify(SignatureAlgorithm::EcdsaSha256Fixed, doc.body.as_bytes(), &doc.signature)
                .map_err(|_| fail(format!("{what} signature invalid ({})", doc.source)))
        };

        let mut tcb_infos = Vec::new();
        for doc in &self.tcb_infos {
            verify_doc(doc, &mut window, "TCB info")?;
            let info = TcbInfo::from_json(&doc.body).map_err(|e| e.within(LAYER, &doc.source))?;
            check_dates("TCB info", info.issue_date, info.next_update, at)?;
            window.dates(info.issue_date, info.next_update);
            tcb_infos.push(info);
        }
        let mut qe_identities = Vec::new();
        for doc in &self.qe_identities {
            verify_doc(doc, &mut window, "QE identity")?;
            let id = QeIdentity::from_json(&doc.body).map_err(|e| e.within(LAYER, &doc.source))?;
            check_dates("QE identity", id.issue_date, id.next_update, at)?;
            window.dates(id.issue_date, id.next_update);
            qe_identities.push(id);
        }
        if tcb_infos.is_empty() {
            return Err(fail("no TCB info in collateral"));
        }
        if qe_identities.is_empty() {
            return Err(fail("no QE identity in collateral"));
        }
        if window.from > window.until {
            return Err(fail("collateral validity windows do not overlap"));
        }
        Ok(VerifiedCollateral {
            root: root.clone(),
            pck_cas,
            tcb_infos,
            qe_identities,
            valid_from: window.from,
            valid_until: window.until,
            platform_signatures: PlatformSignatureCache::default(),
        })
    }
}

/// Platform signatures already verified against this collateral: SHA-256 over (PCK certificate DER, its CA's
/// DER, QE report, QE report signature). Repeated quotes from one platform carry the same PCK certificate and QE
/// report, so after the first quote only the quote's own signature is checked. The PCK's validity window and
/// revocation are still checked for every quote; only the two pure signature checks are remembered.
#[derive(Debug, Clone, Default)]
pub(crate) struct PlatformSignatureCache(
    std::sync::Arc<std::sync::Mutex<std::collections::HashSet<[u8; 32]>>>,
);

/// Bound on remembered platforms; the cache is emptied when it is full (a fleet larger than this just pays the
/// two extra signature checks again).
const PLATFORM_CACHE_LIMIT: usize = 4096;

impl PlatformSignatureCache {
    pub(crate) fn contains(&self, key: &[u8; 32]) -> bool {
        self.0.lock().is_ok_and(|set| set.contains(key))
    }

    fn clear(&self) {
        if let Ok(mut set) = self.0.lock() {
            set.clear();
        }
    }

    pub(crate) fn insert(&self, key: [u8; 32]) {
        if let Ok(mut set) = self.0.lock() {
            if set.len() >= PLATFORM_CACHE_LIMIT {
                set.clear();
            }
            set.insert(key);
        }
    }
}

/// The Intel SGX TCB Signing chain of a TCB info or QE identity: its own, or the loaded one (PCS files).
fn tcb_signing_chain<'a>(doc: &'a SignedJson, chains: &'a [Vec<Certificate>]) -> Result<&'a [Certificate]> {
    match &doc.chain {
        Some(c) => Ok(c),
        None => chains
            .iter()
            .find(|c| c.first().is_some_and(|s| s.subject_cn() == "Intel SGX TCB Signing"))
            .map(Vec::as_slice)
            .ok_or_else(|| fail(format!("{}: no Intel SGX TCB Signing issuer chain", doc.source))),
    }
}

fn check_dates(what: &str, issue: UnixTime, next: UnixTime, at: UnixTime) -> Result<()> {
    if at < issue {
        return Err(fail(format!(
            "{what} not yet valid (issueDate {}, time {})",
            format_time(issue),
            format_time(at)
        )));
    }
    if at > next {
        return Err(fail(format!(
            "{what} expired (nextUpdate {}, time {})",
            format_time(next),
            format_time(at)
        )));
    }
    Ok(())
}

struct Window {
    from: UnixTime,
    until: UnixTime,
}

impl Window {
    fn dates(&mut self, from: UnixTime, until: UnixTime) {
        self.from = self.from.max(from);
        self.until = self.until.min(until);
    }
    fn cert(&mut self, c: &Certificate) {
        self.dates(c.not_before(), c.not_after());
    }
    fn crl(&mut self, c: &Crl) {
        // A CRL is current strictly before its nextUpdate.
        self.dates(c.this_update(), c.next_update().map_or(UnixTime::MIN, |n| n.saturating_sub(1)));
    }
}

/// A PCK issuing CA (Platform or Processor CA) verified to the root, with its verified CRL.
#[derive(Debug, Clone)]
pub(crate) struct VerifiedPckCa {
    pub(crate) ca: Certificate,
    pub(crate) crl: Crl,
}

/// Collateral whose signatures, chains and CRLs were all verified once. Quotes are then checked against it
/// with only their own three signatures, for any time in [`valid_from`, `valid_until`].
///
/// [`valid_from`]: VerifiedCollateral::valid_from
/// [`valid_until`]: VerifiedCollateral::valid_until
#[derive(Debug, Clone)]
pub struct VerifiedCollateral {
    pub(crate) root: Certificate,
    pub(crate) pck_cas: Vec<VerifiedPckCa>,
    pub(crate) tcb_infos: Vec<TcbInfo>,
    pub(crate) qe_identities: Vec<QeIdentity>,
    valid_from: UnixTime,
    valid_until: UnixTime,
    pub(crate) platform_signatures: PlatformSignatureCache,
}

impl VerifiedCollateral {
    /// Latest issue/notBefore/thisUpdate over everything verified.
    #[must_use]
    pub fn valid_from(&self) -> UnixTime {
        self.valid_from
    }
    /// Earliest expiry (nextUpdate/notAfter) over everything verified: re-fetch collateral before then.
    #[must_use]
    pub fn valid_until(&self) -> UnixTime {
        self.valid_until
    }
    /// The verified TCB infos (one per FMSPC).
    #[must_use]
    pub fn tcb_infos(&self) -> &[TcbInfo] {
        &self.tcb_infos
    }
    /// The verified QE identities.
    #[must_use]
    pub fn qe_identities(&self) -> &[QeIdentity] {
        &self.qe_identities
    }

    /// Forgets which platforms' PCK and QE report signatures were already verified, so the next quote of every
    /// platform is checked as if its platform were new (the collateral itself stays verified). For benchmarks
    /// of the "new platform, known FMSPC" case, and for callers that want to bound what they remember.
    pub fn forget_platforms(&self) {
        self.platform_signatures.clear();
    }

    /// Errors unless `at` is inside the collateral's validity window.
    ///
    /// # Errors
    /// "collateral expired" / "not yet valid" with both times.
    pub fn check_time(&self, at: UnixTime) -> Result<()> {
        if at > self.valid_until {
            return Err(fail(format!(
                "collateral expired (earliest nextUpdate/notAfter {}, time {})",
                format_time(self.valid_until),
                format_time(at)
            )));
        }
        if at < self.valid_from {
            return Err(fail(format!(
                "collateral not yet valid (latest issue {}, time {})",
                format_time(self.valid_from),
                format_time(at)
            )));
        }
        Ok(())
    }
}
