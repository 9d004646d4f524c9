//! The `gpu` layer of an appraisal: every GPU in a sealroom `Evidence`, bound to the same binding digest as the
//! CPU evidence and verified against the RIMs the verifier holds ([`appraise_gpus`], run by
//! [`crate::appraisal::appraise`]); then, for `sealroom verify --gpu-policy`, judged by GPU rules
//! ([`apply_gpu_policy`]). The key broker judges the typed result with each key's own policy instead.

use std::collections::BTreeSet;

use sealroom_measurements::binding::binding_digest;
use sealroom_measurements::evidence::Evidence;
use serde::Deserialize;

use super::verify::{
    GpuArchitecture, GpuClaims, GpuTrust, Revocation, RevocationStatus, VerifiedRim, verify_device_chain,
    verify_gpu_report,
};
use crate::claims::{Appraisal, GpuAppraisal, GpuRevocation};
use crate::ear::{LayerResult, Outcome, Status};
use crate::error::{Error, Result};
use crate::x509::{Certificate, UnixTime};

const LAYER: &str = "gpu";

/// Allowed NVIDIA RIM ids ("NV_GPU_DRIVER_GH100_545.00"), or the literal `"skip"`: any authentic RIM that
/// matches the report's version is used.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RimIds {
    /// `"skip"`: no pin on the release, the measurements are still compared with its RIM.
    Skip(crate::appraisal::SkipMarker),
    /// Only these RIM ids.
    Allowed(BTreeSet<String>),
}

/// The GPU rules of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuPolicy {
    /// Refuse evidence that carries no GPU.
    #[serde(default)]
    pub gpu_required: bool,
    /// Architectures accepted.
    pub allowed_architectures: BTreeSet<GpuArchitecture>,
    /// Driver RIM ids accepted, or `"skip"`.
    pub driver_rims: RimIds,
    /// VBIOS RIM ids accepted, or `"skip"`.
    pub vbios_rims: RimIds,
}

impl Default for GpuPolicy {
    /// No GPU required; a GPU that is present must be a Hopper and match authentic RIMs of any release.
    fn default() -> Self {
        Self {
            gpu_required: false,
            allowed_architectures: [GpuArchitecture::Hopper].into_iter().collect(),
            driver_rims: RimIds::Skip(crate::appraisal::SkipMarker::Skip),
            vbios_rims: RimIds::Skip(crate::appraisal::SkipMarker::Skip),
        }
    }
}

/// What the verifier holds to judge GPUs: the pinned roots, verified RIMs, revocation data.
#[derive(Debug, Clone)]
pub struct GpuContext {
    /// Pinned NVIDIA roots.
    pub trust: GpuTrust,
    /// RIMs verified at (or valid at) the verification time.
    pub rims: Vec<VerifiedRim>,
    /// Revocation data for device chains.
    pub revocation: Revocation,
}

/// The outcome of the gpu layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuLayer {
    /// The evidence has no GPU: no layer.
    Absent,
    /// Every GPU verified.
    Passed(Vec<GpuAppraisal>),
    /// At least one GPU failed; the claims of the ones that verified, and every reason.
    Failed {
        /// Claims of GPUs that verified.
        claims: Vec<GpuAppraisal>,
        /// One line each.
        failures: Vec<String>,
    },
}

impl GpuLayer {
    /// The layer as the EAR carries it (`None` when absent); its reference says whether revocation was
    /// checked, so an offline verdict never hides that it was not.
    #[must_use]
    pub fn result(&self) -> Option<LayerResult> {
        let (outcome, claims, failures) = match self {
            Self::Absent => return None,
            Self::Passed(claims) => (Outcome::Passed, claims, vec![]),
            Self::Failed { claims, failures } => (Outcome::Failed, claims, failures.clone()),
        };
        let checked =
            !claims.is_empty() && claims.iter().all(|c| matches!(c.revocation, GpuRevocation::CheckedAt(_)));
        let revocation = if checked { RevocationStatus::CheckedCrl } else { RevocationStatus::NotChecked };
        Some(LayerResult {
            layer: LAYER.into(),
            outcome,
            reference: format!("nvidia rims; {revocation}"),
            claims: serde_json::to_value(claims).unwrap_or_default(),
            failures,
        })
    }
}

