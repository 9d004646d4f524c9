//! Every real UEFI TCG2 log of the corpus (testdata/tpm/eventlogs, see testdata/MANIFEST.md) parses and replays to
//! the PCR values its manifest lists; the known-bad references are reported as mismatches.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use sealroom_measurements::evidence::HashAlg;
use sealroom_measurements::tcg2::{EventDetails, LogFormat, Tcg2Log, event_type};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/tpm/eventlogs")
}

struct Expected {
    format: LogFormat,
    event_count_incl_specid: usize,
    banks: Vec<(HashAlg, BTreeMap<u32, Vec<u8>>)>,
}

fn expected(name: &str) -> Expected {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir().join("expected_pcrs.json")).unwrap()).unwrap();
    let entry = &json["logs"][name];
    let format = match entry["log_format"].as_str().unwrap() {
        "agile" => LogFormat::CryptoAgile,
        "legacy" => LogFormat::LegacySha1,
        other => panic!("unknown format {other}"),
    };
    let mut banks = Vec::new();
    for (bank, pcrs) in entry["expected_pcrs"].as_object().unwrap() {
        let alg = match bank.as_str() {
            "sha1" => HashAlg::Sha1,
            "sha256" => HashAlg::Sha256,
            other => panic!("unknown bank {other}"),
        };
        let values = pcrs
            .as_object()
            .unwrap()
            .iter()
            .map(|(i, v)| (i.parse::<u32>().unwrap(), hex::decode(v.as_str().unwrap()).unwrap()))
            .collect();
        banks.push((alg, values));
    }
    Expected {
        format,
        event_count_incl_specid: usize::try_from(entry["event_count_incl_specid"].as_u64().unwrap()).unwrap(),
        banks,
    }
}

fn parse(name: &str) -> Tcg2Log {
    Tcg2Log::parse(&std::fs::read(dir().join(name)).unwrap()).unwrap()
}

