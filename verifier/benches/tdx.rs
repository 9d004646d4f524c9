//! TDX / SGX quote verification throughput, ours vs dcap-qvl 0.7.1 (ring backend) on the same quotes and
//! collateral, side by side in one run: `cargo bench -p sealroom-verifier --bench tdx`.
//!
//! Three cases of ours, each against the same `dcap_qvl::verify::verify` (which verifies the whole collateral
//! on every call; it cannot cache):
//! - `ours/repeated_platform`: collateral verified once ([`VerifiedCollateral`]) and this platform's PCK and QE
//!   report signatures already checked: per quote only the attestation-key signature, parsing and TCB
//!   evaluation (a broker serving the same hosts again).
//! - `ours/new_platform`: collateral for the FMSPC verified once, the platform never seen before (its
//!   signature memory is cleared before every quote): PCK leaf, QE report and quote signatures per quote (a
//!   broker serving many hosts with few FMSPCs).
//! - `ours/cold`: collateral parsed from its JSON bytes and verified for every quote.
//!
//! dcap-qvl is timed twice: `dcap_qvl/verify` on a `QuoteCollateralV3` deserialized once outside the loop (its
//! API takes the parsed struct), and `dcap_qvl/from_json` deserializing the same JSON bytes on every call, as
//! `ours/cold` does. The cold comparison that does the same work on both sides is `ours/cold` against
//! `dcap_qvl/from_json`; against `dcap_qvl/verify` ours also pays for the JSON parse.
//!
//! After criterion's report, interleaved rounds (robust to load drifting on a shared machine) print each
//! case's time per quote and its speed ratio to dcap-qvl measured in the same rounds: over all rounds, and the
//! median of the per-round ratios. To run only those: `cargo bench -p sealroom-verifier --bench tdx -- nomatch`
//! (a criterion filter that matches nothing).
//!
//! Where a cold quote's time goes (perf, dwarf call graphs, one run of all rows): nine ECDSA P-256
//! verifications on both sides (root CA CRL, PCK CA and TCB Signing certificates under the root, PCK CRL, TCB
//! info, QE identity, PCK leaf, QE report, quote), 83-85% of ours and of dcap-qvl's, and equally fast
//! (aws-lc-rs and ring verify one P-256 signature in the same ~65 us here). Only the rest can differ: it was
//! 23% of ours (PEM base64, x509-parser building every CRL entry, deep copies of certificates, der-parser
//! trees for the SGX extension, owned JSON strings) and is now ~15% (samples: ours cold 1993 = 1701 ECDSA + 292
//! rest, dcap_qvl/verify 2106 = 1759 + 347, dcap_qvl/from_json 2166 = 1711 + 455). With the ECDSA part equal,
//! ~1.2x is the ceiling for the cold ratio even if everything else cost nothing.
//!
//! Figures (2026-12-06 12:40 UTC, 2 shared cores, load average 5.0-5.2, three runs of the command above, ratio =
//! dcap-qvl time / ours; ranges over the runs, medians of rounds in brackets):
//! - cold vs `dcap_qvl/verify`: TDX v4 1.02-1.08x (0.98-1.06x), SGX v3 1.04-1.13x (1.03-1.05x); vs
//!   `dcap_qvl/from_json`: TDX 1.05-1.12x (1.06-1.09x), SGX 1.07-1.12x (1.05-1.14x). Before this round:
//!   0.91-0.96x (TDX) and 0.97-1.00x (SGX) vs `dcap_qvl/verify`. The >=1x goal holds on average; a margin of
//!   1.1x that load cannot flip is not reached (a median of rounds of 0.98x was seen once, for TDX).
//! - repeated platform: 8.5-9.5x (TDX), 7.1-9.1x (SGX) (was 5.7x); new platform, known FMSPC: 3.4-3.5x (TDX),
//!   3.1-3.9x (SGX) (was ~3x).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use sealroom_verifier::tdx::{Collateral, VerifiedCollateral, VerifiedQuote, verify_quote};
use sealroom_verifier::x509::{UnixTime, parse_time};

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tdx").join(rel)).unwrap()
}

/// (group, quote, collateral, manifest time)
const CASES: [(&str, &str, &str, &str); 2] = [
    ("tdx_v4", "dcap-qvl/tdx_quote", "dcap-qvl/tdx_quote_collateral.json", "2025-07-19T10:00:34Z"),
    ("sgx_v3", "dcap-qvl/sgx_quote", "dcap-qvl/sgx_quote_collateral.json", "2025-07-19T10:01:17Z"),
];

struct Case {
    quote: Vec<u8>,
    coll_json: Vec<u8>,
    at: UnixTime,
    verified: VerifiedCollateral,
    theirs: dcap_qvl::QuoteCollateralV3,
    now: u64,
}

