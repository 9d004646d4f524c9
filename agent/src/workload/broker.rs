//! The key broker client: asks `sealroom broker` for the workload's data keys with fresh evidence. Called only
//! after the launch separator is measured, so the evidence's runtime log shows exactly the workload that will
//! receive the keys; the broker's verifier and the data provider's policy decide, and every refusal comes back
//! with its one-line reason. Keys arrive sealed (HPKE) to the agent's TEE key and are opened here.
//!
//! HPKE base mode does not say who sealed a key, so nothing from the broker is used unless the response is
//! signed by the broker key the spec pins (and measured): the signature covers the nonce, this TEE key, every
//! key id with its sealed key's digest, every refusal and the attestation result
//! ([`sealroom_measurements::broker_response`]). A fake broker or a man in the middle can then refuse, but not
//! hand the workload a key of its choosing. An `https://` broker is reached over TLS, trusting only the spec's
//! `broker_ca`.

use sealroom_measurements::binding::Nonce;
use sealroom_measurements::broker_response::{self, ReleaseStatement, TeeKeyField};
use sealroom_proto::keybroker::v1 as kb;
use sealroom_proto::keybroker::v1::key_broker_client::KeyBrokerClient;

use super::KeyProvider;
use super::spec::BrokerEndpoint;
use crate::error::{Error, Result};
use crate::service::{MAX_ENCRYPTED_SECRET_LEN, MAX_ID_OBJECT_LEN};
use crate::worker::AttestationHandle;

const STAGE: &str = "keys";
/// The HPKE `info` prefix (keybroker.proto).
const INFO_PREFIX: &[u8] = b"sealroom.keybroker.v1/key";
/// Largest evidence + response exchanged with the broker (key release and receipt).
const MAX_MESSAGE: usize = 4 << 20;

fn err(reason: impl Into<String>) -> Error {
    Error::workload(STAGE, reason)
}

/// An error and its causes on one line (a transport error's own text is only "transport error"; the cause says
/// which: connection refused, a certificate from another CA, …).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}

/// A gRPC client of `broker`, a fresh nonce from its `Challenge` and, on the EK path, the activated TPM
/// credential: the start of every exchange that presents evidence (key release here, the output receipt in
/// [`super::receipt`]). An `https://` broker is trusted only through the spec's `broker_ca`. Errors name `stage`.
///
/// A TPM with an EK certificate names itself in the challenge (EK certificate and AK, as `GetTpmIdentity`); a
/// broker serving with `--tpm-ek-ca` answers with a credential only that TPM can activate, for that AK and this
/// nonce (docs/tpm-ek.md), and its secret goes back with the evidence. A broker without EK CAs sends none and
/// the AK must be trusted otherwise (GCE AK certificate, enrolled AK).
pub(super) async fn connect_and_challenge(
    endpoint: &BrokerEndpoint,
    handle: &AttestationHandle,
    stage: &'static str,
) -> Result<(KeyBrokerClient<tonic::transport::Channel>, Nonce, Option<kb::TpmActivation>)> {
    let err = |reason: String| Error::workload(stage, reason);
    let broker = endpoint.url.as_str();
    let mut builder = tonic::transport::Endpoint::from_shared(broker.to_owned())
        .map_err(|e| err(format!("broker {broker:?}: {e}")))?;
    if let Some(pem) = &endpoint.tls_ca {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem))
            .assume_http2(true);
        builder = builder.tls_config(tls).map_err(|e| err(format!("broker {broker}: TLS: {e}")))?;
    }
    let channel = builder
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(60))
        .connect()
        .await
        .map_err(|e| err(format!("broker {broker}: unreachable: {}", error_chain(&e))))?;
    let mut client = KeyBrokerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let identity = handle.info().tpm_identity.clone();
    let request = identity.as_ref().map_or_else(kb::ChallengeRequest::default, |(ek, ak)| {
        kb::ChallengeRequest { tpm_ek_certificate: ek.clone(), tpm_ak_public: ak.clone() }
    });
    let challenge = client
        .challenge(request)
        .await
        .map_err(|s| err(format!("broker {broker}: challenge: {}", s.message())))?
        .into_inner();
    let nonce = Nonce::from_slice(&challenge.nonce).map_err(|e| err(format!("broker nonce: {e}")))?;
    let activation = match (challenge.tpm_credential, identity) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(err(format!(
                "broker {broker}: a TPM credential came back, but no TPM identity was sent"
            )));
        }
        (Some(c), Some((ek_certificate, _))) => {
            for (field, len, limit) in [
                ("id_object", c.id_object.len(), MAX_ID_OBJECT_LEN),
                ("encrypted_secret", c.encrypted_secret.len(), MAX_ENCRYPTED_SECRET_LEN),
            ] {
                if len == 0 || len > limit {
                    return Err(err(format!(
                        "broker {broker}: TPM credential {field} of {len} bytes, expected 1..={limit}"
                    )));
                }
            }
            let secret = handle
                .activate_credential(c.id_object, c.encrypted_secret)
                .await
                .map_err(|e| err(format!("broker {broker}: TPM credential activation: {e}")))?;
            Some(kb::TpmActivation { ek_certificate, secret })
        }
    };
    Ok((client, nonce, activation))
}

