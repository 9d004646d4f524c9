//! Event-log replay: the UEFI log against quoted PCRs, the CCEL against RTMR0..2, and the agent's runtime
//! (workload) log against whichever runtime register the evidence has: PCR 15 of each quoted bank, or RTMR3
//! (SHA-384). Runtime events become claims only once they replayed to a quoted register.

use sealroom_measurements::cel::{self, CelRecord, RuntimeEvent};
use sealroom_measurements::evidence::PcrBank;
use serde_json::json;

use super::{Established, layer};
use crate::claims::{Register, RuntimeReplay};

pub(super) fn replay_event_log(log: &[u8], quoted: &[PcrBank], est: &mut Established) {
    if log.is_empty() {
        return;
    }
    let mut failures = Vec::new();
    let mut checked = Vec::new();
    match sealroom_measurements::tcg2::Tcg2Log::parse(log).and_then(|l| l.replay(true)) {
        Err(e) => failures.push(format!("event log: {e}")),
        Ok(replay) => {
            for bank in quoted {
                let Some(replayed) = replay.banks.get(&bank.alg) else { continue };
                for (index, value) in replayed {
                    if let Some(q) = bank.values.get(index) {
                        checked.push(format!("pcr{index}.{}", bank.alg.name()));
                        if q != value {
                            failures.push(format!(
                                "event log: pcr {index} ({}) replays to {}, quoted {}",
                                bank.alg.name(),
                                hex::encode(value),
                                hex::encode(q)
                            ));
                        }
                    }
                }
            }
            if checked.is_empty() {
                failures.push("event log: no bank of the log was quoted".into());
            }
        }
    }
    est.layers.push(layer("event log", "replay", json!({ "replayed": checked.len() }), failures));
}

pub(super) fn replay_ccel(log: &[u8], est: &mut Established) {
    if log.is_empty() {
        return;
    }
    let mut failures = Vec::new();
    match sealroom_measurements::ccel::CcelLog::parse(log).and_then(|l| l.replay()) {
        Err(e) => failures.push(format!("ccel log: {e}")),
        Ok(replayed) => {
            for (i, value) in (0u8..).zip(replayed.0.iter()).take(3) {
                if let Some(quoted) = est.registers.get(&Register::Rtmr(i))
                    && quoted.as_slice() != value.as_slice()
                {
                    failures.push(format!(
                        "ccel log: rtmr{i} replays to {}, quoted {quoted}",
                        hex::encode(value)
                    ));
                }
            }
        }
    }
    est.layers.push(layer("event log", "replay", json!({ "registers": "rtmr0..rtmr2" }), failures));
}

/// Decodes the runtime log and checks that every record extends the runtime register (index 15: PCR 15, or
/// RTMR3 on a TD), so that no event can ride along without being replayed.
fn decode_runtime(log: &[u8]) -> Result<Vec<CelRecord>, String> {
    let records = cel::CelLog::decode(log).map_err(|e| format!("runtime log: {e}"))?;
    if let Some(r) = records.iter().find(|r| r.pcr != cel::RUNTIME_PCR) {
        return Err(format!(
            "runtime log: record {} extends register {}, not the runtime register {}",
            r.recnum,
            r.pcr,
            cel::RUNTIME_PCR
        ));
    }
    Ok(records)
}

fn finish_runtime(
    records: Vec<CelRecord>,
    mut replayed: Vec<Register>,
    mut failures: Vec<String>,
    est: &mut Established,
) {
    // In register order, whatever order the evidence listed its banks in.
    replayed.sort_unstable();
    replayed.dedup();
    let mut claims = json!({});
    if replayed.is_empty() && failures.is_empty() {
        failures.push("runtime log: no runtime register (PCR 15 or RTMR3) was quoted".into());
    }
    // The events are claims only once they replayed to a quoted register and nothing failed.
    if failures.is_empty() {
        let names: Vec<String> = replayed.iter().map(ToString::to_string).collect();
        claims = json!({ "registers": names, "workload": workload_claims(&records) });
        est.runtime = Some(RuntimeReplay {
            registers: replayed,
            events: records.into_iter().map(|r| r.event).collect(),
        });
    }
    est.layers.push(layer("runtime log", "replay", claims, failures));
}

