//! A data provider's policy for one key: declarative TOML, every rule either given or explicitly `"skip"`.
//!
//! There are no defaults: a missing rule is a parse error naming it, so forgetting a rule can never allow
//! anything. Evaluation runs every rule against a verified [`Appraisal`] and reports, per rule, pass, skip or
//! a one-line refusal; a key is released only when no rule refused.
//!
//! ```toml
//! version = 2
//! platforms = ["tdx", "tpm"]                   # tpm, tdx, sev-snp, azure-snp-vtpm, azure-tdx-vtpm
//! tcb_statuses = ["UpToDate"]                  # accepted vendor TCB statuses
//! minimum_tcb = { "snp.microcode" = 213 }      # per-component minimum SVNs
//! debug = "forbidden"                          # or "skip" to allow debug TEEs
//! golden = { signers = ["ed25519:<hex>"], documents = ["sha256:<hex>"] }
//! image_digests = ["sha256:<hex>"]             # the workload's OCI manifest digest
//! args = ["--input", "/data"]                  # the exact argument list
//! env = ["MODE=batch", "THREADS=*"]            # allowed variables; NAME=* allows any value
//! broker_keys = ["<RFC 7638 thumbprint>"]      # the broker keys the VM may pin (`sealroom broker key-id`)
//! gpu_required = true                          # true or false, never "skip"
//! gpu_architectures = ["hopper"]               # hopper, blackwell
//! gpu_rim_ids = ["NV_GPU_DRIVER_GH100_545.00", "NV_GPU_VBIOS_1010_0200_882_96005E0001"]
//! ```
//! Any rule but `gpu_required` may be `"skip"` instead, which accepts everything for that rule and says so in
//! explanations.
//!
//! `broker_keys` lets a provider require that the broker key pinned in the workload spec (measured as a launch
//! event before the separator) is its own: every measured broker key must be listed, and at least one must
//! have been measured. A VM that trusts another broker (one that could hand it operator-chosen keys or issue
//! receipts for releases that never happened) then gets nothing from this key. A job that takes keys from
//! several providers pins every provider's broker: each provider lists the brokers of the co-providers it
//! agrees to share the job with, and an operator who adds a broker of his own gets nothing.
//!
//! Versions: `version = 2` requires `broker_keys` and the three GPU rules. `version = 1` policies (stored with
//! existing keys) stay valid and may not name them: they read as `broker_keys = "skip"`, `gpu_required = false`,
//! `gpu_architectures = "skip"`, `gpu_rim_ids = "skip"`, and every verdict lists those rules as skipped. A
//! GPU in the evidence is still verified by the verifier in either version (chain, signature, nonce bound to
//! the binding digest, every RIM measurement) or the evidence is refused.

use std::collections::BTreeMap;

use sealroom_measurements::cel::RuntimeEvent;
use sealroom_measurements::evidence::Platform;
use sealroom_verifier::claims::{HexBytes, Register, platform_by_name, platform_name};
use sealroom_verifier::gpu::GpuArchitecture;
use sha2::Digest;

use super::appraisal::Appraisal;
use crate::error::{Error, Result};

const LAYER: &str = "policy";
/// The newest policy format version this broker reads (version 1, without GPU rules, is still read).
pub const POLICY_VERSION: i64 = 2;
/// The rules version 2 adds (all required there), in evaluation order.
pub const V2_RULES: [&str; 4] = ["broker_keys", "gpu_required", "gpu_architectures", "gpu_rim_ids"];

/// A rule's reference values, or an explicit skip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule<T> {
    /// `"skip"`: this rule accepts everything.
    Skip,
    /// The reference values.
    Require(T),
}

/// Whether a debug TEE is acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugForbidden;

/// Which golden measurement documents are accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenRule {
    /// Accepted signers, `ed25519:<hex public key>`.
    pub signers: Vec<String>,
    /// Accepted documents, `sha256:<hex digest of the document file>`.
    pub documents: Vec<String>,
}

/// One parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Accepted platforms.
    pub platforms: Rule<Vec<Platform>>,
    /// Accepted TCB statuses.
    pub tcb_statuses: Rule<Vec<String>>,
    /// Minimum SVN per TCB component.
    pub minimum_tcb: Rule<BTreeMap<String, u64>>,
    /// Debug TEEs refused.
    pub debug: Rule<DebugForbidden>,
    /// Accepted golden measurement documents.
    pub golden: Rule<GoldenRule>,
    /// Accepted workload image (manifest) digests.
    pub image_digests: Rule<Vec<String>>,
    /// The exact argument list.
    pub args: Rule<Vec<String>>,
    /// Allowed environment variables.
    pub env: Rule<Vec<String>>,
    /// The broker keys (RFC 7638 thumbprints) a launch may have pinned.
    pub broker_keys: Rule<Vec<String>>,
    /// Refuse evidence without a verified GPU.
    pub gpu_required: bool,
    /// Accepted GPU architectures (every GPU's).
    pub gpu_architectures: Rule<Vec<GpuArchitecture>>,
    /// Accepted NVIDIA RIM ids: every GPU's driver and VBIOS RIM must both be listed.
    pub gpu_rim_ids: Rule<Vec<String>>,
}

