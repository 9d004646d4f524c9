//! Text encodings of certificates and CRLs: PEM (strict: exact BEGIN/END lines with matching labels, canonical
//! base64 bodies; text between blocks is ignored) and hex.
//!
//! The base64 and hex decoding itself is the `base64` and `hex` crates' (already dependencies for Azure and GPU
//! evidence): maintained, fuzzed decoders that are faster than a hand-written one and leave this module only the
//! PEM framing rules.

use base64::Engine as _;

use crate::Result;

use super::fail;

fn is_base64_space(c: u8) -> bool {
    // Whitespace (including vertical tab) between base64 characters carries nothing; anything else is refused.
    c.is_ascii_whitespace() || c == 0x0b
}

/// Strict base64 over several pieces (the lines of a PEM body): whitespace is dropped, then the rest must be
/// canonical standard base64 (padding only at the very end, no leftover bits), as the `base64` crate's
/// `STANDARD` engine requires.
pub(super) fn base64_decode_pieces<'a>(pieces: impl Iterator<Item = &'a [u8]> + Clone) -> Option<Vec<u8>> {
    let upper: usize = pieces.clone().map(<[u8]>::len).sum();
    let mut text = Vec::with_capacity(upper);
    for piece in pieces {
        text.extend(piece.iter().copied().filter(|&c| !is_base64_space(c)));
    }
    base64::engine::general_purpose::STANDARD.decode(&text).ok()
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

/// Decodes hex text (either case); `None` on an odd length or a non-hex byte.
pub(super) fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
        base64_decode_pieces(std::iter::once(text))
    }

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// The definition, one character at a time (this module's own decoder before the `base64` crate's): the
    /// oracle the crate-backed decoder must agree with on every input.
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
            let v = ALPHABET.iter().position(|&a| a == c)?;
            if pad > 0 {
                return None;
            }
            acc = (acc << 6) | u32::try_from(v).ok()?;
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

    /// The decoder and the per-character definition agree on random inputs split at random places:
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
                        ALPHABET[usize::try_from(r / 16 % 64).unwrap()]
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
