//! The seed demo's research job, as a library so that its parts are tested on the host.
//!
//! Input: the data provider's sealed dataset ([`open_dataset`]), the diabetes table (442 rows of 10 features and
//! the disease-progression target, space-separated). The job splits it deterministically (every fifth row is
//! held out), standardises the features on the training rows, fits a ridge regression (closed form, unpenalised
//! intercept) and reports R² and RMSE on both parts, with the coefficients on the original feature scale.

// The numerics index fixed 10×10 arrays with loop counters below 10 (bounds known at compile time); bytes
// from outside are only read through split/parse and checked slices.
#![allow(clippy::indexing_slicing)]

use aes_gcm::aead::{AeadInOut, KeyInit};

/// Feature rows and their targets.
pub type Rows = (Vec<[f64; 10]>, Vec<f64>);

/// The sealed dataset's magic (also its AEAD associated data).
pub const MAGIC: &[u8; 8] = b"SRDSET01";
/// Feature names of the diabetes table, in column order.
pub const FEATURES: [&str; 10] = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"];

/// Opens a sealed dataset: `MAGIC || u64 BE ciphertext length || 12-byte nonce || ciphertext+tag`, followed by
/// anything (a raw disk's zero padding). AES-256-GCM with `MAGIC` as associated data.
///
/// # Errors
/// A short or malformed envelope, a wrong key or tampered bytes.
pub fn open_dataset(sealed: &[u8], key: &[u8]) -> Result<Vec<u8>, String> {
    let rest = sealed.strip_prefix(MAGIC.as_slice()).ok_or("input is not a sealed dataset (bad magic)")?;
    let (len, rest) = rest.split_first_chunk::<8>().ok_or("sealed dataset: truncated length")?;
    let (nonce, rest) = rest.split_first_chunk::<12>().ok_or("sealed dataset: truncated nonce")?;
    let len = usize::try_from(u64::from_be_bytes(*len)).map_err(|_| "sealed dataset: length too large")?;
    let mut buf = rest.get(..len).ok_or("sealed dataset: shorter than its length field")?.to_vec();
    let key = aes_gcm::Key::<aes_gcm::Aes256Gcm>::try_from(key)
        .map_err(|_| format!("data key is {} bytes, expected 32", key.len()))?;
    let cipher = aes_gcm::Aes256Gcm::new(&key);
    let nonce = aes_gcm::Nonce::try_from(nonce.as_slice()).map_err(|_| "sealed dataset: nonce")?;
    cipher
        .decrypt_in_place(&nonce, MAGIC, &mut buf)
        .map_err(|_| "sealed dataset does not open with this key (wrong key or tampered data)")?;
    Ok(buf)
}

/// Parses the table: one row per line, 11 numbers (10 features, then the target).
///
/// # Errors
/// A row with another number of fields or a field that is not a number.
pub fn parse_table(text: &str) -> Result<Rows, String> {
    let mut x = Vec::new();
    let mut y = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Vec<f64> = line
            .split_ascii_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("row {}: {e}", i + 1))?;
        let (features, target) = v.split_last_chunk::<1>().ok_or("empty row")?;
        let features: [f64; 10] =
            features.try_into().map_err(|_| format!("row {}: {} fields, expected 11", i + 1, v.len()))?;
        let [target] = *target;
        x.push(features);
        y.push(target);
    }
    Ok((x, y))
}

/// A fitted model on the original feature scale: `y = intercept + Σ coef[i]·x[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// The intercept.
    pub intercept: f64,
    /// One coefficient per feature.
    pub coef: [f64; 10],
}

impl Model {
    /// The prediction for one row.
    #[must_use]
    pub fn predict(&self, row: &[f64; 10]) -> f64 {
        self.intercept + self.coef.iter().zip(row).map(|(c, v)| c * v).sum::<f64>()
    }
}

/// Solves `a·x = b` for a symmetric positive definite `a` (Cholesky).
fn solve_spd(a: &[[f64; 10]; 10], b: &[f64; 10]) -> Result<[f64; 10], String> {
    let mut l = [[0.0f64; 10]; 10];
    for i in 0..10 {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            if i == j {
                let d = a[i][i] - s;
                if d <= 0.0 {
                    return Err("the normal equations are singular".into());
                }
                l[i][j] = d.sqrt();
            } else {
                l[i][j] = (a[i][j] - s) / l[j][j];
            }
        }
    }
    let mut z = [0.0f64; 10];
    for i in 0..10 {
        z[i] = (b[i] - (0..i).map(|k| l[i][k] * z[k]).sum::<f64>()) / l[i][i];
    }
    let mut x = [0.0f64; 10];
    for i in (0..10).rev() {
        x[i] = (z[i] - (i + 1..10).map(|k| l[k][i] * x[k]).sum::<f64>()) / l[i][i];
    }
    Ok(x)
}

