//! Fuzz target `pe_uki`: see `sealroom_measurements::fuzzing::pe_uki` (shared with the corpus-replay test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sealroom_measurements::fuzzing::pe_uki(data));
