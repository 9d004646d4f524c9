//! The `sealroom.keybroker.v1.KeyBroker` service: `Challenge` and `Release`.
//!
//! Release, in order, each step refusing every requested key with a one-line reason when it fails: the nonce is
//! redeemed (single use, within its TTL); the evidence is decoded and must carry the request's nonce; an
//! activated TPM credential, when presented, must be the one issued for this nonce ([`ek_path`]); the
//! verifier appraises it ([`Appraiser`]); the signed binding must bind this nonce and the TEE key; then per key:
//! the key must exist and not be revoked, its owner's policy must allow the appraisal, and the key is sealed to
//! the TEE key. Every decision is appended to the audit log and fsync'd *before* the reply (decisions arriving
//! together share one fsync: [`GroupCommitLog`]); when the log cannot be written nothing is released. A request
//! refused before any key is looked at (nonce, evidence, verifier, binding) is one audit record however many
//! key ids it names, so an unauthenticated caller cannot make the broker write (and fsync) 64 records at a time.
//!
//! Every response is signed with the broker's key over the nonce, the TEE key, the key ids and the sealed keys'
//! digests ([`sealroom_measurements::broker_response`], `docs/binding.md`), and every release is recorded in
//! the key store ([`KeyRecords::record_releases`]) so that a receipt is issued only for a key this broker itself
//! released to that TEE key. `Challenge` and `Release` are rate-limited per peer ([`PeerLimiter`]).

use std::net::IpAddr;
use std::sync::Arc;

use sealroom_measurements::binding::{self, Nonce};
use sealroom_measurements::broker_response::{self, ReleaseStatement, TeeKeyField};
use sealroom_measurements::evidence::Evidence;
use sealroom_proto::keybroker::v1 as pb;
use sealroom_verifier::claims::{PlatformClaims, platform_name};
use sealroom_verifier::ear::{Status, Submodule};
use sealroom_verifier::tpm::credential::{ActivatedAk, Credential};
use sha2::{Digest, Sha256};

use super::appraisal::{Appraisal, Appraiser, BROKER_POLICY_ID, SignedBinding};
use super::appraisal_pool::AppraisalPool;
use super::audit::{AuditEntry, AuditLog, AuditRecord, Decision, GroupCommitLog};
use super::ear_claims::{RefusedKey, ReleaseSubmodule, TokenClaims, appraised};
use super::ek_path::{self, EkPath};
use super::keystore::{KeyStore, ReleasableKey, ReleaseRecord, Unreleasable};
use super::nonce::{NonceBook, NonceRefusal};
use super::policy::{GoldenSet, Policy, Verdict};
use super::ratelimit::{Limited, PeerLimiter, RateLimit};
use super::seal;
use super::store::{
    AnchoredHead, Awaitable, Durability, EmbeddedLedger, KeyRead, KeyRecords, Ledger, Recorded, Submitted,
};
use super::token::{Signer, TokenKind};
use super::{Clock, Randomness, check_key_id};
use crate::error::{Error, Result};

/// Most keys in one request (keybroker.proto).
pub const MAX_KEYS_PER_REQUEST: usize = 64;

/// A refusal: the rule that refused and the one-line reason (which starts with the rule's layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// "nonce", "evidence", "tpm credential", "verifier", "binding", "key store", `"policy.<rule>"`,
    /// "workload.launch".
    pub rule: String,
    /// One line.
    pub reason: String,
}

impl Refused {
    pub(super) fn new(rule: &str, reason: impl Into<String>) -> Self {
        Self { rule: rule.to_owned(), reason: reason.into() }
    }

    fn from_error(rule: &str, e: &dyn std::fmt::Display) -> Self {
        Self::new(rule, e.to_string().replace('\n', " "))
    }
}

/// The outcome of a release, before it is put on the wire.
#[derive(Debug)]
pub struct Released {
    /// Sealed keys.
    pub keys: Vec<(String, seal::Sealed)>,
    /// Refused keys.
    pub refusals: Vec<(String, Refused)>,
    /// The EAR JWT.
    pub attestation_result: String,
    /// The audit records written for this release.
    pub audit: Vec<AuditRecord>,
    /// The broker's public key (uncompressed SEC1).
    pub broker_public_key: Vec<u8>,
    /// Its signature over the response statement.
    pub signature: Vec<u8>,
}

/// Which unauthenticated call a peer makes (each has its own rate limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `Challenge`.
    Challenge,
    /// `Release` or `Receipt` (each costs an appraisal and an audit record).
    Release,
}

