//! TLS for both doors: the certificate, key and optional client CA are read once at start
//! into [`TlsMaterial`], then turned into rustls (ring) configs for HTTP and tonic.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// PEM bytes read from `server.tls_cert`, `server.tls_key` and `server.tls_client_ca`.
#[derive(Clone)]
pub struct TlsMaterial {
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

impl TlsMaterial {
    /// The rustls server config for the HTTP door (ALPN h2 and http/1.1). Also run at
    /// config validation, so a bad certificate or key is a start-up error naming the key.
    pub fn http_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
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
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The same material as tonic's server TLS config.
    pub fn grpc_config(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        let config = tonic::transport::ServerTlsConfig::new().identity(identity);
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(tonic::transport::Certificate::from_pem(ca)),
            None => config,
        }
    }
}
