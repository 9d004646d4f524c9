//! The broker's one appraisal path: evidence → the verifier ([`sealroom_verifier::appraisal::appraise`]) → the
//! typed [`Appraisal`] → each key's policy ([`super::policy::Policy::evaluate`]).
//!
//! The [`Appraiser`] is the seam to the evidence verifier: it must check signatures, certificate chains,
//! collateral and event-log replay, and may only return an [`Appraisal`] for evidence it accepted. The broker
//! reads nothing back out of JSON: platform, debug mode, TCB, registers, the signed binding value and the
//! replayed runtime events are the verifier's typed fields.

use sealroom_measurements::evidence::Evidence;
pub use sealroom_verifier::claims::{
    Appraisal, HexBytes, PlatformClaims, Register, RuntimeReplay, SignedBinding, platform_name,
};
use sealroom_verifier::ear::Status;
use sealroom_verifier::tpm::credential::ActivatedAk;

use crate::error::{Error, Result};

/// The appraisal policy id the broker's verifier runs under (and its tokens name).
pub const BROKER_POLICY_ID: &str = "sealroom.keybroker.v1";

/// The evidence verifier, as the broker sees it.
pub trait Appraiser: Send + Sync + std::fmt::Debug {
    /// Verifies `evidence` at time `now_ms` and returns its appraisal.
    ///
    /// # Errors
    /// One-line reason when the evidence is not accepted.
    fn appraise(&self, evidence: &Evidence, now_ms: u64) -> Result<Appraisal>;

    /// As [`Appraiser::appraise`], also trusting the TPM AK credential activation proved (`activated`, from the
    /// broker's [`crate::ek_path::EkPath`]) when it is the evidence's AK. An appraiser that cannot use it refuses
    /// rather than ignore it.
    ///
    /// # Errors
    /// As [`Appraiser::appraise`].
    fn appraise_activated(
        &self,
        evidence: &Evidence,
        now_ms: u64,
        activated: Option<&ActivatedAk>,
    ) -> Result<Appraisal> {
        match activated {
            None => self.appraise(evidence, now_ms),
            Some(_) => Err(Error::check(VERIFIER, "this appraiser does not take EK-activated TPM AKs")),
        }
    }
}

/// The broker's appraiser: the verifier's layered appraisal of sealroom evidence, for every platform.
///
/// The verifier checks the platform (signatures, certificate chains, TCB), the binding, and replays the event
/// logs (the runtime log to PCR 15 or RTMR3); it runs with every measured layer on `skip`, because each key's
/// own policy judges registers (golden documents), debug mode and the workload. [`accept`] then fails closed
/// when the appraisal does not prove what the broker relies on.
#[derive(Debug, Default)]
pub struct VerifierAppraiser {
    snp_cache: sealroom_verifier::snp::EndorsementCache,
    pinned_tpm_aks: Vec<Vec<u8>>,
    tdx_collateral: Option<sealroom_verifier::tdx::VerifiedCollateral>,
    tdx_root: Option<sealroom_verifier::tdx::IntelRoot>,
    gpu: Option<sealroom_verifier::gpu::appraise::GpuContext>,
    verification_time_ms: Option<u64>,
}

impl VerifierAppraiser {
    /// Also accepts TPM evidence whose AK (marshalled TPMT_PUBLIC) is one of `aks`, enrolled out of band (an
    /// on-premises TPM, or swtpm in tests): such evidence has no certificate chain to a vendor CA.
    #[must_use]
    pub fn with_pinned_tpm_aks(aks: Vec<Vec<u8>>) -> Self {
        Self { pinned_tpm_aks: aks, ..Self::default() }
    }

    /// Appraises TDX quotes (bare or inside Azure vTPM evidence) against Intel collateral verified once, here:
    /// the TCB status then comes from Intel's TCB info and QE identity, and each quote is checked against the
    /// collateral's CRLs and validity window at its own verification time. Without collateral a TDX quote's
    /// signatures and PCK chain are still verified and its TD attributes read, but it has no TCB status
    /// (policies requiring one refuse).
    #[must_use]
    pub fn with_tdx_collateral(mut self, collateral: sealroom_verifier::tdx::VerifiedCollateral) -> Self {
        self.tdx_collateral = Some(collateral);
        self
    }

    /// Verifies TDX quotes given without collateral under this root instead of the pinned Intel SGX Root CA
    /// (a test root from `tdx::test_pki` in tests built with the verifier's `test-anchors` feature; a release
    /// build can make no root but the pinned one).
    #[must_use]
    pub fn with_tdx_root(mut self, root: sealroom_verifier::tdx::IntelRoot) -> Self {
        self.tdx_root = Some(root);
        self
    }

