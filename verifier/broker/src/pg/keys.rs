//! Keys and policies in PostgreSQL, with the same rules and the same sealing as the embedded store
//! ([`crate::keystore`]): material is AES-256-GCM under the KEK with AAD = domain || key id || version, and the
//! `meta` row `kek_check` proves at start that this replica's KEK is the one the database was created with.
//! Admin changes lock the key row (`select … for update`) so two replicas cannot interleave a rotation.
//!
//! Each key row carries the record MAC the embedded store appends to its records (`mac`:
//! [`keystore::key_record_tag`] over the row's fields, checked with [`keystore::check_key_record`]), so a row
//! edited in the database without the KEK (un-revoked, given another policy or owner) is refused with a reason
//! and the refusal audited. The releases the broker made are recorded in `releases` ([`keystore::seal_release`],
//! the same MACed record as in redb), so receipts work on PostgreSQL as on the embedded store.

use std::future::Future;
use std::sync::Arc;

use tokio_postgres::Row;

use super::{Database, SharedClient, connect, pg_err, to_i64, to_u64};
use crate::error::{Error, Result};
use crate::keystore::{self, Kek, KeyInfo, KeyState, ReleasableKey, ReleaseRecord, Unreleasable};
use crate::store::{Awaitable, KeyRead, KeyRecords};
use crate::{Randomness, check_key_id};

const LAYER: &str = "key store";
const SELECT_KEY: &str =
    "select id, owner, policy, version, revoked_ms, created_ms, rotated_ms, mac from keys";

/// The key store of a replicated broker.
#[derive(Debug)]
pub struct PgKeys {
    db: Arc<Database>,
    reads: Arc<SharedClient>,
    kek: Arc<Kek>,
}

fn info_from_row(row: &Row) -> Result<KeyInfo> {
    let get = |e: tokio_postgres::Error| pg_err("key row", &e);
    let version: i32 = row.try_get("version").map_err(get)?;
    let revoked: Option<i64> = row.try_get("revoked_ms").map_err(get)?;
    Ok(KeyInfo {
        id: row.try_get("id").map_err(get)?,
        owner: row.try_get("owner").map_err(get)?,
        policy: row.try_get("policy").map_err(get)?,
        version: u32::try_from(version)
            .map_err(|_| Error::check(LAYER, format!("stored version {version}")))?,
        state: match revoked {
            None => KeyState::Active,
            Some(t) => KeyState::Revoked { time_ms: to_u64("revoked_ms", t)? },
        },
        created_ms: to_u64("created_ms", row.try_get("created_ms").map_err(get)?)?,
        rotated_ms: to_u64("rotated_ms", row.try_get("rotated_ms").map_err(get)?)?,
    })
}

/// The row's key record when its MAC verifies; else why not (one line, without the layer).
fn checked_info(kek: &Kek, row: &Row) -> Result<std::result::Result<KeyInfo, String>> {
    let info = info_from_row(row)?;
    let mac: Option<Vec<u8>> = row.try_get("mac").map_err(|e| pg_err("key row", &e))?;
    Ok(match mac {
        None => Err(format!(
            "the record of key {} has no integrity tag (its MAC was removed, or an older broker wrote it)",
            info.id
        )),
        Some(tag) => keystore::check_key_record(kek, &info, &tag).map(|()| info),
    })
}

/// Like [`checked_info`], a failing check as this layer's error.
fn verified_info(kek: &Kek, row: &Row) -> Result<KeyInfo> {
    checked_info(kek, row)?.map_err(|reason| Error::check(LAYER, reason))
}

fn version_i32(v: u32) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::check(LAYER, format!("version {v} out of range")))
}

/// What an admin change does to a locked key row.
enum Change {
    Rotate { material: Vec<u8>, now_ms: u64 },
    Revoke { now_ms: u64 },
    SetPolicy { policy: String },
}

