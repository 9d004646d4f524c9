//! configfs-tsm (Linux ≥ 6.7): the kernel's vendor-neutral interface to TDX quotes and SEV-SNP reports.
//!
//! The agent keeps one report entry of its own (`report/sealroom-agent-<pid>`), writes the 64-byte REPORT_DATA
//! to `inblob`, reads `outblob` (and `auxblob`), then checks that `generation` advanced by exactly one: any other
//! value means another writer raced us and the outblob may answer someone else's inblob.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::paths::{read_limited, read_optional};

/// An open configfs-tsm report entry.
#[derive(Debug)]
pub struct TsmReport {
    entry: PathBuf,
    created: bool,
}

/// One report read from the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The quote or attestation report.
    pub outblob: Vec<u8>,
    /// Auxiliary data (SNP certificate table), when present.
    pub auxblob: Option<Vec<u8>>,
}

fn read_generation(entry: &Path) -> Result<u64> {
    let path = entry.join("generation");
    let text = read_limited("configfs-tsm generation", &path, 32)?;
    let text = String::from_utf8_lossy(&text);
    text.trim()
        .parse()
        .map_err(|_| Error::attester("configfs-tsm", format!("generation {:?} is not a number", text.trim())))
}

impl TsmReport {
    /// Opens (creating when needed) this agent's entry under the `report` directory.
    ///
    /// # Errors
    /// When the directory does not exist (no configfs-tsm) or cannot be written.
    pub fn open(report_dir: &Path) -> Result<Self> {
        let entry = report_dir.join(format!("sealroom-agent-{}", std::process::id()));
        let created = match std::fs::create_dir(&entry) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(Error::io("configfs-tsm report entry", &entry)(e)),
        };
        Ok(Self { entry, created })
    }

    /// The entry's directory.
    #[must_use]
    pub fn entry(&self) -> &Path {
        &self.entry
    }

    /// The provider the kernel bound the entry to ("tdx_guest", "sev_guest"), if it says.
    ///
    /// # Errors
    /// On read errors other than a missing file.
    pub fn provider(&self) -> Result<Option<String>> {
        Ok(read_optional("configfs-tsm provider", &self.entry.join("provider"), 64)?
            .map(|v| String::from_utf8_lossy(&v).trim().to_owned()))
    }

    /// A fresh report over `report_data`; `out_limit`/`aux_limit` bound what is read.
    ///
    /// # Errors
    /// On I/O errors, oversized blobs, or when `generation` shows a concurrent writer.
    pub fn report(
        &mut self,
        report_data: &[u8; 64],
        out_limit: usize,
        aux_limit: Option<usize>,
    ) -> Result<Report> {
        let before = read_generation(&self.entry)?;
        let inblob = self.entry.join("inblob");
        std::fs::write(&inblob, report_data).map_err(Error::io("configfs-tsm inblob", &inblob))?;
        let outblob = read_limited("configfs-tsm outblob", &self.entry.join("outblob"), out_limit)?;
        let auxblob = match aux_limit {
            Some(limit) => read_optional("configfs-tsm auxblob", &self.entry.join("auxblob"), limit)?,
            None => None,
        };
        let after = read_generation(&self.entry)?;
        if Some(after) != before.checked_add(1) {
            return Err(Error::attester(
                "configfs-tsm",
                format!(
                    "generation went from {before} to {after}: another writer used the entry, report discarded"
                ),
            ));
        }
        if outblob.is_empty() {
            return Err(Error::attester("configfs-tsm", "outblob is empty"));
        }
        Ok(Report { outblob, auxblob })
    }
}

impl Drop for TsmReport {
    fn drop(&mut self) {
        if self.created {
            // configfs removes an item with rmdir even though it holds attribute files.
            let _ = std::fs::remove_dir(&self.entry);
        }
    }
}
