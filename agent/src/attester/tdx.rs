//! Intel TDX attester: quotes through configfs-tsm, RTMR3 extend through sysfs, CCEL from ACPI.
//!
//! RTMR extend uses `/sys/class/misc/tdx_guest/measurements/rtmr3:sha384` (Linux ≥ 6.16, the TSM
//! measurement-register sysfs): write the 48-byte SHA-384 digest, the kernel issues TDG.MR.RTMR.EXTEND.
//!
//! No ioctl fallback, because upstream has none: upstream `drivers/virt/coco/tdx-guest/tdx-guest.c` answers only
//! `TDX_CMD_GET_REPORT0` (every other command is `-ENOTTY`) and upstream `uapi/linux/tdx-guest.h` defines no
//! `TDX_CMD_EXTEND_RTMR`. That ioctl (`_IOR('T', 3, struct tdx_extend_rtmr_req)`, with VERIFY_REPORT and GET_QUOTE)
//! exists only in Intel's downstream TDX guest kernels and in an RFC series ("virt: tdx-guest: Add RTMR based
//! measurement update support", 2024) that was superseded by the sysfs interface. Issuing it on an upstream kernel
//! would fail anyway, and on a downstream one it would be an ABI upstream never promised, so on a kernel without
//! the sysfs file the agent refuses to measure (with that reason) rather than leave RTMR3 unextended.

use sealroom_measurements::binding::{Nonce, TeePublicKey, report_data};
use sealroom_measurements::evidence::{HashAlg, Platform, TdxEvidence, limits};

use super::tsm::TsmReport;
use super::{Attester, EventDigests, Part};
use crate::error::{Error, Result};
use crate::paths::{KernelPaths, read_optional};

const NAME: &str = "tdx";
/// The runtime RTMR (docs/architecture.md).
pub const RUNTIME_RTMR: u8 = 3;

/// The TDX attester.
#[derive(Debug)]
pub struct TdxAttester {
    paths: KernelPaths,
    tsm: TsmReport,
    ccel_table: Vec<u8>,
    ccel_log: Vec<u8>,
}

impl TdxAttester {
    /// Opens the configfs-tsm entry and reads the CCEL under `paths`.
    ///
    /// # Errors
    /// When configfs-tsm is missing or the CCEL cannot be read.
    pub fn open(paths: &KernelPaths) -> Result<Self> {
        let tsm = TsmReport::open(&paths.tsm_report())?;
        let ccel_table =
            read_optional("ccel table", &paths.ccel_table(), limits::CCEL_TABLE)?.unwrap_or_default();
        let ccel_log = read_optional("ccel log", &paths.ccel_log(), limits::EVENT_LOG)?.unwrap_or_default();
        Ok(Self { paths: paths.clone(), tsm, ccel_table, ccel_log })
    }

    /// The configfs-tsm entry in use.
    #[must_use]
    pub fn tsm(&self) -> &TsmReport {
        &self.tsm
    }
}

impl Attester for TdxAttester {
    fn name(&self) -> &'static str {
        NAME
    }

    fn platform(&self) -> Platform {
        Platform::Tdx
    }

    fn attest(&mut self, nonce: &Nonce, key: &TeePublicKey) -> Result<Part> {
        let report = self.tsm.report(&report_data(nonce, key), limits::TDX_QUOTE, None)?;
        Ok(Part::Tdx(TdxEvidence {
            quote: report.outblob,
            ccel_table: self.ccel_table.clone(),
            ccel_log: self.ccel_log.clone(),
        }))
    }

    fn runtime_algorithms(&self) -> Vec<HashAlg> {
        vec![HashAlg::Sha384]
    }

    fn extend_runtime(&mut self, digests: &EventDigests) -> Result<()> {
        let d = digests
            .get(HashAlg::Sha384)
            .ok_or_else(|| Error::attester(NAME, "rtmr3 extend: no sha384 digest"))?;
        let path = self.paths.tdx_rtmr(RUNTIME_RTMR);
        if !path.exists() {
            return Err(Error::attester(
                NAME,
                format!("rtmr3 extend: {} missing (needs Linux >= 6.16)", path.display()),
            ));
        }
        std::fs::write(&path, d).map_err(Error::io("tdx rtmr3", &path))
    }

    fn event_logs(&self) -> (Vec<u8>, Vec<u8>) {
        (Vec::new(), self.ccel_log.clone())
    }
}
