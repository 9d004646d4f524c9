//! `sealroom attest`: ask a running agent for fresh evidence and print the verifier's verdict.
//!
//! A fresh 32-byte nonce comes from the OS random generator; the agent binds it (with its TEE key) into the
//! quote/report, and the appraisal checks that binding together with every other layer. Exit status as
//! `sealroom verify`'s (0 affirming, 1 contraindicated, 3 warning with one line per reason), except that an
//! agent or input that fails exits 1.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use sealroom_measurements::evidence::Evidence;
use sealroom_proto::attestation::v1 as pb;
use sealroom_proto::attestation::v1::attestation_client::AttestationClient;
use sealroom_verifier::appraisal::{Context, EvidenceInput, appraise};
use sealroom_verifier::snp::EndorsementCache;
use sealroom_verifier::tdx;
use sealroom_verifier::tpm::credential::{ActivatedAk, SECRET_LEN, accept_activation, issue_challenge};
use sealroom_verifier::x509::format_time;

/// Arguments of `sealroom attest`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent's gRPC endpoint, e.g. http://127.0.0.1:7443.
    #[arg(long)]
    agent: String,
    #[command(flatten)]
    references: crate::verdict::ReferenceArgs,
    /// Intel collateral for TDX evidence (a dcap-qvl QuoteCollateralV3 JSON file or a directory of PCS files).
    #[arg(long)]
    collateral: Option<PathBuf>,
    /// Write the evidence received (protobuf) here, for a later `sealroom verify`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seconds to wait for the agent.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Print the EAR as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// An enrolled TPM attestation key (marshalled TPMT_PUBLIC file) to trust instead of Google's AK CA, e.g. a
    /// swtpm's or an on-premises TPM's; repeatable.
    #[arg(long = "tpm-ak")]
    tpm_ak: Vec<PathBuf>,
    /// TPM EK CA certificates (PEM, possibly several, or DER); repeatable. With it the agent's AK is trusted
    /// only after credential activation: the agent's EK certificate must chain to one of these, and its TPM
    /// must recover a secret made for that EK and this AK (TPM2_MakeCredential / TPM2_ActivateCredential), as
    /// keylime's registrar does. No trust on first use.
    #[arg(long = "tpm-ek-ca")]
    tpm_ek_ca: Vec<PathBuf>,
    /// Write the AK that credential activation proved resident in the EK-certified TPM (marshalled
    /// TPMT_PUBLIC) here, written only once activation succeeded: what a later offline `sealroom verify
    /// --tpm-ak` pins, since offline evidence cannot prove activation itself (docs/tpm-ek.md).
    #[arg(long, value_name = "FILE", requires = "tpm_ek_ca")]
    tpm_ak_out: Option<PathBuf>,
}

/// A gRPC `Attestation` client for the agent at `agent` (its `--agent` URI), with `timeout` for connecting and
/// for every request: what `attest`, `seal` and their EK activation share, so they fail alike and say which
/// `--agent` was wrong or unreachable.
pub(crate) async fn connect_agent(
    agent: &str,
    timeout: Duration,
) -> Result<AttestationClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Channel::from_shared(agent.to_owned())
        .with_context(|| format!("--agent {agent} is not a URI"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("connecting to {agent}"))?;
    Ok(AttestationClient::new(channel))
}

