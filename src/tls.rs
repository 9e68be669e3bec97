//! Serving HTTPS and `wss://` (`--tls-cert`, `--tls-key`) with rustls, and
//! reading the pair again on SIGHUP (a renewed certificate without a
//! restart: handshakes after the reload present the new one; connections
//! already open keep theirs).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate the hub presents, read from its files, and read again
/// by [`Certificate::reload`].
#[derive(Debug)]
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificate {
    /// Reads the pair; fails with which file is wrong and how.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<Certificate>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = read_pair(cert, key, &provider)?;
        Ok(Arc::new(Certificate {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: RwLock::new(Arc::new(current)),
        }))
    }

    /// Reads the files again. A pair that does not load leaves the current
    /// certificate in place, and the error says why.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = read_pair(&self.cert, &self.key, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// The end-entity certificate presented now (DER).
    pub fn presented(&self) -> Vec<u8> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.cert[0].to_vec()
    }

    /// The server's TLS configuration, presenting whatever this holds at
    /// each handshake. HTTP/1.1 only, as the hub serves no HTTP/2.
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The certificate chain (leaf first) and its private key (PKCS#8, PKCS#1
/// or SEC1), checked to be a pair.
fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading --tls-cert {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "--tls-cert {} is not a PEM certificate chain",
                cert.display()
            )
        })?;
    anyhow::ensure!(
        !chain.is_empty(),
        "--tls-cert {} holds no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key {} is not a PEM private key", key.display()))?;
    CertifiedKey::from_der(chain, key, provider)
        .context("--tls-cert and --tls-key do not make a pair")
}
