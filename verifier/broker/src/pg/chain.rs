//! One audit chain per replica in the `audit` table. Each record's hash covers the same fields as the
//! embedded log's ([`crate::audit`]) plus the replica's id, under its own domain, so a record cannot be moved
//! between replicas' chains or between the file log and the database:
//!
//! ```text
//! hash = SHA-256("sealroom.audit.replica.v1" 0x00 || lp(replica) || seq u64 BE || time_ms u64 BE
//!                || decision u8 || lp(key_id) || evidence_digest (32) || lp(rule) || lp(reason) || prev (32))
//! ```
//!
//! **Cross-anchoring.** A chain alone shows that no record inside it was changed, not that records were not cut
//! from its end or the whole chain rewritten by someone who can write the database (the hashes hold no
//! secret). So each replica's writer, at most once per [`super::ledger::ANCHOR_EVERY_MS`] of the releases'
//! time, reads the other replicas' heads in its batch's transaction and appends one [`Decision::ReplicaHead`]
//! record per head that moved since its last anchor ([`replica_head_entry`]). [`check_cross_anchors`] then
//! requires every named chain to still hold that head: a replica's chain cut back, rewritten or deleted is
//! found from the other chains, and a token of any replica (which carries its own chain's head) transitively
//! anchors the other chains up to that replica's last cross-anchor. Rewriting every chain consistently
//! remains possible for whoever can write the whole database; a token's head (`--head`) is what exposes that.

use sha2::{Digest, Sha256};

use crate::audit::{AuditEntry, AuditRecord, ChainHead, Decision};

const DOMAIN: &[u8] = b"sealroom.audit.replica.v1\0";

fn lp(h: &mut Sha256, bytes: &[u8]) {
    h.update(u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    h.update(bytes);
}

/// The stored decision code (the same codes the embedded log hashes).
#[must_use]
pub fn decision_code(d: Decision) -> u8 {
    d.code()
}

/// The decision a stored code names.
#[must_use]
pub fn decision_from_code(code: i16) -> Option<Decision> {
    u8::try_from(code).ok().and_then(Decision::from_code)
}

/// One record as stored in (and read back from) the `audit` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The replica whose chain this is.
    pub replica: String,
    /// Position in that chain, from 0.
    pub seq: u64,
    /// Decision time, Unix milliseconds.
    pub time_ms: u64,
    /// What was decided.
    pub decision: Decision,
    /// The requested key.
    pub key_id: String,
    /// SHA-256 of the evidence.
    pub evidence_digest: [u8; 32],
    /// The deciding rule.
    pub rule: String,
    /// Why.
    pub reason: String,
    /// The previous record's hash (zeros for the first).
    pub prev: [u8; 32],
    /// This record's hash.
    pub hash: [u8; 32],
}

impl Row {
    /// The hash this row's fields give.
    #[must_use]
    pub fn computed_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(DOMAIN);
        lp(&mut h, self.replica.as_bytes());
        h.update(self.seq.to_be_bytes());
        h.update(self.time_ms.to_be_bytes());
        h.update([decision_code(self.decision)]);
        lp(&mut h, self.key_id.as_bytes());
        h.update(self.evidence_digest);
        lp(&mut h, self.rule.as_bytes());
        lp(&mut h, self.reason.as_bytes());
        h.update(self.prev);
        h.finalize().into()
    }

    /// The record in the embedded log's shape (hex digests), as returned to callers and printed.
    #[must_use]
    pub fn to_record(&self) -> AuditRecord {
        AuditRecord {
            seq: self.seq,
            time_ms: self.time_ms,
            decision: self.decision,
            key_id: self.key_id.clone(),
            evidence_digest: hex::encode(self.evidence_digest),
            rule: self.rule.clone(),
            reason: self.reason.clone(),
            prev: hex::encode(self.prev),
            hash: hex::encode(self.hash),
        }
    }
}

/// Chains `entries` onto `head` of `replica`'s chain: the rows to insert and the new head.
#[must_use]
pub fn extend(replica: &str, head: ChainHead, entries: &[AuditEntry], time_ms: u64) -> (Vec<Row>, ChainHead) {
    let mut head = head;
    let mut rows = Vec::with_capacity(entries.len());
    for e in entries {
        let mut row = Row {
            replica: replica.to_owned(),
            seq: head.records,
            time_ms,
            decision: e.decision,
            key_id: e.key_id.clone(),
            evidence_digest: e.evidence_digest,
            rule: e.rule.clone(),
            reason: e.reason.clone(),
            prev: head.hash,
            hash: [0; 32],
        };
        row.hash = row.computed_hash();
        head = ChainHead { records: head.records.saturating_add(1), hash: row.hash };
        rows.push(row);
    }
    (rows, head)
}