/// The key broker's state and decisions, independent of gRPC.
#[derive(Debug)]
pub struct Broker {
    pub(super) clock: Arc<dyn Clock>,
    rng: Arc<dyn Randomness>,
    appraiser: Arc<dyn Appraiser>,
    pub(super) store: Arc<dyn KeyRecords>,
    pub(super) golden: GoldenSet,
    pub(super) signer: Signer,
    pub(super) ledger: Arc<dyn Ledger>,
    challenge_limit: PeerLimiter,
    release_limit: PeerLimiter,
    /// The EK path (`--tpm-ek-ca`): without it no credential is issued and an activation presented is refused.
    ek: Option<Arc<EkPath>>,
    /// Where the gRPC service appraises releases ([`Broker::stage_release_awaiting`]) and receipts.
    appraisal_pool: AppraisalPool,
}

/// Everything a broker is made of.
#[derive(Debug)]
pub struct BrokerParts {
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Randomness source.
    pub rng: Arc<dyn Randomness>,
    /// The evidence verifier.
    pub appraiser: Arc<dyn Appraiser>,
    /// The key store (shared with the admin endpoint).
    pub store: Arc<KeyStore>,
    /// Verified golden documents.
    pub golden: GoldenSet,
    /// The token signer.
    pub signer: Signer,
    /// Nonce book (sets the TTL).
    pub nonces: NonceBook,
    /// The opened audit log.
    pub audit: AuditLog,
}

/// A broker over any store: the embedded one ([`BrokerParts`]) or a replica's on PostgreSQL
/// ([`super::pg`]).
#[derive(Debug)]
pub struct StoreParts {
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Randomness source.
    pub rng: Arc<dyn Randomness>,
    /// The evidence verifier.
    pub appraiser: Arc<dyn Appraiser>,
    /// Keys and policies (shared with the admin endpoint).
    pub store: Arc<dyn KeyRecords>,
    /// Verified golden documents.
    pub golden: GoldenSet,
    /// The token signer.
    pub signer: Signer,
    /// Nonces and the audit chain.
    pub ledger: Arc<dyn Ledger>,
}

impl Broker {
    /// Assembles a broker.
    #[must_use]
    pub fn new(p: BrokerParts) -> Self {
        Self::on_store(StoreParts {
            clock: p.clock,
            rng: p.rng,
            appraiser: p.appraiser,
            store: p.store,
            golden: p.golden,
            signer: p.signer,
            ledger: Arc::new(EmbeddedLedger::new(p.nonces, GroupCommitLog::new(p.audit))),
        })
    }

    /// Assembles a broker over any store.
    #[must_use]
    pub fn on_store(p: StoreParts) -> Self {
        Self {
            clock: p.clock,
            rng: p.rng,
            appraiser: p.appraiser,
            store: p.store,
            golden: p.golden,
            signer: p.signer,
            ledger: p.ledger,
            challenge_limit: PeerLimiter::new(RateLimit::CHALLENGE),
            release_limit: PeerLimiter::new(RateLimit::RELEASE),
            ek: None,
            appraisal_pool: AppraisalPool::per_core(),
        }
    }

    /// Appraises releases on `threads` threads instead of one per core ([`AppraisalPool`]).
    #[must_use]
    pub fn with_appraisal_threads(mut self, threads: std::num::NonZeroUsize) -> Self {
        self.appraisal_pool = AppraisalPool::new(threads, AppraisalPool::THREAD_NAME);
        self
    }

    /// How many releases are appraised at once.
    #[must_use]
    pub fn appraisal_threads(&self) -> std::num::NonZeroUsize {
        self.appraisal_pool.threads()
    }

    /// Where releases and receipts are appraised.
    pub(crate) fn appraisal_pool(&self) -> &AppraisalPool {
        &self.appraisal_pool
    }

    /// Trusts TPM AKs that credential activation proves resident in a TPM whose EK certificate chains to one of
    /// `ek`'s CAs (docs/tpm-ek.md): `Challenge` then answers a TPM identity with a credential, and `Release`
    /// and `Receipt` accept its activation.
    #[must_use]
    pub fn with_tpm_ek_path(mut self, ek: EkPath) -> Self {
        self.ek = Some(Arc::new(ek));
        self
    }

    /// The id (RFC 7638 thumbprint) of the key that signs tokens and responses: what workload specs pin.
    #[must_use]
    pub fn signer_key_id(&self) -> &str {
        self.signer.kid()
    }

    /// Replaces the per-peer rate limits ([`RateLimit::CHALLENGE`] and [`RateLimit::RELEASE`] by default).
    #[must_use]
    pub fn with_rate_limits(mut self, challenge: RateLimit, release: RateLimit) -> Self {
        self.challenge_limit = PeerLimiter::new(challenge);
        self.release_limit = PeerLimiter::new(release);
        self
    }

    /// Takes one `call` from `peer`'s budget.
    ///
    /// # Errors
    /// One line saying that the peer must wait, and how long.
    pub fn check_rate(&self, call: Call, peer: IpAddr) -> Result<()> {
        let (limiter, name) = match call {
            Call::Challenge => (&self.challenge_limit, "Challenge"),
            Call::Release => (&self.release_limit, "Release/Receipt"),
        };
        limiter.check(peer, self.clock.now_ms()).map_err(|l| match l {
            Limited::Rate { retry_after_ms } => Error::check(
                "rate limit",
                format!("too many {name} calls from {peer}; retry in {retry_after_ms} ms"),
            ),
            Limited::Busy => Error::check("rate limit", "too many peers at once; retry later"),
        })
    }

