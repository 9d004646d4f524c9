//! Sealed inputs the agent accepts before launch (`Attestation.SubmitInput`), from parties without a key broker.
//!
//! The workload launcher opens the inbox once every launch event but the separator is measured
//! ([`SealedInbox::await_inputs`], with the names and sizes the spec lists) and closes it before it measures the
//! separator; a submission is judged under the same lock that closes the inbox, so no input is measured after
//! the separator. Each accepted input is opened with the agent's TEE key and measured as a `sealed_input` launch
//! event (name, plaintext sha256, reply key) before it is admitted. Refused, each with a one-line reason: no
//! workload waiting yet, the inbox closed (the separator is measured or about to be), an envelope seen before (a
//! replay), a malformed envelope, a name that differs from the request's or that the spec does not list, a name
//! already received, an envelope sealed to another TEE key, one that does not open, a plaintext over the spec's
//! `max_bytes`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sealroom_measurements::cel::{CelRecord, RuntimeEvent};
use sealroom_measurements::sealed::{self, SealedInput, TAG_LEN};
use tokio::sync::{Mutex, Notify};

use crate::error::{Error, Result};
use crate::tee_key::TeeKey;
use crate::workload::Measurer;

/// One opened sealed input.
#[derive(Clone, PartialEq, Eq)]
pub struct Received {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// `sha256:<hex>` of the plaintext, as measured.
    pub digest: String,
    /// The sender's reply key.
    pub reply_key: [u8; 32],
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the plaintext: it is the sender's secret.
        f.debug_struct("Received").field("digest", &self.digest).finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Phase {
    /// No workload waits for sealed inputs (yet).
    Idle,
    /// The workload waits for these names, each with its size limit.
    Awaiting(BTreeMap<String, u64>),
    /// The inbox closed: the reason a late input is refused.
    Closed(String),
}

#[derive(Debug)]
struct State {
    phase: Phase,
    received: BTreeMap<String, Received>,
    /// SHA-256 of every envelope accepted (at most one per expected name, so bounded): a resubmission is a
    /// replay.
    seen: BTreeSet<[u8; 32]>,
    /// Reply keys of the inputs handed to the workload (sealed outputs may go to one).
    reply_keys: BTreeMap<String, [u8; 32]>,
}

/// The agent's inbox of sealed inputs (one per agent, shared by the gRPC service and the workload launcher).
#[derive(Debug)]
pub struct SealedInbox {
    state: Mutex<State>,
    arrived: Notify,
}

impl Default for SealedInbox {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                phase: Phase::Idle,
                received: BTreeMap::new(),
                seen: BTreeSet::new(),
                reply_keys: BTreeMap::new(),
            }),
            arrived: Notify::new(),
        }
    }
}

fn refuse(reason: String) -> Error {
    Error::SealedInput { late: false, reason }
}

fn late(reason: String) -> Error {
    Error::SealedInput { late: true, reason }
}

fn short_key(k: &[u8]) -> String {
    hex::encode(k.get(..8).unwrap_or(k))
}

