//! TDX / SGX DCAP verification against the real quotes and collateral in verifier/testdata/tdx (see its
//! MANIFEST.md): one test per artifact asserting the manifest's outcome at the manifest's time, one per listed
//! negative, and single-field mutations for every check.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::expect_used)]

use std::path::{Path, PathBuf};

use sealroom_verifier::tdx::{
    Collateral, PckExtension, QeIdentity, TcbInfo, TcbStatus, VerifiedCollateral, VerifiedQuote,
    verify_quote, verify_quote_signatures,
};
use sealroom_verifier::x509::{Certificate, SignatureAlgorithm, parse_time};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tdx").join(rel)
}
fn read(rel: &str) -> Vec<u8> {
    std::fs::read(data(rel)).unwrap()
}
fn t(s: &str) -> i64 {
    parse_time(s).unwrap()
}

/// Manifest times.
const TDX_AT: &str = "2025-07-19T10:00:34Z";
const SGX_AT: &str = "2025-07-19T10:01:17Z";
const OUTDATED_AT: &str = "2026-03-20T10:41:14Z";
const GO_TDX_AT: &str = "2023-07-01T01:00:00Z";

fn collateral(rel: &str, at: &str) -> VerifiedCollateral {
    Collateral::load(&data(rel)).unwrap().verify(t(at)).unwrap()
}

fn err_of(quote: &[u8], c: &VerifiedCollateral, at: &str) -> String {
    verify_quote(quote, c, t(at)).unwrap_err().to_string()
}

fn assert_err(quote: &[u8], c: &VerifiedCollateral, at: &str, want: &str) {
    let e = err_of(quote, c, at);
    assert!(e.contains(want), "expected {want:?}, got {e:?}");
}

fn go_tdx_collateral() -> Collateral {
    let mut c = Collateral::default();
    for f in [
        "go-tdx-guest/rootcrl.der",
        "go-tdx-guest/pckcrl_platform.der",
        "go-tdx-guest/pck_crl_issuer_chain.pem",
        "go-tdx-guest/tcb_signing_issuer_chain.pem",
        "go-tdx-guest/tcbinfo_v4_fmspc_50806f000000.json",
        "go-tdx-guest/qe_identity_td_qe.json",
    ] {
        c.add_bytes(&read(f), f).unwrap();
    }
    c
}

// ----- one test per corpus artifact ----------------------------------------------------------------------------

#[test]
fn dcap_qvl_tdx_quote_v4_is_up_to_date() {
    let c = collateral("dcap-qvl/tdx_quote_collateral.json", TDX_AT);
    let VerifiedQuote::Tdx(q) = verify_quote(&read("dcap-qvl/tdx_quote"), &c, t(TDX_AT)).unwrap() else {
        panic!("not TDX")
    };
    assert_eq!(q.version, 4);
    assert_eq!(q.tcb_status, TcbStatus::UpToDate);
    assert!(q.advisory_ids.is_empty());
    assert_eq!(q.qe_tcb_status, TcbStatus::UpToDate);
    assert_eq!(hex::encode(q.fmspc), "b0c06f000000");
    assert!(hex::encode(q.mr_td).starts_with("91eb2b44"));
    assert!(hex::encode(q.mr_td).ends_with("873118b7"));
    assert!(hex::encode(q.report_data).starts_with("9a9d48e7"));
    assert_eq!(q.tee_tcb_svn[..3], [6, 1, 3]);
    assert!(q.collateral_expiry >= t(TDX_AT));
}

#[test]
fn dcap_qvl_sgx_quote_v3_needs_configuration_and_sw_hardening() {
    let c = collateral("dcap-qvl/sgx_quote_collateral.json", SGX_AT);
    let VerifiedQuote::Sgx(q) = verify_quote(&read("dcap-qvl/sgx_quote"), &c, t(SGX_AT)).unwrap() else {
        panic!("not SGX")
    };
    assert_eq!(q.version, 3);
    assert_eq!(q.tcb_status, TcbStatus::ConfigurationAndSWHardeningNeeded);
    assert_eq!(q.advisory_ids, ["INTEL-SA-00289", "INTEL-SA-00615"]);
    assert_eq!(hex::encode(q.fmspc), "00a067110000");
    assert!(hex::encode(q.mr_enclave).starts_with("33d8736d"));
    assert!(hex::encode(q.mr_signer).starts_with("815f42f1"));
    assert!(q.report_data.starts_with(b"Hello, world!"));
    assert!(q.report_data[13..].iter().all(|&b| b == 0));
}

