//! The workload specification the operator gives: which image (pinned by digest), its arguments and
//! environment, the restart policy, log redirection, the key broker and the key ids.
//!
//! Three sources, exactly one per boot:
//! - the kernel command line: `sealroom.workload.image=REF` plus optional `sealroom.workload.arg=…` (repeated, in
//!   order; any `arg` replaces the image's CMD), `sealroom.workload.env=NAME=value` (repeated),
//!   `sealroom.workload.restart=never|on-failure:N`, `sealroom.workload.log_redirect=true|false`,
//!   `sealroom.workload.broker=URL`, `sealroom.workload.broker_key=KID`, `sealroom.workload.key=ID` (repeated),
//!   `sealroom.workload.insecure_registry=HOST[:PORT]` (repeated), `sealroom.workload.on_exit=serve|poweroff`,
//!   `sealroom.workload.memory_limit=BYTES`.
//!   Values may be double-quoted to hold spaces.
//! - `sealroom.workload=metadata`: the JSON document in the GCE instance attribute `sealroom-workload`.
//! - `sealroom.workload=file:PATH`: the JSON document in a file or a raw block device (a QEMU
//!   `-drive if=virtio,format=raw,file=spec.json` disk: trailing NUL padding is ignored).
//! - `sealroom.workload=auto` (the image's own command line): a virtio config disk whose serial is
//!   `sealroom-workload` if one is attached, else the GCE metadata attribute on Google Compute Engine, else none
//!   (resolved in the VM by [`super::vm`]).
//!
//! The JSON document (unknown fields are refused):
//! ```json
//! {"image": "registry.example/app@sha256:…", "args": ["--x"], "env": ["NAME=value"],
//!  "restart": "on-failure:3", "log_redirect": true, "broker": "https://broker:8443",
//!  "broker_key": "<RFC 7638 thumbprint>", "broker_ca": "-----BEGIN CERTIFICATE-----…",
//!  "key_ids": ["dataset-key"], "insecure_registries": ["10.0.2.2:5000"],
//!  "registry_auth": {"username": "u", "password": "p"}, "on_exit": "poweroff",
//!  "inputs": {"dataset": "serial:sealroom-data"}, "memory_limit": 2147483648}
//! ```
//! `memory_limit` (bytes, at least [`MIN_MEMORY_LIMIT`]) caps the container's memory (cgroup v2 `memory.max`
//! through the runtime spec's `linux.resources.memory`, no swap); a workload that exceeds it is killed by the
//! kernel's OOM killer and reported as such, and the agent keeps serving. Absent: the VM's memory less
//! [`super::bundle::AGENT_MEMORY_RESERVE`] for the agent and the kernel. Like `on_exit` it decides how much may
//! run, not what runs, so it is not measured.
//! `sealed_inputs`, `sealed_input_timeout_secs` and `seal_output_to` (JSON only): sealed inputs the launch waits
//! for before the separator and the reply key the output is sealed to ([`super::sealed`]).
//! Several data providers, each with its own broker: instead of `broker`, `broker_key`, `broker_ca` and
//! `key_ids` (which stay valid and mean one broker named `broker`; both forms together are refused), list them:
//! ```json
//! {"brokers": [{"name": "hospital-a", "url": "https://a:8443", "key": "<RFC 7638 thumbprint>",
//!               "ca": "-----BEGIN CERTIFICATE-----…", "key_ids": ["rows-a"]},
//!              {"name": "hospital-b", "url": "http://10.0.2.2:8444", "key": "<thumbprint>", "key_ids": ["rows-b"]}]}
//! ```
//! Names (`[a-z0-9-]`, at most 32) and broker keys are unique, every broker lists at least one key id, and a
//! key id belongs to one broker only (it names one file under the keys directory and one provider). Each
//! broker's key is measured, in spec order, before the separator; each broker is asked only for its own key
//! ids, and the keys are written only once every broker released ([`super::run`]: all or nothing).
//! `inputs` names files or disks copied in and mounted read-only at `/input/<name>` ([`super::inputs`]).
//! `on_exit` says what the VM does once the workload has ended and its output is measured: `serve` (the
//! default: keep answering attestation calls) or `poweroff`. It does not change what runs, so it is not measured.
//! Parsing is strict and every error is one line naming the field. Nothing here is trusted: what matters (the
//! image, args, env, launch policy) is measured before the workload runs, and the image's launch policy limits
//! what the operator may override. Registry credentials and the broker address are not measured: the image is
//! pinned by digest and the broker checks the evidence itself. The broker's signing key is: `broker_key` (the
//! RFC 7638 thumbprint of the broker's ES256 key, the `kid` of its JWK) is required with a broker, measured as
//! a launch event before the separator, and every key release and receipt must be signed by that key
//! ([`super::broker`]), so an operator who points the VM at another broker gets nothing the workload would
//! use, and a data provider's policy can require its own broker key. `broker_ca` (PEM: a CA bundle or the
//! broker's own self-signed certificate) is the TLS trust for an `https://` broker, required with one; it is
//! transport protection on top of the signatures and not measured (JSON documents only: PEM does not fit on a
//! kernel command line).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::digest::Sha256Digest;
use crate::error::{Error, Result};

