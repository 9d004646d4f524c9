//! The runtime event log: workload measurements as TCG Canonical Event Log (CEL) TLV records.
//!
//! The agent measures the workload (image, config, args, env, mounts, launch policy) before it runs it, one
//! record per event, and extends each record's digests into PCR 15 (every allocated bank) and its SHA-384 digest
//! into RTMR3 (see `docs/architecture.md`). A verifier decodes the log, checks every digest against the content,
//! and replays the registers.
//!
//! ```text
//! TLV      = type (u8) || length (u32 big-endian) || value
//! record   = TLV(0 recnum, u64 BE) || TLV(1 PCR index, u8) || TLV(3 digests, TLV(alg id, digest)*) || content
//! content  = TLV(0x53 sealroom event, TLV(event type, event value))
//! digest   = H(content)   (the whole encoded content TLV, header included)
//! ```
//!
//! Event types below 0x80 are launch events; 0x80 and above are post-launch events, the only ones allowed after
//! the launch separator. Decoding is strict: one canonical encoding per event (re-encoding must reproduce the
//! bytes), consecutive record numbers from 0, and every digest verified. Digests may come in any order (Google's
//! encoder emits them in map order).

use std::fmt;

use crate::digest::{self, Register};
use crate::error::{Error, Result};
use crate::evidence::HashAlg;
use crate::reader::Reader;

/// The PCR the runtime log extends (every bank).
pub const RUNTIME_PCR: u8 = 15;
/// The RTMR the runtime log extends (SHA-384); CC MR index 4.
pub const RUNTIME_RTMR: u8 = 3;

/// CEL TLV type of the record number.
pub const TYPE_RECNUM: u8 = 0;
/// CEL TLV type of a PCR index.
pub const TYPE_PCR: u8 = 1;
/// CEL TLV type of the digest list.
pub const TYPE_DIGESTS: u8 = 3;
/// Our content type: a sealroom workload event (chosen outside the TCG-assigned range).
pub const TYPE_SEALROOM_EVENT: u8 = 0x53;

const LAYER: &str = "cel record";
/// Upper bound on one TLV value: no workload event is anywhere near this; it stops absurd allocations early.
const MAX_VALUE: usize = 1 << 20;

/// One workload event, as measured by the agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RuntimeEvent {
    /// The container image reference as requested (e.g. `registry/app@sha256:…`).
    ImageReference(String),
    /// The OCI manifest digest that was pulled (`sha256:…`).
    ManifestDigest(String),
    /// The OCI image config digest (the image ID, `sha256:…`).
    ConfigDigest(String),
    /// One argument of the workload's command line, in order.
    Arg(String),
    /// One environment variable, `NAME=value`.
    Env(String),
    /// One mount given to the workload.
    Mount(Mount),
    /// The launch policy the agent enforced, in its canonical text form.
    LaunchPolicy(String),
    /// The key broker the workload trusts: the RFC 7638 thumbprint of its ES256 key (the spec's `broker_key`).
    /// The agent accepts key releases and receipts only when signed by this key, so a data provider's policy can
    /// require that the VM trusts the provider's own broker (a pre-launch event).
    BrokerKey(String),
    /// Where the workload's output goes: the spec's `seal_output_to`, `input:<name>` (the reply key that came
    /// with that sealed input) or `x25519:<hex>`. The agent then seals the output archive to that key before it
    /// leaves the VM. A pre-launch event, measured before the agent waits for sealed inputs, so their senders
    /// see it in the evidence they verify.
    SealedOutputTo(String),
    /// A sealed input the agent opened before launch (`Attestation.SubmitInput`), mounted read-only at
    /// `/input/<name>`. A pre-launch event: sealed inputs are accepted only before the launch separator.
    SealedInput {
        /// The input's name.
        name: String,
        /// The plaintext's digest (`sha256:…`).
        digest: String,
        /// The sender's reply key (`x25519:<hex>`).
        reply_key: String,
    },
    /// End of launch measurements: the workload starts after this event.
    LaunchSeparator,
    /// Post-launch: a data key was released to the workload.
    KeyRelease {
        /// Identifier of the released key (key broker resource id).
        key_id: String,
        /// The broker that released it: the RFC 7638 thumbprint of its signing key (one of the measured
        /// `broker_key` launch events). With several brokers per workload, a receipt can so name every release
        /// by provider and key, and a broker can check that the release it vouches for came from itself.
        broker_key: String,
    },
    /// Post-launch: the workload produced an output (a verifiable receipt of the result).
    Output {
        /// Name of the output.
        name: String,
        /// Its digest (`sha256:…`).
        digest: String,
    },
}

