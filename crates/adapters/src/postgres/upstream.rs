//! Connecting to the target PostgreSQL with the connection's own credential:
//! TCP, TLS by libpq's modes, startup, and trust / cleartext / MD5 /
//! SCRAM-SHA-256 authentication. The credential is used here and nowhere
//! else; errors never include it.

use std::sync::Arc;
use std::time::Duration;

use airlock_wire::backend::{self, Authentication};
use airlock_wire::frame::split_frame;
use airlock_wire::{auth, build};
use bytes::{Bytes, BytesMut};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::io::BoxStream;

/// libpq's `sslmode` values that make sense for a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTlsMode {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

/// A PostgreSQL target with its credential. `Debug` hides the password.
#[derive(Clone)]
pub struct PgTarget {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub username: String,
    pub password: Option<Vec<u8>>,
    pub tls: UpstreamTlsMode,
    /// Client TLS settings matching `tls` (None for `Disable`).
    pub tls_config: Option<Arc<ClientConfig>>,
    pub tls_server_name: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Why the upstream connection failed, in words safe for the client.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to the target: {0}")]
    Unreachable(String),
    #[error("the target does not accept TLS, and the connection requires it")]
    TlsRefused,
    #[error("TLS with the target failed: {0}")]
    Tls(String),
    #[error("the target refused the gateway's credential (SQLSTATE {code})")]
    AuthFailed { code: String },
    #[error("the target asked for an authentication method the gateway cannot use: {0}")]
    AuthUnsupported(String),
    #[error("the target rejected the session: {message}")]
    Rejected { code: String, message: String },
    #[error("protocol error talking to the target: {0}")]
    Protocol(String),
    #[error("timed out talking to the target")]
    Timeout,
}

impl UpstreamError {
    /// SQLSTATE to report to the client.
    pub fn sqlstate(&self) -> &str {
        match self {
            UpstreamError::Rejected { code, .. } => code,
            UpstreamError::AuthFailed { .. } => "08004",
            UpstreamError::Unreachable(_) | UpstreamError::Timeout => "08001",
            _ => "08006",
        }
    }
}

/// An authenticated upstream session, ready for queries.
pub struct Upstream {
    pub stream: BoxStream,
    /// Bytes read past the first ReadyForQuery (normally empty).
    pub leftover: BytesMut,
    /// ParameterStatus and NoticeResponse frames to replay to the client.
    pub startup_frames: Vec<Bytes>,
    pub pid: i32,
    pub secret: i32,
    pub tls: bool,
}

/// Startup parameters passed through from the client. Everything else is
/// dropped: `options` could set arbitrary settings (e.g. `role`) that policy
/// would never see, and `replication` would open a replication session.
pub const FORWARDED_PARAMS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "extra_float_digits",
    "intervalstyle",
    "search_path",
    "bytea_output",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "lc_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
];

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects and authenticates. `params` are the client's startup parameters
/// (already filtered by the caller with [`FORWARDED_PARAMS`]).
pub async fn connect(
    target: &PgTarget,
    params: &[(String, String)],
    max_message: usize,
) -> Result<Upstream, UpstreamError> {
    tokio::time::timeout(STARTUP_TIMEOUT, connect_inner(target, params, max_message))
        .await
        .map_err(|_| UpstreamError::Timeout)?
}

