//! Verifying one GPU: the device certificate chain to NVIDIA's pinned device identity root, the report's
//! P-384 signature and nonce, the FWID binding, and every measurement index the matching driver and VBIOS
//! RIMs list (each RIM signed and chained to NVIDIA's pinned RIM root).
//!
//! Chains and RIMs are verified once ([`verify_device_chain`], [`verify_rim`]) and keep their validity window,
//! so a broker can cache them and [`verify_gpu_report`] only re-checks the time. Revocation is offline: the
//! caller supplies CRL snapshots or nothing, and the claims say which ([`RevocationStatus`]).

use serde::Serialize;

use super::report::GpuReport;
use super::rim::Rim;
use crate::error::{Error, Result};
use crate::x509::{Certificate, Crl, PublicKey, SignatureAlgorithm, UnixTime, format_time, verify_chain};

const LAYER: &str = "gpu";

/// NVIDIA Device Identity CA (nvtrust `verifier_device_root.pem`): anchors every Hopper/Blackwell device chain.
pub const NVIDIA_DEVICE_ROOT_PEM: &[u8] = include_bytes!("nvidia_device_root.pem");
/// NVIDIA CoRIM signing Root CA (nvtrust `verifier_RIM_root.pem`): anchors every RIM signing chain.
pub const NVIDIA_RIM_ROOT_PEM: &[u8] = include_bytes!("nvidia_rim_root.pem");

/// TCG DICE TcbInfo extension; NVIDIA's carries the FWID as the SHA-384 digest after the SHA-384 OID.
const DICE_TCB_INFO_OID: &str = "2.23.133.5.4.1";
/// DER of OID 2.16.840.1.101.3.4.2.2 (SHA-384) followed by an OCTET STRING of 48 bytes.
const SHA384_FWID_PREFIX: &[u8] =
    &[0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x04, 0x30];

fn fail(reason: impl Into<String>) -> Error {
    Error::check(LAYER, reason)
}

/// The pinned trust anchors.
#[derive(Debug, Clone)]
pub struct GpuTrust {
    device_roots: Vec<Certificate>,
    rim_roots: Vec<Certificate>,
}

impl GpuTrust {
    /// NVIDIA's production roots, embedded in this crate.
    ///
    /// # Errors
    /// Only if the embedded PEM is corrupt (a build defect).
    pub fn nvidia() -> Result<Self> {
        Ok(Self {
            device_roots: Certificate::chain_from_pem(NVIDIA_DEVICE_ROOT_PEM)?,
            rim_roots: Certificate::chain_from_pem(NVIDIA_RIM_ROOT_PEM)?,
        })
    }
}

/// GPU architecture, from the chip named by the NVIDIA-signed attestation certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum GpuArchitecture {
    /// GH100 (H100, H200, GH200).
    Hopper,
    /// GB100/GB102 (B100, B200).
    Blackwell,
}

impl GpuArchitecture {
    /// The architecture of a chip name ("GH100").
    #[must_use]
    pub fn of_chip(chip: &str) -> Option<Self> {
        if chip.starts_with("GH1") {
            Some(Self::Hopper)
        } else if chip.starts_with("GB1") {
            Some(Self::Blackwell)
        } else {
            None
        }
    }

    /// Lower-case name, as in policies.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Hopper => "hopper",
            Self::Blackwell => "blackwell",
        }
    }
}

/// Offline revocation input.
#[derive(Debug, Clone, Default)]
pub enum Revocation {
    /// No revocation data: the claims say [`RevocationStatus::NotChecked`].
    #[default]
    NotChecked,
    /// CRL snapshots fetched beforehand; each is verified against its issuer at the verification time. Every
    /// certificate checked must be covered (fail closed), except the device leaf, whose per-GPU issuer (the
    /// BROM certificate) publishes no revocation data (NVIDIA's own flow does not check it either).
    Crls(Vec<Crl>),
}

/// Whether revocation was checked; never silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationStatus {
    /// No revocation data was supplied: signatures, chain and validity are fine, revocation is unknown.
    NotChecked,
    /// Every covered certificate was checked against a verified CRL current at the verification time.
    CheckedCrl,
}

impl std::fmt::Display for RevocationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotChecked => "revocation not checked",
            Self::CheckedCrl => "revocation checked (CRL)",
        })
    }
}

/// A device chain verified to the pinned device root.
#[derive(Debug, Clone)]
pub struct DeviceChain {
    leaf_key: PublicKey,
    leaf_cn: String,
    /// Chip named by the attestation certificate ("GH100").
    pub chip: String,
    /// Its architecture.
    pub architecture: GpuArchitecture,
    /// FWID in the attestation certificate's DICE extension, if any.
    pub leaf_fwid: Option<[u8; 48]>,
    /// Attestation certificate serial, hex (NVIDIA's UEID).
    pub leaf_serial: String,
    /// Every certificate of the chain is valid from this time on.
    pub valid_from: UnixTime,
    /// … until this time.
    pub valid_until: UnixTime,
    /// Revocation status of the chain.
    pub revocation: RevocationStatus,
}

