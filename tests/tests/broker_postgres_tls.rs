//! The replicated broker's connection to PostgreSQL over TLS, against a real server that speaks TLS only
//! (`ssl = on`, `hostssl` lines in pg_hba.conf) with a certificate from a CA made in the test.
//!
//! What is shown: with `sslmode=verify-full&sslrootcert=CA.pem` a replica, the admin CLI and `sealroom audit
//! verify --postgres` work over TLS, every connection the replica holds is TLS, and the password exchange is
//! bound to the server's certificate (`channel_binding=require`). A server whose certificate comes from another
//! CA, or names another host, is refused before the password is sent, with one line naming the failed check; a
//! database on another machine without verify-full (or with a mode that does not check the server) is refused
//! at start, before anything is contacted.
//!
//! Client certificates (`sslcert`/`sslkey`) against a server that requires them (`ssl_ca_file`, pg_hba `cert`
//! or `scram-sha-256 clientcert=verify-full`): a replica, the admin CLI and audit verification authenticate with
//! the role's certificate; the server refuses a connection without one, with one from another CA, or with one
//! issued to another role.
//!
//! Revocation lists (`sslcrl`): a server whose certificate its CA revoked is refused, and so is one whose
//! issuer's list is missing or stale.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::missing_panics_doc)]

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use sealroom_broker::store::KeyRecords;
use sealroom_measurements::binding::{Kem, Nonce};
use sealroom_proto::keybroker::v1 as pb;
use sealroom_proto::keybroker::v1::key_broker_client::KeyBrokerClient;
use sealroom_tests::broker::{BrokerProcess, run_sealroom, sealroom};
use sealroom_tests::placeholder::{REFUSAL, TPM_POLICY, release_request};
use sealroom_tests::postgres::{ClientCertAuth, Postgres};
use sealroom_tests::tls::{
    ClientTls, ServerTls, ca_and_server_cert_for, ca_and_server_cert_signed_with, crl, issue_client_cert,
};

const ROLE: &str = "provider_a";
const PASSWORD: &str = "pw-provider-a-tls";

fn secret_file(path: &Path, byte: u8) {
    std::fs::write(path, hex::encode([byte; 32])).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A TLS-only server with a certificate for `san`, issued by a fresh CA; the provider's role and schema in
/// database `sealroom`.
fn tls_server(dir: &Path, san: &[&str]) -> (Postgres, ServerTls) {
    tls_server_signed_with(dir, san, "sha256")
}

/// [`tls_server`] with the server certificate signed using `digest`.
fn tls_server_signed_with(dir: &Path, san: &[&str], digest: &str) -> (Postgres, ServerTls) {
    let tls =
        ca_and_server_cert_signed_with(&dir.join("server-ca"), "sealroom test database CA", san, digest)
            .unwrap();
    let pg = Postgres::start_with_tls(&tls.cert, &tls.key).unwrap();
    create_role(&pg, ROLE, PASSWORD);
    (pg, tls)
}

/// The provider's `role` (with `password`) and its schema in database `sealroom` (created first if needed).
fn create_role(pg: &Postgres, role: &str, password: &str) {
    if pg.psql("postgres", "select count(*) from pg_database where datname = 'sealroom'").unwrap() == "0" {
        pg.psql("postgres", "create database sealroom").unwrap();
    }
    pg.psql("sealroom", "revoke all on schema public from public").unwrap();
    pg.psql(
        "sealroom",
        &format!(
            "create role {role} login password '{password}'; create schema {role} authorization {role};"
        ),
    )
    .unwrap();
}

fn ca_file(dir: &Path, tls: &ServerTls) -> PathBuf {
    let path = dir.join("server-ca/ca.pem");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), tls.ca_pem);
    path
}

/// `sealroom` as an operator runs it: errors as one line, no backtrace even where the test runner asks for one.
fn cli() -> std::process::Command {
    let mut c = sealroom();
    c.env("RUST_BACKTRACE", "0").env("RUST_LIB_BACKTRACE", "0");
    c
}

