//! The OCI documents the agent reads: image index, image manifest, image config. Their bytes are verified
//! against a digest before they are parsed; parsing is serde with explicit limits on counts and sizes.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::digest::Sha256Digest;
use crate::error::{Error, Result};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Largest manifest or index accepted.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Largest single layer accepted (compressed).
pub const MAX_LAYER_BYTES: u64 = 16 << 30;
/// Most layers accepted.
pub const MAX_LAYERS: usize = 128;

const STAGE: &str = "image";

fn err(reason: impl Into<String>) -> Error {
    Error::workload(STAGE, reason)
}

/// How a layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
}

impl Compression {
    /// From a layer media type; `None` for media types the agent does not unpack.
    #[must_use]
    pub fn of_media_type(mt: &str) -> Option<Self> {
        match mt {
            "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => {
                Some(Self::None)
            }
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Self::Gzip),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

/// A verified-to-be-well-formed content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// Digest.
    pub digest: Sha256Digest,
    /// Size in bytes.
    pub size: u64,
}

impl RawDescriptor {
    fn check(&self, what: &str) -> Result<Descriptor> {
        Ok(Descriptor {
            media_type: self.media_type.clone(),
            digest: Sha256Digest::parse(&self.digest, what).map_err(|e| err(e.to_string()))?,
            size: self.size,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
}

/// What a manifest-or-index document turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    /// An image manifest.
    Manifest(Manifest),
    /// An index: the manifest for this platform, chosen here.
    Index(Descriptor),
}

/// An image manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The config blob.
    pub config: Descriptor,
    /// The layers, lowest first.
    pub layers: Vec<Descriptor>,
}

/// The OCI architecture name of this machine.
#[must_use]
pub fn this_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Parses a manifest or an index (bytes already verified against their digest). `media_type` is the
/// Content-Type the registry or the referencing descriptor gave, if any.
///
/// # Errors
/// Not JSON, schema version not 2, unknown media types, too many or too large layers, no entry for
/// this platform in an index.
pub fn parse_document(bytes: &[u8], media_type: Option<&str>) -> Result<Document> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(err(format!("manifest is {} bytes, limit {MAX_MANIFEST_BYTES}", bytes.len())));
    }
    let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| err(format!("manifest json: {e}")))?;
    if raw.schema_version != 2 {
        return Err(err(format!("manifest schemaVersion {} (only 2 is supported)", raw.schema_version)));
    }
    let mt = raw.media_type.as_deref().or(media_type).unwrap_or_default();
    let is_index = matches!(mt, OCI_INDEX | DOCKER_LIST) || (mt.is_empty() && raw.manifests.is_some());
    if is_index {
        let entries = raw.manifests.ok_or_else(|| err("index without manifests"))?;
        let arch = this_architecture();
        let found = entries
            .iter()
            .filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST))
            .find(|d| {
                d.platform.as_ref().is_some_and(|p| {
                    p.os == "linux"
                        && p.architecture == arch
                        && (arch != "arm64" || p.variant.as_deref() != Some("v7"))
                })
            })
            .ok_or_else(|| err(format!("index has no linux/{arch} image manifest")))?;
        let d = found.check("index entry digest")?;
        if d.size > u64::try_from(MAX_MANIFEST_BYTES).unwrap_or(u64::MAX) {
            return Err(err(format!(
                "index entry {}: {} bytes, limit {MAX_MANIFEST_BYTES}",
                d.digest, d.size
            )));
        }
        return Ok(Document::Index(d));
    }
    if !matches!(mt, OCI_MANIFEST | DOCKER_MANIFEST | "") {
        return Err(err(format!("manifest media type {mt:?} is not an image manifest")));
    }
    if raw.manifests.is_some() {
        return Err(err("manifest has both layers and manifests"));
    }
    let config = raw.config.ok_or_else(|| err("manifest without config"))?.check("config digest")?;
    if !matches!(config.media_type.as_str(), OCI_CONFIG | DOCKER_CONFIG) {
        return Err(err(format!("config media type {:?} is not an image config", config.media_type)));
    }
    if config.size > MAX_CONFIG_BYTES {
        return Err(err(format!("config is {} bytes, limit {MAX_CONFIG_BYTES}", config.size)));
    }
    let raw_layers = raw.layers.ok_or_else(|| err("manifest without layers"))?;
    if raw_layers.len() > MAX_LAYERS {
        return Err(err(format!("{} layers, limit {MAX_LAYERS}", raw_layers.len())));
    }
    let mut layers = Vec::with_capacity(raw_layers.len());
    for (i, l) in raw_layers.iter().enumerate() {
        let d = l.check(&format!("layer {i} digest"))?;
        if Compression::of_media_type(&d.media_type).is_none() {
            return Err(err(format!(
                "layer {i} media type {:?} is not supported (tar or tar+gzip)",
                d.media_type
            )));
        }
        if d.size > MAX_LAYER_BYTES {
            return Err(err(format!("layer {i} is {} bytes, limit {MAX_LAYER_BYTES}", d.size)));
        }
        layers.push(d);
    }
    Ok(Document::Manifest(Manifest { config, layers }))
}

