//! SEV-SNP attacks that need a genuine signature over chosen report fields, modelled with an AMD-like test PKI
//! (`snp::test_pki`, feature `test-anchors`): real reports from the corpus (verifier/testdata, MANIFEST.md
//! there) are altered and re-signed with a test VCEK whose chain ends at a test ARK given to the verifier as
//! its only trust anchor. Each attack has a control (same construction, attack removed) that passes, so a
//! refusal is caused by the attack and not by the construction.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use sealroom_verifier::azure::evidence::{AzureEvidence, AzureQuote};
use sealroom_verifier::azure::hcl::{HW_REPORT_LEN, HW_REPORT_OFFSET};
use sealroom_verifier::azure::verify::verify_azure;
use sealroom_verifier::snp::report::SnpReport;
use sealroom_verifier::snp::test_pki::{TestAmdPki, TestKey};
use sealroom_verifier::snp::{Collateral, EndorsementCache, Product, SnpPolicy, TcbVersion, verify_report};
use sealroom_verifier::x509::{UnixTime, parse_time};

fn data(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn t(s: &str) -> UnixTime {
    parse_time(s).unwrap()
}

const AT: &str = "2025-01-01T00:00:00Z";

/// A test PKI valid 2024..2030 and a VCEK for `report` (its chip id and REPORTED_TCB), the report re-signed.
fn resigned(report: &mut [u8]) -> (TestAmdPki, Vec<u8>, TestKey) {
    let pki = TestAmdPki::new(Product::Milan, t("2024-01-01T00:00:00Z"), t("2030-01-01T00:00:00Z"));
    let parsed = SnpReport::parse(report).unwrap();
    let tcb = TcbVersion::decode(parsed.reported_tcb, false);
    let (vcek, key) = pki.issue_vcek(0x5eca, &tcb, &parsed.chip_id);
    key.sign_report(report);
    (pki, vcek, key)
}

fn verify(
    report: &[u8],
    vcek: &[u8],
    cache: &EndorsementCache,
    policy: &SnpPolicy,
) -> Result<(), Vec<String>> {
    verify_report(report, Collateral { endorsement_der: vcek }, cache, policy, t(AT))
        .map(|_| ())
        .map_err(|e| e.reasons())
}

fn assert_only(result: Result<(), Vec<String>>, reason: &str) {
    let reasons = result.expect_err("must be refused");
    assert_eq!(reasons, [reason.to_owned()], "refused for other reasons than the attack");
}

#[test]
fn test_pki_control_resigned_report_verifies_under_the_test_root_only() {
    let mut report = data("snp/trustee/test-report.bin");
    let (pki, vcek, _) = resigned(&mut report);
    verify(&report, &vcek, &EndorsementCache::with_test_roots(pki.roots()), &SnpPolicy::default()).unwrap();
    // The pinned AMD roots never accept the test chain.
    let err = verify(&report, &vcek, &EndorsementCache::default(), &SnpPolicy::default()).unwrap_err();
    assert!(err[0].contains("is not an AMD ASK or ASVK"), "{err:?}");
}

#[test]
fn attack_snp_revoked_vcek() {
    let mut report = data("snp/trustee/test-report.bin");
    let (pki, vcek, _) = resigned(&mut report);
    let cache = EndorsementCache::with_test_roots(pki.roots());
    let vcek_serial = [0x5e, 0xca];
    // Control: a current ASK CRL that lists another serial.
    cache.add_crl(&pki.ask_crl(&[&[0x77]], t("2024-12-01T00:00:00Z"), t("2025-02-01T00:00:00Z"))).unwrap();
    verify(&report, &vcek, &cache, &SnpPolicy::default()).unwrap();
    // The attack: a VCEK whose key leaked, revoked by its ASK, still presented with a validly signed report.
    cache
        .add_crl(&pki.ask_crl(&[&vcek_serial], t("2024-12-01T00:00:00Z"), t("2025-02-01T00:00:00Z")))
        .unwrap();
    assert_only(
        verify(&report, &vcek, &cache, &SnpPolicy::default()),
        "snp: VCEK 'SEV-VCEK' revoked by the AMD CRL of 'SEV-Milan' (serial 5eca)",
    );
}

#[test]
fn attack_snp_revoked_ask() {
    let mut report = data("snp/trustee/test-report.bin");
    let (pki, vcek, _) = resigned(&mut report);
    let cache = EndorsementCache::with_test_roots(pki.roots());
    // The ARK-signed CRL AMD's KDS publishes revokes ASKs: every VCEK under a revoked ASK is refused, even one
    // verified (and cached) before the CRL arrived.
    verify(&report, &vcek, &cache, &SnpPolicy::default()).unwrap();
    cache
        .add_crl(&pki.ark_crl(&[&pki.ask_serial()], t("2024-12-01T00:00:00Z"), t("2025-02-01T00:00:00Z")))
        .unwrap();
    assert_only(
        verify(&report, &vcek, &cache, &SnpPolicy::default()),
        "snp: ASK 'SEV-Milan' revoked by the AMD CRL of 'ARK-Milan' (serial 02)",
    );
}

#[test]
fn attack_snp_stale_crl_hides_a_revocation() {
    // An operator replays an old CRL from before the revocation: a CRL past its nextUpdate is refused, so the
    // replay fails closed instead of passing the VCEK.
    let mut report = data("snp/trustee/test-report.bin");
    let (pki, vcek, _) = resigned(&mut report);
    let cache = EndorsementCache::with_test_roots(pki.roots());
    cache.add_crl(&pki.ask_crl(&[], t("2024-10-01T00:00:00Z"), t("2024-11-01T00:00:00Z"))).unwrap();
    assert_only(
        verify(&report, &vcek, &cache, &SnpPolicy::default()),
        "snp: AMD CRL: CRL of 'SEV-Milan': expired (nextUpdate 2024-11-01T00:00:00Z, time 2025-01-01T00:00:00Z)",
    );
    let future = EndorsementCache::with_test_roots(pki.roots());
    future.add_crl(&pki.ask_crl(&[], t("2025-06-01T00:00:00Z"), t("2025-07-01T00:00:00Z"))).unwrap();
    let err = verify(&report, &vcek, &future, &SnpPolicy::default()).unwrap_err();
    assert!(err[0].contains("CRL of 'SEV-Milan': not yet valid (thisUpdate 2025-06-01T00:00:00Z"), "{err:?}");
}

#[test]
fn attack_snp_forged_crl_is_refused() {
    // A CRL naming the ARK but signed by another key (one that would "un-revoke" by omission) never enters.
    let pki = TestAmdPki::new(Product::Milan, t("2024-01-01T00:00:00Z"), t("2030-01-01T00:00:00Z"));
    let impostor = TestAmdPki::new(Product::Milan, t("2024-01-01T00:00:00Z"), t("2030-01-01T00:00:00Z"));
    let cache = EndorsementCache::with_test_roots(pki.roots());
    let forged = impostor.ark_crl(&[], t("2024-12-01T00:00:00Z"), t("2025-02-01T00:00:00Z"));
    let err = cache.add_crl(&forged).unwrap_err().to_string();
    assert_eq!(err, "snp: AMD CRL: CRL of 'ARK-Milan': signature invalid under 'ARK-Milan'");
    assert_eq!(cache.crl_count(), 0);
    // With the pinned roots, a CRL from a test ARK (same CN, not AMD's full name) is not an AMD CRL at all.
    let err = EndorsementCache::default().add_crl(&forged).unwrap_err().to_string();
    assert_eq!(err, "snp: AMD CRL: issuer 'ARK-Milan' is not an AMD ARK, ASK or ASVK");
}

#[test]
fn attack_snp_firmware_rollback_below_minimum_tcb() {
    // A real report (no re-signing needed): bl 3, tee 0, snp 8, ucode 115. A host rolled back to SNP firmware
    // SPL 8 is refused under a floor of 9, and the message names the component.
    let report = data("snp/trustee/test-report.bin");
    let vcek = data("snp/trustee/test-vcek.der");
    let cache = EndorsementCache::default();
    let floor = |snp, microcode| SnpPolicy {
        min_tcb: Some(TcbVersion { fmc: None, bootloader: 3, tee: 0, snp, microcode }),
        ..SnpPolicy::default()
    };
    verify(&report, &vcek, &cache, &floor(8, 115)).unwrap();
    assert_only(
        verify(&report, &vcek, &cache, &floor(9, 115)),
        "snp: REPORTED_TCB snp SPL 8 is below the policy's minimum 9 (bl 3 tee 0 snp 8 ucode 115)",
    );
    let reasons = verify(&report, &vcek, &cache, &floor(9, 200)).unwrap_err();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[1].contains("REPORTED_TCB microcode SPL 115 is below the policy's minimum 200"),
        "{reasons:?}"
    );
    // An FMC floor (Turin) does not apply to a Milan chip; the other components still do.
    let turin_floor = SnpPolicy {
        min_tcb: Some(TcbVersion { fmc: Some(9), bootloader: 3, tee: 0, snp: 8, microcode: 115 }),
        ..SnpPolicy::default()
    };
    verify(&report, &vcek, &cache, &turin_floor).unwrap();
}

