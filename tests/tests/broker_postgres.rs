//! Replicated key brokers on a real PostgreSQL server (started by the test harness): `sealroom broker serve
//! --store postgres://…` processes sharing keys, used nonces and per-replica audit chains.
//!
//! The evidence is a placeholder the real verifier refuses (as in the embedded broker's process tests): what is
//! exercised here is the shared state — a nonce issued by one replica is accepted by another (the refusal then
//! comes from the verifier, not the nonce check), refused as a replay everywhere after, and every decision that
//! was answered is in a chain that verifies.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::missing_panics_doc)]

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sealroom_broker::{seal, token};
use sealroom_measurements::binding::{Kem, Nonce, TeePublicKey};
use sealroom_proto::keybroker::v1 as pb;
use sealroom_proto::keybroker::v1::key_broker_client::KeyBrokerClient;
use sealroom_tests::broker::{BrokerProcess, KillSchedule, run_sealroom, sealroom};
use sealroom_tests::placeholder::{REFUSAL, TPM_POLICY, release_request as request};
use sealroom_tests::postgres::Postgres;
use sha2::{Digest, Sha256};

const REPLAY: &str = "nonce: already used (replay)";

fn secret_file(path: &Path, byte: u8) {
    std::fs::write(path, hex::encode([byte; 32])).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A data provider's role and schema in the shared database, and its files.
struct Provider {
    url: String,
    dir: tempfile::TempDir,
    kek: PathBuf,
    nonce_key: PathBuf,
}

impl Provider {
    /// Creates role `name` (password auth) owning schema `name` in database `sealroom`: the role's default
    /// search_path puts the broker's tables there.
    fn create(pg: &Postgres, name: &str, kek_byte: u8) -> Self {
        let password = format!("pw-{name}-{}", pg.port());
        pg.psql(
            "sealroom",
            &format!(
                "create role {name} login password '{password}'; create schema {name} authorization {name};"
            ),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kek = dir.path().join("kek");
        secret_file(&kek, kek_byte);
        let nonce_key = dir.path().join("nonce-key");
        secret_file(&nonce_key, kek_byte ^ 0xff);
        std::fs::write(dir.path().join("policy.toml"), TPM_POLICY).unwrap();
        Self { url: pg.url_for(name, &password, "sealroom"), dir, kek, nonce_key }
    }

    fn keys(&self, args: &[&str]) -> Result<String, String> {
        run_sealroom(
            sealroom().args(["broker", "keys", "--store", &self.url, "--kek"]).arg(&self.kek).args(args),
        )
    }

    fn add_key(&self, id: &str, owner: &str) {
        let policy = self.dir.path().join("policy.toml");
        self.keys(&["add", "--id", id, "--owner", owner, "--policy", policy.to_str().unwrap()]).unwrap();
    }

    fn replica(&self, name: &str) -> BrokerProcess {
        self.replica_with(name, &[])
    }

    fn replica_with(&self, name: &str, more: &[&OsStr]) -> BrokerProcess {
        let state = self.dir.path().join(name);
        let mut extra: Vec<&OsStr> = vec![
            OsStr::new("--store"),
            OsStr::new(&self.url),
            OsStr::new("--replica"),
            OsStr::new(name),
            OsStr::new("--nonce-key"),
            self.nonce_key.as_os_str(),
            OsStr::new("--nonce-ttl"),
            OsStr::new("120"),
        ];
        extra.extend_from_slice(more);
        BrokerProcess::start(&state, &self.kek, &extra).unwrap()
    }
}

fn database(pg: &Postgres) {
    pg.psql("postgres", "create database sealroom").unwrap();
    // Nobody but a schema's owner may use it (PostgreSQL 15 already denies CREATE on public).
    pg.psql("sealroom", "revoke all on schema public from public").unwrap();
}

fn evidence_digest(req: &pb::ReleaseRequest) -> String {
    hex::encode(Sha256::digest(prost::Message::encode_to_vec(req.evidence.as_ref().unwrap())))
}

async fn client(addr: &str) -> Result<KeyBrokerClient<tonic::transport::Channel>, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .connect()
        .await?;
    Ok(KeyBrokerClient::new(channel))
}

fn jwk(state: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(state.join("signing-key.jwk.json")).unwrap()).unwrap()
}

