//! The attestation result token: an EAR (IETF RATS "EAT Attestation Result") as a JWT, signed ES256 by the
//! broker's key, so the workload can show others what the broker concluded without them re-verifying.
//!
//! The public key is published as a JWK file (`sealroom broker` writes it next to the signing key). Besides the
//! EAR claims the token carries the released and refused key ids, the TEE key the keys were sealed to, and the
//! audit log's head after this decision: anyone holding a token can check that the broker's log was not cut
//! back past it (`sealroom audit verify --head`).

use std::path::Path;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};

const LAYER: &str = "token";
/// The EAR profile tokens follow (draft-ietf-rats-ear-04; the claims are built in [`super::ear_claims`]).
pub use sealroom_verifier::ear::EAR_PROFILE;

/// The broker's ES256 signing key.
pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
    /// The JWS protected header, base64url: the same for every token.
    header: String,
    issuer: String,
    release_lifetime_s: u64,
    receipt_lifetime_s: u64,
}

/// Default `iss` when the broker is not told its public URL.
pub const DEFAULT_ISSUER: &str = "urn:sealroom:broker";
/// Release tokens: evidence of one release decision, for the workload to show its peers while it runs.
pub const DEFAULT_RELEASE_LIFETIME_S: u64 = 3600;
/// Receipts: proof of what produced an output, read long after the job (five years by default; the JWKS keeps
/// every key that signed one).
pub const DEFAULT_RECEIPT_LIFETIME_S: u64 = 5 * 365 * 86_400;

/// What a token is, for its lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// An attestation result for a key release.
    Release,
    /// An output receipt.
    Receipt,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer(kid={})", self.kid)
    }
}

