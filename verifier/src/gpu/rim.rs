//! NVIDIA Reference Integrity Manifests: SWID tags (ISO/IEC 19770-2, TCG RIM information model) listing the
//! golden SHA-384 of each GPU measurement index, signed with an enveloped XML-DSig signature.
//!
//! The signature is checked exactly as NVIDIA signs: `Reference URI=""` with the transforms
//! enveloped-signature then C14N 1.1, DigestMethod SHA-384, SignatureMethod ECDSA-SHA384 (`r || s`), and
//! SignedInfo canonicalised in its document context. To rule out signature wrapping there must be exactly one
//! `Signature` element, a child of the root, and every value this module returns is read from the document
//! the digest covered. The signing certificate chain (KeyInfo) is returned for [`super::verify`] to chain to
//! NVIDIA's pinned RIM root at the verification time.

use std::collections::BTreeMap;

use base64::Engine as _;
use roxmltree::{Document, Node, ParsingOptions};
use sha2::{Digest, Sha384};

use super::c14n::canonicalize;
use crate::error::{Error, Result};
use crate::x509::{Certificate, SignatureAlgorithm};

const LAYER: &str = "gpu rim";
/// Largest RIM accepted (NVIDIA's are about 20 KiB).
pub const MAX_RIM_LEN: usize = 1024 * 1024;
/// Most XML nodes parsed in one RIM.
const MAX_NODES: u32 = 20_000;

const SWID_NS: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
/// The namespace NVIDIA puts the `HashN` attributes in: the SHA-384 algorithm URI.
const SHA384_NS: &str = "http://www.w3.org/2001/04/xmlenc#sha384";
const C14N11: &str = "http://www.w3.org/2006/12/xml-c14n11";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
const DIGEST_SHA384: [&str; 2] = ["http://www.w3.org/2001/04/xmldsig-more#sha384", SHA384_NS];
/// Most alternatives one measurement may list.
const MAX_ALTERNATIVES: usize = 16;

fn fail(reason: impl Into<String>) -> Error {
    Error::check(LAYER, reason)
}

/// The golden values of one active measurement index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RimMeasurement {
    /// RIM index (SPDM block index - 1).
    pub index: u8,
    /// Acceptable digests (any one matches).
    pub alternatives: Vec<Vec<u8>>,
}

/// A RIM whose XML signature verified under the first KeyInfo certificate (the chain is not yet checked).
#[derive(Debug, Clone)]
pub struct Rim {
    /// SWID tagId.
    pub tag_id: String,
    /// Product (chip) this RIM describes, from `Meta product` ("GH100").
    pub product: String,
    /// Driver or VBIOS version, from `Meta colloquialVersion` ("545.00", "96.00.5E.00.01").
    pub version: String,
    /// Active measurements, by index.
    pub measurements: BTreeMap<u8, RimMeasurement>,
    /// KeyInfo certificates, signer first.
    pub signer_chain: Vec<Certificate>,
    /// SHA-256 of the RIM file, for audit records.
    pub file_sha256: [u8; 32],
}

impl Rim {
    /// Parses a RIM and verifies its XML signature with the embedded signing certificate.
    ///
    /// # Errors
    /// Malformed XML, a signature structure other than NVIDIA's, a digest or signature that does not verify,
    /// or SWID content that is incomplete or inconsistent.
    pub fn parse_signed(xml: &[u8]) -> Result<Self> {
        if xml.len() > MAX_RIM_LEN {
            return Err(fail(format!("{} bytes, at most {MAX_RIM_LEN}", xml.len())));
        }
        let text = std::str::from_utf8(xml).map_err(|e| fail(format!("not UTF-8: {e}")))?;
        let options =
            ParsingOptions { allow_dtd: false, nodes_limit: MAX_NODES, ..ParsingOptions::default() };
        let doc = Document::parse_with_options(text, options).map_err(|e| fail(format!("XML: {e}")))?;
        let root = doc.root_element();
        if !root.has_tag_name((SWID_NS, "SoftwareIdentity")) {
            return Err(fail("root element is not a SWID SoftwareIdentity"));
        }
        let signer_chain = verify_signature(&doc, root)?;
        let mut rim = parse_swid(root)?;
        rim.signer_chain = signer_chain;
        rim.file_sha256 = sha2::Sha256::digest(xml).into();
        Ok(rim)
    }
}