/// A GET over plain HTTP/1.1, parsed as JSON (the body after the blank line).
fn http_get(addr: &str, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap()
}

#[test]
fn three_replicas_redeem_each_others_nonces_once() {
    let pg = Postgres::start().unwrap();
    database(&pg);
    let provider = Provider::create(&pg, "provider_a", 0x31);
    provider.add_key("provider-a/data", "provider-a");
    // Each replica publishes the keys on its own HTTP port (bound to port 0, announced on stdout); all name one
    // issuer, the name they are reached by behind a load balancer.
    let issuer = "https://broker.provider-a.example";
    let replicas: Vec<BrokerProcess> = ["r1", "r2", "r3"]
        .iter()
        .map(|r| {
            provider.replica_with(
                r,
                &[
                    OsStr::new("--http-listen"),
                    OsStr::new("127.0.0.1:0"),
                    OsStr::new("--issuer"),
                    OsStr::new(issuer),
                ],
            )
        })
        .collect();
    let http: Vec<&str> = replicas.iter().map(|r| r.http_addr.as_deref().unwrap()).collect();
    let (_, tee) = seal::derive_keypair(Kem::X25519HkdfSha256, b"replica test tee key").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut clients = Vec::new();
        for r in &replicas {
            clients.push(client(&r.addr).await.unwrap());
        }
        // A nonce from replica 1 redeemed at replica 2: past the nonce check (the verifier refuses the
        // placeholder evidence), then refused as a replay at replica 3 and again at replica 1.
        let ch = clients[0].challenge(pb::ChallengeRequest::default()).await.unwrap().into_inner();
        assert_eq!((ch.nonce.len(), ch.ttl_seconds), (32, 120));
        let req = request(Nonce::from_slice(&ch.nonce).unwrap(), &tee, "provider-a/data");
        let first = clients[1].release(req.clone()).await.unwrap().into_inner();
        assert_eq!(first.refusals[0].reason, REFUSAL);
        let claims = token::verify(&first.attestation_result, &jwk(&replicas[1].state_dir)).unwrap();
        assert_eq!(claims["sealroom.audit"]["replica"], "r2", "{claims}");
        assert_eq!(claims["iss"], issuer);
        assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 3600);
        // Any relying party: PyJWT fetches replica 3's JWKS (which lists every replica's key) and verifies
        // replica 2's token.
        let jwks_url = format!("http://{}/.well-known/jwks.json", http[2]);
        let out = std::process::Command::new("python3")
            .arg(sealroom_tests::repo_root().join("tests/python/verify_token.py"))
            .args([jwks_url.as_str(), issuer, &first.attestation_result])
            .output()
            .expect("python3 (installed by ci/setup)");
        assert!(out.status.success(), "PyJWT refused the token: {}", String::from_utf8_lossy(&out.stderr));
        let verified: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(verified["kid"], jwk(&replicas[1].state_dir)["kid"]);
        assert_eq!(verified["claims"]["eat_nonce"], sealroom_verifier::ear::eat_nonce(&ch.nonce));
        let jwks = http_get(http[0], "/.well-known/jwks.json");
        let kids: HashSet<String> =
            jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect();
        let want: HashSet<String> =
            replicas.iter().map(|r| jwk(&r.state_dir)["kid"].as_str().unwrap().to_owned()).collect();
        assert_eq!(kids, want, "every replica's key in every replica's JWKS");
        let discovery = http_get(http[1], "/.well-known/openid-configuration");
        assert_eq!(discovery["issuer"], issuer);
        assert_eq!(discovery["jwks_uri"], format!("{issuer}/.well-known/jwks.json"));
        let again = clients[2].release(req.clone()).await.unwrap().into_inner();
        assert_eq!(again.refusals[0].reason, REPLAY);
        let back = clients[0].release(req).await.unwrap().into_inner();
        assert_eq!(back.refusals[0].reason, REPLAY);

        // A nonce no replica issued (another provider's MAC key, or random bytes) is refused as never issued.
        let forged = request(Nonce([0x5a; 32]), &tee, "provider-a/data");
        let refused = clients[2].release(forged).await.unwrap().into_inner();
        assert_eq!(refused.refusals[0].reason, "nonce: not issued by this broker");

        // Agents round-robin: challenge at replica i, release at replica i+1.
        for i in 0..30usize {
            let ch = clients[i % 3].challenge(pb::ChallengeRequest::default()).await.unwrap().into_inner();
            let req = request(Nonce::from_slice(&ch.nonce).unwrap(), &tee, "provider-a/data");
            let resp = clients[(i + 1) % 3].release(req).await.unwrap().into_inner();
            assert_eq!(resp.refusals[0].reason, REFUSAL, "release {i}");
        }
    });
    let verified = run_sealroom(sealroom().args(["audit", "verify", "--postgres", &provider.url])).unwrap();
    assert!(verified.contains("3 replica chains ok"), "{verified}");
    // r1: replay + 10 round-robin; r2: first + 10; r3: replay + forged + 10 (besides each chain's records of
    // the others' heads, decision 5, which depend on the wall clock).
    let decisions = pg
        .psql(
            "sealroom",
            "select replica || ' ' || count(*) from provider_a.audit where decision <> 5 group by replica \
             order by replica",
        )
        .unwrap();
    assert_eq!(decisions.split_whitespace().collect::<Vec<_>>(), ["r1", "11", "r2", "11", "r3", "12"]);
    let listed = provider.keys(&["list"]).unwrap();
    assert!(listed.contains("provider-a/data\towner=provider-a\tversion=1\tactive"), "{listed}");
}