/// A mount given to the workload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    /// Where it appears inside the workload.
    pub destination: String,
    /// What is mounted (device, path, tmpfs name).
    pub source: String,
    /// File system type.
    pub fs_type: String,
    /// Mount options, comma-separated.
    pub options: String,
}

mod event_type {
    pub const IMAGE_REFERENCE: u8 = 0x01;
    pub const MANIFEST_DIGEST: u8 = 0x02;
    pub const CONFIG_DIGEST: u8 = 0x03;
    pub const ARG: u8 = 0x04;
    pub const ENV: u8 = 0x05;
    pub const MOUNT: u8 = 0x06;
    pub const LAUNCH_POLICY: u8 = 0x07;
    pub const LAUNCH_SEPARATOR: u8 = 0x08;
    pub const BROKER_KEY: u8 = 0x09;
    pub const SEALED_OUTPUT_TO: u8 = 0x0a;
    pub const SEALED_INPUT: u8 = 0x0b;
    /// Types at or above this value are post-launch.
    pub const FIRST_POST_LAUNCH: u8 = 0x80;
    pub const KEY_RELEASE: u8 = 0x80;
    pub const OUTPUT: u8 = 0x81;
}

// Field tags inside structured events.
const FIELD_0: u8 = 0;
const FIELD_1: u8 = 1;
const FIELD_2: u8 = 2;
const FIELD_3: u8 = 3;

impl RuntimeEvent {
    /// The event type byte.
    #[must_use]
    pub fn type_byte(&self) -> u8 {
        use event_type as t;
        match self {
            Self::ImageReference(_) => t::IMAGE_REFERENCE,
            Self::ManifestDigest(_) => t::MANIFEST_DIGEST,
            Self::ConfigDigest(_) => t::CONFIG_DIGEST,
            Self::Arg(_) => t::ARG,
            Self::Env(_) => t::ENV,
            Self::Mount(_) => t::MOUNT,
            Self::LaunchPolicy(_) => t::LAUNCH_POLICY,
            Self::LaunchSeparator => t::LAUNCH_SEPARATOR,
            Self::BrokerKey(_) => t::BROKER_KEY,
            Self::SealedOutputTo(_) => t::SEALED_OUTPUT_TO,
            Self::SealedInput { .. } => t::SEALED_INPUT,
            Self::KeyRelease { .. } => t::KEY_RELEASE,
            Self::Output { .. } => t::OUTPUT,
        }
    }