/// Longest spec document accepted (metadata attribute or config disk).
pub const MAX_SPEC_BYTES: usize = 1 << 20;
/// Most args / env vars / key ids accepted.
pub const MAX_ITEMS: usize = 256;
/// Longest single arg, env entry or key id.
pub const MAX_ITEM_BYTES: usize = 16 * 1024;
/// Highest `on-failure:N` bound.
pub const MAX_RESTARTS: u32 = 100;
/// Smallest `memory_limit` accepted (below this the runtime itself cannot start the container).
pub const MIN_MEMORY_LIMIT: u64 = 16 << 20;
/// Largest `memory_limit` accepted (1 PiB; the runtime spec holds a signed 64-bit value).
pub const MAX_MEMORY_LIMIT: u64 = 1 << 50;
/// The GCE metadata server.
pub const GCE_METADATA_BASE: &str = "http://metadata.google.internal";
/// The instance attribute holding the JSON spec on GCE.
pub const GCE_ATTRIBUTE: &str = "sealroom-workload";

const STAGE: &str = "spec";

fn err(reason: impl Into<String>) -> Error {
    Error::workload(STAGE, reason)
}

/// Where the image comes from: a registry, or an OCI image layout directory (an attached disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `registry/repository[:tag]@sha256:…`.
    Registry {
        /// The parsed reference (registry, repository, digest).
        reference: oci_client::Reference,
        /// The pinned digest (of a manifest or an index).
        digest: Sha256Digest,
    },
    /// `oci-layout:/path/to/layout@sha256:…`.
    Layout {
        /// The layout directory (holding `oci-layout` and `blobs/sha256/`).
        dir: PathBuf,
        /// The pinned digest of the manifest (or index) inside it.
        digest: Sha256Digest,
    },
}

impl ImageSource {
    /// Parses an image reference; anything not pinned by a `sha256:` digest is refused.
    ///
    /// # Errors
    /// No digest (a tag alone can move), a malformed reference or digest.
    pub fn parse(image: &str) -> Result<Self> {
        if let Some(rest) = image.strip_prefix("oci-layout:") {
            let (dir, digest) = rest.rsplit_once('@').ok_or_else(|| {
                err(format!("image {image:?}: an OCI layout must be pinned as oci-layout:DIR@sha256:…"))
            })?;
            if dir.is_empty() || !dir.starts_with('/') {
                return Err(err(format!("image {image:?}: the layout directory must be an absolute path")));
            }
            let digest = Sha256Digest::parse(digest, "image digest")
                .map_err(|e| err(format!("image {image:?}: {e}")))?;
            return Ok(Self::Layout { dir: PathBuf::from(dir), digest });
        }
        let reference: oci_client::Reference =
            image.parse().map_err(|e| err(format!("image {image:?}: not an image reference: {e}")))?;
        let Some(d) = reference.digest() else {
            return Err(err(format!(
                "image {image:?}: not pinned by digest (a tag can be moved); use REPOSITORY@sha256:…"
            )));
        };
        let digest =
            Sha256Digest::parse(d, "image digest").map_err(|e| err(format!("image {image:?}: {e}")))?;
        Ok(Self::Registry { reference, digest })
    }

    /// The pinned digest.
    #[must_use]
    pub fn digest(&self) -> Sha256Digest {
        match self {
            Self::Registry { digest, .. } | Self::Layout { digest, .. } => *digest,
        }
    }
}

/// What happens when the workload ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Run once.
    Never,
    /// Run again after a non-zero exit, at most this many times.
    OnFailure(u32),
}

impl RestartPolicy {
    /// Parses `never` or `on-failure:N` (1 ≤ N ≤ [`MAX_RESTARTS`]).
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(s: &str) -> Result<Self> {
        if s == "never" {
            return Ok(Self::Never);
        }
        let n = s
            .strip_prefix("on-failure:")
            .ok_or_else(|| err(format!("restart {s:?}: expected never or on-failure:N")))?;
        let n: u32 = n.parse().map_err(|_| err(format!("restart {s:?}: N must be a number")))?;
        if n == 0 || n > MAX_RESTARTS {
            return Err(err(format!("restart {s:?}: N must be between 1 and {MAX_RESTARTS}")));
        }
        Ok(Self::OnFailure(n))
    }

    /// Canonical text (as measured in the launch policy event).
    #[must_use]
    pub fn as_text(&self) -> String {
        match self {
            Self::Never => "never".into(),
            Self::OnFailure(n) => format!("on-failure:{n}"),
        }
    }
}

/// What the VM does after the workload ended (its output measured).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnExit {
    /// Keep serving attestation (the output event can then be attested).
    #[default]
    Serve,
    /// Power the VM off.
    PowerOff,
}

impl OnExit {
    /// Parses `serve` or `poweroff`.
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "serve" => Ok(Self::Serve),
            "poweroff" => Ok(Self::PowerOff),
            other => Err(err(format!("on_exit {other:?}: expected serve or poweroff"))),
        }
    }
}

/// Registry credentials (never measured, never printed).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// The operator's workload specification, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// The image reference exactly as given (this string is measured).
    pub image: String,
    /// Where the image comes from (parsed from `image`).
    pub source: ImageSource,
    /// Operator override of the image's CMD (`None`: the image's own).
    pub args: Option<Vec<String>>,
    /// Operator environment variables, in order, names unique.
    pub env: Vec<(String, String)>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Whether the operator asks for the workload's stdout/stderr on the console (the image must allow it).
    pub log_redirect: bool,
    /// The key sources, in spec order: each broker (address, pinned signing key, TLS trust) and the key ids it
    /// holds. Empty: no keys. Key ids are unique across brokers.
    pub brokers: Vec<KeySource>,
    /// Registries (`host[:port]`) reached over plain HTTP (content is still verified by digest).
    pub insecure_registries: Vec<String>,
    /// Registry credentials.
    pub registry_auth: Option<RegistryCredentials>,
    /// What the VM does after the workload ended.
    pub on_exit: OnExit,
    /// Input files or disks by name, mounted read-only at `/input/<name>` ([`super::inputs`]).
    pub inputs: std::collections::BTreeMap<String, String>,
    /// The container's memory limit in bytes (`None`: the default of [`super::bundle::memory_limit`]).
    pub memory_limit: Option<u64>,
    /// Sealed inputs the launch waits for and where the output is sealed to ([`super::sealed`]).
    pub sealed: super::sealed::SealedSpec,
}

