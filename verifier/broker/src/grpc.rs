//! The gRPC face of the broker: `sealroom.keybroker.v1.KeyBroker` (`Challenge`, `Release`, `Receipt`) over a
//! shared [`Broker`]. Kept apart from [`crate::service`] and [`crate::receipt`] so both depend on the broker
//! core and neither on the other.

use std::sync::Arc;

use sealroom_proto::keybroker::v1 as pb;
use sealroom_proto::keybroker::v1::key_broker_server::KeyBrokerServer;
use sealroom_proto::limits::ServerLimits;

use crate::error::Error;
use crate::service::{Broker, Call};

/// The gRPC face of a [`Broker`].
#[derive(Debug, Clone)]
pub struct KeyBrokerService(pub Arc<Broker>);

/// The broker's gRPC server builder as `sealroom broker serve` runs it: every HTTP/2 and per-request bound of
/// `limits` ([`ServerLimits::apply`]). The benchmarks serve through this too, so that they measure the
/// server's real configuration, not tonic's defaults.
#[must_use]
pub fn server(limits: &ServerLimits) -> tonic::transport::Server {
    limits.apply(tonic::transport::Server::builder())
}

/// The `KeyBroker` service over `broker`, decoding requests of at most `limits.max_request_bytes`.
#[must_use]
pub fn service(broker: Arc<Broker>, limits: &ServerLimits) -> KeyBrokerServer<KeyBrokerService> {
    KeyBrokerServer::new(KeyBrokerService(broker)).max_decoding_message_size(limits.max_request_bytes)
}

/// Applies the per-peer rate limit of `call` (requests without a peer address, e.g. in-memory transports,
/// are not limited).
fn limit<T>(
    broker: &Broker,
    call: Call,
    request: &tonic::Request<T>,
) -> std::result::Result<(), tonic::Status> {
    match request.remote_addr() {
        Some(peer) => {
            broker.check_rate(call, peer.ip()).map_err(|e| tonic::Status::resource_exhausted(e.to_string()))
        }
        None => Ok(()),
    }
}

/// One release, as a task of its own so that it runs to its end even when the call is cancelled (as a
/// blocking task would). The appraisal, the decisions and the audit write run on the broker's appraisal
/// pool; the waits for a replica's key reads, its `COMMIT`, its release records and for the embedded audit
/// sync hold no thread (a blocked thread per waiting release cost about a sixth of a release's CPU at 32
/// concurrent agents, docs/broker-scaling.md); the token and response signatures then run here (after an
/// embedded key store's release records, written on the blocking pool).
async fn release(
    broker: Arc<Broker>,
    req: pb::ReleaseRequest,
) -> crate::error::Result<crate::service::Released> {
    let staged = Arc::clone(&broker).stage_release_awaiting(req).await?;
    let durable = staged.durable().await?;
    broker.finish_release_awaiting(durable).await
}

fn internal(e: &Error) -> tonic::Status {
    tonic::Status::internal(e.to_string())
}

#[tonic::async_trait]
impl pb::key_broker_server::KeyBroker for KeyBrokerService {
    async fn challenge(
        &self,
        request: tonic::Request<pb::ChallengeRequest>,
    ) -> std::result::Result<tonic::Response<pb::ChallengeResponse>, tonic::Status> {
        limit(&self.0, Call::Challenge, &request)?;
        let req = request.into_inner();
        if req.tpm_ek_certificate.is_empty() != req.tpm_ak_public.is_empty() {
            return Err(tonic::Status::invalid_argument(
                "request: tpm_ek_certificate and tpm_ak_public go together",
            ));
        }
        let (nonce, ttl_seconds) =
            self.0.challenge().map_err(|e| tonic::Status::resource_exhausted(e.to_string()))?;
        let tpm_credential = if req.tpm_ek_certificate.is_empty() {
            None
        } else {
            let broker = Arc::clone(&self.0);
            // Certificate chain and RSA/ECDH work: off the async workers.
            let made = tokio::task::spawn_blocking(move || {
                broker.tpm_credential(&nonce, &req.tpm_ek_certificate, &req.tpm_ak_public)
            })
            .await
            .map_err(|e| tonic::Status::internal(format!("broker: challenge task failed: {e}")))?;
            match made {
                None => None,
                Some(Ok(c)) => Some(sealroom_proto::attestation::v1::TpmCredential {
                    id_object: c.id_object,
                    encrypted_secret: c.encrypted_secret,
                }),
                Some(Err(e)) => return Err(tonic::Status::failed_precondition(e.to_string())),
            }
        };
        Ok(tonic::Response::new(pb::ChallengeResponse {
            nonce: nonce.0.to_vec(),
            ttl_seconds,
            tpm_credential,
        }))
    }

    async fn release(
        &self,
        request: tonic::Request<pb::ReleaseRequest>,
    ) -> std::result::Result<tonic::Response<pb::ReleaseResponse>, tonic::Status> {
        limit(&self.0, Call::Release, &request)?;
        let req = request.into_inner();
        Broker::check_request(&req.key_ids).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let released = tokio::spawn(release(Arc::clone(&self.0), req))
            .await
            .map_err(|e| tonic::Status::internal(format!("broker: release task failed: {e}")))?
            .map_err(|e| internal(&e))?;
        Ok(tonic::Response::new(pb::ReleaseResponse {
            keys: released
                .keys
                .into_iter()
                .map(|(key_id, s)| pb::SealedKey {
                    key_id,
                    kem: sealroom_proto::attestation::v1::KemId::from(s.kem).into(),
                    encapsulated_key: s.encapsulated_key,
                    ciphertext: s.ciphertext,
                })
                .collect(),
            refusals: released
                .refusals
                .into_iter()
                .map(|(key_id, r)| pb::Refusal { key_id, reason: r.reason })
                .collect(),
            attestation_result: released.attestation_result,
            broker_public_key: released.broker_public_key,
            signature: released.signature,
        }))
    }

    async fn receipt(
        &self,
        request: tonic::Request<pb::ReceiptRequest>,
    ) -> std::result::Result<tonic::Response<pb::ReceiptResponse>, tonic::Status> {
        limit(&self.0, Call::Release, &request)?;
        crate::receipt::serve(Arc::clone(&self.0), request.into_inner()).await
    }
}