/// Field names of version 1 (version 2 adds [`V2_RULES`]), in evaluation order.
pub const RULES: [&str; 8] =
    ["platforms", "debug", "tcb_statuses", "minimum_tcb", "golden", "image_digests", "args", "env"];

fn take<T>(
    table: &mut toml::Table,
    name: &'static str,
    convert: impl FnOnce(toml::Value) -> std::result::Result<T, String>,
) -> Result<Rule<T>> {
    let value = table.remove(name).ok_or_else(|| {
        Error::check(LAYER, format!("missing field `{name}` (give reference values or \"skip\")"))
    })?;
    if value.as_str() == Some("skip") {
        return Ok(Rule::Skip);
    }
    convert(value).map(Rule::Require).map_err(|e| Error::check(LAYER, format!("field `{name}`: {e}")))
}

fn de<T: serde::de::DeserializeOwned>(v: toml::Value) -> std::result::Result<T, String> {
    T::deserialize(v).map_err(|e| e.to_string().trim().replace('\n', " "))
}

fn non_empty<T>(v: Vec<T>) -> std::result::Result<Vec<T>, String> {
    if v.is_empty() { Err("empty list allows nothing; list values or write \"skip\"".into()) } else { Ok(v) }
}

fn sha256_ref(s: &str) -> std::result::Result<(), String> {
    let hex_part = s.strip_prefix("sha256:").ok_or_else(|| format!("{s:?} is not sha256:<hex>"))?;
    if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("{s:?} is not sha256:<64 lower-case hex digits>"));
    }
    Ok(())
}

impl Policy {
    /// Parses a policy file.
    ///
    /// # Errors
    /// Invalid TOML, a missing or unknown field, or a value of the wrong shape, named in the message.
    pub fn parse(text: &str) -> Result<Self> {
        let mut table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| Error::check(LAYER, e.message().replace('\n', " ")))?;
        let version = match table.remove("version") {
            Some(toml::Value::Integer(v @ (1 | POLICY_VERSION))) => v,
            Some(v) => {
                return Err(Error::check(
                    LAYER,
                    format!("field `version`: {v} unsupported (expected 1 or 2)"),
                ));
            }
            None => return Err(Error::check(LAYER, "missing field `version` (expected 1 or 2)")),
        };
        let platforms = take(&mut table, "platforms", |v| {
            let names: Vec<String> = de(v)?;
            non_empty(names)?
                .iter()
                .map(|n| platform_by_name(n).ok_or_else(|| format!("unknown platform {n:?}")))
                .collect()
        })?;
        let tcb_statuses = take(&mut table, "tcb_statuses", |v| non_empty(de(v)?))?;
        let minimum_tcb = take(&mut table, "minimum_tcb", |v| {
            let m: BTreeMap<String, u64> = de(v)?;
            if m.is_empty() { Err("empty table; list components or write \"skip\"".into()) } else { Ok(m) }
        })?;
        let debug = take(&mut table, "debug", |v| match v.as_str() {
            Some("forbidden") => Ok(DebugForbidden),
            _ => Err(format!("{v} (expected \"forbidden\" or \"skip\")")),
        })?;
        let golden = take(&mut table, "golden", |v| {
            let g: GoldenRule = de(v)?;
            non_empty(g.signers.clone())?;
            non_empty(g.documents.clone())?;
            for s in &g.signers {
                let key =
                    s.strip_prefix("ed25519:").ok_or_else(|| format!("signer {s:?} is not ed25519:<hex>"))?;
                if hex::decode(key).map(|k| k.len()) != Ok(32) {
                    return Err(format!("signer {s:?} is not a 32-byte Ed25519 public key"));
                }
            }
            g.documents.iter().try_for_each(|d| sha256_ref(d))?;
            Ok(g)
        })?;
        let image_digests = take(&mut table, "image_digests", |v| {
            let d: Vec<String> = non_empty(de(v)?)?;
            d.iter().try_for_each(|x| sha256_ref(x))?;
            Ok(d)
        })?;
        let args = take(&mut table, "args", de)?;
        let env = take(&mut table, "env", |v| {
            let e: Vec<String> = de(v)?;
            if let Some(bad) = e.iter().find(|x| !x.contains('=')) {
                return Err(format!("{bad:?} is not NAME=value or NAME=*"));
            }
            Ok(e)
        })?;
        let (broker_keys, (gpu_required, gpu_architectures, gpu_rim_ids)) = if version == 1 {
            if let Some(v2) = V2_RULES.iter().find(|r| table.contains_key(**r)) {
                return Err(Error::check(LAYER, format!("field `{v2}` needs version = 2")));
            }
            (Rule::Skip, (false, Rule::Skip, Rule::Skip))
        } else {
            (take(&mut table, "broker_keys", parse_broker_keys)?, parse_gpu_rules(&mut table)?)
        };
        if let Some(unknown) = table.keys().next() {
            return Err(Error::check(LAYER, format!("unknown field `{unknown}`")));
        }
        Ok(Self {
            platforms,
            tcb_statuses,
            minimum_tcb,
            debug,
            golden,
            image_digests,
            args,
            env,
            broker_keys,
            gpu_required,
            gpu_architectures,
            gpu_rim_ids,
        })
    }
}

