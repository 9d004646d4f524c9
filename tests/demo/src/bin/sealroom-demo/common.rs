//! Steps every scenario shares: progress lines with timings, the `sealroom` CLI, the guest image and its
//! golden document, the job images in a loopback registry, disks.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use sealroom_tests::oci_image::OciImage;
use sealroom_tests::registry::Registry;

/// Runs `f` as one visible step with its duration.
pub fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("[demo] {name}");
    let _ = std::io::stdout().flush();
    let t = Instant::now();
    let r = f();
    let how = if r.is_ok() { "done" } else { "FAILED" };
    println!("[demo]   {how} in {:.1} s", t.elapsed().as_secs_f64());
    r
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

pub fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Writes a secret (a data key, a KEK) with mode 0600.
pub fn write_secret(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    write(path, bytes)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))
}

pub fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    sealroom_demo::random(&mut b)?;
    Ok(b)
}

/// The `sealroom` binary next to this one (both built by `ci/demo`), or `$SEALROOM_BIN`.
pub fn sealroom() -> Result<Command> {
    let bin = match std::env::var_os("SEALROOM_BIN") {
        Some(b) => PathBuf::from(b),
        None => std::env::current_exe()?.with_file_name("sealroom"),
    };
    ensure!(bin.exists(), "{} missing: build it (cargo build -p sealroom-cli --bin sealroom)", bin.display());
    let mut cmd = Command::new(bin);
    // Its refusals are one line; no anyhow backtrace even when RUST_BACKTRACE is set.
    cmd.env("RUST_LIB_BACKTRACE", "0");
    Ok(cmd)
}

/// Runs a `sealroom` command; returns (success, stdout + stderr).
pub fn sealroom_output<S: AsRef<OsStr>>(args: &[S]) -> Result<(bool, String)> {
    let out = sealroom()?.args(args).output().context("running sealroom")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// Prints `$ sealroom ARGS` (paths as given), runs it and prints its output indented; returns (success, output).
pub fn sealroom_shown<S: AsRef<OsStr>>(args: &[S]) -> Result<(bool, String)> {
    let line: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    println!("[demo]   $ sealroom {}", line.join(" "));
    let (ok, out) = sealroom_output(args)?;
    print!("{}", indent(&out));
    Ok((ok, out))
}

pub fn indent(text: &str) -> String {
    text.lines().map(|l| format!("         {l}\n")).collect()
}

/// The golden signer's public key (hex): derived from a PKCS#8 signing key file, or the hex itself.
fn golden_public_key(key: &Path) -> Result<String> {
    let s = key.to_string_lossy();
    if s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Ok(s.into_owned());
    }
    let pkcs8 =
        std::fs::read(key).with_context(|| format!("reading the golden signing key {}", key.display()))?;
    let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|e| anyhow::anyhow!("{}: not an Ed25519 PKCS#8 key: {e}", key.display()))?;
    Ok(hex::encode(aws_lc_rs::signature::KeyPair::public_key(&pair).as_ref()))
}

/// The built guest image and its signed golden document (what every party pins).
pub struct GuestImage {
    pub disk: PathBuf,
    pub golden: PathBuf,
    pub golden_sig: PathBuf,
    /// The golden document's signer (hex Ed25519 public key).
    pub golden_key_hex: String,
}

impl GuestImage {
    /// The image in `dir` (`ci/image` output), its golden document checked against `golden_key`.
    pub fn open(dir: &Path, golden_key: &Path) -> Result<Self> {
        let disk = dir.join("disk.raw");
        let golden = dir.join("golden.json");
        let golden_sig = dir.join("golden.json.sig");
        for f in [&disk, &golden, &golden_sig] {
            ensure!(
                f.exists(),
                "{} missing: build the image with a golden document (ci/image --golden-key …)",
                f.display()
            );
        }
        let golden_key_hex = golden_public_key(golden_key)?;
        let sig = std::fs::read_to_string(&golden_sig)?;
        sealroom_measurements::golden::verify(&std::fs::read(&golden)?, sig.trim(), &golden_key_hex).map_err(
            |e| {
                anyhow::anyhow!(
                    "{} is not signed by {golden_key_hex} ({e}): rebuild the image with that key (ci/demo --rebuild-image)",
                    golden.display()
                )
            },
        )?;
        Ok(Self { disk, golden, golden_sig, golden_key_hex })
    }

