//! `sealroom measure`: predict what booting a UKI (or the UKI inside a disk image) measures, check it against a
//! signed golden document, or write and sign one.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sealroom_measurements::disk;
use sealroom_measurements::evidence::HashAlg;
use sealroom_measurements::golden::{self, GoldenDocument, ImageInfo, PackageLock};
use sealroom_measurements::uki::{BootContext, UkiPrediction, predict};

/// Arguments of `sealroom measure`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A UKI (PE file) or a disk image (GPT with an EFI System Partition holding \EFI\BOOT\BOOTX64.EFI).
    input: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// PCR banks to predict (comma-separated: sha1, sha256, sha384).
    #[arg(long, default_value = "sha256,sha384", value_delimiter = ',')]
    banks: Vec<String>,
    /// Recompute and compare with this signed golden document (signature in <FILE>.sig).
    #[arg(long, value_name = "GOLDEN_JSON")]
    check: Option<PathBuf>,
    /// Verify the golden document with this public key (hex) instead of the key pinned in this build.
    #[arg(long, value_name = "HEX")]
    public_key: Option<String>,
    /// Write a golden document for the input to <FILE> and sign it into <FILE>.sig.
    #[arg(long, value_name = "GOLDEN_JSON", requires_all = ["image_id", "image_version", "signing_key"])]
    write_golden: Option<PathBuf>,
    /// Image identifier for --write-golden.
    #[arg(long)]
    image_id: Option<String>,
    /// Image version for --write-golden.
    #[arg(long)]
    image_version: Option<String>,
    /// Ed25519 PKCS#8 (DER) signing key for --write-golden.
    #[arg(long, value_name = "PKCS8_FILE")]
    signing_key: Option<PathBuf>,
    /// Package lock for --write-golden: JSON object name → {"version", "sha256"}.
    #[arg(long, value_name = "JSON")]
    packages: Option<PathBuf>,
    /// Generate a new signing key: writes PKCS#8 to <FILE> (mode 0600) and prints the public key (hex).
    #[arg(long, value_name = "PKCS8_FILE", conflicts_with_all = ["input", "check", "write_golden"])]
    generate_signing_key: Option<PathBuf>,
}

