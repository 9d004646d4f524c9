//! How the broker reaches PostgreSQL: in plaintext only on this machine, otherwise over TLS with the server
//! authenticated.
//!
//! A replica trusts the database with the single use of nonces and with its audit chain. Whoever sits between a
//! replica on another machine and the database could otherwise answer a nonce's INSERT as fresh a second time
//! (double redemption), acknowledge audit rows it dropped, or play the database entirely. So the URL operators
//! already give (`--store`, `sealroom broker keys --store`, `sealroom audit verify --postgres`) carries libpq's
//! `sslmode=verify-full` and `sslrootcert=FILE`, and nothing weaker is accepted for a remote host:
//!
//! - `verify-full`: TLS; the server's chain must end at one of the CA certificates in `sslrootcert` (those only,
//!   never the system's roots) and name the host of the URL. tokio-postgres does not know either parameter, so
//!   they are taken out here and the driver is handed `sslmode=require`, which makes it refuse a server that
//!   declines TLS; the certificate checks are ours ([`RustlsConnect`]).
//! - no `sslmode`, or `disable`: plaintext, allowed only when every host is a unix socket or loopback
//!   (127.0.0.0/8, ::1, `localhost`): there is no network to attack.
//! - `allow`, `prefer`, `require`, `verify-ca`: refused everywhere. The first three accept any server; verify-ca
//!   accepts any host the CA ever certified, which for a shared corporate CA is not "this database".
//!
//! Both URL forms are read: `postgres://…?sslmode=verify-full&sslrootcert=/etc/ca.pem` (values
//! percent-decoded) and libpq's `key=value` form (values quoted `'…'` with `\` escapes, as tokio-postgres reads
//! them). When the server offers SCRAM-SHA-256-PLUS, the password exchange is bound to the server's certificate
//! (`tls-server-end-point`, RFC 5929), so a relay holding another certificate cannot pass it on.
//!
//! A database that authenticates its clients by certificate (pg_hba `cert`, or `clientcert=verify-full` beside
//! the password) gets one with libpq's `sslcert=FILE&sslkey=FILE`, both or neither, and only with verify-full
//! (refused otherwise): the certificate chain (PEM, the client's certificate first) and its private key (PEM:
//! PKCS#8, SEC1 or PKCS#1; not encrypted, as `sslpassword` is not read). Both are read when the URL is parsed,
//! so a replica fails at start, in one line naming the file, when either is unreadable, the chain holds no
//! certificate, the key file holds no key of a type aws-lc-rs signs with or not the certificate's, or the key
//! file is open to group or others: as libpq, mode 0600 or less, or 0640 or less when owned by root. Unlike
//! libpq, nothing is read from `~/.postgresql/` when the parameters are absent. The server decides what the
//! certificate proves (its `ssl_ca_file`, the CN against the role); a refusal it sends as a TLS alert is
//! reported as a refusal of the client certificate.
//!
//! Revocation: libpq's `sslcrl=FILE`, only with verify-full, names PEM revocation lists (at least one), read
//! when the URL is parsed and again for every new connection, so a list the operator replaces applies to a
//! running replica's next connection (as libpq reads it per connection). As libpq does with a CRL, every certificate of the server's chain below the root is checked
//! against its issuer's list; a revoked certificate, an issuer without a list, or a list past its next update
//! fails the handshake, in a line that names both files. (`sslcrldir` is not read.)

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::config::{Config, Host, SslMode};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::error::{Error, Result};

const LAYER: &str = "postgres";
/// What an operator must add, said in every refusal.
const HOW: &str = "needs sslmode=verify-full and sslrootcert=CA.pem (TLS, the server's certificate checked)";

/// How connections to one database are made.
#[derive(Clone, Debug)]
pub enum Security {
    /// Plaintext: every host is a unix socket or loopback.
    Local,
    /// TLS with the server's certificate checked against the operator's roots and the URL's host name.
    VerifyFull(RustlsConnect),
}

/// The settings libpq knows and tokio-postgres does not, taken out of a URL.
#[derive(Debug, Default, PartialEq, Eq)]
struct SslParams {
    mode: Option<String>,
    root_cert: Option<String>,
    /// libpq's `sslcert`: the client certificate chain (PEM) presented to the server.
    cert: Option<String>,
    /// libpq's `sslkey`: that certificate's private key (PEM).
    key: Option<String>,
    /// libpq's `sslcrl`: certificate revocation lists (PEM) of the CAs in the server's chain.
    crl: Option<String>,
}