impl Signer {
    /// A signer from a PKCS#8 P-256 key.
    ///
    /// # Errors
    /// When the bytes are not a P-256 PKCS#8 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| Error::check(LAYER, "signing key is not a PKCS#8 P-256 key"))?;
        let kid = thumbprint(key.public_key().as_ref())?;
        let header = B64.encode(json!({"alg": "ES256", "typ": "JWT", "kid": kid}).to_string());
        Ok(Self {
            key,
            kid,
            header,
            issuer: DEFAULT_ISSUER.into(),
            release_lifetime_s: DEFAULT_RELEASE_LIFETIME_S,
            receipt_lifetime_s: DEFAULT_RECEIPT_LIFETIME_S,
        })
    }

    /// Loads the PKCS#8 key at `path` (mode 0600 enforced), or creates it when absent.
    ///
    /// # Errors
    /// When the file is readable by others, malformed, or cannot be written.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |m: String| Error::check(LAYER, format!("signing key {}: {m}", path.display()));
        if path.exists() {
            let mode = std::fs::metadata(path).map_err(|e| io(e.to_string()))?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(io(format!("mode {mode:04o}, must be 0600")));
            }
            return Self::from_pkcs8(&std::fs::read(path).map_err(|e| io(e.to_string()))?);
        }
        // Key generation draws from aws-lc's own DRBG (its API does not take an injected source).
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| io("key generation failed".into()))?;
        let der = key.to_pkcs8v1().map_err(|_| io("cannot encode".into()))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io(e.to_string()))?;
        std::io::Write::write_all(&mut f, der.as_ref()).map_err(|e| io(e.to_string()))?;
        f.sync_all().map_err(|e| io(e.to_string()))?;
        super::audit::sync_parent_dir(path)?;
        Self::from_pkcs8(der.as_ref())
    }

    /// The public key as a JWK (RFC 7517), with `kid` = its RFC 7638 thumbprint.
    #[must_use]
    pub fn jwk(&self) -> Value {
        let pk = self.key.public_key().as_ref();
        let (x, y) = pk.get(1..).unwrap_or_default().split_at(32.min(pk.len().saturating_sub(1)));
        json!({"kty": "EC", "crv": "P-256", "x": B64.encode(x), "y": B64.encode(y),
               "alg": "ES256", "use": "sig", "kid": self.kid})
    }

    /// The uncompressed SEC1 public key.
    #[must_use]
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// The `iss` of issued tokens (the broker's public base URL, where the discovery document and JWKS are
    /// served) and how long release tokens and receipts stay valid.
    #[must_use]
    pub fn with_issuer(mut self, issuer: &str, release_lifetime_s: u64, receipt_lifetime_s: u64) -> Self {
        issuer.trim_end_matches('/').clone_into(&mut self.issuer);
        self.release_lifetime_s = release_lifetime_s;
        self.receipt_lifetime_s = receipt_lifetime_s;
        self
    }

    /// The `iss` of issued tokens.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key id (RFC 7638 thumbprint).
    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` with the registered claims `iss` and `exp` (from `now_s` and the kind's lifetime) added.
    /// `claims` carry their own `iat`, which must be `now_s` (the EAR's, [`super::ear_claims::TokenClaims`]).
    /// Serialised once, straight into the JWT payload.
    ///
    /// # Errors
    /// When `claims` do not serialise as a JSON object or signing fails.
    pub fn sign_token<C: Serialize>(&self, claims: &C, kind: TokenKind, now_s: u64) -> Result<String> {
        let lifetime = match kind {
            TokenKind::Release => self.release_lifetime_s,
            TokenKind::Receipt => self.receipt_lifetime_s,
        };
        self.sign(&Registered { claims, iss: &self.issuer, exp: now_s.saturating_add(lifetime) })
    }

    /// Signs a response statement ([`sealroom_measurements::broker_response`]): ECDSA P-256/SHA-256, fixed
    /// r ‖ s form (64 bytes).
    ///
    /// # Errors
    /// When signing fails.
    pub fn sign_statement(&self, statement: &[u8]) -> Result<Vec<u8>> {
        // aws-lc-rs ignores the RNG argument (it uses its own DRBG for ECDSA nonces).
        let sig = self
            .key
            .sign(&SystemRandom::new(), statement)
            .map_err(|_| Error::check(LAYER, "ES256 signing failed"))?;
        Ok(sig.as_ref().to_vec())
    }

    /// Signs `claims` as a compact JWS (ES256).
    ///
    /// # Errors
    /// When `claims` do not serialise as a JSON object or signing fails.
    pub fn sign<C: Serialize + ?Sized>(&self, claims: &C) -> Result<String> {
        let payload = serde_json::to_vec(claims).map_err(|e| Error::check(LAYER, format!("claims: {e}")))?;
        if payload.first() != Some(&b'{') {
            return Err(Error::check(LAYER, "claims are not a JSON object"));
        }
        let mut input = String::with_capacity(self.header.len() + 2 + payload.len() * 4 / 3 + 90);
        input.push_str(&self.header);
        input.push('.');
        B64.encode_string(&payload, &mut input);
        // aws-lc-rs ignores the RNG argument (it uses its own DRBG for ECDSA nonces).
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| Error::check(LAYER, "ES256 signing failed"))?;
        input.push('.');
        B64.encode_string(sig.as_ref(), &mut input);
        Ok(input)
    }
}

/// A token's claims with the registered claims the signer adds (RFC 7519 §4.1.1, §4.1.4).
#[derive(Serialize)]
struct Registered<'a, C> {
    #[serde(flatten)]
    claims: &'a C,
    iss: &'a str,
    exp: u64,
}

/// RFC 7638 JWK thumbprint of a P-256 key, base64url.
fn thumbprint(pk: &[u8]) -> Result<String> {
    let (x, y) = match pk {
        [4, rest @ ..] if rest.len() == 64 => rest.split_at(32),
        _ => return Err(Error::check(LAYER, "public key is not uncompressed P-256")),
    };
    let canonical =
        format!(r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#, B64.encode(x), B64.encode(y));
    Ok(B64.encode(digest::digest(&digest::SHA256, canonical.as_bytes())))
}

/// Verifies a token against a published JWK and returns its claims.
///
/// # Errors
/// A malformed token or JWK, another algorithm, or a bad signature.
pub fn verify(token: &str, jwk: &Value) -> Result<Value> {
    let bad = |m: &str| Error::check(LAYER, m.to_owned());
    let coord = |name: &str| -> Result<Vec<u8>> {
        let s = jwk.get(name).and_then(Value::as_str).ok_or_else(|| bad("JWK lacks x or y"))?;
        B64.decode(s).map_err(|_| bad("JWK coordinate is not base64url"))
    };
    if jwk.get("kty").and_then(Value::as_str) != Some("EC")
        || jwk.get("crv").and_then(Value::as_str) != Some("P-256")
    {
        return Err(bad("JWK is not an EC P-256 key"));
    }
    let mut pk = vec![4u8];
    pk.extend(coord("x")?);
    pk.extend(coord("y")?);
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad("not a compact JWS"));
    };
    let header: Value = serde_json::from_slice(&B64.decode(h).map_err(|_| bad("header is not base64url"))?)
        .map_err(|_| bad("header is not JSON"))?;
    if header.get("alg").and_then(Value::as_str) != Some("ES256") {
        return Err(bad("alg is not ES256"));
    }
    let sig = B64.decode(s).map_err(|_| bad("signature is not base64url"))?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &pk)
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| bad("signature does not verify"))?;
    serde_json::from_slice(&B64.decode(c).map_err(|_| bad("claims are not base64url"))?)
        .map_err(|_| bad("claims are not JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_and_detects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.key");
        let signer = Signer::load_or_create(&path).unwrap();
        let again = Signer::load_or_create(&path).unwrap();
        assert_eq!(signer.public_key(), again.public_key());
        let claims = json!({"eat_profile": EAR_PROFILE, "iat": 1});
        let token = signer.sign(&claims).unwrap();
        assert_eq!(verify(&token, &signer.jwk()).unwrap(), claims);
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = B64.encode(json!({"eat_profile": EAR_PROFILE, "iat": 2}).to_string());
        parts[1] = &forged;
        let err = verify(&parts.join("."), &signer.jwk()).unwrap_err();
        assert_eq!(err.to_string(), "token: signature does not verify");
        let issued = signer
            .with_issuer("https://broker.example/", 60, 600)
            .sign_token(&json!({"eat_profile": EAR_PROFILE, "iat": 1_000}), TokenKind::Receipt, 1_000)
            .unwrap();
        let claims = verify(&issued, &again.jwk()).unwrap();
        assert_eq!(
            (&claims["iss"], &claims["iat"], &claims["exp"]),
            (&json!("https://broker.example"), &json!(1_000), &json!(1_600))
        );
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        assert!(Signer::load_or_create(&path).unwrap_err().to_string().contains("must be 0600"));
    }
}
