//! Fuzz target `intel_cert_chain`: see `sealroom_verifier::tdx::fuzzing::intel_cert_chain` (shared with the corpus-replay test).
#![no_main]

use libfuzzer_sys::fuzz_target;
fuzz_target!(|data: &[u8]| sealroom_verifier::tdx::fuzzing::intel_cert_chain(data));
