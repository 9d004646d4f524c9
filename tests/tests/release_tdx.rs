//! Key release on TDX, end to end without TDX hardware: the real agent (its worker, TDX attester, runtime log and
//! broker client) runs on an emulated TDX kernel (`support::tee_kernel`) whose quotes are signed by a platform of
//! the Intel-like test PKI (`sealroom_verifier::tdx::test_pki`, feature `test-anchors`, a dev-dependency only),
//! and asks the real key broker (gRPC, `VerifierAppraiser` with the test PKI's collateral verified under the
//! test root) for the provider's key. REPORT_DATA is the agent's binding of the broker's nonce and its TEE key;
//! RTMR3 is what the agent's runtime log extended.
//!
//! One release, and one refusal per rule with its exact reason: debug TD (with and without Intel collateral),
//! TCB OutOfDate under a policy accepting only UpToDate, RTMR3 not matching the log, launch events after the
//! separator, no runtime log, MRTD/RTMR1/RTMR2 not in the golden document, platform not allowed.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use sealroom_agent::paths::KernelPaths;
use sealroom_agent::server::{self, Running};
use sealroom_agent::worker::WorkerConfig;
use sealroom_broker::appraisal::VerifierAppraiser;
use sealroom_broker::policy::GoldenSet;
use sealroom_measurements::cel::{
    CelLog, CelRecord, RUNTIME_PCR, RuntimeEvent, encode_records, replay_rtmr3,
};
use sealroom_measurements::evidence::HashAlg;
use sealroom_proto::keybroker::v1 as kpb;
use sealroom_proto::keybroker::v1::key_broker_client::KeyBrokerClient;
use sealroom_tests::analytics::launch_events;
use sealroom_verifier::tdx::test_pki::{
    CollateralSpec, PlatformTcb, TD_ATTR_DEBUG, TD_ATTR_SEPT_VE_DISABLE, TestIntelPki,
};
use sealroom_verifier::tdx::{Collateral, VerifiedCollateral};
use sealroom_verifier::x509::parse_time;
use support::provider::{DATA_KEY, KEY_ID, ProviderBroker, golden_document, policy, release};
use support::tee_kernel::{TdShape, TdxKernel};

/// The broker's clock and verification time.
const AT: &str = "2026-12-01T12:00:00Z";
const MRTD: [u8; 48] = [0x11; 48];
const RTMR0: [u8; 48] = [0x20; 48];
const RTMR1: [u8; 48] = [0x21; 48];
const RTMR2: [u8; 48] = [0x22; 48];

fn now_ms() -> u64 {
    u64::try_from(parse_time(AT).unwrap()).unwrap() * 1000
}

fn good_td() -> TdShape {
    TdShape { td_attributes: TD_ATTR_SEPT_VE_DISABLE, mr_td: MRTD, rtmr: [RTMR0, RTMR1, RTMR2] }
}

/// Intel's side: the PKI and its collateral, verified once by the broker's operator under the test root.
struct Intel {
    pki: TestIntelPki,
    collateral: VerifiedCollateral,
}

impl Intel {
    fn new() -> Self {
        let pki = TestIntelPki::new(
            parse_time("2024-01-01T00:00:00Z").unwrap(),
            parse_time("2031-01-01T00:00:00Z").unwrap(),
        );
        let spec = CollateralSpec::standard(parse_time("2026-11-20T00:00:00Z").unwrap());
        let mut c = Collateral::default();
        c.add_bytes(&pki.collateral_json(&spec), "test collateral").unwrap();
        let collateral = c.verify_under(&pki.root(), parse_time(AT).unwrap()).unwrap();
        Self { pki, collateral }
    }

    /// A TD on a platform whose PCK states `tcb`.
    fn td(&self, tcb: &PlatformTcb, shape: TdShape) -> TdxKernel {
        TdxKernel::start(self.pki.issue_platform(&[0x7d, 0x01], tcb, 4), shape)
    }
}

/// The golden document of the image: MRTD, RTMR1, RTMR2.
fn golden() -> (GoldenSet, String, String) {
    let (file, signer) = golden_document(&[
        ("mrtd", "sha384", &MRTD),
        ("rtmr1", "sha384", &RTMR1),
        ("rtmr2", "sha384", &RTMR2),
    ]);
    let digest = file.digest.clone();
    (GoldenSet { files: vec![file] }, digest, signer)
}

async fn broker_with(appraiser: VerifierAppraiser, platforms: &str) -> ProviderBroker {
    let (set, digest, signer) = golden();
    let policy = policy(platforms, "[\"UpToDate\"]", Some((&digest, &signer)));
    ProviderBroker::start(Arc::new(appraiser), &policy, set, now_ms()).await
}

