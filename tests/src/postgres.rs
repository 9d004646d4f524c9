//! A real PostgreSQL server for tests: `initdb` into a fresh temporary directory, `pg_ctl start` on a free
//! loopback port (and a unix socket in the same directory), stopped and removed when dropped.
//!
//! PostgreSQL refuses to run as root. When the tests run as root (CI containers), the data directory is
//! handed to the unprivileged `nobody` user and every server command runs as that user through `setpriv`
//! (util-linux); otherwise the server runs as the current user. Clients connect as the superuser
//! `postgres` with a random password (SCRAM-SHA-256 on every connection, no `trust` entries), so a test that
//! creates roles for different data providers exercises real authentication.
//!
//! [`Postgres::start_with_tls`] serves TLS only (`ssl = on`, every TCP line of pg_hba.conf `hostssl`), with a
//! certificate the test made, so a client that does not speak TLS is refused by the server itself.
//! [`Postgres::start_with_client_certs`] also requires a client certificate from a given CA on every TCP
//! connection of the test roles ([`ClientCertAuth`]).
//!
//! The binaries come from Debian's `postgresql` package (installed by `ci/setup`):
//! `/usr/lib/postgresql/<major>/bin`, the newest major found, or the directory named by `SEALROOM_PG_BIN`.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::swtpm::unique_temp_dir;

/// The unprivileged account the server runs as when the tests run as root.
const UNPRIVILEGED_USER: &str = "nobody";
/// The superuser created by `initdb`.
pub const SUPERUSER: &str = "postgres";

/// Why PostgreSQL could not be started or controlled.
#[derive(Debug)]
pub struct PostgresError(pub String);

impl std::fmt::Display for PostgresError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "postgresql: {}", self.0)
    }
}

impl std::error::Error for PostgresError {}

fn err(m: impl Into<String>) -> PostgresError {
    PostgresError(m.into())
}

/// How a server from [`Postgres::start_with_client_certs`] authenticates the test roles' TCP connections
/// (pg_hba.conf). Either way the certificate must be issued by the server's `ssl_ca_file` and its CN must be the
/// role connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertAuth {
    /// `cert`: the client certificate alone; no password is asked.
    Cert,
    /// `scram-sha-256 clientcert=verify-full`: the role's password and a certificate.
    ScramAndCert,
}

/// The TLS settings of a server: its certificate chain and key, and optionally the CA of the client
/// certificates it requires.
#[derive(Debug, Clone, Copy)]
struct TlsFiles<'a> {
    cert: &'a Path,
    key: &'a Path,
    client: Option<(&'a Path, ClientCertAuth)>,
}

/// A running PostgreSQL server in its own temporary directory. Dropping it stops the server (`pg_ctl stop
/// -m immediate`) and removes the directory.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    password: String,
    run_as: Option<(u32, u32)>,
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
///
/// # Errors
/// When PostgreSQL is not installed (run `ci/setup`).
pub fn bin_dir() -> Result<PathBuf, PostgresError> {
    if let Some(dir) = std::env::var_os("SEALROOM_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut majors: Vec<u32> = std::fs::read_dir(root)
        .map_err(|e| err(format!("{}: {e}; install the postgresql package (run ci/setup)", root.display())))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|m: &u32| root.join(m.to_string()).join("bin/initdb").exists())
        .collect();
    majors.sort_unstable();
    majors.last().map(|m| root.join(m.to_string()).join("bin")).ok_or_else(|| {
        err("no /usr/lib/postgresql/<major>/bin/initdb; install the postgresql package (run ci/setup)")
    })
}

fn free_port() -> Result<u16, PostgresError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| err(format!("free port: {e}")))?;
    l.local_addr().map(|a| a.port()).map_err(|e| err(format!("free port: {e}")))
}

/// uid and gid of `user` from /etc/passwd.
fn lookup_user(user: &str) -> Result<(u32, u32), PostgresError> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| err(format!("/etc/passwd: {e}")))?;
    passwd
        .lines()
        .find_map(|line| {
            let mut f = line.split(':');
            (f.next()? == user).then_some(())?;
            let uid = f.nth(1)?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some((uid, gid))
        })
        .ok_or_else(|| {
            err(format!("no user {user} in /etc/passwd to run the server as (PostgreSQL refuses root)"))
        })
}