impl SslParams {
    /// Takes `key=value` if it is one of ours; `false` leaves it to the driver.
    fn take(&mut self, key: &str, value: impl FnOnce() -> Result<String>) -> Result<bool> {
        let slot = match key {
            "sslmode" => &mut self.mode,
            "sslrootcert" => &mut self.root_cert,
            "sslcert" => &mut self.cert,
            "sslkey" => &mut self.key,
            "sslcrl" => &mut self.crl,
            _ => return Ok(false),
        };
        *slot = Some(value()?);
        Ok(true)
    }

    /// The first client-certificate parameter given, for a refusal that names it.
    fn client_param(&self) -> Option<&'static str> {
        if self.cert.is_some() {
            Some("sslcert")
        } else if self.key.is_some() {
            Some("sslkey")
        } else {
            None
        }
    }
}

/// Parses a database URL into the driver's settings and how to secure the connection; refuses (one line,
/// never the password) what would leave a remote database unauthenticated. Nothing is contacted.
///
/// # Errors
/// When the URL does not parse, names a remote host without `sslmode=verify-full`, a weaker `sslmode`, an
/// `sslrootcert` file that cannot be read or holds no certificate, `sslcert` without `sslkey` (or the reverse)
/// or either without verify-full, a client certificate file that holds no certificate, or a key file that is
/// unreadable, readable by group or others, holds no private key or not the certificate's.
pub fn parse(url: &str) -> Result<(Config, Security)> {
    let (rest, ssl) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url(url)?
    } else {
        split_key_value(url)?
    };
    let mut config: Config =
        rest.parse().map_err(|e: tokio_postgres::Error| super::pg_err("database URL", &e))?;
    let security = match (ssl.mode.as_deref(), ssl.root_cert.as_deref()) {
        (None | Some("disable"), None) => {
            if let Some(host) = remote_host(&config) {
                return Err(Error::check(
                    LAYER,
                    format!("database host {host} is not on this machine: the connection {HOW}"),
                ));
            }
            if let Some(name) = ssl.client_param().or(ssl.crl.as_ref().map(|_| "sslcrl")) {
                return Err(Error::check(LAYER, format!("{name} is used only with sslmode=verify-full")));
            }
            config.ssl_mode(SslMode::Disable);
            Security::Local
        }
        (Some("verify-full"), Some("system")) => {
            // libpq 16 reads this as "the operating system's roots": any public CA could then vouch for a
            // database, which is what naming the operator's CA rules out.
            return Err(Error::check(
                LAYER,
                "sslrootcert=system (the system's roots) is not accepted: name the file of the CA that issued \
                 the server's certificate",
            ));
        }
        (Some("verify-full"), Some(file)) => {
            if config.get_hosts().iter().any(|h| !matches!(h, Host::Tcp(_))) {
                return Err(Error::check(
                    LAYER,
                    "sslmode=verify-full needs TCP hosts: PostgreSQL does not speak TLS on a unix socket",
                ));
            }
            let client = match (ssl.cert.as_deref(), ssl.key.as_deref()) {
                (Some(cert), Some(key)) => Some(ClientIdentity::read(Path::new(cert), Path::new(key))?),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(Error::check(
                        LAYER,
                        "sslcert needs sslkey (the client certificate's private key) in the same URL",
                    ));
                }
                (None, Some(_)) => {
                    return Err(Error::check(
                        LAYER,
                        "sslkey needs sslcert (the client certificate it is the key of) in the same URL",
                    ));
                }
            };
            config.ssl_mode(SslMode::Require);
            Security::VerifyFull(RustlsConnect::new(
                Path::new(file),
                client,
                ssl.crl.as_deref().map(Path::new),
            )?)
        }
        (Some("verify-full"), None) => {
            return Err(Error::check(
                LAYER,
                "sslmode=verify-full needs sslrootcert=CA.pem (the CA certificates that issued the server's; \
                 the system's roots are not used)",
            ));
        }
        (None | Some("disable"), Some(_)) => {
            return Err(Error::check(LAYER, "sslrootcert is used only with sslmode=verify-full"));
        }
        (Some(weak @ ("allow" | "prefer" | "require" | "verify-ca")), _) => {
            return Err(Error::check(
                LAYER,
                format!(
                    "sslmode={weak} does not check that the server is this database: the connection {HOW}"
                ),
            ));
        }
        (Some(other), _) => {
            return Err(Error::check(LAYER, format!("unknown sslmode {other:?}: the connection {HOW}")));
        }
    };
    Ok((config, security))
}