impl Case {
    fn load(quote: &str, coll: &str, at: &str) -> Self {
        let (quote, coll_json, at) = (read(quote), read(coll), parse_time(at).unwrap());
        let verified = cold_collateral(&coll_json, at);
        let theirs: dcap_qvl::QuoteCollateralV3 = serde_json::from_slice(&coll_json).unwrap();
        let now = u64::try_from(at).unwrap();
        // Same verdict before timing anything, on every path.
        verify_quote(&quote, &verified, at).unwrap();
        dcap_qvl::verify::verify(&quote, &theirs, now).unwrap();
        Self { quote, coll_json, at, verified, theirs, now }
    }

    fn repeated_platform(&self) -> VerifiedQuote {
        verify_quote(black_box(&self.quote), &self.verified, self.at).unwrap()
    }

    fn new_platform(&self) -> VerifiedQuote {
        self.verified.forget_platforms();
        verify_quote(black_box(&self.quote), &self.verified, self.at).unwrap()
    }

    fn cold(&self) -> VerifiedQuote {
        let v = cold_collateral(black_box(&self.coll_json), self.at);
        verify_quote(black_box(&self.quote), &v, self.at).unwrap()
    }

    fn dcap_qvl(&self) -> dcap_qvl::verify::VerifiedReport {
        dcap_qvl::verify::verify(black_box(&self.quote), &self.theirs, self.now).unwrap()
    }

    fn dcap_qvl_from_json(&self) -> dcap_qvl::verify::VerifiedReport {
        let theirs: dcap_qvl::QuoteCollateralV3 = serde_json::from_slice(black_box(&self.coll_json)).unwrap();
        dcap_qvl::verify::verify(black_box(&self.quote), &theirs, self.now).unwrap()
    }
}

fn cold_collateral(json: &[u8], at: UnixTime) -> VerifiedCollateral {
    let mut c = Collateral::default();
    c.add_bytes(json, "bench").unwrap();
    c.verify(at).unwrap()
}

fn bench(c: &mut Criterion) {
    for (name, quote, coll, at) in CASES {
        let case = Case::load(quote, coll, at);
        let mut g = c.benchmark_group(name);
        g.bench_function("ours/repeated_platform", |b| b.iter(|| case.repeated_platform()));
        g.bench_function("ours/new_platform", |b| b.iter(|| case.new_platform()));
        g.bench_function("ours/cold", |b| b.iter(|| case.cold()));
        g.bench_function("dcap_qvl/verify", |b| b.iter(|| case.dcap_qvl()));
        g.bench_function("dcap_qvl/from_json", |b| b.iter(|| case.dcap_qvl_from_json()));
        g.finish();
    }
}

/// Interleaved rounds of every case and dcap-qvl: per-quote times and ratios (dcap-qvl time / ours), over all
/// rounds, and the median of the per-round ratios (robust to a neighbour's burst of load landing on one case's
/// share of a round).
fn interleaved_ratio() {
    for (name, quote, coll, at) in CASES {
        let case = Case::load(quote, coll, at);
        let (rounds, per_round) = (40, 20);
        let mut per = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let mut ns = [0u128; 5];
            let cases: [&dyn Fn(); 5] = [
                &|| drop(black_box(case.repeated_platform())),
                &|| drop(black_box(case.new_platform())),
                &|| drop(black_box(case.cold())),
                &|| drop(black_box(case.dcap_qvl())),
                &|| drop(black_box(case.dcap_qvl_from_json())),
            ];
            for (slot, run) in ns.iter_mut().zip(cases) {
                let t = Instant::now();
                for _ in 0..per_round {
                    run();
                }
                *slot = t.elapsed().as_nanos();
            }
            per.push(ns);
        }
        #[allow(clippy::cast_precision_loss)]
        let n = (rounds * per_round) as f64;
        #[allow(clippy::cast_precision_loss)]
        let us = |k: usize| per.iter().map(|r| r[k]).sum::<u128>() as f64 / n / 1000.0;
        #[allow(clippy::cast_precision_loss)]
        let median_ratio = |theirs: usize, ours: usize| {
            let mut r: Vec<f64> = per.iter().map(|x| x[theirs] as f64 / x[ours] as f64).collect();
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        };
        let theirs = us(3);
        println!("{name}: dcap-qvl {theirs:.1} us/quote");
        for (k, label) in [(0, "repeated platform"), (1, "new platform, known FMSPC"), (2, "cold")] {
            let ours = us(k);
            println!(
                "{name}:   ours {label}: {ours:.1} us/quote, {:.2}x dcap-qvl (median of rounds {:.2}x)",
                theirs / ours,
                median_ratio(3, k)
            );
        }
        println!(
            "{name}: dcap-qvl from the same JSON bytes {:.1} us/quote; ours cold {:.2}x that (median of rounds {:.2}x)",
            us(4),
            us(4) / us(2),
            median_ratio(4, 2)
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `--profile-time` (profiling one benchmark) skips the interleaved rounds.
    if !std::env::args().any(|a| a == "--profile-time") {
        interleaved_ratio();
    }
}
