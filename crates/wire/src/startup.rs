//! The untagged startup phase: SSLRequest, GSSENCRequest, CancelRequest and StartupMessage.
//!
//! These packets are `len: i32` then a 4-byte code, with no tag byte, so they
//! need their own splitter. Startup parameters are copied out as owned strings
//! because the caller keeps them for the whole session.

use std::fmt;

use bytes::BytesMut;

use crate::WireError;
use crate::frame::checked_len;
use crate::reader::Reader;

/// Protocol version 3.0 as sent in a StartupMessage (`3 << 16`).
pub const PROTOCOL_VERSION_3_0: i32 = 196_608;
/// Startup parameters with this prefix are protocol options (`_pq_.name`),
/// which a server that does not know them lists in NegotiateProtocolVersion.
pub const PROTOCOL_OPTION_PREFIX: &str = "_pq_.";
/// Request code of an SSLRequest (`1234 << 16 | 5679`).
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// Request code of a GSSENCRequest (`1234 << 16 | 5680`).
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// Request code of a CancelRequest (`1234 << 16 | 5678`).
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// The largest startup packet PostgreSQL itself accepts (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// The smallest startup packet: length plus code.
const MIN_STARTUP_LEN: usize = 8;
/// The major "version" PostgreSQL reserves for special request codes.
const REQUEST_CODE_MAJOR: i32 = 1234;

/// A decoded startup-phase packet.
#[derive(Clone, PartialEq, Eq)]
pub enum StartupMessage {
    /// The client asks to switch to TLS; answer a single `S` or `N` byte.
    SslRequest,
    /// The client asks for GSSAPI encryption; answer a single `G` or `N` byte.
    GssEncRequest,
    /// The client asks to cancel the query running on another connection.
    CancelRequest { pid: i32, secret: i32 },
    /// A protocol 3.x StartupMessage and its parameters, in wire order. A
    /// minor version above 0 is accepted here; the server then answers with
    /// NegotiateProtocolVersion and speaks 3.0.
    Startup {
        version: i32,
        params: Vec<(String, String)>,
    },
}

impl StartupMessage {
    /// The minor protocol version a StartupMessage asked for (`None` for
    /// other packet kinds).
    pub fn minor_version(&self) -> Option<i32> {
        match self {
            Self::Startup { version, .. } => Some(version & 0xffff),
            _ => None,
        }
    }

    /// The value of the startup parameter `name` (e.g. `user`, `database`),
    /// or `None` for other packet kinds.
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            Self::Startup { params, .. } => params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

// The cancel secret lets anyone cancel the session's queries, so it is kept out
// of logs.
impl fmt::Debug for StartupMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SslRequest => f.write_str("SslRequest"),
            Self::GssEncRequest => f.write_str("GssEncRequest"),
            Self::CancelRequest { pid, .. } => f
                .debug_struct("CancelRequest")
                .field("pid", pid)
                .field("secret", &"<redacted>")
                .finish(),
            Self::Startup { version, params } => f
                .debug_struct("Startup")
                .field("version", version)
                .field("params", params)
                .finish(),
        }
    }
}

