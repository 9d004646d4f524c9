//! Nonces and the audit chain of one replica in PostgreSQL.
//!
//! Challenges are stateless MACed nonces ([`NonceKeys`]): any replica with the shared MAC key checks origin and
//! expiry without the database. Single use is settled when the release is recorded: one writer task per
//! replica takes every release that is waiting (group commit) and, in one transaction, inserts their nonces into
//! `used_nonces` (`on conflict do nothing`: a nonce another release already used, on any replica, comes back
//! missing and that release is answered [`Recorded::Replay`]), extends this replica's chain with the other
//! releases' records, and commits with `synchronous_commit = on`. Each release is answered only after `COMMIT`
//! returned. When anything fails, every release of the batch fails (nothing released) and the chain head is
//! read back from the database before the next batch, so a commit whose answer was lost is neither repeated
//! nor forked. At most once per [`ANCHOR_EVERY_MS`] the batch's transaction also records the other replicas'
//! chain heads that moved since ([`chain::replica_head_entry`]: the chains cross-anchor each other), and
//! [`verify_chains`] checks each of those anchors.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sealroom_measurements::binding::Nonce;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::chain::{self, Row};
use super::{DATABASE_TIMEOUT, Database, connect, no_answer, pg_err, to_i64, to_u64};
use crate::Randomness;
use crate::audit::{AuditEntry, ChainHead};
use crate::error::{Error, Result};
use crate::nonce::NonceRefusal;
use crate::nonce_mac::NonceKeys;
use crate::store::{AnchoredHead, Ledger, Recorded, Submitted};

const LAYER: &str = "postgres";
/// Most releases committed in one transaction.
const MAX_BATCH: usize = 256;
/// How long used nonces are kept after they expired (a deleted nonce is refused as expired instead).
const USED_NONCE_RETENTION_MS: u64 = 3_600_000;
/// How often the writer deletes long-expired used nonces.
const CLEANUP_EVERY_MS: u64 = 60_000;
/// How often, at most, a replica's chain records the other replicas' heads (by the releases' time): a chain
/// cut back or rewritten is found from the others' anchors made after the records in question
/// ([`chain::check_cross_anchors`]); one row per other replica whose head moved.
pub const ANCHOR_EVERY_MS: u64 = 1_000;

struct Job {
    nonce: Option<(Vec<u8>, i64)>,
    entries: Vec<AuditEntry>,
    now_ms: u64,
    reply: Reply,
}

/// Where a job's outcome goes: a blocked thread ([`Ledger::record`]) or an awaiting task ([`Ledger::submit`]).
enum Reply {
    Blocked(std::sync::mpsc::SyncSender<Result<Recorded>>),
    Awaiting(tokio::sync::oneshot::Sender<Result<Recorded>>),
}

impl Reply {
    /// Answers; a caller that is gone (a cancelled request) is not an error: its commit stands.
    fn send(self, outcome: Result<Recorded>) {
        let _ = match self {
            Self::Blocked(tx) => tx.send(outcome).ok(),
            Self::Awaiting(tx) => tx.send(outcome).ok(),
        };
    }
}

/// The ledger of one replica.
pub struct PgLedger {
    db: Arc<Database>,
    keys: NonceKeys,
    replica: String,
    jobs: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgLedger(replica={}, {:?})", self.replica, self.keys)
    }
}

/// Checks a replica id: the same alphabet as key ids (it is printed in tokens and hashed into the chain).
fn check_replica(replica: &str) -> Result<()> {
    crate::check_key_id(replica).map_err(|e| Error::check(LAYER, format!("replica id: {e}")))
}

impl PgLedger {
    /// Starts the replica's writer task on `db` (schema already migrated).
    ///
    /// # Errors
    /// An invalid replica id, or when the runtime is gone.
    pub fn start(db: Arc<Database>, keys: NonceKeys, replica: &str) -> Result<Self> {
        check_replica(replica)?;
        let (tx, rx) = mpsc::unbounded_channel();
        db.spawn(writer(db.target(), replica.to_owned(), rx))?;
        Ok(Self { db, keys, replica: replica.to_owned(), jobs: tx })
    }

