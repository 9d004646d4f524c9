//! One audit chain per replica in the `audit` table. Each record's hash covers the same fields as the
//! embedded log's ([`crate::audit`]) plus the replica's id, under its own domain, so a record cannot be moved
//! between replicas' chains or between the file log and the database:
//!
//! ```text
//! hash = SHA-256("sealroom.audit.replica.v1" 0x00 || lp(replica) || seq u64 BE || time_ms u64 BE
//!                || decision u8 || lp(key_id) || evidence_digest (32) || lp(rule) || lp(reason) || prev (32))
//! ```

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
    match d {
        Decision::Released => 1,
        Decision::Refused => 2,
        Decision::Receipt => 3,
        Decision::KeyStore => 4,
    }
}

/// The decision a stored code names.
#[must_use]
pub fn decision_from_code(code: i16) -> Option<Decision> {
    match code {
        1 => Some(Decision::Released),
        2 => Some(Decision::Refused),
        3 => Some(Decision::Receipt),
        4 => Some(Decision::KeyStore),
        _ => None,
    }
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
}