/// One round: agents round-robin over the replicas until `victim` is killed with SIGKILL after `kill_after`
/// (and, when `restart_db`, PostgreSQL is crashed and restarted halfway). Returns the acknowledged releases
/// as (evidence digest, refusal reason).
fn round(
    rt: &tokio::runtime::Runtime,
    replicas: &mut [BrokerProcess],
    victim: usize,
    kill_after: Duration,
    pg: Option<&Postgres>,
    tee: &TeePublicKey,
) -> Vec<(String, String)> {
    let addrs: Vec<String> = replicas.iter().map(|r| r.addr.clone()).collect();
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            rt.block_on(async {
                let mut clients = Vec::new();
                for a in &addrs {
                    match client(a).await {
                        Ok(c) => clients.push(c),
                        Err(_) => return Vec::new(),
                    }
                }
                let deadline = tokio::time::Instant::now() + kill_after * 2;
                let mut acks = Vec::new();
                let mut inflight = tokio::task::JoinSet::new();
                let mut n = 0usize;
                loop {
                    while inflight.len() < 6 {
                        let mut at = clients[n % 3].clone();
                        let mut to = clients[(n + 1) % 3].clone();
                        n += 1;
                        let tee = tee.clone();
                        inflight.spawn(async move {
                            let ch = at.challenge(pb::ChallengeRequest::default()).await.ok()?.into_inner();
                            let req = request(Nonce::from_slice(&ch.nonce).ok()?, &tee, "provider-a/data");
                            let digest = evidence_digest(&req);
                            let resp = to.release(req).await.ok()?.into_inner();
                            Some((digest, resp.refusals.first()?.reason.clone()))
                        });
                    }
                    match tokio::time::timeout_at(deadline, inflight.join_next()).await {
                        Ok(Some(Ok(Some(ack)))) => acks.push(ack),
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                acks.extend(inflight.join_all().await.into_iter().flatten());
                acks
            })
        });
        std::thread::sleep(kill_after / 2);
        if let Some(pg) = pg {
            pg.restart_after_crash().unwrap();
        }
        std::thread::sleep(kill_after / 2);
        replicas[victim].kill9();
        worker.join().unwrap()
    })
}

