//! TLS for adapters: the server side clients connect to (configured or
//! self-signed certificate) and the client side used towards targets, with
//! libpq's modes (`prefer`/`require` encrypt without verifying, `verify-full`
//! checks the chain and the host name).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Pem { path: PathBuf, msg: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| TlsSetupError::Pem {
        path: path.into(),
        msg: e.to_string(),
    })?;
    let certs: Result<Vec<_>, _> = iter.collect();
    let certs = certs.map_err(|e| TlsSetupError::Pem {
        path: path.into(),
        msg: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Pem {
            path: path.into(),
            msg: "no certificate found".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsSetupError::Pem {
        path: path.into(),
        msg: e.to_string(),
    })
}

/// Server-side TLS from a certificate chain and key in PEM files.
pub fn server_config_from_files(
    cert: &Path,
    key: &Path,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let certs = read_certs(cert)?;
    let key = read_key(key)?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(cfg))
}

/// Server-side TLS with a self-signed certificate kept in `dir` (made once,
/// reused on later starts so clients that pinned it keep working).
pub fn self_signed_server_config(dir: &Path) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let cert_path = dir.join("airlock-cert.pem");
    let key_path = dir.join("airlock-key.pem");
    if !cert_path.exists() || !key_path.exists() {
        std::fs::create_dir_all(dir).map_err(|e| TlsSetupError::Read {
            path: dir.into(),
            source: e,
        })?;
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TlsSetupError::Generate(e.to_string()))?;
        write_private(&key_path, ck.signing_key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, ck.cert.pem()).map_err(|e| TlsSetupError::Read {
            path: cert_path.clone(),
            source: e,
        })?;
    }
    server_config_from_files(&cert_path, &key_path)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsSetupError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(|e| TlsSetupError::Read {
        path: path.into(),
        source: e,
    })?;
    f.write_all(bytes).map_err(|e| TlsSetupError::Read {
        path: path.into(),
        source: e,
    })
}

/// Accepts any certificate but still checks handshake signatures: libpq's
/// `sslmode=require` semantics (encryption without authentication).
#[derive(Debug)]
struct EncryptOnly(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Client-side TLS that encrypts without verifying the peer (prefer/require).
pub fn client_config_encrypt_only() -> Result<Arc<ClientConfig>, TlsSetupError> {
    let p = provider();
    let algs = p.signature_verification_algorithms;
    let cfg = ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptOnly(algs)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Client-side TLS that verifies the chain against `ca_file` (or the system
/// roots) and the server name (verify-full).
pub fn client_config_verify(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| TlsSetupError::Pem {
                    path: path.into(),
                    msg: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}
