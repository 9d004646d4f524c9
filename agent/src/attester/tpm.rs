//! TPM 2.0 attester (tss-esapi 7.7 over tpm2-tss): quotes every allocated PCR bank with an attestation key.
//!
//! AK choice: the GCE AK (template and certificate in NV, ECC preferred over RSA) when the platform provides
//! one, otherwise an ECC P-256 restricted signing key created under the ECC endorsement key. The AK stays loaded
//! for the agent's lifetime (one transient slot); every other transient object and session is flushed at once,
//! because swtpm and /dev/tpm0 have no resource manager.
//!
//! PCR values are cached between quotes: each quote's `pcrDigest` is checked against the cached values, and on
//! any difference (someone else extended a PCR) the values are read again and the quote retried, so the cached
//! path costs one TPM command per request and a stale value is never returned.

use std::collections::BTreeMap;
use std::str::FromStr;

use sealroom_measurements::binding::{Nonce, TeePublicKey, binding_digest};
use sealroom_measurements::digest::Hasher;
use sealroom_measurements::evidence::{HashAlg, PcrBank, Platform, TpmEvidence, limits};
use tss_esapi::Context;
use tss_esapi::abstraction::{ak, ek};
use tss_esapi::constants::CapabilityType;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{
    AuthHandle, KeyHandle, NvIndexHandle, NvIndexTpmHandle, ObjectHandle, PcrHandle, SessionHandle, TpmHandle,
};
use tss_esapi::interface_types::algorithm::{
    AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
};
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    AttestInfo, CapabilityData, Data, Digest, DigestValues, EncryptedSecret, IdObject, Nonce as TpmNonce,
    PcrSelectionList, PcrSlot, Public, Signature, SignatureScheme, SymmetricDefinition,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};

use super::{Attester, EventDigests, Part};
use crate::error::{Error, Result};
use crate::paths::{KernelPaths, read_optional};

const NAME: &str = "tpm";
/// GCE: RSA AK certificate, RSA AK template, ECC AK certificate, ECC AK template.
const GCE_AK_CERT_RSA: u32 = 0x01c1_0000;
const GCE_AK_TEMPLATE_RSA: u32 = 0x01c1_0001;
const GCE_AK_CERT_ECC: u32 = 0x01c1_0002;
const GCE_AK_TEMPLATE_ECC: u32 = 0x01c1_0003;
/// TCG EK Credential Profile: NV indices of the EK certificates for the default (low-range) templates, RSA 2048
/// first (swtpm, GCE, Azure and most discrete TPMs provision it), then ECC P-256.
const EK_CERT_RSA_2048: u32 = 0x01c0_0002;
const EK_CERT_ECC_P256: u32 = 0x01c0_000a;
/// PCR read returns at most 8 values per command.
const PCRS_PER_READ: usize = 8;
/// The runtime PCR (docs/architecture.md).
pub const RUNTIME_PCR: PcrHandle = PcrHandle::Pcr15;

fn tss(what: &'static str) -> impl Fn(tss_esapi::Error) -> Error {
    move |e| Error::attester(NAME, format!("{what}: {e}"))
}

/// Where the attestation key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AkSource {
    /// GCE ECC AK from NV 0x01c10003 (certificate 0x01c10002).
    GceEcc,
    /// GCE RSA AK from NV 0x01c10001 (certificate 0x01c10000).
    GceRsa,
    /// ECC P-256 AK created under the ECC EK by this agent (no certificate).
    CreatedUnderEk,
    /// Azure CVM: the paravisor's persistent RSA AK at 0x81000003 (HCLAkPub; certificate at NV 0x01c101d0).
    AzureVtpm,
}

/// Azure vTPM: persistent AK handle and the NV index of its certificate.
pub const AZURE_AK_HANDLE: u32 = 0x8100_0003;
/// Azure vTPM: NV index of the AK certificate (issued by Azure, when provisioned).
pub const AZURE_AK_CERT: u32 = 0x01c1_01d0;

