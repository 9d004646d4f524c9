//! The audit log: every release decision, appended to a hash-chained file and fsync'd before the reply.
//!
//! One record per line (JSON, fixed field order) so an auditor can read it with any tool, but the chain does
//! not depend on JSON: each record's hash is SHA-256 over a fixed binary encoding of its fields and the previous
//! record's hash (32 zero bytes before the first record).
//!
//! ```text
//! hash = SHA-256("sealroom.audit.v1" 0x00 || seq u64 BE || time_ms u64 BE || decision u8 (1 released, 2 refused)
//!                || lp(key_id) || evidence_digest (32) || lp(rule) || lp(reason) || prev (32))
//! lp(x) = len(x) u32 BE || x
//! ```
//!
//! Flipping a byte, deleting, reordering or truncating a record breaks the chain at that record. Removing whole
//! records from the *end* cannot be seen from the file alone: the head (sequence number and hash) is therefore
//! also carried in every attestation result token the broker issues, and `sealroom audit verify --head` checks
//! the log against one such anchor.
//!
//! The broker appends through [`GroupCommitLog`]: concurrent decisions are written as they arrive and share one
//! `fdatasync` (group commit), and each caller returns only once a sync that began after its own write has
//! completed. An fdatasync costs 0.2–0.8 ms here, so one per decision under a global lock capped the broker at
//! a few hundred releases per second whatever the CPU could appraise.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const DOMAIN: &[u8] = b"sealroom.audit.v1\0";
const LAYER: &str = "audit log";
/// Upper bound on one line: key ids are ≤128 bytes and reasons one line; anything longer is not ours.
const MAX_LINE: usize = 64 * 1024;

/// What the broker decided for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The key was sealed to the TEE key and returned.
    Released,
    /// The key was not released (or, for a receipt request, no receipt was issued).
    Refused,
    /// An output receipt was issued for a workload that this key's policy allows.
    Receipt,
    /// The key store changed (or was found ahead of the log at start): its generation and state digest, the
    /// anchor against which a rolled-back `keys.redb` is recognised ([`crate::keystate`]).
    KeyStore,
    /// Another replica's chain head, as this replica read it from the shared database: the record that
    /// cross-anchors the chains of a replicated broker ([`crate::pg::chain::replica_head_entry`]). Never in an
    /// embedded broker's log.
    ReplicaHead,
}

impl Decision {
    /// The code the record hashes (and the `audit` table of a replicated broker stores).
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Released => 1,
            Self::Refused => 2,
            Self::Receipt => 3,
            Self::KeyStore => 4,
            Self::ReplicaHead => 5,
        }
    }

    /// The decision a code names.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        [Self::Released, Self::Refused, Self::Receipt, Self::KeyStore, Self::ReplicaHead]
            .into_iter()
            .find(|d| d.code() == code)
    }
}

/// The rule of a key-store anchor record.
pub const KEY_STORE_RULE: &str = "key_store.generation";

/// The audit entry anchoring a key store's state after a change of `key_id` (or at start: `key_id` empty); `what`
/// says which change.
#[must_use]
pub fn key_store_entry(anchor: crate::keystate::Anchor, key_id: &str, what: &str) -> AuditEntry {
    AuditEntry {
        decision: Decision::KeyStore,
        key_id: key_id.to_owned(),
        evidence_digest: anchor.digest,
        rule: KEY_STORE_RULE.to_owned(),
        reason: format!("generation {}: {}", anchor.generation, one_line(what)),
    }
}

/// The key-store anchor a record holds, if it is one (`Err`: it claims to be one but does not parse).
///
/// # Errors
/// One line, for an anchor record that is malformed.
pub fn key_store_anchor(rec: &AuditRecord) -> std::result::Result<Option<crate::keystate::Anchor>, String> {
    if rec.decision != Decision::KeyStore {
        return Ok(None);
    }
    let bad = |m: &str| format!("key-store record {}: {m}", rec.seq);
    if rec.rule != KEY_STORE_RULE {
        return Err(bad("unknown rule"));
    }
    let generation = rec
        .reason
        .strip_prefix("generation ")
        .and_then(|r| r.split_once(": "))
        .map(|(g, _)| g)
        .filter(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|g| g.parse::<u64>().ok())
        .ok_or_else(|| bad("no generation"))?;
    let digest = hex32("evidence_digest", &rec.evidence_digest).map_err(|e| bad(&e))?;
    Ok(Some(crate::keystate::Anchor { generation, digest }))
}