impl PgKeys {
    /// Checks (or, on a fresh database, records) the KEK.
    ///
    /// # Errors
    /// When the database cannot be read or the KEK does not match.
    pub fn open(db: Arc<Database>, kek: Kek, rng: &dyn Randomness) -> Result<Self> {
        let candidate = kek.seal(rng, keystore::KEK_CHECK.as_bytes(), keystore::KEK_CHECK_PLAINTEXT)?;
        let target = db.target();
        let stored: Vec<u8> = db.run(async move {
            let c = connect(&target).await?;
            // First replica to start wins; the others read its check value.
            c.execute(
                "insert into meta (name, value) values ($1, $2) on conflict (name) do nothing",
                &[&keystore::KEK_CHECK, &candidate],
            )
            .await
            .map_err(|e| pg_err("kek check", &e))?;
            let row = c
                .query_one("select value from meta where name = $1", &[&keystore::KEK_CHECK])
                .await
                .map_err(|e| pg_err("kek check", &e))?;
            row.try_get(0).map_err(|e| pg_err("kek check", &e))
        })?;
        if kek.open(keystore::KEK_CHECK.as_bytes(), &stored).as_deref() != Some(keystore::KEK_CHECK_PLAINTEXT)
        {
            return Err(Error::check(LAYER, "the key-encryption key does not match this database"));
        }
        let reads = Arc::new(SharedClient::new(db.target()));
        Ok(Self { db, reads, kek: Arc::new(kek) })
    }

    fn change(&self, key_id: &str, change: &Change, rng: &dyn Randomness) -> Result<KeyInfo> {
        check_key_id(key_id)?;
        let target = self.db.target();
        let id = key_id.to_owned();
        // The sealing needs the new version, known only under the row lock: seal for version + 1 of what we
        // read first, and retry the whole change if a concurrent rotation moved the version meanwhile.
        for _ in 0..5 {
            let current = self.list_one(key_id)?;
            let sealed = match change {
                Change::Rotate { material, .. } => {
                    if let KeyState::Revoked { .. } = current.state {
                        return Err(Error::check(LAYER, format!("key {key_id} is revoked")));
                    }
                    let next = current
                        .version
                        .checked_add(1)
                        .ok_or_else(|| Error::check(LAYER, format!("key {key_id}: version overflow")))?;
                    Some((next, self.kek.seal(rng, &keystore::material_aad(key_id, next), material)?))
                }
                Change::Revoke { .. } | Change::SetPolicy { .. } => None,
            };
            let (target, id) = (target.clone(), id.clone());
            let (revoke_at, policy, rotated_at) = match change {
                Change::Revoke { now_ms } => (Some(to_i64("time", *now_ms)?), None, None),
                Change::SetPolicy { policy } => (None, Some(policy.clone()), None),
                Change::Rotate { now_ms, .. } => (None, None, Some(to_i64("time", *now_ms)?)),
            };
            let expected = version_i32(current.version)?;
            let kek = Arc::clone(&self.kek);
            let outcome: Option<KeyInfo> = self.db.run(async move {
                let mut c = connect(&target).await?;
                let tx = c.transaction().await.map_err(|e| pg_err("begin", &e))?;
                let row = tx
                    .query_opt(&format!("{SELECT_KEY} where id = $1 for update"), &[&id])
                    .await
                    .map_err(|e| pg_err("lock key", &e))?
                    .ok_or_else(|| Error::check(LAYER, format!("unknown key id {id}")))?;
                // An edited row must not be laundered by changing it.
                let info = verified_info(&kek, &row)?;
                if version_i32(info.version)? != expected {
                    return Ok(None);
                }
                if let Some(t) = revoke_at {
                    if let KeyState::Revoked { .. } = info.state {
                        return Err(Error::check(LAYER, format!("key {id} is already revoked")));
                    }
                    tx.execute("update keys set revoked_ms = $2 where id = $1", &[&id, &t])
                        .await
                        .map_err(|e| pg_err("revoke", &e))?;
                }
                if let Some(p) = &policy {
                    tx.execute("update keys set policy = $2 where id = $1", &[&id, p])
                        .await
                        .map_err(|e| pg_err("set policy", &e))?;
                }
                if let (Some((next, sealed)), Some(t)) = (&sealed, rotated_at) {
                    if let KeyState::Revoked { .. } = info.state {
                        return Err(Error::check(LAYER, format!("key {id} is revoked")));
                    }
                    let next = version_i32(*next)?;
                    tx.execute(
                        "insert into key_material (id, version, sealed) values ($1, $2, $3)",
                        &[&id, &next, sealed],
                    )
                    .await
                    .map_err(|e| pg_err("rotate", &e))?;
                    tx.execute(
                        "update keys set version = $2, rotated_ms = $3 where id = $1",
                        &[&id, &next, &t],
                    )
                    .await
                    .map_err(|e| pg_err("rotate", &e))?;
                }
                let row = tx
                    .query_one(&format!("{SELECT_KEY} where id = $1"), &[&id])
                    .await
                    .map_err(|e| pg_err("read back", &e))?;
                let info = info_from_row(&row)?;
                let tag = keystore::key_record_tag(&kek, &info)?.to_vec();
                tx.execute("update keys set mac = $2 where id = $1", &[&id, &tag])
                    .await
                    .map_err(|e| pg_err("record MAC", &e))?;
                tx.commit().await.map_err(|e| pg_err("commit", &e))?;
                Ok(Some(info))
            })?;
            if let Some(info) = outcome {
                return Ok(info);
            }
        }
        Err(Error::check(LAYER, format!("key {key_id} kept changing under concurrent rotations; retry")))
    }