/// A TPM hash algorithm as sealroom names it.
fn to_hash_alg(h: HashingAlgorithm) -> Option<HashAlg> {
    match h {
        HashingAlgorithm::Sha1 => Some(HashAlg::Sha1),
        HashingAlgorithm::Sha256 => Some(HashAlg::Sha256),
        HashingAlgorithm::Sha384 => Some(HashAlg::Sha384),
        HashingAlgorithm::Sha512 => Some(HashAlg::Sha512),
        _ => None,
    }
}

fn to_tss_alg(h: HashAlg) -> HashingAlgorithm {
    match h {
        HashAlg::Sha1 => HashingAlgorithm::Sha1,
        HashAlg::Sha384 => HashingAlgorithm::Sha384,
        HashAlg::Sha512 => HashingAlgorithm::Sha512,
        _ => HashingAlgorithm::Sha256,
    }
}

fn slot(index: u32) -> Result<PcrSlot> {
    let bit = 1u32.checked_shl(index).ok_or_else(|| Error::attester(NAME, format!("PCR index {index}")))?;
    PcrSlot::try_from(bit).map_err(tss("pcr slot"))
}

fn slot_index(slot: PcrSlot) -> u32 {
    u32::from(slot).trailing_zeros()
}

/// The TPM attester. Owns the TPM context; dropping it flushes the AK.
#[derive(Debug)]
pub struct TpmAttester {
    ctx: Context,
    ak: KeyHandle,
    ak_public: Vec<u8>,
    ak_source: AkSource,
    ak_cert_chain: Vec<Vec<u8>>,
    /// The EK certificate from NV and the EK's algorithm, when the TPM was provisioned with one.
    ek_cert: Option<(AsymmetricAlgorithm, Vec<u8>)>,
    /// Allocated banks and their PCR indices: every one is extended by runtime events.
    banks: Vec<(HashAlg, Vec<u32>)>,
    /// The banks quoted and returned (all allocated ones, or Azure's SHA-256 PCRs 0..=23).
    quoted: Vec<(HashAlg, Vec<u32>)>,
    selection: PcrSelectionList,
    /// PCR values believed current; checked against every quote's pcrDigest.
    cache: Option<Vec<PcrBank>>,
    uefi_event_log: Vec<u8>,
}

impl TpmAttester {
    /// Opens the TPM named by a TCTI string (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`), picks or
    /// creates the AK and reads the allocated banks and the UEFI event log under `paths`.
    ///
    /// # Errors
    /// When the TPM cannot be reached or refuses a command.
    pub fn open(tcti: &str, paths: &KernelPaths) -> Result<Self> {
        Self::with_context(connect(tcti)?, paths, false)
    }

    /// Like [`TpmAttester::open`] on an open context; `azure` uses the paravisor's persistent AK
    /// ([`AZURE_AK_HANDLE`]) and quotes only SHA-256 PCRs 0..=23, the selection Azure verifiers expect.
    ///
    /// # Errors
    /// When the TPM refuses a command or (Azure) the persistent AK is absent.
    pub fn with_context(mut ctx: Context, paths: &KernelPaths, azure: bool) -> Result<Self> {
        let banks = allocated_banks(&mut ctx)?;
        let quoted = if azure {
            let sha256 = banks
                .iter()
                .find(|(a, _)| *a == HashAlg::Sha256)
                .ok_or_else(|| Error::attester(NAME, "azure vtpm: no SHA-256 PCR bank allocated"))?;
            vec![sha256.clone()]
        } else {
            banks.clone()
        };
        let selection = selection_of(&quoted)?;
        let (ak, ak_source, ak_cert_chain) =
            if azure { load_azure_ak(&mut ctx)? } else { load_ak(&mut ctx)? };
        let ak_public = match ctx.execute_without_session(|c| c.read_public(ak)) {
            Ok((public, _, _)) => public.marshall().map_err(tss("marshal AK public"))?,
            Err(e) => {
                release_ak(&mut ctx, ak, ak_source);
                return Err(tss("read AK public")(e));
            }
        };
        let ek_cert = match read_ek_certificate(&mut ctx) {
            Ok(c) => c,
            Err(e) => {
                release_ak(&mut ctx, ak, ak_source);
                return Err(e);
            }
        };
        let uefi_event_log =
            read_optional("uefi event log", &paths.uefi_event_log(), limits::EVENT_LOG)?.unwrap_or_default();
        Ok(Self {
            ctx,
            ak,
            ak_public,
            ak_source,
            ak_cert_chain,
            ek_cert,
            banks,
            quoted,
            selection,
            cache: None,
            uefi_event_log,
        })
    }

