//! Scenario `multi-party`: two hospitals, one joint model.
//!
//! Each hospital holds half of the diabetes rows, seals it onto its own data disk with its own data key, and
//! registers that key in its own broker (`sealroom broker serve`: its own key store, KEK, policy, audit log
//! and TLS CA). The operator's spec lists both brokers; the agent obtains each key from its own broker and
//! runs the joint training job only when both released. Then hospital B withdraws its approval (`sealroom
//! broker keys revoke`): on a fresh VM the job does not run; the console names hospital B and the reason,
//! and hospital B's audit log records the refusal.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use sealroom_demo::{HOSPITAL_KEYS, JOINT_ARGS, argv, halves, job_image_with};

use crate::common::{Shared, at, audit_last, has, indent, seal_to_disk, sealroom_shown, step, unpack};
use crate::provider::{BrokerProcess, Provider};
use crate::vm_run::{Disk, Followed, boot, enrol};
use crate::{Only, Outcome};

/// One hospital: its broker, key id and sealed half.
struct Hospital {
    provider: Provider,
    key_id: &'static str,
    disk: PathBuf,
}

impl Hospital {
    /// Its data disk's virtio serial (the spec's `serial:` input).
    fn serial(&self) -> String {
        format!("sealroom-{}", self.key_id)
    }
}

struct Prepared {
    dir: PathBuf,
    reference: String,
    hospitals: [Hospital; 2],
}

pub fn run(s: &Shared, dir: &Path, only: Option<Only>) -> Result<Outcome> {
    println!(
        "[demo] scenario multi-party: two hospitals, each with its own broker; the joint model trains only when both release"
    );
    let p = prepare(s, dir)?;
    let mut summary = Vec::new();
    if only != Some(Only::Refused) {
        let rows = joint_run(s, &p)?;
        summary
            .push(format!("joint model on {rows} rows (both released): receipts from both brokers verified"));
    }
    if only != Some(Only::Approved) {
        let reason = withdrawn_run(s, &p)?;
        summary
            .push(format!("hospital-b withdrew its approval: the job did not run (exit status 1): {reason}"));
    }
    Ok(Outcome { summary, refusal_only: only == Some(Only::Refused) })
}

fn prepare(s: &Shared, dir: &Path) -> Result<Prepared> {
    let (reference, digest) =
        step("researcher: the joint training job's image into the loopback registry", || {
            let r =
                s.push("research/diabetes-ridge-joint", "v1", &job_image_with(&s.job, None, &JOINT_ARGS)?)?;
            println!("[demo]   {}  args {}", r.1, JOINT_ARGS.join(" "));
            Ok(r)
        })?;
    let table = sealroom_demo::dataset()?;
    let (a, b) = halves(&table);
    let mut hospitals = Vec::new();
    for ((name, key_id), rows) in ["hospital-a", "hospital-b"].into_iter().zip(HOSPITAL_KEYS).zip([a, b]) {
        let hdir = dir.join(name);
        let h = step(
            &format!("{name}: seal its half of the rows with its own data key; its own broker and CA"),
            || {
                let disk = hdir.join("rows.raw");
                seal_to_disk(&rows, &disk, &hdir.join("data.key"))?;
                let provider = Provider::new(&hdir, name, &s.image)?;
                Ok(Hospital { provider, key_id, disk })
            },
        )?;
        hospitals.push(h);
    }
    let keys: Vec<String> = hospitals.iter().map(|h| h.provider.key_id()).collect::<Result<_>>()?;
    for h in &hospitals {
        let name = &h.provider.name;
        step(
            &format!("{name}: its policy (the joint job; the VM pins both hospitals' brokers) and its key"),
            || {
                let own = h.provider.key_id()?;
                let others: Vec<String> = keys.iter().filter(|k| **k != own).cloned().collect();
                let policy = h.provider.policy(&s.image, &digest, &argv(&JOINT_ARGS), &others)?;
                h.provider.add_key(h.key_id, name, &policy, &h.provider.dir.join("data.key"))
            },
        )?;
    }
    let hospitals: [Hospital; 2] = hospitals.try_into().map_err(|_| anyhow::anyhow!("two hospitals"))?;
    Ok(Prepared { dir: dir.to_path_buf(), reference, hospitals })
}