    /// This replica's id.
    #[must_use]
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The database this ledger writes to.
    #[must_use]
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }
}

impl Ledger for PgLedger {
    fn issue(&self, rng: &dyn Randomness, now_ms: u64) -> Result<(Nonce, u32)> {
        let nonce = self.keys.issue(rng, now_ms)?;
        Ok((nonce, u32::try_from(self.keys.ttl_ms() / 1000).unwrap_or(u32::MAX)))
    }

    fn check(&self, nonce: &Nonce, now_ms: u64) -> std::result::Result<(), NonceRefusal> {
        self.keys.check(nonce, now_ms).map(|_| ())
    }

    fn record(&self, redeemed: Option<&Nonce>, entries: &[AuditEntry], now_ms: u64) -> Result<Recorded> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.queue(redeemed, entries, now_ms, Reply::Blocked(reply))?;
        answer.recv().map_err(|_| Error::check(LAYER, "audit writer ended without an answer"))?
    }

    fn submit(&self, redeemed: Option<&Nonce>, entries: &[AuditEntry], now_ms: u64) -> Result<Submitted> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue(redeemed, entries, now_ms, Reply::Awaiting(reply))?;
        Ok(Submitted::Committing(answer))
    }
}

impl PgLedger {
    /// Hands a release's records to the writer task, which answers `reply` after its batch's `COMMIT`.
    fn queue(
        &self,
        redeemed: Option<&Nonce>,
        entries: &[AuditEntry],
        now_ms: u64,
        reply: Reply,
    ) -> Result<()> {
        let nonce = redeemed
            .map(|n| {
                // Checked at the start of the release; the expiry is in the nonce itself.
                let expires = self.keys.check(n, now_ms).unwrap_or(now_ms.saturating_add(self.keys.ttl_ms()));
                Ok::<_, Error>((n.0.to_vec(), to_i64("nonce expiry", expires)?))
            })
            .transpose()?;
        self.jobs
            .send(Job { nonce, entries: entries.to_vec(), now_ms, reply })
            .map_err(|_| Error::check(LAYER, "audit writer stopped"))
    }
}

async fn writer(target: super::Target, replica: String, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut client: Option<Client> = None;
    let mut head: Option<ChainHead> = None;
    let mut last_cleanup = 0u64;
    let mut anchors = CrossAnchors::default();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let now = batch.iter().map(|j| j.now_ms).max().unwrap_or(0);
        let mut anchor_at = anchors.due(now);
        // Past the timeout the batch fails like any failed commit (nothing released, the head read back before the
        // next batch): a database or network path that stopped answering without closing the connection would
        // otherwise hold every release of this replica for as long as TCP takes to notice, or forever.
        let committed = tokio::time::timeout(
            DATABASE_TIMEOUT,
            commit_batch(&target, &replica, &mut client, &mut head, &batch, anchor_at.as_mut()),
        )
        .await
        .unwrap_or_else(|_| {
            // The connection may be stuck mid-transaction: never reuse it.
            client = None;
            Err(no_answer())
        });
        match committed {
            Ok(outcomes) => {
                if let Some(made) = anchor_at {
                    anchors.committed(made);
                }
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    job.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                // Unknown outcome: read the head back before the next batch; a broken connection is replaced.
                head = None;
                if client.as_ref().is_none_or(Client::is_closed) {
                    client = None;
                }
                let msg = e.to_string();
                for job in batch {
                    job.reply.send(Err(Error::check(LAYER, format!("release not recorded: {msg}"))));
                }
                continue;
            }
        }
        if now.saturating_sub(last_cleanup) >= CLEANUP_EVERY_MS
            && let Some(c) = client.as_ref()
            // The writer has no clock of its own: the injected time the releases of this batch carried.
            && let Ok(cutoff) = to_i64("cutoff", now.saturating_sub(USED_NONCE_RETENTION_MS))
        {
            last_cleanup = now;
            // Best effort: a failed cleanup only leaves more rows to delete next time; one that hangs must not
            // hold the writer (and its connection is not reused).
            let delete = "delete from used_nonces where expires_ms < $1";
            if tokio::time::timeout(DATABASE_TIMEOUT, c.execute(delete, &[&cutoff])).await.is_err() {
                client = None;
            }
        }
    }
}

