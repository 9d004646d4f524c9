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
//! keeps for receipts. What a MAC cannot see is a rollback of the whole file to an older copy made with the same
//! KEK; the audit log's head (carried in every token) is the anchor for that.
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

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce as AeadNonce, UnboundKey};
use aws_lc_rs::hmac;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Randomness, check_key_id};
use crate::error::{Error, Result};

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
        let store = Self { db, kek };
        let txn = store.db.begin_write().map_err(db_err)?;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let existing = meta.get(KEK_CHECK).map_err(db_err)?.map(|v| v.value().to_vec());
            match existing {
                Some(sealed) => {
                    if store.kek.open(KEK_CHECK.as_bytes(), &sealed).as_deref() != Some(KEK_CHECK_PLAINTEXT) {
                        return Err(Error::check(LAYER, "the key-encryption key does not match this store"));
                    }
                }
                None => {
                    let sealed = store.kek.seal(rng, KEK_CHECK.as_bytes(), KEK_CHECK_PLAINTEXT)?;
                    meta.insert(KEK_CHECK, sealed.as_slice()).map_err(db_err)?;
                }
            }
            txn.open_table(KEYS).map_err(db_err)?;
            txn.open_table(MATERIAL).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(store)
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
        check_key_id(key_id)?;
        check_owner(owner)?;
        check_policy(policy)?;
        let material = material_or_generated(material, rng)?;
        let info = KeyInfo {
            id: key_id.to_owned(),
            owner: owner.to_owned(),
            version: 1,
            state: KeyState::Active,
            created_ms: now_ms,
            rotated_ms: now_ms,
            policy: policy.to_owned(),
        };
        let sealed = self.kek.seal(rng, &material_aad(key_id, 1), &material)?;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut keys = txn.open_table(KEYS).map_err(db_err)?;
            if keys.get(key_id).map_err(db_err)?.is_some() {
                return Err(Error::check(LAYER, format!("key {key_id} already exists")));
            }
            keys.insert(key_id, self.encode(&info)?.as_slice()).map_err(db_err)?;
            let mut mat = txn.open_table(MATERIAL).map_err(db_err)?;
            mat.insert((key_id, 1), sealed.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
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
        for row in keys.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let info = self.decode(k.value(), v.value()).map_err(|t| Error::check(LAYER, t))?;
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
        self.update(key_id, |info| {
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
        self.update(key_id, |info| {
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
        self.update(key_id, |info| {
            policy.clone_into(&mut info.policy);
            Ok(None)
        })
    }

    fn update(
        &self,
        key_id: &str,
        change: impl FnOnce(&mut KeyInfo) -> Result<Option<Vec<u8>>>,
    ) -> Result<KeyInfo> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let info = {
            let mut keys = txn.open_table(KEYS).map_err(db_err)?;
            let mut info = match keys.get(key_id).map_err(db_err)? {
                Some(v) => self.decode(key_id, v.value()).map_err(|t| Error::check(LAYER, t))?,
                None => return Err(Error::check(LAYER, format!("unknown key id {key_id}"))),
            };
            let new_material = change(&mut info)?;
            keys.insert(key_id, self.encode(&info)?.as_slice()).map_err(db_err)?;
            if let Some(sealed) = new_material {
                let mut mat = txn.open_table(MATERIAL).map_err(db_err)?;
                mat.insert((key_id, info.version), sealed.as_slice()).map_err(db_err)?;
            }
            info
        };
        txn.commit().map_err(db_err)?;
        Ok(info)
    }

    /// The key's current version for release, or why there is none.
    ///
    /// # Errors
    /// `Err(Ok(_))` for keys that cannot be released; `Err(Err(_))` when the store fails (decryption of stored
    /// material failing means the store was tampered with).
    pub fn get_for_release(&self, key_id: &str) -> std::result::Result<ReleasableKey, Result<Unreleasable>> {
        let txn = self.db.begin_read().map_err(|e| Err(db_err(e)))?;
        let keys = txn.open_table(KEYS).map_err(|e| Err(db_err(e)))?;
        let info = match keys.get(key_id).map_err(|e| Err(db_err(e)))? {
            Some(v) => self
                .decode(key_id, v.value())
                .map_err(|r| Ok(Unreleasable::Tampered { reason: format!("{LAYER}: {r}") }))?,
            None => return Err(Ok(Unreleasable::Unknown)),
        };
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
        let json = serde_json::to_vec(info).map_err(|e| Error::check(LAYER, format!("encode: {e}")))?;
        Ok(seal_record(&self.kek, KEYS_TABLE, info.id.as_bytes(), &json))
    }

    /// The record stored under `key_id`, when its tag verifies and it names that key; else why not (one line,
    /// without the layer).
    fn decode(&self, key_id: &str, stored: &[u8]) -> std::result::Result<KeyInfo, String> {
        let tampered = || {
            format!(
                "the record of key {key_id} fails its integrity check (changed without the key-encryption key)"
            )
        };
        let value = open_record(&self.kek, KEYS_TABLE, key_id.as_bytes(), stored).ok_or_else(tampered)?;
        let info: KeyInfo =
            serde_json::from_slice(value).map_err(|e| format!("stored record of key {key_id}: {e}"))?;
        if info.id != key_id {
            return Err(tampered());
        }
        Ok(info)
    }

    /// Records that `key_id` (version `record.key_version`) was released to the TEE key whose SHA-256 is
    /// `tee_key_digest`, as audit record `record.audit_seq`: the receipt for that key and TEE key names it. Not
    /// fsync'd (the audit log already is): after a crash a lost record only means no receipt for that
    /// release (fail closed).
    ///
    /// # Errors
    /// When the write fails.
    pub fn record_releases(
        &self,
        tee_key_digest: &[u8; 32],
        releases: &[(&str, ReleaseRecord)],
    ) -> Result<()> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::None).map_err(db_err)?;
        {
            let mut table = txn.open_table(RELEASES).map_err(db_err)?;
            for (key_id, r) in releases {
                let value = r.encode();
                let row = release_row_key(tee_key_digest, key_id);
                let stored = seal_record(&self.kek, RELEASES_TABLE, &row, &value);
                table.insert((tee_key_digest.as_slice(), *key_id), stored.as_slice()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
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
        let row = release_row_key(tee_key_digest, key_id);
        let value = open_record(&self.kek, RELEASES_TABLE, &row, stored.value()).ok_or_else(|| {
            Error::check(
                LAYER,
                format!(
                    "the release record of key {key_id} fails its integrity check (changed without the KEK)"
                ),
            )
        })?;
        ReleaseRecord::decode(value).map(Some)
    }
}

const KEYS_TABLE: &str = "keys";
const RELEASES_TABLE: &str = "releases";

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
