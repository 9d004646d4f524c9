//! Where a broker keeps what it must remember, behind two traits so the same release logic runs on the
//! embedded store (one process: redb keys, in-memory nonces, the fsync'd audit file) or on PostgreSQL
//! (several stateless replicas sharing one database: [`crate::pg`]).
//!
//! - [`KeyRecords`]: the data providers' keys and policies, material sealed under the KEK.
//! - [`Ledger`]: challenges and the decisions taken on them. A release first *checks* its nonce (cheap, may be
//!   stateless), is appraised and decided, and then *records* its decisions together with the nonce's single
//!   use in one durable commit; only then is it acknowledged. A nonce already used by another release (on any
//!   replica) makes the record step answer [`Recorded::Replay`], and nothing the release decided is returned.

use std::sync::Arc;

use sealroom_measurements::binding::Nonce;

use crate::Randomness;
use crate::audit::{AuditEntry, AuditRecord, ChainHead, GroupCommitLog};
use crate::error::{Error, Result};
use crate::keystore::{KeyInfo, KeyStore, ReleasableKey, ReleaseRecord, Unreleasable};
use crate::nonce::{NonceBook, NonceRefusal};

/// A future that holds no thread while it waits (a database round trip), owned so it can outlive its caller's
/// borrow.
pub type Awaitable<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// What [`KeyRecords::get_for_release`] answers: the key, or why it may not be released (`Err(Ok(_))`), or a
/// store failure (`Err(Err(_))`).
pub type KeyRead = std::result::Result<ReleasableKey, Result<Unreleasable>>;

/// The key-management and key-lookup operations of a store.
pub trait KeyRecords: Send + Sync + std::fmt::Debug {
    /// Registers a new key (material generated when `None`).
    ///
    /// # Errors
    /// Invalid id, owner or policy, an existing id, or a store failure.
    fn add(
        &self,
        key_id: &str,
        owner: &str,
        policy: &str,
        material: Option<Vec<u8>>,
        rng: &dyn Randomness,
        now_ms: u64,
    ) -> Result<KeyInfo>;
    /// All keys, or one owner's, ordered by id.
    ///
    /// # Errors
    /// A store failure.
    fn list(&self, owner: Option<&str>) -> Result<Vec<KeyInfo>>;
    /// A new material version.
    ///
    /// # Errors
    /// Unknown or revoked key, or a store failure.
    fn rotate(
        &self,
        key_id: &str,
        material: Option<Vec<u8>>,
        rng: &dyn Randomness,
        now_ms: u64,
    ) -> Result<KeyInfo>;
    /// Never release the key again.
    ///
    /// # Errors
    /// Unknown or already revoked key, or a store failure.
    fn revoke(&self, key_id: &str, now_ms: u64) -> Result<KeyInfo>;
    /// Replaces the key's policy.
    ///
    /// # Errors
    /// Unknown key, a policy that does not parse, or a store failure.
    fn set_policy(&self, key_id: &str, policy: &str) -> Result<KeyInfo>;
    /// The key's current version for release, or why there is none (`Err(Ok(_))`); `Err(Err(_))` when the
    /// store fails or the stored material does not decrypt.
    ///
    /// # Errors
    /// As described.
    fn get_for_release(&self, key_id: &str) -> std::result::Result<ReleasableKey, Result<Unreleasable>>;
    /// [`KeyRecords::get_for_release`] as a future that holds no thread while it waits, for a store whose
    /// reads are round trips to another process or machine (a database); `None` for a store that reads only
    /// memory and the local disk, which the caller reads on its own thread. A release in flight waiting on a
    /// database then holds neither an appraisal thread ([`crate::appraisal_pool`]) nor a blocking-pool thread.
    fn get_for_release_awaitable(&self, key_id: &str) -> Option<Awaitable<KeyRead>> {
        let _ = key_id;
        None
    }
    /// Records the keys just released to the TEE key whose SHA-256 is `tee_key_digest` (with their audit
    /// records), so that a receipt is issued only for a release this broker made. A store that keeps no such
    /// records does nothing here and refuses every receipt in [`KeyRecords::find_release`] (fail closed).
    ///
    /// # Errors
    /// A store failure.
    fn record_releases(&self, tee_key_digest: &[u8; 32], releases: &[(&str, ReleaseRecord)]) -> Result<()> {
        let _ = (tee_key_digest, releases);
        Ok(())
    }
    /// [`KeyRecords::record_releases`] as a future that holds no thread while it waits, for a store whose
    /// writes are round trips to a database; `None` for a store that writes the local disk, which the caller
    /// writes on a thread of its own. The records are taken (sealed) before this returns.
    fn record_releases_awaitable(
        &self,
        tee_key_digest: &[u8; 32],
        releases: &[(&str, ReleaseRecord)],
    ) -> Option<Awaitable<Result<()>>> {
        let _ = (tee_key_digest, releases);
        None
    }
    /// [`KeyRecords::find_release`] as a future that holds no thread while it waits, for a store whose reads
    /// are round trips to a database; `None` for a store that reads the local disk.
    fn find_release_awaitable(
        &self,
        tee_key_digest: &[u8; 32],
        key_id: &str,
    ) -> Option<Awaitable<Result<Option<ReleaseRecord>>>> {
        let _ = (tee_key_digest, key_id);
        None
    }
    /// This broker's record of releasing `key_id` to that TEE key, if any.
    ///
    /// # Errors
    /// A store failure, a record that fails its integrity check, or a store that keeps no release records.
    fn find_release(&self, tee_key_digest: &[u8; 32], key_id: &str) -> Result<Option<ReleaseRecord>> {
        let _ = (tee_key_digest, key_id);
        Err(Error::check("key store", "this store keeps no release records, so it issues no receipts"))
    }
}

