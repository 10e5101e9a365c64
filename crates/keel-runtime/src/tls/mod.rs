//! TLS for every listener and client of the mesh, one way: rustls (ring) under tonic, the HTTP
//! listener, and the JWKS client.
//!
//! A service holds its certificate and key (signed by the mesh CA) and the CA. Its gRPC and
//! HTTP listeners serve that certificate and verify a client certificate when one is presented
//! (service-to-service calls present theirs: mTLS); token-bearing clients need only the CA.
//! Its clients trust only the CA and present the service's certificate.
//!
//! Plaintext only with `KEEL_TLS_INSECURE=true`, which logs a warning at every start.
//! [`local`] makes the development CA and certificates `just up` and the tests use.

pub mod listener;
pub mod local;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::error::{Error, Result};

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a service's TLS material lives, as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum TlsSetting {
    /// `KEEL_TLS_DIR` (`ca.pem`, `<service>.pem`, `<service>-key.pem`) or `KEEL_TLS_CA`,
    /// `KEEL_TLS_CERT`, `KEEL_TLS_KEY` (each overriding the directory's file).
    Files {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
    /// `KEEL_TLS_INSECURE=true`: plaintext everywhere.
    Insecure,
    /// Nothing configured: the service refuses to start, naming the settings.
    Missing { missing: Vec<&'static str> },
}

impl TlsSetting {
    /// Resolves the setting for `service` from an environment lookup.
    pub fn resolve(service: &str, env: impl Fn(&str) -> Option<String>) -> Result<TlsSetting> {
        let get = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if let Some(v) = get("KEEL_TLS_INSECURE") {
            match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => return Ok(TlsSetting::Insecure),
                "0" | "false" | "no" | "off" => {}
                _ => {
                    return Err(Error::Config {
                        name: "KEEL_TLS_INSECURE".into(),
                        value: v,
                        reason: "expected true or false".into(),
                    });
                }
            }
        }
        let dir = get("KEEL_TLS_DIR").map(PathBuf::from);
        let file = |var: &'static str, name: String| {
            get(var)
                .map(PathBuf::from)
                .or_else(|| dir.as_ref().map(|d| d.join(&name)))
                .ok_or(var)
        };
        let ca = file("KEEL_TLS_CA", local::CA_CERT.to_owned());
        let cert = file("KEEL_TLS_CERT", local::cert_file(service));
        let key = file("KEEL_TLS_KEY", local::key_file(service));
        Ok(match (ca, cert, key) {
            (Ok(ca), Ok(cert), Ok(key)) => TlsSetting::Files { ca, cert, key },
            (ca, cert, key) => TlsSetting::Missing {
                missing: [ca.err(), cert.err(), key.err()].into_iter().flatten().collect(),
            },
        })
    }

    /// `https` with TLS, `http` without.
    pub fn scheme(&self) -> &'static str {
        match self {
            TlsSetting::Insecure => "http",
            _ => "https",
        }
    }
}

struct Material {
    ca_pem: Vec<u8>,
    roots: Arc<rustls::RootCertStore>,
    /// Certificate chain and key this side presents (a server always; a client when it is a
    /// service, for mTLS).
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// The loaded TLS material of one process, or plaintext. Cheap to clone.
#[derive(Clone)]
pub struct Tls(Option<Arc<Material>>);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_on() { "Tls(on)" } else { "Tls(insecure)" })
    }
}

fn read(path: &Path, setting: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Config {
        name: setting.to_owned(),
        value: path.display().to_string(),
        reason: format!("cannot read: {e}"),
    })
}

