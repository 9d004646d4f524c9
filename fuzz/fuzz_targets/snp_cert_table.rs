//! The SEV-SNP certificate table the agent reads from configfs-tsm `auxblob` (GUID, offset, length entries).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroom_agent::attester::snp::parse_cert_table;

fuzz_target!(|data: &[u8]| {
    let _ = parse_cert_table(data);
});
