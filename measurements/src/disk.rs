//! Finding the UKI in a disk image: GPT → EFI System Partition → FAT → `\EFI\BOOT\BOOTX64.EFI`.
//!
//! A small read-only reader (GPT, FAT12/16/32 with 8.3 names) through the bounds-checked reader, enough for an
//! auditor to take a published `disk.raw` and reproduce its measurements. It also builds the `EV_EFI_GPT_EVENT`
//! data firmware measures (UEFI_GPT_DATA: the 92-byte header, the number of used entries, the used entries).

use crate::error::{Error, Result};
use crate::reader::Reader;
use crate::tcg2::guid;

const LAYER: &str = "disk image";
/// EFI System Partition type GUID (C12A7328-F81F-11D2-BA4B-00A0C93EC93B) as stored on disk.
pub const ESP_TYPE: [u8; 16] =
    [0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b];
/// Where firmware looks for a removable-media boot loader on x86-64.
pub const DEFAULT_BOOT_PATH: [&str; 3] = ["EFI", "BOOT", "BOOTX64.EFI"];
const SECTOR: usize = 512;
const GPT_HEADER_LEN: usize = 92;
const MAX_ENTRIES: u32 = 1024;

/// One used GPT partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number.
    pub number: u32,
    /// Type GUID bytes.
    pub type_guid: [u8; 16],
    /// Unique GUID, printable.
    pub unique_guid: String,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
}

/// The GUID partition table of a disk image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    /// Used partitions, in table order.
    pub partitions: Vec<Partition>,
    /// The `EV_EFI_GPT_EVENT` event data firmware measures for this disk.
    pub gpt_event: Vec<u8>,
}

fn m(e: crate::reader::ReadError) -> Error {
    Error::Malformed { layer: LAYER, source: e }
}

fn at(bytes: &[u8], offset: usize) -> Result<Reader<'_>> {
    let mut r = Reader::new(bytes);
    r.skip(offset, "seek").map_err(m)?;
    Ok(r)
}

impl Gpt {
    /// Reads the primary GPT (512-byte sectors) and checks its header and entry-array CRCs.
    ///
    /// # Errors
    /// No GPT signature, bad CRCs, or a table outside the image.
    pub fn parse(disk: &[u8]) -> Result<Self> {
        let mut r = at(disk, SECTOR)?;
        let header = r.clone().take(GPT_HEADER_LEN, "gpt header").map_err(m)?.to_vec();
        if r.take(8, "gpt signature").map_err(m)? != b"EFI PART" {
            return Err(Error::invalid(
                LAYER,
                "gpt signature",
                "no \"EFI PART\" at LBA 1 (512-byte sectors)",
            ));
        }
        r.skip(4, "revision").map_err(m)?;
        let header_size = Reader::len_u32(r.u32_le("header size").map_err(m)?);
        let header_crc = r.u32_le("header crc").map_err(m)?;
        if !(GPT_HEADER_LEN..=SECTOR).contains(&header_size) {
            return Err(Error::invalid(LAYER, "gpt header size", header_size.to_string()));
        }
        let mut for_crc = at(disk, SECTOR)?.take(header_size, "gpt header").map_err(m)?.to_vec();
        if let Some(crc_field) = for_crc.get_mut(16..20) {
            crc_field.fill(0);
        }
        if crc32(&for_crc) != header_crc {
            return Err(Error::invalid(LAYER, "gpt header crc", "does not match"));
        }
        r.skip(4 + 8 + 8 + 8 + 8 + 16, "gpt header fields").map_err(m)?;
        let entries_lba = r.u64_le("partition entries lba").map_err(m)?;
        let n_entries = r.u32_le("number of partition entries").map_err(m)?;
        let entry_size = Reader::len_u32(r.u32_le("partition entry size").map_err(m)?);
        let entries_crc = r.u32_le("partition entries crc").map_err(m)?;
        if n_entries > MAX_ENTRIES || !(128..=4096).contains(&entry_size) {
            return Err(Error::invalid(
                LAYER,
                "gpt entries",
                format!("{n_entries} entries of {entry_size} bytes"),
            ));
        }
        let start = usize::try_from(entries_lba)
            .ok()
            .and_then(|l| l.checked_mul(SECTOR))
            .ok_or_else(|| Error::invalid(LAYER, "partition entries lba", entries_lba.to_string()))?;
        let total = Reader::len_u32(n_entries) * entry_size;
        let array = at(disk, start)?.take(total, "partition entries").map_err(m)?;
        if crc32(array) != entries_crc {
            return Err(Error::invalid(LAYER, "partition entries crc", "does not match"));
        }
        let mut partitions = Vec::new();
        let mut used = Vec::new();
        let mut er = Reader::new(array);
        for i in 0..n_entries {
            let entry = er.take(entry_size, "partition entry").map_err(m)?;
            let mut e = Reader::new(entry);
            let type_guid = e.take_array::<16>("type guid").map_err(m)?;
            if type_guid == [0u8; 16] {
                continue;
            }
            let unique = e.take_array::<16>("unique guid").map_err(m)?;
            let first_lba = e.u64_le("first lba").map_err(m)?;
            let last_lba = e.u64_le("last lba").map_err(m)?;
            partitions.push(Partition {
                number: i + 1,
                type_guid,
                unique_guid: guid(&unique),
                first_lba,
                last_lba,
            });
            used.extend_from_slice(entry);
        }
        let mut gpt_event = header;
        gpt_event.extend_from_slice(&u64::try_from(partitions.len()).unwrap_or(u64::MAX).to_le_bytes());
        gpt_event.extend_from_slice(&used);
        Ok(Self { partitions, gpt_event })
    }