/// One data provider's key broker and the key ids the workload asks it for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySource {
    /// The broker (its name, address, pinned key and TLS trust).
    pub broker: BrokerEndpoint,
    /// The key ids it holds for this workload (asked of this broker only, in order).
    pub key_ids: Vec<String>,
}

/// The key broker a workload trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEndpoint {
    /// The provider's name in the spec (`[a-z0-9-]`, at most [`MAX_BROKER_NAME`] bytes; [`SINGLE_BROKER_NAME`]
    /// for the single-broker form). It names the provider on the console and the receipt file; not measured
    /// (the key is).
    pub name: String,
    /// `http://` or `https://` URL.
    pub url: String,
    /// The RFC 7638 thumbprint of the broker's ES256 signing key (measured; responses must be signed by it).
    pub key_id: String,
    /// PEM trust anchors for an `https://` URL (a CA bundle or the broker's pinned certificate).
    pub tls_ca: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecDocument {
    image: String,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    restart: Option<String>,
    #[serde(default)]
    log_redirect: bool,
    #[serde(default)]
    broker: Option<String>,
    #[serde(default)]
    broker_key: Option<String>,
    #[serde(default)]
    broker_ca: Option<String>,
    #[serde(default)]
    key_ids: Vec<String>,
    #[serde(default)]
    brokers: Option<Vec<BrokerDocument>>,
    #[serde(default)]
    insecure_registries: Vec<String>,
    #[serde(default)]
    registry_auth: Option<RegistryCredentials>,
    #[serde(default)]
    on_exit: Option<String>,
    #[serde(default)]
    inputs: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    memory_limit: Option<u64>,
    #[serde(default)]
    sealed_inputs: std::collections::BTreeMap<String, super::sealed::SealedInputDocument>,
    #[serde(default)]
    sealed_input_timeout_secs: Option<u64>,
    #[serde(default)]
    seal_output_to: Option<String>,
}

/// One entry of `brokers`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BrokerDocument {
    name: String,
    url: String,
    key: String,
    #[serde(default)]
    ca: Option<String>,
    key_ids: Vec<String>,
}

fn check_item(what: &str, s: &str) -> Result<()> {
    if s.len() > MAX_ITEM_BYTES {
        return Err(err(format!("{what}: {} bytes, limit {MAX_ITEM_BYTES}", s.len())));
    }
    if s.contains('\0') {
        return Err(err(format!("{what}: contains a NUL byte")));
    }
    Ok(())
}

/// A key id becomes a file under the keys directory: the broker's grammar (`[A-Za-z0-9._/-]`, 1..=128 bytes,
/// keybroker.proto), where `/` separates a data provider's namespace (`provider-a/dataset`) and so nests a
/// directory; every component must be a plain name (not empty, not starting with `.`), so no id escapes the
/// keys directory or hides as a dotfile.
fn check_key_id(k: &str) -> Result<()> {
    if k.is_empty() || k.len() > 128 {
        return Err(err(format!("key id {k:?}: must be 1..=128 bytes")));
    }
    if let Some(c) = k.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))) {
        return Err(err(format!("key id {k:?}: character {c:?} not allowed (use [A-Za-z0-9._/-])")));
    }
    if k.split('/').any(|part| part.is_empty() || part.starts_with('.')) {
        return Err(err(format!(
            "key id {k:?}: each '/'-separated part must be non-empty and not start with '.'"
        )));
    }
    Ok(())
}

fn check_count(what: &str, n: usize) -> Result<()> {
    if n > MAX_ITEMS {
        return Err(err(format!("{what}: {n} entries, limit {MAX_ITEMS}")));
    }
    Ok(())
}

/// Splits `NAME=value` and checks the name (`[A-Za-z_][A-Za-z0-9_]*`).
///
/// # Errors
/// No `=`, or a bad name.
pub fn parse_env(entry: &str) -> Result<(String, String)> {
    let (name, value) =
        entry.split_once('=').ok_or_else(|| err(format!("env {entry:?}: expected NAME=value")))?;
    let mut chars = name.chars();
    let ok_first = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !ok_first || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(err(format!("env {entry:?}: name {name:?} must match [A-Za-z_][A-Za-z0-9_]*")));
    }
    check_item("env", entry)?;
    Ok((name.to_owned(), value.to_owned()))
}

fn check_registry_host(h: &str) -> Result<()> {
    let ok = !h.is_empty()
        && h.len() <= 255
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if ok { Ok(()) } else { Err(err(format!("insecure_registries: {h:?} is not HOST[:PORT]"))) }
}

/// Largest `broker_ca` PEM accepted.
pub const MAX_BROKER_CA_BYTES: usize = 64 * 1024;