    /// A fresh nonce and its TTL in seconds.
    ///
    /// # Errors
    /// When randomness fails or too many challenges are outstanding.
    pub fn challenge(&self) -> Result<(Nonce, u32)> {
        self.ledger.issue(self.rng.as_ref(), self.clock.now_ms())
    }

    /// The credential for a TPM identity (EK certificate, AK TPMT_PUBLIC) a `Challenge` named, bound to its
    /// `nonce`: `None` when this broker has no EK CAs (the agent then gets a plain nonce).
    ///
    /// # Errors
    /// One line: the EK certificate does not chain to a configured EK CA now, or the AK is not a TPM-resident
    /// restricted signing key.
    pub fn tpm_credential(
        &self,
        nonce: &Nonce,
        ek_certificate: &[u8],
        ak_public: &[u8],
    ) -> Option<Result<Credential>> {
        let at = i64::try_from(self.clock.now_ms() / 1000).unwrap_or(i64::MAX);
        self.ek.as_ref().map(|ek| ek.credential(nonce, ek_certificate, ak_public, at))
    }

    /// The AK a request's activated credential proves (`None` without one). Refused when this broker issues no
    /// credentials, the evidence has no TPM quote, or the secret is not the one issued for this nonce, the
    /// evidence's AK and the EK certificate (which must chain to a configured EK CA at `now`).
    fn activation(
        &self,
        nonce: &Nonce,
        activation: Option<&pb::TpmActivation>,
        evidence: &Evidence,
        now: u64,
    ) -> std::result::Result<Option<ActivatedAk>, Refused> {
        let Some(activation) = activation else { return Ok(None) };
        let refuse = |why: &str| Refused::new(ek_path::RULE, format!("{}: {why}", ek_path::RULE));
        let Some(ek) = &self.ek else {
            return Err(refuse(
                "an activated credential was presented, but this broker issues none (no --tpm-ek-ca)",
            ));
        };
        let Some(tpm) = &evidence.tpm else {
            return Err(refuse("an activated credential was presented with evidence that has no TPM quote"));
        };
        let at = i64::try_from(now / 1000).unwrap_or(i64::MAX);
        ek.activated(nonce, activation, &tpm.ak_public, at)
            .map(Some)
            .map_err(|e| Refused::from_error(ek_path::RULE, &e))
    }

    /// Checks the request's shape: 1..=64 key ids, each a valid id, no duplicates.
    ///
    /// # Errors
    /// One line saying what is wrong (the request is rejected as a whole, nothing is decided).
    pub fn check_request(key_ids: &[String]) -> Result<()> {
        if key_ids.is_empty() || key_ids.len() > MAX_KEYS_PER_REQUEST {
            return Err(Error::check("request", format!("{} key ids, expected 1..=64", key_ids.len())));
        }
        for (i, id) in key_ids.iter().enumerate() {
            check_key_id(id)?;
            if key_ids.get(..i).is_some_and(|before| before.contains(id)) {
                return Err(Error::check("request", format!("key id {id} requested twice")));
            }
        }
        Ok(())
    }

    /// The first step: the presented nonce must be one this broker (or a fellow replica) issued, unexpired and
    /// not used. Its single use is final once the decision is recorded ([`Ledger::record`]).
    pub(super) fn check_nonce(&self, raw: &[u8], now: u64) -> std::result::Result<Nonce, Refused> {
        let nonce = Nonce::from_slice(raw).map_err(|e| Refused::from_error("nonce", &e))?;
        self.ledger.check(&nonce, now).map_err(|r| Refused::new("nonce", r.to_string()))?;
        Ok(nonce)
    }