/// `sealroom broker keys --store URL --kek KEK ARGS`, its whole output (success or not).
fn keys(url: &str, kek: &Path, args: &[&str]) -> Output {
    cli().args(["broker", "keys", "--store", url, "--kek"]).arg(kek).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The command failed, quickly, with exactly one line of error naming `want`, and without the password.
fn refused(out: &Output, started: Instant, want: &str) -> String {
    let all = text(out);
    assert!(!out.status.success(), "accepted: {all}");
    assert!(all.contains(want), "{all}");
    assert!(!all.contains(PASSWORD), "the password was printed: {all}");
    let lines: Vec<&str> = all.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line: {all}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    all
}

/// No broker table was created: the migration never ran, so no statement reached the server.
fn schema_untouched(pg: &Postgres) {
    let tables =
        pg.psql("sealroom", &format!("select count(*) from pg_tables where schemaname = '{ROLE}'")).unwrap();
    assert_eq!(tables, "0");
}

/// Adds provider A's key through the admin CLI at `admin_url`, starts a replica on `url` and makes `releases`
/// Challenge + Release calls to it, each refused by the verifier after the key lookup and the nonce, and
/// recorded (answered only after the commit over TLS). The replica, still running.
fn key_added_and_released(
    dir: &Path,
    admin_url: &str,
    url: &str,
    kek: &Path,
    nonce_key: &Path,
    policy: &Path,
    releases: usize,
) -> BrokerProcess {
    let added = keys(
        admin_url,
        kek,
        &["add", "--id", "provider-a/data", "--owner", "provider-a", "--policy", policy.to_str().unwrap()],
    );
    assert!(added.status.success(), "{}", text(&added));
    let replica = BrokerProcess::start(
        &dir.join("r1"),
        kek,
        &[
            OsStr::new("--store"),
            OsStr::new(url),
            OsStr::new("--replica"),
            OsStr::new("r1"),
            OsStr::new("--nonce-key"),
            nonce_key.as_os_str(),
        ],
    )
    .unwrap();
    let (_, tee) = sealroom_broker::seal::derive_keypair(Kem::X25519HkdfSha256, b"tls test tee key").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", replica.addr))
            .unwrap()
            .timeout(Duration::from_secs(20))
            .connect()
            .await
            .unwrap();
        let mut client = KeyBrokerClient::new(channel);
        for _ in 0..releases {
            let ch = client.challenge(pb::ChallengeRequest::default()).await.unwrap().into_inner();
            let req = release_request(Nonce::from_slice(&ch.nonce).unwrap(), &tee, "provider-a/data");
            let resp = client.release(req).await.unwrap().into_inner();
            assert_eq!(resp.refusals[0].reason, REFUSAL);
        }
    });
    replica
}

