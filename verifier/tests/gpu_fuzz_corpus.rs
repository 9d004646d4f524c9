//! Replays the checked-in fuzz corpora of the GPU report and RIM parsers (and simple mutations: truncations,
//! byte flips) through the same entry points as the fuzz targets, so CI proves no corpus input panics.
//! Results are Ok or Err; only a panic fails.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

#[path = "common/corpus.rs"]
mod common_corpus;

use common_corpus::{corpus, mutations};

use sealroom_verifier::gpu::fuzzing::{FUZZ_TIME, gpu_report, gpu_rim};
use sealroom_verifier::gpu::{GpuTrust, Revocation, verify_device_chain, verify_rim};
use sealroom_verifier::x509::Certificate;

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
