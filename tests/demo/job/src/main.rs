//! `sealroom-demo-job --input FILE --key FILE --output DIR [--lambda X]`: the research job of the seed demo.
use std::path::PathBuf;

fn arg(args: &[String], name: &str) -> Result<String, String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| format!("missing {name}"))
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sealroom-demo-job: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let input = PathBuf::from(arg(args, "--input")?);
    let key_path = PathBuf::from(arg(args, "--key")?);
    let output = PathBuf::from(arg(args, "--output")?);
    let lambda: f64 =
        arg(args, "--lambda").map_or(Ok(1.0), |s| s.parse().map_err(|e| format!("--lambda: {e}")))?;
    let sealed = std::fs::read(&input).map_err(|e| format!("{}: {e}", input.display()))?;
    let key = std::fs::read(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let plain = sealroom_demo_job::open_dataset(&sealed, &key)?;
    let table = String::from_utf8(plain).map_err(|_| "the dataset is not text")?;
    let (metrics, model) = sealroom_demo_job::run(&table, lambda)?;
    for (name, doc) in [("metrics.json", &metrics), ("model.json", &model)] {
        let p = output.join(name);
        let text = serde_json::to_string_pretty(doc).map_err(|e| e.to_string())? + "\n";
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let get = |p: &str| metrics.pointer(p).cloned().unwrap_or_default();
    println!(
        "trained on {} rows: test R² {}, RMSE {}",
        get("/rows/train"),
        get("/test/r2"),
        get("/test/rmse")
    );
    Ok(())
}
