//! Azure HCL report and its runtime claims, and Azure evidence JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroom_verifier::azure::evidence::AzureEvidence;
use sealroom_verifier::azure::hcl::{HclReport, RuntimeClaims};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = HclReport::parse(data) {
        let _ = r.check_var_data_binding();
        let _ = RuntimeClaims::parse(&r.var_data);
    }
    let _ = AzureEvidence::parse_json(data);
});
