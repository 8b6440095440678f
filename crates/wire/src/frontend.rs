//! Frontend (client to server) messages: tag constants and borrowed decoders.
//!
//! Each decoder takes a [`Frame::body`](crate::Frame::body) and returns a view
//! borrowing from it. Messages that carry nothing to inspect (Sync, Flush,
//! Terminate, CopyData, CopyDone) only have tag constants.

use std::borrow::Cow;
use std::fmt;

use crate::reader::Reader;
use crate::{FORMAT_BINARY, WireError};

/// Frontend message tags. Several letters mean something else coming from the
/// server; see [`crate::backend::tag`].
pub mod tag {
    pub const BIND: u8 = b'B';
    pub const CLOSE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PARSE: u8 = b'P';
    /// PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse all
    /// share this tag; which one it is follows from the authentication request.
    pub const PASSWORD: u8 = b'p';
    pub const QUERY: u8 = b'Q';
    pub const SYNC: u8 = b'S';
    pub const TERMINATE: u8 = b'X';
}

/// Describe/Close target: a prepared statement.
pub const TARGET_STATEMENT: u8 = b'S';
/// Describe/Close target: a portal.
pub const TARGET_PORTAL: u8 = b'P';

/// A simple query: one string that may hold several statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    pub sql: &'a str,
}

impl<'a> Query<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let sql = r.cstr()?;
        r.finish()?;
        Ok(Self { sql })
    }
}

/// Parse: prepares `query` as statement `name` (empty = the unnamed statement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a str,
    pub query: &'a str,
    /// Parameter type OIDs the client fixes in advance; 0 leaves one unspecified.
    pub param_types: Vec<u32>,
}

impl<'a> Parse<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let name = r.cstr()?;
        let query = r.cstr()?;
        let count = r.count16()?;
        if count.saturating_mul(4) != r.remaining() {
            return Err(WireError::Malformed("parameter type count does not match"));
        }
        let param_types = (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?;
        r.finish()?;
        Ok(Self {
            name,
            query,
            param_types,
        })
    }
}

/// Bind: creates `portal` from `statement` with parameter values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    /// Empty (all text), one code for all parameters, or one per parameter.
    pub param_formats: Vec<i16>,
    /// Parameter values; `None` is SQL NULL.
    pub params: Vec<Option<&'a [u8]>>,
    /// Same convention as `param_formats`, for result columns.
    pub result_formats: Vec<i16>,
}

impl<'a> Bind<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        let count = r.count16()?;
        let param_formats = r.i16s(count)?;
        let count = r.count16()?;
        let params = r.nullables(count)?;
        let count = r.count16()?;
        let result_formats = r.i16s(count)?;
        r.finish()?;
        if param_formats.len() > 1 && param_formats.len() != params.len() {
            return Err(WireError::Malformed(
                "parameter format count does not match",
            ));
        }
        Ok(Self {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        })
    }

    /// The format code of parameter `index`, applying the protocol's rule that
    /// no codes means text and a single code applies to every parameter.
    pub fn param_format(&self, index: usize) -> i16 {
        format_for(&self.param_formats, index)
    }

    /// Parameter `index` rendered for display (see [`render_param`]), or `None`
    /// when there is no such parameter.
    pub fn param_text(&self, index: usize) -> Option<Cow<'a, str>> {
        let value = *self.params.get(index)?;
        Some(render_param(value, self.param_format(index)))
    }

    /// Every parameter rendered for display, in order.
    pub fn params_text(&self) -> impl Iterator<Item = Cow<'a, str>> + '_ {
        (0..self.params.len()).filter_map(|i| self.param_text(i))
    }
}

fn format_for(formats: &[i16], index: usize) -> i16 {
    match formats {
        [] => crate::FORMAT_TEXT,
        [one] => *one,
        many => many.get(index).copied().unwrap_or(crate::FORMAT_TEXT),
    }
}