#[test]
fn dcap_qvl_tdx_quote_v5_outdated_matches_no_tcb_level() {
    let c = collateral("dcap-qvl/tdx_quote_outdated_collateral.json", OUTDATED_AT);
    let quote = read("dcap-qvl/tdx_quote_outdated");
    assert_err(&quote, &c, OUTDATED_AT, "no matching TCB level");
    // Its signatures are fine: the refusal is the TCB.
    let s = verify_quote_signatures(&quote, t(OUTDATED_AT)).unwrap();
    assert_eq!(s.quote.version, 5);
    assert_eq!(s.quote.body_type, Some(3));
    assert_eq!(s.pck_extension.sgx_tcb_components[..8], [3, 3, 2, 2, 4, 1, 0, 3]);
    assert_eq!(s.pck_extension.pce_svn, 13);
    assert_eq!(hex::encode(s.pck_extension.fmspc), "90c06f000000");
}

#[test]
fn go_tdx_guest_quote_v5_sample_signatures_and_tcb_info_v5() {
    let quote = read("go-tdx-guest/quote_v5_sample.dat");
    let s = verify_quote_signatures(&quote, t("2026-02-03T01:00:00Z")).unwrap();
    assert_eq!((s.quote.version, s.quote.body_type), (5, Some(3)));
    assert_eq!(s.quote.qe_report.isv_svn, 7);
    let td = s.quote.td_report().unwrap();
    assert_eq!(td.tee_tcb_svn[..3], [0x0b, 0x01, 0x04]);
    assert_eq!(td.tee_tcb_svn2.unwrap()[..3], [0x0d, 0x01, 0x04]);
    assert!(hex::encode(td.report_data).starts_with("945eaacf"));
    // The tcbInfo (signed by the TCB signing key) evaluates the platform as UpToDate.
    let json: serde_json::Value =
        serde_json::from_slice(&read("go-tdx-guest/tcbinfo_v4_fmspc_90c06f000000.json")).unwrap();
    let raw = String::from_utf8(read("go-tdx-guest/tcbinfo_v4_fmspc_90c06f000000.json")).unwrap();
    let body = signed_object(&raw, "tcbInfo");
    let signer =
        Certificate::chain_from_pem(&read("go-tdx-guest/tcb_signing_issuer_chain.pem")).unwrap().remove(0);
    let sig = hex::decode(json["signature"].as_str().unwrap()).unwrap();
    signer.public_key().verify(SignatureAlgorithm::EcdsaSha256Fixed, body.as_bytes(), &sig).unwrap();
    let info = TcbInfo::from_json(body).unwrap();
    let (launch, current) = info.evaluate(&s.pck_extension, Some(td)).unwrap();
    assert_eq!(launch.status, TcbStatus::UpToDate);
    assert_eq!(current.unwrap().status, TcbStatus::UpToDate);
    assert_eq!(launch.tcb_date, t("2024-11-13T00:00:00Z"));
}

/// The exact bytes of `"key":{…}` in a PCS response (what Intel signs).
fn signed_object<'a>(raw: &'a str, key: &str) -> &'a str {
    #[derive(serde::Deserialize)]
    struct Doc<'a> {
        #[serde(borrow, rename = "tcbInfo")]
        tcb_info: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow, rename = "enclaveIdentity")]
        enclave_identity: Option<&'a serde_json::value::RawValue>,
    }
    let d: Doc<'a> = serde_json::from_str(raw).unwrap();
    match key {
        "tcbInfo" => d.tcb_info.unwrap().get(),
        _ => d.enclave_identity.unwrap().get(),
    }
}

