//! Platform collateral from Azure's instance metadata service (IMDS), fetched once at start-up.
//!
//! The HCL report only carries the hardware report; what a verifier needs to check its signature comes from the
//! host, over plain HTTP on the link-local IMDS address (the bytes are signed by AMD or Intel keys, so the
//! transport need not be trusted; a wrong answer only makes the verifier refuse):
//! - SEV-SNP: `GET /metadata/THIM/amd/certification` with `Metadata: true` returns JSON whose `vcekCert` is the
//!   VCEK (PEM) and `certificateChain` the ASK and ARK (PEM); Azure also sends `tcbm` and `cacheControl`.
//! - TDX: `POST /acc/tdquote` with JSON `{"report": base64url(TDREPORT)}`, where the TDREPORT is the 1024 bytes
//!   at 0x20 of the HCL report, returns `{"quote": base64url(TD quote)}` (the protocol of Azure's own
//!   `az-tdx-vtpm` tooling).
//!
//! Every exchange has a timeout, follows no redirect, ignores proxy variables, and reads at most
//! [`MAX_RESPONSE`] bytes; the answers are parsed strictly (required fields typed, PEM to DER with a DER frame
//! check, sizes within the evidence limits).

use std::time::Duration;

use base64::Engine as _;
use sealroom_measurements::evidence::limits;
use sealroom_measurements::reader::Reader;
use serde::Deserialize;

use crate::error::{Error, Result};

const NAME: &str = "azure-vtpm";
/// The IMDS address every Azure VM reaches.
pub const DEFAULT_BASE_URL: &str = "http://169.254.169.254";
/// Environment variable overriding [`DEFAULT_BASE_URL`] (the agent as PID 1 gets it from the kernel command
/// line; tests point it at a loopback server through [`Imds::new`] instead).
pub const BASE_URL_ENV: &str = "SEALROOM_AZURE_IMDS_URL";
/// Path of the AMD certificates (VCEK, ASK, ARK).
pub const AMD_CERTIFICATION_PATH: &str = "/metadata/THIM/amd/certification";
/// Path of the TD quote service.
pub const TD_QUOTE_PATH: &str = "/acc/tdquote";
/// Largest response body read (a VCEK chain is about 6.5 KiB, a TD quote about 7 KiB in base64).
pub const MAX_RESPONSE: usize = 64 * 1024;
/// Default limit for one exchange, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// TDREPORT inside the HCL report: after the 32-byte header, 1024 bytes.
const TDREPORT_OFFSET: usize = 0x20;
const TDREPORT_LEN: usize = 1024;

fn fail(reason: impl std::fmt::Display) -> Error {
    Error::attester(NAME, format!("imds: {reason}"))
}

/// Where and how long to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imds {
    base: String,
    timeout: Duration,
}

/// The AMD certificates IMDS returns, DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmdCertificates {
    /// The VCEK of this chip at its reported TCB.
    pub vcek: Vec<u8>,
    /// ASK then ARK, as served (verifiers pin AMD's roots themselves, so the evidence ships the VCEK only).
    pub chain: Vec<Vec<u8>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AmdCertification {
    vcek_cert: String,
    certificate_chain: String,
}

#[derive(Deserialize)]
struct TdQuoteResponse {
    quote: String,
}

impl Default for Imds {
    fn default() -> Self {
        Self::new(DEFAULT_BASE_URL, DEFAULT_TIMEOUT)
    }
}

impl Imds {
    /// IMDS at `base` (scheme, host and port, no path), each exchange limited to `timeout`.
    pub fn new(base: impl Into<String>, timeout: Duration) -> Self {
        Self { base: base.into().trim_end_matches('/').to_owned(), timeout }
    }

    /// IMDS at `$SEALROOM_AZURE_IMDS_URL`, else at the link-local address, with the default timeout.
    #[must_use]
    pub fn from_env() -> Self {
        Self::new(
            std::env::var(BASE_URL_ENV).unwrap_or_else(|_| DEFAULT_BASE_URL.to_owned()),
            DEFAULT_TIMEOUT,
        )
    }

    /// The base URL asked.
    #[must_use]
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The VCEK and its chain (SEV-SNP CVMs).
    ///
    /// # Errors
    /// One line naming the URL and what went wrong: unreachable, timeout, HTTP status, oversized or malformed body.
    pub fn amd_certificates(&self) -> Result<AmdCertificates> {
        let body = self.exchange(AMD_CERTIFICATION_PATH, None)?;
        parse_amd_certification(&body)
            .map_err(|e| fail(format!("{}{AMD_CERTIFICATION_PATH}: {e}", self.base)))
    }

    /// The TD quote over the TDREPORT inside `hcl_report` (TDX CVMs).
    ///
    /// # Errors
    /// As [`Self::amd_certificates`], and when the HCL report is too short to hold a TDREPORT.
    pub fn td_quote(&self, hcl_report: &[u8]) -> Result<Vec<u8>> {
        let report = td_report(hcl_report)?;
        let request = serde_json::json!({
            "report": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(report),
        });
        let body = self.exchange(TD_QUOTE_PATH, Some(request.to_string().into_bytes()))?;
        parse_td_quote_response(&body).map_err(|e| fail(format!("{}{TD_QUOTE_PATH}: {e}", self.base)))
    }