/// Renders a parameter value for display: `NULL` for SQL NULL, text-format
/// values as UTF-8 (invalid sequences replaced), binary-format values as `\x`
/// followed by lowercase hex, the way `bytea` prints.
pub fn render_param(value: Option<&[u8]>, format: i16) -> Cow<'_, str> {
    match value {
        None => Cow::Borrowed("NULL"),
        Some(v) if format == FORMAT_BINARY => Cow::Owned(format!("\\x{}", hex::encode(v))),
        Some(v) => String::from_utf8_lossy(v),
    }
}

/// Renders a bind parameter for people and policy, using its type when the
/// format is binary: integers, floats, booleans, text-like types and UUIDs
/// become their usual text; anything else stays `\x` hex.
pub fn render_typed_param(value: Option<&[u8]>, format: i16, type_oid: u32) -> Cow<'_, str> {
    let Some(v) = value else {
        return Cow::Borrowed("NULL");
    };
    if format != FORMAT_BINARY {
        return String::from_utf8_lossy(v);
    }
    let text = match (type_oid, v.len()) {
        (16, 1) => Some(if v[0] != 0 {
            "true".to_string()
        } else {
            "false".to_string()
        }),
        (21, 2) => Some(i16::from_be_bytes([v[0], v[1]]).to_string()),
        (23, 4) => Some(i32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string()),
        (20, 8) => {
            Some(i64::from_be_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]).to_string())
        }
        (26, 4) => Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string()),
        (700, 4) => Some(f32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string()),
        (701, 8) => {
            Some(f64::from_be_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]).to_string())
        }
        (2950, 16) => {
            let h = hex::encode(v);
            Some(format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ))
        }
        // text, varchar, bpchar, name, json, unknown: the bytes are the text.
        (25 | 1043 | 1042 | 19 | 114 | 705, _) => match std::str::from_utf8(v) {
            Ok(s) => return Cow::Borrowed(s),
            Err(_) => None,
        },
        _ => None,
    };
    Cow::Owned(text.unwrap_or_else(|| format!("\\x{}", hex::encode(v))))
}

/// Execute: runs `portal`, returning at most `max_rows` rows (0 = no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execute<'a> {
    pub portal: &'a str,
    pub max_rows: i32,
}

impl<'a> Execute<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let portal = r.cstr()?;
        let max_rows = r.i32()?;
        r.finish()?;
        Ok(Self { portal, max_rows })
    }
}

fn decode_target(body: &[u8]) -> Result<(u8, &str), WireError> {
    let mut r = Reader::new(body);
    let kind = r.u8()?;
    if kind != TARGET_STATEMENT && kind != TARGET_PORTAL {
        return Err(WireError::Malformed("target must be 'S' or 'P'"));
    }
    let name = r.cstr()?;
    r.finish()?;
    Ok((kind, name))
}

/// Describe: asks for the description of a statement (`kind` = `S`) or portal (`P`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Describe<'a> {
    pub kind: u8,
    pub name: &'a str,
}

impl<'a> Describe<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let (kind, name) = decode_target(body)?;
        Ok(Self { kind, name })
    }
}

/// Close: releases a statement (`kind` = `S`) or portal (`P`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close<'a> {
    pub kind: u8,
    pub name: &'a str,
}

impl<'a> Close<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let (kind, name) = decode_target(body)?;
        Ok(Self { kind, name })
    }
}

/// PasswordMessage: the cleartext password (or `md5...` hash), without its NUL.
/// Bytes, not text: PostgreSQL does not require passwords to be UTF-8.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PasswordMessage<'a>(pub &'a [u8]);

impl<'a> PasswordMessage<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let password = r.cbytes()?;
        r.finish()?;
        Ok(Self(password))
    }
}

// Passwords must never reach a log line.
impl fmt::Debug for PasswordMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordMessage(<redacted>)")
    }
}

/// SASLInitialResponse: the chosen mechanism and the client-first message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    pub mechanism: &'a str,
    /// `None` when the client sent length -1 (no initial response).
    pub data: Option<&'a [u8]>,
}