#[test]
fn go_tdx_guest_spr_e4_quote_signatures_valid_and_no_tcb_level_matches() {
    let quote = read("go-tdx-guest/tdx_prod_quote_SPR_E4.dat");
    let s = verify_quote_signatures(&quote, t(GO_TDX_AT)).unwrap();
    assert_eq!(s.quote.version, 4);
    assert_eq!(s.quote.qe_report.isv_svn, 4);
    assert_eq!(s.quote.trailing_bytes, 39);
    assert_eq!(hex::encode(s.pck_extension.fmspc), "50806f000000");
    let td = s.quote.td_report().unwrap();
    assert!(hex::encode(td.report_data).starts_with("6c62dec1"));
    assert!(hex::encode(td.mr_td).starts_with("6363b804"));
    // Full collateral of 2023-07-01: chains, CRLs and signatures verify; the platform matches no TCB level.
    let c = go_tdx_collateral().verify(t(GO_TDX_AT)).unwrap();
    assert_err(&quote, &c, GO_TDX_AT, "no matching TCB level");
    // The QE identity alone evaluates the QE as UpToDate (ISVSVN 4).
    assert_eq!(c.qe_identities()[0].evaluate(&s.quote.qe_report).unwrap().status, TcbStatus::UpToDate);
}

#[test]
fn go_tdx_guest_collateral_files_verify_at_manifest_time_and_expire() {
    let c = go_tdx_collateral();
    let v = c.verify(t(GO_TDX_AT)).unwrap();
    assert_eq!(v.tcb_infos().len(), 1);
    assert_eq!(v.tcb_infos()[0].tcb_evaluation_data_number, 15);
    assert_eq!(v.qe_identities()[0].id, "TD_QE");
    assert_eq!(v.valid_until(), t("2023-07-08T07:24:59Z"));
    let e = c.verify(t("2053-07-01T01:00:00Z")).unwrap_err().to_string();
    assert!(e.contains("expired"), "{e}");
    // The v5 tcbInfo (2026) is signed by the same TCB signing key but is not yet valid in 2023.
    let mut c2 = go_tdx_collateral();
    c2.add_bytes(&read("go-tdx-guest/tcbinfo_v4_fmspc_90c06f000000.json"), "v5 tcbinfo").unwrap();
    let e = c2.verify(t(GO_TDX_AT)).unwrap_err().to_string();
    assert!(e.contains("TCB info not yet valid"), "{e}");
}

#[test]
fn go_tdx_guest_cos_113_quote_signatures_valid_and_registers_match() {
    let quote = read("go-tdx-guest/ccel/cos-113-tdx-quote.dat");
    let s = verify_quote_signatures(&quote, t("2025-01-01T00:00:00Z")).unwrap();
    assert_eq!(s.quote.trailing_bytes, 3065);
    assert_eq!(hex::encode(s.pck_extension.fmspc), "00806f050000");
    let td = s.quote.td_report().unwrap();
    assert_eq!(td.report_data.to_vec(), read("go-tdx-guest/ccel/nonce.dat"));
    let expected: serde_json::Value =
        serde_json::from_slice(&read("go-tdx-guest/ccel/expected_rtmrs.json")).unwrap();
    let text = expected.to_string().to_lowercase();
    for rtmr in &td.rtmr[..3] {
        assert!(text.contains(&hex::encode(rtmr)), "RTMR {} not in expected_rtmrs.json", hex::encode(rtmr));
    }
    // Outside the PCK validity window.
    let e = verify_quote_signatures(&quote, t("2032-01-01T00:00:00Z")).unwrap_err().to_string();
    assert!(e.contains("expired"), "{e}");
}

// ----- negatives listed in the manifest (tdx_prod_quote_SPR_E4.dat, TestNegativeVerification) ------------------

fn spr_e4_with(offset: usize, value: u8) -> String {
    let mut q = read("go-tdx-guest/tdx_prod_quote_SPR_E4.dat");
    q[offset] = value;
    verify_quote_signatures(&q, t(GO_TDX_AT)).unwrap_err().to_string()
}

#[test]
fn negative_spr_e4_version_byte_3() {
    let e = spr_e4_with(0x00, 3);
    assert!(e.contains("tdx quote: v3 quote with non-zero reserved/TEE type 0x81"), "{e}");
}

#[test]
fn negative_spr_e4_signature_data_size() {
    let e = spr_e4_with(0x278, 0x10);
    assert!(e.starts_with("tdx quote: "), "{e}");
    assert!(e.contains("size") || e.contains("needs") || e.contains("trailing"), "{e}");
}

