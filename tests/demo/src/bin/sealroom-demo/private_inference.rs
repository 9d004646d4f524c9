//! Scenario `private-inference`: a model owner's model and a user's private record meet only in the VM.
//!
//! The model owner trains the ridge model on its rows and registers the coefficients (a small JSON document)
//! as key material in its own broker, released only to the approved inference image with its fixed args. The
//! user, who has no broker, checks the VM's evidence with `sealroom seal` (golden document and the user's own
//! policy: the inference image and args) and only then seals a patient record to the attested TEE key and
//! submits it (`SubmitInput`), naming the user's reply key. The job's output (the prediction) leaves the VM
//! sealed to that key; `sealroom open` decrypts it for the user and checks it against the receipt. Last, the
//! test searches everything the operator holds (the serial console, the spec and output disks, the unpacked
//! result, the model owner's broker state and logs) for the record, the coefficients and the prediction in
//! plaintext, and finds none of them.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use sealroom_demo::plaintext::{self, Needle};
use sealroom_demo::{MODEL_KEY, PATIENT_INPUT, PREDICT_ARGS, argv, job_image_with};
use sealroom_demo_job::{Model, parse_record};

use crate::common::{Shared, at, indent, sealroom_shown, sha256_hex, step, unpack, write};
use crate::provider::Provider;
use crate::vm_run::{Disk, Followed, REFUSAL_MARKER, RUN_TIMEOUT, boot, enrol};

/// The agent's console line once the launch is measured up to the separator and it waits for sealed inputs.
const AWAITING_INPUTS: &str = "sealroom-workload: waiting up to ";
use crate::{Only, Outcome};

struct Prepared {
    dir: PathBuf,
    reference: String,
    owner: Provider,
    /// The model document (the owner's secret) and the record (the user's).
    model: Vec<u8>,
    record: Vec<u8>,
    user_key: PathBuf,
    user_pub: PathBuf,
    record_file: PathBuf,
    user_policy: PathBuf,
}

pub fn run(s: &Shared, dir: &Path, only: Option<Only>) -> Result<Outcome> {
    println!(
        "[demo] scenario private-inference: a model owner's model, a user's sealed record, the prediction sealed to the user"
    );
    anyhow::ensure!(only != Some(Only::Refused), "private-inference has no refusal half (--only refused)");
    let p = prepare(s, dir)?;
    let prediction = inference_run(s, &p)?;
    Ok(Outcome {
        summary: vec![format!(
            "prediction {prediction} opened by the user only; no plaintext record, coefficient or prediction on the operator's side"
        )],
        refusal_only: false,
    })
}

fn prepare(s: &Shared, dir: &Path) -> Result<Prepared> {
    let table = String::from_utf8(sealroom_demo::dataset()?)?;
    // The user's patient: the table's last row, without its target (the user does not know it); the model
    // owner trains on the other rows.
    let (rows, last) = table.trim_end().rsplit_once('\n').context("a table of one row")?;
    let record = last.rsplit_once(' ').context("a row without a target")?.0.as_bytes().to_vec();
    let model =
        step("model owner: train the ridge model on its rows (441; the patient is not among them)", || {
            let (metrics, model) = sealroom_demo_job::run(rows, 1.0).map_err(anyhow::Error::msg)?;
            println!(
                "[demo]   test R² {} on {} held-out rows",
                at(&metrics, "/test/r2"),
                at(&metrics, "/rows/test")
            );
            Ok(serde_json::to_vec(&model)?)
        })?;
    let (reference, digest) =
        step("model owner: the inference job's image into the loopback registry", || {
            let r =
                s.push("inference/diabetes-ridge", "v1", &job_image_with(&s.job, None, &PREDICT_ARGS)?)?;
            println!("[demo]   {}  args {}", r.1, PREDICT_ARGS.join(" "));
            Ok(r)
        })?;
    let owner_dir = dir.join("model-owner");
    let owner = step(
        "model owner: its broker; the coefficients as key material, released only to the inference job",
        || {
            let owner = Provider::new(&owner_dir, "model-owner", &s.image)?;
            let model_file = owner_dir.join("model.json");
            write(&model_file, &model)?;
            let policy = owner.policy(&s.image, &digest, &argv(&PREDICT_ARGS), &[])?;
            owner.add_key(MODEL_KEY, "model-owner", &policy, &model_file)?;
            Ok(owner)
        },
    )?;
    let user = dir.join("user");
    let (user_key, user_pub) = (user.join("user.key"), user.join("user.pub"));
    let record_file = user.join("record.txt");
    let user_policy = user.join("policy.toml");
    step("user: a reply key pair (sealroom seal keygen), the record, the user's own policy", || {
        std::fs::create_dir_all(&user)?;
        let (ok, out) = sealroom_shown(&[
            OsStr::new("seal"),
            "keygen".as_ref(),
            "--out".as_ref(),
            user_key.as_os_str(),
            "--public".as_ref(),
            user_pub.as_os_str(),
        ])?;
        ensure!(ok, "sealroom seal keygen failed: {out}");
        write(&record_file, &record)?;
        // The user trusts the VM only when it runs the inference job (digest and args) on the golden image
        // and pins the model owner's broker.
        let policy = owner.policy(&s.image, &digest, &argv(&PREDICT_ARGS), &[])?;
        write(&user_policy, &policy)?;
        println!("[demo]   user's policy ({}):\n{}", user_policy.display(), indent(&policy));
        Ok(())
    })?;
    Ok(Prepared {
        dir: dir.to_path_buf(),
        reference,
        owner,
        model,
        record,
        user_key,
        user_pub,
        record_file,
        user_policy,
    })
}

