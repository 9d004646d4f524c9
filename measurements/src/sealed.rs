//! Sealed inputs and sealed outputs: the byte formats a party without a key broker uses to send a file that only
//! one attested agent instance can read (`sealroom seal`, gRPC `Attestation.SubmitInput`), and the agent uses to
//! return an output archive that only the owner of a reply key can read (`sealroom open`).
//!
//! Only the formats live here (bounds-checked parsing, canonical encoding, the HPKE `info` and `aad` each format
//! binds); the HPKE operations (RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) are
//! done by the agent and the host tool with the crate both already use. All integers are big-endian.
//!
//! ```text
//! sealed input   = "SRSEALI1" || u8 name length || name || TEE key (32) || reply key (32) || enc (32)
//!                  || u32 ciphertext length || ciphertext
//!   info = "sealroom.sealed-input.v1" || 0x00 || name || 0x00 || reply key
//!   aad  = everything before the ciphertext length (magic, name, TEE key, reply key, enc)
//! sealed output  = "SRSEALO1" || reply key (32) || output digest (32) || enc (32)
//!                  || u32 ciphertext length || ciphertext            (plaintext: an archive)
//!   info = "sealroom.sealed-output.v1"
//!   aad  = everything before the ciphertext length
//! archive        = "SRARCHV1" || u32 file count || (u16 path length || path || u32 size || bytes)*
//! ```
//!
//! The TEE key in a sealed input names the agent instance it was sealed to, so an agent refuses an envelope for
//! another instance with a reason before trying to open it (HPKE would fail anyway: the key schedule binds the
//! recipient key). The name and the reply key are bound through `info`, so neither can be swapped without the
//! ciphertext failing to open. An archive lists regular files by relative path in the order and with the
//! digest of [`crate::output`]: [`Archive::digest`] is the output digest of the directory it unpacks to.
//! Every parser refuses trailing bytes.

use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::reader::Reader;

/// Magic of a sealed input envelope.
pub const INPUT_MAGIC: &[u8; 8] = b"SRSEALI1";
/// Magic of a sealed output envelope.
pub const OUTPUT_MAGIC: &[u8; 8] = b"SRSEALO1";
/// Magic of the archive inside a sealed output.
pub const ARCHIVE_MAGIC: &[u8; 8] = b"SRARCHV1";
/// HPKE `info` prefix of a sealed input.
pub const INPUT_INFO: &[u8] = b"sealroom.sealed-input.v1";
/// HPKE `info` of a sealed output.
pub const OUTPUT_INFO: &[u8] = b"sealroom.sealed-output.v1";
/// Longest input name.
pub const MAX_NAME_LEN: usize = 64;
/// Largest sealed input plaintext (60 KiB: an envelope then fits one request of the agent's 64 KiB request
/// limit; records, prompts and feature vectors, not datasets, which take the key broker's path).
pub const MAX_INPUT_BYTES: usize = 60 << 10;
/// Largest archive inside a sealed output (the agent's result export limit).
pub const MAX_ARCHIVE_BYTES: usize = 256 << 20;
/// Most files in an archive (as [`crate::output::MAX_FILES`]).
pub const MAX_ARCHIVE_FILES: usize = crate::output::MAX_FILES;
/// Longest path in an archive.
pub const MAX_PATH_LEN: usize = 4096;
/// AES-256-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Length of an X25519 public key, and of an X25519 HPKE `enc`.
pub const X25519_LEN: usize = 32;

const INPUT_LAYER: &str = "sealed input";
const OUTPUT_LAYER: &str = "sealed output";
const ARCHIVE_LAYER: &str = "output archive";

/// An X25519 public key as text: `x25519:<64 lower-case hex digits>` (how the spec, events and files name it).
#[must_use]
pub fn key_text(key: &[u8; X25519_LEN]) -> String {
    format!("x25519:{}", hex::encode(key))
}

/// Parses `x25519:<hex>` (surrounding whitespace ignored).
///
/// # Errors
/// Any other shape.
pub fn parse_key_text(text: &str) -> Result<[u8; X25519_LEN]> {
    let t = text.trim();
    let hex_part = t.strip_prefix("x25519:").ok_or_else(|| {
        Error::invalid("reply key", "prefix", format!("{:?} is not x25519:<hex>", short(t)))
    })?;
    let mut out = [0u8; X25519_LEN];
    let lower = hex_part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !lower || hex::decode_to_slice(hex_part, &mut out).is_err() {
        return Err(Error::invalid("reply key", "value", "expected 64 lower-case hex digits after x25519:"));
    }
    Ok(out)
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Checks a sealed input name: 1..=64 of `[a-z0-9._-]`, not starting with `.` (it becomes `/input/<name>`).
///
/// # Errors
/// A one-line reason.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            INPUT_LAYER,
            "name",
            format!("{:?}: use 1..={MAX_NAME_LEN} of [a-z0-9._-], not starting with '.'", short(name)),
        ))
    }
}

