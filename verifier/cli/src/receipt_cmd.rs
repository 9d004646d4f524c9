//! `sealroom verify-receipt DIR`: check a workload's result and its output receipts offline.
//!
//! DIR is the result directory the agent writes (agent `workload::receipt`): `output/`, `output.sha256`,
//! `receipt.jwt`, `evidence.pb`, and `receipts/NAME.jwt` + `receipts/NAME.evidence.pb` for every broker of the
//! job — or, for a sealed output, `output.sealed` in place of `output/` and `output.sha256`: then the receipts
//! and evidence are checked against the digest the envelope names, and only the reply key's owner checks the
//! files (`sealroom open`). Checks, in order, each failure one line and a non-zero exit: the output digest
//! recomputed from the files equals the listing's digest (a changed file is named); then for each receipt (`receipt.jwt` with one
//! `--broker-key`, or each `--receipt FILE` paired in order with a `--broker-key`): its ES256 signature under
//! that broker's published key; an affirming output receipt naming that output digest; the registers it names
//! against the signed golden document; the evidence file next to it is the one it covers; its own key's
//! release by that broker is among the releases it names; and, with `--tpm-ak` (enrolled TPM, e.g. swtpm), the
//! evidence itself again: quote signature, nonce binding to the receipt's nonce, runtime log replayed to PCR 15
//! and ending in the same output event. With several receipts (one per data provider), they must all name the
//! same TEE key, registers, workload, key releases, sealed inputs and output: each provider vouches for the same
//! run, and a receipt from another run (or another job) is refused.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sealroom_broker::appraisal::{Appraiser, VerifierAppraiser};
use sealroom_broker::receipt::{self, CheckInput, CheckedReceipt};
use sealroom_measurements::cel::RuntimeEvent;

/// Arguments of `sealroom verify-receipt`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The result directory (output/, output.sha256, receipt.jwt, evidence.pb, receipts/).
    dir: PathBuf,
    /// The signed golden measurement document of the image (its signature in `<FILE>.sig`).
    #[arg(long)]
    golden: PathBuf,
    /// The golden document's signer: a raw Ed25519 public key (hex) or a file holding it. Default: the release
    /// key built into sealroom.
    #[arg(long, value_name = "HEX_OR_FILE")]
    golden_key: Option<String>,
    /// A broker's published token key (the JWK file `sealroom broker` writes, `broker.pub`); repeat it, one per
    /// data provider, each paired in order with a `--receipt`.
    #[arg(long, required = true)]
    broker_key: Vec<PathBuf>,
    /// A receipt file (e.g. DIR/receipts/NAME.jwt, its evidence in NAME.evidence.pb beside it), paired in order
    /// with the `--broker-key`s. Default with one broker key: DIR/receipt.jwt and DIR/evidence.pb.
    #[arg(long)]
    receipt: Vec<PathBuf>,
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

/// The evidence file a receipt file names: `receipt.jwt` → `evidence.pb`, `NAME.jwt` → `NAME.evidence.pb`.
fn evidence_of(receipt: &Path) -> PathBuf {
    let name = receipt.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let evidence = match name.strip_suffix(".jwt") {
        Some("receipt") => "evidence.pb".to_owned(),
        Some(stem) => format!("{stem}.evidence.pb"),
        None => format!("{name}.evidence.pb"),
    };
    receipt.with_file_name(evidence)
}

/// The (receipt, evidence, broker key) triples to check.
fn pairs(args: &Args) -> Result<Vec<(PathBuf, PathBuf, PathBuf)>> {
    if args.receipt.is_empty() {
        let [key] = args.broker_key.as_slice() else {
            bail!(
                "refused: {} --broker-key given without --receipt: name each broker's receipt with --receipt \
                 (e.g. {}/receipts/NAME.jwt), in the same order",
                args.broker_key.len(),
                args.dir.display()
            );
        };
        let r = args.dir.join("receipt.jwt");
        return Ok(vec![(r.clone(), evidence_of(&r), key.clone())]);
    }
    if args.receipt.len() != args.broker_key.len() {
        bail!(
            "refused: {} --receipt and {} --broker-key: give one broker key per receipt, in the same order",
            args.receipt.len(),
            args.broker_key.len()
        );
    }
    Ok(args
        .receipt
        .iter()
        .zip(&args.broker_key)
        .map(|(r, k)| (r.clone(), evidence_of(r), k.clone()))
        .collect())
}

