//! Golden measurements: the signed, versioned statement of what an image release measures.
//!
//! One JSON document per image release (`golden.json`), signed with Ed25519 over its exact bytes; the 64-byte
//! signature is stored hex-encoded next to it (`golden.json.sig`). Signing raw bytes (no JSON canonicalisation)
//! lets an auditor check it with stock tools (see `measurements/golden/README.md`). The verifying key is pinned
//! at build time from `measurements/golden/signing-key.pub.hex`; rotating it is a reviewed code change.
//!
//! The document carries the layers sealroom can reproduce from the image (UKI digests, PCR 4/9/11/12, RTMR1/2,
//! each with its per-event digests), and a platform axis for the firmware layer, which the cloud controls: those
//! registers are *referenced* to the platform's signed firmware endorsements, never given a value here.

use std::collections::BTreeMap;

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::error::{Error, Result};
use crate::evidence::HashAlg;
use crate::uki::{PredictedRegister, SectionDigest, UkiPrediction};

const LAYER: &str = "golden";
/// The schema identifier this code reads and writes.
pub const SCHEMA: &str = "sealroom.golden.v1";
/// The pinned release verifying key (raw Ed25519, hex), compiled in.
pub const PINNED_PUBLIC_KEY_HEX: &str = include_str!("../golden/signing-key.pub.hex");

/// The signed document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenDocument {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The image release.
    pub image: ImageInfo,
    /// The UKI.
    pub uki: UkiInfo,
    /// Registers reproducible from the image: expected values with per-event digests.
    pub registers: Vec<PredictedRegister>,
    /// Firmware-controlled registers per platform: referenced to endorsements, not valued here.
    pub platforms: Vec<PlatformReference>,
    /// The package lock of the image build (name → version and digest).
    pub packages: BTreeMap<String, PackageLock>,
}

/// The image release.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    /// Image identifier, e.g. "sealroom-0.1.0".
    pub id: String,
    /// Release version.
    pub version: String,
    /// SHA-256 of the published disk image, when the document describes one.
    pub disk_sha256: Option<String>,
}

/// Digests of the UKI.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UkiInfo {
    /// SHA-256 of the file.
    pub file_sha256: String,
    /// Authenticode SHA-256 (what PCR 4 records).
    pub authenticode_sha256: String,
    /// Authenticode SHA-384 (what RTMR1 records).
    pub authenticode_sha384: String,
    /// Measured sections.
    pub sections: Vec<SectionDigest>,
}

/// A firmware layer that belongs to the platform, with where its reference values come from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformReference {
    /// Platform, e.g. "gcp-tdx", "gcp-sev-snp", "gcp-vtpm".
    pub platform: String,
    /// Registers this layer covers, e.g. ["mrtd", "rtmr0"] or ["pcr0", …].
    pub registers: Vec<String>,
    /// Where reference values come from (a signed firmware endorsement kind), never a value assumed here.
    pub endorsement: String,
}

/// One locked package.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageLock {
    /// Version.
    pub version: String,
    /// SHA-256 of the package file.
    pub sha256: String,
}

/// The platform axis sealroom publishes by default: which registers each supported platform's firmware owns.
#[must_use]
pub fn default_platforms() -> Vec<PlatformReference> {
    let r = |platform: &str, regs: &[&str], endorsement: &str| PlatformReference {
        platform: platform.to_string(),
        registers: regs.iter().map(|s| (*s).to_string()).collect(),
        endorsement: endorsement.to_string(),
    };
    vec![
        r("gcp-tdx", &["mrtd", "rtmr0"], "gce-firmware-endorsement (signed by Google, per machine shape)"),
        r(
            "gcp-sev-snp",
            &["launch_measurement"],
            "gce-firmware-endorsement (signed by Google, per vCPU count)",
        ),
        r(
            "gcp-vtpm",
            &["pcr0", "pcr1", "pcr2", "pcr3", "pcr5", "pcr6", "pcr7"],
            "gce-firmware-endorsement (signed by Google)",
        ),
    ]
}

impl GoldenDocument {
    /// A document for an image whose UKI prediction is `p`.
    #[must_use]
    pub fn from_prediction(
        image: ImageInfo,
        p: &UkiPrediction,
        platforms: Vec<PlatformReference>,
        packages: BTreeMap<String, PackageLock>,
    ) -> Self {
        Self {
            schema: SCHEMA.to_string(),
            image,
            uki: UkiInfo {
                file_sha256: p.file_sha256.clone(),
                authenticode_sha256: p.authenticode_sha256.clone(),
                authenticode_sha384: p.authenticode_sha384.clone(),
                sections: p.sections.clone(),
            },
            registers: p.registers.clone(),
            platforms,
            packages,
        }
    }

