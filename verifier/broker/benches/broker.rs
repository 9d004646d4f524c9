//! Key broker release cost, side by side with the bare verifier on the same evidence, in one run:
//! - `verifier_appraise_gce`: the broker's appraiser ([`VerifierAppraiser`]: `appraisal::appraise` and the
//!   broker's acceptance) on real GCE vTPM evidence (AK chain to Google's roots, RSA quote signature, PCR
//!   digest, event-log replay, binding): the peer. The recorded quote cannot bind a fresh nonce, so it ends in
//!   the binding refusal, after every other check ran;
//! - `broker_release_gce`: `Broker::release` on the same evidence with the same appraiser (nonce, evidence
//!   decode, the same full appraisal and the same refusal, audit append + fdatasync, ES256 token, response
//!   signature): the broker's full cost per refused request;
//! - `broker_release_sealed`: a release that passes (stand-in appraisal, so policy, HPKE sealing of 2 keys, audit
//!   fdatasync and token all run);
//! - `grpc_round_trip`: Challenge + Release over loopback gRPC (tonic), the agent's view, p50 from criterion;
//! - `grpc_32_concurrent`: 32 agents' Challenge + Release at once; throughput in releases/s.
//!
//! State lives in `CARGO_TARGET_TMPDIR` (the target directory's disk), so fdatasync costs what a real disk costs.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sealroom_broker::appraisal::{
    Appraisal, Appraiser, HexBytes, PlatformClaims, RuntimeReplay, SignedBinding, VerifierAppraiser,
};
use sealroom_broker::{Clock, seal};
use sealroom_measurements::binding::{self, Kem, Nonce, TeePublicKey};
use sealroom_measurements::cel::RuntimeEvent;
use sealroom_measurements::evidence::{Evidence, HashAlg, Platform};
use sealroom_proto::keybroker::v1 as pb;
use sealroom_verifier::tpm::gce_proto::GceAttestation;

#[path = "common/broker.rs"]
mod in_process;

use in_process::{IMAGE, broker};

const JAN_2024_MS: u64 = 1_704_067_200_000;
/// The keys the broker holds.
const KEYS: [&str; 2] = ["provider-a/data", "provider-b/data"];

#[derive(Debug)]
struct FixedClock;

impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        JAN_2024_MS
    }
}

/// Stands in for the verifier in the passing release (real GCE evidence cannot bind a sealroom nonce).
#[derive(Debug)]
struct StandIn;

impl Appraiser for StandIn {
    fn appraise(&self, e: &Evidence, _now_ms: u64) -> sealroom_verifier::Result<Appraisal> {
        Ok(Appraisal {
            evidence: "sealroom evidence".into(),
            policy_id: "sealroom.keybroker.v1".into(),
            at: i64::try_from(JAN_2024_MS / 1000).unwrap(),
            status: sealroom_verifier::ear::Status::Affirming,
            trust_vector: sealroom_verifier::ear::TrustworthinessVector {
                instance_identity: 2,
                configuration: 2,
                hardware: 2,
                ..Default::default()
            },
            platform: Some(PlatformClaims::Tpm(sealroom_verifier::claims::TpmClaims {
                ak: sealroom_verifier::claims::AkTrustClaims::Enrolled {
                    ak_public_sha256: HexBytes(vec![0; 32]),
                },
                quoted_banks: vec![HashAlg::Sha256],
                firmware_version: Some(1),
                reset_count: Some(0),
            })),
            registers: BTreeMap::new(),
            binding: Some(SignedBinding::TpmExtraData(HexBytes(
                binding::binding_digest(&e.nonce, &e.tee_public_key).to_vec(),
            ))),
            runtime: Some(RuntimeReplay {
                registers: vec!["pcr15.sha256".parse().unwrap()],
                events: vec![
                    RuntimeEvent::ManifestDigest(IMAGE.into()),
                    RuntimeEvent::Arg("--in".into()),
                    RuntimeEvent::Arg("/data".into()),
                    RuntimeEvent::Env("MODE=batch".into()),
                    RuntimeEvent::LaunchSeparator,
                ],
            }),
            gpus: vec![],
            layers: vec![],
            warnings: vec![],
        })
    }
}

/// The refusal both GCE arms end in: the verifier's binding layer failed, after every other layer ran (the
/// recorded quote's extraData is the 2-byte nonce it was recorded with).
fn assert_binding_refusal(reason: &str) {
    assert!(reason.starts_with("verifier: ") && reason.contains("extraData is 2 bytes"), "{reason}");
}

