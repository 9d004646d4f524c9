//! UEFI TCG2 event logs (TPM `binary_bios_measurements`) and the same format as used by the TDX CCEL log.
//!
//! Two on-disk formats:
//! - crypto-agile (TCG PC Client Platform Firmware Profile): a first `TCG_PCClientPCREvent` in SHA-1 format whose
//!   data is the "Spec ID Event03" (listing the banks and their digest sizes), then `TCG_PCR_EVENT2` records with a
//!   digest per bank;
//! - legacy SHA-1 (TCG 1.2 style): only `TCG_PCClientPCREvent` records.
//!
//! Parsing keeps every event, known or not, with its raw data; typed interpretation ([`Tcg2Event::details`]) is
//! separate and never makes a log fail. Replay extends every bank it can compute: `PCR = H(PCR || digest)` for
//! every event except `EV_NO_ACTION`, PCR 0 starting at the locality of a StartupLocality event.

use std::collections::BTreeMap;
use std::fmt;

use crate::digest::{self, Register};
use crate::error::{Error, Result};
use crate::evidence::HashAlg;
use crate::reader::Reader;

const LAYER: &str = "uefi event log";

/// Upper bound on one event's data (a full db/dbx variable is well below this).
const MAX_EVENT_DATA: usize = 16 * 1024 * 1024;
/// Upper bound on the number of digests in one event.
const MAX_DIGESTS: u32 = 16;

/// TCG event types (PC Client Platform Firmware Profile, table "Events").
pub mod event_type {
    /// EV_PREBOOT_CERT.
    pub const PREBOOT_CERT: u32 = 0x0000_0000;
    /// EV_POST_CODE.
    pub const POST_CODE: u32 = 0x0000_0001;
    /// EV_NO_ACTION: informational, never extended.
    pub const NO_ACTION: u32 = 0x0000_0003;
    /// EV_SEPARATOR.
    pub const SEPARATOR: u32 = 0x0000_0004;
    /// EV_ACTION.
    pub const ACTION: u32 = 0x0000_0005;
    /// EV_EVENT_TAG.
    pub const EVENT_TAG: u32 = 0x0000_0006;
    /// EV_S_CRTM_CONTENTS.
    pub const S_CRTM_CONTENTS: u32 = 0x0000_0007;
    /// EV_S_CRTM_VERSION.
    pub const S_CRTM_VERSION: u32 = 0x0000_0008;
    /// EV_CPU_MICROCODE.
    pub const CPU_MICROCODE: u32 = 0x0000_0009;
    /// EV_PLATFORM_CONFIG_FLAGS.
    pub const PLATFORM_CONFIG_FLAGS: u32 = 0x0000_000a;
    /// EV_TABLE_OF_DEVICES.
    pub const TABLE_OF_DEVICES: u32 = 0x0000_000b;
    /// EV_COMPACT_HASH.
    pub const COMPACT_HASH: u32 = 0x0000_000c;
    /// EV_IPL.
    pub const IPL: u32 = 0x0000_000d;
    /// EV_IPL_PARTITION_DATA.
    pub const IPL_PARTITION_DATA: u32 = 0x0000_000e;
    /// EV_NONHOST_CODE.
    pub const NONHOST_CODE: u32 = 0x0000_000f;
    /// EV_NONHOST_CONFIG.
    pub const NONHOST_CONFIG: u32 = 0x0000_0010;
    /// EV_NONHOST_INFO (GCE NonHostInfo).
    pub const NONHOST_INFO: u32 = 0x0000_0011;
    /// EV_OMIT_BOOT_DEVICE_EVENTS.
    pub const OMIT_BOOT_DEVICE_EVENTS: u32 = 0x0000_0012;
    /// EV_EFI_VARIABLE_DRIVER_CONFIG.
    pub const EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
    /// EV_EFI_VARIABLE_BOOT.
    pub const EFI_VARIABLE_BOOT: u32 = 0x8000_0002;
    /// EV_EFI_BOOT_SERVICES_APPLICATION.
    pub const EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
    /// EV_EFI_BOOT_SERVICES_DRIVER.
    pub const EFI_BOOT_SERVICES_DRIVER: u32 = 0x8000_0004;
    /// EV_EFI_RUNTIME_SERVICES_DRIVER.
    pub const EFI_RUNTIME_SERVICES_DRIVER: u32 = 0x8000_0005;
    /// EV_EFI_GPT_EVENT.
    pub const EFI_GPT_EVENT: u32 = 0x8000_0006;
    /// EV_EFI_ACTION.
    pub const EFI_ACTION: u32 = 0x8000_0007;
    /// EV_EFI_PLATFORM_FIRMWARE_BLOB.
    pub const EFI_PLATFORM_FIRMWARE_BLOB: u32 = 0x8000_0008;
    /// EV_EFI_HANDOFF_TABLES.
    pub const EFI_HANDOFF_TABLES: u32 = 0x8000_0009;
    /// EV_EFI_PLATFORM_FIRMWARE_BLOB2.
    pub const EFI_PLATFORM_FIRMWARE_BLOB2: u32 = 0x8000_000a;
    /// EV_EFI_HANDOFF_TABLES2.
    pub const EFI_HANDOFF_TABLES2: u32 = 0x8000_000b;
    /// EV_EFI_VARIABLE_BOOT2.
    pub const EFI_VARIABLE_BOOT2: u32 = 0x8000_000c;
    /// EV_EFI_GPT_EVENT2.
    pub const EFI_GPT_EVENT2: u32 = 0x8000_000d;
    /// EV_EFI_HCRTM_EVENT.
    pub const EFI_HCRTM_EVENT: u32 = 0x8000_0010;
    /// EV_EFI_VARIABLE_AUTHORITY.
    pub const EFI_VARIABLE_AUTHORITY: u32 = 0x8000_00e0;
    /// EV_EFI_SPDM_FIRMWARE_BLOB.
    pub const EFI_SPDM_FIRMWARE_BLOB: u32 = 0x8000_00e1;
    /// EV_EFI_SPDM_FIRMWARE_CONFIG.
    pub const EFI_SPDM_FIRMWARE_CONFIG: u32 = 0x8000_00e2;

