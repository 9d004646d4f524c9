//! Fuzz target `cel_decode`: see `sealroom_measurements::fuzzing::cel_decode` (shared with the corpus-replay test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sealroom_measurements::fuzzing::cel_decode(data));
