//! Entry points of the fuzz targets (`fuzz/fuzz_targets/`), shared with the corpus-replay test so that CI runs
//! exactly what the fuzzer runs. Each takes arbitrary bytes; only a violated invariant may panic (a bug).
#![doc(hidden)]

use crate::ccel::{CcelLog, CcelTable};
use crate::cel::{self, CelLog};
use crate::evidence::HashAlg;
use crate::pe::PeImage;
use crate::tcg2::Tcg2Log;
use crate::uki::{BootContext, predict};
use crate::{disk, golden, sealed};

/// Runtime CEL log: decode, replay; an accepted log must re-encode to a log that decodes to the same records
/// (byte equality only up to digest order, which decoders accept in any order).
pub fn cel_decode(data: &[u8]) {
    if let Ok(records) = CelLog::decode(data) {
        let again = CelLog::decode(&cel::encode_records(&records)).ok();
        assert_eq!(again.as_ref(), Some(&records), "accepted CEL log does not survive re-encoding");
        for alg in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384] {
            let _ = cel::replay_pcr(&records, alg);
        }
        let _ = cel::replay_rtmr3(&records);
        for r in &records {
            let _ = r.event.to_string();
        }
    }
}

/// UEFI TCG2 log: parse, replay every bank, interpret every event.
pub fn tcg2_parse(data: &[u8]) {
    if let Ok(log) = Tcg2Log::parse(data) {
        let _ = log.replay(true);
        for e in &log.events {
            let _ = e.details().to_string();
            let _ = e.type_name();
            let _ = e.digests_match_data();
        }
    }
}

/// TDX CCEL: the first 56 bytes as an ACPI table candidate, then the whole input as a log.
pub fn ccel(data: &[u8]) {
    let _ = CcelTable::parse(data.get(..56).unwrap_or(data));
    let _ = CcelTable::parse(data);
    if let Ok(log) = CcelLog::parse(data) {
        let _ = log.replay();
    }
}

/// PE image and UKI prediction.
pub fn pe_uki(data: &[u8]) {
    if let Ok(pe) = PeImage::parse(data) {
        let _ = pe.authenticode(HashAlg::Sha256);
        for s in &pe.sections {
            let _ = pe.section_memory(s);
        }
    }
    let _ = predict(
        data,
        &[HashAlg::Sha256],
        &BootContext { gpt_event: Some(data.get(..92).unwrap_or(data).to_vec()) },
    );
}

/// Disk image: GPT, ESP, FAT, boot file.
pub fn disk_image(data: &[u8]) {
    if let Ok(gpt) = disk::Gpt::parse(data) {
        let _ = gpt.esp();
    }
    let _ = disk::find_uki(data);
    let _ = disk::Fat::open(data).map(|fat| fat.read_file(&disk::DEFAULT_BOOT_PATH));
}

/// Golden document: signature check (fails for arbitrary input) and the document parser on its own.
pub fn golden_document(data: &[u8]) {
    let _ = golden::verify_pinned(data, &"00".repeat(64));
    let _ = serde_json::from_slice::<golden::GoldenDocument>(data);
}

/// Sealed input and sealed output envelopes and the output archive (`crate::sealed`): an accepted one
/// re-encodes to the same bytes (one encoding per value), and an archive's digest is computable.
pub fn sealed_envelopes(data: &[u8]) {
    if let Ok(s) = sealed::SealedInput::parse(data) {
        assert_eq!(s.encode(), data, "accepted sealed input is not canonical");
        let _ = (s.info(), sealed::check_name(&s.name));
    }
    if let Ok(s) = sealed::SealedOutput::parse(data) {
        assert_eq!(s.encode(), data, "accepted sealed output is not canonical");
    }
    if let Ok(a) = sealed::Archive::parse(data) {
        assert_eq!(a.encode(), data, "accepted archive is not canonical");
        let _ = a.digest();
    }
}

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("cel_decode", cel_decode),
    ("tcg2_parse", tcg2_parse),
    ("ccel", ccel),
    ("pe_uki", pe_uki),
    ("disk_image", disk_image),
    ("golden_document", golden_document),
    ("sealed_envelopes", sealed_envelopes),
];
