//! TDX attacks and verdicts that need a genuine signature over chosen quote fields, modelled with an Intel-like
//! test PKI (`tdx::test_pki`, feature `test-anchors`): a fresh root CA, PCK Platform CA, TCB Signing certificate,
//! PCK leaf and quoting enclave sign TDX v4 quotes whose TD attributes, MRTD, RTMRs and REPORT_DATA the test
//! chooses, and collateral (CRLs, TCB info, QE identity) the verifier loads as it loads Intel's. The test root
//! reaches the verifier only through [`IntelRoot::test_root`]; the pinned Intel root refuses all of it.
//! Each attack has a control built the same way without the attack, so a refusal is caused by the attack.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::expect_used)]

use sealroom_measurements::binding::{Kem, Nonce, TeePublicKey, report_data};
use sealroom_measurements::cel::{self, CelLog, RUNTIME_PCR, RuntimeEvent};
use sealroom_measurements::evidence::{Evidence, HashAlg, Platform, TdxEvidence};
use sealroom_verifier::appraisal::{Context, EvidenceInput, Policy, ReferenceValues, appraise};
use sealroom_verifier::claims::PlatformClaims;
use sealroom_verifier::snp::EndorsementCache;
use sealroom_verifier::tdx::test_pki::{
    CollateralSpec, PlatformTcb, TD_ATTR_DEBUG, TdQuoteBody, TestIntelPki, TestPlatform,
};
use sealroom_verifier::tdx::{
    Collateral, TcbStatus, VerifiedCollateral, verify_quote_signatures, verify_quote_signatures_under,
    verify_tdx_quote,
};
use sealroom_verifier::x509::{UnixTime, parse_time};

fn t(s: &str) -> UnixTime {
    parse_time(s).unwrap()
}

const AT: &str = "2026-12-01T12:00:00Z";
const ISSUED: &str = "2026-11-20T00:00:00Z";

fn pki() -> TestIntelPki {
    TestIntelPki::new(t("2024-01-01T00:00:00Z"), t("2031-01-01T00:00:00Z"))
}

fn load(pki: &TestIntelPki, spec: &CollateralSpec) -> Collateral {
    let mut c = Collateral::default();
    c.add_bytes(&pki.collateral_json(spec), "test collateral").unwrap();
    c
}

fn verified(pki: &TestIntelPki, spec: &CollateralSpec) -> VerifiedCollateral {
    load(pki, spec).verify_under(&pki.root(), t(AT)).unwrap()
}

fn platform(pki: &TestIntelPki, tcb: &PlatformTcb) -> TestPlatform {
    pki.issue_platform(&[0x7d, 0x01], tcb, 4)
}

/// The agent's runtime log of a launched workload, every record carrying the SHA-384 digest RTMR3 is
/// extended with (the agent appends with exactly this `CelLog::append`; see agent/src/runtime.rs).
fn runtime_log(events: &[RuntimeEvent]) -> Vec<u8> {
    let mut log = CelLog::new();
    for e in events {
        log.append(RUNTIME_PCR, &[HashAlg::Sha384], e).unwrap();
    }
    log.encode()
}

fn launched() -> Vec<RuntimeEvent> {
    vec![
        RuntimeEvent::ImageReference("registry.example/analytics@sha256:aa".into()),
        RuntimeEvent::ManifestDigest(format!("sha256:{}", "ab".repeat(32))),
        RuntimeEvent::Arg("--input=/data/in.parquet".into()),
        RuntimeEvent::LaunchSeparator,
    ]
}

fn rtmr3_of(log: &[u8]) -> [u8; 48] {
    cel::replay_rtmr3(&cel::CelLog::decode(log).unwrap()).unwrap()
}

fn tee_key() -> TeePublicKey {
    TeePublicKey::new(Kem::X25519HkdfSha256, vec![0x42; 32]).unwrap()
}

const MRTD: [u8; 48] = [0x11; 48];
const RTMR0: [u8; 48] = [0x20; 48];
const RTMR1: [u8; 48] = [0x21; 48];
const RTMR2: [u8; 48] = [0x22; 48];

fn body(report_data: [u8; 64], rtmr3: [u8; 48]) -> TdQuoteBody {
    TdQuoteBody::new(MRTD, [RTMR0, RTMR1, RTMR2, rtmr3], report_data)
}

