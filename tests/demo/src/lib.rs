//! The seed demo's building blocks, shared by the `ci/demo` driver and the host-level test: the data provider's
//! sealed dataset, the researcher's job image, the data provider's key policy and the operator's workload spec.
//!
//! The job image holds one static binary (`sealroom-demo-job`, built with `+crt-static`) and nothing else;
//! the dataset never enters it: the data provider's ciphertext reaches the VM on its own disk and is opened
//! inside the container with the key the broker releases.

use std::io::Read;
use std::path::Path;

use sealroom_tests::oci_image::{Entry, ImageSettings, Layer, OciImage};

pub mod plaintext;

/// The key id the data provider registers.
pub const KEY_ID: &str = "diabetes-2004";
/// Where the dataset appears in the container (the spec's `inputs`).
pub const INPUT_NAME: &str = "dataset";
/// The job's program (the image's entrypoint).
pub const JOB_PROGRAM: &str = "/usr/bin/sealroom-demo-job";
/// The job's fixed arguments (the image's CMD; the policy requires exactly the program and these).
pub const JOB_ARGS: [&str; 8] = [
    "--input",
    "/input/dataset",
    "--key",
    "/run/sealroom/keys/diabetes-2004",
    "--output",
    "/output",
    "--lambda",
    "1.0",
];
/// The multi-party scenario's key ids, one per hospital (also the names of their inputs).
pub const HOSPITAL_KEYS: [&str; 2] = ["rows-a", "rows-b"];
/// The joint training job's fixed arguments: each hospital's half with the key its broker releases.
pub const JOINT_ARGS: [&str; 12] = [
    "--input",
    "/input/rows-a",
    "--key",
    "/run/sealroom/keys/rows-a",
    "--input",
    "/input/rows-b",
    "--key",
    "/run/sealroom/keys/rows-b",
    "--output",
    "/output",
    "--lambda",
    "1.0",
];
/// The private-inference scenario's key id: the model owner's coefficients, released as key material.
pub const MODEL_KEY: &str = "ridge-model";
/// The name of the user's sealed input (mounted at `/input/patient`).
pub const PATIENT_INPUT: &str = "patient";
/// The inference job's fixed arguments.
pub const PREDICT_ARGS: [&str; 7] = [
    "predict",
    "--model",
    "/run/sealroom/keys/ridge-model",
    "--record",
    "/input/patient",
    "--output",
    "/output",
];
/// The features of the table the data provider holds (see `tests/demo/data/MANIFEST.md`).
pub const FEATURES_GZ: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/diabetes_data_raw.csv.gz");
/// The target column.
pub const TARGET_GZ: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/diabetes_target.csv.gz");
/// The sealed dataset's magic (sealroom-demo-job's `MAGIC`).
pub const MAGIC: &[u8; 8] = b"SRDSET01";

fn gunzip(path: &str) -> std::io::Result<String> {
    let gz = std::fs::read(path)?;
    let mut out = String::new();
    flate2::read::GzDecoder::new(gz.as_slice()).read_to_string(&mut out)?;
    Ok(out)
}

/// The provider's table: each row's 10 features, then its target, space-separated.
///
/// # Errors
/// I/O or gzip errors, or files whose row counts differ.
pub fn dataset() -> std::io::Result<Vec<u8>> {
    let features = gunzip(FEATURES_GZ)?;
    let target = gunzip(TARGET_GZ)?;
    let (f, t): (Vec<&str>, Vec<&str>) = (features.lines().collect(), target.lines().collect());
    if f.len() != t.len() {
        return Err(std::io::Error::other(format!("{} feature rows, {} targets", f.len(), t.len())));
    }
    Ok(f.iter().zip(&t).map(|(a, b)| format!("{} {}\n", a.trim(), b.trim())).collect::<String>().into_bytes())
}

/// The table cut into two halves of whole rows (the first `rows / 2` rows, then the rest): what each of two
/// hospitals holds.
#[must_use]
pub fn halves(table: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let rows = table.iter().filter(|b| **b == b'\n').count();
    let cut = table
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth((rows / 2).saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    let (a, b) = table.split_at(cut);
    (a.to_vec(), b.to_vec())
}

/// Fills `out` from the kernel's CSPRNG.
///
/// # Errors
/// When /dev/urandom cannot be read.
pub fn random(out: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(out)
}

/// Seals `plain` with AES-256-GCM (aws-lc-rs): `MAGIC || u64 BE length || nonce || ciphertext+tag`.
///
/// # Errors
/// A key that is not 32 bytes.
pub fn seal_dataset(plain: &[u8], key: &[u8; 32], nonce: [u8; 12]) -> Result<Vec<u8>, String> {
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).map_err(|_| "bad key")?);
    let mut ct = plain.to_vec();
    k.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(MAGIC), &mut ct)
        .map_err(|_| "AES-GCM seal failed")?;
    let mut out = MAGIC.to_vec();
    out.extend(u64::try_from(ct.len()).map_err(|_| "too large")?.to_be_bytes());
    out.extend(nonce);
    out.extend(ct);
    Ok(out)
}

/// The job's only environment variable (the image's; the policy allows exactly it).
pub const JOB_ENV: &str = "PATH=/usr/bin";

/// The measured argument list: the program, then [`JOB_ARGS`].
#[must_use]
pub fn job_argv() -> Vec<String> {
    argv(&JOB_ARGS)
}

/// The measured argument list of a job image whose CMD is `args`.
#[must_use]
pub fn argv(args: &[&str]) -> Vec<String> {
    std::iter::once(JOB_PROGRAM).chain(args.iter().copied()).map(String::from).collect()
}

