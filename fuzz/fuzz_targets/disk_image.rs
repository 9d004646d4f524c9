//! Fuzz target `disk_image`: see `sealroom_measurements::fuzzing::disk_image` (shared with the corpus-replay test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sealroom_measurements::fuzzing::disk_image(data));
