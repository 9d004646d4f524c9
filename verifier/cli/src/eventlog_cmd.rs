//! `sealroom eventlog`: print and replay an event log: UEFI TCG2 (TPM), TDX CCEL, or sealroom's runtime CEL.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sealroom_measurements::ccel::{CcelLog, CcelTable};
use sealroom_measurements::cel::{self, CelLog};
use sealroom_measurements::evidence::HashAlg;
use sealroom_measurements::tcg2::{Tcg2Log, alg_name};

/// Arguments of `sealroom eventlog`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The log: a TPM binary_bios_measurements, a CCEL log area, or a sealroom runtime CEL log.
    file: PathBuf,
    /// Force the format instead of detecting it.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// The ACPI CCEL table, to check and print alongside a CCEL log.
    #[arg(long)]
    ccel_table: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// UEFI TCG2 log of a TPM (crypto-agile or legacy SHA-1).
    Tpm,
    /// TDX CC event log.
    Ccel,
    /// sealroom runtime CEL-TLV log.
    Cel,
}

/// CEL logs start with the recnum TLV (type 0, length 8) then the PCR index TLV (type 1, length 1), and decode.
fn looks_like_cel(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0, 0, 0, 0, 8])
        && bytes.get(13..18) == Some(&[1, 0, 0, 0, 1])
        && CelLog::decode(bytes).is_ok()
}

/// A crypto-agile log whose banks are SHA-384/SM3 only and whose indices are CC MR indices is a CCEL log.
fn looks_like_ccel(log: &Tcg2Log) -> bool {
    let Some(spec) = &log.spec_id else { return false };
    let cc_banks = spec.algorithms.iter().all(|(id, _)| *id == 0x000c || *id == 0x0012);
    cc_banks && log.events.iter().all(|e| e.index <= 4)
}

pub fn run(args: &Args) -> Result<()> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let format = match args.format {
        Some(f) => f,
        None if looks_like_cel(&bytes) => Format::Cel,
        None => {
            let log = Tcg2Log::parse(&bytes)?;
            if looks_like_ccel(&log) { Format::Ccel } else { Format::Tpm }
        }
    };
    match format {
        Format::Cel => print_cel(&bytes, args.json),
        Format::Tpm => print_tcg2(&Tcg2Log::parse(&bytes)?, false, args.json),
        Format::Ccel => {
            if let Some(t) = &args.ccel_table {
                let table =
                    CcelTable::parse(&std::fs::read(t).with_context(|| format!("reading {}", t.display()))?)?;
                if !args.json {
                    println!(
                        "ccel table: cc type {} subtype {}, log area {:#x} + {:#x} bytes, oem {:?}",
                        table.cc_type,
                        table.cc_subtype,
                        table.log_area_start,
                        table.log_area_min_len,
                        table.oem_id
                    );
                }
            }
            let log = CcelLog::parse(&bytes)?;
            print_tcg2(&log.log, true, args.json)
        }
    }
}

fn register_name(ccel: bool, index: u32) -> String {
    match (ccel, index) {
        (false, i) => format!("pcr{i}"),
        (true, 0) => "mrtd".into(),
        (true, i) => format!("rtmr{}", i.saturating_sub(1)),
    }
}

