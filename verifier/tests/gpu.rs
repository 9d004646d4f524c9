//! NVIDIA H100 evidence verified offline with the real reports, chains and RIMs in testdata/gpu (see its
//! MANIFEST.md for provenance and the expected outcome of each file), at 2024-06-01T00:00:00Z.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use sealroom_verifier::gpu::{
    GpuArchitecture, GpuClaims, GpuTrust, Revocation, RevocationStatus, VerifiedRim, verify_device_chain,
    verify_gpu_report, verify_rim,
};
use sealroom_verifier::x509::{Certificate, UnixTime, parse_time};

const OLDER_REPORT: &str = include_str!("../testdata/gpu/nvtrust/attestationReport.txt");
const OLDER_CHAIN: &[u8] = include_bytes!("../testdata/gpu/nvtrust/gpuAkCertChain.txt");
const NEWER_REPORT: &str = include_str!("../testdata/gpu/nvtrust/hopperAttestationReport.txt");
const NEWER_CHAIN: &[u8] = include_bytes!("../testdata/gpu/nvtrust/hopperCertChain.txt");
const DRIVER_RIM: &[u8] = include_bytes!("../testdata/gpu/nvtrust/Driver_RIM_test_no_gpu.swidtag");
const VBIOS_RIM: &[u8] =
    include_bytes!("../testdata/gpu/nvtrust/1010_0200_882_96005E0001_test_no_gpu.swidtag");
const PROD_VBIOS_RIM: &[u8] = include_bytes!("../testdata/gpu/nvtrust/1010_0200_882_96005E0001_PROD.swidtag");
const OLDER_NONCE: &str = "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e";
const NEWER_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

fn at() -> UnixTime {
    parse_time("2024-06-01T00:00:00Z").unwrap()
}

fn nonce(text: &str) -> [u8; 32] {
    hex::decode(text).unwrap().try_into().unwrap()
}

fn report(text: &str) -> Vec<u8> {
    hex::decode(text.trim()).unwrap()
}

fn trust() -> GpuTrust {
    GpuTrust::nvidia().unwrap()
}

fn rims(files: &[&[u8]]) -> Vec<VerifiedRim> {
    files.iter().map(|xml| verify_rim(&trust(), xml, &Revocation::NotChecked, at()).unwrap()).collect()
}

fn verify(
    report_bytes: &[u8],
    chain_pem: &[u8],
    rim_files: &[&[u8]],
    nonce_hex: &str,
) -> Result<GpuClaims, Vec<String>> {
    let chain = Certificate::chain_from_pem(chain_pem).unwrap();
    let chain = verify_device_chain(&trust(), &chain, &Revocation::NotChecked, at()).unwrap();
    verify_gpu_report(report_bytes, &chain, &rims(rim_files), &nonce(nonce_hex), at())
        .map_err(|e| e.reasons())
}

#[test]
fn older_h100_report_verifies_end_to_end_against_both_rims() {
    let claims = verify(&report(OLDER_REPORT), OLDER_CHAIN, &[DRIVER_RIM, VBIOS_RIM], OLDER_NONCE).unwrap();
    assert_eq!(claims.architecture, GpuArchitecture::Hopper);
    assert_eq!(claims.chip, "GH100");
    assert_eq!(claims.driver_version, "545.00");
    assert_eq!(claims.vbios_version, "96.00.5e.00.01");
    assert_eq!(claims.driver_rim_id, "NV_GPU_DRIVER_GH100_545.00");
    assert_eq!(claims.vbios_rim_id, "NV_GPU_VBIOS_1010_0200_882_96005E0001");
    // 21 driver indices (7, 21-40) and 12 VBIOS indices (0-6, 8-12): every active one was compared.
    assert_eq!(claims.measurements_compared, 33);
    // The 2023 firmware reports no FWID; no revocation data was given, and the claims say so.
    assert!(!claims.fwid_bound);
    assert_eq!(claims.revocation, RevocationStatus::NotChecked);
    assert_eq!(claims.revocation.to_string(), "revocation not checked");
    assert_eq!(claims.attestation_cert_serial, "50948c723fc935c7bd14b7c22833dfbe1dfd1145");
}