/// The last key-store anchor in a verified log.
fn last_key_store_anchor(bytes: &[u8]) -> Result<Option<crate::keystate::Anchor>> {
    let mut last = None;
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let rec: AuditRecord =
            serde_json::from_slice(line).map_err(|e| Error::check(LAYER, format!("record: {e}")))?;
        if let Some(a) = key_store_anchor(&rec).map_err(|e| Error::check(LAYER, e))? {
            last = Some(a);
        }
    }
    Ok(last)
}

/// One decision to append (the log assigns sequence number, time and hashes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Released or refused.
    pub decision: Decision,
    /// The requested key id.
    pub key_id: String,
    /// SHA-256 of the protobuf-encoded evidence as received (all zeros when there was none).
    pub evidence_digest: [u8; 32],
    /// The rule or check that decided ("policy.image_digests", "nonce", …).
    pub rule: String,
    /// One line saying why.
    pub reason: String,
}

/// One record as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// 0 for the first record, then consecutive.
    pub seq: u64,
    /// Decision time, Unix milliseconds (from the broker's injected clock).
    pub time_ms: u64,
    /// Released or refused.
    pub decision: Decision,
    /// The requested key id.
    pub key_id: String,
    /// Hex SHA-256 of the evidence.
    pub evidence_digest: String,
    /// The deciding rule.
    pub rule: String,
    /// Why.
    pub reason: String,
    /// Hex hash of the previous record (64 zeros for the first).
    pub prev: String,
    /// Hex hash of this record.
    pub hash: String,
}

fn lp(h: &mut Sha256, bytes: &[u8]) {
    // Lines are bounded by MAX_LINE, far below u32::MAX.
    h.update(u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    h.update(bytes);
}

/// The hashed fields of one record.
struct Hashed<'a> {
    seq: u64,
    time_ms: u64,
    decision: Decision,
    key_id: &'a str,
    evidence_digest: &'a [u8; 32],
    rule: &'a str,
    reason: &'a str,
    prev: &'a [u8; 32],
}

fn record_hash(f: &Hashed<'_>) -> [u8; 32] {
    let Hashed { seq, time_ms, decision, key_id, evidence_digest, rule, reason, prev } = *f;
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(time_ms.to_be_bytes());
    h.update([decision.code()]);
    lp(&mut h, key_id.as_bytes());
    h.update(evidence_digest);
    lp(&mut h, rule.as_bytes());
    lp(&mut h, reason.as_bytes());
    h.update(prev);
    h.finalize().into()
}

fn hex32(field: &str, s: &str) -> std::result::Result<[u8; 32], String> {
    let v = hex::decode(s).map_err(|e| format!("{field} is not hex: {e}"))?;
    v.try_into().map_err(|v: Vec<u8>| format!("{field} is {} bytes, expected 32", v.len()))
}

/// The head of a verified chain: what the next record links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// Number of records.
    pub records: u64,
    /// Hash of the last record (zeros when empty).
    pub hash: [u8; 32],
}

/// Where and why a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// Sequence number (0-based) of the first record that does not verify.
    pub record: u64,
    /// Byte offset of that record in the file.
    pub offset: u64,
    /// One line.
    pub reason: String,
    /// Whether the only problem is an unterminated last line (a write torn by a crash).
    pub torn_tail: bool,
    /// The head of the chain up to (not including) the broken record.
    pub valid_prefix: ChainHead,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "record {} (byte offset {}): {}", self.record, self.offset, self.reason)
    }
}

