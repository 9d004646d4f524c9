//! `sealroom seal keygen`, and the offline refusals of `sealroom seal` and `sealroom open` (the live round trip
//! with agents on swtpm is tests/tests/sealed_io_swtpm.rs).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn sealroom(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sealroom")).args(args).env_remove("RUST_BACKTRACE").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn keygen_writes_a_private_key_only_once_and_a_public_key_the_tools_read() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = (dir.path().join("user.key"), dir.path().join("user.pub"));
    let (k, p) = (key.to_str().unwrap(), public.to_str().unwrap());
    let o = sealroom(&["seal", "keygen", "--out", k, "--public", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&public).unwrap();
    let pk = sealroom_measurements::sealed::parse_key_text(&text).unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), text.trim());
    let private = std::fs::read_to_string(&key).unwrap();
    assert_eq!(private.trim().len(), 64);
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    // The private key's public half is the one written (X25519 base-point multiplication, independently).
    let sk = aws_lc_rs::agreement::PrivateKey::from_private_key(
        &aws_lc_rs::agreement::X25519,
        &hex::decode(private.trim()).unwrap(),
    )
    .unwrap();
    assert_eq!(sk.compute_public_key().unwrap().as_ref(), pk.as_slice());
    // Never overwritten.
    let o = sealroom(&["seal", "keygen", "--out", k, "--public", p]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("an existing key is never overwritten"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), private);
}

fn policy(golden: &str) -> String {
    format!(
        "version = 1\nplatforms = [\"tpm\"]\ntcb_statuses = \"skip\"\nminimum_tcb = \"skip\"\ndebug = \"forbidden\"\n\
         golden = {golden}\nimage_digests = [\"sha256:{}\"]\nargs = []\nenv = []\n",
        "ab".repeat(32)
    )
}

#[test]
fn seal_refuses_before_sealing_what_it_cannot_judge() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    std::fs::write(d("in"), b"secret record").unwrap();
    std::fs::write(d("user.pub"), format!("x25519:{}\n", "11".repeat(32))).unwrap();
    std::fs::write(d("golden.json"), b"{}").unwrap();
    std::fs::write(d("skip.toml"), policy("\"skip\"")).unwrap();
    let signer = format!("ed25519:{}", "22".repeat(32));
    let pinned = format!("{{ signers = [\"{signer}\"], documents = [\"sha256:{}\"] }}", "33".repeat(32));
    std::fs::write(d("pinned.toml"), policy(&pinned)).unwrap();
    std::fs::write(d("evidence.pb"), b"\xff\xff not protobuf").unwrap();
    let base = |pol: &str| {
        vec![
            "seal".to_owned(),
            "--evidence".into(),
            d("evidence.pb"),
            "--golden".into(),
            d("golden.json"),
            "--golden-key".into(),
            "22".repeat(32),
            "--policy".into(),
            d(pol),
            "--name".into(),
            "patient".into(),
            "--input".into(),
            d("in"),
            "--reply-key".into(),
            d("user.pub"),
            "--out".into(),
            d("sealed.bin"),
        ]
    };
    let run = |args: Vec<String>| sealroom(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // A policy that does not pin the golden document: any code could hold the TEE key.
    let o = run(base("skip.toml"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("refused: the policy's golden rule is \"skip\""), "{}", stderr(&o));
    // An unsigned golden document.
    let o = run(base("pinned.toml"));
    assert!(stderr(&o).contains("golden.json.sig"), "{}", stderr(&o));
    // A bad name, a bad reply key.
    let mut args = base("pinned.toml");
    args[10] = "../patient".into();
    assert!(stderr(&run(args)).contains("use 1..=64 of [a-z0-9._-]"));
    std::fs::write(d("user.pub"), "not a key").unwrap();
    assert!(stderr(&run(base("pinned.toml"))).contains("--reply-key"));
    assert!(!dir.path().join("sealed.bin").exists(), "nothing sealed");
    // --submit needs --agent.
    let mut args = base("pinned.toml");
    args.push("--submit".into());
    assert!(!run(args).status.success());
}

#[test]
fn open_refuses_a_result_that_is_not_a_sealed_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    std::fs::create_dir(d("result")).unwrap();
    std::fs::write(d("result/output.sealed"), b"SRSEALO1 truncated").unwrap();
    let o = sealroom(&[
        "open",
        "--key",
        &d("user.key"),
        "--result",
        &d("result"),
        "--broker-key",
        &d("broker.jwk"),
        "--golden",
        &d("golden.json"),
        "--out",
        &d("out"),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("refused: output.sealed: sealed output:"), "{}", stderr(&o));
    assert!(!dir.path().join("out").exists());
}
