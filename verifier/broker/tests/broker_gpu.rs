//! GPU rules of key policies on real NVIDIA H100 evidence (`verifier/testdata/gpu`, verified at
//! 2024-06-01T00:00:00Z; the older report matches the driver and VBIOS RIMs in full).
//!
//! What is real and what is not: the H100 reports, their device chains and RIMs are NVIDIA's, verified by the
//! verifier's own code. The CPU part is TDX evidence signed by the verifier's Intel-like test PKI (feature
//! `test-anchors`), bound to the request's nonce and TEE key, with a runtime log replayed to RTMR3, appraised
//! by the broker's [`VerifierAppraiser`] with test-root collateral. A real report's nonce was chosen by
//! NVIDIA's tooling, so it can never be a fresh binding digest: evidence carrying it is refused by the broker
//! (`attack_real_gpu_report_not_bound_to_the_binding_is_refused`). The release and policy refusals therefore
//! evaluate the policies on the broker's typed appraisal of the TDX evidence plus the older report's typed GPU
//! part, built by the verifier with the binding check aimed at that report's own nonce.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::expect_used)]

use sealroom_broker::appraisal::{Appraiser, VerifierAppraiser};
use sealroom_broker::policy::{GoldenSet, Outcome, Policy};
use sealroom_measurements::binding::{Kem, Nonce, TeePublicKey, binding_digest, report_data};
use sealroom_measurements::cel::{self, CelLog, RUNTIME_PCR, RuntimeEvent};
use sealroom_measurements::evidence::{Evidence, GpuEvidence, HashAlg, Platform, TdxEvidence};
use sealroom_verifier::claims::{Appraisal, GpuAppraisal, GpuRevocation};
use sealroom_verifier::gpu::appraise::{GpuContext, verify_one};
use sealroom_verifier::gpu::{GpuTrust, Revocation, verify_rim};
use sealroom_verifier::tdx::Collateral;
use sealroom_verifier::tdx::test_pki::{CollateralSpec, PlatformTcb, TdQuoteBody, TestIntelPki};
use sealroom_verifier::x509::{Certificate, UnixTime, parse_time};

const REPORT: &str = include_str!("../../testdata/gpu/nvtrust/attestationReport.txt");
const CHAIN: &[u8] = include_bytes!("../../testdata/gpu/nvtrust/gpuAkCertChain.txt");
const DRIVER_RIM: &[u8] = include_bytes!("../../testdata/gpu/nvtrust/Driver_RIM_test_no_gpu.swidtag");
const VBIOS_RIM: &[u8] =
    include_bytes!("../../testdata/gpu/nvtrust/1010_0200_882_96005E0001_test_no_gpu.swidtag");
/// The older report's nonce (MANIFEST.md).
const REPORT_NONCE: &str = "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e";
const DRIVER_ID: &str = "NV_GPU_DRIVER_GH100_545.00";
const VBIOS_ID: &str = "NV_GPU_VBIOS_1010_0200_882_96005E0001";

fn at() -> UnixTime {
    parse_time("2024-06-01T00:00:00Z").unwrap()
}

fn gpu_context() -> GpuContext {
    let trust = GpuTrust::nvidia().unwrap();
    let rims = [DRIVER_RIM, VBIOS_RIM]
        .iter()
        .map(|x| verify_rim(&trust, x, &Revocation::NotChecked, at()).unwrap())
        .collect();
    GpuContext { trust, rims, revocation: Revocation::NotChecked }
}

fn real_gpu() -> GpuEvidence {
    GpuEvidence {
        report: hex::decode(REPORT.trim()).unwrap(),
        cert_chain: Certificate::chain_from_pem(CHAIN).unwrap().iter().map(|c| c.der().to_vec()).collect(),
    }
}

fn tee_key() -> TeePublicKey {
    TeePublicKey::new(Kem::X25519HkdfSha256, vec![0x42; 32]).unwrap()
}

/// TDX evidence from the test PKI: REPORT_DATA binds `nonce` and the TEE key, RTMR3 is the replay of a
/// launched workload's runtime log.
fn tdx_evidence(pki: &TestIntelPki, nonce: Nonce, gpus: Vec<GpuEvidence>) -> Evidence {
    let mut log = CelLog::new();
    for e in [
        RuntimeEvent::ManifestDigest(format!("sha256:{}", "ab".repeat(32))),
        RuntimeEvent::Arg("--train".into()),
        RuntimeEvent::LaunchSeparator,
    ] {
        log.append(RUNTIME_PCR, &[HashAlg::Sha384], &e).unwrap();
    }
    let log = log.encode();
    let rtmr3 = cel::replay_rtmr3(&CelLog::decode(&log).unwrap()).unwrap();
    let platform = pki.issue_platform(&[0x7d, 0x01], &PlatformTcb::up_to_date(), 4);
    let body = TdQuoteBody::new(
        [0x11; 48],
        [[0x20; 48], [0x21; 48], [0x22; 48], rtmr3],
        report_data(&nonce, &tee_key()),
    );
    Evidence {
        nonce,
        tee_public_key: tee_key(),
        platform: Platform::Tdx,
        tpm: None,
        tdx: Some(TdxEvidence { quote: platform.quote(&body), ccel_table: vec![], ccel_log: vec![] }),
        sev_snp: None,
        azure: None,
        runtime_event_log: log,
        gpus,
    }
}

