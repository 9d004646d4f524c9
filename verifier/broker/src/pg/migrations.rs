//! The schema, owned by the broker: numbered migrations applied in order at start, each in one transaction
//! under an advisory lock so replicas starting together do not race. A database newer than this broker (a
//! version it does not know) is refused rather than used.

use tokio_postgres::Client;

use super::pg_err;
use crate::error::{Error, Result};

/// Migrations in order; index + 1 is the version.
const MIGRATIONS: &[&str] = &[
    // 1: keys (material sealed under the KEK), the KEK check, used nonces, per-replica audit chains.
    r"
    create table keys (
        id text primary key,
        owner text not null,
        policy text not null,
        version integer not null check (version >= 1),
        revoked_ms bigint,
        created_ms bigint not null,
        rotated_ms bigint not null
    );
    create index keys_owner on keys (owner, id);
    create table key_material (
        id text not null references keys (id),
        version integer not null,
        sealed bytea not null,
        primary key (id, version)
    );
    create table meta (name text primary key, value bytea not null);
    create table used_nonces (nonce bytea primary key check (length(nonce) = 32), expires_ms bigint not null);
    create index used_nonces_expires on used_nonces (expires_ms);
    create table audit (
        replica text not null,
        seq bigint not null check (seq >= 0),
        time_ms bigint not null,
        decision smallint not null,
        key_id text not null,
        evidence_digest bytea not null check (length(evidence_digest) = 32),
        rule text not null,
        reason text not null,
        prev bytea not null check (length(prev) = 32),
        hash bytea not null check (length(hash) = 32),
        primary key (replica, seq)
    );
    ",
    // 2: every replica's token signing key (public JWK), published by every replica's JWKS endpoint.
    r"
    create table signing_keys (
        kid text primary key,
        replica text not null,
        jwk text not null,
        added_at timestamptz not null default now()
    );
    ",
    // 3: each key row's record MAC (keystore::key_record_tag, as in the embedded store; rows of an older broker
    // have none and are refused), and the releases made, for receipts (keystore::seal_release).
    r"
    alter table keys add column mac bytea;
    create table releases (
        tee_key_digest bytea not null check (length(tee_key_digest) = 32),
        key_id text not null,
        record bytea not null,
        primary key (tee_key_digest, key_id)
    );
    ",
    // 4: each signing key row's record MAC (keystore::record_mac, see pg::keys): a key written without the KEK, by
    // whoever can write the database, is refused instead of published to relying parties.
    r"
    alter table signing_keys add column mac bytea;
    ",
];

/// The schema version this broker writes.
#[must_use]
pub fn latest() -> i32 {
    i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX)
}

/// Brings the schema (in the connection's current schema, from its `search_path`) up to [`latest`].
///
/// # Errors
/// When a migration fails (nothing of it is applied) or the database is newer than this broker.
pub async fn migrate(client: &mut Client) -> Result<i32> {
    let tx = client.transaction().await.map_err(|e| pg_err("migrate", &e))?;
    // One migrator per schema at a time.
    tx.execute(
        "select pg_advisory_xact_lock(hashtext('sealroom.broker.migrations.' || current_schema()))",
        &[],
    )
    .await
    .map_err(|e| pg_err("migration lock", &e))?;
    tx.batch_execute(
        "create table if not exists schema_migrations (version integer primary key, applied_at timestamptz not null default now())",
    )
    .await
    .map_err(|e| pg_err("schema_migrations", &e))?;
    let current: i32 = tx
        .query_one("select coalesce(max(version), 0) from schema_migrations", &[])
        .await
        .map_err(|e| pg_err("schema version", &e))?
        .get(0);
    if current > latest() {
        return Err(Error::check(
            "postgres",
            format!("schema version {current} is newer than this broker's {}; upgrade the broker", latest()),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(current).unwrap_or(usize::MAX)) {
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.batch_execute(sql).await.map_err(|e| pg_err(&format!("migration {version}"), &e))?;
        tx.execute("insert into schema_migrations (version) values ($1)", &[&version])
            .await
            .map_err(|e| pg_err("schema_migrations", &e))?;
    }
    tx.commit().await.map_err(|e| pg_err("migrate commit", &e))?;
    Ok(latest())
}
