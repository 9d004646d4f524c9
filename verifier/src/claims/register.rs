//! Registers as a type: a PCR of one bank, MRTD, an RTMR, the SEV-SNP launch measurement. Their text form
//! ("pcr11.sha256", "mrtd", "rtmr3", "snp.measurement") is what reference values, golden documents and tokens
//! use; parsing it is strict, so a misspelt register is an error rather than a register nobody has.

use std::fmt;
use std::str::FromStr;

use sealroom_measurements::evidence::HashAlg;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::appraisal::Layer;

/// Highest PCR index of a TPM 2.0 PC client.
const MAX_PCR: u8 = 23;
/// TDX has four RTMRs.
const MAX_RTMR: u8 = 3;

/// A measurement register the verifier read from signed evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Register {
    /// TPM PCR `index` of bank `bank`.
    Pcr {
        /// 0..=23.
        index: u8,
        /// The bank (hash algorithm).
        bank: HashAlg,
    },
    /// TDX MRTD (the TD's initial contents, SHA-384).
    Mrtd,
    /// TDX RTMR n (0..=3, SHA-384).
    Rtmr(u8),
    /// SEV-SNP launch MEASUREMENT (SHA-384).
    SnpMeasurement,
    /// SGX MRENCLAVE: the enclave's code (the workload of an SGX quote).
    SgxMrEnclave,
    /// SGX MRSIGNER: the enclave's signer.
    SgxMrSigner,
}

/// A register family: the registers one kind of evidence has together (a PCR bank, the RTMRs, MRTD, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// Every PCR of one bank.
    PcrBank(HashAlg),
    /// MRTD.
    Mrtd,
    /// RTMR0..3.
    Rtmr,
    /// The SNP launch measurement.
    SnpMeasurement,
    /// An SGX enclave's identity (MRENCLAVE, MRSIGNER).
    SgxEnclave,
}

/// The runtime (workload) register of a TPM: PCR 15.
pub const RUNTIME_PCR: u8 = sealroom_measurements::cel::RUNTIME_PCR;
/// The runtime (workload) register of a TD: RTMR3.
pub const RUNTIME_RTMR: u8 = sealroom_measurements::cel::RUNTIME_RTMR;

impl Register {
    /// The measured layer the register belongs to (`docs/architecture.md`, register allocation).
    #[must_use]
    pub fn layer(self) -> Option<Layer> {
        match self {
            Self::Mrtd | Self::SnpMeasurement | Self::Rtmr(0) => Some(Layer::Firmware),
            Self::Rtmr(1 | 2) => Some(Layer::Kernel),
            Self::Rtmr(_) | Self::SgxMrEnclave | Self::SgxMrSigner => Some(Layer::Workload),
            Self::Pcr { index, .. } => match index {
                0..=3 | 5..=7 => Some(Layer::Firmware),
                4 | 9 | 11 | 12 => Some(Layer::Kernel),
                15 => Some(Layer::Workload),
                _ => None,
            },
        }
    }

    /// Its family.
    #[must_use]
    pub fn family(self) -> Family {
        match self {
            Self::Pcr { bank, .. } => Family::PcrBank(bank),
            Self::Mrtd => Family::Mrtd,
            Self::Rtmr(_) => Family::Rtmr,
            Self::SnpMeasurement => Family::SnpMeasurement,
            Self::SgxMrEnclave | Self::SgxMrSigner => Family::SgxEnclave,
        }
    }

    /// Whether this is a runtime register (PCR 15 of any bank, RTMR3): where the agent's runtime log is extended.
    #[must_use]
    pub fn is_runtime(self) -> bool {
        matches!(self, Self::Pcr { index: RUNTIME_PCR, .. } | Self::Rtmr(RUNTIME_RTMR))
    }
}

fn alg_by_name(name: &str) -> Option<HashAlg> {
    [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512].into_iter().find(|a| a.name() == name)
}

impl fmt::Display for Register {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pcr { index, bank } => write!(f, "pcr{index}.{}", bank.name()),
            Self::Mrtd => f.write_str("mrtd"),
            Self::Rtmr(n) => write!(f, "rtmr{n}"),
            Self::SnpMeasurement => f.write_str("snp.measurement"),
            Self::SgxMrEnclave => f.write_str("sgx.mrenclave"),
            Self::SgxMrSigner => f.write_str("sgx.mrsigner"),
        }
    }
}