    /// Short name, as printed.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::ImageReference(_) => "image_reference",
            Self::ManifestDigest(_) => "manifest_digest",
            Self::ConfigDigest(_) => "config_digest",
            Self::Arg(_) => "arg",
            Self::Env(_) => "env",
            Self::Mount(_) => "mount",
            Self::LaunchPolicy(_) => "launch_policy",
            Self::BrokerKey(_) => "broker_key",
            Self::SealedOutputTo(_) => "sealed_output_to",
            Self::SealedInput { .. } => "sealed_input",
            Self::LaunchSeparator => "launch_separator",
            Self::KeyRelease { .. } => "key_release",
            Self::Output { .. } => "output",
        }
    }

    /// Whether this event may (and must) come after the launch separator.
    #[must_use]
    pub fn is_post_launch(&self) -> bool {
        self.type_byte() >= event_type::FIRST_POST_LAUNCH
    }

    fn encode_value(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::ImageReference(s)
            | Self::ManifestDigest(s)
            | Self::ConfigDigest(s)
            | Self::Arg(s)
            | Self::Env(s)
            | Self::LaunchPolicy(s)
            | Self::BrokerKey(s)
            | Self::SealedOutputTo(s) => out.extend_from_slice(s.as_bytes()),
            Self::Mount(m) => {
                put_tlv(&mut out, FIELD_0, m.destination.as_bytes());
                put_tlv(&mut out, FIELD_1, m.source.as_bytes());
                put_tlv(&mut out, FIELD_2, m.fs_type.as_bytes());
                put_tlv(&mut out, FIELD_3, m.options.as_bytes());
            }
            Self::SealedInput { name, digest, reply_key } => {
                put_tlv(&mut out, FIELD_0, name.as_bytes());
                put_tlv(&mut out, FIELD_1, digest.as_bytes());
                put_tlv(&mut out, FIELD_2, reply_key.as_bytes());
            }
            Self::LaunchSeparator => {}
            Self::KeyRelease { key_id, broker_key } => {
                put_tlv(&mut out, FIELD_0, key_id.as_bytes());
                put_tlv(&mut out, FIELD_1, broker_key.as_bytes());
            }
            Self::Output { name, digest } => {
                put_tlv(&mut out, FIELD_0, name.as_bytes());
                put_tlv(&mut out, FIELD_1, digest.as_bytes());
            }
        }
        out
    }

    /// The encoded content TLV (what the digests cover).
    #[must_use]
    pub fn encode_content(&self) -> Vec<u8> {
        let value = self.encode_value();
        let inner_len = u32::try_from(value.len().saturating_add(5)).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(value.len() + 10);
        out.push(TYPE_SEALROOM_EVENT);
        out.extend_from_slice(&inner_len.to_be_bytes());
        put_tlv(&mut out, self.type_byte(), &value);
        out
    }

    /// Decodes a content TLV (type, length, value) and checks it is in canonical form.
    ///
    /// # Errors
    /// Malformed TLVs, unknown event types, non-UTF-8 strings, trailing bytes.
    pub fn decode_content(r: &mut Reader<'_>) -> Result<Self> {
        let start = r.offset();
        let (ty, mut value) = read_tlv(r, "content")?;
        if ty != TYPE_SEALROOM_EVENT {
            return Err(Error::invalid(
                LAYER,
                "content type",
                format!("{ty} at offset {start:#x}, expected {TYPE_SEALROOM_EVENT}"),
            ));
        }
        let (event_ty, mut v) = read_tlv(&mut value, "event")?;
        value.finish("content").map_err(Error::malformed(LAYER))?;
        let event = Self::decode_value(event_ty, &mut v, start)?;
        v.finish("event value").map_err(Error::malformed(LAYER))?;
        Ok(event)
    }

    fn decode_value(ty: u8, v: &mut Reader<'_>, at: usize) -> Result<Self> {
        use event_type as t;
        Ok(match ty {
            t::IMAGE_REFERENCE => Self::ImageReference(utf8(v.rest(), "image reference")?),
            t::MANIFEST_DIGEST => Self::ManifestDigest(utf8(v.rest(), "manifest digest")?),
            t::CONFIG_DIGEST => Self::ConfigDigest(utf8(v.rest(), "config digest")?),
            t::ARG => Self::Arg(utf8(v.rest(), "arg")?),
            t::ENV => Self::Env(utf8(v.rest(), "env")?),
            t::LAUNCH_POLICY => Self::LaunchPolicy(utf8(v.rest(), "launch policy")?),
            t::BROKER_KEY => Self::BrokerKey(utf8(v.rest(), "broker key")?),
            t::SEALED_OUTPUT_TO => Self::SealedOutputTo(utf8(v.rest(), "sealed output to")?),
            t::SEALED_INPUT => Self::SealedInput {
                name: field(v, FIELD_0, "sealed input name")?,
                digest: field(v, FIELD_1, "sealed input digest")?,
                reply_key: field(v, FIELD_2, "sealed input reply key")?,
            },
            t::MOUNT => Self::Mount(Mount {
                destination: field(v, FIELD_0, "mount destination")?,
                source: field(v, FIELD_1, "mount source")?,
                fs_type: field(v, FIELD_2, "mount fs type")?,
                options: field(v, FIELD_3, "mount options")?,
            }),
            t::LAUNCH_SEPARATOR => Self::LaunchSeparator,
            t::KEY_RELEASE => Self::KeyRelease {
                key_id: field(v, FIELD_0, "key release key id")?,
                broker_key: field(v, FIELD_1, "key release broker key")?,
            },
            t::OUTPUT => Self::Output {
                name: field(v, FIELD_0, "output name")?,
                digest: field(v, FIELD_1, "output digest")?,
            },
            other => {
                return Err(Error::invalid(
                    LAYER,
                    "event type",
                    format!("unknown type {other:#04x} at offset {at:#x}"),
                ));
            }
        })
    }
}

impl fmt::Display for RuntimeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ImageReference(s)
            | Self::ManifestDigest(s)
            | Self::ConfigDigest(s)
            | Self::Arg(s)
            | Self::Env(s)
            | Self::LaunchPolicy(s)
            | Self::BrokerKey(s)
            | Self::SealedOutputTo(s) => write!(f, "{} {s:?}", self.name()),
            Self::SealedInput { name, digest, reply_key } => {
                write!(f, "sealed_input {name:?} {digest} reply to {reply_key}")
            }
            Self::Mount(m) => {
                write!(
                    f,
                    "mount {:?} on {:?} type {:?} ({:?})",
                    m.source, m.destination, m.fs_type, m.options
                )
            }
            Self::LaunchSeparator => f.write_str("launch_separator"),
            Self::KeyRelease { key_id, broker_key } => write!(f, "key_release {key_id:?} from {broker_key}"),
            Self::Output { name, digest } => write!(f, "output {name:?} {digest}"),
        }
    }
}

