//! Evidence kind detection (`sealroom verify --evidence`): hex text, DCAP quote and SEV-SNP report headers,
//! Azure JSON, then sealroom `Evidence` and GCE `Attestation` protobuf.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroom_verifier::evidence_kind::detect;

fuzz_target!(|data: &[u8]| {
    if let Ok(detected) = detect(data) {
        let _ = detected.into_input();
    }
});
