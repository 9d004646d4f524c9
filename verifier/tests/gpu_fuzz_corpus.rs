//! Replays the checked-in fuzz corpora of the GPU report and RIM parsers (and simple mutations: truncations,
//! byte flips) through the same entry points as the fuzz targets, so CI proves no corpus input panics.
//! Results are Ok or Err; only a panic fails.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::PathBuf;

use sealroom_verifier::gpu::fuzzing::{FUZZ_TIME, gpu_report, gpu_rim};
use sealroom_verifier::gpu::{GpuTrust, Revocation, verify_device_chain, verify_rim};
use sealroom_verifier::x509::Certificate;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let out: Vec<_> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!out.is_empty(), "empty corpus {}", dir.display());
    out
}

/// The input, every 64th-length prefix, and byte flips at spread-out offsets.
fn mutations(input: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![input.to_vec()];
    let step = (input.len() / 64).max(1);
    for cut in (0..input.len()).step_by(step) {
        out.push(input[..cut].to_vec());
    }
    for at in (0..input.len()).step_by(step) {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut m = input.to_vec();
            m[at] ^= mask;
            out.push(m);
        }
    }
    out
}

#[test]
fn gpu_report_corpus() {
    let trust = GpuTrust::nvidia().unwrap();
    let chain =
        Certificate::chain_from_pem(include_bytes!("../testdata/gpu/nvtrust/gpuAkCertChain.txt")).unwrap();
    let chain = verify_device_chain(&trust, &chain, &Revocation::NotChecked, FUZZ_TIME).unwrap();
    let rims: Vec<_> = [
        &include_bytes!("../testdata/gpu/nvtrust/Driver_RIM_test_no_gpu.swidtag")[..],
        &include_bytes!("../testdata/gpu/nvtrust/1010_0200_882_96005E0001_test_no_gpu.swidtag")[..],
    ]
    .iter()
    .map(|xml| verify_rim(&trust, xml, &Revocation::NotChecked, FUZZ_TIME).unwrap())
    .collect();
    for input in corpus("gpu_report") {
        for m in mutations(&input) {
            gpu_report(&m, Some(&chain), &rims);
        }
    }
}

#[test]
fn gpu_rim_corpus() {
    for input in corpus("gpu_rim") {
        for m in mutations(&input) {
            gpu_rim(&m);
        }
    }
}