/// CPU time (ns) run so far by process `pid`'s main thread.
fn process_cpu_ns(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?.split_whitespace().next()?.parse().ok()
}

/// Sends `SIGNAL` (a name as `kill -s` takes it) to `pids` (the shell's own `kill`: no procps needed).
fn signal(pids: &[u32], name: &str) -> Result<(), PostgresError> {
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    let status = Command::new("sh")
        .args(["-c", &format!("kill -s {name} {}", list.join(" "))])
        .status()
        .map_err(|e| err(format!("kill -s {name}: {e}")))?;
    if status.success() { Ok(()) } else { Err(err(format!("kill -s {name} {list:?}: {status}"))) }
}

/// A server stopped by [`Postgres::freeze`]; dropping this continues it (`SIGCONT`), also when a test fails.
#[derive(Debug)]
pub struct Frozen<'a> {
    pids: Vec<u32>,
    _server: std::marker::PhantomData<&'a Postgres>,
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if let Err(e) = signal(&self.pids, "CONT") {
            eprintln!("{e}: the PostgreSQL test server stays stopped");
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn random_password() -> Result<String, PostgresError> {
    let mut b = [0u8; 18];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| err("random password: system random source failed"))?;
    Ok(hex::encode(b))
}

impl Postgres {
    /// Creates a cluster in a fresh temporary directory and starts the server on a free loopback port.
    ///
    /// # Errors
    /// When PostgreSQL is not installed, `initdb` fails, or the server does not accept connections in 30 s.
    pub fn start() -> Result<Self, PostgresError> {
        Self::start_on(free_port()?, None)
    }

    /// [`Postgres::start`] with TLS only: `ssl = on` with the certificate chain `cert` (PEM) and its key `key`
    /// (copied into the data directory, owned by the server's user, mode 0600), and pg_hba.conf admitting TCP
    /// clients only over TLS (`hostssl`, still SCRAM-SHA-256). The unix socket stays plaintext, as PostgreSQL
    /// has no TLS there.
    ///
    /// # Errors
    /// As [`Postgres::start`], or when the certificate or key cannot be copied.
    pub fn start_with_tls(cert: &Path, key: &Path) -> Result<Self, PostgresError> {
        Self::start_on(free_port()?, Some(TlsFiles { cert, key, client: None }))
    }

    /// [`Postgres::start_with_tls`] requiring client certificates: `ssl_ca_file` is `client_ca` (PEM, copied
    /// into the data directory), and every role but the superuser is admitted over TCP only as `auth` says
    /// (`hostssl all all 127.0.0.1/32 cert`, or `scram-sha-256 clientcert=verify-full`). The superuser keeps
    /// SCRAM over TLS without a certificate (the line before), so [`Postgres::psql`] still works; the unix
    /// socket stays SCRAM.
    ///
    /// # Errors
    /// As [`Postgres::start_with_tls`], or when the client CA cannot be copied.
    pub fn start_with_client_certs(
        cert: &Path,
        key: &Path,
        client_ca: &Path,
        auth: ClientCertAuth,
    ) -> Result<Self, PostgresError> {
        Self::start_on(free_port()?, Some(TlsFiles { cert, key, client: Some((client_ca, auth)) }))
    }