/// The job image: the static job binary as its entrypoint with the fixed args as CMD; a launch policy that
/// allows no overrides (only log redirection).
///
/// # Errors
/// When the binary cannot be read.
pub fn job_image(job_binary: &Path, variant: Option<&str>) -> std::io::Result<OciImage> {
    job_image_with(job_binary, variant, &JOB_ARGS)
}

/// The job image with `args` as its CMD (each scenario's job: train on one or several inputs, or predict).
///
/// # Errors
/// When the binary cannot be read.
pub fn job_image_with(job_binary: &Path, variant: Option<&str>, args: &[&str]) -> std::io::Result<OciImage> {
    let bin = std::fs::read(job_binary)?;
    let mut entries = vec![
        Entry::Dir("usr/"),
        Entry::Dir("usr/bin/"),
        Entry::File("usr/bin/sealroom-demo-job".into(), bin, 0o755),
        Entry::Dir("input/"),
        Entry::Dir("output/"),
    ];
    if let Some(v) = variant {
        // The "modified job": one more file, hence another image digest.
        entries.push(Entry::File("usr/share-variant".into(), v.as_bytes().to_vec(), 0o644));
    }
    let layer = Layer::build(&entries, true);
    Ok(OciImage::new(
        &ImageSettings {
            entrypoint: vec![JOB_PROGRAM.into()],
            cmd: args.iter().map(|s| (*s).to_owned()).collect(),
            env: vec![JOB_ENV.into()],
            user: "1000:1000".into(),
            // The launch policy lets the operator redirect the job's stdout/stderr to the console (its one
            // summary line); everything else stays at the defaults (no env or cmd overrides).
            labels: [("tee.launch_policy.log_redirect".to_owned(), "always".to_owned())]
                .into_iter()
                .collect(),
        },
        vec![layer],
    ))
}

/// The data provider's policy for [`KEY_ID`]: the given platforms, golden rule (`None` = skip), image digest,
/// the fixed args, and the provider's own broker key as the one the VM must pin (`None` = skip). No GPU.
#[must_use]
pub fn policy(
    platforms: &str,
    golden: Option<(&str, &str)>,
    image_digest: &str,
    broker_key: Option<&str>,
) -> String {
    policy_for(platforms, golden, image_digest, broker_key.as_slice(), &job_argv())
}

/// A provider's policy like [`policy`], for a job whose measured argument list is `argv`, requiring that the
/// VM pins exactly brokers among `broker_keys` (empty: skip).
#[must_use]
pub fn policy_for(
    platforms: &str,
    golden: Option<(&str, &str)>,
    image_digest: &str,
    broker_keys: &[&str],
    argv: &[String],
) -> String {
    let golden = match golden {
        Some((signer, doc)) => format!("{{ signers = [\"ed25519:{signer}\"], documents = [\"{doc}\"] }}"),
        None => "\"skip\"".into(),
    };
    // Every broker key the VM pins must be listed (policy version 2): with several brokers, each provider
    // names all of them (it accepts that the job also trusts the others). None: skip.
    let broker_keys = if broker_keys.is_empty() {
        "\"skip\"".to_owned()
    } else {
        format!("[{}]", broker_keys.iter().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", "))
    };
    let args: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "version = 2\nplatforms = [{platforms}]\ntcb_statuses = \"skip\"\nminimum_tcb = \"skip\"\n\
         debug = \"forbidden\"\ngolden = {golden}\nimage_digests = [\"{image_digest}\"]\nargs = [{}]\nenv = [\"{JOB_ENV}\"]\n\
         broker_keys = {broker_keys}\ngpu_required = false\ngpu_architectures = \"skip\"\ngpu_rim_ids = \"skip\"\n",
        args.join(", ")
    )
}

/// Builds the job binary statically (`+crt-static`, glibc) in release mode and returns its path: the image
/// holds no libc, so the binary must not need one.
///
/// # Errors
/// When cargo fails.
pub fn build_job_binary() -> Result<std::path::PathBuf, String> {
    let root = sealroom_tests::repo_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), std::path::PathBuf::from);
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "sealroom-demo-job",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&root)
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building sealroom-demo-job failed: {status}"));
    }
    Ok(target.join("x86_64-unknown-linux-gnu/release/sealroom-demo-job"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_halves_are_the_table_cut_between_rows() {
        let table = dataset().unwrap();
        let (a, b) = halves(&table);
        assert_eq!([a.as_slice(), b.as_slice()].concat(), table);
        let rows = |t: &[u8]| t.iter().filter(|c| **c == b'\n').count();
        assert_eq!((rows(&a), rows(&b)), (221, 221));
        assert!(a.ends_with(b"\n") && !b.starts_with(b"\n"));
        assert_eq!(halves(b"1\n2\n3\n"), (b"1\n".to_vec(), b"2\n3\n".to_vec()));
        assert_eq!(halves(b""), (Vec::new(), Vec::new()));
    }

    #[test]
    fn each_job_names_its_args_in_its_policy() {
        let p = policy_for("\"tpm\"", None, "sha256:00", &[], &argv(&PREDICT_ARGS));
        assert!(p.contains(r#"args = ["/usr/bin/sealroom-demo-job", "predict", "--model""#), "{p}");
        assert_eq!(
            policy("\"tpm\"", None, "sha256:00", None),
            policy_for("\"tpm\"", None, "sha256:00", &[], &job_argv())
        );
    }
}
