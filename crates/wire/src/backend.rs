//! Backend (server to client) messages: tag constants and borrowed decoders.
//!
//! Each decoder takes a [`Frame::body`](crate::Frame::body) and returns a view
//! borrowing from it. DataRow is validated once and then iterated without
//! allocating, because it is the hottest message a masking proxy decodes.

use std::fmt;

use crate::WireError;
use crate::reader::Reader;

/// Backend message tags. Several letters mean something else coming from the
/// client; see [`crate::frontend::tag`].
pub mod tag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const DATA_ROW: u8 = b'D';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const NO_DATA: u8 = b'n';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
}

/// ErrorResponse/NoticeResponse field codes.
pub mod field {
    /// Localized severity (`ERROR`, `FATAL`, `NOTICE`, ...).
    pub const SEVERITY: u8 = b'S';
    /// Severity that is never translated (PostgreSQL 9.6+).
    pub const SEVERITY_NONLOCALIZED: u8 = b'V';
    /// SQLSTATE code.
    pub const CODE: u8 = b'C';
    pub const MESSAGE: u8 = b'M';
    pub const DETAIL: u8 = b'D';
    pub const HINT: u8 = b'H';
    pub const POSITION: u8 = b'P';
    pub const INTERNAL_POSITION: u8 = b'p';
    pub const INTERNAL_QUERY: u8 = b'q';
    pub const WHERE: u8 = b'W';
    pub const SCHEMA: u8 = b's';
    pub const TABLE: u8 = b't';
    pub const COLUMN: u8 = b'c';
    pub const DATA_TYPE: u8 = b'd';
    pub const CONSTRAINT: u8 = b'n';
    pub const FILE: u8 = b'F';
    pub const LINE: u8 = b'L';
    pub const ROUTINE: u8 = b'R';
}

/// An authentication request from the server (tag `R`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication<'a> {
    /// 0: authentication succeeded.
    Ok,
    /// 3: send the password in clear.
    CleartextPassword,
    /// 5: send `md5` + hex(md5(hex(md5(password + user)) + salt)).
    Md5Password { salt: [u8; 4] },
    /// 10: start SASL with one of these mechanisms.
    Sasl { mechanisms: Vec<&'a str> },
    /// 11: a SASL challenge (SCRAM server-first-message).
    SaslContinue(&'a [u8]),
    /// 12: the SASL outcome (SCRAM server-final-message).
    SaslFinal(&'a [u8]),
    /// Any other method (Kerberos, GSSAPI, SSPI, ...), which this codec does not speak.
    Other(i32),
}

impl<'a> Authentication<'a> {
    pub const OK: i32 = 0;
    pub const CLEARTEXT_PASSWORD: i32 = 3;
    pub const MD5_PASSWORD: i32 = 5;
    pub const SASL: i32 = 10;
    pub const SASL_CONTINUE: i32 = 11;
    pub const SASL_FINAL: i32 = 12;

    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let auth = match r.i32()? {
            Self::OK => Self::Ok,
            Self::CLEARTEXT_PASSWORD => Self::CleartextPassword,
            Self::MD5_PASSWORD => Self::Md5Password { salt: r.array4()? },
            Self::SASL => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = r.cstr()?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m);
                }
                if mechanisms.is_empty() {
                    return Err(WireError::Malformed("no SASL mechanisms offered"));
                }
                Self::Sasl { mechanisms }
            }
            Self::SASL_CONTINUE => Self::SaslContinue(r.rest()),
            Self::SASL_FINAL => Self::SaslFinal(r.rest()),
            // Other methods carry method-specific data we do not interpret.
            other => {
                r.rest();
                Self::Other(other)
            }
        };
        r.finish()?;
        Ok(auth)
    }
}

/// ParameterStatus: the server reports a run-time parameter (e.g. `server_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterStatus<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

impl<'a> ParameterStatus<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let name = r.cstr()?;
        let value = r.cstr()?;
        r.finish()?;
        Ok(Self { name, value })
    }
}

/// BackendKeyData: the key a client needs to cancel this session's queries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BackendKeyData {
    pub pid: i32,
    pub secret: i32,
}