/// What this replica's writer last recorded of the other chains ([`chain::replica_head_entry`]).
#[derive(Default)]
struct CrossAnchors {
    /// Releases' time of the last committed anchoring (0: none since start).
    last_ms: u64,
    /// The heads named then, by replica: a head that has not moved is not named again.
    named: HashMap<String, ChainHead>,
}

/// An anchoring in a batch's transaction, kept only once that transaction committed.
struct Anchoring {
    now_ms: u64,
    named: HashMap<String, ChainHead>,
}

impl CrossAnchors {
    /// An anchoring for the batch at `now_ms`, when one is due.
    fn due(&self, now_ms: u64) -> Option<Anchoring> {
        (self.last_ms == 0 || now_ms.saturating_sub(self.last_ms) >= ANCHOR_EVERY_MS)
            .then(|| Anchoring { now_ms, named: self.named.clone() })
    }

    fn committed(&mut self, made: Anchoring) {
        self.last_ms = made.now_ms.max(1);
        self.named = made.named;
    }
}

/// The other replicas' chain heads that moved since `anchoring` last named them, as records for `replica`'s
/// chain; `anchoring` now names them. One index probe per replica (a loose scan of the primary key).
async fn cross_anchor_entries(
    tx: &tokio_postgres::Transaction<'_>,
    replica: &str,
    anchoring: &mut Anchoring,
) -> Result<Vec<AuditEntry>> {
    let heads = tx
        .query(
            "with recursive replicas (replica) as ( \
               (select replica from audit order by replica limit 1) \
               union all \
               select (select a.replica from audit a where a.replica > r.replica order by a.replica limit 1) \
               from replicas r where r.replica is not null) \
             select r.replica, h.seq, h.hash from replicas r cross join lateral \
               (select seq, hash from audit a where a.replica = r.replica order by seq desc limit 1) h \
             where r.replica is not null and r.replica <> $1",
            &[&replica],
        )
        .await
        .map_err(|e| pg_err("other replicas' heads", &e))?;
    let mut entries = Vec::new();
    for row in heads {
        let get = |e: tokio_postgres::Error| pg_err("other replicas' heads", &e);
        let other: String = row.try_get(0).map_err(get)?;
        let head = head_after(row.try_get(1).map_err(get)?, row.try_get(2).map_err(get)?)?;
        if anchoring.named.get(&other) != Some(&head) {
            entries.push(chain::replica_head_entry(&other, head));
            anchoring.named.insert(other, head);
        }
    }
    Ok(entries)
}

async fn load_head(c: &Client, replica: &str) -> Result<ChainHead> {
    let row = c
        .query_opt("select seq, hash from audit where replica = $1 order by seq desc limit 1", &[&replica])
        .await
        .map_err(|e| pg_err("chain head", &e))?;
    let Some(row) = row else { return Ok(ChainHead { records: 0, hash: [0; 32] }) };
    let get = |e: tokio_postgres::Error| pg_err("chain head", &e);
    head_after(row.try_get(0).map_err(get)?, row.try_get(1).map_err(get)?)
}

