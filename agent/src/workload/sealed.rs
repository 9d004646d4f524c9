//! Sealed inputs and sealed outputs in the workload's launch: what the spec asks for, the waiting before the
//! separator, the plaintext files, and the sealed result.
//!
//! The spec (JSON only) names the sealed inputs the launch waits for and may send the output to a reply key:
//! ```json
//! {"sealed_inputs": {"patient": {"max_bytes": 65536}}, "sealed_input_timeout_secs": 600,
//!  "seal_output_to": "input:patient"}
//! ```
//! Each sealed input is mounted read-only at `/input/<name>` (the mount is measured with the other mounts);
//! its names must differ from the plain `inputs`. `seal_output_to` is `input:<name>` (the reply key that came
//! with that sealed input) or `x25519:<hex>`, measured as a `sealed_output_to` launch event before the launch
//! policy, so a sender's `sealroom seal` sees where the output will go. The launch then, after the launch policy
//! event, opens the agent's inbox ([`crate::sealed_inbox`]) and waits (up to the timeout, default
//! [`DEFAULT_TIMEOUT_SECS`]) until every named input arrived and was measured, and only then measures the
//! separator.
//!
//! With `seal_output_to`, the agent first writes [`SALT_FILE`] (32 random bytes, hex) into the output directory,
//! so the measured output digest (which leaves the VM in the evidence and the receipt) cannot be used to guess a
//! low-entropy output, then seals the output archive (`sealroom_measurements::sealed`) to the reply key: the
//! result directory holds `output.sealed` in place of `output/` and `output.sha256`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, OpModeS, Serializable};
use sealroom_measurements::cel::Mount;
use sealroom_measurements::sealed::{self as fmt, Archive, SealedOutput};
use serde::Deserialize;

use super::Measurer;
use crate::error::{Error, Result};

const STAGE: &str = "sealed inputs";
/// How long the launch waits for its sealed inputs when the spec does not say.
pub const DEFAULT_TIMEOUT_SECS: u64 = 600;
/// The longest wait a spec may ask for (a day).
pub const MAX_TIMEOUT_SECS: u64 = 86_400;
/// Most sealed inputs per workload.
pub const MAX_SEALED_INPUTS: usize = 16;
/// The salt file the agent adds to a sealed output before measuring it.
pub const SALT_FILE: &str = ".sealroom-output-salt";
/// The sealed output's name in the result directory.
pub const SEALED_OUTPUT_FILE: &str = "output.sealed";

fn err(reason: impl Into<String>) -> Error {
    Error::workload(STAGE, reason)
}

/// One sealed input as the JSON spec gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedInputDocument {
    /// Largest plaintext accepted, bytes (1..=60 KiB).
    pub max_bytes: u64,
}

/// Where a sealed output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTo {
    /// The reply key that came with this sealed input.
    Input(String),
    /// This X25519 public key.
    Key([u8; 32]),
}

impl OutputTo {
    /// The measured text: `input:<name>` or `x25519:<hex>`.
    #[must_use]
    pub fn text(&self) -> String {
        match self {
            Self::Input(n) => format!("input:{n}"),
            Self::Key(k) => fmt::key_text(k),
        }
    }
}

/// The spec's sealed inputs and output (validated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealedSpec {
    /// Input name → largest plaintext, bytes.
    pub inputs: BTreeMap<String, u64>,
    /// How long the launch waits for them.
    pub timeout: Duration,
    /// Where the output is sealed to, if anywhere.
    pub output_to: Option<OutputTo>,
}

