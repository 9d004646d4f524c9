//! A fixed set of threads, one per core by default, for the CPU-bound part of a release: the nonce check, the
//! appraisal, the decisions and the audit write.
//!
//! Tokio's blocking pool, which ran this before, starts a thread for every task waiting when none is idle:
//! with 32 agents releasing at once that is 32 threads time-sliced on the machine's cores, each appraisal
//! preempted and its caches refilled, and a futex wake-up and a context switch to hand each release over.
//! Here as many releases are appraised at once as there are threads; the rest wait in the queue as jobs,
//! not as threads, and a thread that finishes one takes the next without sleeping. At 32 concurrent agents
//! this took 8–20 % off the broker's CPU per release (docs/broker-scaling.md, *2026-12-06 22:40 UTC*).
//!
//! Work that waits on another machine (a PostgreSQL key store's reads) does not belong here: a thread
//! waiting on a round trip is a core's share of appraisals not done. Such reads are awaited between two
//! jobs ([`crate::store::KeyRecords::get_for_release_awaitable`]).

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of named threads taking jobs from one queue. The threads start with the first job and end
/// when the pool is dropped (after the jobs queued before).
#[derive(Debug)]
pub struct AppraisalPool {
    threads: NonZeroUsize,
    name: String,
    /// The queue, once the threads were started; or why none could be.
    queue: OnceLock<std::result::Result<mpsc::Sender<Job>, String>>,
}

impl AppraisalPool {
    /// The name of the broker's appraisal threads (what `top -H` and `/proc/*/task/*/comm` show).
    pub const THREAD_NAME: &'static str = "sr-appraise";

    /// A pool of `threads` threads named `name` (at most 15 bytes are kept by Linux).
    #[must_use]
    pub fn new(threads: NonZeroUsize, name: &str) -> Self {
        Self { threads, name: name.to_owned(), queue: OnceLock::new() }
    }

    /// One thread per core this process may run on (one when that cannot be told), named
    /// [`AppraisalPool::THREAD_NAME`].
    #[must_use]
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN), Self::THREAD_NAME)
    }

    /// How many threads the pool runs.
    #[must_use]
    pub fn threads(&self) -> NonZeroUsize {
        self.threads
    }

    /// Runs `job` on one of the pool's threads and awaits its result, holding no thread while it waits. The
    /// job runs to its end even when the awaiting future is dropped.
    ///
    /// # Errors
    /// The pool's threads could not be started, or the job panicked.
    pub async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move || {
            // A panic drops `tx` unsent: the awaiting side sees the failure below.
            if let Ok(out) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
                let _ = tx.send(out);
            }
        }))?;
        rx.await.map_err(|_| Error::check("broker", "an appraisal job panicked: nothing of it is answered"))
    }

    fn submit(&self, job: Job) -> Result<()> {
        let queue = self.queue.get_or_init(|| self.start());
        let sent = match queue {
            // Cannot fail while `self` lives: the threads end only when the sender is dropped.
            Ok(q) => q.send(job).map_err(|_| "every thread of the pool has ended".to_owned()),
            Err(e) => Err(e.clone()),
        };
        sent.map_err(|e| Error::check("broker", format!("appraisal pool: {e}")))
    }

    /// Starts the threads; `Err` only when not one could be started.
    fn start(&self) -> std::result::Result<mpsc::Sender<Job>, String> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0usize;
        let mut last_error = String::new();
        for _ in 0..self.threads.get() {
            let rx = Arc::clone(&rx);
            match std::thread::Builder::new().name(self.name.clone()).spawn(move || take_jobs(&rx)) {
                Ok(_) => started += 1,
                Err(e) => last_error = e.to_string(),
            }
        }
        if started == 0 {
            return Err(format!("no thread could be started: {last_error}"));
        }
        Ok(tx)
    }
}

/// A pool thread: the next job, until the pool is dropped.
fn take_jobs(queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for a job, never while running one.
        let next = match queue.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match next {
            Ok(job) => job(),
            Err(mpsc::RecvError) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> NonZeroUsize {
        NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN)
    }

    #[tokio::test]
    async fn runs_jobs_on_its_own_named_threads() {
        let pool = AppraisalPool::new(two(), "test-pool");
        let name = pool.run(|| std::thread::current().name().map(str::to_owned)).await.ok().flatten();
        assert_eq!(name.as_deref(), Some("test-pool"));
    }

    #[tokio::test]
    async fn runs_no_more_jobs_at_once_than_it_has_threads() {
        let pool = Arc::new(AppraisalPool::new(two(), "test-pool"));
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut jobs = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (pool, running, most) = (Arc::clone(&pool), Arc::clone(&running), Arc::clone(&most));
            jobs.spawn(async move {
                pool.run(move || {
                    use std::sync::atomic::Ordering::SeqCst;
                    let now = running.fetch_add(1, SeqCst) + 1;
                    most.fetch_max(now, SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    running.fetch_sub(1, SeqCst);
                })
                .await
            });
        }
        for done in jobs.join_all().await {
            assert!(done.is_ok());
        }
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_pool_goes_on() {
        let pool = AppraisalPool::new(NonZeroUsize::MIN, "test-pool");
        let failed = pool.run(|| -> u8 { panic!("a verifier bug") }).await;
        assert!(failed.is_err_and(|e| e.to_string().contains("panicked")));
        assert_eq!(pool.run(|| 7u8).await.ok(), Some(7));
    }
}
