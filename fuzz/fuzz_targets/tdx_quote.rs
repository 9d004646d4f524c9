//! Fuzz target `tdx_quote`: see `sealroom_verifier::tdx::fuzzing::tdx_quote` (shared with the corpus-replay test).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroom_verifier::tdx::{Collateral, VerifiedCollateral, fuzzing};

static COLLATERAL: std::sync::LazyLock<Option<VerifiedCollateral>> = std::sync::LazyLock::new(|| {
    let mut c = Collateral::default();
    c.add_bytes(include_bytes!("../../verifier/testdata/tdx/dcap-qvl/tdx_quote_collateral.json"), "corpus").ok()?;
    c.verify(fuzzing::FUZZ_TIME).ok()
});

fuzz_target!(|data: &[u8]| fuzzing::tdx_quote(data, COLLATERAL.as_ref()));
