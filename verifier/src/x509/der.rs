//! A strict DER element reader over the bounds-checked [`Reader`], for the structures we walk ourselves
//! (CRLs, the Intel SGX extension of PCK certificates) instead of building a full parse tree of them.
//!
//! Strict means DER, not BER: low tag numbers only, definite lengths in their shortest form, INTEGERs without
//! a redundant leading byte. Errors name the element ("malformed revoked serial"); callers add where it was.

use sealroom_measurements::reader::Reader;

use crate::{Error, Result};

const LAYER: &str = "DER";

pub(crate) const BOOLEAN: u8 = 0x01;
pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const BIT_STRING: u8 = 0x03;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const OID: u8 = 0x06;
pub(crate) const ENUMERATED: u8 = 0x0a;
pub(crate) const UTC_TIME: u8 = 0x17;
pub(crate) const GENERALIZED_TIME: u8 = 0x18;
pub(crate) const SEQUENCE: u8 = 0x30;
/// `[0]`, constructed (an EXPLICIT tag).
pub(crate) const CONTEXT_0: u8 = 0xa0;

/// One DER element: its tag, its contents and its whole encoding.
#[derive(Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    pub(crate) contents: &'a [u8],
    pub(crate) raw: &'a [u8],
}

pub(crate) fn malformed(what: &str) -> Error {
    Error::check(LAYER, format!("malformed {what}"))
}

/// Reads one element in DER: a low tag number, a definite length in its shortest form.
pub(crate) fn read_tlv<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<Tlv<'a>> {
    let all = r.clone().rest();
    let short = Error::read(LAYER);
    let tag = r.u8(what).map_err(&short)?;
    if tag & 0x1f == 0x1f {
        return Err(malformed(what));
    }
    let first = r.u8(what).map_err(&short)?;
    let len = match first {
        0..=0x7f => usize::from(first),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            let bytes = r.take(n, what).map_err(&short)?;
            // Shortest form: no leading zero byte, and one length byte only for lengths of 128 and more.
            if bytes.first() == Some(&0) || (n == 1 && bytes.first().is_some_and(|&b| b < 0x80)) {
                return Err(malformed(what));
            }
            bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        }
        // Indefinite length (BER only) or a length that cannot fit.
        _ => return Err(malformed(what)),
    };
    let contents = r.take(len, what).map_err(&short)?;
    let used = all.len().saturating_sub(r.left());
    Ok(Tlv { tag, contents, raw: all.get(..used).ok_or_else(|| malformed(what))? })
}

/// Reads one element that must have `tag`.
pub(crate) fn expect<'a>(r: &mut Reader<'a>, tag: u8, what: &'static str) -> Result<Tlv<'a>> {
    let t = read_tlv(r, what)?;
    if t.tag != tag {
        return Err(malformed(what));
    }
    Ok(t)
}

/// The tag of the next element, if any.
pub(crate) fn peek_tag(r: &Reader<'_>) -> Option<u8> {
    r.clone().rest().first().copied()
}

/// Errors unless `r` was read to its end.
pub(crate) fn finish(r: &Reader<'_>, what: &'static str) -> Result<()> {
    if r.is_empty() { Ok(()) } else { Err(Error::check(LAYER, format!("trailing bytes in {what}"))) }
}

/// An INTEGER's (or ENUMERATED's) contents: at least one byte, no redundant leading byte.
pub(crate) fn integer<'a>(t: Tlv<'a>, what: &'static str) -> Result<&'a [u8]> {
    match t.contents {
        [] => Err(malformed(what)),
        [0x00, b, ..] if *b < 0x80 => Err(malformed(what)),
        [0xff, b, ..] if *b >= 0x80 => Err(malformed(what)),
        c => Ok(c),
    }
}

/// A non-negative INTEGER (or ENUMERATED) of at most 32 bits.
pub(crate) fn small_uint(t: Tlv<'_>, what: &'static str) -> Result<u32> {
    let c = integer(t, what)?;
    if c.first().is_some_and(|&b| b & 0x80 != 0) {
        return Err(malformed(what));
    }
    let c = c.strip_prefix(&[0]).unwrap_or(c);
    if c.len() > 4 {
        return Err(malformed(what));
    }
    Ok(c.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
}

/// An OBJECT IDENTIFIER's contents: base-128 arcs in their shortest form (no arc starts with 0x80), the last
/// one ended.
pub(crate) fn oid<'a>(t: Tlv<'a>, what: &'static str) -> Result<&'a [u8]> {
    let c = t.contents;
    let arc_starts = std::iter::once(&0u8).chain(c).zip(c);
    if t.tag != OID
        || c.last().is_none_or(|&b| b & 0x80 != 0)
        || arc_starts.clone().any(|(&prev, &b)| prev & 0x80 == 0 && b == 0x80)
    {
        return Err(malformed(what));
    }
    Ok(c)
}
