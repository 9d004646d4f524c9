//! Throwaway TLS material for a broker or a PostgreSQL server under test: a CA and a server certificate it
//! issued for given IP addresses or host names, and client certificates from such a CA
//! ([`issue_client_cert`]), made with the `openssl` command (P-256 keys, valid two days). For tests and the
//! demo only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A CA and a server certificate (with its key) issued by it.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The CA certificate, PEM: what a workload spec carries as `broker_ca`.
    pub ca_pem: String,
    /// The server certificate, PEM file (`--tls-cert`).
    pub cert: PathBuf,
    /// The server's private key, PKCS#8 PEM file, mode 0600 (`--tls-key`).
    pub key: PathBuf,
}

/// Why the material could not be made.
#[derive(Debug)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tls: {}", self.0)
    }
}

impl std::error::Error for TlsError {}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), TlsError> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| TlsError(format!("openssl (ci/setup installs it): {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(TlsError(format!(
        "openssl {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}

/// Makes, in `dir` (created), a CA named `ca_name` and a server certificate for the IP addresses `ips`
/// (subjectAltName, serverAuth), signed by it.
///
/// # Errors
/// When `dir` cannot be written or `openssl` fails.
pub fn ca_and_server_cert(dir: &Path, ca_name: &str, ips: &[&str]) -> Result<ServerTls, TlsError> {
    let san: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
    let san: Vec<&str> = san.iter().map(String::as_str).collect();
    ca_and_server_cert_for(dir, ca_name, &san)
}

/// [`ca_and_server_cert`] for any subjectAltName entries in openssl's syntax (`IP:127.0.0.1`,
/// `DNS:localhost`), e.g. a certificate naming only a host the client does not connect to.
///
/// # Errors
/// When `dir` cannot be written or `openssl` fails.
pub fn ca_and_server_cert_for(dir: &Path, ca_name: &str, san: &[&str]) -> Result<ServerTls, TlsError> {
    ca_and_server_cert_signed_with(dir, ca_name, san, "sha256")
}

/// [`ca_and_server_cert_for`] with the server certificate signed using `digest` (`sha256`, `sha384`,
/// `sha512`): the hash that channel binding (RFC 5929 `tls-server-end-point`) must follow.
///
/// # Errors
/// When `dir` cannot be written or `openssl` fails.
pub fn ca_and_server_cert_signed_with(
    dir: &Path,
    ca_name: &str,
    san: &[&str],
    digest: &str,
) -> Result<ServerTls, TlsError> {
    let io = |e: std::io::Error| TlsError(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let subject = format!("/CN={ca_name}");
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", &subject]);
    ca.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca)?;
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=sealroom test broker"]);
    openssl(dir, &req)?;
    let ext = format!(
        "subjectAltName={}\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n",
        san.join(",")
    );
    std::fs::write(dir.join("server.ext"), ext).map_err(io)?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            &format!("-{digest}"),
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    )?;
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(io)?;
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).map_err(io)?;
    Ok(ServerTls { ca_pem, cert: dir.join("server.pem"), key })
}

/// A client certificate and its key, from [`issue_client_cert`].
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The client certificate, PEM file (libpq's `sslcert`).
    pub cert: PathBuf,
    /// Its private key, PKCS#8 PEM file, mode 0600 (libpq's `sslkey`).
    pub key: PathBuf,
}

/// Issues, with the CA that [`ca_and_server_cert_for`] made in `ca_dir` (`ca.pem`, `ca.key`), a client
/// certificate (extendedKeyUsage clientAuth) with subject `/CN={cn}`, written as `{name}.pem` and `{name}.key`
/// (mode 0600) in `ca_dir`. PostgreSQL's `cert` authentication maps the CN to the role.
///
/// # Errors
/// When `ca_dir` holds no such CA or `openssl` fails.
pub fn issue_client_cert(ca_dir: &Path, name: &str, cn: &str) -> Result<ClientTls, TlsError> {
    let io = |e: std::io::Error| TlsError(format!("{}: {e}", ca_dir.display()));
    let (key, csr, ext, cert) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.ext"), format!("{name}.pem"));
    let subject = format!("/CN={cn}");
    openssl(
        ca_dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &subject,
        ],
    )?;
    std::fs::write(
        ca_dir.join(&ext),
        "extendedKeyUsage=clientAuth\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n",
    )
    .map_err(io)?;
    openssl(
        ca_dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-sha256",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    )?;
    let key = ca_dir.join(key);
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(io)?;
    Ok(ClientTls { cert: ca_dir.join(cert), key })
}

/// Writes `{name}.crl.pem` in `ca_dir`: a certificate revocation list signed by the CA that
/// [`ca_and_server_cert_for`] made there (`ca.pem`, `ca.key`), listing the certificates in `revoked` (PEM
/// files; none for a list that revokes nothing), its next update `lifetime` from now (whole seconds, at least
/// one: a list that a test lets go stale). libpq's `sslcrl`.
///
/// # Errors
/// When `ca_dir` holds no such CA or `openssl` fails.
pub fn crl(ca_dir: &Path, name: &str, revoked: &[&Path], lifetime: Duration) -> Result<PathBuf, TlsError> {
    let io = |e: std::io::Error| TlsError(format!("{}: {e}", ca_dir.display()));
    let (config, index, number) =
        (format!("{name}.ca.cnf"), format!("{name}.index"), format!("{name}.crlnumber"));
    std::fs::write(
        ca_dir.join(&config),
        format!("[ca]\ndefault_ca = test_ca\n[test_ca]\ndatabase = {index}\ncrlnumber = {number}\ndefault_md = sha256\n"),
    )
    .map_err(io)?;
    std::fs::write(ca_dir.join(&index), "").map_err(io)?;
    std::fs::write(ca_dir.join(&number), "01\n").map_err(io)?;
    let ca = ["ca", "-config", &config, "-keyfile", "ca.key", "-cert", "ca.pem"];
    for cert in revoked {
        let cert = cert.to_str().ok_or_else(|| TlsError(format!("{}: not UTF-8", cert.display())))?;
        openssl(ca_dir, &[&ca[..], &["-revoke", cert]].concat())?;
    }
    let (out, seconds) = (format!("{name}.crl.pem"), lifetime.as_secs().max(1).to_string());
    openssl(ca_dir, &[&ca[..], &["-gencrl", "-crlsec", &seconds, "-out", &out]].concat())?;
    Ok(ca_dir.join(out))
}