/// The head of a chain whose last stored record has `seq` and `hash`.
fn head_after(seq: i64, hash: Vec<u8>) -> Result<ChainHead> {
    Ok(ChainHead {
        records: to_u64("seq", seq)?.saturating_add(1),
        hash: hash.try_into().map_err(|_| Error::check(LAYER, "stored chain hash is not 32 bytes"))?,
    })
}

async fn commit_batch(
    target: &super::Target,
    replica: &str,
    client: &mut Option<Client>,
    head: &mut Option<ChainHead>,
    batch: &[Job],
    anchoring: Option<&mut Anchoring>,
) -> Result<Vec<Recorded>> {
    if client.as_ref().is_none_or(Client::is_closed) {
        *client = Some(connect(target).await?);
    }
    let c = client.as_mut().ok_or_else(|| Error::check(LAYER, "no connection"))?;
    let start = match *head {
        Some(h) => h,
        None => load_head(c, replica).await?,
    };
    let tx = c.transaction().await.map_err(|e| pg_err("begin", &e))?;
    // Each nonce once: a second release of the same nonce in this batch is a replay without asking.
    let mut seen = HashSet::new();
    let (nonces, expiries): (Vec<Vec<u8>>, Vec<i64>) =
        batch.iter().filter_map(|j| j.nonce.clone()).filter(|(n, _)| seen.insert(n.clone())).unzip();
    let fresh: HashSet<Vec<u8>> = if nonces.is_empty() {
        HashSet::new()
    } else {
        tx.query(
            "insert into used_nonces (nonce, expires_ms) select * from unnest($1::bytea[], $2::int8[]) \
             on conflict (nonce) do nothing returning nonce",
            &[&nonces, &expiries],
        )
        .await
        .map_err(|e| pg_err("used nonces", &e))?
        .iter()
        .map(|r| r.try_get::<_, Vec<u8>>(0))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| pg_err("used nonces", &e))?
    };
    let mut claimed: HashSet<&[u8]> = HashSet::new();
    // The cross-anchors first: the tokens of this batch's releases then carry a head that covers them.
    let (mut rows, mut tip) = match anchoring {
        Some(a) => chain::extend(replica, start, &cross_anchor_entries(&tx, replica, a).await?, a.now_ms),
        None => (Vec::new(), start),
    };
    let mut outcomes: Vec<Option<(std::ops::Range<usize>, ChainHead)>> = Vec::with_capacity(batch.len());
    for job in batch {
        if let Some((n, _)) = &job.nonce
            && !(fresh.contains(n) && claimed.insert(n.as_slice()))
        {
            outcomes.push(None);
            continue;
        }
        let (new_rows, new_tip) = chain::extend(replica, tip, &job.entries, job.now_ms);
        let from = rows.len();
        rows.extend(new_rows);
        tip = new_tip;
        outcomes.push(Some((from..rows.len(), tip)));
    }
    insert_rows(&tx, &rows).await?;
    tx.commit().await.map_err(|e| pg_err("commit", &e))?;
    *head = Some(tip);
    Ok(outcomes
        .into_iter()
        .map(|o| match o {
            None => Recorded::Replay,
            Some((range, h)) => Recorded::Committed(
                rows.get(range).unwrap_or_default().iter().map(Row::to_record).collect(),
                AnchoredHead { replica: Some(replica.to_owned()), head: h },
            ),
        })
        .collect())
}

async fn insert_rows(tx: &tokio_postgres::Transaction<'_>, rows: &[Row]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut more = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in rows {
        cols.0.push(r.replica.as_str());
        cols.1.push(to_i64("seq", r.seq)?);
        cols.2.push(to_i64("time", r.time_ms)?);
        cols.3.push(i16::from(chain::decision_code(r.decision)));
        cols.4.push(r.key_id.as_str());
        more.0.push(r.evidence_digest.as_slice());
        more.1.push(r.rule.as_str());
        more.2.push(r.reason.as_str());
        more.3.push(r.prev.as_slice());
        more.4.push(r.hash.as_slice());
    }
    tx.execute(
        "insert into audit (replica, seq, time_ms, decision, key_id, evidence_digest, rule, reason, prev, hash) \
         select * from unnest($1::text[], $2::int8[], $3::int8[], $4::int2[], $5::text[], $6::bytea[], $7::text[], \
         $8::text[], $9::bytea[], $10::bytea[])",
        &[&cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &more.0, &more.1, &more.2, &more.3, &more.4],
    )
    .await
    .map_err(|e| pg_err("audit insert", &e))?;
    Ok(())
}

