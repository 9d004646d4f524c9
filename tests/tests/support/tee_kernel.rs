//! The kernel side of a TDX or SEV-SNP guest, emulated for the real agent under a temporary root the agent is
//! started on: `/dev/tdx_guest` or `/dev/sev-guest`, the configfs-tsm report entry (`generation`, `inblob`,
//! `outblob`, `auxblob`) and, for TDX, the RTMR3 sysfs attribute (`rtmr3:sha384`). There is no TDX or SNP
//! hardware here; the "firmware" is a thread that
//! - answers each configfs-tsm report (`inblob` and `outblob` are FIFOs) with a TDX v4 quote or an SNP report
//!   whose REPORT_DATA is exactly what the agent wrote to `inblob`, signed under the Intel-like or AMD-like test
//!   PKI (`sealroom_verifier::{tdx,snp}::test_pki`), and moves `generation` on by one per report as the kernel
//!   does;
//! - for TDX, extends an RTMR3 register with every 48-byte digest the agent writes to the sysfs attribute (a
//!   FIFO), as TDG.MR.RTMR.EXTEND does (RTMR3 = SHA-384(RTMR3 || digest)), and quotes that register.
//!
//! So a quote's RTMR3 is what the agent's own runtime log extended, never a value the test computed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use sealroom_agent::paths::KernelPaths;
use sealroom_measurements::cel::CelLog;
use sealroom_tests::swtpm::unique_temp_dir;
use sealroom_verifier::snp::test_pki::TestKey as SnpTestKey;
use sealroom_verifier::tdx::test_pki::{TdQuoteBody, TestPlatform};

/// What the TD's quotes state besides REPORT_DATA and RTMR3 (fixed at TD build time on real hardware).
#[derive(Debug, Clone)]
pub struct TdShape {
    /// TDATTRIBUTES.
    pub td_attributes: u64,
    /// MRTD.
    pub mr_td: [u8; 48],
    /// RTMR0..2 (firmware, kernel, initrd/command line).
    pub rtmr: [[u8; 48]; 3],
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().is_ok_and(|s| s.success());
    assert!(ok, "mkfifo {} failed (coreutils needed)", path.display());
}

fn extend(register: &mut [u8; 48], digest: &[u8]) {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA384);
    ctx.update(register.as_slice());
    ctx.update(digest);
    register.copy_from_slice(ctx.finish().as_ref());
}

/// The agent's configfs-tsm entry under `paths` (configfs creates the attributes on mkdir; the agent names its
/// entry after its PID), with `inblob` and `outblob` as FIFOs.
fn tsm_entry(paths: &KernelPaths) -> PathBuf {
    let entry = paths.tsm_report().join(format!("sealroom-agent-{}", std::process::id()));
    std::fs::create_dir_all(&entry).unwrap();
    mkfifo(&entry.join("inblob"));
    mkfifo(&entry.join("outblob"));
    entry
}

/// Answers every report of the configfs-tsm `entry` with `answer(REPORT_DATA)`, moving `generation` on by one.
fn serve_reports(entry: PathBuf, answer: impl Fn([u8; 64]) -> Vec<u8> + Send + 'static) {
    let generation_path = entry.join("generation");
    // A plain file the kernel rewrites (atomically): read before and after each report by the agent.
    let set_generation = move |g: u64| {
        let tmp = generation_path.with_extension("new");
        std::fs::write(&tmp, format!("{g}\n")).unwrap();
        std::fs::rename(&tmp, &generation_path).unwrap();
    };
    set_generation(0);
    std::thread::spawn(move || {
        for generation in 1u64.. {
            // The agent's inblob write is what makes a report: nothing is served before it, so each outblob
            // answers exactly one inblob.
            let mut inblob = Vec::new();
            std::fs::File::open(entry.join("inblob")).unwrap().read_to_end(&mut inblob).unwrap();
            let report_data: [u8; 64] = inblob.as_slice().try_into().expect("inblob is REPORT_DATA");
            // The counter moves on with the inblob write, before outblob is produced.
            set_generation(generation);
            let blob = answer(report_data);
            let mut out = std::fs::OpenOptions::new().write(true).open(entry.join("outblob")).unwrap();
            out.write_all(&blob).unwrap();
        }
    });
}

/// A running emulated TDX kernel.
/// RTMR3 and how many digests the agent's writes extended it with.
#[derive(Debug)]
struct Rtmr3 {
    value: [u8; 48],
    agent_extends: usize,
}

/// A running emulated TDX kernel.
#[derive(Debug)]
pub struct TdxKernel {
    /// The root to start the agent on (`KernelPaths::new(root)`).
    pub root: PathBuf,
    /// Where the agent keeps its runtime log (`WorkerConfig::runtime_log_dir`).
    pub runtime_log_dir: PathBuf,
    rtmr3: Arc<(Mutex<Rtmr3>, Condvar)>,
    /// The TD's shape; tests may change it between quotes.
    pub shape: Arc<Mutex<TdShape>>,
}

/// Waits until the module has consumed `records` digests written by the agent. A write to a FIFO returns once
/// the bytes are in the pipe, before the module thread read them; the real sysfs write returns after the
/// extend, so anything that follows an agent's measurement (a quote, another extend) waits for this.
fn settle(rtmr3: &(Mutex<Rtmr3>, Condvar), records: usize) -> std::sync::MutexGuard<'_, Rtmr3> {
    let (lock, consumed) = rtmr3;
    let (guard, timeout) = consumed
        .wait_timeout_while(lock.lock().unwrap(), Duration::from_secs(30), |r| r.agent_extends < records)
        .unwrap();
    assert!(
        !timeout.timed_out(),
        "the agent's RTMR3 extends did not arrive ({} of {records})",
        guard.agent_extends
    );
    guard
}