fn broker_endpoint(
    name: &str,
    url: Option<String>,
    key_id: Option<String>,
    tls_ca: Option<String>,
) -> Result<Option<BrokerEndpoint>> {
    let Some(url) = url else {
        return match (key_id, tls_ca) {
            (None, None) => Ok(None),
            _ => Err(err("broker_key or broker_ca given without a broker")),
        };
    };
    check_item("broker", &url)?;
    let https = url.starts_with("https://");
    if !(https || url.starts_with("http://")) {
        return Err(err(format!("broker {url:?}: expected an http:// or https:// URL")));
    }
    let key_id = key_id.ok_or_else(|| {
        err("broker given without broker_key (the thumbprint of the broker's signing key, its JWK `kid`)")
    })?;
    sealroom_measurements::broker_response::check_broker_key_id(&key_id)
        .map_err(|e| err(format!("broker_key: {e}")))?;
    match (&tls_ca, https) {
        (None, true) => {
            return Err(err(
                "https broker given without broker_ca (its CA bundle or pinned certificate, PEM)",
            ));
        }
        (Some(_), false) => return Err(err("broker_ca given for a plain http:// broker")),
        (Some(pem), true) => {
            if pem.len() > MAX_BROKER_CA_BYTES || !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(err(format!(
                    "broker_ca: expected PEM certificates of at most {MAX_BROKER_CA_BYTES} bytes"
                )));
            }
        }
        (None, false) => {}
    }
    Ok(Some(BrokerEndpoint { name: name.to_owned(), url, key_id, tls_ca }))
}

/// Most brokers one workload may list.
pub const MAX_BROKERS: usize = 16;
/// Longest broker name.
pub const MAX_BROKER_NAME: usize = 32;
/// The name the single-broker form (`broker`, `broker_key`, `broker_ca`, `key_ids`) gives its broker.
pub const SINGLE_BROKER_NAME: &str = "broker";

fn check_broker_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_BROKER_NAME
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(err(format!("brokers: name {name:?} must be 1..={MAX_BROKER_NAME} characters of [a-z0-9-]")))
    }
}

/// The key sources of a document: the `brokers` list, or the single-broker form, never both. Names, broker
/// keys and key ids are each unique (a key id names one file in the keys directory, and one provider).
fn key_sources(doc: &mut SpecDocument) -> Result<Vec<KeySource>> {
    let single = doc.broker.is_some() || doc.broker_key.is_some() || doc.broker_ca.is_some();
    let sources = match doc.brokers.take() {
        Some(_) if single || !doc.key_ids.is_empty() => {
            return Err(err(
                "brokers given together with broker/broker_key/broker_ca/key_ids: use one form (brokers lists \
                 each broker with its key_ids)",
            ));
        }
        Some(list) => {
            if list.is_empty() {
                return Err(err("brokers: empty (leave it out for a workload without keys)"));
            }
            if list.len() > MAX_BROKERS {
                return Err(err(format!("brokers: {} entries, limit {MAX_BROKERS}", list.len())));
            }
            let mut out = Vec::with_capacity(list.len());
            for b in list {
                check_broker_name(&b.name)?;
                if b.key_ids.is_empty() {
                    return Err(err(format!("brokers: {} lists no key_ids", b.name)));
                }
                let broker = broker_endpoint(&b.name, Some(b.url), Some(b.key), b.ca)
                    .map_err(|e| match e {
                        Error::Workload { stage, reason } => {
                            Error::workload(stage, format!("brokers: {}: {reason}", b.name))
                        }
                        other => other,
                    })?
                    .ok_or_else(|| err(format!("brokers: {}: no url", b.name)))?;
                out.push(KeySource { broker, key_ids: b.key_ids });
            }
            out
        }
        None => {
            if !doc.key_ids.is_empty() && doc.broker.is_none() {
                return Err(err("key_ids given without a broker"));
            }
            let broker = broker_endpoint(
                SINGLE_BROKER_NAME,
                doc.broker.take(),
                doc.broker_key.take(),
                doc.broker_ca.take(),
            )?;
            broker
                .map(|broker| KeySource { broker, key_ids: std::mem::take(&mut doc.key_ids) })
                .into_iter()
                .collect()
        }
    };
    let mut names = std::collections::BTreeSet::new();
    let mut kids = std::collections::BTreeSet::new();
    let mut ids = std::collections::BTreeMap::new();
    check_count("key_ids", sources.iter().map(|s| s.key_ids.len()).sum())?;
    for s in &sources {
        let b = &s.broker;
        if !names.insert(b.name.as_str()) {
            return Err(err(format!("brokers: name {} given twice", b.name)));
        }
        if !kids.insert(b.key_id.as_str()) {
            return Err(err(format!("brokers: broker key {} given twice ({})", b.key_id, b.name)));
        }
        for k in &s.key_ids {
            check_item("key id", k)?;
            check_key_id(k)?;
            if let Some(first) = ids.insert(k.as_str(), b.name.as_str()) {
                return Err(err(if first == b.name {
                    format!("key id {k:?} listed twice for broker {first}")
                } else {
                    format!("key id {k:?} listed for both broker {first} and broker {}", b.name)
                }));
            }
        }
    }
    Ok(sources)
}

impl WorkloadSpec {
    /// Every key id the workload asks for, in spec order (broker by broker).
    #[must_use]
    pub fn key_ids(&self) -> Vec<&str> {
        self.brokers.iter().flat_map(|s| s.key_ids.iter().map(String::as_str)).collect()
    }