    /// Steps shared by all keys after the nonce: evidence decoding, appraisal, binding.
    /// Takes the evidence by value: it is converted without a copy.
    pub(super) fn appraise(
        &self,
        nonce: Nonce,
        evidence: Option<WireEvidence>,
        activation: Option<&pb::TpmActivation>,
        now: u64,
    ) -> std::result::Result<(Nonce, Evidence, Appraisal), Refused> {
        let pb_evidence = evidence.ok_or_else(|| Refused::new("evidence", "evidence: missing"))?;
        let evidence = Evidence::try_from(pb_evidence).map_err(|e| Refused::from_error("evidence", &e))?;
        if evidence.nonce != nonce {
            return Err(Refused::new(
                "binding",
                "binding: evidence was produced for another nonce than the one presented",
            ));
        }
        let activated = self.activation(&nonce, activation, &evidence, now)?;
        let appraisal = self
            .appraiser
            .appraise_activated(&evidence, now, activated.as_ref())
            .map_err(|e| Refused::from_error("verifier", &e))?;
        let appraised = appraisal.platform.as_ref().map(PlatformClaims::platform);
        if appraised != Some(evidence.platform) {
            return Err(Refused::new(
                "verifier",
                format!(
                    "verifier: appraised platform {} differs from the evidence's {}",
                    appraised.map_or("(none)", platform_name),
                    platform_name(evidence.platform)
                ),
            ));
        }
        let key = &evidence.tee_public_key;
        let checked = match &appraisal.binding {
            Some(SignedBinding::ReportData(b)) => {
                binding::check_report_data(b.as_slice(), &nonce, key).map_err(Error::from)
            }
            Some(SignedBinding::TpmExtraData(b)) => {
                binding::check_tpm_extra_data(b.as_slice(), &nonce, key).map_err(Error::from)
            }
            None => Err(Error::check("binding", "the appraisal carries no signed binding value")),
        };
        checked.map_err(|e| Refused::from_error("binding", &e))?;
        Ok((nonce, evidence, appraisal))
    }

    /// The key, its stored policy and that policy's verdict on `appraisal`, for a release or a receipt, from
    /// the key store's answer `read` for `key_id`. A refusal when the key is unknown or revoked, its stored
    /// policy unreadable, or a rule refuses; `Err` only when the key store itself failed.
    pub(super) fn key_verdict(
        &self,
        key_id: &str,
        read: KeyRead,
        appraisal: &Appraisal,
    ) -> std::result::Result<std::result::Result<(ReleasableKey, Policy, Verdict), Refused>, Error> {
        let key = match read {
            Ok(k) => k,
            Err(Ok(Unreleasable::Unknown)) => {
                return Ok(Err(Refused::new("key store", format!("key store: unknown key id {key_id}"))));
            }
            Err(Ok(Unreleasable::Revoked { time_ms })) => {
                return Ok(Err(Refused::new(
                    "key store",
                    format!("key store: key {key_id} was revoked at {time_ms} ms"),
                )));
            }
            Err(Ok(Unreleasable::Tampered { reason })) => return Ok(Err(Refused::new("key store", reason))),
            Err(Err(e)) => return Err(e),
        };
        let policy = match Policy::parse(&key.info.policy) {
            Ok(p) => p,
            Err(e) => return Ok(Err(Refused::new("policy", format!("{e} (stored policy of key {key_id})")))),
        };
        let verdict = policy.evaluate(appraisal, &self.golden);
        if let Some((rule, reason)) = verdict.refusal() {
            return Ok(Err(Refused::new(rule, reason)));
        }
        Ok(Ok((key, policy, verdict)))
    }

    /// Decides one key for accepted evidence, on the key store's answer `read` for it.
    fn decide(
        &self,
        key_id: &str,
        read: KeyRead,
        nonce: &Nonce,
        evidence: &Evidence,
        appraisal: &Appraisal,
    ) -> std::result::Result<std::result::Result<(seal::Sealed, u32), Refused>, Error> {
        let (key, _, _) = match self.key_verdict(key_id, read, appraisal)? {
            Ok(k) => k,
            Err(refused) => return Ok(Err(refused)),
        };
        // A TEE key that is not a valid point (or failing randomness) means this key cannot be sealed: refuse it.
        Ok(seal::seal(&evidence.tee_public_key, key_id, nonce, &key.material, self.rng.as_ref())
            .map(|s| (s, key.info.version))
            .map_err(|e| Refused::from_error("hpke", &e)))
    }

    /// Handles one release request. Refusals are part of the result; `Err` means the broker itself failed (the
    /// audit log or the store could not be used) and nothing may be released. Blocks this thread while the
    /// decision becomes durable; the gRPC service awaits that instead ([`Broker::stage_release`]).
    ///
    /// # Errors
    /// A malformed request (no key decided), or an internal failure.
    pub fn release(&self, req: pb::ReleaseRequest) -> Result<Released> {
        let durable = self.stage_release(req)?.durable_blocking()?;
        self.finish_release(durable)
    }

    /// The first part of a release: the nonce, the appraisal, each key's decision, and the audit records of
    /// the decision (with the nonce's single use) written to the ledger. It is answered
    /// ([`Broker::finish_release`]) once [`StagedRelease::durable`] says the records are durable. Blocks
    /// this thread for the ledger's commit; the gRPC service uses [`Broker::stage_release_awaiting`].
    ///
    /// # Errors
    /// A malformed request (no key decided), or an internal failure.
    pub fn stage_release(&self, req: pb::ReleaseRequest) -> Result<StagedRelease> {
        let mut decided = self.decide_release(req)?;
        loop {
            let (redeemed, entries) = decided.to_record();
            let (recorded, durability) =
                self.ledger.record_pending(redeemed.as_ref(), &entries, decided.decision.now)?;
            match decided.recorded(recorded, durability)? {
                Ok(staged) => return Ok(staged),
                Err(replayed) => decided = replayed,
            }
        }
    }

