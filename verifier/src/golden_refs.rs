//! The signed golden document as reference values for the appraisal.
//!
//! An image release publishes one golden document (`sealroom_measurements::golden`): the registers it
//! predicts from the image (PCR 4, 9, 11, 12 per bank; RTMR1, RTMR2), signed with the publisher's Ed25519 key.
//! This bridge checks that signature under a key the caller trusts and turns the document into
//! [`ReferenceValues`]: every register it predicts, in the layer the register belongs to (all of today's are the
//! kernel layer); layers it says nothing about stay an explicit `skip` (firmware is referenced to the
//! platform's endorsements, the workload to the key policy).
//!
//! Which registers apply depends on the evidence: a TPM quote carries PCRs of the banks it quotes, a TD quote
//! RTMRs. The references hold every complete golden register of each register family the evidence carries (the
//! same reading as the key broker's golden rule), so a quote cannot dodge a register of a bank it quotes, and
//! evidence carrying none of the document's registers is refused here rather than passed.

use std::collections::{BTreeMap, BTreeSet};

use sealroom_measurements::evidence::{Evidence, HashAlg, Platform};
use sealroom_measurements::golden::{self, GoldenDocument};

use crate::appraisal::{EvidenceInput, Layer, Reference, ReferenceValues, layer_of};
use crate::error::{Error, Result};

const LAYER: &str = "golden";

/// A golden document whose signature verified, with its registers named as the appraisal names them.
#[derive(Debug, Clone)]
pub struct GoldenReferences {
    /// The verified document.
    pub document: GoldenDocument,
    /// SHA-256 (hex) of the document's bytes, as signed.
    pub document_sha256: String,
    /// Complete predicted registers: "pcr11.sha256", "rtmr2", … → expected value (lower-case hex).
    pub registers: BTreeMap<String, String>,
}

impl GoldenReferences {
    /// Verifies `document` against its detached signature (`golden.json.sig` contents, hex) under
    /// `public_key_hex` (the publisher's raw Ed25519 key, hex).
    ///
    /// # Errors
    /// A signature that does not verify, a malformed key, an unknown schema, or a document without any
    /// complete register.
    pub fn verify(document: &[u8], signature_hex: &str, public_key_hex: &str) -> Result<Self> {
        Self::from_verified(document, golden::verify(document, signature_hex, public_key_hex)?)
    }

    /// Like [`Self::verify`], under the release key pinned in this build.
    ///
    /// # Errors
    /// See [`Self::verify`].
    pub fn verify_pinned(document: &[u8], signature_hex: &str) -> Result<Self> {
        Self::from_verified(document, golden::verify_pinned(document, signature_hex)?)
    }

    fn from_verified(bytes: &[u8], document: GoldenDocument) -> Result<Self> {
        let registers = golden_registers(&document);
        if registers.is_empty() {
            return Err(Error::check(LAYER, "the document predicts no complete register"));
        }
        if let Some(reg) = registers.keys().find(|r| layer_of(r).is_none()) {
            return Err(Error::check(LAYER, format!("register {reg} belongs to no measured layer")));
        }
        let document_sha256 = hex::encode(sealroom_measurements::digest::sha256(bytes));
        Ok(Self { document, document_sha256, registers })
    }

    /// The policy id an EAR judged against this document carries.
    #[must_use]
    pub fn policy_id(&self) -> String {
        format!(
            "sealroom/golden/{}@{}/sha256:{}",
            self.document.image.id, self.document.image.version, self.document_sha256
        )
    }