#[test]
fn newer_h100_report_passes_signature_and_chain_but_has_no_matching_rim() {
    let reasons =
        verify(&report(NEWER_REPORT), NEWER_CHAIN, &[DRIVER_RIM, VBIOS_RIM], NEWER_NONCE).unwrap_err();
    // Only the reference values are missing: signature, nonce and FWID binding all held.
    let chain = verify_device_chain(
        &trust(),
        &Certificate::chain_from_pem(NEWER_CHAIN).unwrap(),
        &Revocation::NotChecked,
        at(),
    )
    .unwrap();
    assert_eq!(
        chain.leaf_fwid.map(hex::encode).as_deref(),
        Some(
            "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d"
        )
    );
    assert_eq!(
        reasons,
        [
            "gpu: no matching RIM for driver 550.90.07 on GH100",
            "gpu: no matching RIM for VBIOS 96.00.9f.00.01 on GH100",
        ]
    );
}

#[test]
fn attack_flipped_byte_in_the_signed_part_breaks_the_signature() {
    // 0x04: the nonce; 0x6B: block 2's digest; 0xE51: the driver-version TLV; 0xFB4: the last signed byte;
    // 0xFB5 and 0x1014: the first and last signature bytes (newer report; MANIFEST.md).
    let mut older = report(OLDER_REPORT);
    older[0x6B] ^= 0x01;
    let reasons = verify(&older, OLDER_CHAIN, &[DRIVER_RIM, VBIOS_RIM], OLDER_NONCE).unwrap_err();
    // The contents of an unsigned report are not compared: the refusal is the signature alone.
    assert_eq!(reasons, ["gpu: report signature invalid under 'GH100 A01 GSP FMC LF'"]);
    for at in [0x04, 0x6B, 0xE51, 0xFB4, 0xFB5, 0x1014] {
        let mut newer = report(NEWER_REPORT);
        newer[at] ^= 0x80;
        let reasons = verify(&newer, NEWER_CHAIN, &[], NEWER_NONCE).unwrap_err();
        assert_eq!(reasons, ["gpu: report signature invalid under 'GH100 A01 GSP FMC LF'"], "byte {at:#x}");
    }
    // The signature of one GPU does not verify under another GPU's attestation key.
    let reasons =
        verify(&report(OLDER_REPORT), NEWER_CHAIN, &[DRIVER_RIM, VBIOS_RIM], OLDER_NONCE).unwrap_err();
    assert_eq!(reasons, ["gpu: report signature invalid under 'GH100 A01 GSP FMC LF'"]);
}

#[test]
fn attack_replayed_report_with_another_nonce_is_refused() {
    let reasons =
        verify(&report(OLDER_REPORT), OLDER_CHAIN, &[DRIVER_RIM, VBIOS_RIM], NEWER_NONCE).unwrap_err();
    assert_eq!(reasons, [format!("gpu: nonce mismatch (report {OLDER_NONCE}, expected {NEWER_NONCE})")]);
}

#[test]
fn attack_production_vbios_rim_reports_each_mismatching_index() {
    let reasons =
        verify(&report(OLDER_REPORT), OLDER_CHAIN, &[DRIVER_RIM, PROD_VBIOS_RIM], OLDER_NONCE).unwrap_err();
    let indices: Vec<&str> = reasons.iter().map(|r| r.split(':').nth(1).unwrap().trim()).collect();
    assert_eq!(
        indices,
        [
            "VBIOS RIM index 1 (block 2)",
            "VBIOS RIM index 2 (block 3)",
            "VBIOS RIM index 3 (block 4)",
            "VBIOS RIM index 9 (block 10)"
        ]
    );
    assert!(reasons.iter().all(|r| r.ends_with("matches none of 1 golden values")), "{reasons:?}");
}

#[test]
fn attack_two_authentic_rims_for_one_version_are_ambiguous() {
    let reasons =
        verify(&report(OLDER_REPORT), OLDER_CHAIN, &[DRIVER_RIM, VBIOS_RIM, PROD_VBIOS_RIM], OLDER_NONCE)
            .unwrap_err();
    assert_eq!(reasons, ["gpu: 2 RIMs match VBIOS 96.00.5e.00.01 on GH100; supply one"]);
}

#[test]
fn attack_rim_with_a_broken_xml_signature_is_refused() {
    let text = std::str::from_utf8(VBIOS_RIM).unwrap();
    // Change one base64 character of SignatureValue.
    let start = text.find("<ds:SignatureValue>").unwrap() + "<ds:SignatureValue>".len();
    let mut forged = text.to_owned();
    let replacement = if &text[start + 10..start + 11] == "A" { "B" } else { "A" };
    forged.replace_range(start + 10..start + 11, replacement);
    let err = verify_rim(&trust(), forged.as_bytes(), &Revocation::NotChecked, at()).unwrap_err().to_string();
    assert_eq!(err, "gpu rim: XML signature: SignatureValue does not verify under 'HCC RIM L4 Signer'");
    // A golden value swapped for the measured one (the attack a RIM forger wants): the digest breaks.
    let forged = text.replacen("active=\"True\"", "active=\"False\"", 1);
    let err = verify_rim(&trust(), forged.as_bytes(), &Revocation::NotChecked, at()).unwrap_err().to_string();
    assert_eq!(
        err,
        "gpu rim: XML signature: document digest does not match DigestValue (the RIM was altered)"
    );
}

