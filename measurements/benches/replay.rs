//! Event-log replay throughput against the hashing ceiling of the same hash implementation (aws-lc-rs), in one
//! run. Every benchmark declares the bytes of log it consumes, so criterion reports MB/s side by side:
//! - `cel_decode_replay/*`: decode a runtime CEL log (verifying each record's SHA-256 and SHA-384 digest against its
//!   content) and replay PCR 15 (SHA-256) and RTMR3; its ceiling is `sha256+sha384` over the same bytes, since every
//!   content byte is hashed once per algorithm.
//! - `tcg2_parse_replay/*`: parse and replay every bank of a real UEFI log and of a real CCEL log; ceiling: one
//!   SHA-256 pass over the same bytes (replay hashes digests, not event data, so it may exceed it).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sealroom_measurements::ccel::CcelLog;
use sealroom_measurements::cel::{self, CelLog, RUNTIME_PCR, RuntimeEvent};
use sealroom_measurements::digest;
use sealroom_measurements::evidence::HashAlg;
use sealroom_measurements::tcg2::Tcg2Log;

fn testdata(rel: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(rel)).unwrap()
}

/// A runtime log of `n` events with `size`-byte contents (a launch policy document stands in for bulk content).
fn cel_log(n: usize, size: usize) -> Vec<u8> {
    let mut log = CelLog::new();
    let algs = [HashAlg::Sha256, HashAlg::Sha384];
    for i in 0..n {
        let text: String =
            (0..size).map(|j| char::from(b'a' + u8::try_from((i + j) % 26).unwrap())).collect();
        log.append(RUNTIME_PCR, &algs, &RuntimeEvent::LaunchPolicy(text)).unwrap();
    }
    log.append(RUNTIME_PCR, &algs, &RuntimeEvent::LaunchSeparator).unwrap();
    log.encode()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay");
    g.sample_size(30);

    for (name, n, size) in [("cel_64x16KiB", 64, 16 * 1024), ("cel_1024x256B", 1024, 256)] {
        let log = cel_log(n, size);
        g.throughput(Throughput::Bytes(u64::try_from(log.len()).unwrap()));
        g.bench_function(format!("cel_decode_replay/{name}"), |b| {
            b.iter(|| {
                let recs = CelLog::decode(black_box(&log)).unwrap();
                black_box(cel::replay_pcr(&recs, HashAlg::Sha256).unwrap());
                black_box(cel::replay_rtmr3(&recs).unwrap())
            });
        });
        g.bench_function(format!("ceiling_sha256+sha384/{name}"), |b| {
            b.iter(|| {
                black_box(digest::hash(HashAlg::Sha256, black_box(&log)));
                black_box(digest::sha384(black_box(&log)))
            });
        });
    }

    let uefi = testdata("tpm/eventlogs/gdc-host.bin");
    g.throughput(Throughput::Bytes(u64::try_from(uefi.len()).unwrap()));
    g.bench_function("tcg2_parse_replay/gdc-host", |b| {
        b.iter(|| black_box(Tcg2Log::parse(black_box(&uefi)).unwrap().replay(true).unwrap()));
    });
    g.bench_function("ceiling_sha256/gdc-host", |b| b.iter(|| black_box(digest::sha256(black_box(&uefi)))));

    // The CCEL log area without its padding (the parser stops at padding without hashing it).
    let ccel_area = testdata("tdx/ccel/ccel_data.dat");
    let used = ccel_area.len() - CcelLog::parse(&ccel_area).unwrap().log.padding;
    let ccel = ccel_area[..used].to_vec();
    g.throughput(Throughput::Bytes(u64::try_from(ccel.len()).unwrap()));
    g.bench_function("ccel_parse_replay/cos-113", |b| {
        b.iter(|| black_box(CcelLog::parse(black_box(&ccel)).unwrap().replay().unwrap()));
    });
    g.bench_function("ceiling_sha384/cos-113", |b| b.iter(|| black_box(digest::sha384(black_box(&ccel)))));

    let mib = vec![0x5au8; 1 << 20];
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("ceiling_sha256/1MiB", |b| b.iter(|| black_box(digest::sha256(black_box(&mib)))));
    g.bench_function("ceiling_sha384/1MiB", |b| b.iter(|| black_box(digest::sha384(black_box(&mib)))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