fn gce_evidence(nonce: Nonce, tee: &TeePublicKey) -> Evidence {
    let bytes = std::fs::read(format!(
        "{}/../testdata/tpm/attestations/gce-cos-85-nonce9009.pb",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let att = GceAttestation::decode(&bytes).unwrap();
    let quote = att.quotes.iter().find(|q| q.bank.alg == HashAlg::Sha256).unwrap();
    Evidence {
        nonce,
        tee_public_key: tee.clone(),
        platform: Platform::Tpm,
        tpm: Some(att.to_tpm_evidence(quote)),
        tdx: None,
        sev_snp: None,
        azure: None,
        runtime_event_log: vec![],
        gpus: Vec::new(),
    }
}

type WireEvidence = sealroom_proto::attestation::v1::Evidence;

/// A release request for `nonce` carrying `template` with that nonce. The evidence is decoded from the recording
/// once, ahead of the runs: what an agent does to produce it is not the broker's cost.
fn request(nonce: &Nonce, template: &WireEvidence, keys: &[&str]) -> pb::ReleaseRequest {
    let mut evidence = template.clone();
    evidence.nonce = nonce.0.to_vec();
    pb::ReleaseRequest {
        nonce: nonce.0.to_vec(),
        evidence: Some(evidence),
        key_ids: keys.iter().map(|k| (*k).to_owned()).collect(),
        tpm_activation: None,
    }
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (_, tee) = seal::derive_keypair(Kem::X25519HkdfSha256, b"bench tee key").unwrap();

    let mut g = c.benchmark_group("broker");
    g.throughput(Throughput::Elements(1));

    // Peer: the bare verifier on the same evidence, exactly as the broker runs it (its appraiser: the same policy
    // and acceptance), ending in the same refusal.
    let verifier = VerifierAppraiser::default();
    let ev = gce_evidence(Nonce([3; 32]), &tee);
    let template: WireEvidence = gce_evidence(Nonce([0; 32]), &tee).into();
    g.bench_function("verifier_appraise_gce", |b| {
        b.iter(|| assert_binding_refusal(&verifier.appraise(&ev, JAN_2024_MS).unwrap_err().to_string()));
    });

    let real =
        broker(&tmp.path().join("real"), Arc::new(FixedClock), Arc::new(VerifierAppraiser::default()), &KEYS);
    g.bench_function("broker_release_gce", |b| {
        b.iter(|| {
            let (nonce, _) = real.challenge().unwrap();
            let r = real.release(request(&nonce, &template, &["provider-a/data"])).unwrap();
            assert!(r.keys.is_empty());
            assert_binding_refusal(&r.refusals[0].1.reason);
        });
    });

    let standin =
        Arc::new(broker(&tmp.path().join("standin"), Arc::new(FixedClock), Arc::new(StandIn), &KEYS));
    g.bench_function("broker_release_sealed", |b| {
        b.iter(|| {
            let (nonce, _) = standin.challenge().unwrap();
            let r =
                standin.release(request(&nonce, &template, &["provider-a/data", "provider-b/data"])).unwrap();
            assert_eq!(r.keys.len(), 2);
        });
    });

    // gRPC over loopback, the agent's view.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let addr = rt.block_on(in_process::serve(Arc::clone(&standin)));
    let client = rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        pb::key_broker_client::KeyBrokerClient::new(ch)
    });
    let template = Arc::new(template);
    let one = |mut c: pb::key_broker_client::KeyBrokerClient<tonic::transport::Channel>,
               template: Arc<WireEvidence>| async move {
        let ch = c.challenge(pb::ChallengeRequest::default()).await.unwrap().into_inner();
        let nonce = Nonce::from_slice(&ch.nonce).unwrap();
        let r = c.release(request(&nonce, &template, &["provider-a/data"])).await.unwrap();
        assert_eq!(r.into_inner().keys.len(), 1);
    };
    g.bench_function("grpc_round_trip", |b| {
        b.iter(|| rt.block_on(one(client.clone(), Arc::clone(&template))));
    });
    g.throughput(Throughput::Elements(32));
    g.bench_function("grpc_32_concurrent", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..32 {
                    set.spawn(one(client.clone(), Arc::clone(&template)));
                }
                set.join_all().await;
            });
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