impl SealedInbox {
    /// An empty, idle inbox.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Judges, opens and measures one submitted envelope (see the module documentation).
    ///
    /// # Errors
    /// [`Error::SealedInput`] with the reason, or the measurement's failure (then nothing was admitted).
    pub async fn submit<M: Measurer>(
        &self,
        name: &str,
        envelope: &[u8],
        key: &TeeKey,
        measurer: &M,
    ) -> Result<CelRecord> {
        let mut st = self.state.lock().await;
        let expected = match &st.phase {
            Phase::Idle => {
                return Err(late(format!(
                    "{name:?} refused: no workload is waiting for sealed inputs (not measured yet, or it expects none)"
                )));
            }
            Phase::Closed(why) => return Err(late(format!("{name:?} refused: {why}"))),
            Phase::Awaiting(expected) => expected.clone(),
        };
        let fingerprint = sealroom_measurements::digest::sha256(envelope);
        if st.seen.contains(&fingerprint) {
            return Err(refuse(format!("{name:?} refused: replay: this envelope was already submitted")));
        }
        let env = SealedInput::parse(envelope).map_err(|e| refuse(format!("{name:?} refused: {e}")))?;
        if env.name != name {
            return Err(refuse(format!(
                "{name:?} refused: the envelope is sealed for input {:?} (the name is bound into it)",
                env.name
            )));
        }
        let Some(max_bytes) = expected.get(name).copied() else {
            return Err(refuse(format!(
                "unexpected input name {name:?}: the workload waits for {}",
                expected.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
            )));
        };
        if st.received.contains_key(name) {
            return Err(refuse(format!("{name:?} refused: an input of this name was already received")));
        }
        let ours = key.public().as_bytes();
        if env.tee_key.as_slice() != ours {
            return Err(refuse(format!(
                "{name:?} refused: sealed to another TEE key ({}…), this agent's is {}…",
                short_key(&env.tee_key),
                short_key(ours)
            )));
        }
        let plain_len = u64::try_from(env.ciphertext.len().saturating_sub(TAG_LEN)).unwrap_or(u64::MAX);
        if plain_len > max_bytes {
            return Err(refuse(format!("{name:?} refused: {plain_len} bytes, the spec allows {max_bytes}")));
        }
        let plaintext = key
            .open(&env.enc, &env.info(), &env.ciphertext, &env.aad())
            .map_err(|_| refuse(format!("{name:?} refused: does not open with this agent's TEE key")))?;
        let digest = format!("sha256:{}", hex::encode(sealroom_measurements::digest::sha256(&plaintext)));
        let event = RuntimeEvent::SealedInput {
            name: name.to_owned(),
            digest: digest.clone(),
            reply_key: sealed::key_text(&env.reply_key),
        };
        let record = measurer.measure(event).await?;
        st.seen.insert(fingerprint);
        st.received.insert(name.to_owned(), Received { plaintext, digest, reply_key: env.reply_key });
        drop(st);
        self.arrived.notify_waiters();
        Ok(record)
    }

    /// Opens the inbox for `expected` (name → largest plaintext) and waits until each arrived, then closes it
    /// and returns them. Called once, after every launch event but the separator was measured.
    ///
    /// # Errors
    /// A second call, or `timeout` passing with inputs missing (the inbox is then closed).
    pub async fn await_inputs(
        &self,
        expected: BTreeMap<String, u64>,
        timeout: Duration,
    ) -> Result<BTreeMap<String, Received>> {
        {
            let mut st = self.state.lock().await;
            if !matches!(st.phase, Phase::Idle) {
                return Err(Error::workload("sealed inputs", "the inbox was already opened once"));
            }
            st.phase = Phase::Awaiting(expected.clone());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state.lock().await;
                let missing: Vec<&str> =
                    expected.keys().filter(|n| !st.received.contains_key(*n)).map(String::as_str).collect();
                if missing.is_empty() {
                    st.phase = Phase::Closed(
                        "the workload has all its sealed inputs and is launching: sealed inputs are accepted \
                         before the launch separator only"
                            .into(),
                    );
                    let received = std::mem::take(&mut st.received);
                    st.reply_keys = received.iter().map(|(n, r)| (n.clone(), r.reply_key)).collect();
                    return Ok(received);
                }
                if tokio::time::Instant::now() >= deadline {
                    let missing = missing.join(", ");
                    st.phase = Phase::Closed(format!(
                        "the launch gave up waiting for sealed inputs ({missing} missing after {} s)",
                        timeout.as_secs()
                    ));
                    return Err(Error::workload(
                        "sealed inputs",
                        format!("{missing} not received within {} s", timeout.as_secs()),
                    ));
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Closes an inbox no workload opened: the launch goes on without sealed inputs, and any submitted now is
    /// refused as late.
    pub async fn close_for_launch(&self) {
        let mut st = self.state.lock().await;
        if matches!(st.phase, Phase::Idle) {
            st.phase = Phase::Closed(
                "the workload was launched without sealed inputs: they are accepted before the launch separator only"
                    .into(),
            );
        }
    }

    /// The reply key that came with sealed input `name` (once the workload has its inputs).
    pub async fn reply_key(&self, name: &str) -> Option<[u8; 32]> {
        self.state.lock().await.reply_keys.get(name).copied()
    }
}
