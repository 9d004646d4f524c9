//! Intel TCB info and QE identity (PCS JSON, tcbInfo version 3 / enclaveIdentity version 2), and the TCB
//! evaluation Intel's QVL performs: the first TCB level the platform meets, converged with the TDX module and
//! QE levels. Mirrors Intel QVL (and dcap-qvl, our differential oracle) so verdicts agree.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::pck::PckExtension;
use super::quote::{EnclaveReport, TdReport};
use crate::x509::{UnixTime, parse_time};
use crate::{Error, Result};

const LAYER: &str = "tdx tcb";

fn fail(reason: impl Into<String>) -> Error {
    Error::check(LAYER, reason)
}

/// TCB status of a TCB level (Intel PCS vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum TcbStatus {
    /// Fully patched.
    UpToDate,
    /// Patched, but software hardening (e.g. LVI mitigations in the enclave) is needed.
    SWHardeningNeeded,
    /// Patched, but the platform configuration (e.g. SMT, BIOS settings) needs attention.
    ConfigurationNeeded,
    /// Both of the above.
    ConfigurationAndSWHardeningNeeded,
    /// Missing security updates.
    OutOfDate,
    /// Missing updates and needs configuration.
    OutOfDateConfigurationNeeded,
    /// The TD launched on an out-of-date TCB, the current TCB (TDX 1.5) is fine: relaunch the TD.
    TDRelaunchAdvised,
    /// As above, and configuration is needed.
    TDRelaunchAdvisedConfigurationNeeded,
    /// The platform's keys are compromised. Never accepted.
    Revoked,
}

impl TcbStatus {
    /// The PCS spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpToDate => "UpToDate",
            Self::SWHardeningNeeded => "SWHardeningNeeded",
            Self::ConfigurationNeeded => "ConfigurationNeeded",
            Self::ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            Self::OutOfDate => "OutOfDate",
            Self::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            Self::TDRelaunchAdvised => "TDRelaunchAdvised",
            Self::TDRelaunchAdvisedConfigurationNeeded => "TDRelaunchAdvisedConfigurationNeeded",
            Self::Revoked => "Revoked",
        }
    }

    /// Converges a platform status with a component's (TDX module, QE) status, as Intel QVL does.
    #[must_use]
    pub fn converge_with_component(self, component: Self) -> Self {
        use TcbStatus::{
            ConfigurationAndSWHardeningNeeded, ConfigurationNeeded, OutOfDate, OutOfDateConfigurationNeeded,
            Revoked, SWHardeningNeeded, UpToDate,
        };
        match (component, self) {
            (Revoked, _) => Revoked,
            (OutOfDate, UpToDate | SWHardeningNeeded) => OutOfDate,
            (OutOfDate, ConfigurationNeeded | ConfigurationAndSWHardeningNeeded) => {
                OutOfDateConfigurationNeeded
            }
            _ => self,
        }
    }

    /// TDX 1.5: the launch status against the current TCB's status (TEE_TCB_SVN2).
    #[must_use]
    pub fn check_for_relaunch(self, current: Self) -> Self {
        use TcbStatus::{
            ConfigurationAndSWHardeningNeeded, ConfigurationNeeded, OutOfDate, OutOfDateConfigurationNeeded,
            SWHardeningNeeded, TDRelaunchAdvised, TDRelaunchAdvisedConfigurationNeeded, UpToDate,
        };
        let config = |s| {
            matches!(
                s,
                ConfigurationNeeded
                    | OutOfDateConfigurationNeeded
                    | ConfigurationAndSWHardeningNeeded
                    | TDRelaunchAdvisedConfigurationNeeded
            )
        };
        match (self, current) {
            (
                OutOfDate | OutOfDateConfigurationNeeded,
                UpToDate | SWHardeningNeeded | ConfigurationNeeded | ConfigurationAndSWHardeningNeeded,
            ) => {
                if config(self) || config(current) {
                    TDRelaunchAdvisedConfigurationNeeded
                } else {
                    TDRelaunchAdvised
                }
            }
            _ => self,
        }
    }
}

