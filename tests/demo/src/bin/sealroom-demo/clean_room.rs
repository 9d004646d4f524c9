//! Scenario `clean-room` (the seed scenario): a research job on one data provider's sealed table.
//!
//! 1. The researcher's job image (a static binary) and a modified variant (one extra file, hence another
//!    digest) sit in the loopback registry.
//! 2. The data provider seals the diabetes table with a fresh AES-256-GCM data key onto a raw data disk and
//!    registers the key with `sealroom broker keys add` under a policy: the image's signed golden document,
//!    the approved job's image digest, its fixed args and env, and its own broker key.
//! 3. Approved run: the image boots under QEMU (TCG + OVMF + swtpm) with the spec, data and output disks; the
//!    provider enrols the VM's TPM attestation key and starts `sealroom broker serve` with TLS; the agent
//!    measures the job, obtains the key, runs the job, measures its output, obtains the output receipt, writes
//!    the result onto the output disk and powers off. Checked with `sealroom verify-receipt`; an edited copy
//!    is refused.
//! 4. Refusal run: the modified job on a fresh VM gets no key; the console line and the audit record say why.

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use sealroom_demo::{INPUT_NAME, JOB_ARGS, KEY_ID, argv, job_image_with};

use crate::common::{Shared, audit_last, has, indent, seal_to_disk, sealroom_output, step, unpack, write};
use crate::provider::Provider;
use crate::vm_run::{Disk, Followed, boot, enrol};
use crate::{Only, Outcome};

const DATA_SERIAL: &str = "sealroom-data";

struct Prepared {
    dir: PathBuf,
    approved_ref: String,
    modified_ref: String,
    modified_digest: String,
    data_disk: PathBuf,
    provider: Provider,
}

pub fn run(s: &Shared, dir: &Path, only: Option<Only>) -> Result<Outcome> {
    println!(
        "[demo] scenario clean-room: a research job on sealed data; the key is released only to approved code"
    );
    let p = prepare(s, dir)?;
    let mut summary = Vec::new();
    if only != Some(Only::Refused) {
        let result = approved_run(s, &p)?;
        summary.push(format!("approved job: receipt verified, result in {}", result.display()));
    }
    if only != Some(Only::Approved) {
        let reason = modified_run(s, &p)?;
        summary.push(format!("modified job: no key (exit status 1): {reason}"));
    }
    Ok(Outcome { summary, refusal_only: only == Some(Only::Refused) })
}

fn prepare(s: &Shared, dir: &Path) -> Result<Prepared> {
    let (approved, modified) =
        step("researcher: job images (approved + modified) into the loopback docker-registry", || {
            let approved =
                s.push("research/diabetes-ridge", "v1", &job_image_with(&s.job, None, &JOB_ARGS)?)?;
            let modified = s.push(
                "research/diabetes-ridge",
                "v2",
                &job_image_with(&s.job, Some("modified"), &JOB_ARGS)?,
            )?;
            println!("[demo]   approved {}", approved.1);
            println!("[demo]   modified {}", modified.1);
            Ok((approved, modified))
        })?;
    let data_disk = dir.join("provider/data.raw");
    let data_key = dir.join("provider/data.key");
    step("data provider: seal the diabetes table with a fresh data key onto a data disk", || {
        seal_to_disk(&sealroom_demo::dataset()?, &data_disk, &data_key)
    })?;
    let provider = step("data provider: a throwaway CA and the broker's TLS certificate (openssl)", || {
        Provider::new(&dir.join("provider"), "broker", &s.image)
    })?;
    step("data provider: register the key in sealroom broker with the policy", || {
        let policy = provider.policy(&s.image, &approved.1, &argv(&JOB_ARGS), &[])?;
        provider.add_key(KEY_ID, "diabetes-provider", &policy, &data_key)
    })?;
    Ok(Prepared {
        dir: dir.to_path_buf(),
        approved_ref: approved.0,
        modified_ref: modified.0,
        modified_digest: modified.1,
        data_disk,
        provider,
    })
}

/// The spec for `reference`: one broker (the single form), the data disk as the input.
fn spec(s: &Shared, p: &Prepared, reference: &str) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "image": reference,
        "insecure_registries": [s.insecure_registry()],
        "log_redirect": true,
        "broker": p.provider.url(),
        "broker_key": p.provider.key_id()?,
        "broker_ca": p.provider.tls.ca_pem,
        "key_ids": [KEY_ID],
        "inputs": { INPUT_NAME: format!("serial:{DATA_SERIAL}") },
        "on_exit": "poweroff",
    }))
}

