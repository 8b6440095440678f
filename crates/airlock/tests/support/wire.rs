//! Raw bytes for tests that talk to the gateway below the client libraries:
//! PostgreSQL startup and frontend messages, backend message reads, and a
//! plain HTTP GET with a Prometheus sample lookup for `/metrics`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::gateway::Gateway;

/// Protocol version 3.0 as a StartupMessage carries it.
pub const PROTOCOL_3_0: i32 = 3 << 16;

/// A StartupMessage of protocol `version` with `params`.
pub fn startup_packet(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// A typed frontend message (`tag`, length, body).
pub fn frontend_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut msg = vec![tag];
    msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    msg.extend_from_slice(body);
    msg
}

/// Reads one backend message: its type byte and body.
pub fn read_message(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).expect("message header");
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).expect("message body");
    (head[0], body)
}

/// `GET path` over HTTP/1.0 (the server closes after the answer), without
/// any credentials. Returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the API listener");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the HTTP response");
    let text = String::from_utf8(raw).expect("a UTF-8 HTTP response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("an HTTP response: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP status line: {head:?}"));
    (status, body.to_owned())
}

/// The value of the sample `name` whose labels include `labels`, from a
/// Prometheus text exposition.
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let matches = series_name == name
                && labels.iter().all(|(k, v)| {
                    let wanted = format!("{k}=\"{v}\"");
                    label_text.split(',').any(|kv| kv == wanted)
                });
            if matches { value.parse().ok() } else { None }
        })
}

/// Sends `identity`'s token as a PasswordMessage and returns every message
/// up to ReadyForQuery, failing on an ErrorResponse.
pub fn send_token(gw: &Gateway, identity: &str, s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    s.write_all(&frontend_message(b'p', &nul_terminated(gw.token(identity))))
        .unwrap();
    let mut got = Vec::new();
    loop {
        let (tag, body) = read_message(s);
        assert_ne!(
            tag,
            b'E',
            "login failed: {}",
            String::from_utf8_lossy(&body)
        );
        got.push((tag, body));
        if tag == b'Z' {
            return got;
        }
    }
}

/// AuthenticationCleartextPassword: the gateway asks for the token.
pub fn is_password_request((tag, body): &(u8, Vec<u8>)) -> bool {
    *tag == b'R' && body.as_slice() == [0, 0, 0, 3]
}

/// A raw protocol 3.0 session of `identity` on `connection`, logged in and
/// ready for a query.
pub fn raw_login(gw: &Gateway, identity: &str, connection: &str) -> TcpStream {
    let mut s = TcpStream::connect(gw.pg_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&startup_packet(
        PROTOCOL_3_0,
        &[("user", identity), ("database", connection)],
    ))
    .unwrap();
    assert!(is_password_request(&read_message(&mut s)));
    send_token(gw, identity, &mut s);
    s
}

/// Sends `bytes` and reads every message up to ReadyForQuery.
pub fn exchange(s: &mut TcpStream, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    loop {
        let (tag, body) = read_message(s);
        got.push((tag, body));
        if tag == b'Z' {
            return got;
        }
    }
}

/// A simple Query message.
pub fn query_message(sql: &str) -> Vec<u8> {
    frontend_message(b'Q', &nul_terminated(sql))
}

/// Runs `SELECT 1` on a raw session and returns the message tags.
pub fn raw_select_1(s: &mut TcpStream) -> Vec<u8> {
    exchange(s, &query_message("SELECT 1"))
        .into_iter()
        .map(|(tag, _)| tag)
        .collect()
}

fn nul_terminated(text: &str) -> Vec<u8> {
    let mut v = text.as_bytes().to_vec();
    v.push(0);
    v
}