#[test]
fn replica_admin_and_audit_verification_run_over_verified_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, tls) = tls_server(dir.path(), &["IP:127.0.0.1", "DNS:localhost"]);
    let ca = ca_file(dir.path(), &tls);
    let ca_url = ca.display().to_string().replace('/', "%2F");
    // URL form with channel binding required; the key=value form (host name, quoted root file) for the admin.
    let url = format!(
        "postgres://{ROLE}:{PASSWORD}@127.0.0.1:{}/sealroom?sslmode=verify-full&sslrootcert={ca_url}\
         &channel_binding=require",
        pg.port()
    );
    let kv = format!(
        "host=localhost port={} user={ROLE} password={PASSWORD} dbname=sealroom sslmode=verify-full \
         sslrootcert='{}' channel_binding=require",
        pg.port(),
        ca.display()
    );
    let kek = dir.path().join("kek");
    secret_file(&kek, 0x41);
    let nonce_key = dir.path().join("nonce-key");
    secret_file(&nonce_key, 0x42);
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, TPM_POLICY).unwrap();

    // The server itself refuses plaintext: only TLS reaches it.
    let plain = format!("postgres://{ROLE}:{PASSWORD}@127.0.0.1:{}/sealroom", pg.port());
    let out = keys(&plain, &kek, &["list"]);
    assert!(!out.status.success() && text(&out).contains("no encryption"), "{}", text(&out));

    // Kept running while its sessions are inspected below.
    let _replica = key_added_and_released(dir.path(), &kv, &url, &kek, &nonce_key, &policy, 3);
    // Every connection the provider's role holds (the replica's reads and its audit writer) is TLS.
    let sessions = pg
        .psql(
            "sealroom",
            &format!(
                "select count(*), count(*) filter (where s.ssl) from pg_stat_activity a join pg_stat_ssl s \
                 using (pid) where a.usename = '{ROLE}'"
            ),
        )
        .unwrap();
    let (all, tls_count) = sessions.split_once('|').unwrap();
    assert!(all.parse::<u32>().unwrap() >= 2, "{sessions}");
    assert_eq!(all, tls_count, "a plaintext connection: {sessions}");

    let verified = run_sealroom(sealroom().args(["audit", "verify", "--postgres", &url])).unwrap();
    assert!(verified.contains("replica r1: 3 records ok"), "{verified}");
    let chains = sealroom_broker::pg::ledger::verify_chains(&kv).unwrap().chains;
    assert_eq!(chains.len(), 1);
    assert_eq!((chains[0].0.as_str(), chains[0].1.records), ("r1", 3));
    let listed = keys(&url, &kek, &["list"]);
    assert!(
        text(&listed).contains("provider-a/data\towner=provider-a\tversion=1\tactive"),
        "{}",
        text(&listed)
    );
}

/// The server computes `tls-server-end-point` with its certificate's signature hash (RFC 5929); a binding
/// hashed otherwise fails SCRAM-SHA-256-PLUS, which the driver then uses even without `channel_binding=require`.
#[test]
fn channel_binding_follows_the_server_certificate_signature_hash() {
    for digest in ["sha384", "sha512"] {
        let dir = tempfile::tempdir().unwrap();
        let (pg, tls) = tls_server_signed_with(dir.path(), &["IP:127.0.0.1"], digest);
        let ca = ca_file(dir.path(), &tls);
        let kek = dir.path().join("kek");
        secret_file(&kek, 0x48);
        for binding in ["require", "prefer"] {
            let url = format!(
                "postgres://{ROLE}:{PASSWORD}@127.0.0.1:{}/sealroom?sslmode=verify-full&sslrootcert={}\
                 &channel_binding={binding}",
                pg.port(),
                ca.display()
            );
            let out = keys(&url, &kek, &["list"]);
            assert!(out.status.success(), "{digest}, channel_binding={binding}: {}", text(&out));
        }
    }
}

#[test]
fn attack_database_impersonated_by_a_server_with_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The impersonator holds a certificate for the right address, from a CA the operator never trusted.
    let (pg, _) = tls_server(dir.path(), &["IP:127.0.0.1", "DNS:localhost"]);
    let trusted =
        ca_and_server_cert_for(&dir.path().join("operator-ca"), "the operator's CA", &["IP:127.0.0.1"])
            .unwrap();
    let ca = dir.path().join("operator-ca/ca.pem");
    assert_eq!(std::fs::read_to_string(&ca).unwrap(), trusted.ca_pem);
    let kek = dir.path().join("kek");
    secret_file(&kek, 0x43);
    let url = format!(
        "postgres://{ROLE}:{PASSWORD}@127.0.0.1:{}/sealroom?sslmode=verify-full&sslrootcert={}",
        pg.port(),
        ca.display()
    );
    let started = Instant::now();
    let line = refused(&keys(&url, &kek, &["list"]), started, "server certificate check for 127.0.0.1");
    assert!(line.contains("UnknownIssuer"), "{line}");
    assert!(line.contains(&ca.display().to_string()), "{line}");
    let started = Instant::now();
    let out = cli().args(["audit", "verify", "--postgres", &url]).output().unwrap();
    refused(&out, started, "UnknownIssuer");
    schema_untouched(&pg);
}