#[test]
fn kill_9_of_replicas_and_postgres_restart_during_1000_releases_lose_no_acknowledged_release() {
    let pg = Postgres::start().unwrap();
    database(&pg);
    let provider = Provider::create(&pg, "provider_a", 0x32);
    provider.add_key("provider-a/data", "provider-a");
    let names = ["r1", "r2", "r3"];
    let mut replicas: Vec<BrokerProcess> = names.iter().map(|r| provider.replica(r)).collect();
    let (_, tee) = seal::derive_keypair(Kem::X25519HkdfSha256, b"replica crash test tee key").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut schedule = KillSchedule(0x5ea1_0000_0000_0016);
    let mut acknowledged: HashMap<String, String> = HashMap::new();
    let (mut kills, mut db_restarts) = (0u32, 0u32);
    let started = Instant::now();
    while acknowledged.len() < 1000 {
        assert!(started.elapsed() < Duration::from_secs(600), "crash test took too long");
        let victim = usize::try_from(schedule.next(3)).unwrap();
        let kill_after = Duration::from_millis(200 + schedule.next(400));
        // PostgreSQL crashes and restarts in every third round, with releases in flight.
        let restart = kills % 3 == 1;
        let acks = round(&rt, &mut replicas, victim, kill_after, restart.then_some(&pg), &tee);
        kills += 1;
        db_restarts += u32::from(restart);
        for (digest, reason) in acks {
            assert!(acknowledged.insert(digest, reason).is_none(), "one evidence acknowledged twice");
        }
        replicas[victim] = provider.replica(names[victim]);
    }
    drop(replicas);
    let verified = run_sealroom(sealroom().args(["audit", "verify", "--postgres", &provider.url])).unwrap();
    assert!(verified.contains("3 replica chains ok"), "{verified}");
    // Every restarted replica's writer names the others' heads in its first batch: the chains cross-anchor.
    let anchors: usize = verified
        .rsplit_once(" cross-anchors ok")
        .and_then(|(before, _)| before.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no cross-anchor count: {verified}"));
    assert!(anchors >= 3, "{verified}");
    let rows = pg
        .psql(
            "sealroom",
            "select encode(evidence_digest, 'hex') || ' ' || decision || ' ' || reason from provider_a.audit",
        )
        .unwrap();
    let logged: HashMap<&str, &str> = rows.lines().filter_map(|l| l.split_once(' ')).collect();
    for (digest, reason) in &acknowledged {
        let rec = logged
            .get(digest.as_str())
            .unwrap_or_else(|| panic!("acknowledged release {digest} not recorded"));
        assert_eq!(*rec, format!("2 {reason}"), "release {digest}");
    }
    let distinct: HashSet<&str> = logged.keys().copied().collect();
    assert!(distinct.len() >= acknowledged.len());
    eprintln!(
        "replica crash test: {} acknowledged releases, {kills} kill -9s, {db_restarts} PostgreSQL restarts, {} records",
        acknowledged.len(),
        rows.lines().count()
    );
    assert!(kills >= 3 && db_restarts >= 1, "the schedule must kill replicas and restart PostgreSQL");
}

#[test]
fn attack_one_providers_database_user_cannot_read_another_providers_keys() {
    let pg = Postgres::start().unwrap();
    database(&pg);
    let a = Provider::create(&pg, "provider_a", 0x41);
    let b = Provider::create(&pg, "provider_b", 0x42);
    let secret = b"provider A's data key: never in clear in the database";
    let material = a.dir.path().join("material");
    std::fs::write(&material, secret).unwrap();
    let policy = a.dir.path().join("policy.toml");
    a.keys(&[
        "add",
        "--id",
        "provider-a/data",
        "--owner",
        "provider-a",
        "--policy",
        policy.to_str().unwrap(),
        "--material-file",
        material.to_str().unwrap(),
    ])
    .unwrap();
    b.add_key("provider-b/data", "provider-b");

    // B's credentials see only B's keys through the broker …
    let listed = b.keys(&["list"]).unwrap();
    assert!(listed.contains("provider-b/data") && !listed.contains("provider-a"), "{listed}");
    // … and the database refuses B's role A's tables outright.
    let psql = sealroom_tests::postgres::bin_dir().unwrap().join("psql");
    for sql in ["select * from provider_a.keys", "select * from provider_a.key_material"] {
        let out =
            std::process::Command::new(&psql).args(["--no-psqlrc", "-tAc", sql, &b.url]).output().unwrap();
        assert!(!out.status.success(), "{sql} succeeded as provider_b");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("permission denied for schema provider_a"), "{err}");
    }
    // Even a holder of A's database credentials (or the superuser) sees A's material only as ciphertext, and
    // a broker with another KEK refuses A's database.
    let dump = pg.psql("sealroom", "select encode(sealed, 'hex') from provider_a.key_material").unwrap();
    assert!(!dump.is_empty() && !dump.contains(&hex::encode(secret)), "key material stored in clear");
    let wrong_kek =
        run_sealroom(sealroom().args(["broker", "keys", "--store", &a.url, "--kek"]).arg(&b.kek).arg("list"))
            .unwrap_err();
    assert!(wrong_kek.contains("the key-encryption key does not match this database"), "{wrong_kek}");
}
