//! Every real TDX CCEL log of the corpus (testdata/tdx, see testdata/MANIFEST.md) parses like trustee's reference
//! parser output and replays to the RTMR values its manifest lists; the listed wrong references are mismatches.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;

use sealroom_measurements::ccel::{CC_TYPE_TDX, CcelLog, CcelTable, RTMR_COUNT, Rtmrs};
use sealroom_measurements::tcg2::alg_name;

fn data(rel: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/tdx").join(rel)).unwrap()
}

fn json(rel: &str) -> serde_json::Value {
    serde_json::from_slice(&data(rel)).unwrap()
}

fn rtmr(hex_str: &str) -> [u8; 48] {
    hex::decode(hex_str).unwrap().try_into().unwrap()
}

fn trustee_expected(name: &str) -> [Option<[u8; 48]>; RTMR_COUNT] {
    let v = json("trustee-ccel/expected_rtmrs.json");
    let list = v["positive"][name].as_array().unwrap();
    assert_eq!(list.len(), RTMR_COUNT);
    std::array::from_fn(|i| Some(rtmr(list[i].as_str().unwrap())))
}

fn replay(rel: &str) -> Rtmrs {
    CcelLog::parse(&data(rel)).unwrap().replay().unwrap()
}

/// Minimal standard base64 decoder for the reference JSON (no dependency just for tests).
fn b64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 {c}"),
        }
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::new();
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// Our parse agrees with trustee's reference parser output event by event: index, type, digests, data, and
/// whether the digest is the hash of the data.
fn parse_matches_trustee(name: &str) {
    let log = CcelLog::parse(&data(&format!("trustee-ccel/{name}"))).unwrap().log;
    let reference = json(&format!("trustee-ccel/{name}_out.json"));
    let events = reference["uefi_event_logs"].as_array().unwrap();
    assert_eq!(log.events.len(), events.len(), "{name}: event count");
    for (n, (ours, theirs)) in log.events.iter().zip(events).enumerate() {
        assert_eq!(u64::from(ours.index), theirs["index"].as_u64().unwrap(), "{name} event {n}");
        assert_eq!(ours.type_name(), theirs["type_name"].as_str().unwrap(), "{name} event {n}");
        assert_eq!(ours.data, b64(theirs["event"].as_str().unwrap()), "{name} event {n}");
        let digests = theirs["digests"].as_array().unwrap();
        assert_eq!(ours.digests.len(), digests.len());
        for (d, t) in ours.digests.iter().zip(digests) {
            let alg = match t["alg"].as_str().unwrap() {
                "SHA-384" => "sha384",
                "SM3" => "sm3_256",
                other => panic!("unknown alg {other}"),
            };
            assert_eq!(alg_name(d.alg_id), alg);
            assert_eq!(hex::encode(&d.digest), t["digest"].as_str().unwrap(), "{name} event {n}");
        }
        // trustee can only check digests it can compute; SM3 is not one of ours.
        if ours.digests.iter().all(|d| d.alg().is_some()) {
            assert_eq!(
                ours.digests_match_data(),
                theirs["digest_matches_event"].as_bool().unwrap(),
                "{name} event {n}"
            );
        }
    }
}

macro_rules! trustee_log {
    ($test:ident, $file:literal, with_reference_parse) => {
        #[test]
        fn $test() {
            parse_matches_trustee($file);
            replay(concat!("trustee-ccel/", $file)).check(&trustee_expected($file)).unwrap();
        }
    };
    // trustee ships no parser output for this log: replay only.
    ($test:ident, $file:literal, replay_only) => {
        #[test]
        fn $test() {
            replay(concat!("trustee-ccel/", $file)).check(&trustee_expected($file)).unwrap();
        }
    };
}

trustee_log!(trustee_ccel_data, "CCEL_data", with_reference_parse);
trustee_log!(trustee_ccel_data_ovmf, "CCEL_data_ovmf", with_reference_parse);
trustee_log!(trustee_ccel_data_grub, "CCEL_data_grub", with_reference_parse);
trustee_log!(trustee_ccel_data_gcp, "CCEL_data_gcp", replay_only);
trustee_log!(trustee_ccel_data_grub_gke, "CCEL_data_grub_gke", with_reference_parse);