    /// The spec name of an event type, if it has one.
    #[must_use]
    pub fn name(t: u32) -> Option<&'static str> {
        Some(match t {
            PREBOOT_CERT => "EV_PREBOOT_CERT",
            POST_CODE => "EV_POST_CODE",
            0x0000_0002 => "EV_UNUSED",
            NO_ACTION => "EV_NO_ACTION",
            SEPARATOR => "EV_SEPARATOR",
            ACTION => "EV_ACTION",
            EVENT_TAG => "EV_EVENT_TAG",
            S_CRTM_CONTENTS => "EV_S_CRTM_CONTENTS",
            S_CRTM_VERSION => "EV_S_CRTM_VERSION",
            CPU_MICROCODE => "EV_CPU_MICROCODE",
            PLATFORM_CONFIG_FLAGS => "EV_PLATFORM_CONFIG_FLAGS",
            TABLE_OF_DEVICES => "EV_TABLE_OF_DEVICES",
            COMPACT_HASH => "EV_COMPACT_HASH",
            IPL => "EV_IPL",
            IPL_PARTITION_DATA => "EV_IPL_PARTITION_DATA",
            NONHOST_CODE => "EV_NONHOST_CODE",
            NONHOST_CONFIG => "EV_NONHOST_CONFIG",
            NONHOST_INFO => "EV_NONHOST_INFO",
            OMIT_BOOT_DEVICE_EVENTS => "EV_OMIT_BOOT_DEVICE_EVENTS",
            EFI_VARIABLE_DRIVER_CONFIG => "EV_EFI_VARIABLE_DRIVER_CONFIG",
            EFI_VARIABLE_BOOT => "EV_EFI_VARIABLE_BOOT",
            EFI_BOOT_SERVICES_APPLICATION => "EV_EFI_BOOT_SERVICES_APPLICATION",
            EFI_BOOT_SERVICES_DRIVER => "EV_EFI_BOOT_SERVICES_DRIVER",
            EFI_RUNTIME_SERVICES_DRIVER => "EV_EFI_RUNTIME_SERVICES_DRIVER",
            EFI_GPT_EVENT => "EV_EFI_GPT_EVENT",
            EFI_ACTION => "EV_EFI_ACTION",
            EFI_PLATFORM_FIRMWARE_BLOB => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
            EFI_HANDOFF_TABLES => "EV_EFI_HANDOFF_TABLES",
            EFI_PLATFORM_FIRMWARE_BLOB2 => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
            EFI_HANDOFF_TABLES2 => "EV_EFI_HANDOFF_TABLES2",
            EFI_VARIABLE_BOOT2 => "EV_EFI_VARIABLE_BOOT2",
            EFI_GPT_EVENT2 => "EV_EFI_GPT_EVENT2",
            EFI_HCRTM_EVENT => "EV_EFI_HCRTM_EVENT",
            EFI_VARIABLE_AUTHORITY => "EV_EFI_VARIABLE_AUTHORITY",
            EFI_SPDM_FIRMWARE_BLOB => "EV_EFI_SPDM_FIRMWARE_BLOB",
            EFI_SPDM_FIRMWARE_CONFIG => "EV_EFI_SPDM_FIRMWARE_CONFIG",
            _ => return None,
        })
    }
}

/// The log's on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Crypto-agile, with a Spec ID event.
    CryptoAgile,
    /// TCG 1.2 style, SHA-1 only.
    LegacySha1,
}