#[test]
fn attack_server_certificate_for_another_host_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A certificate the operator's CA really issued, but for another database.
    let (pg, tls) = tls_server(dir.path(), &["DNS:db.example"]);
    let ca = ca_file(dir.path(), &tls);
    let kek = dir.path().join("kek");
    secret_file(&kek, 0x44);
    for host in ["127.0.0.1", "localhost"] {
        let url = format!(
            "postgres://{ROLE}:{PASSWORD}@{host}:{}/sealroom?sslmode=verify-full&sslrootcert={}",
            pg.port(),
            ca.display()
        );
        let started = Instant::now();
        let line =
            refused(&keys(&url, &kek, &["list"]), started, &format!("server certificate check for {host}"));
        assert!(line.contains(&format!("certificate not valid for name \"{host}\"")), "{line}");
        let state = dir.path().join(format!("state-{host}"));
        let nonce_key = dir.path().join("nonce-key");
        secret_file(&nonce_key, 0x45);
        let started = Instant::now();
        let serve = cli()
            .args(["broker", "serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .arg("--kek")
            .arg(&kek)
            .args(["--store", &url, "--replica", "r1", "--nonce-key"])
            .arg(&nonce_key)
            .output()
            .unwrap();
        refused(&serve, started, "certificate not valid for name");
    }
    schema_untouched(&pg);
}

/// Attack: the database's certificate was revoked by its CA (its key leaked, say) and whoever holds it plays
/// the database. With the CA's revocation list in `sslcrl`, the admin CLI and audit verification refuse the
/// server before the password is sent, naming the check; so they do when the list is of another CA (the issuer's
/// status unknown) or past its next update (a stale list could hide a later revocation). A current list that
/// does not name the certificate lets the same commands through.
#[test]
fn attack_database_certificate_revoked_or_without_a_current_list_of_its_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, tls) = tls_server(dir.path(), &["IP:127.0.0.1"]);
    let ca = ca_file(dir.path(), &tls);
    let ca_dir = dir.path().join("server-ca");
    let other =
        ca_and_server_cert_for(&dir.path().join("other-ca"), "another CA", &["IP:127.0.0.1"]).unwrap();
    let two_days = Duration::from_secs(2 * 24 * 3600);
    let revoked = crl(&ca_dir, "revoked", &[&tls.cert], two_days).unwrap();
    let of_another_ca = crl(&dir.path().join("other-ca"), "other", &[&other.cert], two_days).unwrap();
    let stale = crl(&ca_dir, "stale", &[], Duration::from_secs(1)).unwrap();
    let current = crl(&ca_dir, "current", &[], two_days).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let kek = dir.path().join("kek");
    secret_file(&kek, 0x47);
    let url = |list: &Path| {
        format!(
            "postgres://{ROLE}:{PASSWORD}@127.0.0.1:{}/sealroom?sslmode=verify-full&sslrootcert={}&sslcrl={}",
            pg.port(),
            ca.display(),
            list.display()
        )
    };
    for (list, why) in [
        (&revoked, "Revoked"),
        (&of_another_ca, "UnknownRevocationStatus"),
        (&stale, "certificate revocation list expired"),
    ] {
        let started = Instant::now();
        let line =
            refused(&keys(&url(list), &kek, &["list"]), started, "server certificate check for 127.0.0.1");
        assert!(line.contains(why), "{line}");
        assert!(line.contains(&format!("and sslcrl {}", list.display())), "{line}");
        let started = Instant::now();
        let out = cli().args(["audit", "verify", "--postgres", &url(list)]).output().unwrap();
        refused(&out, started, why);
    }
    schema_untouched(&pg);
    let out = keys(&url(&current), &kek, &["list"]);
    assert!(out.status.success(), "{}", text(&out));

    // A list the operator replaces while a replica runs applies to its next connection, without a restart (read
    // again per connection, as libpq does): the CA's newer list revokes the certificate, the database drops the
    // replica's connections, and the replica's reconnection is refused.
    let live = dir.path().join("live.crl.pem");
    std::fs::copy(&current, &live).unwrap();
    let store = sealroom_broker::pg::open_keys(
        &url(&live),
        sealroom_broker::keystore::Kek::from_bytes(&[0x47; 32]).unwrap(),
        &sealroom_broker::SystemRandomness::new(),
    )
    .unwrap();
    store.list(None).unwrap();
    std::fs::copy(&revoked, &live).unwrap();
    pg.psql(
        "sealroom",
        &format!("select pg_terminate_backend(pid) from pg_stat_activity where usename = '{ROLE}'"),
    )
    .unwrap();
    let started = Instant::now();
    let refusal = loop {
        match store.list(None) {
            Err(e) if e.to_string().contains("Revoked") => break e.to_string(),
            answered => assert!(
                started.elapsed() < Duration::from_secs(20),
                "the replaced list was not applied to a new connection: {answered:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(refusal.contains(&format!("and sslcrl {}", live.display())), "{refusal}");
}

#[test]
fn attack_remote_database_without_verify_full_is_refused_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek");
    secret_file(&kek, 0x46);
    let nonce_key = dir.path().join("nonce-key");
    secret_file(&nonce_key, 0x47);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "").unwrap();
    // 192.0.2.1 is TEST-NET-1: nothing answers there, so a connection attempt would hang until its timeout; a
    // refusal within seconds, naming the missing settings, was decided before any.
    let base = format!("postgres://{ROLE}:{PASSWORD}@192.0.2.1:5432/sealroom");
    let no_cert = format!("sslrootcert {}: holds no CERTIFICATE", ca.display());
    let cases: Vec<(String, &str)> = vec![
        (base.clone(), "database host 192.0.2.1 is not on this machine"),
        (format!("{base}?sslmode=disable"), "database host 192.0.2.1 is not on this machine"),
        (format!("{base}?sslmode=require"), "sslmode=require does not check"),
        (format!("{base}?sslmode=prefer"), "sslmode=prefer does not check"),
        (
            format!("{base}?sslmode=verify-ca&sslrootcert={}", ca.display()),
            "sslmode=verify-ca does not check",
        ),
        (format!("{base}?sslmode=verify-full"), "sslmode=verify-full needs sslrootcert="),
        (format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display()), &no_cert),
        (
            format!("host=192.0.2.1 user={ROLE} password={PASSWORD} dbname=sealroom sslmode=require"),
            "sslmode=require does not check",
        ),
    ];
    for (url, want) in &cases {
        let started = Instant::now();
        refused(&keys(url, &kek, &["list"]), started, want);
        let started = Instant::now();
        let out = cli().args(["audit", "verify", "--postgres", url]).output().unwrap();
        refused(&out, started, want);
        let started = Instant::now();
        let serve = cli()
            .args(["broker", "serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(dir.path().join("state"))
            .arg("--kek")
            .arg(&kek)
            .args(["--store", url, "--replica", "r1", "--nonce-key"])
            .arg(&nonce_key)
            .output()
            .unwrap();
        let line = refused(&serve, started, want);
        if want.contains("not on this machine") || want.contains("does not check") {
            assert!(line.contains("needs sslmode=verify-full and sslrootcert="), "{line}");
        }
    }
}

/// A TLS-only server (certificate for 127.0.0.1 from `server-ca`) that requires client certificates from a
/// fresh `client-ca`, as `auth` says; the provider's role and schema. Returns the server CA file and the
/// client CA's directory (for [`issue_client_cert`]).
fn client_cert_server(dir: &Path, auth: ClientCertAuth) -> (Postgres, PathBuf, PathBuf) {
    let tls = ca_and_server_cert_for(&dir.join("server-ca"), "sealroom test database CA", &["IP:127.0.0.1"])
        .unwrap();
    let client_ca_dir = dir.join("client-ca");
    ca_and_server_cert_for(&client_ca_dir, "sealroom test client CA", &["IP:127.0.0.1"]).unwrap();
    let pg =
        Postgres::start_with_client_certs(&tls.cert, &tls.key, &client_ca_dir.join("ca.pem"), auth).unwrap();
    create_role(&pg, ROLE, PASSWORD);
    (pg, ca_file(dir, &tls), client_ca_dir)
}

/// `postgres://ROLE[:PASSWORD]@127.0.0.1:PORT/sealroom?sslmode=verify-full&sslrootcert=…` with the client
/// certificate `client`, if any; paths percent-encoded.
fn client_url(pg: &Postgres, ca: &Path, password: bool, client: Option<&ClientTls>) -> String {
    let enc = |p: &Path| p.display().to_string().replace('/', "%2F");
    let secret = if password { format!(":{PASSWORD}") } else { String::new() };
    let mut url = format!(
        "postgres://{ROLE}{secret}@127.0.0.1:{}/sealroom?sslmode=verify-full&sslrootcert={}",
        pg.port(),
        enc(ca)
    );
    if let Some(c) = client {
        url.push_str(&format!("&sslcert={}&sslkey={}", enc(&c.cert), enc(&c.key)));
    }
    url
}

/// No session of the provider's role is open, and no broker table was created.
fn nothing_reached_as_the_role(pg: &Postgres) {
    let sessions = pg
        .psql("sealroom", &format!("select count(*) from pg_stat_activity where usename = '{ROLE}'"))
        .unwrap();
    assert_eq!(sessions, "0");
    schema_untouched(pg);
}

#[test]
fn replica_admin_and_audit_verification_authenticate_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    // `cert`: the certificate alone authenticates the role; the URLs carry no password.
    let (pg, ca, client_ca) = client_cert_server(dir.path(), ClientCertAuth::Cert);
    let client = issue_client_cert(&client_ca, "provider_a", ROLE).unwrap();
    let url = client_url(&pg, &ca, false, Some(&client));
    // The key=value form, paths quoted.
    let kv = format!(
        "host=127.0.0.1 port={} user={ROLE} dbname=sealroom sslmode=verify-full sslrootcert='{}' sslcert='{}' \
         sslkey='{}'",
        pg.port(),
        ca.display(),
        client.cert.display(),
        client.key.display()
    );
    let kek = dir.path().join("kek");
    secret_file(&kek, 0x51);
    let nonce_key = dir.path().join("nonce-key");
    secret_file(&nonce_key, 0x52);
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, TPM_POLICY).unwrap();

    let replica = key_added_and_released(dir.path(), &kv, &url, &kek, &nonce_key, &policy, 2);
    // Every connection of the role is TLS and presented the role's certificate.
    let sessions = pg
        .psql(
            "sealroom",
            &format!(
                "select count(*), count(*) filter (where s.ssl and s.client_dn = '/CN={ROLE}') from \
                 pg_stat_activity a join pg_stat_ssl s using (pid) where a.usename = '{ROLE}'"
            ),
        )
        .unwrap();
    let (all, with_cert) = sessions.split_once('|').unwrap();
    assert!(all.parse::<u32>().unwrap() >= 2, "{sessions}");
    assert_eq!(all, with_cert, "a connection without the client certificate: {sessions}");
    let verified = run_sealroom(sealroom().args(["audit", "verify", "--postgres", &url])).unwrap();
    assert!(verified.contains("replica r1: 2 records ok"), "{verified}");
    let listed = keys(&url, &kek, &["list"]);
    assert!(
        text(&listed).contains("provider-a/data\towner=provider-a\tversion=1\tactive"),
        "{}",
        text(&listed)
    );
    drop(replica);

    // `scram-sha-256 clientcert=verify-full`: the password and the certificate, the exchange bound to TLS.
    let dir = tempfile::tempdir().unwrap();
    let (pg, ca, client_ca) = client_cert_server(dir.path(), ClientCertAuth::ScramAndCert);
    let client = issue_client_cert(&client_ca, "provider_a", ROLE).unwrap();
    let url = format!("{}&channel_binding=require", client_url(&pg, &ca, true, Some(&client)));
    let listed = keys(&url, &kek, &["list"]);
    assert!(listed.status.success(), "{}", text(&listed));
}

