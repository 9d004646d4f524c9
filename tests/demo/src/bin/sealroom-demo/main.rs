//! `sealroom-demo`: the README's scenarios end to end on this machine, every part real (what `ci/demo` runs).
//!
//! - `clean-room` (the seed scenario): one data provider's sealed table; its key is released only to the
//!   approved research job; the result carries an output receipt; a modified job gets no key.
//! - `multi-party`: two hospitals, each with its own broker, key, policy and audit log, each seal half of the
//!   table; the joint model trains only when both release; with one approval withdrawn, the job does not run.
//! - `private-inference`: a model owner's coefficients (key material in its broker) and a user's patient
//!   record (sealed to the attested TEE) meet only inside the VM; the prediction leaves sealed to the user;
//!   neither the record nor the coefficients appear in plaintext anywhere the operator looks.
//!
//! With no `--scenario`, all three run in that order. Exit status 0 when every scenario's checks passed;
//! `--only refused` runs a scenario's refusal half alone and exits 1 when refused as expected, as it does for
//! its user; 2: anything else went wrong. Progress: one line per step with its time.

mod clean_room;
mod common;
mod multi_party;
mod private_inference;
mod provider;
mod vm_run;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use sealroom_tests::registry::Registry;
use sealroom_tests::vm;

use crate::common::{GuestImage, Shared, fresh_dir, step};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// One data provider, an approved and a modified job.
    CleanRoom,
    /// Two hospitals with their own brokers; a joint model, then one approval withdrawn.
    MultiParty,
    /// A model owner's coefficients and a user's sealed record; the prediction sealed to the user.
    PrivateInference,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::CleanRoom => "clean-room",
            Self::MultiParty => "multi-party",
            Self::PrivateInference => "private-inference",
        }
    }
}

/// What runs without `--scenario`: all three, in this order.
const DEFAULT_SCENARIOS: &[Scenario] =
    &[Scenario::CleanRoom, Scenario::MultiParty, Scenario::PrivateInference];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// The run that should succeed.
    Approved,
    /// The run that should be refused (clean-room: the modified job; multi-party: approval withdrawn).
    #[value(alias = "modified")]
    Refused,
}

/// What a scenario reports.
#[derive(Debug)]
pub struct Outcome {
    /// One line per run.
    pub summary: Vec<String>,
    /// Only the refusal half ran: it exits 1, as it does for its user.
    pub refusal_only: bool,
}

/// The README's scenarios on this machine.
#[derive(Debug, clap::Parser)]
struct Args {
    /// The built guest image (disk.raw, golden.json, golden.json.sig), as `ci/image` writes it.
    #[arg(long, default_value_os_t = vm::image_dir())]
    image_dir: PathBuf,
    /// The golden document's signer: the PKCS#8 signing key `ci/image --golden-key` used (its public key is
    /// derived), or a hex public key.
    #[arg(long, default_value_os_t = sealroom_tests::repo_root().join("target/image/ci-test-key.pk8"))]
    golden_key: PathBuf,
    /// Working directory; each scenario's WORK/NAME is replaced when it runs and keeps its result.
    #[arg(long, default_value_os_t = sealroom_tests::repo_root().join("target/demo"))]
    work: PathBuf,
    /// The scenario to run (repeatable); all three when absent.
    #[arg(long, value_enum)]
    scenario: Vec<Scenario>,
    /// Run one half of each scenario only.
    #[arg(long, value_enum)]
    only: Option<Only>,
}

fn main() -> std::process::ExitCode {
    let args = <Args as clap::Parser>::parse();
    let started = Instant::now();
    let result = run(&args);
    let total = started.elapsed().as_secs_f64();
    match result {
        Ok(code) => {
            println!("[demo] total wall time {total:.1} s");
            code
        }
        Err(e) => {
            println!("[demo] FAILED after {total:.1} s: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<std::process::ExitCode> {
    let scenarios = if args.scenario.is_empty() { DEFAULT_SCENARIOS.to_vec() } else { args.scenario.clone() };
    let names: Vec<&str> = scenarios.iter().map(|s| s.name()).collect();
    println!(
        "[demo] sealroom scenarios: {}\n[demo] image {}; work {}",
        names.join(", "),
        args.image_dir.display(),
        args.work.display()
    );
    let image = GuestImage::open(&args.image_dir, &args.golden_key)?;
    std::fs::create_dir_all(&args.work)?;
    let job =
        step("researcher: build the job (static Rust binary: ridge regression, train or predict)", || {
            sealroom_demo::build_job_binary().map_err(anyhow::Error::msg)
        })?;
    let registry = step("a loopback docker-registry for the job images", || {
        Registry::start().map_err(anyhow::Error::msg)
    })?;
    let shared = Shared { image, job, registry };
    let mut lines = Vec::new();
    let mut refusal_only = false;
    for sc in scenarios {
        if sc == Scenario::PrivateInference && args.only == Some(Only::Refused) && args.scenario.is_empty() {
            println!("[demo] scenario private-inference has no refusal half: skipped with --only refused");
            continue;
        }
        let t = Instant::now();
        let dir = fresh_dir(&args.work, sc.name())?;
        let outcome = match sc {
            Scenario::CleanRoom => clean_room::run(&shared, &dir, args.only),
            Scenario::MultiParty => multi_party::run(&shared, &dir, args.only),
            Scenario::PrivateInference => private_inference::run(&shared, &dir, args.only),
        }
        .map_err(|e| e.context(format!("scenario {}", sc.name())))?;
        println!("[demo] scenario {} passed in {:.1} s", sc.name(), t.elapsed().as_secs_f64());
        lines.extend(outcome.summary.iter().map(|l| format!("{}: {l}", sc.name())));
        refusal_only |= outcome.refusal_only;
    }
    println!("[demo] summary");
    for l in &lines {
        println!("[demo]   {l}");
    }
    // The refusal half on its own fails, as it does for its user.
    Ok(if refusal_only { std::process::ExitCode::from(1) } else { std::process::ExitCode::SUCCESS })
}