/// The broker's appraiser as `sealroom broker serve --tdx-collateral … --gpu-rims DIR
/// --verification-time 2024-06-01T00:00:00Z` builds it, with the test root's collateral.
fn appraiser(pki: &TestIntelPki) -> VerifierAppraiser {
    let mut c = Collateral::default();
    c.add_bytes(&pki.collateral_json(&CollateralSpec::standard(at() - 10 * 86_400)), "test collateral")
        .unwrap();
    let collateral = c.verify_under(&pki.root(), at()).unwrap();
    VerifierAppraiser::default()
        .with_tdx_collateral(collateral)
        .with_gpu_context(gpu_context())
        .with_verification_time_ms(u64::try_from(at()).unwrap() * 1000)
}

fn pki() -> TestIntelPki {
    TestIntelPki::new(
        parse_time("2024-01-01T00:00:00Z").unwrap(),
        parse_time("2031-01-01T00:00:00Z").unwrap(),
    )
}

/// The older report's typed GPU part, built by the verifier with the binding check aimed at the report's own
/// nonce (the only digest a recorded report can be bound to).
fn real_gpu_appraisal() -> GpuAppraisal {
    let nonce: [u8; 32] = hex::decode(REPORT_NONCE).unwrap().try_into().unwrap();
    let gpu = real_gpu();
    let claims = verify_one(&gpu.report, &gpu.cert_chain, &nonce, &gpu_context(), at()).unwrap();
    GpuAppraisal::from_verified(&claims, &nonce, at())
}

/// The broker's appraisal of CPU-only TDX evidence (no GPU): accepted.
fn cpu_appraisal() -> Appraisal {
    let pki = pki();
    let nonce = Nonce([0x5e; 32]);
    appraiser(&pki).appraise(&tdx_evidence(&pki, nonce, vec![]), 0).unwrap()
}

fn policy(gpu: &str) -> Policy {
    Policy::parse(&format!(
        "version = 2\nplatforms = [\"tdx\"]\ntcb_statuses = [\"UpToDate\"]\nminimum_tcb = \"skip\"\n\
         debug = \"forbidden\"\ngolden = \"skip\"\nimage_digests = \"skip\"\nargs = [\"--train\"]\nenv = \"skip\"\nbroker_keys = \"skip\"\n{gpu}"
    ))
    .unwrap()
}

const REQUIRE_H100: &str = "gpu_required = true\ngpu_architectures = [\"hopper\"]\n\
    gpu_rim_ids = [\"NV_GPU_DRIVER_GH100_545.00\", \"NV_GPU_VBIOS_1010_0200_882_96005E0001\"]\n";

fn refusal(p: &Policy, a: &Appraisal) -> Option<String> {
    p.evaluate(a, &GoldenSet::default()).refusal().map(|(_, r)| r)
}

#[test]
fn a_policy_requiring_an_h100_releases_on_the_verified_older_report() {
    let gpu = real_gpu_appraisal();
    assert_eq!(gpu.architecture.name(), "hopper");
    assert_eq!((gpu.driver_rim_id.as_str(), gpu.vbios_rim_id.as_str()), (DRIVER_ID, VBIOS_ID));
    assert_eq!(gpu.measurements.len(), 33, "every index both RIMs list");
    assert!(gpu.measurements.iter().all(|m| m.matched));
    assert_eq!(gpu.revocation, GpuRevocation::NotChecked);
    assert_eq!(hex::encode(&gpu.bound_nonce.0), REPORT_NONCE);

    let mut a = cpu_appraisal();
    a.gpus.push(gpu);
    let verdict = policy(REQUIRE_H100).evaluate(&a, &GoldenSet::default());
    assert_eq!(verdict.refusal(), None, "{verdict:?}");
    let gpu_rules: Vec<_> =
        verdict.rules.iter().filter(|(r, _)| r.starts_with("policy.gpu")).cloned().collect();
    assert_eq!(
        gpu_rules,
        [
            ("policy.gpu_required", Outcome::Pass("1 verified GPU(s)".into())),
            ("policy.gpu_architectures", Outcome::Pass("1 GPU(s) of an allowed architecture".into())),
            ("policy.gpu_rim_ids", Outcome::Pass("1 GPU(s) matched allowed driver and VBIOS RIMs".into())),
        ]
    );
    // The typed GPU part travels in the EAR the broker signs.
    let ear = serde_json::to_value(sealroom_verifier::ear::Submodule::of(&a).summary()).unwrap();
    assert_eq!(ear["sealroom.gpus"][0]["driver_rim_id"], DRIVER_ID);
    assert_eq!(ear["sealroom.gpus"][0]["revocation"], "not_checked");
}