impl BackendKeyData {
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let pid = r.i32()?;
        let secret = r.i32()?;
        r.finish()?;
        Ok(Self { pid, secret })
    }
}

// The secret lets anyone cancel the session's queries, so it stays out of logs.
impl fmt::Debug for BackendKeyData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendKeyData")
            .field("pid", &self.pid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// ReadyForQuery: the server awaits a new query; holds the transaction status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyForQuery(pub u8);

impl ReadyForQuery {
    /// Not in a transaction block.
    pub const IDLE: u8 = b'I';
    /// In a transaction block.
    pub const IN_TRANSACTION: u8 = b'T';
    /// In a failed transaction block; queries are refused until it ends.
    pub const FAILED: u8 = b'E';

    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let status = r.u8()?;
        r.finish()?;
        match status {
            Self::IDLE | Self::IN_TRANSACTION | Self::FAILED => Ok(Self(status)),
            _ => Err(WireError::Malformed("unknown transaction status")),
        }
    }
}

/// One column of a RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDescription<'a> {
    pub name: &'a str,
    /// OID of the source table, or 0 when the column is not a plain table column.
    pub table_oid: u32,
    /// Attribute number in the source table, or 0.
    pub column_attr: i16,
    pub type_oid: u32,
    /// `pg_type.typlen`; negative for variable-width types.
    pub type_len: i16,
    pub type_modifier: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// Fixed bytes per field after its name: the smallest field is 1 + 18 bytes.
const FIELD_FIXED_LEN: usize = 18;

/// RowDescription: the columns of the rows that follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowDescription<'a> {
    pub fields: Vec<FieldDescription<'a>>,
}

impl<'a> RowDescription<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let count = r.count16()?;
        // Bound the allocation by what the body can actually hold.
        let mut fields = Vec::with_capacity(count.min(r.remaining() / (FIELD_FIXED_LEN + 1)));
        for _ in 0..count {
            fields.push(FieldDescription {
                name: r.cstr()?,
                table_oid: r.u32()?,
                column_attr: r.i16()?,
                type_oid: r.u32()?,
                type_len: r.i16()?,
                type_modifier: r.i32()?,
                format: r.i16()?,
            });
        }
        r.finish()?;
        Ok(Self { fields })
    }
}

/// DataRow: one result row. Decoding validates every cell length once, so
/// iteration afterwards is infallible and allocation-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRow<'a> {
    columns: usize,
    cells: &'a [u8],
}

impl<'a> DataRow<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let columns = r.count16()?;
        let cells = r.peek();
        for _ in 0..columns {
            r.nullable()?;
        }
        r.finish()?;
        Ok(Self { columns, cells })
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.columns
    }

    pub fn is_empty(&self) -> bool {
        self.columns == 0
    }

    /// The cells in column order; `None` is SQL NULL.
    pub fn iter(&self) -> DataRowIter<'a> {
        DataRowIter {
            r: Reader::new(self.cells),
            left: self.columns,
        }
    }
}

impl<'a> IntoIterator for &DataRow<'a> {
    type Item = Option<&'a [u8]>;
    type IntoIter = DataRowIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over the cells of a [`DataRow`].
pub struct DataRowIter<'a> {
    r: Reader<'a>,
    left: usize,
}

impl<'a> Iterator for DataRowIter<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Cannot fail: `DataRow::decode` validated every cell. Ending early
        // keeps the iterator total anyway.
        match self.r.nullable() {
            Ok(cell) => Some(cell),
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for DataRowIter<'_> {}

/// CommandComplete: the command tag, e.g. `SELECT 3` or `INSERT 0 5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandComplete<'a> {
    pub tag: &'a str,
}

impl<'a> CommandComplete<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let tag = r.cstr()?;
        r.finish()?;
        Ok(Self { tag })
    }

    /// Rows the command returned or affected; see [`rows_affected`].
    pub fn rows(&self) -> Option<u64> {
        rows_affected(self.tag)
    }
}