fn take_key(r: &mut Reader<'_>, layer: &'static str, what: &'static str) -> Result<[u8; X25519_LEN]> {
    r.take_array(what).map_err(Error::malformed(layer))
}

fn take_ciphertext(r: &mut Reader<'_>, layer: &'static str, max_plain: usize) -> Result<Vec<u8>> {
    let len = Reader::len_u32(r.u32_be("ciphertext length").map_err(Error::malformed(layer))?);
    if len < TAG_LEN || len > max_plain.saturating_add(TAG_LEN) {
        return Err(Error::invalid(
            layer,
            "ciphertext length",
            format!("{len} bytes, expected {TAG_LEN}..={}", max_plain.saturating_add(TAG_LEN)),
        ));
    }
    let ct = r.take(len, "ciphertext").map_err(Error::malformed(layer))?.to_vec();
    r.finish(layer).map_err(Error::malformed(layer))?;
    Ok(ct)
}

fn put_ciphertext(out: &mut Vec<u8>, ct: &[u8]) {
    out.extend_from_slice(&u32::try_from(ct.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(ct);
}

/// A sealed input envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedInput {
    /// The input's name (mounted at `/input/<name>`).
    pub name: String,
    /// The agent's TEE public key it is sealed to.
    pub tee_key: [u8; X25519_LEN],
    /// The sender's reply key (X25519 public key).
    pub reply_key: [u8; X25519_LEN],
    /// HPKE `enc`.
    pub enc: [u8; X25519_LEN],
    /// AEAD ciphertext with tag.
    pub ciphertext: Vec<u8>,
}

impl SealedInput {
    /// Parses an envelope.
    ///
    /// # Errors
    /// Wrong magic, a bad name, a truncated field, a ciphertext over [`MAX_INPUT_BYTES`] + tag, trailing bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let magic: [u8; 8] = r.take_array("magic").map_err(Error::malformed(INPUT_LAYER))?;
        if &magic != INPUT_MAGIC {
            return Err(Error::invalid(INPUT_LAYER, "magic", "not a sealed input (expected SRSEALI1)"));
        }
        let n = usize::from(r.u8("name length").map_err(Error::malformed(INPUT_LAYER))?);
        let raw = r.take(n, "name").map_err(Error::malformed(INPUT_LAYER))?;
        let name = std::str::from_utf8(raw)
            .map_err(|_| Error::invalid(INPUT_LAYER, "name", "not UTF-8"))?
            .to_owned();
        check_name(&name)?;
        let tee_key = take_key(&mut r, INPUT_LAYER, "TEE key")?;
        let reply_key = take_key(&mut r, INPUT_LAYER, "reply key")?;
        let enc = take_key(&mut r, INPUT_LAYER, "enc")?;
        let ciphertext = take_ciphertext(&mut r, INPUT_LAYER, MAX_INPUT_BYTES)?;
        Ok(Self { name, tee_key, reply_key, enc, ciphertext })
    }

    /// The header: the HPKE `aad`.
    #[must_use]
    pub fn aad(&self) -> Vec<u8> {
        let mut out = INPUT_MAGIC.to_vec();
        out.push(u8::try_from(self.name.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&self.tee_key);
        out.extend_from_slice(&self.reply_key);
        out.extend_from_slice(&self.enc);
        out
    }

    /// The HPKE `info` (binds the name and the reply key).
    #[must_use]
    pub fn info(&self) -> Vec<u8> {
        input_info(&self.name, &self.reply_key)
    }

    /// The envelope's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.aad();
        put_ciphertext(&mut out, &self.ciphertext);
        out
    }
}

/// The HPKE `info` of a sealed input named `name` with reply key `reply_key` (needed before sealing, when there
/// is no envelope yet).
#[must_use]
pub fn input_info(name: &str, reply_key: &[u8; X25519_LEN]) -> Vec<u8> {
    let mut out = INPUT_INFO.to_vec();
    out.push(0);
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.extend_from_slice(reply_key);
    out
}