    /// Where the AK came from.
    #[must_use]
    pub fn ak_source(&self) -> AkSource {
        self.ak_source
    }

    /// The marshalled TPMT_PUBLIC of the AK (what a verifier pins when there is no AK certificate).
    #[must_use]
    pub fn ak_public(&self) -> &[u8] {
        &self.ak_public
    }

    /// The EK certificate (DER) the TPM was provisioned with, if any.
    #[must_use]
    pub fn ek_certificate(&self) -> Option<&[u8]> {
        self.ek_cert.as_ref().map(|(_, c)| c.as_slice())
    }

    /// TPM2_ActivateCredential: recovers the secret a verifier encrypted to this TPM's certified EK for this
    /// agent's AK (see sealroom-verifier `tpm::credential`). The TPM only decrypts it when the credential names
    /// the loaded AK and was made for its own EK, so a wrong TPM or a wrong AK fails here.
    ///
    /// The EK is re-created from its default template (the key its certificate certifies), used once under a
    /// PolicySecret(endorsement) session, and flushed together with the session.
    ///
    /// # Errors
    /// Without an EK certificate, or when the TPM refuses the credential.
    pub fn activate_credential(&mut self, id_object: &[u8], encrypted_secret: &[u8]) -> Result<Vec<u8>> {
        let Some((alg, _)) = &self.ek_cert else {
            return Err(Error::attester(NAME, "activate credential: this TPM has no EK certificate"));
        };
        let id_object = IdObject::try_from(id_object.to_vec()).map_err(tss("credential blob"))?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec()).map_err(tss("encrypted secret"))?;
        let ctx = &mut self.ctx;
        let ek = ek::create_ek_object(ctx, *alg, None).map_err(tss("create EK"))?;
        let session = match ctx.start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        ) {
            Ok(Some(s)) => s,
            Ok(None) => {
                let _ = ctx.flush_context(ek.into());
                return Err(Error::attester(NAME, "activate credential: no policy session"));
            }
            Err(e) => {
                let _ = ctx.flush_context(ek.into());
                return Err(tss("policy session")(e));
            }
        };
        let ak = self.ak;
        let result = PolicySession::try_from(session)
            .map_err(tss("policy session"))
            .and_then(|policy| {
                ctx.execute_with_nullauth_session(|c| {
                    c.policy_secret(
                        policy,
                        AuthHandle::Endorsement,
                        TpmNonce::default(),
                        Digest::default(),
                        TpmNonce::default(),
                        None,
                    )
                })
                .map_err(tss("policy secret (endorsement)"))
            })
            .and_then(|_| {
                ctx.set_sessions((Some(AuthSession::Password), Some(session), None));
                let r = ctx.activate_credential(ak, ek, id_object, secret);
                ctx.clear_sessions();
                r.map_err(tss("activate credential"))
            });
        let _ = ctx.flush_context(ek.into());
        let _ = ctx.flush_context(SessionHandle::from(session).into());
        result.map(|d| d.value().to_vec())
    }

    /// A bare TPM2_Quote with the AK over the allocated banks: the cost floor `GetEvidence` is measured against.
    ///
    /// # Errors
    /// When the TPM refuses.
    pub fn raw_quote(&mut self, extra_data: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
        let (attest, signature) = self.quote_once(extra_data)?;
        Ok((
            attest.marshall().map_err(tss("marshal attest"))?,
            signature.marshall().map_err(tss("marshal sig"))?,
        ))
    }

    fn quote_once(&mut self, extra_data: &[u8]) -> Result<(tss_esapi::structures::Attest, Signature)> {
        let data = Data::try_from(extra_data.to_vec()).map_err(tss("extraData"))?;
        let ak = self.ak;
        let selection = self.selection.clone();
        self.ctx
            .execute_with_nullauth_session(|c| c.quote(ak, data, SignatureScheme::Null, selection))
            .map_err(tss("quote"))
    }

    /// Reads every PCR of `banks` (8 per command).
    fn read_pcrs(&mut self, banks: &[(HashAlg, Vec<u32>)]) -> Result<Vec<PcrBank>> {
        let mut out = Vec::with_capacity(banks.len());
        for (alg, indices) in banks.iter().cloned() {
            let mut values = BTreeMap::new();
            for chunk in indices.chunks(PCRS_PER_READ) {
                let slots = chunk.iter().map(|i| slot(*i)).collect::<Result<Vec<_>>>()?;
                let sel = PcrSelectionList::builder()
                    .with_selection(to_tss_alg(alg), &slots)
                    .build()
                    .map_err(tss("pcr selection"))?;
                let (_, read, digests) =
                    self.ctx.execute_without_session(|c| c.pcr_read(sel)).map_err(tss("pcr read"))?;
                let read_slots: Vec<PcrSlot> = read
                    .get_selections()
                    .iter()
                    .flat_map(tss_esapi::structures::PcrSelection::selected)
                    .collect();
                if read_slots.len() != digests.len() || read_slots.len() != chunk.len() {
                    return Err(Error::attester(
                        NAME,
                        format!(
                            "pcr read: {} bank returned {} of {} values",
                            alg.name(),
                            digests.len(),
                            chunk.len()
                        ),
                    ));
                }
                for (s, d) in read_slots.into_iter().zip(digests.value()) {
                    values.insert(slot_index(s), d.value().to_vec());
                }
            }
            out.push(PcrBank { alg, values });
        }
        Ok(out)
    }

    /// The quote's pcrDigest recomputed from `banks` in the quote's own selection order (tss-esapi's selection
    /// builder does not keep insertion order, so the echoed selection is the only authority).
    fn pcr_digest(selection: &PcrSelectionList, banks: &[PcrBank], alg: HashAlg) -> Option<Vec<u8>> {
        let mut h = Hasher::new(alg);
        for sel in selection.get_selections() {
            let bank_alg = to_hash_alg(sel.hashing_algorithm())?;
            let bank = banks.iter().find(|b| b.alg == bank_alg)?;
            let mut idx: Vec<u32> = sel.selected().into_iter().map(slot_index).collect();
            idx.sort_unstable();
            for i in idx {
                h.update(bank.values.get(&i)?);
            }
        }
        Some(h.finish())
    }

    /// A quote whose pcrDigest matches the returned PCR values (retried when PCRs moved between read and quote).
    fn consistent_quote(&mut self, extra_data: &[u8]) -> Result<TpmEvidence> {
        for _ in 0..4 {
            let values = match self.cache.take() {
                Some(v) => v,
                None => self.read_pcrs(&self.quoted.clone())?,
            };
            let (attest, signature) = self.quote_once(extra_data)?;
            let sig_hash = match &signature {
                Signature::EcDsa(s) => s.hashing_algorithm(),
                Signature::RsaSsa(s) | Signature::RsaPss(s) => s.hashing_algorithm(),
                other => {
                    return Err(Error::attester(
                        NAME,
                        format!("quote: unexpected signature {:?}", other.algorithm()),
                    ));
                }
            };
            let sig_hash = to_hash_alg(sig_hash).ok_or_else(|| {
                Error::attester(NAME, format!("quote: signature hash {sig_hash:?} unsupported"))
            })?;
            let AttestInfo::Quote { info } = attest.attested() else {
                return Err(Error::attester(NAME, "quote: TPM returned a non-quote attestation"));
            };
            if Self::pcr_digest(info.pcr_selection(), &values, sig_hash).as_deref()
                == Some(info.pcr_digest().value())
            {
                let ev = TpmEvidence {
                    attest: attest.marshall().map_err(tss("marshal attest"))?,
                    signature: signature.marshall().map_err(tss("marshal signature"))?,
                    ak_public: self.ak_public.clone(),
                    ak_cert_chain: self.ak_cert_chain.clone(),
                    pcr_banks: values.clone(),
                    uefi_event_log: self.uefi_event_log.clone(),
                };
                self.cache = Some(values);
                return Ok(ev);
            }
            // A PCR changed behind our back (firmware, kernel, another TPM user): read again.
        }
        Err(Error::attester(NAME, "quote: PCR values kept changing during the quote (4 attempts)"))
    }
}

