//! Attesters: one per hardware root of trust, behind one trait, chosen by probing the platform.
//!
//! The attestation worker owns every attester and calls them one request at a time (the TPM is serial).

use std::collections::BTreeMap;

use sealroom_measurements::binding::{Nonce, TeePublicKey};
use sealroom_measurements::evidence::{
    AzureVtpmEvidence, HashAlg, Platform, SevSnpEvidence, TdxEvidence, TpmEvidence,
};

use crate::error::Result;

pub mod azure;
pub mod azure_imds;
pub mod snp;
pub mod tdx;
pub mod tpm;
pub mod tsm;

/// What an attester contributes to one `Evidence`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Part {
    /// A TPM quote with PCR values, UEFI log and AK chain.
    Tpm(TpmEvidence),
    /// A TDX quote with the CCEL.
    Tdx(TdxEvidence),
    /// An SEV-SNP report with its certificates.
    SevSnp(SevSnpEvidence),
    /// Azure: the HCL report and the vTPM quote by the paravisor's AK.
    Azure(AzureVtpmEvidence),
}

/// The digests of one runtime event under every algorithm an attester may need.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventDigests(pub BTreeMap<HashAlg, Vec<u8>>);

impl EventDigests {
    /// The digest under `alg`, if computed.
    #[must_use]
    pub fn get(&self, alg: HashAlg) -> Option<&[u8]> {
        self.0.get(&alg).map(Vec::as_slice)
    }
}

/// A hardware root of trust that can produce bound evidence and extend a runtime register.
pub trait Attester: Send + std::fmt::Debug {
    /// Short name: "tpm", "tdx", "sev-snp".
    fn name(&self) -> &'static str;

    /// The platform this attester stands for when it is the strongest one present.
    fn platform(&self) -> Platform;

    /// Evidence bound to `nonce` and `key` (TPM extraData = binding digest; REPORT_DATA = binding value).
    ///
    /// # Errors
    /// When the hardware or kernel interface fails.
    fn attest(&mut self, nonce: &Nonce, key: &TeePublicKey) -> Result<Part>;

    /// The hash algorithms this attester's runtime register needs in a runtime event's digests.
    fn runtime_algorithms(&self) -> Vec<HashAlg>;

    /// Extends the runtime register (PCR 15 in every bank, RTMR3) with an event's digests.
    ///
    /// # Errors
    /// When a needed digest is missing or the hardware refuses.
    fn extend_runtime(&mut self, digests: &EventDigests) -> Result<()>;

    /// The current runtime register values per bank (TPM: PCR 15), to check the runtime log at start-up.
    ///
    /// # Errors
    /// When the hardware cannot be read.
    fn runtime_register(&mut self) -> Result<Vec<(HashAlg, Vec<u8>)>> {
        Ok(Vec::new())
    }

    /// The allocated PCR banks (TPM only).
    fn pcr_banks(&self) -> Vec<HashAlg> {
        Vec::new()
    }

    /// Event logs this attester exposes, for `GetEventLog`: (UEFI log, CCEL log).
    fn event_logs(&self) -> (Vec<u8>, Vec<u8>) {
        (Vec::new(), Vec::new())
    }

    /// TPM only, when the TPM holds an EK certificate: (EK certificate DER, AK TPMT_PUBLIC), what a verifier
    /// needs to certify the AK through credential activation.
    fn tpm_identity(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        None
    }

    /// TPM only: TPM2_ActivateCredential of a verifier's credential for this attester's AK.
    ///
    /// # Errors
    /// Always for attesters without a certified EK; otherwise when the TPM refuses the credential.
    fn activate_credential(&mut self, _id_object: &[u8], _encrypted_secret: &[u8]) -> Result<Vec<u8>> {
        Err(crate::error::Error::Platform(format!(
            "{}: no TPM endorsement key to activate a credential",
            self.name()
        )))
    }
}