/// The `aad` of a sealed input with these fields (a sender computes it once HPKE's encapsulation gave `enc`).
#[must_use]
pub fn input_aad(name: &str, tee_key: &[u8; 32], reply_key: &[u8; 32], enc: &[u8; 32]) -> Vec<u8> {
    SealedInput {
        name: name.to_owned(),
        tee_key: *tee_key,
        reply_key: *reply_key,
        enc: *enc,
        ciphertext: Vec::new(),
    }
    .aad()
}

/// A sealed output envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedOutput {
    /// The reply key it is sealed to.
    pub reply_key: [u8; X25519_LEN],
    /// The output digest (SHA-256 of the listing) the archive unpacks to, as measured and named in receipts.
    pub output_digest: [u8; 32],
    /// HPKE `enc`.
    pub enc: [u8; X25519_LEN],
    /// AEAD ciphertext of an [`Archive`].
    pub ciphertext: Vec<u8>,
}

impl SealedOutput {
    /// Parses an envelope.
    ///
    /// # Errors
    /// Wrong magic, a truncated field, an oversized ciphertext, trailing bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let magic: [u8; 8] = r.take_array("magic").map_err(Error::malformed(OUTPUT_LAYER))?;
        if &magic != OUTPUT_MAGIC {
            return Err(Error::invalid(OUTPUT_LAYER, "magic", "not a sealed output (expected SRSEALO1)"));
        }
        let reply_key = take_key(&mut r, OUTPUT_LAYER, "reply key")?;
        let output_digest = r.take_array("output digest").map_err(Error::malformed(OUTPUT_LAYER))?;
        let enc = take_key(&mut r, OUTPUT_LAYER, "enc")?;
        let ciphertext = take_ciphertext(&mut r, OUTPUT_LAYER, MAX_ARCHIVE_BYTES)?;
        Ok(Self { reply_key, output_digest, enc, ciphertext })
    }

    /// The header: the HPKE `aad`.
    #[must_use]
    pub fn aad(&self) -> Vec<u8> {
        output_aad(&self.reply_key, &self.output_digest, &self.enc)
    }

    /// The envelope's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.aad();
        put_ciphertext(&mut out, &self.ciphertext);
        out
    }
}

/// The `aad` of a sealed output with these fields.
#[must_use]
pub fn output_aad(reply_key: &[u8; 32], output_digest: &[u8; 32], enc: &[u8; 32]) -> Vec<u8> {
    let mut out = OUTPUT_MAGIC.to_vec();
    out.extend_from_slice(reply_key);
    out.extend_from_slice(output_digest);
    out.extend_from_slice(enc);
    out
}

/// The files of an output directory, in canonical order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Archive {
    /// `(relative path, contents)`, sorted by the path's bytes, paths unique.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Checks one archive path: relative, `/`-separated, no empty, `.` or `..` component, no newline, backslash or
/// NUL (what [`crate::output`] can digest), at most [`MAX_PATH_LEN`] bytes.
fn check_path(p: &str) -> Result<()> {
    let bad = p.is_empty()
        || p.len() > MAX_PATH_LEN
        || p.bytes().any(|b| matches!(b, b'\n' | b'\\' | 0))
        || p.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Error::invalid(
            ARCHIVE_LAYER,
            "path",
            format!("{:?} is not a plain relative path", short(p)),
        ));
    }
    Ok(())
}

impl Archive {
    /// Reads an output directory (regular files only, as [`crate::output::digest_dir`] admits).
    ///
    /// # Errors
    /// What `digest_dir` refuses, unreadable files, more than [`MAX_ARCHIVE_BYTES`].
    pub fn from_dir(dir: &std::path::Path) -> Result<Self> {
        let (_, listing) = crate::output::digest_dir(dir)?;
        let mut files = Vec::new();
        let mut total = 0usize;
        for line in listing.lines() {
            let (_, rel) = line
                .split_once("  ")
                .ok_or_else(|| Error::invalid(ARCHIVE_LAYER, "listing", "line without a path"))?;
            let bytes = std::fs::read(dir.join(rel))
                .map_err(|e| Error::invalid(ARCHIVE_LAYER, "file", format!("{rel}: {e}")))?;
            total = total.saturating_add(bytes.len());
            if total > MAX_ARCHIVE_BYTES {
                return Err(Error::invalid(
                    ARCHIVE_LAYER,
                    "size",
                    format!("more than {MAX_ARCHIVE_BYTES} bytes"),
                ));
            }
            files.push((rel.to_owned(), bytes));
        }
        Ok(Self { files })
    }