    fn build(mut doc: SpecDocument) -> Result<Self> {
        let source = ImageSource::parse(&doc.image)?;
        if let Some(args) = &doc.args {
            check_count("args", args.len())?;
            for a in args {
                check_item("arg", a)?;
            }
        }
        check_count("env", doc.env.len())?;
        let mut env: Vec<(String, String)> = Vec::new();
        for e in &doc.env {
            let (name, value) = parse_env(e)?;
            if env.iter().any(|(n, _)| *n == name) {
                return Err(err(format!("env: {name} given twice")));
            }
            env.push((name, value));
        }
        let restart = match &doc.restart {
            None => RestartPolicy::Never,
            Some(r) => RestartPolicy::parse(r)?,
        };
        let brokers = key_sources(&mut doc)?;
        for h in &doc.insecure_registries {
            check_registry_host(h)?;
        }
        let on_exit = doc.on_exit.as_deref().map(OnExit::parse).transpose()?.unwrap_or_default();
        super::inputs::check(&doc.inputs)?;
        let sealed = super::sealed::SealedSpec::build(
            doc.sealed_inputs,
            doc.sealed_input_timeout_secs,
            doc.seal_output_to,
            &doc.inputs,
        )?;
        if let Some(m) = doc.memory_limit.filter(|m| !(MIN_MEMORY_LIMIT..=MAX_MEMORY_LIMIT).contains(m)) {
            return Err(err(format!(
                "memory_limit: {m} bytes, expected {MIN_MEMORY_LIMIT}..={MAX_MEMORY_LIMIT}"
            )));
        }
        Ok(Self {
            image: doc.image,
            source,
            args: doc.args,
            env,
            restart,
            log_redirect: doc.log_redirect,
            brokers,
            insecure_registries: doc.insecure_registries,
            registry_auth: doc.registry_auth,
            on_exit,
            inputs: doc.inputs,
            memory_limit: doc.memory_limit,
            sealed,
        })
    }

    /// Parses the JSON document (from metadata or a config disk); trailing NUL/whitespace padding is ignored.
    ///
    /// # Errors
    /// Oversized, not UTF-8, not the schema, or any field invalid.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_SPEC_BYTES {
            return Err(err(format!("document is {} bytes, limit {MAX_SPEC_BYTES}", bytes.len())));
        }
        let end =
            bytes.iter().rposition(|b| !matches!(b, 0 | b' ' | b'\n' | b'\r' | b'\t')).map_or(0, |i| i + 1);
        let trimmed = bytes.get(..end).unwrap_or_default();
        if trimmed.is_empty() {
            return Err(err("document is empty"));
        }
        let doc: SpecDocument = serde_json::from_slice(trimmed).map_err(|e| err(format!("json: {e}")))?;
        Self::build(doc)
    }

    /// Parses the `sealroom.workload.*` keys of a kernel command line. `Ok(None)` when there are none.
    ///
    /// # Errors
    /// Unknown `sealroom.workload.*` keys, a repeated single-valued key, or any invalid field.
    pub fn from_cmdline_keys(cmdline: &str) -> Result<Option<Self>> {
        let mut doc = SpecDocument {
            image: String::new(),
            args: None,
            env: Vec::new(),
            restart: None,
            log_redirect: false,
            broker: None,
            broker_key: None,
            broker_ca: None,
            key_ids: Vec::new(),
            brokers: None,
            insecure_registries: Vec::new(),
            registry_auth: None,
            on_exit: None,
            inputs: std::collections::BTreeMap::new(),
            memory_limit: None,
            sealed_inputs: std::collections::BTreeMap::new(),
            sealed_input_timeout_secs: None,
            seal_output_to: None,
        };
        let mut any = false;
        let mut image = None;
        let mut log_redirect = None;
        for word in kernel_words(cmdline) {
            let Some((key, value)) = word.split_once('=') else { continue };
            let Some(field) = key.strip_prefix("sealroom.workload.") else { continue };
            any = true;
            let once = |slot: &mut Option<String>| {
                if slot.replace(value.to_owned()).is_some() {
                    Err(err(format!("sealroom.workload.{field} given twice")))
                } else {
                    Ok(())
                }
            };
            match field {
                "image" => once(&mut image)?,
                "arg" => doc.args.get_or_insert_with(Vec::new).push(value.to_owned()),
                "env" => doc.env.push(value.to_owned()),
                "restart" => once(&mut doc.restart)?,
                "log_redirect" => once(&mut log_redirect)?,
                "broker" => once(&mut doc.broker)?,
                "broker_key" => once(&mut doc.broker_key)?,
                "key" => doc.key_ids.push(value.to_owned()),
                "insecure_registry" => doc.insecure_registries.push(value.to_owned()),
                "on_exit" => once(&mut doc.on_exit)?,
                "memory_limit" => {
                    let bytes = value.parse::<u64>().map_err(|_| {
                        err(format!("sealroom.workload.memory_limit={value}: expected a number of bytes"))
                    })?;
                    if doc.memory_limit.replace(bytes).is_some() {
                        return Err(err("sealroom.workload.memory_limit given twice"));
                    }
                }
                other => return Err(err(format!("unknown kernel parameter sealroom.workload.{other}"))),
            }
        }
        if !any {
            return Ok(None);
        }
        doc.image = image.ok_or_else(|| err("sealroom.workload.* given without sealroom.workload.image"))?;
        doc.log_redirect = match log_redirect.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(err(format!("sealroom.workload.log_redirect={other}: expected true or false")));
            }
        };
        Self::build(doc).map(Some)
    }
}

/// Splits a kernel command line the way the kernel does: whitespace separates words, double quotes group
/// (and are removed).
#[must_use]
pub fn kernel_words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Where the spec comes from, chosen by the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecSource {
    /// No workload configured.
    None,
    /// `sealroom.workload.*` keys.
    Cmdline(Box<WorkloadSpec>),
    /// `sealroom.workload=metadata`.
    Metadata,
    /// `sealroom.workload=file:PATH`.
    File(PathBuf),
    /// `sealroom.workload=auto`: a config disk, else GCE metadata, else none (decided in the VM).
    Auto,
}

