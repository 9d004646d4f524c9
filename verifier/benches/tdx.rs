//! TDX / SGX quote verification throughput, ours vs dcap-qvl 0.7.1 (ring backend) on the same quotes and
//! collateral, side by side in one run: `cargo bench -p sealroom-verifier --bench tdx`.
//!
//! - `ours/cached_collateral`: collateral verified once ([`VerifiedCollateral`]), per quote the 3 quote-dependent
//!   ECDSA P-256 checks plus parsing and TCB evaluation (how the key broker runs).
//! - `ours/cold`: collateral parsed and verified for every quote (same work as dcap-qvl).
//! - `dcap_qvl/verify`: `dcap_qvl::verify::verify` (verifies collateral on every call; it cannot cache).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use sealroom_verifier::tdx::{Collateral, verify_quote};
use sealroom_verifier::x509::parse_time;

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tdx").join(rel)).unwrap()
}

fn bench(c: &mut Criterion) {
    for (name, quote, coll, at) in [
        ("tdx_v4", "dcap-qvl/tdx_quote", "dcap-qvl/tdx_quote_collateral.json", "2025-07-19T10:00:34Z"),
        ("sgx_v3", "dcap-qvl/sgx_quote", "dcap-qvl/sgx_quote_collateral.json", "2025-07-19T10:01:17Z"),
    ] {
        let (quote, coll_json, at) = (read(quote), read(coll), parse_time(at).unwrap());
        let mut collateral = Collateral::default();
        collateral.add_bytes(&coll_json, "bench").unwrap();
        let verified = collateral.verify(at).unwrap();
        let theirs: dcap_qvl::QuoteCollateralV3 = serde_json::from_slice(&coll_json).unwrap();
        let now = u64::try_from(at).unwrap();
        // Same verdict before timing anything.
        verify_quote(&quote, &verified, at).unwrap();
        dcap_qvl::verify::verify(&quote, &theirs, now).unwrap();

        let mut g = c.benchmark_group(name);
        g.bench_function("ours/cached_collateral", |b| {
            b.iter(|| verify_quote(black_box(&quote), &verified, at).unwrap());
        });
        g.bench_function("ours/cold", |b| {
            b.iter(|| {
                let mut c = Collateral::default();
                c.add_bytes(black_box(&coll_json), "bench").unwrap();
                let v = c.verify(at).unwrap();
                verify_quote(black_box(&quote), &v, at).unwrap()
            });
        });
        g.bench_function("dcap_qvl/verify", |b| {
            b.iter(|| dcap_qvl::verify::verify(black_box(&quote), &theirs, now).unwrap());
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