#[test]
fn test_pki_control_quote_verifies_under_the_test_root_only() {
    let pki = pki();
    let spec = CollateralSpec::standard(t(ISSUED));
    let collateral = verified(&pki, &spec);
    let p = platform(&pki, &PlatformTcb::up_to_date());
    let quote = p.quote(&body([0x5a; 64], [0x33; 48]));

    let td = verify_tdx_quote(&quote, &collateral, t(AT)).unwrap();
    assert_eq!(td.tcb_status, TcbStatus::UpToDate);
    assert_eq!(td.mr_td, MRTD);
    assert_eq!(td.rtmr, [RTMR0, RTMR1, RTMR2, [0x33; 48]]);
    assert_eq!(td.report_data, [0x5a; 64]);
    assert_eq!(td.fmspc, PlatformTcb::FMSPC);
    assert!(td.advisory_ids.is_empty());
    let signed = verify_quote_signatures_under(&quote, &pki.root(), t(AT)).unwrap();
    assert_eq!(signed.pck_extension.pce_svn, 11);

    // The pinned Intel root accepts neither the test collateral nor the test quote.
    let e = load(&pki, &spec).verify(t(AT)).unwrap_err().to_string();
    assert_eq!(
        e,
        "tdx collateral: root CA CRL: CRL of 'Intel SGX Root CA': signature invalid under 'Intel SGX Root CA'"
    );
    let e = verify_quote_signatures(&quote, t(AT)).unwrap_err().to_string();
    assert_eq!(e, "tdx: PCK chain: certificate 'Intel SGX Root CA': self-issued root is not a pinned anchor");
}

#[test]
fn attack_tdx_debug_td_with_collateral() {
    let pki = pki();
    let collateral = verified(&pki, &CollateralSpec::standard(t(ISSUED)));
    let p = platform(&pki, &PlatformTcb::up_to_date());
    let mut b = body([0x5a; 64], [0x33; 48]);
    b.td_attributes |= TD_ATTR_DEBUG;
    // A debug TD's memory is readable by the host: its genuinely signed quote is refused.
    assert_eq!(
        verify_tdx_quote(&p.quote(&b), &collateral, t(AT)).unwrap_err().to_string(),
        "tdx: TD is in debug mode (TDATTRIBUTES 0100001000000000: DEBUG set)"
    );
    // Without collateral the quote's signatures are still genuine: the verdict on DEBUG is the appraisal's.
    let debug_quote = p.quote(&b);
    let signed = verify_quote_signatures_under(&debug_quote, &pki.root(), t(AT)).unwrap();
    assert_eq!(signed.quote.td_report().unwrap().td_attributes, [1, 0, 0, 0x10, 0, 0, 0, 0]);
}

#[test]
fn out_of_date_platform_is_reported_with_its_advisory() {
    let pki = pki();
    let collateral = verified(&pki, &CollateralSpec::standard(t(ISSUED)));
    let p = platform(&pki, &PlatformTcb::out_of_date());
    let td = verify_tdx_quote(&p.quote(&body([0; 64], [0; 48])), &collateral, t(AT)).unwrap();
    assert_eq!(td.tcb_status, TcbStatus::OutOfDate);
    assert_eq!(td.platform_tcb_status, TcbStatus::OutOfDate);
    assert_eq!(td.advisory_ids, ["INTEL-SA-00837"]);
}

#[test]
fn attack_tdx_revoked_pck() {
    let pki = pki();
    let p = platform(&pki, &PlatformTcb::up_to_date());
    let quote = p.quote(&body([0; 64], [0; 48]));
    // Control: a PCK CRL that revokes another platform.
    let mut spec = CollateralSpec::standard(t(ISSUED));
    spec.revoked_pcks = vec![vec![0x66]];
    verify_tdx_quote(&quote, &verified(&pki, &spec), t(AT)).unwrap();
    // The attack: a platform whose PCK key leaked (revoked by Intel) still presents validly signed quotes.
    spec.revoked_pcks = vec![p.pck_serial.clone()];
    assert_eq!(
        verify_tdx_quote(&quote, &verified(&pki, &spec), t(AT)).unwrap_err().to_string(),
        "tdx: PCK certificate revoked (serial 7d01)"
    );
}