impl Drop for TpmAttester {
    fn drop(&mut self) {
        // No resource manager: a transient AK left behind would occupy a slot until the TPM is reset.
        release_ak(&mut self.ctx, self.ak, self.ak_source);
    }
}

impl Attester for TpmAttester {
    fn name(&self) -> &'static str {
        NAME
    }

    fn platform(&self) -> Platform {
        Platform::Tpm
    }

    fn attest(&mut self, nonce: &Nonce, key: &TeePublicKey) -> Result<Part> {
        self.consistent_quote(&binding_digest(nonce, key)).map(Part::Tpm)
    }

    fn runtime_algorithms(&self) -> Vec<HashAlg> {
        self.banks.iter().map(|(a, _)| *a).collect()
    }

    fn extend_runtime(&mut self, digests: &EventDigests) -> Result<()> {
        let mut values = DigestValues::new();
        for (alg, _) in &self.banks {
            let d = digests
                .get(*alg)
                .ok_or_else(|| Error::attester(NAME, format!("pcr 15 extend: no {} digest", alg.name())))?;
            values.set(to_tss_alg(*alg), Digest::try_from(d.to_vec()).map_err(tss("pcr 15 digest"))?);
        }
        // Whatever happens next, the cached values are stale.
        self.cache = None;
        self.ctx
            .execute_with_nullauth_session(|c| c.pcr_extend(RUNTIME_PCR, values))
            .map_err(tss("pcr 15 extend"))
    }

    fn runtime_register(&mut self) -> Result<Vec<(HashAlg, Vec<u8>)>> {
        let pcr15: Vec<(HashAlg, Vec<u32>)> = self.banks.iter().map(|(a, _)| (*a, vec![15])).collect();
        let banks = self.read_pcrs(&pcr15)?;
        Ok(banks.into_iter().filter_map(|b| b.values.get(&15).map(|v| (b.alg, v.clone()))).collect())
    }

    fn pcr_banks(&self) -> Vec<HashAlg> {
        self.runtime_algorithms()
    }

    fn event_logs(&self) -> (Vec<u8>, Vec<u8>) {
        (self.uefi_event_log.clone(), Vec::new())
    }

    fn tpm_identity(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        self.ek_certificate().map(|c| (c.to_vec(), self.ak_public.clone()))
    }

    fn activate_credential(&mut self, id_object: &[u8], encrypted_secret: &[u8]) -> Result<Vec<u8>> {
        TpmAttester::activate_credential(self, id_object, encrypted_secret)
    }
}