impl fmt::Display for TcbStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TcbStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "UpToDate" => Self::UpToDate,
            "SWHardeningNeeded" => Self::SWHardeningNeeded,
            "ConfigurationNeeded" => Self::ConfigurationNeeded,
            "ConfigurationAndSWHardeningNeeded" => Self::ConfigurationAndSWHardeningNeeded,
            "OutOfDate" => Self::OutOfDate,
            "OutOfDateConfigurationNeeded" => Self::OutOfDateConfigurationNeeded,
            "TDRelaunchAdvised" => Self::TDRelaunchAdvised,
            "TDRelaunchAdvisedConfigurationNeeded" => Self::TDRelaunchAdvisedConfigurationNeeded,
            "Revoked" => Self::Revoked,
            other => return Err(fail(format!("unknown TCB status {other:?}"))),
        })
    }
}

// ----- JSON shapes (PCS) ---------------------------------------------------------------------------------------
//
// Strings are borrowed from the signed body where they have no escapes (all of Intel's do): the body is parsed
// on every cold collateral verification, and its strings are only read, never kept.

/// A JSON string, borrowed from the document unless it has escapes.
#[derive(Deserialize)]
pub(super) struct Text<'a>(#[serde(borrow)] pub(super) Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TcbInfoJson<'a> {
    id: String,
    version: u32,
    #[serde(borrow)]
    issue_date: Text<'a>,
    #[serde(borrow)]
    next_update: Text<'a>,
    #[serde(borrow)]
    fmspc: Text<'a>,
    #[serde(borrow)]
    pce_id: Text<'a>,
    tcb_evaluation_data_number: u32,
    #[serde(default, borrow)]
    tdx_module: Option<ModuleJson<'a>>,
    #[serde(default, borrow)]
    tdx_module_identities: Vec<ModuleIdentityJson<'a>>,
    #[serde(borrow)]
    tcb_levels: Vec<TcbLevelJson<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModuleJson<'a> {
    #[serde(borrow)]
    mrsigner: Text<'a>,
    #[serde(borrow)]
    attributes: Text<'a>,
    #[serde(borrow)]
    attributes_mask: Text<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModuleIdentityJson<'a> {
    id: String,
    #[serde(borrow)]
    mrsigner: Text<'a>,
    #[serde(borrow)]
    attributes: Text<'a>,
    #[serde(borrow)]
    attributes_mask: Text<'a>,
    #[serde(borrow)]
    tcb_levels: Vec<ModuleLevelJson<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModuleLevelJson<'a> {
    tcb: IsvSvnJson,
    #[serde(borrow)]
    tcb_date: Text<'a>,
    #[serde(borrow)]
    tcb_status: Text<'a>,
    #[serde(rename = "advisoryIDs", default)]
    advisory_ids: Vec<String>,
}

#[derive(Deserialize)]
struct IsvSvnJson {
    isvsvn: u16,
}

#[derive(Deserialize)]
struct SvnJson {
    svn: u8,
}

/// TCB component SVNs (`[{"svn": n, …}, …]`) read straight into an array; how many there were is kept so that
/// anything but 16 is refused by [`components`].
struct Components {
    svns: [u8; 16],
    count: usize,
}

impl<'de> Deserialize<'de> for Components {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Components;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of TCB components")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Components, A::Error> {
                let mut c = Components { svns: [0; 16], count: 0 };
                while let Some(SvnJson { svn }) = seq.next_element()? {
                    if let Some(slot) = c.svns.get_mut(c.count) {
                        *slot = svn;
                    }
                    c.count = c.count.saturating_add(1);
                }
                Ok(c)
            }
        }
        d.deserialize_seq(Visitor)
    }
}

#[derive(Deserialize)]
struct TcbJson {
    sgxtcbcomponents: Components,
    pcesvn: u16,
    #[serde(default)]
    tdxtcbcomponents: Option<Components>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TcbLevelJson<'a> {
    tcb: TcbJson,
    #[serde(borrow)]
    tcb_date: Text<'a>,
    #[serde(borrow)]
    tcb_status: Text<'a>,
    #[serde(rename = "advisoryIDs", default)]
    advisory_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QeIdentityJson<'a> {
    id: String,
    version: u32,
    #[serde(borrow)]
    issue_date: Text<'a>,
    #[serde(borrow)]
    next_update: Text<'a>,
    tcb_evaluation_data_number: u32,
    #[serde(borrow)]
    miscselect: Text<'a>,
    #[serde(borrow)]
    miscselect_mask: Text<'a>,
    #[serde(borrow)]
    attributes: Text<'a>,
    #[serde(borrow)]
    attributes_mask: Text<'a>,
    #[serde(borrow)]
    mrsigner: Text<'a>,
    isvprodid: u16,
    #[serde(borrow)]
    tcb_levels: Vec<ModuleLevelJson<'a>>,
}