fn approved_run(s: &Shared, p: &Prepared) -> Result<PathBuf> {
    println!("[demo] ===== run 1: the approved job =====");
    let out_disk = p.dir.join("approved-output.raw");
    let ak = p.dir.join("approved-vm.ak");
    let mut vm = step(
        "operator: boot the sealroom image (QEMU TCG + OVMF + swtpm) with spec, data and output disks",
        || {
            let disks = [Disk::data(DATA_SERIAL, &p.data_disk), Disk::blank_output(&out_disk)?];
            let vm = boot(&s.image.disk, &p.dir, "approved", &spec(s, p, &p.approved_ref)?, &disks)?;
            let mut vm = Followed::new(vm, "vm1");
            vm.serving()?;
            Ok(vm)
        },
    )?;
    let broker = step("data provider: enrol the VM's TPM key and start sealroom broker serve", || {
        enrol(&vm.vm, &ak)?;
        p.provider.serve(std::slice::from_ref(&ak))
    })?;
    step("VM: measure the job, obtain the key, run it, measure the output, obtain the receipt", || {
        vm.until_result()?;
        ensure!(
            vm.vm
                .serial_text()
                .contains(&format!("sealroom-workload: key {KEY_ID} released to the workload")),
            "no key release on the console"
        );
        Ok(())
    })?;
    vm.save_console(&p.dir.join("approved-console.log"))?;
    drop(vm);
    drop(broker);
    let result = p.dir.join("result");
    step("operator: unpack the output disk (a plain tar archive) into result/", || {
        unpack(&out_disk, &result, &["output", "output.sha256", "receipt.jwt", "evidence.pb"])
    })?;
    step("anyone: sealroom verify-receipt result/ --golden … --broker-key …", || {
        let jwk = p.provider.jwk();
        let mut args = s.image.verify_receipt_args(&result);
        args.extend(["--broker-key".as_ref(), jwk.as_os_str(), "--tpm-ak".as_ref(), ak.as_os_str()]);
        let (ok, _) = crate::common::sealroom_shown(&args)?;
        ensure!(ok, "the receipt did not verify");
        Ok(())
    })?;
    step("anyone: a result whose metrics were edited afterwards is refused", || {
        let tampered = p.dir.join("result-edited");
        let st = std::process::Command::new("cp").arg("-a").arg(&result).arg(&tampered).status()?;
        ensure!(st.success(), "cp -a {} failed", result.display());
        let metrics = tampered.join("output/metrics.json");
        let text = std::fs::read_to_string(&metrics)?;
        let r2 = text.split("\"r2\": ").nth(1).and_then(|t| t.split([',', '\n']).next()).unwrap_or_default();
        ensure!(!r2.is_empty(), "no r2 in {}", metrics.display());
        write(&metrics, text.replacen(&format!("\"r2\": {r2}"), "\"r2\": 0.99", 1))?;
        let jwk = p.provider.jwk();
        let mut args = s.image.verify_receipt_args(&tampered);
        args.extend(["--broker-key".as_ref(), jwk.as_os_str()]);
        let (ok, out) = sealroom_output(&args)?;
        println!("[demo]   test R² {r2} → 0.99 in a copy; sealroom verify-receipt on it:");
        print!("{}", indent(&out));
        ensure!(
            !ok && out.contains("output file changed: metrics.json"),
            "the edited result was not refused: {out}"
        );
        Ok(())
    })?;
    step("researcher: the result", || {
        for name in ["metrics.json", "model.json"] {
            let doc: serde_json::Value =
                serde_json::from_slice(&std::fs::read(result.join("output").join(name))?)?;
            println!("{}", indent(&serde_json::to_string_pretty(&doc)?));
        }
        Ok(())
    })?;
    Ok(result)
}

fn modified_run(s: &Shared, p: &Prepared) -> Result<String> {
    println!("[demo] ===== run 2: the same with a modified job (another image digest) =====");
    let out_disk = p.dir.join("modified-output.raw");
    let ak = p.dir.join("modified-vm.ak");
    let mut vm =
        step("operator: boot a fresh VM with the modified job's spec, the data and an output disk", || {
            let disks = [Disk::data(DATA_SERIAL, &p.data_disk), Disk::blank_output(&out_disk)?];
            let vm = boot(&s.image.disk, &p.dir, "modified", &spec(s, p, &p.modified_ref)?, &disks)?;
            let mut vm = Followed::new(vm, "vm2");
            vm.serving()?;
            Ok(vm)
        })?;
    let broker = step("data provider: enrol this VM's TPM key and start sealroom broker serve", || {
        enrol(&vm.vm, &ak)?;
        let mut aks = vec![ak.clone()];
        let first = p.dir.join("approved-vm.ak");
        if first.exists() {
            aks.push(first);
        }
        p.provider.serve(&aks)
    })?;
    let console_reason = step("VM: measure the job and ask for the key (expected: refused)", || {
        let line = vm.until_refused()?;
        let expected = format!(
            // "broker refused key …" (one broker) or "provider broker (KID) refused key …" (issue 15's form).
            "refused key {KEY_ID}: policy.image_digests: workload image digest {} not allowed",
            p.modified_digest
        );
        ensure!(line.contains(&expected), "refused, but not for the policy reason: {line}");
        let text = vm.vm.serial_text();
        ensure!(!text.contains("released to the workload"), "a key was released to the modified job");
        ensure!(!text.contains("workload ended"), "the modified job ran");
        println!("[demo]   console: {line}");
        Ok(expected)
    })?;
    step("operator: power the VM off (ACPI power button); nothing was written to the output disk", || {
        vm.vm.power_off().map_err(anyhow::Error::msg)?;
        let out = std::fs::read(&out_disk)?;
        ensure!(out.iter().all(|b| *b == 0), "the modified job's output disk was written");
        Ok(())
    })?;
    drop(broker);
    step("anyone: the broker's audit log (hash chain checked with sealroom audit verify)", || {
        let last = audit_last(&p.provider.audit_log())?;
        println!("[demo]   last record: {last}");
        ensure!(
            has(&last, &[("decision", "refused"), ("rule", "policy.image_digests"), ("key_id", KEY_ID)]),
            "the last audit record is not the policy refusal: {last}"
        );
        Ok(())
    })?;
    Ok(console_reason)
}
