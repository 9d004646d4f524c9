//! The broker's state in PostgreSQL, for several stateless replicas (`sealroom broker serve --store
//! postgres://…`; design and operator steps in `docs/broker-scaling.md`).
//!
//! - [`keys`]: keys and policies, material sealed under the KEK exactly as in the embedded store (the
//!   database and its backups never see a key in clear; the KEK stays a file on each replica).
//! - [`ledger`]: stateless MACed nonces ([`crate::nonce_mac`]), the `used_nonces` table, and one audit chain
//!   per replica ([`chain`]), the nonce's use and the release's records committed in one transaction before
//!   the reply.
//! - [`migrations`]: the schema, owned and upgraded by the broker at start.
//!
//! The driver is tokio-postgres, run on a small runtime of the store's own, so the store's synchronous methods
//! can be called from anywhere (blocking release tasks, the admin endpoint, the CLI) without nesting runtimes.
//! Every connection goes through [`tls`]: plaintext only to this machine, TLS with the server's certificate
//! checked (`sslmode=verify-full&sslrootcert=…`) to any other.
//! Each data provider may have its own database role and schema (a role's default `search_path` starts with a
//! schema of its own name), so one provider's credentials cannot read another provider's keys.

pub mod chain;
pub mod keys;
pub mod ledger;
pub mod migrations;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use tokio_postgres::{Client, Config, NoTls};

use self::tls::Security;

use crate::error::{Error, Result};
use crate::keystore::Kek;
use crate::store::Awaitable;

const LAYER: &str = "postgres";

pub(crate) fn pg_err(what: &str, e: &tokio_postgres::Error) -> Error {
    // The driver's Display is terse ("db error", "error performing TLS handshake"); the server's message, or the
    // cause (which certificate check failed, which socket error), says what went wrong.
    let detail = e.as_db_error().map_or_else(
        || std::error::Error::source(e).map_or_else(|| e.to_string(), |cause| format!("{e}: {cause}")),
        |d| format!("{}: {}", d.code().code(), d.message()),
    );
    Error::check(LAYER, format!("{what}: {detail}"))
}

pub(crate) fn to_i64(what: &str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::check(LAYER, format!("{what} {v} out of range")))
}

pub(crate) fn to_u64(what: &str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::check(LAYER, format!("stored {what} {v} is negative")))
}

/// A connection to the broker's database: the parsed URL and a runtime that drives the driver.
pub struct Database {
    target: Target,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        let c = &self.target.config;
        write!(f, "Database(user={:?}, dbname={:?})", c.get_user(), c.get_dbname())
    }
}

impl Database {
    /// Parses a `postgres://user:password@host:port/db` URL (or a libpq key=value string), with
    /// `sslmode=verify-full&sslrootcert=CA.pem` for a database on another machine ([`tls::parse`]), and starts
    /// the store's runtime. Nothing is connected yet.
    ///
    /// # Errors
    /// When the URL does not parse, would leave a remote database unauthenticated, or the runtime cannot start.
    pub fn new(url: &str) -> Result<Self> {
        let (mut config, security) = tls::parse(url)?;
        notice_dead_connections(&mut config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sealroom-pg")
            .enable_all()
            .build()
            .map_err(|e| Error::check(LAYER, format!("runtime: {e}")))?;
        Ok(Self { target: Target { config, security }, runtime: Some(runtime) })
    }

    /// Runs `fut` on the store's runtime and waits for it, at most [`DATABASE_TIMEOUT`]: a key read or an admin
    /// change that gets no answer fails with a reason instead of holding the caller's thread (a release's, or
    /// the admin socket's) for as long as TCP takes to notice. Usable from any thread, inside or outside
    /// another tokio runtime (the caller's thread blocks, as it would on a redb transaction).
    ///
    /// # Errors
    /// `fut`'s error, no answer in time, or when the runtime is gone.
    pub fn run<T: Send + 'static>(&self, fut: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        self.run_unbounded(async move {
            tokio::time::timeout(DATABASE_TIMEOUT, fut).await.unwrap_or_else(|_| Err(no_answer()))
        })
    }

    /// As [`Database::run`] without a time limit, for work whose length grows with the data (verifying every
    /// audit chain) or that may rightly wait for another replica (the schema migration's lock).
    ///
    /// # Errors
    /// `fut`'s error, or when the runtime is gone.
    pub fn run_unbounded<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let rt = self.runtime.as_ref().ok_or_else(|| Error::check(LAYER, "runtime stopped"))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| Error::check(LAYER, "database task ended without an answer"))?
    }

    /// As [`Database::run`] without blocking the caller: `fut` starts on the store's runtime at once and the
    /// returned future, which holds no thread while it waits, answers with its result (at most
    /// [`DATABASE_TIMEOUT`] later). For the key-store reads and writes of releases and receipts on a replica,
    /// where a blocked thread per call in flight would bound a replica's calls by its thread pool.
    #[must_use]
    pub fn run_awaitable<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Awaitable<Result<T>> {
        let Some(rt) = self.runtime.as_ref() else {
            return Box::pin(std::future::ready(Err(Error::check(LAYER, "runtime stopped"))));
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        rt.spawn(async move {
            let _ = tx
                .send(tokio::time::timeout(DATABASE_TIMEOUT, fut).await.unwrap_or_else(|_| Err(no_answer())));
        });
        Box::pin(async move {
            rx.await.map_err(|_| Error::check(LAYER, "database task ended without an answer"))?
        })
    }

    /// Spawns a task on the store's runtime.
    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let rt = self.runtime.as_ref().ok_or_else(|| Error::check(LAYER, "runtime stopped"))?;
        rt.spawn(fut);
        Ok(())
    }

    /// Where and how to connect (for tasks that connect themselves).
    #[must_use]
    pub fn target(&self) -> Target {
        self.target.clone()
    }
}

