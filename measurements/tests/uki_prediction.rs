//! UKI prediction against independent oracles (testdata/uki/expected.json, produced by testdata/uki/make.sh with
//! systemd-measure and osslsigncode) and disk images built with sgdisk/mkfs.vfat/mtools (make-disks.sh).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;

use sealroom_measurements::disk::{self, Gpt};
use sealroom_measurements::evidence::HashAlg;
use sealroom_measurements::pe::PeImage;
use sealroom_measurements::uki::{BootContext, predict};

fn data(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/uki").join(name)).unwrap()
}

fn expected(key: &str) -> String {
    let v: serde_json::Value = serde_json::from_slice(&data("expected.json")).unwrap();
    v[key].as_str().unwrap().to_string()
}

#[test]
fn pcr11_matches_systemd_measure() {
    let p = predict(&data("uki.efi"), &[HashAlg::Sha256, HashAlg::Sha384], &BootContext::default()).unwrap();
    assert_eq!(p.register("pcr11", HashAlg::Sha256).unwrap().value, expected("pcr11_sha256"));
    assert_eq!(p.register("pcr11", HashAlg::Sha384).unwrap().value, expected("pcr11_sha384"));
    let names: Vec<_> = p.sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [".linux", ".osrel", ".cmdline", ".initrd", ".uname", ".sbat"]);
    assert_eq!(p.sections[0].sha256, expected("linux_file_sha256"));
    assert_eq!(p.file_sha256, expected("file_sha256"));
}

#[test]
fn authenticode_matches_osslsigncode() {
    let uki = data("uki.efi");
    let signed = data("uki-signed.efi");
    for (alg, key) in [(HashAlg::Sha256, "authenticode_sha256"), (HashAlg::Sha384, "authenticode_sha384")] {
        // osslsigncode computed it over the signed file (certificate table excluded); the unsigned file is
        // 8-byte aligned, so signing added no padding and both digests agree.
        assert_eq!(hex::encode(PeImage::parse(&signed).unwrap().authenticode(alg).unwrap()), expected(key));
        assert_eq!(hex::encode(PeImage::parse(&uki).unwrap().authenticode(alg).unwrap()), expected(key));
    }
    let p = predict(&uki, &[HashAlg::Sha256], &BootContext::default()).unwrap();
    assert_eq!(p.authenticode_sha256, expected("authenticode_sha256"));
    assert_eq!(p.authenticode_sha384, expected("authenticode_sha384"));
    let pcr4 = p.register("pcr4", HashAlg::Sha256).unwrap();
    assert_eq!(pcr4.events[2].digest, expected("authenticode_sha256"));
}

#[test]
fn one_changed_byte_changes_the_prediction() {
    let uki = data("uki.efi");
    let base = predict(&uki, &[HashAlg::Sha256], &BootContext::default()).unwrap();
    let pe = PeImage::parse(&uki).unwrap();
    let initrd = pe.section(".initrd").unwrap();
    let mut changed = uki.clone();
    changed[usize::try_from(initrd.pointer_to_raw_data).unwrap() + 5] ^= 1;
    let p = predict(&changed, &[HashAlg::Sha256], &BootContext::default()).unwrap();
    for reg in ["pcr4", "pcr9", "pcr11"] {
        assert_ne!(
            p.register(reg, HashAlg::Sha256).unwrap().value,
            base.register(reg, HashAlg::Sha256).unwrap().value,
            "{reg}"
        );
    }
    assert_eq!(
        p.register("pcr12", HashAlg::Sha256).unwrap().value,
        base.register("pcr12", HashAlg::Sha256).unwrap().value
    );
}

fn disk_case(name: &str, fat: &str) {
    let disk_bytes = data(name);
    let boot = disk::find_uki(&disk_bytes).unwrap();
    assert_eq!(boot.fat_kind, fat);
    assert_eq!(boot.uki, data("uki.efi"));
    let esp = boot.gpt.esp().unwrap();
    assert_eq!(esp.number, 1);
    assert_eq!(esp.first_lba, 2048);
    assert_eq!(esp.unique_guid, "66666666-7777-8888-9999-aaaaaaaaaaaa");
    // UEFI_GPT_DATA: 92-byte header, a u64 count of 1, one 128-byte entry.
    assert_eq!(boot.gpt.gpt_event.len(), 92 + 8 + 128);
    assert_eq!(&boot.gpt.gpt_event[..8], b"EFI PART");
    let p =
        predict(&boot.uki, &[HashAlg::Sha256], &BootContext { gpt_event: Some(boot.gpt.gpt_event.clone()) })
            .unwrap();
    assert!(p.register("rtmr1", HashAlg::Sha384).unwrap().complete);
}

#[test]
fn disk_fat12_esp() {
    disk_case("disk-fat12.raw", "FAT12");
}

#[test]
fn disk_fat16_esp() {
    disk_case("disk-fat16.raw", "FAT16");
}

#[test]
fn corrupted_gpt_is_refused() {
    let mut d = data("disk-fat12.raw");
    d[512 + 40] ^= 1; // inside the header: CRC fails
    assert_eq!(Gpt::parse(&d).unwrap_err().to_string(), "disk image: invalid gpt header crc: does not match");
    let mut d = data("disk-fat12.raw");
    d[1024 + 40] ^= 1; // inside the entry array
    assert!(Gpt::parse(&d).unwrap_err().to_string().contains("partition entries crc"));
}