/// The row count in a command tag, for the commands that report one:
/// `SELECT n`, `INSERT oid n`, `UPDATE n`, `DELETE n`, `MERGE n`, `FETCH n`,
/// `MOVE n`, `COPY n`. Other tags (`BEGIN`, `CREATE TABLE`) give `None`.
pub fn rows_affected(tag: &str) -> Option<u64> {
    let mut words = tag.split(' ');
    let count = match words.next()? {
        // `INSERT oid rows`: the oid is always 0 since PostgreSQL 12.
        "INSERT" => words.nth(1)?,
        "SELECT" | "UPDATE" | "DELETE" | "MERGE" | "FETCH" | "MOVE" | "COPY" => words.next()?,
        _ => return None,
    };
    if words.next().is_some() {
        return None;
    }
    count.parse().ok()
}

/// ErrorResponse or NoticeResponse: typed fields in wire order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse<'a> {
    /// (field code, value) pairs; see [`field`] for the codes.
    pub fields: Vec<(u8, &'a str)>,
}

/// NoticeResponse has the same shape as ErrorResponse.
pub type NoticeResponse<'a> = ErrorResponse<'a>;

impl<'a> ErrorResponse<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let mut fields = Vec::new();
        loop {
            let code = r.u8()?;
            // A zero code terminates the list.
            if code == 0 {
                break;
            }
            fields.push((code, r.cstr()?));
        }
        r.finish()?;
        Ok(Self { fields })
    }

    /// The first value of field `code`.
    pub fn field(&self, code: u8) -> Option<&'a str> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| *v)
    }

    /// The untranslated severity when present, else the localized one.
    pub fn severity(&self) -> Option<&'a str> {
        self.field(field::SEVERITY_NONLOCALIZED)
            .or_else(|| self.field(field::SEVERITY))
    }

    /// The SQLSTATE code.
    pub fn code(&self) -> Option<&'a str> {
        self.field(field::CODE)
    }

    pub fn message(&self) -> Option<&'a str> {
        self.field(field::MESSAGE)
    }

    pub fn detail(&self) -> Option<&'a str> {
        self.field(field::DETAIL)
    }

    pub fn hint(&self) -> Option<&'a str> {
        self.field(field::HINT)
    }
}

/// The raw bytes of the first field `code` of an ErrorResponse or
/// NoticeResponse body, without requiring UTF-8: the server writes messages
/// in the client's encoding (a LATIN1 client gets LATIN1 text), while the
/// SQLSTATE is always ASCII. `None` if absent or the body is malformed.
pub fn raw_error_field(body: &[u8], code: u8) -> Option<&[u8]> {
    let mut rest = body;
    loop {
        let (&c, tail) = rest.split_first()?;
        if c == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if c == code {
            return Some(&tail[..end]);
        }
        rest = &tail[end + 1..];
    }
}

/// CopyInResponse, CopyOutResponse and CopyBothResponse share this shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResponse {
    /// 0 textual, 1 binary.
    pub format: i8,
    pub column_formats: Vec<i16>,
}

pub type CopyInResponse = CopyResponse;
pub type CopyOutResponse = CopyResponse;
pub type CopyBothResponse = CopyResponse;

impl CopyResponse {
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let format = r.i8()?;
        let count = r.count16()?;
        let column_formats = r.i16s(count)?;
        r.finish()?;
        Ok(Self {
            format,
            column_formats,
        })
    }
}

/// NotificationResponse: a NOTIFY delivered to this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotificationResponse<'a> {
    pub pid: i32,
    pub channel: &'a str,
    pub payload: &'a str,
}

impl<'a> NotificationResponse<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let pid = r.i32()?;
        let channel = r.cstr()?;
        let payload = r.cstr()?;
        r.finish()?;
        Ok(Self {
            pid,
            channel,
            payload,
        })
    }
}

/// ParameterDescription: the parameter type OIDs of a described statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterDescription {
    pub types: Vec<u32>,
}

impl ParameterDescription {
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let n = r.i16()?;
        if n < 0 || (n as usize) * 4 != r.remaining() {
            return Err(WireError::Malformed("parameter description count"));
        }
        let types = (0..n).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
        r.finish()?;
        Ok(Self { types })
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::build::{self, ErrorFields};
    use crate::frame::split_frame;

