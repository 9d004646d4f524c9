//! TDX CC event log (CCEL): the ACPI CCEL table and the log area it points at.
//!
//! The log uses the crypto-agile TCG2 format ([`crate::tcg2`]) with SHA-384 digests; the "PCR index" of each event is
//! a CC measurement register index: 0 = MRTD, 1..4 = RTMR0..3. MRTD is measured by the TDX module, not by events,
//! so only RTMR0..3 are replayed (an extending event at index 0 is an error).

use crate::error::{Error, Result};
use crate::evidence::HashAlg;
use crate::reader::Reader;
use crate::tcg2::{Tcg2Log, alg_name, event_type};

const LAYER: &str = "ccel";
/// CC type of Intel TDX in the CCEL table.
pub const CC_TYPE_TDX: u8 = 2;
/// Number of RTMRs.
pub const RTMR_COUNT: usize = 4;

/// The ACPI CCEL table (Confidential Computing Event Log, ACPI 6.5 section 5.2.34).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CcelTable {
    /// ACPI table revision.
    pub revision: u8,
    /// OEM id.
    pub oem_id: String,
    /// CC type (1 = SEV, 2 = TDX).
    pub cc_type: u8,
    /// CC subtype.
    pub cc_subtype: u8,
    /// Log area minimum length.
    pub log_area_min_len: u64,
    /// Log area start address (guest physical).
    pub log_area_start: u64,
}

impl CcelTable {
    /// Parses and checks a CCEL table (signature, length, checksum).
    ///
    /// # Errors
    /// A malformed table, a wrong signature, length or checksum.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let m = Error::malformed(LAYER);
        let mut r = Reader::new(bytes);
        let sig = r.take(4, "table signature").map_err(&m)?;
        if sig != b"CCEL" {
            return Err(Error::invalid(
                LAYER,
                "table signature",
                format!("{:?}, expected \"CCEL\"", String::from_utf8_lossy(sig)),
            ));
        }
        let length = Reader::len_u32(r.u32_le("table length").map_err(&m)?);
        if length != bytes.len() {
            return Err(Error::invalid(
                LAYER,
                "table length",
                format!("{length}, table is {} bytes", bytes.len()),
            ));
        }
        let checksum = bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        if checksum != 0 {
            return Err(Error::invalid(
                LAYER,
                "table checksum",
                format!("bytes sum to {checksum:#04x}, expected 0"),
            ));
        }
        let revision = r.u8("revision").map_err(&m)?;
        r.skip(1, "checksum").map_err(&m)?;
        let oem_id = String::from_utf8_lossy(r.take(6, "oem id").map_err(&m)?).trim_end().to_string();
        r.skip(8 + 4 + 4 + 4, "oem table id, revisions, creator").map_err(&m)?;
        let cc_type = r.u8("cc type").map_err(&m)?;
        let cc_subtype = r.u8("cc subtype").map_err(&m)?;
        r.skip(2, "reserved").map_err(&m)?;
        let log_area_min_len = r.u64_le("log area minimum length").map_err(&m)?;
        let log_area_start = r.u64_le("log area start address").map_err(&m)?;
        r.finish("ccel table").map_err(&m)?;
        Ok(Self { revision, oem_id, cc_type, cc_subtype, log_area_min_len, log_area_start })
    }
}

/// A parsed CCEL log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CcelLog {
    /// The underlying TCG2 log (event index = CC MR index).
    pub log: Tcg2Log,
}

/// RTMR0..3 replayed from a CCEL log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtmrs(pub [[u8; 48]; RTMR_COUNT]);