#[test]
fn rim_chain_has_expired_by_2026_12_01() {
    let later = parse_time("2026-12-01T00:00:00Z").unwrap();
    let err = verify_rim(&trust(), DRIVER_RIM, &Revocation::NotChecked, later).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "gpu rim: signer chain: certificate 'HCC RIM L4 Signer': expired (notAfter 2025-06-26T06:10:12Z"
        ),
        "{err}"
    );
    // RIMs verified (cached) earlier are refused when a report is checked after their chain expired.
    let chain = Certificate::chain_from_pem(OLDER_CHAIN).unwrap();
    let chain = verify_device_chain(&trust(), &chain, &Revocation::NotChecked, later).unwrap();
    let reasons = verify_gpu_report(
        &report(OLDER_REPORT),
        &chain,
        &rims(&[DRIVER_RIM, VBIOS_RIM]),
        &nonce(OLDER_NONCE),
        later,
    )
    .unwrap_err()
    .reasons();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].starts_with("gpu: driver RIM f0d3a263"), "{reasons:?}");
    assert!(reasons[0].contains("not valid at 2026-12-01T00:00:00Z"), "{reasons:?}");
}

#[test]
fn attack_chain_with_a_missing_intermediate_is_refused() {
    let mut chain = Certificate::chain_from_pem(OLDER_CHAIN).unwrap();
    assert_eq!(chain[2].subject_cn(), "NVIDIA GH100 Provisioner ICA 1");
    chain.remove(2);
    let err = verify_device_chain(&trust(), &chain, &Revocation::NotChecked, at()).unwrap_err().to_string();
    assert!(err.starts_with("gpu: device chain: certificate 'GH100 A01 GSP BROM': issuer"), "{err}");
    assert!(err.contains("is not 'NVIDIA GH100 Identity'"), "{err}");
}

#[test]
fn attack_device_and_rim_anchors_are_not_interchangeable() {
    // A RIM signing chain (NVIDIA-signed, but under the RIM root) is not a device chain.
    let rim = verify_rim(&trust(), DRIVER_RIM, &Revocation::NotChecked, at()).unwrap();
    let err = verify_device_chain(&trust(), &rim.rim.signer_chain, &Revocation::NotChecked, at())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "gpu: device chain: certificate 'NVIDIA CoRIM signing Root CA': self-issued root is not a pinned anchor"
    );
}

#[test]
fn attack_truncated_report_is_refused() {
    let full = report(OLDER_REPORT);
    let err =
        verify(&full[..full.len() - 10], OLDER_CHAIN, &[DRIVER_RIM, VBIOS_RIM], OLDER_NONCE).unwrap_err();
    assert_eq!(err, ["gpu report: signature at offset 0xf71: needs 96 bytes, 86 left"]);
    let err = verify(&full[..0x100], OLDER_CHAIN, &[], OLDER_NONCE).unwrap_err();
    assert_eq!(err, ["gpu report: measurement record at offset 0x2d: needs 3520 bytes, 211 left"]);
}

#[test]
fn supplied_revocation_data_must_cover_the_chain() {
    // Asked to check revocation without a CRL for the chain: fail closed, naming the certificate.
    let chain = Certificate::chain_from_pem(OLDER_CHAIN).unwrap();
    let err =
        verify_device_chain(&trust(), &chain, &Revocation::Crls(Vec::new()), at()).unwrap_err().to_string();
    assert_eq!(
        err,
        "gpu: device chain: no valid CRL of 'NVIDIA GH100 Provisioner ICA 1' for 'GH100 A01 GSP BROM'"
    );
    let err = verify_rim(&trust(), VBIOS_RIM, &Revocation::Crls(Vec::new()), at()).unwrap_err().to_string();
    assert!(err.starts_with("gpu rim: signer chain: no valid CRL of 'NVIDIA Reference Value L3 GH100 001' for 'HCC RIM L4 Signer'"), "{err}");
}