impl<'a> SaslInitialResponse<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let mechanism = r.cstr()?;
        let data = r.nullable()?;
        r.finish()?;
        Ok(Self { mechanism, data })
    }
}

// SCRAM messages carry proofs that allow offline guessing of the password.
impl fmt::Debug for SaslInitialResponse<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslInitialResponse")
            .field("mechanism", &self.mechanism)
            .field("data", &"<redacted>")
            .finish()
    }
}

/// SASLResponse: mechanism-specific data, the whole body.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SaslResponse<'a>(pub &'a [u8]);

impl<'a> SaslResponse<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        Ok(Self(body))
    }
}

impl fmt::Debug for SaslResponse<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SaslResponse(<redacted>)")
    }
}

/// CopyFail: the client aborts COPY FROM STDIN with a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyFail<'a> {
    pub message: &'a str,
}

impl<'a> CopyFail<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let message = r.cstr()?;
        r.finish()?;
        Ok(Self { message })
    }
}

/// FunctionCall: the legacy fast-path call of function `oid`. It bypasses SQL
/// parsing, so a gateway must look at it rather than relay it blindly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCall<'a> {
    pub oid: u32,
    pub arg_formats: Vec<i16>,
    /// Argument values; `None` is SQL NULL.
    pub args: Vec<Option<&'a [u8]>>,
    pub result_format: i16,
}

