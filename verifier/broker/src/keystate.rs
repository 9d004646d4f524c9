//! The key store's state record: which key records the broker last wrote, as one record MACed under the KEK, and
//! a generation that every change of a key record increases.
//!
//! Each key record carries its own MAC ([`crate::keystore::record_mac`]), which stops an edit but not a *replay*:
//! an older record of the same key, MACed under the same KEK, taken from an old copy of `keys.redb` (a backup, a
//! snapshot) verifies as well as the current one. Putting back the active record of a revoked key un-revokes it.
//! The state record closes that per record: it lists the SHA-256 of every key record as last written, so a record
//! that is not the last one written for its key, a removed one or an added one is refused with a reason.
//!
//! A copy of the *whole file* is consistent with itself, state record included. What sees that is the
//! generation: after every change the broker appends the new (generation, state digest) to its audit log, which
//! is append-only, hash-chained, fsync'd, and anchored outside the broker by the head every token carries
//! ([`crate::audit`]). At start the broker compares the file's generation with the last one in the log: an
//! older one is a rollback (refused, every release refused); a newer one is a change whose anchor a crash
//! prevented (anchored now). Restoring both files together, to a matching older pair, is not visible to the
//! broker alone; it is visible to `sealroom audit verify --head` against any token issued since (the log lost
//! records). docs/broker-scaling.md says so.
//!
//! ```text
//! state record (META "state")  = seal_record(KEK, "meta", "state", body)
//! body                         = generation u64 BE || count u32 BE || count × (lp(key id) || SHA-256(stored key record))
//! state digest                 = SHA-256("sealroom.keystore.state.v1" 0x00 || body)
//! ```

use std::collections::BTreeMap;

use sealroom_measurements::reader::Reader;
use sha2::{Digest, Sha256};

const DIGEST_DOMAIN: &[u8] = b"sealroom.keystore.state.v1\0";

/// SHA-256 of one stored key record (value and tag, as stored).
#[must_use]
pub fn row_digest(stored: &[u8]) -> [u8; 32] {
    Sha256::digest(stored).into()
}

/// Which key records the broker last wrote, and how many changes it made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyStoreState {
    /// Increased by one with every change of a key record.
    pub generation: u64,
    /// Key id → SHA-256 of its stored record.
    pub rows: BTreeMap<String, [u8; 32]>,
}

impl KeyStoreState {
    /// The record body (module documentation).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.generation.to_be_bytes().to_vec();
        // Key ids are ≤ 128 bytes and a store holds far fewer than u32::MAX keys.
        out.extend_from_slice(&u32::try_from(self.rows.len()).unwrap_or(u32::MAX).to_be_bytes());
        for (id, digest) in &self.rows {
            out.extend_from_slice(&u32::try_from(id.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(digest);
        }
        out
    }

    /// Parses a record body (after its MAC verified).
    ///
    /// # Errors
    /// One line naming the field that does not parse.
    pub fn decode(body: &[u8]) -> std::result::Result<Self, String> {
        let mut r = Reader::new(body);
        let parse =
            |r: &mut Reader<'_>| -> std::result::Result<Self, sealroom_measurements::reader::ReadError> {
                let generation = r.u64_be("generation")?;
                let count = r.u32_be("count")?;
                let mut rows = BTreeMap::new();
                for _ in 0..count {
                    let len = r.u32_be("key id length")?;
                    let id = r.take(Reader::len_u32(len), "key id")?;
                    let digest = r.take_array::<32>("record digest")?;
                    rows.insert(String::from_utf8_lossy(id).into_owned(), digest);
                }
                r.finish("state record")?;
                Ok(Self { generation, rows })
            };
        parse(&mut r).map_err(|e| format!("state record: {e}"))
    }

    /// The digest the audit log anchors.
    #[must_use]
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(DIGEST_DOMAIN);
        h.update(self.encode());
        h.finalize().into()
    }

    /// The state after `key_id`'s record became `stored`.
    #[must_use]
    pub fn with_row(&self, key_id: &str, stored: &[u8]) -> Self {
        let mut next = self.clone();
        next.generation = next.generation.saturating_add(1);
        next.rows.insert(key_id.to_owned(), row_digest(stored));
        next
    }

    /// Why `key_id`'s stored record (`None`: absent) is not the one last written, if it is not.
    #[must_use]
    pub fn row_problem(&self, key_id: &str, stored: Option<&[u8]>) -> Option<String> {
        match (self.rows.get(key_id), stored) {
            (Some(want), Some(got)) if *want == row_digest(got) => None,
            (None, None) => None,
            (Some(_), Some(_)) => Some(format!(
                "the record of key {key_id} is not the one the broker last wrote (generation {}): an older copy \
                 was put back, or it was changed without the key-encryption key",
                self.generation
            )),
            (Some(_), None) => Some(format!(
                "the record of key {key_id} was removed from the store without the key-encryption key"
            )),
            (None, Some(_)) => Some(format!(
                "the record of key {key_id} was not written by this broker (not in the store's state record)"
            )),
        }
    }
}

