//! The TPM platform layer: which AK is trusted (a certificate chain to a pinned CA, or a pinned AK), every
//! quote's signature, qualifying data and PCR digest, and the PCR values the quotes prove.

use sealroom_measurements::evidence::PcrBank;
use serde::Serialize;

use super::ak_cert::{AkIdentity, verify_ak_certificate};
use super::credential::ActivatedAk;
use super::ek::EkIdentity;
use super::quote::{ExpectedExtraData, verify_quote};
use super::structures::Public;
use crate::error::{Error, Result};
use crate::x509::UnixTime;

const LAYER: &str = "tpm quote";

/// How the attestation key is trusted.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AkTrust {
    /// The AK certificate must chain to Google's embedded EK/AK roots (GCE vTPM).
    GoogleCa,
    /// The AK's TPMT_PUBLIC must equal this one (swtpm, or an AK enrolled out of band).
    Pinned(Vec<u8>),
    /// The AK was proven resident in a TPM whose EK certificate chains to a configured EK CA (credential
    /// activation, `super::credential::accept_activation`); the quote's AK must be that one.
    EkCertified(ActivatedAk),
}

/// One quote with the PCR values it covers.
#[derive(Debug, Clone)]
pub struct QuoteInput<'a> {
    /// TPMS_ATTEST.
    pub attest: &'a [u8],
    /// TPMT_SIGNATURE.
    pub signature: &'a [u8],
}

/// What verified TPM evidence proves.
#[derive(Debug, Clone, Serialize)]
pub struct TpmClaims {
    /// The AK certificate's identity, when trusted through a CA.
    pub ak: Option<AkIdentity>,
    /// The EK certificate that vouched for the AK through credential activation, when trusted that way.
    pub ek: Option<EkIdentity>,
    /// AK name algorithm and key type, for display.
    pub ak_key: String,
    /// TPM firmware version from the quote.
    pub firmware_version: u64,
    /// TPM reset count (changes on every reboot).
    pub reset_count: u32,
    /// The quoted PCR values (bank → index → hex).
    pub pcrs: Vec<(String, std::collections::BTreeMap<u32, String>)>,
    /// extraData, hex.
    pub extra_data: String,
}

/// Verified TPM evidence.
#[derive(Debug, Clone)]
pub struct VerifiedTpm {
    /// Claims for the attestation result.
    pub claims: TpmClaims,
    /// PCR values proven by the quotes.
    pub pcrs: Vec<PcrBank>,
}

/// Verifies TPM evidence: the AK, then every quote against `banks`.
///
/// # Errors
/// Every failed check.
pub fn verify_tpm(
    ak_public: &[u8],
    ak_cert_chain: &[Vec<u8>],
    quotes: &[QuoteInput<'_>],
    banks: &[PcrBank],
    expected: &ExpectedExtraData,
    trust: &AkTrust,
    at: UnixTime,
) -> Result<VerifiedTpm> {
    let ak = Public::parse(ak_public)?;
    let mut failures = Vec::new();
    let mut ek = None;
    let identity = match trust {
        AkTrust::GoogleCa => match verify_ak_certificate(ak_cert_chain, &ak.key, at) {
            Ok(id) => Some(id),
            Err(e) => {
                failures.push(e);
                None
            }
        },
        AkTrust::Pinned(pinned) => {
            if pinned.as_slice() != ak_public {
                failures.push(Error::check(LAYER, "AK public key is not the pinned AK"));
            }
            None
        }
        AkTrust::EkCertified(activated) => {
            if activated.ak_public() == ak_public {
                ek = Some(activated.ek().clone());
            } else {
                failures.push(Error::check(LAYER, "AK public key is not the AK activated against the EK"));
            }
            None
        }
    };
    if quotes.is_empty() {
        failures.push(Error::check(LAYER, "no quote"));
    }
    let mut proven: Vec<PcrBank> = Vec::new();
    let mut first = None;
    for q in quotes {
        match verify_quote(q.attest, q.signature, &ak, banks, expected) {
            Ok(v) => {
                for bank in v.pcrs.clone() {
                    if let Some(existing) = proven.iter_mut().find(|b| b.alg == bank.alg) {
                        existing.values.extend(bank.values);
                    } else {
                        proven.push(bank);
                    }
                }
                first.get_or_insert(v);
            }
            Err(e) => failures.push(e),
        }
    }
    Error::from_all(failures)?;
    let first = first.ok_or_else(|| Error::check(LAYER, "no quote"))?;
    let claims = TpmClaims {
        ak: identity,
        ek,
        ak_key: match &ak.key {
            super::structures::PublicKey::Rsa { modulus, .. } => format!("RSA-{}", modulus.len() * 8),
            super::structures::PublicKey::Ecc { curve, .. } => format!("ECC curve {curve:#06x}"),
        },
        firmware_version: first.attest.firmware_version,
        reset_count: first.attest.clock_info.reset_count,
        pcrs: proven
            .iter()
            .map(|b| (b.alg.name().to_owned(), b.values.iter().map(|(i, v)| (*i, hex::encode(v))).collect()))
            .collect(),
        extra_data: hex::encode(&first.attest.extra_data),
    };
    Ok(VerifiedTpm { claims, pcrs: proven })
}