impl SealedSpec {
    /// Validates the spec's sealed fields; `plain_inputs` are the spec's `inputs` (names must not collide).
    ///
    /// # Errors
    /// A bad name or size, too many inputs, a timeout out of range, a `seal_output_to` naming no sealed input.
    pub fn build(
        inputs: BTreeMap<String, SealedInputDocument>,
        timeout_secs: Option<u64>,
        output_to: Option<String>,
        plain_inputs: &BTreeMap<String, String>,
    ) -> Result<Self> {
        if inputs.len() > MAX_SEALED_INPUTS {
            return Err(err(format!("{} sealed_inputs, at most {MAX_SEALED_INPUTS}", inputs.len())));
        }
        let max = u64::try_from(fmt::MAX_INPUT_BYTES).unwrap_or(u64::MAX);
        for (name, doc) in &inputs {
            fmt::check_name(name).map_err(|e| err(format!("sealed_inputs: {e}")))?;
            if plain_inputs.contains_key(name) {
                return Err(err(format!(
                    "sealed_inputs: {name:?} is also a plain input (both mount /input/{name})"
                )));
            }
            if doc.max_bytes == 0 || doc.max_bytes > max {
                return Err(err(format!(
                    "sealed_inputs.{name}.max_bytes: {}, expected 1..={max}",
                    doc.max_bytes
                )));
            }
        }
        let timeout_secs = match timeout_secs {
            None => DEFAULT_TIMEOUT_SECS,
            Some(_) if inputs.is_empty() => {
                return Err(err("sealed_input_timeout_secs given without sealed_inputs"));
            }
            Some(t) if (1..=MAX_TIMEOUT_SECS).contains(&t) => t,
            Some(t) => {
                return Err(err(format!("sealed_input_timeout_secs: {t}, expected 1..={MAX_TIMEOUT_SECS}")));
            }
        };
        let output_to = match output_to {
            None => None,
            Some(t) => Some(match t.strip_prefix("input:") {
                Some(n) if inputs.contains_key(n) => OutputTo::Input(n.to_owned()),
                Some(n) => {
                    return Err(err(format!("seal_output_to: {n:?} is not one of the sealed_inputs")));
                }
                None => OutputTo::Key(fmt::parse_key_text(&t).map_err(|e| {
                    err(format!("seal_output_to: expected input:NAME or x25519:<hex> ({e})"))
                })?),
            }),
        };
        Ok(Self {
            inputs: inputs.into_iter().map(|(n, d)| (n, d.max_bytes)).collect(),
            timeout: Duration::from_secs(timeout_secs),
            output_to,
        })
    }
}

/// Where the plaintext of sealed input `name` lives.
#[must_use]
pub fn path(work_dir: &Path, name: &str) -> PathBuf {
    work_dir.join("sealed-inputs").join(name)
}

/// The read-only bind mounts of the sealed inputs (measured with the other mounts).
#[must_use]
pub fn mounts(spec: &SealedSpec, work_dir: &Path) -> Vec<Mount> {
    spec.inputs
        .keys()
        .map(|name| Mount {
            destination: format!("{}/{name}", super::inputs::INPUT_DESTINATION),
            source: path(work_dir, name).display().to_string(),
            fs_type: "bind".into(),
            options: "rbind,ro,nosuid,nodev,noexec".into(),
        })
        .collect()
}

/// Just before the separator: waits for the sealed inputs (each measured as it arrives) and writes their
/// plaintext (mode 0400) under the work directory; without sealed inputs, closes the inbox so a late one is
/// refused as such.
///
/// # Errors
/// Inputs expected but no inbox, the wait timing out, I/O failures.
pub async fn before_separator<M: Measurer>(spec: &SealedSpec, work_dir: &Path, measurer: &M) -> Result<()> {
    let Some(inbox) = measurer.sealed_inbox() else {
        return if spec.inputs.is_empty() {
            Ok(())
        } else {
            Err(err("sealed inputs expected, but this agent serves no SubmitInput"))
        };
    };
    if spec.inputs.is_empty() {
        inbox.close_for_launch().await;
        return Ok(());
    }
    super::console(format_args!(
        "waiting up to {} s for sealed input(s) {}",
        spec.timeout.as_secs(),
        spec.inputs.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
    ));
    let received = inbox.await_inputs(spec.inputs.clone(), spec.timeout).await?;
    for (name, r) in &received {
        let p = path(work_dir, name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err(format!("{}: {e}", parent.display())))?;
        }
        write_private(&p, &r.plaintext)?;
        super::console(format_args!("sealed input {name} ({}) received", r.digest));
    }
    Ok(())
}

