//! The TPM attester and runtime measurement against a real TPM 2.0 (one swtpm per test).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use sealroom_agent::attester::tpm::{AkSource, TpmAttester};
use sealroom_agent::attester::{Attester, Part};
use sealroom_agent::paths::KernelPaths;
use sealroom_agent::runtime::{LogState, RuntimeLog};
use sealroom_agent::tee_key::TeeKey;
use sealroom_measurements::binding::Nonce;
use sealroom_measurements::cel::{self, CelLog, RuntimeEvent};
use sealroom_measurements::evidence::{HashAlg, TpmEvidence};
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};
use sealroom_verifier::tpm::quote::{ExpectedExtraData, verify_quote};
use sealroom_verifier::tpm::structures::Public;

fn empty_root() -> KernelPaths {
    let dir = unique_temp_dir("root");
    std::fs::create_dir_all(&dir).unwrap();
    KernelPaths::new(dir)
}

fn quote(att: &mut TpmAttester, nonce: &Nonce, key: &TeeKey) -> TpmEvidence {
    match att.attest(nonce, key.public()).unwrap() {
        Part::Tpm(t) => t,
        other => panic!("unexpected part {other:?}"),
    }
}

fn verify(t: &TpmEvidence, pinned_ak: &[u8], nonce: &Nonce, key: &TeeKey) -> sealroom_verifier::Result<()> {
    let ak = Public::parse(pinned_ak)?;
    verify_quote(
        &t.attest,
        &t.signature,
        &ak,
        &t.pcr_banks,
        &ExpectedExtraData::Binding(*nonce, key.public().clone()),
    )
    .map(|_| ())
}

#[test]
fn quote_verifies_and_each_mutation_is_refused_for_its_reason() {
    let tpm = Swtpm::start().unwrap();
    let mut att = TpmAttester::open(&tpm.tcti(), &empty_root()).unwrap();
    assert_eq!(att.ak_source(), AkSource::CreatedUnderEk);
    let banks = att.pcr_banks();
    assert!(banks.contains(&HashAlg::Sha256), "{banks:?}");
    let key = TeeKey::generate().unwrap();
    let nonce = Nonce([0x42; 32]);
    let ev = quote(&mut att, &nonce, &key);
    let pinned = att.ak_public().to_vec();
    assert_eq!(ev.ak_public, pinned);
    assert_eq!(ev.pcr_banks.len(), banks.len());
    assert!(ev.pcr_banks.iter().all(|b| b.values.len() == 24));
    verify(&ev, &pinned, &nonce, &key).unwrap();

    // A changed nonce.
    let err = verify(&ev, &pinned, &Nonce([0x43; 32]), &key).unwrap_err().to_string();
    assert!(err.contains("extraData"), "{err}");
    // Another TEE key.
    let err = verify(&ev, &pinned, &nonce, &TeeKey::generate().unwrap()).unwrap_err().to_string();
    assert!(err.contains("extraData"), "{err}");
    // A swapped PCR value.
    let mut swapped = ev.clone();
    let bank = swapped.pcr_banks.iter_mut().find(|b| b.alg == HashAlg::Sha256).unwrap();
    let v0 = bank.values[&0].clone();
    let v15 = bank.values[&15].clone();
    bank.values.insert(0, vec![0xee; 32]);
    bank.values.insert(15, v0);
    bank.values.insert(0, v15);
    bank.values.insert(7, vec![0xee; 32]);
    let err = verify(&swapped, &pinned, &nonce, &key).unwrap_err().to_string();
    assert!(err.contains("PCR digest mismatch"), "{err}");
    // A flipped bit in the signed structure.
    let mut flipped = ev.clone();
    let last = flipped.attest.len() - 1;
    flipped.attest[last] ^= 1;
    assert!(verify(&flipped, &pinned, &nonce, &key).is_err());

    // A quote from another swtpm does not verify under the pinned AK.
    drop(att);
    let other = Swtpm::start().unwrap();
    let mut att2 = TpmAttester::open(&other.tcti(), &empty_root()).unwrap();
    let ev2 = quote(&mut att2, &nonce, &key);
    assert_ne!(ev2.ak_public, pinned);
    verify(&ev2, &ev2.ak_public, &nonce, &key).unwrap();
    let err = verify(&ev2, &pinned, &nonce, &key).unwrap_err().to_string();
    assert!(err.contains("signature"), "{err}");
}

#[test]
fn handles_are_flushed_so_the_tpm_never_runs_out_of_slots() {
    // swtpm has 3 transient object slots and no resource manager: leaking one AK per open would fail by the 4th.
    let tpm = Swtpm::start().unwrap();
    let root = empty_root();
    let key = TeeKey::generate().unwrap();
    for i in 0..6u8 {
        let mut att = TpmAttester::open(&tpm.tcti(), &root).unwrap();
        for _ in 0..3 {
            let nonce = Nonce([i; 32]);
            let ev = quote(&mut att, &nonce, &key);
            verify(&ev, att.ak_public(), &nonce, &key).unwrap();
        }
    }
}