/// Checks the enveloped signature; returns the KeyInfo certificates.
fn verify_signature(doc: &Document<'_>, root: Node<'_, '_>) -> Result<Vec<Certificate>> {
    let signatures: Vec<Node<'_, '_>> =
        doc.descendants().filter(|n| n.has_tag_name((DSIG_NS, "Signature"))).collect();
    let [signature] = signatures.as_slice() else {
        return Err(fail(format!("{} Signature elements, expected exactly one", signatures.len())));
    };
    if signature.parent() != Some(root) {
        return Err(fail("Signature is not a child of the root element"));
    }
    let [signed_info, signature_value, key_info] = dsig_children(*signature, "Signature")?;
    expect_name(signed_info, "SignedInfo")?;
    expect_name(signature_value, "SignatureValue")?;
    expect_name(key_info, "KeyInfo")?;
    let [c14n_method, signature_method, reference] = dsig_children(signed_info, "SignedInfo")?;
    expect_algorithm(c14n_method, "CanonicalizationMethod", &[C14N11])?;
    expect_algorithm(signature_method, "SignatureMethod", &[ECDSA_SHA384])?;
    expect_name(reference, "Reference")?;
    if reference.attribute("URI") != Some("") {
        return Err(fail("Reference URI is not \"\" (the whole document)"));
    }
    let [transforms, digest_method, digest_value] = dsig_children(reference, "Reference")?;
    expect_name(transforms, "Transforms")?;
    let [enveloped, c14n] = dsig_children(transforms, "Transforms")?;
    expect_algorithm(enveloped, "Transform", &[ENVELOPED])?;
    expect_algorithm(c14n, "Transform", &[C14N11])?;
    expect_algorithm(digest_method, "DigestMethod", &DIGEST_SHA384)?;
    expect_name(digest_value, "DigestValue")?;
    let claimed_digest = base64_text(digest_value, "DigestValue")?;
    let signature_bytes = base64_text(signature_value, "SignatureValue")?;
    let [x509_data] = dsig_children(key_info, "KeyInfo")?;
    expect_name(x509_data, "X509Data")?;
    let mut chain = Vec::new();
    for cert in x509_data.children().filter(Node::is_element) {
        expect_name(cert, "X509Certificate")?;
        chain.push(Certificate::from_der(&base64_text(cert, "X509Certificate")?)?);
    }
    let signer = chain.first().ok_or_else(|| fail("KeyInfo holds no certificate"))?;

    let document = canonicalize(doc, doc.root(), Some(signature.id()))?;
    if Sha384::digest(&document).as_slice() != claimed_digest.as_slice() {
        return Err(fail("XML signature: document digest does not match DigestValue (the RIM was altered)"));
    }
    let signed = canonicalize(doc, signed_info, None)?;
    signer.public_key().verify(SignatureAlgorithm::EcdsaSha384Fixed, &signed, &signature_bytes).map_err(
        |_| fail(format!("XML signature: SignatureValue does not verify under '{}'", signer.subject_cn())),
    )?;
    Ok(chain)
}

/// The element children of `node` (text between them must be whitespace), exactly `N` of them.
fn dsig_children<'a, 'i, const N: usize>(node: Node<'a, 'i>, what: &str) -> Result<[Node<'a, 'i>; N]> {
    let mut out = Vec::with_capacity(N);
    for child in node.children() {
        if child.is_element() {
            if child.tag_name().namespace() != Some(DSIG_NS) {
                return Err(fail(format!("{what}: child outside the XML-DSig namespace")));
            }
            out.push(child);
        } else if child.is_text() && !child.text().unwrap_or_default().trim().is_empty() {
            return Err(fail(format!("{what}: unexpected text")));
        }
    }
    let found = out.len();
    out.try_into().map_err(|_| fail(format!("{what}: {found} child elements, expected {N}")))
}

fn expect_name(node: Node<'_, '_>, name: &str) -> Result<()> {
    if node.tag_name().name() == name {
        Ok(())
    } else {
        Err(fail(format!("expected {name}, found {}", node.tag_name().name())))
    }
}

fn expect_algorithm(node: Node<'_, '_>, name: &str, allowed: &[&str]) -> Result<()> {
    expect_name(node, name)?;
    if node.has_children() {
        return Err(fail(format!("{name} has content")));
    }
    let algorithm = node.attribute("Algorithm").unwrap_or_default();
    if allowed.contains(&algorithm) { Ok(()) } else { Err(fail(format!("{name} {algorithm:?} unsupported"))) }
}

fn base64_text(node: Node<'_, '_>, what: &str) -> Result<Vec<u8>> {
    let compact: String =
        node.text().unwrap_or_default().chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if node.children().count() > 1 {
        return Err(fail(format!("{what}: mixed content")));
    }
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| fail(format!("{what}: base64: {e}")))
}