#[test]
fn trustee_ccel_aael_alibabacloud() {
    parse_matches_trustee("CCEL_AAEL_alibabacloud");
    let v = json("trustee-ccel/expected_rtmrs.json");
    let ours = &v["our_replay_only"]["CCEL_AAEL_alibabacloud"]["sha384"];
    let expected = std::array::from_fn(|i| Some(rtmr(ours[(i + 1).to_string()].as_str().unwrap())));
    let got = replay("trustee-ccel/CCEL_AAEL_alibabacloud");
    got.check(&expected).unwrap();
    // This log touches all four RTMRs.
    assert!(got.0.iter().all(|r| r != &[0u8; 48]));
}

/// Hygon CSV logs carry SM3 digests only: parsed faithfully, but RTMR replay is refused rather than guessed.
#[test]
fn trustee_ccel_data_csv_sm3() {
    parse_matches_trustee("CCEL_data_csv");
    let err = CcelLog::parse(&data("trustee-ccel/CCEL_data_csv")).unwrap().replay().unwrap_err().to_string();
    assert_eq!(
        err,
        "ccel: invalid digest algorithm: log has no sha384 bank (has sm3_256); cannot replay RTMRs"
    );
}

/// Manifest negatives (trustee test_rtmr_integrity_error and the CCEL_data RTMR1 reference).
#[test]
fn trustee_wrong_references_are_mismatches() {
    let v = json("trustee-ccel/expected_rtmrs.json");
    let mut gcp = trustee_expected("CCEL_data_gcp");
    gcp[0] = Some(rtmr(v["negative"]["CCEL_data_gcp"]["rtmr0_reference"].as_str().unwrap()));
    let err = replay("trustee-ccel/CCEL_data_gcp").check(&gcp).unwrap_err().to_string();
    assert!(err.starts_with("rtmr0 mismatch: expected "), "{err}");
    assert!(err.ends_with("304f"), "{err}");

    let mut plain = trustee_expected("CCEL_data");
    plain[1] = Some(rtmr(v["negative"]["CCEL_data"]["rtmr1_reference"].as_str().unwrap()));
    let err = replay("trustee-ccel/CCEL_data").check(&plain).unwrap_err().to_string();
    assert!(err.starts_with("rtmr1 mismatch: expected 2fa3"), "{err}");
    assert!(err.contains(", got 0fa3"), "{err}");
}

/// go-tdx-guest's COS-113 TD: table + log, replayed RTMRs equal the ones in the TD quote.
#[test]
fn go_tdx_guest_cos_113_matches_quote_rtmrs() {
    let table = CcelTable::parse(&data("ccel/ccel_table.dat")).unwrap();
    assert_eq!(table.cc_type, CC_TYPE_TDX);
    let log_bytes = data("ccel/ccel_data.dat");
    assert_eq!(table.log_area_min_len, u64::try_from(log_bytes.len()).unwrap());
    let v = json("ccel/expected_rtmrs.json");
    let expected =
        std::array::from_fn(|i| Some(rtmr(v["rtmr_from_quote"][format!("RTMR{i}")].as_str().unwrap())));
    let log = CcelLog::parse(&log_bytes).unwrap();
    assert_eq!(log.log.events.len(), 43); // 44 including the Spec ID event
    log.replay().unwrap().check(&expected).unwrap();
}

#[test]
fn tampered_ccel_event_is_a_mismatch() {
    let mut bytes = data("ccel/ccel_data.dat");
    let log = CcelLog::parse(&bytes).unwrap();
    let ev = log.log.events.iter().find(|e| e.index == 3).unwrap(); // RTMR2
    bytes[ev.offset + 14] ^= 0x80;
    let v = json("ccel/expected_rtmrs.json");
    let expected =
        std::array::from_fn(|i| Some(rtmr(v["rtmr_from_quote"][format!("RTMR{i}")].as_str().unwrap())));
    let err = CcelLog::parse(&bytes).unwrap().replay().unwrap().check(&expected).unwrap_err().to_string();
    assert!(err.starts_with("rtmr2 mismatch"), "{err}");
}