    fn list_one(&self, key_id: &str) -> Result<KeyInfo> {
        let reads = Arc::clone(&self.reads);
        let id = key_id.to_owned();
        let kek = Arc::clone(&self.kek);
        self.db.run(async move {
            let c = reads.get().await?;
            let row = c
                .query_opt(&format!("{SELECT_KEY} where id = $1"), &[&id])
                .await
                .map_err(|e| pg_err("read key", &e))?
                .ok_or_else(|| Error::check(LAYER, format!("unknown key id {id}")))?;
            verified_info(&kek, &row)
        })
    }
}

impl KeyRecords for PgKeys {
    fn add(
        &self,
        key_id: &str,
        owner: &str,
        policy: &str,
        material: Option<Vec<u8>>,
        rng: &dyn Randomness,
        now_ms: u64,
    ) -> Result<KeyInfo> {
        let (info, sealed) =
            keystore::first_version(&self.kek, key_id, owner, policy, material, rng, now_ms)?;
        let target = self.db.target();
        let row = info.clone();
        let now = to_i64("time", now_ms)?;
        let tag = keystore::key_record_tag(&self.kek, &info)?.to_vec();
        self.db.run(async move {
            let mut c = connect(&target).await?;
            let tx = c.transaction().await.map_err(|e| pg_err("begin", &e))?;
            let inserted = tx
                .execute(
                    "insert into keys (id, owner, policy, version, created_ms, rotated_ms, mac) \
                     values ($1, $2, $3, 1, $4, $4, $5) on conflict (id) do nothing",
                    &[&row.id, &row.owner, &row.policy, &now, &tag],
                )
                .await
                .map_err(|e| pg_err("add", &e))?;
            if inserted == 0 {
                return Err(Error::check(LAYER, format!("key {} already exists", row.id)));
            }
            tx.execute(
                "insert into key_material (id, version, sealed) values ($1, 1, $2)",
                &[&row.id, &sealed],
            )
            .await
            .map_err(|e| pg_err("add", &e))?;
            tx.commit().await.map_err(|e| pg_err("commit", &e))
        })?;
        Ok(info)
    }