/// The "Spec ID Event03" header of a crypto-agile log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SpecIdEvent {
    /// Platform class (0 client, 1 server).
    pub platform_class: u32,
    /// Spec version major.minor, errata.
    pub spec_version: (u8, u8, u8),
    /// Size of UINTN in the firmware (1 = 32-bit, 2 = 64-bit).
    pub uintn_size: u8,
    /// (TPM algorithm id, digest size) of every bank the log carries.
    pub algorithms: Vec<(u16, u16)>,
    /// Vendor information.
    pub vendor_info: Vec<u8>,
}

/// One digest of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDigest {
    /// TPM algorithm id (may be one sealroom cannot compute, e.g. SM3 0x0012).
    pub alg_id: u16,
    /// The digest.
    pub digest: Vec<u8>,
}

impl EventDigest {
    /// The algorithm, when sealroom can compute it.
    #[must_use]
    pub fn alg(&self) -> Option<HashAlg> {
        HashAlg::from_tpm_alg_id(self.alg_id)
    }
}

/// The name of a TPM algorithm id, as printed.
#[must_use]
pub fn alg_name(alg_id: u16) -> String {
    match HashAlg::from_tpm_alg_id(alg_id) {
        Some(a) => a.name().to_string(),
        None if alg_id == 0x0012 => "sm3_256".to_string(),
        None => format!("alg_{alg_id:#06x}"),
    }
}

/// One event, raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcg2Event {
    /// Offset of the event in the log.
    pub offset: usize,
    /// PCR index (TPM) or CC measurement register index (CCEL).
    pub index: u32,
    /// Event type.
    pub event_type: u32,
    /// Digests, in log order.
    pub digests: Vec<EventDigest>,
    /// The event data.
    pub data: Vec<u8>,
}

/// A parsed log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcg2Log {
    /// The format.
    pub format: LogFormat,
    /// The Spec ID event of a crypto-agile log.
    pub spec_id: Option<SpecIdEvent>,
    /// Every event after the header (the Spec ID event of an agile log is not repeated here; a legacy log has none).
    pub events: Vec<Tcg2Event>,
    /// Bytes of 0x00/0xFF padding after the last event (CCEL log areas are padded).
    pub padding: usize,
}

const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";

impl Tcg2Log {
    /// Parses a log.
    ///
    /// # Errors
    /// A malformed log, with the offset where it broke.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        if r.is_empty() {
            return Err(Error::invalid(LAYER, "log", "empty"));
        }
        let first = parse_legacy_event(&mut r)?;
        // TPM logs put the Spec ID event on PCR 0; TDX CCEL logs on MR index 1 (RTMR0): the signature decides.
        let spec_id =
            if first.event_type == event_type::NO_ACTION && first.data.starts_with(SPEC_ID_SIGNATURE) {
                Some(parse_spec_id(&first)?)
            } else {
                None
            };
        let mut events = Vec::new();
        let format = match &spec_id {
            Some(spec) => {
                let sizes: BTreeMap<u16, usize> =
                    spec.algorithms.iter().map(|(id, size)| (*id, usize::from(*size))).collect();
                while !r.is_empty() && !is_padding(&r) {
                    events.push(parse_agile_event(&mut r, &sizes)?);
                }
                LogFormat::CryptoAgile
            }
            None => {
                events.push(first);
                while !r.is_empty() && !is_padding(&r) {
                    events.push(parse_legacy_event(&mut r)?);
                }
                LogFormat::LegacySha1
            }
        };
        Ok(Self { format, spec_id, events, padding: r.left() })
    }

    /// TPM algorithm ids of the banks the log carries.
    #[must_use]
    pub fn bank_ids(&self) -> Vec<u16> {
        match &self.spec_id {
            Some(spec) => spec.algorithms.iter().map(|(id, _)| *id).collect(),
            None => vec![HashAlg::Sha1.tpm_alg_id()],
        }
    }

    /// The PCR 0 locality from a StartupLocality event, if any.
    #[must_use]
    pub fn startup_locality(&self) -> Option<u8> {
        self.events.iter().find_map(|e| match e.details() {
            EventDetails::StartupLocality { locality } if e.index == 0 => Some(locality),
            _ => None,
        })
    }

    /// Replays every bank sealroom can compute. `with_locality` applies a StartupLocality event to PCR 0 (TPM
    /// logs); CCEL logs pass `false`.
    ///
    /// # Errors
    /// When an extended event lacks a digest for a bank the log declares.
    pub fn replay(&self, with_locality: bool) -> Result<Replay> {
        let locality = if with_locality { self.startup_locality() } else { None };
        let mut banks = BTreeMap::new();
        let mut not_replayed = Vec::new();
        for id in self.bank_ids() {
            let Some(alg) = HashAlg::from_tpm_alg_id(id) else {
                not_replayed.push(id);
                continue;
            };
            let mut regs: BTreeMap<u32, Register> = BTreeMap::new();
            for (n, e) in self.events.iter().enumerate() {
                if e.event_type == event_type::NO_ACTION {
                    continue;
                }
                let d = e.digest(alg).ok_or_else(|| {
                    Error::invalid(
                        LAYER,
                        "digests",
                        format!("event {n} at offset {:#x} has no {} digest", e.offset, alg.name()),
                    )
                })?;
                regs.entry(e.index)
                    .or_insert_with(|| match locality {
                        Some(l) if e.index == 0 => Register::with_locality(alg, l),
                        _ => Register::zero(alg),
                    })
                    .extend(d);
            }
            banks.insert(alg, regs.into_iter().map(|(i, r)| (i, r.into_value())).collect());
        }
        Ok(Replay { banks, not_replayed, locality })
    }
}