    #[test]
    fn parameter_description() {
        let mut body = vec![0, 2];
        body.extend_from_slice(&23u32.to_be_bytes());
        body.extend_from_slice(&25u32.to_be_bytes());
        assert_eq!(
            ParameterDescription::decode(&body).unwrap().types,
            vec![23, 25]
        );
        assert!(ParameterDescription::decode(&[0, 2, 0, 0]).is_err());
        assert!(ParameterDescription::decode(&[0xff, 0xff]).is_err());
    }

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
    fn authentication_requests() {
        type Case = (fn(&mut BytesMut), Authentication<'static>);
        let cases: Vec<Case> = vec![
            (build::auth_ok, Authentication::Ok),
            (
                build::auth_cleartext_password,
                Authentication::CleartextPassword,
            ),
            (
                |b| build::auth_md5_password(b, [1, 2, 3, 4]),
                Authentication::Md5Password { salt: [1, 2, 3, 4] },
            ),
            (
                |b| build::auth_sasl(b, ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]),
                Authentication::Sasl {
                    mechanisms: vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"],
                },
            ),
            (
                |b| build::auth_sasl_continue(b, b"r=abc,s=QSXCR+Q6sek8bf92,i=4096"),
                Authentication::SaslContinue(b"r=abc,s=QSXCR+Q6sek8bf92,i=4096"),
            ),
            (
                |b| build::auth_sasl_final(b, b"v=xyz"),
                Authentication::SaslFinal(b"v=xyz"),
            ),
        ];
        for (build, expected) in cases {
            let f = frame(tag::AUTHENTICATION, build);
            assert_eq!(Authentication::decode(f.body()), Ok(expected));
        }
        // GSSAPI (7) and SSPI (9) are reported, not decoded.
        assert_eq!(
            Authentication::decode(b"\0\0\0\x07"),
            Ok(Authentication::Other(7))
        );
        assert_eq!(
            Authentication::decode(b"\0\0\0\0x"),
            Err(WireError::TrailingBytes)
        );
        assert_eq!(
            Authentication::decode(b"\0\0\0\x05\x01\x02"),
            Err(WireError::Truncated)
        );
        assert!(Authentication::decode(b"\0\0\0\x0a\0").is_err());
        assert!(Authentication::decode(b"\0\0\0\x0aSCRAM-SHA-256\0").is_err());
        assert!(Authentication::decode(b"\0\0").is_err());
    }

    #[test]
    fn parameter_status() {
        let f = frame(tag::PARAMETER_STATUS, |b| {
            build::parameter_status(b, "server_version", "17.2");
        });
        assert_eq!(
            ParameterStatus::decode(f.body()),
            Ok(ParameterStatus {
                name: "server_version",
                value: "17.2"
            })
        );
        check_prefixes_fail!(f.body(), ParameterStatus);
    }

    #[test]
    fn backend_key_data() {
        let f = frame(tag::BACKEND_KEY_DATA, |b| {
            build::backend_key_data(b, 77, 987_654)
        });
        let k = BackendKeyData::decode(f.body()).unwrap();
        assert_eq!((k.pid, k.secret), (77, 987_654));
        assert!(!format!("{k:?}").contains("987654"));
        check_prefixes_fail!(f.body(), BackendKeyData);
    }

    #[test]
    fn ready_for_query() {
        for status in [b'I', b'T', b'E'] {
            let f = frame(tag::READY_FOR_QUERY, |b| build::ready_for_query(b, status));
            assert_eq!(ReadyForQuery::decode(f.body()), Ok(ReadyForQuery(status)));
        }
        assert!(ReadyForQuery::decode(b"X").is_err());
        assert!(ReadyForQuery::decode(b"").is_err());
        assert!(ReadyForQuery::decode(b"II").is_err());
    }