    /// The expected value (hex) of register `name` in bank `alg`.
    #[must_use]
    pub fn register(&self, name: &str, alg: HashAlg) -> Option<&PredictedRegister> {
        self.registers.iter().find(|r| r.register == name && r.alg == alg.name())
    }

    /// Recomputed measurements agree with this document: UKI digests and every register, value and events.
    ///
    /// # Errors
    /// The first difference, in one line ("golden: pcr11 (sha256) mismatch: expected …, got …").
    pub fn check(&self, p: &UkiPrediction) -> Result<()> {
        let field = |name: &str, want: &str, got: &str| -> Result<()> {
            if want == got {
                Ok(())
            } else {
                Err(Error::RegisterMismatch {
                    register: format!("{LAYER}: {name}"),
                    expected: want.to_string(),
                    got: got.to_string(),
                })
            }
        };
        field("uki file sha256", &self.uki.file_sha256, &p.file_sha256)?;
        field("uki authenticode sha256", &self.uki.authenticode_sha256, &p.authenticode_sha256)?;
        field("uki authenticode sha384", &self.uki.authenticode_sha384, &p.authenticode_sha384)?;
        for want in &self.registers {
            let got = p.registers.iter().find(|r| r.register == want.register && r.alg == want.alg);
            let Some(got) = got else {
                return Err(Error::invalid(
                    LAYER,
                    "registers",
                    format!("{} ({}) not recomputed", want.register, want.alg),
                ));
            };
            field(&format!("{} ({})", want.register, want.alg), &want.value, &got.value)?;
            if want.events != got.events {
                return Err(Error::invalid(
                    LAYER,
                    "events",
                    format!("{} ({}) event list differs", want.register, want.alg),
                ));
            }
        }
        Ok(())
    }

    /// The document's JSON bytes (pretty-printed, as published).
    ///
    /// # Errors
    /// Serialisation failure.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut out =
            serde_json::to_vec_pretty(self).map_err(|e| Error::invalid(LAYER, "document", e.to_string()))?;
        out.push(b'\n');
        Ok(out)
    }
}

/// Signs `document` bytes with an Ed25519 PKCS#8 key; returns the hex signature file contents.
///
/// # Errors
/// An invalid key.
pub fn sign(document: &[u8], pkcs8: &[u8]) -> Result<String> {
    let key =
        Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| Error::invalid(LAYER, "signing key", e.to_string()))?;
    Ok(format!("{}\n", hex::encode(key.sign(document).as_ref())))
}

/// A fresh Ed25519 key pair as PKCS#8 (for the release signer; randomness from the OS).
///
/// # Errors
/// When the OS randomness or key generation fails.
pub fn generate_signing_key() -> Result<(Vec<u8>, String)> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|e| Error::invalid(LAYER, "key generation", e.to_string()))?;
    let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| Error::invalid(LAYER, "signing key", e.to_string()))?;
    Ok((pkcs8.as_ref().to_vec(), hex::encode(key.public_key().as_ref())))
}

fn decode_hex<const N: usize>(text: &str, field: &'static str) -> Result<[u8; N]> {
    let bytes =
        hex::decode(text.trim()).map_err(|e| Error::invalid(LAYER, field, format!("not hex: {e}")))?;
    bytes
        .try_into()
        .map_err(|v: Vec<u8>| Error::invalid(LAYER, field, format!("{} bytes, expected {N}", v.len())))
}

/// Verifies `document` against `signature_hex` under `public_key_hex`, then parses it.
///
/// # Errors
/// A malformed key or signature, a signature that does not verify, an unknown schema or an unparsable document.
pub fn verify(document: &[u8], signature_hex: &str, public_key_hex: &str) -> Result<GoldenDocument> {
    let key = decode_hex::<32>(public_key_hex, "public key")?;
    let sig = decode_hex::<64>(signature_hex, "signature")?;
    UnparsedPublicKey::new(&signature::ED25519, key)
        .verify(document, &sig)
        .map_err(|_| Error::invalid(LAYER, "signature", "does not verify under the pinned key"))?;
    let doc: GoldenDocument =
        serde_json::from_slice(document).map_err(|e| Error::invalid(LAYER, "document", e.to_string()))?;
    if doc.schema != SCHEMA {
        return Err(Error::invalid(LAYER, "schema", format!("{:?}, expected {SCHEMA:?}", doc.schema)));
    }
    Ok(doc)
}