fn hex_array<const N: usize>(s: &str, what: &str) -> Result<[u8; N]> {
    let v = hex::decode(s).map_err(|e| fail(format!("{what}: not hex: {e}")))?;
    v.as_slice().try_into().map_err(|_| fail(format!("{what}: {} bytes, expected {N}", v.len())))
}

// ----- Parsed, typed forms ------------------------------------------------------------------------------------

/// One platform TCB level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcbLevel {
    /// Minimum SGX TCB component SVNs.
    pub sgx_components: [u8; 16],
    /// Minimum PCESVN.
    pub pce_svn: u16,
    /// Minimum TDX TCB component SVNs (TDX TCB info only).
    pub tdx_components: Option<[u8; 16]>,
    /// tcbDate.
    pub tcb_date: UnixTime,
    /// Status of platforms at this level.
    pub status: TcbStatus,
    /// Intel security advisories that apply.
    pub advisory_ids: Vec<String>,
}

/// One TDX module (or QE) TCB level keyed by ISVSVN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsvLevel {
    /// Minimum ISVSVN.
    pub isv_svn: u16,
    /// tcbDate.
    pub tcb_date: UnixTime,
    /// Status.
    pub status: TcbStatus,
    /// Advisories.
    pub advisory_ids: Vec<String>,
}

/// Expected TDX module signer and attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxModuleIdentity {
    /// "TDX_01", "TDX_03", … (empty for the base `tdxModule`).
    pub id: String,
    /// MRSIGNERSEAM.
    pub mr_signer: [u8; 48],
    /// SEAMATTRIBUTES.
    pub attributes: [u8; 8],
    /// Mask applied to SEAMATTRIBUTES.
    pub attributes_mask: [u8; 8],
    /// Module TCB levels.
    pub levels: Vec<IsvLevel>,
}

/// A verified TCB info for one FMSPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcbInfo {
    /// "SGX" or "TDX".
    pub id: String,
    /// tcbInfo version (3).
    pub version: u32,
    /// issueDate.
    pub issue_date: UnixTime,
    /// nextUpdate.
    pub next_update: UnixTime,
    /// FMSPC.
    pub fmspc: [u8; 6],
    /// PCE-ID.
    pub pce_id: [u8; 2],
    /// TCB evaluation data number.
    pub tcb_evaluation_data_number: u32,
    /// Base TDX module identity (TDX only).
    pub tdx_module: Option<TdxModuleIdentity>,
    /// Per-major-version TDX module identities.
    pub tdx_module_identities: Vec<TdxModuleIdentity>,
    /// Platform levels, highest first.
    pub levels: Vec<TcbLevel>,
}

/// A verified QE identity ("QE" for SGX, "TD_QE" for TDX).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QeIdentity {
    /// "QE" or "TD_QE".
    pub id: String,
    /// enclaveIdentity version.
    pub version: u32,
    /// issueDate.
    pub issue_date: UnixTime,
    /// nextUpdate.
    pub next_update: UnixTime,
    /// TCB evaluation data number.
    pub tcb_evaluation_data_number: u32,
    /// MISCSELECT.
    pub misc_select: u32,
    /// MISCSELECT mask.
    pub misc_select_mask: u32,
    /// ATTRIBUTES.
    pub attributes: [u8; 16],
    /// ATTRIBUTES mask.
    pub attributes_mask: [u8; 16],
    /// MRSIGNER.
    pub mr_signer: [u8; 32],
    /// ISVPRODID.
    pub isv_prod_id: u16,
    /// Levels by ISVSVN, highest first.
    pub levels: Vec<IsvLevel>,
}

fn isv_levels(levels: Vec<ModuleLevelJson<'_>>) -> Result<Vec<IsvLevel>> {
    levels
        .into_iter()
        .map(|l| {
            Ok(IsvLevel {
                isv_svn: l.tcb.isvsvn,
                tcb_date: parse_time(&l.tcb_date)?,
                status: l.tcb_status.parse()?,
                advisory_ids: l.advisory_ids,
            })
        })
        .collect()
}