    #[test]
    fn row_description() {
        let fields = [
            FieldDescription {
                name: "id",
                table_oid: 16384,
                column_attr: 1,
                type_oid: 23,
                type_len: 4,
                type_modifier: -1,
                format: 0,
            },
            FieldDescription {
                name: "email",
                table_oid: 16384,
                column_attr: 2,
                type_oid: 25,
                type_len: -1,
                type_modifier: -1,
                format: 1,
            },
        ];
        let f = frame(tag::ROW_DESCRIPTION, |b| build::row_description(b, &fields));
        let rd = RowDescription::decode(f.body()).unwrap();
        assert_eq!(rd.fields, fields);
        check_prefixes_fail!(f.body(), RowDescription);
        // A huge count with no fields behind it fails without a huge allocation.
        assert_eq!(
            RowDescription::decode(b"\x7f\xff"),
            Err(WireError::MissingNul)
        );
    }

    #[test]
    fn data_row() {
        let cells = [
            Some(&b"1"[..]),
            None,
            Some(&b""[..]),
            Some(&b"alice@example.com"[..]),
        ];
        let f = frame(tag::DATA_ROW, |b| build::data_row(b, cells));
        let row = DataRow::decode(f.body()).unwrap();
        assert_eq!(row.len(), 4);
        assert!(!row.is_empty());
        assert_eq!(row.iter().len(), 4);
        assert_eq!(row.iter().collect::<Vec<_>>(), cells);
        assert_eq!((&row).into_iter().nth(3), Some(cells[3]));
        check_prefixes_fail!(f.body(), DataRow);

        let f = frame(tag::DATA_ROW, |b| build::data_row(b, []));
        let row = DataRow::decode(f.body()).unwrap();
        assert!(row.is_empty());
        assert_eq!(row.iter().next(), None);
    }

    #[test]
    fn data_row_refuses_bad_cells() {
        // Length -2.
        assert!(DataRow::decode(b"\0\x01\xff\xff\xff\xfe").is_err());
        // Cell longer than the body.
        assert_eq!(
            DataRow::decode(b"\0\x01\0\0\0\x05abc"),
            Err(WireError::Truncated)
        );
        // Extra bytes after the announced columns.
        assert_eq!(
            DataRow::decode(b"\0\x01\0\0\0\x01ab"),
            Err(WireError::TrailingBytes)
        );
        // Negative column count.
        assert!(DataRow::decode(b"\xff\xff").is_err());
    }

    #[test]
    fn command_complete_and_row_counts() {
        let f = frame(tag::COMMAND_COMPLETE, |b| {
            build::command_complete(b, "INSERT 0 5")
        });
        let cc = CommandComplete::decode(f.body()).unwrap();
        assert_eq!(cc.tag, "INSERT 0 5");
        assert_eq!(cc.rows(), Some(5));
        check_prefixes_fail!(f.body(), CommandComplete);

        let cases = [
            ("SELECT 3", Some(3)),
            ("INSERT 0 5", Some(5)),
            ("COPY 10", Some(10)),
            ("UPDATE 0", Some(0)),
            ("DELETE 18446744073709551615", Some(u64::MAX)),
            ("MERGE 2", Some(2)),
            ("FETCH 7", Some(7)),
            ("MOVE 1", Some(1)),
            ("BEGIN", None),
            ("CREATE TABLE", None),
            ("SELECT", None),
            ("INSERT 5", None),
            ("SELECT x", None),
            ("SELECT -1", None),
            ("", None),
        ];
        for (tag, expected) in cases {
            assert_eq!(rows_affected(tag), expected, "{tag}");
        }
    }

    #[test]
    fn raw_error_fields_need_no_utf8() {
        // LATIN1 »airlock_denied« (0xBB ... 0xAB), as a German server writes
        // it for a LATIN1 client.
        let body = b"SERROR\0C42601\0MSyntaxfehler bei \xbbairlock_denied\xab\0\0";
        assert!(ErrorResponse::decode(body).is_err(), "not UTF-8");
        assert_eq!(raw_error_field(body, field::CODE), Some(&b"42601"[..]));
        assert_eq!(
            raw_error_field(body, field::MESSAGE),
            Some(&b"Syntaxfehler bei \xbbairlock_denied\xab"[..])
        );
        assert_eq!(raw_error_field(body, field::DETAIL), None);
        assert_eq!(raw_error_field(b"C42601", field::CODE), None, "no NUL");
        assert_eq!(raw_error_field(b"", field::CODE), None);
    }