/// A non-empty list of broker key ids: RFC 7638 SHA-256 thumbprints, base64url without padding (43 characters).
fn parse_broker_keys(v: toml::Value) -> std::result::Result<Vec<String>, String> {
    let kids: Vec<String> = non_empty(de(v)?)?;
    if let Some(bad) = kids
        .iter()
        .find(|k| k.len() != 43 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err(format!("{bad:?} is not a broker key id (`sealroom broker key-id` prints it)"));
    }
    Ok(kids)
}

type GpuRules = (bool, Rule<Vec<GpuArchitecture>>, Rule<Vec<String>>);

/// The version 2 GPU rules: `gpu_required` a boolean (no "skip": `false` is the explicit choice), the
/// architectures and RIM ids non-empty lists or "skip".
fn parse_gpu_rules(table: &mut toml::Table) -> Result<GpuRules> {
    let required = match table.remove("gpu_required") {
        Some(toml::Value::Boolean(b)) => b,
        Some(v) => {
            return Err(Error::check(LAYER, format!("field `gpu_required`: {v} (expected true or false)")));
        }
        None => return Err(Error::check(LAYER, "missing field `gpu_required` (give true or false)")),
    };
    let architectures = take(table, "gpu_architectures", |v| non_empty(de(v)?))?;
    let rim_ids = take(table, "gpu_rim_ids", |v| {
        let ids: Vec<String> = non_empty(de(v)?)?;
        if let Some(bad) =
            ids.iter().find(|i| !i.starts_with("NV_GPU_DRIVER_") && !i.starts_with("NV_GPU_VBIOS_"))
        {
            return Err(format!(
                "{bad:?} is not an NVIDIA driver or VBIOS RIM id (NV_GPU_DRIVER_… or NV_GPU_VBIOS_…)"
            ));
        }
        Ok(ids)
    })?;
    Ok((required, architectures, rim_ids))
}

/// A golden measurement document as the broker was given it: the exact bytes and, when present, the detached
/// Ed25519 signature (`golden.json.sig`, hex). Signatures are checked per key, against that key's accepted signers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenFile {
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    /// The document.
    pub bytes: Vec<u8>,
    /// The signature file's contents, if there was one.
    pub signature_hex: Option<String>,
}

/// The golden documents the broker was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoldenSet {
    /// Every document, by digest.
    pub files: Vec<GoldenFile>,
}

impl GoldenSet {
    /// Loads every `*.json` in `dir` with its `*.json.sig` (a document without one is kept, and refused as
    /// unsigned by any policy that names it).
    ///
    /// # Errors
    /// When the directory cannot be read.
    pub fn load_dir(dir: &std::path::Path) -> Result<Self> {
        let io = |e: std::io::Error| Error::check("golden", format!("{}: {e}", dir.display()));
        let mut files = Vec::new();
        let mut entries: Vec<_> =
            std::fs::read_dir(dir).map_err(io)?.collect::<std::io::Result<_>>().map_err(io)?;
        entries.sort_by_key(std::fs::DirEntry::path);
        for entry in entries {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io)?;
            let mut sig_path = path.clone().into_os_string();
            sig_path.push(".sig");
            let signature_hex = std::fs::read_to_string(&sig_path).ok();
            files.push(GoldenFile::new(bytes, signature_hex));
        }
        Ok(Self { files })
    }
}

impl GoldenFile {
    /// A document with its optional signature.
    #[must_use]
    pub fn new(bytes: Vec<u8>, signature_hex: Option<String>) -> Self {
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        Self { digest, bytes, signature_hex }
    }

