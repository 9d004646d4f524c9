//! Fetching the image: from a registry (OCI distribution API) or from an OCI image layout directory.
//!
//! Every byte is checked before use: the manifest (or index) against the pinned digest, the config and each
//! layer against the manifest's descriptors, while streaming into the blob store (a tmpfs in the VM). A copy
//! is made even for a layout on an attached disk, so the host cannot swap the bytes between verification and
//! unpacking. All blobs are verified before any layer is unpacked.
//!
//! oci-client handles references, the registry's token authentication and manifests; blobs are streamed with
//! the same HTTP stack (reqwest, rustls with the system roots) but hashed with aws-lc-rs (oci-client's own
//! blob check uses the `sha2` crate, about a third of the speed here).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};

use super::digest::{BlobVerifier, Sha256Digest};
use super::image::{self, Descriptor, Document, ImageConfig, Manifest};
use super::spec::{ImageSource, WorkloadSpec};
use crate::error::{Error, Result};

const STAGE: &str = "fetch";
/// Read buffer for layout blobs.
const CHUNK: usize = 256 * 1024;

fn err(reason: impl Into<String>) -> Error {
    Error::workload(STAGE, reason)
}

/// A fetched image whose every blob was verified.
#[derive(Debug, Clone)]
pub struct FetchedImage {
    /// The digest of the image manifest that was used (an index's platform entry when the reference
    /// names an index).
    pub manifest_digest: Sha256Digest,
    /// The config digest (the image ID).
    pub config_digest: Sha256Digest,
    /// The parsed config.
    pub config: ImageConfig,
    /// The layers in order: descriptor and verified file in the blob store.
    pub layers: Vec<(Descriptor, PathBuf)>,
}

/// Network settings for registry pulls.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Read timeout (per read, not per blob).
    pub read_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(10), read_timeout: Duration::from_secs(60) }
    }
}

/// Verified blobs on local storage, named by digest.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// A store in `dir` (created).
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("blob store {}: {e}", dir.display())))?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    fn final_path(&self, d: &Sha256Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// Stores a blob from a stream of chunks, verifying it on the way; on any failure nothing is left behind.
    async fn store_stream<S, B, E>(&self, what: &str, desc: &Descriptor, mut stream: S) -> Result<PathBuf>
    where
        S: futures_util::Stream<Item = std::result::Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let partial = self.dir.join(format!("{}.partial", desc.digest.hex()));
        let result = async {
            let mut f =
                std::fs::File::create(&partial).map_err(|e| err(format!("{}: {e}", partial.display())))?;
            let mut v = BlobVerifier::new(what, desc.digest, desc.size);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| err(format!("{what} {}: {e}", desc.digest)))?;
                let chunk = chunk.as_ref();
                v.update(chunk)?;
                f.write_all(chunk).map_err(|e| err(format!("{}: {e}", partial.display())))?;
            }
            v.finish()?;
            f.sync_all().map_err(|e| err(format!("{}: {e}", partial.display())))?;
            Ok(())
        }
        .await;
        self.commit(&partial, desc, result)
    }

    /// Stores a blob read from a file (an OCI layout), verifying it on the way.
    fn store_reader(&self, what: &str, desc: &Descriptor, src: &Path) -> Result<PathBuf> {
        let partial = self.dir.join(format!("{}.partial", desc.digest.hex()));
        let result = (|| {
            let mut input =
                std::fs::File::open(src).map_err(|e| err(format!("{what} {}: {e}", src.display())))?;
            let mut f =
                std::fs::File::create(&partial).map_err(|e| err(format!("{}: {e}", partial.display())))?;
            let mut v = BlobVerifier::new(what, desc.digest, desc.size);
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = input.read(&mut buf).map_err(|e| err(format!("{what} {}: {e}", src.display())))?;
                let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else { break };
                v.update(chunk)?;
                f.write_all(chunk).map_err(|e| err(format!("{}: {e}", partial.display())))?;
            }
            v.finish()?;
            f.sync_all().map_err(|e| err(format!("{}: {e}", partial.display())))?;
            Ok(())
        })();
        self.commit(&partial, desc, result)
    }

    fn commit(&self, partial: &Path, desc: &Descriptor, result: Result<()>) -> Result<PathBuf> {
        if let Err(e) = result {
            let _ = std::fs::remove_file(partial);
            return Err(e);
        }
        let path = self.final_path(&desc.digest);
        std::fs::rename(partial, &path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        Ok(path)
    }
}

