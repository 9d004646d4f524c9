//! `sealroom`: the host tool of data providers, orchestrators and auditors.
//!
//! Each subcommand lives in its own module; this file only dispatches.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod binding_cmd;

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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Binding(args) => binding_cmd::run(&args),
    }
}