    /// Reference values for `input`: the document's registers of every family the evidence carries, each in its
    /// layer; a layer without any is `skip`.
    ///
    /// # Errors
    /// When the evidence carries none of the document's registers (e.g. a bare SEV-SNP report: its launch
    /// measurement covers firmware only, so the image cannot be judged from it).
    pub fn reference_values(&self, input: &EvidenceInput) -> Result<ReferenceValues> {
        let families = evidence_families(input);
        let mut layers: BTreeMap<&'static str, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        for (reg, value) in &self.registers {
            if !families.contains(&family(reg)) {
                continue;
            }
            let Some(layer) = layer_of(reg) else { continue };
            layers.entry(layer.name()).or_default().insert(reg.clone(), BTreeSet::from([value.clone()]));
        }
        if layers.is_empty() {
            return Err(Error::check(
                LAYER,
                format!(
                    "the evidence carries none of the registers of golden document {} ({}; evidence has {})",
                    self.document.image.id,
                    self.registers.keys().cloned().collect::<Vec<_>>().join(", "),
                    if families.is_empty() {
                        "no PCRs or RTMRs".to_owned()
                    } else {
                        families.iter().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            ));
        }
        let mut take =
            |layer: Layer| layers.remove(layer.name()).map_or_else(Reference::skip, Reference::Digests);
        Ok(ReferenceValues {
            firmware: take(Layer::Firmware),
            kernel: take(Layer::Kernel),
            workload: take(Layer::Workload),
        })
    }
}

/// The registers a golden document expects, named as the appraisal names them ("pcr11.sha256", "rtmr2"):
/// only those it marks complete. The one reading of a document's registers, shared by these references, the
/// broker's golden rule and the receipt check, so they cannot disagree.
#[must_use]
pub fn golden_registers(doc: &GoldenDocument) -> BTreeMap<String, String> {
    doc.registers
        .iter()
        .filter(|r| r.complete)
        .map(|r| {
            let name = if r.register.starts_with("pcr") {
                format!("{}.{}", r.register, r.alg)
            } else {
                r.register.clone()
            };
            (name, r.value.to_lowercase())
        })
        .collect()
}

/// The register family of an appraisal register name: "pcr.sha256" for "pcr11.sha256", "rtmr" for "rtmr2".
fn family(register: &str) -> String {
    match register.split_once('.') {
        Some((base, alg)) if base.starts_with("pcr") => format!("pcr.{alg}"),
        _ => register.trim_end_matches(|c: char| c.is_ascii_digit()).to_owned(),
    }
}

fn pcr_family(alg: HashAlg) -> String {
    format!("pcr.{}", alg.name())
}

/// The register families the appraisal establishes from `input` once its platform layer verifies: PCR banks
/// of a TPM quote, RTMRs of a TD quote (read from the evidence's structure; the values are judged later, from
/// the verified quote only).
#[must_use]
pub fn evidence_families(input: &EvidenceInput) -> BTreeSet<String> {
    match input {
        EvidenceInput::Sealroom(ev) => sealroom_families(ev),
        EvidenceInput::Gce(att) => att.quotes.iter().map(|q| pcr_family(q.bank.alg)).collect(),
        // Azure's vTPM quote covers the SHA-256 bank (`azure::verify`).
        EvidenceInput::Azure(_) => BTreeSet::from([pcr_family(HashAlg::Sha256)]),
        EvidenceInput::TdxQuote(_) => BTreeSet::from(["rtmr".to_owned()]),
        EvidenceInput::SnpReport { .. } | EvidenceInput::SgxQuote(_) => BTreeSet::new(),
    }
}

fn sealroom_families(ev: &Evidence) -> BTreeSet<String> {
    match ev.platform {
        Platform::Tpm => ev.tpm.iter().flat_map(|t| t.pcr_banks.iter().map(|b| pcr_family(b.alg))).collect(),
        Platform::Tdx => BTreeSet::from(["rtmr".to_owned()]),
        Platform::AzureSnpVtpm | Platform::AzureTdxVtpm => BTreeSet::from([pcr_family(HashAlg::Sha256)]),
        _ => BTreeSet::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::appraisal::{Context, Policy, appraise};
    use crate::snp::EndorsementCache;
    use sealroom_measurements::binding::{Kem, Nonce, TeePublicKey};
    use sealroom_measurements::evidence::{PcrBank, TpmEvidence};

    /// The published fixture (`measurements/golden/fixture-uki`), signed with the pinned release key.
    fn fixture() -> (Vec<u8>, String) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../measurements/golden/fixture-uki");
        (
            std::fs::read(dir.join("golden.json")).unwrap(),
            std::fs::read_to_string(dir.join("golden.json.sig")).unwrap(),
        )
    }

    fn tpm_evidence(banks: &[HashAlg]) -> EvidenceInput {
        let tpm = TpmEvidence {
            pcr_banks: banks.iter().map(|&alg| PcrBank { alg, values: BTreeMap::new() }).collect(),
            ..TpmEvidence::default()
        };
        EvidenceInput::Sealroom(Box::new(Evidence {
            nonce: Nonce([0; 32]),
            tee_public_key: TeePublicKey::new(Kem::X25519HkdfSha256, vec![5; 32]).unwrap(),
            platform: Platform::Tpm,
            tpm: Some(tpm),
            tdx: None,
            sev_snp: None,
            azure: None,
            runtime_event_log: Vec::new(),
            gpus: Vec::new(),
        }))
    }

    #[test]
    fn pinned_fixture_becomes_kernel_references_for_the_quoted_banks() {
        let (doc, sig) = fixture();
        let g = GoldenReferences::verify_pinned(&doc, &sig).unwrap();
        assert!(g.policy_id().starts_with("sealroom/golden/"), "{}", g.policy_id());

        let refs = g.reference_values(&tpm_evidence(&[HashAlg::Sha256])).unwrap();
        assert_eq!(refs.firmware, Reference::skip());
        assert_eq!(refs.workload, Reference::skip());
        let Reference::Digests(kernel) = &refs.kernel else { panic!("kernel layer skipped") };
        assert!(!kernel.is_empty());
        for (reg, allowed) in kernel {
            assert!(reg.starts_with("pcr") && reg.ends_with(".sha256"), "{reg}");
            assert_eq!(allowed, &BTreeSet::from([g.registers[reg].clone()]));
        }
        assert!(kernel.contains_key("pcr11.sha256"));

        // A quote of both banks must match both banks' predictions.
        let both = g.reference_values(&tpm_evidence(&[HashAlg::Sha256, HashAlg::Sha384])).unwrap();
        let Reference::Digests(kernel) = &both.kernel else { panic!() };
        assert!(kernel.contains_key("pcr11.sha384") && kernel.contains_key("pcr11.sha256"));

        // TD quotes are judged by RTMR1/RTMR2, never by PCRs.
        let td = g.reference_values(&EvidenceInput::TdxQuote(Vec::new())).unwrap();
        let Reference::Digests(kernel) = &td.kernel else { panic!() };
        assert!(kernel.keys().all(|r| r.starts_with("rtmr")), "{kernel:?}");
    }

    #[test]
    fn evidence_without_golden_registers_is_refused() {
        let (doc, sig) = fixture();
        let g = GoldenReferences::verify_pinned(&doc, &sig).unwrap();
        let snp = EvidenceInput::SnpReport { report: Vec::new(), endorsement: Vec::new() };
        let err = g.reference_values(&snp).unwrap_err().to_string();
        assert!(err.starts_with("golden: the evidence carries none of the registers"), "{err}");
        assert!(err.ends_with("evidence has no PCRs or RTMRs)"), "{err}");
        let err = g.reference_values(&tpm_evidence(&[])).unwrap_err().to_string();
        assert!(err.starts_with("golden: the evidence carries none"), "{err}");
    }

    #[test]
    fn a_tampered_document_or_another_key_is_refused() {
        let (doc, sig) = fixture();
        let mut tampered = doc.clone();
        let i = tampered.len() / 2;
        tampered[i] ^= 1;
        let err = GoldenReferences::verify_pinned(&tampered, &sig).unwrap_err().to_string();
        assert_eq!(err, "golden: invalid signature: does not verify under the pinned key");
        let other_key = "11".repeat(32);
        assert!(GoldenReferences::verify(&doc, &sig, &other_key).is_err());
    }

    #[test]
    fn appraisal_names_the_register_that_differs() {
        // The evidence quotes nothing valid (no AK), so the platform layer fails too; what matters here is
        // that the kernel layer built from the golden document fails closed, naming the missing registers.
        let (doc, sig) = fixture();
        let g = GoldenReferences::verify_pinned(&doc, &sig).unwrap();
        let input = tpm_evidence(&[HashAlg::Sha256]);
        let policy = Policy {
            references: g.reference_values(&input).unwrap(),
            id: g.policy_id(),
            ..Policy::default()
        };
        let cache = EndorsementCache::default();
        let ctx = Context {
            at: 0,
            nonce: None,
            snp_cache: &cache,
            tdx_collateral: None,
            tdx_root: None,
            enrolled_tpm_aks: &[],
            tpm_ek_activated: None,
            gpu: None,
        };
        let ear = appraise(&input, &policy, &ctx);
        assert_ne!(ear.status(), crate::ear::Status::Affirming);
        let failures = ear.failures();
        assert!(
            failures.iter().any(|f| f == "kernel: register pcr11.sha256 is not in the verified evidence"),
            "{failures:?}"
        );
    }
}
