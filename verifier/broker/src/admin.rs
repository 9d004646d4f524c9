//! Key management (add, list, rotate, revoke, set policy) on a local Unix socket.
//!
//! The release API needs no credentials (attestation is its authentication); key management does. The socket
//! is created mode 0600 and every connection's peer credentials must match the broker's own uid, so only the
//! data provider's account can manage keys. When the broker is given an admin token, every request must also
//! carry it. One JSON request per line, one JSON response per line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::keystore::KeyInfo;
use super::store::KeyRecords;
use super::{Clock, Randomness};
use crate::error::{Error, Result};

const LAYER: &str = "admin";
/// Longest request line (policies are ≤ 64 KiB).
const MAX_REQUEST: usize = 256 * 1024;

/// One key-management operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    /// Register a key for a data provider with its policy (material generated when absent).
    Add {
        /// Key id.
        key_id: String,
        /// Data provider id.
        owner: String,
        /// Policy TOML.
        policy: String,
        /// Key material, hex.
        material_hex: Option<String>,
    },
    /// List keys (of one owner).
    List {
        /// Only this owner's keys.
        owner: Option<String>,
    },
    /// New key material version.
    Rotate {
        /// Key id.
        key_id: String,
        /// Key material, hex (generated when absent).
        material_hex: Option<String>,
    },
    /// Never release this key again.
    Revoke {
        /// Key id.
        key_id: String,
    },
    /// Replace a key's policy.
    SetPolicy {
        /// Key id.
        key_id: String,
        /// Policy TOML.
        policy: String,
    },
}

/// A request: the operation and, when the broker requires one, the admin token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminRequest {
    /// Admin token, when configured.
    pub token: Option<String>,
    /// What to do.
    pub operation: Operation,
}

impl AdminRequest {
    /// Parses one request line.
    ///
    /// # Errors
    /// Malformed JSON or an unknown operation or field.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::check(LAYER, format!("bad request: {e}")))
    }
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum AdminResponse {
    /// Done; the affected (or listed) keys.
    Ok {
        /// Keys.
        keys: Vec<KeyInfo>,
    },
    /// Refused or failed.
    Error {
        /// One line.
        message: String,
    },
}

fn material(hex_text: Option<&String>) -> Result<Option<Vec<u8>>> {
    hex_text
        .map(|h| hex::decode(h).map_err(|e| Error::check(LAYER, format!("material_hex: {e}"))))
        .transpose()
}

/// Applies one operation to the store.
#[must_use]
pub fn apply(
    store: &dyn KeyRecords,
    rng: &dyn Randomness,
    clock: &dyn Clock,
    op: &Operation,
) -> AdminResponse {
    let now = clock.now_ms();
    let result = match op {
        Operation::Add { key_id, owner, policy, material_hex } => material(material_hex.as_ref())
            .and_then(|m| store.add(key_id, owner, policy, m, rng, now))
            .map(|k| vec![k]),
        Operation::List { owner } => store.list(owner.as_deref()),
        Operation::Rotate { key_id, material_hex } => {
            material(material_hex.as_ref()).and_then(|m| store.rotate(key_id, m, rng, now)).map(|k| vec![k])
        }
        Operation::Revoke { key_id } => store.revoke(key_id, now).map(|k| vec![k]),
        Operation::SetPolicy { key_id, policy } => store.set_policy(key_id, policy).map(|k| vec![k]),
    };
    match result {
        Ok(keys) => AdminResponse::Ok { keys },
        Err(e) => AdminResponse::Error { message: e.to_string() },
    }
}

fn tokens_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Everything the admin endpoint needs.
#[derive(Debug, Clone)]
pub struct AdminContext {
    /// The key store.
    pub store: Arc<dyn KeyRecords>,
    /// Randomness for generated keys and encryption nonces.
    pub rng: Arc<dyn Randomness>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Required token, if any.
    pub token: Option<String>,
}

impl AdminContext {
    fn handle_line(&self, line: &str) -> AdminResponse {
        let req = match AdminRequest::from_json(line.as_bytes()) {
            Ok(r) => r,
            Err(e) => return AdminResponse::Error { message: e.to_string() },
        };
        if let Some(want) = &self.token
            && !req.token.as_deref().is_some_and(|got| tokens_equal(got, want))
        {
            return AdminResponse::Error { message: "admin: missing or wrong admin token".into() };
        }
        apply(self.store.as_ref(), self.rng.as_ref(), self.clock.as_ref(), &req.operation)
    }
}

/// Binds the admin socket (mode 0600), replacing a stale socket file.
///
/// # Errors
/// When the socket cannot be bound or restricted.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    let io = |m: String| Error::check(LAYER, format!("socket {}: {m}", path.display()));
    if path.exists() {
        std::fs::remove_file(path).map_err(|e| io(e.to_string()))?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| io(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| io(e.to_string()))?;
    Ok(listener)
}

/// Serves admin connections until the listener fails.
///
/// # Errors
/// When accepting fails.
pub async fn serve(listener: tokio::net::UnixListener, ctx: AdminContext) -> Result<()> {
    let own_uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).ok();
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| Error::check(LAYER, format!("accept: {e}")))?;
        let peer_uid = stream.peer_cred().ok().map(|c| c.uid());
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            if own_uid.is_none() || peer_uid != own_uid {
                let resp = AdminResponse::Error { message: "admin: peer is not the broker's user".into() };
                let _ = write.write_all(format!("{}\n", serde_json::json!(resp)).as_bytes()).await;
                return;
            }
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = if line.len() > MAX_REQUEST {
                    AdminResponse::Error { message: format!("admin: request over {MAX_REQUEST} bytes") }
                } else {
                    let ctx = ctx.clone();
                    tokio::task::spawn_blocking(move || ctx.handle_line(&line)).await.unwrap_or_else(|e| {
                        AdminResponse::Error { message: format!("admin: request task failed: {e}") }
                    })
                };
                let text = serde_json::to_string(&resp).unwrap_or_default();
                if write.write_all(format!("{text}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Sends one request to a running broker's admin socket.
///
/// # Errors
/// When the socket cannot be reached or the answer is malformed.
pub fn request(socket: &Path, req: &AdminRequest) -> Result<AdminResponse> {
    let io = |m: String| Error::check(LAYER, format!("socket {}: {m}", socket.display()));
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| io(e.to_string()))?;
    let line = serde_json::to_string(req).map_err(|e| io(e.to_string()))?;
    stream.write_all(format!("{line}\n").as_bytes()).map_err(|e| io(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(|e| io(e.to_string()))?;
    serde_json::from_str(&answer).map_err(|e| io(format!("bad answer: {e}")))
}