    /// Verifies the signature under one of `signers` (`ed25519:<hex>`) and returns the expected registers
    /// (only registers the document marks complete).
    fn verified_registers(
        &self,
        signers: &[String],
    ) -> std::result::Result<BTreeMap<Register, HexBytes>, String> {
        let sig = self.signature_hex.as_deref().ok_or("is unsigned (no .sig file)")?;
        let doc = signers
            .iter()
            .filter_map(|s| s.strip_prefix("ed25519:"))
            .find_map(|key| sealroom_measurements::golden::verify(&self.bytes, sig, key).ok())
            .ok_or("signature does not verify under any accepted signer")?;
        sealroom_verifier::golden_refs::golden_registers(&doc)
            .into_iter()
            .map(|(name, value)| {
                let register = name.parse::<Register>().map_err(|e| format!("names {e}"))?;
                let value =
                    hex::decode(&value).map_err(|_| format!("gives {name} a value that is not hex"))?;
                Ok((register, HexBytes(value)))
            })
            .collect()
    }
}

/// The outcome of one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The rule allowed, and why.
    Pass(String),
    /// The rule was `"skip"`.
    Skipped,
    /// The rule refused, one line.
    Fail(String),
}

/// Every rule's outcome for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `(rule, outcome)` in evaluation order; rule names are `policy.<field>` or `workload.launch`.
    pub rules: Vec<(&'static str, Outcome)>,
}

impl Verdict {
    /// The first refusal: `(rule, "rule: reason")`, or `None` when every rule passed or was skipped.
    #[must_use]
    pub fn refusal(&self) -> Option<(&'static str, String)> {
        self.rules.iter().find_map(|(rule, o)| match o {
            Outcome::Fail(reason) => Some((*rule, format!("{rule}: {reason}"))),
            _ => None,
        })
    }
}

/// Why `workload.launch` refuses evidence whose runtime log replayed to no runtime register (no log, or a
/// platform whose evidence has no PCR 15 or RTMR3).
pub const NO_RUNTIME_LOG: &str =
    "no runtime log replayed to a quoted runtime register (PCR 15 or RTMR3): the workload was not measured";

/// The launch events (before the separator), after checking the log's shape: one separator, nothing but
/// post-launch events after it.
fn launch_events(events: &[RuntimeEvent]) -> std::result::Result<&[RuntimeEvent], String> {
    let sep = events
        .iter()
        .position(|e| matches!(e, RuntimeEvent::LaunchSeparator))
        .ok_or_else(|| "no launch separator: the workload was not launched by the agent".to_string())?;
    let (launch, after) = events.split_at(sep);
    for (i, e) in after.iter().enumerate().skip(1) {
        if !e.is_post_launch() {
            return Err(format!(
                "launch event {} at position {} after the launch separator",
                e.name(),
                sep + i
            ));
        }
    }
    if let Some(e) = launch.iter().find(|e| e.is_post_launch()) {
        return Err(format!("post-launch event {} before the launch separator", e.name()));
    }
    Ok(launch)
}

/// The launch state a verdict is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LaunchStage {
    /// The workload was launched: the log holds the separator (key releases, receipts).
    Launched,
    /// The workload is measured and waits for its sealed inputs (`sealroom seal`): every launch event up to the
    /// launch policy, then only `sealed_input` events, and no separator. Image, arguments, environment, mounts,
    /// broker keys, `sealed_output_to` and the launch policy are all measured in that state, so the rules judge
    /// exactly what will run; the agent opens a sealed input only before it measures the separator.
    AwaitingSealedInputs,
}

/// The launch events of a workload waiting for its sealed inputs (see [`LaunchStage::AwaitingSealedInputs`]).
fn awaiting_events(events: &[RuntimeEvent]) -> std::result::Result<&[RuntimeEvent], String> {
    if events.iter().any(|e| matches!(e, RuntimeEvent::LaunchSeparator)) {
        return Err(
            "the launch separator was measured: the workload runs and takes no more sealed inputs".into()
        );
    }
    let end = events.iter().position(|e| matches!(e, RuntimeEvent::LaunchPolicy(_))).ok_or_else(|| {
        "the launch is not fully measured yet (no launch policy event): what runs may still change"
            .to_string()
    })?;
    let (launch, after) = events.split_at(end.saturating_add(1));
    if let Some(e) = after.iter().find(|e| !matches!(e, RuntimeEvent::SealedInput { .. })) {
        return Err(format!("{} after the launch policy, before the separator", e.name()));
    }
    if let Some(e) =
        launch.iter().find(|e| e.is_post_launch() || matches!(e, RuntimeEvent::SealedInput { .. }))
    {
        return Err(format!("{} before the launch policy", e.name()));
    }
    Ok(launch)
}

