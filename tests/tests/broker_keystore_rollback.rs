//! Whole-file rollback of the broker's key store (issue 14, build item 2): someone who can write the broker's
//! state directory but does not hold the KEK keeps a copy of `keys.redb` from before a key was revoked and puts
//! it back. Every record in that copy carries a valid MAC and the copy is consistent with itself; what gives it
//! away is its generation, older than the one the audit log (append-only, hash-chained, anchored by every token)
//! recorded for the revocation. The real `sealroom broker serve` refuses to start on it, and so does offline key
//! management, each saying why; the current file is accepted again.
#![allow(clippy::unwrap_used, clippy::panic)]

use sealroom_broker::audit::{self, AuditRecord, Decision, KEY_STORE_RULE};
use sealroom_tests::broker::{Provider, run_sealroom, sealroom, tpm_policy};
use sealroom_tests::swtpm::unique_temp_dir;

const KEY_ID: &str = "provider-a/data";
const IMAGE: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn serve_output(p: &Provider) -> Result<String, String> {
    // `serve` runs until killed; a refused start exits at once with the reason.
    let mut cmd = sealroom();
    cmd.args(["broker", "serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&p.state)
        .arg("--kek")
        .arg(&p.kek);
    run_sealroom(&mut cmd)
}

fn key_store_records(p: &Provider) -> Vec<AuditRecord> {
    let bytes = std::fs::read(p.audit_log()).unwrap();
    audit::verify(&bytes).unwrap();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<AuditRecord>(l).unwrap())
        .filter(|r| r.decision == Decision::KeyStore)
        .collect()
}

#[test]
fn attack_keystore_rollback() {
    let dir = unique_temp_dir("keystore-rollback");
    let p = Provider::new(&dir).unwrap();
    p.add_key(KEY_ID, "provider-a", &tpm_policy(IMAGE, &[], &[], None), b"the provider's data key").unwrap();
    let keys_redb = p.state.join("keys.redb");
    let before_revocation = std::fs::read(&keys_redb).unwrap();

    // The provider revokes the key through the running broker's admin socket.
    let mut broker = p.serve("127.0.0.1:0", &[]).unwrap();
    let revoked = run_sealroom(
        sealroom().args(["broker", "keys", "revoke", "--id", KEY_ID, "--state-dir"]).arg(&p.state),
    )
    .unwrap();
    assert!(revoked.contains("revoked"), "{revoked}");
    broker.kill9();
    let anchors = key_store_records(&p);
    let generations: Vec<&str> = anchors.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(generations, ["generation 1: key added", "generation 2: key revoked"], "{anchors:?}");
    assert!(anchors.iter().all(|r| r.rule == KEY_STORE_RULE && r.key_id == KEY_ID));
    let after_revocation = std::fs::read(&keys_redb).unwrap();

    // The attack: the copy from before the revocation is put back.
    std::fs::write(&keys_redb, &before_revocation).unwrap();
    let reason = "key store: keys.redb is at generation 1 but the audit log recorded generation 2: the file was \
                  restored from an older copy (rollback)";
    let refused = serve_output(&p).unwrap_err();
    assert!(refused.contains(reason), "the broker served a rolled-back key store: {refused}");
    let listed = run_sealroom(
        sealroom().args(["broker", "keys", "list", "--state-dir"]).arg(&p.state).arg("--kek").arg(&p.kek),
    )
    .unwrap_err();
    assert!(listed.contains(reason), "offline key management used a rolled-back key store: {listed}");
    assert_eq!(key_store_records(&p).len(), 2, "a refused start must not anchor the old state");

    // The current file is accepted again, the key still revoked.
    std::fs::write(&keys_redb, &after_revocation).unwrap();
    let listed = run_sealroom(
        sealroom().args(["broker", "keys", "list", "--state-dir"]).arg(&p.state).arg("--kek").arg(&p.kek),
    )
    .unwrap();
    assert!(listed.contains(&format!("{KEY_ID}\towner=provider-a\tversion=1\trevoked@")), "{listed}");
    let broker = p.serve("127.0.0.1:0", &[]).unwrap();
    drop(broker);
    p.verify_audit().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
