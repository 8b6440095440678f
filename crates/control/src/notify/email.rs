//! E-mail over SMTP: a minimal client on tokio (EHLO, optional STARTTLS and
//! AUTH PLAIN, MAIL FROM, RCPT TO, DATA with dot-stuffing, QUIT) and the
//! text of the messages, which carry the console link to decide.
//!
//! Written here rather than pulled in: it needs a dozen commands, and this
//! way TLS is the same rustls/aws-lc-rs stack as the rest of Airlock.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_pipeline::approvals::ApprovalSubject;
use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{DeliveryError, one_line, outcome, summary};
use crate::approvals::{ApprovalEvent, ApprovalEventKind};
use crate::config::EmailTarget;

/// One whole SMTP conversation may take this long.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Longest reply line accepted from the server.
const MAX_LINE: usize = 4096;
/// Most lines in one (multi-line) reply.
const MAX_REPLY_LINES: usize = 64;
/// Body lines are wrapped well below SMTP's 998-octet limit.
const WRAP_CHARS: usize = 200;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Smtp {
    io: Box<dyn Io>,
    buf: Vec<u8>,
}

fn io_error(what: &str, e: std::io::Error) -> DeliveryError {
    DeliveryError::transient(format!("{what}: {e}"))
}

/// 4xx replies are transient by SMTP's own definition; 5xx are not.
fn reply_error(step: &str, code: u16, text: &str) -> DeliveryError {
    DeliveryError {
        status: Some(code),
        message: format!("{step}: the server answered {code} {}", one_line(text, 200)),
        retry: (400..500).contains(&code),
    }
}

impl Smtp {
    async fn line(&mut self) -> Result<String, DeliveryError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.buf.len() > MAX_LINE {
                return Err(DeliveryError::transient(
                    "the SMTP server sent an overlong line",
                ));
            }
            let mut chunk = [0u8; 1024];
            let n = self
                .io
                .read(&mut chunk)
                .await
                .map_err(|e| io_error("reading from the SMTP server", e))?;
            if n == 0 {
                return Err(DeliveryError::transient(
                    "the SMTP server closed the connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One reply, joining the lines of a multi-line one (`250-...`).
    async fn reply(&mut self) -> Result<(u16, String), DeliveryError> {
        let mut text = String::new();
        for _ in 0..MAX_REPLY_LINES {
            let line = self.line().await?;
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| {
                    DeliveryError::transient(format!("not an SMTP reply: {}", one_line(&line, 80)))
                })?;
            let more = line.as_bytes().get(3) == Some(&b'-');
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(line.get(4..).unwrap_or(""));
            if !more {
                return Ok((code, text));
            }
        }
        Err(DeliveryError::transient(
            "the SMTP server sent an overlong reply",
        ))
    }

    async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), DeliveryError> {
        self.io
            .write_all(bytes)
            .await
            .map_err(|e| io_error("writing to the SMTP server", e))?;
        self.io
            .flush()
            .await
            .map_err(|e| io_error("writing to the SMTP server", e))
    }

    /// Sends one command and expects one of `ok` back.
    async fn command(
        &mut self,
        step: &str,
        cmd: &str,
        ok: &[u16],
    ) -> Result<(u16, String), DeliveryError> {
        let mut line = String::with_capacity(cmd.len() + 2);
        line.push_str(cmd);
        line.push_str("\r\n");
        self.send_raw(line.as_bytes()).await?;
        let (code, text) = self.reply().await?;
        if ok.contains(&code) {
            Ok((code, text))
        } else {
            Err(reply_error(step, code, &text))
        }
    }

    async fn starttls(self, host: &str) -> Result<Smtp, DeliveryError> {
        if !self.buf.is_empty() {
            // Bytes after the 220 would be read as if they came over TLS:
            // the classic STARTTLS injection. Refuse.
            return Err(DeliveryError::transient(
                "the SMTP server sent data before the TLS handshake",
            ));
        }
        let config = tls_config().map_err(DeliveryError::transient)?;
        let name = rustls_pki_types::ServerName::try_from(host.to_owned())
            .map_err(|_| DeliveryError::transient(format!("{host:?} is not a TLS server name")))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, self.io)
            .await
            .map_err(|e| io_error("TLS handshake with the SMTP server", e))?;
        Ok(Smtp {
            io: Box::new(tls),
            buf: Vec::new(),
        })
    }
}