/// The spec: both brokers (each with its URL, pinned key, CA and key id) and both data disks as inputs.
fn spec(s: &Shared, p: &Prepared) -> Result<serde_json::Value> {
    let brokers =
        p.hospitals.iter().map(|h| h.provider.spec_entry(&[h.key_id])).collect::<Result<Vec<_>>>()?;
    let inputs: serde_json::Map<String, serde_json::Value> =
        p.hospitals.iter().map(|h| (h.key_id.to_owned(), format!("serial:{}", h.serial()).into())).collect();
    Ok(serde_json::json!({
        "image": p.reference,
        "insecure_registries": [s.insecure_registry()],
        "log_redirect": true,
        "brokers": brokers,
        "inputs": inputs,
        "on_exit": "poweroff",
    }))
}

/// Boots a VM with the spec, both data disks and an output disk; waits for its agent; each hospital enrols
/// its TPM key (with the keys of earlier VMs) and starts its broker.
fn boot_and_serve(
    s: &Shared,
    p: &Prepared,
    tag: &str,
    out_disk: &Path,
) -> Result<(Followed, Vec<BrokerProcess>)> {
    let vm = step(
        &format!(
            "operator: boot {tag} with the spec (two brokers), both hospitals' disks and an output disk"
        ),
        || {
            let mut disks: Vec<Disk> = p.hospitals.iter().map(|h| Disk::data(&h.serial(), &h.disk)).collect();
            disks.push(Disk::blank_output(out_disk)?);
            let vm = boot(&s.image.disk, &p.dir, tag, &spec(s, p)?, &disks)?;
            let mut vm = Followed::new(vm, tag);
            vm.serving()?;
            Ok(vm)
        },
    )?;
    let brokers = step("both hospitals: enrol the VM's TPM key, start their brokers", || {
        let ak = p.dir.join(format!("{tag}.ak"));
        enrol(&vm.vm, &ak)?;
        let aks: Vec<PathBuf> = std::fs::read_dir(&p.dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|f| f.extension() == Some(OsStr::new("ak")))
            .collect();
        p.hospitals.iter().map(|h| h.provider.serve(&aks)).collect::<Result<Vec<_>>>()
    })?;
    Ok((vm, brokers))
}

