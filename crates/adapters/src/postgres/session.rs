//! One client session: startup (TLS, cancel), authentication with an Airlock
//! token, the upstream connection, then two relay halves. The client half
//! turns Query/Execute/FunctionCall into pipeline Commands and forwards or
//! refuses them; the server half relays responses, pairs them with commands
//! to record outcomes, and applies masking.
//!
//! A refused command is not answered by the gateway out of band. It is
//! replaced by a stand-in statement that PostgreSQL rejects (`airlock_denied`,
//! a syntax error), and that error is swapped for Airlock's own on the way
//! back. PostgreSQL itself thus orders the error among other responses, skips
//! to Sync in the extended protocol, and fails an open transaction block,
//! exactly as if it had raised the error for the client's statement.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use airlock_pipeline::mask::{ColumnMeta, ConnectionMasker, MaskStats, RowPlan};
use airlock_pipeline::model::{CommandInput, CommandVia, Protocol};
use airlock_pipeline::pipeline::{
    Admission, CommandOutcome, ConnectRefusal, ConnectRequest, Session, SessionTotals,
};
use airlock_pipeline::record::MaskCount;
use airlock_wire::backend::{self, ErrorResponse, raw_error_field};
use airlock_wire::build::{self, ErrorFields};
use airlock_wire::frame::split_frame;
use airlock_wire::frontend;
use airlock_wire::startup::{
    PROTOCOL_OPTION_PREFIX, PROTOCOL_VERSION_3_0, StartupMessage, split_startup,
};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::PgAdapter;
use super::cancel::UpstreamKey;
use super::masking;
use super::tracker::{Pending, PendingKind, Tracker};
use super::upstream::{self, FORWARDED_PARAMS};
use crate::io::BoxStream;

/// The stand-in statement for a refused command; PostgreSQL answers it with
/// `syntax error at or near "airlock_denied"`.
const DENY_SQL: &str = "airlock_denied";
/// Passwords (tokens) are short; anything longer is refused before reading.
const MAX_PASSWORD_MESSAGE: usize = 16 * 1024;
/// Prepared statements and portals one session may keep track of.
const MAX_NAMED: usize = 100_000;
/// Write to the peer once this much output is pending.
const FLUSH_AT: usize = 256 * 1024;

/// Parameter type OIDs per prepared statement, learnt from the server's
/// ParameterDescription (or the client's Parse), so binary bind parameters
/// are recorded and judged as readable values.
type ParamTypes = Arc<Mutex<HashMap<String, Arc<[u32]>>>>;

/// Messages from the client half to the server half, in order.
enum Ctl {
    Pending(Pending),
    /// The client asked to describe this statement in this batch; its
    /// ParameterDescription is coming.
    Describe {
        statement: String,
        batch: u64,
    },
    /// A message to put in the client's stream between responses.
    Inject(Bytes),
}