/// A database's connection settings and how its connections are secured, both from its URL: every connection
/// of a store is made from one of these ([`connect`]), so none can be made without the URL's security.
#[derive(Clone)]
pub struct Target {
    config: Config,
    security: Security,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        write!(
            f,
            "Target(user={:?}, dbname={:?}, {:?})",
            self.config.get_user(),
            self.config.get_dbname(),
            self.security
        )
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // Allowed from async contexts too (a blocking shutdown is not).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Longest the broker waits for one database operation (a ledger batch, a key read, an admin change),
/// connecting included, before failing it with [`no_answer`].
pub const DATABASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The error of an operation that got no answer within [`DATABASE_TIMEOUT`].
pub(crate) fn no_answer() -> Error {
    Error::check(LAYER, format!("the database did not answer within {} s", DATABASE_TIMEOUT.as_secs()))
}

/// Connection settings that let a dead peer close a connection within a minute rather than hours (where the
/// URL does not set its own): a connection timeout, TCP keepalives after 10 s idle (every 5 s, 3 tries), and a
/// TCP user timeout of 20 s for data that is never acknowledged. A connection closed so is replaced on next use
/// (the shared read connection, the ledger writer's).
fn notice_dead_connections(config: &mut Config) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DATABASE_TIMEOUT);
    }
    if config.get_keepalives_interval().is_none() && config.get_keepalives_retries().is_none() {
        config.keepalives_idle(std::time::Duration::from_secs(10));
        config.keepalives_interval(std::time::Duration::from_secs(5));
        config.keepalives_retries(3);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(std::time::Duration::from_secs(20));
    }
}

/// Opens a new connection to `target`, secured as its URL said; its I/O task runs on the current (the store's)
/// runtime.
///
/// # Errors
/// When the server cannot be reached, fails the certificate check, or refuses the credentials.
pub(crate) async fn connect(target: &Target) -> Result<Client> {
    match &target.security {
        Security::Local => connect_with(&target.config, NoTls).await,
        Security::VerifyFull(tls) => connect_with(&target.config, tls.clone()).await,
    }
}

/// [`connect`] through `tls` (the two kinds of connection differ only in their stream's type).
async fn connect_with<T>(config: &Config, tls: T) -> Result<Client>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await.map_err(|e| pg_err("connect", &e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A shared connection for reads (tokio-postgres pipelines concurrent queries on one connection), replaced when
/// the server closed it (a restart).
#[derive(Debug)]
pub(crate) struct SharedClient {
    target: Target,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl SharedClient {
    pub(crate) fn new(target: Target) -> Self {
        Self { target, client: tokio::sync::Mutex::new(None) }
    }

    pub(crate) async fn get(&self) -> Result<Arc<Client>> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(connect(&self.target).await?);
        *slot = Some(Arc::clone(&c));
        Ok(c)
    }
}

/// The keys and the ledger of one replica on one database.
#[derive(Debug)]
pub struct PgStore {
    /// Keys and policies.
    pub keys: Arc<keys::PgKeys>,
    /// Nonces and audit chain.
    pub ledger: Arc<ledger::PgLedger>,
}

/// Connects, migrates the schema and checks the KEK against the database. Keys only (admin operations).
///
/// # Errors
/// When the database cannot be reached, migrated, or the KEK does not match.
pub fn open_keys(url: &str, kek: Kek, rng: &dyn crate::Randomness) -> Result<Arc<keys::PgKeys>> {
    let db = migrated(url)?;
    keys::PgKeys::open(db, kek, rng).map(Arc::new)
}

fn migrated(url: &str) -> Result<Arc<Database>> {
    let db = Arc::new(Database::new(url)?);
    let target = db.target();
    db.run_unbounded(async move {
        let mut c = connect(&target).await?;
        migrations::migrate(&mut c).await
    })?;
    Ok(db)
}

/// Opens a replica: connects, migrates the schema, checks the KEK, and starts the replica's audit writer.
///
/// # Errors
/// When the database cannot be reached or migrated, the KEK does not match, or the replica id is invalid.
pub fn open(
    url: &str,
    kek: Kek,
    rng: &dyn crate::Randomness,
    nonce_keys: crate::nonce_mac::NonceKeys,
    replica: &str,
) -> Result<PgStore> {
    let db = migrated(url)?;
    let keys = Arc::new(keys::PgKeys::open(Arc::clone(&db), kek, rng)?);
    let ledger = Arc::new(ledger::PgLedger::start(db, nonce_keys, replica)?);
    Ok(PgStore { keys, ledger })
}
