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
        #[arg(required_unless_present = "postgres", conflicts_with = "postgres")]
        log: Option<PathBuf>,
        /// Verify every replica's chain in a replicated broker's PostgreSQL database instead
        /// (`postgres://user:password@host:port/db`; the user's schema holds the broker's tables). Another
        /// machine's database needs `?sslmode=verify-full&sslrootcert=CA.pem` (TLS, the server checked), and
        /// `&sslcert=…&sslkey=…` where it requires client certificates, `&sslcrl=…` for revocation lists.
        #[arg(long)]
        postgres: Option<String>,
        /// A head from an attestation result token, `RECORDS:HASH` (its "sealroom.audit" claim): the log must
        /// still contain it, which detects records cut from the end. With --postgres: `REPLICA:RECORDS:HASH`.
        #[arg(long)]
        head: Option<String>,
    },
}

pub fn run(args: &Args) -> Result<()> {
    match &args.command {
        AuditCommand::Verify { log: None, head, postgres: Some(url) } => {
            verify_postgres(url, head.as_deref())
        }
        AuditCommand::Verify { log: None, .. } => bail!("give an audit log file or --postgres URL"),
        AuditCommand::Verify { log: Some(log), head, .. } => {
            let bytes = std::fs::read(log).with_context(|| format!("reading {}", log.display()))?;
            let result = match head {
                None => audit::verify(&bytes).map_err(|b| b.to_string()),
                Some(h) => audit::verify_with_anchor(&bytes, parse_head(h)?),
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

fn parse_head(text: &str) -> Result<ChainHead> {
    let (n, hash) = text.split_once(':').context("--head is RECORDS:HASH")?;
    let hash: [u8; 32] = hex::decode(hash)
        .ok()
        .and_then(|v| v.try_into().ok())
        .context("--head hash is not 32 bytes of hex")?;
    Ok(ChainHead { records: n.parse()?, hash })
}

/// Every replica's chain in a replicated broker's database, and optionally one token's anchor in one of them.
fn verify_postgres(url: &str, head: Option<&str>) -> Result<()> {
    let verified = sealroom_broker::pg::ledger::verify_chains(url)?;
    let chains = &verified.chains;
    for (replica, h, _) in chains {
        println!("replica {replica}: {} records ok, head {}", h.records, hex::encode(h.hash));
    }
    if let Some(text) = head {
        let (replica, rest) =
            text.split_once(':').context("--head is REPLICA:RECORDS:HASH with --postgres")?;
        let anchor = parse_head(rest)?;
        let (_, h, rows) = chains
            .iter()
            .find(|(r, _, _)| r == replica)
            .with_context(|| format!("no chain of replica {replica} in the database"))?;
        if h.records < anchor.records {
            bail!(
                "replica {replica}: {} records but a token saw {}: records were removed from the end",
                h.records,
                anchor.records
            );
        }
        let at = anchor.records.checked_sub(1).and_then(|i| rows.get(usize::try_from(i).ok()?));
        if at.is_some_and(|row| row.hash != anchor.hash) {
            bail!("replica {replica}: record {} differs from the token's head", anchor.records - 1);
        }
    }
    println!("{} replica chains ok, {} cross-anchors ok", chains.len(), verified.cross_anchors);
    Ok(())
}
