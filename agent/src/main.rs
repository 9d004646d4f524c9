//! `sealroom-agent`: the guest agent binary. Serves attestation; PID-1 duties live in their own module.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sealroom_agent::paths::KernelPaths;
use sealroom_agent::server::{self, Config};

const USAGE: &str = "usage: sealroom-agent [--tcp ADDR|none] [--vsock CID:PORT|none] [--root DIR] [--tcti TCTI] \
[--no-tpm] [--runtime-log-dir DIR] [--queue-depth N] [--request-timeout-ms MS]";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Config> {
    let mut c = Config::vm_defaults();
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--tcp" => {
                let v = value()?;
                c.tcp = if v == "none" { None } else { Some(v.parse::<SocketAddr>().context("--tcp")?) };
            }
            "--vsock" => {
                let v = value()?;
                c.vsock = if v == "none" {
                    None
                } else {
                    let (cid, port) = v.split_once(':').context("--vsock CID:PORT")?;
                    let cid = if cid == "any" { u32::MAX } else { cid.parse().context("--vsock cid")? };
                    Some((cid, port.parse().context("--vsock port")?))
                };
            }
            "--root" => c.worker.paths = KernelPaths::new(value()?),
            "--tcti" => c.worker.tcti = Some(value()?),
            "--no-tpm" => c.worker.no_tpm = true,
            "--runtime-log-dir" => c.worker.runtime_log_dir = PathBuf::from(value()?),
            "--queue-depth" => c.worker.queue_depth = value()?.parse().context("--queue-depth")?,
            "--request-timeout-ms" => {
                c.worker.request_timeout =
                    Duration::from_millis(value()?.parse().context("--request-timeout-ms")?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(c)
}

fn main() -> Result<()> {
    // In the VM the agent is /init: PID 1 supervises, its child serves (image/mkosi, agent/src/pid1).
    if sealroom_agent::pid1::is_pid1() {
        sealroom_agent::pid1::run();
    }
    if sealroom_agent::pid1::is_pid1_child() {
        return Ok(sealroom_agent::pid1::serve_in_vm()?);
    }
    let config = parse_args(std::env::args().skip(1))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(server::run(config))?;
    Ok(())
}