fn utf8(bytes: &[u8], what: &'static str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| Error::invalid(LAYER, what, format!("not UTF-8: {e}")))
}

fn field(v: &mut Reader<'_>, tag: u8, what: &'static str) -> Result<String> {
    let at = v.offset();
    let (ty, mut value) = read_tlv(v, what)?;
    if ty != tag {
        return Err(Error::invalid(LAYER, what, format!("field tag {ty} at offset {at:#x}, expected {tag}")));
    }
    utf8(value.rest(), what)
}

fn put_tlv(out: &mut Vec<u8>, ty: u8, value: &[u8]) {
    out.push(ty);
    // Values are bounded by what the agent measures (strings, digests); u32 covers any of them.
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
}

fn read_tlv<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<(u8, Reader<'a>)> {
    let ty = r.u8(what).map_err(Error::malformed(LAYER))?;
    let at = r.offset();
    let len = Reader::len_u32(r.u32_be(what).map_err(Error::malformed(LAYER))?);
    if len > MAX_VALUE {
        return Err(Error::invalid(
            LAYER,
            what,
            format!("length {len} at offset {at:#x} exceeds {MAX_VALUE}"),
        ));
    }
    let value = r.sub(len, what).map_err(Error::malformed(LAYER))?;
    Ok((ty, value))
}

/// One CEL record of the runtime log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CelRecord {
    /// Record number, consecutive from 0.
    pub recnum: u64,
    /// The PCR index the record was extended into (15 for sealroom).
    pub pcr: u8,
    /// One digest per algorithm, sorted by algorithm; each is `H(encoded content)`.
    pub digests: Vec<(HashAlg, Vec<u8>)>,
    /// The event.
    pub event: RuntimeEvent,
}

impl CelRecord {
    /// A record for `event` with a digest for each algorithm in `algs` (duplicates ignored).
    #[must_use]
    pub fn new(recnum: u64, pcr: u8, algs: &[HashAlg], event: &RuntimeEvent) -> Self {
        let content = event.encode_content();
        let mut algs = algs.to_vec();
        algs.sort_unstable();
        algs.dedup();
        let digests = algs.into_iter().map(|a| (a, digest::hash(a, &content))).collect();
        Self { recnum, pcr, digests, event: event.clone() }
    }

    /// The digest of algorithm `alg`, if the record carries one.
    #[must_use]
    pub fn digest(&self, alg: HashAlg) -> Option<&[u8]> {
        self.digests.iter().find(|(a, _)| *a == alg).map(|(_, d)| d.as_slice())
    }

    /// The SHA-384 digest extended into RTMR3.
    #[must_use]
    pub fn rtmr_digest(&self) -> Option<&[u8]> {
        self.digest(HashAlg::Sha384)
    }

