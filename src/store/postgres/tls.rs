//! TLS to PostgreSQL (contract §8): `sslmode` and `sslrootcert` in
//! `--database-url`, with libpq's meanings, spoken with rustls.
//!
//! | `sslmode` | TLS | the server's certificate |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `prefer` (the default) | if the server offers it | not checked, unless `sslrootcert` is given (then as `verify-ca`) |
//! | `require` | always | as `prefer` |
//! | `verify-ca` | always | signed by `sslrootcert` (or a system root) |
//! | `verify-full` | always | that, and issued for the host connected to |
//!
//! tokio-postgres knows only `disable`, `prefer` and `require` and no
//! `sslrootcert`, so both parameters are taken out of the URL here and the
//! rest is handed to it.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// `sslmode` as libpq reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "disable" => Mode::Disable,
            "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => anyhow::bail!(
                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
            ),
        })
    }
}

/// What `--database-url` asks of the connection.
#[derive(Debug)]
pub struct PgConnect {
    pub config: tokio_postgres::Config,
    pub mode: Mode,
    pub root_cert: Option<PathBuf>,
}

/// Reads `url`, taking `sslmode` and `sslrootcert` out for this module.
pub fn parse(url: &str) -> anyhow::Result<PgConnect> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut mode = Mode::Prefer;
    let mut root_cert = None;
    let mut rest = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        match param.split_once('=') {
            Some(("sslmode", value)) => mode = value.parse()?,
            Some(("sslrootcert", value)) => {
                root_cert = Some(PathBuf::from(crate::net::percent_decode(value)))
            }
            _ => rest.push(param),
        }
    }
    let url = match rest.is_empty() {
        true => base.to_owned(),
        false => format!("{base}?{}", rest.join("&")),
    };
    let mut config = tokio_postgres::Config::from_str(&url)
        .context("--database-url is not a valid postgres:// URL")?;
    config.ssl_mode(match mode {
        Mode::Disable => SslMode::Disable,
        Mode::Prefer => SslMode::Prefer,
        _ => SslMode::Require,
    });
    Ok(PgConnect {
        config,
        mode,
        root_cert,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The roots certificates are checked against: `sslrootcert`, or the
/// system's.
fn roots(root_cert: Option<&PathBuf>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading sslrootcert {}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("sslrootcert {} is not PEM", path.display()))?;
            anyhow::ensure!(
                !certs.is_empty(),
                "sslrootcert {} holds no certificate",
                path.display()
            );
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("a certificate of {}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(roots)
}

/// The TLS connector for `connect`'s mode.
pub fn connector(connect: &PgConnect) -> anyhow::Result<MakeRustlsConnect> {
    let provider = provider();
    let checks_chain = match connect.mode {
        Mode::Disable | Mode::Prefer | Mode::Require => connect.root_cert.is_some(),
        Mode::VerifyCa | Mode::VerifyFull => true,
    };
    let verifier: Arc<dyn ServerCertVerifier> = if checks_chain {
        let webpki = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(connect.root_cert.as_ref())?),
            provider.clone(),
        )
        .build()
        .context("building the certificate verifier")?;
        if connect.mode == Mode::VerifyFull {
            webpki
        } else {
            Arc::new(AnyName(webpki))
        }
    } else {
        Arc::new(Unchecked(provider.clone()))
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// `verify-ca`: the chain must lead to a root, whatever name it was issued for.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without `sslrootcert`: encrypted, the server's
/// certificate not checked (libpq's meaning; use `verify-full` against a
/// man in the middle). The handshake's signatures are still verified.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url() {
        let c = parse("postgres://u:p@db:5433/x?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=hub")
            .unwrap();
        assert_eq!(c.mode, Mode::VerifyFull);
        assert_eq!(c.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.config.get_application_name(), Some("hub"));
        assert_eq!(c.config.get_ssl_mode(), SslMode::Require);
        let plain = parse("postgres://u@db/x").unwrap();
        assert_eq!(
            (plain.mode, plain.config.get_ssl_mode()),
            (Mode::Prefer, SslMode::Prefer)
        );
        let off = parse("postgres://u@db/x?sslmode=disable").unwrap();
        assert_eq!(off.config.get_ssl_mode(), SslMode::Disable);
        assert!(parse("postgres://u@db/x?sslmode=always").is_err());
    }

    #[test]
    fn a_missing_root_file_is_an_error_that_names_it() {
        let c =
            parse("postgres://u@db/x?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem").unwrap();
        let err = connector(&c).err().unwrap();
        assert!(
            format!("{err:#}").contains("/nonexistent/ca.pem"),
            "{err:#}"
        );
    }
}
