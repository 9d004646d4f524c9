//! `sealroom`: the host tool of data providers, orchestrators and auditors.
//!
//! Each subcommand lives in its own module; this file only dispatches.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod attest_cmd;
mod audit_cmd;
mod binding_cmd;
mod broker_cmd;
mod eventlog_cmd;
mod measure_cmd;
mod open_cmd;
mod receipt_cmd;
mod seal_cmd;
mod verdict;
mod verify_cmd;
mod verify_gpu;

/// mimalloc instead of glibc malloc: the key broker allocates and frees many small objects per release (evidence
/// decoding, certificate parsing, claims), and glibc's arenas spent about a quarter of a release's CPU in
/// `malloc_consolidate`, `_int_malloc` and `_int_free` (docs/broker-scaling.md, *Profile*).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sealroom: verify confidential-VM evidence, run the key broker, reproduce image measurements.
#[derive(Debug, Parser)]
#[command(name = "sealroom", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the binding digest and REPORT_DATA for a nonce and TEE public key.
    Binding(binding_cmd::Args),
    /// Run the key broker, manage its keys, explain its policy decisions.
    Broker(broker_cmd::Args),
    /// Fetch fresh evidence from a running agent (random nonce) and print the verifier's verdict.
    Attest(attest_cmd::Args),
    /// Verify a key broker's hash-chained audit log.
    Audit(audit_cmd::Args),
    /// Verify evidence offline (TDX and SGX quotes, SEV-SNP reports, GCE vTPM, Azure vTPM, sealroom Evidence, an
    /// NVIDIA GPU report) and print the EAR.
    #[command(after_help = verdict::EXIT_STATUS)]
    Verify(verify_cmd::Args),
    /// Predict a UKI's or disk image's boot measurements; check or write a signed golden document.
    Measure(measure_cmd::Args),
    /// Print and replay an event log (TPM UEFI, TDX CCEL, sealroom runtime CEL; detected).
    Eventlog(eventlog_cmd::Args),
    /// Check a workload's result directory and its output receipt offline (output digest, broker signature,
    /// golden registers, evidence).
    VerifyReceipt(receipt_cmd::Args),
    /// Verify an agent's evidence against a policy and golden document, then seal a file to its TEE key for the
    /// waiting workload (`seal keygen`: make a reply key pair).
    Seal(seal_cmd::Args),
    /// Decrypt a sealed output with the reply key and check it against the result's receipt.
    Open(open_cmd::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Binding(args) => binding_cmd::run(&args),
        Command::Broker(args) => broker_cmd::run(&args),
        Command::Attest(args) => attest_cmd::run(&args),
        Command::Audit(args) => audit_cmd::run(&args),
        Command::Verify(args) => {
            // No verdict (unreadable or unrecognised input): exit 4, apart from the verdicts' 0, 1 and 3.
            if let Err(e) = verify_cmd::run(&args) {
                eprintln!("error: {e:#}");
                std::process::exit(4)
            }
            Ok(())
        }
        Command::Measure(args) => measure_cmd::run(&args),
        Command::Eventlog(args) => eventlog_cmd::run(&args),
        Command::VerifyReceipt(args) => receipt_cmd::run(&args),
        Command::Seal(args) => seal_cmd::run(&args),
        Command::Open(args) => open_cmd::run(&args),
    }
}
