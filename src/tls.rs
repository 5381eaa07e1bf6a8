//! TLS: the certificate, key and CA files (`tls_cert_file`, `tls_key_file`, `tls_ca_file`)
//! read into rustls' server and client configurations.
//!
//! Owns reading the PEM files (errors name the key and the file, never a line of it), the
//! server's certificate behind a swap ([`ServerTls`]: the listener's configuration resolves
//! the certificate in force at each handshake, so a reload puts a renewed one in force without
//! a new listener), and the peers' verifier behind a swap ([`ClientTls`]: every peer's
//! certificate must chain to the CA in force and name the address asked as an IP or DNS
//! subject alternative name). rustls with the ring provider only (no OpenSSL, no C library of
//! its own); no sockets here: [`crate::server`] runs the handshakes, [`crate::peers`] connects.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A TLS file that cannot be used: the key that names it, and why (never its content).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {reason}")]
pub struct TlsError {
    /// `tls_cert_file`, `tls_key_file` or `tls_ca_file`.
    pub key: &'static str,
    /// What is wrong, with the file's path.
    pub reason: String,
}

impl TlsError {
    fn new(key: &'static str, path: &Path, why: impl std::fmt::Display) -> TlsError {
        TlsError {
            key,
            reason: format!("{}: {why}", path.display()),
        }
    }
}

/// The crypto of every TLS configuration here: rustls' ring provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Words for a PEM error that quote nothing of the file (the parser's own messages may hold a
/// line of it, which could be part of a private key).
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => format!("cannot be read ({})", io.kind()),
        Error::NoItemsFound => "holds no PEM section of the expected kind".into(),
        _ => "is not a valid PEM file".into(),
    }
}

/// The certificates of a PEM file (`key` names it in errors); at least one.
fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::new(key, path, pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(key, path, pem_error(&e)))?;
    if certs.is_empty() {
        return Err(TlsError::new(key, path, "holds no CERTIFICATE section"));
    }
    Ok(certs)
}

/// Reads a certificate chain (the node's first) and its private key, and checks that they
/// belong together.
pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certificates("tls_cert_file", cert)?;
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::new("tls_key_file", key, pem_error(&e)))?;
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => {
                "is not the key of the certificate of tls_cert_file".to_string()
            }
            other => format!("is not a usable private key ({other})"),
        };
        TlsError::new("tls_key_file", key, why)
    })?;
    Ok(Arc::new(certified))
}

/// The CA certificates of `tls_ca_file`, each added as a root.
pub fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates("tls_ca_file", ca)? {
        store
            .add(cert)
            .map_err(|e| TlsError::new("tls_ca_file", ca, format!("not a CA certificate ({e})")))?;
    }
    Ok(store)
}

/// The server's certificate in force, resolved at each handshake.
#[derive(Debug)]
struct CertSwap(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CertSwap {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The HTTPS side of the listener: its configuration (built once) and the certificate in
/// force (swapped by [`ServerTls::reload`]).
#[derive(Debug, Clone)]
pub struct ServerTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    swap: Arc<CertSwap>,
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Reads `cert_file` and `key_file` and builds the listener's configuration (TLS 1.2 and
    /// 1.3, HTTP/1.1, no client certificate).
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<ServerTls, TlsError> {
        let swap = Arc::new(CertSwap(ArcSwap::new(certified_key(cert_file, key_file)?)));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new("tls_cert_file", cert_file, e))?
            .with_no_client_auth()
            .with_cert_resolver(swap.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            swap,
            config: Arc::new(config),
        })
    }

    /// The configuration the listener's handshakes use (it always resolves the certificate
    /// in force).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Reads the same files again and puts the certificate in force for the next handshakes
    /// (connections already open keep theirs). A pair that does not load changes nothing.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = certified_key(&self.cert_file, &self.key_file)?;
        self.swap.0.store(fresh);
        Ok(())
    }

    /// The end-entity certificate in force (DER), for tests and logs.
    pub fn certificate(&self) -> Option<CertificateDer<'static>> {
        self.swap.0.load().cert.first().cloned()
    }
}

/// The peers' verifier in force: WebPKI's, over the roots of `tls_ca_file`.
#[derive(Debug)]
struct VerifierSwap(ArcSwap<WebPkiServerVerifier>);

impl ServerCertVerifier for VerifierSwap {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .load()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.load().supported_verify_schemes()
    }
}

fn verifier(ca_file: &Path) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_file)?), provider())
        .build()
        .map_err(|e| TlsError::new("tls_ca_file", ca_file, format!("unusable roots ({e})")))
}

/// The peers' side: the client configuration whose verifier follows `tls_ca_file` (swapped by
/// [`ClientTls::reload`]).
#[derive(Debug, Clone)]
pub struct ClientTls {
    ca_file: PathBuf,
    swap: Arc<VerifierSwap>,
    config: Arc<ClientConfig>,
}

impl ClientTls {
    /// Reads `ca_file` and builds the client configuration (TLS 1.2 and 1.3, HTTP/1.1, no
    /// client certificate).
    pub fn load(ca_file: &Path) -> Result<ClientTls, TlsError> {
        let swap = Arc::new(VerifierSwap(ArcSwap::new(verifier(ca_file)?)));
        // No ALPN here: the https connector ([`crate::peers`]) offers HTTP/1.1 itself.
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new("tls_ca_file", ca_file, e))?
            .dangerous()
            .with_custom_certificate_verifier(swap.clone())
            .with_no_client_auth();
        Ok(ClientTls {
            ca_file: ca_file.to_path_buf(),
            swap,
            config: Arc::new(config),
        })
    }

    /// The configuration of the peers' connections.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Reads `tls_ca_file` again and verifies the next connections against it (pooled ones
    /// stay). A file that does not load changes nothing.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.swap.0.store(verifier(&self.ca_file)?);
        Ok(())
    }
}

/// Both sides as the configuration sets them: the listener's (`tls_cert_file` and
/// `tls_key_file`) and the peers' (`tls_ca_file`).
#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub server: Option<ServerTls>,
    pub client: Option<ClientTls>,
}

impl Tls {
    /// Loads what the three keys name (both of `tls_cert_file` and `tls_key_file`, or
    /// neither: the configuration's validation has said so).
    pub fn load(
        cert_file: Option<&Path>,
        key_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> Result<Tls, TlsError> {
        let server = match (cert_file, key_file) {
            (Some(cert), Some(key)) => Some(ServerTls::load(cert, key)?),
            (Some(_), None) => {
                return Err(TlsError {
                    key: "tls_key_file",
                    reason: "must be set with tls_cert_file".into(),
                });
            }
            (None, Some(_)) => {
                return Err(TlsError {
                    key: "tls_cert_file",
                    reason: "must be set with tls_key_file".into(),
                });
            }
            (None, None) => None,
        };
        let client = ca_file.map(ClientTls::load).transpose()?;
        Ok(Tls { server, client })
    }

    /// Reads every file in force again ([`ServerTls::reload`], [`ClientTls::reload`]); each
    /// side that fails keeps what it had.
    pub fn reload(&self) -> Vec<TlsError> {
        let mut failed = Vec::new();
        if let Some(server) = &self.server
            && let Err(e) = server.reload()
        {
            failed.push(e);
        }
        if let Some(client) = &self.client
            && let Err(e) = client.reload()
        {
            failed.push(e);
        }
        failed
    }
}
