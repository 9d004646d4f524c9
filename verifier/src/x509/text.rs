//! Text encodings of certificates and CRLs: PEM (strict: exact BEGIN/END lines with matching labels, base64
//! bodies; text between blocks is ignored), base64 and hex.
//!
//! Decoding these is on the path of every cold DCAP collateral verification (three PEM chains and two hex CRLs
//! per collateral document, a PEM chain per quote), so the decoders work a group of characters at a time. They
//! accept exactly what the one-character-at-a-time definitions (kept in the tests as the oracle) accept.

use crate::Result;

use super::fail;

/// Base64 alphabet value of each byte; `INVALID` for every other byte.
const INVALID: u8 = 0xff;
#[allow(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    reason = "evaluated at compile time: an out-of-range index fails the build"
)]
const BASE64_VALUES: [u8; 256] = {
    let mut t = [INVALID; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut i = 0;
    while i < 64 {
        t[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    t
};

fn base64_value(c: u8) -> u8 {
    // A `u8` always indexes the 256-entry table; the fallback is never taken.
    BASE64_VALUES.get(usize::from(c)).copied().unwrap_or(INVALID)
}

fn is_base64_space(c: u8) -> bool {
    // Whitespace (including vertical tab) between base64 characters carries nothing; anything else is refused.
    c.is_ascii_whitespace() || c == 0x0b
}

/// Strict base64 over several pieces (the lines of a PEM body): canonical padding at the very end only, no
/// leftover bits, whitespace ignored. Aligned groups of four alphabet characters (all of a PEM line but its
/// padding) are decoded as one 24-bit word; anything else (whitespace, padding, a group split across pieces)
/// goes through the per-character definition, which the groups agree with.
pub(super) fn base64_decode_pieces<'a>(pieces: impl Iterator<Item = &'a [u8]> + Clone) -> Option<Vec<u8>> {
    let upper: usize = pieces.clone().map(<[u8]>::len).sum();
    let mut out = Vec::with_capacity(upper / 4 * 3 + 3);
    let (mut acc, mut bits, mut pad, mut significant) = (0u32, 0u32, 0usize, 0usize);
    for piece in pieces {
        let mut rest = piece;
        loop {
            // Whole groups while no bits are pending and no padding was seen: four characters, three bytes.
            if bits == 0 && pad == 0 {
                while let [a, b, c, d, tail @ ..] = rest {
                    let v = [base64_value(*a), base64_value(*b), base64_value(*c), base64_value(*d)];
                    // `INVALID` has the top bits set; alphabet values are below 64.
                    if (v[0] | v[1] | v[2] | v[3]) & 0xc0 != 0 {
                        break;
                    }
                    let word = v.iter().fold(0u32, |w, &x| (w << 6) | u32::from(x));
                    let [_, x, y, z] = word.to_be_bytes();
                    out.extend_from_slice(&[x, y, z]);
                    significant += 4;
                    rest = tail;
                }
            }
            let Some((&c, tail)) = rest.split_first() else { break };
            rest = tail;
            if is_base64_space(c) {
                continue;
            }
            significant += 1;
            if c == b'=' {
                pad += 1;
                continue;
            }
            // Data after padding, or a byte outside the alphabet.
            let v = base64_value(c);
            if pad > 0 || v == INVALID {
                return None;
            }
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
            }
        }
    }
    if !significant.is_multiple_of(4) || pad > 2 {
        return None;
    }
    // Leftover bits must be zero padding.
    if acc & ((1 << bits) - 1) != 0 {
        return None;
    }
    Some(out)
}

/// Every PEM block of `text` as (label, DER). Strict where lenient parsers let corruption through: a line
/// starting with five dashes must be exactly `-----BEGIN <L>-----` outside a block or `-----END <L>-----` with
/// the same label inside one, and bodies must be canonical base64.
///
/// # Errors
/// When a block is malformed or unterminated.
pub fn pem_blocks(text: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let text = std::str::from_utf8(text.strip_suffix(&[0]).unwrap_or(text))
        .map_err(|_| fail("PEM: not UTF-8 text"))?;
    let mut out = Vec::new();
    let mut open: Option<&str> = None;
    let mut body: Vec<&[u8]> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim_end();
        match open {
            None => {
                if let Some(rest) = line.strip_prefix("-----BEGIN ") {
                    let label = rest
                        .strip_suffix("-----")
                        .filter(|l| !l.contains('-'))
                        .ok_or_else(|| fail(format!("PEM: malformed BEGIN line {line:?}")))?;
                    open = Some(label);
                    body.clear();
                } else if line.starts_with("-----") {
                    return Err(fail(format!("PEM: unexpected line {line:?}")));
                }
            }
            Some(label) => {
                if line.starts_with("-----") {
                    let end_label = line.strip_prefix("-----END ").and_then(|l| l.strip_suffix("-----"));
                    if end_label != Some(label) {
                        return Err(fail(format!("PEM: malformed END line {line:?} for {label}")));
                    }
                    let der = base64_decode_pieces(body.iter().copied())
                        .ok_or_else(|| fail(format!("PEM: {label} body is not valid base64")))?;
                    out.push((label.to_owned(), der));
                    open = None;
                } else {
                    body.push(line.as_bytes());
                }
            }
        }
    }
    if let Some(label) = open {
        return Err(fail(format!("PEM: {label} block not terminated")));
    }
    Ok(out)
}

