//! The key store: data keys encrypted at rest in an embedded redb database.
//!
//! Each key belongs to one data provider (its `owner`) and carries that provider's policy (TOML text, checked
//! when stored). Key material is encrypted with AES-256-GCM under a key-encryption key (KEK) read from a file
//! that only its owner may read (mode 0600 or 0400; anything looser is refused). The AAD binds each ciphertext to
//! its key id and version, so ciphertexts cannot be swapped between keys or versions. Every change is one redb
//! transaction committed with `Durability::Immediate` (fsync'd before the call returns).
//!
//! The records beside the material (owner, policy, state, version) are not secret but decide everything: whoever
//! could write them could un-revoke a key or give it an all-`skip` policy (issue 14, finding 3). Each record is
//! therefore stored with an HMAC-SHA256 tag under a MAC key derived from the KEK ([`record_mac`]), over the table,
//! the row key and the value, so a record changed, moved to another key id, or made up without the KEK is
//! refused with a reason (and the broker audits the refusal). The same holds for the release records the broker
//! keeps for receipts. What a record's MAC cannot see is an older record of the same key put back, or the whole
//! file restored from an older copy: the store's state record and its generation, anchored in the audit log,
//! see those ([`crate::keystate`]).
//!
//! Release records are committed with `Durability::Immediate` too: they are on disk before the sealed keys leave
//! the broker, so a receipt can be issued for every release the broker acknowledged, crash or not. Concurrent
//! releases share one such commit (`keystore/release_commit.rs`: group commit, as the audit log's fdatasync).
//!
//! ```text
//! material ciphertext = nonce (12) || AES-256-GCM(KEK, nonce, material, aad)
//! aad                 = "sealroom.keystore.v1" 0x00 || key_id || 0x00 || version (u32 BE)
//! record              = value || HMAC-SHA256(K_rec, "sealroom.keystore.record.v1" 0x00 || lp(table) || lp(row key) || lp(value))
//! K_rec               = HMAC-SHA256(KEK, "sealroom.keystore.v1 record MAC key")
//! lp(x)               = len(x) u32 BE || x
//! ```

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce as AeadNonce, UnboundKey};
use aws_lc_rs::hmac;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Clock, Randomness, check_key_id};
use crate::audit::{GroupCommitLog, key_store_entry};
use crate::error::{Error, Result};
use crate::keystate::{Anchor, AnchorCheck, KeyStoreState};

mod release_commit;

const LAYER: &str = "key store";
const KEYS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("keys");
const MATERIAL: TableDefinition<'_, (&str, u32), &[u8]> = TableDefinition::new("material");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// Keys released, for receipts: (SHA-256 of the TEE key, key id) → [`ReleaseRecord`].
const RELEASES: TableDefinition<'_, (&[u8], &str), &[u8]> = TableDefinition::new("releases");
const RECORD_MAC_DOMAIN: &[u8] = b"sealroom.keystore.record.v1\0";
const RECORD_MAC_KEY_LABEL: &[u8] = b"sealroom.keystore.v1 record MAC key";
/// Length of a record's MAC tag.
pub const RECORD_TAG_LEN: usize = 32;
pub(crate) const KEK_CHECK: &str = "kek_check";
/// The META row holding the state record ([`crate::keystate`]).
const STATE: &str = "state";
const META_TABLE: &str = "meta";
pub(crate) const KEK_CHECK_PLAINTEXT: &[u8] = b"sealroom key store: key-encryption key check";
const AAD_DOMAIN: &[u8] = b"sealroom.keystore.v1\0";
/// Size of generated data keys.
pub const GENERATED_KEY_LEN: usize = 32;
/// Largest key material accepted.
pub const MAX_MATERIAL_LEN: usize = 1024;
/// Largest policy text accepted.
pub const MAX_POLICY_LEN: usize = 64 * 1024;

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::check(LAYER, format!("database: {e}"))
}

