//! The gRPC service `sealroom.attestation.v1.Attestation`: checks requests, then asks the worker.

use sealroom_measurements::binding::{NONCE_LEN, Nonce};
use sealroom_proto::attestation::v1 as pb;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::runtime::LogState;
use crate::worker::AttestationHandle;

/// Longest TPM2B_ID_OBJECT contents `ActivateCredential` accepts (proto: TpmCredential).
pub const MAX_ID_OBJECT_LEN: usize = 256;
/// Longest TPM2B_ENCRYPTED_SECRET contents `ActivateCredential` accepts (an RSA 4096 ciphertext).
pub const MAX_ENCRYPTED_SECRET_LEN: usize = 512;

/// Longest `tee_public_key` a request may carry (a P-521 point; larger is refused before any comparison).
pub const MAX_TEE_KEY_LEN: usize = 133;

/// Largest `SubmitInput` envelope: the largest sealed plaintext plus header (8 + 1 + 64 + 3 × 32), length and
/// tag (attestation.proto).
pub const MAX_SEALED_ENVELOPE_LEN: usize =
    sealroom_measurements::sealed::MAX_INPUT_BYTES + 8 + 1 + 64 + 96 + 4 + 16;

/// The service implementation.
#[derive(Debug, Clone)]
pub struct AttestationService {
    handle: AttestationHandle,
}

impl AttestationService {
    /// A service answering through `handle`.
    #[must_use]
    pub fn new(handle: AttestationHandle) -> Self {
        Self { handle }
    }
}

