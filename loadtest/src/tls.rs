//! TLS for `wss://` and `https://` nodes: the one rustls client configuration a process
//! builds (the system's trusted roots plus an optional `--ca-file`), and what a target
//! needs to start a handshake ([`TlsDial`]: the connector and the name it verifies).
//!
//! Owns: reading root certificates (once per process, before any load starts) and the
//! protocol choices: rustls with the `ring` provider, TLS 1.2 and 1.3, ALPN `http/1.1`.
//! May not open sockets: [`crate::stream`] runs the handshake over a TCP connection
//! [`crate::net`] opened. Plain `ws://` and `http://` targets never reach this module.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Why TLS could not be set up. Each is the operator's to fix before the run; none is
/// worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The `--ca-file` could not be read.
    #[error("--ca-file {path}: {source}")]
    CaRead {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The `--ca-file` is not PEM certificates, or holds none: pass the CA's certificate
    /// (`-----BEGIN CERTIFICATE-----`), not a key or a DER file.
    #[error("--ca-file {path}: {why}")]
    CaParse { path: PathBuf, why: String },
    /// Nothing to verify a server against: the system has no root certificates (a slim
    /// container) and no `--ca-file` was given. Install ca-certificates, set
    /// `SSL_CERT_FILE`, or pass `--ca-file`.
    #[error(
        "no trusted root certificates: none found on this system and no --ca-file given \
         (install ca-certificates, set SSL_CERT_FILE, or pass --ca-file)"
    )]
    NoRoots,
    /// The host is not something a certificate can name (a bug in URL parsing if seen).
    #[error("{0:?} is not a name TLS can verify")]
    BadName(String),
    /// rustls refused the configuration: a bug on our side.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The client configuration every TLS connection of the process shares: trusted roots
/// from the system (`SSL_CERT_FILE` / `SSL_CERT_DIR` override where they are looked for)
/// and, when given, every certificate in the PEM file `ca_file` (a private CA).
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are skipped: the ones that load (or the CA file)
    // decide, and a server they cannot verify fails its handshake with a clear kind.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|e| TlsError::CaParse {
                path: path.to_owned(),
                why: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The relay speaks HTTP/1.1 only; saying so keeps a load balancer from choosing h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; at least one.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::CaRead {
        path: path.to_owned(),
        source,
    })?;
    let parse = |why: String| TlsError::CaParse {
        path: path.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse(e.to_string()))?;
    if certs.is_empty() {
        return Err(parse("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// What a TLS target hands to every handshake: the shared connector and the name the
/// server's certificate must carry, also sent as SNI. Cheap to clone (an `Arc` and a
/// short name).
#[derive(Clone)]
pub struct TlsDial {
    pub connector: TlsConnector,
    pub name: ServerName<'static>,
}

impl TlsDial {
    /// For the host `name` (a DNS name, or an IP literal without brackets).
    pub fn new(config: Arc<ClientConfig>, name: &str) -> Result<TlsDial, TlsError> {
        let name =
            ServerName::try_from(name.to_owned()).map_err(|_| TlsError::BadName(name.into()))?;
        Ok(TlsDial {
            connector: TlsConnector::from(config),
            name,
        })
    }
}

impl fmt::Debug for TlsDial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsDial").field("name", &self.name).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("loadtest-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let p = scratch("empty.pem", "not a certificate\n");
        let err = client_config(Some(&p)).expect_err("refused");
        assert!(matches!(err, TlsError::CaParse { .. }), "{err}");
        assert!(err.to_string().contains("--ca-file"), "{err}");
        let missing = p.with_file_name("missing.pem");
        assert!(matches!(
            client_config(Some(&missing)),
            Err(TlsError::CaRead { .. })
        ));
    }

    #[test]
    fn names_and_addresses_are_verifiable_names() {
        let config = Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth(),
        );
        let d = TlsDial::new(config.clone(), "relay.staging.example").expect("dns");
        assert!(matches!(d.name, ServerName::DnsName(_)));
        let d = TlsDial::new(config.clone(), "::1").expect("ip");
        assert!(matches!(d.name, ServerName::IpAddress(_)));
        assert!(TlsDial::new(config, "bad name").is_err());
    }
}