/// The key-encryption key (and the record MAC key derived from it).
pub struct Kek {
    aead: LessSafeKey,
    record_mac: hmac::Key,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// Reads the KEK: a regular file (not a symlink) of mode 0600 or 0400 owned by this process's user, holding
    /// 32 raw bytes or 64 hex digits (an optional trailing newline allowed).
    ///
    /// # Errors
    /// When the file is missing, readable by others, or not 32 bytes.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = read_secret(path, "key-encryption key")?;
        Self::from_bytes(&bytes)
            .map_err(|m| Error::check(LAYER, format!("key-encryption key {}: {m}", path.display())))
    }

    /// A KEK from 32 bytes.
    ///
    /// # Errors
    /// When `bytes` is not 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        if bytes.len() != 32 {
            return Err(format!("{} bytes, expected 32", bytes.len()));
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| "AES-256 key rejected".to_string())?;
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, bytes), RECORD_MAC_KEY_LABEL);
        Ok(Self {
            aead: LessSafeKey::new(key),
            record_mac: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        })
    }

    pub(crate) fn seal(&self, rng: &dyn Randomness, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce)?;
        let mut buf = plaintext.to_vec();
        self.aead
            .seal_in_place_append_tag(AeadNonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
            .map_err(|_| Error::check(LAYER, "AES-256-GCM encryption failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, ct) = sealed.split_at_checked(NONCE_LEN)?;
        let nonce = AeadNonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = ct.to_vec();
        let plain = self.aead.open_in_place(nonce, Aad::from(aad), &mut buf).ok()?;
        Some(plain.to_vec())
    }
}

/// Reads a 32-byte secret (the KEK, the replicas' nonce MAC key): a regular file (not a symlink) of mode 0600
/// or 0400 owned by this process's user, holding 32 raw bytes or 64 hex digits (an optional trailing newline
/// allowed).
///
/// # Errors
/// When the file is missing, readable by others, owned by another user, or not 32 bytes.
pub fn read_secret(path: &Path, what: &str) -> Result<Vec<u8>> {
    let what = |m: String| Error::check(LAYER, format!("{what} {}: {m}", path.display()));
    let meta = std::fs::symlink_metadata(path).map_err(|e| what(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(what("not a regular file".into()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode != 0o600 && mode != 0o400 {
        return Err(what(format!("mode {mode:04o}, must be 0600 (readable by its owner only)")));
    }
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if uid.is_some_and(|u| u != meta.uid()) {
        return Err(what(format!("owned by uid {}, not by the broker's user", meta.uid())));
    }
    let raw = std::fs::read(path).map_err(|e| what(e.to_string()))?;
    secret_from_file_bytes(&raw).map_err(what)
}

fn secret_from_file_bytes(raw: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let bytes = if raw.len() == 32 {
        raw.to_vec()
    } else {
        let text = std::str::from_utf8(raw).map_err(|_| format!("{} bytes, expected 32", raw.len()))?;
        hex::decode(text.trim_end_matches('\n'))
            .map_err(|_| format!("{} bytes, expected 32 raw bytes or 64 hex digits", raw.len()))?
    };
    if bytes.len() != 32 {
        return Err(format!("{} bytes, expected 32", bytes.len()));
    }
    Ok(bytes)
}

fn lp(ctx: &mut hmac::Context, bytes: &[u8]) {
    // Rows are bounded (ids ≤ 128 bytes, policies ≤ 64 KiB), far below u32::MAX.
    ctx.update(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    ctx.update(bytes);
}

/// The MAC tag of one stored record: HMAC-SHA256 under the KEK's record MAC key over the table name, the row
/// key and the value (module documentation). Any store of broker records (redb here, PostgreSQL elsewhere)
/// tags and checks its rows with this.
#[must_use]
pub fn record_mac(kek: &Kek, table: &str, row_key: &[u8], value: &[u8]) -> [u8; RECORD_TAG_LEN] {
    let mut ctx = hmac::Context::with_key(&kek.record_mac);
    ctx.update(RECORD_MAC_DOMAIN);
    lp(&mut ctx, table.as_bytes());
    lp(&mut ctx, row_key);
    lp(&mut ctx, value);
    let tag = ctx.sign();
    let mut out = [0u8; RECORD_TAG_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// `value || record_mac(…)`: what is stored.
#[must_use]
pub fn seal_record(kek: &Kek, table: &str, row_key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = value.to_vec();
    out.extend_from_slice(&record_mac(kek, table, row_key, value));
    out
}

/// The value of a stored record whose tag verifies, or `None` (changed, moved, or written without the KEK).
#[must_use]
pub fn open_record<'a>(kek: &Kek, table: &str, row_key: &[u8], stored: &'a [u8]) -> Option<&'a [u8]> {
    let (value, tag) = stored.split_at_checked(stored.len().checked_sub(RECORD_TAG_LEN)?)?;
    let want = record_mac(kek, table, row_key, value);
    aws_lc_rs::constant_time::verify_slices_are_equal(&want, tag).ok()?;
    Some(value)
}

pub(crate) fn material_aad(key_id: &str, version: u32) -> Vec<u8> {
    let mut aad = AAD_DOMAIN.to_vec();
    aad.extend_from_slice(key_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// Whether a key may be released.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum KeyState {
    /// Releasable (subject to policy).
    Active,
    /// Never released again.
    Revoked {
        /// When it was revoked, Unix milliseconds.
        time_ms: u64,
    },
}

/// What the store keeps about a key besides its material.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyInfo {
    /// The key id.
    pub id: String,
    /// The data provider that registered it.
    pub owner: String,
    /// The version released now (1 after `add`, +1 per rotation).
    pub version: u32,
    /// Active or revoked.
    pub state: KeyState,
    /// When it was added, Unix milliseconds.
    pub created_ms: u64,
    /// When the current version was made, Unix milliseconds.
    pub rotated_ms: u64,
    /// The provider's policy for this key (TOML).
    pub policy: String,
}

/// A key fetched for release.
#[derive(Debug)]
pub struct ReleasableKey {
    /// Metadata, including the policy text.
    pub info: KeyInfo,
    /// The plaintext key material.
    pub material: Vec<u8>,
}

/// Why a key cannot be released, independent of evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreleasable {
    /// No key with this id.
    Unknown,
    /// Its stored record fails its integrity check: changed without the KEK.
    Tampered {
        /// One line saying what failed.
        reason: String,
    },
    /// The key was revoked.
    Revoked {
        /// When.
        time_ms: u64,
    },
}

/// The embedded, encrypted key store.
#[derive(Debug)]
pub struct KeyStore {
    db: Database,
    kek: Kek,
    /// The state record as verified at open and written since. Held across every write transaction, so that a
    /// reader's snapshot and this state always belong together.
    tracked: Mutex<Tracked>,
    /// Where changes are anchored, once [`KeyStore::anchor_to`] was called.
    anchor: Mutex<Option<AnchorSink>>,
    /// Release records, group-committed.
    releases: release_commit::ReleaseCommits,
}

/// The audit log a store anchors its changes in, and the clock that stamps them.
type AnchorSink = (Arc<GroupCommitLog>, Arc<dyn Clock>);

#[derive(Debug)]
struct Tracked {
    state: KeyStoreState,
    /// Why no key of this store may be released or changed (a missing or forged state record, a rollback).
    refusal: Option<String>,
}

/// Reads the state record in `meta`, creating it for a store without keys.
fn load_state(
    kek: &Kek,
    meta: &mut redb::Table<'_, &str, &[u8]>,
    has_keys: bool,
) -> Result<std::result::Result<KeyStoreState, String>> {
    let stored = meta.get(STATE).map_err(db_err)?.map(|v| v.value().to_vec());
    match stored {
        Some(stored) => Ok(match open_record(kek, META_TABLE, STATE.as_bytes(), &stored) {
            Some(body) => KeyStoreState::decode(body),
            None => Err(
                "the store's state record fails its integrity check (changed without the key-encryption key)"
                    .to_owned(),
            ),
        }),
        None if has_keys => {
            Ok(Err("keys.redb holds key records but no state record: it was removed without the \
                                    key-encryption key (or the store was written by an older broker)"
                .to_owned()))
        }
        None => {
            let state = KeyStoreState::default();
            let sealed = seal_record(kek, META_TABLE, STATE.as_bytes(), &state.encode());
            meta.insert(STATE, sealed.as_slice()).map_err(db_err)?;
            Ok(Ok(state))
        }
    }
}

impl KeyStore {
    /// Opens or creates the store at `path`, checking that `kek` is the key it was created with.
    ///
    /// # Errors
    /// When the database cannot be opened (corrupt, locked by another process) or the KEK does not match.
    pub fn open(path: &Path, kek: Kek, rng: &dyn Randomness) -> Result<Self> {
        let created = !path.exists();
        let db = Database::create(path).map_err(db_err)?;
        if created {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::check(LAYER, format!("cannot restrict {}: {e}", path.display())))?;
            super::audit::sync_parent_dir(path)?;
        }
        let txn = db.begin_write().map_err(db_err)?;
        let loaded = {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let existing = meta.get(KEK_CHECK).map_err(db_err)?.map(|v| v.value().to_vec());
            match existing {
                Some(sealed) => {
                    if kek.open(KEK_CHECK.as_bytes(), &sealed).as_deref() != Some(KEK_CHECK_PLAINTEXT) {
                        return Err(Error::check(LAYER, "the key-encryption key does not match this store"));
                    }
                }
                None => {
                    let sealed = kek.seal(rng, KEK_CHECK.as_bytes(), KEK_CHECK_PLAINTEXT)?;
                    meta.insert(KEK_CHECK, sealed.as_slice()).map_err(db_err)?;
                }
            }
            let keys = txn.open_table(KEYS).map_err(db_err)?;
            let has_keys = !keys.is_empty().map_err(db_err)?;
            txn.open_table(MATERIAL).map_err(db_err)?;
            load_state(&kek, &mut meta, has_keys)?
        };
        txn.commit().map_err(db_err)?;
        let tracked = match loaded {
            Ok(state) => Tracked { state, refusal: None },
            Err(reason) => Tracked { state: KeyStoreState::default(), refusal: Some(reason) },
        };
        Ok(Self {
            db,
            kek,
            tracked: Mutex::new(tracked),
            anchor: Mutex::new(None),
            releases: release_commit::ReleaseCommits::default(),
        })
    }

    fn tracked(&self) -> Result<MutexGuard<'_, Tracked>> {
        self.tracked.lock().map_err(|_| Error::check(LAYER, "lock poisoned by an earlier panic"))
    }

    /// The store's generation and state digest now.
    ///
    /// # Errors
    /// When the lock was poisoned.
    pub fn anchor(&self) -> Result<Anchor> {
        Ok(Anchor::of(&self.tracked()?.state))
    }

    /// Why no key of this store may be released or changed, if so.
    ///
    /// # Errors
    /// When the lock was poisoned.
    pub fn refusal(&self) -> Result<Option<String>> {
        Ok(self.tracked()?.refusal.clone())
    }

    /// Anchors this store in the broker's audit log: compares its generation with the last one the log
    /// recorded, refuses a rolled-back file ([`crate::keystate`]), records the current state when the log is
    /// behind, and from now on appends the new state after every change.
    ///
    /// # Errors
    /// A rolled-back store (and from then on every release and change is refused with the same reason), or an
    /// audit log that cannot be written.
    pub fn anchor_to(&self, audit: Arc<GroupCommitLog>, clock: Arc<dyn Clock>) -> Result<()> {
        let mut tracked = self.tracked()?;
        if let Some(reason) = &tracked.refusal {
            return Err(Error::check(LAYER, reason.clone()));
        }
        let current = Anchor::of(&tracked.state);
        match Anchor::check(current, audit.key_store_anchor()?) {
            AnchorCheck::Current => {}
            AnchorCheck::Ahead => {
                audit.append(&[key_store_entry(current, "", "key store opened")], clock.now_ms())?;
            }
            AnchorCheck::RolledBack { reason } => {
                tracked.refusal = Some(reason.clone());
                return Err(Error::check(LAYER, reason));
            }
        }
        drop(tracked);
        *self.anchor.lock().map_err(|_| Error::check(LAYER, "lock poisoned by an earlier panic"))? =
            Some((audit, clock));
        Ok(())
    }

    /// Appends the state after a change of `key_id` to the audit log, when anchored.
    fn anchor_change(&self, state: &KeyStoreState, key_id: &str, what: &str) -> Result<()> {
        let anchor =
            self.anchor.lock().map_err(|_| Error::check(LAYER, "lock poisoned by an earlier panic"))?;
        if let Some((audit, clock)) = anchor.as_ref() {
            audit.append(&[key_store_entry(Anchor::of(state), key_id, what)], clock.now_ms()).map_err(|e| {
                Error::check(
                    LAYER,
                    format!("the change of key {key_id} is stored but could not be anchored ({e}); restart the broker"),
                )
            })?;
        }
        Ok(())
    }

    /// Stores `key_id`'s record `row` and the state after it, in `txn` (uncommitted): the new state.
    fn write_row(
        &self,
        txn: &redb::WriteTransaction,
        state: &KeyStoreState,
        key_id: &str,
        row: &[u8],
    ) -> Result<KeyStoreState> {
        let next = state.with_row(key_id, row);
        let mut keys = txn.open_table(KEYS).map_err(db_err)?;
        keys.insert(key_id, row).map_err(db_err)?;
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let sealed = seal_record(&self.kek, META_TABLE, STATE.as_bytes(), &next.encode());
        meta.insert(STATE, sealed.as_slice()).map_err(db_err)?;
        Ok(next)
    }

    /// Registers a new key for `owner` with its policy. `material` is generated (32 bytes) when `None`.
    ///
    /// # Errors
    /// When the id is invalid or taken, the policy does not parse, or the write fails.
    pub fn add(
        &self,
        key_id: &str,
        owner: &str,
        policy: &str,
        material: Option<Vec<u8>>,
        rng: &dyn Randomness,
        now_ms: u64,
    ) -> Result<KeyInfo> {
        let (info, sealed) = first_version(&self.kek, key_id, owner, policy, material, rng, now_ms)?;
        let mut tracked = self.tracked()?;
        if let Some(reason) = &tracked.refusal {
            return Err(Error::check(LAYER, reason.clone()));
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        let exists = txn.open_table(KEYS).map_err(db_err)?.get(key_id).map_err(db_err)?.is_some();
        if exists || tracked.state.rows.contains_key(key_id) {
            return Err(Error::check(LAYER, format!("key {key_id} already exists")));
        }
        let next = self.write_row(&txn, &tracked.state, key_id, &self.encode(&info)?)?;
        txn.open_table(MATERIAL).map_err(db_err)?.insert((key_id, 1), sealed.as_slice()).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        tracked.state = next;
        self.anchor_change(&tracked.state, key_id, "key added")?;
        Ok(info)
    }

    /// All keys, or those of one owner, ordered by id.
    ///
    /// # Errors
    /// When the read fails.
    pub fn list(&self, owner: Option<&str>) -> Result<Vec<KeyInfo>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let keys = txn.open_table(KEYS).map_err(db_err)?;
        let mut out = Vec::new();
        let tracked = self.tracked()?;
        if let Some(reason) = &tracked.refusal {
            return Err(Error::check(LAYER, reason.clone()));
        }
        for row in keys.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let info = self.decode(k.value(), v.value()).map_err(|t| Error::check(LAYER, t))?;
            if let Some(problem) = tracked.state.row_problem(k.value(), Some(v.value())) {
                return Err(Error::check(LAYER, problem));
            }
            if owner.is_none_or(|o| o == info.owner) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Replaces the key's material with a new version (generated when `None`). Old versions stay stored.
    ///
    /// # Errors
    /// When the key is unknown or revoked, or the write fails.
    pub fn rotate(
        &self,
        key_id: &str,
        material: Option<Vec<u8>>,
        rng: &dyn Randomness,
        now_ms: u64,
    ) -> Result<KeyInfo> {
        let material = material_or_generated(material, rng)?;
        self.update(key_id, "key rotated", |info| {
            if let KeyState::Revoked { .. } = info.state {
                return Err(Error::check(LAYER, format!("key {key_id} is revoked")));
            }
            info.version = info
                .version
                .checked_add(1)
                .ok_or_else(|| Error::check(LAYER, format!("key {key_id}: version overflow")))?;
            info.rotated_ms = now_ms;
            Ok(Some(self.kek.seal(rng, &material_aad(key_id, info.version), &material)?))
        })
    }

    /// Marks the key revoked: it is never released again.
    ///
    /// # Errors
    /// When the key is unknown or already revoked, or the write fails.
    pub fn revoke(&self, key_id: &str, now_ms: u64) -> Result<KeyInfo> {
        self.update(key_id, "key revoked", |info| {
            if let KeyState::Revoked { .. } = info.state {
                return Err(Error::check(LAYER, format!("key {key_id} is already revoked")));
            }
            info.state = KeyState::Revoked { time_ms: now_ms };
            Ok(None)
        })
    }

    /// Replaces the key's policy.
    ///
    /// # Errors
    /// When the key is unknown, the policy does not parse, or the write fails.
    pub fn set_policy(&self, key_id: &str, policy: &str) -> Result<KeyInfo> {
        check_policy(policy)?;
        self.update(key_id, "policy replaced", |info| {
            policy.clone_into(&mut info.policy);
            Ok(None)
        })
    }

    fn update(
        &self,
        key_id: &str,
        what: &str,
        change: impl FnOnce(&mut KeyInfo) -> Result<Option<Vec<u8>>>,
    ) -> Result<KeyInfo> {
        let mut tracked = self.tracked()?;
        if let Some(reason) = &tracked.refusal {
            return Err(Error::check(LAYER, reason.clone()));
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        let stored =
            txn.open_table(KEYS).map_err(db_err)?.get(key_id).map_err(db_err)?.map(|v| v.value().to_vec());
        let decoded = stored.as_deref().map(|v| self.decode(key_id, v)).transpose();
        let decoded = decoded.map_err(|t| Error::check(LAYER, t))?;
        // A replayed record must not be laundered into the state by changing it.
        if let Some(problem) = tracked.state.row_problem(key_id, stored.as_deref()) {
            return Err(Error::check(LAYER, problem));
        }
        let Some(mut info) = decoded else {
            return Err(Error::check(LAYER, format!("unknown key id {key_id}")));
        };
        let new_material = change(&mut info)?;
        let next = self.write_row(&txn, &tracked.state, key_id, &self.encode(&info)?)?;
        if let Some(sealed) = new_material {
            let mut mat = txn.open_table(MATERIAL).map_err(db_err)?;
            mat.insert((key_id, info.version), sealed.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        tracked.state = next;
        self.anchor_change(&tracked.state, key_id, what)?;
        Ok(info)
    }

    /// The key's current version for release, or why there is none.
    ///
    /// # Errors
    /// `Err(Ok(_))` for keys that cannot be released; `Err(Err(_))` when the store fails (decryption of stored
    /// material failing means the store was tampered with).
    pub fn get_for_release(&self, key_id: &str) -> std::result::Result<ReleasableKey, Result<Unreleasable>> {
        let tampered = |r: String| Ok(Unreleasable::Tampered { reason: format!("{LAYER}: {r}") });
        // The snapshot is taken under the state lock: it and the state belong together.
        let (txn, stored, refusal, row_problem) = {
            let tracked = self.tracked().map_err(Err)?;
            let txn = self.db.begin_read().map_err(|e| Err(db_err(e)))?;
            let stored = txn
                .open_table(KEYS)
                .map_err(|e| Err(db_err(e)))?
                .get(key_id)
                .map_err(|e| Err(db_err(e)))?
                .map(|v| v.value().to_vec());
            let row_problem = tracked.state.row_problem(key_id, stored.as_deref());
            (txn, stored, tracked.refusal.clone(), row_problem)
        };
        // Store-wide refusals first, then the record's own MAC, then whether it is the one last written.
        if let Some(reason) = refusal {
            return Err(tampered(reason));
        }
        let decoded = stored.as_deref().map(|v| self.decode(key_id, v)).transpose().map_err(tampered)?;
        if let Some(reason) = row_problem {
            return Err(tampered(reason));
        }
        let Some(info) = decoded else { return Err(Ok(Unreleasable::Unknown)) };
        if let KeyState::Revoked { time_ms } = info.state {
            return Err(Ok(Unreleasable::Revoked { time_ms }));
        }
        let mat = txn.open_table(MATERIAL).map_err(|e| Err(db_err(e)))?;
        let sealed = mat
            .get((key_id, info.version))
            .map_err(|e| Err(db_err(e)))?
            .ok_or_else(|| {
                Err(Error::check(LAYER, format!("key {key_id} v{} has no material", info.version)))
            })?
            .value()
            .to_vec();
        let material = self.kek.open(&material_aad(key_id, info.version), &sealed).ok_or_else(|| {
            Ok(Unreleasable::Tampered {
                reason: format!(
                    "key store: key {key_id} v{}: material does not decrypt (tampered)",
                    info.version
                ),
            })
        })?;
        Ok(ReleasableKey { info, material })
    }

    fn encode(&self, info: &KeyInfo) -> Result<Vec<u8>> {
        seal_key_record(&self.kek, info)
    }

    /// The record stored under `key_id`, when its tag verifies and it names that key; else why not (one line,
    /// without the layer).
    fn decode(&self, key_id: &str, stored: &[u8]) -> std::result::Result<KeyInfo, String> {
        open_key_record(&self.kek, key_id, stored)
    }

    /// Records that `key_id` (version `record.key_version`) was released to the TEE key whose SHA-256 is
    /// `tee_key_digest`, as audit record `record.audit_seq`: the receipt for that key and TEE key names it.
    /// Committed with `Durability::Immediate` (fsync'd) before it returns, i.e. before the sealed keys leave the
    /// broker: every acknowledged release can get its receipt, crash or not. Concurrent callers share that commit
    /// (`keystore/release_commit.rs`), so releases do not queue one fsync each behind redb's single writer.
    ///
    /// # Errors
    /// When the write fails, also when another release's record in the same commit made it fail (nothing is
    /// released then).
    pub fn record_releases(
        &self,
        tee_key_digest: &[u8; 32],
        releases: &[(&str, ReleaseRecord)],
    ) -> Result<()> {
        let rows = releases
            .iter()
            .map(|(key_id, r)| release_commit::Row {
                tee_key_digest: *tee_key_digest,
                key_id: (*key_id).to_owned(),
                sealed: seal_release(&self.kek, tee_key_digest, key_id, r),
            })
            .collect();
        self.releases.record(&self.db, rows)
    }

    /// The broker's own record of releasing `key_id` to the TEE key with SHA-256 `tee_key_digest`, if any.
    ///
    /// # Errors
    /// When the read fails or the record fails its integrity check.
    pub fn find_release(&self, tee_key_digest: &[u8; 32], key_id: &str) -> Result<Option<ReleaseRecord>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(RELEASES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        let Some(stored) = table.get((tee_key_digest.as_slice(), key_id)).map_err(db_err)? else {
            return Ok(None);
        };
        open_release(&self.kek, tee_key_digest, key_id, stored.value()).map(Some)
    }
}

const KEYS_TABLE: &str = "keys";
const RELEASES_TABLE: &str = "releases";

/// A key's record as stored: its JSON and the record MAC over it (table `keys`, row key = key id). Every store
/// (redb here, PostgreSQL in [`crate::pg`]) writes key records through this.
///
/// # Errors
/// When the record cannot be encoded.
pub fn seal_key_record(kek: &Kek, info: &KeyInfo) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(info).map_err(|e| Error::check(LAYER, format!("encode: {e}")))?;
    Ok(seal_record(kek, KEYS_TABLE, info.id.as_bytes(), &json))
}

/// The key record stored under `key_id` (as [`seal_key_record`] wrote it), when its tag verifies and it names
/// that key; else why not (one line, without the layer).
///
/// # Errors
/// As described.
pub fn open_key_record(kek: &Kek, key_id: &str, stored: &[u8]) -> std::result::Result<KeyInfo, String> {
    let tampered = || {
        format!(
            "the record of key {key_id} fails its integrity check (changed without the key-encryption key)"
        )
    };
    let value = open_record(kek, KEYS_TABLE, key_id.as_bytes(), stored).ok_or_else(tampered)?;
    let info: KeyInfo =
        serde_json::from_slice(value).map_err(|e| format!("stored record of key {key_id}: {e}"))?;
    if info.id != key_id {
        return Err(tampered());
    }
    Ok(info)
}

/// The record MAC of a key record whose fields are kept apart (PostgreSQL's columns): the tag
/// [`seal_key_record`] appends, over the same JSON.
///
/// # Errors
/// When the record cannot be encoded.
pub fn key_record_tag(kek: &Kek, info: &KeyInfo) -> Result<[u8; RECORD_TAG_LEN]> {
    let json = serde_json::to_vec(info).map_err(|e| Error::check(LAYER, format!("encode: {e}")))?;
    Ok(record_mac(kek, KEYS_TABLE, info.id.as_bytes(), &json))
}

/// Checks a key record kept as fields and a tag ([`key_record_tag`]) with [`open_key_record`]: the same check as
/// for a record stored whole. `Err`: why not (one line, without the layer).
///
/// # Errors
/// As described.
pub fn check_key_record(kek: &Kek, info: &KeyInfo, tag: &[u8]) -> std::result::Result<(), String> {
    let mut stored =
        serde_json::to_vec(info).map_err(|e| format!("stored record of key {}: {e}", info.id))?;
    stored.extend_from_slice(tag);
    open_key_record(kek, &info.id, &stored).map(|_| ())
}

/// A release record as stored (table `releases`, row key = TEE key digest || key id), in every store.
#[must_use]
pub fn seal_release(kek: &Kek, tee_key_digest: &[u8; 32], key_id: &str, r: &ReleaseRecord) -> Vec<u8> {
    seal_record(kek, RELEASES_TABLE, &release_row_key(tee_key_digest, key_id), &r.encode())
}

/// The release record stored for (`tee_key_digest`, `key_id`), when its tag verifies.
///
/// # Errors
/// A record changed, moved or written without the KEK, or malformed.
pub fn open_release(
    kek: &Kek,
    tee_key_digest: &[u8; 32],
    key_id: &str,
    stored: &[u8],
) -> Result<ReleaseRecord> {
    let row = release_row_key(tee_key_digest, key_id);
    let value = open_record(kek, RELEASES_TABLE, &row, stored).ok_or_else(|| {
        Error::check(
            LAYER,
            format!("the release record of key {key_id} fails its integrity check (changed without the KEK)"),
        )
    })?;
    ReleaseRecord::decode(value)
}

fn release_row_key(tee_key_digest: &[u8; 32], key_id: &str) -> Vec<u8> {
    let mut row = tee_key_digest.to_vec();
    row.extend_from_slice(key_id.as_bytes());
    row
}

/// The broker's record of one release (for receipts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseRecord {
    /// Sequence number of the `released` audit record.
    pub audit_seq: u64,
    /// When, Unix milliseconds.
    pub time_ms: u64,
    /// The key version released.
    pub key_version: u32,
}

impl ReleaseRecord {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.audit_seq.to_be_bytes().to_vec();
        v.extend_from_slice(&self.time_ms.to_be_bytes());
        v.extend_from_slice(&self.key_version.to_be_bytes());
        v
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = || Error::check(LAYER, format!("release record of {} bytes, expected 20", bytes.len()));
        let (seq, rest) = bytes.split_first_chunk::<8>().ok_or_else(bad)?;
        let (time, rest) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
        let version: [u8; 4] = rest.try_into().map_err(|_| bad())?;
        Ok(Self {
            audit_seq: u64::from_be_bytes(*seq),
            time_ms: u64::from_be_bytes(*time),
            key_version: u32::from_be_bytes(version),
        })
    }
}

pub(crate) fn check_owner(owner: &str) -> Result<()> {
    // Owners are ids too: same alphabet, so they print safely in listings and audit records.
    check_key_id(owner).map_err(|e| Error::check(LAYER, format!("owner: {e}")))
}

pub(crate) fn check_policy(policy: &str) -> Result<()> {
    if policy.len() > MAX_POLICY_LEN {
        return Err(Error::check(
            LAYER,
            format!("policy of {} bytes exceeds {MAX_POLICY_LEN}", policy.len()),
        ));
    }
    super::policy::Policy::parse(policy).map(|_| ())
}

/// A new key's first version and its material sealed under `kek` for version 1, after the checks every store
/// makes before it writes anything (id, owner, policy, material size): the embedded and the PostgreSQL store
/// add keys through this one function, so neither can skip a check the other makes.
pub(crate) fn first_version(
    kek: &Kek,
    key_id: &str,
    owner: &str,
    policy: &str,
    material: Option<Vec<u8>>,
    rng: &dyn Randomness,
    now_ms: u64,
) -> Result<(KeyInfo, Vec<u8>)> {
    check_key_id(key_id)?;
    check_owner(owner)?;
    check_policy(policy)?;
    let material = material_or_generated(material, rng)?;
    let sealed = kek.seal(rng, &material_aad(key_id, 1), &material)?;
    let info = KeyInfo {
        id: key_id.to_owned(),
        owner: owner.to_owned(),
        version: 1,
        state: KeyState::Active,
        created_ms: now_ms,
        rotated_ms: now_ms,
        policy: policy.to_owned(),
    };
    Ok((info, sealed))
}

pub(crate) fn material_or_generated(material: Option<Vec<u8>>, rng: &dyn Randomness) -> Result<Vec<u8>> {
    match material {
        Some(m) if m.is_empty() || m.len() > MAX_MATERIAL_LEN => Err(Error::check(
            LAYER,
            format!("key material of {} bytes, expected 1..={MAX_MATERIAL_LEN}", m.len()),
        )),
        Some(m) => Ok(m),
        None => {
            let mut m = vec![0u8; GENERATED_KEY_LEN];
            rng.fill(&mut m)?;
            Ok(m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::CountingRandomness;

    const POLICY: &str = r#"
version = 1
platforms = "skip"
tcb_statuses = "skip"
minimum_tcb = "skip"
debug = "forbidden"
golden = "skip"
image_digests = "skip"
args = "skip"
env = "skip"
"#;

    fn kek_file(dir: &Path, mode: u32) -> std::path::PathBuf {
        let p = dir.join("kek");
        std::fs::write(&p, hex::encode([0x42u8; 32])).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn kek_file_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o700] {
            let err = Kek::load(&kek_file(dir.path(), mode)).unwrap_err().to_string();
            assert!(err.contains(&format!("mode {mode:04o}, must be 0600")), "{err}");
        }
        Kek::load(&kek_file(dir.path(), 0o600)).unwrap();
        Kek::load(&kek_file(dir.path(), 0o400)).unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, [1u8; 31]).unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Kek::load(&short).unwrap_err().to_string().contains("31 bytes"));
    }

    #[test]
    fn add_list_rotate_revoke_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let rng = CountingRandomness::default();
        let db = dir.path().join("keys.redb");
        let store = KeyStore::open(&db, Kek::from_bytes(&[1; 32]).unwrap(), &rng).unwrap();
        store.add("a/1", "provider-a", POLICY, Some(b"material-a".to_vec()), &rng, 10).unwrap();
        store.add("b/1", "provider-b", POLICY, None, &rng, 11).unwrap();
        let err = store.add("a/1", "provider-a", POLICY, None, &rng, 12).unwrap_err().to_string();
        assert_eq!(err, "key store: key a/1 already exists");
        assert!(
            store
                .add("c", "p", "version = 1", None, &rng, 1)
                .unwrap_err()
                .to_string()
                .contains("missing field")
        );
        assert_eq!(store.list(Some("provider-b")).unwrap().len(), 1);
        assert_eq!(store.get_for_release("a/1").unwrap().material, b"material-a");
        let generated = store.get_for_release("b/1").unwrap().material;
        assert_eq!(generated.len(), GENERATED_KEY_LEN);
        let rotated = store.rotate("a/1", Some(b"material-a2".to_vec()), &rng, 20).unwrap();
        assert_eq!(rotated.version, 2);
        store.revoke("b/1", 30).unwrap();
        drop(store);

        let store = KeyStore::open(&db, Kek::from_bytes(&[1; 32]).unwrap(), &rng).unwrap();
        let a = store.get_for_release("a/1").unwrap();
        assert_eq!((a.info.version, a.material.as_slice()), (2, b"material-a2".as_slice()));
        assert_eq!(store.get_for_release("b/1").unwrap_err().unwrap(), Unreleasable::Revoked { time_ms: 30 });
        assert_eq!(store.get_for_release("zzz").unwrap_err().unwrap(), Unreleasable::Unknown);
        assert!(store.rotate("b/1", None, &rng, 40).unwrap_err().to_string().contains("revoked"));
        drop(store);

        let err = KeyStore::open(&db, Kek::from_bytes(&[2; 32]).unwrap(), &rng).unwrap_err().to_string();
        assert_eq!(err, "key store: the key-encryption key does not match this store");
    }

    fn key_row(db: &Path, key_id: &str) -> Vec<u8> {
        let db = Database::open(db).unwrap();
        let txn = db.begin_read().unwrap();
        txn.open_table(KEYS).unwrap().get(key_id).unwrap().unwrap().value().to_vec()
    }

    fn put_key_row(db: &Path, key_id: &str, row: &[u8]) {
        let db = Database::open(db).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(KEYS).unwrap().insert(key_id, row).unwrap();
        txn.commit().unwrap();
    }

    /// An older record of the same key, MACed under the same KEK (from a backup), put back into the current file:
    /// its MAC verifies, the state record does not list it.
    #[test]
    fn attack_key_record_replay_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rng = CountingRandomness::default();
        let db = dir.path().join("keys.redb");
        let kek = || Kek::from_bytes(&[1; 32]).unwrap();
        let store = KeyStore::open(&db, kek(), &rng).unwrap();
        store.add("k", "p", POLICY, Some(b"material".to_vec()), &rng, 1).unwrap();
        store.add("other", "p", POLICY, None, &rng, 1).unwrap();
        drop(store);
        let active = key_row(&db, "k");
        let store = KeyStore::open(&db, kek(), &rng).unwrap();
        store.revoke("k", 5).unwrap();
        drop(store);
        put_key_row(&db, "k", &active);
        let store = KeyStore::open(&db, kek(), &rng).unwrap();
        let reason = "key store: the record of key k is not the one the broker last wrote (generation 3): an older \
                      copy was put back, or it was changed without the key-encryption key";
        assert_eq!(
            store.get_for_release("k").unwrap_err().unwrap(),
            Unreleasable::Tampered { reason: reason.into() }
        );
        assert_eq!(store.list(None).unwrap_err().to_string(), reason);
        // Nor can it be laundered by changing it.
        assert_eq!(store.set_policy("k", POLICY).unwrap_err().to_string(), reason);
        assert!(store.get_for_release("other").is_ok());
    }

    /// The whole file restored from an older copy (un-revoking a key): consistent with itself, but older than the
    /// generation the audit log recorded.
    #[test]
    fn attack_keystore_file_rollback_is_refused_against_the_audit_anchor() {
        use crate::audit::{AuditLog, GroupCommitLog};
        let dir = tempfile::tempdir().unwrap();
        let rng = CountingRandomness::default();
        let (db, log) = (dir.path().join("keys.redb"), dir.path().join("audit.log"));
        let kek = || Kek::from_bytes(&[1; 32]).unwrap();
        let clock: Arc<dyn Clock> = Arc::new(crate::ManualClock::at(1_000));
        let open = || {
            let store = KeyStore::open(&db, kek(), &rng).unwrap();
            let audit = Arc::new(GroupCommitLog::new(AuditLog::open(&log).unwrap().0));
            (store, audit)
        };
        let (store, audit) = open();
        store.add("k", "p", POLICY, Some(b"material".to_vec()), &rng, 1).unwrap();
        // Added before the broker anchored the store: the first anchor records it.
        store.anchor_to(Arc::clone(&audit), Arc::clone(&clock)).unwrap();
        drop((store, audit));
        let old_copy = std::fs::read(&db).unwrap();
        let (store, audit) = open();
        store.anchor_to(audit, Arc::clone(&clock)).unwrap();
        store.revoke("k", 5).unwrap();
        drop(store);
        let bytes = std::fs::read(&log).unwrap();
        let head = crate::audit::verify(&bytes).unwrap();
        assert_eq!(head.records, 2, "one anchor at the first start, one for the revocation");

        std::fs::write(&db, &old_copy).unwrap();
        let (store, audit) = open();
        let reason = "keys.redb is at generation 1 but the audit log recorded generation 2: the file was restored \
                      from an older copy (rollback)";
        assert_eq!(store.anchor_to(audit, clock).unwrap_err().to_string(), format!("key store: {reason}"));
        assert_eq!(
            store.get_for_release("k").unwrap_err().unwrap(),
            Unreleasable::Tampered { reason: format!("key store: {reason}") }
        );
        assert!(store.add("k2", "p", POLICY, None, &rng, 9).unwrap_err().to_string().contains("rollback"));
        assert_eq!(crate::audit::verify(&std::fs::read(&log).unwrap()).unwrap(), head, "nothing appended");
    }

    #[test]
    fn a_removed_state_record_refuses_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let rng = CountingRandomness::default();
        let db = dir.path().join("keys.redb");
        let store = KeyStore::open(&db, Kek::from_bytes(&[1; 32]).unwrap(), &rng).unwrap();
        store.add("k", "p", POLICY, None, &rng, 1).unwrap();
        drop(store);
        {
            let raw = Database::open(&db).unwrap();
            let txn = raw.begin_write().unwrap();
            txn.open_table(META).unwrap().remove(STATE).unwrap();
            txn.commit().unwrap();
        }
        let store = KeyStore::open(&db, Kek::from_bytes(&[1; 32]).unwrap(), &rng).unwrap();
        let err = store.get_for_release("k").unwrap_err().unwrap();
        assert!(
            matches!(&err, Unreleasable::Tampered { reason } if reason.contains("no state record")),
            "{err:?}"
        );
    }

    #[test]
    fn material_is_not_stored_in_clear_and_is_bound_to_id_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let rng = CountingRandomness::default();
        let db = dir.path().join("keys.redb");
        let store = KeyStore::open(&db, Kek::from_bytes(&[1; 32]).unwrap(), &rng).unwrap();
        let secret = b"0123456789abcdef-very-secret-data-key".to_vec();
        store.add("k", "p", POLICY, Some(secret.clone()), &rng, 1).unwrap();
        store.add("other", "p", POLICY, None, &rng, 1).unwrap();
        // Move k's ciphertext under another key id: the AAD no longer matches, so it must not decrypt.
        let txn = store.db.begin_write().unwrap();
        {
            let mut mat = txn.open_table(MATERIAL).unwrap();
            let k = mat.get(("k", 1)).unwrap().unwrap().value().to_vec();
            mat.insert(("other", 1), k.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        let err = store.get_for_release("other").unwrap_err().unwrap();
        assert!(
            matches!(&err, Unreleasable::Tampered { reason } if reason.contains("does not decrypt")),
            "{err:?}"
        );
        drop(store);
        let raw = std::fs::read(&db).unwrap();
        assert!(!raw.windows(secret.len()).any(|w| w == secret.as_slice()));
    }
}