impl CcelLog {
    /// Parses the log area (trailing 0xFF/0x00 padding allowed).
    ///
    /// # Errors
    /// A malformed log, or one that is not crypto-agile.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let log = Tcg2Log::parse(bytes)?;
        if log.spec_id.is_none() {
            return Err(Error::invalid(
                LAYER,
                "log format",
                "no Spec ID event (a CC event log is crypto-agile)",
            ));
        }
        Ok(Self { log })
    }

    /// The RTMR a CC MR index names (1..4 → RTMR0..3).
    #[must_use]
    pub fn rtmr_of(mr_index: u32) -> Option<usize> {
        let i = usize::try_from(mr_index).ok()?.checked_sub(1)?;
        (i < RTMR_COUNT).then_some(i)
    }

    /// Replays RTMR0..3 from the events' SHA-384 digests.
    ///
    /// # Errors
    /// When the log has no SHA-384 bank (e.g. Hygon CSV logs use SM3), an extending event targets MRTD or an
    /// index beyond RTMR3, or an event lacks its SHA-384 digest.
    pub fn replay(&self) -> Result<Rtmrs> {
        let banks = self.log.bank_ids();
        if !banks.contains(&HashAlg::Sha384.tpm_alg_id()) {
            let names: Vec<String> = banks.into_iter().map(alg_name).collect();
            return Err(Error::invalid(
                LAYER,
                "digest algorithm",
                format!("log has no sha384 bank (has {}); cannot replay RTMRs", names.join(", ")),
            ));
        }
        let mut regs: Vec<crate::digest::Register> =
            (0..RTMR_COUNT).map(|_| crate::digest::Register::zero(HashAlg::Sha384)).collect();
        for (n, e) in self.log.events.iter().enumerate() {
            if e.event_type == event_type::NO_ACTION {
                continue;
            }
            let at = e.offset;
            let rtmr = Self::rtmr_of(e.index).ok_or_else(|| {
                Error::invalid(
                    LAYER,
                    "mr index",
                    format!(
                        "event {n} at offset {at:#x} extends index {} (only 1..4 = RTMR0..3 are extended)",
                        e.index
                    ),
                )
            })?;
            let d = e.digest(HashAlg::Sha384).ok_or_else(|| {
                Error::invalid(LAYER, "digests", format!("event {n} at offset {at:#x} has no sha384 digest"))
            })?;
            if let Some(reg) = regs.get_mut(rtmr) {
                reg.extend(d);
            }
        }
        let mut out = [[0u8; 48]; RTMR_COUNT];
        for (slot, reg) in out.iter_mut().zip(regs) {
            slot.copy_from_slice(reg.value());
        }
        Ok(Rtmrs(out))
    }
}

impl Rtmrs {
    /// Checks RTMRs against expected values; `None` skips that RTMR (explicitly).
    ///
    /// # Errors
    /// [`Error::RegisterMismatch`] ("rtmr1 mismatch: expected …, got …") for the first difference.
    pub fn check(&self, expected: &[Option<[u8; 48]>; RTMR_COUNT]) -> Result<()> {
        for (i, (got, want)) in self.0.iter().zip(expected).enumerate() {
            if let Some(want) = want
                && want != got
            {
                return Err(Error::mismatch(format!("rtmr{i}"), want, got));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_checks() {
        let mut t = vec![0u8; 56];
        t[..4].copy_from_slice(b"CCEL");
        t[4] = 56;
        t[36] = 2;
        t[40..48].copy_from_slice(&0x10000u64.to_le_bytes());
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[9] = 0u8.wrapping_sub(sum);
        let table = CcelTable::parse(&t).unwrap();
        assert_eq!(table.cc_type, CC_TYPE_TDX);
        assert_eq!(table.log_area_min_len, 0x10000);
        let mut bad = t.clone();
        bad[50] ^= 1;
        assert!(CcelTable::parse(&bad).unwrap_err().to_string().contains("checksum"));
        assert!(CcelTable::parse(&t[..40]).is_err());
        let mut sig = t;
        sig[0] = b'X';
        assert!(CcelTable::parse(&sig).is_err());
    }

    #[test]
    fn rtmr_mapping() {
        assert_eq!(CcelLog::rtmr_of(0), None);
        assert_eq!(CcelLog::rtmr_of(1), Some(0));
        assert_eq!(CcelLog::rtmr_of(4), Some(3));
        assert_eq!(CcelLog::rtmr_of(5), None);
    }
}
