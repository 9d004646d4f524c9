//! Group commit of release records: concurrent releases share one redb write transaction and one fsync.
//!
//! Every passing release stores its release records ([`super::KeyStore::record_releases`]) durably before its
//! sealed keys leave the broker. redb has a single writer, and each `Durability::Immediate` commit costs an
//! fsync, so with one transaction per release 32 concurrent passing releases queued behind 32 fsyncs one after
//! another — the audit log next to it already shares one fdatasync between them ([`crate::audit::GroupCommitLog`]).
//! Here the same is done for the key store: callers append their (already sealed) rows to the open batch; whoever
//! finds no commit running becomes the leader, takes the whole batch and commits it in one transaction (rows in
//! arrival order, `Durability::Immediate`); callers arriving meanwhile form the next batch, which one of them
//! leads once the commit in flight has ended. Each caller returns only after the commit holding its own rows
//! has completed, with that commit's outcome: when a batch fails, every caller in it gets the error and nothing
//! of it is acknowledged. A failed batch does not fail later ones (redb aborts the transaction; the next one is
//! tried afresh), as with one transaction per release.
//!
//! A batch holds at most the rows of the releases waiting at once, which the broker's blocking pool bounds.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use redb::{Database, Durability};

use super::{LAYER, RELEASES};
use crate::error::{Error, Result};

/// One release record, sealed, waiting for its commit.
#[derive(Debug)]
pub(super) struct Row {
    pub(super) tee_key_digest: [u8; 32],
    pub(super) key_id: String,
    pub(super) sealed: Vec<u8>,
}

/// The outcome of one batch's commit, set once by its leader and read by every caller in it (the error text
/// without the layer).
type Outcome = Arc<OnceLock<std::result::Result<(), String>>>;

#[derive(Debug, Default)]
struct Batch {
    rows: Vec<Row>,
    outcome: Outcome,
}

#[derive(Debug, Default)]
struct Queue {
    /// Rows of the callers waiting for the next commit.
    open: Batch,
    /// Whether a leader is committing a batch now.
    committing: bool,
}

/// The release-record writer shared by concurrent releases (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct ReleaseCommits {
    queue: Mutex<Queue>,
    committed: Condvar,
    /// Transactions committed or tried, for tests to see that callers shared them.
    #[cfg(test)]
    pub(super) commits: std::sync::atomic::AtomicU64,
}

impl ReleaseCommits {
    fn lock(&self) -> Result<MutexGuard<'_, Queue>> {
        self.queue.lock().map_err(|_| Error::check(LAYER, "lock poisoned by an earlier panic"))
    }

    /// Stores `rows` in `db` in a commit shared with the callers waiting at the same time, and returns once that
    /// commit has completed (fsync'd), with its error if it failed.
    pub(super) fn record(&self, db: &Database, rows: Vec<Row>) -> Result<()> {
        let mut queue = self.lock()?;
        queue.open.rows.extend(rows);
        let mine = Arc::clone(&queue.open.outcome);
        // Only a leader takes the open batch, and it sets the batch's outcome before it clears `committing`: so
        // while `mine` is unset and no commit runs, `mine` is still the open batch, and this caller leads it.
        while mine.get().is_none() && queue.committing {
            queue = self
                .committed
                .wait(queue)
                .map_err(|_| Error::check(LAYER, "lock poisoned by an earlier panic"))?;
        }
        if mine.get().is_none() {
            let batch = std::mem::take(&mut queue.open);
            queue.committing = true;
            drop(queue);
            let leader = Leader { commits: self, outcome: Arc::clone(&batch.outcome) };
            let _ = batch.outcome.set(self.commit(db, &batch.rows));
            drop(leader);
        }
        match mine.get() {
            Some(Ok(())) => Ok(()),
            Some(Err(why)) => Err(Error::check(LAYER, why.clone())),
            None => Err(Error::check(LAYER, "release record batch ended without an outcome")),
        }
    }

    /// One write transaction with every row of a batch, committed with `Durability::Immediate`.
    fn commit(&self, db: &Database, rows: &[Row]) -> std::result::Result<(), String> {
        #[cfg(test)]
        self.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut txn = db.begin_write().map_err(db_text)?;
        txn.set_durability(Durability::Immediate).map_err(db_text)?;
        {
            let mut table = txn.open_table(RELEASES).map_err(db_text)?;
            for row in rows {
                table
                    .insert((row.tee_key_digest.as_slice(), row.key_id.as_str()), row.sealed.as_slice())
                    .map_err(db_text)?;
            }
        }
        txn.commit().map_err(db_text)
    }

    /// The rows waiting and whether a commit runs, for tests that hold a batch back.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> (usize, bool) {
        let queue = self.queue.lock().unwrap();
        (queue.open.rows.len(), queue.committing)
    }
}

