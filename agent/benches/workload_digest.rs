//! SHA-256 as the workload fetch path uses it (aws-lc-rs through `BlobVerifier`, 64 KiB chunks as they come
//! off the network) side by side with OpenSSL's SHA-256 on the same bytes and chunking. Goal: ours ≥ 0.9× OpenSSL.
//! Run: `cargo bench -p sealroom-agent --bench workload_digest`; the ratio is the two throughputs.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sealroom_agent::workload::digest::{BlobVerifier, Sha256Digest};

const SIZE: usize = 16 << 20;
const CHUNK: usize = 64 << 10;

fn data() -> Vec<u8> {
    // Deterministic, incompressible-looking bytes.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let data = data();
    let expected = Sha256Digest::of(&data);
    let mut g = c.benchmark_group("sha256_stream_16MiB");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(20);
    g.bench_function("sealroom_blob_verifier_aws_lc_rs", |b| {
        b.iter(|| {
            let mut v = BlobVerifier::new("layer 0", expected, SIZE as u64);
            for chunk in data.chunks(CHUNK) {
                v.update(chunk).unwrap();
            }
            v.finish().unwrap()
        });
    });
    g.bench_function("openssl_sha256", |b| {
        b.iter(|| {
            let mut h = openssl::sha::Sha256::new();
            for chunk in data.chunks(CHUNK) {
                h.update(chunk);
            }
            let d = h.finish();
            assert_eq!(d, expected.0);
            d
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
