//! A real OCI registry on loopback for workload tests: Debian's `docker-registry` (distribution 2.8) started on
//! a free port with its storage in a fresh temporary directory, plus a minimal HTTP/1.1 client for the push
//! API (blob upload, manifest put) so that tests publish the images they build themselves.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::oci_image::OciImage;
use crate::swtpm::unique_temp_dir;

/// A running registry; killed and its storage removed on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// An HTTP answer: status, headers (lower-case names), body.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A header's value.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
///
/// # Errors
/// Connection or protocol failures.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, String> {
    let mut s =
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map_err(|e| format!("connect {port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).and_then(|()| s.write_all(body)).map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no header end")?;
    let head = String::from_utf8_lossy(raw.get(..split).ok_or("short")?).into_owned();
    let mut body = raw.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body)?;
    }
    Ok(HttpResponse { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or("chunk size")?;
        let size_text = String::from_utf8_lossy(b.get(..eol).ok_or("chunk")?).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| e.to_string())?;
        b = b.get(eol + 2..).ok_or("chunk")?;
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or("chunk data")?);
        b = b.get(size + 2..).ok_or("chunk end")?;
    }
}

impl Registry {
    /// Starts `docker-registry serve` on a free loopback port and waits until `/v2/` answers 200.
    ///
    /// # Errors
    /// When docker-registry is not installed (run `ci/setup`) or does not come up within 20 s.
    pub fn start() -> Result<Self, String> {
        let dir = unique_temp_dir("registry");
        std::fs::create_dir_all(dir.join("data")).map_err(|e| format!("registry dir: {e}"))?;
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("free port: {e}"))?
            .port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).map_err(|e| format!("registry config: {e}"))?;
        let log =
            std::fs::File::create(dir.join("registry.log")).map_err(|e| format!("registry log: {e}"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("docker-registry: {e} (install it with ci/setup)"))?;
        let mut reg = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if http(port, "GET", "/v2/", &[], b"").is_ok_and(|r| r.status == 200) {
                return Ok(reg);
            }
            if let Ok(Some(status)) = reg.child.try_wait() {
                let log = std::fs::read_to_string(reg.dir.join("registry.log")).unwrap_or_default();
                return Err(format!("docker-registry exited ({status}): {log}"));
            }
            if Instant::now() > deadline {
                return Err("docker-registry did not answer within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:PORT`.
    #[must_use]
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the registry keeps a blob's bytes (to corrupt it in tests).
    #[must_use]
    pub fn blob_data_path(&self, digest_hex: &str) -> PathBuf {
        self.dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(digest_hex.get(..2).unwrap_or_default())
            .join(digest_hex)
            .join("data")
    }

    /// Uploads one blob (monolithic POST + PUT).
    ///
    /// # Errors
    /// Any non-success status.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> Result<String, String> {
        let digest = crate::oci_image::sha256_digest(bytes);
        let r = http(self.port, "POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"")?;
        if r.status != 202 {
            return Err(format!("blob upload start: HTTP {} {}", r.status, String::from_utf8_lossy(&r.body)));
        }
        let location = r.header("location").ok_or("no upload location")?;
        let path = location.strip_prefix(&format!("http://{}", self.host())).unwrap_or(location);
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = http(
            self.port,
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            bytes,
        )?;
        if r.status != 201 {
            return Err(format!("blob upload: HTTP {} {}", r.status, String::from_utf8_lossy(&r.body)));
        }
        Ok(digest)
    }

    /// Pushes every blob of `image` and its manifest under `tag`; returns the pinned reference
    /// `127.0.0.1:PORT/REPO@sha256:…`.
    ///
    /// # Errors
    /// Any non-success status.
    pub fn push(&self, repo: &str, tag: &str, image: &OciImage) -> Result<String, String> {
        self.push_blob(repo, &image.config)?;
        for l in &image.layers {
            self.push_blob(repo, &l.bytes)?;
        }
        let r = http(
            self.port,
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Content-Type", crate::oci_image::OCI_MANIFEST)],
            &image.manifest,
        )?;
        if r.status != 201 {
            return Err(format!("manifest put: HTTP {} {}", r.status, String::from_utf8_lossy(&r.body)));
        }
        Ok(format!("{}/{repo}@{}", self.host(), image.manifest_digest()))
    }

    /// The storage directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
