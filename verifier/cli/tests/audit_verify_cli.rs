//! `sealroom audit verify` on real log files: an intact log verifies; every kind of tampering is reported with
//! the number of the first broken record and a non-zero exit status.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::path::Path;
use std::process::Command;

use sealroom_broker::audit::{AuditEntry, AuditLog, Decision};

fn write_log(path: &Path, records: u8) -> Vec<u8> {
    let (mut log, _) = AuditLog::open(path).unwrap();
    for i in 0..records {
        log.append(
            &[AuditEntry {
                decision: if i.is_multiple_of(3) { Decision::Refused } else { Decision::Released },
                key_id: format!("provider-a/key-{i}"),
                evidence_digest: [i; 32],
                rule: "policy.image_digests".into(),
                reason: format!("policy.image_digests: workload image digest sha256:{i:02x} not allowed"),
            }],
            1_700_000_000_000 + u64::from(i),
        )
        .unwrap();
    }
    std::fs::read(path).unwrap()
}

fn verify(path: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sealroom"))
        .args(["audit", "verify"])
        .arg(path)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes.split_inclusive(|b| *b == b'\n').map(<[u8]>::to_vec).collect()
}

fn tampered(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn intact_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 5);
    let (ok, out) = verify(&path, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("audit log ok: 5 records"), "{out}");
}

#[test]
fn flipped_byte_in_a_reason_is_detected_at_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = write_log(&dir.path().join("audit.log"), 5);
    let l = lines(&bytes);
    let offset: usize = l[..3].iter().map(Vec::len).sum();
    let in_reason = offset + l[3].windows(7).position(|w| w == b"allowed").unwrap();
    let mut bad = bytes.clone();
    bad[in_reason] ^= 0x01;
    let (ok, out) = verify(&tampered(dir.path(), "flip", &bad), &[]);
    assert!(!ok);
    assert!(out.contains(&format!("record 3 (byte offset {offset}): hash mismatch")), "{out}");
}

#[test]
fn flipped_byte_in_the_syntax_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = write_log(&dir.path().join("audit.log"), 5);
    let l = lines(&bytes);
    let offset: usize = l[..2].iter().map(Vec::len).sum();
    let mut bad = bytes.clone();
    bad[offset] ^= 0x40; // '{' becomes ';'
    let (ok, out) = verify(&tampered(dir.path(), "syntax", &bad), &[]);
    assert!(!ok);
    assert!(out.contains("record 2 ") && out.contains("not a record"), "{out}");
}

#[test]
fn deleted_record_is_detected_at_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = write_log(&dir.path().join("audit.log"), 5);
    let mut l = lines(&bytes);
    l.remove(2);
    let (ok, out) = verify(&tampered(dir.path(), "deleted", &l.concat()), &[]);
    assert!(!ok);
    assert!(out.contains("record 2 ") && out.contains("sequence number 3 where 2 was expected"), "{out}");
}

#[test]
fn deleted_and_renumbered_record_is_detected_by_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = write_log(&dir.path().join("audit.log"), 5);
    let mut l = lines(&bytes);
    l.remove(1);
    // Renumber the following records so the sequence looks consecutive: the prev links still break.
    for (i, line) in l.iter_mut().enumerate().skip(1) {
        let text = String::from_utf8(line.clone()).unwrap();
        *line = text.replacen(&format!("\"seq\":{}", i + 1), &format!("\"seq\":{i}"), 1).into_bytes();
    }
    let (ok, out) = verify(&tampered(dir.path(), "renumbered", &l.concat()), &[]);
    assert!(!ok);
    assert!(out.contains("record 1 ") && out.contains("does not link to the previous record"), "{out}");
}

#[test]
fn reordered_records_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = write_log(&dir.path().join("audit.log"), 5);
    let mut l = lines(&bytes);
    l.swap(1, 3);
    let (ok, out) = verify(&tampered(dir.path(), "reordered", &l.concat()), &[]);
    assert!(!ok);
    assert!(out.contains("record 1 ") && out.contains("sequence number 3 where 1 was expected"), "{out}");
}

#[test]
fn truncation_mid_record_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = write_log(&dir.path().join("audit.log"), 5);
    let l = lines(&bytes);
    let offset: usize = l[..4].iter().map(Vec::len).sum();
    let (ok, out) = verify(&tampered(dir.path(), "truncated", &bytes[..offset + 40]), &[]);
    assert!(!ok);
    assert!(out.contains(&format!("record 4 (byte offset {offset}): truncated")), "{out}");
}

#[test]
fn records_cut_from_the_end_are_detected_against_a_token_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let bytes = write_log(&path, 5);
    let l = lines(&bytes);
    let last: serde_json::Value = serde_json::from_slice(l[4].strip_suffix(b"\n").unwrap()).unwrap();
    let head = format!("5:{}", last["hash"].as_str().unwrap());
    let (ok, out) = verify(&path, &["--head", &head]);
    assert!(ok, "{out}");
    // Cutting whole records from the end leaves a valid chain, but not the head a token recorded.
    let cut = tampered(dir.path(), "cut", &l[..3].concat());
    assert!(verify(&cut, &[]).0);
    let (ok, out) = verify(&cut, &["--head", &head]);
    assert!(!ok);
    assert!(out.contains("log has 3 records but a token saw 5"), "{out}");
}
