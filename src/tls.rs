//! TLS for both doors: certificate, key and optional client CA read into [`TlsMaterial`],
//! turned into rustls (ring) configs, and swapped in place on SIGHUP ([`Tls::reload`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// PEM bytes read from `server.tls_cert`, `server.tls_key` and `server.tls_client_ca`, and
/// where they were read from (for reloads).
#[derive(Clone)]
pub struct TlsMaterial {
    /// The files, as resolved: certificate, key, client CA.
    pub paths: (PathBuf, PathBuf, Option<PathBuf>),
    /// The certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The private key (never printed).
    pub key_pem: Vec<u8>,
    /// When set, clients must present a certificate signed by one of these.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("client_auth", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// Largest certificate, key or CA file read.
const MAX_PEM_BYTES: u64 = 1 << 20;

impl TlsMaterial {
    /// Reads the three files; errors name the config key.
    pub fn read(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, String> {
        let read = |k: &str, p: &Path| {
            crate::files::read_regular(p, MAX_PEM_BYTES)
                .map_err(|e| format!("server.{k}: cannot read {}: {e}", p.display()))
        };
        let material = Self {
            cert_pem: read("tls_cert", cert)?,
            key_pem: read("tls_key", key)?,
            client_ca_pem: client_ca.map(|p| read("tls_client_ca", p)).transpose()?,
            paths: (
                cert.to_path_buf(),
                key.to_path_buf(),
                client_ca.map(Path::to_path_buf),
            ),
        };
        material.server_config(&[b"h2"])?;
        Ok(material)
    }

    /// The rustls server config for the HTTP door (ALPN h2 and http/1.1).
    pub fn http_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        self.server_config(&[b"h2", b"http/1.1"])
    }

    fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("server.tls_cert: not a PEM certificate chain: {e}"))?;
        if certs.is_empty() {
            return Err("server.tls_cert: no certificate in the file".into());
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| format!("server.tls_key: not a PEM private key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem) {
                    let c = c.map_err(|e| format!("server.tls_client_ca: not PEM: {e}"))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("server.tls_client_ca: {e}"))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| format!("server.tls_client_ca: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("server.tls_key: does not match server.tls_cert: {e}"))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// The serving TLS configs of both doors, replaced together by [`Self::reload`]; a
/// connection uses the config current when its handshake starts.
#[derive(Debug)]
pub struct Tls {
    material: ArcSwap<TlsMaterial>,
    http: ArcSwap<rustls::ServerConfig>,
    grpc: ArcSwap<rustls::ServerConfig>,
}

impl Tls {
    /// Both doors' configs from validated material.
    pub fn new(material: &TlsMaterial) -> Result<Self, String> {
        Ok(Self {
            http: ArcSwap::new(material.http_config()?),
            grpc: ArcSwap::new(material.server_config(&[b"h2"])?),
            material: ArcSwap::from_pointee(material.clone()),
        })
    }

    /// Re-reads the files; on any error the current certificate keeps serving.
    pub fn reload(&self) -> Result<(), String> {
        let (cert, key, ca) = &self.material.load().paths;
        let next = TlsMaterial::read(cert, key, ca.as_deref())?;
        self.http.store(next.http_config()?);
        self.grpc.store(next.server_config(&[b"h2"])?);
        self.material.store(Arc::new(next));
        Ok(())
    }

    /// An acceptor for one HTTP connection.
    pub fn http_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.http.load_full())
    }

    /// An acceptor for one gRPC connection (ALPN h2 only).
    pub fn grpc_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.grpc.load_full())
    }
}
