//! Where the workload spec comes from: the kernel command line, a GCE-style metadata server on loopback (the
//! base URL is configurable), and a raw config disk (a JSON file padded with NULs as a QEMU raw drive is).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sealroom_agent::workload::spec::RestartPolicy;
use sealroom_agent::workload::vm::load_spec;
use sealroom_tests::swtpm::unique_temp_dir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn digest() -> String {
    format!("sha256:{}", "5e".repeat(32))
}

/// A metadata server answering the `sealroom-workload` attribute with `body` (or 404), only when the request
/// carries `Metadata-Flavor: Google`, as GCE's does.
async fn metadata_server(body: Option<String>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let hits2 = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            hits2.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
                let path_ok =
                    text.starts_with("get /computemetadata/v1/instance/attributes/sealroom-workload ");
                let flavor_ok = text.contains("metadata-flavor: google");
                let resp = match (&body, path_ok && flavor_ok) {
                    (Some(b), true) => format!(
                        "HTTP/1.1 200 OK\r\nMetadata-Flavor: Google\r\nContent-Type: application/text\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                        b.len()
                    ),
                    (_, false) => "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                    (None, true) => "HTTP/1.1 404 Not Found\r\nMetadata-Flavor: Google\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                };
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}"), hits)
}

#[tokio::test]
async fn spec_from_the_metadata_server() {
    let doc = format!(
        r#"{{"image":"registry.example/app@{}","args":["--epochs","3"],"restart":"on-failure:2","broker":"http://10.0.2.2:8443","broker_key":"3Mfj4cM9KvTWQ7pmqfyIXlM3YzZ2r3JN0a4cDnmWc8I","key_ids":["k"]}}"#,
        digest()
    );
    let (base, hits) = metadata_server(Some(doc)).await;
    let s = load_spec("console=ttyS0 sealroom.workload=metadata", &base).await.unwrap().unwrap();
    assert_eq!(s.image, format!("registry.example/app@{}", digest()));
    assert_eq!(s.args, Some(vec!["--epochs".to_owned(), "3".to_owned()]));
    assert_eq!(s.restart, RestartPolicy::OnFailure(2));
    assert_eq!(s.key_ids(), ["k"]);
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    let (base, _) = metadata_server(None).await;
    let e = load_spec("sealroom.workload=metadata", &base).await.unwrap_err().to_string();
    assert_eq!(
        e,
        "workload spec: sealroom.workload=metadata but the instance has no sealroom-workload attribute"
    );

    let (base, _) = metadata_server(Some(r#"{"image":"registry.example/app:latest"}"#.into())).await;
    let e = load_spec("sealroom.workload=metadata", &base).await.unwrap_err().to_string();
    assert!(e.contains("not pinned by digest"), "{e}");
}

#[tokio::test]
async fn spec_from_a_raw_config_disk_and_from_the_command_line() {
    let dir = unique_temp_dir("wl-disk");
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("spec.img");
    let mut bytes =
        format!(r#"{{"image":"oci-layout:/mnt/image@{}","env":["MODE=fast"]}}"#, digest()).into_bytes();
    bytes.resize(64 * 1024, 0);
    std::fs::write(&disk, &bytes).unwrap();
    let s = load_spec(&format!("quiet sealroom.workload=file:{}", disk.display()), "http://127.0.0.1:9")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.env, vec![("MODE".to_owned(), "fast".to_owned())]);

    // Garbage after the padding is refused, as is a missing file.
    bytes[60_000] = b'x';
    std::fs::write(&disk, &bytes).unwrap();
    let e = load_spec(&format!("sealroom.workload=file:{}", disk.display()), "http://127.0.0.1:9")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("workload spec: config ") && e.contains("json"), "{e}");
    assert!(load_spec("sealroom.workload=file:/nonexistent/spec", "http://127.0.0.1:9").await.is_err());

    let cl =
        format!("sealroom.workload.image=registry.example/app@{} sealroom.workload.arg=\"a b\"", digest());
    let s = load_spec(&cl, "http://127.0.0.1:9").await.unwrap().unwrap();
    assert_eq!(s.args, Some(vec!["a b".to_owned()]));
    assert!(load_spec("console=ttyS0", "http://127.0.0.1:9").await.unwrap().is_none());
}