/// Ridge regression with penalty `lambda` on standardised features (unpenalised intercept); `lambda = 0` is
/// ordinary least squares.
///
/// # Errors
/// Fewer than 11 rows, a constant feature, or singular normal equations.
pub fn fit_ridge(x: &[[f64; 10]], y: &[f64], lambda: f64) -> Result<Model, String> {
    if x.len() != y.len() || x.len() < 11 {
        return Err(format!("{} rows, need at least 11", x.len()));
    }
    #[allow(clippy::cast_precision_loss)]
    let n = x.len() as f64;
    let mut mean = [0.0f64; 10];
    for row in x {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v / n;
        }
    }
    let mut sd = [0.0f64; 10];
    for row in x {
        for j in 0..10 {
            sd[j] += (row[j] - mean[j]).powi(2) / n;
        }
    }
    for (j, s) in sd.iter_mut().enumerate() {
        *s = s.sqrt();
        if *s == 0.0 {
            return Err(format!("feature {} is constant", FEATURES[j]));
        }
    }
    let y_mean = y.iter().sum::<f64>() / n;
    let mut a = [[0.0f64; 10]; 10];
    let mut b = [0.0f64; 10];
    for (row, t) in x.iter().zip(y) {
        let z: Vec<f64> = (0..10).map(|j| (row[j] - mean[j]) / sd[j]).collect();
        for i in 0..10 {
            b[i] += z[i] * (t - y_mean);
            for j in 0..10 {
                a[i][j] += z[i] * z[j];
            }
        }
    }
    for (i, r) in a.iter_mut().enumerate() {
        r[i] += lambda;
    }
    let w = solve_spd(&a, &b)?;
    let mut coef = [0.0f64; 10];
    for j in 0..10 {
        coef[j] = w[j] / sd[j];
    }
    let intercept = y_mean - coef.iter().zip(&mean).map(|(c, m)| c * m).sum::<f64>();
    Ok(Model { intercept, coef })
}

/// R² and RMSE of `model` on rows.
#[must_use]
pub fn score(model: &Model, x: &[[f64; 10]], y: &[f64]) -> (f64, f64) {
    #[allow(clippy::cast_precision_loss)]
    let n = y.len().max(1) as f64;
    let mean = y.iter().sum::<f64>() / n;
    let ss_res: f64 = x.iter().zip(y).map(|(r, t)| (t - model.predict(r)).powi(2)).sum();
    let ss_tot: f64 = y.iter().map(|t| (t - mean).powi(2)).sum();
    (1.0 - ss_res / ss_tot, (ss_res / n).sqrt())
}

/// Every fifth row (index % 5 == 4) is held out.
#[must_use]
pub fn split(x: &[[f64; 10]], y: &[f64]) -> (Rows, Rows) {
    let mut train = (Vec::new(), Vec::new());
    let mut test = (Vec::new(), Vec::new());
    for (i, (r, t)) in x.iter().zip(y).enumerate() {
        let part = if i % 5 == 4 { &mut test } else { &mut train };
        part.0.push(*r);
        part.1.push(*t);
    }
    (train, test)
}

/// The value after the first `name` in `args`.
///
/// # Errors
/// When `name` is missing or has no value.
pub fn arg(args: &[String], name: &str) -> Result<String, String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| format!("missing {name}"))
}

/// The values after every `name` in `args`, in order (several data providers: one `--input` and `--key` each).
#[must_use]
pub fn all(args: &[String], name: &str) -> Vec<String> {
    args.iter().zip(args.iter().skip(1)).filter(|(a, _)| *a == name).map(|(_, v)| v.clone()).collect()
}

/// The job on one table: metrics and model as JSON documents (`metrics.json`, `model.json`).
///
/// # Errors
/// A malformed table or a failed fit.
pub fn run(table: &str, lambda: f64) -> Result<(serde_json::Value, serde_json::Value), String> {
    run_parts(&[table.to_owned()], lambda)
}