impl SpecSource {
    /// Reads the selector (and the inline spec) from a kernel command line.
    ///
    /// # Errors
    /// A bad selector, both a selector and inline keys, or an invalid inline spec.
    pub fn from_cmdline(cmdline: &str) -> Result<Self> {
        let mut selector = None;
        for word in kernel_words(cmdline) {
            if let Some(v) = word.strip_prefix("sealroom.workload=")
                && selector.replace(v.to_owned()).is_some()
            {
                return Err(err("sealroom.workload= given twice"));
            }
        }
        let inline = WorkloadSpec::from_cmdline_keys(cmdline)?;
        match (selector.as_deref(), inline) {
            (None, None) | (Some("none"), None) => Ok(Self::None),
            (None | Some("cmdline"), Some(spec)) => Ok(Self::Cmdline(Box::new(spec))),
            (Some("cmdline"), None) => Err(err("sealroom.workload=cmdline without sealroom.workload.image")),
            (Some(_), Some(_)) => {
                Err(err("sealroom.workload= selects another source but sealroom.workload.* keys are set"))
            }
            (Some("metadata"), None) => Ok(Self::Metadata),
            (Some("auto"), None) => Ok(Self::Auto),
            (Some(v), None) => match v.strip_prefix("file:") {
                Some(p) if p.starts_with('/') => Ok(Self::File(PathBuf::from(p))),
                _ => Err(err(format!(
                    "sealroom.workload={v}: expected auto, metadata, file:/PATH, cmdline or none"
                ))),
            },
        }
    }
}

/// Reads a spec file or raw block device (at most [`MAX_SPEC_BYTES`]).
///
/// # Errors
/// Unreadable, or an invalid spec.
pub fn read_file(path: &Path) -> Result<WorkloadSpec> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| err(format!("config {}: {e}", path.display())))?;
    let mut buf = Vec::new();
    // A block device may be large; only the first MiB (plus one byte to detect oversize) is read.
    f.take(u64::try_from(MAX_SPEC_BYTES).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| err(format!("config {}: {e}", path.display())))?;
    if buf.len() > MAX_SPEC_BYTES && buf.get(MAX_SPEC_BYTES..).is_some_and(|t| t.iter().any(|b| *b != 0)) {
        return Err(err(format!("config {}: larger than {MAX_SPEC_BYTES} bytes", path.display())));
    }
    buf.truncate(MAX_SPEC_BYTES);
    WorkloadSpec::from_json(&buf).map_err(|e| match e {
        Error::Workload { stage, reason } => {
            Error::workload(stage, format!("config {}: {reason}", path.display()))
        }
        other => other,
    })
}

