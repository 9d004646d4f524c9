//! NVIDIA H100 report verification throughput, side by side with its floor in the same run:
//! - `raw_p384_verify`: one ECDSA P-384 verification of the report's signed bytes with a pre-parsed key
//!   (aws-lc-rs), the cost no verifier can avoid;
//! - `verify_report_cached`: the full `gpu::verify_gpu_report` (parse, chain window, signature, nonce, RIM
//!   selection and all 33 measurement comparisons) with the device chain and both RIMs verified once up front,
//!   as a broker holds them: repeated reports from one GPU;
//! - `verify_report_cold`: the device chain (4 P-384 signatures) and both RIMs (XML parse, two C14N passes,
//!   SHA-384, one signature and 4 chain signatures each) verified for every report.
//!
//! Data: testdata/gpu (the 2023 nvtrust H100 report, its chain and matching RIMs), at 2024-06-01.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED, ParsedPublicKey};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sealroom_verifier::gpu::{
    GpuReport, GpuTrust, Revocation, verify_device_chain, verify_gpu_report, verify_rim,
};
use sealroom_verifier::x509::{Certificate, PublicKey, parse_time};

fn data(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/gpu/nvtrust/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn bench(c: &mut Criterion) {
    let report = hex::decode(data("attestationReport.txt").trim_ascii()).unwrap();
    let chain_pem = data("gpuAkCertChain.txt");
    let rim_files =
        [data("Driver_RIM_test_no_gpu.swidtag"), data("1010_0200_882_96005E0001_test_no_gpu.swidtag")];
    let at = parse_time("2024-06-01T00:00:00Z").unwrap();
    let trust = GpuTrust::nvidia().unwrap();
    let parsed = GpuReport::parse(&report).unwrap();
    let nonce = parsed.request_nonce;
    let certs = Certificate::chain_from_pem(&chain_pem).unwrap();
    let PublicKey::Ec { point, .. } = certs[0].public_key().clone() else { panic!() };
    let key = ParsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point).unwrap();
    let chain = verify_device_chain(&trust, &certs, &Revocation::NotChecked, at).unwrap();
    let rims: Vec<_> =
        rim_files.iter().map(|xml| verify_rim(&trust, xml, &Revocation::NotChecked, at).unwrap()).collect();

    let mut g = c.benchmark_group("gpu");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_p384_verify", |b| {
        b.iter(|| key.verify_sig(parsed.signed_bytes(), &parsed.signature).unwrap());
    });
    g.bench_function("verify_report_cached", |b| {
        b.iter(|| verify_gpu_report(&report, &chain, &rims, &nonce, at).unwrap());
    });
    g.bench_function("verify_report_cold", |b| {
        b.iter(|| {
            let certs = Certificate::chain_from_pem(&chain_pem).unwrap();
            let chain = verify_device_chain(&trust, &certs, &Revocation::NotChecked, at).unwrap();
            let rims: Vec<_> = rim_files
                .iter()
                .map(|xml| verify_rim(&trust, xml, &Revocation::NotChecked, at).unwrap())
                .collect();
            verify_gpu_report(&report, &chain, &rims, &nonce, at).unwrap()
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