fn parse_bank(name: &str) -> Result<HashAlg> {
    Ok(match name.trim() {
        "sha1" => HashAlg::Sha1,
        "sha256" => HashAlg::Sha256,
        "sha384" => HashAlg::Sha384,
        other => bail!("unknown bank {other:?} (sha1, sha256, sha384)"),
    })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn sig_path(golden: &Path) -> PathBuf {
    let mut p = golden.as_os_str().to_owned();
    p.push(".sig");
    PathBuf::from(p)
}

struct Measured {
    prediction: UkiPrediction,
    disk_sha256: Option<String>,
    source: String,
}

fn measure(input: &Path, banks: &[HashAlg]) -> Result<Measured> {
    let bytes = read(input)?;
    if bytes.starts_with(b"MZ") {
        let prediction = predict(&bytes, banks, &BootContext::default())?;
        return Ok(Measured { prediction, disk_sha256: None, source: "uki".into() });
    }
    let boot = disk::find_uki(&bytes)
        .with_context(|| format!("{} is neither a PE file nor a GPT disk", input.display()))?;
    let esp = boot.gpt.esp()?;
    let source = format!(
        "disk: ESP partition {} ({}), {}, \\EFI\\BOOT\\BOOTX64.EFI",
        esp.number, esp.unique_guid, boot.fat_kind
    );
    let prediction = predict(&boot.uki, banks, &BootContext { gpt_event: Some(boot.gpt.gpt_event.clone()) })?;
    let disk_sha256 = Some(hex::encode(sealroom_measurements::digest::sha256(&bytes)));
    Ok(Measured { prediction, disk_sha256, source })
}

fn print_table(m: &Measured) {
    let p = &m.prediction;
    println!("source:                  {}", m.source);
    if let Some(d) = &m.disk_sha256 {
        println!("disk sha256:             {d}");
    }
    println!("uki sha256:              {}", p.file_sha256);
    println!("uki authenticode sha256: {}", p.authenticode_sha256);
    println!("uki authenticode sha384: {}", p.authenticode_sha384);
    println!("sections (measured by systemd-stub, in order):");
    for s in &p.sections {
        println!("  {:<9} {:>10} bytes  sha256 {}", s.name, s.size, s.sha256);
    }
    println!("predicted registers:");
    for r in &p.registers {
        let note = if r.complete { "" } else { "  (incomplete: needs the boot disk's GPT)" };
        println!("  {:<6} {:<7} {}{note}", r.register, r.alg, r.value);
        for e in &r.events {
            println!("           {:<33} {}  {}", e.event_type, e.digest, e.description);
        }
    }
}

pub fn run(args: &Args) -> Result<()> {
    if let Some(path) = &args.generate_signing_key {
        let (pkcs8, public) = golden::generate_signing_key()?;
        write_private(path, &pkcs8)?;
        println!("{public}");
        return Ok(());
    }
    let Some(input) = &args.input else { bail!("an input UKI or disk image is required") };
    let banks = args.banks.iter().map(|b| parse_bank(b)).collect::<Result<Vec<_>>>()?;
    let measured = measure(input, &banks)?;

    if let Some(golden_path) = &args.check {
        let doc = read(golden_path)?;
        let sig_file = sig_path(golden_path);
        let sig =
            std::fs::read_to_string(&sig_file).with_context(|| format!("reading {}", sig_file.display()))?;
        let golden = match &args.public_key {
            Some(key) => golden::verify(&doc, &sig, key)?,
            None => golden::verify_pinned(&doc, &sig)?,
        };
        if let (Some(want), Some(got)) = (&golden.image.disk_sha256, &measured.disk_sha256)
            && want != got
        {
            bail!("golden: disk sha256 mismatch: expected {want}, got {got}");
        }
        golden.check(&measured.prediction)?;
        println!(
            "OK: {} {} matches {} (signature valid)",
            input.display(),
            golden.image.id,
            golden_path.display()
        );
        return Ok(());
    }

    if let Some(out) = &args.write_golden {
        let (Some(id), Some(version), Some(key)) = (&args.image_id, &args.image_version, &args.signing_key)
        else {
            bail!("--write-golden needs --image-id, --image-version and --signing-key");
        };
        let packages: BTreeMap<String, PackageLock> = match &args.packages {
            Some(p) => serde_json::from_slice(&read(p)?).context("package lock")?,
            None => BTreeMap::new(),
        };
        let image =
            ImageInfo { id: id.clone(), version: version.clone(), disk_sha256: measured.disk_sha256.clone() };
        let doc = GoldenDocument::from_prediction(
            image,
            &measured.prediction,
            golden::default_platforms(),
            packages,
        );
        let json = doc.to_json()?;
        let sig = golden::sign(&json, &read(key)?)?;
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
        std::fs::write(sig_path(out), sig).with_context(|| format!("writing {}.sig", out.display()))?;
        println!("wrote {} and {}", out.display(), sig_path(out).display());
        return Ok(());
    }

    if args.json {
        let mut v = serde_json::to_value(&measured.prediction)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("source".into(), measured.source.clone().into());
            obj.insert("disk_sha256".into(), measured.disk_sha256.clone().into());
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_table(&measured);
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../measurements").join(rel)
    }

    fn args(input: &str, check: Option<PathBuf>) -> Args {
        Args {
            input: Some(path(input)),
            json: false,
            banks: vec!["sha256".into(), "sha384".into()],
            check,
            public_key: None,
            write_golden: None,
            image_id: None,
            image_version: None,
            signing_key: None,
            packages: None,
            generate_signing_key: None,
        }
    }

    #[test]
    fn check_accepts_the_published_fixture_and_refuses_a_tampered_copy() {
        let golden = path("golden/fixture-uki/golden.json");
        run(&args("testdata/uki/disk-fat16.raw", Some(golden.clone()))).unwrap();
        let err = run(&args("testdata/uki/disk-fat12.raw", Some(golden.clone()))).unwrap_err().to_string();
        assert!(err.starts_with("golden: disk sha256 mismatch"), "{err}");

        let dir = std::env::temp_dir().join(format!("sealroom-measure-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut doc = std::fs::read(&golden).unwrap();
        let i = doc.len() / 2;
        doc[i] ^= 1;
        let copy = dir.join("golden.json");
        std::fs::write(&copy, &doc).unwrap();
        std::fs::copy(sig_path(&golden), sig_path(&copy)).unwrap();
        let err = run(&args("testdata/uki/disk-fat16.raw", Some(copy))).unwrap_err().to_string();
        assert_eq!(err, "golden: invalid signature: does not verify under the pinned key");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn measures_a_uki_and_a_disk() {
        let uki = measure(&path("testdata/uki/uki.efi"), &[HashAlg::Sha256]).unwrap();
        assert_eq!(uki.source, "uki");
        let disk = measure(&path("testdata/uki/disk-fat12.raw"), &[HashAlg::Sha256]).unwrap();
        assert!(disk.source.contains("FAT12"));
        assert_eq!(uki.prediction.authenticode_sha256, disk.prediction.authenticode_sha256);
        assert!(measure(&path("golden/README.md"), &[HashAlg::Sha256]).is_err());
    }
}
