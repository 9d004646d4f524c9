//! `sealroom verify-receipt DIR`: check a workload's result and its output receipt offline.
//!
//! DIR is the result directory the agent writes (agent `workload::receipt`): `output/`, `output.sha256`,
//! `receipt.jwt`, `evidence.pb` — or, for a sealed output, `output.sealed` in place of the first two: then the
//! receipt and evidence are checked against the digest the envelope names, and only the reply key's owner
//! checks the files (`sealroom open`). Checks, in order, each failure one line and a non-zero exit: the output
//! digest recomputed from the files equals the listing's digest (a changed file is named); the receipt's ES256
//! signature under the broker's published key; an affirming output receipt naming that output digest; the
//! registers it names against the signed golden document; the evidence file is the one the receipt covers;
//! and, with `--tpm-ak` (enrolled TPM, e.g. swtpm), the evidence itself again: quote signature, nonce binding
//! to the receipt's nonce, runtime log replayed to PCR 15 and ending in the same output event.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sealroom_broker::appraisal::{Appraiser, VerifierAppraiser};
use sealroom_broker::receipt::{self, CheckInput};
use sealroom_measurements::cel::RuntimeEvent;

/// Arguments of `sealroom verify-receipt`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The result directory (output/, output.sha256, receipt.jwt, evidence.pb).
    dir: PathBuf,
    /// The signed golden measurement document of the image (its signature in `<FILE>.sig`).
    #[arg(long)]
    golden: PathBuf,
    /// The golden document's signer: a raw Ed25519 public key (hex) or a file holding it. Default: the release
    /// key built into sealroom.
    #[arg(long, value_name = "HEX_OR_FILE")]
    golden_key: Option<String>,
    /// The broker's published token key (the JWK file `sealroom broker` writes, `broker.pub`).
    #[arg(long)]
    broker_key: PathBuf,
    /// Re-verify the evidence with this enrolled TPM attestation key (marshalled TPMT_PUBLIC); repeatable.
    #[arg(long = "tpm-ak")]
    tpm_ak: Vec<PathBuf>,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Verifies the golden document `doc` (read from `path`) against its detached signature `<path>.sig` under
/// `key` (hex, a file holding it, or by default the release key built into sealroom): the verified document
/// and the signature's text.
pub fn verify_golden(
    path: &Path,
    doc: &[u8],
    key: Option<&str>,
) -> Result<(sealroom_measurements::golden::GoldenDocument, String)> {
    let mut sig_path = path.as_os_str().to_owned();
    sig_path.push(".sig");
    let sig = String::from_utf8(read(Path::new(&sig_path))?).context("golden signature is not text")?;
    let verified = match key {
        None => sealroom_measurements::golden::verify_pinned(doc, &sig),
        Some(k) if k.len() == 64 && k.bytes().all(|c| c.is_ascii_hexdigit()) => {
            sealroom_measurements::golden::verify(doc, &sig, k)
        }
        Some(file) => {
            let k = std::fs::read_to_string(file).with_context(|| format!("reading --golden-key {file}"))?;
            sealroom_measurements::golden::verify(doc, &sig, k.trim())
        }
    }
    .with_context(|| format!("golden document {}", path.display()))?;
    Ok((verified, sig))
}

/// [`verify_golden`], keeping the signature text.
pub fn check_golden(path: &Path, doc: &[u8], key: Option<&str>) -> Result<String> {
    verify_golden(path, doc, key).map(|(_, sig)| sig)
}

/// The golden registers of a verified golden document.
pub fn golden_registers_of(
    path: &Path,
    key: Option<&str>,
) -> Result<std::collections::BTreeMap<String, String>> {
    let doc = read(path)?;
    let (verified, _) = verify_golden(path, &doc, key)?;
    Ok(sealroom_verifier::golden_refs::golden_registers(&verified))
}

fn golden_registers(args: &Args) -> Result<std::collections::BTreeMap<String, String>> {
    golden_registers_of(&args.golden, args.golden_key.as_deref())
}