fn logged_records(runtime_log_dir: &Path) -> usize {
    let bytes = std::fs::read(runtime_log_dir.join("runtime.cel")).unwrap_or_default();
    CelLog::decode(&bytes).map(|r| r.len()).unwrap()
}

impl TdxKernel {
    /// Lays out the kernel interfaces and starts the module threads; quotes are signed by `platform`.
    pub fn start(platform: TestPlatform, shape: TdShape) -> Self {
        let root = unique_temp_dir("tdx-kernel");
        let runtime_log_dir = unique_temp_dir("tdx-rtlog");
        let paths = KernelPaths::new(&root);
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(paths.tdx_guest_device(), b"").unwrap();
        let entry = tsm_entry(&paths);
        let rtmr3_path = paths.tdx_rtmr(3);
        std::fs::create_dir_all(rtmr3_path.parent().unwrap()).unwrap();
        mkfifo(&rtmr3_path);

        let rtmr3 = Arc::new((Mutex::new(Rtmr3 { value: [0; 48], agent_extends: 0 }), Condvar::new()));
        let shape = Arc::new(Mutex::new(shape));
        let register = Arc::clone(&rtmr3);
        // The FIFO is opened read-write and kept open: with a read-only open, a write made between this thread's
        // end of file and its close would land in a pipe that then loses its last reader, and the kernel drops
        // it (the agent's extend vanished, the next quote waited for it in vain). Read-write, there is always a
        // reader, never an end of file, and each 48-byte write (below PIPE_BUF, so atomic) is one extend.
        let mut fifo = std::fs::OpenOptions::new().read(true).write(true).open(&rtmr3_path).unwrap();
        std::thread::spawn(move || {
            loop {
                let mut digest = [0u8; 48];
                fifo.read_exact(&mut digest).unwrap();
                let (lock, consumed) = &*register;
                let mut r = lock.lock().unwrap();
                extend(&mut r.value, &digest);
                r.agent_extends += 1;
                consumed.notify_all();
            }
        });
        let (register, td, log_dir) = (Arc::clone(&rtmr3), Arc::clone(&shape), runtime_log_dir.clone());
        serve_reports(entry, move |report_data| {
            let s = td.lock().unwrap().clone();
            // Every record the agent logged was extended before the agent asked for this quote.
            let rtmr3 = settle(&register, logged_records(&log_dir)).value;
            let mut body = TdQuoteBody::new(s.mr_td, [s.rtmr[0], s.rtmr[1], s.rtmr[2], rtmr3], report_data);
            body.td_attributes = s.td_attributes;
            platform.quote(&body)
        });
        Self { root, runtime_log_dir, rtmr3, shape }
    }

    /// The kernel paths the agent uses.
    pub fn paths(&self) -> KernelPaths {
        KernelPaths::new(&self.root)
    }

    /// Extends RTMR3 behind the agent's back (root in the TD writing to the sysfs attribute itself), after
    /// every record the agent logged so far.
    pub fn extend_rtmr3(&self, digest: &[u8; 48]) {
        extend(&mut settle(&self.rtmr3, logged_records(&self.runtime_log_dir)).value, digest);
    }
}

/// What the SNP guest's reports state besides REPORT_DATA (fixed at launch on real hardware).
#[derive(Debug, Clone, Copy)]
pub struct SnpShape {
    /// Guest POLICY.DEBUG (bit 19).
    pub debug: bool,
    /// The VMPL the report is requested for (0 is the most privileged).
    pub vmpl: u32,
}

/// The certificate-table GUID of a VCEK (GHCB extended report), in its little-endian storage order.
const GUID_VCEK: [u8; 16] =
    [0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd];

/// A running emulated SEV-SNP kernel (configfs-tsm with the VCEK in `auxblob`).
#[derive(Debug)]
pub struct SnpKernel {
    /// The root to start the agent on.
    pub root: PathBuf,
    /// The guest's shape; tests may change it between reports.
    pub shape: Arc<Mutex<SnpShape>>,
}

impl SnpKernel {
    /// Lays out the kernel interfaces; reports are `template` with REPORT_DATA, POLICY.DEBUG and VMPL set,
    /// signed by `vcek_key`, and `vcek` is served in the certificate table.
    pub fn start(template: Vec<u8>, vcek: &[u8], vcek_key: SnpTestKey, shape: SnpShape) -> Self {
        let root = unique_temp_dir("snp-kernel");
        let paths = KernelPaths::new(&root);
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(paths.sev_guest_device(), b"").unwrap();
        let entry = tsm_entry(&paths);
        // Certificate table: one VCEK entry, the all-zero terminator, then the certificate.
        let offset = 2 * 24u32;
        let mut aux = GUID_VCEK.to_vec();
        aux.extend(offset.to_le_bytes());
        aux.extend(u32::try_from(vcek.len()).unwrap().to_le_bytes());
        aux.extend([0u8; 24]);
        aux.extend(vcek);
        std::fs::write(entry.join("auxblob"), aux).unwrap();
        let shape = Arc::new(Mutex::new(shape));
        let guest = Arc::clone(&shape);
        serve_reports(entry, move |report_data| {
            let s = *guest.lock().unwrap();
            let mut report = template.clone();
            let mut policy = u64::from_le_bytes(report[0x08..0x10].try_into().unwrap());
            policy = if s.debug { policy | 1 << 19 } else { policy & !(1 << 19) };
            report[0x08..0x10].copy_from_slice(&policy.to_le_bytes());
            report[0x30..0x34].copy_from_slice(&s.vmpl.to_le_bytes());
            report[0x50..0x90].copy_from_slice(&report_data);
            vcek_key.sign_report(&mut report);
            report
        });
        Self { root, shape }
    }
}
