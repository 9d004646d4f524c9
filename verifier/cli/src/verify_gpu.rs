//! `sealroom verify --evidence REPORT --gpu-certs CHAIN --gpu-rims DIR --nonce HEX --at TIME`: one standalone
//! NVIDIA GPU attestation report verified offline (docs/gpu.md): signature, device chain to NVIDIA's pinned
//! root, nonce, and every measurement against the matching signed RIMs in DIR.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use sealroom_verifier::appraisal::EvidenceInput;
use sealroom_verifier::claims::Appraisal;
use sealroom_verifier::gpu::appraise::{GpuContext, GpuPolicy};
use sealroom_verifier::gpu::{
    GpuTrust, Revocation, VerifiedRim, verify_device_chain, verify_gpu_report, verify_rim,
};
use sealroom_verifier::x509::{Certificate, Crl, UnixTime, format_time};

/// A RIM file is at most this large (NVIDIA's are about 20 KiB).
const MAX_RIM_FILE: u64 = 1024 * 1024;
/// A report file (hex text or raw) is at most this large.
const MAX_REPORT_FILE: u64 = 256 * 1024;

/// The GPU inputs of `sealroom verify`.
#[derive(Debug, Clone)]
pub struct GpuInputs<'a> {
    /// The report: raw bytes or hex text (as NVIDIA's tools write it).
    pub report: &'a Path,
    /// The device certificate chain, PEM or DER, leaf first.
    pub certs: &'a Path,
    /// Directory of RIM files (every regular file is read).
    pub rims: Option<&'a Path>,
    /// CRL snapshots (PEM or DER) for offline revocation.
    pub crls: &'a [PathBuf],
    /// The expected nonce, hex (32 bytes).
    pub nonce: Option<&'a str>,
    /// Verification time.
    pub at: UnixTime,
    /// Print JSON claims instead of a table.
    pub json: bool,
}

fn read_limited(p: &Path, max: u64) -> Result<Vec<u8>> {
    let len = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?.len();
    if len > max {
        bail!("{}: {len} bytes, at most {max}", p.display());
    }
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

/// The report bytes: hex text (whitespace ignored) when the file is all hex digits, else raw.
fn report_bytes(raw: &[u8]) -> Result<Vec<u8>> {
    let compact: Vec<u8> = raw.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    if !compact.is_empty() && compact.iter().all(u8::is_ascii_hexdigit) {
        return hex::decode(&compact).context("report: hex text");
    }
    Ok(raw.to_vec())
}

fn load_rims(
    dir: &Path,
    trust: &GpuTrust,
    revocation: &Revocation,
    at: UnixTime,
) -> Result<Vec<VerifiedRim>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut rims = Vec::new();
    for f in &files {
        let xml = read_limited(f, MAX_RIM_FILE)?;
        // Every file in the directory must be an authentic, valid RIM: a bad one is an error, not skipped.
        rims.push(verify_rim(trust, &xml, revocation, at).with_context(|| format!("RIM {}", f.display()))?);
    }
    if rims.is_empty() {
        bail!("{}: no RIM files", dir.display());
    }
    Ok(rims)
}