/// Replayed registers per bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Bank → register index → value, for every index that at least one event extended.
    pub banks: BTreeMap<HashAlg, BTreeMap<u32, Vec<u8>>>,
    /// Banks the log carries that sealroom cannot compute (e.g. SM3).
    pub not_replayed: Vec<u16>,
    /// The StartupLocality applied to PCR 0, if any.
    pub locality: Option<u8>,
}

impl Replay {
    /// The replayed value of register `index` in bank `alg`: zeros when no event touched it.
    ///
    /// # Errors
    /// When the log does not carry bank `alg`.
    pub fn value(&self, alg: HashAlg, index: u32) -> Result<Vec<u8>> {
        let bank = self
            .banks
            .get(&alg)
            .ok_or_else(|| Error::invalid(LAYER, "bank", format!("the log has no {} bank", alg.name())))?;
        Ok(bank.get(&index).cloned().unwrap_or_else(|| match self.locality {
            Some(l) if index == 0 => Register::with_locality(alg, l).into_value(),
            _ => vec![0u8; alg.digest_len()],
        }))
    }

    /// Checks every `(index, value)` of `expected` in bank `alg`; the first difference is the error.
    ///
    /// # Errors
    /// [`Error::RegisterMismatch`] ("pcr 0 (sha1) mismatch: expected …, got …").
    pub fn check(&self, alg: HashAlg, expected: &BTreeMap<u32, Vec<u8>>) -> Result<()> {
        for (index, want) in expected {
            let got = self.value(alg, *index)?;
            if &got != want {
                return Err(Error::mismatch(format!("pcr {index} ({})", alg.name()), want, &got));
            }
        }
        Ok(())
    }
}

fn is_padding(r: &Reader<'_>) -> bool {
    let rest = r.clone().rest();
    rest.iter().all(|b| *b == 0xff) || rest.iter().all(|b| *b == 0)
}

fn parse_legacy_event(r: &mut Reader<'_>) -> Result<Tcg2Event> {
    let offset = r.offset();
    let m = Error::malformed(LAYER);
    let index = r.u32_le("pcr index").map_err(&m)?;
    let event_type = r.u32_le("event type").map_err(&m)?;
    let digest = r.take(20, "sha1 digest").map_err(&m)?.to_vec();
    let data = event_data(r)?;
    Ok(Tcg2Event {
        offset,
        index,
        event_type,
        digests: vec![EventDigest { alg_id: HashAlg::Sha1.tpm_alg_id(), digest }],
        data,
    })
}

fn event_data(r: &mut Reader<'_>) -> Result<Vec<u8>> {
    let at = r.offset();
    let size = Reader::len_u32(r.u32_le("event data size").map_err(Error::malformed(LAYER))?);
    if size > MAX_EVENT_DATA {
        return Err(Error::invalid(
            LAYER,
            "event data size",
            format!("{size} at offset {at:#x} exceeds {MAX_EVENT_DATA}"),
        ));
    }
    Ok(r.take(size, "event data").map_err(Error::malformed(LAYER))?.to_vec())
}

fn parse_agile_event(r: &mut Reader<'_>, sizes: &BTreeMap<u16, usize>) -> Result<Tcg2Event> {
    let offset = r.offset();
    let m = Error::malformed(LAYER);
    let index = r.u32_le("pcr index").map_err(&m)?;
    let event_type = r.u32_le("event type").map_err(&m)?;
    let count_at = r.offset();
    let count = r.u32_le("digest count").map_err(&m)?;
    if count > MAX_DIGESTS {
        return Err(Error::invalid(LAYER, "digest count", format!("{count} at offset {count_at:#x}")));
    }
    let mut digests = Vec::new();
    for _ in 0..count {
        let at = r.offset();
        let alg_id = r.u16_le("digest algorithm").map_err(&m)?;
        let size = *sizes.get(&alg_id).ok_or_else(|| {
            Error::invalid(
                LAYER,
                "digest algorithm",
                format!("{alg_id:#06x} at offset {at:#x} is not declared in the Spec ID event"),
            )
        })?;
        if digests.iter().any(|d: &EventDigest| d.alg_id == alg_id) {
            return Err(Error::invalid(
                LAYER,
                "digests",
                format!("duplicate {} at offset {at:#x}", alg_name(alg_id)),
            ));
        }
        let digest = r.take(size, "digest").map_err(&m)?.to_vec();
        digests.push(EventDigest { alg_id, digest });
    }
    let data = event_data(r)?;
    Ok(Tcg2Event { offset, index, event_type, digests, data })
}