async fn connect_inner(
    target: &PgTarget,
    params: &[(String, String)],
    max_message: usize,
) -> Result<Upstream, UpstreamError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| UpstreamError::Unreachable(e.kind().to_string()))?;
    let _ = tcp.set_nodelay(true);
    let (mut stream, tls) = negotiate_tls(tcp, target).await?;

    let mut out = BytesMut::with_capacity(256);
    let mut startup: Vec<(&str, &str)> = vec![
        ("user", target.username.as_str()),
        ("database", target.database.as_str()),
    ];
    for (k, v) in params {
        startup.push((k.as_str(), v.as_str()));
    }
    build::startup_message(&mut out, startup.iter().copied());
    write(&mut stream, &out).await?;

    let mut buf = BytesMut::with_capacity(8192);
    let mut scram: Option<auth::ScramSha256Client> = None;
    let mut startup_frames = Vec::new();
    let mut key = None;
    loop {
        let frame = read_frame(&mut stream, &mut buf, max_message).await?;
        match frame.tag {
            backend::tag::AUTHENTICATION => {
                let req = Authentication::decode(frame.body())
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                out.clear();
                match req {
                    Authentication::Ok => {}
                    Authentication::CleartextPassword => {
                        let pw = password(target)?;
                        build::password_message(&mut out, pw);
                    }
                    Authentication::Md5Password { salt } => {
                        let pw = password(target)?;
                        let hashed = auth::md5_password(&target.username, pw, salt);
                        build::password_message(&mut out, hashed.as_bytes());
                    }
                    Authentication::Sasl { mechanisms } => {
                        if !mechanisms.contains(&"SCRAM-SHA-256") {
                            return Err(UpstreamError::AuthUnsupported(mechanisms.join(", ")));
                        }
                        let mut client = auth::ScramSha256Client::new(password(target)?);
                        let first = client.client_first();
                        build::sasl_initial_response(&mut out, "SCRAM-SHA-256", &first);
                        scram = Some(client);
                    }
                    Authentication::SaslContinue(data) => {
                        let client = scram.as_mut().ok_or_else(|| {
                            UpstreamError::Protocol("unexpected SASL continue".into())
                        })?;
                        let fin = client
                            .handle_server_first(data)
                            .map_err(|e| UpstreamError::Protocol(format!("SCRAM: {e}")))?;
                        build::sasl_response(&mut out, &fin);
                    }
                    Authentication::SaslFinal(data) => {
                        let client = scram.as_mut().ok_or_else(|| {
                            UpstreamError::Protocol("unexpected SASL final".into())
                        })?;
                        client.verify_server_final(data).map_err(|e| {
                            UpstreamError::Protocol(format!("SCRAM server signature: {e}"))
                        })?;
                    }
                    other => {
                        return Err(UpstreamError::AuthUnsupported(format!("{other:?}")));
                    }
                }
                if !out.is_empty() {
                    write(&mut stream, &out).await?;
                }
            }
            backend::tag::ERROR_RESPONSE => {
                let fields = backend::ErrorResponse::decode(frame.body())
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                let code = fields.code().unwrap_or("08006").to_string();
                // 28P01/28000: our credential was refused. Say so without
                // echoing the upstream's text, which names the upstream user.
                if code.starts_with("28") {
                    return Err(UpstreamError::AuthFailed { code });
                }
                return Err(UpstreamError::Rejected {
                    code,
                    message: fields.message().unwrap_or("error").to_string(),
                });
            }
            backend::tag::PARAMETER_STATUS | backend::tag::NOTICE_RESPONSE => {
                startup_frames.push(frame.bytes.clone());
            }
            backend::tag::BACKEND_KEY_DATA => {
                let k = backend::BackendKeyData::decode(frame.body())
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                key = Some((k.pid, k.secret));
            }
            backend::tag::NEGOTIATE_PROTOCOL_VERSION => {}
            backend::tag::READY_FOR_QUERY => {
                let (pid, secret) = key.unwrap_or((0, 0));
                return Ok(Upstream {
                    stream,
                    leftover: buf,
                    startup_frames,
                    pid,
                    secret,
                    tls,
                });
            }
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message '{}' during startup",
                    other as char
                )));
            }
        }
    }
}

fn password(target: &PgTarget) -> Result<&[u8], UpstreamError> {
    target.password.as_deref().ok_or_else(|| {
        UpstreamError::AuthUnsupported(
            "the target wants a password and the connection has none configured".into(),
        )
    })
}

async fn negotiate_tls(
    mut tcp: TcpStream,
    target: &PgTarget,
) -> Result<(BoxStream, bool), UpstreamError> {
    let Some(cfg) = target.tls_config.clone() else {
        return Ok((Box::new(tcp), false));
    };
    if target.tls == UpstreamTlsMode::Disable {
        return Ok((Box::new(tcp), false));
    }
    let mut req = BytesMut::with_capacity(8);
    build::ssl_request(&mut req);
    tcp.write_all(&req)
        .await
        .map_err(|e| UpstreamError::Unreachable(e.kind().to_string()))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|e| UpstreamError::Unreachable(e.kind().to_string()))?;
    match answer[0] {
        b'S' => {
            let name = ServerName::try_from(target.tls_server_name.clone()).map_err(|_| {
                UpstreamError::Tls(format!("invalid server name '{}'", target.tls_server_name))
            })?;
            let connector = tokio_rustls::TlsConnector::from(cfg);
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| UpstreamError::Tls(e.to_string()))?;
            Ok((Box::new(tls), true))
        }
        b'N' if target.tls == UpstreamTlsMode::Prefer => Ok((Box::new(tcp), false)),
        b'N' => Err(UpstreamError::TlsRefused),
        _ => Err(UpstreamError::Protocol("bad answer to SSLRequest".into())),
    }
}

async fn write(stream: &mut BoxStream, bytes: &[u8]) -> Result<(), UpstreamError> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| UpstreamError::Unreachable(e.kind().to_string()))?;
    stream
        .flush()
        .await
        .map_err(|e| UpstreamError::Unreachable(e.kind().to_string()))
}

async fn read_frame(
    stream: &mut BoxStream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<airlock_wire::frame::Frame, UpstreamError> {
    loop {
        if let Some(f) =
            split_frame(buf, max).map_err(|e| UpstreamError::Protocol(e.to_string()))?
        {
            return Ok(f);
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| UpstreamError::Unreachable(e.kind().to_string()))?;
        if n == 0 {
            return Err(UpstreamError::Unreachable(
                "the target closed the connection".into(),
            ));
        }
    }
}
