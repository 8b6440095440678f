//! TLS for notifications: which certificates are trusted, and the HTTP
//! client webhooks and Slack are posted with.
//!
//! Everything uses rustls with the aws-lc-rs provider, chosen here
//! explicitly rather than taken from the process-wide default, so the
//! notifier behaves the same whether or not the binary installed one. The
//! trusted roots are the system's (`rustls-native-certs`), plus, per
//! target, the certificates of its `ca_file` (a private CA).

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The system's root certificates, loaded once. A certificate the store
/// cannot parse is skipped, as browsers do; the store may be empty.
pub(crate) fn native_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "skipping part of the system certificate store");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "system root certificates loaded");
            Arc::new(roots)
        })
        .clone()
}

/// The certificates in a PEM file; an error (phrased for the operator) if
/// it cannot be read or holds none.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown} holds no PEM certificate"));
    }
    let mut check = RootCertStore::empty();
    for cert in &certs {
        check
            .add(cert.clone())
            .map_err(|e| format!("{shown}: a certificate cannot be used as a root: {e}"))?;
    }
    Ok(certs)
}

/// A client TLS configuration trusting the system's roots plus `extra`.
pub(crate) fn client_config(
    extra: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, String> {
    let mut roots = (*native_roots()).clone();
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| format!("an extra CA certificate cannot be used: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The HTTP client for webhook and Slack deliveries: HTTP/1.1 over plain
/// TCP or TLS, trusting the system's roots plus the certificates in
/// `ca_file`, if any.
pub fn http_client(ca_file: Option<&Path>, timeout: Duration) -> Result<reqwest::Client, String> {
    let extra = match ca_file {
        Some(path) => read_ca_file(path)?,
        None => Vec::new(),
    };
    let mut tls = client_config(&extra)?;
    // Only HTTP/1.1 is built into this reqwest.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
        .use_preconfigured_tls(tls)
        // A redirect would carry the signed approval payload to a host
        // nobody configured; a 3xx is a failed delivery instead.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Whether `e` is a certificate the client does not trust (unknown issuer,
/// wrong name, expired, ...): trying again will not change the answer.
pub(crate) fn is_untrusted_certificate(e: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            return matches!(tls, rustls::Error::InvalidCertificate(_));
        }
        // rustls errors reach reqwest inside (nested) io::Errors, whose
        // `source()` skips the error they wrap: step into it instead.
        cause = match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => c.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver that redirects elsewhere does not get the payload sent on:
    /// the 3xx comes back as the answer (a failed delivery).
    #[tokio::test]
    async fn redirects_are_not_followed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Where a followed redirect would go: a port nobody listens on.
        let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = elsewhere.local_addr().unwrap();
        drop(elsewhere);
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let reply = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{target}/hook\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            s.write_all(reply.as_bytes()).await.unwrap();
        });
        let client = http_client(None, Duration::from_secs(10)).unwrap();
        let resp = client
            .post(format!("http://{addr}/hook"))
            .body("{}")
            .send()
            .await
            .expect("the redirect itself is the response");
        assert_eq!(resp.status().as_u16(), 307);
        assert!(super::super::webhook::status_result(resp.status()).is_err());
    }

    #[test]
    fn ca_files_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = read_ca_file(&missing).unwrap_err();
        assert!(err.contains("cannot read certificates from"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = read_ca_file(&empty).unwrap_err();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }

    #[test]
    fn a_client_builds_without_a_process_wide_provider() {
        // No `install_default` here: the notifier brings its own provider.
        assert!(http_client(None, Duration::from_secs(1)).is_ok());
    }
}