fn joint_run(s: &Shared, p: &Prepared) -> Result<u64> {
    println!("[demo] ===== run 1: both hospitals approve =====");
    let out_disk = p.dir.join("joint-output.raw");
    let (mut vm, brokers) = boot_and_serve(s, p, "joint", &out_disk)?;
    step("VM: measure the job, obtain both keys (one per broker), train, obtain both receipts", || {
        vm.until_result()?;
        let text = vm.vm.serial_text();
        for h in &p.hospitals {
            ensure!(
                text.contains(&format!("sealroom-workload: key {} released to the workload", h.key_id)),
                "no release of {} on the console",
                h.key_id
            );
        }
        Ok(())
    })?;
    vm.save_console(&p.dir.join("joint-console.log"))?;
    drop(vm);
    drop(brokers);
    let result = p.dir.join("result");
    step("operator: unpack the output disk into result/", || {
        unpack(&out_disk, &result, &["output", "output.sha256", "receipt.jwt", "evidence.pb", "receipts"])
    })?;
    step("anyone: sealroom verify-receipt with the receipt of each broker, checked together", || {
        let mut args = s.image.verify_receipt_args(&result);
        let receipts: Vec<PathBuf> = p
            .hospitals
            .iter()
            .map(|h| result.join("receipts").join(format!("{}.jwt", h.provider.name)))
            .collect();
        let jwks: Vec<PathBuf> = p.hospitals.iter().map(|h| h.provider.jwk()).collect();
        for (r, k) in receipts.iter().zip(&jwks) {
            args.extend([OsStr::new("--receipt"), r.as_os_str(), "--broker-key".as_ref(), k.as_os_str()]);
        }
        let ak = p.dir.join("joint.ak");
        args.extend([OsStr::new("--tpm-ak"), ak.as_os_str()]);
        let (ok, _) = sealroom_shown(&args)?;
        ensure!(ok, "the receipts did not verify");
        Ok(())
    })?;
    let rows = step("researcher: the joint model was trained on both halves", || {
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(result.join("output/metrics.json"))?)?;
        println!("{}", indent(&serde_json::to_string_pretty(&metrics)?));
        ensure!(
            *at(&metrics, "/parts") == serde_json::json!([221, 221]),
            "not both halves: parts {}",
            at(&metrics, "/parts")
        );
        let rows = at(&metrics, "/rows/train").as_u64().unwrap_or(0)
            + at(&metrics, "/rows/test").as_u64().unwrap_or(0);
        ensure!(rows == 442, "{rows} rows, expected 442");
        Ok(rows)
    })?;
    step("each hospital: its audit log records its own release and nothing of the other's key", || {
        for (h, other) in p.hospitals.iter().zip(p.hospitals.iter().rev()) {
            audit_last(&h.provider.audit_log())?;
            let records: Vec<serde_json::Value> = std::fs::read_to_string(h.provider.audit_log())?
                .lines()
                .map(serde_json::from_str)
                .collect::<Result<_, _>>()?;
            let name = &h.provider.name;
            for decision in ["released", "receipt"] {
                let r = records.iter().find(|r| has(r, &[("decision", decision), ("key_id", h.key_id)]));
                let r = r.with_context(|| {
                    format!("{name}'s audit log has no {decision} record for {}", h.key_id)
                })?;
                println!("[demo]   {name}: {decision} {}: {}", h.key_id, at(r, "/reason"));
            }
            let log = std::fs::read_to_string(h.provider.audit_log())?;
            ensure!(!log.contains(other.key_id), "{}'s audit log names {}", h.provider.name, other.key_id);
        }
        Ok(())
    })?;
    Ok(rows)
}

fn withdrawn_run(s: &Shared, p: &Prepared) -> Result<String> {
    println!("[demo] ===== run 2: hospital-b withdraws its approval (key revoked) =====");
    let [_, b] = &p.hospitals;
    step("hospital-b: sealroom broker keys revoke", || b.provider.revoke(b.key_id))?;
    let out_disk = p.dir.join("withdrawn-output.raw");
    let (mut vm, brokers) = boot_and_serve(s, p, "withdrawn", &out_disk)?;
    let reason = step(
        "VM: measure the job and ask both brokers (expected: hospital-b refuses, nothing runs)",
        || {
            let line = vm.until_refused()?;
            let expected = format!(
                "provider hospital-b ({}) refused key {}: key store: key {} was revoked at ",
                b.provider.key_id()?,
                b.key_id,
                b.key_id
            );
            ensure!(line.contains(&expected), "refused, but not for hospital-b's reason: {line}");
            let text = vm.vm.serial_text();
            ensure!(!text.contains("released to the workload"), "a key was written for the job");
            ensure!(!text.contains("workload ended"), "the job ran");
            println!("[demo]   console: {line}");
            Ok(line
                .split("refused key ")
                .nth(1)
                .map(|r| format!("hospital-b refused key {r}"))
                .unwrap_or(line.clone()))
        },
    )?;
    step("operator: power the VM off; nothing was written to the output disk", || {
        vm.vm.power_off().map_err(anyhow::Error::msg)?;
        ensure!(std::fs::read(&out_disk)?.iter().all(|b| *b == 0), "the output disk was written");
        Ok(())
    })?;
    vm.save_console(&p.dir.join("withdrawn-console.log"))?;
    drop(brokers);
    step("hospital-b: its audit log says why", || {
        let last = audit_last(&b.provider.audit_log())?;
        println!("[demo]   last record: {last}");
        let why = last.get("reason").and_then(serde_json::Value::as_str).unwrap_or_default();
        ensure!(
            has(&last, &[("decision", "refused"), ("rule", "key store"), ("key_id", b.key_id)])
                && why.contains("was revoked"),
            "the last audit record is not the revocation: {last}"
        );
        Ok(())
    })?;
    Ok(reason)
}
