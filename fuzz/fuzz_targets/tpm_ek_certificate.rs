//! TPM EK certificates (TCG EK Credential Profile: key, keyUsage, EKU, the subjectAltName TPM attributes) and,
//! for every one that parses, TPM2_MakeCredential with its key for a fixed RSA AK: a certificate from an
//! untrusted agent must not make the verifier panic before or after its CA check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroom_verifier::tpm::credential::make_credential;
use sealroom_verifier::tpm::ek::EkCertificate;

/// A restricted RSA signing key's TPMT_PUBLIC (fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth,
/// restricted, sign; RSASSA-SHA256; 2048-bit modulus of 0x5a bytes).
fn ak() -> Vec<u8> {
    let mut p = vec![0x00, 0x01, 0x00, 0x0b, 0x00, 0x05, 0x00, 0x72, 0x00, 0x00, 0x00, 0x10];
    p.extend_from_slice(&[0x00, 0x14, 0x00, 0x0b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00]);
    p.extend(std::iter::repeat_n(0x5a, 256));
    p
}

fuzz_target!(|data: &[u8]| {
    if let Ok(ek) = EkCertificate::parse(data) {
        let _ = make_credential(ek.key(), &ak(), &[1; 32]);
    }
});