fn replays_to_manifest(name: &str) {
    let want = expected(name);
    let log = parse(name);
    assert_eq!(log.format, want.format);
    let header = usize::from(log.format == LogFormat::CryptoAgile);
    assert_eq!(log.events.len() + header, want.event_count_incl_specid);
    assert_eq!(log.padding, 0);
    let replay = log.replay(true).unwrap();
    assert!(!want.banks.is_empty());
    for (alg, pcrs) in &want.banks {
        assert!(!pcrs.is_empty());
        replay.check(*alg, pcrs).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Every event is kept, has a name or an explicit unknown marker, and its details serialise (CLI --json).
    for e in &log.events {
        assert!(!e.type_name().is_empty());
        serde_json::to_string(&e.details()).unwrap();
    }
}

macro_rules! corpus_log {
    ($test:ident, $file:literal) => {
        #[test]
        fn $test() {
            replays_to_manifest($file);
        }
    };
}

corpus_log!(arch_linux_workstation, "arch-linux-workstation.bin");
corpus_log!(confidential_gke_debug_251000, "confidential-gke-debug-251000_eventlog.bin");
corpus_log!(cos_101_amd_sev, "cos-101-amd-sev.bin");
corpus_log!(cos_85_amd_sev, "cos-85-amd-sev.bin");
corpus_log!(cos_93_amd_sev, "cos-93-amd-sev.bin");
corpus_log!(debian_10_legacy_sha1, "debian-10.bin");
corpus_log!(eventlog_with_sp800_155, "eventlogwithsp800155.bin");
corpus_log!(gdc_host, "gdc-host.bin");
corpus_log!(glinux_alex, "glinux-alex.bin");
corpus_log!(rhel8_uefi, "rhel8-uefi.bin");
corpus_log!(ubuntu_1804_amd_sev, "ubuntu-1804-amd-sev.bin");
corpus_log!(ubuntu_2104_no_dbx, "ubuntu-2104-no-dbx.bin");
corpus_log!(ubuntu_2104_no_secure_boot, "ubuntu-2104-no-secure-boot.bin");
corpus_log!(ubuntu_2404_amd_sevsnp, "ubuntu-2404-amd-sevsnp.bin");

/// Manifest: debian-10 (go-tpm-tools TestParseMachineStateFail) replayed against PCR0 = 0 must fail.
#[test]
fn debian_10_against_zero_pcr0_is_a_mismatch() {
    let replay = parse("debian-10.bin").replay(true).unwrap();
    let mut pcrs = expected("debian-10.bin").banks.remove(0).1;
    pcrs.insert(0, vec![0u8; 20]);
    let err = replay.check(HashAlg::Sha1, &pcrs).unwrap_err().to_string();
    assert!(
        err.starts_with("pcr 0 (sha1) mismatch: expected 0000000000000000000000000000000000000000, got "),
        "{err}"
    );
}

/// Any single changed reference value is reported as a mismatch naming that PCR.
#[test]
fn every_flipped_reference_is_a_mismatch() {
    for name in ["cos-101-amd-sev.bin", "rhel8-uefi.bin"] {
        let replay = parse(name).replay(true).unwrap();
        for (alg, pcrs) in expected(name).banks {
            for (index, value) in &pcrs {
                let mut wrong = pcrs.clone();
                let mut v = value.clone();
                v[0] ^= 1;
                wrong.insert(*index, v);
                let err = replay.check(alg, &wrong).unwrap_err().to_string();
                assert!(err.starts_with(&format!("pcr {index} ({}) mismatch", alg.name())), "{err}");
            }
        }
    }
}

/// A tampered event digest changes the replay (the log cannot be edited without the PCRs noticing).
#[test]
fn tampered_event_changes_replay() {
    let mut bytes = std::fs::read(dir().join("ubuntu-2404-amd-sevsnp.bin")).unwrap();
    let log = Tcg2Log::parse(&bytes).unwrap();
    let sep = log.events.iter().find(|e| e.event_type == event_type::SEPARATOR && e.index == 7).unwrap();
    // pcr, type, count, alg id → first digest byte.
    bytes[sep.offset + 14] ^= 0xff;
    let replay = Tcg2Log::parse(&bytes).unwrap().replay(true).unwrap();
    let (alg, pcrs) = expected("ubuntu-2404-amd-sevsnp.bin").banks.remove(0);
    let err = replay.check(alg, &pcrs).unwrap_err().to_string();
    assert!(err.starts_with(&format!("pcr 7 ({}) mismatch", alg.name())), "{err}");
}

/// Truncated logs fail with an offset instead of replaying a prefix silently.
#[test]
fn truncated_log_reports_offset() {
    let bytes = std::fs::read(dir().join("rhel8-uefi.bin")).unwrap();
    let err = Tcg2Log::parse(&bytes[..bytes.len() - 7]).unwrap_err().to_string();
    assert!(err.starts_with("uefi event log: event data at offset 0x"), "{err}");
}

#[test]
fn typed_events_are_exposed() {
    let log = parse("cos-101-amd-sev.bin");
    let nonhost = log.events.iter().find(|e| e.event_type == event_type::NONHOST_INFO).unwrap();
    assert!(
        matches!(nonhost.details(), EventDetails::GceNonHostInfo { technology: 1, .. }),
        "{:?}",
        nonhost.details()
    );
    let apps: Vec<_> =
        log.events.iter().filter(|e| e.event_type == event_type::EFI_BOOT_SERVICES_APPLICATION).collect();
    assert!(!apps.is_empty());
    for app in apps {
        assert!(matches!(app.details(), EventDetails::ImageLoad { .. }), "{:?}", app.details());
    }
    let action = log.events.iter().find(|e| e.event_type == event_type::EFI_ACTION).unwrap();
    assert_eq!(
        action.details(),
        EventDetails::Text { text: "Calling EFI Application from Boot Option".into() }
    );
    assert!(action.digests_match_data());
    let secure_boot = log
        .events
        .iter()
        .find(|e| matches!(e.details(), EventDetails::Variable { ref name, .. } if name == "SecureBoot"))
        .unwrap();
    assert_eq!(secure_boot.index, 7);
    let crtm = log.events.iter().find(|e| e.event_type == event_type::S_CRTM_VERSION).unwrap();
    assert!(
        matches!(crtm.details(), EventDetails::Text { ref text } if text.starts_with("GCE Virtual Firmware v"))
    );

    // go-tpm-tools rejects arch-linux-workstation's state because its SecureBoot variable is empty: we show it.
    let arch = parse("arch-linux-workstation.bin");
    assert!(arch.events.iter().any(
        |e| matches!(e.details(), EventDetails::Variable { ref name, data_len: 0, .. } if name == "SecureBoot")
    ));
    assert_eq!(arch.startup_locality(), None);
    // glinux-alex starts PCR 0 at locality 3 (its expected PCR 0 only replays with that).
    let glinux = parse("glinux-alex.bin");
    assert_eq!(glinux.startup_locality(), Some(3));
    let (alg, pcrs) = expected("glinux-alex.bin").banks.remove(0);
    glinux.replay(true).unwrap().check(alg, &pcrs).unwrap();
    let err = glinux.replay(false).unwrap().check(alg, &pcrs).unwrap_err().to_string();
    assert!(err.starts_with(&format!("pcr 0 ({}) mismatch", alg.name())), "{err}");
}