impl KeyRecords for KeyStore {
    fn add(
        &self,
        key_id: &str,
        owner: &str,
        policy: &str,
        material: Option<Vec<u8>>,
        rng: &dyn Randomness,
        now_ms: u64,
    ) -> Result<KeyInfo> {
        KeyStore::add(self, key_id, owner, policy, material, rng, now_ms)
    }
    fn list(&self, owner: Option<&str>) -> Result<Vec<KeyInfo>> {
        KeyStore::list(self, owner)
    }
    fn rotate(
        &self,
        key_id: &str,
        material: Option<Vec<u8>>,
        rng: &dyn Randomness,
        now_ms: u64,
    ) -> Result<KeyInfo> {
        KeyStore::rotate(self, key_id, material, rng, now_ms)
    }
    fn revoke(&self, key_id: &str, now_ms: u64) -> Result<KeyInfo> {
        KeyStore::revoke(self, key_id, now_ms)
    }
    fn set_policy(&self, key_id: &str, policy: &str) -> Result<KeyInfo> {
        KeyStore::set_policy(self, key_id, policy)
    }
    fn get_for_release(&self, key_id: &str) -> std::result::Result<ReleasableKey, Result<Unreleasable>> {
        KeyStore::get_for_release(self, key_id)
    }
    fn record_releases(&self, tee_key_digest: &[u8; 32], releases: &[(&str, ReleaseRecord)]) -> Result<()> {
        KeyStore::record_releases(self, tee_key_digest, releases)
    }
    fn find_release(&self, tee_key_digest: &[u8; 32], key_id: &str) -> Result<Option<ReleaseRecord>> {
        KeyStore::find_release(self, tee_key_digest, key_id)
    }
}

/// The head of the audit chain a release was recorded in: what its token anchors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchoredHead {
    /// The replica whose chain it is (`None` for the embedded broker's single log).
    pub replica: Option<String>,
    /// Records in that chain and the last one's hash.
    pub head: ChainHead,
}

/// The outcome of recording a release.
#[derive(Debug)]
pub enum Recorded {
    /// Durably committed: the records (as stored) and the chain head after them.
    Committed(Vec<AuditRecord>, AnchoredHead),
    /// The nonce had already been used by another release: nothing was recorded for these entries.
    Replay,
}

/// Challenges and the durable record of decisions.
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// A fresh nonce and its time to live in seconds.
    ///
    /// # Errors
    /// When randomness fails or too many challenges are outstanding.
    fn issue(&self, rng: &dyn Randomness, now_ms: u64) -> Result<(Nonce, u32)>;
    /// Whether `nonce` may be redeemed now (issued by this broker or a fellow replica, not expired, and — where
    /// this can be known without a shared write — not used). Final single use is settled by [`Ledger::record`].
    ///
    /// # Errors
    /// The precise refusal.
    fn check(&self, nonce: &Nonce, now_ms: u64) -> std::result::Result<(), NonceRefusal>;
    /// Records `entries` durably and, with `redeemed`, the nonce's single use in the same commit. Returns once
    /// the commit is durable.
    ///
    /// # Errors
    /// When the log or database cannot be written: nothing may be released.
    fn record(&self, redeemed: Option<&Nonce>, entries: &[AuditEntry], now_ms: u64) -> Result<Recorded>;
    /// As [`Ledger::record`], but the commit may still be becoming durable when this returns: its records are
    /// acknowledged only after [`Durability::wait`] (or [`Durability::wait_blocking`]) returned. Lets a caller
    /// on an async runtime wait without holding a thread; a ledger whose commit is durable on return (the
    /// default) returns [`Durability::Durable`].
    ///
    /// # Errors
    /// As [`Ledger::record`].
    fn record_pending(
        &self,
        redeemed: Option<&Nonce>,
        entries: &[AuditEntry],
        now_ms: u64,
    ) -> Result<(Recorded, Durability)> {
        Ok((self.record(redeemed, entries, now_ms)?, Durability::Durable))
    }
    /// As [`Ledger::record_pending`], for a caller on an async runtime: a ledger whose commit is a round trip
    /// (PostgreSQL) hands the commit over and answers through [`Submitted::outcome`] once it is committed, so
    /// that no thread waits for it. May block briefly (the embedded ledger's audit write runs here: call it
    /// where blocking is allowed).
    ///
    /// # Errors
    /// As [`Ledger::record`]; a commit that fails later fails [`Submitted::outcome`].
    fn submit(&self, redeemed: Option<&Nonce>, entries: &[AuditEntry], now_ms: u64) -> Result<Submitted> {
        let (recorded, durability) = self.record_pending(redeemed, entries, now_ms)?;
        Ok(Submitted::Written(recorded, durability))
    }
}