    /// The record's TLV encoding.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_tlv(&mut out, TYPE_RECNUM, &self.recnum.to_be_bytes());
        put_tlv(&mut out, TYPE_PCR, &[self.pcr]);
        let mut digests = Vec::new();
        for (alg, d) in &self.digests {
            // TPM algorithm ids of supported hashes (0x04..0x0d) fit in the one-byte TLV type.
            let ty = u8::try_from(alg.tpm_alg_id()).unwrap_or(u8::MAX);
            put_tlv(&mut digests, ty, d);
        }
        put_tlv(&mut out, TYPE_DIGESTS, &digests);
        out.extend_from_slice(&self.event.encode_content());
        out
    }

    /// Decodes one record and verifies its digests against its content.
    ///
    /// # Errors
    /// Malformed TLVs, wrong field order, unknown hash algorithms, duplicate or wrong digests, unknown events.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let start = r.offset();
        let (ty, mut v) = read_tlv(r, "recnum")?;
        expect_type(ty, TYPE_RECNUM, "recnum", start)?;
        let recnum = u64::from_be_bytes(v.take_array("recnum").map_err(Error::malformed(LAYER))?);
        v.finish("recnum").map_err(Error::malformed(LAYER))?;

        let at = r.offset();
        let (ty, mut v) = read_tlv(r, "index")?;
        expect_type(ty, TYPE_PCR, "index type", at)?;
        let pcr = v.u8("pcr index").map_err(Error::malformed(LAYER))?;
        v.finish("pcr index").map_err(Error::malformed(LAYER))?;
        // The index is not covered by the digests; the runtime log only ever extends PCR 15, so pin it.
        check_pcr_index(pcr, recnum)?;

        let at = r.offset();
        let (ty, mut dv) = read_tlv(r, "digests")?;
        expect_type(ty, TYPE_DIGESTS, "digests", at)?;
        let mut digests: Vec<(HashAlg, Vec<u8>)> = Vec::new();
        while !dv.is_empty() {
            let dat = dv.offset();
            let (alg_id, mut d) = read_tlv(&mut dv, "digest")?;
            let alg = HashAlg::from_tpm_alg_id(u16::from(alg_id)).ok_or_else(|| {
                Error::invalid(
                    LAYER,
                    "digest algorithm",
                    format!("unknown id {alg_id:#04x} at offset {dat:#x}"),
                )
            })?;
            if digests.iter().any(|(a, _)| *a == alg) {
                return Err(Error::invalid(
                    LAYER,
                    "digests",
                    format!("duplicate {} at offset {dat:#x}", alg.name()),
                ));
            }
            let bytes = d.rest();
            if bytes.len() != alg.digest_len() {
                return Err(Error::invalid(
                    LAYER,
                    "digest",
                    format!(
                        "{} digest is {} bytes at offset {dat:#x}, expected {}",
                        alg.name(),
                        bytes.len(),
                        alg.digest_len()
                    ),
                ));
            }
            digests.push((alg, bytes.to_vec()));
        }
        if digests.is_empty() {
            return Err(Error::invalid(LAYER, "digests", format!("record {recnum} has none")));
        }
        digests.sort_by_key(|(a, _)| *a);

        let content_start = r.offset();
        let before = r.clone();
        let event = RuntimeEvent::decode_content(r)?;
        let consumed = r.offset() - content_start;
        let raw = before.clone().take(consumed, "content").map_err(Error::malformed(LAYER))?;
        if event.encode_content() != raw {
            return Err(Error::invalid(
                LAYER,
                "content",
                format!("record {recnum} is not in canonical form"),
            ));
        }
        for (alg, d) in &digests {
            if digest::hash(*alg, raw) != *d {
                return Err(Error::invalid(
                    LAYER,
                    "digest",
                    format!(
                        "record {recnum} ({}): {} digest does not match its content",
                        event.name(),
                        alg.name()
                    ),
                ));
            }
        }
        Ok(Self { recnum, pcr, digests, event })
    }
}

fn expect_type(got: u8, want: u8, field: &'static str, at: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::invalid(LAYER, field, format!("TLV type {got} at offset {at:#x}, expected {want}")))
    }
}

/// The runtime log as the agent builds it: appends enforce record numbering and the launch separator rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CelLog {
    records: Vec<CelRecord>,
}

impl CelLog {
    /// An empty log.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `event` for PCR `pcr` (must be [`RUNTIME_PCR`]) with digests for `algs`, returning the new record
    /// (whose digests the caller extends into the registers).
    ///
    /// # Errors
    /// A launch event after the separator, a post-launch event before it, another PCR, or an empty `algs`.
    pub fn append(&mut self, pcr: u8, algs: &[HashAlg], event: &RuntimeEvent) -> Result<&CelRecord> {
        if algs.is_empty() {
            return Err(Error::invalid(LAYER, "digests", "no hash algorithm given"));
        }
        let recnum = u64::try_from(self.records.len()).unwrap_or(u64::MAX);
        check_pcr_index(pcr, recnum)?;
        check_order(self.launched(), recnum, event)?;
        self.records.push(CelRecord::new(recnum, pcr, algs, event));
        self.records.last().ok_or_else(|| Error::invalid(LAYER, "log", "append lost its record"))
    }

    /// Whether the launch separator has been recorded.
    #[must_use]
    pub fn launched(&self) -> bool {
        self.records.iter().any(|r| r.event == RuntimeEvent::LaunchSeparator)
    }

    /// The records so far.
    #[must_use]
    pub fn records(&self) -> &[CelRecord] {
        &self.records
    }