/// Releases keys through the broker's gRPC API, with evidence from the agent's worker.
#[derive(Debug, Clone)]
pub struct BrokerKeys {
    handle: AttestationHandle,
}

impl BrokerKeys {
    /// A client presenting evidence from `handle`.
    #[must_use]
    pub fn new(handle: AttestationHandle) -> Self {
        Self { handle }
    }
}

fn info(key_id: &str) -> Vec<u8> {
    let mut v = INFO_PREFIX.to_vec();
    v.push(0);
    v.extend_from_slice(key_id.as_bytes());
    v
}

/// Checks that `response` is signed by the pinned broker key over exactly what it says, for this nonce and
/// TEE key (`kem_id`, `tee_key`). Nothing of an unsigned or foreign response may be used, not even a refusal.
///
/// # Errors
/// One line: unsigned, signed by another broker, or changed on the way.
pub fn check_release_signature(
    pinned_key_id: &str,
    nonce: &Nonce,
    tee_key: TeeKeyField<'_>,
    response: &kb::ReleaseResponse,
) -> Result<()> {
    let digests: Vec<(&str, [u8; 32])> = response
        .keys
        .iter()
        .map(|k| {
            let kem = u16::try_from(k.kem).unwrap_or(u16::MAX);
            (k.key_id.as_str(), broker_response::sealed_key_digest(kem, &k.encapsulated_key, &k.ciphertext))
        })
        .collect();
    let refusals: Vec<(&str, &str)> =
        response.refusals.iter().map(|r| (r.key_id.as_str(), r.reason.as_str())).collect();
    let input = broker_response::release_signing_input(&ReleaseStatement {
        nonce,
        tee_key,
        keys: &digests,
        refusals: &refusals,
        attestation_result: &response.attestation_result,
    });
    broker_response::verify(pinned_key_id, &response.broker_public_key, &response.signature, &input)
        .map_err(|e| err(e.to_string()))
}

/// `provider NAME (KID)`: how the console and errors name a data provider's broker.
#[must_use]
pub fn provider_label(endpoint: &BrokerEndpoint) -> String {
    format!("provider {} ({})", endpoint.name, endpoint.key_id)
}

impl KeyProvider for BrokerKeys {
    /// Every error names the provider: `provider NAME (KID) refused key ID: REASON` for a signed refusal,
    /// `provider NAME (KID): …` for anything else (unreachable, unsigned or foreign response, a key that does
    /// not open).
    async fn release(&self, endpoint: &BrokerEndpoint, key_ids: &[String]) -> Result<Vec<(String, Vec<u8>)>> {
        let label = provider_label(endpoint);
        self.release_from(endpoint, key_ids, &label).await.map_err(|e| match e {
            Error::Workload { stage, reason } if !reason.starts_with(&label) => {
                Error::workload(stage, format!("{label}: {reason}"))
            }
            other => other,
        })
    }
}

impl BrokerKeys {
    async fn release_from(
        &self,
        endpoint: &BrokerEndpoint,
        key_ids: &[String],
        label: &str,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let broker = endpoint.url.as_str();
        let (mut client, nonce, tpm_activation) =
            connect_and_challenge(endpoint, &self.handle, STAGE).await?;
        let evidence = self.handle.evidence(nonce).await?;
        let kem_id = evidence.tee_public_key.kem().id();
        let tee_key = evidence.tee_public_key.as_bytes().to_vec();
        let response = client
            .release(kb::ReleaseRequest {
                nonce: nonce.0.to_vec(),
                evidence: Some(evidence.into()),
                key_ids: key_ids.to_vec(),
                tpm_activation,
            })
            .await
            .map_err(|s| err(format!("broker {broker}: release: {}", s.message())))?
            .into_inner();
        check_release_signature(&endpoint.key_id, &nonce, TeeKeyField { kem_id, key: &tee_key }, &response)?;
        if let Some(r) = response.refusals.first() {
            return Err(err(format!("{label} refused key {}: {}", r.key_id, r.reason)));
        }
        let mut out = Vec::with_capacity(key_ids.len());
        for id in key_ids {
            let sealed = response
                .keys
                .iter()
                .find(|k| k.key_id == *id)
                .ok_or_else(|| err(format!("broker returned no key and no refusal for {id}")))?;
            let material = self
                .handle
                .key()
                .open(&sealed.encapsulated_key, &info(id), &sealed.ciphertext, &nonce.0)
                .map_err(|e| err(format!("key {id}: {e}")))?;
            out.push((id.clone(), material));
        }
        Ok(out)
    }
}