/// Verifies a whole log. Returns the chain head, or the first broken record.
///
/// # Errors
/// [`ChainBreak`] naming the first record that does not verify.
pub fn verify(bytes: &[u8]) -> std::result::Result<ChainHead, ChainBreak> {
    let mut head = ChainHead { records: 0, hash: [0; 32] };
    let mut offset = 0usize;
    let mut rest = bytes;
    while !rest.is_empty() {
        let brk = |reason: String, torn_tail: bool, head: ChainHead| ChainBreak {
            record: head.records,
            offset: offset as u64,
            reason,
            torn_tail,
            valid_prefix: head,
        };
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
            return Err(brk(format!("truncated: {} bytes without end of line", rest.len()), true, head));
        };
        let (line, tail) = rest.split_at(nl);
        let tail = tail.get(1..).unwrap_or_default();
        if line.len() > MAX_LINE {
            return Err(brk(format!("line of {} bytes exceeds {MAX_LINE}", line.len()), false, head));
        }
        let rec: AuditRecord =
            serde_json::from_slice(line).map_err(|e| brk(format!("not a record: {e}"), false, head))?;
        if rec.seq != head.records {
            return Err(brk(
                format!("sequence number {} where {} was expected", rec.seq, head.records),
                false,
                head,
            ));
        }
        let prev = hex32("prev", &rec.prev).map_err(|e| brk(e, false, head))?;
        if prev != head.hash {
            return Err(brk(
                format!("prev {} does not link to the previous record {}", rec.prev, hex::encode(head.hash)),
                false,
                head,
            ));
        }
        let evidence = hex32("evidence_digest", &rec.evidence_digest).map_err(|e| brk(e, false, head))?;
        let own = hex32("hash", &rec.hash).map_err(|e| brk(e, false, head))?;
        let computed = record_hash(&Hashed {
            seq: rec.seq,
            time_ms: rec.time_ms,
            decision: rec.decision,
            key_id: &rec.key_id,
            evidence_digest: &evidence,
            rule: &rec.rule,
            reason: &rec.reason,
            prev: &prev,
        });
        if computed != own {
            return Err(brk(
                format!("hash mismatch: stored {}, computed {}", rec.hash, hex::encode(computed)),
                false,
                head,
            ));
        }
        // A record must be written exactly as the broker writes it, so a byte changed outside the hashed fields
        // (spacing, escapes) is caught too.
        let canonical = serde_json::to_vec(&rec).map_err(|e| brk(e.to_string(), false, head))?;
        if canonical != line {
            return Err(brk("not in canonical form".into(), false, head));
        }
        head = ChainHead { records: head.records.saturating_add(1), hash: own };
        offset = offset.saturating_add(nl).saturating_add(1);
        rest = tail;
    }
    Ok(head)
}

/// Verifies a whole log and checks that it still contains the head an attestation result token recorded: at
/// least `anchor.records` records, the last of which hashes to `anchor.hash`. This catches a log cut back past a
/// decision someone holds a token for.
///
/// # Errors
/// The chain break, or why the anchor is not in the log.
pub fn verify_with_anchor(bytes: &[u8], anchor: ChainHead) -> std::result::Result<ChainHead, String> {
    let head = verify(bytes).map_err(|b| b.to_string())?;
    if anchor.records == 0 {
        return Ok(head);
    }
    if head.records < anchor.records {
        return Err(format!(
            "log has {} records but a token saw {}: records were removed from the end",
            head.records, anchor.records
        ));
    }
    let want = anchor.records.saturating_sub(1);
    let line = bytes
        .split(|b| *b == b'\n')
        .nth(usize::try_from(want).unwrap_or(usize::MAX))
        .ok_or_else(|| format!("record {want} missing"))?;
    let rec: AuditRecord = serde_json::from_slice(line).map_err(|e| format!("record {want}: {e}"))?;
    if rec.hash != hex::encode(anchor.hash) {
        return Err(format!(
            "record {want} hash {} differs from the token's head {}",
            rec.hash,
            hex::encode(anchor.hash)
        ));
    }
    Ok(head)
}

/// The append-only, fsync'd log file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    /// Shared with [`GroupCommitLog`], which fsyncs through it without holding the append lock.
    file: Arc<File>,
    head: ChainHead,
    /// Set when a write or fsync failed: the file may end in a partial record, so nothing more is appended
    /// (and nothing released) until a restart cuts the torn tail in [`AuditLog::open`].
    failed: bool,
    /// The last key-store anchor written ([`Decision::KeyStore`]).
    key_store_anchor: Option<crate::keystate::Anchor>,
}