fn bad(setting: &str, path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Config {
        name: setting.to_owned(),
        value: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl Tls {
    /// Plaintext (`KEEL_TLS_INSECURE=true`).
    pub fn insecure() -> Tls {
        Tls(None)
    }

    /// TLS from the configured setting; `Missing` is an error naming the settings to set.
    pub fn from_setting(setting: &TlsSetting) -> Result<Tls> {
        match setting {
            TlsSetting::Insecure => Ok(Tls::insecure()),
            TlsSetting::Files { ca, cert, key } => Tls::load(ca, Some((cert, key))),
            TlsSetting::Missing { missing } => Err(Error::Config {
                name: missing.join(", "),
                value: String::new(),
                reason: "TLS is required: set KEEL_TLS_DIR (a directory with ca.pem, <service>.pem and \
                         <service>-key.pem, as `keelctl tls init` makes) or KEEL_TLS_CA, KEEL_TLS_CERT and \
                         KEEL_TLS_KEY; KEEL_TLS_INSECURE=true runs plaintext"
                    .into(),
            }),
        }
    }

    /// A client trusting only the CA in `ca` (no certificate of its own): what token-bearing
    /// clients such as `keelctl` use.
    pub fn client_of(ca: &Path) -> Result<Tls> {
        Tls::load(ca, None)
    }

    /// Loads the CA and, if given, the certificate chain and key this process presents.
    pub fn load(ca: &Path, identity: Option<(&PathBuf, &PathBuf)>) -> Result<Tls> {
        let ca_pem = read(ca, "KEEL_TLS_CA")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|e| bad("KEEL_TLS_CA", ca, format!("not a PEM certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad("KEEL_TLS_CA", ca, format!("not a CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("KEEL_TLS_CA", ca, "holds no certificate"));
        }
        let identity = match identity {
            None => None,
            Some((cert, key)) => {
                let cert_pem = read(cert, "KEEL_TLS_CERT")?;
                let key_pem = read(key, "KEEL_TLS_KEY")?;
                let chain: Vec<_> = CertificateDer::pem_slice_iter(&cert_pem)
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| bad("KEEL_TLS_CERT", cert, format!("not a PEM certificate: {e}")))?;
                if chain.is_empty() {
                    return Err(bad("KEEL_TLS_CERT", cert, "holds no certificate"));
                }
                PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| bad("KEEL_TLS_KEY", key, format!("not a PEM private key: {e}")))?;
                Some((cert_pem, key_pem))
            }
        };
        Ok(Tls(Some(Arc::new(Material {
            ca_pem,
            roots: Arc::new(roots),
            identity,
        }))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// `https` with TLS, `http` without.
    pub fn scheme(&self) -> &'static str {
        if self.is_on() { "https" } else { "http" }
    }

    /// The gRPC server's TLS: its certificate, and client certificates verified against the CA
    /// when presented (optional, so token-bearing clients need only the CA).
    pub fn grpc_server(&self) -> Option<ServerTlsConfig> {
        let m = self.0.as_ref()?;
        let (cert, key) = m.identity.as_ref()?;
        Some(
            ServerTlsConfig::new()
                .identity(Identity::from_pem(cert, key))
                .client_ca_root(Certificate::from_pem(&m.ca_pem))
                .client_auth_optional(true)
                .timeout(HANDSHAKE_TIMEOUT),
        )
    }

    /// The rustls server configuration of the HTTP listener (HTTP/1.1; no client certificates).
    pub fn http_server(&self) -> Result<Option<Arc<rustls::ServerConfig>>> {
        let Some(m) = self.0.as_ref() else { return Ok(None) };
        let Some((cert, key)) = m.identity.as_ref() else {
            return Ok(None);
        };
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(format!("server certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| Error::Tls(format!("server key: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| Error::Tls(format!("server certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }

    /// A rustls client configuration trusting only the CA (for HTTPS clients such as the JWKS
    /// fetch); `None` in plaintext mode.
    pub fn http_client(&self) -> Result<Option<Arc<rustls::ClientConfig>>> {
        let Some(m) = self.0.as_ref() else { return Ok(None) };
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(m.roots.clone())
            .with_no_client_auth();
        Ok(Some(Arc::new(config)))
    }

    /// A gRPC endpoint for `url` (named by the setting `setting` in errors): with TLS it must
    /// be `https://` and trusts only the CA, presenting this process's certificate if it has
    /// one; in plaintext mode it must be `http://`.
    pub fn endpoint(&self, url: &str, setting: &str) -> Result<Endpoint> {
        let bad_url = |reason: String| Error::Config {
            name: setting.to_owned(),
            value: url.to_owned(),
            reason,
        };
        let endpoint =
            Endpoint::from_shared(url.to_owned()).map_err(|e| bad_url(format!("not a URL: {e}")))?;
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match (&self.0, scheme.as_deref()) {
            (Some(m), Some("https")) => {
                let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&m.ca_pem));
                if let Some((cert, key)) = &m.identity {
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                endpoint
                    .tls_config(tls)
                    .map_err(|e| bad_url(format!("TLS configuration: {e}")))
            }
            (Some(_), _) => Err(bad_url(
                "TLS is on: the address must be https:// (KEEL_TLS_INSECURE=true for plaintext)".into(),
            )),
            (None, Some("http")) => Ok(endpoint),
            (None, _) => Err(bad_url(
                "plaintext mode (KEEL_TLS_INSECURE=true): the address must be http://".into(),
            )),
        }
    }
}

/// A minimal HTTP/1.0 `GET path` to `addr` over `tls` (or plaintext), for probes and tests:
/// the status code and body (at most 1 MiB). Does not follow redirects.
pub async fn http_get(tls: &Tls, addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        mut s: S,
        path: &str,
    ) -> std::io::Result<(u16, String)> {
        s.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.take(1 << 20).read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))?;
        Ok((status, body.to_owned()))
    }
    let io_err = |e: Error| std::io::Error::other(e.to_string());
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        match tls.http_client().map_err(io_err)? {
            None => exchange(tcp, path).await,
            Some(config) => {
                let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                exchange(stream, path).await
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("GET {path} on {addr}")))?
}

/// The one crypto provider of the mesh (ring, as async-nats and tonic use).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn nothing_configured_is_missing_and_refused_naming_the_settings() {
        let s = TlsSetting::resolve("tenant", env(&[])).unwrap();
        assert_eq!(
            s,
            TlsSetting::Missing {
                missing: vec!["KEEL_TLS_CA", "KEEL_TLS_CERT", "KEEL_TLS_KEY"]
            }
        );
        let err = Tls::from_setting(&s).unwrap_err().to_string();
        assert!(
            err.contains("KEEL_TLS_DIR") && err.contains("KEEL_TLS_INSECURE"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_names_the_services_files_and_single_files_override_it() {
        let s = TlsSetting::resolve(
            "billing-meter",
            env(&[("KEEL_TLS_DIR", "/t"), ("KEEL_TLS_CA", "/ca.pem")]),
        )
        .unwrap();
        assert_eq!(
            s,
            TlsSetting::Files {
                ca: "/ca.pem".into(),
                cert: "/t/billing-meter.pem".into(),
                key: "/t/billing-meter-key.pem".into(),
            }
        );
        assert_eq!(s.scheme(), "https");
    }

    #[test]
    fn insecure_must_be_said_plainly() {
        let s = TlsSetting::resolve("tenant", env(&[("KEEL_TLS_INSECURE", "true")])).unwrap();
        assert_eq!(s, TlsSetting::Insecure);
        assert_eq!(s.scheme(), "http");
        let err = TlsSetting::resolve("tenant", env(&[("KEEL_TLS_INSECURE", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("KEEL_TLS_INSECURE"), "{err}");
        assert!(matches!(
            TlsSetting::resolve("tenant", env(&[("KEEL_TLS_INSECURE", "false")])).unwrap(),
            TlsSetting::Missing { .. }
        ));
    }

    #[test]
    fn endpoints_must_match_the_mode() {
        let plain = Tls::insecure();
        assert!(plain.endpoint("http://127.0.0.1:1", "KEEL_TENANT_ADDR").is_ok());
        let err = plain
            .endpoint("https://127.0.0.1:1", "KEEL_TENANT_ADDR")
            .unwrap_err();
        assert!(err.to_string().contains("KEEL_TENANT_ADDR"), "{err}");
        assert!(plain.endpoint("not a url", "X").is_err());

        let dir = std::env::temp_dir().join(format!("keel-tls-unit-{}", uuid::Uuid::new_v4()));
        local::ensure(&dir, &["tenant"]).unwrap();
        let tls = Tls::load(
            &dir.join(local::CA_CERT),
            Some((&dir.join("tenant.pem"), &dir.join("tenant-key.pem"))),
        )
        .unwrap();
        assert!(tls.endpoint("https://127.0.0.1:1", "X").is_ok());
        let err = tls
            .endpoint("http://127.0.0.1:1", "KEEL_TENANT_ADDR")
            .unwrap_err();
        assert!(err.to_string().contains("https://"), "{err}");
        assert!(tls.grpc_server().is_some());
        assert!(tls.http_server().unwrap().is_some());
        assert!(tls.http_client().unwrap().is_some());
        // A client with only the CA serves nothing.
        let client = Tls::client_of(&dir.join(local::CA_CERT)).unwrap();
        assert!(client.grpc_server().is_none());
        // A key where a certificate belongs is refused, naming the setting.
        let err = Tls::client_of(&dir.join("tenant-key.pem")).unwrap_err();
        assert!(err.to_string().contains("KEEL_TLS_CA"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