/// One receipt against its broker key and evidence file (see the module documentation).
fn check_one(
    args: &Args,
    (receipt_path, evidence_path, key_path): &(PathBuf, PathBuf, PathBuf),
    output_digest: &str,
    golden: &std::collections::BTreeMap<String, String>,
) -> Result<(CheckedReceipt, String)> {
    let jwk: serde_json::Value = serde_json::from_slice(&read(key_path)?)
        .with_context(|| format!("{} is not a JWK", key_path.display()))?;
    let token = String::from_utf8(read(receipt_path)?)
        .with_context(|| format!("{} is not text", receipt_path.display()))?;
    let evidence_bytes = read(evidence_path)?;
    let evidence_digest: [u8; 32] =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &evidence_bytes).as_ref().try_into()?;
    let checked = receipt::check(&CheckInput {
        token: token.trim(),
        broker_jwk: &jwk,
        output_digest,
        golden_registers: golden,
        evidence_digest: Some(evidence_digest),
    })
    .map_err(|e| anyhow::anyhow!("refused: {}: {e}", receipt_path.display()))?;
    // The broker signs only for its own release: the key it names was released by the key that signed.
    let kid = jwk.get("kid").and_then(serde_json::Value::as_str).unwrap_or_default();
    let key_id = checked.claims.pointer("/submods/sealroom/sealroom.key_id").and_then(|v| v.as_str());
    if !checked.releases.iter().any(|r| r.broker_key == kid && Some(r.key_id.as_str()) == key_id) {
        bail!(
            "refused: {}: the receipt's key {} was not released by broker key {kid} in the runtime log it names",
            receipt_path.display(),
            key_id.unwrap_or("(none)")
        );
    }
    let mut evidence_note = "evidence digest matches the receipt (not re-verified: no --tpm-ak)".to_owned();
    if !args.tpm_ak.is_empty() {
        let aks = super::verify_cmd::read_enrolled_aks(&args.tpm_ak)?;
        let pb: sealroom_proto::attestation::v1::Evidence = prost::Message::decode(evidence_bytes.as_slice())
            .with_context(|| format!("{} is not Evidence", evidence_path.display()))?;
        let evidence = sealroom_measurements::evidence::Evidence::try_from(pb)
            .with_context(|| evidence_path.display().to_string())?;
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
    Ok((checked, evidence_note))
}

/// Several providers' receipts must vouch for one run: the same TEE key, registers, workload, releases,
/// sealed inputs (the output digest each already matched against the files).
fn check_agree(checked: &[(PathBuf, CheckedReceipt)]) -> Result<()> {
    let Some((first_path, first)) = checked.first() else { return Ok(()) };
    for (path, c) in checked.iter().skip(1) {
        let differs = if c.tee_public_key != first.tee_public_key {
            Some("TEE keys (another run)")
        } else if c.registers != first.registers {
            Some("registers")
        } else if c.workload != first.workload {
            Some("workloads")
        } else if c.releases != first.releases {
            Some("key releases")
        } else if c.sealed_inputs != first.sealed_inputs {
            Some("sealed inputs")
        } else {
            None
        };
        if let Some(what) = differs {
            bail!("refused: {} and {} name different {what}", first_path.display(), path.display());
        }
    }
    Ok(())
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
    // 1. The files against the listing, then the listing's digest (or, for a sealed output, the digest its
    // envelope names: only the reply key's owner can check the files, with `sealroom open`).
    let (output_digest, output_note) = output_digest(&args.dir)?;
    // 2. Each receipt, then 3. that they agree.
    let pairs = pairs(args)?;
    let mut keys = std::collections::BTreeSet::new();
    if let Some((_, _, k)) = pairs.iter().find(|(_, _, k)| !keys.insert(k.clone())) {
        bail!("refused: broker key {} given twice (one receipt per provider)", k.display());
    }
    let golden = golden_registers(args)?;
    let mut checked = Vec::with_capacity(pairs.len());
    let mut notes = Vec::new();
    for pair in &pairs {
        let (c, note) = check_one(args, pair, &output_digest, &golden)?;
        checked.push((pair.0.clone(), c));
        notes.push(note);
    }
    check_agree(&checked)?;
    let Some((_, first)) = checked.first() else { bail!("refused: no receipt") };
    let w = &first.workload;
    println!("receipt ok");
    if checked.len() > 1 {
        println!("  receipts     {} brokers vouch for the same run", checked.len());
    }
    println!("  output       {output_digest} ({output_note})");
    println!("  image        {} registers match the golden document", first.golden_registers);
    println!("  workload     {} ({})", w.image_digest, w.image_reference);
    println!("  args         {:?}", w.args);
    for r in &first.releases {
        println!("  release      {} from broker key {}", r.key_id, r.broker_key);
    }
    for i in &first.sealed_inputs {
        println!("  sealed input {} {} (reply key {})", i.name, i.digest, i.reply_key);
    }
    for note in notes {
        println!("  {note}");
    }
    Ok(())
}