/// The system's roots and the aws-lc-rs provider, built once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = super::tls::native_roots();
            if roots.is_empty() {
                return Err("no system root certificates were found for STARTTLS".into());
            }
            super::tls::client_config(&[]).map(Arc::new)
        })
        .clone()
}

/// Sends one message to every recipient of `target`. Returns the server's
/// code for the accepted message.
pub async fn send(target: &EmailTarget, subject: &str, body: &str) -> Result<u16, DeliveryError> {
    match tokio::time::timeout(TIMEOUT, conversation(target, subject, body)).await {
        Ok(result) => result,
        Err(_) => Err(DeliveryError::transient("the SMTP conversation timed out")),
    }
}

async fn conversation(
    target: &EmailTarget,
    subject: &str,
    body: &str,
) -> Result<u16, DeliveryError> {
    let tcp = TcpStream::connect((target.smtp_host.as_str(), target.smtp_port))
        .await
        .map_err(|e| io_error("connecting to the SMTP server", e))?;
    let mut smtp = Smtp {
        io: Box::new(tcp),
        buf: Vec::new(),
    };
    let (code, text) = smtp.reply().await?;
    if code != 220 {
        return Err(reply_error("greeting", code, &text));
    }
    smtp.command("EHLO", "EHLO airlock", &[250]).await?;
    if target.starttls {
        smtp.command("STARTTLS", "STARTTLS", &[220]).await?;
        smtp = smtp.starttls(&target.smtp_host).await?;
        smtp.command("EHLO", "EHLO airlock", &[250]).await?;
    }
    if let Some((user, password)) = &target.credentials {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        smtp.command("AUTH", &format!("AUTH PLAIN {token}"), &[235])
            .await?;
    }
    smtp.command("MAIL FROM", &format!("MAIL FROM:<{}>", target.from), &[250])
        .await?;
    for to in &target.to {
        smtp.command("RCPT TO", &format!("RCPT TO:<{to}>"), &[250, 251])
            .await?;
    }
    smtp.command("DATA", "DATA", &[354]).await?;
    let message = format_message(target, subject, body, SystemTime::now());
    smtp.send_raw(&dot_stuff(&message)).await?;
    let (code, text) = smtp.reply().await?;
    if code != 250 {
        return Err(reply_error("end of DATA", code, &text));
    }
    // The message is accepted; a failed goodbye changes nothing.
    let _ = smtp.command("QUIT", "QUIT", &[221]).await;
    Ok(code)
}

