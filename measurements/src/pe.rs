//! PE/COFF images: a bounds-checked section table and the Authenticode digest firmware measures.
//!
//! The Authenticode digest follows the PE/COFF specification as UEFI firmware (EDK2's
//! `DxeTpm2MeasureBootLib`) computes it for `EV_EFI_BOOT_SERVICES_APPLICATION`: the headers without the checksum
//! and the certificate-table directory entry, then every section's raw data in file order, then any data after
//! the last section except the attribute certificate table.

use crate::digest::Hasher;
use crate::error::{Error, Result};
use crate::evidence::HashAlg;
use crate::reader::Reader;

const LAYER: &str = "pe image";
/// Upper bound on sections (the PE spec caps it at 96).
const MAX_SECTIONS: u16 = 96;

/// One section header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Name (up to 8 bytes, NULs trimmed).
    pub name: String,
    /// Size in memory.
    pub virtual_size: u32,
    /// Address relative to the image base.
    pub virtual_address: u32,
    /// Size in the file.
    pub size_of_raw_data: u32,
    /// Offset in the file.
    pub pointer_to_raw_data: u32,
}

/// A parsed PE image (borrowing the file bytes).
#[derive(Debug, Clone)]
pub struct PeImage<'a> {
    bytes: &'a [u8],
    /// Offset of the optional header's CheckSum field.
    checksum_offset: usize,
    /// Offset of the certificate-table data directory entry, when the image has one.
    cert_dir_offset: Option<usize>,
    /// The certificate table (file offset, size), when present.
    cert_table: Option<(usize, usize)>,
    size_of_headers: usize,
    /// Section headers, in table order.
    pub sections: Vec<Section>,
    /// PE32+ (64-bit) rather than PE32.
    pub pe32_plus: bool,
    /// COFF machine type.
    pub machine: u16,
}

fn u32_usize(v: u32) -> usize {
    Reader::len_u32(v)
}

