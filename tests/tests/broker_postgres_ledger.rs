//! The replicated broker's ledger writers on a real PostgreSQL, beyond single releases:
//! - the replicas cross-anchor their audit chains: each replica's chain records the other replicas' heads (at
//!   most once a second of the releases' time, when they moved), and `verify_chains` (`sealroom audit verify
//!   --postgres`) requires every named chain to still hold that head. Someone who can write the database cuts
//!   records from the end of one replica's chain, rewrites it with every hash recomputed, or deletes it: that
//!   chain alone still verifies, and the other replicas' anchors expose it;
//! - a database that stops answering without closing the connection (a hung server, a network path dropping
//!   every packet; here the server's processes are stopped with SIGSTOP) fails the replica's releases and key
//!   reads with a one-line reason after a bounded time instead of holding them forever, and once it answers
//!   again the replica records again, its chain neither forked nor holding the failed releases.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use sealroom_broker::audit::{AuditEntry, ChainHead, Decision};
use sealroom_broker::nonce_mac::NonceKeys;
use sealroom_broker::pg::chain::{self, Row};
use sealroom_broker::pg::ledger::{ANCHOR_EVERY_MS, verify_chains};
use sealroom_broker::store::{KeyRecords, Ledger, Recorded};
use sealroom_broker::{Randomness, SystemRandomness};
use sealroom_tests::postgres::Postgres;

const REPLICAS: [&str; 3] = ["r1", "r2", "r3"];

fn entry(i: u64) -> AuditEntry {
    AuditEntry {
        decision: Decision::Released,
        key_id: "data-key".into(),
        evidence_digest: [u8::try_from(i % 256).unwrap(); 32],
        rule: "policy".into(),
        reason: format!("release {i}"),
    }
}

fn store(url: &str, replica: &str) -> sealroom_broker::pg::PgStore {
    let rng: Box<dyn Randomness> = Box::new(SystemRandomness::new());
    let kek = sealroom_broker::keystore::Kek::from_bytes(&[5; 32]).unwrap();
    let nonces = NonceKeys::new(&[9; 32], None, 30_000).unwrap();
    sealroom_broker::pg::open(url, kek, rng.as_ref(), nonces, replica).unwrap()
}

fn ledger(url: &str, replica: &str) -> std::sync::Arc<sealroom_broker::pg::ledger::PgLedger> {
    store(url, replica).ledger
}

fn record(l: &dyn Ledger, i: u64, now_ms: u64) {
    assert!(matches!(l.record(None, &[entry(i)], now_ms).unwrap(), Recorded::Committed(..)));
}

/// A database `name` where three replicas each recorded one release per second for six seconds (their clocks
/// injected), so that each chain holds the others' heads several times over.
fn three_anchored_replicas(pg: &Postgres, name: &str) -> String {
    let url = pg.create_database(name).unwrap();
    let ledgers: Vec<_> = REPLICAS.iter().map(|r| ledger(&url, r)).collect();
    for second in 1..=6u64 {
        for (i, l) in (0u64..).zip(&ledgers) {
            record(l.as_ref(), second * 10 + i, second * ANCHOR_EVERY_MS);
        }
    }
    url
}

fn anchor_rows(pg: &Postgres, db: &str, replica: &str) -> u64 {
    let sql = format!("select count(*) from audit where replica = '{replica}' and decision = 5");
    pg.psql(db, &sql).unwrap().trim().parse().unwrap()
}

#[test]
fn replicas_cross_anchor_their_chains_and_name_only_heads_that_moved() {
    let pg = Postgres::start().unwrap();
    let url = three_anchored_replicas(&pg, "intact");
    let verified = verify_chains(&url).unwrap();
    assert_eq!(verified.chains.len(), 3);
    // r1 first anchors at second 2 (at second 1 nobody else had a chain yet), r2 and r3 from second 1 on the
    // chains written before them: every anchoring names both others, as both moved every second.
    assert_eq!(anchor_rows(&pg, "intact", "r1"), 10);
    assert_eq!(anchor_rows(&pg, "intact", "r2"), 11);
    assert_eq!(anchor_rows(&pg, "intact", "r3"), 12);
    assert_eq!(verified.cross_anchors, 33);
    for (replica, _, rows) in &verified.chains {
        for row in rows.iter().filter(|r| r.decision == Decision::ReplicaHead) {
            let (named, head) = chain::replica_head(row).unwrap().unwrap();
            assert_ne!(named, replica.as_str());
            assert!(head.records > 0);
        }
    }

    // r1 restarted goes on alone: its first anchoring names both others again (a writer keeps what it named in
    // memory), then, as their heads do not move, never again.
    let r1 = ledger(&url, "r1");
    record(r1.as_ref(), 70, 7 * ANCHOR_EVERY_MS);
    assert_eq!(anchor_rows(&pg, "intact", "r1"), 12);
    for second in 8..=10u64 {
        record(r1.as_ref(), second * 10, second * ANCHOR_EVERY_MS);
    }
    assert_eq!(anchor_rows(&pg, "intact", "r1"), 12);
    // Within one second of the releases' time, no anchoring at all, even when the others moved.
    let r2 = ledger(&url, "r2");
    record(r2.as_ref(), 200, 11 * ANCHOR_EVERY_MS);
    let r1_before = anchor_rows(&pg, "intact", "r1");
    record(r1.as_ref(), 201, 10 * ANCHOR_EVERY_MS + ANCHOR_EVERY_MS / 2);
    assert_eq!(anchor_rows(&pg, "intact", "r1"), r1_before);
    record(r1.as_ref(), 202, 11 * ANCHOR_EVERY_MS);
    assert_eq!(anchor_rows(&pg, "intact", "r1"), r1_before + 1, "r2 moved, r3 did not");
    assert!(verify_chains(&url).unwrap().cross_anchors > 33);
}