/// What [`AuditLog::open`] had to repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The log was intact.
    Clean,
    /// The last line was torn by a crash mid-write (never acknowledged) and was cut off.
    TornTailRemoved {
        /// Bytes removed.
        bytes: u64,
    },
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log, verifies the whole chain, and cuts off a torn last line left by a
    /// crash during a write. Any other break refuses to open: the broker must not extend a tampered chain.
    ///
    /// # Errors
    /// When the file cannot be read or written, or the chain is broken.
    pub fn open(path: &Path) -> Result<(Self, Recovery)> {
        let io =
            |what: &str, e: std::io::Error| Error::check(LAYER, format!("{what} {}: {e}", path.display()));
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io("cannot open", e))?;
        if created {
            sync_parent_dir(path)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io("cannot read", e))?;
        let (head, recovery) = match verify(&bytes) {
            Ok(head) => (head, Recovery::Clean),
            Err(brk) if brk.torn_tail => {
                let removed = (bytes.len() as u64).saturating_sub(brk.offset);
                file.set_len(brk.offset).map_err(|e| io("cannot truncate", e))?;
                file.sync_all().map_err(|e| io("cannot fsync", e))?;
                (brk.valid_prefix, Recovery::TornTailRemoved { bytes: removed })
            }
            Err(brk) => return Err(Error::check(LAYER, brk.to_string())),
        };
        file.seek(SeekFrom::End(0)).map_err(|e| io("cannot seek", e))?;
        let kept = usize::try_from(match recovery {
            Recovery::Clean => bytes.len() as u64,
            Recovery::TornTailRemoved { bytes: removed } => (bytes.len() as u64).saturating_sub(removed),
        })
        .unwrap_or(usize::MAX);
        let key_store_anchor = last_key_store_anchor(bytes.get(..kept).unwrap_or_default())?;
        let log =
            Self { path: path.to_path_buf(), file: Arc::new(file), head, failed: false, key_store_anchor };
        Ok((log, recovery))
    }

    /// The last key-store anchor in the log.
    #[must_use]
    pub fn key_store_anchor(&self) -> Option<crate::keystate::Anchor> {
        self.key_store_anchor
    }

    /// The current head.
    #[must_use]
    pub fn head(&self) -> ChainHead {
        self.head
    }

    /// The log's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record per entry, all stamped `time_ms`, in one write, and fsyncs before returning.
    ///
    /// # Errors
    /// When writing or syncing fails; the broker then must not reply with keys.
    pub fn append(&mut self, entries: &[AuditEntry], time_ms: u64) -> Result<Vec<AuditRecord>> {
        let records = self.write_unsynced(entries, time_ms)?;
        if let Err(e) = self.file.sync_data() {
            self.failed = true;
            return Err(Error::check(LAYER, format!("cannot fsync {}: {e}", self.path.display())));
        }
        Ok(records)
    }

    /// Appends the records in one `write` and advances the head, without syncing: the caller must sync before
    /// acknowledging any of them. A failed write marks the log failed.
    fn write_unsynced(&mut self, entries: &[AuditEntry], time_ms: u64) -> Result<Vec<AuditRecord>> {
        if self.failed {
            return Err(Error::check(
                LAYER,
                "an earlier write failed; restart the broker to recover the log",
            ));
        }
        let mut out = Vec::new();
        let mut records = Vec::with_capacity(entries.len());
        let mut head = self.head;
        for e in entries {
            let rule = one_line(&e.rule);
            let reason = one_line(&e.reason);
            let hash = record_hash(&Hashed {
                seq: head.records,
                time_ms,
                decision: e.decision,
                key_id: &e.key_id,
                evidence_digest: &e.evidence_digest,
                rule: &rule,
                reason: &reason,
                prev: &head.hash,
            });
            let rec = AuditRecord {
                seq: head.records,
                time_ms,
                decision: e.decision,
                key_id: e.key_id.clone(),
                evidence_digest: hex::encode(e.evidence_digest),
                rule,
                reason,
                prev: hex::encode(head.hash),
                hash: hex::encode(hash),
            };
            let line = serde_json::to_vec(&rec).map_err(|err| Error::check(LAYER, err.to_string()))?;
            if line.len() > MAX_LINE {
                return Err(Error::check(
                    LAYER,
                    format!("record of {} bytes exceeds {MAX_LINE}", line.len()),
                ));
            }
            out.extend_from_slice(&line);
            out.push(b'\n');
            head = ChainHead { records: head.records.saturating_add(1), hash };
            records.push(rec);
        }
        let anchor = records.iter().filter_map(|r| key_store_anchor(r).ok().flatten()).next_back();
        if let Err(e) = (&*self.file).write_all(&out) {
            self.failed = true;
            return Err(Error::check(LAYER, format!("cannot write {}: {e}", self.path.display())));
        }
        self.head = head;
        if anchor.is_some() {
            self.key_store_anchor = anchor;
        }
        Ok(records)
    }
}

