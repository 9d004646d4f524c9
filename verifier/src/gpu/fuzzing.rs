//! Entry points of the GPU fuzz targets (`fuzz/fuzz_targets/gpu_report.rs`, `gpu_rim.rs`), shared with the
//! corpus-replay test `verifier/tests/gpu_fuzz_corpus.rs` so CI runs exactly what the fuzzer runs. Each takes
//! arbitrary bytes and must return without panicking.
#![doc(hidden)]

use super::report::GpuReport;
use super::rim::Rim;
use super::verify::{DeviceChain, VerifiedRim, verify_gpu_report};
use crate::x509::UnixTime;

/// 2024-06-01T00:00:00Z, the time of the GPU test data's manifest.
pub const FUZZ_TIME: UnixTime = 1_717_200_000;

/// Report: parse, read every derived field, and (when given) verify against a real chain and RIMs.
pub fn gpu_report(data: &[u8], chain: Option<&DeviceChain>, rims: &[VerifiedRim]) {
    if let Ok(r) = GpuReport::parse(data) {
        let _ = (r.driver_version(), r.vbios_version(), r.board(), r.fwid(), r.nvdec0_enabled());
        if let Some(chain) = chain {
            let _ = verify_gpu_report(data, chain, rims, &r.request_nonce, FUZZ_TIME);
        }
    }
}

/// RIM: XML parsing, canonicalisation, digest and signature check, SWID content.
pub fn gpu_rim(data: &[u8]) {
    if let Ok(rim) = Rim::parse_signed(data) {
        let _ = rim.measurements.len();
    }
}
