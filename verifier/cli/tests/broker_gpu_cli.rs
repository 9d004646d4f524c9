//! `sealroom broker serve --gpu-rims DIR`: the broker verifies NVIDIA's RIMs (real ones, `verifier/testdata/gpu`)
//! when it starts, and refuses to start on RIMs that do not verify at its verification time. What the broker
//! then does with GPU evidence is tested in verifier/broker/tests/broker_gpu.rs.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const RIMS: [&str; 2] = ["Driver_RIM_test_no_gpu.swidtag", "1010_0200_882_96005E0001_test_no_gpu.swidtag"];

fn rim_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in RIMS {
        let src = format!("{}/../testdata/gpu/nvtrust/{f}", env!("CARGO_MANIFEST_DIR"));
        std::fs::copy(src, dir.path().join(f)).unwrap();
    }
    dir
}

fn serve(state: &std::path::Path, rims: &std::path::Path, at: &str) -> Command {
    let kek = state.join("kek");
    std::fs::write(&kek, [0x4b; 32]).unwrap();
    let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
    std::fs::set_permissions(&kek, mode).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_sealroom"));
    c.args(["broker", "serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state.join("broker"))
        .arg("--kek")
        .arg(&kek)
        .arg("--gpu-rims")
        .arg(rims)
        .args(["--verification-time", at]);
    c
}

#[test]
fn serve_verifies_the_gpu_rims_at_start() {
    let state = tempfile::tempdir().unwrap();
    let rims = rim_dir();
    let mut child = serve(state.path(), rims.path(), "2024-06-01T00:00:00Z")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let first = BufReader::new(child.stderr.take().unwrap()).lines().next().unwrap().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(first, format!("sealroom broker: 2 NVIDIA RIMs verified from {}", rims.path().display()));
}

#[test]
fn attack_serve_refuses_rims_whose_signing_chain_expired() {
    let state = tempfile::tempdir().unwrap();
    let rims = rim_dir();
    let out = serve(state.path(), rims.path(), "2026-12-01T00:00:00Z").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(&format!("Error: --gpu-rims {}", rims.path().display())), "{err}");
    assert!(err.contains("RIM ") && err.contains("swidtag"), "{err}");
    // An empty directory is refused too, not taken as "no GPU checks".
    let empty = tempfile::tempdir().unwrap();
    let out = serve(state.path(), empty.path(), "2024-06-01T00:00:00Z").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no RIM files"), "{out:?}");
}