    /// [`Broker::stage_release`] on a Tokio runtime: the nonce check, the appraisal, the decisions and the
    /// hand-over to the ledger run on the broker's [`AppraisalPool`]. Where the key store's reads are round
    /// trips to a database ([`KeyRecords::get_for_release_awaitable`]), accepted evidence's key reads are
    /// awaited between the appraisal and the decisions, and the wait for a ledger's commit that is a round trip
    /// (PostgreSQL) is awaited too: neither holds a thread, so a replica's releases in flight are bounded by
    /// its memory and the database, not by threads, and no appraisal thread waits on the network.
    ///
    /// # Errors
    /// As [`Broker::stage_release`].
    pub async fn stage_release_awaiting(self: Arc<Self>, req: pb::ReleaseRequest) -> Result<StagedRelease> {
        let broker = Arc::clone(&self);
        let appraised = self
            .appraisal_pool
            .run(move || {
                let assessed = broker.assess_release(req)?;
                if assessed.decides_keys() {
                    // Started here, so the reads overlap the hand-over back to the async worker.
                    let reads: Option<Vec<Awaitable<KeyRead>>> = assessed
                        .key_ids
                        .iter()
                        .map(|id| broker.store.get_for_release_awaitable(id))
                        .collect();
                    if let Some(reads) = reads {
                        return Ok(Err((assessed, reads)));
                    }
                }
                broker.record_decided(broker.decide_keys(assessed, None)?).map(Ok)
            })
            .await??;
        let mut recording = match appraised {
            Ok(recording) => recording,
            Err((assessed, reads)) => {
                let mut read = Vec::with_capacity(reads.len());
                for r in reads {
                    read.push(r.await);
                }
                let broker = Arc::clone(&self);
                self.appraisal_pool
                    .run(move || broker.record_decided(broker.decide_keys(assessed, Some(read))?))
                    .await??
            }
        };
        loop {
            match recording {
                Recording::Staged(staged) => return Ok(staged),
                Recording::Committing(decided, submitted) => {
                    let (recorded, durability) = submitted.outcome().await?;
                    recording = match decided.recorded(recorded, durability)? {
                        Ok(staged) => Recording::Staged(staged),
                        // Only a shared ledger answers a replay, and its submission only queues the commit.
                        Err(replayed) => self.record_decided(replayed)?,
                    };
                }
            }
        }
    }

    /// Hands `decided` to the ledger ([`Ledger::submit`]): staged when the ledger recorded it at once (the
    /// embedded ledger: the audit write, with the sync still to be awaited), or the decision with its commit
    /// still running (PostgreSQL).
    fn record_decided(&self, mut decided: DecidedRelease) -> Result<Recording> {
        loop {
            let (redeemed, entries) = decided.to_record();
            match self.ledger.submit(redeemed.as_ref(), &entries, decided.decision.now)? {
                Submitted::Written(recorded, durability) => match decided.recorded(recorded, durability)? {
                    Ok(staged) => return Ok(Recording::Staged(staged)),
                    Err(replayed) => decided = replayed,
                },
                committing @ Submitted::Committing(_) => {
                    return Ok(Recording::Committing(decided, committing));
                }
            }
        }
    }

    /// The nonce, the appraisal and each key's decision, before anything is recorded.
    fn decide_release(&self, req: pb::ReleaseRequest) -> Result<DecidedRelease> {
        self.decide_keys(self.assess_release(req)?, None)
    }

    /// The nonce and the appraisal: all of a release's work that needs no key store.
    fn assess_release(&self, req: pb::ReleaseRequest) -> Result<AssessedRelease> {
        let pb::ReleaseRequest { nonce: raw_nonce, evidence: wire_evidence, key_ids, tpm_activation } = req;
        Self::check_request(&key_ids)?;
        let now = self.clock.now_ms();
        let evidence_digest = wire_evidence.as_ref().map_or([0; 32], evidence_digest);
        // What the response signature names, as received, before the evidence is consumed by its decoding.
        let tee_key = ReceivedTeeKey::of(wire_evidence.as_ref());
        let redeemed = self.check_nonce(&raw_nonce, now);
        let accepted = redeemed
            .clone()
            .and_then(|nonce| self.appraise(nonce, wire_evidence, tpm_activation.as_ref(), now));
        Ok(AssessedRelease { raw_nonce, key_ids, now, evidence_digest, tee_key, redeemed, accepted })
    }