#[test]
fn negative_spr_e4_pck_chain_byte_0x1343() {
    let e = spr_e4_with(0x1343, 0x32);
    assert!(e.starts_with("tdx: PCK chain: "), "{e}");
}

#[test]
fn negative_spr_e4_root_cert_byte_0x1329() {
    let e = spr_e4_with(0x1329, 0x32);
    assert!(e.starts_with("tdx: PCK chain: "), "{e}");
}

#[test]
fn negative_spr_e4_intermediate_byte_0xf5f() {
    let e = spr_e4_with(0xF5F, 0x32);
    assert!(e.starts_with("tdx: PCK chain: "), "{e}");
}

#[test]
fn negative_spr_e4_pck_leaf_byte_0xb77() {
    let e = spr_e4_with(0xB77, 0x32);
    assert!(e.starts_with("tdx: PCK chain: "), "{e}");
}

#[test]
fn negative_spr_e4_header_byte_0x1e_breaks_quote_signature() {
    assert!(spr_e4_with(0x1E, 0x32).contains("quote signature invalid"));
}

#[test]
fn negative_spr_e4_body_byte_0x3c_breaks_quote_signature() {
    assert!(spr_e4_with(0x3C, 0x32).contains("quote signature invalid"));
}

#[test]
fn negative_spr_e4_pck_expired_in_2053() {
    let q = read("go-tdx-guest/tdx_prod_quote_SPR_E4.dat");
    let e = verify_quote_signatures(&q, t("2053-07-01T01:00:00Z")).unwrap_err().to_string();
    assert!(e.contains("expired (notAfter"), "{e}");
}

// ----- our single-field mutations of the v4 quote (dcap-qvl tdx_quote, UpToDate) -------------------------------

struct Fixture {
    quote: Vec<u8>,
    collateral: VerifiedCollateral,
}

fn fixture() -> Fixture {
    Fixture {
        quote: read("dcap-qvl/tdx_quote"),
        collateral: collateral("dcap-qvl/tdx_quote_collateral.json", TDX_AT),
    }
}

/// Offsets in a v4 quote: header 48, TD 1.0 body 584, then signature data.
const BODY: usize = 48;
const SIG_DATA: usize = 48 + 584 + 4;
const QUOTE_SIG: usize = SIG_DATA;
const ATT_KEY: usize = SIG_DATA + 64;
const QE_REPORT: usize = ATT_KEY + 64 + 6;
const QE_REPORT_SIG: usize = QE_REPORT + 384;
const QE_AUTH: usize = QE_REPORT_SIG + 64 + 2;

fn mutated(f: &Fixture, offset: usize) -> String {
    let mut q = f.quote.clone();
    q[offset] ^= 0x01;
    err_of(&q, &f.collateral, TDX_AT)
}

#[test]
fn mutation_quote_signature() {
    assert!(mutated(&fixture(), QUOTE_SIG + 10).contains("tdx: quote signature invalid"));
}

#[test]
fn mutation_body_mrtd_breaks_quote_signature() {
    assert!(mutated(&fixture(), BODY + 16 + 48 + 48 + 8 + 8 + 8).contains("tdx: quote signature invalid"));
}

#[test]
fn mutation_report_data_breaks_quote_signature() {
    assert!(mutated(&fixture(), BODY + 584 - 1).contains("tdx: quote signature invalid"));
}

#[test]
fn mutation_attestation_key_breaks_binding() {
    assert!(mutated(&fixture(), ATT_KEY + 3).contains("QE report does not bind the attestation key"));
}

#[test]
fn mutation_qe_report_breaks_qe_signature() {
    assert!(mutated(&fixture(), QE_REPORT + 100).contains("tdx: QE report signature invalid"));
}

#[test]
fn mutation_qe_report_signature() {
    assert!(mutated(&fixture(), QE_REPORT_SIG + 5).contains("tdx: QE report signature invalid"));
}

#[test]
fn mutation_qe_auth_data_breaks_binding() {
    assert!(mutated(&fixture(), QE_AUTH + 1).contains("QE report does not bind the attestation key"));
}

#[test]
fn mutation_qe_vendor_id() {
    assert!(mutated(&fixture(), 12).contains("QE vendor id"));
}