fn read_small(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::fs::File::open(path)?.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    Ok(buf)
}

fn check_manifest_bytes(what: &str, bytes: &[u8], expected: &Sha256Digest) -> Result<()> {
    let got = Sha256Digest::of(bytes);
    if got != *expected {
        return Err(err(format!("{what} digest mismatch: expected {expected}, got {got}; refused")));
    }
    Ok(())
}

/// Fetches and verifies the image the spec names into `store`.
///
/// # Errors
/// Unreachable registry, authentication failure, a digest or size mismatch, an unsupported document.
pub async fn fetch(spec: &WorkloadSpec, store: &BlobStore, opts: &FetchOptions) -> Result<FetchedImage> {
    match &spec.source {
        ImageSource::Layout { dir, digest } => {
            let store = store.clone();
            let dir = dir.clone();
            let digest = *digest;
            tokio::task::spawn_blocking(move || fetch_layout(&dir, digest, &store))
                .await
                .map_err(|e| err(format!("layout task: {e}")))?
        }
        ImageSource::Registry { reference, digest } => {
            Registry::connect(spec, reference, opts)?.fetch(reference, *digest, store).await
        }
    }
}

/// Loads an image from an OCI image layout directory (`oci-layout`, `blobs/sha256/…`).
fn fetch_layout(dir: &Path, digest: Sha256Digest, store: &BlobStore) -> Result<FetchedImage> {
    let marker = dir.join("oci-layout");
    let layout = read_small(&marker, 4096).map_err(|e| err(format!("{}: {e}", marker.display())))?;
    let v: serde_json::Value =
        serde_json::from_slice(&layout).map_err(|e| err(format!("{}: {e}", marker.display())))?;
    if v.get("imageLayoutVersion").and_then(serde_json::Value::as_str) != Some("1.0.0") {
        return Err(err(format!("{}: imageLayoutVersion is not 1.0.0", marker.display())));
    }
    let blob = |d: &Sha256Digest| dir.join("blobs").join("sha256").join(d.hex());
    let limit = u64::try_from(image::MAX_MANIFEST_BYTES).unwrap_or(u64::MAX);
    let mut manifest_digest = digest;
    let mut bytes = read_small(&blob(&digest), limit).map_err(|e| err(format!("manifest {digest}: {e}")))?;
    check_manifest_bytes("manifest", &bytes, &digest)?;
    let manifest = match image::parse_document(&bytes, None)? {
        Document::Manifest(m) => m,
        Document::Index(entry) => {
            manifest_digest = entry.digest;
            bytes = read_small(&blob(&entry.digest), limit)
                .map_err(|e| err(format!("manifest {}: {e}", entry.digest)))?;
            check_manifest_bytes("platform manifest", &bytes, &entry.digest)?;
            match image::parse_document(&bytes, Some(&entry.media_type))? {
                Document::Manifest(m) => m,
                Document::Index(_) => return Err(err("an index inside an index is not supported")),
            }
        }
    };
    let config_path = store.store_reader("config", &manifest.config, &blob(&manifest.config.digest))?;
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (i, l) in manifest.layers.iter().enumerate() {
        let path = store.store_reader(&format!("layer {i}"), l, &blob(&l.digest))?;
        layers.push((l.clone(), path));
    }
    finish(manifest_digest, &manifest, &config_path, layers)
}

fn finish(
    manifest_digest: Sha256Digest,
    manifest: &Manifest,
    config_path: &Path,
    layers: Vec<(Descriptor, PathBuf)>,
) -> Result<FetchedImage> {
    let config_bytes = read_small(config_path, image::MAX_CONFIG_BYTES)
        .map_err(|e| err(format!("config {}: {e}", config_path.display())))?;
    let config = image::parse_config(&config_bytes, manifest.layers.len())?;
    Ok(FetchedImage { manifest_digest, config_digest: manifest.config.digest, config, layers })
}

