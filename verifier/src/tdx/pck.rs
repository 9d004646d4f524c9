//! The Intel SGX extension (OID 1.2.840.113741.1.13.1) of PCK certificates: the platform's TCB (16 SGX
//! component SVNs, PCESVN, CPUSVN), PCE-ID and FMSPC, which select and match the TCB info.

use sealroom_measurements::reader::Reader;

use crate::x509::Certificate;
use crate::x509::der::{self, Tlv};
use crate::{Error, Result};

const LAYER: &str = "tdx pck";
const SGX_EXTENSION: &str = "1.2.840.113741.1.13.1";

// The OIDs inside the extension, as their DER content bytes: compared as bytes rather than formatted as dotted
// strings for every entry of every PCK certificate (a test checks each against its dotted form).
/// 1.2.840.113741.1.13.1 (the SGX extension; every OID below extends it).
const SGX_OID: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf8, 0x4d, 0x01, 0x0d, 0x01];
/// 1.2.840.113741.1.13.1.2: TCB; its component n (1..=16) is .2.n, PCESVN .2.17, CPUSVN .2.18.
const TCB: [u8; 10] = oid_under(2);
const PCEID: [u8; 10] = oid_under(3);
const FMSPC: [u8; 10] = oid_under(4);
const SGX_TYPE: [u8; 10] = oid_under(5);
const PCESVN_ARC: u8 = 17;
const CPUSVN_ARC: u8 = 18;

#[allow(
    clippy::indexing_slicing,
    reason = "evaluated at compile time: an out-of-range index fails the build"
)]
const fn oid_under(arc: u8) -> [u8; 10] {
    let mut out = [arc; 10];
    let mut i = 0;
    while i < SGX_OID.len() {
        out[i] = SGX_OID[i];
        i += 1;
    }
    out
}

/// The arc of an OID directly under TCB (1.2.840.113741.1.13.1.2.n, n < 128), if it is one.
fn tcb_arc(oid: &[u8]) -> Option<u8> {
    match oid.strip_prefix(&TCB) {
        Some(&[n]) if n < 0x80 => Some(n),
        _ => None,
    }
}

/// What a PCK certificate says about its platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PckExtension {
    /// SGX TCB component SVNs 1..16.
    pub sgx_tcb_components: [u8; 16],
    /// PCE SVN.
    pub pce_svn: u16,
    /// CPUSVN.
    pub cpu_svn: [u8; 16],
    /// PCE-ID.
    pub pce_id: [u8; 2],
    /// FMSPC: family-model-stepping-platform-customSKU, selects the TCB info.
    pub fmspc: [u8; 6],
    /// SGX type (0 standard, 1 scalable, 2 scalable with integrity).
    pub sgx_type: u32,
}

fn fail(reason: impl Into<String>) -> Error {
    Error::check(LAYER, reason)
}

/// `SEQUENCE OF SEQUENCE { OID, value }` (the extension and its TCB part), each value checked to be well formed
/// DER all the way down.
fn entries<'a>(t: Tlv<'a>, what: &'static str) -> Result<Vec<(&'a [u8], Tlv<'a>)>> {
    if t.tag != der::SEQUENCE {
        return Err(fail(format!("SGX extension: {what} is not a SEQUENCE")));
    }
    let mut r = Reader::new(t.contents);
    let mut out = Vec::with_capacity(20);
    while !r.is_empty() {
        let item = der::read_tlv(&mut r, what).map_err(|e| e.within(LAYER, "SGX extension"))?;
        if item.tag != der::SEQUENCE {
            return Err(fail(format!("SGX extension: {what} entry is not a SEQUENCE")));
        }
        let mut e = Reader::new(item.contents);
        let pair = |e: &mut Reader<'a>| der::read_tlv(e, what).ok();
        let (Some(oid), Some(value), true) = (pair(&mut e), pair(&mut e), e.is_empty()) else {
            return Err(fail(format!("SGX extension: {what} entry is not (OID, value)")));
        };
        let oid = der::oid(oid, what).map_err(|_| fail(format!("SGX extension: {what} entry has no OID")))?;
        well_formed(value, 0).map_err(|e| e.within(LAYER, "SGX extension"))?;
        out.push((oid, value));
    }
    Ok(out)
}

