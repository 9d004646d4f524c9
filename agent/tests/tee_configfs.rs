//! TDX and SEV-SNP attesters against a directory laid out like configfs-tsm and sysfs, holding real quotes.
//!
//! There is no TDX or SNP hardware here, so a test thread plays the kernel's part of `generation` (a FIFO that
//! answers each read with the next count); `outblob`/`auxblob` hold real evidence from the corpus.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sealroom_agent::attester::snp::SnpAttester;
use sealroom_agent::attester::tdx::TdxAttester;
use sealroom_agent::attester::{Attester, Part};
use sealroom_agent::paths::KernelPaths;
use sealroom_agent::runtime::RuntimeLog;
use sealroom_agent::tee_key::TeeKey;
use sealroom_measurements::binding::{Nonce, report_data};
use sealroom_measurements::cel::RuntimeEvent;
use sealroom_measurements::evidence::HashAlg;
use sealroom_tests::swtpm::unique_temp_dir;

fn testdata(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(rel)).unwrap()
}

/// A root with `report/sealroom-agent-<pid>/` pre-populated as the kernel would show it.
fn configfs_root(outblob: &[u8], auxblob: Option<&[u8]>, device: &str) -> (KernelPaths, PathBuf) {
    let root = unique_temp_dir("tee-root");
    let paths = KernelPaths::new(&root);
    let entry = paths.tsm_report().join(format!("sealroom-agent-{}", std::process::id()));
    std::fs::create_dir_all(&entry).unwrap();
    std::fs::write(entry.join("outblob"), outblob).unwrap();
    if let Some(aux) = auxblob {
        std::fs::write(entry.join("auxblob"), aux).unwrap();
    }
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::write(root.join("dev").join(device), b"").unwrap();
    (paths, entry)
}