    /// The encoded log.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        encode_records(&self.records)
    }

    /// Decodes and validates a log: digests verified, record numbers consecutive from 0, launch rule enforced.
    ///
    /// # Errors
    /// The first problem found, with its offset or record number.
    pub fn decode(bytes: &[u8]) -> Result<Vec<CelRecord>> {
        let mut r = Reader::new(bytes);
        let mut records: Vec<CelRecord> = Vec::new();
        let mut launched = false;
        while !r.is_empty() {
            let at = r.offset();
            let rec = CelRecord::decode(&mut r)?;
            let want = u64::try_from(records.len()).unwrap_or(u64::MAX);
            if rec.recnum != want {
                return Err(Error::invalid(
                    LAYER,
                    "recnum",
                    format!("{} at offset {at:#x}, expected {want}", rec.recnum),
                ));
            }
            check_order(launched, rec.recnum, &rec.event)?;
            launched |= rec.event == RuntimeEvent::LaunchSeparator;
            records.push(rec);
        }
        Ok(records)
    }

    /// Builds a log from decoded records (so the agent can continue a log it reloaded).
    ///
    /// # Errors
    /// When the records violate numbering or the launch rule.
    pub fn from_records(records: &[CelRecord]) -> Result<Self> {
        let decoded = Self::decode(&encode_records(records))?;
        Ok(Self { records: decoded })
    }
}

fn check_pcr_index(pcr: u8, recnum: u64) -> Result<()> {
    if pcr == RUNTIME_PCR {
        Ok(())
    } else {
        Err(Error::invalid(
            LAYER,
            "pcr index",
            format!("record {recnum} names pcr {pcr}, the runtime log uses {RUNTIME_PCR}"),
        ))
    }
}

fn check_order(launched: bool, recnum: u64, event: &RuntimeEvent) -> Result<()> {
    if launched && !event.is_post_launch() {
        return Err(Error::invalid(
            LAYER,
            "event order",
            format!("record {recnum}: {} after the launch separator", event.name()),
        ));
    }
    if !launched && event.is_post_launch() {
        return Err(Error::invalid(
            LAYER,
            "event order",
            format!("record {recnum}: post-launch {} before the launch separator", event.name()),
        ));
    }
    Ok(())
}

/// Encodes records back to back.
#[must_use]
pub fn encode_records(records: &[CelRecord]) -> Vec<u8> {
    records.iter().flat_map(CelRecord::encode).collect()
}

/// Replays PCR `pcr` in bank `alg` from the records that name it.
///
/// # Errors
/// When a record for that PCR has no `alg` digest (the log cannot vouch for that bank).
pub fn replay_pcr_index(records: &[CelRecord], pcr: u8, alg: HashAlg) -> Result<Vec<u8>> {
    let mut reg = Register::zero(alg);
    for rec in records.iter().filter(|r| r.pcr == pcr) {
        let d = rec.digest(alg).ok_or_else(|| {
            Error::invalid(
                LAYER,
                "digests",
                format!("record {} has no {} digest for pcr {pcr}", rec.recnum, alg.name()),
            )
        })?;
        reg.extend(d);
    }
    Ok(reg.into_value())
}

/// Replays PCR 15 in bank `alg`.
///
/// # Errors
/// See [`replay_pcr_index`].
pub fn replay_pcr(records: &[CelRecord], alg: HashAlg) -> Result<Vec<u8>> {
    replay_pcr_index(records, RUNTIME_PCR, alg)
}

/// Replays RTMR3 from every record's SHA-384 digest.
///
/// # Errors
/// When a record has no SHA-384 digest.
pub fn replay_rtmr3(records: &[CelRecord]) -> Result<[u8; 48]> {
    let v = replay_pcr_index(records, RUNTIME_PCR, HashAlg::Sha384)?;
    let mut out = [0u8; 48];
    if v.len() != out.len() {
        return Err(Error::invalid(LAYER, "rtmr3", "sha-384 replay has the wrong size"));
    }
    out.copy_from_slice(&v);
    Ok(out)
}

/// Checks that the records replay to `expected` in PCR 15 of bank `alg`.
///
/// # Errors
/// [`Error::RegisterMismatch`] ("pcr 15 (sha256) mismatch: expected …, got …") or a replay error.
pub fn check_pcr(records: &[CelRecord], alg: HashAlg, expected: &[u8]) -> Result<()> {
    let got = replay_pcr(records, alg)?;
    if got == expected {
        Ok(())
    } else {
        Err(Error::mismatch(format!("pcr {RUNTIME_PCR} ({})", alg.name()), expected, &got))
    }
}