    fn list(&self, owner: Option<&str>) -> Result<Vec<KeyInfo>> {
        let reads = Arc::clone(&self.reads);
        let owner = owner.map(str::to_owned);
        let kek = Arc::clone(&self.kek);
        self.db.run(async move {
            let c = reads.get().await?;
            let rows = c
                .query(&format!("{SELECT_KEY} where $1::text is null or owner = $1 order by id"), &[&owner])
                .await
                .map_err(|e| pg_err("list", &e))?;
            rows.iter().map(|r| verified_info(&kek, r)).collect()
        })
    }

    fn rotate(
        &self,
        key_id: &str,
        material: Option<Vec<u8>>,
        rng: &dyn Randomness,
        now_ms: u64,
    ) -> Result<KeyInfo> {
        let material = keystore::material_or_generated(material, rng)?;
        self.change(key_id, &Change::Rotate { material, now_ms }, rng)
    }

    fn revoke(&self, key_id: &str, now_ms: u64) -> Result<KeyInfo> {
        // Revocation seals nothing: no randomness is drawn.
        self.change(key_id, &Change::Revoke { now_ms }, &NoRandomness)
    }

    fn set_policy(&self, key_id: &str, policy: &str) -> Result<KeyInfo> {
        keystore::check_policy(policy)?;
        self.change(key_id, &Change::SetPolicy { policy: policy.to_owned() }, &NoRandomness)
    }

    fn get_for_release(&self, key_id: &str) -> std::result::Result<ReleasableKey, Result<Unreleasable>> {
        let fetched = self.db.run(self.fetch_for_release(key_id)).map_err(Err)?;
        releasable(&self.kek, key_id, fetched)
    }

    fn get_for_release_awaitable(&self, key_id: &str) -> Option<Awaitable<KeyRead>> {
        let fetching = self.db.run_awaitable(self.fetch_for_release(key_id));
        let (kek, id) = (Arc::clone(&self.kek), key_id.to_owned());
        Some(Box::pin(async move { releasable(&kek, &id, fetching.await.map_err(Err)?) }))
    }

    fn record_releases(&self, tee_key_digest: &[u8; 32], releases: &[(&str, ReleaseRecord)]) -> Result<()> {
        self.db.run(self.insert_releases(tee_key_digest, releases))
    }

    fn record_releases_awaitable(
        &self,
        tee_key_digest: &[u8; 32],
        releases: &[(&str, ReleaseRecord)],
    ) -> Option<Awaitable<Result<()>>> {
        Some(self.db.run_awaitable(self.insert_releases(tee_key_digest, releases)))
    }

    fn find_release(&self, tee_key_digest: &[u8; 32], key_id: &str) -> Result<Option<ReleaseRecord>> {
        let stored = self.db.run(self.select_release(tee_key_digest, key_id))?;
        stored.map(|s| keystore::open_release(&self.kek, tee_key_digest, key_id, &s)).transpose()
    }

    fn find_release_awaitable(
        &self,
        tee_key_digest: &[u8; 32],
        key_id: &str,
    ) -> Option<Awaitable<Result<Option<ReleaseRecord>>>> {
        let selecting = self.db.run_awaitable(self.select_release(tee_key_digest, key_id));
        let (kek, digest, id) = (Arc::clone(&self.kek), *tee_key_digest, key_id.to_owned());
        Some(Box::pin(async move {
            selecting.await?.map(|s| keystore::open_release(&kek, &digest, &id, &s)).transpose()
        }))
    }
}

/// A key's row as read for a release: its checked record (or why its MAC fails) and its current material,
/// still sealed; `None` when there is no such key.
type Fetched = Option<(std::result::Result<KeyInfo, String>, Option<Vec<u8>>)>;

