//! Fuzz target `tdx_collateral`: see `sealroom_verifier::tdx::fuzzing::tdx_collateral` (shared with the corpus-replay test).
#![no_main]

use libfuzzer_sys::fuzz_target;
fuzz_target!(|data: &[u8]| sealroom_verifier::tdx::fuzzing::tdx_collateral(data));
