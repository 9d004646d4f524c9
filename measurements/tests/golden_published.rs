//! The published golden documents verify under the pinned key and match what their image measures; any changed
//! byte is refused.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;

use sealroom_measurements::disk;
use sealroom_measurements::evidence::HashAlg;
use sealroom_measurements::golden;
use sealroom_measurements::uki::{BootContext, predict};

fn file(rel: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

#[test]
fn fixture_golden_verifies_and_matches_its_disk() {
    let doc = file("golden/fixture-uki/golden.json");
    let sig = String::from_utf8(file("golden/fixture-uki/golden.json.sig")).unwrap();
    let golden = golden::verify_pinned(&doc, &sig).unwrap();
    assert_eq!(golden.image.id, "sealroom-fixture-uki");

    let disk_bytes = file("testdata/uki/disk-fat16.raw");
    let boot = disk::find_uki(&disk_bytes).unwrap();
    let p = predict(
        &boot.uki,
        &[HashAlg::Sha256, HashAlg::Sha384],
        &BootContext { gpt_event: Some(boot.gpt.gpt_event) },
    )
    .unwrap();
    golden.check(&p).unwrap();
    assert_eq!(
        golden.image.disk_sha256.as_deref(),
        Some(hex::encode(sealroom_measurements::digest::sha256(&disk_bytes)).as_str())
    );
    // Firmware registers are referenced to endorsements, not valued.
    assert!(golden.platforms.iter().any(|p| p.platform == "gcp-tdx" && p.registers == ["mrtd", "rtmr0"]));
    assert!(golden.registers.iter().all(|r| !r.register.starts_with("pcr0") && r.register != "mrtd"));

    // A different image does not match.
    let other = file("testdata/uki/disk-fat12.raw");
    let boot = disk::find_uki(&other).unwrap();
    let q = predict(
        &boot.uki,
        &[HashAlg::Sha256, HashAlg::Sha384],
        &BootContext { gpt_event: Some(boot.gpt.gpt_event) },
    )
    .unwrap();
    let err = golden.check(&q).unwrap_err().to_string();
    assert!(err.starts_with("golden: rtmr1 (sha384) mismatch"), "{err}");
}

#[test]
fn every_flipped_byte_of_the_published_document_is_refused() {
    let doc = file("golden/fixture-uki/golden.json");
    let sig = String::from_utf8(file("golden/fixture-uki/golden.json.sig")).unwrap();
    for i in 0..doc.len() {
        let mut t = doc.clone();
        t[i] ^= 0x01;
        let err = golden::verify_pinned(&t, &sig).unwrap_err().to_string();
        assert_eq!(err, "golden: invalid signature: does not verify under the pinned key", "byte {i}");
    }
    let sig_bytes = hex::decode(sig.trim()).unwrap();
    for i in 0..sig_bytes.len() {
        let mut s = sig_bytes.clone();
        s[i] ^= 0x01;
        assert!(golden::verify_pinned(&doc, &hex::encode(s)).is_err(), "signature byte {i}");
    }
}
