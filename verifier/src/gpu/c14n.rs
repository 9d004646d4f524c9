//! Canonical XML 1.1 without comments (W3C REC, `http://www.w3.org/2006/12/xml-c14n11`), the part XML-DSig
//! needs for NVIDIA's RIMs: a whole document minus one subtree (the enveloped-signature transform) and one
//! element in its document context (SignedInfo).
//!
//! Why our own (about 200 lines) and not a crate: the only Rust C14N implementation on crates.io is part of a
//! young single-maintainer XML-security suite that brings its own XML parser and crypto providers; the
//! subset needed here is small, fully exercised by NVIDIA's real signatures (a wrong byte breaks the
//! SHA-384 digest), and runs on `roxmltree`, which already rejects DTDs and entity expansion.
//!
//! What is rendered, per the recommendation: no XML declaration, DTD or comments; start and end tags for
//! empty elements; namespace declarations that differ from the parent element's in-scope namespaces
//! (all in-scope ones on the apex), default first, then by prefix; attributes sorted by namespace URI then
//! local name; `&<>"` and CR/TAB/LF escaped as the recommendation says. On a subtree apex the `xml:lang` and
//! `xml:space` of omitted ancestors are inherited (C14N 1.1 does not inherit `xml:id`).
//! Fail closed on what this subset does not handle: processing instructions, `xml:base`, nesting deeper than
//! [`MAX_DEPTH`].

use std::collections::BTreeMap;

use roxmltree::{Document, Node, NodeId, NodeType};

use crate::error::{Error, Result};

const LAYER: &str = "gpu rim";
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
/// Deepest element nesting rendered (a RIM is 4 deep; the renderer recurses).
pub const MAX_DEPTH: usize = 32;

fn fail(reason: impl Into<String>) -> Error {
    Error::check(LAYER, format!("canonicalisation: {}", reason.into()))
}

/// Canonicalises `apex` (the document node or an element) and everything below it, leaving out the subtree
/// rooted at `exclude`.
///
/// # Errors
/// On processing instructions, `xml:base`, or nesting deeper than [`MAX_DEPTH`].
pub fn canonicalize(doc: &Document<'_>, apex: Node<'_, '_>, exclude: Option<NodeId>) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(doc.input_text().len());
    let empty = BTreeMap::new();
    match apex.node_type() {
        NodeType::Root => {
            for child in apex.children() {
                match child.node_type() {
                    NodeType::Element => render_element(doc, child, &empty, exclude, &[], 0, &mut out)?,
                    NodeType::PI => return Err(fail("processing instructions are not supported")),
                    _ => {}
                }
            }
        }
        NodeType::Element => {
            let inherited = inherited_xml_attributes(apex);
            render_element(doc, apex, &empty, exclude, &inherited, 0, &mut out)?;
        }
        _ => return Err(fail("apex is neither the document nor an element")),
    }
    Ok(out)
}

/// An attribute as rendered: sort key (namespace URI, local name), qualified name, value.
struct Attr<'a> {
    uri: &'a str,
    local: &'a str,
    qname: &'a str,
    value: &'a str,
}

/// `xml:lang` and `xml:space` of the nearest omitted ancestors, for a subtree apex.
fn inherited_xml_attributes<'a>(apex: Node<'a, '_>) -> Vec<Attr<'a>> {
    let mut out: Vec<Attr<'a>> = Vec::new();
    for ancestor in apex.ancestors().skip(1).filter(Node::is_element) {
        for a in ancestor.attributes() {
            let inheritable = a.namespace() == Some(XML_NS) && matches!(a.name(), "lang" | "space");
            if inheritable
                && !out.iter().any(|o| o.local == a.name())
                && apex.attribute((XML_NS, a.name())).is_none()
            {
                let qname = if a.name() == "lang" { "xml:lang" } else { "xml:space" };
                out.push(Attr { uri: XML_NS, local: a.name(), qname, value: a.value() });
            }
        }
    }
    out
}

fn render_element<'a>(
    doc: &Document<'a>,
    node: Node<'_, 'a>,
    parent_ns: &BTreeMap<&str, &str>,
    exclude: Option<NodeId>,
    inherited: &[Attr<'_>],
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    if Some(node.id()) == exclude {
        return Ok(());
    }
    if depth >= MAX_DEPTH {
        return Err(fail(format!("elements nested deeper than {MAX_DEPTH}")));
    }
    let qname = element_qname(doc, node)?;
    // In-scope namespaces of this element ("" is the default namespace; an undeclared default is absent).
    let mut in_scope: BTreeMap<&str, &str> = BTreeMap::new();
    for ns in node.namespaces() {
        let prefix = ns.name().unwrap_or("");
        if prefix == "xml" || (prefix.is_empty() && ns.uri().is_empty()) {
            continue;
        }
        in_scope.insert(prefix, ns.uri());
    }
    out.push(b'<');
    out.extend_from_slice(qname.as_bytes());
    if !in_scope.contains_key("") && parent_ns.get("").is_some_and(|u| !u.is_empty()) {
        out.extend_from_slice(b" xmlns=\"\"");
    }
    for (prefix, uri) in &in_scope {
        if parent_ns.get(prefix) != Some(uri) {
            if prefix.is_empty() {
                out.extend_from_slice(b" xmlns=\"");
            } else {
                out.extend_from_slice(b" xmlns:");
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(b"=\"");
            }
            escape_attribute(uri, out);
            out.push(b'"');
        }
    }
    let mut attrs: Vec<Attr<'_>> = Vec::new();
    for a in node.attributes() {
        if a.namespace() == Some(XML_NS) && a.name() == "base" {
            return Err(fail("xml:base is not supported"));
        }
        let qname =
            doc.input_text().get(a.range_qname()).ok_or_else(|| fail("attribute name out of range"))?;
        attrs.push(Attr { uri: a.namespace().unwrap_or(""), local: a.name(), qname, value: a.value() });
    }
    attrs.extend(inherited.iter().map(|a| Attr {
        uri: a.uri,
        local: a.local,
        qname: a.qname,
        value: a.value,
    }));
    attrs.sort_by(|x, y| (x.uri, x.local).cmp(&(y.uri, y.local)));
    for a in &attrs {
        out.push(b' ');
        out.extend_from_slice(a.qname.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_attribute(a.value, out);
        out.push(b'"');
    }
    out.push(b'>');
    for child in node.children() {
        match child.node_type() {
            NodeType::Element => render_element(doc, child, &in_scope, exclude, &[], depth + 1, out)?,
            NodeType::Text => escape_text(child.text().unwrap_or_default(), out),
            NodeType::PI => return Err(fail("processing instructions are not supported")),
            NodeType::Comment | NodeType::Root => {}
        }
    }
    out.extend_from_slice(b"</");
    out.extend_from_slice(qname.as_bytes());
    out.push(b'>');
    Ok(())
}

/// The element's qualified name as written (roxmltree resolves prefixes; c14n keeps the one in the source).
fn element_qname<'a>(doc: &Document<'a>, node: Node<'_, 'a>) -> Result<&'a str> {
    let start = node.range().start.saturating_add(1);
    let rest = doc.input_text().get(start..).ok_or_else(|| fail("element name out of range"))?;
    let end = rest.find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>').unwrap_or(rest.len());
    let qname = rest.get(..end).unwrap_or_default();
    if qname.is_empty() || !qname.ends_with(node.tag_name().name()) {
        return Err(fail("element name does not match the source"));
    }
    Ok(qname)
}

