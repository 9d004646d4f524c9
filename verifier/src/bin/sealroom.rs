//! `sealroom`: the host tool of data providers, orchestrators and auditors.
use anyhow::Result;
use clap::{Parser, Subcommand};

/// sealroom: verify confidential-VM evidence, run the key broker, reproduce image measurements.
#[derive(Debug, Parser)]
#[command(name = "sealroom", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the binding digest and REPORT_DATA for a nonce and TEE public key (both hex).
    Binding {
        /// 32-byte nonce, hex.
        #[arg(long)]
        nonce: String,
        /// X25519 (32 bytes) or P-256 uncompressed (65 bytes) public key, hex.
        #[arg(long)]
        tee_public_key: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Binding { nonce, tee_public_key } => {
            use sealroom_measurements::binding::{Kem, Nonce, TeePublicKey, binding_digest, report_data};
            let nonce = Nonce::from_slice(&hex::decode(nonce)?)?;
            let key = hex::decode(tee_public_key)?;
            let kem = if key.len() == 32 { Kem::X25519HkdfSha256 } else { Kem::P256HkdfSha256 };
            let key = TeePublicKey::new(kem, key)?;
            println!("binding digest (TPM extraData): {}", hex::encode(binding_digest(&nonce, &key)));
            println!("REPORT_DATA (TDX, SEV-SNP):     {}", hex::encode(report_data(&nonce, &key)));
        }
    }
    Ok(())
}
