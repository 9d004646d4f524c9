//! A bounds-checked reader for untrusted bytes (quotes, reports, event logs, certificates).
//!
//! Every parser in sealroom reads through this type: no slice indexing, no panics. A read past the end is an
//! error that names what was being read and at which offset, so a malformed log says where it broke.

use std::fmt;

/// A failed read: what was expected and where.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadError {
    /// Fewer bytes were left than the field needs.
    Truncated {
        /// The field being read (e.g. "event data").
        what: &'static str,
        /// Offset of the field from the start of the outermost input.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        left: usize,
    },
    /// Bytes remained after a structure that must consume its input exactly.
    TrailingData {
        /// The structure that should have ended.
        what: &'static str,
        /// Offset of the first unread byte.
        offset: usize,
        /// How many bytes remained.
        left: usize,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { what, offset, needed, left } => {
                write!(f, "{what} at offset {offset:#x}: needs {needed} bytes, {left} left")
            }
            Self::TrailingData { what, offset, left } => {
                write!(f, "{what}: {left} unexpected trailing bytes at offset {offset:#x}")
            }
        }
    }
}

impl std::error::Error for ReadError {}

/// A cursor over a byte slice that only hands out what is there.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf[0]` in the outermost input, so sub-readers report absolute offsets.
    base: usize,
}

impl<'a> Reader<'a> {
    /// A reader over the whole of `buf`.
    #[must_use]
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0, base: 0 }
    }

    /// Absolute offset of the next unread byte.
    #[must_use]
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Bytes not yet read.
    #[must_use]
    pub fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether everything has been read.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.left() == 0
    }

    /// The next `n` bytes.
    ///
    /// # Errors
    /// [`ReadError::Truncated`] when fewer than `n` bytes are left.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ReadError> {
        let truncated = ReadError::Truncated { what, offset: self.offset(), needed: n, left: self.left() };
        let end = self.pos.checked_add(n).ok_or_else(|| truncated.clone())?;
        let out = self.buf.get(self.pos..end).ok_or(truncated)?;
        self.pos = end;
        Ok(out)
    }

    /// The next `N` bytes as an array.
    ///
    /// # Errors
    /// [`ReadError::Truncated`] when fewer than `N` bytes are left.
    pub fn take_array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ReadError> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// A reader over the next `n` bytes; this reader moves past them.
    ///
    /// # Errors
    /// [`ReadError::Truncated`] when fewer than `n` bytes are left.
    pub fn sub(&mut self, n: usize, what: &'static str) -> Result<Reader<'a>, ReadError> {
        let base = self.offset();
        let buf = self.take(n, what)?;
        Ok(Reader { buf, pos: 0, base })
    }

    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        out
    }

    /// Skips `n` bytes.
    ///
    /// # Errors
    /// [`ReadError::Truncated`] when fewer than `n` bytes are left.
    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<(), ReadError> {
        self.take(n, what).map(|_| ())
    }

    /// Errors unless everything was read.
    ///
    /// # Errors
    /// [`ReadError::TrailingData`] when bytes remain.
    pub fn finish(&self, what: &'static str) -> Result<(), ReadError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(ReadError::TrailingData { what, offset: self.offset(), left: self.left() })
        }
    }

    /// A `u8`.
    ///
    /// # Errors
    /// [`ReadError::Truncated`] at the end of input.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, ReadError> {
        Ok(u8::from_le_bytes(self.take_array::<1>(what)?))
    }

    /// A little-endian `u16`.
    ///
    /// # Errors
    /// [`ReadError::Truncated`] when fewer than 2 bytes are left.
    pub fn u16_le(&mut self, what: &'static str) -> Result<u16, ReadError> {
        Ok(u16::from_le_bytes(self.take_array(what)?))
    }

    /// A big-endian `u16`.
    ///
    /// # Errors
    /// [`ReadError::Truncated`] when fewer than 2 bytes are left.
    pub fn u16_be(&mut self, what: &'static str) -> Result<u16, ReadError> {
        Ok(u16::from_be_bytes(self.take_array(what)?))
    }

    /// A little-endian `u32`.
    ///
    /// # Errors
    /// [`ReadError::Truncated`] when fewer than 4 bytes are left.
    pub fn u32_le(&mut self, what: &'static str) -> Result<u32, ReadError> {
        Ok(u32::from_le_bytes(self.take_array(what)?))
    }

    /// A big-endian `u32`.
    ///
    /// # Errors
    /// [`ReadError::Truncated`] when fewer than 4 bytes are left.
    pub fn u32_be(&mut self, what: &'static str) -> Result<u32, ReadError> {
        Ok(u32::from_be_bytes(self.take_array(what)?))
    }

    /// A little-endian `u64`.
    ///
    /// # Errors
    /// [`ReadError::Truncated`] when fewer than 8 bytes are left.
    pub fn u64_le(&mut self, what: &'static str) -> Result<u64, ReadError> {
        Ok(u64::from_le_bytes(self.take_array(what)?))
    }

    /// A big-endian `u64`.
    ///
    /// # Errors
    /// [`ReadError::Truncated`] when fewer than 8 bytes are left.
    pub fn u64_be(&mut self, what: &'static str) -> Result<u64, ReadError> {
        Ok(u64::from_be_bytes(self.take_array(what)?))
    }

    /// A TPM2B: a big-endian `u16` length, then that many bytes.
    ///
    /// # Errors
    /// [`ReadError::Truncated`] when the length or the body does not fit.
    pub fn tpm2b(&mut self, what: &'static str) -> Result<&'a [u8], ReadError> {
        let n = self.u16_be(what)?;
        self.take(usize::from(n), what)
    }

    /// A length as `usize` from a `u32` field (lossless on every supported target).
    #[must_use]
    pub fn len_u32(n: u32) -> usize {
        usize::try_from(n).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_bounds_and_reports_absolute_offsets() {
        let data = [1u8, 0, 2, 0, 0, 0, 9, 9];
        let mut r = Reader::new(&data);
        assert_eq!(r.u16_le("a").unwrap(), 1);
        let mut sub = r.sub(4, "sub").unwrap();
        assert_eq!(sub.u32_le("b").unwrap(), 2);
        sub.finish("sub").unwrap();
        let err = r.take(3, "tail").unwrap_err();
        assert_eq!(err, ReadError::Truncated { what: "tail", offset: 6, needed: 3, left: 2 });
        assert_eq!(err.to_string(), "tail at offset 0x6: needs 3 bytes, 2 left");
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        let mut r = Reader::new(&[0u8; 4]);
        r.skip(1, "x").unwrap();
        assert!(r.take(usize::MAX, "big").is_err());
        assert_eq!(r.left(), 3);
    }

    #[test]
    fn trailing_data_is_an_error() {
        let r = Reader::new(&[0u8; 2]);
        assert_eq!(r.finish("s").unwrap_err().to_string(), "s: 2 unexpected trailing bytes at offset 0x0");
    }
}