/// Hex digit value of each byte; `INVALID` for every other byte.
#[allow(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    reason = "evaluated at compile time: an out-of-range index fails the build"
)]
const HEX_VALUES: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut i = 0u8;
    while i < 10 {
        t[(b'0' + i) as usize] = i;
        i += 1;
    }
    let mut i = 0u8;
    while i < 6 {
        t[(b'a' + i) as usize] = 10 + i;
        t[(b'A' + i) as usize] = 10 + i;
        i += 1;
    }
    t
};

/// Decodes hex text (either case) with one table lookup per digit; `None` on an odd length or a non-hex byte.
pub(super) fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 2);
    for pair in text.chunks_exact(2) {
        let [hi, lo] = pair else { return None };
        let (hi, lo) = (*HEX_VALUES.get(usize::from(*hi))?, *HEX_VALUES.get(usize::from(*lo))?);
        if hi == INVALID || lo == INVALID {
            return None;
        }
        out.push((hi << 4) | lo);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
        base64_decode_pieces(std::iter::once(text))
    }

    /// The definition, one character at a time (the decoder before groups were decoded at once): the oracle
    /// the fast decoder must agree with on every input.
    fn base64_reference<'a>(pieces: impl Iterator<Item = &'a [u8]> + Clone) -> Option<Vec<u8>> {
        let significant: usize =
            pieces.clone().map(|p| p.iter().filter(|&&c| !is_base64_space(c)).count()).sum();
        if !significant.is_multiple_of(4) {
            return None;
        }
        let mut out = Vec::new();
        let (mut acc, mut bits, mut pad) = (0u32, 0u32, 0usize);
        for c in pieces.flat_map(|p| p.iter().copied()) {
            if is_base64_space(c) {
                continue;
            }
            if c == b'=' {
                pad += 1;
                continue;
            }
            let v = base64_value(c);
            if pad > 0 || v == INVALID {
                return None;
            }
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
            }
        }
        if pad > 2 || acc & ((1 << bits) - 1) != 0 {
            return None;
        }
        Some(out)
    }

    #[test]
    fn base64_examples() {
        assert_eq!(base64_decode(b"aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(base64_decode(b"aGVsbG9="), None, "leftover bits");
        assert_eq!(base64_decode(b"aGVs bG8\t="), Some(b"hello".to_vec()));
        assert_eq!(base64_decode(b"aGVsbG8=aGVs"), None, "data after padding");
        assert_eq!(base64_decode(b"aGVsbG8"), None, "not a multiple of four");
        assert_eq!(base64_decode(b"aGVs===="), None, "four padding characters");
        assert_eq!(base64_decode(b"aGV-bG8="), None, "outside the alphabet");
        assert_eq!(base64_decode(b""), Some(Vec::new()));
        let split = [&b"aG"[..], b"VsbG", b"8", b"="];
        assert_eq!(base64_decode_pieces(split.iter().copied()), Some(b"hello".to_vec()));
    }

    /// The group decoder and the per-character definition agree on random inputs split at random places:
    /// mostly alphabet characters, with padding, whitespace and bytes outside the alphabet mixed in.
    #[test]
    fn base64_groups_agree_with_the_definition() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let odd = [b'=', b' ', b'\n', b'\t', 0x0b, 0x0c, b'\r', b'-', b'_', 0, 0x80, 0xff, b'.'];
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let len = usize::try_from(next() % 40).unwrap();
            let rare = next() % 4;
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 16 < rare {
                        odd[usize::try_from(r / 16 % odd.len() as u64).unwrap()]
                    } else {
                        alphabet[usize::try_from(r / 16 % 64).unwrap()]
                    }
                })
                .collect();
            let mut cuts: Vec<usize> =
                (0..next() % 4).map(|_| usize::try_from(next()).unwrap() % (len + 1)).collect();
            cuts.push(0);
            cuts.push(len);
            cuts.sort_unstable();
            let pieces: Vec<&[u8]> = cuts.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            let fast = base64_decode_pieces(pieces.iter().copied());
            assert_eq!(
                fast,
                base64_reference(pieces.iter().copied()),
                "{:?}",
                String::from_utf8_lossy(&text)
            );
            if fast.is_some() { accepted += 1 } else { refused += 1 }
        }
        // Both outcomes were exercised many times.
        assert!(accepted > 1000 && refused > 1000, "accepted {accepted}, refused {refused}");
    }

    #[test]
    fn pem_is_strict() {
        assert!(pem_blocks(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE--2--\n").is_err());
        assert!(pem_blocks(b"-----BEGIN CERTIFICATE-----\nAAAA\n").is_err());
        assert!(pem_blocks(b"-----BEGIN CERTIFICATE-----\nAA=A\n-----END CERTIFICATE-----\n").is_err());
        let blocks = pem_blocks(b"x\n-----BEGIN A-----\naGVs\nbG8=\n-----END A-----\n").unwrap();
        assert_eq!(blocks, vec![("A".to_owned(), b"hello".to_vec())]);
    }

    #[test]
    fn hex_is_strict() {
        assert_eq!(decode_hex(b"00fFa0"), Some(vec![0, 0xff, 0xa0]));
        assert_eq!(decode_hex(b"0"), None);
        assert_eq!(decode_hex(b"0g"), None);
    }
}