#[derive(Deserialize)]
struct RawConfigFile {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    config: Option<RawExecConfig>,
    #[serde(default)]
    rootfs: Option<RawRootfs>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawExecConfig {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// The parts of the image config the agent uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageConfig {
    /// `User` (empty: root).
    pub user: String,
    /// `Env`, `NAME=value`, in order.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir` (empty: `/`).
    pub working_dir: String,
    /// `Labels` (the launch policy lives here).
    pub labels: BTreeMap<String, String>,
}

/// Parses an image config (bytes already verified against the manifest's config digest).
///
/// # Errors
/// Not JSON, another OS or architecture, a layer count different from the manifest's.
pub fn parse_config(bytes: &[u8], layer_count: usize) -> Result<ImageConfig> {
    let raw: RawConfigFile = serde_json::from_slice(bytes).map_err(|e| err(format!("config json: {e}")))?;
    if let Some(os) = raw.os.as_deref().filter(|os| *os != "linux") {
        return Err(err(format!("config os {os:?} (only linux)")));
    }
    let arch = this_architecture();
    if let Some(a) = raw.architecture.as_deref().filter(|a| *a != arch) {
        return Err(err(format!("config architecture {a:?}, this machine is {arch}")));
    }
    if let Some(rootfs) = &raw.rootfs
        && rootfs.diff_ids.len() != layer_count
    {
        return Err(err(format!(
            "config lists {} diff_ids, the manifest {layer_count} layers",
            rootfs.diff_ids.len()
        )));
    }
    let c = raw.config.unwrap_or_default();
    for e in c.env.iter().flatten() {
        if !e.contains('=') {
            return Err(err(format!("config Env entry {e:?} is not NAME=value")));
        }
    }
    Ok(ImageConfig {
        user: c.user.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        labels: c.labels.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    #[test]
    fn manifest_and_index() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":10}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":20}}]}}"#,
            d(1),
            d(2)
        );
        let Document::Manifest(man) = parse_document(m.as_bytes(), None).unwrap() else { panic!() };
        assert_eq!(man.layers.len(), 1);
        let zstd = m.replace("tar+gzip", "tar+zstd");
        assert!(parse_document(zstd.as_bytes(), None).unwrap_err().to_string().contains("not supported"));
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,"platform":{{"architecture":"s390x","os":"linux"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,"platform":{{"architecture":"{}","os":"linux"}}}}]}}"#,
            d(3),
            d(4),
            this_architecture()
        );
        let Document::Index(e) = parse_document(idx.as_bytes(), None).unwrap() else { panic!() };
        assert_eq!(e.digest.to_string(), d(4));
        assert!(parse_document(b"{\"schemaVersion\":1}", None).is_err());
    }
}