/// Handles one accepted TCP connection until it ends.
/// When `shutdown` turns true, an established session tells its client
/// (FATAL 57P01, between messages) and records its end.
pub async fn run(
    adapter: Arc<PgAdapter>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    match startup(&adapter, tcp, peer, shutdown).await {
        Ok(()) => {}
        Err(e) => {
            tracing::debug!(client = %peer, error = %e, "postgres session ended during startup")
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum StartupError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

fn fatal(code: &str, message: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(64 + message.len());
    build::error_response(&mut out, &ErrorFields::new("FATAL", code, message));
    out
}

/// The upstream's answer to the stand-in statement a refused command was
/// replaced with: its syntax error (42601) names the token. The message is
/// translated under other `lc_messages` (German quotes it as
/// `»airlock_denied«`), so only the token itself is looked for, in the raw
/// field: the message is in the client's encoding, which need not be UTF-8.
fn is_stand_in_error(body: &[u8]) -> bool {
    let token = DENY_SQL.as_bytes();
    raw_error_field(body, backend::field::CODE) == Some(b"42601")
        && raw_error_field(body, backend::field::MESSAGE)
            .is_some_and(|m| m.windows(token.len()).any(|w| w == token))
}

async fn send_fatal<S: AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    code: &str,
    message: &str,
) -> StartupError {
    let _ = s.write_all(&fatal(code, message)).await;
    let _ = s.flush().await;
    StartupError::Refused(message.to_string())
}

async fn read_startup<S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    buf: &mut BytesMut,
) -> Result<Option<StartupMessage>, airlock_wire::WireError> {
    loop {
        if let Some(m) = split_startup(buf, airlock_wire::startup::MAX_STARTUP_LEN)? {
            return Ok(Some(m));
        }
        match s.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// How long forwarding a client's CancelRequest may take (the connect to
/// the upstream, mostly).
const CANCEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Forwards a CancelRequest in its own task, so neither the client's
/// connection (closed at once, as PostgreSQL does) nor its login timeout
/// holds it.
fn forward_cancel(adapter: &Arc<PgAdapter>, pid: i32, secret: i32) {
    let cancels = adapter.cancels.clone();
    tokio::spawn(async move {
        if tokio::time::timeout(CANCEL_TIMEOUT, cancels.cancel(pid, secret))
            .await
            .is_err()
        {
            tracing::warn!("forwarding a cancel request to the upstream timed out");
        }
    });
}

/// The startup phase up to the password: TLS, startup parameters, protocol
/// version, and the token. `None` when the client went away or only
/// cancelled a query.
async fn login(
    adapter: &Arc<PgAdapter>,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Result<Option<Login>, StartupError> {
    let mut buf = BytesMut::with_capacity(1024);
    // Phase 1, on plain TCP: SSLRequest, GSSENCRequest, CancelRequest or a
    // plain StartupMessage.
    let (mut stream, tls, minor, params): (BoxStream, bool, i32, Vec<(String, String)>) = loop {
        let msg = match read_startup(&mut tcp, &mut buf).await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(
                    send_fatal(&mut tcp, "08P01", &format!("invalid startup packet: {e}")).await,
                );
            }
        };
        let minor = msg.minor_version().unwrap_or(0);
        match msg {
            StartupMessage::SslRequest => {
                // Bytes after SSLRequest but before the handshake would be
                // trusted as if encrypted (CVE-2021-23214): refuse them.
                if !buf.is_empty() {
                    return Err(send_fatal(
                        &mut tcp,
                        "08P01",
                        "unencrypted data after SSL request",
                    )
                    .await);
                }
                tcp.write_all(b"S").await?;
                let acceptor = tokio_rustls::TlsAcceptor::from(adapter.tls.clone());
                let mut tls_stream = acceptor.accept(tcp).await?;
                let msg = match read_startup(&mut tls_stream, &mut buf).await {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(None),
                    Err(e) => {
                        return Err(send_fatal(
                            &mut tls_stream,
                            "08P01",
                            &format!("invalid startup packet: {e}"),
                        )
                        .await);
                    }
                };
                let minor = msg.minor_version().unwrap_or(0);
                match msg {
                    StartupMessage::Startup { params, .. } => {
                        break (Box::new(tls_stream), true, minor, params);
                    }
                    // libpq 17+ sends its CancelRequest over TLS too.
                    StartupMessage::CancelRequest { pid, secret } => {
                        forward_cancel(adapter, pid, secret);
                        return Ok(None);
                    }
                    _ => {
                        return Err(send_fatal(
                            &mut tls_stream,
                            "08P01",
                            "unexpected request after TLS handshake",
                        )
                        .await);
                    }
                }
            }
            StartupMessage::GssEncRequest => {
                tcp.write_all(b"N").await?;
            }
            StartupMessage::CancelRequest { pid, secret } => {
                forward_cancel(adapter, pid, secret);
                return Ok(None);
            }
            StartupMessage::Startup { params, .. } => {
                break (Box::new(tcp), false, minor, params);
            }
        }
    };

    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let Some(user) = param("user") else {
        return Err(send_fatal(
            &mut stream,
            "28000",
            "no user name specified in the startup packet",
        )
        .await);
    };
    let connection = param("database").unwrap_or_else(|| user.clone());
    let application_name = param("application_name");
    if param("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
        return Err(send_fatal(
            &mut stream,
            "42501",
            "airlock: replication connections are not supported",
        )
        .await);
    }

    let settings = &adapter.settings;
    if !tls
        && (settings.require_tls
            || (!peer.ip().is_loopback() && !settings.allow_cleartext_without_tls))
    {
        return Err(send_fatal(
            &mut stream,
            "28000",
            "airlock requires TLS for this connection: connect with sslmode=require",
        )
        .await);
    }

    let mut out = BytesMut::with_capacity(256);
    // A client asking for protocol 3.1+ or for protocol options learns that
    // this session speaks plain 3.0, as PostgreSQL tells it.
    let options: Vec<&str> = params
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with(PROTOCOL_OPTION_PREFIX))
        .collect();
    if minor > 0 || !options.is_empty() {
        build::negotiate_protocol_version(&mut out, PROTOCOL_VERSION_3_0, &options);
    }
    // Ask for the token as a cleartext password (safe: TLS or loopback).
    build::auth_cleartext_password(&mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;
    let frame = loop {
        match split_frame(&mut buf, MAX_PASSWORD_MESSAGE) {
            Ok(Some(f)) => break f,
            Ok(None) => {}
            Err(_) => return Err(send_fatal(&mut stream, "08P01", "invalid password packet").await),
        }
        if stream.read_buf(&mut buf).await? == 0 {
            // psql closes and re-prompts when it has no password yet.
            return Ok(None);
        }
    };
    if frame.tag != frontend::tag::PASSWORD {
        return Err(send_fatal(&mut stream, "08P01", "expected a password message").await);
    }
    let token = match frontend::PasswordMessage::decode(frame.body()) {
        Ok(p) => p.0.to_vec(),
        Err(_) => return Err(send_fatal(&mut stream, "08P01", "invalid password packet").await),
    };
    Ok(Some(Login {
        stream,
        tls,
        buf,
        user,
        connection,
        application_name,
        params,
        token,
    }))
}

/// A client that has logged in: its stream, its startup parameters and the
/// token it gave, not yet checked.
struct Login {
    stream: BoxStream,
    tls: bool,
    /// Bytes the client sent after its password message.
    buf: BytesMut,
    user: String,
    connection: String,
    application_name: Option<String>,
    params: Vec<(String, String)>,
    token: Vec<u8>,
}

async fn startup(
    adapter: &Arc<PgAdapter>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) -> Result<(), StartupError> {
    // A client gets `login_timeout` to finish its startup, TLS handshake and
    // password, so idle or trickling connections cannot pile up before
    // anyone is authenticated. Like PostgreSQL's authentication_timeout,
    // the connection is closed without a message.
    let timeout = adapter.settings.login_timeout;
    let deadline = tokio::time::sleep(timeout);
    let logging_in = login(adapter, tcp, peer);
    tokio::pin!(deadline, logging_in);
    let login = tokio::select! {
        login = &mut logging_in => match login? {
            Some(login) => login,
            None => return Ok(()),
        },
        // Counted before the connection closes (`logging_in` owns it and
        // is dropped on return), so a client that sees the close can rely
        // on the metric.
        () = &mut deadline => {
            tracing::info!(client = %peer, timeout = ?timeout, "client did not log in within login_timeout; connection closed");
            adapter.meters.login_timeouts.increment(1);
            return Ok(());
        }
    };
    let Login {
        mut stream,
        tls,
        buf,
        user,
        connection,
        application_name,
        params,
        token,
    } = login;
    let settings = &adapter.settings;
    let mut out = BytesMut::with_capacity(256);

    let req = ConnectRequest {
        user: &user,
        token: &token,
        connection: &connection,
        protocol: Protocol::Postgres,
        client_addr: peer,
        application_name: application_name.clone(),
        tls,
    };
    let session = match adapter.pipeline.connect(req).await {
        Ok(s) => Arc::new(s),
        Err(refusal) => {
            let (code, msg) = match refusal {
                ConnectRefusal::BadCredentials => (
                    "28P01",
                    format!("password authentication failed for user \"{user}\""),
                ),
                ConnectRefusal::UnknownConnection => (
                    "3D000",
                    format!(
                        "airlock: connection \"{connection}\" does not exist (dbname must name an Airlock connection)"
                    ),
                ),
                ConnectRefusal::Denied(d) => ("42501", d.client_message(&connection)),
                ConnectRefusal::AuditUnavailable => (
                    "58000",
                    "airlock: the audit store is unavailable; no session can be opened".to_string(),
                ),
            };
            tracing::info!(client = %peer, user = %user, connection = %connection, code, "connection refused");
            return Err(send_fatal(&mut stream, code, &msg).await);
        }
    };
    drop(token);

    let Some(target) = adapter.targets.get(&connection).cloned() else {
        session
            .end(SessionTotals::default(), "no postgres target")
            .await;
        return Err(send_fatal(
            &mut stream,
            "3D000",
            "airlock: connection has no postgres target",
        )
        .await);
    };
    let forwarded: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| FORWARDED_PARAMS.contains(&k.to_ascii_lowercase().as_str()))
        .cloned()
        .collect();
    let up = match upstream::connect(&target, &forwarded, settings.max_message_bytes).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(session = %session.info().id, connection = %connection, error = %e, "upstream connection failed");
            session
                .end(SessionTotals::default(), &format!("upstream: {e}"))
                .await;
            return Err(send_fatal(
                &mut stream,
                e.sqlstate(),
                &format!("airlock: connection \"{connection}\": {e}"),
            )
            .await);
        }
    };

    let on_cancel = Arc::new(tokio::sync::Notify::new());
    let (client_secret, _cancel_guard) = adapter.cancels.register(
        UpstreamKey {
            host: target.host.clone(),
            port: target.port,
            pid: up.pid,
            secret: up.secret,
        },
        on_cancel.clone(),
    );
    out.clear();
    build::auth_ok(&mut out);
    for f in &up.startup_frames {
        out.extend_from_slice(f);
    }
    build::backend_key_data(&mut out, up.pid, client_secret);
    build::ready_for_query(&mut out, b'I');
    stream.write_all(&out).await?;
    stream.flush().await?;
    tracing::info!(
        session = %session.info().id, identity = %session.identity().name, connection = %connection,
        client = %peer, tls, upstream_tls = up.tls, "postgres session started"
    );

    let (cr, cw) = tokio::io::split(stream);
    let (ur, uw) = tokio::io::split(up.stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let param_types = ParamTypes::default();
    let from_client = Arc::new(AtomicU64::new(0));
    let to_client = Arc::new(AtomicU64::new(0));
    let client = ClientHalf {
        on_cancel,
        param_types: param_types.clone(),
        session: session.clone(),
        adapter: adapter.clone(),
        statements: HashMap::new(),
        portals: HashMap::new(),
        batch: 0,
        tx,
        bytes: from_client.clone(),
        shutdown: shutdown.clone(),
        described_portal: None,
        describes_since_execute: 0,
    };
    let server = ServerHalf {
        session: session.clone(),
        adapter: adapter.clone(),
        tracker: Tracker::default(),
        param_types,
        describes: VecDeque::new(),
        mask: session.masker().cloned().map(MaskState::new),
        target: target.clone(),
        repl: BytesMut::new(),
        out: BytesMut::new(),
        need: 0,
        bytes: to_client.clone(),
        at_ready: true,
    };
    let client_fut = client.run(cr, uw, buf);
    let server_fut = server.run(ur, cw, rx, up.leftover, shutdown, (up.pid, client_secret));
    tokio::pin!(client_fut, server_fut);
    let reason = tokio::select! {
        reason = &mut client_fut => {
            // The client is done; let the upstream finish its answer.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut server_fut).await;
            reason
        }
        reason = &mut server_fut => reason,
    };
    let from_client = from_client.load(Ordering::Relaxed);
    let to_client = to_client.load(Ordering::Relaxed);
    session
        .end(
            SessionTotals {
                bytes_from_client: from_client,
                bytes_to_client: to_client,
                commands: 0,
            },
            &reason,
        )
        .await;
    tracing::info!(session = %session.info().id, reason = %reason, "postgres session ended");
    Ok(())
}