    /// The EFI System Partition.
    ///
    /// # Errors
    /// When there is none.
    pub fn esp(&self) -> Result<&Partition> {
        self.partitions
            .iter()
            .find(|p| p.type_guid == ESP_TYPE)
            .ok_or_else(|| Error::invalid(LAYER, "gpt", "no EFI System Partition"))
    }
}

/// CRC-32 (IEEE, as GPT uses).
#[must_use]
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

/// A read-only FAT file system over a byte slice.
#[derive(Debug)]
pub struct Fat<'a> {
    fs: &'a [u8],
    kind: FatType,
    bytes_per_sector: usize,
    cluster_size: usize,
    fat_offset: usize,
    root_dir: Option<(usize, usize)>,
    root_cluster: u32,
    data_offset: usize,
    cluster_count: u32,
}

/// A directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DirEntry {
    name: String,
    is_dir: bool,
    cluster: u32,
    size: u32,
}

impl<'a> Fat<'a> {
    /// Opens the FAT file system that starts at `fs[0]`.
    ///
    /// # Errors
    /// A boot sector that is not a FAT BPB.
    pub fn open(fs: &'a [u8]) -> Result<Self> {
        let mut r = at(fs, 0x0b)?;
        let bytes_per_sector = usize::from(r.u16_le("bytes per sector").map_err(m)?);
        let sectors_per_cluster = usize::from(r.u8("sectors per cluster").map_err(m)?);
        let reserved = usize::from(r.u16_le("reserved sectors").map_err(m)?);
        let n_fats = usize::from(r.u8("number of fats").map_err(m)?);
        let root_entries = usize::from(r.u16_le("root entries").map_err(m)?);
        let total16 = r.u16_le("total sectors 16").map_err(m)?;
        r.skip(1, "media").map_err(m)?;
        let fat16_size = r.u16_le("fat size 16").map_err(m)?;
        r.skip(8, "geometry, hidden sectors").map_err(m)?;
        let total32 = r.u32_le("total sectors 32").map_err(m)?;
        let fat32_size = r.u32_le("fat size 32").map_err(m)?;
        r.skip(4, "flags, version").map_err(m)?;
        let root_cluster = r.u32_le("root cluster").map_err(m)?;
        if ![512, 1024, 2048, 4096].contains(&bytes_per_sector)
            || !sectors_per_cluster.is_power_of_two()
            || n_fats == 0
            || reserved == 0
        {
            return Err(Error::invalid(LAYER, "fat boot sector", "not a FAT BIOS parameter block"));
        }
        let fat_size = if fat16_size != 0 { usize::from(fat16_size) } else { Reader::len_u32(fat32_size) };
        let total = if total16 != 0 { usize::from(total16) } else { Reader::len_u32(total32) };
        let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
        let first_data = reserved + n_fats * fat_size + root_sectors;
        let data_sectors = total
            .checked_sub(first_data)
            .ok_or_else(|| Error::invalid(LAYER, "fat geometry", "data region starts past the end"))?;
        let cluster_count = u32::try_from(data_sectors / sectors_per_cluster).unwrap_or(u32::MAX);
        let kind = if cluster_count < 4085 {
            FatType::Fat12
        } else if cluster_count < 65525 {
            FatType::Fat16
        } else {
            FatType::Fat32
        };
        let root_dir = (kind != FatType::Fat32)
            .then(|| ((reserved + n_fats * fat_size) * bytes_per_sector, root_entries * 32));
        Ok(Self {
            fs,
            kind,
            bytes_per_sector,
            cluster_size: sectors_per_cluster * bytes_per_sector,
            fat_offset: reserved * bytes_per_sector,
            root_dir,
            root_cluster,
            data_offset: first_data * bytes_per_sector,
            cluster_count,
        })
    }

