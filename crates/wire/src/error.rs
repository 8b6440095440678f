//! `WireError`: every way a peer's bytes can fail to be a valid protocol message.
//!
//! Messages never quote peer bytes, so an error can be shown to a client as is.

/// A framing or decoding failure. The connection that produced it should be
/// closed: the byte stream can no longer be trusted to be in sync.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The length field announces more bytes than the caller allows.
    #[error("message length {len} exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The length field is negative or smaller than the fixed header it must cover.
    #[error("invalid message length {0}")]
    BadLength(i64),
    /// The startup packet asks for a protocol version other than 3.0.
    #[error("unsupported frontend protocol {}.{}: only 3.0 is supported", .0 >> 16, .0 & 0xffff)]
    UnsupportedProtocolVersion(i32),
    /// A startup packet carries a request code this codec does not know.
    #[error("unknown startup request code {0}")]
    UnknownRequestCode(i32),
    /// The message body ended before a field it must contain.
    #[error("message truncated")]
    Truncated,
    /// A string field has no NUL terminator inside the message.
    #[error("string field is not NUL-terminated")]
    MissingNul,
    /// A string field that must be text is not valid UTF-8.
    #[error("string field is not valid UTF-8")]
    InvalidUtf8,
    /// Bytes remain after the last field of a fixed-shape message.
    #[error("unexpected trailing bytes in message")]
    TrailingBytes,
    /// A field holds a value the protocol does not allow.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}