/// What the client bound: text of the statement and its parameters.
struct Portal {
    text: Arc<str>,
    params: Vec<Option<String>>,
    statement: String,
    result_formats: Vec<i16>,
    /// Set once an Execute of this portal was admitted: later Executes of
    /// the same portal fetch more rows of the same command.
    admitted: Option<u64>,
}

struct ClientHalf {
    /// Notified when the client sends a CancelRequest.
    on_cancel: Arc<tokio::sync::Notify>,
    param_types: ParamTypes,
    session: Arc<Session>,
    adapter: Arc<PgAdapter>,
    statements: HashMap<String, Arc<str>>,
    portals: HashMap<String, Portal>,
    /// Batches (Query / Sync / FunctionCall) forwarded so far.
    batch: u64,
    tx: mpsc::UnboundedSender<Ctl>,
    /// Bytes read from the client; shared, so the session's end has them
    /// whichever half finishes first.
    bytes: Arc<AtomicU64>,
    shutdown: watch::Receiver<bool>,
    /// Masked sessions: the portal the client's previous message described
    /// (its RowDescription is then the one the next Execute's rows follow).
    described_portal: Option<String>,
    /// Masked sessions: the client's Describes since the last Execute of
    /// this batch, answered before a Describe the gateway adds.
    describes_since_execute: u32,
}

/// Why the client half ends the session early.
enum ClientFault {
    /// A protocol violation (or disappearance): the client is sent a FATAL
    /// with this SQLSTATE and message.
    Fatal(&'static str, String),
    /// The gateway is stopping; the server half tells the client once
    /// nothing runs upstream.
    Stopping,
}

/// The client half's sockets and read buffer, lent to a command that must
/// wait for approval.
struct ClientIo<'a> {
    cr: &'a mut ReadHalf<BoxStream>,
    uw: &'a mut WriteHalf<BoxStream>,
    buf: &'a mut BytesMut,
}