/// The PCR banks the TPM has allocated (non-empty selections of hashes sealroom knows), at most 4.
fn allocated_banks(ctx: &mut Context) -> Result<Vec<(HashAlg, Vec<u32>)>> {
    let (data, _) = ctx
        .execute_without_session(|c| c.get_capability(CapabilityType::AssignedPcr, 0, 8))
        .map_err(tss("get capability PCRs"))?;
    let CapabilityData::AssignedPcr(list) = data else {
        return Err(Error::attester(NAME, "get capability PCRs: unexpected answer"));
    };
    let mut banks = Vec::new();
    for sel in list.get_selections() {
        let Some(alg) = to_hash_alg(sel.hashing_algorithm()) else { continue };
        let mut idx: Vec<u32> = sel.selected().into_iter().map(slot_index).collect();
        idx.sort_unstable();
        if !idx.is_empty() && !banks.iter().any(|(a, _)| *a == alg) {
            banks.push((alg, idx));
        }
    }
    banks.truncate(limits::PCR_BANKS);
    if banks.is_empty() {
        return Err(Error::attester(NAME, "no PCR bank allocated"));
    }
    Ok(banks)
}

fn selection_of(banks: &[(HashAlg, Vec<u32>)]) -> Result<PcrSelectionList> {
    let mut b = PcrSelectionList::builder();
    for (alg, idx) in banks {
        let slots = idx.iter().map(|i| slot(*i)).collect::<Result<Vec<_>>>()?;
        b = b.with_selection(to_tss_alg(*alg), &slots);
    }
    b.build().map_err(tss("pcr selection"))
}