fn write_private(p: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(p)
        .map_err(|e| err(format!("{}: {e}", p.display())))?;
    f.write_all(bytes).map_err(|e| err(format!("{}: {e}", p.display())))
}

/// Gives the sealed inputs' plaintext files to the workload's user (they are mode 0400).
///
/// # Errors
/// When a file cannot be handed over.
pub fn chown_all(spec: &SealedSpec, work_dir: &Path, uid: u32, gid: u32) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    for name in spec.inputs.keys() {
        let p = path(work_dir, name);
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
            .map_err(|e| err(format!("{}: {e}", p.display())))?;
    }
    Ok(())
}

/// Writes [`SALT_FILE`] (32 fresh random bytes, hex) into the output directory, replacing any the workload
/// wrote: called before the output is measured when the output is sealed.
///
/// # Errors
/// No randomness, or I/O.
pub fn write_salt(output_dir: &Path) -> Result<()> {
    let mut salt = [0u8; 32];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| Error::workload("output", "no randomness for the salt"))?;
    let p = output_dir.join(SALT_FILE);
    std::fs::write(&p, hex::encode(salt))
        .map_err(|e| Error::workload("output", format!("{}: {e}", p.display())))
}

/// The reply key the output goes to.
///
/// # Errors
/// `input:<name>` without a reply key from that input.
pub async fn resolve_output_key<M: Measurer>(to: &OutputTo, measurer: &M) -> Result<[u8; 32]> {
    match to {
        OutputTo::Key(k) => Ok(*k),
        OutputTo::Input(name) => match measurer.sealed_inbox() {
            Some(inbox) => inbox.reply_key(name).await.ok_or_else(|| {
                Error::workload("output", format!("no reply key: sealed input {name} never arrived"))
            }),
            None => Err(Error::workload("output", "no sealed-input inbox")),
        },
    }
}

/// Seals the output directory (whose measured digest is `output_digest`) to `reply_key`: the bytes of
/// `output.sealed`. The archive is read back and digested again; a directory that changed since it was
/// measured is refused.
///
/// # Errors
/// I/O, a changed directory, an invalid reply key.
pub fn seal_output(output_dir: &Path, output_digest: &[u8; 32], reply_key: &[u8; 32]) -> Result<Vec<u8>> {
    let e = |r: String| Error::workload("output", r);
    let archive = Archive::from_dir(output_dir).map_err(|x| e(x.to_string()))?;
    if archive.digest().0 != *output_digest {
        return Err(e("the output changed after it was measured; not sealed".into()));
    }
    let pk = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(reply_key)
        .map_err(|x| e(format!("reply key: {x}")))?;
    let (enc, mut ctx) =
        hpke::setup_sender::<AesGcm256, HkdfSha256, X25519HkdfSha256>(&OpModeS::Base, &pk, fmt::OUTPUT_INFO)
            .map_err(|x| e(format!("hpke: {x}")))?;
    let enc: [u8; 32] = enc.to_bytes().into();
    let aad = fmt::output_aad(reply_key, output_digest, &enc);
    let ciphertext = ctx.seal(&archive.encode(), &aad).map_err(|x| e(format!("hpke: {x}")))?;
    Ok(SealedOutput { reply_key: *reply_key, output_digest: *output_digest, enc, ciphertext }.encode())
}