/// The message with CRLF line ends, lines starting with `.` doubled, and
/// the terminating `.` line.
pub fn dot_stuff(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    for line in message.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Header text with nothing that could end the header; non-ASCII as an
/// RFC 2047 encoded word.
fn header_text(s: &str) -> String {
    let flat = one_line(s, 180);
    if flat.is_ascii() {
        flat
    } else {
        format!(
            "=?utf-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(flat)
        )
    }
}

/// Wraps lines longer than [`WRAP_CHARS`] so no line nears SMTP's limit.
fn wrap(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    for line in body.lines() {
        let chars: Vec<char> = line.chars().collect();
        if chars.is_empty() {
            out.push('\n');
        }
        for piece in chars.chunks(WRAP_CHARS) {
            out.extend(piece);
            out.push('\n');
        }
    }
    out
}

/// `Thu, 01 Jan 1970 00:00:00 +0000` (RFC 5322).
pub fn rfc5322_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let weekday = WEEKDAYS[usize::try_from((days + 4).rem_euclid(7)).unwrap_or(0)];
    let month_name = MONTHS[usize::try_from(month - 1).unwrap_or(0).min(11)];
    format!(
        "{weekday}, {day:02} {month_name} {year} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Headers and body, with `\n` line ends (made CRLF by [`dot_stuff`]).
pub fn format_message(target: &EmailTarget, subject: &str, body: &str, now: SystemTime) -> String {
    let mut m = String::new();
    m.push_str(&format!("From: Airlock <{}>\n", target.from));
    m.push_str(&format!("To: {}\n", target.to.join(", ")));
    m.push_str(&format!("Subject: {}\n", header_text(subject)));
    m.push_str(&format!("Date: {}\n", rfc5322_date(now)));
    m.push_str(&format!("Message-ID: <{}@airlock>\n", uuid::Uuid::new_v4()));
    m.push_str("MIME-Version: 1.0\n");
    m.push_str("Content-Type: text/plain; charset=utf-8\n");
    m.push_str("Content-Transfer-Encoding: 8bit\n");
    m.push_str("Auto-Submitted: auto-generated\n");
    m.push('\n');
    m.push_str(&wrap(body));
    m
}

/// Subject and body for an event.
pub fn compose(event: &ApprovalEvent, link: &str) -> (String, String) {
    let rec = &event.request;
    let r = &rec.request;
    let id = r.id.hyphenated().to_string();
    let short = id.get(..8).unwrap_or(&id);
    let subject = match event.event {
        ApprovalEventKind::Created => match r.subject {
            ApprovalSubject::Command { .. } => format!(
                "[Airlock] Approval needed: {} on {} ({short})",
                r.requester, r.connection
            ),
            ApprovalSubject::Access { .. } => format!(
                "[Airlock] Access requested: {} on {} ({short})",
                r.requester, r.connection
            ),
        },
        _ => format!(
            "[Airlock] Request {short}: {}",
            one_line(&outcome(event), 100)
        ),
    };
    let mut b = String::new();
    b.push_str(&summary(rec));
    b.push_str("\n\n");
    if event.event != ApprovalEventKind::Created {
        b.push_str(&format!("What happened: {}\n\n", outcome(event)));
    }
    let field = |b: &mut String, name: &str, value: &str| {
        b.push_str(&format!("{name:<12} {value}\n"));
    };
    field(&mut b, "Request:", &id);
    field(
        &mut b,
        "Requester:",
        &format!("{} ({})", r.requester, r.requester_kind.as_str()),
    );
    field(&mut b, "Connection:", &r.connection);
    field(&mut b, "Status:", r.status.as_str());
    let groups = if r.reviewers.is_empty() {
        "any human".to_owned()
    } else {
        r.reviewers.join(", ")
    };
    field(
        &mut b,
        "Reviewers:",
        &format!("{groups} ({} approval(s) needed)", r.min_approvals.max(1)),
    );
    let expires = UNIX_EPOCH + Duration::from_micros(u64::try_from(r.expires_at_us).unwrap_or(0));
    field(
        &mut b,
        "Expires:",
        &humantime::format_rfc3339_seconds(expires).to_string(),
    );
    if let Some(reason) = &r.reason {
        field(&mut b, "Reason:", &one_line(reason, 500));
    }
    if let ApprovalSubject::Command { text, .. } = &r.subject {
        b.push_str("\nCommand:\n");
        for line in text.chars().take(4000).collect::<String>().lines() {
            b.push_str("    ");
            b.push_str(line);
            b.push('\n');
        }
    }
    for d in &r.decisions {
        let mut line = format!(
            "{} {}",
            d.reviewer,
            match d.decision {
                airlock_pipeline::approvals::DecisionKind::Approve => "approved",
                airlock_pipeline::approvals::DecisionKind::Reject => "rejected",
            }
        );
        if let Some(c) = &d.comment {
            line.push_str(&format!(": {}", one_line(c, 300)));
        }
        field(&mut b, "Decision:", &line);
    }
    b.push_str(&format!("\nApprove or reject: {link}\n"));
    if r.status == airlock_pipeline::approvals::ApprovalStatus::Pending {
        b.push_str(&format!(
            "Or from a shell: airlock approvals approve {short}\n"
        ));
    }
    (subject, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_and_crlf() {
        assert_eq!(
            dot_stuff("a\n.b\n..c\r\nd"),
            b"a\r\n..b\r\n...c\r\nd\r\n.\r\n".to_vec()
        );
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723); // 2000-02-29 01:02:03
        assert_eq!(rfc5322_date(t), "Tue, 29 Feb 2000 01:02:03 +0000");
    }

    #[test]
    fn headers_cannot_be_injected() {
        assert_eq!(header_text("a\r\nBcc: x"), "a Bcc: x");
        assert!(header_text("héllo").starts_with("=?utf-8?B?"));
    }

    #[test]
    fn long_lines_are_wrapped() {
        let long = "x".repeat(450);
        let w = wrap(&long);
        assert_eq!(w.lines().count(), 3);
        assert!(w.lines().all(|l| l.chars().count() <= WRAP_CHARS));
    }
}