/// The first host the connection would reach over a network, if any. A unix socket or a loopback name or
/// address is local; a `hostaddr` (the address actually dialled) must be loopback too.
fn remote_host(config: &Config) -> Option<String> {
    let loopback_name = |h: &str| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    config
        .get_hosts()
        .iter()
        .find_map(|h| match h {
            Host::Tcp(name) if !loopback_name(name) => Some(name.clone()),
            _ => None,
        })
        .or_else(|| config.get_hostaddrs().iter().find(|ip| !ip.is_loopback()).map(ToString::to_string))
}

/// `postgres://…?a=b&sslmode=…&sslrootcert=…`: the two taken out (percent-decoded), the rest left as written.
fn split_url(url: &str) -> Result<(String, SslParams)> {
    let Some((base, query)) = url.split_once('?') else { return Ok((url.to_owned(), SslParams::default())) };
    let mut ssl = SslParams::default();
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s).decode_utf8().map(std::borrow::Cow::into_owned).map_err(
                |_| Error::check(LAYER, "database URL: a parameter is not UTF-8 once percent-decoded"),
            )
        };
        if !ssl.take(&decode(key)?, || decode(value))? {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((rest, ssl))
}

/// libpq's `key=value …` form, read as tokio-postgres reads it: the two taken out, the rest written back quoted.
fn split_key_value(s: &str) -> Result<(String, SslParams)> {
    let bad = |what: &str| Error::check(LAYER, format!("database connection string: {what}"));
    let mut ssl = SslParams::default();
    let mut kept = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            if it.peek().is_some() {
                return Err(bad("a parameter without a name"));
            }
            break;
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.next() != Some('=') {
            return Err(bad(&format!("no \"=\" after {key}")));
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let quoted = it.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        loop {
            match it.peek().copied() {
                None if quoted => return Err(bad(&format!("unterminated quoted value of {key}"))),
                None => break,
                Some('\'') if quoted => {
                    it.next();
                    break;
                }
                Some(c) if !quoted && c.is_whitespace() => break,
                Some('\\') => {
                    it.next();
                    if let Some(c) = it.next() {
                        value.push(c);
                    }
                }
                Some(c) => {
                    it.next();
                    value.push(c);
                }
            }
        }
        let quoted = format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'"));
        if !ssl.take(&key, || Ok(value))? {
            kept.push(quoted);
        }
    }
    Ok((kept.join(" "), ssl))
}

/// The client certificate chain and its private key, presented to a server that asks for one (`sslcert`,
/// `sslkey`).
struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// For messages.
    cert_file: String,
    key_file: String,
}

impl ClientIdentity {
    /// Reads both files, the key only if no one but its owner (or, for a root-owned file, root's group) can read
    /// it, as libpq requires.
    fn read(cert: &Path, key: &Path) -> Result<Self> {
        let cert_file = cert.display().to_string();
        let key_file = key.display().to_string();
        let cert_fail = |what: String| Error::check(LAYER, format!("sslcert {cert_file}: {what}"));
        let key_fail = |what: String| Error::check(LAYER, format!("sslkey {key_file}: {what}"));
        let pem = std::fs::read(cert).map_err(|e| cert_fail(e.to_string()))?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| cert_fail(format!("not PEM: {e}")))?;
        if chain.is_empty() {
            return Err(cert_fail("holds no CERTIFICATE".to_owned()));
        }
        let meta = std::fs::metadata(key).map_err(|e| key_fail(e.to_string()))?;
        if !meta.is_file() {
            return Err(key_fail("not a regular file".to_owned()));
        }
        let mode = meta.mode() & 0o7777;
        let loose = if meta.uid() == 0 { mode & 0o037 } else { mode & 0o077 };
        if loose != 0 {
            return Err(key_fail(format!(
                "mode {mode:04o} gives group or others access: it must be 0600 or less (0640 or less if \
                 owned by root), as libpq requires"
            )));
        }
        let key_pem = std::fs::read(key).map_err(|e| key_fail(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            key_fail(match e {
                pem::Error::NoItemsFound if key_pem.windows(9).any(|w| w == b"ENCRYPTED") => {
                    "the private key is encrypted (sslpassword is not supported): store it unencrypted, \
                     mode 0600"
                        .to_owned()
                }
                pem::Error::NoItemsFound => {
                    "holds no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY (PKCS#8, SEC1 or PKCS#1 PEM)"
                        .to_owned()
                }
                other => format!("not PEM: {other}"),
            })
        })?;
        Ok(Self { chain, key, cert_file, key_file })
    }
}