/// The gRPC status for an agent error: one line, the right code.
#[must_use]
pub fn status_of(e: &Error) -> Status {
    let msg = e.to_string();
    match e {
        Error::Request(_) | Error::SealedInput { late: false, .. } => Status::invalid_argument(msg),
        Error::SealedInput { late: true, .. } => Status::failed_precondition(msg),
        Error::Platform(_) | Error::RuntimeLog(_) => Status::failed_precondition(msg),
        Error::Busy(_) => Status::resource_exhausted(msg),
        Error::Timeout(_) => Status::deadline_exceeded(msg),
        Error::WorkerGone => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

#[tonic::async_trait]
impl pb::attestation_server::Attestation for AttestationService {
    async fn get_evidence(
        &self,
        request: Request<pb::GetEvidenceRequest>,
    ) -> Result<Response<pb::GetEvidenceResponse>, Status> {
        let req = request.into_inner();
        if req.nonce.len() != NONCE_LEN {
            return Err(Status::invalid_argument(format!(
                "request: nonce is {} bytes, expected {NONCE_LEN}",
                req.nonce.len()
            )));
        }
        if req.tee_public_key.len() > MAX_TEE_KEY_LEN {
            return Err(Status::invalid_argument(format!(
                "request: tee_public_key is {} bytes, limit {MAX_TEE_KEY_LEN}",
                req.tee_public_key.len()
            )));
        }
        if !req.tee_public_key.is_empty() && req.tee_public_key != self.handle.key().public().as_bytes() {
            return Err(Status::invalid_argument(
                "request: tee_public_key is not this agent's key (it can only bind a key it holds)",
            ));
        }
        if self.handle.info().platform.is_none() {
            return Err(Status::failed_precondition(
                "platform: no attester on this machine (no TPM, TDX or SEV-SNP)",
            ));
        }
        let nonce = Nonce::from_slice(&req.nonce).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ev = self.handle.evidence(nonce).await.map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::GetEvidenceResponse { evidence: Some(ev.into()) }))
    }

    async fn get_event_log(
        &self,
        _request: Request<pb::GetEventLogRequest>,
    ) -> Result<Response<pb::GetEventLogResponse>, Status> {
        let (runtime_event_log, state) = self.handle.runtime_log();
        if let LogState::Diverged(why) = state {
            return Err(Status::failed_precondition(format!("runtime log: diverged: {why}")));
        }
        let info = self.handle.info();
        Ok(Response::new(pb::GetEventLogResponse {
            runtime_event_log,
            uefi_event_log: info.uefi_event_log.clone(),
            ccel_log: info.ccel_log.clone(),
        }))
    }

    async fn get_platform_info(
        &self,
        _request: Request<pb::GetPlatformInfoRequest>,
    ) -> Result<Response<pb::GetPlatformInfoResponse>, Status> {
        let info = self.handle.info();
        let key = self.handle.key().public();
        Ok(Response::new(pb::GetPlatformInfoResponse {
            platform: info.platform.map_or(pb::Platform::Unspecified, pb::Platform::from).into(),
            attesters: info.attesters.iter().map(|s| (*s).to_owned()).collect(),
            pcr_banks: info.pcr_banks.iter().map(|a| pb::HashAlgorithm::from(*a).into()).collect(),
            agent_version: format!("sealroom-agent {}", env!("CARGO_PKG_VERSION")),
            tee_key_kem: pb::KemId::from(key.kem()).into(),
            tee_public_key: key.as_bytes().to_vec(),
        }))
    }

    async fn get_tpm_identity(
        &self,
        _request: Request<pb::GetTpmIdentityRequest>,
    ) -> Result<Response<pb::GetTpmIdentityResponse>, Status> {
        let Some((ek_certificate, ak_public)) = self.handle.info().tpm_identity.clone() else {
            return Err(Status::failed_precondition("tpm: no TPM with an EK certificate on this machine"));
        };
        Ok(Response::new(pb::GetTpmIdentityResponse { ek_certificate, ak_public }))
    }

    async fn activate_credential(
        &self,
        request: Request<pb::ActivateCredentialRequest>,
    ) -> Result<Response<pb::ActivateCredentialResponse>, Status> {
        let credential = request
            .into_inner()
            .credential
            .ok_or_else(|| Status::invalid_argument("request: no credential"))?;
        for (field, len, limit) in [
            ("credential.id_object", credential.id_object.len(), MAX_ID_OBJECT_LEN),
            ("credential.encrypted_secret", credential.encrypted_secret.len(), MAX_ENCRYPTED_SECRET_LEN),
        ] {
            if len == 0 || len > limit {
                return Err(Status::invalid_argument(format!(
                    "request: {field} is {len} bytes, expected 1..={limit}"
                )));
            }
        }
        if self.handle.info().tpm_identity.is_none() {
            return Err(Status::failed_precondition("tpm: no TPM with an EK certificate on this machine"));
        }
        match self.handle.activate_credential(credential.id_object, credential.encrypted_secret).await {
            Ok(secret) => Ok(Response::new(pb::ActivateCredentialResponse { secret })),
            // The TPM refused this credential: it was not made for this EK and AK.
            Err(e @ Error::Attester { .. }) => Err(Status::invalid_argument(e.to_string())),
            Err(e) => Err(status_of(&e)),
        }
    }

    async fn submit_input(
        &self,
        request: Request<pb::SubmitInputRequest>,
    ) -> Result<Response<pb::SubmitInputResponse>, Status> {
        let req = request.into_inner();
        sealroom_measurements::sealed::check_name(&req.name)
            .map_err(|e| Status::invalid_argument(format!("request: {e}")))?;
        if req.sealed.len() > MAX_SEALED_ENVELOPE_LEN {
            return Err(Status::invalid_argument(format!(
                "request: sealed is {} bytes, limit {MAX_SEALED_ENVELOPE_LEN}",
                req.sealed.len()
            )));
        }
        let inbox = self.handle.sealed_inbox();
        let record = inbox
            .submit(&req.name, &req.sealed, self.handle.key(), &self.handle)
            .await
            .map_err(|e| status_of(&e))?;
        let digest = match &record.event {
            sealroom_measurements::cel::RuntimeEvent::SealedInput { digest, .. } => digest.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::SubmitInputResponse { digest, recnum: record.recnum }))
    }
}
