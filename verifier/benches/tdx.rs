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
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use sealroom_verifier::tdx::{Collateral, verify_quote};
use sealroom_verifier::x509::parse_time;

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tdx").join(rel)).unwrap()
}

/// (group, quote, collateral, manifest time)
const CASES: [(&str, &str, &str, &str); 2] = [
    ("tdx_v4", "dcap-qvl/tdx_quote", "dcap-qvl/tdx_quote_collateral.json", "2025-07-19T10:00:34Z"),
    ("sgx_v3", "dcap-qvl/sgx_quote", "dcap-qvl/sgx_quote_collateral.json", "2025-07-19T10:01:17Z"),
];

fn bench(c: &mut Criterion) {
    for (name, quote, coll, at) in CASES {
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

/// Interleaved ours/dcap-qvl rounds (robust to load drifting during a run on a shared machine): prints the
/// per-quote times and the throughput ratio side by side after criterion's own report.
fn interleaved_ratio() {
    for (name, quote, coll, at) in CASES {
        let (quote, coll_json, at) = (read(quote), read(coll), parse_time(at).unwrap());
        let mut collateral = Collateral::default();
        collateral.add_bytes(&coll_json, "bench").unwrap();
        let verified = collateral.verify(at).unwrap();
        let theirs: dcap_qvl::QuoteCollateralV3 = serde_json::from_slice(&coll_json).unwrap();
        let now = u64::try_from(at).unwrap();
        let (mut ours_ns, mut theirs_ns) = (0u128, 0u128);
        let rounds = 40;
        let per_round = 25;
        for _ in 0..rounds {
            let t0 = Instant::now();
            for _ in 0..per_round {
                black_box(verify_quote(black_box(&quote), &verified, at).unwrap());
            }
            ours_ns += t0.elapsed().as_nanos();
            let t1 = Instant::now();
            for _ in 0..per_round {
                black_box(dcap_qvl::verify::verify(black_box(&quote), &theirs, now).unwrap());
            }
            theirs_ns += t1.elapsed().as_nanos();
        }
        let n = f64::from(rounds * per_round);
        #[allow(clippy::cast_precision_loss)]
        let (ours_us, theirs_us) = (ours_ns as f64 / n / 1000.0, theirs_ns as f64 / n / 1000.0);
        println!(
            "{name}: ours {ours_us:.1} us/quote ({:.0}/s), dcap-qvl {theirs_us:.1} us/quote ({:.0}/s), ratio {:.2}x",
            1e6 / ours_us,
            1e6 / theirs_us,
            theirs_us / ours_us
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    interleaved_ratio();
}