fn parse_spec_id(first: &Tcg2Event) -> Result<SpecIdEvent> {
    let mut r = Reader::new(&first.data);
    let m = |e| Error::Malformed { layer: "uefi event log spec id event", source: e };
    r.skip(16, "signature").map_err(m)?;
    let platform_class = r.u32_le("platform class").map_err(m)?;
    let minor = r.u8("spec version minor").map_err(m)?;
    let major = r.u8("spec version major").map_err(m)?;
    let errata = r.u8("spec errata").map_err(m)?;
    let uintn_size = r.u8("uintn size").map_err(m)?;
    let n = r.u32_le("number of algorithms").map_err(m)?;
    if n == 0 || n > MAX_DIGESTS {
        return Err(Error::invalid(LAYER, "spec id algorithms", format!("{n} algorithms")));
    }
    let mut algorithms = Vec::new();
    for _ in 0..n {
        let id = r.u16_le("algorithm id").map_err(m)?;
        let size = r.u16_le("digest size").map_err(m)?;
        if let Some(alg) = HashAlg::from_tpm_alg_id(id)
            && usize::from(size) != alg.digest_len()
        {
            return Err(Error::invalid(
                LAYER,
                "spec id digest size",
                format!("{} declared as {size} bytes", alg.name()),
            ));
        }
        algorithms.push((id, size));
    }
    let vendor_len = r.u8("vendor info size").map_err(m)?;
    let vendor_info = r.take(usize::from(vendor_len), "vendor info").map_err(m)?.to_vec();
    r.finish("spec id event").map_err(m)?;
    Ok(SpecIdEvent {
        platform_class,
        spec_version: (major, minor, errata),
        uintn_size,
        algorithms,
        vendor_info,
    })
}

/// The typed interpretation of an event's data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventDetails {
    /// EV_NO_ACTION StartupLocality: the locality PCR 0 starts at.
    StartupLocality {
        /// The locality (0..4).
        locality: u8,
    },
    /// Another EV_NO_ACTION event, by its 16-byte signature (e.g. "SP800-155 Event").
    NoAction {
        /// The signature, printable part.
        signature: String,
    },
    /// EV_SEPARATOR with its value (0 = normal, 0xFFFFFFFF = error).
    Separator {
        /// The 32-bit value.
        value: u32,
    },
    /// A text event (EV_EFI_ACTION, EV_ACTION, EV_IPL, EV_S_CRTM_VERSION in UTF-16, EV_POST_CODE strings …).
    Text {
        /// The text.
        text: String,
    },
    /// EV_EFI_VARIABLE_*: a UEFI variable.
    Variable {
        /// Vendor GUID.
        guid: String,
        /// Variable name.
        name: String,
        /// Length of the variable data.
        data_len: usize,
    },
    /// EV_EFI_BOOT_SERVICES_APPLICATION / _DRIVER / RUNTIME_SERVICES_DRIVER: a PE image load.
    ImageLoad {
        /// Where the image was loaded.
        location: u64,
        /// Its length in memory.
        length: u64,
        /// Its device path, as text.
        device_path: String,
    },
    /// EV_EFI_PLATFORM_FIRMWARE_BLOB(2).
    FirmwareBlob {
        /// Description (BLOB2 only).
        description: String,
        /// Base address.
        base: u64,
        /// Length.
        length: u64,
    },
    /// EV_NONHOST_INFO from GCE firmware: which confidential-computing technology the VM runs.
    GceNonHostInfo {
        /// 0 none, 1 AMD SEV, 2 AMD SEV-ES, 3 Intel TDX, 4 AMD SEV-SNP.
        technology: u8,
        /// Its name.
        technology_name: &'static str,
    },
    /// EV_EVENT_TAG: tagged event (id, then data).
    EventTag {
        /// The tag id.
        id: u32,
        /// The tagged data as text when it is printable.
        text: String,
    },
    /// Not interpreted (unknown type or unexpected layout); the raw data is still in the event.
    Raw {
        /// Why it was not interpreted, when it was expected to be.
        note: String,
    },
}

impl Tcg2Event {
    /// The event type's spec name, or its number.
    #[must_use]
    pub fn type_name(&self) -> String {
        event_type::name(self.event_type)
            .map_or_else(|| format!("EV_UNKNOWN({:#010x})", self.event_type), str::to_string)
    }

    /// The digest in bank `alg`.
    #[must_use]
    pub fn digest(&self, alg: HashAlg) -> Option<&[u8]> {
        let id = alg.tpm_alg_id();
        self.digests.iter().find(|d| d.alg_id == id).map(|d| d.digest.as_slice())
    }