/// The job on the parts of one table held by several providers (their rows in the order given, as if one
/// table): metrics (with each part's row count) and model as JSON documents.
///
/// # Errors
/// No part, a malformed part or a failed fit.
pub fn run_parts(parts: &[String], lambda: f64) -> Result<(serde_json::Value, serde_json::Value), String> {
    if parts.is_empty() {
        return Err("no input".into());
    }
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut part_rows = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let (px, py) = parse_table(part).map_err(|e| format!("part {}: {e}", i + 1))?;
        part_rows.push(py.len());
        x.extend(px);
        y.extend(py);
    }
    let ((xt, yt), (xh, yh)) = split(&x, &y);
    let model = fit_ridge(&xt, &yt, lambda)?;
    let (r2_train, rmse_train) = score(&model, &xt, &yt);
    let (r2_test, rmse_test) = score(&model, &xh, &yh);
    let round = |v: f64| (v * 1e6).round() / 1e6;
    let metrics = serde_json::json!({
        "dataset": format!("diabetes (Efron et al. 2004), {} rows", y.len()),
        "parts": part_rows,
        "model": "ridge regression, standardised features, unpenalised intercept",
        "lambda": lambda,
        "rows": {"train": yt.len(), "test": yh.len()},
        "train": {"r2": round(r2_train), "rmse": round(rmse_train)},
        "test": {"r2": round(r2_test), "rmse": round(rmse_test)},
    });
    let coefficients: serde_json::Map<String, serde_json::Value> =
        FEATURES.iter().zip(&model.coef).map(|(n, c)| ((*n).to_owned(), round(*c).into())).collect();
    let summary = serde_json::json!({
        "target": "disease progression one year after baseline",
        "intercept": round(model.intercept),
        "coefficients": coefficients,
    });
    Ok((metrics, summary))
}

/// The largest model document and patient record the predict mode reads (a model is one key's material).
pub const MAX_DOC_BYTES: usize = 4096;

impl Model {
    /// Reads a model document (`model.json` as the train mode writes it, any whitespace): `intercept` and
    /// `coefficients` with exactly the ten [`FEATURES`].
    ///
    /// # Errors
    /// Too long, not JSON, a missing, extra or non-numeric coefficient.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_DOC_BYTES {
            return Err(format!("model of {} bytes, at most {MAX_DOC_BYTES}", bytes.len()));
        }
        let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("model: {e}"))?;
        let intercept =
            doc.get("intercept").and_then(serde_json::Value::as_f64).ok_or("model: no intercept")?;
        let c =
            doc.get("coefficients").and_then(serde_json::Value::as_object).ok_or("model: no coefficients")?;
        if c.len() != FEATURES.len() {
            return Err(format!("model: {} coefficients, expected {}", c.len(), FEATURES.len()));
        }
        let mut coef = [0.0f64; 10];
        for (slot, name) in coef.iter_mut().zip(FEATURES) {
            *slot = c
                .get(name)
                .and_then(serde_json::Value::as_f64)
                .ok_or(format!("model: no coefficient {name}"))?;
        }
        Ok(Self { intercept, coef })
    }
}

