//! go-tpm-tools `attest.Attestation` (proto/attest.proto, proto/tpm.proto), decoded with hand-written prost
//! messages: GCE vTPM evidence as Google's agents produce it. Only the fields sealroom checks are declared;
//! prost skips the others (the SEV-SNP and TDX oneof members).

use std::collections::BTreeMap;

use sealroom_measurements::evidence::{HashAlg, PcrBank, TpmEvidence, limits};

use crate::error::{Error, Result};

const LAYER: &str = "gce attestation";

/// `attest.GCEInstanceInfo`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GceInstanceInfo {
    /// Zone.
    #[prost(string, tag = "1")]
    pub zone: String,
    /// Project id.
    #[prost(string, tag = "2")]
    pub project_id: String,
    /// Project number.
    #[prost(uint64, tag = "3")]
    pub project_number: u64,
    /// Instance name.
    #[prost(string, tag = "4")]
    pub instance_name: String,
    /// Instance id.
    #[prost(uint64, tag = "5")]
    pub instance_id: u64,
}

/// `tpm.PCRs`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Pcrs {
    /// TPM_ALG_ID of the bank.
    #[prost(int32, tag = "1")]
    pub hash: i32,
    /// Index → value.
    #[prost(btree_map = "uint32, bytes", tag = "2")]
    pub pcrs: BTreeMap<u32, Vec<u8>>,
}

/// `tpm.Quote`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Quote {
    /// TPMS_ATTEST.
    #[prost(bytes = "vec", tag = "1")]
    pub quote: Vec<u8>,
    /// TPMT_SIGNATURE.
    #[prost(bytes = "vec", tag = "2")]
    pub raw_sig: Vec<u8>,
    /// PCR values of the quoted bank.
    #[prost(message, optional, tag = "3")]
    pub pcrs: Option<Pcrs>,
}

/// `attest.Attestation`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Attestation {
    /// AK TPMT_PUBLIC.
    #[prost(bytes = "vec", tag = "1")]
    pub ak_pub: Vec<u8>,
    /// One quote per PCR bank.
    #[prost(message, repeated, tag = "2")]
    pub quotes: Vec<Quote>,
    /// TCG binary event log.
    #[prost(bytes = "vec", tag = "3")]
    pub event_log: Vec<u8>,
    /// Instance info (self-reported, unsigned: the AK certificate extension is what counts).
    #[prost(message, optional, tag = "4")]
    pub instance_info: Option<GceInstanceInfo>,
    /// Canonical event log.
    #[prost(bytes = "vec", tag = "5")]
    pub canonical_event_log: Vec<u8>,
    /// AK certificate, DER.
    #[prost(bytes = "vec", tag = "6")]
    pub ak_cert: Vec<u8>,
    /// Intermediate certificates, DER.
    #[prost(bytes = "vec", repeated, tag = "7")]
    pub intermediate_certs: Vec<Vec<u8>>,
}

/// One quote of a GCE attestation in sealroom's model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GceQuote {
    /// TPMS_ATTEST.
    pub attest: Vec<u8>,
    /// TPMT_SIGNATURE.
    pub signature: Vec<u8>,
    /// The quoted bank's values.
    pub bank: PcrBank,
}

/// A decoded GCE attestation, limits checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GceAttestation {
    /// AK TPMT_PUBLIC.
    pub ak_public: Vec<u8>,
    /// Quotes, one per bank.
    pub quotes: Vec<GceQuote>,
    /// AK certificate then intermediates (DER), as in `TpmEvidence.ak_cert_chain`.
    pub ak_cert_chain: Vec<Vec<u8>>,
    /// UEFI event log.
    pub event_log: Vec<u8>,
}

fn limit(field: &'static str, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(Error::check(LAYER, format!("{field} is {len} bytes, limit {max}")));
    }
    Ok(())
}

impl GceAttestation {
    /// Decodes protobuf bytes.
    ///
    /// # Errors
    /// On invalid protobuf, a missing AK or quote, unknown banks, or oversized fields.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let msg = <Attestation as prost::Message>::decode(bytes)
            .map_err(|e| Error::check(LAYER, format!("not a go-tpm-tools Attestation protobuf: {e}")))?;
        if msg.ak_pub.is_empty() || msg.quotes.is_empty() {
            return Err(Error::check(LAYER, "no AK public key or no quotes"));
        }
        limit("ak_pub", msg.ak_pub.len(), limits::TPM_AK_PUBLIC)?;
        limit("event_log", msg.event_log.len(), limits::EVENT_LOG)?;
        if msg.quotes.len() > limits::PCR_BANKS || msg.intermediate_certs.len() + 1 > limits::CERT_COUNT {
            return Err(Error::check(LAYER, "too many quotes or certificates"));
        }
        let mut quotes = Vec::new();
        for q in msg.quotes {
            limit("quote", q.quote.len(), limits::TPM_ATTEST)?;
            limit("raw_sig", q.raw_sig.len(), limits::TPM_SIGNATURE)?;
            let pcrs = q.pcrs.ok_or_else(|| Error::check(LAYER, "quote without PCR values"))?;
            let alg = u16::try_from(pcrs.hash)
                .ok()
                .and_then(HashAlg::from_tpm_alg_id)
                .ok_or_else(|| Error::check(LAYER, format!("PCR bank hash {} unknown", pcrs.hash)))?;
            for (idx, v) in &pcrs.pcrs {
                if *idx > 23 || v.len() != alg.digest_len() {
                    return Err(Error::check(LAYER, format!("{} PCR {idx} malformed", alg.name())));
                }
            }
            quotes.push(GceQuote {
                attest: q.quote,
                signature: q.raw_sig,
                bank: PcrBank { alg, values: pcrs.pcrs },
            });
        }
        let mut ak_cert_chain = Vec::new();
        if !msg.ak_cert.is_empty() {
            ak_cert_chain.push(msg.ak_cert);
            ak_cert_chain.extend(msg.intermediate_certs);
        }
        for c in &ak_cert_chain {
            limit("certificate", c.len(), limits::CERT_LEN)?;
        }
        Ok(Self { ak_public: msg.ak_pub, quotes, ak_cert_chain, event_log: msg.event_log })
    }

    /// The quote over a bank, as sealroom `TpmEvidence` (with all banks' PCR values).
    #[must_use]
    pub fn to_tpm_evidence(&self, quote: &GceQuote) -> TpmEvidence {
        TpmEvidence {
            attest: quote.attest.clone(),
            signature: quote.signature.clone(),
            ak_public: self.ak_public.clone(),
            ak_cert_chain: self.ak_cert_chain.clone(),
            pcr_banks: self.quotes.iter().map(|q| q.bank.clone()).collect(),
            uefi_event_log: self.event_log.clone(),
        }
    }
}