/// Verifies every GPU of `evidence`: device chain to the pinned root, report signature, report nonce equal to
/// the evidence's binding digest, and every measurement against the RIMs in `ctx`. Judges nothing else: which
/// architectures and RIM ids are acceptable is policy ([`check_policy`], the broker's key policies).
#[must_use]
pub fn appraise_gpus(evidence: &Evidence, ctx: Option<&GpuContext>, at: UnixTime) -> GpuLayer {
    if evidence.gpus.is_empty() {
        return GpuLayer::Absent;
    }
    let Some(ctx) = ctx else {
        return GpuLayer::Failed {
            claims: vec![],
            failures: vec![
                "gpu: the evidence carries GPUs but no NVIDIA RIMs were given to check them".into(),
            ],
        };
    };
    let digest = binding_digest(&evidence.nonce, &evidence.tee_public_key);
    let mut claims = Vec::new();
    let mut failures = Vec::new();
    for (i, gpu) in evidence.gpus.iter().enumerate() {
        match verify_one(&gpu.report, &gpu.cert_chain, &digest, ctx, at) {
            Ok(c) => claims.push(GpuAppraisal::from_verified(&c, &digest, at)),
            Err(e) => failures.extend(e.reasons().into_iter().map(|r| format!("gpu {i}: {r}"))),
        }
    }
    if failures.is_empty() { GpuLayer::Passed(claims) } else { GpuLayer::Failed { claims, failures } }
}

/// Applies a GPU policy (`sealroom verify --gpu-policy`) to an appraisal whose `gpu` layer the verifier
/// already ran: `gpu_required`, architectures and RIM ids of every verified GPU. `can_carry_gpus` is false
/// for evidence kinds without a GPU part. A broken rule fails the `gpu` layer (added when absent) and makes
/// the verdict contraindicated.
pub fn apply_gpu_policy(appraisal: &mut Appraisal, policy: &GpuPolicy, can_carry_gpus: bool) {
    let gpu_layer_ran = appraisal.layer(LAYER).is_some();
    let mut failures = Vec::new();
    if policy.gpu_required && appraisal.gpus.is_empty() && !gpu_layer_ran {
        failures.push(if can_carry_gpus {
            "gpu: the policy requires a GPU, the evidence has none".to_owned()
        } else {
            "gpu: the policy requires a GPU, this kind of evidence cannot carry one".to_owned()
        });
    }
    for (i, gpu) in appraisal.gpus.iter().enumerate() {
        if let Err(e) = check_policy(gpu, policy) {
            failures.extend(e.reasons().into_iter().map(|r| format!("gpu {i}: {r}")));
        }
    }
    if failures.is_empty() {
        return;
    }
    match appraisal.layers.iter_mut().find(|l| l.layer == LAYER) {
        Some(l) => {
            l.outcome = Outcome::Failed;
            l.failures.extend(failures);
        }
        None => appraisal.layers.push(LayerResult {
            layer: LAYER.into(),
            outcome: Outcome::Failed,
            reference: "gpu policy".into(),
            claims: serde_json::Value::Null,
            failures,
        }),
    }
    appraisal.status = Status::Contraindicated;
}

/// One GPU: chain, then the report against the expected nonce and the RIMs.
///
/// # Errors
/// Every failed check.
pub fn verify_one(
    report: &[u8],
    cert_chain_der: &[Vec<u8>],
    nonce: &[u8; 32],
    ctx: &GpuContext,
    at: UnixTime,
) -> Result<GpuClaims> {
    let chain = cert_chain_der.iter().map(|der| Certificate::from_der(der)).collect::<Result<Vec<_>>>()?;
    let chain = verify_device_chain(&ctx.trust, &chain, &ctx.revocation, at)?;
    verify_gpu_report(report, &chain, &ctx.rims, nonce, at)
}