#[test]
fn attack_tdx_tcb_info_upgraded_without_intels_signature() {
    let pki = pki();
    let mut spec = CollateralSpec::standard(t(ISSUED));
    let honest = pki.collateral_json(&spec);
    // The attacker marks the OutOfDate level UpToDate and keeps Intel's signature.
    spec.platform_levels[1].status = TcbStatus::UpToDate;
    let mut forged: serde_json::Value = serde_json::from_slice(&honest).unwrap();
    forged["tcb_info"] = serde_json::Value::String(spec.tcb_info_json());
    let mut c = Collateral::default();
    c.add_bytes(forged.to_string().as_bytes(), "forged").unwrap();
    assert_eq!(
        c.verify_under(&pki.root(), t(AT)).unwrap_err().to_string(),
        "tdx collateral: TCB info signature invalid (forged: tcb_info)"
    );
    // Signed by a TCB Signing key of another root: the chain does not reach the trusted root.
    let other = TestIntelPki::new(t("2024-01-01T00:00:00Z"), t("2031-01-01T00:00:00Z"));
    let mut c = Collateral::default();
    c.add_bytes(&other.collateral_json(&spec), "other root").unwrap();
    let e = c.verify_under(&pki.root(), t(AT)).unwrap_err().to_string();
    assert!(
        e.starts_with("tdx collateral: root CA CRL: CRL of 'Intel SGX Root CA': signature invalid"),
        "{e}"
    );
}

#[test]
fn attack_tdx_quote_from_a_platform_of_another_root() {
    let pki = pki();
    let collateral = verified(&pki, &CollateralSpec::standard(t(ISSUED)));
    let attacker = TestIntelPki::new(t("2024-01-01T00:00:00Z"), t("2031-01-01T00:00:00Z"));
    let p = platform(&attacker, &PlatformTcb::up_to_date());
    assert_eq!(
        verify_tdx_quote(&p.quote(&body([0; 64], [0; 48])), &collateral, t(AT)).unwrap_err().to_string(),
        "tdx: PCK chain root is not the pinned Intel SGX Root CA"
    );
}

#[test]
fn attack_tdx_collateral_past_next_update() {
    let pki = pki();
    let spec = CollateralSpec::standard(t("2026-10-01T00:00:00Z"));
    let e = load(&pki, &spec).verify_under(&pki.root(), t(AT)).unwrap_err().to_string();
    assert!(e.starts_with("tdx collateral: root CA CRL: CRL of 'Intel SGX Root CA': expired"), "{e}");
}

// ----- sealroom evidence through the verifier's appraisal --------------------------------------------------------

fn evidence(quote: Vec<u8>, nonce: Nonce, log: Vec<u8>) -> Evidence {
    Evidence {
        nonce,
        tee_public_key: tee_key(),
        platform: Platform::Tdx,
        tpm: None,
        tdx: Some(TdxEvidence { quote, ccel_table: vec![], ccel_log: vec![] }),
        sev_snp: None,
        azure: None,
        runtime_event_log: log,
        gpus: vec![],
    }
}

fn failures(ev: Evidence, collateral: &VerifiedCollateral, references: ReferenceValues) -> Vec<String> {
    let cache = EndorsementCache::default();
    let ctx = Context {
        at: t(AT),
        nonce: Some(ev.nonce.0.to_vec()),
        snp_cache: &cache,
        tdx_collateral: Some(collateral),
        tdx_root: None,
        enrolled_tpm_aks: &[],
        tpm_ek_activated: None,
        gpu: None,
    };
    let policy = Policy { references, ..Policy::default() };
    appraise(&EvidenceInput::Sealroom(Box::new(ev)), &policy, &ctx).failures()
}

