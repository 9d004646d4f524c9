//! NVIDIA RIM (XML-DSig signed SWID tag): XML parsing, C14N 1.1, digest and signature check, SWID content.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroom_verifier::gpu::fuzzing::gpu_rim;

fuzz_target!(|data: &[u8]| {
    gpu_rim(data);
});
