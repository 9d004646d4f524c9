//! Key broker release cost, side by side with the bare verifier on the same evidence, in one run:
//! - `verifier_appraise_gce`: `appraisal::appraise` on real GCE vTPM evidence (AK chain to Google's roots,
//!   RSA quote signature, PCR digest, event-log replay): the peer;
//! - `broker_release_gce`: `Broker::release` on the same evidence with the real verifier (nonce, appraisal,
//!   binding check → refusal, audit append + fdatasync, ES256 token): the broker's full cost per request;
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

fn request(nonce: &Nonce, ev: Evidence, keys: &[&str]) -> pb::ReleaseRequest {
    pb::ReleaseRequest {
        nonce: nonce.0.to_vec(),
        evidence: Some(ev.into()),
        key_ids: keys.iter().map(|k| (*k).to_owned()).collect(),
    }
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (_, tee) = seal::derive_keypair(Kem::X25519HkdfSha256, b"bench tee key").unwrap();

    let mut g = c.benchmark_group("broker");
    g.throughput(Throughput::Elements(1));

    // Peer: the bare verifier on the same evidence.
    let cache = sealroom_verifier::snp::EndorsementCache::default();
    let appraisal_policy = sealroom_verifier::appraisal::Policy::default();
    let fixed_nonce = Nonce([3; 32]);
    let ev = gce_evidence(fixed_nonce, &tee);
    g.bench_function("verifier_appraise_gce", |b| {
        b.iter(|| {
            let ctx = sealroom_verifier::appraisal::Context {
                at: i64::try_from(JAN_2024_MS / 1000).unwrap(),
                nonce: Some(fixed_nonce.0.to_vec()),
                snp_cache: &cache,
                tdx_collateral: None,
                tdx_root: None,
                enrolled_tpm_aks: &[],
                tpm_ek_activated: None,
                gpu: None,
            };
            sealroom_verifier::appraisal::appraise(
                &sealroom_verifier::appraisal::EvidenceInput::Sealroom(Box::new(ev.clone())),
                &appraisal_policy,
                &ctx,
            )
        });
    });

    let real =
        broker(&tmp.path().join("real"), Arc::new(FixedClock), Arc::new(VerifierAppraiser::default()), &KEYS);
    g.bench_function("broker_release_gce", |b| {
        b.iter(|| {
            let (nonce, _) = real.challenge().unwrap();
            let r = real.release(&request(&nonce, gce_evidence(nonce, &tee), &["provider-a/data"])).unwrap();
            assert!(r.keys.is_empty());
        });
    });

    let standin =
        Arc::new(broker(&tmp.path().join("standin"), Arc::new(FixedClock), Arc::new(StandIn), &KEYS));
    g.bench_function("broker_release_sealed", |b| {
        b.iter(|| {
            let (nonce, _) = standin.challenge().unwrap();
            let r = standin
                .release(&request(&nonce, gce_evidence(nonce, &tee), &["provider-a/data", "provider-b/data"]))
                .unwrap();
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
    let one = |mut c: pb::key_broker_client::KeyBrokerClient<tonic::transport::Channel>,
               tee: TeePublicKey| async move {
        let ch = c.challenge(pb::ChallengeRequest {}).await.unwrap().into_inner();
        let nonce = Nonce::from_slice(&ch.nonce).unwrap();
        let r = c.release(request(&nonce, gce_evidence(nonce, &tee), &["provider-a/data"])).await.unwrap();
        assert_eq!(r.into_inner().keys.len(), 1);
    };
    g.bench_function("grpc_round_trip", |b| {
        b.iter(|| rt.block_on(one(client.clone(), tee.clone())));
    });
    g.throughput(Throughput::Elements(32));
    g.bench_function("grpc_32_concurrent", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..32 {
                    set.spawn(one(client.clone(), tee.clone()));
                }
                set.join_all().await;
            });
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