#[test]
fn attack_no_gpu_when_the_policy_requires_one() {
    assert_eq!(
        refusal(&policy(REQUIRE_H100), &cpu_appraisal()).as_deref(),
        Some("policy.gpu_required: the policy requires a GPU, the evidence has none")
    );
    // Control: the same CPU evidence passes a policy that does not require a GPU.
    let no_gpu = "gpu_required = false\ngpu_architectures = [\"hopper\"]\ngpu_rim_ids = \"skip\"\n";
    assert_eq!(refusal(&policy(no_gpu), &cpu_appraisal()), None);
}

#[test]
fn attack_gpu_architecture_not_allowed() {
    let mut a = cpu_appraisal();
    a.gpus.push(real_gpu_appraisal());
    let blackwell = REQUIRE_H100.replace("[\"hopper\"]", "[\"blackwell\"]");
    assert_eq!(
        refusal(&policy(&blackwell), &a).as_deref(),
        Some("policy.gpu_architectures: GPU 0 architecture hopper not allowed (allowed: blackwell)")
    );
}

#[test]
fn attack_gpu_rim_id_not_allowed() {
    let mut a = cpu_appraisal();
    a.gpus.push(real_gpu_appraisal());
    // Only a newer driver is allowed: the older report's driver is refused.
    let newer = REQUIRE_H100.replace(DRIVER_ID, "NV_GPU_DRIVER_GH100_550.90.07");
    assert_eq!(
        refusal(&policy(&newer), &a).as_deref(),
        Some("policy.gpu_rim_ids: GPU 0 driver RIM NV_GPU_DRIVER_GH100_545.00 not allowed")
    );
    // The VBIOS is checked too.
    let driver_only =
        format!("gpu_required = true\ngpu_architectures = \"skip\"\ngpu_rim_ids = [\"{DRIVER_ID}\"]\n");
    assert_eq!(
        refusal(&policy(&driver_only), &a).as_deref(),
        Some("policy.gpu_rim_ids: GPU 0 VBIOS RIM NV_GPU_VBIOS_1010_0200_882_96005E0001 not allowed")
    );
}

#[test]
fn attack_real_gpu_report_not_bound_to_the_binding_is_refused() {
    // A genuine H100 report (valid signature, chain and RIMs) attached to fresh evidence: its nonce is not this
    // evidence's binding digest, so the broker's verifier refuses the evidence before any key policy.
    let pki = pki();
    let nonce = Nonce([0x5e; 32]);
    let digest = binding_digest(&nonce, &tee_key());
    let e = appraiser(&pki).appraise(&tdx_evidence(&pki, nonce, vec![real_gpu()]), 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "verifier: gpu 0: gpu: nonce mismatch (report {REPORT_NONCE}, expected {})",
            hex::encode(digest)
        )
    );
    // Without the broker's GPU trust inputs a GPU cannot be checked: refused, not ignored.
    let mut c = Collateral::default();
    c.add_bytes(&pki.collateral_json(&CollateralSpec::standard(at() - 10 * 86_400)), "test collateral")
        .unwrap();
    let no_rims = VerifierAppraiser::default()
        .with_tdx_collateral(c.verify_under(&pki.root(), at()).unwrap())
        .with_verification_time_ms(u64::try_from(at()).unwrap() * 1000);
    assert_eq!(
        no_rims.appraise(&tdx_evidence(&pki, nonce, vec![real_gpu()]), 0).unwrap_err().to_string(),
        "verifier: gpu: the evidence carries GPUs but no NVIDIA RIMs were given to check them"
    );
}

#[test]
fn a_version_1_policy_lists_the_gpu_rules_as_skipped() {
    let v1 = Policy::parse(
        "version = 1\nplatforms = [\"tdx\"]\ntcb_statuses = [\"UpToDate\"]\nminimum_tcb = \"skip\"\n\
         debug = \"forbidden\"\ngolden = \"skip\"\nimage_digests = \"skip\"\nargs = [\"--train\"]\nenv = \"skip\"\n",
    )
    .unwrap();
    let verdict = v1.evaluate(&cpu_appraisal(), &GoldenSet::default());
    assert_eq!(verdict.refusal(), None);
    let gpu_rules: Vec<_> =
        verdict.rules.iter().filter(|(r, _)| r.starts_with("policy.gpu")).cloned().collect();
    assert_eq!(
        gpu_rules,
        [
            ("policy.gpu_required", Outcome::Pass("no GPU required (0 verified GPU(s))".into())),
            ("policy.gpu_architectures", Outcome::Skipped),
            ("policy.gpu_rim_ids", Outcome::Skipped),
        ]
    );
}