/// A key store's (generation, state digest) as recorded in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// The store's generation.
    pub generation: u64,
    /// Its state digest.
    pub digest: [u8; 32],
}

/// How a store's state compares with the last anchor in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorCheck {
    /// The same state: nothing to do.
    Current,
    /// The store is ahead (a change whose anchor a crash prevented, or a first anchor): anchor it now.
    Ahead,
    /// The store is older than the log says, or a different state of the same generation: refuse it.
    RolledBack {
        /// One line.
        reason: String,
    },
}

impl Anchor {
    /// The anchor of `state`.
    #[must_use]
    pub fn of(state: &KeyStoreState) -> Self {
        Self { generation: state.generation, digest: state.digest() }
    }

    /// Compares the store's `current` anchor with the `last` one the audit log holds.
    #[must_use]
    pub fn check(current: Self, last: Option<Self>) -> AnchorCheck {
        let Some(last) = last else {
            // A store that never changed needs no anchor; any other store gets its first one.
            return if current.generation == 0 { AnchorCheck::Current } else { AnchorCheck::Ahead };
        };
        if current.generation > last.generation {
            AnchorCheck::Ahead
        } else if current.generation < last.generation {
            AnchorCheck::RolledBack {
                reason: format!(
                    "keys.redb is at generation {} but the audit log recorded generation {}: the file was \
                     restored from an older copy (rollback)",
                    current.generation, last.generation
                ),
            }
        } else if current.digest == last.digest {
            AnchorCheck::Current
        } else {
            AnchorCheck::RolledBack {
                reason: format!(
                    "keys.redb at generation {} differs from the state the audit log recorded for that \
                     generation: the file is another copy (rollback or fork)",
                    current.generation
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rows_are_checked() {
        let s0 = KeyStoreState::default();
        let s1 = s0.with_row("a/1", b"record v1");
        let s2 = s1.with_row("a/1", b"record v2").with_row("b", b"b record");
        assert_eq!(s2.generation, 3);
        assert_eq!(KeyStoreState::decode(&s2.encode()).unwrap(), s2);
        assert_eq!(s2.row_problem("a/1", Some(b"record v2")), None);
        assert!(
            s2.row_problem("a/1", Some(b"record v1")).unwrap().contains("not the one the broker last wrote")
        );
        assert!(s2.row_problem("a/1", None).unwrap().contains("was removed"));
        assert!(s2.row_problem("c", Some(b"x")).unwrap().contains("not written by this broker"));
        assert_eq!(s2.row_problem("c", None), None);
        let mut bad = s2.encode();
        bad.push(0);
        assert!(KeyStoreState::decode(&bad).unwrap_err().contains("state record"));
        assert!(KeyStoreState::decode(&bad[..bad.len() - 10]).is_err());
    }

    #[test]
    fn older_or_forked_states_are_rollbacks() {
        let s1 = KeyStoreState::default().with_row("k", b"active");
        let s2 = s1.with_row("k", b"revoked");
        let (a1, a2) = (Anchor::of(&s1), Anchor::of(&s2));
        assert_eq!(Anchor::check(a2, Some(a2)), AnchorCheck::Current);
        assert_eq!(Anchor::check(a2, Some(a1)), AnchorCheck::Ahead);
        assert_eq!(Anchor::check(a1, None), AnchorCheck::Ahead);
        assert_eq!(Anchor::check(Anchor::of(&KeyStoreState::default()), None), AnchorCheck::Current);
        assert!(
            matches!(Anchor::check(a1, Some(a2)), AnchorCheck::RolledBack { reason } if reason.contains("generation 1 but the audit log recorded generation 2"))
        );
        let fork = Anchor::of(&s1.with_row("k", b"other"));
        assert!(
            matches!(Anchor::check(fork, Some(a2)), AnchorCheck::RolledBack { reason } if reason.contains("another copy"))
        );
    }
}
