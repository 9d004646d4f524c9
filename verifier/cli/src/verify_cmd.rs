//! `sealroom verify`: judge one piece of evidence offline and print the attestation result (EAR).
//!
//! The input kind is detected from the bytes (`sealroom_verifier::evidence_kind`): a TDX or SGX DCAP quote, a raw SEV-SNP
//! report (its VCEK/VLEK from `--vcek` or the collateral directory), Azure vTPM evidence JSON, sealroom
//! `Evidence` protobuf or a go-tpm-tools GCE `Attestation` protobuf, each raw or as hex text. The exit status
//! says affirming, contraindicated, warning or no verdict (`crate::verdict::EXIT_STATUS`), with one line per
//! reason.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use sealroom_verifier::appraisal::{Context, EvidenceInput, appraise};
use sealroom_verifier::evidence_kind::{Detected, detect};
use sealroom_verifier::golden_refs::GoldenReferences;
use sealroom_verifier::snp::EndorsementCache;
use sealroom_verifier::snp::endorsement::verify_endorsement;
use sealroom_verifier::snp::report::SnpReport;
use sealroom_verifier::snp::verify::check_signature;
use sealroom_verifier::tdx;
use sealroom_verifier::x509::{Certificate, UnixTime, format_time, parse_time};

use crate::verdict::ReferenceArgs;

/// Arguments of `sealroom verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The evidence file: a TDX (v4/v5) or SGX (v3/v5) DCAP quote, an SEV-SNP report, Azure vTPM evidence JSON,
    /// sealroom Evidence or a GCE attestation (protobuf); binary kinds raw or as hex text.
    #[arg(long)]
    evidence: PathBuf,
    /// Collateral: for SEV-SNP reports a directory holding the VCEK/VLEK; for TDX and SGX quotes Intel
    /// collateral (a dcap-qvl QuoteCollateralV3 JSON file or a directory of PCS files). Without it a quote's
    /// TCB status is not evaluated (a warning).
    #[arg(long)]
    collateral: Option<PathBuf>,
    /// VCEK or VLEK certificate (DER or PEM) for a raw SEV-SNP report.
    #[arg(long)]
    vcek: Option<PathBuf>,
    /// Verification time: RFC 3339 ("2025-06-01T00:00:00Z") or Unix seconds. Default: now.
    #[arg(long)]
    at: Option<String>,
    /// The expected nonce (hex). Without it freshness is reported as not checked.
    #[arg(long)]
    nonce: Option<String>,
    #[command(flatten)]
    references: ReferenceArgs,
    /// Accept SEV-SNP guests whose policy allows debugging.
    #[arg(long)]
    allow_debug: bool,
    /// Print the EAR as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// An enrolled TPM attestation key (marshalled TPMT_PUBLIC file) to trust instead of Google's AK CA, e.g. a
    /// swtpm's or an on-premises TPM's; repeatable.
    #[arg(long = "tpm-ak")]
    tpm_ak: Vec<PathBuf>,
    /// Not offline: an EK CA vouches for an AK only through credential activation with the live TPM, which
    /// evidence cannot carry. Refused with that reason (exit 4); use `sealroom attest --tpm-ek-ca CA
    /// --tpm-ak-out ak.bin --out ev.pb`, then `sealroom verify --evidence ev.pb --tpm-ak ak.bin`.
    #[arg(long = "tpm-ek-ca", value_name = "CA")]
    tpm_ek_ca: Vec<PathBuf>,
    /// `--evidence` is a standalone NVIDIA GPU attestation report (hex text or raw) and this is its device
    /// certificate chain (PEM or DER, leaf first); needs --gpu-rims and --nonce. See docs/gpu.md.
    #[arg(long, value_name = "CHAIN")]
    gpu_certs: Option<PathBuf>,
    /// Directory of NVIDIA RIMs (signed SWID tags): the driver and VBIOS RIMs for a standalone GPU report, or
    /// for the GPUs inside sealroom Evidence (then judged in a `gpu` layer of the EAR).
    #[arg(long, value_name = "DIR")]
    gpu_rims: Option<PathBuf>,
    /// GPU rules for sealroom Evidence (JSON: {"gpu_required": bool, "allowed_architectures": ["hopper"],
    /// "driver_rims": [ids] | "skip", "vbios_rims": [ids] | "skip"}). Default: no GPU required; a GPU present
    /// must be a Hopper whose RIMs (any release) match.
    #[arg(long, value_name = "JSON")]
    gpu_policy: Option<PathBuf>,
    /// A CRL snapshot (PEM or DER) for offline revocation of the GPU and RIM chains; repeatable. Without any,
    /// the verdict says "revocation not checked".
    #[arg(long = "gpu-crl", value_name = "CRL", requires = "gpu_certs")]
    gpu_crl: Vec<PathBuf>,
}