    /// One HTTP exchange (GET with `Metadata: true`, or POST of JSON), on its own thread and current-thread
    /// runtime so that it works whether or not the caller runs inside tokio.
    fn exchange(&self, path: &str, post: Option<Vec<u8>>) -> Result<Vec<u8>> {
        let url = format!("{}{path}", self.base);
        let timeout = self.timeout;
        let run = || -> Result<Vec<u8>> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| fail(format!("runtime: {e}")))?;
            rt.block_on(fetch(&url, post, timeout))
        };
        std::thread::scope(|s| s.spawn(run).join())
            .map_err(|_| fail(format!("{url}: fetch thread panicked")))?
    }
}

/// One line from an error and its sources (reqwest's own message omits the cause, e.g. "connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

async fn fetch(url: &str, post: Option<Vec<u8>>, timeout: Duration) -> Result<Vec<u8>> {
    let at = |reason: String| fail(format!("{url}: {reason}"));
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
        .map_err(|e| at(chain(&e)))?;
    let request = match post {
        None => client.get(url).header("Metadata", "true"),
        Some(body) => client.post(url).header("Content-Type", "application/json").body(body),
    };
    let mut response = request.send().await.map_err(|e| at(chain(&e.without_url())))?;
    let status = response.status();
    if !status.is_success() {
        return Err(at(format!("HTTP status {status}")));
    }
    let too_large = || at(format!("response larger than {MAX_RESPONSE} bytes"));
    if response.content_length().is_some_and(|n| n > MAX_RESPONSE as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| at(chain(&e.without_url())))? {
        if body.len().saturating_add(chunk.len()) > MAX_RESPONSE {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The TDREPORT inside an HCL report (the bytes Azure's quote service wants).
///
/// # Errors
/// When the report is shorter than the header plus a TDREPORT.
pub fn td_report(hcl_report: &[u8]) -> Result<&[u8]> {
    let mut r = Reader::new(hcl_report);
    r.skip(TDREPORT_OFFSET, "hcl header").map_err(|e| fail(format!("hcl report: {e}")))?;
    r.take(TDREPORT_LEN, "tdreport").map_err(|e| fail(format!("hcl report: {e}")))
}

/// Parses the body of `/metadata/THIM/amd/certification`.
///
/// # Errors
/// When it is not that JSON object, `vcekCert` is not exactly one certificate, or the chain holds none.
pub fn parse_amd_certification(body: &[u8]) -> std::result::Result<AmdCertificates, String> {
    let parsed: AmdCertification =
        serde_json::from_slice(body).map_err(|e| format!("not the AMD certification JSON: {e}"))?;
    let mut vcek = pem_certificates(&parsed.vcek_cert).map_err(|e| format!("vcekCert: {e}"))?;
    let chain = pem_certificates(&parsed.certificate_chain).map_err(|e| format!("certificateChain: {e}"))?;
    if vcek.len() != 1 {
        return Err(format!("vcekCert: {} certificates, expected one", vcek.len()));
    }
    if chain.is_empty() {
        return Err("certificateChain: no certificate".into());
    }
    Ok(AmdCertificates { vcek: vcek.remove(0), chain })
}

/// Parses the body of `/acc/tdquote`: a base64url TD quote (v4 or v5 header, TEE type TDX) within the evidence
/// limit.
///
/// # Errors
/// When it is not that JSON object, not base64url, too large, or not a TDX quote.
pub fn parse_td_quote_response(body: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let parsed: TdQuoteResponse =
        serde_json::from_slice(body).map_err(|e| format!("not the TD quote JSON: {e}"))?;
    let quote = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parsed.quote.trim_end_matches('='))
        .map_err(|e| format!("quote is not base64url: {e}"))?;
    if quote.len() > limits::TDX_QUOTE {
        return Err(format!("quote of {} bytes exceeds {} bytes", quote.len(), limits::TDX_QUOTE));
    }
    let mut r = Reader::new(&quote);
    let version = r.u16_le("quote version").map_err(|e| format!("quote: {e}"))?;
    let _key_type = r.u16_le("attestation key type").map_err(|e| format!("quote: {e}"))?;
    let tee_type = r.u32_le("tee type").map_err(|e| format!("quote: {e}"))?;
    if !matches!(version, 4 | 5) || tee_type != 0x81 {
        return Err(format!("not a TDX quote (version {version}, TEE type {tee_type:#x})"));
    }
    Ok(quote)
}

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

/// PEM certificates to DER: only CERTIFICATE blocks and blank lines, standard base64 inside, each block one DER
/// SEQUENCE whose length fills it exactly, at most `CERT_COUNT` certificates of at most `CERT_LEN` bytes.
///
/// # Errors
/// On any other text, bad base64, a DER frame that does not fit, or too many or too large certificates.
pub fn pem_certificates(text: &str) -> std::result::Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let n = n.saturating_add(1);
        match (&mut block, line) {
            (None, "") => {}
            (None, PEM_BEGIN) => block = Some(String::new()),
            (None, _) => return Err(format!("line {n}: text outside a CERTIFICATE block")),
            (Some(b64), PEM_END) => {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|e| format!("certificate {}: bad base64: {e}", out.len().saturating_add(1)))?;
                check_der_frame(&der)
                    .map_err(|e| format!("certificate {}: {e}", out.len().saturating_add(1)))?;
                out.push(der);
                if out.len() > limits::CERT_COUNT {
                    return Err(format!("more than {} certificates", limits::CERT_COUNT));
                }
                block = None;
            }
            (Some(b64), _) => {
                if b64.len().saturating_add(line.len()) > limits::CERT_LEN.saturating_mul(2) {
                    return Err(format!("line {n}: certificate larger than {} bytes", limits::CERT_LEN));
                }
                b64.push_str(line);
            }
        }
    }
    if block.is_some() {
        return Err("CERTIFICATE block without its END line".into());
    }
    Ok(out)
}