    /// Each key's decision for an assessed release: for accepted evidence, the key store's reads (`read`, one
    /// answer per key id in order, when they were awaited already), each key's policy and the HPKE seal.
    fn decide_keys(&self, assessed: AssessedRelease, read: Option<Vec<KeyRead>>) -> Result<DecidedRelease> {
        let AssessedRelease { raw_nonce, key_ids, now, evidence_digest, tee_key, redeemed, accepted } =
            assessed;
        let mut keys = Vec::new();
        let mut versions = Vec::new();
        let mut refusals = Vec::new();
        match &accepted {
            Err(refused) => {
                refusals.extend(key_ids.iter().map(|id| (id.clone(), refused.clone())));
            }
            Ok((nonce, evidence, appraisal)) => {
                let mut read = read.map(Vec::into_iter);
                for id in &key_ids {
                    let answer = match read.as_mut() {
                        Some(answers) => answers.next().ok_or_else(|| {
                            Error::check(
                                "key store",
                                format!("no read of key {id} was made for this release"),
                            )
                        })?,
                        None => self.store.get_for_release(id),
                    };
                    match self.decide(id, answer, nonce, evidence, appraisal)? {
                        Ok((sealed, version)) => {
                            keys.push((id.clone(), sealed));
                            versions.push(version);
                        }
                        Err(refused) => refusals.push((id.clone(), refused)),
                    }
                }
            }
        }
        Ok(DecidedRelease {
            redeemed: redeemed.ok(),
            key_ids,
            decision: ReleaseDecision {
                raw_nonce,
                now,
                evidence_digest,
                tee_key,
                keys,
                versions,
                refusals,
                accepted,
            },
        })
    }

    /// The second part of a release, once its records are durable: the key store's release records (for
    /// receipts), the signed token and the signed response. Blocks this thread for the key store's write; the
    /// gRPC service uses [`Broker::finish_release_awaiting`].
    ///
    /// # Errors
    /// When the key store or signing fails: nothing may be released.
    pub fn finish_release(&self, durable: DurableRelease) -> Result<Released> {
        if let Some(records) = durable.release_records() {
            self.store.record_releases(&records.tee_key_digest, &records.by_key())?;
        }
        self.sign_release(durable)
    }

    /// [`Broker::finish_release`] on a Tokio runtime: a key store whose writes are round trips to a database
    /// ([`KeyRecords::record_releases_awaitable`]) is awaited, holding no thread; one that writes the local
    /// disk writes on the blocking pool. A release without keys writes nothing there.
    ///
    /// # Errors
    /// As [`Broker::finish_release`].
    pub async fn finish_release_awaiting(self: Arc<Self>, durable: DurableRelease) -> Result<Released> {
        let Some(records) = durable.release_records() else { return self.sign_release(durable) };
        let writing = self.store.record_releases_awaitable(&records.tee_key_digest, &records.by_key());
        match writing {
            Some(writing) => writing.await?,
            None => {
                let store = Arc::clone(&self.store);
                tokio::task::spawn_blocking(move || {
                    store.record_releases(&records.tee_key_digest, &records.by_key())
                })
                .await
                .map_err(release_task_failed)??;
            }
        }
        self.sign_release(durable)
    }

    /// The signed token and the signed response of a durable release whose release records are written.
    fn sign_release(&self, durable: DurableRelease) -> Result<Released> {
        let StagedRelease {
            decision:
                ReleaseDecision {
                    raw_nonce,
                    now,
                    evidence_digest,
                    tee_key,
                    keys,
                    versions: _,
                    refusals,
                    accepted,
                },
            records,
            head,
            durability: _,
        } = durable.0;
        let sub = ReleaseSubmodule {
            appraisal: match &accepted {
                Ok((_, _, a)) => appraised(a),
                Err(_) => Submodule::refused(BROKER_POLICY_ID),
            },
            tee_public_key: accepted.as_ref().ok().map(|(_, e, _)| hex::encode(e.tee_public_key.as_bytes())),
            evidence_digest: hex::encode(evidence_digest),
            released: keys.iter().map(|(id, _)| id.as_str()).collect(),
            refused: refusals.iter().map(|(id, r)| RefusedKey { key_id: id, reason: &r.reason }).collect(),
        };
        let status = match &accepted {
            Ok((_, _, a)) => a.status,
            Err(_) => Status::Contraindicated,
        };
        let claims = TokenClaims::new(now / 1000, status, &raw_nonce, sub, &head);
        let attestation_result = self.signer.sign_token(&claims, TokenKind::Release, now / 1000)?;
        let nonce = Nonce::from_slice(&raw_nonce).unwrap_or(Nonce([0; 32]));
        let digests: Vec<(&str, [u8; 32])> = keys
            .iter()
            .map(|(id, s)| {
                (
                    id.as_str(),
                    broker_response::sealed_key_digest(s.kem.id(), &s.encapsulated_key, &s.ciphertext),
                )
            })
            .collect();
        let refused: Vec<(&str, &str)> =
            refusals.iter().map(|(id, r)| (id.as_str(), r.reason.as_str())).collect();
        let statement = broker_response::release_signing_input(&ReleaseStatement {
            nonce: &nonce,
            tee_key: tee_key.field(),
            keys: &digests,
            refusals: &refused,
            attestation_result: &attestation_result,
        });
        let signature = self.signer.sign_statement(&statement)?;
        Ok(Released {
            keys,
            refusals,
            attestation_result,
            audit: records,
            broker_public_key: self.signer.public_key(),
            signature,
        })
    }
}