/// Replays the runtime log to RTMR3 (SHA-384) of a verified TD quote.
pub(super) fn replay_runtime_rtmr3(log: &[u8], est: &mut Established) {
    if log.is_empty() {
        return;
    }
    let records = match decode_runtime(log) {
        Ok(r) => r,
        Err(e) => return finish_runtime(vec![], vec![], vec![e], est),
    };
    let rtmr3 = Register::Rtmr(crate::claims::register::RUNTIME_RTMR);
    let mut failures = Vec::new();
    let mut replayed = Vec::new();
    match est.registers.get(&rtmr3) {
        None => {}
        Some(quoted) => match cel::check_rtmr3(&records, quoted.as_slice()) {
            Ok(()) => replayed.push(rtmr3),
            Err(e) => failures.push(format!("runtime log: {e}")),
        },
    }
    finish_runtime(records, replayed, failures, est);
}

/// Replays the runtime log to PCR 15 of every quoted bank.
pub(super) fn replay_runtime_log(log: &[u8], quoted: &[PcrBank], est: &mut Established) {
    if log.is_empty() {
        return;
    }
    let records = match decode_runtime(log) {
        Ok(r) => r,
        Err(e) => return finish_runtime(vec![], vec![], vec![e], est),
    };
    let mut failures = Vec::new();
    let mut replayed = Vec::new();
    for bank in quoted {
        if let Some(v) = bank.values.get(&u32::from(cel::RUNTIME_PCR)) {
            match cel::check_pcr(&records, bank.alg, v) {
                Err(e) => failures.push(format!("runtime log: {e}")),
                Ok(()) => replayed.push(Register::Pcr { index: cel::RUNTIME_PCR, bank: bank.alg }),
            }
        }
    }
    finish_runtime(records, replayed, failures, est);
}

/// The workload the replayed runtime log describes: the launch events before the launch separator (image
/// reference and digests, args, env, mounts, launch policy) and what happened after it (keys released, outputs).
pub(super) fn workload_claims(records: &[CelRecord]) -> serde_json::Value {
    use RuntimeEvent as E;
    let mut launch = serde_json::Map::new();
    let (mut args, mut env, mut mounts, mut keys, mut outputs) = (vec![], vec![], vec![], vec![], vec![]);
    let mut launched = false;
    for r in records {
        match &r.event {
            E::ImageReference(s) => {
                launch.insert("image_reference".into(), json!(s));
            }
            E::ManifestDigest(s) => {
                launch.insert("image_digest".into(), json!(s));
            }
            E::ConfigDigest(s) => {
                launch.insert("config_digest".into(), json!(s));
            }
            E::Arg(s) => args.push(json!(s)),
            E::Env(s) => env.push(json!(s)),
            E::Mount(m) => mounts.push(json!(m)),
            E::LaunchPolicy(s) => {
                launch.insert("launch_policy".into(), json!(s));
            }
            E::LaunchSeparator => launched = true,
            E::KeyRelease { key_id, broker_key } => {
                keys.push(json!({ "key_id": key_id, "broker_key": broker_key }));
            }
            E::Output { name, digest } => outputs.push(json!({ "name": name, "digest": digest })),
            // Event kinds this verifier does not know yet still replayed; they claim nothing here.
            _ => {}
        }
    }
    launch.insert("args".into(), json!(args));
    launch.insert("env".into(), json!(env));
    launch.insert("mounts".into(), json!(mounts));
    launch.insert("launched".into(), json!(launched));
    launch.insert("key_releases".into(), json!(keys));
    launch.insert("outputs".into(), json!(outputs));
    serde_json::Value::Object(launch)
}