fn env_allowed(var: &str, allowed: &[String]) -> bool {
    let name = var.split_once('=').map_or(var, |(n, _)| n);
    allowed.iter().any(|a| a == var || a.strip_suffix("=*").is_some_and(|n| n == name))
}

fn short(s: &str) -> String {
    if s.len() > 80 { format!("{}…", s.chars().take(80).collect::<String>()) } else { s.to_owned() }
}

impl Policy {
    /// Evaluates every rule against a verified appraisal of a launched workload.
    #[must_use]
    pub fn evaluate(&self, a: &Appraisal, golden: &GoldenSet) -> Verdict {
        self.evaluate_at(a, golden, LaunchStage::Launched)
    }

    /// Evaluates every rule against a verified appraisal of a workload in launch state `stage`.
    #[must_use]
    pub fn evaluate_at(&self, a: &Appraisal, golden: &GoldenSet, stage: LaunchStage) -> Verdict {
        let mut rules = Vec::new();
        let claims = a.platform.as_ref();
        let platform = claims.map_or("unverified", |p| p.name());
        rules.push((
            "policy.platforms",
            match (&self.platforms, claims) {
                (Rule::Skip, _) => Outcome::Skipped,
                (Rule::Require(_), None) => Outcome::Fail("the platform's evidence was not verified".into()),
                (Rule::Require(ps), Some(p)) if ps.contains(&p.platform()) => {
                    Outcome::Pass(format!("platform {platform}"))
                }
                (Rule::Require(ps), Some(_)) => Outcome::Fail(format!(
                    "platform {platform} not allowed (allowed: {})",
                    ps.iter().map(|p| platform_name(*p)).collect::<Vec<_>>().join(", ")
                )),
            },
        ));
        rules.push((
            "policy.debug",
            match (&self.debug, claims) {
                (Rule::Skip, _) => Outcome::Skipped,
                (Rule::Require(DebugForbidden), None) => {
                    Outcome::Fail("the platform's evidence was not verified: debug mode unknown".into())
                }
                (Rule::Require(DebugForbidden), Some(p)) if p.debug() => {
                    Outcome::Fail("TEE runs in debug mode".into())
                }
                (Rule::Require(DebugForbidden), Some(_)) => Outcome::Pass("not a debug TEE".into()),
            },
        ));
        let tcb_status = claims.and_then(sealroom_verifier::claims::PlatformClaims::tcb_status);
        rules.push((
            "policy.tcb_statuses",
            match (&self.tcb_statuses, tcb_status.map(sealroom_verifier::tdx::TcbStatus::as_str)) {
                (Rule::Skip, _) => Outcome::Skipped,
                (Rule::Require(_), None) => {
                    Outcome::Fail(format!("platform {platform} reports no TCB status"))
                }
                (Rule::Require(ok), Some(s)) if ok.iter().any(|o| o == s) => {
                    Outcome::Pass(format!("TCB status {s}"))
                }
                (Rule::Require(ok), Some(s)) => {
                    Outcome::Fail(format!("TCB status {s} not accepted (accepted: {})", ok.join(", ")))
                }
            },
        ));
        let tcb_levels =
            claims.map(sealroom_verifier::claims::PlatformClaims::tcb_components).unwrap_or_default();
        rules.push((
            "policy.minimum_tcb",
            match &self.minimum_tcb {
                Rule::Skip => Outcome::Skipped,
                Rule::Require(min) => min
                    .iter()
                    .find_map(|(c, m)| match tcb_levels.get(c) {
                        None => Some(Outcome::Fail(format!("TCB component {c} not in the evidence"))),
                        Some(v) if v < m => {
                            Some(Outcome::Fail(format!("TCB {c} is {v}, below the minimum {m}")))
                        }
                        Some(_) => None,
                    })
                    .unwrap_or_else(|| {
                        Outcome::Pass(format!("{} TCB components at or above minimum", min.len()))
                    }),
            },
        ));
        rules.push(("policy.golden", self.evaluate_golden(a, golden)));
        self.evaluate_gpus(a, &mut rules);
        let launch = match &a.runtime {
            None => Err(NO_RUNTIME_LOG.to_owned()),
            Some(r) => match stage {
                LaunchStage::Launched => launch_events(&r.events),
                LaunchStage::AwaitingSealedInputs => awaiting_events(&r.events),
            }
            .map(|l| (l, r.registers.as_slice())),
        };
        let then = match stage {
            LaunchStage::Launched => "then the separator",
            LaunchStage::AwaitingSealedInputs => "waiting for sealed inputs, no separator yet",
        };
        rules.push((
            "workload.launch",
            match &launch {
                Ok((l, registers)) => Outcome::Pass(format!(
                    "{} launch events, {then} (replayed to {})",
                    l.len(),
                    registers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                )),
                Err(e) => Outcome::Fail(e.clone()),
            },
        ));
        let launch = launch.map(|(l, _)| l);
        let launch = launch.unwrap_or_default();
        rules.push(("policy.broker_keys", self.evaluate_broker_keys(launch)));
        rules.push(("policy.image_digests", self.evaluate_image(launch)));
        let args: Vec<&str> = launch
            .iter()
            .filter_map(|e| if let RuntimeEvent::Arg(s) = e { Some(s.as_str()) } else { None })
            .collect();
        rules.push((
            "policy.args",
            match &self.args {
                Rule::Skip => Outcome::Skipped,
                Rule::Require(want) if *want == args => {
                    Outcome::Pass(format!("{} arguments as allowed", args.len()))
                }
                Rule::Require(want) => {
                    Outcome::Fail(match want.iter().zip(&args).position(|(w, g)| w != g) {
                        Some(i) => format!(
                            "argument {i} is {:?}, policy requires {:?}",
                            short(args.get(i).copied().unwrap_or_default()),
                            short(want.get(i).map(String::as_str).unwrap_or_default())
                        ),
                        None => format!("{} arguments, policy requires {}", args.len(), want.len()),
                    })
                }
            },
        ));
        rules.push((
            "policy.env",
            match &self.env {
                Rule::Skip => Outcome::Skipped,
                Rule::Require(allowed) => {
                    let env = launch
                        .iter()
                        .filter_map(|e| if let RuntimeEvent::Env(s) = e { Some(s) } else { None });
                    let mut n = 0usize;
                    let mut bad = None;
                    for v in env {
                        n += 1;
                        if !env_allowed(v, allowed) {
                            bad = Some(v);
                            break;
                        }
                    }
                    match bad {
                        Some(v) => Outcome::Fail(format!("environment variable {:?} not allowed", short(v))),
                        None => Outcome::Pass(format!("{n} environment variables allowed")),
                    }
                }
            },
        ));
        Verdict { rules }
    }

