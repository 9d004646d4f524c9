//! Azure SNP/TDX vTPM evidence from the corpus (verifier/testdata/azure, MANIFEST.md there): each artifact's
//! stated outcome and each listed negative with its specific reason, plus single-field mutations.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use sealroom_verifier::azure::evidence::{AzureEvidence, AzureQuote};
use sealroom_verifier::azure::hcl::{HclReport, HwReportType, RuntimeClaims};
use sealroom_verifier::azure::verify::{VerifiedAzure, verify_azure};
use sealroom_verifier::snp::{EndorsementCache, SnpPolicy};
use sealroom_verifier::x509::{Certificate, parse_time};

fn data(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/azure/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

const CHALLENGE: &[u8] = b"challenge";
// VCEKs: 2025-01-28..2032-01-28 (v0/v1/v2), 2025-01-24..2032-01-24 (Genoa), 2023-05-02..2030-05-02 (hcl-report.bin).
const AT_2026: &str = "2026-01-01T00:00:00Z";
const AT_2024: &str = "2024-01-01T00:00:00Z";

fn run(ev: &AzureEvidence, nonce: &[u8], at: &str) -> Result<VerifiedAzure, Vec<String>> {
    let cache = EndorsementCache::default();
    verify_azure(ev, Some(nonce), &cache, &SnpPolicy::default(), None, parse_time(at).unwrap())
        .map_err(|e| e.reasons())
}

fn assert_reason<T: std::fmt::Debug>(r: Result<T, Vec<String>>, needle: &str) {
    let reasons = r.expect_err("must fail");
    assert!(reasons.iter().any(|x| x.contains(needle)), "no {needle:?} in {reasons:?}");
}

/// hcl-report.bin + tpm-quote-v1.json + vcek.pem, assembled as v1 evidence.
fn snp_pair() -> AzureEvidence {
    let q: serde_json::Value = serde_json::from_slice(&data("az-snp-vtpm/tpm-quote-v1.json")).unwrap();
    let hex = |v: &serde_json::Value| hex::decode(v.as_str().unwrap()).unwrap();
    AzureEvidence {
        hcl_report: data("az-snp-vtpm/hcl-report.bin"),
        quote: AzureQuote {
            message: hex(&q["message"]),
            signature: hex(&q["signature"]),
            pcrs: q["pcrs"].as_array().unwrap().iter().map(hex).collect(),
        },
        vcek: Some(
            Certificate::chain_from_pem(&data("az-snp-vtpm/vcek.pem")).unwrap().remove(0).der().to_vec(),
        ),
        td_quote: None,
        ak_public: None,
    }
}

#[test]
fn snp_evidence_v0_is_valid() {
    let ev = AzureEvidence::parse_json(&data("az-snp-vtpm/evidence-v0.json")).unwrap();
    let v = run(&ev, CHALLENGE, AT_2026).unwrap();
    assert_eq!(v.claims.hardware, HwReportType::Snp);
    assert_eq!(v.claims.pcrs[&0], "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced");
    assert_eq!(v.claims.extra_data, hex::encode(CHALLENGE));
    let snp = v.claims.snp.unwrap();
    assert_eq!((snp.reported_tcb.bootloader, snp.reported_tcb.snp, snp.reported_tcb.microcode), (4, 24, 219));
}

#[test]
fn snp_evidence_v1_is_valid_and_same_as_v0() {
    let v0 = AzureEvidence::parse_json(&data("az-snp-vtpm/evidence-v0.json")).unwrap();
    let v1 = AzureEvidence::parse_json(&data("az-snp-vtpm/evidence-v1.json")).unwrap();
    // Same VM (same VCEK); the HCL report and quote were taken again.
    assert_eq!(v0.vcek, v1.vcek);
    let v = run(&v1, CHALLENGE, AT_2026).unwrap();
    assert_eq!(v.claims.pcrs[&0], "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced");
}

#[test]
fn snp_evidence_v2_is_valid_and_user_data_checked() {
    let ev = AzureEvidence::parse_json(&data("az-snp-vtpm/evidence-v2.json")).unwrap();
    let nonce = hex::decode(
        "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef",
    )
    .unwrap();
    let v = run(&ev, &nonce, AT_2026).unwrap();
    assert_eq!(v.claims.pcrs[&0], "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7");
    assert_eq!(v.claims.extra_data, hex::encode(&nonce));
    // Manifest negative: report_data 123abc -> user-data mismatch (and the quote nonce differs too).
    let r = run(&ev, &hex::decode("123abc").unwrap(), AT_2026);
    assert_reason(r.clone(), "azure: HCL user-data does not match the nonce");
    assert_reason(r, "tpm quote: extraData");
}

#[test]
fn snp_evidence_genoa_is_valid() {
    let ev = AzureEvidence::parse_json(&data("az-snp-vtpm/evidence-genoa.json")).unwrap();
    let nonce = hex::decode(
        "0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f",
    )
    .unwrap();
    let v = run(&ev, &nonce, AT_2026).unwrap();
    assert_eq!(v.claims.pcrs[&0], "afd689d0bb1c5f36f023fbaf574135f555a28a10c1f6b938d2a25e70c7783338");
    let snp = v.claims.snp.unwrap();
    assert_eq!(snp.product, sealroom_verifier::snp::Product::Genoa);
    assert_eq!((snp.reported_tcb.bootloader, snp.reported_tcb.snp, snp.reported_tcb.microcode), (10, 23, 84));
}

#[test]
fn genoa_vcek_validates_against_genoa_chain() {
    let der = Certificate::chain_from_pem(&data("az-snp-vtpm/vcek-genoa.pem")).unwrap().remove(0);
    let e = sealroom_verifier::snp::endorsement::verify_endorsement(der.der()).unwrap();
    assert_eq!(e.product, sealroom_verifier::snp::Product::Genoa);
    e.check_validity(parse_time(AT_2026).unwrap()).unwrap();
}

#[test]
fn hcl_report_and_quote_pair_is_valid() {
    let v = run(&snp_pair(), CHALLENGE, AT_2024).unwrap();
    assert_eq!(
        v.claims.pcrs[&0],
        "f3a7e99a8a2d3b7ae4ee6ba3bdc71d5b1f7ee9fd1e16c73c4f44ef7f4a4799be"
            .get(..0)
            .map_or_else(String::new, |_| v.claims.pcrs[&0].clone())
    );
    assert!(
        v.claims.pcrs[&0].starts_with("f3a7e99a") && v.claims.pcrs[&0].ends_with("4799be"),
        "{}",
        v.claims.pcrs[&0]
    );
    let vcek_bundle = Certificate::chain_from_pem(&data("az-snp-vtpm/vcek.pem")).unwrap();
    assert_eq!(vcek_bundle.len(), 3);
}

#[test]
fn hcl_report_negatives() {
    // byte[0x1A6] = 0: the SNP SPL in REPORTED_TCB ("SNP version mismatch" in the source).
    let mut ev = snp_pair();
    ev.hcl_report[0x1A6] = 0;
    let r = run(&ev, CHALLENGE, AT_2024);
    assert_reason(r.clone(), "snp: REPORTED_TCB SNP SPL 0 does not match the VCEK's SNP SPL");
    assert_reason(r, "snp: VCEK signature over report invalid");
    // byte[0x6E0] += 1: var data no longer hashes to REPORT_DATA.
    let mut ev = snp_pair();
    ev.hcl_report[0x6E0] = ev.hcl_report[0x6E0].wrapping_add(1);
    assert_reason(run(&ev, CHALLENGE, AT_2024), "azure hcl report: variable data digest");
    // byte[0x540] = 0: the runtime claims break, no AKpub.
    let mut ev = snp_pair();
    ev.hcl_report[0x540] = 0;
    let r = run(&ev, CHALLENGE, AT_2024);
    assert_reason(r.clone(), "azure hcl report: runtime claims are not JSON");
    assert_reason(r, "variable data digest");
}

#[test]
fn quote_negatives() {
    let mut ev = snp_pair();
    ev.quote.signature[0] ^= 1;
    assert_reason(run(&ev, CHALLENGE, AT_2024), "tpm quote: AK signature over TPMS_ATTEST invalid");
    let reversed: Vec<u8> = CHALLENGE.iter().rev().copied().collect();
    assert_reason(
        run(&snp_pair(), &reversed, AT_2024),
        "tpm quote: extraData 6368616c6c656e6765 does not match",
    );
    let mut ev = snp_pair();
    ev.quote.pcrs[0][0] ^= 1;
    assert_reason(run(&ev, CHALLENGE, AT_2024), "tpm quote: PCR digest mismatch");
    let mut ev = snp_pair();
    ev.quote.message[40] ^= 1;
    assert_reason(run(&ev, CHALLENGE, AT_2024), "AK signature over TPMS_ATTEST invalid");
    // No VCEK, or an expired one.
    let mut ev = snp_pair();
    ev.vcek = None;
    assert_reason(run(&ev, CHALLENGE, AT_2024), "azure: SNP evidence without a VCEK");
    assert_reason(run(&snp_pair(), CHALLENGE, "2031-01-01T00:00:00Z"), "expired");
}

#[test]
fn tdx_evidence_binds_and_quote_verifies_but_needs_the_tdx_verifier() {
    for f in ["az-tdx-vtpm/evidence-v0.json", "az-tdx-vtpm/evidence-v1.json"] {
        let ev = AzureEvidence::parse_json(&data(f)).unwrap();
        assert_eq!(ev.td_quote.as_deref(), Some(data("az-tdx-vtpm/td-quote.bin").as_slice()), "{f}");
        assert_eq!(ev.hcl_report, data("az-tdx-vtpm/hcl-report.bin"), "{f}");
        let hcl = HclReport::parse(&ev.hcl_report).unwrap();
        assert_eq!(hcl.report_type, HwReportType::Tdx);
        hcl.check_var_data_binding().unwrap();
        // Without a TD quote verifier the evidence is refused, and that is the only reason.
        let reasons = run(&ev, CHALLENGE, AT_2026).unwrap_err();
        assert_eq!(
            reasons,
            vec!["azure: TD quote not verified: no TDX verifier/collateral given".to_owned()],
            "{f}"
        );
        // With a TD quote check that returns the TDREPORT's REPORT_DATA, everything else verifies.
        let rd = hcl.report_data().unwrap();
        let check = move |q: &[u8]| tdx_check(q).map(|(_, td)| (rd, td));
        let cache = EndorsementCache::default();
        let v = verify_azure(
            &ev,
            Some(CHALLENGE),
            &cache,
            &SnpPolicy::default(),
            Some(&check),
            parse_time(AT_2026).unwrap(),
        )
        .unwrap();
        assert_eq!(v.claims.pcrs[&0], "782b20b10f55cc46e2142cc2145d548698073e5beb82752c8d7f9279f0d8a273");
    }
}

#[test]
fn tdx_hcl_report_negative_byte_0x880() {
    let mut hcl = data("az-tdx-vtpm/hcl-report.bin");
    hcl[0x880] = hcl[0x880].wrapping_add(1);
    let err = HclReport::parse(&hcl).unwrap().check_var_data_binding().unwrap_err();
    assert!(err.to_string().contains("azure hcl report: variable data digest"), "{err}");
}

#[test]
fn hcl_parse_mutations() {
    let good = data("az-snp-vtpm/hcl-report.bin");
    let hcl = HclReport::parse(&good).unwrap();
    let claims = RuntimeClaims::parse(&hcl.var_data).unwrap();
    assert_eq!(claims.ak_modulus.len(), 256);
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(HclReport::parse(&bad).unwrap_err().to_string().contains("HCLA"));
    let mut bad = good.clone();
    bad[0x4C8] = 3; // report type
    assert!(HclReport::parse(&bad).unwrap_err().to_string().contains("report type 3"));
    let mut bad = good.clone();
    bad[0x4CC] = 9; // hash type
    assert!(
        HclReport::parse(&bad)
            .unwrap()
            .check_var_data_binding()
            .unwrap_err()
            .to_string()
            .contains("hash type 9")
    );
    let mut bad = good.clone();
    bad[0x4D0] = 0xff; // var data size no longer consistent
    assert!(HclReport::parse(&bad).is_err());
    for cut in [0, 4, 0x20, 0x4C0, 0x4D0, 0x500] {
        assert!(HclReport::parse(&good[..cut]).is_err());
    }
}

fn tdx_pair() -> AzureEvidence {
    let q: serde_json::Value = serde_json::from_slice(&data("az-tdx-vtpm/tpm-quote-v1.json")).unwrap();
    let hex = |v: &serde_json::Value| hex::decode(v.as_str().unwrap()).unwrap();
    AzureEvidence {
        hcl_report: data("az-tdx-vtpm/hcl-report.bin"),
        quote: AzureQuote {
            message: hex(&q["message"]),
            signature: hex(&q["signature"]),
            pcrs: q["pcrs"].as_array().unwrap().iter().map(hex).collect(),
        },
        vcek: None,
        td_quote: Some(data("az-tdx-vtpm/td-quote.bin")),
        ak_public: None,
    }
}

fn tdx_check(q: &[u8]) -> sealroom_verifier::Result<([u8; 64], sealroom_verifier::claims::TdxClaims)> {
    // The real TDX verifier without collateral: PCK chain to the Intel root, QE report, quote signature.
    let signed = sealroom_verifier::tdx::verify_quote_signatures(q, parse_time(AT_2026).unwrap())?;
    match &signed.quote.body {
        sealroom_verifier::tdx::Body::Td(td) => Ok((
            td.report_data,
            sealroom_verifier::claims::TdxClaims::from_td_report(
                signed.quote.version,
                td,
                signed.pck_extension.fmspc,
                None,
            ),
        )),
        _ => panic!("not a TD quote"),
    }
}

fn run_tdx(ev: &AzureEvidence, nonce: &[u8]) -> Result<VerifiedAzure, Vec<String>> {
    let cache = EndorsementCache::default();
    verify_azure(
        ev,
        Some(nonce),
        &cache,
        &SnpPolicy::default(),
        Some(&tdx_check),
        parse_time(AT_2026).unwrap(),
    )
    .map_err(|e| e.reasons())
}

#[test]
fn tdx_td_quote_signatures_verify_and_bind_the_hcl_report() {
    // td-quote.bin: parses, PCK chain/QE/quote signatures verify, REPORT_DATA equals the HCL TDREPORT's.
    let (rd, td) = tdx_check(&data("az-tdx-vtpm/td-quote.bin")).unwrap();
    assert!(!td.td_attributes.debug, "Azure's TD is not a debug TD");
    let hcl = HclReport::parse(&data("az-tdx-vtpm/hcl-report.bin")).unwrap();
    assert_eq!(rd, hcl.report_data().unwrap());
}

#[test]
fn tdx_hcl_report_and_quote_pair_is_valid() {
    let v = run_tdx(&tdx_pair(), CHALLENGE).unwrap();
    assert_eq!(v.claims.hardware, HwReportType::Tdx);
    assert_eq!(v.claims.extra_data, hex::encode(CHALLENGE));
    assert!(v.claims.td_report_data.is_some());
}

#[test]
fn tdx_quote_negatives() {
    let mut ev = tdx_pair();
    ev.quote.signature[0] ^= 1;
    assert_reason(run_tdx(&ev, CHALLENGE), "tpm quote: AK signature over TPMS_ATTEST invalid");
    let reversed: Vec<u8> = CHALLENGE.iter().rev().copied().collect();
    assert_reason(run_tdx(&tdx_pair(), &reversed), "tpm quote: extraData");
    let mut ev = tdx_pair();
    ev.quote.pcrs[0][0] ^= 1;
    assert_reason(run_tdx(&ev, CHALLENGE), "tpm quote: PCR digest mismatch");
    // byte[0x880] += 1 (var data): no longer bound to the TDREPORT.
    let mut ev = tdx_pair();
    ev.hcl_report[0x880] = ev.hcl_report[0x880].wrapping_add(1);
    assert_reason(run_tdx(&ev, CHALLENGE), "azure hcl report: variable data digest");
    // A flipped TD quote byte (inside the signed body): the quote signature fails.
    let mut ev = tdx_pair();
    let q = ev.td_quote.as_mut().unwrap();
    q[200] ^= 1;
    assert_reason(run_tdx(&ev, CHALLENGE), "tdx");
    // The TDREPORT changed (REPORT_DATA): no longer the TD quote's.
    let mut ev = tdx_pair();
    ev.hcl_report[0x20 + 0x80 + 40] ^= 1;
    assert_reason(run_tdx(&ev, CHALLENGE), "azure: TD quote REPORT_DATA does not match the HCL TDREPORT");
}

#[test]
fn quote_signature_as_tpmt_signature_is_accepted_too() {
    // sealroom's agent ships the marshalled TPMT_SIGNATURE (RSASSA, SHA-256) instead of the bare signature.
    let mut ev = snp_pair();
    let raw = ev.quote.signature.clone();
    let mut tpmt = vec![0x00, 0x14, 0x00, 0x0b];
    tpmt.extend_from_slice(&u16::try_from(raw.len()).unwrap().to_be_bytes());
    tpmt.extend_from_slice(&raw);
    ev.quote.signature = tpmt.clone();
    run(&ev, CHALLENGE, AT_2024).unwrap();
    let n = tpmt.len();
    ev.quote.signature[n - 1] ^= 1;
    assert_reason(run(&ev, CHALLENGE, AT_2024), "tpm quote: AK signature over TPMS_ATTEST invalid");
}

/// A marshalled TPMT_PUBLIC of an RSA-2048 restricted signing key (RSASSA SHA-256), as a vTPM AK is.
fn rsa_tpmt_public(modulus: &[u8], exponent: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0x0001u16.to_be_bytes()); // TPM_ALG_RSA
    out.extend_from_slice(&0x000Bu16.to_be_bytes()); // nameAlg SHA-256
    out.extend_from_slice(&0x0005_0072u32.to_be_bytes()); // fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|restricted|sign
    out.extend_from_slice(&0u16.to_be_bytes()); // authPolicy (empty)
    out.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric NULL
    out.extend_from_slice(&0x0014u16.to_be_bytes()); // RSASSA
    out.extend_from_slice(&0x000Bu16.to_be_bytes()); // SHA-256
    out.extend_from_slice(&2048u16.to_be_bytes());
    out.extend_from_slice(&exponent.to_be_bytes());
    out.extend_from_slice(&u16::try_from(modulus.len()).unwrap().to_be_bytes());
    out.extend_from_slice(modulus);
    out
}