struct Registry {
    client: oci_client::Client,
    http: reqwest::Client,
    auth: RegistryAuth,
    scheme: &'static str,
}

impl Registry {
    fn connect(spec: &WorkloadSpec, reference: &Reference, opts: &FetchOptions) -> Result<Self> {
        let registry = reference.resolve_registry().to_owned();
        let insecure = spec.insecure_registries.contains(&registry);
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(spec.insecure_registries.clone()),
            connect_timeout: Some(opts.connect_timeout),
            read_timeout: Some(opts.read_timeout),
            platform_resolver: None,
            ..ClientConfig::default()
        };
        // Not `Client::new`: on a build error (no usable TLS roots, say) it falls back to a default client whose
        // construction panics; the agent must report the reason instead.
        let client =
            oci_client::Client::try_from(config).map_err(|e| err(format!("registry client: {e}")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .no_proxy()
            .build()
            .map_err(|e| err(format!("http client: {e}")))?;
        let auth = match &spec.registry_auth {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        Ok(Self { client, http, auth, scheme: if insecure { "http" } else { "https" } })
    }

    async fn manifest(&self, reference: &Reference, expected: &Sha256Digest) -> Result<(Vec<u8>, Document)> {
        let accept = [image::OCI_MANIFEST, image::DOCKER_MANIFEST, image::OCI_INDEX, image::DOCKER_LIST];
        let (bytes, _) = self
            .client
            .pull_manifest_raw(reference, &self.auth, &accept)
            .await
            .map_err(|e| err(format!("manifest {reference}: {e}")))?;
        check_manifest_bytes("manifest", &bytes, expected)?;
        let doc = image::parse_document(&bytes, None)?;
        Ok((bytes.to_vec(), doc))
    }

    async fn fetch(
        &self,
        reference: &Reference,
        digest: Sha256Digest,
        store: &BlobStore,
    ) -> Result<FetchedImage> {
        let token = self
            .client
            .auth(reference, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| err(format!("registry {}: {e}", reference.resolve_registry())))?;
        let (_, doc) = self.manifest(reference, &digest).await?;
        let (manifest_digest, manifest) = match doc {
            Document::Manifest(m) => (digest, m),
            Document::Index(entry) => {
                let platform_ref = Reference::with_digest(
                    reference.registry().to_owned(),
                    reference.repository().to_owned(),
                    entry.digest.to_string(),
                );
                match self.manifest(&platform_ref, &entry.digest).await?.1 {
                    Document::Manifest(m) => (entry.digest, m),
                    Document::Index(_) => return Err(err("an index inside an index is not supported")),
                }
            }
        };
        let config_path = self.blob(reference, token.as_deref(), "config", &manifest.config, store).await?;
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (i, l) in manifest.layers.iter().enumerate() {
            let path = self.blob(reference, token.as_deref(), &format!("layer {i}"), l, store).await?;
            layers.push((l.clone(), path));
        }
        finish(manifest_digest, &manifest, &config_path, layers)
    }

    async fn blob(
        &self,
        reference: &Reference,
        token: Option<&str>,
        what: &str,
        desc: &Descriptor,
        store: &BlobStore,
    ) -> Result<PathBuf> {
        let url = format!(
            "{}://{}/v2/{}/blobs/{}",
            self.scheme,
            reference.resolve_registry(),
            reference.repository(),
            desc.digest
        );
        let mut req = self.http.get(&url);
        match (token, &self.auth) {
            (Some(t), _) => req = req.bearer_auth(t),
            (None, RegistryAuth::Basic(u, p)) => req = req.basic_auth(u, Some(p)),
            _ => {}
        }
        let resp = req.send().await.map_err(|e| err(format!("{what} {}: {url}: {e}", desc.digest)))?;
        if !resp.status().is_success() {
            return Err(err(format!("{what} {}: {url}: HTTP {}", desc.digest, resp.status())));
        }
        if resp.content_length().is_some_and(|l| l != desc.size) {
            return Err(err(format!(
                "{what} {}: the registry announces {} bytes, the descriptor says {}",
                desc.digest,
                resp.content_length().unwrap_or_default(),
                desc.size
            )));
        }
        store.store_stream(what, desc, resp.bytes_stream()).await
    }
}