    /// [`Postgres::start`] on `port` first, moving to another free port when the server cannot bind it.
    fn start_on(port: u16, tls: Option<TlsFiles<'_>>) -> Result<Self, PostgresError> {
        let bin = bin_dir()?;
        let dir = unique_temp_dir("postgres");
        std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        let run_as = if is_root() { Some(lookup_user(UNPRIVILEGED_USER)?) } else { None };
        let password = random_password()?;
        let mut pg = Self { bin, dir, port, password, run_as };
        pg.init()?;
        if let Some(tls) = tls {
            pg.tls_only(tls)?;
        }
        // The port was free when picked, but PostgreSQL binds it only now: a parallel test may have taken it
        // meanwhile. Then try another one (a later `port` line in postgresql.auto.conf overrides the earlier).
        let mut attempts = 0;
        loop {
            let log_before = pg.server_log().len();
            match pg.start_server() {
                Ok(()) => return Ok(pg),
                Err(_)
                    if attempts < 3
                        && pg
                            .server_log()
                            .get(log_before..)
                            .is_some_and(|l| l.contains("could not bind")) =>
                {
                    attempts += 1;
                    pg.port = free_port()?;
                    pg.append_conf(&format!("port = {}\n", pg.port))?;
                    eprintln!(
                        "postgres: the picked port was taken before the server bound it; trying {}",
                        pg.port
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The server's log so far (empty when unreadable): what it says about a refused connection beyond what it
    /// tells the client.
    #[must_use]
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn append_conf(&self, conf: &str) -> Result<(), PostgresError> {
        let auto = self.data_dir().join("postgresql.auto.conf");
        let mut existing = std::fs::read_to_string(&auto).unwrap_or_default();
        existing.push_str(conf);
        std::fs::write(&auto, existing).map_err(|e| err(format!("{}: {e}", auto.display())))?;
        self.own(&auto)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn own(&self, path: &Path) -> Result<(), PostgresError> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| err(format!("chown {}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// A command for a PostgreSQL binary, run as the unprivileged user when we are root.
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match self.run_as {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    fn run(&self, what: &str, cmd: &mut Command) -> Result<Output, PostgresError> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| err(format!("{what}: {e} (is util-linux's setpriv installed?)")))?;
        if !out.status.success() {
            return Err(err(format!(
                "{what} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out)
    }

    fn init(&self) -> Result<(), PostgresError> {
        // The directory must be traversable by the server's user; the data dir itself is made 0700 by initdb.
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err(format!("chmod {}: {e}", self.dir.display())))?;
        self.own(&self.dir)?;
        let pwfile = self.dir.join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", self.password)).map_err(|e| err(format!("pwfile: {e}")))?;
        self.own(&pwfile)?;
        self.run(
            "initdb",
            self.command("initdb")
                .arg("--pgdata")
                .arg(self.data_dir())
                .arg(format!("--username={SUPERUSER}"))
                .arg("--auth=scram-sha-256")
                .arg("--pwfile")
                .arg(&pwfile)
                .arg("--encoding=UTF8")
                .arg("--locale=C")
                .arg("--no-instructions"),
        )?;
        std::fs::remove_file(&pwfile).map_err(|e| err(format!("pwfile: {e}")))?;
        // Only loopback and our own socket directory; fsync stays on (the crash tests rely on durability).
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nmax_connections = 200\n\
             fsync = on\nsynchronous_commit = on\nlogging_collector = off\n",
            self.port,
            self.dir.display()
        );
        self.append_conf(&conf)
    }

    fn tls_only(&self, tls: TlsFiles<'_>) -> Result<(), PostgresError> {
        let data = self.data_dir();
        let mut files = vec![(tls.cert, "server.crt"), (tls.key, "server.key")];
        if let Some((client_ca, _)) = tls.client {
            files.push((client_ca, "client-ca.crt"));
        }
        for (from, to) in files {
            let to = data.join(to);
            std::fs::copy(from, &to)
                .map_err(|e| err(format!("copy {} to {}: {e}", from.display(), to.display())))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| err(format!("chmod {}: {e}", to.display())))?;
            self.own(&to)?;
        }
        let hba = data.join("pg_hba.conf");
        let lines = match tls.client {
            None => "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n\
                     hostssl all all ::1/128 scram-sha-256\n"
                .to_owned(),
            Some((_, auth)) => {
                let method = match auth {
                    ClientCertAuth::Cert => "cert",
                    ClientCertAuth::ScramAndCert => "scram-sha-256 clientcert=verify-full",
                };
                format!(
                    "local all all scram-sha-256\nhostssl all {SUPERUSER} 127.0.0.1/32 scram-sha-256\n\
                     hostssl all all 127.0.0.1/32 {method}\nhostssl all all ::1/128 {method}\n"
                )
            }
        };
        std::fs::write(&hba, lines).map_err(|e| err(format!("{}: {e}", hba.display())))?;
        self.own(&hba)?;
        let mut conf = "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n".to_owned();
        if tls.client.is_some() {
            conf.push_str("ssl_ca_file = 'client-ca.crt'\n");
        }
        self.append_conf(&conf)
    }

    fn start_server(&self) -> Result<(), PostgresError> {
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl start",
            self.command("pg_ctl")
                .arg("start")
                .arg("--pgdata")
                .arg(self.data_dir())
                .arg("--log")
                .arg(&log)
                .arg("--wait")
                .arg("--timeout=30"),
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            if Instant::now() > deadline {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(err(format!(
                    "no connection on port {} after 30 s; server log:\n{tail}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn stop_server(&self, mode: &str) -> Result<(), PostgresError> {
        self.run(
            "pg_ctl stop",
            self.command("pg_ctl")
                .arg("stop")
                .arg("--pgdata")
                .arg(self.data_dir())
                .arg(format!("--mode={mode}"))
                .arg("--wait")
                .arg("--timeout=30"),
        )
        .map(|_| ())
    }

    /// Stops the server the way a crash would (`pg_ctl stop -m immediate`: no checkpoint, recovery from WAL on
    /// the next start) and starts it again on the same port with the same data.
    ///
    /// # Errors
    /// When either step fails.
    pub fn restart_after_crash(&self) -> Result<(), PostgresError> {
        self.stop_server("immediate")?;
        self.start_server()
    }

    /// Stops the server (immediate mode) and leaves it stopped until [`Postgres::start_again`].
    ///
    /// # Errors
    /// When `pg_ctl stop` fails.
    pub fn stop(&self) -> Result<(), PostgresError> {
        self.stop_server("immediate")
    }

    /// Starts a server stopped with [`Postgres::stop`] again.
    ///
    /// # Errors
    /// When `pg_ctl start` fails.
    pub fn start_again(&self) -> Result<(), PostgresError> {
        self.start_server()
    }

    /// The postmaster's pid, then its children's (each a single-threaded process). `None` where /proc or the
    /// pid file does not say.
    fn server_pids(&self) -> Option<Vec<u32>> {
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let postmaster: u32 = pid_file.lines().next()?.trim().parse().ok()?;
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            // `pid (comm) state ppid …`: the command may hold spaces and parentheses, the last ")" ends it.
            let ppid =
                stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        Some(pids)
    }

    /// CPU time (ns) run so far by the server's processes (the postmaster and its children, from
    /// `/proc/PID/schedstat`), for benchmarks that charge the database's work to what caused it. Processes that
    /// already exited are not counted. `None` where /proc or the pid file does not say.
    #[must_use]
    pub fn server_cpu_ns(&self) -> Option<u64> {
        let pids = self.server_pids()?;
        let mut total = process_cpu_ns(*pids.first()?)?;
        for pid in pids.get(1..).unwrap_or_default() {
            total += process_cpu_ns(*pid).unwrap_or(0);
        }
        Some(total)
    }

    /// Stops every server process (`SIGSTOP`) until the guard is dropped: connections stay open and nothing
    /// answers, as with a hung server or a network path that drops every packet without closing anything.
    ///
    /// # Errors
    /// When the processes cannot be found or signalled.
    pub fn freeze(&self) -> Result<Frozen<'_>, PostgresError> {
        let pids = self.server_pids().ok_or_else(|| err("no server processes to freeze"))?;
        signal(&pids, "STOP")?;
        Ok(Frozen { pids, _server: std::marker::PhantomData })
    }

    /// The loopback TCP port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password.
    #[must_use]
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The directory holding the server's unix socket (`.s.PGSQL.<port>`).
    #[must_use]
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A libpq-style URL for `user`/`password` on database `db` over loopback TCP.
    #[must_use]
    pub fn url_for(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// The superuser's URL for database `db`.
    #[must_use]
    pub fn superuser_url(&self, db: &str) -> String {
        self.url_for(SUPERUSER, &self.password, db)
    }

    /// Creates database `name` and returns the superuser's URL for it.
    ///
    /// # Errors
    /// As [`Postgres::psql`].
    pub fn create_database(&self, name: &str) -> Result<String, PostgresError> {
        self.psql("postgres", &format!("create database {name}"))?;
        Ok(self.superuser_url(name))
    }

    /// Takes an `ACCESS EXCLUSIVE` lock on `table` of database `db` in a psql session of its own and returns
    /// once it is granted; it is held, stopping every other session's reads and writes of the table, until
    /// [`TableLock::release`] (or the drop of the [`TableLock`], which ends the session). For tests of what the
    /// broker does while a statement of its own waits on the database.
    ///
    /// # Errors
    /// When psql cannot start or the lock is not granted (psql's stderr in the message).
    pub fn lock_table(&self, db: &str, table: &str) -> Result<TableLock, PostgresError> {
        use std::io::{BufRead, Write};
        let mut child = self
            .psql_command(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(format!("psql: {e}")))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(err("psql: no pipes"));
        };
        writeln!(stdin, "begin; lock table {table} in access exclusive mode; select 'locked';")
            .map_err(|e| err(format!("psql: writing the lock statement: {e}")))?;
        let mut line = String::new();
        let read = std::io::BufReader::new(stdout).read_line(&mut line);
        if read.is_err() || line.trim() != "locked" {
            drop(stdin);
            let out = child.wait_with_output().map_err(|e| err(format!("psql: {e}")))?;
            return Err(err(format!(
                "lock table {table}: not granted ({read:?}): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(TableLock { child, stdin: Some(stdin) })
    }

    /// Runs SQL through `psql` as the superuser on database `db` (`ON_ERROR_STOP`), returning its stdout
    /// (unaligned, tuples only).
    ///
    /// # Errors
    /// When psql fails; the message carries its stderr.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, PostgresError> {
        let out = self.run("psql", self.psql_command(db).arg("--command").arg(sql))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// psql as the superuser on database `db` over loopback TCP: unaligned, tuples only, stopping at the first
    /// error.
    fn psql_command(&self, db: &str) -> Command {
        let mut psql = Command::new(self.bin.join("psql"));
        psql.env("PGPASSWORD", &self.password)
            .args(["--no-psqlrc", "--quiet", "--tuples-only", "--no-align", "--set=ON_ERROR_STOP=1"])
            .arg(format!("--host={}", Ipv4Addr::LOCALHOST))
            .arg(format!("--port={}", self.port))
            .arg(format!("--username={SUPERUSER}"))
            .arg(format!("--dbname={db}"));
        psql
    }
}

/// A table lock held by a psql session of its own ([`Postgres::lock_table`]).
#[derive(Debug)]
pub struct TableLock {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl TableLock {
    /// Commits the session's transaction, which releases the lock, and ends the session.
    ///
    /// # Errors
    /// When the commit fails or psql exits with an error.
    pub fn release(mut self) -> Result<(), PostgresError> {
        use std::io::Write;
        let mut stdin = self.stdin.take().ok_or_else(|| err("psql: the session has no input"))?;
        writeln!(stdin, "commit;").map_err(|e| err(format!("psql: writing commit: {e}")))?;
        drop(stdin);
        let status = self.child.wait().map_err(|e| err(format!("psql: {e}")))?;
        if !status.success() {
            return Err(err(format!("psql holding a table lock exited with {status}")));
        }
        Ok(())
    }
}

impl Drop for TableLock {
    fn drop(&mut self) {
        // Released already, or the test failed: either way the session must not outlive it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate: the test is over, nothing needs a checkpoint. Errors are ignored: the server may already
        // be stopped (a test that called stop()).
        let _ = self.stop_server("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_taken_before_the_server_binds_it_moves_the_server_to_another() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let pg = Postgres::start_on(port, None).unwrap();
        assert_ne!(pg.port(), port);
        pg.psql("postgres", "select 1").unwrap();
        // The other listener still holds its port.
        assert_eq!(taken.local_addr().unwrap().port(), port);
    }
}
