//! `sealroom audit verify`: check a key broker's hash-chained audit log offline.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sealroom_broker::audit::{self, ChainHead};

/// Arguments of `sealroom audit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// Verify the chain; report the first broken record and exit non-zero on tampering.
    Verify {
        /// The audit log (the broker's `audit.log`).
        log: PathBuf,
        /// A head from an attestation result token, `RECORDS:HASH` (its "sealroom.audit" claim): the log must
        /// still contain it, which detects records cut from the end.
        #[arg(long)]
        head: Option<String>,
    },
}

pub fn run(args: &Args) -> Result<()> {
    match &args.command {
        AuditCommand::Verify { log, head } => {
            let bytes = std::fs::read(log).with_context(|| format!("reading {}", log.display()))?;
            let result = match head {
                None => audit::verify(&bytes).map_err(|b| b.to_string()),
                Some(h) => {
                    let (n, hash) = h.split_once(':').context("--head is RECORDS:HASH")?;
                    let hash: [u8; 32] = hex::decode(hash)
                        .ok()
                        .and_then(|v| v.try_into().ok())
                        .context("--head hash is not 32 bytes of hex")?;
                    audit::verify_with_anchor(&bytes, ChainHead { records: n.parse()?, hash })
                }
            };
            match result {
                Ok(h) => {
                    println!("audit log ok: {} records, head {}", h.records, hex::encode(h.hash));
                    Ok(())
                }
                Err(reason) => bail!("audit log {} is broken: {reason}", log.display()),
            }
        }
    }
}
