//! `sealroom attest` as an orchestrator runs it: a live agent on a real TPM (swtpm) over loopback, a fresh random
//! nonce chosen by the CLI, and the verifier's verdict. The swtpm AK has no certificate, so it is trusted only
//! when enrolled with `--tpm-ak`; without the enrolment the CLI must refuse and say why.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use sealroom_measurements::cel::RuntimeEvent;
use sealroom_tests::agent::{ak_of, start_agent};
use sealroom_tests::broker::sealroom;
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attest_verifies_a_live_agent_with_an_enrolled_ak_and_refuses_without() {
    let tpm = Swtpm::start().unwrap();
    let events = [
        RuntimeEvent::ImageReference("registry.example/job@sha256:00".into()),
        RuntimeEvent::LaunchSeparator,
    ];
    let agent = start_agent(&tpm, &events).await.unwrap();
    let addr = agent.tcp_addr.unwrap();

    // Enrolment out of band: record this TPM's AK public area once.
    let ak_file = unique_temp_dir("attest-cli-ak");
    std::fs::write(&ak_file, ak_of(&agent).await).unwrap();

    let url = format!("http://{addr}");
    let ok = tokio::task::spawn_blocking({
        let (url, ak) = (url.clone(), ak_file.clone());
        move || {
            // No reference values here: every measured layer skipped by choice, so the verdict can affirm.
            sealroom()
                .args(["attest", "--agent", &url, "--skip", "firmware,kernel,workload", "--tpm-ak"])
                .arg(ak)
                .arg("--json")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&ok.stderr));
    let ear: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let text = ear.to_string();
    assert!(text.contains("affirming"), "{text}");
    assert!(text.contains("enrolled ak"), "{text}");

    let refused =
        tokio::task::spawn_blocking(move || sealroom().args(["attest", "--agent", &url]).output().unwrap())
            .await
            .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("refused") && stderr.contains("AK certificate"), "{stderr}");
    agent.stop().await.unwrap();
}

/// No trust on first use: with `--tpm-ek-ca` the CLI trusts the agent's AK only after the agent's TPM activated
/// a credential made for its EK certificate, which must chain to the given CA. A TPM manufactured by another CA
/// is refused with the reason, and so is a TPM without an EK certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_tofu_ak_attest_trusts_only_an_ek_certified_ak() {
    use sealroom_tests::swtpm::EkCa;
    let ca = EkCa::create().unwrap();
    let rogue = EkCa::create().unwrap();
    let tpm = Swtpm::start_with_ek_cert(&ca).unwrap();
    let agent = start_agent(&tpm, &[RuntimeEvent::LaunchSeparator]).await.unwrap();
    let url = format!("http://{}", agent.tcp_addr.unwrap());
    let run = |url: String, ca: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            sealroom()
                .args(["attest", "--agent", &url, "--skip", "firmware,kernel,workload", "--tpm-ek-ca"])
                .arg(ca)
                .arg("--json")
                .output()
                .unwrap()
        })
    };
    let ok = run(url.clone(), ca.bundle_pem().unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&ok.stderr));
    let text = serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap().to_string();
    assert!(text.contains("affirming"), "{text}");
    assert!(text.contains("ek-certified ak"), "{text}");
    assert!(text.contains("\"model\":\"swtpm\""), "the EAR names the certified TPM: {text}");

    // Offline, later: the evidence file alone does not make its AK trusted (no activation can be proven from
    // it); pinning the AK that the live activation proved (--tpm-ak-out) does.
    let dir = unique_temp_dir("attest-cli-ek-offline");
    std::fs::create_dir_all(&dir).unwrap();
    let (ev_file, ak_file) = (dir.join("ev.pb"), dir.join("ak.bin"));
    let saved = tokio::task::spawn_blocking({
        let (url, ca, ev_file, ak_file) =
            (url.clone(), ca.bundle_pem().unwrap(), ev_file.clone(), ak_file.clone());
        move || {
            sealroom()
                .args(["attest", "--agent", &url, "--skip", "firmware,kernel,workload", "--tpm-ek-ca"])
                .arg(ca)
                .arg("--out")
                .arg(ev_file)
                .arg("--tpm-ak-out")
                .arg(ak_file)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(saved.status.success(), "{}", String::from_utf8_lossy(&saved.stderr));
    let verify = |extra: &[&std::ffi::OsStr]| {
        sealroom()
            .args(["verify", "--skip", "firmware,kernel,workload", "--evidence"])
            .arg(&ev_file)
            .args(extra)
            .output()
            .unwrap()
    };
    let untrusted = verify(&[]);
    assert_eq!(untrusted.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&untrusted.stderr).trim(),
        format!("refused (contraindicated): {}", sealroom_verifier::appraisal::UNTRUSTED_AK)
    );
    let pinned = verify(&["--tpm-ak".as_ref(), ak_file.as_os_str()]);
    let stdout = String::from_utf8_lossy(&pinned.stdout);
    assert!(pinned.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&pinned.stderr));
    assert!(stdout.starts_with("verdict: affirming") && stdout.contains("enrolled ak"), "{stdout}");
    let ek_offline = verify(&["--tpm-ek-ca".as_ref(), ca.bundle_pem().unwrap().as_os_str()]);
    assert_eq!(ek_offline.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&ek_offline.stderr).contains("no evidence file can prove it offline"),
        "{}",
        String::from_utf8_lossy(&ek_offline.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let refused = run(url, rogue.bundle_pem().unwrap()).await.unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refused: tpm ek certificate") && stderr.contains("configured EK CA"),
        "{stderr}"
    );
    agent.stop().await.unwrap();

    // A TPM without an EK certificate: nothing to certify the AK with.
    let plain = Swtpm::start().unwrap();
    let agent = start_agent(&plain, &[RuntimeEvent::LaunchSeparator]).await.unwrap();
    let refused = run(format!("http://{}", agent.tcp_addr.unwrap()), ca.bundle_pem().unwrap()).await.unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("no TPM with an EK certificate"), "{stderr}");
    agent.stop().await.unwrap();
}
