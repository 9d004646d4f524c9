//! Entry points of the Intel fuzz targets (`fuzz/fuzz_targets/tdx_*.rs`, `intel_cert_chain.rs`), shared with
//! the corpus-replay test `verifier/tests/tdx_fuzz_corpus.rs` so CI runs exactly what the fuzzer runs. Each
//! takes arbitrary bytes and must return without panicking.
#![doc(hidden)]

use super::tcb::{QeIdentity, TcbInfo};
use super::{Collateral, PckExtension, Quote, VerifiedCollateral, verify_quote, verify_quote_signatures};
use crate::x509::{Certificate, Crl, UnixTime, verify_chain};

/// A fixed time inside the corpus collateral's window (2025-07-19T10:00:34Z).
pub const FUZZ_TIME: UnixTime = 1_752_919_234;

/// Quote: parse, verify signatures, and (when given) verify against collateral; touch every parsed field.
pub fn tdx_quote(data: &[u8], collateral: Option<&VerifiedCollateral>) {
    if let Ok(q) = Quote::parse(data) {
        let _ = q.td_report().map(|t| t.rtmr);
        let _ = q.enclave_report().map(|e| e.report_data);
        let _ = verify_quote_signatures(data, FUZZ_TIME);
        if let Some(c) = collateral {
            let _ = verify_quote(data, c, FUZZ_TIME);
        }
    }
}

/// Collateral: any document `Collateral::load` accepts, verified at a fixed time; the JSON bodies are also
/// parsed directly (the signature would otherwise stop almost every input before the parsers).
pub fn tdx_collateral(data: &[u8]) {
    let mut c = Collateral::default();
    if c.add_bytes(data, "fuzz").is_ok() {
        let _ = c.verify(FUZZ_TIME);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = TcbInfo::from_json(text);
        let _ = QeIdentity::from_json(text);
    }
}

/// Intel certificate chains and CRLs: PEM or DER, chain to the pinned root, SGX extension, CRL parsing.
pub fn intel_cert_chain(data: &[u8]) {
    if let Ok(chain) = Certificate::chain_from_pem_or_der(data) {
        if let Ok(root) = super::intel_root() {
            let _ = verify_chain(&chain, std::slice::from_ref(&root), FUZZ_TIME);
        }
        for c in &chain {
            let _ = PckExtension::from_certificate(c);
            let _ = c.signature_algorithm();
        }
    }
    if let Ok(crl) = Crl::from_any(data) {
        let _ = crl.is_revoked(&[1, 2, 3]);
    }
}
