//! Where the kernel interfaces live. Everything hangs off one root (`/` in the VM) so tests can point the agent
//! at a directory laid out like sysfs/configfs/securityfs holding real quotes and logs.

use std::path::{Path, PathBuf};

/// Kernel interface paths under a root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPaths {
    root: PathBuf,
}

impl Default for KernelPaths {
    fn default() -> Self {
        Self::new("/")
    }
}

impl KernelPaths {
    /// Paths under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// configfs-tsm report directory (Linux ≥ 6.7).
    #[must_use]
    pub fn tsm_report(&self) -> PathBuf {
        self.at("sys/kernel/config/tsm/report")
    }

    /// The sysfs RTMR file for TDX runtime measurement register `index` (Linux ≥ 6.16).
    #[must_use]
    pub fn tdx_rtmr(&self, index: u8) -> PathBuf {
        self.at(&format!("sys/class/misc/tdx_guest/measurements/rtmr{index}:sha384"))
    }

    /// The TDX guest device (present in every TDX guest with the tdx-guest driver).
    #[must_use]
    pub fn tdx_guest_device(&self) -> PathBuf {
        self.at("dev/tdx_guest")
    }

    /// The SEV-SNP guest device.
    #[must_use]
    pub fn sev_guest_device(&self) -> PathBuf {
        self.at("dev/sev-guest")
    }

    /// The ACPI CCEL table.
    #[must_use]
    pub fn ccel_table(&self) -> PathBuf {
        self.at("sys/firmware/acpi/tables/CCEL")
    }

    /// The CC event log the CCEL table points to.
    #[must_use]
    pub fn ccel_log(&self) -> PathBuf {
        self.at("sys/firmware/acpi/tables/data/CCEL")
    }

    /// The UEFI TCG2 event log exposed by securityfs.
    #[must_use]
    pub fn uefi_event_log(&self) -> PathBuf {
        self.at("sys/kernel/security/tpm0/binary_bios_measurements")
    }

    /// The TPM resource-manager device.
    #[must_use]
    pub fn tpm_rm_device(&self) -> PathBuf {
        self.at("dev/tpmrm0")
    }

    /// The raw TPM device.
    #[must_use]
    pub fn tpm_device(&self) -> PathBuf {
        self.at("dev/tpm0")
    }
}

/// Reads a file, refusing one larger than `limit` bytes (reads at most `limit + 1` bytes).
///
/// # Errors
/// [`crate::Error::Io`] on read errors, [`crate::Error::Attester`] when over the limit.
pub fn read_limited(what: &'static str, path: &Path, limit: usize) -> crate::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(crate::Error::io(what, path))?;
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    f.take(cap).read_to_end(&mut out).map_err(crate::Error::io(what, path))?;
    if out.len() > limit {
        return Err(crate::Error::attester(what, format!("{} is larger than {limit} bytes", path.display())));
    }
    Ok(out)
}

/// Reads an optional file: `Ok(None)` when it does not exist.
///
/// # Errors
/// As [`read_limited`] for any other failure.
pub fn read_optional(what: &'static str, path: &Path, limit: usize) -> crate::Result<Option<Vec<u8>>> {
    match read_limited(what, path, limit) {
        Ok(v) => Ok(Some(v)),
        Err(crate::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