#[test]
fn mutation_truncated_quote() {
    let f = fixture();
    for len in [0, 47, 48 + 584, SIG_DATA + 100, 4936 - 1] {
        let e = err_of(&f.quote[..len], &f.collateral, TDX_AT);
        assert!(e.starts_with("tdx quote: "), "{len}: {e}");
    }
}

#[test]
fn mutation_verification_after_collateral_expiry() {
    let f = fixture();
    assert_err(&f.quote, &f.collateral, "2025-07-19T10:16:04Z", "tdx: collateral: collateral expired");
    let e = Collateral::load(&data("dcap-qvl/tdx_quote_collateral.json"))
        .unwrap()
        .verify(t("2025-07-20T00:00:00Z"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("expired"), "{e}");
}

#[test]
fn mutation_verification_before_collateral_issue() {
    let f = fixture();
    assert_err(&f.quote, &f.collateral, "2025-06-01T00:00:00Z", "collateral not yet valid");
}

fn tamper_collateral(field: &str, edit: impl Fn(&str) -> String) -> String {
    let raw = String::from_utf8(read("dcap-qvl/tdx_quote_collateral.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let old = v[field].as_str().unwrap().to_owned();
    v[field] = serde_json::Value::String(edit(&old));
    let mut c = Collateral::default();
    match c.add_bytes(v.to_string().as_bytes(), "tampered") {
        Err(e) => e.to_string(),
        Ok(()) => c.verify(t(TDX_AT)).unwrap_err().to_string(),
    }
}

#[test]
fn mutation_tcb_info_body_breaks_its_signature() {
    let e = tamper_collateral("tcb_info", |s| s.replacen("\"UpToDate\"", "\"OutOfDate\"", 1));
    assert!(e.contains("TCB info signature invalid"), "{e}");
}

#[test]
fn mutation_tcb_info_signature() {
    let e =
        tamper_collateral("tcb_info_signature", |s| format!("{}{}", &s[..10], s[10..].replacen('a', "b", 1)));
    assert!(e.contains("TCB info signature invalid"), "{e}");
}

#[test]
fn mutation_qe_identity_body_breaks_its_signature() {
    let e = tamper_collateral("qe_identity", |s| s.replacen("\"isvprodid\":2", "\"isvprodid\":3", 1));
    assert!(e.contains("QE identity signature invalid"), "{e}");
}

#[test]
fn mutation_pck_crl_breaks_its_signature() {
    // Flip a bit inside the CRL's signed revoked-certificate list (hex nibble change in the middle).
    let e = tamper_collateral("pck_crl", |s| {
        let mid = s.len() / 2;
        let c = if &s[mid..=mid] == "0" { "1" } else { "0" };
        format!("{}{}{}", &s[..mid], c, &s[mid + 1..])
    });
    assert!(e.contains("PCK CRL") || e.contains("CRL:"), "{e}");
}

#[test]
fn mutation_root_ca_crl_signature() {
    let e = tamper_collateral("root_ca_crl", |s| {
        let at = s.len() - 6;
        let c = if &s[at..=at] == "0" { "1" } else { "0" };
        format!("{}{}{}", &s[..at], c, &s[at + 1..])
    });
    assert!(e.contains("root CA CRL"), "{e}");
}

#[test]
fn mutation_tcb_signing_chain_swapped_for_pck_ca_chain() {
    let raw = String::from_utf8(read("dcap-qvl/tdx_quote_collateral.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    v["tcb_info_issuer_chain"] = v["pck_crl_issuer_chain"].clone();
    let mut c = Collateral::default();
    c.add_bytes(v.to_string().as_bytes(), "swapped").unwrap();
    let e = c.verify(t(TDX_AT)).unwrap_err().to_string();
    assert!(e.contains("not 'Intel SGX TCB Signing'"), "{e}");
}

#[test]
fn mutation_quote_against_other_platforms_collateral() {
    // The v4 quote (FMSPC b0c06f000000) against the SGX collateral (FMSPC 00a067110000): no TD_QE identity.
    let c = collateral("dcap-qvl/sgx_quote_collateral.json", SGX_AT);
    let e = err_of(&read("dcap-qvl/tdx_quote"), &c, SGX_AT);
    assert!(e.contains("collateral has no TD_QE identity") || e.contains("not a CA verified"), "{e}");
}

#[test]
fn pck_extension_of_the_v4_quote() {
    let quote = read("dcap-qvl/tdx_quote");
    let s = verify_quote_signatures(&quote, t(TDX_AT)).unwrap();
    let ext: &PckExtension = &s.pck_extension;
    assert_eq!(hex::encode(ext.fmspc), "b0c06f000000");
    assert_eq!(ext.pce_id, [0, 0]);
    assert_eq!(s.pck.subject_cn(), "Intel SGX PCK Certificate");
}

// ----- negatives listed for the go-tdx-guest QE identity and TCB info (TestNegativeVerifyUsing*V4) --------------

fn spr_e4() -> (Vec<u8>, i64) {
    (read("go-tdx-guest/tdx_prod_quote_SPR_E4.dat"), t(GO_TDX_AT))
}

fn qe_identity_with(edit: impl Fn(&mut serde_json::Value)) -> Result<TcbStatus, String> {
    let raw = String::from_utf8(read("go-tdx-guest/qe_identity_td_qe.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(signed_object(&raw, "enclaveIdentity")).unwrap();
    edit(&mut v);
    let id = QeIdentity::from_json(&v.to_string()).unwrap();
    let (quote, at) = spr_e4();
    let s = verify_quote_signatures(&quote, at).unwrap();
    id.evaluate(&s.quote.qe_report).map(|l| l.status).map_err(|e| e.to_string())
}

#[test]
fn qe_identity_v4_unmodified_is_up_to_date() {
    assert_eq!(qe_identity_with(|_| {}), Ok(TcbStatus::UpToDate));
}

#[test]
fn negative_qe_identity_miscselect() {
    let e = qe_identity_with(|v| v["miscselect"] = "01000000".into()).unwrap_err();
    assert!(e.contains("QE MISCSELECT mismatch"), "{e}");
}

#[test]
fn negative_qe_identity_attributes() {
    let e = qe_identity_with(|v| v["attributes"] = "01000000000000000000000000000000".into()).unwrap_err();
    assert!(e.contains("QE ATTRIBUTES mismatch"), "{e}");
}

#[test]
fn negative_qe_identity_mrsigner() {
    let e = qe_identity_with(|v| v["mrsigner"] = "00".repeat(32).into()).unwrap_err();
    assert!(e.contains("QE MRSIGNER mismatch"), "{e}");
}

#[test]
fn negative_qe_identity_isvprodid() {
    let e = qe_identity_with(|v| v["isvprodid"] = 3.into()).unwrap_err();
    assert!(e.contains("QE ISVPRODID mismatch: expected 3, got 2"), "{e}");
}

fn tcb_info_with(edit: impl Fn(&mut serde_json::Value)) -> String {
    let raw = String::from_utf8(read("go-tdx-guest/tcbinfo_v4_fmspc_50806f000000.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(signed_object(&raw, "tcbInfo")).unwrap();
    edit(&mut v);
    let info = TcbInfo::from_json(&v.to_string()).unwrap();
    let (quote, at) = spr_e4();
    let s = verify_quote_signatures(&quote, at).unwrap();
    info.evaluate(&s.pck_extension, s.quote.td_report()).unwrap_err().to_string()
}

#[test]
fn tcb_info_v4_unmodified_matches_no_level() {
    assert!(tcb_info_with(|_| {}).contains("no matching TCB level"));
}

#[test]
fn negative_tcb_info_expired_in_2053() {
    let e = go_tdx_collateral().verify(t("2053-07-01T01:00:00Z")).unwrap_err().to_string();
    assert!(e.contains("expired"), "{e}");
    // Certificates still valid; the CRLs and JSON documents are past their nextUpdate.
    let e = go_tdx_collateral().verify(t("2023-07-18T08:43:00Z")).unwrap_err().to_string();
    assert!(e.contains("expired"), "{e}");
}

#[test]
fn negative_tcb_info_fmspc() {
    let e = tcb_info_with(|v| v["fmspc"] = "50806f000001".into());
    assert!(e.contains("TCB info FMSPC 50806f000001 does not match PCK FMSPC 50806f000000"), "{e}");
}

#[test]
fn negative_tcb_info_pceid() {
    let e = tcb_info_with(|v| v["pceId"] = "0100".into());
    assert!(e.contains("TCB info PCE-ID 0100 does not match PCK PCE-ID 0000"), "{e}");
}

#[test]
fn negative_tcb_info_mrsignerseam() {
    let e = tcb_info_with(|v| v["tdxModule"]["mrsigner"] = "01".repeat(48).into());
    assert!(e.contains("TDX module MRSIGNERSEAM mismatch"), "{e}");
}

#[test]
fn negative_tcb_info_seam_attributes() {
    let e = tcb_info_with(|v| v["tdxModule"]["attributes"] = "0100000000000000".into());
    assert!(e.contains("TDX module SEAMATTRIBUTES mismatch"), "{e}");
}

/// Repeated quotes from one platform take the cached path (PCK and QE report signatures remembered per
/// collateral set); every per-quote check must still refuse with the cache warm.
#[test]
fn warm_platform_cache_still_checks_every_per_quote_field() {
    let f = fixture();
    verify_quote(&f.quote, &f.collateral, t(TDX_AT)).unwrap();
    verify_quote(&f.quote, &f.collateral, t(TDX_AT)).unwrap();
    assert!(mutated(&f, QUOTE_SIG + 10).contains("tdx: quote signature invalid"));
    assert!(mutated(&f, BODY + 20).contains("quote signature invalid"));
    assert!(mutated(&f, ATT_KEY + 3).contains("does not bind the attestation key"));
    assert!(mutated(&f, QE_REPORT + 100).contains("tdx: QE report signature invalid"));
    assert!(mutated(&f, QE_REPORT_SIG + 5).contains("tdx: QE report signature invalid"));
    // Expiry is judged per quote, not remembered: the same quote after the collateral window is refused.
    assert!(verify_quote(&f.quote, &f.collateral, t("2030-01-01T00:00:00Z")).is_err());
    verify_quote(&f.quote, &f.collateral, t(TDX_AT)).unwrap();
}

/// The typed appraisal of a TD quote: TDATTRIBUTES are decoded from the signed body with or without Intel
/// collateral (a policy can refuse a debug TD either way); the TCB status only with collateral.
#[test]
fn typed_appraisal_decodes_td_attributes_with_and_without_collateral() {
    use sealroom_verifier::appraisal::{Context, EvidenceInput, Policy, appraise};
    use sealroom_verifier::claims::{PlatformClaims, Register, TdAttributes};
    let quote = read("dcap-qvl/tdx_quote");
    let c = collateral("dcap-qvl/tdx_quote_collateral.json", TDX_AT);
    let cache = sealroom_verifier::snp::EndorsementCache::default();
    let run = |collateral: Option<&VerifiedCollateral>| {
        let ctx = Context {
            at: t(TDX_AT),
            nonce: None,
            snp_cache: &cache,
            tdx_collateral: collateral,
            tdx_root: None,
            enrolled_tpm_aks: &[],
            tpm_ek_activated: None,
            gpu: None,
        };
        appraise(&EvidenceInput::TdxQuote(quote.clone()), &Policy::default(), &ctx)
    };
    let Ok(VerifiedQuote::Tdx(verified)) = verify_quote(&quote, &c, t(TDX_AT)) else {
        panic!("not a TD quote")
    };
    let want = TdAttributes::decode(verified.td_attributes);
    for (collateral, status) in [(None, None), (Some(&c), Some(TcbStatus::UpToDate))] {
        let a = run(collateral);
        assert!(a.failures().is_empty(), "{:?}", a.failures());
        let Some(PlatformClaims::Tdx(td)) = &a.platform else { panic!("{:?}", a.platform) };
        assert_eq!(td.td_attributes, want);
        assert!(!td.td_attributes.debug && td.td_attributes.sept_ve_disable && !td.td_attributes.migratable);
        assert!(!a.platform.as_ref().unwrap().debug());
        assert_eq!(td.tcb.as_ref().map(|t| t.status), status);
        assert_eq!(a.registers[&Register::Mrtd].as_slice(), verified.mr_td.as_slice());
        assert_eq!(a.registers[&Register::Rtmr(3)].as_slice(), verified.rtmr[3].as_slice());
        assert_eq!(a.platform.as_ref().unwrap().name(), "tdx");
    }
}