impl<'a> FunctionCall<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let oid = r.u32()?;
        let count = r.count16()?;
        let arg_formats = r.i16s(count)?;
        let count = r.count16()?;
        let args = r.nullables(count)?;
        let result_format = r.i16()?;
        r.finish()?;
        if arg_formats.len() > 1 && arg_formats.len() != args.len() {
            return Err(WireError::Malformed("argument format count does not match"));
        }
        Ok(Self {
            oid,
            arg_formats,
            args,
            result_format,
        })
    }

    /// The format code of argument `index` (same rules as [`Bind::param_format`]).
    pub fn arg_format(&self, index: usize) -> i16 {
        format_for(&self.arg_formats, index)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn typed_params_render_readably() {
        assert_eq!(
            render_typed_param(Some(&7i32.to_be_bytes()), FORMAT_BINARY, 23),
            "7"
        );
        assert_eq!(
            render_typed_param(Some(&(-2i64).to_be_bytes()), FORMAT_BINARY, 20),
            "-2"
        );
        assert_eq!(render_typed_param(Some(b"hi"), FORMAT_BINARY, 25), "hi");
        assert_eq!(render_typed_param(Some(&[1]), FORMAT_BINARY, 16), "true");
        assert_eq!(
            render_typed_param(Some(&[0, 1]), FORMAT_BINARY, 23),
            "\\x0001",
            "wrong length stays hex"
        );
        assert_eq!(
            render_typed_param(Some(&[0xde, 0xad]), FORMAT_BINARY, 17),
            "\\xdead"
        );
        assert_eq!(render_typed_param(Some(b"42"), 0, 23), "42");
        assert_eq!(render_typed_param(None, FORMAT_BINARY, 23), "NULL");
    }

    use bytes::BytesMut;

    use super::*;
    use crate::build;
    use crate::frame::split_frame;

    /// Builds with `f`, splits the single frame back out and checks its tag.
    fn frame(expected_tag: u8, f: impl FnOnce(&mut BytesMut)) -> crate::Frame {
        let mut b = BytesMut::new();
        f(&mut b);
        let frame = split_frame(&mut b, 1 << 20).unwrap().unwrap();
        assert!(b.is_empty(), "builder wrote exactly one frame");
        assert_eq!(frame.tag, expected_tag);
        frame
    }

    /// Every strict prefix of a valid body must fail cleanly.
    macro_rules! check_prefixes_fail {
        ($body:expr, $ty:ty) => {
            let body: &[u8] = $body;
            for n in 0..body.len() {
                assert!(<$ty>::decode(&body[..n]).is_err(), "prefix {n} of {body:?}");
            }
        };
    }

    #[test]
    fn query() {
        let f = frame(tag::QUERY, |b| build::query(b, "SELECT 1; SELECT 2"));
        assert_eq!(
            Query::decode(f.body()),
            Ok(Query {
                sql: "SELECT 1; SELECT 2"
            })
        );
        check_prefixes_fail!(f.body(), Query);
        assert_eq!(Query::decode(b"a\0b"), Err(WireError::TrailingBytes));
        assert_eq!(Query::decode(b"\xc3\x28\0"), Err(WireError::InvalidUtf8));
    }

    #[test]
    fn parse() {
        let f = frame(tag::PARSE, |b| {
            build::parse(b, "s1", "SELECT $1::int, $2", &[23, 0]);
        });
        let p = Parse::decode(f.body()).unwrap();
        assert_eq!(
            p,
            Parse {
                name: "s1",
                query: "SELECT $1::int, $2",
                param_types: vec![23, 0]
            }
        );
        check_prefixes_fail!(f.body(), Parse);
        // A count larger than the bytes present is refused without allocating.
        assert!(Parse::decode(b"\0q\0\x7f\xff").is_err());
        assert!(Parse::decode(b"\0q\0\xff\xff").is_err());
    }

    #[test]
    fn bind_and_param_rendering() {
        let f = frame(tag::BIND, |b| {
            build::bind(
                b,
                "p1",
                "s1",
                &[0, 1, 0],
                [Some(&b"42"[..]), Some(&[0xde, 0xad][..]), None],
                &[1],
            );
        });
        let bind = Bind::decode(f.body()).unwrap();
        assert_eq!(bind.portal, "p1");
        assert_eq!(bind.statement, "s1");
        assert_eq!(bind.param_formats, vec![0, 1, 0]);
        assert_eq!(
            bind.params,
            vec![Some(&b"42"[..]), Some(&[0xde, 0xad][..]), None]
        );
        assert_eq!(bind.result_formats, vec![1]);
        let shown: Vec<_> = bind.params_text().collect();
        assert_eq!(shown, vec!["42", "\\xdead", "NULL"]);
        assert_eq!(bind.param_text(3), None);
        check_prefixes_fail!(f.body(), Bind);
    }

    #[test]
    fn bind_format_rules() {
        let f = frame(tag::BIND, |b| {
            build::bind(b, "", "", &[1], [Some(&b"\x01"[..]), Some(&b""[..])], &[]);
        });
        let bind = Bind::decode(f.body()).unwrap();
        assert_eq!(bind.param_format(0), FORMAT_BINARY);
        assert_eq!(bind.param_format(1), FORMAT_BINARY);
        assert_eq!(bind.param_text(1).as_deref(), Some("\\x"));

        let f = frame(tag::BIND, |b| {
            build::bind(b, "", "", &[], [Some(&b"\xff"[..])], &[])
        });
        let bind = Bind::decode(f.body()).unwrap();
        assert_eq!(bind.param_format(0), crate::FORMAT_TEXT);
        assert_eq!(bind.param_text(0).as_deref(), Some("\u{fffd}"));

        // Two format codes for three parameters is a protocol violation.
        let f = frame(tag::BIND, |b| {
            build::bind(b, "", "", &[0, 0], [None, None, None], &[]);
        });
        assert!(matches!(
            Bind::decode(f.body()),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn bind_refuses_bad_value_lengths() {
        // One parameter with length -2.
        assert!(Bind::decode(b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0").is_err());
        // One parameter claiming 100 bytes with 1 present.
        assert_eq!(
            Bind::decode(b"\0\0\0\0\0\x01\0\0\0\x64x\0\0"),
            Err(WireError::Truncated)
        );
        // Negative parameter count.
        assert!(Bind::decode(b"\0\0\0\0\xff\xff").is_err());
    }

    #[test]
    fn execute() {
        let f = frame(tag::EXECUTE, |b| build::execute(b, "p1", 100));
        assert_eq!(
            Execute::decode(f.body()),
            Ok(Execute {
                portal: "p1",
                max_rows: 100
            })
        );
        check_prefixes_fail!(f.body(), Execute);
    }

    #[test]
    fn describe_and_close() {
        let f = frame(tag::DESCRIBE, |b| build::describe(b, TARGET_PORTAL, "p1"));
        assert_eq!(
            Describe::decode(f.body()),
            Ok(Describe {
                kind: b'P',
                name: "p1"
            })
        );
        check_prefixes_fail!(f.body(), Describe);
        let f = frame(tag::CLOSE, |b| build::close(b, TARGET_STATEMENT, ""));
        assert_eq!(
            Close::decode(f.body()),
            Ok(Close {
                kind: b'S',
                name: ""
            })
        );
        assert!(matches!(
            Close::decode(b"Xs\0"),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn password_message() {
        let f = frame(tag::PASSWORD, |b| build::password_message(b, b"s3cr\xffet"));
        let p = PasswordMessage::decode(f.body()).unwrap();
        assert_eq!(p.0, b"s3cr\xffet");
        assert_eq!(format!("{p:?}"), "PasswordMessage(<redacted>)");
        assert_eq!(PasswordMessage::decode(b"abc"), Err(WireError::MissingNul));
        assert_eq!(
            PasswordMessage::decode(b"a\0b\0"),
            Err(WireError::TrailingBytes)
        );
        assert_eq!(PasswordMessage::decode(b"\0").map(|p| p.0), Ok(&b""[..]));
    }

    #[test]
    fn sasl_responses() {
        let f = frame(tag::PASSWORD, |b| {
            build::sasl_initial_response(b, "SCRAM-SHA-256", b"n,,n=,r=abc");
        });
        let s = SaslInitialResponse::decode(f.body()).unwrap();
        assert_eq!(s.mechanism, "SCRAM-SHA-256");
        assert_eq!(s.data, Some(&b"n,,n=,r=abc"[..]));
        assert!(!format!("{s:?}").contains("r=abc"));
        check_prefixes_fail!(f.body(), SaslInitialResponse);
        assert_eq!(
            SaslInitialResponse::decode(b"M\0\xff\xff\xff\xff").map(|s| s.data),
            Ok(None)
        );

        let f = frame(tag::PASSWORD, |b| {
            build::sasl_response(b, b"c=biws,r=x,p=y")
        });
        assert_eq!(SaslResponse::decode(f.body()).unwrap().0, b"c=biws,r=x,p=y");
    }

    #[test]
    fn copy_fail() {
        let f = frame(tag::COPY_FAIL, |b| build::copy_fail(b, "client gave up"));
        assert_eq!(
            CopyFail::decode(f.body()),
            Ok(CopyFail {
                message: "client gave up"
            })
        );
        check_prefixes_fail!(f.body(), CopyFail);
    }

    #[test]
    fn function_call() {
        let body = b"\0\0\x04\xd2\0\x01\0\x01\0\x02\0\0\0\x02hi\xff\xff\xff\xff\0\0";
        let call = FunctionCall::decode(body).unwrap();
        assert_eq!(
            call,
            FunctionCall {
                oid: 1234,
                arg_formats: vec![1],
                args: vec![Some(&b"hi"[..]), None],
                result_format: 0,
            }
        );
        assert_eq!(call.arg_format(1), FORMAT_BINARY);
        check_prefixes_fail!(body, FunctionCall);
    }

    #[test]
    fn bodiless_messages() {
        assert_eq!(frame(tag::SYNC, build::sync).body(), b"");
        assert_eq!(frame(tag::FLUSH, build::flush).body(), b"");
        assert_eq!(frame(tag::TERMINATE, build::terminate).body(), b"");
    }
}
