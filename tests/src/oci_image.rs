//! Test images built by the tests themselves: OCI image manifests, configs and tar layers written by code,
//! with Debian's static busybox (`busybox-static`) as the program. No image is downloaded from anywhere.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Plain tar layer.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// gzip tar layer.
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Debian's static busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// `sha256:<hex>` of `bytes`.
#[must_use]
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)))
}

/// One layer blob.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Media type.
    pub media_type: &'static str,
    /// The blob bytes (compressed if the media type says so).
    pub bytes: Vec<u8>,
    /// The digest of the uncompressed tar (the config's diff_id).
    pub diff_id: String,
}

/// An entry of a layer being built.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory.
    Dir(&'static str),
    /// A regular file with mode.
    File(String, Vec<u8>, u32),
    /// A symbolic link (path, target).
    Symlink(&'static str, &'static str),
}

impl Layer {
    /// A layer from entries, gzip-compressed or not.
    ///
    /// # Panics
    /// On I/O errors writing to memory (never).
    #[must_use]
    #[allow(clippy::unwrap_used)]
    pub fn build(entries: &[Entry], gzip: bool) -> Self {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        for e in entries {
            let mut h = tar::Header::new_ustar();
            match e {
                Entry::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, p, std::io::empty()).unwrap();
                }
                Entry::File(p, data, mode) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, p, data.as_slice()).unwrap();
                }
                Entry::Symlink(p, target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, p, target).unwrap();
                }
            }
        }
        let tar_bytes = b.into_inner().unwrap();
        let diff_id = sha256_digest(&tar_bytes);
        if gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&tar_bytes).unwrap();
            Self { media_type: LAYER_TAR_GZIP, bytes: enc.finish().unwrap(), diff_id }
        } else {
            Self { media_type: LAYER_TAR, bytes: tar_bytes, diff_id }
        }
    }

    /// A busybox layer: `/bin/busybox` plus `sh`, `cat`, … links, `/etc/passwd` with a `worker` user (1000).
    ///
    /// # Panics
    /// When /bin/busybox is missing (install busybox-static with ci/setup).
    #[must_use]
    #[allow(clippy::unwrap_used)]
    pub fn busybox() -> Self {
        let bb = std::fs::read(BUSYBOX).unwrap();
        Self::build(
            &[
                Entry::Dir("bin/"),
                Entry::File("bin/busybox".into(), bb, 0o755),
                Entry::Symlink("bin/sh", "busybox"),
                Entry::Dir("etc/"),
                Entry::File(
                    "etc/passwd".into(),
                    b"root:x:0:0:root:/root:/bin/sh\nworker:x:1000:1000::/tmp:/bin/sh\n".to_vec(),
                    0o644,
                ),
                Entry::File("etc/group".into(), b"root:x:0:\nworker:x:1000:\n".to_vec(), 0o644),
                Entry::Dir("run/"),
                Entry::Dir("output/"),
            ],
            true,
        )
    }
}

/// An image: config, layers, manifest (all bytes as pushed).
#[derive(Debug, Clone)]
pub struct OciImage {
    /// Config JSON.
    pub config: Vec<u8>,
    /// Layers, lowest first.
    pub layers: Vec<Layer>,
    /// Manifest JSON.
    pub manifest: Vec<u8>,
}

/// What goes into the config.
#[derive(Debug, Clone, Default)]
pub struct ImageSettings {
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Cmd.
    pub cmd: Vec<String>,
    /// Env.
    pub env: Vec<String>,
    /// User.
    pub user: String,
    /// Labels (launch policy).
    pub labels: BTreeMap<String, String>,
}

impl OciImage {
    /// Builds config and manifest for `layers`.
    ///
    /// # Panics
    /// Never (JSON serialisation of plain values).
    #[must_use]
    #[allow(clippy::unwrap_used)]
    pub fn new(settings: &ImageSettings, layers: Vec<Layer>) -> Self {
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": settings.entrypoint,
                "Cmd": settings.cmd,
                "Env": settings.env,
                "User": settings.user,
                "Labels": settings.labels,
            },
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&config), "size": config.len()},
            "layers": layers.iter().map(|l| serde_json::json!({"mediaType": l.media_type, "digest": sha256_digest(&l.bytes), "size": l.bytes.len()})).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec(&manifest).unwrap();
        Self { config, layers, manifest }
    }

    /// A busybox workload: `/bin/busybox sh -c SCRIPT` as the unprivileged `worker`, `PATH=/bin`, with `labels`
    /// (its launch policy) and a second layer holding `/etc/build-id` = `build_id`, so that images differing
    /// only in `build_id` have different manifest digests but launch the same thing.
    ///
    /// # Panics
    /// When /bin/busybox is missing (install busybox-static with ci/setup).
    #[must_use]
    pub fn busybox_script(script: &str, build_id: &[u8], labels: BTreeMap<String, String>) -> Self {
        let extra = Layer::build(
            &[Entry::Dir("etc/"), Entry::File("etc/build-id".into(), build_id.to_vec(), 0o644)],
            false,
        );
        Self::new(
            &ImageSettings {
                entrypoint: vec!["/bin/busybox".into()],
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                env: vec!["PATH=/bin".into()],
                user: "worker".into(),
                labels,
            },
            vec![Layer::busybox(), extra],
        )
    }

    /// The manifest digest.
    #[must_use]
    pub fn manifest_digest(&self) -> String {
        sha256_digest(&self.manifest)
    }

    /// The config digest.
    #[must_use]
    pub fn config_digest(&self) -> String {
        sha256_digest(&self.config)
    }

    /// Writes an OCI image layout into `dir`; returns the reference `oci-layout:DIR@sha256:…`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_layout(&self, dir: &Path) -> std::io::Result<String> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let put = |b: &[u8]| {
            let d = sha256_digest(b);
            std::fs::write(blobs.join(d.trim_start_matches("sha256:")), b)
        };
        put(&self.manifest)?;
        put(&self.config)?;
        for l in &self.layers {
            put(&l.bytes)?;
        }
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST, "digest": self.manifest_digest(), "size": self.manifest.len()}]});
        std::fs::write(dir.join("index.json"), index.to_string())?;
        Ok(format!("oci-layout:{}@{}", dir.display(), self.manifest_digest()))
    }
}