/// Verifies a GPU attestation certificate chain (leaf first; it may end with the root).
///
/// # Errors
/// A broken link, an expired certificate, an unpinned root, a revoked certificate, a missing CRL when CRLs
/// were given, or a chip this verifier does not know.
pub fn verify_device_chain(
    trust: &GpuTrust,
    chain: &[Certificate],
    revocation: &Revocation,
    at: UnixTime,
) -> Result<DeviceChain> {
    let anchor = verify_chain(chain, &trust.device_roots, at).map_err(|e| e.within(LAYER, "device chain"))?;
    let full = with_anchor(chain, trust.device_roots.get(anchor))?;
    let leaf = chain.first().ok_or_else(|| fail("device chain: empty"))?;
    let chip = leaf.subject_cn().split_whitespace().next().unwrap_or_default().to_owned();
    let architecture = GpuArchitecture::of_chip(&chip).ok_or_else(|| {
        fail(format!("device chain: chip {chip:?} of '{}' is not supported", leaf.subject_cn()))
    })?;
    let leaf_fwid = leaf.extension(DICE_TCB_INFO_OID).and_then(|ext| fwid_in(&ext.value));
    let revocation =
        check_revocation(&full, 1, revocation, at).map_err(|e| e.within(LAYER, "device chain"))?;
    Ok(DeviceChain {
        leaf_key: leaf.public_key().clone(),
        leaf_cn: leaf.subject_cn().to_owned(),
        chip,
        architecture,
        leaf_fwid,
        leaf_serial: hex::encode(leaf.serial()),
        valid_from: full.iter().map(Certificate::not_before).max().unwrap_or(UnixTime::MAX),
        valid_until: full.iter().map(Certificate::not_after).min().unwrap_or(UnixTime::MIN),
        revocation,
    })
}

/// The chain without a trailing copy of the anchor, then the anchor.
fn with_anchor(chain: &[Certificate], anchor: Option<&Certificate>) -> Result<Vec<Certificate>> {
    let anchor = anchor.ok_or_else(|| fail("anchor index out of range"))?;
    let mut full: Vec<Certificate> = chain.iter().filter(|c| *c != anchor).cloned().collect();
    full.push(anchor.clone());
    Ok(full)
}

/// The 48 bytes after the SHA-384 OID in NVIDIA's DICE TcbInfo extension.
fn fwid_in(value: &[u8]) -> Option<[u8; 48]> {
    let at = value.windows(SHA384_FWID_PREFIX.len()).rposition(|w| w == SHA384_FWID_PREFIX)?;
    let start = at.checked_add(SHA384_FWID_PREFIX.len())?;
    value.get(start..start.checked_add(48)?)?.try_into().ok()
}

/// Checks `full` (leaf first, anchor last) from certificate `first` on, against the supplied CRLs.
fn check_revocation(
    full: &[Certificate],
    first: usize,
    revocation: &Revocation,
    at: UnixTime,
) -> Result<RevocationStatus> {
    let Revocation::Crls(crls) = revocation else {
        return Ok(RevocationStatus::NotChecked);
    };
    for (i, cert) in full.iter().enumerate().skip(first) {
        let Some(issuer) = full.get(i.saturating_add(1)) else {
            break; // the pinned anchor itself
        };
        let crl = crls.iter().find(|c| c.verify(issuer, at).is_ok()).ok_or_else(|| {
            fail(format!("no valid CRL of '{}' for '{}'", issuer.subject_cn(), cert.subject_cn()))
        })?;
        if crl.is_revoked(cert.serial()) {
            return Err(fail(format!(
                "certificate '{}' is revoked (CRL of '{}')",
                cert.subject_cn(),
                crl.issuer_cn()
            )));
        }
    }
    Ok(RevocationStatus::CheckedCrl)
}

/// A RIM whose signature verified and whose signing chain verified to the pinned RIM root.
#[derive(Debug, Clone)]
pub struct VerifiedRim {
    /// The RIM.
    pub rim: Rim,
    /// The signing chain is valid from this time on …
    pub valid_from: UnixTime,
    /// … until this time.
    pub valid_until: UnixTime,
    /// Revocation status of the signing chain.
    pub revocation: RevocationStatus,
}

