//! The broker's EK path (docs/tpm-ek.md): a TPM attestation key is trusted because credential activation proves
//! it resident in a TPM whose EK certificate chains to a configured EK CA (`sealroom broker serve --tpm-ek-ca`),
//! never because a machine presented it.
//!
//! Stateless, like the MACed nonces ([`crate::nonce_mac`]): `Challenge` makes the credential
//! (TPM2_MakeCredential, [`sealroom_verifier::tpm::credential`]) for a secret that is an HMAC over the nonce, the
//! AK's name and the EK certificate's digest, and `Release` recomputes it from what it is shown: the nonce, the
//! evidence's AK and the EK certificate. Nothing is stored between the calls, so a replica other than the one
//! that answered `Challenge` can check the activation when the MAC key is shared (`--nonce-key`). The nonce in
//! the MAC ties an activation to one challenge (single use comes with the nonce); the AK name to the key whose
//! quote is then trusted; the EK digest to the certificate whose identity the result names.

use aws_lc_rs::hmac;
use sealroom_measurements::binding::Nonce;
use sealroom_proto::keybroker::v1 as pb;
use sealroom_verifier::tpm::credential::{
    ActivatedAk, Credential, accept_activation, issue_challenge, object_name,
};
use sealroom_verifier::x509::{Certificate, UnixTime};
use sha2::{Digest, Sha256};

use crate::Randomness;
use crate::error::{Error, Result};

/// Largest EK certificate accepted (keybroker.proto).
pub const MAX_EK_CERTIFICATE: usize = 8 << 10;
/// Largest AK TPMT_PUBLIC accepted (keybroker.proto).
pub const MAX_AK_PUBLIC: usize = 1 << 10;
/// The refusal rule (and layer) of everything on this path.
pub const RULE: &str = "tpm credential";

const KEY_DOMAIN: &[u8] = b"sealroom.keybroker.v1/tpm-credential-key\0";
const SECRET_DOMAIN: &[u8] = b"sealroom.keybroker.v1/tpm-credential\0";

/// The configured EK CAs and the MAC key of credential secrets.
pub struct EkPath {
    cas: Vec<Certificate>,
    key: hmac::Key,
}

impl std::fmt::Debug for EkPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EkPath({} EK CAs)", self.cas.len())
    }
}

impl EkPath {
    /// The EK path under `cas` with its MAC key derived from `secret` (32 bytes: replicas pass their shared nonce
    /// MAC key, whose derived key is distinct from the nonces' own).
    ///
    /// # Errors
    /// When no CA is given or the secret is not 32 bytes.
    pub fn new(cas: Vec<Certificate>, secret: &[u8]) -> Result<Self> {
        if cas.is_empty() {
            return Err(Error::check(RULE, "no EK CA certificate given (--tpm-ek-ca)"));
        }
        if secret.len() != 32 {
            return Err(Error::check(RULE, format!("MAC key of {} bytes, expected 32", secret.len())));
        }
        let derived = Sha256::new().chain_update(KEY_DOMAIN).chain_update(secret).finalize();
        Ok(Self { cas, key: hmac::Key::new(hmac::HMAC_SHA256, &derived) })
    }

    /// The EK path under `cas` with a random MAC key (one process: its credentials die with it).
    ///
    /// # Errors
    /// As [`EkPath::new`], or when randomness fails.
    pub fn generate(cas: Vec<Certificate>, rng: &dyn Randomness) -> Result<Self> {
        let mut secret = [0u8; 32];
        rng.fill(&mut secret)?;
        Self::new(cas, &secret)
    }

    fn secret(&self, nonce: &Nonce, ak_public: &[u8], ek_certificate: &[u8]) -> Result<[u8; 32]> {
        let name = object_name(ak_public).map_err(|e| e.within(RULE, "AK"))?;
        let name_len = u16::try_from(name.len()).map_err(|_| Error::check(RULE, "AK name too long"))?;
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(SECRET_DOMAIN);
        ctx.update(&nonce.0);
        ctx.update(&name_len.to_be_bytes());
        ctx.update(&name);
        ctx.update(&Sha256::digest(ek_certificate));
        let tag = ctx.sign();
        tag.as_ref().try_into().map_err(|_| Error::check(RULE, "HMAC-SHA256 is not 32 bytes"))
    }

    /// `Challenge`'s part: the EK certificate must chain to a configured CA at `at` and the AK must be a
    /// TPM-resident restricted signing key; then the credential only that TPM can activate, for this nonce.
    ///
    /// # Errors
    /// One line: oversized fields, the EK certificate's refusal, or the AK's.
    pub fn credential(
        &self,
        nonce: &Nonce,
        ek_certificate: &[u8],
        ak_public: &[u8],
        at: UnixTime,
    ) -> Result<Credential> {
        check_sizes(ek_certificate, ak_public)?;
        let secret = self.secret(nonce, ak_public, ek_certificate)?;
        let (_, credential) = issue_challenge(ek_certificate, &[], &self.cas, ak_public, &secret, at)?;
        Ok(credential)
    }

    /// `Release`'s part: the activated secret must be the MAC for this nonce, the evidence's AK (`ak_public`)
    /// and the presented EK certificate, which must still chain to a configured CA at `at`.
    ///
    /// # Errors
    /// "tpm credential: the activated secret does not match …" (another nonce, AK, EK or TPM), or the EK
    /// certificate's refusal.
    pub fn activated(
        &self,
        nonce: &Nonce,
        activation: &pb::TpmActivation,
        ak_public: &[u8],
        at: UnixTime,
    ) -> Result<ActivatedAk> {
        check_sizes(&activation.ek_certificate, ak_public)?;
        let issued = self.secret(nonce, ak_public, &activation.ek_certificate)?;
        accept_activation(
            &activation.ek_certificate,
            &[],
            &self.cas,
            ak_public,
            &issued,
            &activation.secret,
            at,
        )
    }
}

fn check_sizes(ek_certificate: &[u8], ak_public: &[u8]) -> Result<()> {
    for (field, len, max) in
        [("EK certificate", ek_certificate.len(), MAX_EK_CERTIFICATE), ("AK", ak_public.len(), MAX_AK_PUBLIC)]
    {
        if len == 0 || len > max {
            return Err(Error::check(RULE, format!("{field} of {len} bytes, expected 1..={max}")));
        }
    }
    Ok(())
}