impl<'a> PeImage<'a> {
    /// Parses the headers and section table of `bytes`.
    ///
    /// # Errors
    /// Anything that is not a well-formed PE image, with the offset.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let m = Error::malformed(LAYER);
        let mut r = Reader::new(bytes);
        if r.take(2, "dos magic").map_err(&m)? != b"MZ" {
            return Err(Error::invalid(LAYER, "dos magic", "not \"MZ\""));
        }
        r.skip(0x3a, "dos header").map_err(&m)?;
        let pe_offset = u32_usize(r.u32_le("e_lfanew").map_err(&m)?);
        let mut r = Reader::new(bytes);
        r.skip(pe_offset, "e_lfanew target").map_err(&m)?;
        if r.take(4, "pe signature").map_err(&m)? != b"PE\0\0" {
            return Err(Error::invalid(
                LAYER,
                "pe signature",
                format!("not \"PE\\0\\0\" at offset {pe_offset:#x}"),
            ));
        }
        let machine = r.u16_le("machine").map_err(&m)?;
        let n_sections = r.u16_le("number of sections").map_err(&m)?;
        if n_sections > MAX_SECTIONS {
            return Err(Error::invalid(
                LAYER,
                "number of sections",
                format!("{n_sections} exceeds {MAX_SECTIONS}"),
            ));
        }
        r.skip(12, "coff header").map_err(&m)?;
        let opt_size = usize::from(r.u16_le("size of optional header").map_err(&m)?);
        r.skip(2, "characteristics").map_err(&m)?;
        let opt_start = r.offset();
        let mut opt = r.sub(opt_size, "optional header").map_err(&m)?;
        let magic = opt.u16_le("optional header magic").map_err(&m)?;
        let pe32_plus = match magic {
            0x10b => false,
            0x20b => true,
            other => return Err(Error::invalid(LAYER, "optional header magic", format!("{other:#06x}"))),
        };
        // Offsets inside the optional header (PE/COFF spec): CheckSum at 64, SizeOfHeaders at 60;
        // NumberOfRvaAndSizes at 92 (PE32) / 108 (PE32+), data directories right after it.
        let at = |off: usize, what: &'static str| -> Result<u32> {
            if off + 4 > opt_size {
                return Err(Error::invalid(
                    LAYER,
                    what,
                    format!("outside the {opt_size}-byte optional header"),
                ));
            }
            let mut o = Reader::new(bytes);
            o.skip(opt_start + off, what).map_err(&m)?;
            o.u32_le(what).map_err(&m)
        };
        let size_of_headers = u32_usize(at(60, "size of headers")?);
        let checksum_offset = opt_start + 64;
        at(64, "checksum")?;
        let (n_rva_off, dirs_off) = if pe32_plus { (108, 112) } else { (92, 96) };
        let n_rva = at(n_rva_off, "number of rva and sizes")?;
        let (cert_dir_offset, cert_table) = if n_rva > 4 {
            let off = dirs_off + 4 * 8;
            let addr = u32_usize(at(off, "certificate table address")?);
            let size = u32_usize(at(off + 4, "certificate table size")?);
            let table = if size == 0 {
                None
            } else {
                addr.checked_add(size).filter(|e| *e <= bytes.len()).ok_or_else(|| {
                    Error::invalid(LAYER, "certificate table", "extends past the end of the file")
                })?;
                Some((addr, size))
            };
            (Some(opt_start + off), table)
        } else {
            (None, None)
        };
        if size_of_headers > bytes.len() || size_of_headers < checksum_offset + 4 {
            return Err(Error::invalid(
                LAYER,
                "size of headers",
                format!("{size_of_headers} for a {}-byte file", bytes.len()),
            ));
        }

        let mut sections = Vec::new();
        for _ in 0..n_sections {
            let name_bytes = r.take(8, "section name").map_err(&m)?;
            let name = String::from_utf8_lossy(name_bytes).trim_end_matches('\0').to_string();
            let virtual_size = r.u32_le("section virtual size").map_err(&m)?;
            let virtual_address = r.u32_le("section virtual address").map_err(&m)?;
            let size_of_raw_data = r.u32_le("section raw size").map_err(&m)?;
            let pointer_to_raw_data = r.u32_le("section raw pointer").map_err(&m)?;
            r.skip(16, "section relocations and characteristics").map_err(&m)?;
            let end = u32_usize(pointer_to_raw_data).checked_add(u32_usize(size_of_raw_data));
            if size_of_raw_data > 0 && end.is_none_or(|e| e > bytes.len()) {
                return Err(Error::invalid(
                    LAYER,
                    "section",
                    format!(
                        "{name} raw data {pointer_to_raw_data:#x}+{size_of_raw_data:#x} is outside the file"
                    ),
                ));
            }
            sections.push(Section {
                name,
                virtual_size,
                virtual_address,
                size_of_raw_data,
                pointer_to_raw_data,
            });
        }
        Ok(Self {
            bytes,
            checksum_offset,
            cert_dir_offset,
            cert_table,
            size_of_headers,
            sections,
            pe32_plus,
            machine,
        })
    }

    /// The section named `name`, if present (the first one if repeated).
    #[must_use]
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// A section's contents as loaded in memory: `VirtualSize` bytes, zero-filled past its raw data (what
    /// systemd-stub measures).
    ///
    /// # Errors
    /// When the raw data is outside the file or the section is larger than the file.
    pub fn section_memory(&self, s: &Section) -> Result<Vec<u8>> {
        // Zero-fill is for alignment slack; a section claiming more memory than the whole file holds is refused
        // rather than allocated (untrusted sizes).
        if u32_usize(s.virtual_size) > self.bytes.len() {
            return Err(Error::invalid(
                LAYER,
                "section virtual size",
                format!(
                    "{} claims {} bytes, more than the {}-byte file",
                    s.name,
                    s.virtual_size,
                    self.bytes.len()
                ),
            ));
        }
        let raw_len = u32_usize(s.size_of_raw_data.min(s.virtual_size));
        let mut r = Reader::new(self.bytes);
        r.skip(u32_usize(s.pointer_to_raw_data), "section data").map_err(Error::malformed(LAYER))?;
        let mut out = r.take(raw_len, "section data").map_err(Error::malformed(LAYER))?.to_vec();
        out.resize(u32_usize(s.virtual_size), 0);
        Ok(out)
    }

    fn range(&self, start: usize, end: usize, what: &'static str) -> Result<&'a [u8]> {
        let mut r = Reader::new(self.bytes);
        r.skip(start, what).map_err(Error::malformed(LAYER))?;
        r.take(end.checked_sub(start).ok_or_else(|| Error::invalid(LAYER, what, "negative range"))?, what)
            .map_err(Error::malformed(LAYER))
    }

    /// The Authenticode digest of the image with `alg`.
    ///
    /// # Errors
    /// When the image's layout makes the digest undefined (overlapping header fields, data outside the file).
    pub fn authenticode(&self, alg: HashAlg) -> Result<Vec<u8>> {
        let mut h = Hasher::new(alg);
        h.update(self.range(0, self.checksum_offset, "headers before checksum")?);
        match self.cert_dir_offset {
            Some(cert_dir) => {
                h.update(self.range(
                    self.checksum_offset + 4,
                    cert_dir,
                    "headers before certificate directory",
                )?);
                h.update(self.range(
                    cert_dir + 8,
                    self.size_of_headers,
                    "headers after certificate directory",
                )?);
            }
            None => h.update(self.range(
                self.checksum_offset + 4,
                self.size_of_headers,
                "headers after checksum",
            )?),
        }
        let mut sections: Vec<&Section> = self.sections.iter().filter(|s| s.size_of_raw_data > 0).collect();
        sections.sort_by_key(|s| s.pointer_to_raw_data);
        let mut hashed = self.size_of_headers;
        for s in sections {
            let start = u32_usize(s.pointer_to_raw_data);
            h.update(self.range(start, start + u32_usize(s.size_of_raw_data), "section data")?);
            hashed += u32_usize(s.size_of_raw_data);
        }
        // Trailing data after the sections, minus the certificate table (EDK2: FileSize - CertSize - hashed).
        let cert_size = self.cert_table.map_or(0, |(_, size)| size);
        let len = self.bytes.len();
        if len > hashed + cert_size {
            h.update(self.range(hashed, len - cert_size, "trailing data")?);
        }
        Ok(h.finish())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal PE32+ image: headers (0x200), the given sections, optional trailing bytes and certificate table.
    pub(crate) fn build_pe(sections: &[(&str, &[u8])], trailing: &[u8], cert: &[u8]) -> Vec<u8> {
        let file_align = 0x200usize;
        let headers = 0x400usize;
        let mut out = vec![0u8; headers];
        out[..2].copy_from_slice(b"MZ");
        out[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        out[0x80..0x84].copy_from_slice(b"PE\0\0");
        out[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
        out[0x86..0x88].copy_from_slice(&u16::try_from(sections.len()).unwrap().to_le_bytes());
        let opt_size = 240u16;
        out[0x94..0x96].copy_from_slice(&opt_size.to_le_bytes());
        let opt = 0x98;
        out[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        out[opt + 60..opt + 64].copy_from_slice(&u32::try_from(headers).unwrap().to_le_bytes());
        out[opt + 64..opt + 68].copy_from_slice(&0xdead_beefu32.to_le_bytes()); // checksum: excluded
        out[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        let mut table = opt + usize::from(opt_size);
        let mut body = Vec::new();
        for (i, (name, data)) in sections.iter().enumerate() {
            let ptr = headers + body.len();
            let raw = data.len().div_ceil(file_align) * file_align;
            let mut hdr = [0u8; 40];
            hdr[..name.len()].copy_from_slice(name.as_bytes());
            hdr[8..12].copy_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
            hdr[12..16].copy_from_slice(&u32::try_from(0x1000 * (i + 1)).unwrap().to_le_bytes());
            hdr[16..20].copy_from_slice(&u32::try_from(raw).unwrap().to_le_bytes());
            hdr[20..24].copy_from_slice(&u32::try_from(ptr).unwrap().to_le_bytes());
            out[table..table + 40].copy_from_slice(&hdr);
            table += 40;
            body.extend_from_slice(data);
            body.resize(raw + (ptr - headers), 0);
        }
        out.extend_from_slice(&body);
        out.extend_from_slice(trailing);
        if !cert.is_empty() {
            let cert_dir = opt + 112 + 4 * 8;
            let at = u32::try_from(out.len()).unwrap();
            out[cert_dir..cert_dir + 4].copy_from_slice(&at.to_le_bytes());
            out[cert_dir + 4..cert_dir + 8]
                .copy_from_slice(&u32::try_from(cert.len()).unwrap().to_le_bytes());
            out.extend_from_slice(cert);
        }
        out
    }

    /// The Authenticode digest written out from the spec, independently of the parser.
    fn reference_authenticode(pe: &[u8], alg: HashAlg, cert_len: usize) -> Vec<u8> {
        let opt = 0x98;
        let cert_dir = opt + 112 + 32;
        let mut data = Vec::new();
        data.extend_from_slice(&pe[..opt + 64]);
        data.extend_from_slice(&pe[opt + 68..cert_dir]);
        data.extend_from_slice(&pe[cert_dir + 8..pe.len() - cert_len]);
        crate::digest::hash(alg, &data)
    }

    #[test]
    fn authenticode_excludes_checksum_and_certificate_table() {
        let pe = build_pe(&[(".text", &[0x90; 300]), (".linux", b"kernel")], b"tail", &[7u8; 24]);
        let img = PeImage::parse(&pe).unwrap();
        assert_eq!(img.sections.len(), 2);
        assert_eq!(img.section(".linux").unwrap().virtual_size, 6);
        assert_eq!(img.section_memory(img.section(".linux").unwrap()).unwrap(), b"kernel");
        for alg in [HashAlg::Sha256, HashAlg::Sha384] {
            assert_eq!(img.authenticode(alg).unwrap(), reference_authenticode(&pe, alg, 24));
        }
        // Changing the checksum or the certificate does not change the digest; changing code does.
        let before = img.authenticode(HashAlg::Sha256).unwrap();
        let mut other = pe.clone();
        other[0x98 + 64] ^= 0xff;
        let n = other.len();
        other[n - 1] ^= 0xff;
        assert_eq!(PeImage::parse(&other).unwrap().authenticode(HashAlg::Sha256).unwrap(), before);
        other[0x400] ^= 1;
        assert_ne!(PeImage::parse(&other).unwrap().authenticode(HashAlg::Sha256).unwrap(), before);
    }

    #[test]
    fn malformed_images_are_refused() {
        let pe = build_pe(&[(".text", &[1; 10])], b"", b"");
        for n in [0, 2, 0x40, 0x84, 0x100, 0x1ff, 0x3ff] {
            assert!(PeImage::parse(&pe[..n]).is_err(), "prefix {n}");
        }
        let mut bad = pe.clone();
        bad[0x80] = b'X';
        assert!(PeImage::parse(&bad).is_err());
        let mut huge = pe;
        // Section raw size beyond the file.
        let sec = 0x98 + 240;
        huge[sec + 16..sec + 20].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
        assert!(PeImage::parse(&huge).unwrap_err().to_string().contains("outside the file"));
    }
}