    /// Whether every computable digest is the hash of the event data (true for events that measure their own
    /// data, such as EV_EFI_ACTION and EV_SEPARATOR; false for events that measure something else, such as a
    /// loaded image).
    #[must_use]
    pub fn digests_match_data(&self) -> bool {
        let mut any = false;
        for d in &self.digests {
            if let Some(alg) = d.alg() {
                any = true;
                if digest::hash(alg, &self.data) != d.digest {
                    return false;
                }
            }
        }
        any
    }

    /// The typed interpretation of the data.
    #[must_use]
    pub fn details(&self) -> EventDetails {
        details(self.event_type, &self.data).unwrap_or_else(|note| EventDetails::Raw { note })
    }
}

impl fmt::Display for EventDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StartupLocality { locality } => write!(f, "StartupLocality {locality}"),
            Self::NoAction { signature } => write!(f, "{signature:?}"),
            Self::Separator { value } => write!(f, "separator {value:#x}"),
            Self::Text { text } => write!(f, "{text:?}"),
            Self::Variable { guid, name, data_len } => write!(f, "{name} ({guid}), {data_len} bytes"),
            Self::ImageLoad { location, length, device_path } => {
                write!(f, "image at {location:#x}, {length} bytes, {device_path}")
            }
            Self::FirmwareBlob { description, base, length } => {
                write!(f, "{description} base {base:#x} length {length:#x}")
            }
            Self::GceNonHostInfo { technology, technology_name } => {
                write!(f, "GCE NonHostInfo: {technology_name} ({technology})")
            }
            Self::EventTag { id, text } => write!(f, "tag {id:#x} {text:?}"),
            Self::Raw { note } => f.write_str(note),
        }
    }
}

fn details(ty: u32, data: &[u8]) -> std::result::Result<EventDetails, String> {
    use event_type as t;
    let err = |e: crate::reader::ReadError| e.to_string();
    let mut r = Reader::new(data);
    Ok(match ty {
        t::NO_ACTION => {
            let sig = r.take(16, "no-action signature").map_err(err)?;
            if sig == STARTUP_LOCALITY_SIGNATURE {
                EventDetails::StartupLocality { locality: r.u8("locality").map_err(err)? }
            } else {
                EventDetails::NoAction { signature: printable(sig) }
            }
        }
        t::SEPARATOR => {
            let value = r.u32_le("separator").map_err(err)?;
            r.finish("separator").map_err(err)?;
            EventDetails::Separator { value }
        }
        t::EFI_ACTION | t::ACTION | t::IPL | t::POST_CODE if is_text(data) => {
            EventDetails::Text { text: printable(data) }
        }
        t::S_CRTM_VERSION => EventDetails::Text { text: utf16(data) },
        t::EFI_VARIABLE_DRIVER_CONFIG
        | t::EFI_VARIABLE_BOOT
        | t::EFI_VARIABLE_BOOT2
        | t::EFI_VARIABLE_AUTHORITY => {
            let guid = guid(&r.take_array::<16>("variable guid").map_err(err)?);
            let name_len = r.u64_le("variable name length").map_err(err)?;
            let data_len = r.u64_le("variable data length").map_err(err)?;
            let name_bytes =
                usize::try_from(name_len).ok().and_then(|n| n.checked_mul(2)).ok_or("name too long")?;
            let name = utf16(r.take(name_bytes, "variable name").map_err(err)?);
            let data_len = usize::try_from(data_len).map_err(|_| "data too long".to_string())?;
            r.skip(data_len, "variable data").map_err(err)?;
            r.finish("variable").map_err(err)?;
            EventDetails::Variable { guid, name, data_len }
        }
        t::EFI_BOOT_SERVICES_APPLICATION | t::EFI_BOOT_SERVICES_DRIVER | t::EFI_RUNTIME_SERVICES_DRIVER => {
            let location = r.u64_le("image location").map_err(err)?;
            let length = r.u64_le("image length").map_err(err)?;
            r.skip(8, "image link time address").map_err(err)?;
            let dp_len = usize::try_from(r.u64_le("device path length").map_err(err)?)
                .map_err(|_| "device path too long".to_string())?;
            let dp = r.take(dp_len, "device path").map_err(err)?;
            EventDetails::ImageLoad { location, length, device_path: device_path_text(dp) }
        }
        t::EFI_PLATFORM_FIRMWARE_BLOB => {
            let base = r.u64_le("blob base").map_err(err)?;
            let length = r.u64_le("blob length").map_err(err)?;
            EventDetails::FirmwareBlob { description: String::new(), base, length }
        }
        t::EFI_PLATFORM_FIRMWARE_BLOB2 => {
            let n = r.u8("blob description size").map_err(err)?;
            let description = printable(r.take(usize::from(n), "blob description").map_err(err)?);
            let base = r.u64_le("blob base").map_err(err)?;
            let length = r.u64_le("blob length").map_err(err)?;
            EventDetails::FirmwareBlob { description, base, length }
        }
        t::NONHOST_INFO if data.starts_with(b"GCE NonHostInfo\0") => {
            r.skip(16, "signature").map_err(err)?;
            let technology = r.u8("confidential technology").map_err(err)?;
            let technology_name = match technology {
                0 => "none",
                1 => "AMD SEV",
                2 => "AMD SEV-ES",
                3 => "Intel TDX",
                4 => "AMD SEV-SNP",
                _ => "unknown",
            };
            EventDetails::GceNonHostInfo { technology, technology_name }
        }
        t::EVENT_TAG => {
            let id = r.u32_le("tag id").map_err(err)?;
            let len = Reader::len_u32(r.u32_le("tag data size").map_err(err)?);
            let text = printable(r.take(len, "tag data").map_err(err)?);
            EventDetails::EventTag { id, text }
        }
        t::EFI_HANDOFF_TABLES2 => {
            let n = r.u8("table description size").map_err(err)?;
            EventDetails::Text { text: printable(r.take(usize::from(n), "table description").map_err(err)?) }
        }
        other => {
            let note = match event_type::name(other) {
                Some(_) => format!("{} bytes", data.len()),
                None => format!("unknown event type {other:#010x}, {} bytes", data.len()),
            };
            EventDetails::Raw { note }
        }
    })
}

