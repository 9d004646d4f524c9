//! Real EK certificates (GCE vTPM, RSA and ECC, "UCA" with the TCG subjectAltName and "PCA" without; corpus in
//! verifier/testdata/tpm, MANIFEST.md there): parsing, the TCG attributes, the chain to a configured EK CA, and
//! the refusals (another CA, an AK certificate posing as an EK certificate, expiry). Credential activation
//! against a real TPM is in tpm_swtpm.rs.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use sealroom_verifier::tpm::credential::{SECRET_LEN, issue_challenge, make_credential, object_name};
use sealroom_verifier::tpm::ek::{EkCertificate, EkPublicKey};
use sealroom_verifier::x509::{Certificate, parse_time};

fn data(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn der(path: &str) -> Vec<u8> {
    Certificate::chain_from_pem_or_der(&data(path)).unwrap().remove(0).der().to_vec()
}

fn cert(path: &str) -> Certificate {
    Certificate::from_der(&der(path)).unwrap()
}

const AT: &str = "2024-01-01T00:00:00Z";

#[test]
fn gce_uca_ek_certificates_name_the_tpm_in_the_tcg_subject_alt_name() {
    for (file, key) in [("uca_tpm_rsa_enc_cert", "RSA-2048"), ("uca_tpm_ecc_enc_cert", "ECC-P256")] {
        let ek = EkCertificate::parse(&der(&format!("tpm/gce-ak-ek-certs/{file}.pem"))).unwrap();
        let d = ek.device();
        assert_eq!(d.manufacturer, "id:474F4F47", "{file}");
        assert_eq!(d.manufacturer_ascii, "GOOG", "{file}");
        assert_eq!(d.model, "vTPM", "{file}");
        assert_eq!(d.version, "id:20160511", "{file}");
        let id = ek
            .verify(
                &[cert("certs/google/tpm_ek_intermediate_3.crt")],
                &[cert("certs/google/tpm_ek_root_1.cer")],
                parse_time(AT).unwrap(),
            )
            .unwrap();
        assert_eq!(id.key, key);
        assert_eq!(id.subject, "", "UCA EK certificates have an empty subject");
        assert_eq!(id.device, d.clone());
        match (ek.key(), key) {
            (EkPublicKey::Rsa { n, .. }, "RSA-2048") => assert_eq!(n.len(), 256),
            (EkPublicKey::Ecc { point, .. }, "ECC-P256") => assert_eq!(point.len(), 65),
            other => panic!("{file}: unexpected key {other:?}"),
        }
    }
}

#[test]
fn gce_pca_ek_certificates_chain_without_a_san() {
    for file in ["pca_tpm_rsa_enc_cert", "pca_tpm_ecc_enc_cert"] {
        let ek = EkCertificate::parse(&der(&format!("tpm/gce-ak-ek-certs/{file}.pem"))).unwrap();
        assert_eq!(ek.device().manufacturer, "", "{file}: PCA certificates carry no TCG SAN");
        // The operator may pin the intermediate itself, or the root with the intermediate supplied by the TPM.
        let at = parse_time(AT).unwrap();
        ek.verify(&[], &[cert("certs/google/gcp_ek_ak_ca_intermediate_v3.crt")], at).unwrap();
        let id = ek
            .verify(
                &[cert("certs/google/gcp_ek_ak_ca_intermediate_v3.crt")],
                &[cert("certs/google/gcp_ek_ak_ca_root.crt")],
                at,
            )
            .unwrap();
        assert_eq!(id.issuer, "EK/AK CA Intermediate");
    }
}

#[test]
fn attack_ek_certificate_from_another_ca_is_refused() {
    // A genuine EK certificate, but not under the CA this verifier was configured with.
    let ek = EkCertificate::parse(&der("tpm/gce-ak-ek-certs/uca_tpm_rsa_enc_cert.pem")).unwrap();
    let err = ek
        .verify(
            &[cert("certs/google/tpm_ek_intermediate_3.crt")],
            &[cert("certs/google/gcp_ek_ak_ca_root.crt")],
            parse_time(AT).unwrap(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("tpm ek certificate: "), "{err}");
    assert!(err.contains("is not a configured EK CA"), "{err}");
    // Without the TPM-supplied intermediate it cannot reach the root either.
    let err = ek.verify(&[], &[cert("certs/google/tpm_ek_root_1.cer")], parse_time(AT).unwrap()).unwrap_err();
    assert!(err.to_string().contains("is not a configured EK CA"), "{err}");
    // And no CA at all is a refusal, not an acceptance.
    let err = ek.verify(&[], &[], parse_time(AT).unwrap()).unwrap_err();
    assert_eq!(err.to_string(), "tpm ek certificate: no EK CA configured");
}

#[test]
fn attack_ak_certificate_posing_as_ek_certificate_is_refused() {
    // GCE AK certificates chain to the same CA but certify signing keys: they are not EK certificates.
    let err = EkCertificate::parse(&der("tpm/gce-ak-ek-certs/uca_tpm_rsa_sign_cert.pem")).unwrap_err();
    assert!(err.to_string().contains("RSA EK without keyEncipherment"), "{err}");
    let err = EkCertificate::parse(&der("tpm/gce-ak-ek-certs/uca_tpm_ecc_sign_cert.pem")).unwrap_err();
    assert!(err.to_string().contains("ECC EK without keyAgreement"), "{err}");
    // A CA certificate is not an EK certificate either.
    let err = EkCertificate::parse(&der("certs/google/tpm_ek_intermediate_3.crt")).unwrap_err();
    assert!(err.to_string().contains("an EK certificate is an end entity"), "{err}");
}

#[test]
fn expired_ek_certificate_is_refused() {
    let ek = EkCertificate::parse(&der("tpm/gce-ak-ek-certs/uca_tpm_ecc_enc_cert.pem")).unwrap();
    let err = ek
        .verify(
            &[cert("certs/google/tpm_ek_intermediate_3.crt")],
            &[cert("certs/google/tpm_ek_root_1.cer")],
            parse_time("2060-01-01T00:00:00Z").unwrap(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn garbage_and_oversized_ek_certificates_are_refused() {
    assert!(EkCertificate::parse(&[0x30, 0x03, 0x02, 0x01]).is_err());
    let err = EkCertificate::parse(&vec![0u8; 9000]).unwrap_err();
    assert!(err.to_string().contains("limit 8192"), "{err}");
}

/// The AK of the real GCE attestation in the corpus (an RSA restricted signing key).
fn gce_ak() -> Vec<u8> {
    let att = sealroom_verifier::tpm::gce_proto::GceAttestation::decode(&data(
        "tpm/attestations/gce-cos-85-nonce9009.pb",
    ))
    .unwrap();
    att.ak_public
}

#[test]
fn credentials_for_real_ek_keys_have_the_tpm_shapes() {
    let ak = gce_ak();
    let name = object_name(&ak).unwrap();
    assert_eq!(name.len(), 34);
    assert_eq!(name[..2], [0x00, 0x0b], "SHA-256 name algorithm");
    let secret = [7u8; SECRET_LEN];
    let rsa = EkCertificate::parse(&der("tpm/gce-ak-ek-certs/uca_tpm_rsa_enc_cert.pem")).unwrap();
    let c = make_credential(rsa.key(), &ak, &secret).unwrap();
    assert_eq!(c.encrypted_secret.len(), 256, "OAEP ciphertext of an RSA 2048 EK");
    // integrityHMAC (2 + 32) || encIdentity (2 + 32)
    assert_eq!(c.id_object.len(), 68);
    assert_eq!(c.id_object[..2], [0, 32]);
    let ecc = EkCertificate::parse(&der("tpm/gce-ak-ek-certs/uca_tpm_ecc_enc_cert.pem")).unwrap();
    let c2 = make_credential(ecc.key(), &ak, &secret).unwrap();
    assert_eq!(c2.encrypted_secret.len(), 2 + 32 + 2 + 32, "TPMS_ECC_POINT of an ephemeral P-256 key");
    assert_eq!(c2.id_object.len(), 68);
    // Fresh randomness per credential: the same inputs never give the same blob.
    assert_ne!(make_credential(rsa.key(), &ak, &secret).unwrap(), c);
}

#[test]
fn attack_credential_for_a_non_resident_key_is_refused() {
    // An AK without fixedTPM (clear the bit): the operator could hold it outside any TPM.
    let mut ak = gce_ak();
    let attrs = u32::from_be_bytes(ak[4..8].try_into().unwrap()) & !(1 << 1);
    ak[4..8].copy_from_slice(&attrs.to_be_bytes());
    let rsa = EkCertificate::parse(&der("tpm/gce-ak-ek-certs/uca_tpm_rsa_enc_cert.pem")).unwrap();
    let err = make_credential(rsa.key(), &ak, &[1u8; 32]).unwrap_err().to_string();
    assert!(err.starts_with("tpm credential: the AK is not a TPM-resident restricted signing key"), "{err}");
    // The whole challenge refuses too, before anything is encrypted.
    let err = issue_challenge(
        &der("tpm/gce-ak-ek-certs/uca_tpm_rsa_enc_cert.pem"),
        &[der("certs/google/tpm_ek_intermediate_3.crt")],
        &[cert("certs/google/tpm_ek_root_1.cer")],
        &ak,
        &[1u8; 32],
        parse_time(AT).unwrap(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not a TPM-resident"), "{err}");
}