#[test]
fn attack_no_client_certificate_is_refused_by_the_server() {
    for auth in [ClientCertAuth::Cert, ClientCertAuth::ScramAndCert] {
        let dir = tempfile::tempdir().unwrap();
        let (pg, ca, _) = client_cert_server(dir.path(), auth);
        let kek = dir.path().join("kek");
        secret_file(&kek, 0x53);
        // The server's certificate checks out; only the client's is missing. With the password or without.
        for password in [false, true] {
            let url = client_url(&pg, &ca, password, None);
            let started = Instant::now();
            refused(&keys(&url, &kek, &["list"]), started, "connection requires a valid client certificate");
        }
        nothing_reached_as_the_role(&pg);
    }
}

#[test]
fn attack_client_certificate_from_another_ca_is_refused_by_the_server() {
    for auth in [ClientCertAuth::Cert, ClientCertAuth::ScramAndCert] {
        let dir = tempfile::tempdir().unwrap();
        let (pg, ca, _) = client_cert_server(dir.path(), auth);
        // The right CN, from a CA the database does not trust.
        let rogue_ca = dir.path().join("rogue-ca");
        ca_and_server_cert_for(&rogue_ca, "sealroom test client CA", &["IP:127.0.0.1"]).unwrap();
        let rogue = issue_client_cert(&rogue_ca, "provider_a", ROLE).unwrap();
        let kek = dir.path().join("kek");
        secret_file(&kek, 0x54);
        let url = client_url(&pg, &ca, auth == ClientCertAuth::ScramAndCert, Some(&rogue));
        let started = Instant::now();
        let out = keys(&url, &kek, &["list"]);
        // TLS 1.3: the server checks the certificate after the client's handshake and answers with an alert.
        let line = refused(
            &out,
            started,
            &format!("the server refused the client certificate in sslcert {}", rogue.cert.display()),
        );
        assert!(line.contains("UnknownCA"), "{auth:?}: {line}");
        assert!(pg.server_log().contains("could not accept SSL connection: certificate verify failed"));
        nothing_reached_as_the_role(&pg);
    }
}

