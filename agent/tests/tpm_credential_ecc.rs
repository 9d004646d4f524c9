//! The software TPM2_MakeCredential for ECC endorsement keys (ephemeral ECDH, KDFe seed) against a real TPM's
//! TPM2_ActivateCredential (swtpm, ECC P-256 EK from the default template, an ECDSA AK under it). The RSA path
//! is exercised end to end in tests/tests/tpm_ek_activation.rs; this pins the ECC arithmetic.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::str::FromStr;

use sealroom_tests::swtpm::Swtpm;
use sealroom_verifier::tpm::credential::make_credential;
use sealroom_verifier::tpm::ek::EkPublicKey;
use sealroom_verifier::x509::Curve;
use tss_esapi::abstraction::{ak, ek};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{
    AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{Digest, EncryptedSecret, IdObject, Nonce, Public, SymmetricDefinition};
use tss_esapi::traits::Marshall;

#[test]
fn ecc_p256_credential_made_in_software_is_activated_by_the_tpm_and_only_for_its_ak() {
    let tpm = Swtpm::start().unwrap();
    let mut ctx =
        tss_esapi::Context::new(tss_esapi::tcti_ldr::TctiNameConf::from_str(&tpm.tcti()).unwrap()).unwrap();
    let ekh = ek::create_ek_object(&mut ctx, AsymmetricAlgorithm::Ecc, None).unwrap();
    let (ek_public, _, _) = ctx.read_public(ekh).unwrap();
    let Public::Ecc { unique, .. } = ek_public else { panic!("not an ECC EK") };
    let mut point = vec![4u8];
    point.extend_from_slice(unique.x().value());
    point.extend_from_slice(unique.y().value());
    assert_eq!(point.len(), 65, "P-256 EK");
    let ek_key = EkPublicKey::Ecc { curve: Curve::P256, point };
    let created =
        ak::create_ak(&mut ctx, ekh, HashingAlgorithm::Sha256, SignatureSchemeAlgorithm::EcDsa, None, None)
            .unwrap();
    let ak_public = created.out_public.marshall().unwrap();
    let akh = ak::load_ak(&mut ctx, ekh, None, created.out_private, created.out_public).unwrap();

    let activate = |ctx: &mut tss_esapi::Context, id_object: Vec<u8>, secret: Vec<u8>| {
        let session = ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .unwrap()
            .unwrap();
        let policy = PolicySession::try_from(session).unwrap();
        ctx.execute_with_nullauth_session(|c| {
            c.policy_secret(
                policy,
                AuthHandle::Endorsement,
                Nonce::default(),
                Digest::default(),
                Nonce::default(),
                None,
            )
        })
        .unwrap();
        ctx.set_sessions((Some(AuthSession::Password), Some(session), None));
        let r = ctx.activate_credential(
            akh,
            ekh,
            IdObject::try_from(id_object).unwrap(),
            EncryptedSecret::try_from(secret).unwrap(),
        );
        ctx.clear_sessions();
        ctx.flush_context(SessionHandle::from(session).into()).unwrap();
        r.map(|d| d.value().to_vec())
    };

    let secret = [0xc3u8; 32];
    let c = make_credential(&ek_key, &ak_public, &secret).unwrap();
    assert_eq!(activate(&mut ctx, c.id_object, c.encrypted_secret).unwrap(), secret);

    // The same EK, but the credential names another AK (one flag of its public area differs): the TPM's
    // integrity check refuses, since the loaded AK's name is not the one the credential was made for.
    let mut other_ak = ak_public.clone();
    other_ak[7] ^= 0x40; // userWithAuth: still a valid attestation-key shape, another name
    let c = make_credential(&ek_key, &other_ak, &secret).unwrap();
    assert!(activate(&mut ctx, c.id_object, c.encrypted_secret).is_err());
    ctx.flush_context(akh.into()).unwrap();
    ctx.flush_context(ekh.into()).unwrap();
}
