//! The seed demo's building blocks, shared by the `ci/demo` driver and the host-level test: the data provider's
//! sealed dataset, the researcher's job image, the data provider's key policy and the operator's workload spec.
//!
//! The job image holds one static binary (`sealroom-demo-job`, built with `+crt-static`) and nothing else;
//! the dataset never enters it: the data provider's ciphertext reaches the VM on its own disk and is opened
//! inside the container with the key the broker releases.

use std::io::Read;
use std::path::Path;

use sealroom_tests::oci_image::{Entry, ImageSettings, Layer, OciImage};

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
    std::iter::once(JOB_PROGRAM).chain(JOB_ARGS).map(String::from).collect()
}

/// The job image: the static job binary as its entrypoint with the fixed args as CMD; a launch policy that
/// allows no overrides (only log redirection).
///
/// # Errors
/// When the binary cannot be read.
pub fn job_image(job_binary: &Path, variant: Option<&str>) -> std::io::Result<OciImage> {
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
            cmd: JOB_ARGS.iter().map(|s| (*s).to_owned()).collect(),
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
    let golden = match golden {
        Some((signer, doc)) => format!("{{ signers = [\"ed25519:{signer}\"], documents = [\"{doc}\"] }}"),
        None => "\"skip\"".into(),
    };
    let broker_keys = broker_key.map_or_else(|| "\"skip\"".to_owned(), |k| format!("[\"{k}\"]"));
    let args: Vec<String> = job_argv().iter().map(|a| format!("{a:?}")).collect();
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