impl ClientHalf {
    async fn run(
        mut self,
        mut cr: ReadHalf<BoxStream>,
        mut uw: WriteHalf<BoxStream>,
        mut buf: BytesMut,
    ) -> String {
        let max = self.adapter.settings.max_message_bytes;
        let mut out = BytesMut::with_capacity(16 * 1024);
        let stop = stopping(self.shutdown.clone());
        tokio::pin!(stop);
        let reason = 'outer: loop {
            loop {
                let frame = match split_frame(&mut buf, max) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = self.tx.send(Ctl::Inject(
                            fatal("08P01", &format!("airlock: {e}")).freeze(),
                        ));
                        break 'outer format!("client protocol error: {e}");
                    }
                };
                let mut io = ClientIo {
                    cr: &mut cr,
                    uw: &mut uw,
                    buf: &mut buf,
                };
                match self.handle(frame, &mut out, &mut io).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = uw.write_all(&out).await;
                        let _ = uw.flush().await;
                        break 'outer "client terminated".to_string();
                    }
                    Err(ClientFault::Stopping) => break 'outer STOPPED.to_string(),
                    Err(ClientFault::Fatal(code, msg)) => {
                        let _ = self.tx.send(Ctl::Inject(fatal(code, &msg).freeze()));
                        break 'outer format!("client protocol error: {msg}");
                    }
                }
                if out.len() >= FLUSH_AT {
                    if let Err(e) = uw.write_all(&out).await {
                        break 'outer format!("upstream write failed: {e}");
                    }
                    out.clear();
                }
            }
            if !out.is_empty() {
                if let Err(e) = uw.write_all(&out).await {
                    break format!("upstream write failed: {e}");
                }
                out.clear();
            }
            if let Err(e) = uw.flush().await {
                break format!("upstream write failed: {e}");
            }
            let read = tokio::select! {
                biased;
                // Nothing more goes upstream; what runs there finishes (or
                // is cancelled) and the server half ends the session.
                () = &mut stop => break STOPPED.to_string(),
                r = cr.read_buf(&mut buf) => r,
            };
            match read {
                Ok(0) => break "client disconnected".to_string(),
                Ok(n) => {
                    self.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    self.adapter.meters.bytes_from_client.increment(n as u64);
                }
                Err(e) => break format!("client read failed: {e}"),
            }
        };
        // Make sure the upstream session ends too.
        let mut term = BytesMut::with_capacity(64);
        if reason == STOPPED {
            // A COPY FROM STDIN in progress ends as failed (57014, with
            // this text) rather than with PostgreSQL's protocol error for a
            // Terminate in the middle of it; outside COPY, PostgreSQL
            // ignores a CopyFail.
            build::copy_fail(&mut term, "airlock: the gateway is shutting down");
        }
        build::terminate(&mut term);
        let _ = uw.write_all(&term).await;
        let _ = uw.shutdown().await;
        reason
    }

    fn queue(&self, p: Pending) {
        let _ = self.tx.send(Ctl::Pending(p));
    }

    /// A Query, Sync or FunctionCall was forwarded: its ReadyForQuery closes
    /// the batch, and the Describes counted in it are all answered.
    fn end_batch(&mut self) {
        self.batch += 1;
        self.describes_since_execute = 0;
    }

    /// Handles one client message. Ok(false) = the client terminated.
    async fn handle(
        &mut self,
        frame: airlock_wire::frame::Frame,
        out: &mut BytesMut,
        io: &mut ClientIo<'_>,
    ) -> Result<bool, ClientFault> {
        use frontend::tag;
        let bad = |e: airlock_wire::WireError| {
            ClientFault::Fatal("08P01", format!("airlock: invalid message: {e}"))
        };
        let described_portal = self.described_portal.take();
        match frame.tag {
            tag::QUERY => {
                let q = frontend::Query::decode(frame.body()).map_err(bad)?;
                let input = CommandInput {
                    text: Arc::from(q.sql),
                    params: Vec::new(),
                    via: CommandVia::SimpleQuery,
                };
                let csv = self.is_csv_copy(&input.text);
                let admission = self.admit(input, &frame.bytes, out, io).await?;
                self.forward_or_refuse(
                    admission,
                    PendingKind::Simple,
                    &frame.bytes,
                    out,
                    |p, _, _| p.copy_csv = csv,
                );
                self.end_batch();
            }
            tag::PARSE => {
                let p = frontend::Parse::decode(frame.body()).map_err(bad)?;
                if !p.name.is_empty() && self.statements.len() >= MAX_NAMED {
                    return Err(ClientFault::Fatal(
                        "53200",
                        "airlock: too many prepared statements".into(),
                    ));
                }
                // Classify now so Execute finds it cached.
                self.session.pipeline().classify_sql(p.query);
                self.statements
                    .insert(p.name.to_string(), Arc::from(p.query));
                if let Ok(mut types) = self.param_types.lock() {
                    if p.param_types.iter().any(|&t| t != 0) {
                        types.insert(p.name.to_string(), Arc::from(p.param_types.as_slice()));
                    } else {
                        types.remove(p.name);
                    }
                }
                out.extend_from_slice(&frame.bytes);
            }
            tag::BIND => {
                let b = frontend::Bind::decode(frame.body()).map_err(bad)?;
                if !b.portal.is_empty() && self.portals.len() >= MAX_NAMED {
                    return Err(ClientFault::Fatal(
                        "53200",
                        "airlock: too many portals".into(),
                    ));
                }
                let text = self
                    .statements
                    .get(b.statement)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(""));
                let types = self
                    .param_types
                    .lock()
                    .ok()
                    .and_then(|t| t.get(b.statement).cloned());
                let params = (0..b.params.len())
                    .map(|i| {
                        let oid = types.as_ref().and_then(|t| t.get(i).copied()).unwrap_or(0);
                        b.params[i].map(|v| {
                            frontend::render_typed_param(Some(v), b.param_format(i), oid)
                                .into_owned()
                        })
                    })
                    .collect();
                self.portals.insert(
                    b.portal.to_string(),
                    Portal {
                        text,
                        params,
                        statement: b.statement.to_string(),
                        result_formats: b.result_formats.clone(),
                        admitted: None,
                    },
                );
                out.extend_from_slice(&frame.bytes);
            }
            tag::EXECUTE => {
                let e = frontend::Execute::decode(frame.body()).map_err(bad)?;
                let portal_name = e.portal.to_string();
                let client_describes = std::mem::take(&mut self.describes_since_execute);
                let described = described_portal.as_deref() == Some(e.portal);
                let resumed = self.portals.get(&portal_name).and_then(|p| p.admitted);
                if let Some(seq) = resumed {
                    self.forward_or_refuse(
                        Admission::Forward { seq },
                        PendingKind::Execute,
                        &frame.bytes,
                        out,
                        |p, me, out| {
                            me.describe_result(p, &portal_name, described, client_describes, out)
                        },
                    );
                    return Ok(true);
                }
                let input = match self.portals.get(&portal_name) {
                    Some(p) if !p.text.is_empty() => CommandInput {
                        text: p.text.clone(),
                        params: p.params.clone(),
                        via: CommandVia::Extended,
                    },
                    // A portal this session did not bind (or of an unknown
                    // statement): judge it as what it is, unknown.
                    _ => CommandInput {
                        text: Arc::from(format!(
                            "EXECUTE PORTAL \"{portal_name}\" /* not bound through airlock */"
                        )),
                        params: Vec::new(),
                        via: CommandVia::Extended,
                    },
                };
                let csv = self.is_csv_copy(&input.text);
                let admission = self.admit(input, &frame.bytes, out, io).await?;
                if let (Admission::Forward { seq }, Some(p)) =
                    (&admission, self.portals.get_mut(&portal_name))
                {
                    p.admitted = Some(*seq);
                }
                self.forward_or_refuse(
                    admission,
                    PendingKind::Execute,
                    &frame.bytes,
                    out,
                    |p, me, out| {
                        me.describe_result(p, &portal_name, described, client_describes, out);
                        p.copy_csv = csv;
                    },
                );
            }
            tag::CLOSE => {
                let c = frontend::Close::decode(frame.body()).map_err(bad)?;
                if c.kind == frontend::TARGET_STATEMENT {
                    self.statements.remove(c.name);
                    if let Ok(mut types) = self.param_types.lock() {
                        types.remove(c.name);
                    }
                } else {
                    self.portals.remove(c.name);
                }
                out.extend_from_slice(&frame.bytes);
            }
            tag::SYNC => {
                // Unnamed portals do not survive the end of an implicit
                // transaction; drop ours so a stale one is never reused.
                self.portals.remove("");
                out.extend_from_slice(&frame.bytes);
                self.end_batch();
            }
            tag::FUNCTION_CALL => {
                let f = frontend::FunctionCall::decode(frame.body()).map_err(bad)?;
                // The arguments are recorded like bind parameters. Binary
                // ones (libpq sends them all so) become `\x` hex, as their
                // types are not on the wire; hex cannot be masked, so on a
                // masked connection only their size is recorded.
                let masked = self.session.masker().is_some();
                let params = f
                    .args
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        a.map(|v| match f.arg_format(i) {
                            airlock_wire::FORMAT_BINARY if masked => {
                                format!(
                                    "<{} bytes, binary, not recorded: masked connection>",
                                    v.len()
                                )
                            }
                            format => frontend::render_param(Some(v), format).into_owned(),
                        })
                    })
                    .collect();
                let input = CommandInput {
                    text: Arc::from(format!("FUNCTION CALL oid={}", f.oid)),
                    params,
                    via: CommandVia::FunctionCall,
                };
                let admission = self.admit(input, &frame.bytes, out, io).await?;
                self.forward_or_refuse(
                    admission,
                    PendingKind::FunctionCall,
                    &frame.bytes,
                    out,
                    |_, _, _| {},
                );
                self.end_batch();
            }
            tag::TERMINATE => {
                out.extend_from_slice(&frame.bytes);
                return Ok(false);
            }
            tag::DESCRIBE => {
                let d = frontend::Describe::decode(frame.body()).map_err(bad)?;
                self.describes_since_execute = self.describes_since_execute.saturating_add(1);
                if d.kind == frontend::TARGET_STATEMENT {
                    let _ = self.tx.send(Ctl::Describe {
                        statement: d.name.to_string(),
                        batch: self.batch,
                    });
                } else {
                    self.described_portal = Some(d.name.to_string());
                }
                out.extend_from_slice(&frame.bytes);
            }
            tag::FLUSH | tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {
                out.extend_from_slice(&frame.bytes);
            }
            other => {
                return Err(ClientFault::Fatal(
                    "08P01",
                    format!("airlock: invalid frontend message type {}", other as char),
                ));
            }
        }
        Ok(true)
    }

    /// Asks the pipeline about a command; when it must be held, forwards
    /// what came before it, tells the client, and waits for the decision
    /// while watching for a disconnect or a CancelRequest (both withdraw).
    async fn admit(
        &mut self,
        input: CommandInput,
        held: &Bytes,
        out: &mut BytesMut,
        io: &mut ClientIo<'_>,
    ) -> Result<Admission, ClientFault> {
        let admission = self.session.admit(input, held).await;
        let Admission::Hold(hold) = admission else {
            return Ok(admission);
        };
        let gone = |e: String| ClientFault::Fatal("08006", e);
        // Register for a CancelRequest before the client can know the
        // command is held, so a cancel sent right after the notice counts.
        let cancel = self.on_cancel.notified();
        tokio::pin!(cancel);
        io.uw
            .write_all(out)
            .await
            .map_err(|e| gone(format!("upstream write failed: {e}")))?;
        io.uw
            .flush()
            .await
            .map_err(|e| gone(format!("upstream write failed: {e}")))?;
        out.clear();
        let mut notice = BytesMut::with_capacity(64 + hold.notice.len());
        build::notice_response(
            &mut notice,
            &ErrorFields::new("NOTICE", "01000", &hold.notice),
        );
        let _ = self.tx.send(Ctl::Inject(notice.freeze()));
        tracing::info!(session = %self.session.info().id, request = %hold.request_id, "command held for approval");

        let limit = self.adapter.settings.max_message_bytes;
        let wait = self.session.await_hold(&hold);
        let stop = stopping(self.shutdown.clone());
        tokio::pin!(wait, stop);
        let mut cancelled = false;
        loop {
            tokio::select! {
                // The stop first: a decision arriving with it does not
                // release the command any more.
                biased;
                // The held command is not run; its request is withdrawn now
                // rather than left pending for the next start.
                () = &mut stop => {
                    self.session.withdraw(&hold).await;
                    return Err(ClientFault::Stopping);
                }
                decided = &mut wait => {
                    return Ok(match decided {
                        Admission::Refuse { seq, .. } if cancelled => Admission::Refuse {
                            seq,
                            sqlstate: "57014",
                            message: format!(
                                "canceling statement due to user request (approval request {} withdrawn)",
                                hold.request_id
                            ),
                        },
                        other => other,
                    });
                }
                _ = &mut cancel, if !cancelled => {
                    cancelled = true;
                    self.session.withdraw(&hold).await;
                }
                // Keep reading so a disconnect is noticed; pipelined
                // messages wait in the buffer (bounded) until the decision.
                r = io.cr.read_buf(io.buf), if io.buf.len() < limit => match r {
                    Ok(0) | Err(_) => {
                        self.session.withdraw(&hold).await;
                        return Err(gone("client disconnected while its command was held".into()));
                    }
                    Ok(n) => {
                        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                },
            }
        }
    }

    /// For masked sessions: what this Execute's rows will look like. The
    /// statement bound to the portal and Bind's result formats are kept as
    /// a fallback; unless the client's own message just before was a
    /// Describe of this portal (`described`), a Describe of it goes before
    /// the Execute, because what a portal returns is not always what was
    /// bound to it (SQL can close it and declare a cursor of the same name,
    /// whose rows an Execute then returns without a RowDescription). The
    /// server half takes the plan from that RowDescription and does not pass
    /// it on; `client_describes` of the client's own are answered first.
    fn describe_result(
        &self,
        p: &mut Pending,
        portal: &str,
        described: bool,
        client_describes: u32,
        out: &mut BytesMut,
    ) {
        if self.session.masker().is_none() {
            return;
        }
        if let Some(bound) = self.portals.get(portal) {
            p.statement = Some(bound.statement.clone());
            p.result_formats = bound.result_formats.clone();
        }
        if !described {
            build::describe(out, frontend::TARGET_PORTAL, portal);
            p.gateway_describe = Some(client_describes);
        }
    }

    /// A CSV-format COPY is masked line-wise; only masked sessions care.
    fn is_csv_copy(&self, text: &str) -> bool {
        self.session.masker().is_some() && text.to_ascii_lowercase().contains("csv")
    }

    /// Forwards the client's message, or its stand-in if refused. `shape`
    /// adds what the server half needs to know about the result (and may
    /// put a message of the gateway's own before it in `out`).
    fn forward_or_refuse(
        &mut self,
        admission: Admission,
        kind: PendingKind,
        original: &Bytes,
        out: &mut BytesMut,
        shape: impl FnOnce(&mut Pending, &Self, &mut BytesMut),
    ) {
        match admission {
            Admission::Forward { seq } => {
                let mut p = Pending::new(seq, kind, self.batch);
                shape(&mut p, self, out);
                self.queue(p);
                out.extend_from_slice(original);
            }
            // `admit` resolves holds before returning; fail closed anyway.
            Admission::Hold(h) => self.refuse(
                h.seq,
                "42501",
                "airlock: held command was not resolved",
                kind,
                out,
            ),
            Admission::Refuse {
                seq,
                sqlstate,
                message,
            } => self.refuse(seq, sqlstate, &message, kind, out),
        }
    }

    /// Sends the stand-in for a refused command and queues Airlock's error.
    fn refuse(
        &mut self,
        seq: u64,
        sqlstate: &str,
        message: &str,
        kind: PendingKind,
        out: &mut BytesMut,
    ) {
        let mut pending = Pending::new(seq, kind, self.batch);
        let mut err = BytesMut::with_capacity(64 + message.len());
        build::error_response(&mut err, &ErrorFields::new("ERROR", sqlstate, message));
        pending.replacement = Some(err.freeze());
        self.queue(pending);
        match kind {
            PendingKind::Execute => build::parse(out, "", DENY_SQL, &[]),
            PendingKind::Simple | PendingKind::FunctionCall => build::query(out, DENY_SQL),
        }
    }
}