impl PgKeys {
    /// The read of a release ([`KeyRecords::get_for_release`]), to run on the store's runtime: the key's row
    /// with its current material, on the replica's shared read connection.
    fn fetch_for_release(&self, key_id: &str) -> impl Future<Output = Result<Fetched>> + Send + 'static {
        let (reads, kek, id) = (Arc::clone(&self.reads), Arc::clone(&self.kek), key_id.to_owned());
        async move {
            let c = reads.get().await?;
            let row = c
                .query_opt(
                    "select k.id, k.owner, k.policy, k.version, k.revoked_ms, k.created_ms, k.rotated_ms, k.mac, \
                     m.sealed from keys k left join key_material m on m.id = k.id and m.version = k.version \
                     where k.id = $1",
                    &[&id],
                )
                .await
                .map_err(|e| pg_err("read key", &e))?;
            row.map(|r| {
                let sealed: Option<Vec<u8>> = r.try_get("sealed").map_err(|e| pg_err("key row", &e))?;
                Ok((checked_info(&kek, &r)?, sealed))
            })
            .transpose()
        }
    }

    /// The read of [`KeyRecords::find_release`], to run on the store's runtime: the sealed record of the
    /// release of `key_id` to that TEE key, if any.
    fn select_release(
        &self,
        tee_key_digest: &[u8; 32],
        key_id: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send + 'static {
        let reads = Arc::clone(&self.reads);
        let (digest, id) = (tee_key_digest.to_vec(), key_id.to_owned());
        async move {
            let c = reads.get().await?;
            c.query_opt(
                "select record from releases where tee_key_digest = $1 and key_id = $2",
                &[&digest, &id],
            )
            .await
            .map_err(|e| pg_err("find release", &e))?
            .map(|r| r.try_get(0).map_err(|e| pg_err("release row", &e)))
            .transpose()
        }
    }

    /// The write of [`KeyRecords::record_releases`], to run on the store's runtime: the records sealed under
    /// the KEK here, then one statement, so one transaction, committed (durably: `synchronous_commit`) before
    /// the sealed keys leave the broker; on the replica's shared connection, not a new one (a TLS handshake and
    /// SCRAM exchange) per release.
    fn insert_releases(
        &self,
        tee_key_digest: &[u8; 32],
        releases: &[(&str, ReleaseRecord)],
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        // One row per key id, the last record of an id winning (as when each was written in turn).
        let rows: std::collections::HashMap<String, Vec<u8>> = releases
            .iter()
            .map(|(id, r)| ((*id).to_owned(), keystore::seal_release(&self.kek, tee_key_digest, id, r)))
            .collect();
        let (ids, records): (Vec<String>, Vec<Vec<u8>>) = rows.into_iter().unzip();
        let digest = tee_key_digest.to_vec();
        let reads = Arc::clone(&self.reads);
        async move {
            reads
                .get()
                .await?
                .execute(
                    "insert into releases (tee_key_digest, key_id, record) \
                     select $1, * from unnest($2::text[], $3::bytea[]) \
                     on conflict (tee_key_digest, key_id) do update set record = excluded.record",
                    &[&digest, &ids, &records],
                )
                .await
                .map_err(|e| pg_err("record release", &e))?;
            Ok(())
        }
    }
}

/// What a release may use of a fetched row: the key with its material opened, or why not.
fn releasable(
    kek: &Kek,
    key_id: &str,
    fetched: Fetched,
) -> std::result::Result<ReleasableKey, Result<Unreleasable>> {
    let Some((checked, sealed)) = fetched else { return Err(Ok(Unreleasable::Unknown)) };
    let info = checked.map_err(|r| Ok(Unreleasable::Tampered { reason: format!("{LAYER}: {r}") }))?;
    if let KeyState::Revoked { time_ms } = info.state {
        return Err(Ok(Unreleasable::Revoked { time_ms }));
    }
    let sealed = sealed
        .ok_or_else(|| Err(Error::check(LAYER, format!("key {key_id} v{} has no material", info.version))))?;
    let material = kek.open(&keystore::material_aad(key_id, info.version), &sealed).ok_or_else(|| {
        Err(Error::check(
            LAYER,
            format!("key {key_id} v{}: material does not decrypt (tampered)", info.version),
        ))
    })?;
    Ok(ReleasableKey { info, material })
}

