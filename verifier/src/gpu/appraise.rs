//! The `gpu` layer of an appraisal: every GPU in a sealroom `Evidence`, bound to the same binding digest as the
//! CPU evidence, verified against the RIMs the verifier holds and judged by the policy's GPU rules.

use std::collections::BTreeSet;

use sealroom_measurements::binding::binding_digest;
use sealroom_measurements::evidence::Evidence;
use serde::Deserialize;

use super::verify::{
    GpuArchitecture, GpuClaims, GpuTrust, Revocation, RevocationStatus, VerifiedRim, verify_device_chain,
    verify_gpu_report,
};
use crate::claims::Appraisal;
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
    /// The evidence has no GPU and the policy does not require one: no layer.
    Absent,
    /// Every GPU verified and passed the policy.
    Passed(Vec<GpuClaims>),
    /// At least one GPU failed; the claims of the ones that verified, and every reason.
    Failed {
        /// Claims of GPUs that verified.
        claims: Vec<GpuClaims>,
        /// One line each.
        failures: Vec<String>,
    },
}

/// Judges every GPU of `evidence`: report bound to the evidence's binding digest, chain, RIMs, policy.
#[must_use]
pub fn appraise_gpus(
    evidence: &Evidence,
    policy: &GpuPolicy,
    ctx: Option<&GpuContext>,
    at: UnixTime,
) -> GpuLayer {
    if evidence.gpus.is_empty() {
        return if policy.gpu_required {
            GpuLayer::Failed {
                claims: vec![],
                failures: vec!["gpu: the policy requires a GPU, the evidence has none".into()],
            }
        } else {
            GpuLayer::Absent
        };
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
        match appraise_one(&gpu.report, &gpu.cert_chain, &digest, policy, ctx, at) {
            Ok(c) => claims.push(c),
            Err(e) => failures.extend(e.reasons().into_iter().map(|r| format!("gpu {i}: {r}"))),
        }
    }
    if failures.is_empty() { GpuLayer::Passed(claims) } else { GpuLayer::Failed { claims, failures } }
}

/// Adds the `gpu` layer to the EAR of an appraisal (sealroom `Evidence`, or `None` for evidence kinds that
/// cannot carry GPUs): a failed GPU makes the verdict contraindicated; the layer's reference says whether
/// revocation was checked, so an offline verdict never hides that it was not.
pub fn add_gpu_layer(
    appraisal: &mut Appraisal,
    evidence: Option<&Evidence>,
    policy: &GpuPolicy,
    ctx: Option<&GpuContext>,
    at: UnixTime,
) {
    let layer = match evidence {
        Some(ev) => appraise_gpus(ev, policy, ctx, at),
        None if policy.gpu_required => GpuLayer::Failed {
            claims: vec![],
            failures: vec!["gpu: the policy requires a GPU, this kind of evidence cannot carry one".into()],
        },
        None => GpuLayer::Absent,
    };
    let (outcome, claims, failures) = match layer {
        GpuLayer::Absent => return,
        GpuLayer::Passed(claims) => (Outcome::Passed, claims, vec![]),
        GpuLayer::Failed { claims, failures } => (Outcome::Failed, claims, failures),
    };
    let revocation =
        if !claims.is_empty() && claims.iter().all(|c| c.revocation == RevocationStatus::CheckedCrl) {
            RevocationStatus::CheckedCrl
        } else {
            RevocationStatus::NotChecked
        };
    let result = LayerResult {
        layer: "gpu".into(),
        outcome,
        reference: format!("nvidia rims; {revocation}"),
        claims: serde_json::to_value(&claims).unwrap_or_default(),
        failures,
    };
    if outcome == Outcome::Failed {
        appraisal.status = Status::Contraindicated;
    }
    appraisal.layers.push(result);
}

/// One GPU: chain, report against the expected nonce, then the policy's rules.
///
/// # Errors
/// Every failed check.
pub fn appraise_one(
    report: &[u8],
    cert_chain_der: &[Vec<u8>],
    nonce: &[u8; 32],
    policy: &GpuPolicy,
    ctx: &GpuContext,
    at: UnixTime,
) -> Result<GpuClaims> {
    let chain = cert_chain_der.iter().map(|der| Certificate::from_der(der)).collect::<Result<Vec<_>>>()?;
    let chain = verify_device_chain(&ctx.trust, &chain, &ctx.revocation, at)?;
    let claims = verify_gpu_report(report, &chain, &ctx.rims, nonce, at)?;
    check_policy(&claims, policy)?;
    Ok(claims)
}

