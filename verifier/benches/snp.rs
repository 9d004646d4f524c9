//! SEV-SNP verification throughput, side by side with its ceiling in the same run:
//! - `raw_p384_verify`: one ECDSA P-384 verification with a pre-parsed key (aws-lc-rs), the floor of any
//!   report verification;
//! - `verify_report_cached`: the full `snp::verify_report` (parse, validity windows, signature, TCB/chip id,
//!   policy) with the VCEK chain already in the cache: repeated reports from one platform;
//! - `verify_report_cold`: a fresh cache each time (chain verified: 2 RSA-4096 PSS signatures extra);
//! - `ring_p384_verify` is not measured here (ring is not a dependency); the field notes give 964/s.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED, ParsedPublicKey};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sealroom_verifier::snp::report::{SIGNED_LEN, SnpReport};
use sealroom_verifier::snp::{Collateral, EndorsementCache, SnpPolicy, verify_report};
use sealroom_verifier::x509::{Certificate, PublicKey, parse_time};

fn data(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn bench(c: &mut Criterion) {
    let report = data("snp/trustee/test-report.bin");
    let vcek = data("snp/trustee/test-vcek.der");
    let at = parse_time("2024-01-01T00:00:00Z").unwrap();
    let policy = SnpPolicy::default();
    let parsed = SnpReport::parse(&report).unwrap();
    let sig = parsed.signature_fixed();
    let PublicKey::Ec { point, .. } = Certificate::from_der(&vcek).unwrap().public_key().clone() else {
        panic!()
    };
    let key = ParsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point).unwrap();

    let mut g = c.benchmark_group("snp");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_p384_verify", |b| b.iter(|| key.verify_sig(&report[..SIGNED_LEN], &sig).unwrap()));
    let cache = EndorsementCache::default();
    g.bench_function("verify_report_cached", |b| {
        b.iter(|| {
            verify_report(&report, Collateral { endorsement_der: &vcek }, &cache, &policy, at).unwrap()
        });
    });
    g.bench_function("verify_report_cold", |b| {
        b.iter(|| {
            let cold = EndorsementCache::default();
            verify_report(&report, Collateral { endorsement_der: &vcek }, &cold, &policy, at).unwrap()
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