/// A release decided and written to the ledger ([`Broker::stage_release`]), to be answered
/// ([`Broker::finish_release`]) once its records are durable.
#[derive(Debug)]
pub struct StagedRelease {
    decision: ReleaseDecision,
    records: Vec<AuditRecord>,
    head: AnchoredHead,
    durability: Durability,
}

impl DurableRelease {
    /// For a release of keys to accepted evidence: the SHA-256 of its TEE key and a record of each released
    /// key (its version and its `released` audit record), in `keys` order, for the key store.
    fn release_records(&self) -> Option<ReleaseRecords> {
        let StagedRelease { decision, records, .. } = &self.0;
        let Ok((_, evidence, _)) = &decision.accepted else { return None };
        if decision.keys.is_empty() {
            return None;
        }
        // The released-key records come first, in `keys` order.
        let released = decision
            .keys
            .iter()
            .zip(&decision.versions)
            .zip(records)
            .map(|(((id, _), version), rec)| {
                (
                    id.clone(),
                    ReleaseRecord { audit_seq: rec.seq, time_ms: decision.now, key_version: *version },
                )
            })
            .collect();
        Some(ReleaseRecords { tee_key_digest: tee_key_digest(evidence.tee_public_key.as_bytes()), released })
    }
}

/// What the key store records of a release of keys ([`KeyRecords::record_releases`]).
struct ReleaseRecords {
    tee_key_digest: [u8; 32],
    released: Vec<(String, ReleaseRecord)>,
}

impl ReleaseRecords {
    /// The records as the key store takes them.
    fn by_key(&self) -> Vec<(&str, ReleaseRecord)> {
        self.released.iter().map(|(id, r)| (id.as_str(), *r)).collect()
    }
}

impl StagedRelease {
    /// Waits, without holding a thread, until the decision's records are durable: only then may it be answered.
    ///
    /// # Errors
    /// When the sync failed: nothing of the decision may be acknowledged.
    pub async fn durable(self) -> Result<DurableRelease> {
        self.durability.wait().await?;
        Ok(DurableRelease(self))
    }

    /// As [`StagedRelease::durable`], blocking this thread.
    ///
    /// # Errors
    /// As [`StagedRelease::durable`].
    pub fn durable_blocking(self) -> Result<DurableRelease> {
        self.durability.wait_blocking()?;
        Ok(DurableRelease(self))
    }
}

/// A release's nonce checked and its evidence appraised ([`Broker::assess_release`]); no key decided yet.
#[derive(Debug)]
struct AssessedRelease {
    raw_nonce: Vec<u8>,
    key_ids: Vec<String>,
    now: u64,
    evidence_digest: [u8; 32],
    tee_key: ReceivedTeeKey,
    redeemed: std::result::Result<Nonce, Refused>,
    accepted: std::result::Result<(Nonce, Evidence, Appraisal), Refused>,
}

impl AssessedRelease {
    /// Whether deciding its keys reads the key store: only accepted evidence gets that far.
    fn decides_keys(&self) -> bool {
        self.accepted.is_ok() && !self.key_ids.is_empty()
    }
}

/// Where [`Broker::record_decided`] left a release.
#[derive(Debug)]
enum Recording {
    Staged(StagedRelease),
    Committing(DecidedRelease, Submitted),
}

/// What a release decided: the request as received, each key sealed or refused, the appraisal.
#[derive(Debug)]
struct ReleaseDecision {
    raw_nonce: Vec<u8>,
    now: u64,
    evidence_digest: [u8; 32],
    tee_key: ReceivedTeeKey,
    keys: Vec<(String, seal::Sealed)>,
    versions: Vec<u32>,
    refusals: Vec<(String, Refused)>,
    accepted: std::result::Result<(Nonce, Evidence, Appraisal), Refused>,
}

/// A release decided but not yet recorded ([`Broker::stage_release`]).
#[derive(Debug)]
struct DecidedRelease {
    /// The nonce whose single use is recorded with the decision (none once a replay was found).
    redeemed: Option<Nonce>,
    key_ids: Vec<String>,
    decision: ReleaseDecision,
}

impl DecidedRelease {
    /// What the ledger records: the redeemed nonce and one entry per key. Durable before the reply, with the
    /// nonce's single use in the same commit.
    fn to_record(&self) -> (Option<Nonce>, Vec<AuditEntry>) {
        let d = &self.decision;
        (
            self.redeemed,
            entries(&d.keys, &d.refusals, d.accepted.as_ref().err(), &self.key_ids, d.evidence_digest),
        )
    }