/// The spec: the model owner's broker (single form), the user's sealed input, the output sealed to its reply
/// key. No data disk: the record arrives sealed over gRPC.
fn spec(s: &Shared, p: &Prepared) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "image": p.reference,
        "insecure_registries": [s.insecure_registry()],
        "log_redirect": true,
        "broker": p.owner.url(),
        "broker_key": p.owner.key_id()?,
        "broker_ca": p.owner.tls.ca_pem,
        "key_ids": [MODEL_KEY],
        "sealed_inputs": { PATIENT_INPUT: { "max_bytes": 4096 } },
        "sealed_input_timeout_secs": 600,
        "seal_output_to": format!("input:{PATIENT_INPUT}"),
        "on_exit": "poweroff",
    }))
}

fn inference_run(s: &Shared, p: &Prepared) -> Result<f64> {
    let out_disk = p.dir.join("output.raw");
    let spec_json = spec(s, p)?;
    let ak = p.dir.join("vm.ak");
    let mut vm = step("operator: boot the image with the spec and an output disk", || {
        let vm = boot(&s.image.disk, &p.dir, "inference", &spec_json, &[Disk::blank_output(&out_disk)?])?;
        let mut vm = Followed::new(vm, "vm");
        vm.serving()?;
        Ok(vm)
    })?;
    let broker = step("model owner: enrol the VM's TPM key and start its broker", || {
        enrol(&vm.vm, &ak)?;
        p.owner.serve(std::slice::from_ref(&ak))
    })?;
    step(
        "VM: pull and measure the inference job, then wait for the sealed input (launch not separated yet)",
        || vm.until(AWAITING_INPUTS, Some(REFUSAL_MARKER), RUN_TIMEOUT),
    )?;
    let sealed = p.dir.join("user/record.sealed");
    step(
        "user: sealroom seal --agent … (verify the VM, then seal the record to its TEE key and submit it)",
        || {
            let url = vm.vm.agent_url();
            let (ok, out) = sealroom_shown(&[
                OsStr::new("seal"),
                "--agent".as_ref(),
                url.as_ref(),
                "--golden".as_ref(),
                s.image.golden.as_os_str(),
                "--golden-key".as_ref(),
                s.image.golden_key_hex.as_ref(),
                "--tpm-ak".as_ref(),
                ak.as_os_str(),
                "--policy".as_ref(),
                p.user_policy.as_os_str(),
                "--name".as_ref(),
                PATIENT_INPUT.as_ref(),
                "--input".as_ref(),
                p.record_file.as_os_str(),
                "--reply-key".as_ref(),
                p.user_pub.as_os_str(),
                "--out".as_ref(),
                sealed.as_os_str(),
                "--submit".as_ref(),
                // The prediction derives from the record: refuse unless it leaves sealed to this user.
                "--require-output-to-me".as_ref(),
            ])?;
            ensure!(ok, "sealroom seal failed: {out}");
            // The agent's answer: it measured exactly the user's record (its digest goes into the evidence
            // that the receipt covers; `sealroom open` checks that evidence against the receipt).
            let measured = format!("measured sealed_input {PATIENT_INPUT} sha256:{}", sha256_hex(&p.record));
            ensure!(out.contains(&measured), "the agent did not report {measured:?}: {out}");
            Ok(())
        },
    )?;
    step("VM: the sealed input, the model key, the job, the sealed output, the receipt", || {
        vm.until_result()
    })?;
    let console = p.dir.join("console.log");
    vm.save_console(&console)?;
    drop(vm);
    drop(broker);
    let result = p.dir.join("result");
    step("operator: unpack the output disk into result/ (ciphertext only: output.sealed)", || {
        unpack(&out_disk, &result, &["output.sealed", "receipt.jwt", "evidence.pb"])?;
        ensure!(!result.join("output").exists(), "a plaintext output/ left the VM");
        Ok(())
    })?;
    step(
        "anyone (an auditor without the user's key): sealroom verify-receipt on the sealed result; it names the record's digest",
        || {
            let jwk = p.owner.jwk();
            let mut args = s.image.verify_receipt_args(&result);
            args.extend(["--broker-key".as_ref(), jwk.as_os_str(), "--tpm-ak".as_ref(), ak.as_os_str()]);
            let (ok, out) = sealroom_shown(&args)?;
            ensure!(ok, "the sealed result's receipt did not verify: {out}");
            // The receipt names the user's record (its digest) and the user's reply key as a measured sealed input.
            let reply_key = std::fs::read_to_string(&p.user_pub)?;
            let named = format!(
                "sealed input {PATIENT_INPUT} sha256:{} (reply key {})",
                sha256_hex(&p.record),
                reply_key.trim()
            );
            ensure!(out.contains(&named), "the receipt does not name {named:?}");
            println!("[demo]   the receipt names {named}");
            Ok(())
        },
    )?;
    let opened = p.dir.join("user/opened");
    let prediction =
        step("user: sealroom open (decrypt with the user's key, check against the receipt)", || {
            let jwk = p.owner.jwk();
            let (ok, out) = sealroom_shown(&[
                OsStr::new("open"),
                "--key".as_ref(),
                p.user_key.as_os_str(),
                "--result".as_ref(),
                result.as_os_str(),
                "--broker-key".as_ref(),
                jwk.as_os_str(),
                "--golden".as_ref(),
                s.image.golden.as_os_str(),
                "--golden-key".as_ref(),
                s.image.golden_key_hex.as_ref(),
                "--out".as_ref(),
                opened.as_os_str(),
            ])?;
            ensure!(ok, "sealroom open failed: {out}");
            let doc: serde_json::Value =
                serde_json::from_slice(&std::fs::read(opened.join("prediction.json"))?)?;
            println!("{}", indent(&serde_json::to_string_pretty(&doc)?));
            let got = at(&doc, "/prediction").as_f64().context("no prediction")?;
            let model = Model::from_json(&p.model).map_err(anyhow::Error::msg)?;
            let want = model.predict(&parse_record(&p.record).map_err(anyhow::Error::msg)?);
            ensure!((got - want).abs() < 1e-3, "prediction {got}, the model gives {want}");
            Ok(got)
        })?;
    step(
        "anyone: search the operator's side for the record, the coefficients and the prediction in plaintext",
        || {
            let needles = needles(p, prediction)?;
            let roots = [
                console,
                p.dir.join("inference-spec.img"),
                out_disk.clone(),
                result.clone(),
                p.owner.state.clone(),
            ];
            let mut roots = roots.to_vec();
            roots.extend(
                std::fs::read_dir(&p.owner.dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|f| {
                    f.file_name().and_then(OsStr::to_str).is_some_and(|n| n.starts_with("broker-"))
                }),
            );
            let report = plaintext::search(&roots, &needles).map_err(anyhow::Error::from)?;
            println!(
                "[demo]   {} needles ({}) over {} files, {} bytes: {} hits",
                needles.len(),
                needles.iter().map(|n| n.what.as_str()).collect::<Vec<_>>().join(", "),
                report.files,
                report.bytes,
                report.hits.len()
            );
            for h in &report.hits {
                println!("[demo]   FOUND {} in {} at {}", h.what, h.file.display(), h.offset);
            }
            ensure!(report.hits.is_empty(), "plaintext found on the operator's side");
            // The same search finds them where they are meant to be: the user's and the owner's own copies.
            let own = plaintext::search(
                &[p.record_file.clone(), p.owner.dir.join("model.json"), opened.clone()],
                &needles,
            )?;
            ensure!(own.hits.len() >= needles.len(), "the search misses known plaintext: {:?}", own.hits);
            Ok(())
        },
    )?;
    Ok(prediction)
}

/// The secrets as they would appear in plaintext: the record line, the model document, each coefficient and
/// the intercept as the model document writes them, and the prediction as prediction.json writes it.
fn needles(p: &Prepared, prediction: f64) -> Result<Vec<Needle>> {
    let doc: serde_json::Value = serde_json::from_slice(&p.model)?;
    let mut out: Vec<Needle> = [
        Needle::new("patient record", p.record.clone()),
        Needle::new("model document", p.model.clone()),
        Needle::new("intercept", at(&doc, "/intercept").to_string()),
        Needle::new("prediction", format!("\"prediction\": {}", serde_json::json!(prediction))),
    ]
    .into_iter()
    .flatten()
    .collect();
    let coefficients = at(&doc, "/coefficients").as_object().context("no coefficients")?;
    out.extend(
        coefficients.iter().filter_map(|(name, v)| Needle::new(format!("coefficient {name}"), v.to_string())),
    );
    Ok(out)
}