/// Verifies a RIM file: XML signature, then its signing chain to the pinned RIM root at `at`.
///
/// # Errors
/// Malformed or altered RIM, a chain that does not reach the pinned root, an expired or revoked certificate.
pub fn verify_rim(
    trust: &GpuTrust,
    xml: &[u8],
    revocation: &Revocation,
    at: UnixTime,
) -> Result<VerifiedRim> {
    let rim = Rim::parse_signed(xml)?;
    let anchor = verify_chain(&rim.signer_chain, &trust.rim_roots, at)
        .map_err(|e| e.within("gpu rim", "signer chain"))?;
    let full = with_anchor(&rim.signer_chain, trust.rim_roots.get(anchor))?;
    let revocation =
        check_revocation(&full, 0, revocation, at).map_err(|e| e.within("gpu rim", "signer chain"))?;
    Ok(VerifiedRim {
        valid_from: full.iter().map(Certificate::not_before).max().unwrap_or(UnixTime::MAX),
        valid_until: full.iter().map(Certificate::not_after).min().unwrap_or(UnixTime::MIN),
        revocation,
        rim,
    })
}

/// Which RIM a reference value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RimKind {
    /// The driver RIM (matched by driver version).
    Driver,
    /// The VBIOS RIM (matched by VBIOS version).
    Vbios,
}

impl std::fmt::Display for RimKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Driver => "driver",
            Self::Vbios => "VBIOS",
        })
    }
}

/// What a verified GPU report proves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuClaims {
    /// Architecture.
    pub architecture: GpuArchitecture,
    /// Chip ("GH100").
    pub chip: String,
    /// Driver version from the report.
    pub driver_version: String,
    /// VBIOS version from the report.
    pub vbios_version: String,
    /// NVIDIA RIM-service id of the driver RIM ("NV_GPU_DRIVER_GH100_545.00").
    pub driver_rim_id: String,
    /// NVIDIA RIM-service id of the VBIOS RIM ("NV_GPU_VBIOS_1010_0200_882_96005E0001").
    pub vbios_rim_id: String,
    /// SWID tagId of the driver RIM used.
    pub driver_rim_tag_id: String,
    /// SWID tagId of the VBIOS RIM used.
    pub vbios_rim_tag_id: String,
    /// Number of measurement indices compared (all the RIMs list as active).
    pub measurements_compared: usize,
    /// Every index compared, with the RIM that lists it: each matched one of its golden values (a mismatch
    /// refuses the report, so claims exist only when all matched).
    pub measurements_matched: Vec<(RimKind, u8)>,
    /// Whether the report's FWID was present and equal to the attestation certificate's.
    pub fwid_bound: bool,
    /// Attestation certificate serial, hex.
    pub attestation_cert_serial: String,
    /// Revocation status over the device chain and both RIM chains.
    pub revocation: RevocationStatus,
}

/// Verifies one report against a verified device chain, the verified RIMs at hand, and the expected nonce
/// (sealroom: the binding digest, so the GPU is tied to the same nonce and TEE key as the CPU evidence).
///
/// # Errors
/// Every failed check ([`Error::Checks`] when more than one): signature, nonce, FWID, no or several matching
/// RIMs, RIM validity, and one reason per measurement index that matches none of its golden values.
pub fn verify_gpu_report(
    report: &[u8],
    chain: &DeviceChain,
    rims: &[VerifiedRim],
    nonce: &[u8; 32],
    at: UnixTime,
) -> Result<GpuClaims> {
    let report = GpuReport::parse(report)?;
    let mut failures = Vec::new();
    if at < chain.valid_from || at > chain.valid_until {
        failures.push(fail(format!(
            "device chain not valid at {} (valid {}..{})",
            format_time(at),
            format_time(chain.valid_from),
            format_time(chain.valid_until)
        )));
    }
    if chain
        .leaf_key
        .verify(SignatureAlgorithm::EcdsaSha384Fixed, report.signed_bytes(), &report.signature)
        .is_err()
    {
        failures.push(fail(format!("report signature invalid under '{}'", chain.leaf_cn)));
    }
    if !failures.is_empty() {
        // An unsigned (or expired-chain) report says nothing about the GPU; comparing its contents would only
        // add noise to the refusal.
        return Err(refusal(failures));
    }
    if report.request_nonce != *nonce {
        failures.push(fail(format!(
            "nonce mismatch (report {}, expected {})",
            hex::encode(report.request_nonce),
            hex::encode(nonce)
        )));
    }
    let signed_fields = (|| {
        Ok::<_, Error>((report.fwid()?, report.driver_version()?, report.vbios_version()?, report.board()?))
    })();
    let (fwid, driver_version, vbios_version, (project, project_sku, chip_sku)) = match signed_fields {
        Ok(fields) => fields,
        Err(e) => {
            failures.push(e);
            return Err(refusal(failures));
        }
    };
    let fwid_bound = match (fwid, chain.leaf_fwid) {
        (Some(reported), Some(certified)) if reported == certified => true,
        (Some(reported), _) => {
            failures
                .push(fail(format!("FWID {} is not the attestation certificate's", hex::encode(reported))));
            false
        }
        (None, _) => false,
    };
    let driver = select_rim(rims, RimKind::Driver, &driver_version, &chain.chip, at, &mut failures);
    let vbios = select_rim(rims, RimKind::Vbios, &vbios_version, &chain.chip, at, &mut failures);
    let mut matched = Vec::new();
    if let (Some(driver), Some(vbios)) = (driver, vbios) {
        matched = compare_measurements(
            &report,
            &[(RimKind::Driver, &driver.rim), (RimKind::Vbios, &vbios.rim)],
            &mut failures,
        );
    }
    Error::from_all(failures)?;
    let (Some(driver), Some(vbios)) = (driver, vbios) else {
        return Err(fail("internal: RIMs missing after checks"));
    };
    let all_checked = [chain.revocation, driver.revocation, vbios.revocation]
        .iter()
        .all(|r| *r == RevocationStatus::CheckedCrl);
    Ok(GpuClaims {
        architecture: chain.architecture,
        chip: chain.chip.clone(),
        driver_rim_id: format!("NV_GPU_DRIVER_{}_{driver_version}", chain.chip),
        vbios_rim_id: format!(
            "NV_GPU_VBIOS_{project}_{project_sku}_{chip_sku}_{}",
            vbios_version.replace('.', "").to_ascii_uppercase()
        ),
        driver_version,
        vbios_version,
        driver_rim_tag_id: driver.rim.tag_id.clone(),
        vbios_rim_tag_id: vbios.rim.tag_id.clone(),
        measurements_compared: matched.len(),
        measurements_matched: matched,
        fwid_bound,
        attestation_cert_serial: chain.leaf_serial.clone(),
        revocation: if all_checked { RevocationStatus::CheckedCrl } else { RevocationStatus::NotChecked },
    })
}

