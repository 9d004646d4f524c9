//! The key broker's records on PostgreSQL are as trustworthy as in the embedded store (issue 14, findings 1 and
//! 3, on the replicated store): with genuine swtpm evidence and the real agent client against a broker replica
//! whose keys, releases and audit chain live in a real PostgreSQL server,
//! - a key released by the replica is recorded there, so the agent's output receipt is issued and names that
//!   release (before, a PostgreSQL store refused every receipt);
//! - someone who can write the database but does not hold the KEK edits a key row (un-revokes it, gives it an
//!   all-`skip` policy, or moves it to another owner): the replica refuses the key with a reason, audits the
//!   refusal in its chain, and key management refuses the row too.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;

use sealroom_agent::workload::broker::BrokerKeys;
use sealroom_agent::workload::spec::BrokerEndpoint;
use sealroom_agent::workload::{KeyProvider, receipt};
use sealroom_broker::appraisal::VerifierAppraiser;
use sealroom_broker::grpc::KeyBrokerService;
use sealroom_broker::nonce_mac::NonceKeys;
use sealroom_broker::policy::GoldenSet;
use sealroom_broker::service::{Broker, StoreParts};
use sealroom_broker::store::KeyRecords;
use sealroom_broker::token::Signer;
use sealroom_broker::{ManualClock, Randomness, SystemRandomness};
use sealroom_proto::keybroker::v1::key_broker_server::KeyBrokerServer;
use sealroom_tests::agent::ak_of;
use sealroom_tests::analytics::{ARG, DATA_KEY, IMAGE, KEY_ID, launch_events, measure_release_and_output};
use sealroom_tests::broker::{serve_key_broker, tpm_policy};
use sealroom_tests::postgres::Postgres;
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};

const REPLICA: &str = "r1";
const ALL_SKIP: &str = "version = 1\nplatforms = \"skip\"\ntcb_statuses = \"skip\"\nminimum_tcb = \"skip\"\n\
                        debug = \"skip\"\ngolden = \"skip\"\nimage_digests = \"skip\"\nargs = \"skip\"\nenv = \"skip\"\n";

struct Replica {
    keys: Arc<sealroom_broker::pg::keys::PgKeys>,
    addr: SocketAddr,
    kid: String,
    signer_jwk: serde_json::Value,
}

/// A broker replica on `url`, in process, trusting the given swtpm AKs, with the key added.
async fn start_replica(url: &str, dir: &std::path::Path, aks: Vec<Vec<u8>>) -> Replica {
    let rng: Arc<dyn Randomness> = Arc::new(SystemRandomness::new());
    let kek = sealroom_broker::keystore::Kek::from_bytes(&[5; 32]).unwrap();
    let nonces = NonceKeys::new(&[9; 32], None, 30_000).unwrap();
    let (url2, rng2) = (url.to_owned(), Arc::clone(&rng));
    // The store runs its own runtime and blocks on it: open it outside this one.
    let store = tokio::task::spawn_blocking(move || {
        sealroom_broker::pg::open(&url2, kek, rng2.as_ref(), nonces, REPLICA).unwrap()
    })
    .await
    .unwrap();
    let keys = Arc::clone(&store.keys);
    let policy = tpm_policy(IMAGE, &[ARG], &[], None);
    let (k, r) = (Arc::clone(&keys), Arc::clone(&rng));
    tokio::task::spawn_blocking(move || {
        k.add(KEY_ID, "provider-a", &policy, Some(DATA_KEY.to_vec()), r.as_ref(), 0)
    })
    .await
    .unwrap()
    .unwrap();
    let signer = Signer::load_or_create(&dir.join("signing.pk8")).unwrap();
    let (kid, signer_jwk) = (signer.kid().to_owned(), signer.jwk());
    let broker = Arc::new(Broker::on_store(StoreParts {
        clock: Arc::new(ManualClock::at(1_760_000_000_000)),
        rng,
        appraiser: Arc::new(VerifierAppraiser::with_pinned_tpm_aks(aks)),
        store: store.keys,
        golden: GoldenSet::default(),
        signer,
        ledger: store.ledger,
    }));
    let addr = serve_key_broker(KeyBrokerServer::new(KeyBrokerService(broker))).await;
    Replica { keys, addr, kid, signer_jwk }
}

fn endpoint(r: &Replica) -> BrokerEndpoint {
    BrokerEndpoint {
        name: "replica".into(),
        url: format!("http://{}", r.addr),
        key_id: r.kid.clone(),
        tls_ca: None,
    }
}

