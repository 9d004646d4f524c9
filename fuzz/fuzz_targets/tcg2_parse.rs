//! Fuzz target `tcg2_parse`: see `sealroom_measurements::fuzzing::tcg2_parse` (shared with the corpus-replay test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sealroom_measurements::fuzzing::tcg2_parse(data));
