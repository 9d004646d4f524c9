//! `sealroom-agent`: the guest agent binary.
use anyhow::Result;

fn main() -> Result<()> {
    println!("sealroom-agent {}", env!("CARGO_PKG_VERSION"));
    Ok(())
}