/// Checks that the records replay to `expected` in RTMR3.
///
/// # Errors
/// [`Error::RegisterMismatch`] ("rtmr3 mismatch: expected …, got …") or a replay error.
pub fn check_rtmr3(records: &[CelRecord], expected: &[u8]) -> Result<()> {
    let got = replay_rtmr3(records)?;
    if got.as_slice() == expected {
        Ok(())
    } else {
        Err(Error::mismatch(format!("rtmr{RUNTIME_RTMR}"), expected, &got))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALGS: &[HashAlg] = &[HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha1];

    fn sample_events() -> Vec<RuntimeEvent> {
        vec![
            RuntimeEvent::ImageReference("registry.example/app@sha256:00ff".into()),
            RuntimeEvent::ManifestDigest("sha256:aa".into()),
            RuntimeEvent::ConfigDigest("sha256:bb".into()),
            RuntimeEvent::Arg("/app".into()),
            RuntimeEvent::Arg("--flag".into()),
            RuntimeEvent::Env("RUST_LOG=info".into()),
            RuntimeEvent::Mount(Mount {
                destination: "/data".into(),
                source: "/dev/vdb".into(),
                fs_type: "ext4".into(),
                options: "ro,nosuid".into(),
            }),
            RuntimeEvent::SealedOutputTo("input:patient".into()),
            RuntimeEvent::LaunchPolicy("allow_env_override=[]".into()),
            RuntimeEvent::SealedInput {
                name: "patient".into(),
                digest: "sha256:dd".into(),
                reply_key: "x25519:ee".into(),
            },
            RuntimeEvent::LaunchSeparator,
            RuntimeEvent::KeyRelease {
                key_id: "dataset-1".into(),
                broker_key: "3Mfj4cM9KvTWQ7pmqfyIXlM3YzZ2r3JN0a4cDnmWc8I".into(),
            },
            RuntimeEvent::Output { name: "result.csv".into(), digest: "sha256:cc".into() },
        ]
    }

    fn sample_log() -> CelLog {
        let mut log = CelLog::new();
        for e in sample_events() {
            log.append(RUNTIME_PCR, ALGS, &e).unwrap();
        }
        log
    }

    #[test]
    fn round_trip() {
        let log = sample_log();
        let bytes = log.encode();
        let decoded = CelLog::decode(&bytes).unwrap();
        assert_eq!(decoded, log.records());
        assert_eq!(encode_records(&decoded), bytes);
        assert_eq!(decoded.len(), 13);
        assert!(decoded.iter().all(|r| r.digests.len() == 3));
    }

    #[test]
    fn replay_matches_manual_extension() {
        let log = sample_log();
        let mut pcr = vec![0u8; 32];
        let mut rtmr = vec![0u8; 48];
        for e in sample_events() {
            let content = e.encode_content();
            pcr = digest::hash(HashAlg::Sha256, &[pcr, digest::hash(HashAlg::Sha256, &content)].concat());
            rtmr = digest::hash(HashAlg::Sha384, &[rtmr, digest::hash(HashAlg::Sha384, &content)].concat());
        }
        assert_eq!(replay_pcr(log.records(), HashAlg::Sha256).unwrap(), pcr);
        assert_eq!(replay_rtmr3(log.records()).unwrap().to_vec(), rtmr);
        check_pcr(log.records(), HashAlg::Sha256, &pcr).unwrap();
        check_rtmr3(log.records(), &rtmr).unwrap();
        let err = check_pcr(log.records(), HashAlg::Sha256, &[0u8; 32]).unwrap_err().to_string();
        assert!(err.starts_with("pcr 15 (sha256) mismatch: expected 0000"), "{err}");
        assert!(err.ends_with(&hex::encode(&pcr)), "{err}");
        let err = check_rtmr3(log.records(), &[1u8; 48]).unwrap_err().to_string();
        assert!(err.starts_with("rtmr3 mismatch: expected 0101"), "{err}");
        assert!(replay_pcr(log.records(), HashAlg::Sha512).is_err());
    }

    #[test]
    fn content_encoding_is_pinned() {
        // type 0x53, len 10, [type 0x04, len 5, "hello"]
        assert_eq!(
            hex::encode(RuntimeEvent::Arg("hello".into()).encode_content()),
            "530000000a040000000568656c6c6f"
        );
        assert_eq!(hex::encode(RuntimeEvent::LaunchSeparator.encode_content()), "53000000050800000000");
    }

    #[test]
    fn digests_accepted_in_any_order() {
        let rec = CelRecord::new(
            0,
            RUNTIME_PCR,
            &[HashAlg::Sha256, HashAlg::Sha384],
            &RuntimeEvent::Arg("a".into()),
        );
        let mut reversed = rec.clone();
        reversed.digests.reverse();
        let bytes = reversed.encode();
        let decoded = CelLog::decode(&bytes).unwrap();
        assert_eq!(decoded, vec![rec]);
    }

    #[test]
    fn every_single_byte_flip_is_refused() {
        let bytes = sample_log().encode();
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x01;
            match CelLog::decode(&t) {
                Err(_) => {}
                // Flipping a string byte to another valid string with recomputed digests is impossible here, so
                // any accepted mutation would be a digest-check hole.
                Ok(r) => panic!("flip at {i} accepted: {r:?}"),
            }
        }
    }

    #[test]
    fn tampered_digest_names_the_record() {
        let log = sample_log();
        let mut recs = log.records().to_vec();
        recs[3].digests[1].1[0] ^= 0xff;
        let err = CelLog::decode(&encode_records(&recs)).unwrap_err().to_string();
        assert_eq!(
            err,
            "cel record: invalid digest: record 3 (arg): sha256 digest does not match its content"
        );
    }

    #[test]
    fn ordering_rules() {
        let mut log = CelLog::new();
        log.append(RUNTIME_PCR, ALGS, &RuntimeEvent::Arg("a".into())).unwrap();
        let err =
            log.append(RUNTIME_PCR, ALGS, &RuntimeEvent::Output { name: "o".into(), digest: "d".into() });
        assert!(err.unwrap_err().to_string().contains("post-launch output before the launch separator"));
        log.append(RUNTIME_PCR, ALGS, &RuntimeEvent::LaunchSeparator).unwrap();
        let err = log.append(RUNTIME_PCR, ALGS, &RuntimeEvent::Env("X=1".into())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cel record: invalid event order: record 2: env after the launch separator"
        );
        assert!(log.append(RUNTIME_PCR, ALGS, &RuntimeEvent::LaunchSeparator).is_err());
        assert!(
            log.append(14, ALGS, &RuntimeEvent::KeyRelease { key_id: "k".into(), broker_key: "b".into() })
                .is_err()
        );
        log.append(
            RUNTIME_PCR,
            ALGS,
            &RuntimeEvent::KeyRelease { key_id: "k".into(), broker_key: "b".into() },
        )
        .unwrap();

        // A forged log with a launch event after the separator is refused by the decoder as well.
        let recs = vec![
            CelRecord::new(0, RUNTIME_PCR, ALGS, &RuntimeEvent::LaunchSeparator),
            CelRecord::new(1, RUNTIME_PCR, ALGS, &RuntimeEvent::Arg("late".into())),
        ];
        let err = CelLog::decode(&encode_records(&recs)).unwrap_err().to_string();
        assert!(err.contains("record 1: arg after the launch separator"), "{err}");
    }

    #[test]
    fn recnums_must_be_consecutive() {
        let recs = vec![
            CelRecord::new(0, RUNTIME_PCR, ALGS, &RuntimeEvent::Arg("a".into())),
            CelRecord::new(2, RUNTIME_PCR, ALGS, &RuntimeEvent::Arg("b".into())),
        ];
        let err = CelLog::decode(&encode_records(&recs)).unwrap_err().to_string();
        assert!(err.starts_with("cel record: invalid recnum: 2 at offset"), "{err}");
        let recs = vec![CelRecord::new(1, RUNTIME_PCR, ALGS, &RuntimeEvent::Arg("a".into()))];
        assert!(CelLog::decode(&encode_records(&recs)).is_err());
    }

    #[test]
    fn truncations_never_panic_and_fail() {
        let bytes = sample_log().encode();
        let mut boundaries = 0;
        for n in 0..bytes.len() {
            match CelLog::decode(&bytes[..n]) {
                Ok(recs) => {
                    // Only cuts on record boundaries decode, to a prefix of the log.
                    boundaries += 1;
                    assert_eq!(encode_records(&recs), &bytes[..n]);
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
        assert_eq!(boundaries, 13); // the empty prefix and the 12 proper record-boundary prefixes
    }

    #[test]
    fn unknown_algorithm_and_event_type_are_refused() {
        let mut bytes =
            CelRecord::new(0, RUNTIME_PCR, &[HashAlg::Sha256], &RuntimeEvent::Arg("a".into())).encode();
        // recnum TLV (13) + pcr TLV (6) + digests header (5) → alg id byte.
        bytes[24] = 0x12;
        assert!(CelLog::decode(&bytes).unwrap_err().to_string().contains("unknown id 0x12"));
        let err = RuntimeEvent::decode_content(&mut Reader::new(&hex::decode("530000000577000000").unwrap()));
        assert!(err.is_err());
    }
}
