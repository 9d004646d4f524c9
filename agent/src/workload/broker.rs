//! The key broker client: asks `sealroom broker` for the workload's data keys with fresh evidence. Called only
//! after the launch separator is measured, so the evidence's runtime log shows exactly the workload that will
//! receive the keys; the broker's verifier and the data provider's policy decide, and every refusal comes back
//! with its one-line reason. Keys arrive sealed (HPKE) to the agent's TEE key and are opened here.

use sealroom_measurements::binding::Nonce;
use sealroom_proto::keybroker::v1 as kb;
use sealroom_proto::keybroker::v1::key_broker_client::KeyBrokerClient;

use super::KeyProvider;
use crate::error::{Error, Result};
use crate::worker::AttestationHandle;

const STAGE: &str = "keys";
/// The HPKE `info` prefix (keybroker.proto).
const INFO_PREFIX: &[u8] = b"sealroom.keybroker.v1/key";
/// Largest evidence + response exchanged with the broker (key release and receipt).
const MAX_MESSAGE: usize = 4 << 20;

fn err(reason: impl Into<String>) -> Error {
    Error::workload(STAGE, reason)
}

/// A gRPC client of `broker` (its URL) and a fresh nonce from its `Challenge`: the start of every exchange
/// that presents evidence (key release here, the output receipt in [`super::receipt`]). Errors name `stage`.
pub(super) async fn connect_and_challenge(
    broker: &str,
    stage: &'static str,
) -> Result<(KeyBrokerClient<tonic::transport::Channel>, Nonce)> {
    let err = |reason: String| Error::workload(stage, reason);
    let channel = tonic::transport::Endpoint::from_shared(broker.to_owned())
        .map_err(|e| err(format!("broker {broker:?}: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(60))
        .connect()
        .await
        .map_err(|e| err(format!("broker {broker}: unreachable: {e}")))?;
    let mut client = KeyBrokerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let challenge = client
        .challenge(kb::ChallengeRequest {})
        .await
        .map_err(|s| err(format!("broker {broker}: challenge: {}", s.message())))?
        .into_inner();
    let nonce = Nonce::from_slice(&challenge.nonce).map_err(|e| err(format!("broker nonce: {e}")))?;
    Ok((client, nonce))
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

impl KeyProvider for BrokerKeys {
    async fn release(&self, broker: &str, key_ids: &[String]) -> Result<Vec<(String, Vec<u8>)>> {
        let (mut client, nonce) = connect_and_challenge(broker, STAGE).await?;
        let evidence = self.handle.evidence(nonce).await?;
        let response = client
            .release(kb::ReleaseRequest {
                nonce: nonce.0.to_vec(),
                evidence: Some(evidence.into()),
                key_ids: key_ids.to_vec(),
            })
            .await
            .map_err(|s| err(format!("broker {broker}: release: {}", s.message())))?
            .into_inner();
        if let Some(r) = response.refusals.first() {
            return Err(err(format!("broker refused key {}: {}", r.key_id, r.reason)));
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