/// Why `--tpm-ek-ca` cannot judge offline evidence.
pub const EK_CA_OFFLINE: &str = "--tpm-ek-ca: an EK certificate vouches for an AK only through credential \
    activation (TPM2_MakeCredential / TPM2_ActivateCredential) with the live TPM, and the EK cannot sign, so no \
    evidence file can prove it offline; run `sealroom attest --agent URL --tpm-ek-ca CA --out ev.pb --tpm-ak-out \
    ak.bin`, then `sealroom verify --evidence ev.pb --tpm-ak ak.bin`";

/// Reads enrolled TPM AK public areas (marshalled TPMT_PUBLIC, at most 1 KiB each).
pub fn read_enrolled_aks(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).with_context(|| format!("reading TPM AK {}", p.display()))?;
            if bytes.is_empty() || bytes.len() > 1024 {
                bail!("TPM AK {}: {} bytes is not a TPMT_PUBLIC", p.display(), bytes.len());
            }
            Ok(bytes)
        })
        .collect()
}

fn parse_at(text: Option<&str>) -> Result<UnixTime> {
    match text {
        None => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))?),
        Some(t) if !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()) => Ok(t.parse()?),
        Some(t) => Ok(parse_time(t)?),
    }
}

fn first_cert_der(bytes: &[u8]) -> Option<Vec<u8>> {
    Certificate::chain_from_pem_or_der(bytes).ok()?.into_iter().next().map(|c| c.der().to_vec())
}

