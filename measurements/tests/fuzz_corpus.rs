//! Replays every seed of this crate's fuzz corpora (fuzz/corpus/<target>/), plus truncations and byte flips of
//! each, through the same entry points the fuzz targets use: every input must return (Ok or Err) without
//! panicking. Also checks that each target is wired into fuzz/ and that the hand-made seeds mean what their
//! names say.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::path::{Path, PathBuf};

use sealroom_measurements::cel::CelLog;
use sealroom_measurements::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "empty corpus for {target}");
    out
}

fn mutations(data: &[u8]) -> Vec<Vec<u8>> {
    let n = data.len();
    let mut out = Vec::new();
    let steps = 48.min(n.max(1));
    for k in 0..=steps {
        out.push(data[..n * k / steps].to_vec());
    }
    out.push(data[..n.saturating_sub(1)].to_vec());
    let positions: Vec<usize> =
        if n <= 2048 { (0..n).collect() } else { (0..128).map(|k| k * n / 128).collect() };
    for i in positions {
        for mask in [0x01u8, 0xff] {
            let mut m = data.to_vec();
            m[i] ^= mask;
            out.push(m);
        }
    }
    out
}

fn replay(target: &str, f: fn(&[u8])) {
    for (path, data) in seeds(target) {
        f(&data);
        for m in mutations(&data) {
            let r = std::panic::catch_unwind(|| f(&m));
            assert!(r.is_ok(), "{target}: a mutation of {} panicked", path.display());
        }
    }
}

macro_rules! corpus {
    ($name:ident) => {
        #[test]
        fn $name() {
            let (_, f) = TARGETS.iter().find(|(n, _)| *n == stringify!($name)).unwrap();
            replay(stringify!($name), *f);
        }
    };
}

corpus!(cel_decode);
corpus!(tcg2_parse);
corpus!(ccel);
corpus!(pe_uki);
corpus!(disk_image);
corpus!(golden_document);
corpus!(sealed_envelopes);

#[test]
fn every_target_is_wired_into_fuzz() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (name, _) in TARGETS {
        assert!(
            Path::new(&fuzz_dir().join(format!("fuzz_targets/{name}.rs"))).is_file(),
            "{name}: no fuzz target"
        );
        assert!(manifest.contains(&format!("name = \"{name}\"")), "{name}: no [[bin]] in fuzz/Cargo.toml");
    }
}

#[test]
fn hand_made_cel_seeds_mean_what_they_say() {
    // valid-*.cel were written by an independent encoder (Python, see the commit): they must decode.
    for (path, data) in seeds("cel_decode") {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let result = CelLog::decode(&data);
        if name.starts_with("valid-") {
            assert!(result.is_ok(), "{name}: {:?}", result.err());
        } else {
            let err = result.unwrap_err().to_string();
            assert!(err.contains("after the launch separator"), "{name}: {err}");
        }
    }
    let full =
        CelLog::decode(&std::fs::read(fuzz_dir().join("corpus/cel_decode/valid-full.cel")).unwrap()).unwrap();
    assert_eq!(full.len(), 10);
    let sealed =
        CelLog::decode(&std::fs::read(fuzz_dir().join("corpus/cel_decode/valid-sealed-input.cel")).unwrap())
            .unwrap();
    assert_eq!(
        sealed[3].event.to_string(),
        format!("sealed_input \"patient\" sha256:{} reply to x25519:{}", "ab".repeat(32), "05".repeat(32))
    );
}

#[test]
fn small_disk_seed_holds_a_boot_file() {
    let data = std::fs::read(fuzz_dir().join("corpus/disk_image/small-fat12-esp.raw")).unwrap();
    let boot = sealroom_measurements::disk::find_uki(&data).unwrap();
    assert_eq!(boot.fat_kind, "FAT12");
    assert!(boot.uki.starts_with(b"MZ"));
}

#[test]
fn hand_made_sealed_seeds_mean_what_they_say() {
    use sealroom_measurements::sealed::{Archive, SealedInput, SealedOutput};
    // Written by an independent encoder (Python, see the commit).
    for (path, data) in seeds("sealed_envelopes") {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let accepted = [
            SealedInput::parse(&data).is_ok(),
            SealedOutput::parse(&data).is_ok(),
            Archive::parse(&data).is_ok(),
        ];
        let want = usize::from(name.starts_with("valid-"));
        assert_eq!(accepted.iter().filter(|a| **a).count(), want, "{name}: {accepted:?}");
    }
    let a =
        Archive::parse(&std::fs::read(fuzz_dir().join("corpus/sealed_envelopes/valid-archive.bin")).unwrap())
            .unwrap();
    assert_eq!(a.files.len(), 2);
    let err = Archive::parse(
        &std::fs::read(fuzz_dir().join("corpus/sealed_envelopes/invalid-archive-escape.bin")).unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a plain relative path"), "{err}");
}