/// The replica's last audit record: decision code, rule, reason.
fn last_audit(pg: &Postgres) -> String {
    pg.psql(
        "sealroom",
        &format!(
            "select decision || '|' || rule || '|' || reason from audit where replica = '{REPLICA}' \
             order by seq desc limit 1"
        ),
    )
    .unwrap()
    .trim()
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_work_on_a_postgres_replica_and_attack_pg_record_edit_is_refused() {
    let pg = Postgres::start().unwrap();
    let url = pg.create_database("sealroom").unwrap();
    let dir = unique_temp_dir("broker-pg-records");
    std::fs::create_dir_all(&dir).unwrap();
    let kid = Signer::load_or_create(&dir.join("signing.pk8")).unwrap().kid().to_owned();
    let (tpm, tpm2) = (Swtpm::start().unwrap(), Swtpm::start().unwrap());
    let agent = sealroom_tests::agent::start_agent(&tpm, &launch_events(&kid)).await.unwrap();
    let agent2 = sealroom_tests::agent::start_agent(&tpm2, &launch_events(&kid)).await.unwrap();
    let replica = start_replica(&url, &dir, vec![ak_of(&agent).await, ak_of(&agent2).await]).await;

    // A release on the replica, recorded in PostgreSQL; then the job's output and its receipt.
    let got =
        BrokerKeys::new(agent.handle.clone()).release(&endpoint(&replica), &[KEY_ID.into()]).await.unwrap();
    assert_eq!(got, vec![(KEY_ID.to_owned(), DATA_KEY.to_vec())]);
    let release_seq: u64 = pg
        .psql("sealroom", &format!("select seq from audit where replica = '{REPLICA}' and decision = 1"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pg.psql("sealroom", "select count(*) from releases").unwrap().trim(), "1");
    let digest = measure_release_and_output(&agent, &kid).await;
    let r = receipt::obtain(&agent.handle, &endpoint(&replica), KEY_ID, &digest).await.unwrap();
    let claims = sealroom_broker::token::verify(&r.token, &replica.signer_jwk).unwrap();
    assert_eq!(claims["submods"]["sealroom"]["sealroom.release"]["audit_seq"], release_seq);
    assert!(last_audit(&pg).starts_with("3|"), "the receipt is audited: {}", last_audit(&pg));

    // A receipt for a release that a replica never made is still refused (the record is what decides).
    measure_release_and_output(&agent2, &kid).await;
    let e =
        receipt::obtain(&agent2.handle, &endpoint(&replica), KEY_ID, &digest).await.unwrap_err().to_string();
    assert!(e.ends_with(&format!("this broker never released key {KEY_ID} to this TEE key")), "{e}");

    // The attack: the key is revoked; someone with write access to the database (not the KEK) un-revokes it and
    // gives it an all-skip policy, keeping the row's MAC.
    let keys = Arc::clone(&replica.keys);
    tokio::task::spawn_blocking(move || keys.revoke(KEY_ID, 5)).await.unwrap().unwrap();
    let refused = BrokerKeys::new(agent2.handle.clone())
        .release(&endpoint(&replica), &[KEY_ID.into()])
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains(&format!("key store: key {KEY_ID} was revoked at 5 ms")), "{refused}");
    let tampered = format!(
        "key store: the record of key {KEY_ID} fails its integrity check (changed without the key-encryption key)"
    );
    let edits = [
        ("un-revoked, all-skip policy", format!("update keys set revoked_ms = null, policy = '{ALL_SKIP}'")),
        ("moved to another owner", "update keys set revoked_ms = null, owner = 'provider-b'".to_owned()),
        ("MAC removed", "update keys set revoked_ms = null, mac = null".to_owned()),
    ];
    for (what, sql) in edits {
        pg.psql("sealroom", &format!("{sql} where id = '{KEY_ID}'")).unwrap();
        let refused = BrokerKeys::new(agent2.handle.clone())
            .release(&endpoint(&replica), &[KEY_ID.into()])
            .await
            .unwrap_err()
            .to_string();
        let want = if what == "MAC removed" {
            format!(
                "key store: the record of key {KEY_ID} has no integrity tag (its MAC was removed, or an older broker \
                 wrote it)"
            )
        } else {
            tampered.clone()
        };
        assert!(refused.contains(&want), "{what}: {refused}");
        assert_eq!(last_audit(&pg), format!("2|key store|{want}"), "{what}: the refusal is audited");
        let keys = Arc::clone(&replica.keys);
        let listed =
            tokio::task::spawn_blocking(move || keys.list(None)).await.unwrap().unwrap_err().to_string();
        assert_eq!(listed, want, "{what}");
        // Nor can an admin change launder the edited row.
        let keys = Arc::clone(&replica.keys);
        let changed = tokio::task::spawn_blocking(move || keys.set_policy(KEY_ID, ALL_SKIP))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(changed.to_string(), want, "{what}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A replica in process on `url` with the verifier's default trust (placeholder evidence is refused), its
/// signing key in `dir`, and the key [`KEY_ID`] under an all-`skip` policy (added by the first replica).
fn replica_broker(url: &str, replica: &str, dir: &std::path::Path) -> Arc<Broker> {
    let rng: Arc<dyn Randomness> = Arc::new(SystemRandomness::new());
    let kek = sealroom_broker::keystore::Kek::from_bytes(&[5; 32]).unwrap();
    let nonces = NonceKeys::new(&[9; 32], None, 30_000).unwrap();
    let store = sealroom_broker::pg::open(url, kek, rng.as_ref(), nonces, replica).unwrap();
    if store.keys.list(None).unwrap().is_empty() {
        store.keys.add(KEY_ID, "provider-a", ALL_SKIP, Some(DATA_KEY.to_vec()), rng.as_ref(), 0).unwrap();
    }
    std::fs::create_dir_all(dir).unwrap();
    Arc::new(Broker::on_store(StoreParts {
        clock: Arc::new(ManualClock::at(1_760_000_000_000)),
        rng,
        appraiser: Arc::new(VerifierAppraiser::default()),
        store: store.keys,
        golden: GoldenSet::default(),
        signer: Signer::load_or_create(&dir.join(format!("{replica}.pk8"))).unwrap(),
        ledger: store.ledger,
    }))
}

/// The TEE key placeholder release requests are bound to.
fn placeholder_tee() -> sealroom_measurements::binding::TeePublicKey {
    let kem = sealroom_measurements::binding::Kem::X25519HkdfSha256;
    sealroom_broker::seal::derive_keypair(kem, b"placeholder tee").unwrap().1
}

/// Attack: a release request replayed at another replica, on the path that awaits the database's `COMMIT`
/// (the gRPC service's). Replica r1 records the nonce's use with its (refused) decision; the same request at
/// replica r2 passes r2's MAC check (the replicas share the nonce key) and must come back refused as a replay,
/// with that refusal in r2's audit chain, not appraised again.
#[test]
fn attack_nonce_replayed_at_another_replica_is_refused_while_awaiting_the_commit() {
    let pg = Postgres::start().unwrap();
    let url = pg.create_database("sealroom").unwrap();
    let dir = unique_temp_dir("pg-replay-awaiting");
    let (r1, r2) = (replica_broker(&url, "r1", &dir), replica_broker(&url, "r2", &dir));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (first, replayed) = rt.block_on(async {
        let (nonce, _) = r1.challenge().unwrap();
        let req = sealroom_tests::placeholder::release_request(nonce, &placeholder_tee(), KEY_ID);
        let mut answers = Vec::new();
        for broker in [&r1, &r2] {
            let staged = Arc::clone(broker).stage_release_awaiting(req.clone()).await.unwrap();
            answers.push(broker.finish_release(staged.durable().await.unwrap()).unwrap());
        }
        (answers.remove(0), answers.remove(0))
    });
    assert_eq!(first.refusals[0].1.reason, sealroom_tests::placeholder::REFUSAL);
    assert!(replayed.keys.is_empty());
    assert_eq!(
        (replayed.refusals[0].1.rule.as_str(), replayed.refusals[0].1.reason.as_str()),
        ("nonce", "nonce: already used (replay)")
    );
    let r2_audit = pg
        .psql("sealroom", "select reason from audit where replica = 'r2' order by seq desc limit 1")
        .unwrap();
    assert_eq!(r2_audit.trim(), "nonce: already used (replay)");
}

/// A release waiting for its PostgreSQL `COMMIT` holds no thread (before, each waiting release blocked a
/// thread of the pool until its commit returned, so the pool's size, not the database, bounded how many
/// releases a replica had in flight): with a blocking pool of one thread and the commit held up by a lock on
/// `used_nonces`, other blocking work still runs; the release is answered, and recorded, once the lock is gone.
#[test]
fn a_release_awaiting_its_postgres_commit_holds_no_thread() {
    let pg = Postgres::start().unwrap();
    let url = pg.create_database("sealroom").unwrap();
    let broker = replica_broker(&url, REPLICA, &unique_temp_dir("pg-commit-wait"));
    let tee = placeholder_tee();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    std::thread::scope(|s| {
        let held = s.spawn(|| {
            pg.psql(
                "sealroom",
                "begin; lock table used_nonces in access exclusive mode; select pg_sleep(5); commit;",
            )
        });
        let locked = "select count(*) from pg_locks where relation = 'used_nonces'::regclass \
                      and mode = 'AccessExclusiveLock' and granted";
        let t0 = std::time::Instant::now();
        while pg.psql("sealroom", locked).unwrap().trim() != "1" {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(20),
                "the lock on used_nonces was never taken"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        rt.block_on(async {
            let (nonce, _) = broker.challenge().unwrap();
            let req = sealroom_tests::placeholder::release_request(nonce, &tee, KEY_ID);
            let release = tokio::spawn(Arc::clone(&broker).stage_release_awaiting(req));
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            assert!(!release.is_finished(), "the lock did not hold up the release's commit");
            let other =
                tokio::time::timeout(std::time::Duration::from_secs(2), tokio::task::spawn_blocking(|| ()));
            assert!(
                other.await.is_ok(),
                "the blocking pool's only thread is held by the release waiting to commit"
            );
            let staged = release.await.unwrap().unwrap();
            let released = broker.finish_release(staged.durable().await.unwrap()).unwrap();
            assert_eq!(released.refusals[0].1.reason, sealroom_tests::placeholder::REFUSAL);
        });
        held.join().unwrap().unwrap();
    });
    assert!(last_audit(&pg).ends_with(sealroom_tests::placeholder::REFUSAL), "{}", last_audit(&pg));
}

/// A release of keys and its receipt on a replica hold no thread while their statements wait on the database
/// (before, the key read and the release record of a release, and a receipt's reads and audit commit, ran on
/// the blocking pool, each call in flight holding a thread through its round trips): with the broker on a
/// runtime whose blocking pool has one thread, genuine swtpm evidence the policy accepts, and the tables each
/// statement needs locked in turn by another session, other blocking work still runs during every wait; the
/// key is released and recorded, and the receipt issued and audited, once the locks are gone.
#[test]
fn a_release_of_keys_and_its_receipt_awaiting_postgres_hold_no_thread() {
    let pg = Postgres::start().unwrap();
    let url = pg.create_database("sealroom").unwrap();
    let dir = unique_temp_dir("pg-keys-awaiting");
    std::fs::create_dir_all(&dir).unwrap();
    let kid = Signer::load_or_create(&dir.join("signing.pk8")).unwrap().kid().to_owned();
    let agents = tokio::runtime::Runtime::new().unwrap();
    let brokers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tpm = Swtpm::start().unwrap();
    let agent = agents.block_on(sealroom_tests::agent::start_agent(&tpm, &launch_events(&kid))).unwrap();
    let ak = agents.block_on(ak_of(&agent));
    let replica = brokers.block_on(start_replica(&url, &dir, vec![ak]));
    let lock = |tables: &[&'static str]| {
        tables.iter().map(|t| (*t, pg.lock_table("sealroom", t).unwrap())).collect::<Vec<_>>()
    };

    // The release: its key read, then (its commit done) its release record.
    let held = vec![lock(&["keys"]), lock(&["releases"])];
    let (handle, broker) = (agent.handle.clone(), endpoint(&replica));
    let release =
        agents.spawn(async move { BrokerKeys::new(handle).release(&broker, &[KEY_ID.into()]).await });
    each_wait_holds_no_thread(&pg, &brokers, held, &release);
    let got = agents.block_on(release).unwrap().unwrap();
    assert_eq!(got, vec![(KEY_ID.to_owned(), DATA_KEY.to_vec())]);
    assert_eq!(pg.psql("sealroom", "select count(*) from releases").unwrap(), "1");

    // The receipt: the release record and the key (read at once, in either order), then its audit commit.
    let digest = agents.block_on(measure_release_and_output(&agent, &kid));
    let held = vec![lock(&["releases", "keys"]), lock(&["audit"])];
    let (handle, broker) = (agent.handle.clone(), endpoint(&replica));
    let obtained = agents.spawn(async move { receipt::obtain(&handle, &broker, KEY_ID, &digest).await });
    each_wait_holds_no_thread(&pg, &brokers, held, &obtained);
    let r = agents.block_on(obtained).unwrap().unwrap();
    sealroom_broker::token::verify(&r.token, &replica.signer_jwk).unwrap();
    assert!(last_audit(&pg).starts_with("3|"), "the receipt is audited: {}", last_audit(&pg));
    let _ = std::fs::remove_dir_all(&dir);
}

/// For each group of locked tables in turn, as the broker's call `pending` reaches it: waits until a session
/// waits for one of their locks, checks that other blocking work still runs on `brokers` (whose blocking pool
/// has one thread) and that the call is still waiting, then releases the group's locks.
fn each_wait_holds_no_thread<T>(
    pg: &Postgres,
    brokers: &tokio::runtime::Runtime,
    held: Vec<Vec<(&str, sealroom_tests::postgres::TableLock)>>,
    pending: &tokio::task::JoinHandle<T>,
) {
    for group in held {
        let table = group.iter().map(|(t, _)| *t).collect::<Vec<_>>().join("`, `");
        let relations = group.iter().map(|(t, _)| format!("'{t}'::regclass")).collect::<Vec<_>>().join(", ");
        let waiting =
            format!("select count(*) from pg_locks where relation in ({relations}) and not granted");
        let t0 = std::time::Instant::now();
        while pg.psql("sealroom", &waiting).unwrap() == "0" {
            assert!(t0.elapsed() < std::time::Duration::from_secs(30), "the call never waited on `{table}`");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let other = brokers.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), tokio::task::spawn_blocking(|| ())).await
        });
        assert!(other.is_ok(), "the blocking pool's only thread is held by the call waiting on `{table}`");
        assert!(!pending.is_finished(), "the call did not wait for `{table}`");
        for (_, lock) in group {
            lock.release().unwrap();
        }
    }
}

/// Attack: whoever can write the database (not holding the KEK) adds a signing key of their own to the table
/// every replica publishes as its JWKS, or swaps a replica's key for theirs under the same `kid`, so that
/// relying parties would accept tokens and receipts they sign. The forged row is refused with its `kid` named
/// (the JWKS endpoint answers 503 with that line) instead of being published; the replica whose key it is
/// puts its own row right by publishing again.
#[test]
fn attack_a_signing_key_written_into_the_database_without_the_kek_is_not_published() {
    use sealroom_broker::jwks::KeySource;
    let pg = Postgres::start().unwrap();
    let url = pg.create_database("sealroom").unwrap();
    let dir = unique_temp_dir("pg-signing-keys");
    std::fs::create_dir_all(&dir).unwrap();
    let kek = sealroom_broker::keystore::Kek::from_bytes(&[5; 32]).unwrap();
    let keys = sealroom_broker::pg::open_keys(&url, kek, &SystemRandomness::new()).unwrap();
    let genuine = Signer::load_or_create(&dir.join("r1.pk8")).unwrap().jwk();
    let attacker = Signer::load_or_create(&dir.join("attacker.pk8")).unwrap().jwk();
    keys.publish_signing_key(REPLICA, &genuine).unwrap();
    assert_eq!(keys.signing_keys().unwrap(), vec![genuine.clone()]);

    // A key of the attacker's own, under its own kid, with a made-up MAC or none.
    let kid = attacker["kid"].as_str().unwrap();
    for mac in ["'\\x00'", "null"] {
        pg.psql(
            "sealroom",
            &format!("insert into signing_keys (kid, replica, jwk, mac) values ('{kid}', 'r9', '{attacker}', {mac})"),
        )
        .unwrap();
        let e = keys.signing_keys().unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "key store: signing key {kid} (replica r9) was not published by a replica holding the KEK: refused"
            )
        );
        pg.psql("sealroom", &format!("delete from signing_keys where kid = '{kid}'")).unwrap();
    }

    // The attacker's key swapped in under the genuine kid, the genuine row's MAC kept.
    let mut swapped = attacker.clone();
    swapped["kid"] = genuine["kid"].clone();
    pg.psql("sealroom", &format!("update signing_keys set jwk = '{swapped}'")).unwrap();
    let e = keys.signing_keys().unwrap_err().to_string();
    assert!(e.ends_with("was not published by a replica holding the KEK: refused"), "{e}");

    // The replica publishing its key again (as it does at every start) restores its row.
    keys.publish_signing_key(REPLICA, &genuine).unwrap();
    assert_eq!(keys.signing_keys().unwrap(), vec![genuine]);
}