/// The audit log shared by concurrent decisions, with group commit.
///
/// Appends are serialised only for the hash chain and one `write` (microseconds); the `fdatasync` runs outside
/// the lock. Whoever finds no sync running becomes the leader: it notes how many batches have been written,
/// syncs, and then marks exactly those durable; batches written meanwhile wait for the next sync, which one of
/// them leads. Every caller therefore returns only after a sync that started after its own write completed, so
/// an acknowledged decision is on disk exactly as with one fsync per decision. A failed write or sync fails
/// every caller not yet covered and every later one (nothing is released) until a restart repairs the log.
#[derive(Debug)]
pub struct GroupCommitLog {
    state: Mutex<GroupState>,
    /// Wakes blocked callers of [`GroupCommitLog::append`] when a sync ends.
    synced: Condvar,
    /// Wakes tasks awaiting [`GroupCommitLog::durable`] when a sync ends.
    synced_async: tokio::sync::Notify,
    file: Arc<File>,
}

/// Records written to the audit file but not yet known to be on disk: acknowledge them only after
/// [`GroupCommitLog::durable`] for their batch returned.
#[derive(Debug)]
pub struct Written {
    /// The records, in order.
    pub records: Vec<AuditRecord>,
    /// The head just after them.
    pub head: ChainHead,
    /// Their batch number: durable once a sync that started after it was written has completed.
    pub batch: u64,
}

#[derive(Debug)]
struct GroupState {
    log: AuditLog,
    /// Batches written to the file so far.
    written: u64,
    /// Batches known to be on disk (a prefix of those written).
    durable: u64,
    /// Whether a leader is syncing now.
    syncing: bool,
    /// Why the last sync failed.
    sync_error: Option<String>,
}

