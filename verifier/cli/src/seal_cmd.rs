//! `sealroom seal`: send a file that only one attested workload can read, without a key broker.
//!
//! The sender fetches fresh evidence from the agent (its own random nonce, `--agent`) or reads an evidence file
//! (`--evidence`, as `sealroom attest --out` writes it: freshness then unknown), verifies it offline with the
//! broker's verifier (signatures, binding, runtime log replay), judges it with a policy file in the broker's own
//! format against the signed golden document, and only then HPKE-seals the file to the TEE key the evidence
//! binds (format: `sealroom_measurements::sealed`), naming the sender's reply key. `--submit` hands it to the
//! agent (`Attestation.SubmitInput`).
//!
//! What a pass proves: the evidence comes from a TEE whose boot matched the golden document (so the agent that
//! holds the TEE key is the released agent), and that agent has measured the whole launch (image digest,
//! arguments, environment, mounts, broker keys, `sealed_output_to`, launch policy) without the separator: the
//! workload waits for its sealed inputs, has not started, and can only start as measured. The policy's rules
//! judge that measured launch; the golden rule may not be `"skip"` here (without it, any code could hold the
//! TEE key). A file sealed to this evidence opens only in that agent instance; the agent measures its digest
//! and the reply key before the workload starts.
//!
//! `sealroom seal keygen` makes the sender's X25519 reply key pair.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sealroom_broker::appraisal::{Appraiser, VerifierAppraiser};
use sealroom_broker::policy::{GoldenFile, GoldenSet, LaunchStage, Outcome, Policy, Rule};
use sealroom_broker::{Randomness, SystemRandomness, seal};
use sealroom_measurements::binding::Kem;
use sealroom_measurements::cel::RuntimeEvent;
use sealroom_measurements::evidence::Evidence;
use sealroom_measurements::sealed::{self, SealedInput};
use sealroom_proto::attestation::v1 as pb;

/// Arguments of `sealroom seal`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    seal: SealArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Make an X25519 reply key pair: the private key (hex, mode 0600) and the public key (`x25519:<hex>`).
    Keygen(KeygenArgs),
}

#[derive(Debug, clap::Args)]
struct KeygenArgs {
    /// Where to write the private key (created; never overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Where to write the public key.
    #[arg(long)]
    public: PathBuf,
}

#[derive(Debug, clap::Args)]
struct SealArgs {
    /// The agent's gRPC endpoint: fresh evidence with this tool's own random nonce.
    #[arg(long, conflicts_with = "evidence")]
    agent: Option<String>,
    /// An evidence file (protobuf, `sealroom attest --out`) instead of asking the agent (freshness unknown).
    #[arg(long)]
    evidence: Option<PathBuf>,
    /// The signed golden measurement document of the image (its signature in `<FILE>.sig`).
    #[arg(long)]
    golden: Option<PathBuf>,
    /// The golden document's signer: a raw Ed25519 public key (hex) or a file holding it. Default: the release
    /// key built into sealroom.
    #[arg(long, value_name = "HEX_OR_FILE")]
    golden_key: Option<String>,
    /// The policy (the key broker's TOML format; `golden` must name the document).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The sealed input's name (the workload reads `/input/NAME`).
    #[arg(long)]
    name: Option<String>,
    /// The file to seal.
    #[arg(long)]
    input: Option<PathBuf>,
    /// The sender's reply key (`x25519:<hex>`, as `sealroom seal keygen --public` writes it).
    #[arg(long)]
    reply_key: Option<PathBuf>,
    /// Where to write the sealed envelope.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Submit the envelope to the agent (`--agent`) once sealed.
    #[arg(long, requires = "agent")]
    submit: bool,
    /// An enrolled TPM attestation key (marshalled TPMT_PUBLIC) to trust, e.g. a swtpm's; repeatable.
    #[arg(long = "tpm-ak")]
    tpm_ak: Vec<PathBuf>,
    /// TPM EK CA certificates (PEM or DER); repeatable. With --agent, the agent's AK is trusted only after
    /// credential activation against its EK certificate (as `sealroom attest --tpm-ek-ca`): no trust on first use.
    #[arg(long = "tpm-ek-ca", requires = "agent")]
    tpm_ek_ca: Vec<PathBuf>,
    /// Seconds to wait for the agent.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Refuse unless the workload's output is sealed to this sender's reply key (`seal_output_to` naming this
    /// input or this key): what a user whose output is derived from a private input wants.
    #[arg(long)]
    require_output_to_me: bool,
    /// With --agent: seconds to keep asking (every 2 s) while the agent does not answer or its launch is not
    /// measured up to its launch policy yet (the VM boots, the workload is being fetched); 0 asks once.
    #[arg(long, default_value_t = 0, requires = "agent")]
    wait: u64,
}