    fn next_cluster(&self, c: u32) -> Result<Option<u32>> {
        let c_usize = Reader::len_u32(c);
        let (value, eoc) = match self.kind {
            FatType::Fat12 => {
                let off = self.fat_offset + c_usize + c_usize / 2;
                let v = at(self.fs, off)?.u16_le("fat12 entry").map_err(m)?;
                (u32::from(if c.is_multiple_of(2) { v & 0x0fff } else { v >> 4 }), 0xff8)
            }
            FatType::Fat16 => (
                u32::from(at(self.fs, self.fat_offset + 2 * c_usize)?.u16_le("fat16 entry").map_err(m)?),
                0xfff8,
            ),
            FatType::Fat32 => (
                at(self.fs, self.fat_offset + 4 * c_usize)?.u32_le("fat32 entry").map_err(m)? & 0x0fff_ffff,
                0x0fff_fff8,
            ),
        };
        if value >= eoc {
            Ok(None)
        } else if value < 2 || value > self.cluster_count + 1 {
            Err(Error::invalid(LAYER, "fat chain", format!("cluster {c} points to {value}")))
        } else {
            Ok(Some(value))
        }
    }

    fn read_chain(&self, first: u32, limit: Option<usize>) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut c = first;
        let mut steps = 0u32;
        loop {
            if c < 2 || c > self.cluster_count + 1 {
                return Err(Error::invalid(LAYER, "fat chain", format!("cluster {c} out of range")));
            }
            let off = self.data_offset + (Reader::len_u32(c) - 2) * self.cluster_size;
            out.extend_from_slice(at(self.fs, off)?.take(self.cluster_size, "cluster").map_err(m)?);
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            steps += 1;
            if steps > self.cluster_count {
                return Err(Error::invalid(LAYER, "fat chain", "loops"));
            }
            match self.next_cluster(c)? {
                Some(n) => c = n,
                None => break,
            }
        }
        if let Some(l) = limit {
            if out.len() < l {
                return Err(Error::invalid(LAYER, "file", "cluster chain shorter than the file size"));
            }
            out.truncate(l);
        }
        Ok(out)
    }

    fn entries(raw: &[u8]) -> Vec<DirEntry> {
        let mut out = Vec::new();
        for e in raw.chunks_exact(32) {
            let first = e.first().copied().unwrap_or(0);
            let attr = e.get(11).copied().unwrap_or(0);
            if first == 0 {
                break;
            }
            if first == 0xe5 || attr == 0x0f || attr & 0x08 != 0 {
                continue;
            }
            let field = |r: std::ops::Range<usize>| e.get(r).unwrap_or_default();
            let base = String::from_utf8_lossy(field(0..8)).trim_end().to_string();
            let ext = String::from_utf8_lossy(field(8..11)).trim_end().to_string();
            let name = if ext.is_empty() { base } else { format!("{base}.{ext}") };
            let hi = u16::from_le_bytes([e.get(20).copied().unwrap_or(0), e.get(21).copied().unwrap_or(0)]);
            let lo = u16::from_le_bytes([e.get(26).copied().unwrap_or(0), e.get(27).copied().unwrap_or(0)]);
            let size = u32::from_le_bytes([
                e.get(28).copied().unwrap_or(0),
                e.get(29).copied().unwrap_or(0),
                e.get(30).copied().unwrap_or(0),
                e.get(31).copied().unwrap_or(0),
            ]);
            out.push(DirEntry {
                name,
                is_dir: attr & 0x10 != 0,
                cluster: (u32::from(hi) << 16) | u32::from(lo),
                size,
            });
        }
        out
    }

    /// Reads the file at `path` (8.3 names, case-insensitive).
    ///
    /// # Errors
    /// A missing path component or a corrupt file system.
    pub fn read_file(&self, path: &[&str]) -> Result<Vec<u8>> {
        let mut dir = match self.root_dir {
            Some((off, len)) => at(self.fs, off)?.take(len, "root directory").map_err(m)?.to_vec(),
            None => self.read_chain(self.root_cluster, None)?,
        };
        for (i, part) in path.iter().enumerate() {
            let entry = Self::entries(&dir)
                .into_iter()
                .find(|e| e.name.eq_ignore_ascii_case(part))
                .ok_or_else(|| Error::invalid(LAYER, "path", format!("\\{} not found", path.join("\\"))))?;
            let last = i + 1 == path.len();
            if last {
                if entry.is_dir {
                    return Err(Error::invalid(LAYER, "path", format!("{part} is a directory")));
                }
                if entry.size == 0 {
                    return Ok(Vec::new());
                }
                return self.read_chain(entry.cluster, Some(Reader::len_u32(entry.size)));
            }
            if !entry.is_dir {
                return Err(Error::invalid(LAYER, "path", format!("{part} is not a directory")));
            }
            dir = self.read_chain(entry.cluster, None)?;
        }
        Err(Error::invalid(LAYER, "path", "empty"))
    }

    /// The FAT variant, as printed.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self.kind {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        }
    }

    /// Sector size of the file system.
    #[must_use]
    pub fn bytes_per_sector(&self) -> usize {
        self.bytes_per_sector
    }
}