/// The policy's GPU rules on one verified GPU.
///
/// # Errors
/// Every rule broken.
pub fn check_policy(gpu: &GpuAppraisal, policy: &GpuPolicy) -> Result<()> {
    let mut failures = Vec::new();
    if !policy.allowed_architectures.contains(&gpu.architecture) {
        failures.push(Error::check(
            LAYER,
            format!("architecture {} is not allowed by the policy", gpu.architecture.name()),
        ));
    }
    for (what, id, allowed) in [
        ("driver", &gpu.driver_rim_id, &policy.driver_rims),
        ("VBIOS", &gpu.vbios_rim_id, &policy.vbios_rims),
    ] {
        if let RimIds::Allowed(ids) = allowed
            && !ids.contains(id)
        {
            failures.push(Error::check(LAYER, format!("{what} RIM {id} is not allowed by the policy")));
        }
    }
    Error::from_all(failures)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use sealroom_measurements::binding::{Kem, Nonce, TeePublicKey};
    use sealroom_measurements::evidence::{GpuEvidence, Platform, TdxEvidence};

    use super::*;
    use crate::x509::parse_time;

    const REPORT: &str = include_str!("../../testdata/gpu/nvtrust/attestationReport.txt");
    const CHAIN: &[u8] = include_bytes!("../../testdata/gpu/nvtrust/gpuAkCertChain.txt");
    const RIMS: [&[u8]; 2] = [
        include_bytes!("../../testdata/gpu/nvtrust/Driver_RIM_test_no_gpu.swidtag"),
        include_bytes!("../../testdata/gpu/nvtrust/1010_0200_882_96005E0001_test_no_gpu.swidtag"),
    ];
    const NONCE: &str = "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e";

    fn at() -> UnixTime {
        parse_time("2024-06-01T00:00:00Z").unwrap()
    }

    fn ctx() -> GpuContext {
        let trust = GpuTrust::nvidia().unwrap();
        let rims = RIMS
            .iter()
            .map(|x| super::super::verify_rim(&trust, x, &Revocation::NotChecked, at()).unwrap())
            .collect();
        GpuContext { trust, rims, revocation: Revocation::NotChecked }
    }

    fn chain_der() -> Vec<Vec<u8>> {
        Certificate::chain_from_pem(CHAIN).unwrap().iter().map(|c| c.der().to_vec()).collect()
    }

    fn evidence(gpus: Vec<GpuEvidence>) -> Evidence {
        Evidence {
            nonce: Nonce([7; 32]),
            tee_public_key: TeePublicKey::new(Kem::X25519HkdfSha256, vec![9; 32]).unwrap(),
            platform: Platform::Tdx,
            tpm: None,
            tdx: Some(TdxEvidence::default()),
            sev_snp: None,
            azure: None,
            runtime_event_log: vec![],
            gpus,
        }
    }

    fn verified(gpu: &GpuEvidence, nonce: &[u8; 32]) -> GpuAppraisal {
        let c = verify_one(&gpu.report, &gpu.cert_chain, nonce, &ctx(), at()).unwrap();
        GpuAppraisal::from_verified(&c, nonce, at())
    }

    fn real_gpu() -> GpuEvidence {
        GpuEvidence { report: hex::decode(REPORT.trim()).unwrap(), cert_chain: chain_der() }
    }

    fn real_nonce() -> [u8; 32] {
        hex::decode(NONCE).unwrap().try_into().unwrap()
    }

    #[test]
    fn policy_pins_rim_ids_and_architectures() {
        let gpu = verified(&real_gpu(), &real_nonce());
        assert_eq!(gpu.measurements.len(), 33);
        assert!(gpu.measurements.iter().all(|m| m.matched));
        assert_eq!(gpu.revocation, GpuRevocation::NotChecked);
        assert_eq!(gpu.bound_nonce.0, real_nonce());
        let pinned: GpuPolicy = serde_json::from_str(
            r#"{"gpu_required": true, "allowed_architectures": ["hopper"],
                "driver_rims": ["NV_GPU_DRIVER_GH100_545.00"], "vbios_rims": "skip"}"#,
        )
        .unwrap();
        check_policy(&gpu, &pinned).unwrap();
        let other: GpuPolicy = serde_json::from_str(
            r#"{"allowed_architectures": ["blackwell"], "driver_rims": ["NV_GPU_DRIVER_GH100_550.90.07"],
                "vbios_rims": ["NV_GPU_VBIOS_1010_0200_882_96009F0001"]}"#,
        )
        .unwrap();
        assert_eq!(
            check_policy(&gpu, &other).unwrap_err().reasons(),
            [
                "gpu: architecture hopper is not allowed by the policy",
                "gpu: driver RIM NV_GPU_DRIVER_GH100_545.00 is not allowed by the policy",
                "gpu: VBIOS RIM NV_GPU_VBIOS_1010_0200_882_96005E0001 is not allowed by the policy",
            ]
        );
        // Unknown fields and words other than "skip" are refused.
        for bad in [
            r#"{"allowed_architectures": [], "driver_rims": "none", "vbios_rims": "skip"}"#,
            r#"{"allowed_architectures": [], "driver_rims": "skip", "vbios_rims": "skip", "x": 1}"#,
            r#"{"allowed_architectures": ["volta"], "driver_rims": "skip", "vbios_rims": "skip"}"#,
        ] {
            assert!(serde_json::from_str::<GpuPolicy>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn attack_a_real_gpu_report_replayed_into_other_evidence_fails_the_binding() {
        // A genuine report, but its nonce is not this evidence's binding digest.
        let layer = appraise_gpus(&evidence(vec![real_gpu()]), Some(&ctx()), at());
        let GpuLayer::Failed { claims, failures } = layer else { panic!("{layer:?}") };
        assert!(claims.is_empty());
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].starts_with(&format!("gpu 0: gpu: nonce mismatch (report {NONCE}, expected ")),
            "{failures:?}"
        );
    }

    fn empty_appraisal() -> Appraisal {
        Appraisal {
            evidence: "sealroom evidence".into(),
            policy_id: "p".into(),
            at: at(),
            status: Status::Affirming,
            trust_vector: crate::ear::TrustworthinessVector::default(),
            platform: None,
            registers: std::collections::BTreeMap::new(),
            binding: None,
            runtime: None,
            gpus: vec![],
            layers: vec![],
            warnings: vec![],
        }
    }

    #[test]
    fn the_gpu_layer_names_revocation_and_a_policy_failure_contraindicates() {
        let layer = GpuLayer::Passed(vec![verified(&real_gpu(), &real_nonce())]).result().unwrap();
        assert_eq!((layer.layer.as_str(), layer.outcome), ("gpu", Outcome::Passed));
        assert_eq!(layer.reference, "nvidia rims; revocation not checked");
        assert_eq!(GpuLayer::Absent.result(), None);

        let mut a = empty_appraisal();
        a.gpus.push(verified(&real_gpu(), &real_nonce()));
        a.layers.push(layer);
        let untouched = a.clone();
        apply_gpu_policy(&mut a, &GpuPolicy::default(), true);
        assert_eq!(a, untouched, "a Hopper with authentic RIMs passes the default GPU policy");
        let blackwell_only = GpuPolicy {
            allowed_architectures: [GpuArchitecture::Blackwell].into_iter().collect(),
            ..GpuPolicy::default()
        };
        apply_gpu_policy(&mut a, &blackwell_only, true);
        assert_eq!(a.status(), Status::Contraindicated);
        assert_eq!(a.failures(), ["gpu 0: gpu: architecture hopper is not allowed by the policy"]);

        let required = GpuPolicy { gpu_required: true, ..GpuPolicy::default() };
        let mut raw = empty_appraisal();
        apply_gpu_policy(&mut raw, &required, false);
        assert_eq!(
            raw.failures(),
            ["gpu: the policy requires a GPU, this kind of evidence cannot carry one"]
        );
        let mut none = empty_appraisal();
        apply_gpu_policy(&mut none, &required, true);
        assert_eq!(none.failures(), ["gpu: the policy requires a GPU, the evidence has none"]);
    }

    #[test]
    fn missing_rims_fail_closed() {
        assert_eq!(appraise_gpus(&evidence(vec![]), None, at()), GpuLayer::Absent);
        let GpuLayer::Failed { failures, .. } = appraise_gpus(&evidence(vec![real_gpu()]), None, at()) else {
            panic!()
        };
        assert_eq!(failures, ["gpu: the evidence carries GPUs but no NVIDIA RIMs were given to check them"]);
    }
}
