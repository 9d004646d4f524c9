//! Azure vTPM evidence as JSON, in the shapes Azure guest tooling and Trustee's `az-snp-vtpm` /
//! `az-tdx-vtpm` attesters emit: v0 (byte arrays, PEM VCEK), v1/v2 (hex quote, base64url HCL report, base64 DER
//! VCEK). Every byte field accepts either encoding.

use base64::Engine as _;
use serde_json::Value;

use crate::error::{Error, Result};

const LAYER: &str = "azure evidence";

/// The vTPM quote of Azure evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureQuote {
    /// TPMS_ATTEST.
    pub message: Vec<u8>,
    /// Raw RSA signature (RSASSA-PKCS1-v1_5 SHA-256 by HCLAkPub).
    pub signature: Vec<u8>,
    /// SHA-256 PCRs 0..=23.
    pub pcrs: Vec<Vec<u8>>,
}

/// Azure vTPM evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureEvidence {
    /// The HCL report.
    pub hcl_report: Vec<u8>,
    /// The vTPM quote.
    pub quote: AzureQuote,
    /// SNP: the VCEK, DER.
    pub vcek: Option<Vec<u8>>,
    /// TDX: the TD quote.
    pub td_quote: Option<Vec<u8>>,
    /// The quoting AK as a marshalled TPMT_PUBLIC, when the evidence names it (sealroom's agent does; Azure's
    /// JSON shapes do not). Lets the verifier say "wrong AK" instead of "bad signature".
    pub ak_public: Option<Vec<u8>>,
}

fn bytes(v: &Value, field: &str) -> Result<Vec<u8>> {
    let bad = |why: &str| Error::check(LAYER, format!("{field}: {why}"));
    match v {
        Value::Array(items) => items
            .iter()
            .map(|x| {
                x.as_u64().and_then(|n| u8::try_from(n).ok()).ok_or_else(|| bad("array item is not a byte"))
            })
            .collect(),
        Value::String(s) => {
            if s.len() % 2 == 0 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
                return hex::decode(s).map_err(|e| bad(&e.to_string()));
            }
            let trimmed = s.trim_end_matches('=');
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(trimmed)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
                .map_err(|_| bad("neither hex nor base64"))
        }
        _ => Err(bad("not bytes")),
    }
}

fn pem_or_der(v: &Value, field: &str) -> Result<Vec<u8>> {
    if let Some(s) = v.as_str()
        && s.contains("-----BEGIN")
    {
        let first = crate::x509::Certificate::chain_from_pem(s.as_bytes())
            .map_err(|e| e.within(LAYER, field))?
            .into_iter()
            .next()
            .ok_or_else(|| Error::check(LAYER, format!("{field}: no certificate")))?;
        return Ok(first.der().to_vec());
    }
    bytes(v, field)
}

impl AzureEvidence {
    /// Parses evidence JSON (v0, v1 or v2).
    ///
    /// # Errors
    /// When a required field is missing or malformed.
    pub fn parse_json(text: &[u8]) -> Result<Self> {
        let v: Value =
            serde_json::from_slice(text).map_err(|e| Error::check(LAYER, format!("not JSON: {e}")))?;
        let get = |names: &[&str]| names.iter().find_map(|n| v.get(*n));
        let quote = get(&["tpm_quote", "quote"]).ok_or_else(|| Error::check(LAYER, "no tpm_quote"))?;
        let field = |name: &str| {
            quote.get(name).ok_or_else(|| Error::check(LAYER, format!("tpm_quote.{name} missing")))
        };
        let pcrs = field("pcrs")?
            .as_array()
            .ok_or_else(|| Error::check(LAYER, "tpm_quote.pcrs is not a list"))?
            .iter()
            .map(|p| bytes(p, "tpm_quote.pcrs"))
            .collect::<Result<Vec<_>>>()?;
        if pcrs.len() > 24 || pcrs.iter().any(|p| p.len() != 32) {
            return Err(Error::check(LAYER, "tpm_quote.pcrs must be at most 24 SHA-256 values"));
        }
        let quote = AzureQuote {
            message: bytes(field("message")?, "tpm_quote.message")?,
            signature: bytes(field("signature")?, "tpm_quote.signature")?,
            pcrs,
        };
        let hcl_report = bytes(
            get(&["hcl_report", "report"]).ok_or_else(|| Error::check(LAYER, "no hcl_report"))?,
            "hcl_report",
        )?;
        let vcek = v.get("vcek").map(|x| pem_or_der(x, "vcek")).transpose()?;
        let td_quote = v.get("td_quote").map(|x| bytes(x, "td_quote")).transpose()?;
        Ok(Self { hcl_report, quote, vcek, td_quote, ak_public: None })
    }

    /// Whether `text` looks like Azure evidence JSON (for input auto-detection).
    #[must_use]
    pub fn looks_like(text: &[u8]) -> bool {
        let head = text
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .and_then(|i| text.get(i..))
            .unwrap_or_default();
        head.starts_with(b"{")
            && serde_json::from_slice::<Value>(text).is_ok_and(|v| {
                (v.get("tpm_quote").is_some() || v.get("quote").is_some())
                    && (v.get("hcl_report").is_some() || v.get("report").is_some())
            })
    }
}
