//! `sealroom open`: decrypt a sealed output for the owner of its reply key, and check it against the receipt.
//!
//! The result directory of a workload whose spec says `seal_output_to` holds `output.sealed` (HPKE to the reply
//! key, format `sealroom_measurements::sealed`), `receipt.jwt` and `evidence.pb`. Checks, in order, each failure
//! one line and exit 1: the receipt (signature under the broker's key, an affirming output receipt, golden
//! registers, the evidence file it covers) names the output digest the envelope carries; the envelope is sealed
//! to this key; it opens (its header, digest included, is the AEAD's associated data); the archive inside digests
//! to that same output digest. Only then are the files written under `--out` (which must not exist; the agent's
//! salt file `.sealroom-output-salt` is among them, and `sealroom_measurements::output::digest_dir` of `--out`
//! is the receipt's output digest).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sealroom_broker::receipt::{self, CheckInput};
use sealroom_broker::seal;
use sealroom_measurements::sealed::{self, Archive, SealedOutput};

/// Arguments of `sealroom open`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The reply key's private half (`sealroom seal keygen --out`).
    #[arg(long)]
    key: PathBuf,
    /// The result directory (output.sealed, receipt.jwt, evidence.pb).
    #[arg(long)]
    result: PathBuf,
    /// The broker's published token key (JWK file).
    #[arg(long)]
    broker_key: PathBuf,
    /// The signed golden measurement document of the image (its signature in `<FILE>.sig`).
    #[arg(long)]
    golden: PathBuf,
    /// The golden document's signer (hex or a file); default: the release key built into sealroom.
    #[arg(long, value_name = "HEX_OR_FILE")]
    golden_key: Option<String>,
    /// Where to write the decrypted output (created; must not exist).
    #[arg(long)]
    out: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

pub fn run(args: &Args) -> Result<()> {
    let dir = &args.result;
    let env = SealedOutput::parse(&read(&dir.join("output.sealed"))?)
        .map_err(|e| anyhow::anyhow!("refused: output.sealed: {e}"))?;
    let output_digest = format!("sha256:{}", hex::encode(env.output_digest));
    // 1. The receipt names this output digest.
    let jwk: serde_json::Value = serde_json::from_slice(&read(&args.broker_key)?)
        .with_context(|| format!("{} is not a JWK", args.broker_key.display()))?;
    let token = String::from_utf8(read(&dir.join("receipt.jwt"))?).context("receipt.jwt is not text")?;
    let evidence_digest = sealroom_measurements::digest::sha256(&read(&dir.join("evidence.pb"))?);
    let golden = crate::receipt_cmd::golden_registers_of(&args.golden, args.golden_key.as_deref())?;
    let checked = receipt::check(&CheckInput {
        token: token.trim(),
        broker_jwk: &jwk,
        output_digest: &output_digest,
        golden_registers: &golden,
        evidence_digest: Some(evidence_digest),
    })
    .map_err(|e| anyhow::anyhow!("refused: {e}"))?;
    // 2..3. Sealed to this key, and it opens.
    let (private, public) = crate::seal_cmd::read_private_key(&args.key)?;
    if env.reply_key != public {
        bail!(
            "refused: output.sealed is sealed to {}, this key is {}",
            sealed::key_text(&env.reply_key),
            sealed::key_text(&public)
        );
    }
    let plain = seal::open_x25519(&private, &env.enc, sealed::OUTPUT_INFO, &env.aad(), &env.ciphertext)
        .map_err(|_| anyhow::anyhow!("refused: output.sealed does not open with this key (altered?)"))?;
    // 4. The archive is the output the receipt names.
    let archive = Archive::parse(&plain).map_err(|e| anyhow::anyhow!("refused: {e}"))?;
    let (digest, _) = archive.digest();
    if digest != env.output_digest {
        bail!(
            "refused: the decrypted output digests to sha256:{}, the receipt names {output_digest}",
            hex::encode(digest)
        );
    }
    std::fs::create_dir(&args.out)
        .with_context(|| format!("creating --out {} (it must not exist)", args.out.display()))?;
    for (path, data) in &archive.files {
        // Archive::parse admitted only plain relative paths, so each stays under --out.
        let target = args.out.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .and_then(|mut f| std::io::Write::write_all(&mut f, data))
            .with_context(|| format!("writing {}", target.display()))?;
    }
    let w = &checked.workload;
    println!("opened: {} file(s) under {}", archive.files.len(), args.out.display());
    println!("  output       {output_digest} (matches the receipt)");
    println!("  image        {} registers match the golden document", checked.golden_registers);
    println!("  workload     {} ({})", w.image_digest, w.image_reference);
    Ok(())
}