/// The error for a non-empty list of failures.
fn refusal(mut failures: Vec<Error>) -> Error {
    if failures.len() == 1
        && let Some(only) = failures.pop()
    {
        return only;
    }
    Error::Checks(failures)
}

/// The one RIM for this version and chip, valid at `at`.
fn select_rim<'a>(
    rims: &'a [VerifiedRim],
    kind: RimKind,
    version: &str,
    chip: &str,
    at: UnixTime,
    failures: &mut Vec<Error>,
) -> Option<&'a VerifiedRim> {
    let matching: Vec<&VerifiedRim> = rims
        .iter()
        .filter(|r| r.rim.version.eq_ignore_ascii_case(version) && r.rim.product == chip)
        .collect();
    match matching.as_slice() {
        [] => {
            failures.push(fail(format!("no matching RIM for {kind} {version} on {chip}")));
            None
        }
        [one] => {
            if at < one.valid_from || at > one.valid_until {
                failures.push(fail(format!(
                    "{kind} RIM {} not valid at {} (signing chain valid {}..{})",
                    one.rim.tag_id,
                    format_time(at),
                    format_time(one.valid_from),
                    format_time(one.valid_until)
                )));
            }
            Some(one)
        }
        several => {
            failures
                .push(fail(format!("{} RIMs match {kind} {version} on {chip}; supply one", several.len())));
            None
        }
    }
}

/// Compares every active index of every RIM with its block (RIM index i is SPDM block i + 1); one failure per
/// index. Returns every index compared and matched, with its RIM.
fn compare_measurements(
    report: &GpuReport,
    rims: &[(RimKind, &Rim)],
    failures: &mut Vec<Error>,
) -> Vec<(RimKind, u8)> {
    let mut matched = Vec::new();
    for (n, (kind, rim)) in rims.iter().enumerate() {
        for (index, golden) in &rim.measurements {
            if let Some((other, _)) =
                rims.iter().skip(n + 1).find(|(_, r)| r.measurements.contains_key(index))
            {
                failures.push(fail(format!(
                    "RIM index {index} is active in both the {kind} and the {other} RIM"
                )));
                continue;
            }
            let block_index = index.checked_add(1);
            match block_index.and_then(|b| report.block(b)) {
                None => failures.push(fail(format!(
                    "{kind} RIM index {index}: the report has no block {}",
                    u16::from(*index) + 1
                ))),
                Some(block) if golden.alternatives.contains(&block.value) => matched.push((*kind, *index)),
                Some(block) => failures.push(fail(format!(
                    "{kind} RIM index {index} (block {}): measurement {} matches none of {} golden values",
                    block.index,
                    hex::encode(&block.value),
                    golden.alternatives.len()
                ))),
            }
        }
    }
    matched
}