/// The record-MAC table name of signing keys.
const SIGNING_KEYS_TABLE: &str = "signing_keys";

/// What a signing key row's record MAC covers (row key = `kid`): the replica id, a newline, the JWK's text. Only
/// a replica holding the KEK can publish a key that relying parties will be told to trust.
fn signing_key_value(replica: &str, jwk: &str) -> Vec<u8> {
    format!("{replica}\n{jwk}").into_bytes()
}

impl PgKeys {
    /// Publishes this replica's token signing key, with its record MAC (kept after the replica is gone: tokens
    /// it signed stay verifiable). A row of the same `kid` is replaced, so a row written without the KEK (or
    /// before rows had MACs) is put right by the replica whose key it is.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub fn publish_signing_key(&self, replica: &str, jwk: &serde_json::Value) -> Result<()> {
        let kid = jwk.get("kid").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
        let (replica, text) = (replica.to_owned(), jwk.to_string());
        let tag = keystore::record_mac(
            &self.kek,
            SIGNING_KEYS_TABLE,
            kid.as_bytes(),
            &signing_key_value(&replica, &text),
        )
        .to_vec();
        let reads = Arc::clone(&self.reads);
        self.db.run(async move {
            let c = reads.get().await?;
            c.execute(
                "insert into signing_keys (kid, replica, jwk, mac) values ($1, $2, $3, $4) on conflict (kid) do \
                 update set replica = excluded.replica, jwk = excluded.jwk, mac = excluded.mac",
                &[&kid, &replica, &text, &tag],
            )
            .await
            .map_err(|e| pg_err("signing key", &e))?;
            Ok(())
        })
    }
}

impl crate::jwks::KeySource for PgKeys {
    /// Every replica's signing key, each checked against its record MAC: one that fails is refused with its
    /// `kid` named (the JWKS endpoint then answers 503 with that line), never published.
    fn signing_keys(&self) -> Result<Vec<serde_json::Value>> {
        let reads = Arc::clone(&self.reads);
        let rows: Vec<(String, String, String, Option<Vec<u8>>)> = self.db.run(async move {
            let c = reads.get().await?;
            c.query("select kid, replica, jwk, mac from signing_keys order by kid", &[])
                .await
                .map_err(|e| pg_err("signing keys", &e))?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
                .collect::<std::result::Result<_, tokio_postgres::Error>>()
                .map_err(|e| pg_err("signing keys", &e))
        })?;
        rows.iter()
            .map(|(kid, replica, jwk, mac)| {
                let mut stored = signing_key_value(replica, jwk);
                stored.extend_from_slice(mac.as_deref().unwrap_or_default());
                let genuine = keystore::open_record(&self.kek, SIGNING_KEYS_TABLE, kid.as_bytes(), &stored).is_some();
                if !genuine {
                    return Err(Error::check(
                        LAYER,
                        format!(
                            "signing key {kid} (replica {replica}) was not published by a replica holding the \
                             KEK: refused"
                        ),
                    ));
                }
                let value: serde_json::Value = serde_json::from_str(jwk)
                    .map_err(|e| Error::check(LAYER, format!("signing key {kid}: {e}")))?;
                if value.get("kid").and_then(serde_json::Value::as_str) != Some(kid.as_str()) {
                    return Err(Error::check(LAYER, format!("signing key {kid}: its JWK names another kid")));
                }
                Ok(value)
            })
            .collect()
    }
}

/// For changes that seal nothing.
#[derive(Debug)]
struct NoRandomness;

impl Randomness for NoRandomness {
    fn fill(&self, _out: &mut [u8]) -> Result<()> {
        Err(Error::check(LAYER, "no randomness for this operation"))
    }
}
