//! AMD endorsement key certificates: DER parsing, TCB extensions, chain to the embedded roots.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroom_verifier::snp::Product;
use sealroom_verifier::snp::endorsement::{endorsed_tcb, verify_endorsement};
use sealroom_verifier::x509::Certificate;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Certificate::from_der(data) {
        let _ = endorsed_tcb(&c, Product::Milan);
        let _ = endorsed_tcb(&c, Product::Turin);
    }
    let _ = verify_endorsement(data);
});