/// The UKI booted from a disk image, with what the disk contributes to measurements.
#[derive(Debug, Clone)]
pub struct DiskBoot {
    /// The GPT.
    pub gpt: Gpt,
    /// The ESP's FAT variant.
    pub fat_kind: &'static str,
    /// `\EFI\BOOT\BOOTX64.EFI`.
    pub uki: Vec<u8>,
}

/// Finds the ESP of `disk` and reads `\EFI\BOOT\BOOTX64.EFI` from it.
///
/// # Errors
/// No GPT, no ESP, no boot file, or corrupt structures.
pub fn find_uki(disk: &[u8]) -> Result<DiskBoot> {
    let gpt = Gpt::parse(disk)?;
    let esp = gpt.esp()?;
    let start = usize::try_from(esp.first_lba).ok().and_then(|l| l.checked_mul(SECTOR));
    let end =
        usize::try_from(esp.last_lba).ok().and_then(|l| l.checked_add(1)).and_then(|l| l.checked_mul(SECTOR));
    let (Some(start), Some(end)) = (start, end) else {
        return Err(Error::invalid(LAYER, "esp", "LBA range overflows"));
    };
    let len = end.checked_sub(start).ok_or_else(|| Error::invalid(LAYER, "esp", "last LBA before first"))?;
    let fs = at(disk, start)?.take(len, "esp").map_err(m)?;
    let fat = Fat::open(fs)?;
    let uki = fat.read_file(&DEFAULT_BOOT_PATH)?;
    Ok(DiskBoot { fat_kind: fat.kind(), gpt, uki })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_answer() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn not_a_disk() {
        assert!(find_uki(&[0u8; 4096]).unwrap_err().to_string().contains("EFI PART"));
        assert!(find_uki(&[]).is_err());
        assert!(Fat::open(&[0u8; 512]).is_err());
    }
}
