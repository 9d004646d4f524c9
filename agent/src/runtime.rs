//! Runtime measurement: one workload event → PCR 15 (every bank) + RTMR3 (SHA-384) + one CEL record.
//!
//! Crash safety by write-ahead intent: (1) the encoded record is written to `runtime.intent` and fsynced,
//! (2) the registers are extended, (3) the record is appended to `runtime.cel` and fsynced, (4) the intent is
//! removed. After a power cut the agent finds an intent whose record is not the log's last: the registers may
//! hold an extend the log does not show, so the log state is *diverged*: the agent reports it, refuses to measure
//! more and refuses to attest (a verifier would refuse the replay anyway). It never continues silently.
//! At start the log is also replayed and compared with PCR 15 when a TPM is present.

use std::io::Write;
use std::path::{Path, PathBuf};

use sealroom_measurements::cel::{self, CelLog, CelRecord, RUNTIME_PCR, RuntimeEvent};
use sealroom_measurements::digest;
use sealroom_measurements::evidence::{HashAlg, limits};

use crate::attester::{Attester, EventDigests};
use crate::error::{Error, Result};

const LOG_FILE: &str = "runtime.cel";
const INTENT_FILE: &str = "runtime.intent";

/// Whether the log can be trusted to describe the registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogState {
    /// Every extend has its record and nothing else was extended by us.
    Consistent,
    /// The log and the registers may disagree; the reason says why. Measuring and attesting are refused.
    Diverged(String),
}

/// The runtime event log on disk plus its in-memory copy.
#[derive(Debug)]
pub struct RuntimeLog {
    dir: PathBuf,
    log: CelLog,
    state: LogState,
}

fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("runtime log directory", dir))
}

impl RuntimeLog {
    /// Opens (or creates) the log in `dir` and checks it: an intent without its record, or a record file that
    /// does not decode, makes the state [`LogState::Diverged`].
    ///
    /// # Errors
    /// Only when the directory cannot be created or read.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::io("runtime log directory", dir))?;
        let log_path = dir.join(LOG_FILE);
        let bytes = match std::fs::read(&log_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io("runtime log", &log_path)(e)),
        };
        let (log, mut state) = match CelLog::decode(&bytes).and_then(|r| CelLog::from_records(&r)) {
            Ok(log) => (log, LogState::Consistent),
            Err(e) => (CelLog::new(), LogState::Diverged(format!("{LOG_FILE} does not decode: {e}"))),
        };
        let intent_path = dir.join(INTENT_FILE);
        match std::fs::read(&intent_path) {
            Ok(intent) => {
                let last = log.records().last().map(CelRecord::encode);
                if last.as_deref() == Some(intent.as_slice()) {
                    // Crash after the append, before the intent was removed: nothing is missing.
                    std::fs::remove_file(&intent_path).map_err(Error::io("runtime intent", &intent_path))?;
                    fsync_dir(dir)?;
                } else if state == LogState::Consistent {
                    state = LogState::Diverged(format!(
                        "intent for record {} has no record in {LOG_FILE} (interrupted between extend and append); \
                         registers may hold an unlogged event",
                        log.records().len()
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("runtime intent", &intent_path)(e)),
        }
        Ok(Self { dir: dir.to_path_buf(), log, state })
    }

    /// The state.
    #[must_use]
    pub fn state(&self) -> &LogState {
        &self.state
    }

    /// The records so far.
    #[must_use]
    pub fn records(&self) -> &[CelRecord] {
        self.log.records()
    }

    /// The encoded log (what evidence carries).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        self.log.encode()
    }

    /// Marks the log diverged (e.g. when replay disagrees with PCR 15).
    pub fn mark_diverged(&mut self, reason: String) {
        if self.state == LogState::Consistent {
            self.state = LogState::Diverged(reason);
        }
    }

    /// Compares a replay of the log with the runtime PCR values an attester read.
    pub fn check_against(&mut self, pcr15: &[(HashAlg, Vec<u8>)]) {
        for (alg, value) in pcr15 {
            match cel::replay_pcr(self.log.records(), *alg) {
                Ok(replayed) if replayed == *value => {}
                Ok(replayed) => {
                    self.mark_diverged(format!(
                        "pcr 15 {} is {}, the log replays to {}",
                        alg.name(),
                        hex::encode(value),
                        hex::encode(replayed)
                    ));
                    return;
                }
                Err(e) => {
                    self.mark_diverged(format!("replay: {e}"));
                    return;
                }
            }
        }
    }

    /// Errors when the log is diverged.
    ///
    /// # Errors
    /// [`Error::RuntimeLog`] naming the divergence.
    pub fn ensure_consistent(&self) -> Result<()> {
        match &self.state {
            LogState::Consistent => Ok(()),
            LogState::Diverged(why) => Err(Error::RuntimeLog(format!("diverged: {why}"))),
        }
    }

    /// Measures one workload event: intent (fsync) → extend every attester → append record (fsync).
    ///
    /// # Errors
    /// When the log is diverged, the event breaks the launch order, or an extend or write fails. A failure after
    /// the intent was written leaves the log diverged.
    pub fn measure(
        &mut self,
        event: &RuntimeEvent,
        attesters: &mut [Box<dyn Attester>],
    ) -> Result<CelRecord> {
        self.ensure_consistent()?;
        let mut algs: Vec<HashAlg> = attesters.iter().flat_map(|a| a.runtime_algorithms()).collect();
        // The record always carries SHA-384 (RTMR3's digest), so one log shape serves every platform.
        algs.push(HashAlg::Sha384);
        let mut next = self.log.clone();
        let record = next.append(RUNTIME_PCR, &algs, event)?.clone();
        let encoded = record.encode();
        let current_len = self.log.encode().len();
        if current_len.saturating_add(encoded.len()) > limits::EVENT_LOG {
            return Err(Error::RuntimeLog(format!("full: the log would exceed {} bytes", limits::EVENT_LOG)));
        }

        // (1) write-ahead intent.
        let intent_path = self.dir.join(INTENT_FILE);
        write_synced(&intent_path, &encoded, false)?;
        fsync_dir(&self.dir)?;

        // (2) extend. From here on a failure means the registers may not match the log.
        let digests = EventDigests(record.digests.iter().cloned().collect());
        for a in attesters.iter_mut() {
            if let Err(e) = a.extend_runtime(&digests) {
                self.mark_diverged(format!("record {}: {} extend failed: {e}", record.recnum, a.name()));
                return Err(e);
            }
        }

        // (3) append the record, (4) drop the intent.
        let log_path = self.dir.join(LOG_FILE);
        if let Err(e) = write_synced(&log_path, &encoded, true) {
            self.mark_diverged(format!("record {}: extended but not appended: {e}", record.recnum));
            return Err(e);
        }
        std::fs::remove_file(&intent_path).map_err(Error::io("runtime intent", &intent_path))?;
        fsync_dir(&self.dir)?;
        self.log = next;
        Ok(record)
    }
}

fn write_synced(path: &Path, bytes: &[u8], append: bool) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .map_err(Error::io("runtime log", path))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(Error::io("runtime log", path))
}

/// The digests of `event` under `alg` (what a register receives), for callers that predict values.
#[must_use]
pub fn event_digest(alg: HashAlg, event: &RuntimeEvent) -> Vec<u8> {
    digest::hash(alg, &event.encode_content())
}