impl GroupCommitLog {
    /// Shares an opened log.
    #[must_use]
    pub fn new(log: AuditLog) -> Self {
        let file = Arc::clone(&log.file);
        Self {
            state: Mutex::new(GroupState { log, written: 0, durable: 0, syncing: false, sync_error: None }),
            synced: Condvar::new(),
            synced_async: tokio::sync::Notify::new(),
            file,
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, GroupState>> {
        self.state.lock().map_err(|_| Error::check(LAYER, "lock poisoned by an earlier panic"))
    }

    /// The current head (possibly including records whose sync is still running).
    ///
    /// # Errors
    /// When the lock was poisoned.
    pub fn head(&self) -> Result<ChainHead> {
        Ok(self.lock()?.log.head())
    }

    /// The last key-store anchor written (possibly still being synced).
    ///
    /// # Errors
    /// When the lock was poisoned.
    pub fn key_store_anchor(&self) -> Result<Option<crate::keystate::Anchor>> {
        Ok(self.lock()?.log.key_store_anchor())
    }

    /// Appends one record per entry, all stamped `time_ms`, and returns once they are on disk, with the head
    /// just after them. Blocks the calling thread while a sync runs.
    ///
    /// # Errors
    /// When writing or syncing fails (now or earlier); the broker then must not reply with keys.
    pub fn append(&self, entries: &[AuditEntry], time_ms: u64) -> Result<(Vec<AuditRecord>, ChainHead)> {
        let written = self.write(entries, time_ms)?;
        self.wait_durable(written.batch)?;
        Ok((written.records, written.head))
    }

    /// Returns once `batch` is on disk, blocking this thread while a sync runs (leading one when none is).
    ///
    /// # Errors
    /// When a sync failed (now or earlier): the records must not be acknowledged.
    pub fn wait_durable(&self, batch: u64) -> Result<()> {
        let mut st = self.lock()?;
        loop {
            if let Some(done) = Self::covered(&st, batch) {
                return done;
            }
            if st.syncing {
                st = self
                    .synced
                    .wait(st)
                    .map_err(|_| Error::check(LAYER, "lock poisoned by an earlier panic"))?;
                continue;
            }
            st.syncing = true;
            let covered = st.written;
            drop(st);
            self.sync(covered);
            st = self.lock()?;
        }
    }

    /// Appends one record per entry, all stamped `time_ms`, in one `write`, without waiting for a sync: the
    /// caller acknowledges them only after [`GroupCommitLog::durable`] for the returned batch.
    ///
    /// # Errors
    /// When writing fails (now or earlier).
    pub fn write(&self, entries: &[AuditEntry], time_ms: u64) -> Result<Written> {
        let mut st = self.lock()?;
        let records = st.log.write_unsynced(entries, time_ms)?;
        let head = st.log.head();
        st.written = st.written.saturating_add(1);
        Ok(Written { records, head, batch: st.written })
    }

    /// Returns once `batch` is on disk, without holding a thread while the sync runs: the first waiter that
    /// finds no sync running starts one on the blocking pool, and every waiter is woken when it ends. The sync
    /// and its bookkeeping run to the end even when this future is dropped (a cancelled request), since other
    /// waiters depend on them. Must be called within a Tokio runtime.
    ///
    /// # Errors
    /// When a sync failed (now or earlier): the records must not be acknowledged.
    pub async fn durable(self: &Arc<Self>, batch: u64) -> Result<()> {
        loop {
            // Registered before the state is read, so that a sync ending in between still wakes this waiter.
            let ended = self.synced_async.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                let mut st = self.lock()?;
                if let Some(done) = Self::covered(&st, batch) {
                    return done;
                }
                if !st.syncing {
                    st.syncing = true;
                    let covered = st.written;
                    drop(st);
                    let sync = PendingSync { log: Arc::clone(self), covered };
                    drop(tokio::task::spawn_blocking(move || drop(sync)));
                }
            }
            ended.await;
        }
    }

    /// `Some` once `batch` is settled: on disk, or lost to a failed write or sync.
    fn covered(st: &GroupState, batch: u64) -> Option<Result<()>> {
        if st.durable >= batch {
            return Some(Ok(()));
        }
        if st.log.failed {
            let why = st.sync_error.clone().unwrap_or_else(|| "an earlier write failed".into());
            return Some(Err(Error::check(LAYER, format!("{why}; restart the broker to recover the log"))));
        }
        None
    }

    /// The leader's sync, started with `syncing` set by the caller: syncs the file, marks the first `covered`
    /// batches durable (or the log failed) and wakes every waiter, blocked or awaiting.
    fn sync(&self, covered: u64) {
        let synced = self.file.sync_data();
        // Even after a panic elsewhere the waiters must learn how this sync ended.
        let mut st = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        st.syncing = false;
        match synced {
            Ok(()) => st.durable = st.durable.max(covered),
            Err(e) => {
                st.log.failed = true;
                st.sync_error = Some(format!("cannot fsync {}: {e}", st.log.path.display()));
            }
        }
        drop(st);
        self.synced.notify_all();
        self.synced_async.notify_waiters();
    }
}

/// A sync a waiter of [`GroupCommitLog::durable`] started: it runs when dropped, i.e. on the blocking pool, or
/// wherever the runtime drops the task unrun when it shuts down, so `syncing` is always cleared and no waiter is
/// left behind.
struct PendingSync {
    log: Arc<GroupCommitLog>,
    covered: u64,
}

impl Drop for PendingSync {
    fn drop(&mut self) {
        self.log.sync(self.covered);
    }
}

/// Reasons and rules are one line by contract; a stray newline in a reason must not split a record.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// fsyncs the directory holding `path`, so a newly created file's directory entry survives a crash.
///
/// # Errors
/// When the directory cannot be opened or synced.
pub fn sync_parent_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::check(LAYER, format!("cannot fsync directory {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u8) -> AuditEntry {
        AuditEntry {
            decision: if i.is_multiple_of(2) { Decision::Released } else { Decision::Refused },
            key_id: format!("key-{i}"),
            evidence_digest: [i; 32],
            rule: "policy.image_digests".into(),
            reason: format!("reason {i}\nsecond line"),
        }
    }

    #[test]
    fn appends_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (mut log, rec) = AuditLog::open(&path).unwrap();
        assert_eq!(rec, Recovery::Clean);
        let written = log.append(&[entry(0), entry(1)], 1000).unwrap();
        assert_eq!(written[1].seq, 1);
        assert_eq!(written[1].prev, written[0].hash);
        assert_eq!(written[1].reason, "reason 1 second line");
        drop(log);
        let (mut log, _) = AuditLog::open(&path).unwrap();
        assert_eq!(log.head().records, 2);
        log.append(&[entry(2)], 2000).unwrap();
        let head = verify(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(head.records, 3);
        assert_eq!(head, log.head());
    }

    #[test]
    fn group_commit_keeps_one_chain_and_returns_each_callers_durable_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = GroupCommitLog::new(AuditLog::open(&path).unwrap().0);
        let (threads, per) = (8u8, 25u8);
        let barrier = std::sync::Barrier::new(usize::from(threads));
        let returned: Vec<(Vec<AuditRecord>, ChainHead)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (log, barrier) = (&log, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        (0..per)
                            .map(|i| log.append(&[entry(t), entry(i)], u64::from(i)).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let bytes = std::fs::read(&path).unwrap();
        let head = verify(&bytes).unwrap();
        assert_eq!(head.records, u64::from(threads) * u64::from(per) * 2);
        assert_eq!(head, log.head().unwrap());
        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        for (records, at_return) in &returned {
            // Each caller's two records are consecutive, and the head it was given ends with them.
            assert_eq!(records[1].seq, records[0].seq + 1);
            assert_eq!(at_return.records, records[1].seq + 1);
            assert_eq!(hex::encode(at_return.hash), records[1].hash);
            for r in records {
                let stored: AuditRecord =
                    serde_json::from_slice(lines[usize::try_from(r.seq).unwrap()]).unwrap();
                assert_eq!(&stored, r);
            }
        }
        // After a restart every record is still there.
        drop(log);
        let (reopened, recovery) = AuditLog::open(&path).unwrap();
        assert_eq!((reopened.head(), recovery), (head, Recovery::Clean));
    }

    #[test]
    fn awaiting_and_blocked_writers_each_return_after_a_sync_that_covers_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = Arc::new(GroupCommitLog::new(AuditLog::open(&path).unwrap().0));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
        let (tasks, threads, per) = (24u8, 4u8, 10u8);
        std::thread::scope(|s| {
            // Blocked writers on threads of their own, alongside the awaiting ones (both kinds wait on one sync).
            for t in 0..threads {
                let log = &log;
                s.spawn(move || {
                    for i in 0..per {
                        log.append(&[entry(100 + t), entry(i)], u64::from(i)).unwrap();
                    }
                });
            }
            rt.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for t in 0..tasks {
                    let log = Arc::clone(&log);
                    set.spawn(async move {
                        for i in 0..per {
                            let w = log.write(&[entry(t), entry(i)], u64::from(i)).unwrap();
                            log.durable(w.batch).await.unwrap();
                            // Returned only once a sync that started after this write has completed.
                            assert!(log.state.lock().unwrap().durable >= w.batch);
                        }
                    });
                }
                set.join_all().await;
            });
        });
        let head = verify(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(head.records, u64::from(tasks + threads) * u64::from(per) * 2);
        let st = log.state.lock().unwrap();
        assert_eq!(
            (st.durable, st.written, st.syncing),
            (st.written, u64::from(tasks + threads) * 10, false)
        );
    }

