//! GCE vTPM attestations from the corpus (verifier/testdata/tpm, MANIFEST.md there) and the TPM structure
//! parsers: each artifact's stated outcome, each listed negative, single-field mutations for every check.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use sealroom_verifier::tpm::gce_proto::GceAttestation;
use sealroom_verifier::tpm::quote::ExpectedExtraData;
use sealroom_verifier::tpm::structures::{Attest, Public, Signature};
use sealroom_verifier::tpm::verify::{AkTrust, QuoteInput, verify_tpm};
use sealroom_verifier::x509::parse_time;

fn data(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

// The AK certificate is valid 2021-08-31..2051-08-24; the source used time.Now().
const AT: &str = "2024-01-01T00:00:00Z";

fn run(
    att: &GceAttestation,
    nonce: &[u8],
    at: &str,
) -> Result<sealroom_verifier::tpm::verify::VerifiedTpm, Vec<String>> {
    let quotes: Vec<_> =
        att.quotes.iter().map(|q| QuoteInput { attest: &q.attest, signature: &q.signature }).collect();
    let banks: Vec<_> = att.quotes.iter().map(|q| q.bank.clone()).collect();
    verify_tpm(
        &att.ak_public,
        &att.ak_cert_chain,
        &quotes,
        &banks,
        &ExpectedExtraData::Exact(nonce.to_vec()),
        &AkTrust::GoogleCa,
        parse_time(at).unwrap(),
    )
    .map_err(|e| e.reasons())
}

fn assert_reason<T: std::fmt::Debug>(r: Result<T, Vec<String>>, needle: &str) {
    let reasons = r.expect_err("must fail");
    assert!(reasons.iter().any(|x| x.contains(needle)), "no {needle:?} in {reasons:?}");
}

#[test]
fn gce_nonce9009_is_valid() {
    let att = GceAttestation::decode(&data("tpm/attestations/gce-cos-85-nonce9009.pb")).unwrap();
    assert_eq!(att.quotes.len(), 3);
    let v = run(&att, &[0x90, 0x09], AT).unwrap();
    let ak = v.claims.ak.as_ref().unwrap();
    assert!(ak.issuer.starts_with("tpm_ek_v1_cloud_host-signer"), "{}", ak.issuer);
    let inst = ak.gce_instance.as_ref().unwrap();
    assert_eq!(inst.zone, "us-central1-a");
    assert_eq!(inst.project_id, "google.com:wuale-gcp-testing");
    assert_eq!(inst.instance_name, "cos-test");
    assert_eq!(v.pcrs.len(), 3);
    assert_eq!(v.claims.extra_data, "9009");
}

#[test]
fn gce_no_nonce_is_valid_with_empty_nonce() {
    let att = GceAttestation::decode(&data("tpm/attestations/gce-cos-85-no-nonce.pb")).unwrap();
    run(&att, &[], AT).unwrap();
}

#[test]
fn gce_wrong_nonce_is_refused() {
    let att = GceAttestation::decode(&data("tpm/attestations/gce-cos-85-nonce9009.pb")).unwrap();
    assert_reason(
        run(&att, &[0x90, 0x0a], AT),
        "tpm quote: extraData 9009 does not match the expected nonce 900a",
    );
    let att = GceAttestation::decode(&data("tpm/attestations/gce-cos-85-no-nonce.pb")).unwrap();
    assert_reason(run(&att, &[0x90, 0x09], AT), "does not match the expected nonce 9009");
}

#[test]
fn gce_swapped_ak_cert_is_refused() {
    // Manifest negative: another attestation's AK certificate must fail.
    let mut att = GceAttestation::decode(&data("tpm/attestations/gce-cos-85-nonce9009.pb")).unwrap();
    let pem = data("tpm/gce-ak-ek-certs/uca_tpm_rsa_sign_cert.pem");
    let other = sealroom_verifier::x509::Certificate::chain_from_pem(&pem).unwrap().remove(0);
    att.ak_cert_chain = vec![other.der().to_vec()];
    assert_reason(
        run(&att, &[0x90, 0x09], AT),
        "tpm ak certificate: the AK certificate certifies another key",
    );
}

#[test]
fn gce_time_outside_ak_cert_validity_is_refused() {
    let att = GceAttestation::decode(&data("tpm/attestations/gce-cos-85-nonce9009.pb")).unwrap();
    assert_reason(run(&att, &[0x90, 0x09], "2021-08-01T00:00:00Z"), "not yet valid");
    assert_reason(run(&att, &[0x90, 0x09], "2052-01-01T00:00:00Z"), "expired");
}

#[test]
fn gce_mutations() {
    let base = GceAttestation::decode(&data("tpm/attestations/gce-cos-85-nonce9009.pb")).unwrap();
    // A claimed PCR value changed: the PCR digest no longer matches.
    let mut att = base.clone();
    let v = att.quotes[1].bank.values.get_mut(&0).unwrap();
    v[0] ^= 1;
    assert_reason(run(&att, &[0x90, 0x09], AT), "tpm quote: PCR digest mismatch");
    // A selected PCR missing.
    let mut att = base.clone();
    att.quotes[1].bank.values.remove(&7);
    assert_reason(run(&att, &[0x90, 0x09], AT), "lacks its value");
    // Signature byte flipped.
    let mut att = base.clone();
    let n = att.quotes[0].signature.len();
    att.quotes[0].signature[n - 1] ^= 1;
    assert_reason(run(&att, &[0x90, 0x09], AT), "tpm quote: AK signature over TPMS_ATTEST invalid");
    // TPMS_ATTEST byte flipped (clock): signature breaks.
    let mut att = base.clone();
    att.quotes[0].attest[60] ^= 1;
    assert_reason(run(&att, &[0x90, 0x09], AT), "AK signature over TPMS_ATTEST invalid");
    // AK cert missing.
    let mut att = base.clone();
    att.ak_cert_chain.clear();
    assert_reason(run(&att, &[0x90, 0x09], AT), "no AK certificate");
    // AK public changed (modulus byte): cert mismatch and signatures fail.
    let mut att = base;
    let n = att.ak_public.len();
    att.ak_public[n - 1] ^= 1;
    let r = run(&att, &[0x90, 0x09], AT);
    assert_reason(r.clone(), "certifies another key");
    assert_reason(r, "AK signature over TPMS_ATTEST invalid");
}

#[test]
fn structures_parse_exactly() {
    let att = GceAttestation::decode(&data("tpm/attestations/gce-cos-85-nonce9009.pb")).unwrap();
    let ak = Public::parse(&att.ak_public).unwrap();
    assert!(ak.is_attestation_key());
    for q in &att.quotes {
        let a = Attest::parse(&q.attest).unwrap();
        assert_eq!(a.extra_data, vec![0x90, 0x09]);
        Signature::parse(&q.signature).unwrap();
        for cut in 0..q.attest.len() {
            assert!(Attest::parse(&q.attest[..cut]).is_err());
        }
        let mut long = q.attest.clone();
        long.push(0);
        assert!(Attest::parse(&long).unwrap_err().to_string().contains("trailing"));
        let mut bad = q.attest.clone();
        bad[0] = 0;
        assert!(Attest::parse(&bad).unwrap_err().to_string().contains("TPM_GENERATED_VALUE"));
        let mut bad = q.attest.clone();
        bad[5] = 0x17;
        assert!(Attest::parse(&bad).unwrap_err().to_string().contains("not TPM_ST_ATTEST_QUOTE"));
    }
    for cut in 0..att.ak_public.len() {
        assert!(Public::parse(&att.ak_public[..cut]).is_err());
    }
}

#[test]
fn pinned_ak_trust() {
    let att = GceAttestation::decode(&data("tpm/attestations/gce-cos-85-nonce9009.pb")).unwrap();
    let quotes: Vec<_> =
        att.quotes.iter().map(|q| QuoteInput { attest: &q.attest, signature: &q.signature }).collect();
    let banks: Vec<_> = att.quotes.iter().map(|q| q.bank.clone()).collect();
    let at = parse_time(AT).unwrap();
    let exp = ExpectedExtraData::Exact(vec![0x90, 0x09]);
    verify_tpm(&att.ak_public, &[], &quotes, &banks, &exp, &AkTrust::Pinned(att.ak_public.clone()), at)
        .unwrap();
    let mut other = att.ak_public.clone();
    other[20] ^= 1;
    let err =
        verify_tpm(&att.ak_public, &[], &quotes, &banks, &exp, &AkTrust::Pinned(other), at).unwrap_err();
    assert!(err.to_string().contains("not the pinned AK"), "{err}");
}

#[test]
fn gce_ak_ek_certificates_parse_and_chain() {
    use sealroom_verifier::tpm::ak_cert::{GCE_INSTANCE_INFO_OID, GceInstance, google_cas};
    use sealroom_verifier::x509::{Certificate, verify_chain};
    let cas = google_cas().unwrap();
    for f in [
        "pca_tpm_ecc_enc_cert",
        "pca_tpm_ecc_sign_cert",
        "pca_tpm_rsa_enc_cert",
        "pca_tpm_rsa_sign_cert",
        "uca_tpm_ecc_enc_cert",
        "uca_tpm_ecc_sign_cert",
        "uca_tpm_rsa_enc_cert",
        "uca_tpm_rsa_sign_cert",
    ] {
        let leaf =
            Certificate::chain_from_pem(&data(&format!("tpm/gce-ak-ek-certs/{f}.pem"))).unwrap().remove(0);
        let inter = cas.intermediates.iter().find(|c| c.subject_raw() == leaf.issuer_raw()).unwrap().clone();
        let at = parse_time("2030-01-01T00:00:00Z").unwrap();
        verify_chain(&[leaf.clone(), inter], &cas.roots, at).unwrap_or_else(|e| panic!("{f}: {e}"));
        if let Some(ext) = leaf.extension(GCE_INSTANCE_INFO_OID) {
            let info = GceInstance::parse(&ext.value).unwrap();
            assert!(!info.zone.is_empty(), "{f}");
        }
    }
}

#[test]
fn google_ca_files_parse_and_intermediates_chain_to_roots() {
    use sealroom_verifier::tpm::ak_cert::google_cas;
    use sealroom_verifier::x509::{Certificate, verify_chain};
    let cas = google_cas().unwrap();
    let at = parse_time("2030-01-01T00:00:00Z").unwrap();
    for f in [
        "gcp_ek_ak_ca_intermediate_v3.crt",
        "gcp_ek_ak_ca_root.crt",
        "tpm_ek_intermediate_2.crt",
        "tpm_ek_intermediate_3.crt",
        "tpm_ek_root_1.cer",
    ] {
        let c = Certificate::chain_from_pem_or_der(&data(&format!("certs/google/{f}"))).unwrap().remove(0);
        if c.is_self_issued() {
            c.verify_signed_by(&c).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(cas.roots.contains(&c), "{f}");
        } else {
            verify_chain(std::slice::from_ref(&c), &cas.roots, at).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(cas.intermediates.contains(&c), "{f}");
        }
    }
}