/// Intel's SGX extension holds SEQUENCEs, OIDs, OCTET STRINGs, INTEGERs, ENUMERATEDs and BOOLEANs: each is
/// checked for form (unused entries too, so nothing malformed passes unread). Nesting is bounded.
fn well_formed(t: Tlv<'_>, depth: usize) -> Result<()> {
    match t.tag {
        der::SEQUENCE if depth < 8 => {
            let mut r = Reader::new(t.contents);
            while !r.is_empty() {
                well_formed(der::read_tlv(&mut r, "SGX extension value")?, depth + 1)?;
            }
            Ok(())
        }
        der::OID => der::oid(t, "SGX extension OID").map(drop),
        der::OCTET_STRING => Ok(()),
        der::INTEGER | der::ENUMERATED => der::integer(t, "SGX extension integer").map(drop),
        der::BOOLEAN if matches!(t.contents, [0x00 | 0xff]) => Ok(()),
        _ => Err(der::malformed("SGX extension value")),
    }
}

fn octets<const N: usize>(v: Tlv<'_>, what: &str) -> Result<[u8; N]> {
    if v.tag != der::OCTET_STRING {
        return Err(fail(format!("SGX extension: {what} is not an OCTET STRING")));
    }
    v.contents
        .try_into()
        .map_err(|_| fail(format!("SGX extension: {what} is {} bytes, expected {N}", v.contents.len())))
}

fn small_uint(v: Tlv<'_>, tag: u8, what: &'static str) -> Result<u32> {
    let kind = if tag == der::ENUMERATED { "an ENUMERATED" } else { "a small INTEGER" };
    if v.tag != tag {
        return Err(fail(format!("SGX extension: {what} is not {kind}")));
    }
    der::small_uint(v, what).map_err(|_| fail(format!("SGX extension: {what} is not {kind}")))
}

impl PckExtension {
    /// Reads the SGX extension of a PCK leaf certificate.
    ///
    /// # Errors
    /// When the extension is missing, malformed, or lacks a required field.
    pub fn from_certificate(cert: &Certificate) -> Result<Self> {
        let ext = cert
            .extension(SGX_EXTENSION)
            .ok_or_else(|| fail(format!("certificate '{}' has no SGX extension", cert.subject_cn())))?;
        Self::from_der(&ext.value)
    }