fn escape_attribute(s: &str, out: &mut Vec<u8>) {
    for c in s.bytes() {
        match c {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            b'\t' => out.extend_from_slice(b"&#x9;"),
            b'\n' => out.extend_from_slice(b"&#xA;"),
            b'\r' => out.extend_from_slice(b"&#xD;"),
            other => out.push(other),
        }
    }
}

fn escape_text(s: &str, out: &mut Vec<u8>) {
    for c in s.bytes() {
        match c {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'\r' => out.extend_from_slice(b"&#xD;"),
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn c14n(xml: &str) -> String {
        let doc = Document::parse(xml).unwrap();
        String::from_utf8(canonicalize(&doc, doc.root(), None).unwrap()).unwrap()
    }

    #[test]
    fn renders_the_recommendation_rules() {
        // Declaration and comments dropped, empty elements expanded, attributes sorted by (URI, local name)
        // with unqualified ones first, superfluous namespace declarations dropped, escaping.
        let xml = "<?xml version=\"1.0\"?>\n<!-- c --><doc xmlns=\"urn:d\" xmlns:b=\"urn:b\" xmlns:a=\"urn:a\">\
            <e b:attr=\"sorted\" attr2=\"all\" a:attr=\"out\" attr=\"I'm\"/>\
            <e2 xmlns=\"urn:d\" xmlns:a=\"urn:a\"><e3 xmlns=\"\">x &amp; &lt;y&gt; \"q\"</e3></e2>\
            <e4 v=\"a&#x9;b&#10;c&amp;&lt;&quot;\"/></doc>";
        assert_eq!(
            c14n(xml),
            "<doc xmlns=\"urn:d\" xmlns:a=\"urn:a\" xmlns:b=\"urn:b\">\
             <e attr=\"I'm\" attr2=\"all\" a:attr=\"out\" b:attr=\"sorted\"></e>\
             <e2><e3 xmlns=\"\">x &amp; &lt;y&gt; \"q\"</e3></e2>\
             <e4 v=\"a&#x9;b&#xA;c&amp;&lt;&quot;\"></e4></doc>"
        );
    }

    #[test]
    fn subtree_apex_carries_in_scope_namespaces_and_inherited_xml_attributes() {
        let xml = "<r xmlns=\"urn:r\" xmlns:p=\"urn:p\" xml:lang=\"en\" xml:id=\"no\"><p:s xmlns:q=\"urn:q\"><p:t/></p:s><x/></r>";
        let doc = Document::parse(xml).unwrap();
        let s = doc.descendants().find(|n| n.has_tag_name(("urn:p", "s"))).unwrap();
        let out = String::from_utf8(canonicalize(&doc, s, None).unwrap()).unwrap();
        assert_eq!(
            out,
            "<p:s xmlns=\"urn:r\" xmlns:p=\"urn:p\" xmlns:q=\"urn:q\" xml:lang=\"en\"><p:t></p:t></p:s>"
        );
        // Excluding a subtree removes it and nothing else.
        let out = String::from_utf8(canonicalize(&doc, doc.root(), Some(s.id())).unwrap()).unwrap();
        assert_eq!(out, "<r xmlns=\"urn:r\" xmlns:p=\"urn:p\" xml:id=\"no\" xml:lang=\"en\"><x></x></r>");
    }

    #[test]
    fn refuses_what_the_subset_does_not_handle() {
        for xml in ["<r><?pi x?></r>", "<r xml:base=\"http://x/\"/>"] {
            let doc = Document::parse(xml).unwrap();
            assert!(canonicalize(&doc, doc.root(), None).is_err(), "{xml}");
        }
        let deep = format!("{}{}", "<a>".repeat(MAX_DEPTH + 1), "</a>".repeat(MAX_DEPTH + 1));
        let doc = Document::parse(&deep).unwrap();
        let err = canonicalize(&doc, doc.root(), None).unwrap_err().to_string();
        assert!(err.contains("nested deeper"), "{err}");
    }
}
