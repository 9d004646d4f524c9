//! NVIDIA GPU attestation report (SPDM GET_MEASUREMENTS request + response) parser, and its verification
//! against the real 2023 H100 device chain and RIMs.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sealroom_verifier::gpu::fuzzing::{FUZZ_TIME, gpu_report};
use sealroom_verifier::gpu::{DeviceChain, GpuTrust, Revocation, VerifiedRim, verify_device_chain, verify_rim};
use sealroom_verifier::x509::Certificate;

static CHAIN: LazyLock<Option<DeviceChain>> = LazyLock::new(|| {
    let trust = GpuTrust::nvidia().ok()?;
    let chain = Certificate::chain_from_pem(include_bytes!("../../verifier/testdata/gpu/nvtrust/gpuAkCertChain.txt")).ok()?;
    verify_device_chain(&trust, &chain, &Revocation::NotChecked, FUZZ_TIME).ok()
});
static RIMS: LazyLock<Vec<VerifiedRim>> = LazyLock::new(|| {
    let Ok(trust) = GpuTrust::nvidia() else { return Vec::new() };
    [
        &include_bytes!("../../verifier/testdata/gpu/nvtrust/Driver_RIM_test_no_gpu.swidtag")[..],
        &include_bytes!("../../verifier/testdata/gpu/nvtrust/1010_0200_882_96005E0001_test_no_gpu.swidtag")[..],
    ]
    .iter()
    .filter_map(|xml| verify_rim(&trust, xml, &Revocation::NotChecked, FUZZ_TIME).ok())
    .collect()
});

fuzz_target!(|data: &[u8]| {
    gpu_report(data, CHAIN.as_ref(), &RIMS);
});