/// The output digest of a result directory and what backs it: the files recomputed against `output.sha256`, or
/// for a sealed output (`output.sealed`, no `output/`) the digest its envelope names.
fn output_digest(dir: &Path) -> Result<(String, String)> {
    let sealed_path = dir.join("output.sealed");
    if sealed_path.exists() && !dir.join("output").exists() {
        let env = sealroom_measurements::sealed::SealedOutput::parse(&read(&sealed_path)?)
            .map_err(|e| anyhow::anyhow!("refused: output.sealed: {e}"))?;
        return Ok((
            format!("sha256:{}", hex::encode(env.output_digest)),
            format!(
                "sealed to {}: its owner checks the files with `sealroom open`",
                sealroom_measurements::sealed::key_text(&env.reply_key)
            ),
        ));
    }
    let (digest, listing) = sealroom_measurements::output::digest_dir(&dir.join("output"))
        .with_context(|| format!("output digest of {}", dir.join("output").display()))?;
    let recorded =
        String::from_utf8(read(&dir.join("output.sha256"))?).context("output.sha256 is not text")?;
    if recorded != listing {
        let changed = listing
            .lines()
            .zip(recorded.lines())
            .find(|(a, b)| a != b)
            .and_then(|(a, _)| a.split_once("  ").map(|(_, p)| p.to_owned()))
            .unwrap_or_else(|| "a file was added or removed".into());
        bail!("refused: output file changed: {changed} no longer matches output.sha256");
    }
    Ok((format!("sha256:{}", hex::encode(digest)), format!("{} files", listing.lines().count())))
}

pub fn run(args: &Args) -> Result<()> {
    let dir = &args.dir;
    // 1. The files against the listing, then the listing's digest (or, for a sealed output, the digest its
    // envelope names: only the reply key's owner can check the files, with `sealroom open`).
    let (output_digest, output_note) = output_digest(dir)?;
    // 2..5. The receipt.
    let jwk: serde_json::Value = serde_json::from_slice(&read(&args.broker_key)?)
        .with_context(|| format!("{} is not a JWK", args.broker_key.display()))?;
    let token = String::from_utf8(read(&dir.join("receipt.jwt"))?).context("receipt.jwt is not text")?;
    let evidence_bytes = read(&dir.join("evidence.pb"))?;
    let golden = golden_registers(args)?;
    let evidence_digest: [u8; 32] =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &evidence_bytes).as_ref().try_into()?;
    let checked = receipt::check(&CheckInput {
        token: token.trim(),
        broker_jwk: &jwk,
        output_digest: &output_digest,
        golden_registers: &golden,
        evidence_digest: Some(evidence_digest),
    })
    .map_err(|e| anyhow::anyhow!("refused: {e}"))?;
    // 6. Optionally the evidence itself.
    let mut evidence_note = "evidence digest matches the receipt (not re-verified: no --tpm-ak)".to_owned();
    if !args.tpm_ak.is_empty() {
        let aks = super::verify_cmd::read_enrolled_aks(&args.tpm_ak)?;
        let pb: sealroom_proto::attestation::v1::Evidence =
            prost::Message::decode(evidence_bytes.as_slice()).context("evidence.pb is not Evidence")?;
        let evidence = sealroom_measurements::evidence::Evidence::try_from(pb).context("evidence.pb")?;
        let s = |p: &str| checked.claims.pointer(p).and_then(serde_json::Value::as_str).unwrap_or_default();
        if sealroom_verifier::ear::eat_nonce(&evidence.nonce.0) != s("/eat_nonce") {
            bail!("refused: the evidence's nonce is not the receipt's eat_nonce");
        }
        let at_ms =
            checked.claims.get("iat").and_then(serde_json::Value::as_u64).unwrap_or(0).saturating_mul(1000);
        let appraisal = VerifierAppraiser::with_pinned_tpm_aks(aks)
            .appraise(&evidence, at_ms)
            .map_err(|e| anyhow::anyhow!("refused: evidence: {e}"))?;
        match appraisal.runtime_events().last() {
            Some(RuntimeEvent::Output { digest, .. }) if *digest == output_digest => {}
            other => bail!(
                "refused: evidence: the runtime log does not end with output {output_digest} ({other:?})"
            ),
        }
        let claimed =
            checked.claims.pointer("/submods/sealroom/sealroom.registers").cloned().unwrap_or_default();
        for (reg, val) in &appraisal.registers {
            if claimed.get(reg.to_string()).and_then(serde_json::Value::as_str) != Some(val.to_hex().as_str())
            {
                bail!("refused: evidence: register {reg} differs from the receipt's");
            }
        }
        evidence_note = format!(
            "evidence re-verified: quote by the enrolled AK, nonce bound, {} runtime events replayed to PCR 15",
            appraisal.runtime_events().len()
        );
    }
    let w = &checked.workload;
    println!("receipt ok");
    println!("  output       {output_digest} ({output_note})");
    println!("  image        {} registers match the golden document", checked.golden_registers);
    println!("  workload     {} ({})", w.image_digest, w.image_reference);
    println!("  args         {:?}", w.args);
    println!("  {evidence_note}");
    Ok(())
}