/// A database error as [`super::KeyStore`] words it, without the layer.
fn db_text(e: impl std::fmt::Display) -> String {
    format!("database: {e}")
}

/// Ends a leader's commit even if it panicked: its batch gets an outcome and the next batch a leader.
struct Leader<'a> {
    commits: &'a ReleaseCommits,
    outcome: Outcome,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let _ = self.outcome.set(Err("the release record commit panicked".to_owned()));
        let mut queue = self.commits.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.committing = false;
        drop(queue);
        self.commits.committed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use redb::TableDefinition;

    use super::super::{Kek, KeyStore, ReleaseRecord};
    use crate::testing::CountingRandomness;

    fn open(path: &Path) -> KeyStore {
        KeyStore::open(path, Kek::from_bytes(&[7; 32]).unwrap(), &CountingRandomness::default()).unwrap()
    }

    fn record(i: u8, key: u32) -> ReleaseRecord {
        ReleaseRecord {
            audit_seq: u64::from(i) * 10 + u64::from(key),
            time_ms: 1000 + u64::from(i),
            key_version: key,
        }
    }

    /// `callers` threads each record two releases while the test holds redb's write lock, so the first caller's
    /// commit waits and the others pile up in the next batch; `then` runs once they all wait. Returns what each
    /// caller got.
    fn held_back(
        store: &KeyStore,
        callers: u8,
        then: impl FnOnce(redb::WriteTransaction),
    ) -> Vec<crate::error::Result<()>> {
        let blocker = store.db.begin_write().unwrap();
        std::thread::scope(|s| {
            let threads: Vec<_> = (0..callers)
                .map(|i| {
                    s.spawn(move || {
                        store.record_releases(&[i; 32], &[("a/1", record(i, 1)), ("b/1", record(i, 2))])
                    })
                })
                .collect();
            let deadline = Instant::now() + Duration::from_secs(60);
            while store.releases.waiting() != (2 * usize::from(callers - 1), true) {
                assert!(Instant::now() < deadline, "callers never queued: {:?}", store.releases.waiting());
                std::thread::sleep(Duration::from_millis(1));
            }
            then(blocker);
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        })
    }

    #[test]
    fn concurrent_releases_share_commits_and_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.redb");
        let store = open(&path);
        // 32 callers, two commits: the first caller's alone, then the other 31 in one.
        for r in held_back(&store, 32, drop) {
            r.unwrap();
        }
        assert_eq!(store.releases.commits.load(Ordering::Relaxed), 2);
        // Free-running: 8 threads recording 25 times each, as fast as they can.
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let store = &store;
                s.spawn(move || {
                    for n in 0..25u8 {
                        let i = 32 + t * 25 + n;
                        store
                            .record_releases(&[i; 32], &[("a/1", record(i, 1)), ("b/1", record(i, 2))])
                            .unwrap();
                    }
                });
            }
        });
        let commits = store.releases.commits.load(Ordering::Relaxed);
        assert!(commits <= 2 + 200, "{commits}");
        drop(store);

        let store = open(&path);
        for i in 0..232u8 {
            assert_eq!(store.find_release(&[i; 32], "a/1").unwrap(), Some(record(i, 1)), "caller {i}");
            assert_eq!(store.find_release(&[i; 32], "b/1").unwrap(), Some(record(i, 2)), "caller {i}");
        }
        assert_eq!(store.find_release(&[232; 32], "a/1").unwrap(), None);
    }

    /// A real redb failure in the shared transaction: the table holding release records replaced by one of
    /// another type while the batches wait, so opening it fails in both batches.
    #[test]
    fn a_failed_commit_fails_every_caller_in_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.redb");
        let store = open(&path);
        let wrong: TableDefinition<'_, u64, u64> = TableDefinition::new("releases");
        let results = held_back(&store, 8, |txn| {
            txn.open_table(wrong).unwrap().insert(1, 1).unwrap();
            txn.commit().unwrap();
        });
        assert_eq!(store.releases.commits.load(Ordering::Relaxed), 2);
        for r in results {
            let err = r.unwrap_err().to_string();
            assert!(err.starts_with("key store: database: ") && err.contains("releases"), "{err}");
        }
        // The next batch is tried afresh.
        let txn = store.db.begin_write().unwrap();
        txn.delete_table(wrong).unwrap();
        txn.commit().unwrap();
        store.record_releases(&[9; 32], &[("a/1", record(9, 1))]).unwrap();
        drop(store);

        let store = open(&path);
        assert_eq!(store.find_release(&[9; 32], "a/1").unwrap(), Some(record(9, 1)));
        for i in 0..8u8 {
            assert_eq!(store.find_release(&[i; 32], "a/1").unwrap(), None);
        }
    }
}