#[test]
fn attack_client_certificate_of_another_role_is_refused_by_the_server() {
    for auth in [ClientCertAuth::Cert, ClientCertAuth::ScramAndCert] {
        let dir = tempfile::tempdir().unwrap();
        let (pg, ca, client_ca) = client_cert_server(dir.path(), auth);
        // provider_b's genuine certificate, from the database's client CA.
        create_role(&pg, "provider_b", "pw-provider-b-tls");
        let other = issue_client_cert(&client_ca, "provider_b", "provider_b").unwrap();
        let kek = dir.path().join("kek");
        secret_file(&kek, 0x55);
        let password = auth == ClientCertAuth::ScramAndCert;
        // It works for provider_b ...
        let as_b = client_url(&pg, &ca, false, Some(&other)).replacen(&format!("{ROLE}@"), "provider_b@", 1);
        let as_b =
            if password { as_b.replacen("provider_b@", "provider_b:pw-provider-b-tls@", 1) } else { as_b };
        let out = keys(&as_b, &kek, &["list"]);
        assert!(out.status.success(), "{auth:?}: {}", text(&out));
        // ... and not as provider_a, even with provider_a's password.
        let url = client_url(&pg, &ca, password, Some(&other));
        let started = Instant::now();
        // The server tells the client only that authentication failed (by the method's name); its log says why.
        let want = match auth {
            ClientCertAuth::Cert => format!("certificate authentication failed for user \"{ROLE}\""),
            ClientCertAuth::ScramAndCert => format!("password authentication failed for user \"{ROLE}\""),
        };
        refused(&keys(&url, &kek, &["list"]), started, &want);
        let log = pg.server_log();
        assert!(
            log.contains(&format!(
                "provided user name ({ROLE}) and authenticated user name (provider_b) do not match"
            )),
            "{log}"
        );
        if auth == ClientCertAuth::ScramAndCert {
            assert!(
                log.contains(&format!(
                    "certificate validation (clientcert=verify-full) failed for user \"{ROLE}\": CN mismatch"
                )),
                "{log}"
            );
        }
        nothing_reached_as_the_role(&pg);
    }
}