    /// Verifies the NVIDIA GPUs evidence carries against these trust inputs: NVIDIA's pinned roots, the driver
    /// and VBIOS RIMs (`sealroom broker serve --gpu-rims DIR`, verified once) and optional CRL snapshots. Each
    /// GPU's report must carry the evidence's binding digest as its nonce; the appraisal's `gpus` then name
    /// its architecture and matched RIM ids for the keys' GPU rules. Without it, evidence that carries GPUs
    /// is refused (they cannot be checked); evidence without GPUs is unaffected.
    #[must_use]
    pub fn with_gpu_context(mut self, gpu: sealroom_verifier::gpu::appraise::GpuContext) -> Self {
        self.gpu = Some(gpu);
        self
    }

    /// Verifies SEV-SNP endorsements through this cache (for example one holding test-only AMD-like roots in
    /// tests built with the verifier's `test-anchors` feature; the production roots stay pinned otherwise).
    #[must_use]
    pub fn with_snp_cache(mut self, cache: sealroom_verifier::snp::EndorsementCache) -> Self {
        self.snp_cache = cache;
        self
    }

    /// Verifies all evidence at this fixed time (Unix milliseconds) instead of the broker's clock: for tests
    /// and replays with recorded collateral, which expires. Nonce lifetimes still follow the broker's clock.
    #[must_use]
    pub fn with_verification_time_ms(mut self, time_ms: u64) -> Self {
        self.verification_time_ms = Some(time_ms);
        self
    }
}

const VERIFIER: &str = "verifier";

/// What the broker requires of an appraisal before any key's policy sees it: no failed check, a verified
/// platform, every binding layer run and passed, and a signed binding value.
///
/// # Errors
/// The first failure (with how many more), or what is missing, one line.
pub fn accept(a: Appraisal) -> Result<Appraisal> {
    let failures = a.failures();
    if let Some(first) = failures.first() {
        let more = failures.len().saturating_sub(1);
        let tail = if more > 0 { format!(" (and {more} more)") } else { String::new() };
        return Err(Error::check(VERIFIER, format!("{first}{tail}")));
    }
    if a.status == Status::Contraindicated {
        return Err(Error::check(VERIFIER, "evidence contraindicated"));
    }
    if a.platform.is_none() {
        return Err(Error::check(VERIFIER, "the platform's evidence was not verified"));
    }
    let bindings: Vec<_> = a.layers.iter().filter(|l| l.layer == "binding").collect();
    if bindings.is_empty() || bindings.iter().any(|l| l.outcome != sealroom_verifier::ear::Outcome::Passed) {
        return Err(Error::check(VERIFIER, "the binding of nonce and TEE key was not checked"));
    }
    if a.binding.is_none() {
        return Err(Error::check(VERIFIER, "appraisal carries no signed binding value"));
    }
    Ok(a)
}

impl Appraiser for VerifierAppraiser {
    fn appraise(&self, evidence: &Evidence, now_ms: u64) -> Result<Appraisal> {
        self.appraise_activated(evidence, now_ms, None)
    }

    fn appraise_activated(
        &self,
        evidence: &Evidence,
        now_ms: u64,
        activated: Option<&ActivatedAk>,
    ) -> Result<Appraisal> {
        use sealroom_verifier::appraisal::{Context, Policy, ReferenceValues, appraise_sealroom};
        let now_ms = self.verification_time_ms.unwrap_or(now_ms);
        let policy = Policy {
            // Debug is a per-key policy rule in the broker, so the verifier reports it rather than refusing.
            snp: sealroom_verifier::snp::SnpPolicy {
                allow_debug: true,
                // A report requested from VMPL 1-3 (a guest kernel under an SVSM or paravisor) binds whatever that
                // less privileged code chose: only VMPL 0 speaks for the whole guest.
                max_vmpl: Some(0),
                ..sealroom_verifier::snp::SnpPolicy::default()
            },
            references: ReferenceValues::skip_all(),
            id: BROKER_POLICY_ID.into(),
            // An Intel TCB status other than UpToDate makes the appraisal a warning, not a refusal: each key's
            // policy lists the statuses it accepts.
            ..Policy::default()
        };
        let ctx = Context {
            at: i64::try_from(now_ms / 1000).unwrap_or(i64::MAX),
            nonce: Some(evidence.nonce.0.to_vec()),
            snp_cache: &self.snp_cache,
            tdx_collateral: self.tdx_collateral.as_ref(),
            tdx_root: self.tdx_root.as_ref(),
            enrolled_tpm_aks: &self.pinned_tpm_aks,
            tpm_ek_activated: activated,
            gpu: self.gpu.as_ref(),
        };
        accept(appraise_sealroom(evidence, &policy, &ctx))
    }
}