/// Reads tagId, Meta and the Payload's active measurements.
fn parse_swid(root: Node<'_, '_>) -> Result<Rim> {
    let tag_id = root.attribute("tagId").ok_or_else(|| fail("SoftwareIdentity has no tagId"))?;
    let metas: Vec<_> = root.children().filter(|n| n.has_tag_name((SWID_NS, "Meta"))).collect();
    let [meta] = metas.as_slice() else {
        return Err(fail(format!("{} Meta elements, expected one", metas.len())));
    };
    let version = meta.attribute("colloquialVersion").ok_or_else(|| fail("Meta has no colloquialVersion"))?;
    let product = meta.attribute("product").ok_or_else(|| fail("Meta has no product"))?;
    let payloads: Vec<_> = root.children().filter(|n| n.has_tag_name((SWID_NS, "Payload"))).collect();
    let [payload] = payloads.as_slice() else {
        return Err(fail(format!("{} Payload elements, expected one", payloads.len())));
    };
    let mut measurements = BTreeMap::new();
    let mut indices = std::collections::BTreeSet::new();
    for resource in payload.children().filter(|n| n.has_tag_name((SWID_NS, "Resource"))) {
        if resource.attribute("type") != Some("Measurement") {
            continue;
        }
        let index: u8 = number(resource, "index")?;
        if !indices.insert(index) {
            return Err(fail(format!("measurement index {index} listed twice")));
        }
        match resource.attribute("active") {
            Some("True") => {}
            Some("False") => continue,
            other => return Err(fail(format!("index {index}: active {other:?} is neither True nor False"))),
        }
        let size: usize = number(resource, "size")?;
        let count: usize = number(resource, "alternatives")?;
        if size != 48 || count == 0 || count > MAX_ALTERNATIVES {
            return Err(fail(format!("index {index}: size {size} / {count} alternatives unsupported")));
        }
        let mut alternatives = Vec::with_capacity(count);
        for k in 0..count {
            let name = format!("Hash{k}");
            let value = resource
                .attribute((SHA384_NS, name.as_str()))
                .ok_or_else(|| fail(format!("index {index}: no {name}")))?;
            let digest = hex::decode(value).map_err(|e| fail(format!("index {index}: {name}: {e}")))?;
            if digest.len() != size {
                return Err(fail(format!(
                    "index {index}: {name} is {} bytes, size says {size}",
                    digest.len()
                )));
            }
            alternatives.push(digest);
        }
        measurements.insert(index, RimMeasurement { index, alternatives });
    }
    Ok(Rim {
        tag_id: tag_id.to_owned(),
        product: product.to_owned(),
        version: version.to_owned(),
        measurements,
        signer_chain: Vec::new(),
        file_sha256: [0; 32],
    })
}

fn number<T: std::str::FromStr>(node: Node<'_, '_>, name: &str) -> Result<T> {
    let text = node.attribute(name).ok_or_else(|| fail(format!("Resource has no {name}")))?;
    text.parse().map_err(|_| fail(format!("Resource {name} {text:?} is not a number in range")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DRIVER: &[u8] = include_bytes!("../../testdata/gpu/nvtrust/Driver_RIM_test_no_gpu.swidtag");
    const VBIOS: &[u8] =
        include_bytes!("../../testdata/gpu/nvtrust/1010_0200_882_96005E0001_test_no_gpu.swidtag");
    const PROD: &[u8] = include_bytes!("../../testdata/gpu/nvtrust/1010_0200_882_96005E0001_PROD.swidtag");

    #[test]
    fn nvidia_rim_signatures_verify_and_list_the_active_indices() {
        let driver = Rim::parse_signed(DRIVER).unwrap();
        assert_eq!((driver.product.as_str(), driver.version.as_str()), ("GH100", "545.00"));
        let active: Vec<u8> = driver.measurements.keys().copied().collect();
        assert_eq!(active, [7].into_iter().chain(21..=40).collect::<Vec<u8>>());
        assert_eq!(driver.measurements[&35].alternatives.len(), 2);
        assert_eq!(driver.signer_chain.len(), 4);
        for xml in [VBIOS, PROD] {
            let vbios = Rim::parse_signed(xml).unwrap();
            assert_eq!(vbios.version, "96.00.5E.00.01");
            let active: Vec<u8> = vbios.measurements.keys().copied().collect();
            assert_eq!(active, (0..=6).chain(8..=12).collect::<Vec<u8>>());
            assert_eq!(vbios.measurements[&12].alternatives.len(), 4);
        }
    }

    #[test]
    fn altered_rims_are_refused() {
        let text = std::str::from_utf8(DRIVER).unwrap();
        // A golden value changed: the digest no longer matches.
        let altered = text.replacen("0e0ee161b59bf124", "0e0ee161b59bf125", 1);
        let err = Rim::parse_signed(altered.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            err,
            "gpu rim: XML signature: document digest does not match DigestValue (the RIM was altered)"
        );
        // A second Signature element (wrapping attempt).
        let wrapped = text.replacen(
            "<ns0:Entity",
            "<ds:Signature xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\"/><ns0:Entity",
            1,
        );
        let err = Rim::parse_signed(wrapped.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("2 Signature elements"), "{err}");
        // A DTD.
        let dtd = format!("<!DOCTYPE x [<!ENTITY a \"b\">]>{text}");
        assert!(Rim::parse_signed(dtd.as_bytes()).is_err());
    }
}
