//! End to end on loopback: swtpm (a real TPM 2.0) → sealroom agent (gRPC) → sealroom-verifier.
//!
//! Clients: tonic, Python grpcio (generated stubs), gRPC reflection and health. Refusals, each for its reason:
//! a changed nonce, a swapped PCR value, a tampered runtime event record, a quote from another swtpm.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::net::SocketAddr;
use std::process::Command;

use sealroom_agent::server::Running;
use sealroom_measurements::binding::Nonce;
use sealroom_measurements::cel::{self, CelLog, RuntimeEvent};
use sealroom_measurements::evidence::{Evidence, HashAlg};
use sealroom_proto::attestation::v1 as pb;
use sealroom_proto::attestation::v1::attestation_client::AttestationClient;
use sealroom_tests::repo_root;
use sealroom_tests::swtpm::Swtpm;
use sealroom_verifier::tpm::quote::ExpectedExtraData;
use sealroom_verifier::tpm::verify::{AkTrust, QuoteInput, verify_tpm};
use sealroom_verifier::x509::UnixTime;
use tonic::transport::Channel;

/// Any fixed time: swtpm AKs carry no certificate, so no validity window is consulted.
const AT: UnixTime = 1_760_000_000;

/// The runtime events of the workload this agent pretends to have launched.
fn launch_events() -> [RuntimeEvent; 5] {
    [
        RuntimeEvent::ImageReference("registry.example/analytics@sha256:0123".into()),
        RuntimeEvent::ConfigDigest("sha256:4567".into()),
        RuntimeEvent::Arg("--input=/data/in.parquet".into()),
        RuntimeEvent::Env("THREADS=2".into()),
        RuntimeEvent::LaunchSeparator,
    ]
}

async fn start_agent(tpm: &Swtpm) -> Running {
    sealroom_tests::agent::start_agent(tpm, &launch_events()).await.unwrap()
}

async fn client(addr: SocketAddr) -> AttestationClient<Channel> {
    AttestationClient::new(Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap())
}

async fn fetch(addr: SocketAddr, nonce: [u8; 32]) -> Evidence {
    let mut c = client(addr).await;
    let r = c
        .get_evidence(pb::GetEvidenceRequest { nonce: nonce.to_vec(), tee_public_key: Vec::new() })
        .await
        .unwrap();
    Evidence::try_from(r.into_inner().evidence.unwrap()).unwrap()
}

