//! Key release on SEV-SNP with a vTPM (GCP's shape) and on a plain TPM, end to end: the real agent (worker,
//! SNP attester over configfs-tsm, TPM attester on swtpm, runtime log, broker client) asks the real key broker
//! (gRPC, `VerifierAppraiser` with the swtpm AK enrolled and, for SNP, an AMD-like test root) for the provider's
//! key. The SNP reports come from an emulated SNP kernel (`support::tee_kernel`) signing a real report's layout
//! with a VCEK of the AMD-like test PKI (`sealroom_verifier::snp::test_pki`, feature `test-anchors`, a
//! dev-dependency only), REPORT_DATA being the agent's binding; the runtime log is replayed to the vTPM's PCR 15.
//!
//! Releases on SEV-SNP + vTPM and on TPM; refusals of a debug SNP guest and of a report from VMPL 2, each with
//! its exact reason.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use sealroom_agent::paths::KernelPaths;
use sealroom_agent::server::{self, Running};
use sealroom_agent::worker::WorkerConfig;
use sealroom_broker::appraisal::VerifierAppraiser;
use sealroom_broker::policy::GoldenSet;
use sealroom_tests::agent::ak_of;
use sealroom_tests::analytics::launch_events;
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};
use sealroom_verifier::snp::report::SnpReport;
use sealroom_verifier::snp::test_pki::TestAmdPki;
use sealroom_verifier::snp::{EndorsementCache, Product, TcbVersion};
use sealroom_verifier::x509::parse_time;
use support::provider::{DATA_KEY, ProviderBroker, policy, release};
use support::tee_kernel::{SnpKernel, SnpShape};

const AT: &str = "2026-12-01T12:00:00Z";

fn now_ms() -> u64 {
    u64::try_from(parse_time(AT).unwrap()).unwrap() * 1000
}

/// AMD's side: a PKI, and a real report whose layout, chip id and TCB the emulated firmware reuses.
struct Amd {
    pki: TestAmdPki,
    template: Vec<u8>,
}

impl Amd {
    fn new() -> Self {
        let template = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../verifier/testdata/snp/trustee/test-report.bin"
        ))
        .unwrap();
        let pki = TestAmdPki::new(
            Product::Milan,
            parse_time("2024-01-01T00:00:00Z").unwrap(),
            parse_time("2030-01-01T00:00:00Z").unwrap(),
        );
        Self { pki, template }
    }

    /// A guest whose reports are signed by a fresh VCEK of this PKI for the template's chip.
    fn guest(&self, shape: SnpShape) -> SnpKernel {
        let parsed = SnpReport::parse(&self.template).unwrap();
        let (vcek, key) =
            self.pki.issue_vcek(0x5ecb, &TcbVersion::decode(parsed.reported_tcb, false), &parsed.chip_id);
        SnpKernel::start(self.template.clone(), &vcek, key, shape)
    }
}

/// The real agent on `root` with the TPM `tpm`, before any workload event.
async fn agent(root: &std::path::Path, tpm: &Swtpm) -> Running {
    let worker = WorkerConfig {
        paths: KernelPaths::new(root),
        tcti: Some(tpm.tcti()),
        no_tpm: false,
        runtime_log_dir: unique_temp_dir("snp-rtlog"),
        queue_depth: 8,
        request_timeout: Duration::from_secs(60),
    };
    let tcp = "127.0.0.1:0".parse().unwrap();
    server::start(server::Config { tcp: Some(tcp), vsock: None, worker, limits: server::agent_limits() })
        .await
        .unwrap()
}

async fn launch(agent: &Running, broker: &ProviderBroker) {
    for e in launch_events(&broker.kid) {
        agent.handle.measure(e).await.unwrap();
    }
}

/// An SNP guest with a vTPM, its agent launched, and a broker trusting the AMD-like root and the vTPM's AK.
async fn snp_release(shape: SnpShape) -> Result<Vec<u8>, String> {
    let amd = Amd::new();
    let kernel = amd.guest(shape);
    let tpm = Swtpm::start().unwrap();
    let agent = agent(&kernel.root, &tpm).await;
    assert_eq!(agent.handle.info().platform, Some(sealroom_measurements::evidence::Platform::SevSnp));
    let appraiser = VerifierAppraiser::with_pinned_tpm_aks(vec![ak_of(&agent).await])
        .with_snp_cache(EndorsementCache::with_test_roots(amd.pki.roots()))
        .with_verification_time_ms(now_ms());
    let policy = policy("[\"sev-snp\"]", "\"skip\"", None);
    let broker = ProviderBroker::start(Arc::new(appraiser), &policy, GoldenSet::default(), now_ms()).await;
    launch(&agent, &broker).await;
    release(&agent, &broker).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snp_vtpm_release_with_the_runtime_log_replayed_to_pcr15() {
    assert_eq!(snp_release(SnpShape { debug: false, vmpl: 0 }).await.unwrap(), DATA_KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snp_refuses_a_debug_guest() {
    assert_eq!(
        snp_release(SnpShape { debug: true, vmpl: 0 }).await.unwrap_err(),
        "policy.debug: TEE runs in debug mode"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snp_refuses_a_report_from_vmpl_2() {
    // A guest kernel at VMPL 2 (under an SVSM or paravisor) asks for a report binding what it chose.
    let e = snp_release(SnpShape { debug: false, vmpl: 2 }).await.unwrap_err();
    assert_eq!(e, "verifier: snp: report VMPL 2 exceeds the allowed 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_release_on_swtpm() {
    let tpm = Swtpm::start().unwrap();
    let root = unique_temp_dir("tpm-root");
    std::fs::create_dir_all(&root).unwrap();
    let agent = agent(&root, &tpm).await;
    let appraiser =
        VerifierAppraiser::with_pinned_tpm_aks(vec![ak_of(&agent).await]).with_verification_time_ms(now_ms());
    let tpm_only = policy("[\"tpm\"]", "\"skip\"", None);
    let broker = ProviderBroker::start(Arc::new(appraiser), &tpm_only, GoldenSet::default(), now_ms()).await;
    launch(&agent, &broker).await;
    assert_eq!(release(&agent, &broker).await.unwrap(), DATA_KEY);
    // The same TPM evidence under a policy for TEEs only: the platform is named in the refusal.
    let tee_only = ProviderBroker::start(
        Arc::new(
            VerifierAppraiser::with_pinned_tpm_aks(vec![ak_of(&agent).await])
                .with_verification_time_ms(now_ms()),
        ),
        &policy("[\"tdx\", \"sev-snp\"]", "\"skip\"", None),
        GoldenSet::default(),
        now_ms(),
    )
    .await;
    assert_eq!(
        release(&agent, &tee_only).await.unwrap_err(),
        "policy.platforms: platform tpm not allowed (allowed: tdx, sev-snp)"
    );
}