/// Writes the result directory of a sealed output: `output.sealed` (to the reply key `to` resolves to), every
/// broker's receipt and its evidence; no plaintext file of the output.
///
/// # Errors
/// No reply key, a changed output, I/O.
pub async fn write_sealed_result<M: Measurer>(
    measurer: &M,
    to: &OutputTo,
    dir: &Path,
    cfg: &super::WorkloadConfig,
    outcome: &super::Outcome,
    receipts: &[(String, super::receipt::Receipt)],
) -> Result<()> {
    let key = resolve_output_key(to, measurer).await?;
    let sealed = seal_output(&cfg.output_dir, &outcome.output_digest.0, &key)?;
    super::receipt::write_receipts(dir, receipts)?;
    let p = dir.join(SEALED_OUTPUT_FILE);
    std::fs::write(&p, &sealed).map_err(|e| Error::workload("output", format!("{}: {e}", p.display())))?;
    super::console(format_args!(
        "output {} sealed to {} ({} bytes)",
        outcome.output_digest,
        fmt::key_text(&key),
        sealed.len()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(json: &str) -> Result<SealedSpec> {
        #[derive(Deserialize)]
        struct D {
            #[serde(default)]
            sealed_inputs: BTreeMap<String, SealedInputDocument>,
            sealed_input_timeout_secs: Option<u64>,
            seal_output_to: Option<String>,
        }
        let d: D = serde_json::from_str(json).unwrap();
        let plain = BTreeMap::from([("dataset".to_owned(), "/x".to_owned())]);
        SealedSpec::build(d.sealed_inputs, d.sealed_input_timeout_secs, d.seal_output_to, &plain)
    }

    #[test]
    fn spec_fields_are_strict() {
        let s =
            build(r#"{"sealed_inputs": {"patient": {"max_bytes": 10}}, "seal_output_to": "input:patient"}"#)
                .unwrap();
        assert_eq!(s.inputs["patient"], 10);
        assert_eq!(s.timeout, Duration::from_secs(DEFAULT_TIMEOUT_SECS));
        assert_eq!(s.output_to.unwrap().text(), "input:patient");
        let key = format!("x25519:{}", "ab".repeat(32));
        let s = build(&format!(r#"{{"seal_output_to": "{key}"}}"#)).unwrap();
        assert_eq!(s.output_to.unwrap().text(), key);
        for (json, why) in [
            (r#"{"seal_output_to": "input:other"}"#, "not one of the sealed_inputs"),
            (r#"{"seal_output_to": "x25519:00"}"#, "expected input:NAME or x25519"),
            (r#"{"sealed_inputs": {"dataset": {"max_bytes": 1}}}"#, "also a plain input"),
            (r#"{"sealed_inputs": {"Bad": {"max_bytes": 1}}}"#, "[a-z0-9._-]"),
            (r#"{"sealed_inputs": {"p": {"max_bytes": 0}}}"#, "max_bytes: 0"),
            (r#"{"sealed_inputs": {"p": {"max_bytes": 4000000}}}"#, "max_bytes: 4000000"),
            (r#"{"sealed_input_timeout_secs": 5}"#, "without sealed_inputs"),
            (
                r#"{"sealed_inputs": {"p": {"max_bytes": 1}}, "sealed_input_timeout_secs": 0}"#,
                "expected 1..=",
            ),
        ] {
            let e = build(json).unwrap_err().to_string();
            assert!(e.contains(why), "{json}: {e}");
        }
    }

    #[test]
    fn sealed_output_opens_only_for_the_reply_key_and_the_measured_digest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prediction.json"), b"{\"y\": 151.2}\n").unwrap();
        write_salt(dir.path()).unwrap();
        let (digest, _) = sealroom_measurements::output::digest_dir(dir.path()).unwrap();
        let (sk, pk) = <X25519HkdfSha256 as hpke::Kem>::derive_keypair(&[7; 32]);
        let reply: [u8; 32] = pk.to_bytes().into();
        let bytes = seal_output(dir.path(), &digest, &reply).unwrap();
        assert!(!bytes.windows(5).any(|w| w == b"151.2"), "plaintext in the sealed output");
        let env = SealedOutput::parse(&bytes).unwrap();
        let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&env.enc).unwrap();
        let plain = hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &hpke::OpModeR::Base,
            &sk,
            &enc,
            fmt::OUTPUT_INFO,
            &env.ciphertext,
            &env.aad(),
        )
        .unwrap();
        let archive = Archive::parse(&plain).unwrap();
        assert_eq!(archive.digest().0, digest);
        assert_eq!(archive.files.len(), 2, "the file and the salt");
        // A directory changed after measurement is not sealed.
        std::fs::write(dir.path().join("late.txt"), b"x").unwrap();
        assert!(seal_output(dir.path(), &digest, &reply).unwrap_err().to_string().contains("changed"));
    }
}