/// Verifies one replica's chain given in sequence order. Returns its head.
///
/// # Errors
/// One line naming the first record that does not verify.
pub fn verify(replica: &str, rows: &[Row]) -> std::result::Result<ChainHead, String> {
    let mut head = ChainHead { records: 0, hash: [0; 32] };
    for row in rows {
        let at = |why: String| format!("replica {replica} record {}: {why}", head.records);
        if row.replica != replica {
            return Err(at(format!("belongs to replica {}", row.replica)));
        }
        if row.seq != head.records {
            return Err(at(format!("sequence number {} where {} was expected", row.seq, head.records)));
        }
        if row.prev != head.hash {
            return Err(at(format!(
                "prev {} does not link to {}",
                hex::encode(row.prev),
                hex::encode(head.hash)
            )));
        }
        let computed = row.computed_hash();
        if computed != row.hash {
            return Err(at(format!(
                "hash mismatch: stored {}, computed {}",
                hex::encode(row.hash),
                hex::encode(computed)
            )));
        }
        head = ChainHead { records: head.records.saturating_add(1), hash: row.hash };
    }
    Ok(head)
}

/// The rule of a cross-anchor record.
pub const REPLICA_HEAD_RULE: &str = "audit.replica_head";

/// The record naming `replica`'s chain head as another replica read it: the replica in `key_id`, the head's
/// hash in `evidence_digest`, its record count in `reason` (as [`crate::audit::key_store_entry`] stores a key
/// store's anchor).
#[must_use]
pub fn replica_head_entry(replica: &str, head: ChainHead) -> AuditEntry {
    AuditEntry {
        decision: Decision::ReplicaHead,
        key_id: replica.to_owned(),
        evidence_digest: head.hash,
        rule: REPLICA_HEAD_RULE.to_owned(),
        reason: format!("records {}", head.records),
    }
}

/// The other replica's head a record names, if it is a cross-anchor (`Err`: it claims to be one but is
/// malformed).
///
/// # Errors
/// One line, for a cross-anchor record that does not parse, names no records, or names its own chain.
pub fn replica_head(row: &Row) -> std::result::Result<Option<(&str, ChainHead)>, String> {
    if row.decision != Decision::ReplicaHead {
        return Ok(None);
    }
    let bad = |m: &str| format!("replica {} record {}: cross-anchor {m}", row.replica, row.seq);
    if row.rule != REPLICA_HEAD_RULE {
        return Err(bad(&format!("with unknown rule {:?}", row.rule)));
    }
    let records = row
        .reason
        .strip_prefix("records ")
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| bad("without a record count"))?;
    if row.key_id == row.replica {
        return Err(bad("naming its own chain"));
    }
    Ok(Some((row.key_id.as_str(), ChainHead { records, hash: row.evidence_digest })))
}