/// The TLS client of a verify-full connection: rustls on aws-lc-rs (the broker's crypto everywhere else),
/// trusting only the operator's CA certificates.
#[derive(Clone)]
pub struct RustlsConnect {
    /// The settings built at start, for connections when there are no revocation lists to read again.
    config: Arc<rustls::ClientConfig>,
    trust: Arc<TrustSettings>,
}

impl std::fmt::Debug for RustlsConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RustlsConnect(sslrootcert={}, sslcert={:?}, sslcrl={:?})",
            self.trust.roots_file,
            self.trust.cert_file(),
            self.trust.crl_file()
        )
    }
}

impl RustlsConnect {
    fn new(file: &Path, client: Option<ClientIdentity>, crl: Option<&Path>) -> Result<Self> {
        let roots_file = file.display().to_string();
        let fail = |what: String| Error::check(LAYER, format!("sslrootcert {roots_file}: {what}"));
        let pem = std::fs::read(file).map_err(|e| fail(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| fail(format!("not PEM: {e}")))?;
            roots.add(cert).map_err(|e| fail(format!("not a usable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(fail("holds no CERTIFICATE".to_owned()));
        }
        let trust = TrustSettings {
            roots: Arc::new(roots),
            roots_file: roots_file.clone(),
            client,
            crl: crl.map(|f| (f.to_owned(), f.display().to_string())),
        };
        // Built now so that every file is checked at start, and kept for connections when there are no lists.
        let config = Arc::new(trust.client_config()?);
        Ok(Self { config, trust: Arc::new(trust) })
    }

    /// The TLS settings of a new connection: with revocation lists, read again from their file, so that a list
    /// the operator replaced (as a CA publishes them, each valid until its next update) applies to the next
    /// connection of a running replica, as libpq reads it per connection; else the settings built at start.
    fn config_for_connection(&self) -> Result<Arc<rustls::ClientConfig>> {
        if self.trust.crl.is_some() {
            self.trust.client_config().map(Arc::new)
        } else {
            Ok(Arc::clone(&self.config))
        }
    }
}

/// What a verify-full connection trusts and presents: the operator's roots, the client identity if any, and
/// the revocation lists' file if any.
struct TrustSettings {
    roots: Arc<rustls::RootCertStore>,
    roots_file: String,
    client: Option<ClientIdentity>,
    /// The file and its name for messages.
    crl: Option<(std::path::PathBuf, String)>,
}

impl TrustSettings {
    /// For messages: the client certificate file, if one is presented.
    fn cert_file(&self) -> Option<&str> {
        self.client.as_ref().map(|c| c.cert_file.as_str())
    }

    /// For messages: the revocation lists the server's chain is checked against, if any.
    fn crl_file(&self) -> Option<&str> {
        self.crl.as_ref().map(|(_, name)| name.as_str())
    }

    /// rustls on aws-lc-rs with these settings, the lists (if any) read from their file now.
    fn client_config(&self) -> Result<rustls::ClientConfig> {
        let fail = |what: String| Error::check(LAYER, format!("sslrootcert {}: {what}", self.roots_file));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::clone(&self.roots),
            Arc::clone(&provider),
        );
        if let Some((crl, crl_file)) = &self.crl {
            // As libpq with a CRL: every certificate of the chain below the root is checked against its
            // issuer's list, and a missing list fails the connection; so does a list past its next update.
            verifier = verifier.with_crls(read_crls(crl, crl_file)?).enforce_revocation_expiration();
        }
        let verifier = verifier.build().map_err(|e| match &self.crl {
            Some((_, crl_file)) => Error::check(LAYER, format!("sslcrl {crl_file}: {e}")),
            None => fail(format!("{e}")),
        })?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(format!("TLS settings: {e}")))?
            .with_webpki_verifier(verifier);
        let mut config = match &self.client {
            None => builder.with_no_client_auth(),
            Some(ClientIdentity { chain, key, cert_file, key_file }) => {
                // rustls loads the key (refusing a type aws-lc-rs cannot sign with) and compares its public half
                // with the certificate's.
                builder.with_client_auth_cert(chain.clone(), key.clone_key()).map_err(|e| {
                    let why = match e {
                        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                            format!(" is not the private key of the certificate in sslcert {cert_file}")
                        }
                        other => format!(": not a usable client key for sslcert {cert_file}: {other}"),
                    };
                    Error::check(LAYER, format!("sslkey {key_file}{why}"))
                })?
            }
        };
        // PostgreSQL 17 requires this ALPN name for direct TLS (sslnegotiation=direct); earlier servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(config)
    }
}