/// A commit handed to a ledger by [`Ledger::submit`].
#[derive(Debug)]
#[must_use = "the commit's outcome decides what is answered"]
pub enum Submitted {
    /// Recorded; acknowledged once its [`Durability`] says so.
    Written(Recorded, Durability),
    /// Queued to a committer, which answers once its transaction committed (durable then).
    Committing(tokio::sync::oneshot::Receiver<Result<Recorded>>),
}

impl Submitted {
    /// The commit's outcome, waited for without holding a thread. Within a Tokio runtime.
    ///
    /// # Errors
    /// When the commit failed or its committer stopped: nothing of it may be acknowledged.
    pub async fn outcome(self) -> Result<(Recorded, Durability)> {
        match self {
            Self::Written(recorded, durability) => Ok((recorded, durability)),
            Self::Committing(answer) => match answer.await {
                Ok(recorded) => Ok((recorded?, Durability::Durable)),
                Err(_) => Err(Error::check("ledger", "committer ended without an answer")),
            },
        }
    }
}

/// Whether a [`Ledger::record_pending`] commit is on disk yet.
#[derive(Debug)]
#[must_use = "the records may be acknowledged only after waiting"]
pub enum Durability {
    /// Durable already.
    Durable,
    /// Written to the audit file as this batch; durable once a sync covering it completed.
    AuditSync(Arc<GroupCommitLog>, u64),
}

impl Durability {
    /// Waits, without holding a thread, until the commit is durable. Within a Tokio runtime.
    ///
    /// # Errors
    /// When the sync failed: nothing of the commit may be acknowledged.
    pub async fn wait(&self) -> Result<()> {
        match self {
            Self::Durable => Ok(()),
            Self::AuditSync(log, batch) => log.durable(*batch).await,
        }
    }

    /// Waits on this thread until the commit is durable.
    ///
    /// # Errors
    /// When the sync failed: nothing of the commit may be acknowledged.
    pub fn wait_blocking(&self) -> Result<()> {
        match self {
            Self::Durable => Ok(()),
            Self::AuditSync(log, batch) => log.wait_durable(*batch),
        }
    }
}

/// The embedded broker's ledger: nonces remembered in memory (single use decided at [`Ledger::check`]) and the
/// group-committed audit file.
#[derive(Debug)]
pub struct EmbeddedLedger {
    /// Issues without a lock and without storing anything; locks only its used-nonce set to redeem.
    nonces: NonceBook,
    audit: Arc<GroupCommitLog>,
}

impl EmbeddedLedger {
    /// A ledger over a nonce book and an opened audit log.
    #[must_use]
    pub fn new(nonces: NonceBook, audit: GroupCommitLog) -> Self {
        Self { nonces, audit: Arc::new(audit) }
    }

    /// The audit log, shared with the key store that anchors its state there ([`KeyStore::anchor_to`]).
    #[must_use]
    pub fn audit_log(&self) -> Arc<GroupCommitLog> {
        Arc::clone(&self.audit)
    }
}

impl Ledger for EmbeddedLedger {
    fn issue(&self, rng: &dyn Randomness, now_ms: u64) -> Result<(Nonce, u32)> {
        let nonce = self.nonces.issue(rng, now_ms)?;
        Ok((nonce, u32::try_from(self.nonces.ttl_ms() / 1000).unwrap_or(u32::MAX)))
    }

    fn check(&self, nonce: &Nonce, now_ms: u64) -> std::result::Result<(), NonceRefusal> {
        // The book is the only copy: redeeming here is final (a second presentation is refused right away).
        self.nonces.redeem(nonce, now_ms)
    }

    fn record(&self, redeemed: Option<&Nonce>, entries: &[AuditEntry], now_ms: u64) -> Result<Recorded> {
        let (recorded, durability) = self.record_pending(redeemed, entries, now_ms)?;
        durability.wait_blocking()?;
        Ok(recorded)
    }

    fn record_pending(
        &self,
        _redeemed: Option<&Nonce>,
        entries: &[AuditEntry],
        now_ms: u64,
    ) -> Result<(Recorded, Durability)> {
        let w = self.audit.write(entries, now_ms)?;
        Ok((
            Recorded::Committed(w.records, AnchoredHead { replica: None, head: w.head }),
            Durability::AuditSync(Arc::clone(&self.audit), w.batch),
        ))
    }
}