/// The policy's GPU rules on verified claims.
///
/// # Errors
/// Every rule broken.
pub fn check_policy(claims: &GpuClaims, policy: &GpuPolicy) -> Result<()> {
    let mut failures = Vec::new();
    if !policy.allowed_architectures.contains(&claims.architecture) {
        failures.push(Error::check(
            LAYER,
            format!("architecture {} is not allowed by the policy", claims.architecture.name()),
        ));
    }
    for (what, id, allowed) in [
        ("driver", &claims.driver_rim_id, &policy.driver_rims),
        ("VBIOS", &claims.vbios_rim_id, &policy.vbios_rims),
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

    #[test]
    fn policy_pins_rim_ids_and_architectures() {
        let report = hex::decode(REPORT.trim()).unwrap();
        let nonce: [u8; 32] = hex::decode(NONCE).unwrap().try_into().unwrap();
        let claims =
            appraise_one(&report, &chain_der(), &nonce, &GpuPolicy::default(), &ctx(), at()).unwrap();
        let pinned: GpuPolicy = serde_json::from_str(
            r#"{"gpu_required": true, "allowed_architectures": ["hopper"],
                "driver_rims": ["NV_GPU_DRIVER_GH100_545.00"], "vbios_rims": "skip"}"#,
        )
        .unwrap();
        check_policy(&claims, &pinned).unwrap();
        let other: GpuPolicy = serde_json::from_str(
            r#"{"allowed_architectures": ["blackwell"], "driver_rims": ["NV_GPU_DRIVER_GH100_550.90.07"],
                "vbios_rims": ["NV_GPU_VBIOS_1010_0200_882_96009F0001"]}"#,
        )
        .unwrap();
        assert_eq!(
            check_policy(&claims, &other).unwrap_err().reasons(),
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
        let gpu = GpuEvidence { report: hex::decode(REPORT.trim()).unwrap(), cert_chain: chain_der() };
        let layer = appraise_gpus(&evidence(vec![gpu]), &GpuPolicy::default(), Some(&ctx()), at());
        let GpuLayer::Failed { claims, failures } = layer else { panic!("{layer:?}") };
        assert!(claims.is_empty());
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].starts_with(&format!("gpu 0: gpu: nonce mismatch (report {NONCE}, expected ")),
            "{failures:?}"
        );
    }

    #[test]
    fn the_gpu_layer_lands_in_the_ear_and_a_failure_contraindicates() {
        use crate::ear::TrustworthinessVector;
        let mut ear = Appraisal {
            evidence: "sealroom evidence".into(),
            policy_id: "p".into(),
            at: at(),
            status: Status::Affirming,
            trust_vector: TrustworthinessVector::default(),
            platform: None,
            registers: std::collections::BTreeMap::new(),
            binding: None,
            runtime: None,
            layers: vec![],
            warnings: vec![],
        };
        let untouched = ear.clone();
        add_gpu_layer(&mut ear, Some(&evidence(vec![])), &GpuPolicy::default(), None, at());
        assert_eq!(ear, untouched, "no GPU, none required: no layer");
        let gpu = GpuEvidence { report: hex::decode(REPORT.trim()).unwrap(), cert_chain: chain_der() };
        add_gpu_layer(&mut ear, Some(&evidence(vec![gpu])), &GpuPolicy::default(), Some(&ctx()), at());
        assert_eq!(ear.status(), Status::Contraindicated);
        let layer = &ear.layers[0];
        assert_eq!(
            (layer.layer.as_str(), layer.reference.as_str()),
            ("gpu", "nvidia rims; revocation not checked")
        );
        assert!(ear.failures()[0].contains("nonce mismatch"), "{:?}", ear.failures());
        let mut raw = untouched;
        let required = GpuPolicy { gpu_required: true, ..GpuPolicy::default() };
        add_gpu_layer(&mut raw, None, &required, None, at());
        assert_eq!(
            raw.failures(),
            ["gpu: the policy requires a GPU, this kind of evidence cannot carry one"]
        );
    }

    #[test]
    fn gpu_required_and_missing_rims_fail_closed() {
        let required = GpuPolicy { gpu_required: true, ..GpuPolicy::default() };
        assert_eq!(appraise_gpus(&evidence(vec![]), &GpuPolicy::default(), None, at()), GpuLayer::Absent);
        assert_eq!(
            appraise_gpus(&evidence(vec![]), &required, Some(&ctx()), at()),
            GpuLayer::Failed {
                claims: vec![],
                failures: vec!["gpu: the policy requires a GPU, the evidence has none".into()]
            }
        );
        let gpu = GpuEvidence { report: hex::decode(REPORT.trim()).unwrap(), cert_chain: chain_der() };
        let GpuLayer::Failed { failures, .. } =
            appraise_gpus(&evidence(vec![gpu]), &GpuPolicy::default(), None, at())
        else {
            panic!()
        };
        assert_eq!(failures, ["gpu: the evidence carries GPUs but no NVIDIA RIMs were given to check them"]);
    }
}