    #[test]
    fn error_and_notice_responses() {
        let fields = ErrorFields::new("ERROR", "42501", "permission denied")
            .detail("needs approval")
            .hint("ask a reviewer");
        let f = frame(tag::ERROR_RESPONSE, |b| build::error_response(b, &fields));
        let e = ErrorResponse::decode(f.body()).unwrap();
        assert_eq!(
            e.fields,
            vec![
                (b'S', "ERROR"),
                (b'V', "ERROR"),
                (b'C', "42501"),
                (b'M', "permission denied"),
                (b'D', "needs approval"),
                (b'H', "ask a reviewer"),
            ]
        );
        assert_eq!(e.severity(), Some("ERROR"));
        assert_eq!(e.code(), Some("42501"));
        assert_eq!(e.message(), Some("permission denied"));
        assert_eq!(e.detail(), Some("needs approval"));
        assert_eq!(e.hint(), Some("ask a reviewer"));
        assert_eq!(e.field(field::TABLE), None);
        check_prefixes_fail!(f.body(), ErrorResponse);

        let f = frame(tag::NOTICE_RESPONSE, |b| {
            build::notice_response(b, &ErrorFields::new("NOTICE", "00000", "held for review"));
        });
        let n = NoticeResponse::decode(f.body()).unwrap();
        assert_eq!(n.detail(), None);
        assert_eq!(n.message(), Some("held for review"));

        // Only the localized severity: fall back to it.
        let e = ErrorResponse::decode(b"SFEHLER\0\0").unwrap();
        assert_eq!(e.severity(), Some("FEHLER"));
        assert_eq!(ErrorResponse::decode(b"\0x"), Err(WireError::TrailingBytes));
    }

    #[test]
    fn error_response_rewrite_round_trip() {
        let original = frame(tag::ERROR_RESPONSE, |b| {
            build::error_response(
                b,
                &ErrorFields::new("ERROR", "42P01", "relation \"t\" does not exist"),
            );
        });
        let decoded = ErrorResponse::decode(original.body()).unwrap();
        let rewritten: Vec<(u8, &str)> = decoded
            .fields
            .iter()
            .map(|&(c, v)| {
                if c == field::MESSAGE {
                    (c, "hidden")
                } else {
                    (c, v)
                }
            })
            .collect();
        let f = frame(tag::ERROR_RESPONSE, |b| {
            build::error_response_fields(b, rewritten.iter().copied());
        });
        let again = ErrorResponse::decode(f.body()).unwrap();
        assert_eq!(again.message(), Some("hidden"));
        assert_eq!(again.code(), Some("42P01"));

        // Unchanged fields rebuild byte for byte.
        let f = frame(tag::ERROR_RESPONSE, |b| {
            build::error_response_fields(b, decoded.fields.iter().copied());
        });
        assert_eq!(f.bytes, original.bytes);
    }

    #[test]
    fn copy_responses() {
        for t in [
            tag::COPY_IN_RESPONSE,
            tag::COPY_OUT_RESPONSE,
            tag::COPY_BOTH_RESPONSE,
        ] {
            let f = frame(t, |b| build::message(b, t, b"\x01\0\x02\0\x01\0\x01"));
            assert_eq!(
                CopyResponse::decode(f.body()),
                Ok(CopyResponse {
                    format: 1,
                    column_formats: vec![1, 1]
                })
            );
            check_prefixes_fail!(f.body(), CopyResponse);
        }
        assert!(CopyResponse::decode(b"\0\x7f\xff").is_err());
    }

    #[test]
    fn notification_response() {
        let body = b"\0\0\x01\x00jobs\0done\0";
        assert_eq!(
            NotificationResponse::decode(body),
            Ok(NotificationResponse {
                pid: 256,
                channel: "jobs",
                payload: "done"
            })
        );
        check_prefixes_fail!(body, NotificationResponse);
    }

    #[test]
    fn empty_query_response() {
        assert_eq!(
            frame(tag::EMPTY_QUERY_RESPONSE, build::empty_query_response).body(),
            b""
        );
    }
}
