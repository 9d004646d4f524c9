//! Fuzz target `sealed_envelopes`: see `sealroom_measurements::fuzzing::sealed_envelopes` (shared with the
//! corpus-replay test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sealroom_measurements::fuzzing::sealed_envelopes(data));