/// `generation` as a FIFO: each open-and-read gets the next number, like the kernel's counter after a write.
fn counting_generation(entry: &Path) -> std::thread::JoinHandle<()> {
    let fifo = entry.join("generation");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let inblob = entry.join("inblob");
    std::thread::spawn(move || {
        for n in 0..2u32 {
            if n == 1 {
                // The kernel bumps the counter on the inblob write; the agent reads the counter again after it.
                while !inblob.exists() {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            let mut f = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            writeln!(f, "{n}").unwrap();
        }
    })
}

#[test]
fn tdx_quote_and_ccel_come_from_configfs_and_acpi_with_the_binding_in_inblob() {
    let quote = testdata("tdx/tdx_quote");
    let (paths, entry) = configfs_root(&quote, None, "tdx_guest");
    let acpi = paths.root().join("sys/firmware/acpi/tables");
    std::fs::create_dir_all(acpi.join("data")).unwrap();
    std::fs::write(acpi.join("CCEL"), testdata("tdx/ccel_table.dat")).unwrap();
    std::fs::write(acpi.join("data/CCEL"), testdata("tdx/ccel_data.dat")).unwrap();

    let mut tdx = TdxAttester::open(&paths).unwrap();
    assert_eq!(tdx.tsm().entry(), entry);
    let kernel = counting_generation(&entry);
    let key = TeeKey::generate().unwrap();
    let nonce = Nonce([7; 32]);
    let Part::Tdx(ev) = tdx.attest(&nonce, key.public()).unwrap() else { panic!() };
    kernel.join().unwrap();
    assert_eq!(ev.quote, quote);
    assert_eq!(ev.ccel_table, testdata("tdx/ccel_table.dat"));
    assert_eq!(ev.ccel_log, testdata("tdx/ccel_data.dat"));
    assert_eq!(std::fs::read(entry.join("inblob")).unwrap(), report_data(&nonce, key.public()));

    // A generation that does not advance by exactly one means another writer: the report is discarded.
    std::fs::remove_file(entry.join("generation")).unwrap();
    std::fs::write(entry.join("generation"), b"5\n").unwrap();
    let err = tdx.attest(&nonce, key.public()).unwrap_err().to_string();
    assert_eq!(
        err,
        "configfs-tsm: generation went from 5 to 5: another writer used the entry, report discarded"
    );
    std::fs::remove_dir_all(paths.root()).unwrap();
}

#[test]
fn tdx_runtime_events_extend_rtmr3_through_sysfs_and_refuse_without_it() {
    let (paths, _entry) = configfs_root(b"q", None, "tdx_guest");
    let mut attesters: Vec<Box<dyn Attester>> = vec![Box::new(TdxAttester::open(&paths).unwrap())];
    let log_dir = unique_temp_dir("tdx-log");
    let mut log = RuntimeLog::open(&log_dir).unwrap();
    // No sysfs RTMR file (kernel < 6.16): refused, and the log is marked diverged (the intent was written).
    let err = log.measure(&RuntimeEvent::Arg("a".into()), &mut attesters).unwrap_err().to_string();
    assert!(err.contains("needs Linux >= 6.16"), "{err}");
    assert!(log.ensure_consistent().is_err());

    let rtmr = paths.tdx_rtmr(3);
    std::fs::create_dir_all(rtmr.parent().unwrap()).unwrap();
    std::fs::write(&rtmr, b"").unwrap();
    std::fs::remove_dir_all(&log_dir).unwrap();
    let mut log = RuntimeLog::open(&log_dir).unwrap();
    let rec = log.measure(&RuntimeEvent::Arg("a".into()), &mut attesters).unwrap();
    assert_eq!(rec.digests.iter().map(|(a, _)| *a).collect::<Vec<_>>(), vec![HashAlg::Sha384]);
    // The sysfs attribute received exactly the record's 48-byte SHA-384 digest.
    assert_eq!(std::fs::read(&rtmr).unwrap(), rec.rtmr_digest().unwrap());
    std::fs::remove_dir_all(&log_dir).unwrap();
    std::fs::remove_dir_all(paths.root()).unwrap();
}

fn cert_table(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
    let header = (entries.len() + 1) * 24;
    let mut table = Vec::new();
    let mut body = Vec::new();
    for (guid, cert) in entries {
        table.extend_from_slice(guid);
        table.extend_from_slice(&u32::try_from(header + body.len()).unwrap().to_le_bytes());
        table.extend_from_slice(&u32::try_from(cert.len()).unwrap().to_le_bytes());
        body.extend_from_slice(cert);
    }
    table.extend_from_slice(&[0; 24]);
    table.extend_from_slice(&body);
    table
}

#[test]
fn snp_report_and_vcek_come_from_configfs_outblob_and_auxblob() {
    let report = testdata("snp/test-report.bin");
    let vcek = testdata("snp/test-vcek.der");
    // VCEK GUID 63da758d-e664-4564-adc5-f4b93be8accd in its on-the-wire (mixed-endian) byte order.
    let vcek_guid =
        [0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd];
    let (paths, entry) = configfs_root(&report, Some(&cert_table(&[(vcek_guid, &vcek)])), "sev-guest");
    let mut snp = SnpAttester::open(&paths).unwrap();
    let kernel = counting_generation(&entry);
    let key = TeeKey::generate().unwrap();
    let nonce = Nonce([8; 32]);
    let Part::SevSnp(ev) = snp.attest(&nonce, key.public()).unwrap() else { panic!() };
    kernel.join().unwrap();
    assert_eq!(ev.report, report);
    assert_eq!(ev.cert_chain, vec![vcek]);
    assert_eq!(std::fs::read(entry.join("inblob")).unwrap(), report_data(&nonce, key.public()));
    std::fs::remove_dir_all(paths.root()).unwrap();
}

#[test]
fn probing_picks_the_tee_present_under_the_root() {
    use sealroom_agent::worker::{WorkerConfig, probe};
    let (paths, _entry) = configfs_root(b"q", None, "tdx_guest");
    let cfg = WorkerConfig {
        paths: paths.clone(),
        tcti: None,
        no_tpm: false,
        runtime_log_dir: unique_temp_dir("unused"),
        queue_depth: 1,
        request_timeout: std::time::Duration::from_secs(1),
    };
    let found = probe(&cfg).unwrap();
    assert_eq!(found.iter().map(|a| a.name()).collect::<Vec<_>>(), vec!["tdx"]);
    std::fs::remove_dir_all(paths.root()).unwrap();
    let empty = unique_temp_dir("empty-root");
    std::fs::create_dir_all(&empty).unwrap();
    let found = probe(&WorkerConfig { paths: KernelPaths::new(&empty), ..cfg }).unwrap();
    assert!(found.is_empty());
}