/// Verifies the report and prints the verdict; `Ok(false)` when it was refused (reasons printed).
pub fn run(inputs: &GpuInputs<'_>) -> Result<bool> {
    let report = report_bytes(&read_limited(inputs.report, MAX_REPORT_FILE)?)?;
    let Some(nonce_hex) = inputs.nonce else {
        bail!("a GPU report needs --nonce: the value the report must carry (sealroom: the binding digest)");
    };
    let nonce: [u8; 32] = hex::decode(nonce_hex)
        .context("--nonce is not hex")?
        .try_into()
        .map_err(|_| anyhow::anyhow!("--nonce must be 32 bytes"))?;
    let Some(rim_dir) = inputs.rims else {
        bail!("a GPU report needs --gpu-rims DIR: the NVIDIA driver and VBIOS RIMs to compare with");
    };
    let revocation = read_crls(inputs.crls)?;
    let trust = GpuTrust::nvidia()?;
    let chain = Certificate::chain_from_pem_or_der(&read_limited(inputs.certs, MAX_RIM_FILE)?)
        .with_context(|| format!("{}", inputs.certs.display()))?;
    let outcome = verify_device_chain(&trust, &chain, &revocation, inputs.at).and_then(|chain| {
        let rims = load_rims(rim_dir, &trust, &revocation, inputs.at)
            .map_err(|e| sealroom_verifier::Error::Input(format!("{e:#}")))?;
        verify_gpu_report(&report, &chain, &rims, &nonce, inputs.at)
    });
    match outcome {
        Ok(claims) => {
            if inputs.json {
                println!("{}", serde_json::to_string_pretty(&claims)?);
            } else {
                println!("gpu            affirming");
                println!("architecture   {} ({})", claims.architecture.name(), claims.chip);
                println!("driver         {} (RIM {})", claims.driver_version, claims.driver_rim_id);
                println!("vbios          {} (RIM {})", claims.vbios_version, claims.vbios_rim_id);
                println!("measurements   {} compared, all match", claims.measurements_compared);
                println!(
                    "fwid           {}",
                    if claims.fwid_bound { "bound to the certificate" } else { "not reported" }
                );
                println!("revocation     {}", claims.revocation);
                println!("verified at {}", format_time(inputs.at));
            }
            Ok(true)
        }
        Err(e) => {
            for reason in e.reasons() {
                println!("failed: {reason}");
            }
            let first = e.reasons().into_iter().next().unwrap_or_default();
            eprintln!("refused: {first}");
            Ok(false)
        }
    }
}

/// The GPU trust inputs of `sealroom verify` for sealroom Evidence: NVIDIA's pinned roots and the RIMs in
/// `rims`, verified at `at` (`None` without `--gpu-rims`: evidence carrying GPUs then fails the gpu layer).
///
/// # Errors
/// An unreadable directory or a RIM that does not verify.
pub fn gpu_context(rims: Option<&Path>, at: UnixTime) -> Result<Option<GpuContext>> {
    let Some(dir) = rims else { return Ok(None) };
    let trust = GpuTrust::nvidia()?;
    let rims = load_rims(dir, &trust, &Revocation::NotChecked, at)?;
    Ok(Some(GpuContext { trust, rims, revocation: Revocation::NotChecked }))
}

/// The GPU trust inputs of `sealroom broker serve --gpu-rims DIR [--gpu-crl CRL]…`, verified at `at`.
///
/// # Errors
/// An unreadable file, a CRL that does not parse, a RIM that does not verify, or no RIM at all.
pub fn gpu_context_with_crls(dir: &Path, crls: &[PathBuf], at: UnixTime) -> Result<GpuContext> {
    let revocation = read_crls(crls)?;
    let trust = GpuTrust::nvidia()?;
    let rims =
        load_rims(dir, &trust, &revocation, at).with_context(|| format!("--gpu-rims {}", dir.display()))?;
    Ok(GpuContext { trust, rims, revocation })
}

fn read_crls(crls: &[PathBuf]) -> Result<Revocation> {
    if crls.is_empty() {
        return Ok(Revocation::NotChecked);
    }
    let crls = crls
        .iter()
        .map(|p| Ok(Crl::from_any(&read_limited(p, MAX_RIM_FILE)?)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Revocation::Crls(crls))
}

/// Applies the GPU rules in `policy` (`--gpu-policy`; without it: a present GPU must be a Hopper) to the
/// appraisal, whose gpu layer the verifier already ran.
///
/// # Errors
/// An unreadable or invalid policy file.
pub fn apply_gpu_policy(ear: &mut Appraisal, input: &EvidenceInput, policy: Option<&Path>) -> Result<()> {
    let policy = match policy {
        None => GpuPolicy::default(),
        Some(p) => serde_json::from_slice(&read_limited(p, MAX_RIM_FILE)?)
            .with_context(|| format!("--gpu-policy {}", p.display()))?,
    };
    let can_carry_gpus = matches!(input, EvidenceInput::Sealroom(_));
    sealroom_verifier::gpu::appraise::apply_gpu_policy(ear, &policy, can_carry_gpus);
    Ok(())
}
