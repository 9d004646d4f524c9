//! `sealroom binding`: recompute the binding values an auditor expects in a quote.
use anyhow::Result;
use sealroom_measurements::binding::{Kem, Nonce, TeePublicKey, binding_digest, report_data};

/// Arguments of `sealroom binding`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// 32-byte nonce, hex.
    #[arg(long)]
    nonce: String,
    /// X25519 (32 bytes) or P-256 uncompressed (65 bytes) public key, hex.
    #[arg(long)]
    tee_public_key: String,
}

pub fn run(args: &Args) -> Result<()> {
    let nonce = Nonce::from_slice(&hex::decode(&args.nonce)?)?;
    let key = hex::decode(&args.tee_public_key)?;
    let kem = if key.len() == 32 { Kem::X25519HkdfSha256 } else { Kem::P256HkdfSha256 };
    let key = TeePublicKey::new(kem, key)?;
    println!("binding digest (TPM extraData): {}", hex::encode(binding_digest(&nonce, &key)));
    println!("REPORT_DATA (TDX, SEV-SNP):     {}", hex::encode(report_data(&nonce, &key)));
    Ok(())
}
