//! The broker over TLS (issue 14, build item 1): the real `sealroom broker serve --tls-cert --tls-key` and the
//! real agent client with genuine swtpm evidence, the spec's broker an `https://` URL with the CA the agent
//! trusts (`broker_ca`):
//! - with the CA that issued the broker's certificate, the key is released over TLS;
//! - attack_broker_tls_foreign_ca: a broker whose certificate does not chain to the spec's CA (an impostor
//!   answering at the broker's address with a certificate from another CA) is refused before anything is
//!   sent, the reason naming the certificate;
//! - the same URL without TLS (`http://`) does not reach the TLS listener.
#![allow(clippy::unwrap_used, clippy::panic)]

use sealroom_agent::workload::KeyProvider;
use sealroom_agent::workload::broker::BrokerKeys;
use sealroom_agent::workload::spec::BrokerEndpoint;
use sealroom_measurements::binding::Nonce;
use sealroom_measurements::cel::RuntimeEvent;
use sealroom_tests::broker::{Provider, tpm_policy};
use sealroom_tests::swtpm::{Swtpm, unique_temp_dir};
use sealroom_tests::tls;

const IMAGE: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const KEY_ID: &str = "provider-a/data";
const DATA_KEY: &[u8] = b"the provider's data key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_broker_tls_foreign_ca_is_refused_and_the_pinned_ca_gets_the_key() {
    let dir = unique_temp_dir("broker-tls");
    let provider = Provider::new(&dir).unwrap();
    provider.add_key(KEY_ID, "provider-a", &tpm_policy(IMAGE, &[], &[], None), DATA_KEY).unwrap();
    let kid = provider.key_id().unwrap();
    let tpm = Swtpm::start().unwrap();
    let events = [
        RuntimeEvent::ImageReference(format!("registry.example/analytics@{IMAGE}")),
        RuntimeEvent::ManifestDigest(IMAGE.into()),
        RuntimeEvent::BrokerKey(kid.clone()),
        RuntimeEvent::LaunchSeparator,
    ];
    let agent = sealroom_tests::agent::start_agent(&tpm, &events).await.unwrap();
    let ev = agent.handle.evidence(Nonce([0x42; 32])).await.unwrap();
    let ak = dir.join("ak");
    std::fs::write(&ak, sealroom_proto::attestation::v1::Evidence::from(ev).tpm.unwrap().ak_public).unwrap();

    let real = tls::ca_and_server_cert(&dir.join("tls"), "provider CA", &["127.0.0.1"]).unwrap();
    let foreign = tls::ca_and_server_cert(&dir.join("foreign"), "someone else's CA", &["127.0.0.1"]).unwrap();
    let broker = provider
        .serve(
            "127.0.0.1:0",
            &[
                "--tpm-ak".as_ref(),
                ak.as_os_str(),
                "--tls-cert".as_ref(),
                real.cert.as_os_str(),
                "--tls-key".as_ref(),
                real.key.as_os_str(),
            ],
        )
        .unwrap();
    let keys = BrokerKeys::new(agent.handle.clone());
    let endpoint = |scheme: &str, ca: &str| BrokerEndpoint {
        name: "tls".into(),
        url: format!("{scheme}://{}", broker.addr),
        key_id: kid.clone(),
        tls_ca: Some(ca.to_owned()),
    };

    // A CA other than the one that issued the broker's certificate: refused during the handshake.
    let e =
        keys.release(&endpoint("https", &foreign.ca_pem), &[KEY_ID.into()]).await.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "workload keys: provider tls ({kid}): broker https://{}: unreachable:",
            broker.addr
        )),
        "{e}"
    );
    assert!(
        e.contains("certificate") || e.contains("UnknownIssuer"),
        "the reason names the certificate: {e}"
    );
    // Plain HTTP/2 to the TLS listener: no key. The TLS server drops the connection; depending on timing the
    // client names it unreachable, a transport or h2 protocol error, or a cancelled call — all refusals.
    let e = keys.release(&endpoint("http", &real.ca_pem), &[KEY_ID.into()]).await.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("workload keys: provider tls ({kid}): broker http://{}: ", broker.addr)),
        "{e}"
    );

    // The CA the spec pins: the key is released over TLS.
    let got = keys.release(&endpoint("https", &real.ca_pem), &[KEY_ID.into()]).await.unwrap();
    assert_eq!(got, vec![(KEY_ID.to_owned(), DATA_KEY.to_vec())]);
    drop(broker);
    provider.verify_audit().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
