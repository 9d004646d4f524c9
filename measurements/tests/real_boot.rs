//! A real boot of a sealroom image (testdata/boot, see testdata/MANIFEST.md): the UEFI log the agent returned
//! replays to the PCRs it quoted, and the PCR 4/9/11/12 events and values `sealroom measure` predicted from the
//! disk image are exactly the ones firmware, systemd-stub and the kernel measured.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;

use sealroom_measurements::evidence::HashAlg;
use sealroom_measurements::tcg2::{Tcg2Log, event_type};

fn data(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/boot").join(name)).unwrap()
}

#[test]
fn trixie_qemu_boot_replays_and_matches_the_prediction() {
    let expected: serde_json::Value = serde_json::from_slice(&data("expected.json")).unwrap();
    let log = Tcg2Log::parse(&data("qemu-ovmf-swtpm-trixie.bin")).unwrap();
    let replay = log.replay(true).unwrap();
    let quoted = &expected["quoted_pcrs"]["sha256"];
    // PCR 10 holds IMA's boot aggregate (not in the firmware log); 16-23 are debug/DRTM registers.
    for pcr in (0u32..=9).chain(11..=15) {
        let want = hex::decode(quoted[pcr.to_string()].as_str().unwrap()).unwrap();
        assert_eq!(replay.value(HashAlg::Sha256, pcr).unwrap(), want, "pcr {pcr}");
    }
    for (register, pcr) in [("pcr4", 4u32), ("pcr9", 9), ("pcr11", 11), ("pcr12", 12)] {
        let predicted = &expected["predicted"][register];
        assert_eq!(predicted["value"], quoted[pcr.to_string()], "{register}");
        let events: Vec<String> = log
            .events
            .iter()
            .filter(|e| e.index == pcr && e.event_type != event_type::NO_ACTION)
            .map(|e| hex::encode(e.digest(HashAlg::Sha256).unwrap()))
            .collect();
        let want: Vec<String> =
            predicted["events"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        assert_eq!(events, want, "{register} events");
    }
}