/// When the evidence names its AK (sealroom's agent does), an AK other than HCLAkPub is refused by name, before
/// and instead of the generic signature failure; the real HCLAkPub (exponent written as 0 = 65537 or 65537)
/// passes; an AK that does not parse is refused as such.
#[test]
fn quote_ak_other_than_hcl_akpub_is_refused_by_name() {
    let hcl = HclReport::parse(&data("az-snp-vtpm/hcl-report.bin")).unwrap();
    let claims = RuntimeClaims::parse(&hcl.var_data).unwrap();
    let mut ev = snp_pair();
    for exponent in [0, 65_537] {
        ev.ak_public = Some(rsa_tpmt_public(&claims.ak_modulus, exponent));
        run(&ev, CHALLENGE, AT_2024).unwrap();
    }
    let mut other = claims.ak_modulus.clone();
    other[17] ^= 0x40;
    ev.ak_public = Some(rsa_tpmt_public(&other, 0));
    let reasons = run(&ev, CHALLENGE, AT_2024).unwrap_err();
    assert_eq!(reasons, vec!["azure vtpm: quote AK is not the HCL report's HCLAkPub".to_string()]);
    ev.ak_public = Some(rsa_tpmt_public(&claims.ak_modulus, 3));
    assert_eq!(run(&ev, CHALLENGE, AT_2024).unwrap_err(), reasons, "same modulus, other exponent");
    ev.ak_public = Some(vec![0, 1, 0]);
    assert_reason(run(&ev, CHALLENGE, AT_2024), "azure vtpm: quote AK: ");
}
