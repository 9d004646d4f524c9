//! The key broker's parsers of outside input: the audit log (an auditor verifies a file anyone may hand them),
//! key policies (TOML), appraisal JSON (`sealroom broker policy check --appraisal`) and admin requests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroom_broker::admin::AdminRequest;
use sealroom_broker::appraisal::Appraisal;
use sealroom_broker::audit;
use sealroom_broker::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let _ = audit::verify(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Policy::parse(text);
    }
    let _ = Appraisal::from_json(data);
    let _ = AdminRequest::from_json(data);
});