/// A register name that is not one of sealroom's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRegister(pub String);

impl fmt::Display for UnknownRegister {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown register {:?} (expected pcrN.<bank> with N 0..=23, mrtd, rtmr0..rtmr3, snp.measurement, \
             sgx.mrenclave, sgx.mrsigner)",
            self.0
        )
    }
}

impl std::error::Error for UnknownRegister {}

/// A decimal index without sign, leading zeros or other text.
fn index(digits: &str, max: u8) -> Option<u8> {
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u8>().ok().filter(|n| *n <= max)
}

impl FromStr for Register {
    type Err = UnknownRegister;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownRegister(s.to_owned());
        match s {
            "mrtd" => return Ok(Self::Mrtd),
            "snp.measurement" => return Ok(Self::SnpMeasurement),
            "sgx.mrenclave" => return Ok(Self::SgxMrEnclave),
            "sgx.mrsigner" => return Ok(Self::SgxMrSigner),
            _ => {}
        }
        if let Some(n) = s.strip_prefix("rtmr") {
            return index(n, MAX_RTMR).map(Self::Rtmr).ok_or_else(unknown);
        }
        let (pcr, bank) = s.strip_prefix("pcr").and_then(|r| r.split_once('.')).ok_or_else(unknown)?;
        let index = index(pcr, MAX_PCR).ok_or_else(unknown)?;
        let bank = alg_by_name(bank).ok_or_else(unknown)?;
        Ok(Self::Pcr { index, bank })
    }
}

impl Serialize for Register {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Register {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Bytes whose text form is lower-case hex (register values, digests, REPORT_DATA).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HexBytes(pub Vec<u8>);

impl HexBytes {
    /// The bytes.
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// Lower-case hex.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl From<&[u8]> for HexBytes {
    fn from(b: &[u8]) -> Self {
        Self(b.to_vec())
    }
}

impl<const N: usize> From<[u8; N]> for HexBytes {
    fn from(b: [u8; N]) -> Self {
        Self(b.to_vec())
    }
}

impl From<Vec<u8>> for HexBytes {
    fn from(b: Vec<u8>) -> Self {
        Self(b)
    }
}

impl fmt::Debug for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl fmt::Display for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for HexBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // Lower case only: the one text form, so equal values compare equal as text too.
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(serde::de::Error::custom(format!("{s:?} is not lower-case hex")));
        }
        hex::decode(&s).map(Self).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_names_round_trip_and_are_strict() {
        for name in [
            "pcr0.sha256",
            "pcr15.sha1",
            "pcr23.sha384",
            "mrtd",
            "rtmr0",
            "rtmr3",
            "snp.measurement",
            "sgx.mrenclave",
        ] {
            let r: Register = name.parse().unwrap();
            assert_eq!(r.to_string(), name);
        }
        for bad in
            ["pcr24.sha256", "pcr01.sha256", "pcr+1.sha256", "pcr1", "pcr1.md5", "rtmr4", "rtmr", "MRTD", ""]
        {
            assert!(bad.parse::<Register>().is_err(), "{bad}");
        }
        assert!(Register::Rtmr(3).is_runtime());
        assert!(Register::Pcr { index: 15, bank: HashAlg::Sha384 }.is_runtime());
        assert!(!Register::Rtmr(2).is_runtime());
        assert_eq!(Register::Rtmr(3).layer(), Some(Layer::Workload));
        assert_eq!(Register::Pcr { index: 8, bank: HashAlg::Sha256 }.layer(), None);
    }

    #[test]
    fn hex_bytes_are_lower_case_hex() {
        let v: HexBytes = serde_json::from_str("\"00ff\"").unwrap();
        assert_eq!(v.0, vec![0, 0xff]);
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"00ff\"");
        assert!(serde_json::from_str::<HexBytes>("\"00FF\"").is_err());
        assert!(serde_json::from_str::<HexBytes>("\"0\"").is_err());
    }
}