async fn tdx_broker(intel: &Intel) -> ProviderBroker {
    let appraiser = VerifierAppraiser::default()
        .with_tdx_collateral(intel.collateral.clone())
        .with_verification_time_ms(now_ms());
    broker_with(appraiser, "[\"tdx\"]").await
}

/// The workload launcher's events for a workload pinned to `broker`.
/// The real agent on the emulated kernel, with `events` measured (RTMR3 + runtime log) as the launcher does.
async fn agent_on(kernel: &TdxKernel, events: &[RuntimeEvent]) -> Running {
    let worker = WorkerConfig {
        paths: KernelPaths::new(&kernel.root),
        tcti: None,
        no_tpm: true,
        runtime_log_dir: kernel.runtime_log_dir.clone(),
        queue_depth: 8,
        request_timeout: Duration::from_secs(60),
    };
    let tcp = "127.0.0.1:0".parse().unwrap();
    let running =
        server::start(server::Config { tcp: Some(tcp), vsock: None, worker, limits: server::agent_limits() })
            .await
            .unwrap();
    for e in events {
        running.handle.measure(e.clone()).await.unwrap();
    }
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tdx_release_with_the_runtime_log_replayed_to_rtmr3() {
    let intel = Intel::new();
    let broker = tdx_broker(&intel).await;
    let kernel = intel.td(&PlatformTcb::up_to_date(), good_td());
    let agent = agent_on(&kernel, &launch_events(&broker.kid)).await;
    assert_eq!(release(&agent, &broker).await.unwrap(), DATA_KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tdx_refuses_a_debug_td_with_collateral() {
    let intel = Intel::new();
    let broker = tdx_broker(&intel).await;
    let kernel = intel.td(
        &PlatformTcb::up_to_date(),
        TdShape { td_attributes: TD_ATTR_SEPT_VE_DISABLE | TD_ATTR_DEBUG, ..good_td() },
    );
    let agent = agent_on(&kernel, &launch_events(&broker.kid)).await;
    assert_eq!(
        release(&agent, &broker).await.unwrap_err(),
        "verifier: tdx: TD is in debug mode (TDATTRIBUTES 0100001000000000: DEBUG set)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tdx_refuses_a_debug_td_without_collateral() {
    // A broker without Intel collateral: the quote's signatures and PCK chain (to the test root) are checked,
    // its TD attributes decoded, and the key's policy refuses the debug TD.
    let intel = Intel::new();
    let appraiser =
        VerifierAppraiser::default().with_tdx_root(intel.pki.root()).with_verification_time_ms(now_ms());
    let (set, digest, signer) = golden();
    let no_tcb = policy("[\"tdx\"]", "\"skip\"", Some((&digest, &signer)));
    let broker = ProviderBroker::start(Arc::new(appraiser), &no_tcb, set, now_ms()).await;
    // Control: the same broker releases to a production TD.
    let kernel = intel.td(&PlatformTcb::up_to_date(), good_td());
    let agent = agent_on(&kernel, &launch_events(&broker.kid)).await;
    assert_eq!(release(&agent, &broker).await.unwrap(), DATA_KEY);
    agent.stop().await.unwrap();
    let kernel = intel.td(
        &PlatformTcb::up_to_date(),
        TdShape { td_attributes: TD_ATTR_SEPT_VE_DISABLE | TD_ATTR_DEBUG, ..good_td() },
    );
    let agent = agent_on(&kernel, &launch_events(&broker.kid)).await;
    assert_eq!(release(&agent, &broker).await.unwrap_err(), "policy.debug: TEE runs in debug mode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tdx_refuses_an_out_of_date_platform_under_an_up_to_date_policy() {
    let intel = Intel::new();
    let broker = tdx_broker(&intel).await;
    let kernel = intel.td(&PlatformTcb::out_of_date(), good_td());
    let agent = agent_on(&kernel, &launch_events(&broker.kid)).await;
    assert_eq!(
        release(&agent, &broker).await.unwrap_err(),
        "policy.tcb_statuses: TCB status OutOfDate not accepted (accepted: UpToDate)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tdx_refuses_rtmr3_not_matching_the_log() {
    let intel = Intel::new();
    let broker = tdx_broker(&intel).await;
    let kernel = intel.td(&PlatformTcb::up_to_date(), good_td());
    let agent = agent_on(&kernel, &launch_events(&broker.kid)).await;
    // Root in the TD extends RTMR3 with something the agent's log does not show.
    kernel.extend_rtmr3(&[0xee; 48]);
    let (log, _) = agent.handle.runtime_log();
    let replayed = replay_rtmr3(&CelLog::decode(&log).unwrap()).unwrap();
    let mut quoted = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA384);
    quoted.update(&replayed);
    quoted.update(&[0xee; 48]);
    assert_eq!(
        release(&agent, &broker).await.unwrap_err(),
        format!(
            "verifier: runtime log: rtmr3 mismatch: expected {}, got {}",
            hex::encode(quoted.finish()),
            hex::encode(replayed)
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tdx_refuses_launch_events_after_the_separator() {
    let intel = Intel::new();
    let broker = tdx_broker(&intel).await;
    let kernel = intel.td(&PlatformTcb::up_to_date(), good_td());
    let agent = agent_on(&kernel, &launch_events(&broker.kid)).await;
    // Root in the TD changes the workload's arguments after launch: it extends RTMR3 with an `arg` record
    // itself (the agent refuses to log one after the separator) and presents the log with that record, so the
    // log still replays to RTMR3. The verifier refuses the log's order before any policy sees its events.
    let (log, _) = agent.handle.runtime_log();
    let mut records = CelLog::decode(&log).unwrap();
    let forged = CelRecord::new(
        records.len() as u64,
        RUNTIME_PCR,
        &[HashAlg::Sha384],
        &RuntimeEvent::Arg("--debug-shell".into()),
    );
    kernel.extend_rtmr3(forged.rtmr_digest().unwrap().try_into().unwrap());
    records.push(forged);

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", broker.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = KeyBrokerClient::new(channel);
    let nonce = client.challenge(kpb::ChallengeRequest::default()).await.unwrap().into_inner().nonce;
    let mut evidence = agent
        .handle
        .evidence(sealroom_measurements::binding::Nonce::from_slice(&nonce).unwrap())
        .await
        .unwrap();
    evidence.runtime_event_log = encode_records(&records);
    let resp = client
        .release(kpb::ReleaseRequest {
            nonce,
            evidence: Some(evidence.into()),
            key_ids: vec![KEY_ID.into()],
            tpm_activation: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.keys.is_empty());
    assert_eq!(
        resp.refusals.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>(),
        ["verifier: runtime log: cel record: invalid event order: record 5: arg after the launch separator"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tdx_refuses_evidence_without_a_runtime_log() {
    let intel = Intel::new();
    let broker = tdx_broker(&intel).await;
    let kernel = intel.td(&PlatformTcb::up_to_date(), good_td());
    // Nothing was launched by the agent: no event, RTMR3 untouched.
    let agent = agent_on(&kernel, &[]).await;
    assert_eq!(
        release(&agent, &broker).await.unwrap_err(),
        "workload.launch: no runtime log replayed to a quoted runtime register (PCR 15 or RTMR3): the workload was not measured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tdx_refuses_mrtd_rtmr1_rtmr2_not_in_the_golden_document() {
    let intel = Intel::new();
    let broker = tdx_broker(&intel).await;
    let (_, digest, _) = golden();
    for (name, shape) in [
        ("mrtd", TdShape { mr_td: [0x12; 48], ..good_td() }),
        ("rtmr1", TdShape { rtmr: [RTMR0, [0x31; 48], RTMR2], ..good_td() }),
        ("rtmr2", TdShape { rtmr: [RTMR0, RTMR1, [0x32; 48]], ..good_td() }),
    ] {
        let (want, got) = match name {
            "mrtd" => (MRTD, shape.mr_td),
            "rtmr1" => (RTMR1, shape.rtmr[1]),
            _ => (RTMR2, shape.rtmr[2]),
        };
        let kernel = intel.td(&PlatformTcb::up_to_date(), shape);
        let agent = agent_on(&kernel, &launch_events(&broker.kid)).await;
        assert_eq!(
            release(&agent, &broker).await.unwrap_err(),
            format!(
                "policy.golden: {name} not golden: expected {}, got {} ({digest})",
                hex::encode(want),
                hex::encode(got)
            )
        );
        agent.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tdx_refuses_a_platform_the_policy_does_not_allow() {
    let intel = Intel::new();
    let appraiser = VerifierAppraiser::default()
        .with_tdx_collateral(intel.collateral.clone())
        .with_verification_time_ms(now_ms());
    let broker = broker_with(appraiser, "[\"tpm\", \"sev-snp\"]").await;
    let kernel = intel.td(&PlatformTcb::up_to_date(), good_td());
    let agent = agent_on(&kernel, &launch_events(&broker.kid)).await;
    assert_eq!(
        release(&agent, &broker).await.unwrap_err(),
        "policy.platforms: platform tdx not allowed (allowed: tpm, sev-snp)"
    );
}