/// hcl-report.bin + tpm-quote-v1.json (nonce "challenge"), with the VCEK given.
fn azure_snp(hcl_report: Vec<u8>, vcek: Vec<u8>) -> AzureEvidence {
    let q: serde_json::Value = serde_json::from_slice(&data("azure/az-snp-vtpm/tpm-quote-v1.json")).unwrap();
    let hex = |v: &serde_json::Value| hex::decode(v.as_str().unwrap()).unwrap();
    AzureEvidence {
        hcl_report,
        quote: AzureQuote {
            message: hex(&q["message"]),
            signature: hex(&q["signature"]),
            pcrs: q["pcrs"].as_array().unwrap().iter().map(hex).collect(),
        },
        vcek: Some(vcek),
        td_quote: None,
        ak_public: None,
    }
}

/// The real HCL report with its SNP report's VMPL set to `vmpl` and re-signed by a test VCEK.
fn azure_at_vmpl(vmpl: u8) -> (AzureEvidence, EndorsementCache) {
    let mut hcl = data("azure/az-snp-vtpm/hcl-report.bin");
    let snp = &mut hcl[HW_REPORT_OFFSET..HW_REPORT_OFFSET + HW_REPORT_LEN];
    // VMPL: u32 little-endian at 0x30 of the SNP report.
    snp[0x30..0x34].copy_from_slice(&u32::from(vmpl).to_le_bytes());
    let (pki, vcek, _) = resigned(snp);
    (azure_snp(hcl, vcek), EndorsementCache::with_test_roots(pki.roots()))
}

#[test]
fn attack_azure_vmpl_nonzero() {
    // On Azure the paravisor at VMPL 0 requests the report binding HCLAkPub; the guest OS runs at VMPL 2 and
    // can request its own report binding runtime claims it wrote (its own AK). Such a report is genuinely
    // signed by the chip, so only the VMPL tells them apart: it must be refused even under a policy that
    // leaves VMPL open (`max_vmpl: None`). The HCL binding and the vTPM quote stay the real ones.
    let (control, cache) = azure_at_vmpl(0);
    let policy = SnpPolicy { max_vmpl: None, ..SnpPolicy::default() };
    let verified = verify_azure(&control, Some(b"challenge"), &cache, &policy, None, t(AT)).unwrap();
    assert_eq!(verified.claims.snp.unwrap().vmpl, 0, "VMPL reported");
    let (attack, cache) = azure_at_vmpl(2);
    let reasons =
        verify_azure(&attack, Some(b"challenge"), &cache, &policy, None, t(AT)).unwrap_err().reasons();
    assert_eq!(reasons, ["snp: report VMPL 2 exceeds the allowed 0"]);
}