/// Finds the VCEK/VLEK: `--vcek`, else the certificate in the collateral directory that chains to an AMD root
/// and whose key signed this report (the first that chains, when none did).
fn find_endorsement(args: &Args, report: &[u8]) -> Result<Vec<u8>> {
    if let Some(p) = &args.vcek {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        return first_cert_der(&bytes).with_context(|| format!("{}: no certificate", p.display()));
    }
    let Some(dir) = &args.collateral else {
        bail!("a raw SEV-SNP report needs its VCEK/VLEK: pass --vcek or --collateral <dir>");
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    let parsed = SnpReport::parse(report)?;
    let mut chaining = None;
    for p in &entries {
        if let Ok(bytes) = std::fs::read(p)
            && let Some(der) = first_cert_der(&bytes)
            && let Ok(e) = verify_endorsement(&der)
        {
            if check_signature(report, &parsed, &e).is_ok() {
                return Ok(der);
            }
            chaining.get_or_insert(der);
        }
    }
    chaining.with_context(|| format!("no VCEK/VLEK chaining to an AMD root in {}", dir.display()))
}

/// The evidence as the appraisal takes it: a raw SEV-SNP report gets its VCEK/VLEK here.
fn evidence_input(detected: Detected, args: &Args) -> Result<EvidenceInput> {
    match detected.into_input() {
        Ok(input) => Ok(input),
        Err(report) => {
            let endorsement = find_endorsement(args, &report)?;
            Ok(EvidenceInput::SnpReport { report, endorsement })
        }
    }
}

/// Whether the evidence holds a DCAP quote, for which `--collateral` is Intel collateral.
fn needs_intel_collateral(input: &EvidenceInput) -> bool {
    match input {
        EvidenceInput::TdxQuote(_) | EvidenceInput::SgxQuote(_) => true,
        EvidenceInput::Azure(a) => a.td_quote.is_some(),
        EvidenceInput::Sealroom(e) => {
            e.tdx.is_some() || e.azure.as_ref().is_some_and(|a| !a.td_quote.is_empty())
        }
        _ => false,
    }
}

/// Reads a signed golden document (signature in `<FILE>.sig`) and checks its signature under `key` (hex or a
/// file holding hex), or under the pinned release key.
pub fn load_golden(path: &Path, key: Option<&str>) -> Result<GoldenReferences> {
    let doc = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut sig_path = path.as_os_str().to_owned();
    sig_path.push(".sig");
    let sig_path = PathBuf::from(sig_path);
    let sig =
        std::fs::read_to_string(&sig_path).with_context(|| format!("reading {}", sig_path.display()))?;
    let golden = match key {
        None => GoldenReferences::verify_pinned(&doc, &sig),
        Some(k) if k.len() == 64 && k.bytes().all(|c| c.is_ascii_hexdigit()) => {
            GoldenReferences::verify(&doc, &sig, k)
        }
        Some(file) => {
            let k = std::fs::read_to_string(file).with_context(|| format!("reading --golden-key {file}"))?;
            GoldenReferences::verify(&doc, &sig, k.trim())
        }
    };
    golden.with_context(|| format!("{}", path.display()))
}

pub fn run(args: &Args) -> Result<()> {
    if let Some(certs) = &args.gpu_certs {
        let inputs = crate::verify_gpu::GpuInputs {
            report: &args.evidence,
            certs,
            rims: args.gpu_rims.as_deref(),
            crls: &args.gpu_crl,
            nonce: args.nonce.as_deref(),
            at: parse_at(args.at.as_deref())?,
            json: args.json,
        };
        if !crate::verify_gpu::run(&inputs)? {
            std::process::exit(1)
        }
        return Ok(());
    }
    if !args.tpm_ek_ca.is_empty() {
        bail!("{EK_CA_OFFLINE}");
    }
    let bytes = read(&args.evidence)?;
    let detected = detect(&bytes).with_context(|| format!("{}", args.evidence.display()))?;
    let input = evidence_input(detected, args)?;
    let at = parse_at(args.at.as_deref())?;
    let nonce = args.nonce.as_deref().map(hex::decode).transpose().context("--nonce is not hex")?;
    let mut policy = args.references.policy(&input)?;
    policy.snp.allow_debug = args.allow_debug;
    let cache = EndorsementCache::default();
    let tdx_collateral = match &args.collateral {
        Some(dir) if needs_intel_collateral(&input) => Some(tdx::Collateral::load(dir)?.verify(at)?),
        _ => None,
    };
    let enrolled = read_enrolled_aks(&args.tpm_ak)?;
    let gpu = crate::verify_gpu::gpu_context(args.gpu_rims.as_deref(), at)?;
    let ctx = Context {
        at,
        nonce,
        snp_cache: &cache,
        tdx_collateral: tdx_collateral.as_ref(),
        tdx_root: None,
        enrolled_tpm_aks: &enrolled,
        tpm_ek_activated: None,
        gpu: gpu.as_ref(),
    };
    let mut ear = appraise(&input, &policy, &ctx);
    crate::verify_gpu::apply_gpu_policy(&mut ear, &input, args.gpu_policy.as_deref())?;
    if args.json {
        println!("{}", ear.to_json());
    } else {
        print!("{}", ear.to_table());
        if args.nonce.is_none() {
            println!("note: no --nonce given: freshness not checked");
        }
        println!("verified at {}", format_time(at));
    }
    crate::verdict::exit_with(&ear)
}

/// Evidence files larger than this are refused before reading (the largest evidence, with a 1 MiB event log
/// and a runtime log, stays far below).
const MAX_EVIDENCE: u64 = 16 * 1024 * 1024;

fn read(p: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?.len();
    if len > MAX_EVIDENCE {
        bail!("{}: {len} bytes, evidence is at most {MAX_EVIDENCE}", p.display());
    }
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}