#[test]
fn runtime_events_extend_pcr15_and_the_log_replays() {
    let tpm = Swtpm::start().unwrap();
    let root = empty_root();
    let log_dir = unique_temp_dir("rtlog");
    let mut attesters: Vec<Box<dyn Attester>> =
        vec![Box::new(TpmAttester::open(&tpm.tcti(), &root).unwrap())];
    let mut log = RuntimeLog::open(&log_dir).unwrap();
    let events = [
        RuntimeEvent::ImageReference("registry.example/app@sha256:00".into()),
        RuntimeEvent::Arg("--input=/data".into()),
        RuntimeEvent::Env("MODE=batch".into()),
        RuntimeEvent::LaunchSeparator,
    ];
    for e in &events {
        log.measure(e, &mut attesters).unwrap();
    }
    // After the separator only post-launch events.
    let err = log.measure(&RuntimeEvent::Arg("late".into()), &mut attesters).unwrap_err().to_string();
    assert!(err.contains("after the launch separator"), "{err}");
    assert_eq!(log.state(), &LogState::Consistent);
    log.measure(&RuntimeEvent::Output { name: "result".into(), digest: "sha256:ab".into() }, &mut attesters)
        .unwrap();

    // The quoted PCR 15 equals the replay of the log, in every bank.
    let key = TeeKey::generate().unwrap();
    let nonce = Nonce([9; 32]);
    let Part::Tpm(ev) = attesters[0].attest(&nonce, key.public()).unwrap() else { panic!() };
    verify(&ev, &ev.ak_public, &nonce, &key).unwrap();
    let records = CelLog::decode(&log.encode()).unwrap();
    assert_eq!(records.len(), 5);
    for bank in &ev.pcr_banks {
        cel::check_pcr(&records, bank.alg, &bank.values[&15]).unwrap();
    }
    // A tampered record is refused: content change breaks its digest.
    let mut tampered = log.encode();
    let pos = tampered.windows(5).position(|w| w == b"batch").unwrap();
    tampered[pos] = b'B';
    assert!(CelLog::decode(&tampered).is_err());

    // Reopening the same log on the same TPM is consistent (replay = PCR 15).
    drop(log);
    let mut log = RuntimeLog::open(&log_dir).unwrap();
    let values = attesters[0].runtime_register().unwrap();
    log.check_against(&values);
    assert_eq!(log.state(), &LogState::Consistent);
    std::fs::remove_dir_all(&log_dir).unwrap();
}

#[test]
fn a_power_cut_between_extend_and_append_is_reported_as_diverged() {
    let tpm = Swtpm::start().unwrap();
    let root = empty_root();
    let log_dir = unique_temp_dir("rtlog-crash");
    let mut attesters: Vec<Box<dyn Attester>> =
        vec![Box::new(TpmAttester::open(&tpm.tcti(), &root).unwrap())];
    let mut log = RuntimeLog::open(&log_dir).unwrap();
    log.measure(&RuntimeEvent::ImageReference("app".into()), &mut attesters).unwrap();
    drop(log);

    // Replay the first two steps of `measure` for a second event, then "lose power": intent written, PCR
    // extended, record never appended.
    let next = {
        let mut l = CelLog::from_records(
            &CelLog::decode(&std::fs::read(log_dir.join("runtime.cel")).unwrap()).unwrap(),
        )
        .unwrap();
        l.append(
            15,
            &[HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha1, HashAlg::Sha512],
            &RuntimeEvent::Arg("x".into()),
        )
        .unwrap()
        .clone()
    };
    std::fs::write(log_dir.join("runtime.intent"), next.encode()).unwrap();
    let digests = sealroom_agent::attester::EventDigests(next.digests.iter().cloned().collect());
    attesters[0].extend_runtime(&digests).unwrap();

    let mut log = RuntimeLog::open(&log_dir).unwrap();
    let LogState::Diverged(why) = log.state().clone() else { panic!("not diverged") };
    assert!(why.contains("intent for record 1"), "{why}");
    // Measuring more is refused, with the reason.
    let err = log.measure(&RuntimeEvent::Arg("y".into()), &mut attesters).unwrap_err().to_string();
    assert!(err.starts_with("runtime log: diverged: intent for record 1"), "{err}");

    // Even if the intent file is lost too, replay against PCR 15 catches the unlogged extend.
    std::fs::remove_file(log_dir.join("runtime.intent")).unwrap();
    let mut log = RuntimeLog::open(&log_dir).unwrap();
    assert_eq!(log.state(), &LogState::Consistent);
    let values = attesters[0].runtime_register().unwrap();
    log.check_against(&values);
    let LogState::Diverged(why) = log.state().clone() else { panic!("not diverged") };
    assert!(why.contains("pcr 15"), "{why}");
    std::fs::remove_dir_all(&log_dir).unwrap();
}