fn is_text(data: &[u8]) -> bool {
    let trimmed = data.strip_suffix(&[0]).unwrap_or(data);
    !trimmed.is_empty()
        && trimmed.iter().all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\n' || *b == b'\t')
}

fn printable(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    s.trim_end_matches('\0').to_string()
}

fn utf16(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c.first().copied().unwrap_or(0), c.get(1).copied().unwrap_or(0)]))
        .collect();
    String::from_utf16_lossy(&units).trim_end_matches('\0').to_string()
}

/// An EFI GUID in its registry form (first three fields little-endian).
#[must_use]
pub fn guid(b: &[u8; 16]) -> String {
    let [a0, a1, a2, a3, b0, b1, c0, c1, rest @ ..] = *b;
    format!(
        "{:08x}-{:04x}-{:04x}-{}-{}",
        u32::from_le_bytes([a0, a1, a2, a3]),
        u16::from_le_bytes([b0, b1]),
        u16::from_le_bytes([c0, c1]),
        hex::encode(rest.get(..2).unwrap_or_default()),
        hex::encode(rest.get(2..).unwrap_or_default())
    )
}

/// A short text form of a UEFI device path (media file paths, hard drive partitions, firmware volumes).
#[must_use]
pub fn device_path_text(dp: &[u8]) -> String {
    let mut r = Reader::new(dp);
    let mut parts = Vec::new();
    while !r.is_empty() {
        let (Ok(ty), Ok(sub), Ok(len)) = (r.u8("type"), r.u8("subtype"), r.u16_le("length")) else {
            parts.push("<truncated>".to_string());
            break;
        };
        let Ok(body) = r.take(usize::from(len).saturating_sub(4), "node") else {
            parts.push("<truncated>".to_string());
            break;
        };
        let text = match (ty, sub) {
            (0x7f, 0xff) => break,
            (0x7f, _) => "|".to_string(),
            (4, 4) => format!("File({})", utf16(body)),
            (4, 1) => {
                let part =
                    body.get(..4).and_then(|p| <[u8; 4]>::try_from(p).ok()).map_or(0, u32::from_le_bytes);
                let sig = body
                    .get(20..36)
                    .and_then(|g| <&[u8; 16]>::try_from(g).ok())
                    .map(guid)
                    .unwrap_or_default();
                format!("HD({part},{sig})")
            }
            (4, 6) | (4, 7) => {
                let g =
                    body.get(..16).and_then(|g| <&[u8; 16]>::try_from(g).ok()).map(guid).unwrap_or_default();
                if sub == 6 { format!("FvFile({g})") } else { format!("Fv({g})") }
            }
            (1, 1) => format!("Pci({})", hex::encode(body)),
            (2, 1) => format!("Acpi({})", hex::encode(body)),
            (3, _) => format!("Msg({sub},{})", hex::encode(body)),
            _ => format!("Node({ty},{sub},{} bytes)", body.len()),
        };
        parts.push(text);
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agile_header(algs: &[(u16, u16)]) -> Vec<u8> {
        let mut spec = SPEC_ID_SIGNATURE.to_vec();
        spec.extend_from_slice(&0u32.to_le_bytes());
        spec.extend_from_slice(&[0, 2, 0, 2]);
        spec.extend_from_slice(&u32::try_from(algs.len()).unwrap().to_le_bytes());
        for (id, size) in algs {
            spec.extend_from_slice(&id.to_le_bytes());
            spec.extend_from_slice(&size.to_le_bytes());
        }
        spec.push(0);
        let mut out = Vec::new();
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&event_type::NO_ACTION.to_le_bytes());
        out.extend_from_slice(&[0u8; 20]);
        out.extend_from_slice(&u32::try_from(spec.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&spec);
        out
    }

    fn agile_event(pcr: u32, ty: u32, data: &[u8], algs: &[HashAlg]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&pcr.to_le_bytes());
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&u32::try_from(algs.len()).unwrap().to_le_bytes());
        for a in algs {
            out.extend_from_slice(&a.tpm_alg_id().to_le_bytes());
            out.extend_from_slice(&digest::hash(*a, data));
        }
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn synthetic_agile_log_replays_with_locality() {
        let algs = [HashAlg::Sha256, HashAlg::Sha384];
        let mut log = agile_header(&[(0x0b, 32), (0x0c, 48)]);
        let mut loc = STARTUP_LOCALITY_SIGNATURE.to_vec();
        loc.push(3);
        log.extend(agile_event(0, event_type::NO_ACTION, &loc, &algs));
        log.extend(agile_event(0, event_type::SEPARATOR, &[0, 0, 0, 0], &algs));
        log.extend(agile_event(
            4,
            event_type::EFI_ACTION,
            b"Calling EFI Application from Boot Option",
            &algs,
        ));
        log.extend([0xffu8; 64]);
        let parsed = Tcg2Log::parse(&log).unwrap();
        assert_eq!(parsed.format, LogFormat::CryptoAgile);
        assert_eq!(parsed.events.len(), 3);
        assert_eq!(parsed.padding, 64);
        assert_eq!(parsed.startup_locality(), Some(3));
        let replay = parsed.replay(true).unwrap();
        let mut pcr0 = vec![0u8; 32];
        pcr0[31] = 3;
        let pcr0 = digest::hash(HashAlg::Sha256, &[pcr0, digest::hash(HashAlg::Sha256, &[0; 4])].concat());
        assert_eq!(replay.value(HashAlg::Sha256, 0).unwrap(), pcr0);
        assert_eq!(replay.value(HashAlg::Sha256, 7).unwrap(), vec![0u8; 32]);
        let expected = BTreeMap::from([(0u32, vec![0u8; 32])]);
        let err = replay.check(HashAlg::Sha256, &expected).unwrap_err().to_string();
        assert!(err.starts_with("pcr 0 (sha256) mismatch: expected 0000"), "{err}");
        assert!(replay.value(HashAlg::Sha1, 0).is_err());
        assert_eq!(
            parsed.events[2].details(),
            EventDetails::Text { text: "Calling EFI Application from Boot Option".into() }
        );
        assert!(parsed.events[2].digests_match_data());
    }

    #[test]
    fn malformed_logs_name_the_offset() {
        let algs = [HashAlg::Sha256];
        let mut log = agile_header(&[(0x0b, 32)]);
        let start = log.len();
        log.extend(agile_event(0, event_type::SEPARATOR, &[0, 0, 0, 0], &algs));
        log.truncate(log.len() - 2);
        let err = Tcg2Log::parse(&log).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("uefi event log: event data at offset {:#x}: needs 4 bytes, 2 left", start + 50)
        );
        // An algorithm not declared in the Spec ID event.
        let mut log = agile_header(&[(0x0b, 32)]);
        log.extend(agile_event(0, event_type::SEPARATOR, &[0, 0, 0, 0], &[HashAlg::Sha384]));
        let err = Tcg2Log::parse(&log).unwrap_err().to_string();
        assert!(err.contains("0x000c at offset"), "{err}");
        assert!(Tcg2Log::parse(&[]).is_err());
    }

    #[test]
    fn missing_bank_digest_fails_replay() {
        let mut log = agile_header(&[(0x0b, 32), (0x0c, 48)]);
        log.extend(agile_event(1, event_type::SEPARATOR, &[0, 0, 0, 0], &[HashAlg::Sha256]));
        let parsed = Tcg2Log::parse(&log).unwrap();
        let err = parsed.replay(true).unwrap_err().to_string();
        assert!(err.contains("has no sha384 digest"), "{err}");
    }

    #[test]
    fn guid_and_device_path_text() {
        let g =
            [0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c];
        assert_eq!(guid(&g), "8be4df61-93ca-11d2-aa0d-00e098032b8c");
        let mut dp = vec![4u8, 4];
        let name: Vec<u8> = "\\EFI\\BOOT\\BOOTX64.EFI\0".encode_utf16().flat_map(u16::to_le_bytes).collect();
        dp.extend_from_slice(&u16::try_from(name.len() + 4).unwrap().to_le_bytes());
        dp.extend_from_slice(&name);
        dp.extend_from_slice(&[0x7f, 0xff, 4, 0]);
        assert_eq!(device_path_text(&dp), "File(\\EFI\\BOOT\\BOOTX64.EFI)");
        assert_eq!(device_path_text(&[4, 4, 0xff]), "<truncated>");
    }
}