/// The EK path against a live agent: its EK certificate checked against `cas`, a credential for its AK made with
/// a fresh random secret, activated by its TPM and compared.
pub(crate) async fn activate_ek(
    agent: &str,
    cas: &[sealroom_verifier::x509::Certificate],
    at: sealroom_verifier::x509::UnixTime,
    timeout: Duration,
) -> Result<ActivatedAk> {
    let mut client = connect_agent(agent, timeout).await?;
    let id = client
        .get_tpm_identity(pb::GetTpmIdentityRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("refused: agent has no TPM identity: {}", s.message()))?
        .into_inner();
    let mut secret = [0u8; SECRET_LEN];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| anyhow::anyhow!("no randomness for the credential"))?;
    let (_, credential) = issue_challenge(&id.ek_certificate, &[], cas, &id.ak_public, &secret, at)
        .map_err(|e| anyhow::anyhow!("refused: {e}"))?;
    let returned = client
        .activate_credential(pb::ActivateCredentialRequest {
            credential: Some(pb::TpmCredential {
                id_object: credential.id_object,
                encrypted_secret: credential.encrypted_secret,
            }),
        })
        .await
        .map_err(|s| {
            anyhow::anyhow!("refused: the agent's TPM did not activate the credential: {}", s.message())
        })?
        .into_inner()
        .secret;
    accept_activation(&id.ek_certificate, &[], cas, &id.ak_public, &secret, &returned, at)
        .map_err(|e| anyhow::anyhow!("refused: {e}"))
}

pub(crate) async fn fetch(agent: &str, nonce: &[u8; 32], timeout: Duration) -> Result<pb::Evidence> {
    let mut client = connect_agent(agent, timeout).await?;
    let resp = client
        .get_evidence(pb::GetEvidenceRequest { nonce: nonce.to_vec(), tee_public_key: Vec::new() })
        .await
        .map_err(|s| anyhow::anyhow!("agent refused GetEvidence: {:?}: {}", s.code(), s.message()))?;
    resp.into_inner().evidence.context("agent answered without evidence")
}

pub fn run(args: &Args) -> Result<()> {
    let mut nonce = [0u8; 32];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| anyhow::anyhow!("no randomness for the nonce"))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))?;
    let activated = if args.tpm_ek_ca.is_empty() {
        None
    } else {
        let files = args
            .tpm_ek_ca
            .iter()
            .map(|p| std::fs::read(p).with_context(|| format!("reading --tpm-ek-ca {}", p.display())))
            .collect::<Result<Vec<_>>>()?;
        let cas = sealroom_verifier::tpm::ek::parse_ek_cas(&files)?;
        match rt.block_on(activate_ek(&args.agent, &cas, at, Duration::from_secs(args.timeout))) {
            Ok(a) => {
                if let Some(path) = &args.tpm_ak_out {
                    std::fs::write(path, a.ak_public())
                        .with_context(|| format!("writing --tpm-ak-out {}", path.display()))?;
                }
                Some(a)
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1)
            }
        }
    };
    let msg = rt.block_on(fetch(&args.agent, &nonce, Duration::from_secs(args.timeout)))?;
    if let Some(out) = &args.out {
        std::fs::write(out, prost::Message::encode_to_vec(&msg))
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let evidence = Evidence::try_from(msg).context("agent evidence is malformed")?;
    if evidence.nonce.0 != nonce {
        bail!(
            "refused: the agent echoed nonce {} instead of {}",
            hex::encode(evidence.nonce.0),
            hex::encode(nonce)
        );
    }
    let input = EvidenceInput::Sealroom(Box::new(evidence));
    let policy = args.references.policy(&input)?;
    let has_tdx = matches!(&input, EvidenceInput::Sealroom(e) if e.tdx.is_some());
    let tdx_collateral = match &args.collateral {
        Some(dir) if has_tdx => Some(tdx::Collateral::load(dir)?.verify(at)?),
        _ => None,
    };
    let cache = EndorsementCache::default();
    let enrolled = super::verify_cmd::read_enrolled_aks(&args.tpm_ak)?;
    let ctx = Context {
        at,
        nonce: Some(nonce.to_vec()),
        snp_cache: &cache,
        tdx_collateral: tdx_collateral.as_ref(),
        tdx_root: None,
        enrolled_tpm_aks: &enrolled,
        tpm_ek_activated: activated.as_ref(),
        gpu: None,
    };
    let ear = appraise(&input, &policy, &ctx);
    if args.json {
        println!("{}", ear.to_json());
    } else {
        println!("agent {} nonce {}", args.agent, hex::encode(nonce));
        print!("{}", ear.to_table());
        println!("verified at {}", format_time(at));
    }
    crate::verdict::exit_with(&ear)
}