/// The verifier's checks for swtpm evidence: AK pinned, quote signature, extraData = binding of the verifier's
/// own nonce, PCR digest, then the runtime log replayed to the quoted PCR 15 of every bank.
fn verify(ev: &Evidence, issued_nonce: [u8; 32], pinned_ak: &[u8]) -> Result<(), String> {
    let tpm = ev.tpm.as_ref().ok_or("no tpm part")?;
    let quotes = [QuoteInput { attest: &tpm.attest, signature: &tpm.signature }];
    let verified = verify_tpm(
        &tpm.ak_public,
        &tpm.ak_cert_chain,
        &quotes,
        &tpm.pcr_banks,
        &ExpectedExtraData::Binding(Nonce(issued_nonce), ev.tee_public_key.clone()),
        &AkTrust::Pinned(pinned_ak.to_vec()),
        AT,
    )
    .map_err(|e| e.to_string())?;
    let records = CelLog::decode(&ev.runtime_event_log).map_err(|e| e.to_string())?;
    for bank in &verified.pcrs {
        cel::check_pcr(&records, bank.alg, &bank.values[&15]).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn python(args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(repo_root().join("tests/python/attest_client.py"))
        .args(args)
        .arg("--proto-dir")
        .arg(repo_root().join("proto"))
        .output()
        .expect("python3 (installed by ci/setup)");
    assert!(out.status.success(), "python client failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_evidence_verifies_and_every_tampering_is_refused_for_its_reason() {
    let tpm = Swtpm::start().unwrap();
    let agent = start_agent(&tpm).await;
    let addr = agent.tcp_addr.unwrap();
    let nonce = [0x11; 32];
    let ev = fetch(addr, nonce).await;
    // Trust on first use for swtpm: the verifier pins the AK it saw in this first, verified session.
    let pinned = ev.tpm.as_ref().unwrap().ak_public.clone();
    verify(&ev, nonce, &pinned).unwrap();
    assert_eq!(CelLog::decode(&ev.runtime_event_log).unwrap().len(), 5);

    // A changed nonce: evidence for one nonce presented against another.
    let err = verify(&ev, [0x12; 32], &pinned).unwrap_err();
    assert!(err.contains("extraData") && err.contains("does not match the expected nonce"), "{err}");

    // A swapped PCR value: PCR 0 and PCR 17 of the SHA-256 bank exchanged.
    let mut swapped = ev.clone();
    let bank = swapped.tpm.as_mut().unwrap().pcr_banks.iter_mut().find(|b| b.alg == HashAlg::Sha256).unwrap();
    let (a, b) = (bank.values[&0].clone(), bank.values[&17].clone());
    assert_ne!(a, b);
    bank.values.insert(0, b);
    bank.values.insert(17, a);
    let err = verify(&swapped, nonce, &pinned).unwrap_err();
    assert!(err.contains("PCR digest mismatch"), "{err}");

    // A tampered runtime record: one byte of an event's content changed (its digest no longer matches).
    let mut tampered = ev.clone();
    let pos = tampered.runtime_event_log.windows(7).position(|w| w == b"THREADS").unwrap();
    tampered.runtime_event_log[pos + 8] = b'9';
    let err = verify(&tampered, nonce, &pinned).unwrap_err();
    assert!(err.starts_with("cel record"), "{err}");
    // A record dropped from the log (content intact, replay no longer reaches the quoted PCR 15).
    let mut dropped = ev.clone();
    let records = CelLog::decode(&ev.runtime_event_log).unwrap();
    dropped.runtime_event_log = cel::encode_records(&records[..4]);
    let err = verify(&dropped, nonce, &pinned).unwrap_err();
    assert!(err.contains("pcr 15") || err.contains("PCR 15") || err.contains("replay"), "{err}");

    // A quote from another swtpm (another agent, another AK) is refused under the pinned AK.
    let other_tpm = Swtpm::start().unwrap();
    let other = start_agent(&other_tpm).await;
    let foreign = fetch(other.tcp_addr.unwrap(), nonce).await;
    let err = verify(&foreign, nonce, &pinned).unwrap_err();
    assert!(err.contains("AK public key is not the pinned AK"), "{err}");
    // …and its quote does not verify under the pinned AK's key either (no AK swap hides it).
    let mut grafted = foreign.clone();
    grafted.tpm.as_mut().unwrap().ak_public = pinned.clone();
    let err = verify(&grafted, nonce, &pinned).unwrap_err();
    assert!(err.contains("signature"), "{err}");

    other.stop().await.unwrap();
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_clients_python_grpcio_reflection_and_health() {
    let tpm = Swtpm::start().unwrap();
    let agent = start_agent(&tpm).await;
    let addr = agent.tcp_addr.unwrap();
    let a = addr.to_string();

    // Python grpcio with stubs generated from proto/: the evidence it receives verifies here.
    let nonce = [0x33; 32];
    let got = python(&["evidence", "--addr", &a, "--nonce", &hex::encode(nonce)]);
    assert_eq!(got["nonce"], hex::encode(nonce));
    assert_eq!(got["platform"], 1);
    let bytes = hex::decode(got["evidence"].as_str().unwrap()).unwrap();
    let ev = Evidence::decode(&bytes).unwrap();
    let pinned = ev.tpm.as_ref().unwrap().ak_public.clone();
    verify(&ev, nonce, &pinned).unwrap();
    let got = python(&["bad-nonce", "--addr", &a]);
    assert_eq!(got["code"], "INVALID_ARGUMENT");
    assert_eq!(got["message"], "request: nonce is 31 bytes, expected 32");

    // Reflection, as grpcurl-style tools list it (grpcio-reflection's client, v1alpha).
    let got = python(&["reflect", "--addr", &a]);
    let services: Vec<&str> =
        got["services"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    for s in ["sealroom.attestation.v1.Attestation", "grpc.health.v1.Health"] {
        assert!(services.contains(&s), "{services:?}");
    }
    let methods: Vec<&str> =
        got["attestation_methods"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(
        methods,
        [
            "GetEvidence",
            "GetEventLog",
            "GetPlatformInfo",
            "GetTpmIdentity",
            "ActivateCredential",
            "SubmitInput"
        ]
    );

    // Reflection v1 through tonic's client: the service is listed there too.
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut refl =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(
        list,
    )) = resp.message_response
    else {
        panic!("unexpected reflection answer")
    };
    assert!(list.service.iter().any(|s| s.name == "sealroom.attestation.v1.Attestation"));

    // gRPC health.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest { service: "sealroom.attestation.v1.Attestation".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    agent.stop().await.unwrap();
}