/// Parses one patient record: the ten features of a table row (a target, if present, is refused: the user
/// does not know it).
///
/// # Errors
/// Too long, not one line of exactly ten numbers.
pub fn parse_record(bytes: &[u8]) -> Result<[f64; 10], String> {
    if bytes.len() > MAX_DOC_BYTES {
        return Err(format!("record of {} bytes, at most {MAX_DOC_BYTES}", bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "record: not text")?.trim();
    if text.lines().count() != 1 {
        return Err("record: expected one line".into());
    }
    let v: Vec<f64> = text
        .split_ascii_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("record: {e}"))?;
    v.as_slice().try_into().map_err(|_| format!("record: {} fields, expected 10", v.len()))
}

/// The predict mode: `model` (a model document) applied to `record`; the prediction document.
///
/// # Errors
/// A malformed model or record.
pub fn predict(model: &[u8], record: &[u8]) -> Result<serde_json::Value, String> {
    let m = Model::from_json(model)?;
    let r = parse_record(record)?;
    Ok(serde_json::json!({
        "target": "disease progression one year after baseline",
        "prediction": (m.predict(&r) * 1e3).round() / 1e3,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gunzip(name: &str) -> String {
        let p = format!("{}/../data/{name}", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new("gzip").arg("-dc").arg(p).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    /// The same table the demo seals (tests/demo/data: features, then the target), decompressed by the system's gzip.
    fn table() -> String {
        let f = gunzip("diabetes_data_raw.csv.gz");
        let t = gunzip("diabetes_target.csv.gz");
        f.lines().zip(t.lines()).map(|(a, b)| format!("{a} {b}\n")).collect()
    }

    #[test]
    fn least_squares_on_the_whole_table_reaches_the_published_r2() {
        let (x, y) = parse_table(&table()).unwrap();
        assert_eq!(x.len(), 442);
        let m = fit_ridge(&x, &y, 0.0).unwrap();
        let (r2, _) = score(&m, &x, &y);
        assert!((r2 - 0.517_749).abs() < 1e-5, "R² {r2}");
        // Ridge shrinks: a larger penalty never fits the training rows better.
        let (r2_ridge, _) = score(&fit_ridge(&x, &y, 10.0).unwrap(), &x, &y);
        assert!(r2_ridge < r2);
    }

    #[test]
    fn the_job_reports_held_out_metrics() {
        let (metrics, model) = run(&table(), 1.0).unwrap();
        assert_eq!(metrics["rows"]["train"], 354);
        assert_eq!(metrics["rows"]["test"], 88);
        let r2 = metrics["test"]["r2"].as_f64().unwrap();
        assert!(r2 > 0.3 && r2 < 0.7, "{r2}");
        assert_eq!(model["coefficients"].as_object().unwrap().len(), 10);
    }

    #[test]
    fn two_parts_train_the_same_model_as_the_whole_table() {
        let t = table();
        let lines: Vec<&str> = t.lines().collect();
        let (a, b) = lines.split_at(221);
        let parts = [a.join("\n"), b.join("\n")];
        let (m2, model2) = run_parts(&parts, 1.0).unwrap();
        let (m1, model1) = run(&t, 1.0).unwrap();
        assert_eq!(m2["parts"], serde_json::json!([221, 221]));
        assert_eq!(m2["rows"], m1["rows"]);
        assert_eq!(m2["test"], m1["test"]);
        assert_eq!(model2, model1);
        // One part alone is another model (fewer rows).
        let (m_a, _) = run_parts(&parts[..1], 1.0).unwrap();
        assert_ne!(m_a["rows"], m1["rows"]);
        assert!(run_parts(&[], 1.0).unwrap_err().contains("no input"));
        assert!(run_parts(&[a.join("\n"), "1 2 3".into()], 1.0).unwrap_err().starts_with("part 2: "));
    }

    #[test]
    fn every_input_needs_its_own_key_argument() {
        let args: Vec<String> =
            ["--input", "/a", "--key", "/ka", "--input", "/b", "--key", "/kb", "--output", "/o"]
                .map(String::from)
                .into();
        assert_eq!(all(&args, "--input"), ["/a", "/b"]);
        assert_eq!(all(&args, "--key"), ["/ka", "/kb"]);
        assert_eq!(arg(&args, "--output").unwrap(), "/o");
        assert!(arg(&args, "--lambda").unwrap_err().contains("missing --lambda"));
    }

    #[test]
    fn predict_applies_the_trained_model_to_one_record() {
        let t = table();
        let (_, model) = run(&t, 1.0).unwrap();
        let model_bytes = serde_json::to_vec(&model).unwrap();
        // The last row (a held-out one), without its target.
        let row = t.lines().last().unwrap();
        let (features, _) = row.rsplit_once(' ').unwrap();
        let doc = predict(&model_bytes, features.as_bytes()).unwrap();
        let m = Model::from_json(&model_bytes).unwrap();
        let expected = m.predict(&parse_record(features.as_bytes()).unwrap());
        let got = doc["prediction"].as_f64().unwrap();
        assert!((got - expected).abs() < 1e-3, "{got} vs {expected}");
        assert!(got > 25.0 && got < 346.0, "outside the target's range: {got}");
        // The record with its target is not a record; nor are two lines, or a model missing a feature.
        assert!(predict(&model_bytes, row.as_bytes()).unwrap_err().contains("11 fields, expected 10"));
        assert!(parse_record(format!("{features}\n{features}").as_bytes()).unwrap_err().contains("one line"));
        let mut short = model.clone();
        short["coefficients"].as_object_mut().unwrap().remove("bmi");
        assert!(
            Model::from_json(&serde_json::to_vec(&short).unwrap()).unwrap_err().contains("9 coefficients")
        );
        assert!(Model::from_json(&vec![b' '; MAX_DOC_BYTES + 1]).unwrap_err().contains("at most"));
    }

    #[test]
    fn sealed_datasets_open_only_with_their_key_and_unchanged() {
        use aes_gcm::aead::AeadInOut;
        let key = [7u8; 32];
        let nonce = [1u8; 12];
        let cipher =
            aes_gcm::Aes256Gcm::new(&aes_gcm::Key::<aes_gcm::Aes256Gcm>::try_from(&key[..]).unwrap());
        let mut ct = b"1 2 3".to_vec();
        cipher.encrypt_in_place(&aes_gcm::Nonce::try_from(&nonce[..]).unwrap(), MAGIC, &mut ct).unwrap();
        let mut sealed = MAGIC.to_vec();
        sealed.extend((ct.len() as u64).to_be_bytes());
        sealed.extend(nonce);
        sealed.extend(&ct);
        sealed.extend([0u8; 512]);
        assert_eq!(open_dataset(&sealed, &key).unwrap(), b"1 2 3");
        assert!(open_dataset(&sealed, &[8u8; 32]).unwrap_err().contains("does not open"));
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(open_dataset(&flipped, &key).is_err());
        assert!(open_dataset(&sealed[..20], &key).is_err());
        assert!(open_dataset(b"nope", &key).unwrap_err().contains("bad magic"));
    }
}