/// `verify_chains`' error, which must come from a cross-anchor (each chain alone still verified).
fn cross_anchor_refusal(url: &str) -> String {
    let e = verify_chains(url).unwrap_err().to_string();
    assert!(e.contains("anchors replica r2 at "), "not found by a cross-anchor: {e}");
    e
}

/// `verify_chains`' error after `tamper` ran on a database of [`three_anchored_replicas`].
fn refusal_after(tamper: &str) -> String {
    let pg = Postgres::start().unwrap();
    let url = three_anchored_replicas(&pg, "tampered");
    pg.psql("tampered", tamper).unwrap();
    cross_anchor_refusal(&url)
}

#[test]
fn attack_records_cut_from_the_end_of_a_replicas_chain_are_found_by_the_others_anchors() {
    // r2's chain cut back to its first three records: what is left is an intact chain.
    let e = refusal_after("delete from audit where replica = 'r2' and seq >= 3");
    assert!(e.ends_with("but its chain has 3 records: records were cut from its end"), "{e}");
}

#[test]
fn attack_a_replicas_chain_rewritten_with_every_hash_recomputed_is_found_by_the_others_anchors() {
    let pg = Postgres::start().unwrap();
    let url = three_anchored_replicas(&pg, "rewrite");
    let rows: Vec<Row> = verify_chains(&url).unwrap().chains.into_iter().find(|c| c.0 == "r2").unwrap().2;
    // The first release turned into a refusal, and the chain re-linked from there as the writer would have.
    let mut head = ChainHead { records: 0, hash: [0; 32] };
    let mut updates = String::new();
    for (i, mut row) in rows.into_iter().enumerate() {
        if i == 0 {
            row.decision = Decision::Refused;
        }
        row.prev = head.hash;
        row.hash = row.computed_hash();
        head = ChainHead { records: head.records + 1, hash: row.hash };
        updates.push_str(&format!(
            "update audit set decision = {}, prev = '\\x{}', hash = '\\x{}' where replica = 'r2' and seq = {};\n",
            chain::decision_code(row.decision),
            hex::encode(row.prev),
            hex::encode(row.hash),
            row.seq
        ));
    }
    pg.psql("rewrite", &updates).unwrap();
    let e = cross_anchor_refusal(&url);
    assert!(e.ends_with("its chain was rewritten"), "{e}");
}

#[test]
fn attack_a_replicas_whole_chain_deleted_is_found_by_the_others_anchors() {
    let e = refusal_after("delete from audit where replica = 'r2'");
    assert!(e.ends_with("but there is no chain of replica r2: it was removed"), "{e}");
}

#[test]
fn releases_fail_in_bounded_time_while_the_database_hangs_and_the_chain_goes_on_after() {
    let pg = Postgres::start().unwrap();
    let url = pg.create_database("hang").unwrap();
    let sealroom_broker::pg::PgStore { keys, ledger: r1 } = store(&url, "r1");
    record(r1.as_ref(), 1, 1_000);
    assert!(keys.list(None).unwrap().is_empty());

    let frozen = pg.freeze().unwrap();
    // A key read (a release's, an admin command's) on the open shared connection.
    let e = keys.list(None).unwrap_err().to_string();
    assert!(e.ends_with("postgres: the database did not answer within 10 s"), "{e}");
    // The writer's connection is open and gets no answer; the next batch's new connection gets none either.
    for (i, now) in [(2, 2_000), (3, 3_000)] {
        let started = std::time::Instant::now();
        let e = r1.record(None, &[entry(i)], now).unwrap_err().to_string();
        assert!(
            e.ends_with("release not recorded: postgres: the database did not answer within 10 s"),
            "{e}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "held for {:?}", started.elapsed());
    }
    drop(frozen);

    record(r1.as_ref(), 4, 4_000);
    assert!(keys.list(None).unwrap().is_empty());
    let verified = verify_chains(&url).unwrap();
    let (_, head, rows) = &verified.chains[0];
    let reasons: Vec<&str> = rows.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons, ["release 1", "release 4"]);
    assert_eq!(head.records, 2);
}
