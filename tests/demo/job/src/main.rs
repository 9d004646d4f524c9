//! The demo's research job (`sealroom-demo-job`), in two modes:
//!
//! - train (the default): `--input FILE --key FILE [--input FILE --key FILE …] --output DIR [--lambda X]`:
//!   opens each sealed part with its own key (the n-th `--key` opens the n-th `--input`: one data provider
//!   each), trains the ridge model on all their rows, writes `metrics.json` and `model.json`;
//! - `predict --model FILE --record FILE --output DIR`: the model (coefficients JSON, the model owner's key
//!   material) applied to one patient record; writes `prediction.json` and prints no value (its stdout goes to
//!   the console, which the operator reads).
use std::path::PathBuf;

use sealroom_demo_job::{all, arg};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("predict") => predict(args.get(1..).unwrap_or_default()),
        _ => train(&args),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sealroom-demo-job: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{path}: {e}"))
}

fn write_json(dir: &std::path::Path, name: &str, doc: &serde_json::Value) -> Result<(), String> {
    let p = dir.join(name);
    let text = serde_json::to_string_pretty(doc).map_err(|e| e.to_string())? + "\n";
    std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
}

fn train(args: &[String]) -> Result<(), String> {
    let inputs = all(args, "--input");
    let keys = all(args, "--key");
    if inputs.is_empty() || inputs.len() != keys.len() {
        return Err(format!("{} --input and {} --key: give one key per input", inputs.len(), keys.len()));
    }
    let output = PathBuf::from(arg(args, "--output")?);
    let lambda: f64 =
        arg(args, "--lambda").map_or(Ok(1.0), |s| s.parse().map_err(|e| format!("--lambda: {e}")))?;
    let mut parts = Vec::new();
    for (input, key) in inputs.iter().zip(&keys) {
        let plain = sealroom_demo_job::open_dataset(&read(input)?, &read(key)?)
            .map_err(|e| format!("{input}: {e}"))?;
        parts.push(String::from_utf8(plain).map_err(|_| format!("{input}: the dataset is not text"))?);
    }
    let (metrics, model) = sealroom_demo_job::run_parts(&parts, lambda)?;
    write_json(&output, "metrics.json", &metrics)?;
    write_json(&output, "model.json", &model)?;
    let get = |p: &str| metrics.pointer(p).cloned().unwrap_or_default();
    println!(
        "trained on {} rows from {} part(s): test R² {}, RMSE {}",
        get("/rows/train"),
        parts.len(),
        get("/test/r2"),
        get("/test/rmse")
    );
    Ok(())
}

fn predict(args: &[String]) -> Result<(), String> {
    let model = read(&arg(args, "--model")?)?;
    let record = read(&arg(args, "--record")?)?;
    let output = PathBuf::from(arg(args, "--output")?);
    let doc = sealroom_demo_job::predict(&model, &record)?;
    write_json(&output, "prediction.json", &doc)?;
    // Neither the record nor the value: the console is the operator's.
    println!("prediction written to {}", output.join("prediction.json").display());
    Ok(())
}