    /// Reads the extension's value: `SEQUENCE OF SEQUENCE { OID, value }`, the TCB entry itself such a list.
    /// A strict DER walk (no parse tree): this runs for every quote.
    fn from_der(value: &[u8]) -> Result<Self> {
        let mut r = Reader::new(value);
        let top = der::read_tlv(&mut r, "SGX extension").map_err(|e| e.within(LAYER, "SGX extension"))?;
        if !r.is_empty() {
            return Err(fail("SGX extension: trailing bytes"));
        }
        let mut sgx_tcb_components: Option<[u8; 16]> = None;
        let mut pce_svn = None;
        let mut cpu_svn = None;
        let mut pce_id = None;
        let mut fmspc = None;
        let mut sgx_type = None;
        for (oid, value) in entries(top, "extension")? {
            match oid {
                o if o == TCB => {
                    let mut comps = [None::<u8>; 16];
                    for (tcb_oid, v) in entries(value, "TCB")? {
                        let arc = tcb_arc(tcb_oid);
                        if arc == Some(PCESVN_ARC) {
                            pce_svn = Some(
                                u16::try_from(small_uint(v, der::INTEGER, "PCESVN")?)
                                    .map_err(|_| fail("SGX extension: PCESVN > 65535"))?,
                            );
                        } else if arc == Some(CPUSVN_ARC) {
                            cpu_svn = Some(octets::<16>(v, "CPUSVN")?);
                        } else if let Some(n) = arc.map(usize::from)
                            && (1..=16).contains(&n)
                        {
                            let svn = u8::try_from(small_uint(v, der::INTEGER, "TCB component SVN")?)
                                .map_err(|_| fail(format!("SGX extension: TCB component {n} SVN > 255")))?;
                            if let Some(slot) = comps.get_mut(n - 1) {
                                *slot = Some(svn);
                            }
                        }
                    }
                    let mut all = [0u8; 16];
                    for (i, (dst, src)) in all.iter_mut().zip(comps).enumerate() {
                        *dst = src
                            .ok_or_else(|| fail(format!("SGX extension: TCB component {} missing", i + 1)))?;
                    }
                    sgx_tcb_components = Some(all);
                }
                o if o == PCEID => pce_id = Some(octets::<2>(value, "PCE-ID")?),
                o if o == FMSPC => fmspc = Some(octets::<6>(value, "FMSPC")?),
                o if o == SGX_TYPE => sgx_type = Some(small_uint(value, der::ENUMERATED, "SGX type")?),
                _ => {}
            }
        }
        Ok(Self {
            sgx_tcb_components: sgx_tcb_components.ok_or_else(|| fail("SGX extension: TCB missing"))?,
            pce_svn: pce_svn.ok_or_else(|| fail("SGX extension: PCESVN missing"))?,
            cpu_svn: cpu_svn.ok_or_else(|| fail("SGX extension: CPUSVN missing"))?,
            pce_id: pce_id.ok_or_else(|| fail("SGX extension: PCE-ID missing"))?,
            fmspc: fmspc.ok_or_else(|| fail("SGX extension: FMSPC missing"))?,
            sgx_type: sgx_type.ok_or_else(|| fail("SGX extension: SGX type missing"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use x509_parser::der_parser::ber::BerObject;
    use x509_parser::der_parser::der::parse_der;
    use x509_parser::der_parser::oid::Oid;

    use super::*;

    fn pairs<'a>(obj: &'a BerObject<'a>, what: &str) -> Result<Vec<(&'a [u8], &'a BerObject<'a>)>> {
        let seq = obj.as_sequence().map_err(|_| fail(format!("SGX extension: {what} is not a SEQUENCE")))?;
        let mut out = Vec::with_capacity(seq.len());
        for item in seq {
            let inner = item
                .as_sequence()
                .map_err(|_| fail(format!("SGX extension: {what} entry is not a SEQUENCE")))?;
            let (Some(oid), Some(value), None) = (inner.first(), inner.get(1), inner.get(2)) else {
                return Err(fail(format!("SGX extension: {what} entry is not (OID, value)")));
            };
            let oid = oid.as_oid().map_err(|_| fail(format!("SGX extension: {what} entry has no OID")))?;
            out.push((oid.as_bytes(), value));
        }
        Ok(out)
    }

    fn octets<const N: usize>(v: &BerObject<'_>, what: &str) -> Result<[u8; N]> {
        let s = v.as_slice().map_err(|_| fail(format!("SGX extension: {what} is not an OCTET STRING")))?;
        s.try_into().map_err(|_| fail(format!("SGX extension: {what} is {} bytes, expected {N}", s.len())))
    }

    fn small_uint(v: &BerObject<'_>, what: &str) -> Result<u32> {
        v.as_u32().map_err(|_| fail(format!("SGX extension: {what} is not a small INTEGER")))
    }

    /// The reading before the DER walk (der-parser's parse tree): the oracle.
    fn oracle(value: &[u8]) -> Result<PckExtension> {
        let (rest, obj) = parse_der(value).map_err(|e| fail(format!("SGX extension: {e}")))?;
        if !rest.is_empty() {
            return Err(fail("SGX extension: trailing bytes"));
        }
        let mut sgx_tcb_components: Option<[u8; 16]> = None;
        let mut pce_svn = None;
        let mut cpu_svn = None;
        let mut pce_id = None;
        let mut fmspc = None;
        let mut sgx_type = None;
        for (oid, value) in pairs(&obj, "extension")? {
            match oid {
                o if o == TCB => {
                    let mut comps = [None::<u8>; 16];
                    for (tcb_oid, v) in pairs(value, "TCB")? {
                        let arc = tcb_arc(tcb_oid);
                        if arc == Some(PCESVN_ARC) {
                            pce_svn = Some(
                                u16::try_from(small_uint(v, "PCESVN")?)
                                    .map_err(|_| fail("SGX extension: PCESVN > 65535"))?,
                            );
                        } else if arc == Some(CPUSVN_ARC) {
                            cpu_svn = Some(octets::<16>(v, "CPUSVN")?);
                        } else if let Some(n) = arc.map(usize::from)
                            && (1..=16).contains(&n)
                        {
                            let svn = u8::try_from(small_uint(v, "TCB component SVN")?)
                                .map_err(|_| fail(format!("SGX extension: TCB component {n} SVN > 255")))?;
                            if let Some(slot) = comps.get_mut(n - 1) {
                                *slot = Some(svn);
                            }
                        }
                    }
                    let mut all = [0u8; 16];
                    for (i, (dst, src)) in all.iter_mut().zip(comps).enumerate() {
                        *dst = src
                            .ok_or_else(|| fail(format!("SGX extension: TCB component {} missing", i + 1)))?;
                    }
                    sgx_tcb_components = Some(all);
                }
                o if o == PCEID => pce_id = Some(octets::<2>(value, "PCE-ID")?),
                o if o == FMSPC => fmspc = Some(octets::<6>(value, "FMSPC")?),
                o if o == SGX_TYPE => {
                    sgx_type = Some(
                        value.as_u32().map_err(|_| fail("SGX extension: SGX type is not an ENUMERATED"))?,
                    );
                }
                _ => {}
            }
        }
        Ok(PckExtension {
            sgx_tcb_components: sgx_tcb_components.ok_or_else(|| fail("SGX extension: TCB missing"))?,
            pce_svn: pce_svn.ok_or_else(|| fail("SGX extension: PCESVN missing"))?,
            cpu_svn: cpu_svn.ok_or_else(|| fail("SGX extension: CPUSVN missing"))?,
            pce_id: pce_id.ok_or_else(|| fail("SGX extension: PCE-ID missing"))?,
            fmspc: fmspc.ok_or_else(|| fail("SGX extension: FMSPC missing"))?,
            sgx_type: sgx_type.ok_or_else(|| fail("SGX extension: SGX type missing"))?,
        })
    }

    #[test]
    fn oid_bytes_are_the_dotted_oids() {
        let der = |dotted: &str| Oid::from_str(dotted).unwrap().as_bytes().to_vec();
        assert_eq!(der(SGX_EXTENSION), SGX_OID);
        assert_eq!(der("1.2.840.113741.1.13.1.2"), TCB);
        assert_eq!(der("1.2.840.113741.1.13.1.3"), PCEID);
        assert_eq!(der("1.2.840.113741.1.13.1.4"), FMSPC);
        assert_eq!(der("1.2.840.113741.1.13.1.5"), SGX_TYPE);
        assert_eq!(tcb_arc(&der("1.2.840.113741.1.13.1.2.17")), Some(PCESVN_ARC));
        assert_eq!(tcb_arc(&der("1.2.840.113741.1.13.1.2.18")), Some(CPUSVN_ARC));
        assert_eq!(tcb_arc(&der("1.2.840.113741.1.13.1.2.1")), Some(1));
        assert_eq!(tcb_arc(&der("1.2.840.113741.1.13.1.2.200")), None);
        assert_eq!(tcb_arc(&der("1.2.840.113741.1.13.1.2.1.1")), None);
        assert_eq!(tcb_arc(&der("1.2.840.113741.1.13.1.3")), None);
    }

    /// The SGX extensions of the real PCK certificates in the dcap-qvl quotes, and of a test-PKI one.
    fn samples() -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tdx/dcap-qvl");
        let mut out = Vec::new();
        for f in ["tdx_quote", "sgx_quote", "tdx_quote_outdated"] {
            let bytes = std::fs::read(dir.join(f)).unwrap();
            let quote = crate::tdx::Quote::parse(&bytes).unwrap();
            let chain = Certificate::chain_from_pem(quote.certification_data).unwrap();
            out.push((f.to_owned(), chain[0].extension(SGX_EXTENSION).unwrap().value.clone()));
        }
        let tcb = crate::tdx::test_pki::PlatformTcb::up_to_date();
        out.push(("test PKI".to_owned(), tcb.sgx_extension(&[7; 16])));
        out
    }

    #[test]
    fn reads_real_extensions_as_der_parser_does() {
        for (name, value) in samples() {
            let ours = PckExtension::from_der(&value).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(ours, oracle(&value).unwrap(), "{name}");
        }
    }

    /// Truncated and single-byte-mutated extensions: whatever the DER walk accepts, der-parser's reading
    /// accepts with the same result. (The walk is stricter in places: SVNs must be INTEGERs, octet fields
    /// OCTET STRINGs, the SGX type an ENUMERATED, lengths and integers in their shortest form.)
    #[test]
    fn accepts_nothing_der_parser_refuses() {
        let (mut tried, mut accepted) = (0, 0);
        for (name, value) in samples() {
            let mut cases: Vec<Vec<u8>> = (0..value.len()).map(|n| value[..n].to_vec()).collect();
            for i in 0..value.len() {
                for v in [value[i] ^ 0x01, value[i] ^ 0x80, 0xff, value[i].wrapping_add(1)] {
                    let mut m = value.clone();
                    m[i] = v;
                    cases.push(m);
                }
            }
            for case in cases {
                tried += 1;
                if let Ok(ours) = PckExtension::from_der(&case) {
                    accepted += 1;
                    assert_eq!(Some(ours), oracle(&case).ok(), "{name}: {}", hex::encode(&case));
                }
            }
        }
        assert!(accepted > 100 && tried > 2_000, "tried {tried}, accepted {accepted}");
    }
}