    /// The GPU rules over the verifier's typed GPUs (only GPUs that verified, bound to the binding digest, are
    /// there: a GPU that failed refused the evidence before any policy).
    fn evaluate_gpus(&self, a: &Appraisal, rules: &mut Vec<(&'static str, Outcome)>) {
        let n = a.gpus.len();
        rules.push((
            "policy.gpu_required",
            match (self.gpu_required, n) {
                (true, 0) => Outcome::Fail("the policy requires a GPU, the evidence has none".into()),
                (true, n) => Outcome::Pass(format!("{n} verified GPU(s)")),
                (false, n) => Outcome::Pass(format!("no GPU required ({n} verified GPU(s))")),
            },
        ));
        rules.push((
            "policy.gpu_architectures",
            match &self.gpu_architectures {
                Rule::Skip => Outcome::Skipped,
                Rule::Require(allowed) => {
                    a.gpus.iter().enumerate().find(|(_, g)| !allowed.contains(&g.architecture)).map_or_else(
                        || Outcome::Pass(format!("{n} GPU(s) of an allowed architecture")),
                        |(i, g)| {
                            Outcome::Fail(format!(
                                "GPU {i} architecture {} not allowed (allowed: {})",
                                g.architecture.name(),
                                allowed.iter().map(|x| x.name()).collect::<Vec<_>>().join(", ")
                            ))
                        },
                    )
                }
            },
        ));
        rules.push((
            "policy.gpu_rim_ids",
            match &self.gpu_rim_ids {
                Rule::Skip => Outcome::Skipped,
                Rule::Require(allowed) => a
                    .gpus
                    .iter()
                    .enumerate()
                    .flat_map(|(i, g)| [(i, "driver", &g.driver_rim_id), (i, "VBIOS", &g.vbios_rim_id)])
                    .find(|(_, _, id)| !allowed.contains(id))
                    .map_or_else(
                        || Outcome::Pass(format!("{n} GPU(s) matched allowed driver and VBIOS RIMs")),
                        |(i, what, id)| Outcome::Fail(format!("GPU {i} {what} RIM {id} not allowed")),
                    ),
            },
        ));
    }

    fn evaluate_broker_keys(&self, launch: &[RuntimeEvent]) -> Outcome {
        let Rule::Require(allowed) = &self.broker_keys else { return Outcome::Skipped };
        let measured: Vec<&String> = launch
            .iter()
            .filter_map(|e| if let RuntimeEvent::BrokerKey(k) = e { Some(k) } else { None })
            .collect();
        match measured.iter().find(|k| !allowed.contains(k)) {
            _ if measured.is_empty() => Outcome::Fail("no broker key was measured at launch".into()),
            Some(k) => Outcome::Fail(format!("the VM pins broker key {k}, not one this policy allows")),
            None => Outcome::Pass(format!(
                "the VM pins broker key {}",
                measured.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
            )),
        }
    }

    fn evaluate_image(&self, launch: &[RuntimeEvent]) -> Outcome {
        let Rule::Require(allowed) = &self.image_digests else { return Outcome::Skipped };
        let digests: Vec<&String> = launch
            .iter()
            .filter_map(|e| if let RuntimeEvent::ManifestDigest(d) = e { Some(d) } else { None })
            .collect();
        match digests.as_slice() {
            [] => Outcome::Fail("no workload image digest was measured".into()),
            [d] if allowed.contains(d) => Outcome::Pass(format!("workload image {d}")),
            [d] => Outcome::Fail(format!("workload image digest {} not allowed", short(d))),
            _ => Outcome::Fail(format!("{} workload image digests measured, expected one", digests.len())),
        }
    }

    fn evaluate_golden(&self, a: &Appraisal, golden: &GoldenSet) -> Outcome {
        let Rule::Require(rule) = &self.golden else { return Outcome::Skipped };
        let families: std::collections::BTreeSet<_> = a.registers.keys().map(|r| r.family()).collect();
        let mut first_problem = None;
        for name in &rule.documents {
            let problem = match golden.files.iter().find(|d| &d.digest == name) {
                None => format!("golden document {name} not loaded by the broker"),
                Some(file) => match file.verified_registers(&rule.signers) {
                    Err(why) => format!("golden document {name} {why}"),
                    Ok(expected) => {
                        let mut compared = 0usize;
                        let mut mismatch = None;
                        for (reg, want) in &expected {
                            match a.registers.get(reg) {
                                Some(got) if got == want => compared += 1,
                                Some(got) => {
                                    mismatch = Some(format!(
                                        "{reg} not golden: expected {want}, got {got} ({name})"
                                    ));
                                    break;
                                }
                                // A register of a family the evidence has but not this one (not quoted): refuse.
                                None if families.contains(&reg.family()) => {
                                    mismatch = Some(format!("{reg} not in the evidence ({name})"));
                                    break;
                                }
                                None => {}
                            }
                        }
                        match mismatch {
                            Some(m) => m,
                            None if compared == 0 => {
                                format!("no register of golden document {name} is in the evidence")
                            }
                            None => {
                                return Outcome::Pass(format!(
                                    "{compared} registers match golden document {name}"
                                ));
                            }
                        }
                    }
                },
            };
            first_problem.get_or_insert(problem);
        }
        Outcome::Fail(first_problem.unwrap_or_else(|| "no golden document named".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
version = 1
platforms = ["tdx", "tpm"]
tcb_statuses = ["UpToDate"]
minimum_tcb = { "tdx.tee_tcb_svn.0" = 3 }
debug = "forbidden"
golden = "skip"
image_digests = ["sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]
args = ["--in", "/data"]
env = ["MODE=batch", "THREADS=*"]
"#;

    #[test]
    fn a_launch_awaiting_sealed_inputs_is_measured_up_to_its_launch_policy_and_not_launched() {
        let sealed = |n: &str| RuntimeEvent::SealedInput {
            name: n.into(),
            digest: "sha256:00".into(),
            reply_key: "x25519:11".into(),
        };
        let head = vec![
            RuntimeEvent::ManifestDigest("sha256:aa".into()),
            RuntimeEvent::Arg("/job".into()),
            RuntimeEvent::SealedOutputTo("input:p".into()),
            RuntimeEvent::LaunchPolicy("p".into()),
        ];
        let mut waiting = head.clone();
        waiting.push(sealed("p"));
        assert_eq!(awaiting_events(&waiting).unwrap(), head.as_slice());
        assert_eq!(awaiting_events(&head).unwrap().len(), 4);
        let mut launched = waiting.clone();
        launched.push(RuntimeEvent::LaunchSeparator);
        assert!(awaiting_events(&launched).unwrap_err().starts_with("the launch separator was measured"));
        // The same log is a launched one for key releases.
        assert_eq!(launch_events(&launched).unwrap().len(), 5);
        let err = awaiting_events(&head[..2]).unwrap_err();
        assert!(err.contains("not fully measured yet"), "{err}");
        let mut early = vec![sealed("p")];
        early.extend(head.clone());
        assert_eq!(awaiting_events(&early).unwrap_err(), "sealed_input before the launch policy");
        let mut odd = head;
        odd.push(RuntimeEvent::Arg("late".into()));
        assert_eq!(awaiting_events(&odd).unwrap_err(), "arg after the launch policy, before the separator");
    }

    #[test]
    fn parses_a_full_policy() {
        let p = Policy::parse(FULL).unwrap();
        assert_eq!(p.platforms, Rule::Require(vec![Platform::Tdx, Platform::Tpm]));
        assert_eq!(p.golden, Rule::Skip);
        assert_eq!(p.debug, Rule::Require(DebugForbidden));
    }

    #[test]
    fn every_missing_field_is_named() {
        for field in RULES {
            let text: String =
                FULL.lines().filter(|l| !l.starts_with(&format!("{field} "))).collect::<Vec<_>>().join("\n");
            let err = Policy::parse(&text).unwrap_err().to_string();
            assert_eq!(err, format!("policy: missing field `{field}` (give reference values or \"skip\")"));
        }
        let err = Policy::parse(&FULL.replace("version = 1", "")).unwrap_err().to_string();
        assert!(err.contains("missing field `version`"), "{err}");
    }

    #[test]
    fn rejects_unknown_fields_and_bad_shapes() {
        let err = Policy::parse(&format!("{FULL}\nallow_all = true")).unwrap_err().to_string();
        assert_eq!(err, "policy: unknown field `allow_all`");
        let err = Policy::parse(&FULL.replace("[\"tdx\", \"tpm\"]", "[\"sgx\"]")).unwrap_err().to_string();
        assert!(err.contains("field `platforms`: unknown platform \"sgx\""), "{err}");
        let err = Policy::parse(&FULL.replace("debug = \"forbidden\"", "debug = \"allowed\"")).unwrap_err();
        assert!(err.to_string().contains("field `debug`"), "{err}");
        let err = Policy::parse(&FULL.replace("[\"UpToDate\"]", "[]")).unwrap_err();
        assert!(err.to_string().contains("empty list allows nothing"), "{err}");
        let err = Policy::parse(&FULL.replace("sha256:aaaa", "sha256:AAAA")).unwrap_err();
        assert!(err.to_string().contains("field `image_digests`"), "{err}");
    }

    const GPU: &str = "broker_keys = [\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"]\n\
        gpu_required = true\ngpu_architectures = [\"hopper\"]\n\
        gpu_rim_ids = [\"NV_GPU_DRIVER_GH100_545.00\", \"NV_GPU_VBIOS_1010_0200_882_96005E0001\"]\n";

    fn full_v2() -> String {
        format!("{}\n{GPU}", FULL.replace("version = 1", "version = 2"))
    }

    #[test]
    fn version_2_requires_every_gpu_rule_and_version_1_may_not_name_them() {
        let p = Policy::parse(&full_v2()).unwrap();
        assert!(p.gpu_required);
        assert_eq!(p.gpu_architectures, Rule::Require(vec![GpuArchitecture::Hopper]));
        let v1 = Policy::parse(FULL).unwrap();
        assert_eq!((v1.gpu_required, v1.gpu_architectures, v1.gpu_rim_ids), (false, Rule::Skip, Rule::Skip));
        for field in V2_RULES {
            let text: String = full_v2()
                .lines()
                .filter(|l| !l.starts_with(&format!("{field} ")))
                .collect::<Vec<_>>()
                .join("\n");
            let err = Policy::parse(&text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("policy: missing field `{field}`")), "{err}");
            let err = Policy::parse(&format!(
                "{FULL}\n{}",
                full_v2().lines().find(|l| l.starts_with(field)).unwrap()
            ))
            .unwrap_err()
            .to_string();
            assert_eq!(err, format!("policy: field `{field}` needs version = 2"));
        }
        for (from, to, why) in [
            ("gpu_required = true", "gpu_required = \"skip\"", "field `gpu_required`"),
            ("[\"hopper\"]", "[\"volta\"]", "field `gpu_architectures`"),
            ("[\"hopper\"]", "[]", "empty list allows nothing"),
            ("\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"", "\"AAAA\"", "is not a broker key id"),
            ("\"NV_GPU_DRIVER_GH100_545.00\"", "\"545.00\"", "not an NVIDIA driver or VBIOS RIM id"),
        ] {
            let err = Policy::parse(&full_v2().replace(from, to)).unwrap_err().to_string();
            assert!(err.contains(why), "{from} -> {to}: {err}");
        }
        let err = Policy::parse(&FULL.replace("version = 1", "version = 3")).unwrap_err().to_string();
        assert!(err.contains("unsupported (expected 1 or 2)"), "{err}");
    }
}