struct ServerHalf {
    session: Arc<Session>,
    adapter: Arc<PgAdapter>,
    tracker: Tracker,
    param_types: ParamTypes,
    /// Statements whose ParameterDescription is still to come, with batch.
    describes: VecDeque<(String, u64)>,
    mask: Option<MaskState>,
    target: Arc<upstream::PgTarget>,
    /// Reused buffer for rewritten messages.
    repl: BytesMut,
    /// Rewritten chunks are built here; the allocation is reused once the
    /// previous chunk has been written and dropped.
    out: BytesMut,
    /// Bytes still missing of a message cut by the last read; reserved
    /// before the next read, after the relayed part was split off, so the
    /// read buffer reuses its space instead of growing.
    need: usize,
    /// Bytes written to the client; shared like the client half's count.
    bytes: Arc<AtomicU64>,
    /// The last message relayed to the client was ReadyForQuery (true after
    /// start-up, which ends with one).
    at_ready: bool,
}

/// Resolves once the gateway is stopping (never, if nobody can say so).
/// Callers pin one per loop rather than making one per turn: each turn
/// would register with (and leave) the channel shared by every session.
async fn stopping(mut shutdown: watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The reason recorded for sessions the gateway's shutdown ends.
const STOPPED: &str = "the gateway is shutting down";

/// What a client is told when the gateway stops under its session.
const SHUTTING_DOWN: &str = "terminating connection because the Airlock gateway is shutting down";

impl ServerHalf {
    async fn run(
        mut self,
        mut ur: ReadHalf<BoxStream>,
        mut cw: WriteHalf<BoxStream>,
        mut rx: mpsc::UnboundedReceiver<Ctl>,
        mut buf: BytesMut,
        shutdown: watch::Receiver<bool>,
        (pid, cancel_secret): (i32, i32),
    ) -> String {
        let max = self.adapter.settings.max_message_bytes;
        let mut rx_open = true;
        // The flag itself too: the upstream's EOF (after the client half's
        // Terminate) can be read in the same turn the stop is, before the
        // `stop` branch has run.
        let stopped = shutdown.clone();
        let stop = stopping(shutdown);
        tokio::pin!(stop);
        // The gateway is stopping: once the client half has stopped and no
        // command is in flight, the client gets FATAL 57P01 and the session
        // ends.
        let mut draining = false;
        // The command a cancel was last sent for while draining.
        let mut cancelled: Option<u64> = None;
        let reason = loop {
            if !buf.is_empty() {
                while let Ok(ctl) = rx.try_recv() {
                    if let Err(e) = self.control(ctl, &mut cw).await {
                        return format!("client write failed: {e}");
                    }
                }
                if let Err(e) = self.resolve_tables(&buf, max).await {
                    let msg = format!("airlock: could not resolve result tables for masking: {e}");
                    let _ = cw.write_all(&fatal("58000", &msg)).await;
                    break msg;
                }
                match self.relay_chunk(&mut buf, max) {
                    Ok(Some(chunk)) => {
                        if let Err(e) = cw.write_all(&chunk).await {
                            break format!("client write failed: {e}");
                        }
                        self.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        self.adapter
                            .meters
                            .bytes_to_client
                            .increment(chunk.len() as u64);
                        if let Err(e) = cw.flush().await {
                            break format!("client write failed: {e}");
                        }
                    }
                    Ok(None) => {}
                    Err(msg) => {
                        let _ = cw.write_all(&fatal("08P01", &msg)).await;
                        break msg;
                    }
                }
            }
            if draining {
                let empty = self.nothing_in_flight(&mut rx, &mut cw).await;
                // The client half has stopped too (it withdraws a held
                // command on its way out), every forwarded command has its
                // answer, and the last message relayed was ReadyForQuery:
                // the client is not in the middle of a response.
                if empty && !rx_open && self.at_ready {
                    let _ = cw.write_all(&fatal("57P01", SHUTTING_DOWN)).await;
                    break STOPPED.to_string();
                }
                // Whatever runs upstream is cancelled, one cancel per
                // command: the one running at the stop, the ones pipelined
                // behind it, and one the client half forwarded while the
                // stop reached it.
                if let Some(seq) = self.tracker.front_seq()
                    && cancelled != Some(seq)
                {
                    cancelled = Some(seq);
                    let adapter = self.adapter.clone();
                    tokio::spawn(async move { adapter.cancels.cancel(pid, cancel_secret).await });
                }
            }
            if self.need > 0 {
                buf.reserve(self.need);
                self.need = 0;
            }
            tokio::select! {
                // Control first: an error the client half queued before it
                // ended must reach the client before the upstream's EOF
                // ends this half.
                biased;
                ctl = rx.recv(), if rx_open => match ctl {
                    Some(ctl) => {
                        if let Err(e) = self.control(ctl, &mut cw).await {
                            break format!("client write failed: {e}");
                        }
                    }
                    None => rx_open = false,
                },
                // Before the upstream read, so a long result stream cannot
                // keep a stopping gateway waiting; the loop's top cancels
                // what runs and ends the session between messages, as
                // PostgreSQL's own shutdown error does.
                () = &mut stop, if !draining => draining = true,
                r = ur.read_buf(&mut buf) => match r {
                    Ok(0) => {
                        while let Ok(ctl) = rx.try_recv() {
                            if self.control(ctl, &mut cw).await.is_err() {
                                break;
                            }
                        }
                        if draining || *stopped.borrow() {
                            let _ = cw.write_all(&fatal("57P01", SHUTTING_DOWN)).await;
                            break STOPPED.to_string();
                        }
                        break "upstream closed the connection".to_string();
                    }
                    Ok(_) => {}
                    Err(e) => break format!("upstream read failed: {e}"),
                },
            }
        };
        let _ = cw.flush().await;
        let _ = cw.shutdown().await;
        reason
    }

    /// True when no forwarded command waits for its answer. Takes in what
    /// the client half queued first: it queues a command before sending it.
    async fn nothing_in_flight(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Ctl>,
        cw: &mut WriteHalf<BoxStream>,
    ) -> bool {
        while let Ok(ctl) = rx.try_recv() {
            if self.control(ctl, cw).await.is_err() {
                // The client is gone; nothing is waited for on its behalf.
                return true;
            }
        }
        self.tracker.is_empty()
    }

    async fn control(&mut self, ctl: Ctl, cw: &mut WriteHalf<BoxStream>) -> std::io::Result<()> {
        match ctl {
            Ctl::Pending(p) => self.tracker.push(p),
            Ctl::Describe { statement, batch } => self.describes.push_back((statement, batch)),
            Ctl::Inject(bytes) => {
                cw.write_all(&bytes).await?;
                cw.flush().await?;
            }
        }
        Ok(())
    }

    /// Before relaying, looks up (once per target) the tables of result
    /// columns in any RowDescription in `buf`, when a masking rule names a
    /// table. Upstream reading waits meanwhile, which keeps order.
    async fn resolve_tables(
        &self,
        buf: &BytesMut,
        max: usize,
    ) -> Result<(), upstream::UpstreamError> {
        if !self.mask.as_ref().is_some_and(|m| m.needs_tables) {
            return Ok(());
        }
        let mut oids = Vec::new();
        let mut pos = 0usize;
        while buf.len() >= pos + 5 {
            let len = u32::from_be_bytes([buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]])
                as usize;
            if len < 4 || len > max || buf.len() < pos + 1 + len {
                break;
            }
            let frame = &buf[pos..pos + 1 + len];
            if frame[0] == backend::tag::ROW_DESCRIPTION
                && let Ok(fields) = masking::parse_row_description(frame)
            {
                oids.extend(fields.iter().map(|f| f.table_oid));
            }
            pos += 1 + len;
        }
        let missing = self.adapter.catalog.missing(&self.target.name, oids);
        self.adapter
            .catalog
            .resolve(&self.target, &missing, max)
            .await
    }

    /// Relays every complete message in `buf`. Returns the bytes to send to
    /// the client: the original chunk untouched when nothing needed
    /// rewriting (no copy), or a rebuilt one.
    fn relay_chunk(&mut self, buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, String> {
        let mut pos = 0usize;
        let mut rebuilding = false;
        let mut repl = std::mem::take(&mut self.repl);
        loop {
            let rest = &buf[pos..];
            if rest.len() < 5 {
                break;
            }
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if len < 4 || len > max {
                self.repl = repl;
                return Err(format!(
                    "airlock: upstream message of {len} bytes exceeds the limit"
                ));
            }
            let total = len + 1;
            if rest.len() < total {
                self.need = total - rest.len();
                break;
            }
            let frame = &rest[..total];
            self.at_ready = match frame[0] {
                backend::tag::READY_FOR_QUERY => true,
                // Asynchronous: may come while the session is idle.
                backend::tag::NOTIFICATION_RESPONSE
                | backend::tag::NOTICE_RESPONSE
                | backend::tag::PARAMETER_STATUS => self.at_ready,
                _ => false,
            };
            repl.clear();
            if self.observe(frame, &mut repl) {
                if rebuilding {
                    self.out.extend_from_slice(frame);
                }
            } else {
                if !rebuilding {
                    rebuilding = true;
                    self.out.clear();
                    self.out.reserve(buf.len());
                    self.out.extend_from_slice(&buf[..pos]);
                }
                self.out.extend_from_slice(&repl);
            }
            pos += total;
        }
        self.repl = repl;
        if pos == 0 {
            return Ok(None);
        }
        let chunk = buf.split_to(pos);
        Ok(Some(if rebuilding {
            self.out.split().freeze()
        } else {
            chunk.freeze()
        }))
    }

    /// A RowDescription or NoData arrived: true if it answers the Describe
    /// the gateway put before the current Execute (the client's own
    /// Describes, sent earlier, are answered first).
    fn gateway_describe_answered(&mut self) -> bool {
        let Some(p) = self.tracker.head() else {
            return false;
        };
        match p.gateway_describe {
            Some(0) => {
                p.gateway_describe = None;
                true
            }
            Some(n) => {
                p.gateway_describe = Some(n - 1);
                false
            }
            None => false,
        }
    }

    /// Looks at one upstream message: pairs it with its command, masks it
    /// if needed. Returns true to send it as is; false to send what it wrote
    /// to `repl` instead (possibly nothing).
    fn observe(&mut self, frame: &[u8], repl: &mut BytesMut) -> bool {
        let tag = frame[0];
        let body = &frame[5..];
        match tag {
            backend::tag::DATA_ROW => {
                if let Some(p) = self.tracker.head() {
                    p.rows += 1;
                }
                self.mask_row(frame, repl)
            }
            backend::tag::COPY_DATA => {
                if let Some(p) = self.tracker.head() {
                    p.rows += 1;
                }
                self.mask_copy(frame, repl)
            }
            backend::tag::ROW_DESCRIPTION => {
                let ours = self.gateway_describe_answered();
                if let Some(m) = self.mask.as_mut() {
                    let mut cols = masking::columns_from_row_description(frame).unwrap_or_default();
                    if m.needs_tables
                        && let Ok(fields) = masking::parse_row_description(frame)
                    {
                        for (col, field) in cols.iter_mut().zip(fields) {
                            if let Some(info) = self
                                .adapter
                                .catalog
                                .cached(&self.target.name, field.table_oid)
                                .flatten()
                            {
                                col.table = Some(info.name.to_string());
                                // Match rules on the column's own name, not an alias.
                                if let Some(origin) = info.columns.get(&field.attnum) {
                                    col.name = origin.to_string();
                                }
                            }
                        }
                    }
                    match m.last_described.take() {
                        // Describe of a statement: remember its columns for
                        // Executes that come without a RowDescription.
                        Some(name) if !ours => {
                            m.statement_cols.insert(name, Arc::new(cols));
                        }
                        _ => m.plan = Some(m.masker.plan(&cols)),
                    }
                }
                !ours
            }
            backend::tag::NO_DATA => {
                let ours = self.gateway_describe_answered();
                if let Some(m) = self.mask.as_mut() {
                    m.last_described = None;
                }
                !ours
            }
            backend::tag::COPY_OUT_RESPONSE => {
                let csv = self.tracker.head().is_some_and(|p| p.copy_csv);
                let Some(m) = self.mask.as_mut() else {
                    return true;
                };
                let binary = body.first().is_some_and(|f| *f != 0);
                if binary {
                    // Binary COPY cannot be masked: fail closed, as an error.
                    m.copy = CopyMode::Refused;
                    build::error_response(
                        repl,
                        &ErrorFields::new(
                            "ERROR",
                            "42501",
                            "airlock: binary COPY cannot be masked on this connection; use text or CSV format",
                        ),
                    );
                    if let Some(p) = self.tracker.head() {
                        p.error_code = Some("42501".into());
                        p.error_message = Some("binary COPY refused: masking applies".into());
                    }
                    return false;
                }
                m.copy = if csv { CopyMode::Csv } else { CopyMode::Text };
                true
            }
            backend::tag::COPY_DONE => !self
                .mask
                .as_ref()
                .is_some_and(|m| m.copy == CopyMode::Refused),
            backend::tag::COMMAND_COMPLETE => {
                let refused = self.mask.as_mut().is_some_and(|m| {
                    let r = m.copy == CopyMode::Refused;
                    m.copy = CopyMode::Off;
                    m.plan = None;
                    r
                });
                if let Some(p) = self.tracker.head() {
                    if !refused && let Ok(c) = backend::CommandComplete::decode(body) {
                        p.tags.push(c.tag.to_string());
                    }
                    if p.kind == PendingKind::Execute {
                        self.finish_head();
                    }
                }
                !refused
            }
            backend::tag::EMPTY_QUERY_RESPONSE | backend::tag::PORTAL_SUSPENDED => {
                if let Some(m) = self.mask.as_mut() {
                    m.plan = None;
                }
                if self
                    .tracker
                    .head()
                    .is_some_and(|p| p.kind == PendingKind::Execute)
                {
                    self.finish_head();
                }
                true
            }
            backend::tag::ERROR_RESPONSE => {
                let mut keep = true;
                let mut stand_in = false;
                if let Some(p) = self.tracker.head() {
                    stand_in = p.replacement.is_some() && is_stand_in_error(body);
                    if stand_in {
                        if let Some(rep) = p.replacement.take() {
                            let ours = rep.get(5..).and_then(|b| ErrorResponse::decode(b).ok());
                            p.error_code = Some(
                                ours.as_ref()
                                    .and_then(|e| e.code())
                                    .unwrap_or("42501")
                                    .to_string(),
                            );
                            p.error_message =
                                ours.as_ref().and_then(|e| e.message()).map(str::to_string);
                            repl.extend_from_slice(&rep);
                            keep = false;
                        }
                    } else if p.error_code.is_none() {
                        // Raw fields: a message in a non-UTF-8 client
                        // encoding still leaves its SQLSTATE recorded.
                        let field = |code| {
                            raw_error_field(body, code)
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                        };
                        p.error_code = field(backend::field::CODE);
                        p.error_message = field(backend::field::MESSAGE);
                    }
                }
                if let Some(m) = self.mask.as_mut() {
                    m.plan = None;
                    m.copy = CopyMode::Off;
                    if !stand_in
                        && masking::rewrite_error_or_notice(&m.masker, frame, repl).unwrap_or(false)
                    {
                        keep = false;
                    }
                }
                if self
                    .tracker
                    .head()
                    .is_some_and(|p| p.kind == PendingKind::Execute)
                {
                    self.finish_head();
                }
                keep
            }
            backend::tag::NOTICE_RESPONSE => match self.mask.as_ref() {
                Some(m) => {
                    !masking::rewrite_error_or_notice(&m.masker, frame, repl).unwrap_or(false)
                }
                None => true,
            },
            backend::tag::PARAMETER_DESCRIPTION => {
                let batch = self.tracker.current_batch();
                // Describes of batches that failed earlier never answered.
                while self.describes.front().is_some_and(|(_, b)| *b < batch) {
                    self.describes.pop_front();
                }
                if self.describes.front().is_some_and(|(_, b)| *b == batch)
                    && let Some((name, _)) = self.describes.pop_front()
                {
                    if let Ok(d) = backend::ParameterDescription::decode(body)
                        && let Ok(mut types) = self.param_types.lock()
                    {
                        types.insert(name.clone(), Arc::from(d.types.as_slice()));
                    }
                    if let Some(m) = self.mask.as_mut() {
                        m.last_described = Some(name);
                    }
                }
                true
            }
            backend::tag::READY_FOR_QUERY => {
                if let Some(m) = self.mask.as_mut() {
                    m.plan = None;
                    m.copy = CopyMode::Off;
                    m.last_described = None;
                }
                for p in self.tracker.ready_for_query() {
                    self.finish(p);
                }
                true
            }
            _ => true,
        }
    }

    /// Masks a DataRow under the current result's plan. A row whose shape
    /// is unknown (an Execute of a statement never described) is sent with
    /// every cell NULL: without column facts nothing can be shown safely.
    fn mask_row(&mut self, frame: &[u8], repl: &mut BytesMut) -> bool {
        let Some(m) = self.mask.as_mut() else {
            return true;
        };
        if m.plan.is_none() {
            let shape = self
                .tracker
                .head()
                .and_then(|p| p.statement.clone().map(|s| (s, p.result_formats.clone())));
            if let Some((statement, formats)) = shape
                && let Some(cols) = m.statement_cols.get(&statement)
            {
                let cols: Vec<ColumnMeta> = cols
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let format = match formats.len() {
                            0 => 0,
                            1 => formats[0],
                            _ => formats.get(i).copied().unwrap_or(0),
                        };
                        ColumnMeta {
                            binary: format == 1,
                            ..c.clone()
                        }
                    })
                    .collect();
                m.plan = Some(m.masker.plan(&cols));
            }
        }
        match m.plan.as_ref() {
            Some(plan) => {
                !masking::rewrite_data_row(plan, frame, repl, &mut m.scratch, &mut m.stats)
                    .unwrap_or(false)
            }
            None => {
                let columns = backend::DataRow::decode(&frame[5..])
                    .map(|r| r.len())
                    .unwrap_or(0);
                build::data_row(repl, std::iter::repeat_n(None, columns));
                m.unknown_shape_cells += columns as u64;
                false
            }
        }
    }

    fn mask_copy(&mut self, frame: &[u8], repl: &mut BytesMut) -> bool {
        let Some(m) = self.mask.as_mut() else {
            return true;
        };
        let changed = match m.copy {
            CopyMode::Refused => return false,
            CopyMode::Csv => masking::rewrite_copy_data_csv_row(
                &m.masker,
                frame,
                repl,
                &mut m.scratch,
                &mut m.stats,
            ),
            // COPY TO STDOUT in text format (COPY OUT also carries rows of
            // COPY BOTH, which is never masked because it never starts here).
            CopyMode::Text | CopyMode::Off => masking::rewrite_copy_data_text_row(
                &m.masker,
                None,
                b'\t',
                frame,
                repl,
                &mut m.scratch,
                &mut m.stats,
            ),
        };
        !changed.unwrap_or(false)
    }

    fn finish_head(&mut self) {
        if let Some(p) = self.tracker.pop_head() {
            self.finish(p);
        }
    }

    fn finish(&mut self, p: Pending) {
        let duration = p.started.elapsed();
        self.adapter
            .meters
            .command_seconds
            .record(duration.as_secs_f64());
        if p.error_code.is_some() {
            self.adapter.meters.command_errors.increment(1);
        }
        let mut masked = Vec::new();
        let mut error_message = p.error_message;
        if let Some(m) = self.mask.as_mut() {
            masked = m.stats.counts();
            m.stats.reset();
            if m.unknown_shape_cells > 0 {
                masked.push(MaskCount {
                    rule: "unknown_result_shape".into(),
                    cells: m.unknown_shape_cells,
                });
                m.unknown_shape_cells = 0;
            }
            // Recordings hold masked values only.
            if let Some(msg) = error_message.as_deref()
                && let Some(masked_msg) = m.masker.mask_text(msg)
            {
                error_message = Some(masked_msg);
            }
        }
        self.session.record_result(
            p.seq,
            CommandOutcome {
                tags: p.tags,
                rows: p.rows,
                duration,
                error_code: p.error_code,
                error_message,
                masked,
            },
        );
    }
}

