//! Differential test against dcap-qvl 0.7.1 (Phala Network's DCAP verifier, MIT): for every corpus quote with
//! collateral, and for single-byte mutations across the whole quote and times around the collateral window,
//! both verifiers must reach the same verdict (accept/refuse), and on acceptance the same TCB status and
//! advisory IDs.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::expect_used)]

use std::path::Path;

use sealroom_verifier::tdx::{Collateral, VerifiedQuote, verify_quote};
use sealroom_verifier::x509::parse_time;

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tdx").join(rel)).unwrap()
}

/// (quote, collateral, manifest time)
const CORPUS: &[(&str, &str, &str)] = &[
    ("dcap-qvl/tdx_quote", "dcap-qvl/tdx_quote_collateral.json", "2025-07-19T10:00:34Z"),
    ("dcap-qvl/sgx_quote", "dcap-qvl/sgx_quote_collateral.json", "2025-07-19T10:01:17Z"),
    ("dcap-qvl/tdx_quote_outdated", "dcap-qvl/tdx_quote_outdated_collateral.json", "2026-03-20T10:41:14Z"),
];

/// Our verdict: Ok((status, advisories)) or Err(reason).
fn ours(quote: &[u8], collateral_json: &[u8], at: i64) -> Result<(String, Vec<String>), String> {
    let mut c = Collateral::default();
    c.add_bytes(collateral_json, "collateral").map_err(|e| e.to_string())?;
    let v = c.verify(at).map_err(|e| e.to_string())?;
    match verify_quote(quote, &v, at).map_err(|e| e.to_string())? {
        VerifiedQuote::Tdx(t) => Ok((t.tcb_status.to_string(), t.advisory_ids)),
        VerifiedQuote::Sgx(s) => Ok((s.tcb_status.to_string(), s.advisory_ids)),
        _ => Err("unknown quote kind".into()),
    }
}

fn theirs(quote: &[u8], collateral_json: &[u8], at: i64) -> Result<(String, Vec<String>), String> {
    let c: dcap_qvl::QuoteCollateralV3 =
        serde_json::from_slice(collateral_json).map_err(|e| e.to_string())?;
    let r = dcap_qvl::verify::verify(quote, &c, u64::try_from(at).unwrap()).map_err(|e| format!("{e:#}"))?;
    Ok((r.status, r.advisory_ids))
}

#[derive(Debug, PartialEq)]
enum Verdicts {
    Agree,
    /// We refuse, dcap-qvl accepts.
    OursStricter(String),
    Disagree,
}

fn compare(what: &str, quote: &[u8], collateral: &[u8], at: i64) -> Verdicts {
    let a = ours(quote, collateral, at);
    let b = theirs(quote, collateral, at);
    match (&a, &b) {
        (Ok(x), Ok(y)) if x == y => Verdicts::Agree,
        (Err(_), Err(_)) => Verdicts::Agree,
        (Err(reason), Ok(_)) => Verdicts::OursStricter(reason.clone()),
        _ => {
            eprintln!("DISAGREE {what}: ours {a:?} / dcap-qvl {b:?}");
            Verdicts::Disagree
        }
    }
}

fn agree(what: &str, quote: &[u8], collateral: &[u8], at: i64) -> bool {
    let v = compare(what, quote, collateral, at);
    if v != Verdicts::Agree {
        eprintln!("DIFFERENT {what}: {v:?}");
    }
    v == Verdicts::Agree
}

/// Byte range of the last PEM certificate (the root) in the quote's certification data.
fn root_pem_range(quote: &[u8]) -> std::ops::Range<usize> {
    let find = |needle: &[u8], from: usize| {
        quote[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from)
    };
    let mut start = 0;
    let mut last = 0..0;
    while let Some(b) = find(b"-----BEGIN CERTIFICATE-----", start) {
        let e = find(b"-----END CERTIFICATE-----", b).unwrap() + 25;
        last = b..e;
        start = e;
    }
    last
}

#[test]
fn corpus_verdicts_agree_with_dcap_qvl() {
    for (q, c, at) in CORPUS {
        let (quote, coll, at) = (read(q), read(c), parse_time(at).unwrap());
        assert!(agree(q, &quote, &coll, at), "{q}");
    }
    // And the verdicts are the manifest's.
    let (q, c, at) = CORPUS[0];
    assert_eq!(theirs(&read(q), &read(c), parse_time(at).unwrap()).unwrap().0, "UpToDate");
    let (q, c, at) = CORPUS[2];
    assert!(theirs(&read(q), &read(c), parse_time(at).unwrap()).is_err());
}

#[test]
fn times_around_the_collateral_window_agree_with_dcap_qvl() {
    for (q, c, at) in CORPUS {
        let (quote, coll, at) = (read(q), read(c), parse_time(at).unwrap());
        for delta in [-40 * 86_400, -31 * 86_400, -86_400, -1, 0, 1, 2, 3600, 86_400, 365 * 86_400] {
            assert!(agree(&format!("{q} at {delta:+}s"), &quote, &coll, at + delta), "{q} {delta}");
        }
    }
}

#[test]
fn single_byte_mutations_agree_with_dcap_qvl() {
    let mut disagreements = Vec::new();
    let mut checked = 0usize;
    let mut stricter = 0usize;
    for (q, c, at) in CORPUS {
        let (quote, coll, at) = (read(q), read(c), parse_time(at).unwrap());
        // Every header and body byte region, the signature data and the PCK chain: a stride keeps the run short
        // while touching every field (the stride is prime so it walks through field offsets).
        let mut offsets: Vec<usize> = (0..quote.len()).step_by(23).collect();
        offsets.extend([0, 1, 2, 3, 4, 8, 10, 12, 27, 28, 47, 48, 49, 100, quote.len() - 1]);
        let root = root_pem_range(&quote);
        assert!(root.len() > 800, "{root:?}");
        for off in offsets {
            let mut m = quote.clone();
            m[off] ^= 0x01;
            checked += 1;
            match compare(&format!("{q} byte {off:#x}"), &m, &coll, at) {
                Verdicts::Agree => {}
                // By design we refuse a quote whose embedded root certificate is not byte-for-byte the pinned
                // Intel root (Intel QVL compares it too); dcap-qvl ignores the embedded root. Only there, and
                // only in the stricter direction, may the verdicts differ.
                Verdicts::OursStricter(reason) if root.contains(&off) => {
                    assert!(reason.contains("Intel SGX Root CA") || reason.contains("PCK chain"), "{reason}");
                    stricter += 1;
                }
                other => disagreements.push(format!("{q}@{off:#x}: {other:?}")),
            }
        }
        // Truncations.
        for len in [0, 10, 48, 300, 632, 700, quote.len() / 2, quote.len() - 1] {
            checked += 1;
            if !agree(&format!("{q} truncated to {len}"), &quote[..len], &coll, at) {
                disagreements.push(format!("{q}[..{len}]"));
            }
        }
    }
    assert!(checked > 600, "{checked}");
    eprintln!("{checked} mutations, {stricter} refused only by us (embedded root certificate altered)");
    assert!(
        disagreements.is_empty(),
        "{} of {checked} verdicts differ: {disagreements:?}",
        disagreements.len()
    );
}