/// A certificate is one DER SEQUENCE (definite length) that is exactly the decoded bytes.
fn check_der_frame(der: &[u8]) -> std::result::Result<(), String> {
    if der.len() > limits::CERT_LEN {
        return Err(format!("{} bytes exceed {} bytes", der.len(), limits::CERT_LEN));
    }
    let mut r = Reader::new(der);
    let bad = |e| format!("DER: {e}");
    if r.u8("tag").map_err(bad)? != 0x30 {
        return Err("DER: not a SEQUENCE".into());
    }
    let first = r.u8("length").map_err(bad)?;
    let len = match first {
        0..=0x7f => usize::from(first),
        0x81 | 0x82 => {
            let octets = r.take(usize::from(first & 0x7f), "length octets").map_err(bad)?;
            octets.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        }
        _ => return Err(format!("DER: length form {first:#04x} unsupported")),
    };
    r.take(len, "certificate body").map_err(bad)?;
    r.finish("certificate").map_err(|e| format!("DER: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(rel: &str) -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../verifier/testdata/azure");
        std::fs::read_to_string(root.join(rel)).unwrap()
    }

    #[test]
    fn real_vcek_bundle_parses_to_three_ders() {
        let certs = pem_certificates(&testdata("az-snp-vtpm/vcek.pem")).unwrap();
        assert_eq!(certs.len(), 3, "VCEK, ASK, ARK");
        assert!(certs.iter().all(|c| c.first() == Some(&0x30)));
    }

    #[test]
    fn pem_refuses_stray_text_broken_blocks_and_bad_frames() {
        let pem = testdata("az-snp-vtpm/vcek-genoa.pem");
        assert_eq!(pem_certificates(&pem).unwrap().len(), 1);
        assert!(pem_certificates(&format!("hello\n{pem}")).unwrap_err().contains("outside"));
        let unterminated = pem.replace(PEM_END, "");
        assert!(pem_certificates(&unterminated).unwrap_err().contains("END"));
        // A cut body no longer fills its DER frame (or is no base64 at all): never a panic.
        let lines: Vec<&str> = pem.lines().collect();
        for drop in 1..lines.len().saturating_sub(1) {
            let mut cut = lines.clone();
            cut.remove(drop);
            assert!(pem_certificates(&cut.join("\n")).is_err(), "line {drop} dropped");
        }
        let many = pem.repeat(limits::CERT_COUNT + 1);
        assert!(pem_certificates(&many).unwrap_err().contains("more than"));
    }

    #[test]
    fn amd_certification_json_is_parsed_strictly() {
        let pem = testdata("az-snp-vtpm/vcek.pem");
        let mut blocks: Vec<String> =
            pem.split_inclusive(PEM_END).filter(|b| b.contains(PEM_BEGIN)).map(str::to_owned).collect();
        let vcek = blocks.remove(0);
        let body = serde_json::json!({"vcekCert": vcek, "certificateChain": blocks.concat(), "tcbm": "x"});
        let certs = parse_amd_certification(body.to_string().as_bytes()).unwrap();
        assert_eq!(certs.chain.len(), 2);
        let two = serde_json::json!({"vcekCert": pem, "certificateChain": blocks.concat()});
        assert!(parse_amd_certification(two.to_string().as_bytes()).unwrap_err().contains("expected one"));
        let missing = serde_json::json!({"vcekCert": vcek});
        assert!(
            parse_amd_certification(missing.to_string().as_bytes()).unwrap_err().contains("certificateChain")
        );
        let typed = serde_json::json!({"vcekCert": 1, "certificateChain": ""});
        assert!(parse_amd_certification(typed.to_string().as_bytes()).is_err());
    }

    #[test]
    fn td_report_is_the_tdreport_of_the_hcl_report() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../verifier/testdata/azure");
        let hcl = std::fs::read(root.join("az-tdx-vtpm/hcl-report.bin")).unwrap();
        assert_eq!(td_report(&hcl).unwrap(), &hcl[0x20..0x420]);
        assert!(td_report(&hcl[..0x41f]).is_err());
    }
}
