//! SEV-SNP ATTESTATION_REPORT parser, and the signature/TCB checks against a fixed real VCEK.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroom_verifier::snp::report::SnpReport;
use sealroom_verifier::snp::{Collateral, EndorsementCache, SnpPolicy, verify_report};

const VCEK: &[u8] = include_bytes!("../../verifier/testdata/snp/trustee/test-vcek.der");

fuzz_target!(|data: &[u8]| {
    let _ = SnpReport::parse(data);
    let cache = EndorsementCache::default();
    let _ = verify_report(data, Collateral { endorsement_der: VCEK }, &cache, &SnpPolicy::default(), 1_704_067_200);
});