/// The revocation lists in `file` (PEM `X509 CRL` blocks), at least one.
fn read_crls(file: &Path, name: &str) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let fail = |what: String| Error::check(LAYER, format!("sslcrl {name}: {what}"));
    let pem = std::fs::read(file).map_err(|e| fail(e.to_string()))?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not PEM: {e}")))?;
    if crls.is_empty() {
        return Err(fail("holds no X509 CRL".to_owned()));
    }
    Ok(crls)
}

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = HostConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> io::Result<HostConnect> {
        // An IP address is checked against the certificate's IP addresses, a name against its DNS names.
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("host {host:?}: {e}")))?;
        let config = self.config_for_connection().map_err(|e| io::Error::other(e.to_string()))?;
        Ok(HostConnect { config, name, trust: Arc::clone(&self.trust) })
    }
}

/// One connection's handshake with the host it was made for.
pub struct HostConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    /// For messages.
    trust: Arc<TrustSettings>,
}

impl std::fmt::Debug for HostConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostConnect({:?}, sslrootcert={})", self.name, self.trust.roots_file)
    }
}

impl TlsConnect<Socket> for HostConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let host = self.name.to_str().into_owned();
            let cert_file = self.trust.cert_file().map(str::to_owned);
            match tokio_rustls::TlsConnector::from(self.config).connect(self.name, stream).await {
                Ok(stream) => Ok(RustlsStream { stream, cert_file }),
                Err(e) => Err(client_cert_refusal(&e, cert_file.as_deref()).unwrap_or_else(|| {
                    let crl = self.trust.crl_file().map_or_else(String::new, |f| format!(" and sslcrl {f}"));
                    io::Error::new(
                        e.kind(),
                        format!(
                            "server certificate check for {host} against sslrootcert {}{crl}: {e}",
                            self.trust.roots_file
                        ),
                    )
                })),
            }
        })
    }
}

/// The server's fatal alert when it refuses the client's certificate (or its absence), said as such: in TLS 1.3
/// the server checks the certificate after the client's handshake is done, so the alert arrives on the first
/// read. `None` for anything else.
fn client_cert_refusal(e: &io::Error, cert_file: Option<&str>) -> Option<io::Error> {
    use rustls::AlertDescription as A;
    let Some(rustls::Error::AlertReceived(alert)) =
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
    else {
        return None;
    };
    let what = match (alert, cert_file) {
        (A::CertificateRequired, _) => {
            "the server requires a client certificate (sslcert and sslkey)".to_owned()
        }
        (
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied,
            Some(file),
        ) => format!("the server refused the client certificate in sslcert {file}"),
        _ => return None,
    };
    Some(io::Error::new(e.kind(), format!("{what}: received fatal alert: {alert:?}")))
}

/// An established TLS connection to the database.
pub struct RustlsStream {
    stream: tokio_rustls::client::TlsStream<Socket>,
    /// For messages: the client certificate file, if one was presented.
    cert_file: Option<String>,
}