fn row_from_db(r: &tokio_postgres::Row) -> Result<Row> {
    let get = |e: tokio_postgres::Error| pg_err("audit row", &e);
    let b32 = |what: &str, v: Vec<u8>| -> Result<[u8; 32]> {
        v.try_into().map_err(|_| Error::check(LAYER, format!("audit {what} is not 32 bytes")))
    };
    let code: i16 = r.try_get("decision").map_err(get)?;
    Ok(Row {
        replica: r.try_get("replica").map_err(get)?,
        seq: to_u64("seq", r.try_get("seq").map_err(get)?)?,
        time_ms: to_u64("time_ms", r.try_get("time_ms").map_err(get)?)?,
        decision: chain::decision_from_code(code)
            .ok_or_else(|| Error::check(LAYER, format!("audit decision code {code}")))?,
        key_id: r.try_get("key_id").map_err(get)?,
        evidence_digest: b32("evidence_digest", r.try_get("evidence_digest").map_err(get)?)?,
        rule: r.try_get("rule").map_err(get)?,
        reason: r.try_get("reason").map_err(get)?,
        prev: b32("prev", r.try_get("prev").map_err(get)?)?,
        hash: b32("hash", r.try_get("hash").map_err(get)?)?,
    })
}

/// Every replica's chain in a replicated broker's database, verified ([`verify_chains`]).
#[derive(Debug)]
pub struct VerifiedChains {
    /// `(replica, head, rows)` in replica order.
    pub chains: Vec<(String, ChainHead, Vec<Row>)>,
    /// How many cross-anchors (one replica's record of another's head) were checked.
    pub cross_anchors: usize,
}

/// Every replica's chain in the database at `url`, each verified, and every cross-anchor between them checked
/// ([`chain::check_cross_anchors`]). Used by `sealroom audit verify --postgres`.
///
/// # Errors
/// When the database cannot be read, a chain does not verify, or a chain no longer holds a head another
/// replica recorded (one line naming replica and record).
pub fn verify_chains(url: &str) -> Result<VerifiedChains> {
    let db = Database::new(url)?;
    let target = db.target();
    let chains = db.run_unbounded(async move {
        let c = connect(&target).await?;
        let replicas: Vec<String> = c
            .query("select distinct replica from audit order by replica", &[])
            .await
            .map_err(|e| pg_err("audit replicas", &e))?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| pg_err("audit replicas", &e))?;
        let mut out = Vec::new();
        for replica in replicas {
            let rows = c
                .query(
                    "select replica, seq, time_ms, decision, key_id, evidence_digest, rule, reason, prev, hash \
                     from audit where replica = $1 order by seq",
                    &[&replica],
                )
                .await
                .map_err(|e| pg_err("audit rows", &e))?
                .iter()
                .map(row_from_db)
                .collect::<Result<Vec<Row>>>()?;
            let head = chain::verify(&replica, &rows).map_err(|e| Error::check("audit log", e))?;
            out.push((replica, head, rows));
        }
        Ok(out)
    })?;
    let views: Vec<(&str, &[Row])> =
        chains.iter().map(|(r, _, rows)| (r.as_str(), rows.as_slice())).collect();
    let cross_anchors = chain::check_cross_anchors(&views).map_err(|e| Error::check("audit log", e))?;
    Ok(VerifiedChains { chains, cross_anchors })
}