/// How COPY TO STDOUT rows of the current command are masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyMode {
    Off,
    Text,
    Csv,
    /// Binary COPY on a masked session: refused; drop its data.
    Refused,
}

/// Masking state of a session's server half (only for masked sessions).
struct MaskState {
    masker: Arc<ConnectionMasker>,
    /// Plan of the result being relayed now.
    plan: Option<RowPlan>,
    /// Columns of described prepared statements.
    statement_cols: HashMap<String, Arc<Vec<ColumnMeta>>>,
    /// The statement whose RowDescription comes next (after its
    /// ParameterDescription).
    last_described: Option<String>,
    copy: CopyMode,
    scratch: Vec<u8>,
    stats: MaskStats,
    unknown_shape_cells: u64,
    /// Column rules apply: resolve result columns' origins.
    needs_tables: bool,
}

impl MaskState {
    fn new(masker: Arc<ConnectionMasker>) -> Self {
        MaskState {
            needs_tables: masker.has_column_rules(),
            stats: masker.new_stats(),
            masker,
            plan: None,
            statement_cols: HashMap::new(),
            last_described: None,
            copy: CopyMode::Off,
            scratch: Vec::new(),
            unknown_shape_cells: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: &str, message: &str) -> BytesMut {
        let mut b = BytesMut::new();
        build::error_response(&mut b, &ErrorFields::new("ERROR", code, message));
        b
    }

    #[test]
    fn the_stand_in_error_is_known_in_any_language() {
        for message in [
            "syntax error at or near \"airlock_denied\"",
            "Syntaxfehler bei »airlock_denied«",
            "erreur de syntaxe sur ou près de « airlock_denied »",
        ] {
            assert!(
                is_stand_in_error(&error("42601", message)[5..]),
                "{message}"
            );
        }
        // In a LATIN1 client encoding the German quotes are not UTF-8.
        let latin1 = b"SERROR\0C42601\0MSyntaxfehler bei \xbbairlock_denied\xab\0\0";
        assert!(is_stand_in_error(latin1));
        // Another error of the same batch is the upstream's own.
        let b = error("42P01", "relation \"airlock_denied\" does not exist");
        assert!(!is_stand_in_error(&b[5..]));
        let b = error("42601", "syntax error at or near \"SELEC\"");
        assert!(!is_stand_in_error(&b[5..]));
    }
}