/// Checks every cross-anchor in `chains` (each already verified with [`verify`]): the chain it names must
/// still hold the head it recorded. Returns how many were checked.
///
/// # Errors
/// One line naming the first cross-anchor whose chain was cut back, rewritten or removed.
pub fn check_cross_anchors(chains: &[(&str, &[Row])]) -> std::result::Result<usize, String> {
    let mut checked = 0usize;
    for (replica, rows) in chains {
        for row in *rows {
            let Some((named, head)) = replica_head(row)? else { continue };
            let anchor = format!(
                "replica {replica} record {} anchors replica {named} at {} records (head {})",
                row.seq,
                head.records,
                hex::encode(head.hash)
            );
            let Some((_, theirs)) = chains.iter().find(|(r, _)| r == &named) else {
                return Err(format!("{anchor}, but there is no chain of replica {named}: it was removed"));
            };
            let at =
                head.records.checked_sub(1).and_then(|i| usize::try_from(i).ok()).and_then(|i| theirs.get(i));
            match at {
                None => {
                    return Err(format!(
                        "{anchor}, but its chain has {} records: records were cut from its end",
                        theirs.len()
                    ));
                }
                Some(r) if r.hash != head.hash => {
                    return Err(format!(
                        "{anchor}, but its record {} is now {}: its chain was rewritten",
                        r.seq,
                        hex::encode(r.hash)
                    ));
                }
                Some(_) => checked = checked.saturating_add(1),
            }
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> AuditEntry {
        AuditEntry {
            decision: Decision::Released,
            key_id: key.into(),
            evidence_digest: [3; 32],
            rule: "policy".into(),
            reason: "allowed".into(),
        }
    }

    #[test]
    fn extended_chain_verifies_and_any_change_breaks_it() {
        let start = ChainHead { records: 0, hash: [0; 32] };
        let (mut rows, head) = extend("r1", start, &[entry("a"), entry("b")], 5);
        let (more, head2) = extend("r1", head, &[entry("c")], 6);
        rows.extend(more);
        assert_eq!(verify("r1", &rows), Ok(head2));
        assert_eq!(head2.records, 3);

        // The same records claimed by another replica do not verify (the replica is hashed).
        let mut moved = rows.clone();
        for r in &mut moved {
            "r2".clone_into(&mut r.replica);
        }
        assert!(verify("r2", &moved).unwrap_err().contains("hash mismatch"));

        let mut edited = rows.clone();
        if let Some(r) = edited.get_mut(1) {
            r.reason = "edited".into();
        }
        assert!(verify("r1", &edited).unwrap_err().starts_with("replica r1 record 1: hash mismatch"));

        let mut gap = rows.clone();
        gap.remove(1);
        assert!(verify("r1", &gap).unwrap_err().contains("sequence number 2 where 1 was expected"));
    }

    /// r1 and r2 with two releases each; then r1 anchors r2's head, r2 anchors r1's.
    fn anchored_pair() -> (Vec<Row>, Vec<Row>) {
        let start = ChainHead { records: 0, hash: [0; 32] };
        let (mut r1, h1) = extend("r1", start, &[entry("a"), entry("b")], 5);
        let (mut r2, h2) = extend("r2", start, &[entry("c"), entry("d")], 5);
        let (more1, _) = extend("r1", h1, &[replica_head_entry("r2", h2)], 6);
        let (more2, _) = extend("r2", h2, &[replica_head_entry("r1", h1), entry("e")], 6);
        r1.extend(more1);
        r2.extend(more2);
        (r1, r2)
    }

    fn check(r1: &[Row], r2: &[Row]) -> std::result::Result<usize, String> {
        verify("r1", r1)?;
        verify("r2", r2)?;
        check_cross_anchors(&[("r1", r1), ("r2", r2)])
    }

    #[test]
    fn cross_anchors_of_intact_chains_check() {
        let (r1, r2) = anchored_pair();
        assert_eq!(check(&r1, &r2), Ok(2));
        assert_eq!(replica_head(&r1[2]).unwrap().unwrap().1.records, 2);
        assert_eq!(replica_head(&r1[0]), Ok(None));
    }

    #[test]
    fn attack_chain_cut_back_is_found_by_the_other_replicas_anchor() {
        let (r1, mut r2) = anchored_pair();
        // The last three records removed: r2's chain alone still verifies.
        r2.truncate(1);
        let e = check(&r1, &r2).unwrap_err();
        assert!(e.starts_with("replica r1 record 2 anchors replica r2 at 2 records"), "{e}");
        assert!(e.ends_with("but its chain has 1 records: records were cut from its end"), "{e}");
    }

    #[test]
    fn attack_chain_rewritten_consistently_is_found_by_the_other_replicas_anchor() {
        let (r1, _) = anchored_pair();
        // r2's release turned into a refusal, every hash recomputed: r2 alone verifies.
        let mut forged = entry("c");
        forged.decision = Decision::Refused;
        let start = ChainHead { records: 0, hash: [0; 32] };
        let (mut rewritten, h) = extend("r2", start, &[forged, entry("d")], 5);
        rewritten.extend(extend("r2", h, &[replica_head_entry("r1", verify("r1", &r1[..2]).unwrap())], 6).0);
        let e = check(&r1, &rewritten).unwrap_err();
        assert!(e.ends_with("its chain was rewritten"), "{e}");
    }

    #[test]
    fn attack_chain_removed_is_found_by_the_other_replicas_anchor() {
        let (r1, _) = anchored_pair();
        verify("r1", &r1).unwrap();
        let e = check_cross_anchors(&[("r1", &r1)]).unwrap_err();
        assert!(e.ends_with("there is no chain of replica r2: it was removed"), "{e}");
    }

    #[test]
    fn malformed_cross_anchors_are_refused() {
        let start = ChainHead { records: 0, hash: [0; 32] };
        let one = ChainHead { records: 1, hash: [1; 32] };
        type Edit = fn(&mut AuditEntry);
        let cases: [(Edit, &str); 4] = [
            (|e| e.rule = "other".into(), "with unknown rule"),
            (|e| e.reason = "records 0".into(), "without a record count"),
            (|e| e.reason = "records +1".into(), "without a record count"),
            (|e| e.key_id = "r1".into(), "naming its own chain"),
        ];
        for (edit, why) in cases {
            let mut e = replica_head_entry("r2", one);
            edit(&mut e);
            let (rows, _) = extend("r1", start, &[e], 1);
            let err = check_cross_anchors(&[("r1", &rows)]).unwrap_err();
            assert!(err.starts_with("replica r1 record 0: cross-anchor ") && err.contains(why), "{err}");
        }
    }
}
