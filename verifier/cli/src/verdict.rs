//! What `sealroom verify` and `sealroom attest` judge against (reference values, explicit skips, accepted TCB
//! statuses) and how their verdict ends the process (exit status, one line per reason).
//!
//! A measured layer is either compared with reference values, skipped because the user said so (`--skip`, or
//! `"skip"` in a `--reference` file), or reported as not checked: then the verdict is a warning naming it. So
//! "affirming" never hides a check nobody made.
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use sealroom_verifier::appraisal::{EvidenceInput, Layer, Policy, Reference, ReferenceValues};
use sealroom_verifier::claims::Appraisal;
use sealroom_verifier::ear::Status;
use sealroom_verifier::tdx::TcbStatus;

/// The exit statuses, as `--help` prints them.
pub const EXIT_STATUS: &str = "\
Exit status:
  0  affirming: every check passed and every measured layer was compared with reference values or skipped by
     choice (--skip, or \"skip\" in --reference)
  1  contraindicated: a check failed; stderr says `refused (contraindicated): <first reason>`
  2  usage error (unknown or conflicting options)
  3  warning: nothing failed, but something was not checked or is not up to date; stderr has one
     `warning: <reason>` line per reason (e.g. `warning: tdx: no collateral: TCB status not evaluated …`,
     `warning: kernel: not checked: no reference values given (pcr4.sha256, …)`)
  4  no verdict: the evidence or another input could not be read or recognised; stderr says why
";

/// A measured layer named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LayerName {
    /// PCR 0-3, 5-7, MRTD, RTMR0, SNP MEASUREMENT.
    Firmware,
    /// PCR 4, 9, 11, 12, RTMR1, RTMR2.
    Kernel,
    /// PCR 15, RTMR3, SGX MRENCLAVE/MRSIGNER.
    Workload,
}

impl From<LayerName> for Layer {
    fn from(l: LayerName) -> Self {
        match l {
            LayerName::Firmware => Self::Firmware,
            LayerName::Kernel => Self::Kernel,
            LayerName::Workload => Self::Workload,
        }
    }
}

fn parse_tcb_status(s: &str) -> std::result::Result<TcbStatus, String> {
    s.parse::<TcbStatus>().map_err(|e| e.to_string())
}

/// Reference values and explicit choices, shared by `verify` and `attest`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReferenceArgs {
    /// Reference values (JSON: {"firmware": {...} | "skip", "kernel": …, "workload": …}). Without it (and
    /// without --golden) no measured layer is checked, and the verdict is a warning naming each one unless it
    /// is skipped with --skip.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// A signed golden measurement document (`golden.json`, its signature in `<FILE>.sig`): the registers it
    /// predicts (PCR 4, 9, 11, 12 of each quoted bank; RTMR1, RTMR2) become the kernel layer's reference values;
    /// the layers it does not cover are not checked (a warning) unless skipped with --skip.
    #[arg(long, value_name = "GOLDEN_JSON", conflicts_with = "reference")]
    golden: Option<PathBuf>,
    /// The golden document's signer: a raw Ed25519 public key (hex) or a file holding it. Default: the release
    /// key pinned in this build.
    #[arg(long, value_name = "HEX_OR_FILE", requires = "golden")]
    golden_key: Option<String>,
    /// Measured layers not to check, by choice (comma-separated or repeated): firmware, kernel, workload. A
    /// skipped layer does not make the verdict a warning; one that has reference values cannot be skipped.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LAYERS")]
    skip: Vec<LayerName>,
    /// Also accept this Intel TCB status (TDX and SGX quotes with collateral) without a warning, besides
    /// UpToDate; repeatable or comma-separated (e.g. SWHardeningNeeded,ConfigurationAndSWHardeningNeeded).
    #[arg(long, value_parser = parse_tcb_status, value_delimiter = ',', value_name = "STATUS")]
    tcb_status: Vec<TcbStatus>,
}

impl ReferenceArgs {
    /// The appraisal policy: the reference values given, the explicit skips, and the accepted TCB statuses.
    pub fn policy(&self, input: &EvidenceInput) -> Result<Policy> {
        let mut policy = Policy::default();
        let source = if let Some(p) = &self.golden {
            let golden = crate::verify_cmd::load_golden(p, self.golden_key.as_deref())?;
            policy.references = golden.reference_values(input)?;
            policy.id = golden.policy_id();
            // A golden document covers some layers; the others were not chosen to be skipped by anyone.
            for layer in Layer::ALL {
                let r = policy.references.layer_mut(layer);
                if matches!(r, Reference::Skip(_)) {
                    *r = Reference::NotGiven;
                }
            }
            "--golden"
        } else if let Some(p) = &self.reference {
            let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            policy.references = ReferenceValues::from_json(&text)?;
            policy.id = format!(
                "sealroom/{}",
                p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            );
            "--reference"
        } else {
            ""
        };
        for &name in &self.skip {
            let layer = Layer::from(name);
            let r = policy.references.layer_mut(layer);
            if let Reference::Digests(_) = r {
                bail!("--skip {}: {source} gives reference values for that layer", layer.name());
            }
            *r = Reference::skip();
        }
        for s in &self.tcb_status {
            if !policy.tcb_statuses.contains(s) {
                policy.tcb_statuses.push(*s);
            }
        }
        Ok(policy)
    }
}

/// Ends the process with the verdict's exit status, after one stderr line per reason: `refused (status):
/// <first failure>` when a check failed, `warning: <reason>` per warning otherwise.
pub fn exit_with(ear: &Appraisal) -> ! {
    match ear.status() {
        Status::Affirming => std::process::exit(0),
        Status::Warning => {
            let warnings = ear.warnings();
            if warnings.is_empty() {
                eprintln!(
                    "warning: status warning without a recorded reason (a verifier bug: please report)"
                );
            }
            for w in warnings {
                eprintln!("warning: {w}");
            }
            std::process::exit(3)
        }
        status => {
            let first = ear.failures().first().cloned().unwrap_or_else(|| format!("status {status}"));
            eprintln!("refused ({status}): {first}");
            std::process::exit(1)
        }
    }
}