    #[test]
    fn attack_cancelled_request_cannot_stall_the_audit_sync() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(GroupCommitLog::new(AuditLog::open(&dir.path().join("audit.log")).unwrap().0));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
        rt.block_on(async {
            let w = log.write(&[entry(0)], 1).unwrap();
            // Polled once (it finds no sync running and starts one), then dropped: a cancelled request.
            let once = tokio::time::timeout(std::time::Duration::ZERO, log.durable(w.batch)).await;
            {
                let st = log.state.lock().unwrap();
                assert!(st.syncing || st.durable >= w.batch, "the first waiter started no sync");
            }
            drop(once);
            let later = log.write(&[entry(1)], 2).unwrap();
            let waited = tokio::time::timeout(std::time::Duration::from_secs(10), async {
                log.durable(w.batch).await.unwrap();
                log.durable(later.batch).await.unwrap();
            });
            waited.await.expect("the dropped waiter's sync never ended: every later waiter hangs");
        });
        assert!(!log.state.lock().unwrap().syncing);
    }

    #[test]
    fn torn_tail_is_cut_on_open_but_not_other_breaks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (mut log, _) = AuditLog::open(&path).unwrap();
        log.append(&[entry(0), entry(1)], 1).unwrap();
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        let full = bytes.len();
        let torn = b"{\"seq\":2,\"time";
        bytes.extend_from_slice(torn);
        std::fs::write(&path, &bytes).unwrap();
        let (log, rec) = AuditLog::open(&path).unwrap();
        assert_eq!(rec, Recovery::TornTailRemoved { bytes: torn.len() as u64 });
        assert_eq!(log.head().records, 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), full as u64);
        drop(log);
        bytes.truncate(full);
        bytes[10] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let err = AuditLog::open(&path).unwrap_err().to_string();
        assert!(err.starts_with("audit log: record 0 (byte offset 0): not a record"), "{err}");
    }
}