impl std::fmt::Debug for RustlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RustlsStream")
    }
}

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        self.stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| tls_server_end_point(leaf))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// RFC 5929 `tls-server-end-point`: the server certificate hashed with its signature's hash, SHA-256 where that
/// is MD5 or SHA-1. `None` for algorithms the RFC leaves undefined (Ed25519, RSA-PSS): SCRAM then runs unbound.
fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let hash = match parsed.signature_algorithm.algorithm.to_id_string().as_str() {
        // md5/sha1/sha256WithRSAEncryption, ecdsa-with-SHA1/SHA256
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2" => &aws_lc_rs::digest::SHA256,
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => &aws_lc_rs::digest::SHA384,
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => &aws_lc_rs::digest::SHA512,
        _ => return None,
    };
    Some(aws_lc_rs::digest::digest(hash, cert).as_ref().to_vec())
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Err(e)) => {
                Poll::Ready(Err(client_cert_refusal(&e, this.cert_file.as_deref()).unwrap_or(e)))
            }
            other => other,
        }
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(url: &str) -> String {
        match parse(url) {
            Ok(_) => panic!("{url} accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn url_form_takes_out_the_libpq_parameters_and_keeps_the_rest() {
        let (rest, ssl) = split_url(
            "postgres://u:p@db:5432/d?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/d?application_name=x");
        assert_eq!(
            ssl,
            SslParams {
                mode: Some("verify-full".into()),
                root_cert: Some("/etc/ca.pem".into()),
                ..SslParams::default()
            }
        );
        let (rest, ssl) = split_url("postgres://u@db/d").unwrap();
        assert_eq!((rest.as_str(), ssl), ("postgres://u@db/d", SslParams::default()));
    }

    #[test]
    fn key_value_form_takes_out_the_libpq_parameters_and_quotes_the_rest() {
        let (rest, ssl) = split_key_value(
            r"host=db password = 'p\'q r\\s' sslmode=verify-full sslrootcert='/a b/ca.pem' port=5",
        )
        .unwrap();
        assert_eq!(rest, r"host='db' password='p\'q r\\s' port='5'");
        assert_eq!(
            ssl,
            SslParams {
                mode: Some("verify-full".into()),
                root_cert: Some("/a b/ca.pem".into()),
                ..SslParams::default()
            }
        );
        // What tokio-postgres reads back is what was written.
        let config: Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"p'q r\\s"[..]));
        assert!(split_key_value("host=db password='open").is_err());
        assert!(split_key_value("host db").is_err());
    }

    #[test]
    fn plaintext_is_allowed_only_on_this_machine() {
        for url in [
            "postgres://u:p@127.0.0.1:5432/d",
            "postgres://u:p@127.8.9.10/d?sslmode=disable",
            "postgres://u:p@[::1]:5432/d",
            "postgres://u:p@localhost/d",
            "postgres://u:p@%2Frun%2Fpostgresql/d",
            "host=/run/postgresql user=u dbname=d",
            "host=localhost hostaddr=127.0.0.1 user=u",
        ] {
            assert!(matches!(parse(url), Ok((_, Security::Local))), "{url}");
        }
        for (url, host) in [
            ("postgres://u:p@192.0.2.1:5432/d", "192.0.2.1"),
            ("postgres://u:p@localhost,db.example/d?sslmode=disable", "db.example"),
            ("host=localhost hostaddr=192.0.2.7 user=u", "192.0.2.7"),
            ("postgres://u:p@[2001:db8::1]/d", "2001:db8::1"),
        ] {
            let m = refusal(url);
            assert!(m.contains(host) && m.contains("needs sslmode=verify-full and sslrootcert="), "{m}");
        }
    }

    #[test]
    fn modes_that_do_not_authenticate_the_server_are_refused_everywhere() {
        for mode in ["allow", "prefer", "require", "verify-ca"] {
            for host in ["192.0.2.1", "127.0.0.1"] {
                let m = refusal(&format!("postgres://u:secret-pw@{host}/d?sslmode={mode}&sslrootcert=/x"));
                assert!(m.contains(&format!("sslmode={mode} does not check")), "{m}");
                assert!(!m.contains("secret-pw"), "{m}");
            }
        }
        assert!(refusal("postgres://u@192.0.2.1/d?sslmode=verify-fully").contains("unknown sslmode"));
        assert!(refusal("postgres://u@192.0.2.1/d?sslmode=verify-full").contains("needs sslrootcert="));
        assert!(refusal("postgres://u@127.0.0.1/d?sslrootcert=/x").contains("only with sslmode=verify-full"));
        assert!(refusal("host=/run/pg sslmode=verify-full sslrootcert=/x").contains("unix socket"));
        assert!(refusal("host=192.0.2.1 sslmode=verify-full sslrootcert=system").contains("system's roots"));
    }

    #[test]
    fn an_unreadable_or_empty_root_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let m = refusal(&format!("host=192.0.2.1 sslmode=verify-full sslrootcert={}", missing.display()));
        assert!(m.contains(&format!("sslrootcert {}", missing.display())), "{m}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let m = refusal(&format!("host=192.0.2.1 sslmode=verify-full sslrootcert={}", empty.display()));
        assert!(m.contains(&format!("sslrootcert {}: holds no CERTIFICATE", empty.display())), "{m}");
    }

    /// The test client certificates (`testdata/pg-client`, made with openssl; README there).
    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/pg-client").join(name)
    }

    /// `name` copied into `dir` with `mode` (git keeps no modes).
    fn key_file(dir: &Path, name: &str, mode: u32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::copy(fixture(name), &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// A verify-full key=value URL with the client certificate `cert` and key `key` (quoted), and a root file.
    fn with_client(cert: &Path, key: &Path) -> String {
        format!(
            "host=192.0.2.1 user=u password=secret-pw sslmode=verify-full sslrootcert='{}' sslcert='{}' \
             sslkey='{}'",
            fixture("ec.cert.pem").display(),
            cert.display(),
            key.display()
        )
    }

    #[test]
    fn both_url_forms_take_out_the_client_certificate_parameters() {
        let (rest, ssl) = split_url(
            "postgres://u:p@db/d?sslcert=%2Fetc%2Fc%20d.pem&application_name=x&sslkey=%2Fetc%2Fk.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db/d?application_name=x");
        assert_eq!(
            ssl,
            SslParams {
                cert: Some("/etc/c d.pem".into()),
                key: Some("/etc/k.pem".into()),
                ..SslParams::default()
            }
        );
        let (rest, ssl) = split_key_value(r"host=db sslcert='/a b/c\'.pem' sslkey=/k.pem user=u").unwrap();
        assert_eq!(rest, "host='db' user='u'");
        assert_eq!(
            ssl,
            SslParams {
                cert: Some("/a b/c'.pem".into()),
                key: Some("/k.pem".into()),
                ..SslParams::default()
            }
        );
    }

    #[test]
    fn client_certificate_and_key_in_every_pem_form_are_accepted_with_verify_full() {
        let dir = tempfile::tempdir().unwrap();
        for (cert, key) in [
            ("ec.cert.pem", "ec.pkcs8.pem"),
            ("ec.cert.pem", "ec.sec1.pem"),
            ("rsa.cert.pem", "rsa.pkcs1.pem"),
        ] {
            let key = key_file(dir.path(), key, 0o600);
            let (config, security) = parse(&with_client(&fixture(cert), &key)).unwrap();
            assert!(matches!(security, Security::VerifyFull(_)), "{cert} {}", key.display());
            assert_eq!(config.get_ssl_mode(), SslMode::Require);
            // The URL form, percent-encoded paths.
            let url = format!(
                "postgres://u:secret-pw@192.0.2.1/d?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
                fixture("ec.cert.pem").display().to_string().replace('/', "%2F"),
                fixture(cert).display().to_string().replace('/', "%2F"),
                key.display().to_string().replace('/', "%2F"),
            );
            assert!(matches!(parse(&url), Ok((_, Security::VerifyFull(_)))), "{url}");
        }
        // Read-only by the owner is fine too.
        let key = key_file(dir.path(), "ec.sec1.pem", 0o400);
        assert!(parse(&with_client(&fixture("ec.cert.pem"), &key)).is_ok());
    }

    #[test]
    fn client_certificate_parameters_go_together_and_only_with_verify_full() {
        let ca = fixture("ec.cert.pem").display().to_string();
        let base = format!("postgres://u:secret-pw@192.0.2.1/d?sslmode=verify-full&sslrootcert={ca}");
        let m = refusal(&format!("{base}&sslcert=/c.pem"));
        assert!(m.contains("sslcert needs sslkey"), "{m}");
        let m = refusal(&format!("{base}&sslkey=/k.pem"));
        assert!(m.contains("sslkey needs sslcert"), "{m}");
        for (url, name) in [
            ("postgres://u:secret-pw@127.0.0.1/d?sslcert=/c.pem&sslkey=/k.pem", "sslcert"),
            ("postgres://u:secret-pw@127.0.0.1/d?sslmode=disable&sslkey=/k.pem", "sslkey"),
            ("host=/run/pg user=u password=secret-pw sslcert=/c.pem sslkey=/k.pem", "sslcert"),
        ] {
            let m = refusal(url);
            assert!(m.contains(&format!("{name} is used only with sslmode=verify-full")), "{m}");
            assert!(!m.contains("secret-pw"), "{m}");
        }
        // A weaker mode is refused for what it is, with or without a client certificate.
        let m = refusal("postgres://u:secret-pw@127.0.0.1/d?sslmode=require&sslcert=/c.pem&sslkey=/k.pem");
        assert!(m.contains("sslmode=require does not check"), "{m}");
    }

    #[test]
    fn revocation_lists_are_read_at_start_and_only_with_verify_full() {
        let m = refusal("postgres://u:secret-pw@127.0.0.1/d?sslcrl=/ca.crl.pem");
        assert!(m.contains("sslcrl is used only with sslmode=verify-full"), "{m}");
        let ca = fixture("ec.cert.pem").display().to_string();
        let base = format!("postgres://u:secret-pw@192.0.2.1/d?sslmode=verify-full&sslrootcert={ca}");
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crl.pem");
        let m = refusal(&format!("{base}&sslcrl={}", missing.display()));
        assert!(m.contains(&format!("sslcrl {}: No such file", missing.display())), "{m}");
        // A certificate where the list should be.
        let m = refusal(&format!("{base}&sslcrl={ca}"));
        assert!(m.contains(&format!("sslcrl {ca}: holds no X509 CRL")), "{m}");
        let garbled = dir.path().join("garbled.crl.pem");
        std::fs::write(&garbled, "-----BEGIN X509 CRL-----\nMAMCAQA=\n-----END X509 CRL-----\n").unwrap();
        let m = refusal(&format!("{base}&sslcrl={}", garbled.display()));
        assert!(m.starts_with(&format!("postgres: sslcrl {}: ", garbled.display())), "{m}");
        assert!(!m.contains("secret-pw"), "{m}");
    }

    #[test]
    fn unusable_client_certificate_or_key_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let cert = fixture("ec.cert.pem");
        let key = key_file(dir.path(), "ec.pkcs8.pem", 0o600);
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing\n").unwrap();
        std::fs::set_permissions(&empty, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let cases = [
            (with_client(&missing, &key), format!("sslcert {}: No such file", missing.display())),
            (with_client(&empty, &key), format!("sslcert {}: holds no CERTIFICATE", empty.display())),
            (with_client(&cert, &missing), format!("sslkey {}: No such file", missing.display())),
            (with_client(&cert, dir.path()), format!("sslkey {}: not a regular file", dir.path().display())),
            (with_client(&cert, &empty), format!("sslkey {}: holds no PRIVATE KEY", empty.display())),
            // A certificate file is not a key.
            (with_client(&cert, &key_file(dir.path(), "ec.cert.pem", 0o600)), "holds no PRIVATE KEY".into()),
            (
                with_client(&cert, &key_file(dir.path(), "ec.encrypted.pem", 0o600)),
                "is encrypted (sslpassword is not supported)".into(),
            ),
            // Another key pair's key (RSA for an EC certificate, EC for an RSA one).
            (
                with_client(&cert, &key_file(dir.path(), "rsa.pkcs1.pem", 0o600)),
                format!("is not the private key of the certificate in sslcert {}", cert.display()),
            ),
            (
                with_client(&fixture("rsa.cert.pem"), &key),
                "is not the private key of the certificate in sslcert".into(),
            ),
        ];
        for (url, want) in &cases {
            let m = refusal(url);
            assert!(m.contains(want.as_str()), "{want:?} not in {m}");
            assert!(!m.contains("secret-pw") && !m.contains('\n'), "{m}");
        }
    }

    #[test]
    fn a_private_key_readable_by_group_or_others_is_refused_as_libpq_does() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cert = fixture("ec.cert.pem");
        let key = key_file(dir.path(), "ec.sec1.pem", 0o600);
        let by_root = std::fs::metadata(&key).unwrap().uid() == 0;
        for mode in [0o644, 0o604, 0o660, 0o620, 0o610, 0o606, 0o601, 0o640] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let result = parse(&with_client(&cert, &key));
            if mode == 0o640 && by_root {
                // libpq allows group read for a root-owned key (a system-managed key shared with a group).
                assert!(result.is_ok(), "{mode:04o}");
                continue;
            }
            let m = result.map(|_| ()).unwrap_err().to_string();
            assert!(
                m.contains(&format!(
                    "sslkey {}: mode {mode:04o} gives group or others access",
                    key.display()
                )),
                "{m}"
            );
            assert!(m.contains("must be 0600 or less"), "{m}");
        }
    }

    #[test]
    fn a_server_alert_about_the_client_certificate_is_said_as_such() {
        let alert = |a| io::Error::new(io::ErrorKind::InvalidData, rustls::Error::AlertReceived(a));
        let m = client_cert_refusal(&alert(rustls::AlertDescription::UnknownCA), Some("/etc/c.pem")).unwrap();
        assert_eq!(
            m.to_string(),
            "the server refused the client certificate in sslcert /etc/c.pem: received fatal alert: UnknownCA"
        );
        let m = client_cert_refusal(&alert(rustls::AlertDescription::CertificateRequired), None).unwrap();
        assert!(m.to_string().starts_with("the server requires a client certificate"), "{m}");
        // Without a client certificate an UnknownCA alert is not about one; other failures pass unchanged.
        assert!(client_cert_refusal(&alert(rustls::AlertDescription::UnknownCA), None).is_none());
        assert!(
            client_cert_refusal(&alert(rustls::AlertDescription::HandshakeFailure), Some("/c")).is_none()
        );
        assert!(client_cert_refusal(&io::Error::other("reset"), Some("/c")).is_none());
    }
}