/// Splits and decodes the next startup-phase packet off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (the buffer is left as is).
/// A length below 8 or above `max_len` (use [`MAX_STARTUP_LEN`] to match
/// PostgreSQL) is refused from the 4-byte length alone. Once the whole packet
/// has arrived it is removed from `buf` even if it then fails to decode; any
/// error means the connection should be closed.
pub fn split_startup(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<StartupMessage>, WireError> {
    let field = match buf.as_ref() {
        [a, b, c, d, ..] => [*a, *b, *c, *d],
        _ => return Ok(None),
    };
    let len = checked_len(field, MIN_STARTUP_LEN, max_len)?;
    if buf.len() < len {
        return Ok(None);
    }
    let packet = buf.split_to(len);
    decode_startup(packet.get(4..).unwrap_or_default()).map(Some)
}

/// Decodes a startup packet body: everything after the length field.
pub fn decode_startup(body: &[u8]) -> Result<StartupMessage, WireError> {
    let mut r = Reader::new(body);
    let code = r.i32()?;
    match code {
        SSL_REQUEST_CODE => {
            r.finish()?;
            Ok(StartupMessage::SslRequest)
        }
        GSSENC_REQUEST_CODE => {
            r.finish()?;
            Ok(StartupMessage::GssEncRequest)
        }
        CANCEL_REQUEST_CODE => {
            let pid = r.i32()?;
            let secret = r.i32()?;
            r.finish()?;
            Ok(StartupMessage::CancelRequest { pid, secret })
        }
        // Any 3.x: later minors only add optional features, which the
        // server declines with NegotiateProtocolVersion.
        _ if code >> 16 == PROTOCOL_VERSION_3_0 >> 16 => {
            let mut params = Vec::new();
            loop {
                // An empty name is the list terminator.
                let name = r.cstr()?;
                if name.is_empty() {
                    break;
                }
                let value = r.cstr()?;
                params.push((name.to_owned(), value.to_owned()));
            }
            r.finish()?;
            Ok(StartupMessage::Startup {
                version: code,
                params,
            })
        }
        _ if code >> 16 == REQUEST_CODE_MAJOR => Err(WireError::UnknownRequestCode(code)),
        _ => Err(WireError::UnsupportedProtocolVersion(code)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;

    fn split(bytes: &[u8]) -> Result<Option<StartupMessage>, WireError> {
        split_startup(&mut BytesMut::from(bytes), MAX_STARTUP_LEN)
    }

    #[test]
    fn ssl_gssenc_and_cancel_requests() {
        let mut b = BytesMut::new();
        build::ssl_request(&mut b);
        build::gssenc_request(&mut b);
        build::cancel_request(&mut b, 42, -7);
        assert_eq!(
            split_startup(&mut b, 100),
            Ok(Some(StartupMessage::SslRequest))
        );
        assert_eq!(
            split_startup(&mut b, 100),
            Ok(Some(StartupMessage::GssEncRequest))
        );
        assert_eq!(
            split_startup(&mut b, 100),
            Ok(Some(StartupMessage::CancelRequest {
                pid: 42,
                secret: -7
            }))
        );
        assert!(b.is_empty());
    }

    #[test]
    fn startup_round_trip() {
        let mut b = BytesMut::new();
        build::startup_message(&mut b, [("user", "alice"), ("database", "app")]);
        b.extend_from_slice(b"next");
        let msg = split_startup(&mut b, MAX_STARTUP_LEN).unwrap().unwrap();
        assert_eq!(
            msg,
            StartupMessage::Startup {
                version: PROTOCOL_VERSION_3_0,
                params: vec![
                    ("user".into(), "alice".into()),
                    ("database".into(), "app".into())
                ],
            }
        );
        assert_eq!(msg.param("user"), Some("alice"));
        assert_eq!(msg.param("options"), None);
        assert_eq!(b.as_ref(), b"next");
    }

    #[test]
    fn startup_without_params() {
        assert_eq!(
            split(b"\0\0\0\x09\0\x03\0\0\0"),
            Ok(Some(StartupMessage::Startup {
                version: PROTOCOL_VERSION_3_0,
                params: vec![]
            }))
        );
    }

    #[test]
    fn truncated_needs_more() {
        let mut whole = BytesMut::new();
        build::startup_message(&mut whole, [("user", "bob")]);
        for n in 0..whole.len() {
            let mut b = BytesMut::from(&whole[..n]);
            assert_eq!(
                split_startup(&mut b, MAX_STARTUP_LEN),
                Ok(None),
                "prefix {n}"
            );
            assert_eq!(b.len(), n);
        }
    }

    #[test]
    fn refuses_bad_lengths() {
        assert_eq!(split(b"\0\0\0\x07\0\0\0"), Err(WireError::BadLength(7)));
        assert_eq!(split(b"\xff\xff\xff\xf0"), Err(WireError::BadLength(-16)));
        assert_eq!(
            split(b"\0\0\x27\x11"),
            Err(WireError::TooLarge {
                len: 10_001,
                max: MAX_STARTUP_LEN
            })
        );
        // An SSLRequest must be exactly 8 bytes.
        assert_eq!(
            split(b"\0\0\0\x09\x04\xd2\x16\x2f\0"),
            Err(WireError::TrailingBytes)
        );
        // A CancelRequest must be exactly 16 bytes.
        assert_eq!(
            split(b"\0\0\0\x0c\x04\xd2\x16\x2e\0\0\0\x01"),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn refuses_other_versions_and_codes() {
        assert_eq!(
            split(b"\0\0\0\x09\0\x02\0\0\0"),
            Err(WireError::UnsupportedProtocolVersion(0x0002_0000))
        );
        assert_eq!(
            split(b"\0\0\0\x09\0\x04\0\0\0"),
            Err(WireError::UnsupportedProtocolVersion(0x0004_0000))
        );
        assert_eq!(
            split(b"\0\0\0\x08\x04\xd2\x16\x31"),
            Err(WireError::UnknownRequestCode(80_877_105))
        );
    }

    #[test]
    fn later_minor_versions_and_protocol_options_decode() {
        // 3.2 with a protocol option, as libpq 18 sends with max_protocol_version=3.2.
        let msg = split(b"\0\0\0\x1e\0\x03\0\x02user\0bob\0_pq_.opt\0on\0\0")
            .unwrap()
            .unwrap();
        assert_eq!(msg.minor_version(), Some(2));
        assert_eq!(msg.param("user"), Some("bob"));
        assert_eq!(msg.param("_pq_.opt"), Some("on"));
        assert_eq!(StartupMessage::SslRequest.minor_version(), None);
    }

    #[test]
    fn refuses_malformed_params() {
        // No list terminator.
        assert_eq!(
            split(b"\0\0\0\x11\0\x03\0\0user\0bob\0"),
            Err(WireError::MissingNul)
        );
        // Name without a value.
        assert_eq!(
            split(b"\0\0\0\x0e\0\x03\0\0user\0\0"),
            Err(WireError::MissingNul)
        );
        // Bytes after the terminator.
        assert_eq!(
            split(b"\0\0\0\x0a\0\x03\0\0\0x"),
            Err(WireError::TrailingBytes)
        );
        // Invalid UTF-8 is an error, not a panic or a lossy copy.
        assert_eq!(
            split(b"\0\0\0\x10\0\x03\0\0user\0\xff\0\0"),
            Err(WireError::InvalidUtf8)
        );
    }

    #[test]
    fn debug_redacts_cancel_secret() {
        let msg = StartupMessage::CancelRequest {
            pid: 1,
            secret: 123_456,
        };
        assert!(!format!("{msg:?}").contains("123456"));
    }
}