    /// Parses an archive: paths checked, strictly increasing (so unique), no file also used as a directory.
    ///
    /// # Errors
    /// Wrong magic, truncation, a bad or out-of-order path, too many files, trailing bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let magic: [u8; 8] = r.take_array("magic").map_err(Error::malformed(ARCHIVE_LAYER))?;
        if &magic != ARCHIVE_MAGIC {
            return Err(Error::invalid(ARCHIVE_LAYER, "magic", "not an output archive (expected SRARCHV1)"));
        }
        let count = Reader::len_u32(r.u32_be("file count").map_err(Error::malformed(ARCHIVE_LAYER))?);
        // Each entry takes at least 7 bytes: no count can promise more entries than the bytes left hold.
        if count > MAX_ARCHIVE_FILES || count > r.left() / 7 {
            return Err(Error::invalid(ARCHIVE_LAYER, "file count", format!("{count} files is too many")));
        }
        let mut files: Vec<(String, Vec<u8>)> = Vec::with_capacity(count);
        let mut seen = BTreeSet::new();
        for _ in 0..count {
            let n = usize::from(r.u16_be("path length").map_err(Error::malformed(ARCHIVE_LAYER))?);
            let raw = r.take(n, "path").map_err(Error::malformed(ARCHIVE_LAYER))?;
            let path = std::str::from_utf8(raw)
                .map_err(|_| Error::invalid(ARCHIVE_LAYER, "path", "not UTF-8"))?
                .to_owned();
            check_path(&path)?;
            if let Some((prev, _)) = files.last().filter(|(prev, _)| prev.as_bytes() >= path.as_bytes()) {
                return Err(Error::invalid(
                    ARCHIVE_LAYER,
                    "path order",
                    format!("{:?} after {:?}: paths must be unique and sorted", short(&path), short(prev)),
                ));
            }
            // Sorted order puts every ancestor before its descendants: a file used as a directory is found here.
            let mut parent = path.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                if seen.contains(p) {
                    return Err(Error::invalid(
                        ARCHIVE_LAYER,
                        "path",
                        format!("{:?} is both a file and a directory", short(p)),
                    ));
                }
                parent = p;
            }
            let size = Reader::len_u32(r.u32_be("file size").map_err(Error::malformed(ARCHIVE_LAYER))?);
            let data = r.take(size, "file contents").map_err(Error::malformed(ARCHIVE_LAYER))?.to_vec();
            seen.insert(path.clone());
            files.push((path, data));
        }
        r.finish(ARCHIVE_LAYER).map_err(Error::malformed(ARCHIVE_LAYER))?;
        Ok(Self { files })
    }

    /// The archive's bytes (files in their canonical order).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut files: Vec<&(String, Vec<u8>)> = self.files.iter().collect();
        files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut out = ARCHIVE_MAGIC.to_vec();
        out.extend_from_slice(&u32::try_from(files.len()).unwrap_or(u32::MAX).to_be_bytes());
        for (path, data) in files {
            out.extend_from_slice(&u16::try_from(path.len()).unwrap_or(u16::MAX).to_be_bytes());
            out.extend_from_slice(path.as_bytes());
            out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    /// The output digest of the directory this archive unpacks to, and the listing it covers (exactly what
    /// [`crate::output::digest_dir`] computes for that directory).
    #[must_use]
    pub fn digest(&self) -> ([u8; 32], String) {
        let mut files: Vec<&(String, Vec<u8>)> = self.files.iter().collect();
        files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut listing = String::new();
        for (path, data) in files {
            listing.push_str(&hex::encode(crate::digest::sha256(data)));
            listing.push_str("  ");
            listing.push_str(path);
            listing.push('\n');
        }
        (crate::digest::sha256(listing.as_bytes()), listing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_input() -> SealedInput {
        SealedInput {
            name: "patient".into(),
            tee_key: [1; 32],
            reply_key: [2; 32],
            enc: [3; 32],
            ciphertext: vec![9; 40],
        }
    }

    #[test]
    fn input_round_trips_and_every_truncation_and_extension_is_refused() {
        let s = sample_input();
        let bytes = s.encode();
        assert_eq!(SealedInput::parse(&bytes).unwrap(), s);
        assert_eq!(bytes.len(), 8 + 1 + 7 + 96 + 4 + 40);
        for n in 0..bytes.len() {
            assert!(SealedInput::parse(&bytes[..n]).is_err(), "truncated to {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let err = SealedInput::parse(&longer).unwrap_err().to_string();
        assert!(err.contains("1 unexpected trailing bytes"), "{err}");
        assert!(s.aad().len() + 4 + 40 == bytes.len());
        assert_eq!(s.info(), input_info("patient", &[2; 32]));
        assert_eq!(input_aad("patient", &[1; 32], &[2; 32], &[3; 32]), s.aad());
    }

    #[test]
    fn input_names_and_sizes_are_checked() {
        for bad in ["", ".x", "A", "a/b", "a b", &"x".repeat(65)] {
            let mut s = sample_input();
            s.name = bad.into();
            assert!(SealedInput::parse(&s.encode()).is_err(), "{bad:?}");
        }
        let mut s = sample_input();
        s.ciphertext = vec![0; 15];
        assert!(SealedInput::parse(&s.encode()).unwrap_err().to_string().contains("ciphertext length"));
        let mut bytes = sample_input().encode();
        bytes[0] = b'X';
        assert!(SealedInput::parse(&bytes).unwrap_err().to_string().contains("not a sealed input"));
    }

    #[test]
    fn output_round_trips() {
        let s = SealedOutput {
            reply_key: [4; 32],
            output_digest: [5; 32],
            enc: [6; 32],
            ciphertext: vec![7; 16],
        };
        let bytes = s.encode();
        assert_eq!(SealedOutput::parse(&bytes).unwrap(), s);
        for n in 0..bytes.len() {
            assert!(SealedOutput::parse(&bytes[..n]).is_err());
        }
        assert!(SealedOutput::parse(&[bytes.as_slice(), &[0]].concat()).is_err());
        assert!(SealedInput::parse(&bytes).is_err(), "an output is not an input");
    }

    #[test]
    fn archive_digest_matches_the_directory_digest() {
        let dir = std::env::temp_dir().join(format!("sealroom-archive-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("b.txt"), b"bee").unwrap();
        std::fs::write(dir.join("sub/a.txt"), b"a").unwrap();
        std::fs::write(dir.join("a-x"), b"").unwrap();
        let a = Archive::from_dir(&dir).unwrap();
        assert_eq!(a.digest(), crate::output::digest_dir(&dir).unwrap());
        let bytes = a.encode();
        assert_eq!(Archive::parse(&bytes).unwrap(), a);
        for n in 0..bytes.len() {
            assert!(Archive::parse(&bytes[..n]).is_err());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn archive_paths_are_plain_sorted_and_unambiguous() {
        let enc = |files: &[(&str, &[u8])]| {
            let mut out = ARCHIVE_MAGIC.to_vec();
            out.extend_from_slice(&u32::try_from(files.len()).unwrap().to_be_bytes());
            for (p, d) in files {
                out.extend_from_slice(&u16::try_from(p.len()).unwrap().to_be_bytes());
                out.extend_from_slice(p.as_bytes());
                out.extend_from_slice(&u32::try_from(d.len()).unwrap().to_be_bytes());
                out.extend_from_slice(d);
            }
            out
        };
        for bad in ["/etc/passwd", "../x", "a/../b", "a//b", "./a", "a/", "a\nb", "a\\b"] {
            let err = Archive::parse(&enc(&[(bad, b"x")])).unwrap_err().to_string();
            assert!(err.contains("not a plain relative path"), "{bad:?}: {err}");
        }
        assert!(Archive::parse(&enc(&[("b", b""), ("a", b"")])).unwrap_err().to_string().contains("sorted"));
        assert!(Archive::parse(&enc(&[("a", b""), ("a", b"")])).is_err());
        let err = Archive::parse(&enc(&[("a", b""), ("a/b", b"")])).unwrap_err().to_string();
        assert!(err.contains("both a file and a directory"), "{err}");
        let err = Archive::parse(&enc(&[("a", b""), ("a-b", b""), ("a/b", b"")])).unwrap_err().to_string();
        assert!(err.contains("both a file and a directory"), "{err}");
        let mut huge = ARCHIVE_MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Archive::parse(&huge).unwrap_err().to_string().contains("too many"));
    }

    #[test]
    fn reply_keys_as_text() {
        let k = [0xab; 32];
        assert_eq!(parse_key_text(&format!(" {}\n", key_text(&k))).unwrap(), k);
        for bad in
            ["ab".repeat(32), format!("x25519:{}", "AB".repeat(32)), format!("x25519:{}", "ab".repeat(31))]
        {
            assert!(parse_key_text(&bad).is_err(), "{bad}");
        }
    }
}
