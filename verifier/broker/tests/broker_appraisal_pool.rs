//! Anyone can call the broker's `Release` and `Receipt`, and each call costs an appraisal: a flood of them
//! must not become a thread per call. The broker appraises on a fixed pool (`sealroom_broker::appraisal_pool`);
//! the calls beyond it wait as queued jobs, and each is still answered and audited.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sealroom_broker::appraisal::{Appraisal, Appraiser};
use sealroom_broker::{Clock, ManualClock};
use sealroom_measurements::binding::{Kem, Nonce};
use sealroom_measurements::evidence::{Evidence, Platform, TpmEvidence};
use sealroom_proto::keybroker::v1 as pb;

#[path = "../benches/common/broker.rs"]
#[allow(dead_code, reason = "shared with the benches, which use all of it")]
mod in_process;

const KEY: &str = "provider-a/data";

/// An appraiser that takes a while and counts how many appraisals run at once (then refuses the evidence).
#[derive(Debug, Default)]
struct Gauge {
    running: AtomicUsize,
    most: AtomicUsize,
    done: AtomicUsize,
}

impl Appraiser for Gauge {
    fn appraise(&self, _: &Evidence, _: u64) -> sealroom_verifier::Result<Appraisal> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(20));
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.done.fetch_add(1, Ordering::SeqCst);
        Err(sealroom_verifier::Error::check("verifier", "the gauge refuses everything"))
    }
}

/// Evidence the gauge is asked about: only its nonce and TEE key matter (the gauge refuses it).
fn evidence(nonce: Nonce) -> Evidence {
    let (_, tee) = sealroom_broker::seal::derive_keypair(Kem::X25519HkdfSha256, b"pool test tee").unwrap();
    Evidence {
        nonce,
        tee_public_key: tee,
        platform: Platform::Tpm,
        tpm: Some(TpmEvidence { attest: b"a quote no one signed".to_vec(), ..TpmEvidence::default() }),
        tdx: None,
        sev_snp: None,
        azure: None,
        runtime_event_log: vec![],
        gpus: Vec::new(),
    }
}

/// Which call the flood makes.
#[derive(Debug, Clone, Copy)]
enum Call {
    Release,
    Receipt,
}

/// `CALLS` concurrent `call`s over gRPC, each after its own Challenge, against a broker appraising on a pool
/// of 2: every call is answered with the appraiser's refusal and audited, and at most 2 appraisals ran at once.
async fn flood(call: Call) {
    const CALLS: usize = 24;
    let dir = tempfile::tempdir().unwrap();
    let gauge = Arc::new(Gauge::default());
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::at(1_704_067_200_000));
    let broker = in_process::broker(dir.path(), clock, Arc::clone(&gauge) as Arc<dyn Appraiser>, &[KEY])
        .with_appraisal_threads(std::num::NonZeroUsize::new(2).unwrap());
    let addr = in_process::serve(Arc::new(broker)).await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..CALLS {
        calls.spawn(async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
            let mut c = pb::key_broker_client::KeyBrokerClient::new(channel.connect().await.unwrap());
            let ch = c.challenge(pb::ChallengeRequest::default()).await.unwrap().into_inner();
            let evidence = evidence(Nonce::from_slice(&ch.nonce).unwrap());
            match call {
                Call::Release => {
                    let req = pb::ReleaseRequest {
                        nonce: ch.nonce,
                        evidence: Some(evidence.into()),
                        key_ids: vec![KEY.into()],
                        tpm_activation: None,
                    };
                    let answer = c.release(req).await.unwrap().into_inner();
                    assert!(answer.keys.is_empty());
                    answer.refusals[0].reason.clone()
                }
                Call::Receipt => {
                    let wire: sealroom_proto::attestation::v1::Evidence = evidence.into();
                    let req = pb::ReceiptRequest {
                        nonce: ch.nonce,
                        evidence: prost::Message::encode_to_vec(&wire),
                        key_id: KEY.into(),
                        output_digest: format!("sha256:{}", "ab".repeat(32)),
                        tpm_activation: None,
                    };
                    let answer = c.receipt(req).await.unwrap().into_inner();
                    assert!(answer.receipt.is_empty());
                    answer.refusal
                }
            }
        });
    }
    for refusal in calls.join_all().await {
        assert_eq!(refusal, "verifier: the gauge refuses everything");
    }
    assert_eq!(gauge.done.load(Ordering::SeqCst), CALLS, "every call was appraised");
    // Tokio's blocking pool, which appraised before, ran most of them at once on threads of their own.
    assert_eq!(gauge.most.load(Ordering::SeqCst), 2, "appraisals at once");
    let log = std::fs::read(dir.path().join("audit.log")).unwrap();
    assert_eq!(sealroom_broker::audit::verify(&log).unwrap().records, CALLS as u64, "every refusal audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_a_flood_of_releases_appraises_no_more_at_once_than_the_pool_has_threads() {
    flood(Call::Release).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_a_flood_of_receipts_appraises_no_more_at_once_than_the_pool_has_threads() {
    flood(Call::Receipt).await;
}