fn print_tcg2(log: &Tcg2Log, ccel: bool, json: bool) -> Result<()> {
    let banks: Vec<String> = log.bank_ids().into_iter().map(alg_name).collect();
    let mut events = Vec::new();
    for (n, e) in log.events.iter().enumerate() {
        let digests: serde_json::Map<String, serde_json::Value> =
            e.digests.iter().map(|d| (alg_name(d.alg_id), hex::encode(&d.digest).into())).collect();
        let details = serde_json::to_value(e.details())?;
        events.push(serde_json::json!({
            "number": n,
            "offset": e.offset,
            "register": register_name(ccel, e.index),
            "type": e.type_name(),
            "digests": digests,
            "details": details,
            "data_len": e.data.len(),
        }));
        if !json {
            let shown = e.digests.first().map(|d| hex::encode(&d.digest)).unwrap_or_default();
            println!(
                "{n:>4} {:<6} {:<34} {}  {}",
                register_name(ccel, e.index),
                e.type_name(),
                shown.get(..16).unwrap_or(&shown),
                e.details()
            );
        }
    }
    let mut registers = serde_json::Map::new();
    let mut unreplayed = Vec::new();
    if ccel {
        match (CcelLog { log: log.clone() }).replay() {
            Ok(rtmrs) => {
                for (i, v) in rtmrs.0.iter().enumerate() {
                    registers.insert(format!("rtmr{i}"), hex::encode(v).into());
                }
            }
            Err(e) => unreplayed.push(e.to_string()),
        }
    } else {
        let replay = log.replay(true)?;
        for (alg, pcrs) in &replay.banks {
            let bank: serde_json::Map<String, serde_json::Value> =
                pcrs.iter().map(|(i, v)| (i.to_string(), hex::encode(v).into())).collect();
            registers.insert(alg.name().to_string(), bank.into());
        }
        unreplayed
            .extend(replay.not_replayed.iter().map(|id| format!("bank {} not computable", alg_name(*id))));
    }
    if json {
        let out = serde_json::json!({
            "format": if ccel { "ccel" } else { "tpm" },
            "log_format": log.format,
            "banks": banks,
            "events": events,
            "padding": log.padding,
            "registers": registers,
            "not_replayed": unreplayed,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} log ({:?}), {} events, banks: {}{}",
        if ccel { "CCEL" } else { "TPM" },
        log.format,
        log.events.len(),
        banks.join(", "),
        if log.padding > 0 { format!(", {} bytes of padding", log.padding) } else { String::new() }
    );
    for (name, value) in &registers {
        match value {
            serde_json::Value::Object(bank) => {
                for (i, v) in bank {
                    println!("{name} pcr{i:<2} {}", v.as_str().unwrap_or_default());
                }
            }
            v => println!("{name:<6} {}", v.as_str().unwrap_or_default()),
        }
    }
    for u in &unreplayed {
        println!("not replayed: {u}");
    }
    Ok(())
}

fn print_cel(bytes: &[u8], json: bool) -> Result<()> {
    let records = CelLog::decode(bytes)?;
    let mut pcr = serde_json::Map::new();
    for alg in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512] {
        if !records.is_empty() && records.iter().all(|r| r.digest(alg).is_some()) {
            pcr.insert(alg.name().into(), hex::encode(cel::replay_pcr(&records, alg)?).into());
        }
    }
    let rtmr3 = if records.iter().all(|r| r.rtmr_digest().is_some()) {
        Some(hex::encode(cel::replay_rtmr3(&records)?))
    } else {
        None
    };
    if json {
        let events: Vec<_> = records
            .iter()
            .map(|r| {
                let digests: serde_json::Map<String, serde_json::Value> =
                    r.digests.iter().map(|(a, d)| (a.name().to_string(), hex::encode(d).into())).collect();
                serde_json::json!({"recnum": r.recnum, "pcr": r.pcr, "event": r.event, "digests": digests})
            })
            .collect();
        let out = serde_json::json!({"format": "cel", "events": events, "pcr15": pcr, "rtmr3": rtmr3});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for r in &records {
        let d = r.digests.first().map(|(_, d)| hex::encode(d)).unwrap_or_default();
        println!("{:>4} pcr{} {}  {}", r.recnum, r.pcr, d.get(..16).unwrap_or(&d), r.event);
    }
    println!("runtime CEL log, {} records", records.len());
    for (alg, v) in &pcr {
        println!("{alg} pcr15 {}", v.as_str().unwrap_or_default());
    }
    match rtmr3 {
        Some(v) => println!("rtmr3        {v}"),
        None if records.is_empty() => {}
        None => bail!("runtime CEL log: a record has no sha384 digest, rtmr3 cannot be replayed"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealroom_measurements::cel::{RUNTIME_PCR, RuntimeEvent};

    fn testdata(rel: &str) -> Vec<u8> {
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../measurements/testdata").join(rel))
            .unwrap()
    }

    #[test]
    fn formats_are_detected() {
        // debian-10 starts with bytes that look like a CEL recnum TLV: it must still be read as a TPM log.
        for (rel, ccel) in [
            ("tpm/eventlogs/debian-10.bin", false),
            ("tpm/eventlogs/glinux-alex.bin", false),
            ("tdx/ccel/ccel_data.dat", true),
            ("tdx/trustee-ccel/CCEL_data_csv", true),
        ] {
            let bytes = testdata(rel);
            assert!(!looks_like_cel(&bytes), "{rel}");
            assert_eq!(looks_like_ccel(&Tcg2Log::parse(&bytes).unwrap()), ccel, "{rel}");
        }
        let mut log = CelLog::new();
        log.append(RUNTIME_PCR, &[HashAlg::Sha256, HashAlg::Sha384], &RuntimeEvent::Arg("x".into())).unwrap();
        assert!(looks_like_cel(&log.encode()));
    }

    #[test]
    fn prints_every_corpus_log() {
        for rel in ["tpm/eventlogs/gdc-host.bin", "tdx/trustee-ccel/CCEL_AAEL_alibabacloud"] {
            let args = Args {
                file: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../measurements/testdata").join(rel),
                format: None,
                ccel_table: None,
                json: true,
            };
            run(&args).unwrap();
        }
    }
}