/// Opens a TPM by TCTI string.
///
/// # Errors
/// When the TCTI is malformed or the TPM cannot be reached.
pub fn connect(tcti: &str) -> Result<Context> {
    let conf = TctiNameConf::from_str(tcti).map_err(tss("tcti"))?;
    Context::new(conf).map_err(tss("open"))
}

/// Flushes a transient AK; only closes the ESYS handle of a persistent one (it must stay in the TPM).
fn release_ak(ctx: &mut Context, ak: KeyHandle, source: AkSource) {
    if source == AkSource::AzureVtpm {
        let mut obj = ObjectHandle::from(ak);
        let _ = ctx.tr_close(&mut obj);
    } else {
        let _ = ctx.flush_context(ak.into());
    }
}

/// Whether a TPM handle (NV index or persistent object) is defined, asked through TPM2_GetCapability so an
/// absent one is not an error logged by tpm2-tss.
///
/// # Errors
/// When the TPM refuses the capability query.
pub fn handle_defined(ctx: &mut Context, raw: u32) -> Result<bool> {
    let handle = TpmHandle::try_from(raw).map_err(tss("tpm handle"))?;
    let (data, _) = ctx
        .execute_without_session(|c| c.get_capability(CapabilityType::Handles, raw, 1))
        .map_err(tss("get capability handles"))?;
    Ok(matches!(&data, CapabilityData::Handles(list) if list.contains(&handle)))
}

/// The paravisor's persistent AK and, when provisioned, its certificate.
fn load_azure_ak(ctx: &mut Context) -> Result<(KeyHandle, AkSource, Vec<Vec<u8>>)> {
    if !handle_defined(ctx, AZURE_AK_HANDLE)? {
        return Err(Error::attester(
            NAME,
            format!("azure vtpm: no AK at persistent handle {AZURE_AK_HANDLE:#x}"),
        ));
    }
    let handle = TpmHandle::try_from(AZURE_AK_HANDLE).map_err(tss("azure AK handle"))?;
    let obj =
        ctx.execute_without_session(|c| c.tr_from_tpm_public(handle)).map_err(tss("azure AK 0x81000003"))?;
    let key = KeyHandle::from(obj);
    let chain = match read_nv(ctx, AZURE_AK_CERT) {
        Ok(Some(cert)) if cert.len() <= limits::CERT_LEN => vec![trim_der(cert)],
        Ok(_) => Vec::new(),
        Err(e) => {
            release_ak(ctx, key, AkSource::AzureVtpm);
            return Err(e);
        }
    };
    Ok((key, AkSource::AzureVtpm, chain))
}

/// Reads a whole NV index with owner authorisation (empty), or `None` when it is not defined.
///
/// `tr_from_tpm_public` runs without any session set (it can crash tpm2-tss 3.2.1 with a password session).
pub(crate) fn read_nv(ctx: &mut Context, index: u32) -> Result<Option<Vec<u8>>> {
    let handle = NvIndexTpmHandle::new(index).map_err(tss("nv index"))?;
    // Ask first, so an absent index (every non-GCE TPM) is not an error logged by tpm2-tss.
    let (data, _) = ctx
        .execute_without_session(|c| c.get_capability(CapabilityType::Handles, index, 1))
        .map_err(tss("get capability handles"))?;
    let defined = matches!(&data, CapabilityData::Handles(list)
        if list.contains(&TpmHandle::NvIndex(handle)));
    if !defined {
        return Ok(None);
    }
    let mut obj: ObjectHandle =
        match ctx.execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(handle))) {
            Ok(h) => h,
            Err(_) => return Ok(None),
        };
    let result = (|| {
        let nv = NvIndexHandle::from(obj);
        let (public, _) =
            ctx.execute_without_session(|c| c.nv_read_public(nv)).map_err(tss("nv read public"))?;
        let size = public.data_size();
        let mut out = Vec::with_capacity(size);
        while out.len() < size {
            let chunk = u16::try_from((size - out.len()).min(512)).unwrap_or(512);
            let offset = u16::try_from(out.len()).map_err(|_| Error::attester(NAME, "nv index too large"))?;
            let buf = ctx
                .execute_with_nullauth_session(|c| c.nv_read(NvAuth::Owner, nv, chunk, offset))
                .map_err(tss("nv read"))?;
            if buf.is_empty() {
                break;
            }
            out.extend_from_slice(buf.value());
        }
        Ok(out)
    })();
    let _ = ctx.tr_close(&mut obj);
    result.map(Some)
}