/// Verifies `document` under the key pinned in this build.
///
/// # Errors
/// See [`verify`].
pub fn verify_pinned(document: &[u8], signature_hex: &str) -> Result<GoldenDocument> {
    verify(document, signature_hex, PINNED_PUBLIC_KEY_HEX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uki::{BootContext, predict};

    fn test_key() -> (Vec<u8>, String) {
        // Deterministic key for tests: a fixed seed (randomness is injected, never read here).
        let key = Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap();
        (key.to_pkcs8v1().unwrap().as_ref().to_vec(), hex::encode(key.public_key().as_ref()))
    }

    fn doc() -> GoldenDocument {
        let kernel = crate::pe::tests::build_pe(&[(".text", b"k")], b"", b"");
        let uki = crate::pe::tests::build_pe(&[(".linux", &kernel), (".initrd", b"i")], b"", b"");
        let p = predict(&uki, &[HashAlg::Sha256], &BootContext::default()).unwrap();
        let mut packages = BTreeMap::new();
        packages.insert(
            "linux-image-cloud-amd64".into(),
            PackageLock { version: "6.12".into(), sha256: "00".into() },
        );
        GoldenDocument::from_prediction(
            ImageInfo { id: "sealroom-test".into(), version: "0".into(), disk_sha256: None },
            &p,
            default_platforms(),
            packages,
        )
    }

    #[test]
    fn sign_verify_round_trip_and_every_flipped_byte_is_refused() {
        let (pkcs8, public) = test_key();
        let json = doc().to_json().unwrap();
        let sig = sign(&json, &pkcs8).unwrap();
        assert_eq!(verify(&json, &sig, &public).unwrap(), doc());
        for i in (0..json.len()).step_by(7) {
            let mut t = json.clone();
            t[i] ^= 0x01;
            let err = verify(&t, &sig, &public).unwrap_err().to_string();
            assert_eq!(err, "golden: invalid signature: does not verify under the pinned key");
        }
        let mut bad_sig = hex::decode(sig.trim()).unwrap();
        bad_sig[10] ^= 0x80;
        assert!(verify(&json, &hex::encode(bad_sig), &public).is_err());
        let (_, other_public) = {
            let k = Ed25519KeyPair::from_seed_unchecked(&[8u8; 32]).unwrap();
            ((), hex::encode(k.public_key().as_ref()))
        };
        assert!(verify(&json, &sig, &other_public).is_err());
        // The build's pinned key did not sign this test document.
        assert!(verify_pinned(&json, &sig).is_err());
    }

    #[test]
    fn unknown_schema_and_fields_are_refused_even_when_signed() {
        let (pkcs8, public) = test_key();
        let mut d = doc();
        d.schema = "sealroom.golden.v0".into();
        let json = d.to_json().unwrap();
        let err = verify(&json, &sign(&json, &pkcs8).unwrap(), &public).unwrap_err().to_string();
        assert!(err.starts_with("golden: invalid schema"), "{err}");
        let mut v: serde_json::Value = serde_json::from_slice(&doc().to_json().unwrap()).unwrap();
        v["extra"] = serde_json::json!(1);
        let json = serde_json::to_vec(&v).unwrap();
        assert!(verify(&json, &sign(&json, &pkcs8).unwrap(), &public).is_err());
    }

    #[test]
    fn check_reports_the_first_difference() {
        let d = doc();
        let kernel = crate::pe::tests::build_pe(&[(".text", b"k")], b"", b"");
        let uki = crate::pe::tests::build_pe(&[(".linux", &kernel), (".initrd", b"i")], b"", b"");
        let p = predict(&uki, &[HashAlg::Sha256], &BootContext::default()).unwrap();
        d.check(&p).unwrap();
        let other = crate::pe::tests::build_pe(&[(".linux", &kernel), (".initrd", b"j")], b"", b"");
        let q = predict(&other, &[HashAlg::Sha256], &BootContext::default()).unwrap();
        let err = d.check(&q).unwrap_err().to_string();
        assert!(err.starts_with("golden: uki file sha256 mismatch: expected "), "{err}");
        let mut r = q.clone();
        r.file_sha256 = p.file_sha256.clone();
        r.authenticode_sha256 = p.authenticode_sha256.clone();
        r.authenticode_sha384 = p.authenticode_sha384.clone();
        let err = d.check(&r).unwrap_err().to_string();
        assert!(err.starts_with("golden: pcr4 (sha256) mismatch"), "{err}");
    }

    #[test]
    fn pinned_key_is_well_formed() {
        assert_eq!(decode_hex::<32>(PINNED_PUBLIC_KEY_HEX, "public key").unwrap().len(), 32);
    }
}