#[test]
fn tdx_evidence_binding_and_runtime_log_replayed_to_rtmr3() {
    let pki = pki();
    let collateral = verified(&pki, &CollateralSpec::standard(t(ISSUED)));
    let p = platform(&pki, &PlatformTcb::up_to_date());
    let nonce = Nonce([9; 32]);
    let log = runtime_log(&launched());
    let rd = report_data(&nonce, &tee_key());

    // Control: REPORT_DATA is the binding, RTMR3 the replay of the log.
    let good = p.quote(&body(rd, rtmr3_of(&log)));
    let ok = failures(evidence(good.clone(), nonce, log.clone()), &collateral, ReferenceValues::skip_all());
    assert!(ok.is_empty(), "{ok:?}");

    // RTMR3 extended with something the log does not show (an output the log hides).
    let hidden =
        RuntimeEvent::Output { name: "exfiltrated".into(), digest: format!("sha256:{}", "cd".repeat(32)) };
    let extra = runtime_log(&[launched(), vec![hidden]].concat());
    let quote = p.quote(&body(rd, rtmr3_of(&extra)));
    assert_eq!(
        failures(evidence(quote, nonce, log.clone()), &collateral, ReferenceValues::skip_all()),
        [format!(
            "runtime log: rtmr3 mismatch: expected {}, got {}",
            hex::encode(rtmr3_of(&extra)),
            hex::encode(rtmr3_of(&log))
        )]
    );

    // A quote bound to another nonce (a replayed quote) is refused by the binding.
    let stale = p.quote(&body(report_data(&Nonce([8; 32]), &tee_key()), rtmr3_of(&log)));
    assert_eq!(
        failures(evidence(stale, nonce, log.clone()), &collateral, ReferenceValues::skip_all()),
        ["binding: REPORT_DATA does not bind this nonce and TEE public key"]
    );
}

#[test]
fn tdx_mrtd_and_rtmrs_are_judged_against_reference_values() {
    let pki = pki();
    let collateral = verified(&pki, &CollateralSpec::standard(t(ISSUED)));
    let p = platform(&pki, &PlatformTcb::up_to_date());
    let nonce = Nonce([9; 32]);
    let log = runtime_log(&launched());
    let quote = p.quote(&body(report_data(&nonce, &tee_key()), rtmr3_of(&log)));
    let refs = |mrtd: [u8; 48], rtmr1: [u8; 48]| {
        let json = serde_json::json!({
            "firmware": {"mrtd": [hex::encode(mrtd)], "rtmr0": [hex::encode(RTMR0)]},
            "kernel": {"rtmr1": [hex::encode(rtmr1)], "rtmr2": [hex::encode(RTMR2)]},
            "workload": "skip",
        });
        ReferenceValues::from_json(json.to_string().as_bytes()).unwrap()
    };
    let ev = || evidence(quote.clone(), nonce, log.clone());
    assert_eq!(failures(ev(), &collateral, refs(MRTD, RTMR1)), Vec::<String>::new());
    assert_eq!(
        failures(ev(), &collateral, refs([0x12; 48], RTMR1)),
        [format!("firmware: mrtd is {}, not a reference value", hex::encode(MRTD))]
    );
    assert_eq!(
        failures(ev(), &collateral, refs(MRTD, [0x99; 48])),
        [format!("kernel: rtmr1 is {}, not a reference value", hex::encode(RTMR1))]
    );
}

#[test]
fn tdx_debug_td_without_collateral_is_verified_under_the_test_root_and_reported_as_debug() {
    let pki = pki();
    let p = platform(&pki, &PlatformTcb::up_to_date());
    let nonce = Nonce([9; 32]);
    let log = runtime_log(&launched());
    let mut b = body(report_data(&nonce, &tee_key()), rtmr3_of(&log));
    b.td_attributes |= TD_ATTR_DEBUG;
    let ev = evidence(p.quote(&b), nonce, log);
    let (cache, root) = (EndorsementCache::default(), pki.root());
    let ctx = Context {
        at: t(AT),
        nonce: Some(nonce.0.to_vec()),
        snp_cache: &cache,
        tdx_collateral: None,
        tdx_root: Some(&root),
        enrolled_tpm_aks: &[],
        tpm_ek_activated: None,
        gpu: None,
    };
    let input = EvidenceInput::Sealroom(Box::new(ev));
    // Signatures and PCK chain verify under the test root; no TCB status without collateral; DEBUG is a typed
    // claim every policy sees.
    let a = appraise(&input, &Policy::default(), &ctx);
    assert!(a.failures().is_empty(), "{:?}", a.failures());
    let Some(PlatformClaims::Tdx(td)) = &a.platform else { panic!("not a TDX appraisal: {:?}", a.platform) };
    assert!(td.td_attributes.debug);
    assert!(td.tcb.is_none());
    // Without the test root the pinned Intel root refuses the chain.
    let pinned = appraise(&input, &Policy::default(), &Context { tdx_root: None, ..ctx });
    assert_eq!(
        pinned.failures(),
        ["tdx: PCK chain: certificate 'Intel SGX Root CA': self-issued root is not a pinned anchor"]
    );
}