/// The first EK certificate provisioned in NV (RSA 2048, then ECC P-256), trimmed to its DER.
fn read_ek_certificate(ctx: &mut Context) -> Result<Option<(AsymmetricAlgorithm, Vec<u8>)>> {
    for (index, alg) in
        [(EK_CERT_RSA_2048, AsymmetricAlgorithm::Rsa), (EK_CERT_ECC_P256, AsymmetricAlgorithm::Ecc)]
    {
        if let Some(cert) = read_nv(ctx, index)? {
            let cert = trim_der(cert);
            if cert.len() > limits::CERT_LEN {
                return Err(Error::attester(
                    NAME,
                    format!("EK certificate at {index:#x} exceeds {} bytes", limits::CERT_LEN),
                ));
            }
            return Ok(Some((alg, cert)));
        }
    }
    Ok(None)
}

/// The GCE AK if its template is in NV, else an ECC P-256 AK created under the ECC EK.
fn load_ak(ctx: &mut Context) -> Result<(KeyHandle, AkSource, Vec<Vec<u8>>)> {
    for (template_index, cert_index, source) in [
        (GCE_AK_TEMPLATE_ECC, GCE_AK_CERT_ECC, AkSource::GceEcc),
        (GCE_AK_TEMPLATE_RSA, GCE_AK_CERT_RSA, AkSource::GceRsa),
    ] {
        let Some(template) = read_nv(ctx, template_index)? else { continue };
        let public = Public::unmarshall(&template)
            .map_err(|e| Error::attester(NAME, format!("GCE AK template {template_index:#x}: {e}")))?;
        let key = ctx
            .execute_with_nullauth_session(|c| {
                c.create_primary(Hierarchy::Endorsement, public, None, None, None, None)
            })
            .map_err(tss("create GCE AK"))?
            .key_handle;
        let chain = match read_nv(ctx, cert_index) {
            Ok(Some(cert)) if cert.len() <= limits::CERT_LEN => vec![trim_der(cert)],
            Ok(_) => Vec::new(),
            Err(e) => {
                let _ = ctx.flush_context(key.into());
                return Err(e);
            }
        };
        return Ok((key, source, chain));
    }
    let ek = ek::create_ek_object(ctx, AsymmetricAlgorithm::Ecc, None).map_err(tss("create EK"))?;
    let created =
        ak::create_ak(ctx, ek, HashingAlgorithm::Sha256, SignatureSchemeAlgorithm::EcDsa, None, None);
    let loaded = created.and_then(|k| ak::load_ak(ctx, ek, None, k.out_private, k.out_public));
    let _ = ctx.flush_context(ek.into());
    let key = loaded.map_err(tss("create AK under EK"))?;
    Ok((key, AkSource::CreatedUnderEk, Vec::new()))
}

/// NV certificates are often padded to the index size: keep only the DER SEQUENCE.
fn trim_der(mut cert: Vec<u8>) -> Vec<u8> {
    let mut r = sealroom_measurements::reader::Reader::new(&cert);
    let len = (|| {
        let tag = r.u8("der tag").ok()?;
        if tag != 0x30 {
            return None;
        }
        let first = r.u8("der length").ok()?;
        let body = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            r.take(n, "der length").ok()?.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        r.offset().checked_add(body)
    })();
    if let Some(len) = len
        && len <= cert.len()
    {
        cert.truncate(len);
    }
    cert
}