fn module_identity(id: String, m: &ModuleJson<'_>, levels: Vec<IsvLevel>) -> Result<TdxModuleIdentity> {
    Ok(TdxModuleIdentity {
        id,
        mr_signer: hex_array(&m.mrsigner, "tdxModule mrsigner")?,
        attributes: hex_array(&m.attributes, "tdxModule attributes")?,
        attributes_mask: hex_array(&m.attributes_mask, "tdxModule attributesMask")?,
        levels,
    })
}

fn components(c: &Components, what: &str) -> Result<[u8; 16]> {
    if c.count != 16 {
        return Err(fail(format!("{what}: {} components, expected 16", c.count)));
    }
    Ok(c.svns)
}

impl TcbInfo {
    /// Parses the `tcbInfo` object (the exact bytes Intel signed).
    ///
    /// # Errors
    /// When the JSON is malformed, of an unsupported version, or has invalid fields.
    pub fn from_json(body: &str) -> Result<Self> {
        let j: TcbInfoJson<'_> =
            serde_json::from_str(body).map_err(|e| fail(format!("tcbInfo JSON: {e}")))?;
        if j.version != 3 {
            return Err(fail(format!("tcbInfo version {} not supported (expected 3)", j.version)));
        }
        if j.id != "SGX" && j.id != "TDX" {
            return Err(fail(format!("tcbInfo id {:?} not supported", j.id)));
        }
        let is_tdx = j.id == "TDX";
        let mut levels = j
            .tcb_levels
            .into_iter()
            .map(|l| {
                let tdx_components = match (&l.tcb.tdxtcbcomponents, is_tdx) {
                    (Some(c), true) => Some(components(c, "tdxtcbcomponents")?),
                    (None, true) => return Err(fail("TDX tcbLevel without tdxtcbcomponents")),
                    (_, false) => None,
                };
                Ok(TcbLevel {
                    sgx_components: components(&l.tcb.sgxtcbcomponents, "sgxtcbcomponents")?,
                    pce_svn: l.tcb.pcesvn,
                    tdx_components,
                    tcb_date: parse_time(&l.tcb_date)?,
                    status: l.tcb_status.parse()?,
                    advisory_ids: l.advisory_ids,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Highest first, as Intel QVL orders them before matching.
        levels.sort_by(|a, b| {
            b.sgx_components
                .cmp(&a.sgx_components)
                .then(b.pce_svn.cmp(&a.pce_svn))
                .then(b.tdx_components.cmp(&a.tdx_components))
        });
        let tdx_module =
            j.tdx_module.as_ref().map(|m| module_identity(String::new(), m, Vec::new())).transpose()?;
        let tdx_module_identities = j
            .tdx_module_identities
            .into_iter()
            .map(|m| {
                let levels = isv_levels(m.tcb_levels)?;
                module_identity(
                    m.id,
                    &ModuleJson {
                        mrsigner: m.mrsigner,
                        attributes: m.attributes,
                        attributes_mask: m.attributes_mask,
                    },
                    levels,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            id: j.id,
            version: j.version,
            issue_date: parse_time(&j.issue_date)?,
            next_update: parse_time(&j.next_update)?,
            fmspc: hex_array(&j.fmspc, "tcbInfo fmspc")?,
            pce_id: hex_array(&j.pce_id, "tcbInfo pceId")?,
            tcb_evaluation_data_number: j.tcb_evaluation_data_number,
            tdx_module,
            tdx_module_identities,
            levels,
        })
    }

    fn module_identity_for(&self, tee_tcb_svn: &[u8; 16]) -> Result<Option<&TdxModuleIdentity>> {
        let major = tee_tcb_svn[1];
        if major == 0 {
            return Ok(None);
        }
        let wanted = format!("TDX_{major:02X}");
        self.tdx_module_identities
            .iter()
            .find(|m| m.id.eq_ignore_ascii_case(&wanted))
            .map(Some)
            .ok_or_else(|| fail(format!("no TDX module identity {wanted} in TCB info")))
    }

    fn find_level(&self, pck: &PckExtension, tee_tcb_svn: Option<&[u8; 16]>) -> Result<&TcbLevel> {
        let meets = |l: &&TcbLevel| {
            let sgx = pck.sgx_tcb_components.iter().zip(&l.sgx_components).all(|(h, n)| h >= n);
            let pce = pck.pce_svn >= l.pce_svn;
            let tdx = match (tee_tcb_svn, &l.tdx_components) {
                (None, _) => true,
                (Some(svn), Some(need)) => {
                    let skip = if svn[1] > 0 { 2 } else { 0 };
                    svn.iter().zip(need).skip(skip).all(|(h, n)| h >= n)
                }
                (Some(_), None) => false,
            };
            sgx && pce && tdx
        };
        let level = self.levels.iter().find(meets).ok_or_else(|| {
            fail(format!(
                "no matching TCB level (TCB not supported): PCK SGX components {}, PCESVN {}{}",
                hex::encode(pck.sgx_tcb_components),
                pck.pce_svn,
                tee_tcb_svn.map(|s| format!(", TEE_TCB_SVN {}", hex::encode(s))).unwrap_or_default()
            ))
        })?;
        if matches!(
            level.status,
            TcbStatus::TDRelaunchAdvised | TcbStatus::TDRelaunchAdvisedConfigurationNeeded
        ) {
            return Err(fail(format!("TCB info level has status {} (not valid in TCB info)", level.status)));
        }
        Ok(level)
    }

    fn evaluate_tdx(&self, pck: &PckExtension, tee_tcb_svn: &[u8; 16]) -> Result<TcbLevel> {
        let mut level = self.find_level(pck, Some(tee_tcb_svn))?.clone();
        if let Some(module) = self.module_identity_for(tee_tcb_svn)? {
            let isv = u16::from(tee_tcb_svn[0]);
            let m = module.levels.iter().find(|l| isv >= l.isv_svn).ok_or_else(|| {
                fail(format!("TDX module ISVSVN {isv} is below every level of {}", module.id))
            })?;
            if !matches!(m.status, TcbStatus::UpToDate | TcbStatus::OutOfDate | TcbStatus::Revoked) {
                return Err(fail(format!(
                    "TDX module level has status {} (not valid for a module)",
                    m.status
                )));
            }
            level.status = level.status.converge_with_component(m.status);
            for a in &m.advisory_ids {
                if !level.advisory_ids.contains(a) {
                    level.advisory_ids.push(a.clone());
                }
            }
            level.tcb_date = level.tcb_date.min(m.tcb_date);
        }
        Ok(level)
    }

    /// Checks the TD's TDX module signer and SEAM attributes against this TCB info.
    fn check_module_identity(&self, td: &TdReport) -> Result<()> {
        let base = self.tdx_module.as_ref().ok_or_else(|| fail("TDX TCB info lacks tdxModule"))?;
        let m = self.module_identity_for(&td.tee_tcb_svn)?.unwrap_or(base);
        if td.mr_signer_seam != m.mr_signer {
            return Err(fail(format!(
                "TDX module MRSIGNERSEAM mismatch: expected {}, got {}",
                hex::encode(m.mr_signer),
                hex::encode(td.mr_signer_seam)
            )));
        }
        for ((want, mask), have) in m.attributes.iter().zip(&m.attributes_mask).zip(&td.seam_attributes) {
            if want & mask != have & mask || have & !mask != 0 {
                return Err(fail(format!(
                    "TDX module SEAMATTRIBUTES mismatch: expected {} under mask {}, got {}",
                    hex::encode(m.attributes),
                    hex::encode(m.attributes_mask),
                    hex::encode(td.seam_attributes)
                )));
            }
        }
        Ok(())
    }

    /// The platform TCB level of an SGX platform, or of a TD (launch TCB), with the TD 1.5 current TCB level.
    ///
    /// # Errors
    /// FMSPC/type mismatch, no matching level, unknown module identity, module signer/attribute mismatch.
    pub fn evaluate(
        &self,
        pck: &PckExtension,
        td: Option<&TdReport>,
    ) -> Result<(TcbLevel, Option<TcbLevel>)> {
        if self.fmspc != pck.fmspc {
            return Err(fail(format!(
                "TCB info FMSPC {} does not match PCK FMSPC {}",
                hex::encode(self.fmspc),
                hex::encode(pck.fmspc)
            )));
        }
        if self.pce_id != pck.pce_id {
            return Err(fail(format!(
                "TCB info PCE-ID {} does not match PCK PCE-ID {}",
                hex::encode(self.pce_id),
                hex::encode(pck.pce_id)
            )));
        }
        match td {
            None => {
                if self.id != "SGX" {
                    return Err(fail(format!("SGX quote with a {} TCB info", self.id)));
                }
                Ok((self.find_level(pck, None)?.clone(), None))
            }
            Some(td) => {
                if self.id != "TDX" {
                    return Err(fail(format!("TDX quote with a {} TCB info", self.id)));
                }
                self.check_module_identity(td)?;
                let launch = self.evaluate_tdx(pck, &td.tee_tcb_svn)?;
                let current = td.tee_tcb_svn2.map(|svn2| self.evaluate_tdx(pck, &svn2)).transpose()?;
                Ok((launch, current))
            }
        }
    }
}

impl QeIdentity {
    /// Parses the `enclaveIdentity` object (the exact bytes Intel signed).
    ///
    /// # Errors
    /// When the JSON is malformed or has invalid fields.
    pub fn from_json(body: &str) -> Result<Self> {
        let j: QeIdentityJson<'_> =
            serde_json::from_str(body).map_err(|e| fail(format!("enclaveIdentity JSON: {e}")))?;
        if j.version != 2 {
            return Err(fail(format!("enclaveIdentity version {} not supported (expected 2)", j.version)));
        }
        let mut levels = isv_levels(j.tcb_levels)?;
        levels.sort_by_key(|l| std::cmp::Reverse(l.isv_svn));
        Ok(Self {
            id: j.id,
            version: j.version,
            issue_date: parse_time(&j.issue_date)?,
            next_update: parse_time(&j.next_update)?,
            tcb_evaluation_data_number: j.tcb_evaluation_data_number,
            misc_select: u32::from_le_bytes(hex_array(&j.miscselect, "miscselect")?),
            misc_select_mask: u32::from_le_bytes(hex_array(&j.miscselect_mask, "miscselectMask")?),
            attributes: hex_array(&j.attributes, "attributes")?,
            attributes_mask: hex_array(&j.attributes_mask, "attributesMask")?,
            mr_signer: hex_array(&j.mrsigner, "mrsigner")?,
            isv_prod_id: j.isvprodid,
            levels,
        })
    }

    /// Checks the QE report against this identity and returns the QE's TCB level.
    ///
    /// # Errors
    /// MRSIGNER, ISVPRODID, MISCSELECT or ATTRIBUTES mismatch, a debug QE, or an ISVSVN below every level.
    pub fn evaluate(&self, qe: &EnclaveReport) -> Result<IsvLevel> {
        if qe.mr_signer != self.mr_signer {
            return Err(fail(format!(
                "QE MRSIGNER mismatch: expected {}, got {}",
                hex::encode(self.mr_signer),
                hex::encode(qe.mr_signer)
            )));
        }
        if qe.attributes[0] & 0x02 != 0 {
            return Err(fail("QE is a debug enclave"));
        }
        if qe.isv_prod_id != self.isv_prod_id {
            return Err(fail(format!(
                "QE ISVPRODID mismatch: expected {}, got {}",
                self.isv_prod_id, qe.isv_prod_id
            )));
        }
        if qe.misc_select & self.misc_select_mask != self.misc_select & self.misc_select_mask {
            return Err(fail(format!(
                "QE MISCSELECT mismatch: expected {:08x} under mask {:08x}, got {:08x}",
                self.misc_select, self.misc_select_mask, qe.misc_select
            )));
        }
        for ((want, mask), have) in self.attributes.iter().zip(&self.attributes_mask).zip(&qe.attributes) {
            if want & mask != have & mask {
                return Err(fail(format!(
                    "QE ATTRIBUTES mismatch: expected {} under mask {}, got {}",
                    hex::encode(self.attributes),
                    hex::encode(self.attributes_mask),
                    hex::encode(qe.attributes)
                )));
            }
        }
        let level = self.levels.iter().find(|l| qe.isv_svn >= l.isv_svn).ok_or_else(|| {
            fail(format!(
                "QE ISVSVN {} is below the minimum {} of the QE identity",
                qe.isv_svn,
                self.levels.last().map_or(0, |l| l.isv_svn)
            ))
        })?;
        if matches!(
            level.status,
            TcbStatus::SWHardeningNeeded
                | TcbStatus::ConfigurationAndSWHardeningNeeded
                | TcbStatus::TDRelaunchAdvised
                | TcbStatus::TDRelaunchAdvisedConfigurationNeeded
        ) {
            return Err(fail(format!("QE identity level has status {} (not valid for a QE)", level.status)));
        }
        Ok(level.clone())
    }
}