/// Whether a runtime log shows a launch measured up to its launch policy, or past it (worth judging now).
fn launch_measured(events: &[RuntimeEvent]) -> bool {
    events.iter().any(|e| matches!(e, RuntimeEvent::LaunchPolicy(_) | RuntimeEvent::LaunchSeparator))
}

/// Fresh evidence from `agent` with this tool's own nonce, asked again every 2 s for up to `wait` while the
/// launch is not measured yet.
fn fresh_evidence(
    rt: &tokio::runtime::Runtime,
    agent: &str,
    timeout: Duration,
    wait: Duration,
) -> Result<(Evidence, [u8; 32])> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let mut nonce = [0u8; 32];
        SystemRandomness::new().fill(&mut nonce).map_err(|e| anyhow::anyhow!("nonce: {e}"))?;
        let msg = match rt.block_on(crate::attest_cmd::fetch(agent, &nonce, timeout)) {
            Ok(m) => m,
            // Not serving yet (the VM is still booting): ask again while there is time.
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("{e:#}; asking again in 2 s");
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
            Err(e) => return Err(e),
        };
        let ev = Evidence::try_from(msg).context("agent evidence is malformed")?;
        if ev.nonce.0 != nonce {
            bail!("refused: the agent echoed another nonce than this tool's fresh one");
        }
        let events = sealroom_measurements::cel::CelLog::decode(&ev.runtime_event_log)
            .map(|r| r.into_iter().map(|r| r.event).collect::<Vec<_>>())
            .unwrap_or_default();
        if launch_measured(&events) || std::time::Instant::now() >= deadline {
            return Ok((ev, nonce));
        }
        eprintln!("the agent's launch is not measured up to its launch policy yet; asking again in 2 s");
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn required<'a, T>(v: Option<&'a T>, flag: &str) -> Result<&'a T>
where
    T: ?Sized,
{
    v.with_context(|| format!("sealroom seal needs {flag} (see --help)"))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

pub fn run(args: &Args) -> Result<()> {
    if let Some(Sub::Keygen(k)) = &args.command {
        return keygen(k);
    }
    let a = &args.seal;
    let golden_path = required(a.golden.as_ref(), "--golden")?;
    let policy_path = required(a.policy.as_ref(), "--policy")?;
    let name = required(a.name.as_ref(), "--name")?;
    let input_path = required(a.input.as_ref(), "--input")?;
    let reply_path = required(a.reply_key.as_ref(), "--reply-key")?;
    sealed::check_name(name)?;
    let reply_key = sealed::parse_key_text(
        &String::from_utf8(read(reply_path)?).context("--reply-key is not text (x25519:<hex>)")?,
    )
    .with_context(|| format!("--reply-key {}", reply_path.display()))?;
    let plaintext = read(input_path)?;
    if plaintext.len() > sealed::MAX_INPUT_BYTES {
        bail!(
            "--input is {} bytes, a sealed input holds at most {}",
            plaintext.len(),
            sealed::MAX_INPUT_BYTES
        );
    }
    let policy = Policy::parse(&String::from_utf8(read(policy_path)?).context("policy is not UTF-8")?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", policy_path.display()))?;
    if policy.golden == Rule::Skip {
        bail!(
            "refused: the policy's golden rule is \"skip\": without a golden document any code could hold the TEE key"
        );
    }
    let golden_bytes = read(golden_path)?;
    let sig = crate::receipt_cmd::check_golden(golden_path, &golden_bytes, a.golden_key.as_deref())?;
    let golden = GoldenSet { files: vec![GoldenFile::new(golden_bytes, Some(sig))] };

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let timeout = Duration::from_secs(a.timeout);
    let (evidence, freshness) = match (&a.agent, &a.evidence) {
        (Some(agent), None) => {
            let (ev, nonce) = fresh_evidence(&rt, agent, timeout, Duration::from_secs(a.wait))?;
            (ev, format!("fresh from {agent} (nonce {})", hex::encode(nonce)))
        }
        (None, Some(file)) => {
            let msg: pb::Evidence =
                prost::Message::decode(read(file)?.as_slice()).context("evidence file is not Evidence")?;
            let ev = Evidence::try_from(msg).context("evidence file is malformed")?;
            (ev, format!("from {} (freshness not checked: the nonce is not this tool's)", file.display()))
        }
        _ => bail!("sealroom seal needs --agent URL or --evidence FILE"),
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))?;
    let activated = match (&a.agent, a.tpm_ek_ca.is_empty()) {
        (Some(agent), false) => {
            let files = a
                .tpm_ek_ca
                .iter()
                .map(|p| read(p).with_context(|| format!("--tpm-ek-ca {}", p.display())))
                .collect::<Result<Vec<_>>>()?;
            let cas = sealroom_verifier::tpm::ek::parse_ek_cas(&files)?;
            let at = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
            let ak = rt.block_on(crate::attest_cmd::activate_ek(agent, &cas, at, timeout))?;
            println!(
                "the agent's AK is resident in a TPM whose EK certificate chains to --tpm-ek-ca (activated)"
            );
            Some(ak)
        }
        _ => None,
    };
    let aks = crate::verify_cmd::read_enrolled_aks(&a.tpm_ak)?;
    let appraisal = VerifierAppraiser::with_pinned_tpm_aks(aks)
        .appraise_activated(&evidence, now_ms, activated.as_ref())
        .map_err(|e| anyhow::anyhow!("refused: evidence: {e}"))?;
    let verdict = policy.evaluate_at(&appraisal, &golden, LaunchStage::AwaitingSealedInputs);
    println!("evidence {freshness}");
    for (rule, outcome) in &verdict.rules {
        match outcome {
            Outcome::Pass(why) => println!("  pass  {rule}: {why}"),
            Outcome::Skipped => println!("  skip  {rule}"),
            Outcome::Fail(why) => println!("  FAIL  {rule}: {why}"),
        }
    }
    if let Some((_, reason)) = verdict.refusal() {
        bail!("refused: {reason}");
    }
    let events = appraisal.runtime_events();
    if events.iter().any(|e| matches!(e, RuntimeEvent::SealedInput { name: n, .. } if n == name)) {
        bail!("refused: the agent already holds a sealed input named {name}");
    }
    let output_to = events.iter().find_map(|e| match e {
        RuntimeEvent::SealedOutputTo(to) => Some(to.as_str()),
        _ => None,
    });
    let to_me =
        output_to.is_some_and(|to| to == format!("input:{name}") || to == sealed::key_text(&reply_key));
    match output_to {
        Some(to) if to_me => println!("the workload's output is sealed to {to}: your reply key"),
        Some(to) => println!("the workload's output is sealed to {to}: another party's key, not yours"),
        None => println!("the workload's output is not sealed: it leaves the VM in plaintext"),
    }
    if a.require_output_to_me && !to_me {
        bail!(
            "refused: --require-output-to-me: the workload's output goes {}",
            output_to.map_or_else(
                || "out in plaintext".to_owned(),
                |to| format!("to {to}, not to your reply key")
            )
        );
    }
    let tee = &evidence.tee_public_key;
    let tee_key: [u8; 32] = match (tee.kem(), tee.as_bytes().try_into()) {
        (Kem::X25519HkdfSha256, Ok(k)) => k,
        (kem, _) => bail!("refused: the evidence binds a {kem:?} TEE key; sealed inputs need X25519"),
    };
    let (enc, ciphertext) = seal::seal_x25519(
        &tee_key,
        &sealed::input_info(name, &reply_key),
        |enc| sealed::input_aad(name, &tee_key, &reply_key, enc),
        &plaintext,
        &SystemRandomness::new(),
    )
    .map_err(|e| anyhow::anyhow!("sealing: {e}"))?;
    let envelope = SealedInput { name: name.clone(), tee_key, reply_key, enc, ciphertext }.encode();
    println!(
        "sealed {} ({} bytes, sha256:{}) to TEE key {}, reply key {}",
        name,
        plaintext.len(),
        hex::encode(sealroom_measurements::digest::sha256(&plaintext)),
        sealed::key_text(&tee_key),
        sealed::key_text(&reply_key)
    );
    if let Some(out) = &a.out {
        std::fs::write(out, &envelope).with_context(|| format!("writing {}", out.display()))?;
        println!("written to {}", out.display());
    }
    if a.submit {
        let agent = required(a.agent.as_ref(), "--agent")?;
        let r = rt.block_on(submit(agent, name, envelope, timeout))?;
        println!("submitted: the agent measured sealed_input {name} {} as record {}", r.digest, r.recnum);
    }
    Ok(())
}

/// `Attestation.SubmitInput`; a refusal comes back as its one-line reason.
pub async fn submit(
    agent: &str,
    name: &str,
    sealed: Vec<u8>,
    timeout: Duration,
) -> Result<pb::SubmitInputResponse> {
    let r = crate::attest_cmd::connect_agent(agent, timeout)
        .await?
        .max_encoding_message_size(8 << 20)
        .submit_input(pb::SubmitInputRequest { name: name.to_owned(), sealed })
        .await
        .map_err(|s| anyhow::anyhow!("refused by the agent: {}", s.message()))?;
    Ok(r.into_inner())
}

fn keygen(k: &KeygenArgs) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut ikm = [0u8; 32];
    SystemRandomness::new().fill(&mut ikm).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
    let (private, public) =
        seal::derive_keypair(Kem::X25519HkdfSha256, &ikm).context("X25519 key derivation failed")?;
    let public: [u8; 32] = public.as_bytes().try_into().context("X25519 public key is not 32 bytes")?;
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&k.out).with_context(
            || format!("creating {} (an existing key is never overwritten)", k.out.display()),
        )?;
    f.write_all(format!("{}\n", hex::encode(&private)).as_bytes())
        .with_context(|| format!("writing {}", k.out.display()))?;
    std::fs::write(&k.public, format!("{}\n", sealed::key_text(&public)))
        .with_context(|| format!("writing {}", k.public.display()))?;
    println!("{}", sealed::key_text(&public));
    Ok(())
}

/// Reads a private key file `sealroom seal keygen --out` wrote: `(private, public)`.
///
/// # Errors
/// Unreadable, not 32 bytes of hex.
pub fn read_private_key(path: &Path) -> Result<(Vec<u8>, [u8; 32])> {
    let text = String::from_utf8(read(path)?).context("key file is not text")?;
    let private = hex::decode(text.trim()).ok().filter(|k| k.len() == 32).with_context(|| {
        format!("{}: expected 64 hex digits (sealroom seal keygen --out writes it)", path.display())
    })?;
    // X25519 public key = scalar multiplication of the base point, as HPKE's DeriveKeyPair computes it.
    let public = x25519_public(&private)?;
    Ok((private, public))
}

fn x25519_public(private: &[u8]) -> Result<[u8; 32]> {
    let sk = aws_lc_rs::agreement::PrivateKey::from_private_key(&aws_lc_rs::agreement::X25519, private)
        .map_err(|_| anyhow::anyhow!("not an X25519 private key"))?;
    let pk = sk.compute_public_key().map_err(|_| anyhow::anyhow!("X25519 public key"))?;
    pk.as_ref().try_into().context("X25519 public key is not 32 bytes")
}