    /// The ledger's answer: staged, or after a replay the decision replaced by the replay's refusal, to be
    /// recorded (without a nonce) in its place.
    ///
    /// # Errors
    /// A record without a nonce answered as a replay (a ledger fault).
    fn recorded(
        mut self,
        recorded: Recorded,
        durability: Durability,
    ) -> Result<std::result::Result<StagedRelease, DecidedRelease>> {
        match recorded {
            Recorded::Committed(records, head) => {
                Ok(Ok(StagedRelease { decision: self.decision, records, head, durability }))
            }
            Recorded::Replay if self.redeemed.is_none() => {
                Err(Error::check("broker", "audit: a record without nonce was refused as a replay"))
            }
            Recorded::Replay => {
                // Another release (here or on another replica) used this nonce first: nothing decided here is
                // returned, and the refusal is what gets recorded.
                let refused = Refused::new("nonce", NonceRefusal::AlreadyUsed.to_string());
                let d = &mut self.decision;
                d.keys.clear();
                d.versions.clear();
                d.refusals = self.key_ids.iter().map(|id| (id.clone(), refused.clone())).collect();
                d.accepted = Err(refused);
                self.redeemed = None;
                Ok(Err(self))
            }
        }
    }
}

/// A staged release whose records are durable: the only input [`Broker::finish_release`] takes, and made only
/// by waiting ([`StagedRelease::durable`]), so no answer can be built for a decision that could still be lost.
#[derive(Debug)]
pub struct DurableRelease(StagedRelease);

/// A release's task that panicked or was cancelled: nothing of it may be answered.
#[expect(clippy::needless_pass_by_value, reason = "a `map_err` function takes the error by value")]
pub(crate) fn release_task_failed(e: tokio::task::JoinError) -> Error {
    Error::check("broker", format!("release task failed: {e}"))
}

/// SHA-256 of a TEE public key: how the key store names the TEE a key was released to.
#[must_use]
pub fn tee_key_digest(tee_public_key: &[u8]) -> [u8; 32] {
    Sha256::digest(tee_public_key).into()
}

/// The evidence as it travels in a request.
pub(super) type WireEvidence = sealroom_proto::attestation::v1::Evidence;

/// SHA-256 of the evidence's protobuf encoding: what audit records name. Encoded into a buffer kept by the
/// thread: a fresh ~30 KB buffer per release was a measurable share of a release's CPU under glibc malloc
/// (docs/broker-scaling.md, *Profile*).
pub(super) fn evidence_digest(evidence: &WireEvidence) -> [u8; 32] {
    /// Kept between releases up to this size (larger evidence gets a buffer of its own, freed after).
    const KEEP: usize = 256 * 1024;
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with_borrow_mut(|buf| {
        buf.clear();
        // A Vec grows as needed, so encoding into it cannot fail; were it to, the digest is of a fresh encoding.
        let digest = match prost::Message::encode(evidence, buf) {
            Ok(()) => Sha256::digest(buf.as_slice()).into(),
            Err(_) => Sha256::digest(prost::Message::encode_to_vec(evidence)).into(),
        };
        if buf.capacity() > KEEP {
            *buf = Vec::new();
        }
        digest
    })
}

/// The TEE key of a request's evidence exactly as received (the broker signs what it was asked, even when it
/// could not use it).
#[derive(Debug)]
pub(super) struct ReceivedTeeKey {
    kem_id: u16,
    key: Vec<u8>,
}

impl ReceivedTeeKey {
    pub(super) fn of(evidence: Option<&WireEvidence>) -> Self {
        match evidence {
            Some(e) => {
                Self { kem_id: u16::try_from(e.tee_key_kem).unwrap_or(0), key: e.tee_public_key.clone() }
            }
            None => Self { kem_id: 0, key: Vec::new() },
        }
    }

    pub(super) fn field(&self) -> TeeKeyField<'_> {
        TeeKeyField { kem_id: self.kem_id, key: &self.key }
    }
}

/// The audit entries of one release: a record per released key, then one per refused key; but a request
/// refused before any key was looked at (`request_refused`) is one record naming every key id.
fn entries(
    keys: &[(String, seal::Sealed)],
    refusals: &[(String, Refused)],
    request_refused: Option<&Refused>,
    key_ids: &[String],
    evidence_digest: [u8; 32],
) -> Vec<AuditEntry> {
    if let Some(r) = request_refused {
        return vec![AuditEntry {
            decision: Decision::Refused,
            key_id: key_ids.join(","),
            evidence_digest,
            rule: r.rule.clone(),
            reason: r.reason.clone(),
        }];
    }
    keys.iter()
        .map(|(id, _)| AuditEntry {
            decision: Decision::Released,
            key_id: id.clone(),
            evidence_digest,
            rule: "policy".into(),
            reason: "every rule of the key's policy allowed".into(),
        })
        .chain(refusals.iter().map(|(id, r)| AuditEntry {
            decision: Decision::Refused,
            key_id: id.clone(),
            evidence_digest,
            rule: r.rule.clone(),
            reason: r.reason.clone(),
        }))
        .collect()
}