/// Fetches the spec from the GCE metadata server at `base` (normally [`GCE_METADATA_BASE`]; tests pass a
/// loopback server). `Ok(None)` when the attribute is absent (404).
///
/// # Errors
/// Unreachable server, another HTTP status, or an invalid spec.
pub async fn fetch_metadata(base: &str, timeout: Duration) -> Result<Option<WorkloadSpec>> {
    let url =
        format!("{}/computeMetadata/v1/instance/attributes/{GCE_ATTRIBUTE}", base.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .map_err(|e| err(format!("metadata client: {e}")))?;
    let resp = client
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .map_err(|e| err(format!("metadata {url}: unreachable: {e}")))?;
    match resp.status() {
        reqwest::StatusCode::NOT_FOUND => return Ok(None),
        s if s.is_success() => {}
        s => return Err(err(format!("metadata {url}: HTTP {s}"))),
    }
    if resp.headers().get("Metadata-Flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return Err(err(format!("metadata {url}: answer lacks Metadata-Flavor: Google")));
    }
    if resp.content_length().is_some_and(|l| l > u64::try_from(MAX_SPEC_BYTES).unwrap_or(u64::MAX)) {
        return Err(err(format!("metadata {url}: larger than {MAX_SPEC_BYTES} bytes")));
    }
    let body = resp.bytes().await.map_err(|e| err(format!("metadata {url}: {e}")))?;
    WorkloadSpec::from_json(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinned() -> String {
        format!("127.0.0.1:5000/test/app@sha256:{}", "0123456789abcdef".repeat(4))
    }

    #[test]
    fn references_must_be_pinned() {
        assert!(matches!(ImageSource::parse(&pinned()).unwrap(), ImageSource::Registry { .. }));
        let tagged_and_pinned = format!("docker.io/library/busybox:1.36@sha256:{}", "ab".repeat(32));
        assert!(ImageSource::parse(&tagged_and_pinned).is_ok());
        let e = ImageSource::parse("docker.io/library/busybox:1.36").unwrap_err().to_string();
        assert_eq!(
            e,
            "workload spec: image \"docker.io/library/busybox:1.36\": not pinned by digest (a tag can be moved); \
             use REPOSITORY@sha256:…"
        );
        assert!(ImageSource::parse(&format!("busybox@sha512:{}", "ab".repeat(64))).is_err());
        let layout = format!("oci-layout:/mnt/img@sha256:{}", "ab".repeat(32));
        assert!(matches!(ImageSource::parse(&layout).unwrap(), ImageSource::Layout { .. }));
        assert!(ImageSource::parse("oci-layout:/mnt/img").is_err());
        assert!(ImageSource::parse(&format!("oci-layout:rel@sha256:{}", "ab".repeat(32))).is_err());
    }

    /// The shape of a broker key id (a JWK thumbprint).
    const KID: &str = "3Mfj4cM9KvTWQ7pmqfyIXlM3YzZ2r3JN0a4cDnmWc8I";

    #[test]
    fn json_is_strict() {
        let doc = format!(
            r#"{{"image":"{}","args":["-c","echo hi"],"env":["A=1","B=x=y"],"restart":"on-failure:3",
               "log_redirect":true,"broker":"http://10.0.2.2:8443","key_ids":["k1"],"broker_key":"{KID}",
               "insecure_registries":["127.0.0.1:5000"]}}"#,
            pinned()
        );
        let mut padded = doc.clone().into_bytes();
        padded.resize(4096, 0);
        let s = WorkloadSpec::from_json(&padded).unwrap();
        assert_eq!(s.args, Some(vec!["-c".to_owned(), "echo hi".to_owned()]));
        assert_eq!(s.env, vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]);
        assert_eq!(s.restart, RestartPolicy::OnFailure(3));
        assert!(s.log_redirect);
        assert_eq!(s.on_exit, OnExit::Serve);
        let off = doc.replace("\"log_redirect\":true", "\"log_redirect\":true,\"on_exit\":\"poweroff\"");
        assert_eq!(WorkloadSpec::from_json(off.as_bytes()).unwrap().on_exit, OnExit::PowerOff);
        let bad_exit = doc.replace("\"log_redirect\":true", "\"log_redirect\":true,\"on_exit\":\"reboot\"");
        assert_eq!(
            WorkloadSpec::from_json(bad_exit.as_bytes()).unwrap_err().to_string(),
            "workload spec: on_exit \"reboot\": expected serve or poweroff"
        );

        let unknown = doc.replace("\"log_redirect\"", "\"log_redirekt\"");
        assert!(
            WorkloadSpec::from_json(unknown.as_bytes()).unwrap_err().to_string().contains("unknown field")
        );
        let dup = doc.replace("\"B=x=y\"", "\"A=2\"");
        assert_eq!(
            WorkloadSpec::from_json(dup.as_bytes()).unwrap_err().to_string(),
            "workload spec: env: A given twice"
        );
        let bad_env = doc.replace("\"B=x=y\"", "\"1B=x\"");
        assert!(WorkloadSpec::from_json(bad_env.as_bytes()).is_err());
        let bad_restart = doc.replace("on-failure:3", "always");
        assert!(WorkloadSpec::from_json(bad_restart.as_bytes()).is_err());
        let zero = doc.replace("on-failure:3", "on-failure:0");
        assert!(WorkloadSpec::from_json(zero.as_bytes()).is_err());
        let no_broker = doc.replace("\"broker\":\"http://10.0.2.2:8443\",", "");
        assert_eq!(
            WorkloadSpec::from_json(no_broker.as_bytes()).unwrap_err().to_string(),
            "workload spec: key_ids given without a broker"
        );
        assert_eq!(s.brokers.len(), 1);
        assert_eq!(s.brokers[0].key_ids, ["k1"]);
        let b = s.brokers[0].broker.clone();
        assert_eq!(b.name, SINGLE_BROKER_NAME);
        assert_eq!((b.url.as_str(), b.key_id.as_str(), b.tls_ca), ("http://10.0.2.2:8443", KID, None));
        let unpinned = doc.replace(&format!(",\"broker_key\":\"{KID}\""), "");
        assert!(
            WorkloadSpec::from_json(unpinned.as_bytes())
                .unwrap_err()
                .to_string()
                .starts_with("workload spec: broker given without broker_key")
        );
        let bad_kid = doc.replace(KID, "sha256:00");
        assert!(WorkloadSpec::from_json(bad_kid.as_bytes()).unwrap_err().to_string().contains("thumbprint"));
        let https = doc.replace("http://10.0.2.2", "https://10.0.2.2");
        assert!(
            WorkloadSpec::from_json(https.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("https broker given without broker_ca")
        );
        let pem = "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n";
        let with_ca = https.replace("\"key_ids\"", &format!("\"broker_ca\":\"{pem}\",\"key_ids\""));
        let tls = WorkloadSpec::from_json(with_ca.as_bytes()).unwrap().brokers.remove(0).broker;
        assert!(tls.tls_ca.unwrap().starts_with("-----BEGIN CERTIFICATE-----\n"));
        let plain_ca = doc.replace("\"key_ids\"", &format!("\"broker_ca\":\"{pem}\",\"key_ids\""));
        assert!(
            WorkloadSpec::from_json(plain_ca.as_bytes()).unwrap_err().to_string().contains("plain http://")
        );
        for good in ["provider-a/dataset", "k.v2", "a/b/c"] {
            let d = doc.replace("\"k1\"", &format!("{good:?}"));
            assert_eq!(WorkloadSpec::from_json(d.as_bytes()).unwrap().key_ids(), vec![good], "{good}");
        }
        for bad in ["", "../k", "a/../k", "a//k", "/k", "k/", ".hidden", "a/.k", "k id", "k\\x"] {
            let d = doc.replace("\"k1\"", &format!("{bad:?}"));
            let e = WorkloadSpec::from_json(d.as_bytes()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("workload spec: key id {bad:?}: ")), "{bad}: {e}");
        }
        assert!(WorkloadSpec::from_json(b"\0\0\0").is_err());
        assert!(WorkloadSpec::from_json(b"{\"image\":\"busybox:latest\"}").is_err());
    }

    /// A second broker key id shape.
    const KID_B: &str = "Ab0123456789abcdefghijklmnopqrstuvwxyzABCDE";

    fn brokers_doc(brokers: &str) -> String {
        format!(r#"{{"image":"{}","brokers":[{brokers}]}}"#, pinned())
    }

    fn broker_entry(name: &str, kid: &str, keys: &str) -> String {
        format!(r#"{{"name":"{name}","url":"http://10.0.2.2:8443","key":"{kid}","key_ids":[{keys}]}}"#)
    }

    fn refusal(doc: &str) -> String {
        WorkloadSpec::from_json(doc.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn several_brokers_each_with_its_own_keys() {
        let a = broker_entry("hospital-a", KID, r#""rows-a""#);
        let b = broker_entry("hospital-b", KID_B, r#""rows-b","model/b""#);
        let s = WorkloadSpec::from_json(brokers_doc(&format!("{a},{b}")).as_bytes()).unwrap();
        let names: Vec<&str> = s.brokers.iter().map(|k| k.broker.name.as_str()).collect();
        assert_eq!(names, ["hospital-a", "hospital-b"]);
        assert_eq!(s.brokers[1].broker.key_id, KID_B);
        assert_eq!(s.brokers[1].key_ids, ["rows-b", "model/b"]);
        assert_eq!(s.key_ids(), ["rows-a", "rows-b", "model/b"]);

        let both = brokers_doc(&a).replace("\"brokers\"", &format!("\"broker_key\":\"{KID}\",\"brokers\""));
        assert!(
            refusal(&both).starts_with("workload spec: brokers given together with broker/"),
            "{}",
            refusal(&both)
        );
        let both_keys = brokers_doc(&a).replace("\"brokers\"", "\"key_ids\":[\"k\"],\"brokers\"");
        assert!(refusal(&both_keys).starts_with("workload spec: brokers given together with"));
        let dup_key = format!("{a},{}", broker_entry("hospital-b", KID_B, r#""rows-a""#));
        assert_eq!(
            refusal(&brokers_doc(&dup_key)),
            "workload spec: key id \"rows-a\" listed for both broker hospital-a and broker hospital-b"
        );
        let twice = broker_entry("hospital-a", KID, r#""rows-a","rows-a""#);
        assert_eq!(
            refusal(&brokers_doc(&twice)),
            "workload spec: key id \"rows-a\" listed twice for broker hospital-a"
        );
        let dup_name = format!("{a},{}", broker_entry("hospital-a", KID_B, r#""rows-b""#));
        assert_eq!(refusal(&brokers_doc(&dup_name)), "workload spec: brokers: name hospital-a given twice");
        let dup_kid = format!("{a},{}", broker_entry("hospital-b", KID, r#""rows-b""#));
        assert_eq!(
            refusal(&brokers_doc(&dup_kid)),
            format!("workload spec: brokers: broker key {KID} given twice (hospital-b)")
        );
        for bad in ["", "Hospital", "a_b", "a.b", &"x".repeat(33)] {
            let e = refusal(&brokers_doc(&broker_entry(bad, KID, r#""k""#)));
            assert!(e.starts_with(&format!("workload spec: brokers: name {bad:?} must be")), "{e}");
        }
        assert_eq!(
            refusal(&brokers_doc(&broker_entry("a", KID, ""))),
            "workload spec: brokers: a lists no key_ids"
        );
        assert_eq!(
            refusal(&brokers_doc("")),
            "workload spec: brokers: empty (leave it out for a workload without keys)"
        );
        let e = refusal(&brokers_doc(&broker_entry("a", "sha256:00", r#""k""#)));
        assert!(e.starts_with("workload spec: brokers: a: broker_key: "), "{e}");
        let https = broker_entry("a", KID, r#""k""#).replace("http://", "https://");
        assert_eq!(
            refusal(&brokers_doc(&https)),
            "workload spec: brokers: a: https broker given without broker_ca (its CA bundle or pinned certificate, PEM)"
        );
        let unknown = broker_entry("a", KID, r#""k""#).replace("\"url\"", "\"uri\"");
        assert!(refusal(&brokers_doc(&unknown)).contains("unknown field"));
        let bad_id = broker_entry("a", KID, r#""../k""#);
        assert!(refusal(&brokers_doc(&bad_id)).starts_with("workload spec: key id \"../k\": "));
        let many: Vec<String> =
            (0..=MAX_BROKERS).map(|i| broker_entry(&format!("p{i}"), KID, &format!("\"k{i}\""))).collect();
        assert_eq!(
            refusal(&brokers_doc(&many.join(","))),
            format!("workload spec: brokers: {} entries, limit {MAX_BROKERS}", MAX_BROKERS + 1)
        );
    }

    #[test]
    fn kernel_command_line() {
        let cl = format!(
            "console=ttyS0 sealroom.workload.image={} \"sealroom.workload.arg=-c\" sealroom.workload.arg=\"echo a  b\" \
             sealroom.workload.env=X=1 sealroom.workload.restart=on-failure:2 quiet",
            pinned()
        );
        let SpecSource::Cmdline(s) = SpecSource::from_cmdline(&cl).unwrap() else { panic!() };
        assert_eq!(s.args, Some(vec!["-c".to_owned(), "echo a  b".to_owned()]));
        assert_eq!(s.env, vec![("X".into(), "1".into())]);
        assert_eq!(s.restart, RestartPolicy::OnFailure(2));
        assert_eq!(SpecSource::from_cmdline("quiet").unwrap(), SpecSource::None);
        assert_eq!(SpecSource::from_cmdline("sealroom.workload=metadata").unwrap(), SpecSource::Metadata);
        assert_eq!(SpecSource::from_cmdline("sealroom.workload=auto").unwrap(), SpecSource::Auto);
        assert_eq!(
            SpecSource::from_cmdline("sealroom.workload=file:/dev/vdb").unwrap(),
            SpecSource::File(PathBuf::from("/dev/vdb"))
        );
        assert!(SpecSource::from_cmdline("sealroom.workload=floppy").is_err());
        assert!(SpecSource::from_cmdline(&format!("{cl} sealroom.workload.imag=x")).is_err());
        assert!(SpecSource::from_cmdline(&format!("{cl} sealroom.workload=metadata")).is_err());
        assert!(SpecSource::from_cmdline(&format!("{cl} sealroom.workload.image=y")).is_err());
        assert!(SpecSource::from_cmdline("sealroom.workload.arg=x").is_err());
    }
}
