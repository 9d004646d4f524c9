//! SEV-SNP reports from the corpus (verifier/testdata/snp, MANIFEST.md there): each artifact's stated outcome,
//! each listed negative with its specific reason, and single-field mutations for every check.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use sealroom_verifier::snp::endorsement::{endorsed_tcb, verify_endorsement};
use sealroom_verifier::snp::report::SnpReport;
use sealroom_verifier::snp::{
    Collateral, EndorsementCache, KeyKind, Product, SnpPolicy, TcbVersion, verify_report,
};
use sealroom_verifier::x509::{Certificate, parse_time};

fn data(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn t(s: &str) -> i64 {
    parse_time(s).unwrap()
}

fn verify(report: &[u8], vcek: &[u8], policy: &SnpPolicy, at: &str) -> Result<(), Vec<String>> {
    let cache = EndorsementCache::default();
    verify_report(report, Collateral { endorsement_der: vcek }, &cache, policy, t(at))
        .map(|_| ())
        .map_err(|e| e.reasons())
}

fn assert_reason(result: Result<(), Vec<String>>, needle: &str) {
    let reasons = result.expect_err("verification must fail");
    assert!(reasons.iter().any(|r| r.contains(needle)), "no reason containing {needle:?} in {reasons:?}");
}

const GO_AT: &str = "2024-01-01T00:00:00Z";
const TRUSTEE_AT: &str = "2024-01-01T00:00:00Z";
const VLEK_AT: &str = "2025-06-01T00:00:00Z";

fn debug_ok() -> SnpPolicy {
    SnpPolicy { allow_debug: true, ..SnpPolicy::default() }
}

// --- go-sev-guest/attestation.bin ---------------------------------------------------------------------------

#[test]
fn go_sev_guest_report_is_genuine() {
    // Manifest: VALID (Milan-B0, VCEK vcek_milan.der). Its guest policy 0xb0000 allows debugging, which the
    // source does not check: genuine under a policy that allows debug, refused by our default policy.
    let report = data("snp/go-sev-guest/attestation.bin");
    let vcek = data("snp/go-sev-guest/vcek_milan.der");
    let cache = EndorsementCache::default();
    let (parsed, claims) =
        verify_report(&report, Collateral { endorsement_der: &vcek }, &cache, &debug_ok(), t(GO_AT)).unwrap();
    assert_eq!(parsed.version, 2);
    assert_eq!(claims.product, Product::Milan);
    assert_eq!(claims.signing_key, KeyKind::Vcek);
    assert_eq!(claims.reported_tcb, TcbVersion { fmc: None, bootloader: 2, tee: 0, snp: 5, microcode: 68 });
    assert!(claims.measurement.starts_with("b07af962"));
    assert!(claims.chip_id.starts_with("3ac3fe21"));
    assert_eq!(&parsed.report_data[..5], &[1, 2, 3, 4, 5]);
    assert_eq!(parsed.policy.0, 0xb0000);
    assert_reason(verify(&report, &vcek, &SnpPolicy::default(), GO_AT), "snp: guest policy allows debugging");
}

#[test]
fn go_sev_guest_vcek_chains_to_milan() {
    let e = verify_endorsement(&data("snp/go-sev-guest/vcek_milan.der")).unwrap();
    assert_eq!((e.product, e.kind), (Product::Milan, KeyKind::Vcek));
    e.check_validity(t("2022-09-24T01:00:00Z")).unwrap();
    assert_eq!(e.endorsed.tcb, TcbVersion { fmc: None, bootloader: 2, tee: 0, snp: 5, microcode: 68 });
}

#[test]
fn go_sev_guest_vcek_not_yet_valid_and_expired() {
    let report = data("snp/go-sev-guest/attestation.bin");
    let vcek = data("snp/go-sev-guest/vcek_milan.der");
    assert_reason(
        verify(&report, &vcek, &debug_ok(), "2022-09-23T00:00:00Z"),
        "snp: VCEK chain: certificate 'SEV-VCEK': not yet valid",
    );
    assert_reason(
        verify(&report, &vcek, &debug_ok(), "2029-09-25T00:00:00Z"),
        "snp: VCEK chain: certificate 'SEV-VCEK': expired",
    );
}

// --- trustee/test-report.bin ----------------------------------------------------------------------------------

#[test]
fn trustee_report_is_valid() {
    let report = data("snp/trustee/test-report.bin");
    let vcek = data("snp/trustee/test-vcek.der");
    let cache = EndorsementCache::default();
    let (parsed, claims) = verify_report(
        &report,
        Collateral { endorsement_der: &vcek },
        &cache,
        &SnpPolicy::default(),
        t(TRUSTEE_AT),
    )
    .unwrap();
    assert_eq!(parsed.guest_svn, 4);
    assert_eq!(parsed.policy.0, 0x3001f);
    assert_eq!(claims.reported_tcb, TcbVersion { fmc: None, bootloader: 3, tee: 0, snp: 8, microcode: 115 });
    assert!(claims.measurement.starts_with("a1f39304"));
    assert!(claims.report_data.starts_with("ec6c52d7"));
}

#[test]
fn trustee_report_byte_42_flip_breaks_signature() {
    let mut report = data("snp/trustee/test-report.bin");
    report[42] = report[42].wrapping_add(1);
    assert_reason(
        verify(&report, &data("snp/trustee/test-vcek.der"), &SnpPolicy::default(), TRUSTEE_AT),
        "snp: VCEK signature over report invalid",
    );
}

#[test]
fn trustee_report_byte_384_flip_breaks_tcb_and_signature() {
    let mut report = data("snp/trustee/test-report.bin");
    report[384] = report[384].wrapping_add(1);
    let r = verify(&report, &data("snp/trustee/test-vcek.der"), &SnpPolicy::default(), TRUSTEE_AT);
    assert_reason(
        r.clone(),
        "snp: REPORTED_TCB boot loader SPL 4 does not match the VCEK's boot loader SPL 3",
    );
    assert_reason(r, "snp: VCEK signature over report invalid");
}

#[test]
fn trustee_vcek_byte_42_flip_breaks_chain() {
    let mut vcek = data("snp/trustee/test-vcek.der");
    vcek[42] = vcek[42].wrapping_add(1);
    let err = verify_endorsement(&vcek).unwrap_err().to_string();
    assert!(err.starts_with("snp: "), "{err}");
}

#[test]
fn trustee_vcek_with_asvk_as_issuer_fails() {
    // Verifying the VCEK against the Milan ASVK instead of the ASK must fail.
    let vcek = Certificate::from_der(&data("snp/trustee/test-vcek.der")).unwrap();
    let certs = Certificate::chain_from_pem(&data("certs/amd/trustee_milan_ask_ark_asvk.pem")).unwrap();
    let asvk = certs.iter().find(|c| c.subject_cn() == "SEV-VLEK-Milan").unwrap();
    let ask = certs.iter().find(|c| c.subject_cn() == "SEV-Milan").unwrap();
    assert!(vcek.verify_signed_by(asvk).is_err());
    vcek.verify_signed_by(ask).unwrap();
}

#[test]
fn trustee_malformed_vceks_parse_but_do_not_chain() {
    for (file, tcb) in [
        (
            "snp/trustee/test-vcek-invalid-legacy.der",
            TcbVersion { fmc: None, bootloader: 3, tee: 0, snp: 10, microcode: 169 },
        ),
        (
            "snp/trustee/test-vcek-invalid-new.der",
            TcbVersion { fmc: None, bootloader: 0, tee: 0, snp: 0, microcode: 30 },
        ),
    ] {
        let der = data(file);
        let cert = Certificate::from_der(&der).unwrap();
        let endorsed = endorsed_tcb(&cert, Product::Milan).unwrap();
        assert_eq!(endorsed.tcb, tcb, "{file}");
        assert_eq!(endorsed.hw_id.as_ref().map(Vec::len), Some(64), "{file}");
        let err = verify_endorsement(&der).unwrap_err().to_string();
        assert!(
            err.contains("snp: VCEK chain: certificate 'SEV-VCEK': signature invalid under 'SEV-Milan'"),
            "{file}: {err}"
        );
        let r = verify(&data("snp/trustee/test-report.bin"), &der, &SnpPolicy::default(), TRUSTEE_AT);
        assert_reason(r, "signature invalid under 'SEV-Milan'");
    }
}

// --- trustee/test-vlek-report.bin -----------------------------------------------------------------------------

#[test]
fn trustee_vlek_report_is_valid() {
    let report = data("snp/trustee/test-vlek-report.bin");
    let vlek = data("snp/trustee/test-vlek.der");
    let cache = EndorsementCache::default();
    let (parsed, claims) = verify_report(
        &report,
        Collateral { endorsement_der: &vlek },
        &cache,
        &SnpPolicy::default(),
        t(VLEK_AT),
    )
    .unwrap();
    assert_eq!(parsed.version, 3);
    assert_eq!(claims.signing_key, KeyKind::Vlek);
    assert_eq!(claims.vmpl, 1);
    assert_eq!(parsed.cpuid_fam_mod_step, [0x19, 0x01, 0x01]);
    assert_eq!(claims.reported_tcb, TcbVersion { fmc: None, bootloader: 4, tee: 0, snp: 24, microcode: 217 });
    assert!(parsed.chip_id.iter().all(|b| *b == 0));
}

#[test]
fn trustee_vlek_chain_and_expiry() {
    let e = verify_endorsement(&data("snp/trustee/test-vlek.der")).unwrap();
    assert_eq!((e.product, e.kind), (Product::Milan, KeyKind::Vlek));
    assert_eq!(e.chain[1].subject_cn(), "SEV-VLEK-Milan");
    let r = verify(
        &data("snp/trustee/test-vlek-report.bin"),
        &data("snp/trustee/test-vlek.der"),
        &SnpPolicy::default(),
        "2026-01-01T00:00:00Z",
    );
    assert_reason(r, "snp: VLEK chain: certificate 'SEV-VLEK': expired");
}

#[test]
fn trustee_vlek_report_byte_flips() {
    let vlek = data("snp/trustee/test-vlek.der");
    let mut report = data("snp/trustee/test-vlek-report.bin");
    report[42] = report[42].wrapping_add(1);
    assert_reason(
        verify(&report, &vlek, &SnpPolicy::default(), VLEK_AT),
        "snp: VLEK signature over report invalid",
    );
    let mut report = data("snp/trustee/test-vlek-report.bin");
    report[384] = report[384].wrapping_add(1);
    assert_reason(
        verify(&report, &vlek, &SnpPolicy::default(), VLEK_AT),
        "REPORTED_TCB boot loader SPL 5 does not match the VLEK's boot loader SPL 4",
    );
}

// --- single-field mutations, one per check -------------------------------------------------------------------

#[test]
fn mutation_wrong_endorsement_key_for_report() {
    // A VCEK of another chip: signature, TCB and CHIP_ID all disagree.
    let r = verify(
        &data("snp/trustee/test-report.bin"),
        &data("snp/go-sev-guest/vcek_milan.der"),
        &SnpPolicy::default(),
        TRUSTEE_AT,
    );
    assert_reason(r.clone(), "VCEK signature over report invalid");
    assert_reason(r, "CHIP_ID");
    // A VLEK for a VCEK-signed report.
    let r = verify(
        &data("snp/trustee/test-report.bin"),
        &data("snp/trustee/test-vlek.der"),
        &SnpPolicy::default(),
        VLEK_AT,
    );
    assert_reason(r, "report says it is signed by a VCEK, the certificate is a VLEK");
}

#[test]
fn mutation_policy_checks() {
    let report = data("snp/trustee/test-report.bin");
    let vcek = data("snp/trustee/test-vcek.der");
    let strict = SnpPolicy { allow_smt: false, ..SnpPolicy::default() };
    assert_reason(verify(&report, &vcek, &strict, TRUSTEE_AT), "snp: guest policy allows SMT");
    let min = SnpPolicy {
        min_tcb: Some(TcbVersion { fmc: None, bootloader: 3, tee: 0, snp: 9, microcode: 115 }),
        ..SnpPolicy::default()
    };
    assert_reason(
        verify(&report, &vcek, &min, TRUSTEE_AT),
        "snp: REPORTED_TCB snp SPL 8 is below the policy's minimum 9",
    );
    let vlek_report = data("snp/trustee/test-vlek-report.bin");
    let vlek = data("snp/trustee/test-vlek.der");
    let vmpl0 = SnpPolicy { max_vmpl: Some(0), ..SnpPolicy::default() };
    assert_reason(verify(&vlek_report, &vlek, &vmpl0, VLEK_AT), "snp: report VMPL 1 exceeds the allowed 0");
    let no_vlek = SnpPolicy { allow_vlek: false, ..SnpPolicy::default() };
    assert_reason(verify(&vlek_report, &vlek, &no_vlek, VLEK_AT), "VLEK-signed");
}

#[test]
fn mutation_policy_bits_in_report() {
    let vcek = data("snp/trustee/test-vcek.der");
    for (bit, needle) in [(18, "migration agent"), (19, "allows debugging")] {
        let mut report = data("snp/trustee/test-report.bin");
        report[8 + bit / 8] |= 1 << (bit % 8);
        assert_reason(verify(&report, &vcek, &SnpPolicy::default(), TRUSTEE_AT), needle);
    }
    let mut report = data("snp/trustee/test-report.bin");
    report[8 + 2] &= !0b10; // bit 17
    assert_reason(verify(&report, &vcek, &SnpPolicy::default(), TRUSTEE_AT), "bit 17");
}

#[test]
fn mutation_header_fields() {
    let vcek = data("snp/trustee/test-vcek.der");
    let mut report = data("snp/trustee/test-report.bin");
    report[0x34] = 2; // signature algorithm
    assert_reason(verify(&report, &vcek, &SnpPolicy::default(), TRUSTEE_AT), "signature algorithm 2");
    let mut report = data("snp/trustee/test-report.bin");
    report[0x48] |= 0b111 << 2; // SIGNING_KEY = none
    assert_reason(verify(&report, &vcek, &SnpPolicy::default(), TRUSTEE_AT), "unsigned");
    let mut report = data("snp/trustee/test-report.bin");
    report[0x1A0] ^= 1; // CHIP_ID
    let r = verify(&report, &vcek, &SnpPolicy::default(), TRUSTEE_AT);
    assert_reason(r.clone(), "CHIP_ID");
    let mut report = data("snp/trustee/test-report.bin");
    report[0x90] ^= 1; // MEASUREMENT
    assert_reason(
        verify(&report, &vcek, &SnpPolicy::default(), TRUSTEE_AT),
        "VCEK signature over report invalid",
    );
    let mut report = data("snp/trustee/test-report.bin");
    report[0x2A0 + 71] = 1; // r has bits above 384
    assert_reason(verify(&report, &vcek, &SnpPolicy::default(), TRUSTEE_AT), "signature r does not fit");
    let mut report = data("snp/trustee/test-report.bin");
    report[0] = 1; // version
    assert_reason(verify(&report, &vcek, &SnpPolicy::default(), TRUSTEE_AT), "version 1 unsupported");
    let report = data("snp/trustee/test-report.bin");
    assert_reason(
        verify(&report[..1183], &vcek, &SnpPolicy::default(), TRUSTEE_AT),
        "1183 bytes, expected 1184",
    );
}

#[test]
fn parse_is_exact_and_total() {
    for f in [
        "snp/go-sev-guest/attestation.bin",
        "snp/trustee/test-report.bin",
        "snp/trustee/test-vlek-report.bin",
    ] {
        let r = data(f);
        SnpReport::parse(&r).unwrap();
        for cut in [0, 1, 100, 0x2A0, 1183] {
            assert!(SnpReport::parse(&r[..cut]).is_err());
        }
    }
}

#[test]
fn cache_reuses_verified_endorsements() {
    let cache = EndorsementCache::default();
    let vcek = data("snp/trustee/test-vcek.der");
    let report = data("snp/trustee/test-report.bin");
    for _ in 0..3 {
        verify_report(
            &report,
            Collateral { endorsement_der: &vcek },
            &cache,
            &SnpPolicy::default(),
            t(TRUSTEE_AT),
        )
        .unwrap();
    }
    assert_eq!(cache.len(), 1);
    // A failing chain is never cached.
    assert!(cache.get(&data("snp/trustee/test-vcek-invalid-new.der")).is_err());
    assert_eq!(cache.len(), 1);
}

// --- certs/amd: every shipped ASK/ASVK/ARK file ----------------------------------------------------------

#[test]
fn amd_root_files_chain_and_match_the_embedded_roots() {
    use sealroom_verifier::snp::endorsement::amd_roots;
    let roots = amd_roots().unwrap();
    assert_eq!(roots.len(), 3);
    for (file, ark_cn, issued_cn) in [
        ("ask_ark_milan.pem", "ARK-Milan", "SEV-Milan"),
        ("ask_ark_milan_vlek.pem", "ARK-Milan", "SEV-VLEK-Milan"),
        ("ask_ark_genoa.pem", "ARK-Genoa", "SEV-Genoa"),
        ("ask_ark_genoa_vlek.pem", "ARK-Genoa", "SEV-VLEK-Genoa"),
        ("ask_ark_turin_vcek.pem", "ARK-Turin", "SEV-Turin"),
        ("ask_ark_turin_vlek.pem", "ARK-Turin", "SEV-VLEK-Turin"),
        ("trustee_milan_ask_ark_asvk.pem", "ARK-Milan", "SEV-Milan"),
        ("trustee_genoa_ask_ark_asvk.pem", "ARK-Genoa", "SEV-Genoa"),
        ("trustee_turin_ask_ark_asvk.pem", "ARK-Turin", "SEV-Turin"),
    ] {
        let certs = Certificate::chain_from_pem(&data(&format!("certs/amd/{file}"))).unwrap();
        let ark = certs.iter().find(|c| c.subject_cn() == ark_cn).unwrap();
        let issued = certs.iter().find(|c| c.subject_cn() == issued_cn).unwrap();
        ark.verify_signed_by(ark).unwrap();
        issued.verify_signed_by(ark).unwrap();
        // Valid at the manifest's windows (Milan 2020..2045, Genoa 2022..2047, Turin 2023..2048).
        for c in [ark, issued] {
            c.check_validity(t("2030-01-01T00:00:00Z")).unwrap();
        }
        // Byte for byte the certificates compiled into the verifier.
        let embedded = roots.iter().find(|r| r.ark.subject_cn() == ark_cn).unwrap();
        assert_eq!(&embedded.ark, ark, "{file}");
        assert!(embedded.ask == *issued || embedded.asvk == *issued, "{file}");
    }
}

#[test]
fn amd_chain_rejects_an_ask_from_another_product() {
    // A Milan VCEK checked against Genoa's ASK fails on the issuer name; against its own, it verifies.
    let vcek = Certificate::from_der(&data("snp/trustee/test-vcek.der")).unwrap();
    let genoa = Certificate::chain_from_pem(&data("certs/amd/ask_ark_genoa.pem")).unwrap();
    let err = vcek.verify_signed_by(&genoa[0]).unwrap_err().to_string();
    assert!(err.contains("issuer 'SEV-Milan' is not 'SEV-Genoa'"), "{err}");
}