    /// `sha256:HEX` of the golden document (what a policy's `golden.documents` lists).
    pub fn doc_ref(&self) -> Result<String> {
        Ok(format!("sha256:{}", sha256_hex(&std::fs::read(&self.golden)?)))
    }

    /// `verify-receipt RESULT --golden … --golden-key …` against this image's golden document: every scenario's
    /// auditor starts from it and adds the broker keys (and receipts, and the enrolled AK) it checks with.
    pub fn verify_receipt_args<'a>(&'a self, result: &'a Path) -> Vec<&'a OsStr> {
        vec![
            "verify-receipt".as_ref(),
            result.as_os_str(),
            "--golden".as_ref(),
            self.golden.as_os_str(),
            "--golden-key".as_ref(),
            self.golden_key_hex.as_ref(),
        ]
    }
}

/// What all scenarios share: the image, the job binary and the loopback registry the VMs pull from.
pub struct Shared {
    pub image: GuestImage,
    pub job: PathBuf,
    pub registry: Registry,
}

impl Shared {
    /// Pushes `image` as `repo:tag`; returns its manifest digest and the reference the guest pulls (the guest
    /// reaches the host's loopback at 10.0.2.2, QEMU user networking).
    pub fn push(&self, repo: &str, tag: &str, image: &OciImage) -> Result<(String, String)> {
        self.registry.push(repo, tag, image).map_err(anyhow::Error::msg)?;
        let digest = image.manifest_digest();
        Ok((format!("10.0.2.2:{}/{repo}@{digest}", self.registry.port()), digest))
    }

    /// The registry as the spec's `insecure_registries` names it.
    pub fn insecure_registry(&self) -> String {
        format!("10.0.2.2:{}", self.registry.port())
    }
}

/// A fresh, empty scenario directory `work/name`.
pub fn fresh_dir(work: &Path, name: &str) -> Result<PathBuf> {
    let dir = work.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Seals `plain` with a fresh AES-256-GCM data key onto a raw data disk at `disk` (zero-padded to whole
/// sectors); the key goes to `key_file` (0600). Checks the disk holds no plaintext.
pub fn seal_to_disk(plain: &[u8], disk: &Path, key_file: &Path) -> Result<()> {
    let key: [u8; 32] = random()?;
    let mut sealed = sealroom_demo::seal_dataset(plain, &key, random()?).map_err(anyhow::Error::msg)?;
    ensure!(!sealed.windows(32).any(|w| plain.starts_with(w)), "the sealed disk holds plaintext");
    sealed.resize(sealed.len().next_multiple_of(4096) + 4096, 0);
    write(disk, &sealed)?;
    write_secret(key_file, key)?;
    println!(
        "[demo]   {} rows ({} bytes, sha256 {}…) sealed into {} ({} bytes)",
        plain.iter().filter(|b| **b == b'\n').count(),
        plain.len(),
        sha256_hex(plain).get(..16).unwrap_or_default(),
        disk.display(),
        sealed.len()
    );
    Ok(())
}

/// Unpacks an output disk (a plain tar archive) into `result`, which must then hold `expect`.
pub fn unpack(disk: &Path, result: &Path, expect: &[&str]) -> Result<()> {
    std::fs::create_dir_all(result)?;
    let st = Command::new("tar").arg("-xf").arg(disk).arg("-C").arg(result).status()?;
    ensure!(st.success(), "tar -xf {} failed", disk.display());
    for name in expect {
        ensure!(result.join(name).exists(), "the result has no {name}");
    }
    Ok(())
}

/// The last record of a broker's audit log, after `sealroom audit verify` checked its hash chain.
pub fn audit_last(log: &Path) -> Result<serde_json::Value> {
    let (ok, out) = sealroom_shown(&[OsStr::new("audit"), OsStr::new("verify"), log.as_os_str()])?;
    ensure!(ok, "the audit log {} does not verify: {out}", log.display());
    let text = std::fs::read_to_string(log)?;
    Ok(serde_json::from_str(text.lines().last().context("the audit log is empty")?)?)
}

/// Whether `record` has every `(field, value)`.
pub fn has(record: &serde_json::Value, fields: &[(&str, &str)]) -> bool {
    fields.iter().all(|(k, v)| record.get(k).and_then(serde_json::Value::as_str) == Some(v))
}

/// The value at a JSON pointer (`/rows/train`), or null.
pub fn at<'a>(v: &'a serde_json::Value, pointer: &str) -> &'a serde_json::Value {
    v.pointer(pointer).unwrap_or(&serde_json::Value::Null)
}
