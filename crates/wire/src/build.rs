//! Builders: append complete protocol messages to a `BytesMut`.
//!
//! Builders never fail and never panic. The protocol cannot carry a NUL inside
//! a string, so NUL bytes in string arguments are dropped rather than allowed
//! to cut a field short and desynchronise the peer.

use bytes::{BufMut, BytesMut};

use crate::backend::{FieldDescription, field, tag as be};
use crate::frontend::tag as fe;
use crate::startup::{
    CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, PROTOCOL_VERSION_3_0, SSL_REQUEST_CODE,
};

/// Starts a message: writes the tag and a length placeholder, returning where
/// the length goes.
fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    begin_untagged(buf)
}

fn begin_untagged(buf: &mut BytesMut) -> usize {
    let at = buf.len();
    buf.put_i32(0);
    at
}

/// Writes the length of the message whose length field sits at `at`.
fn finish(buf: &mut BytesMut, at: usize) {
    // Messages the proxy builds are bounded far below 2 GiB by the frame limit
    // on what it reads; saturating keeps this total rather than panicking.
    let len = i32::try_from(buf.len().saturating_sub(at)).unwrap_or(i32::MAX);
    patch(buf, at, &len.to_be_bytes());
}

fn patch(buf: &mut BytesMut, at: usize, value: &[u8]) {
    if let Some(slot) = buf.get_mut(at..at.saturating_add(value.len())) {
        slot.copy_from_slice(value);
    }
}

/// Writes `s` as a NUL-terminated string, dropping any NUL inside it.
fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    for part in s.split(|&b| b == 0) {
        buf.put_slice(part);
    }
    buf.put_u8(0);
}

fn put_len_i32(buf: &mut BytesMut, len: usize) {
    buf.put_i32(i32::try_from(len).unwrap_or(i32::MAX));
}

fn put_count_i16(buf: &mut BytesMut, count: usize) {
    buf.put_i16(i16::try_from(count).unwrap_or(i16::MAX));
}

fn put_nullable(buf: &mut BytesMut, value: Option<&[u8]>) {
    match value {
        None => buf.put_i32(-1),
        Some(v) => {
            put_len_i32(buf, v.len());
            buf.put_slice(v);
        }
    }
}

/// Any tagged message from a raw body.
pub fn message(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    let at = begin(buf, tag);
    buf.put_slice(body);
    finish(buf, at);
}

fn empty(buf: &mut BytesMut, tag: u8) {
    message(buf, tag, &[]);
}

// ---- Backend messages (the proxy speaking as a server) ----

/// The standard fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    /// `ERROR`, `FATAL`, `NOTICE`, ... (sent as both `S` and `V`).
    pub severity: &'a str,
    /// SQLSTATE, e.g. `42501`.
    pub code: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
}

impl<'a> ErrorFields<'a> {
    pub fn new(severity: &'a str, code: &'a str, message: &'a str) -> Self {
        Self {
            severity,
            code,
            message,
            detail: None,
            hint: None,
        }
    }

    pub fn detail(mut self, detail: &'a str) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn hint(mut self, hint: &'a str) -> Self {
        self.hint = Some(hint);
        self
    }

    /// The fields in the order PostgreSQL sends them.
    pub fn pairs(&self) -> impl Iterator<Item = (u8, &'a str)> {
        [
            Some((field::SEVERITY, self.severity)),
            Some((field::SEVERITY_NONLOCALIZED, self.severity)),
            Some((field::CODE, self.code)),
            Some((field::MESSAGE, self.message)),
            self.detail.map(|d| (field::DETAIL, d)),
            self.hint.map(|h| (field::HINT, h)),
        ]
        .into_iter()
        .flatten()
    }
}

pub fn error_response(buf: &mut BytesMut, fields: &ErrorFields<'_>) {
    error_response_fields(buf, fields.pairs());
}

pub fn notice_response(buf: &mut BytesMut, fields: &ErrorFields<'_>) {
    notice_response_fields(buf, fields.pairs());
}

/// An ErrorResponse from arbitrary (field code, value) pairs, e.g. a decoded
/// [`ErrorResponse`](crate::backend::ErrorResponse) with values rewritten.
/// Pairs with code 0 are skipped: 0 is the list terminator.
pub fn error_response_fields<'s>(
    buf: &mut BytesMut,
    fields: impl IntoIterator<Item = (u8, &'s str)>,
) {
    response_fields(buf, be::ERROR_RESPONSE, fields);
}

/// A NoticeResponse from arbitrary (field code, value) pairs.
pub fn notice_response_fields<'s>(
    buf: &mut BytesMut,
    fields: impl IntoIterator<Item = (u8, &'s str)>,
) {
    response_fields(buf, be::NOTICE_RESPONSE, fields);
}

fn response_fields<'s>(
    buf: &mut BytesMut,
    tag: u8,
    fields: impl IntoIterator<Item = (u8, &'s str)>,
) {
    let at = begin(buf, tag);
    for (code, value) in fields {
        if code != 0 {
            buf.put_u8(code);
            put_cstr(buf, value.as_bytes());
        }
    }
    buf.put_u8(0);
    finish(buf, at);
}

fn auth(buf: &mut BytesMut, code: i32, data: &[u8]) {
    let at = begin(buf, be::AUTHENTICATION);
    buf.put_i32(code);
    buf.put_slice(data);
    finish(buf, at);
}

pub fn auth_ok(buf: &mut BytesMut) {
    auth(buf, 0, &[]);
}

pub fn auth_cleartext_password(buf: &mut BytesMut) {
    auth(buf, 3, &[]);
}

pub fn auth_md5_password(buf: &mut BytesMut, salt: [u8; 4]) {
    auth(buf, 5, &salt);
}

/// AuthenticationSASL listing `mechanisms` in order of preference.
pub fn auth_sasl<'s>(buf: &mut BytesMut, mechanisms: impl IntoIterator<Item = &'s str>) {
    let at = begin(buf, be::AUTHENTICATION);
    buf.put_i32(10);
    for m in mechanisms {
        if !m.is_empty() {
            put_cstr(buf, m.as_bytes());
        }
    }
    buf.put_u8(0);
    finish(buf, at);
}

pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    auth(buf, 11, data);
}

pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    auth(buf, 12, data);
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let at = begin(buf, be::PARAMETER_STATUS);
    put_cstr(buf, name.as_bytes());
    put_cstr(buf, value.as_bytes());
    finish(buf, at);
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    let at = begin(buf, be::BACKEND_KEY_DATA);
    buf.put_i32(pid);
    buf.put_i32(secret);
    finish(buf, at);
}

/// NegotiateProtocolVersion: the protocol version the server will speak
/// (the whole number, e.g. `3 << 16` for 3.0: the documentation says "newest
/// minor version", but PostgreSQL sends, and libpq expects, the full
/// version), and the `_pq_.` options of the startup packet it does not know.
pub fn negotiate_protocol_version(buf: &mut BytesMut, version: i32, unrecognized: &[&str]) {
    let at = begin(buf, be::NEGOTIATE_PROTOCOL_VERSION);
    buf.put_i32(version);
    buf.put_i32(i32::try_from(unrecognized.len()).unwrap_or(i32::MAX));
    for option in unrecognized {
        put_cstr(buf, option.as_bytes());
    }
    finish(buf, at);
}

/// ReadyForQuery; `status` is one of the [`ReadyForQuery`](crate::backend::ReadyForQuery) constants.
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    message(buf, be::READY_FOR_QUERY, &[status]);
}

pub fn row_description(buf: &mut BytesMut, fields: &[FieldDescription<'_>]) {
    let at = begin(buf, be::ROW_DESCRIPTION);
    put_count_i16(buf, fields.len());
    for f in fields {
        put_cstr(buf, f.name.as_bytes());
        buf.put_u32(f.table_oid);
        buf.put_i16(f.column_attr);
        buf.put_u32(f.type_oid);
        buf.put_i16(f.type_len);
        buf.put_i32(f.type_modifier);
        buf.put_i16(f.format);
    }
    finish(buf, at);
}

/// DataRow from cells in column order; `None` is SQL NULL.
pub fn data_row<'c>(buf: &mut BytesMut, cells: impl IntoIterator<Item = Option<&'c [u8]>>) {
    let at = begin(buf, be::DATA_ROW);
    let count_at = buf.len();
    buf.put_i16(0);
    let mut count: usize = 0;
    for cell in cells {
        put_nullable(buf, cell);
        count = count.saturating_add(1);
    }
    patch(
        buf,
        count_at,
        &i16::try_from(count).unwrap_or(i16::MAX).to_be_bytes(),
    );
    finish(buf, at);
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let at = begin(buf, be::COMMAND_COMPLETE);
    put_cstr(buf, tag.as_bytes());
    finish(buf, at);
}

pub fn empty_query_response(buf: &mut BytesMut) {
    empty(buf, be::EMPTY_QUERY_RESPONSE);
}

// ---- Frontend messages (the proxy speaking as a client) ----

/// A protocol 3.0 StartupMessage with `params` (e.g. `user`, `database`).
pub fn startup_message<'s>(
    buf: &mut BytesMut,
    params: impl IntoIterator<Item = (&'s str, &'s str)>,
) {
    let at = begin_untagged(buf);
    buf.put_i32(PROTOCOL_VERSION_3_0);
    for (name, value) in params {
        // An empty name would end the list early.
        if !name.is_empty() {
            put_cstr(buf, name.as_bytes());
            put_cstr(buf, value.as_bytes());
        }
    }
    buf.put_u8(0);
    finish(buf, at);
}

fn request(buf: &mut BytesMut, code: i32) {
    buf.put_i32(8);
    buf.put_i32(code);
}

pub fn ssl_request(buf: &mut BytesMut) {
    request(buf, SSL_REQUEST_CODE);
}

pub fn gssenc_request(buf: &mut BytesMut) {
    request(buf, GSSENC_REQUEST_CODE);
}

pub fn cancel_request(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_i32(16);
    buf.put_i32(CANCEL_REQUEST_CODE);
    buf.put_i32(pid);
    buf.put_i32(secret);
}

/// PasswordMessage carrying a cleartext password or an `md5...` hash.
pub fn password_message(buf: &mut BytesMut, password: &[u8]) {
    let at = begin(buf, fe::PASSWORD);
    put_cstr(buf, password);
    finish(buf, at);
}

pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let at = begin(buf, fe::PASSWORD);
    put_cstr(buf, mechanism.as_bytes());
    put_nullable(buf, Some(data));
    finish(buf, at);
}

pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
    message(buf, fe::PASSWORD, data);
}

pub fn query(buf: &mut BytesMut, sql: &str) {
    let at = begin(buf, fe::QUERY);
    put_cstr(buf, sql.as_bytes());
    finish(buf, at);
}

pub fn parse(buf: &mut BytesMut, name: &str, query: &str, param_types: &[u32]) {
    let at = begin(buf, fe::PARSE);
    put_cstr(buf, name.as_bytes());
    put_cstr(buf, query.as_bytes());
    put_count_i16(buf, param_types.len());
    for t in param_types {
        buf.put_u32(*t);
    }
    finish(buf, at);
}

pub fn bind<'v>(
    buf: &mut BytesMut,
    portal: &str,
    statement: &str,
    param_formats: &[i16],
    params: impl IntoIterator<Item = Option<&'v [u8]>>,
    result_formats: &[i16],
) {
    let at = begin(buf, fe::BIND);
    put_cstr(buf, portal.as_bytes());
    put_cstr(buf, statement.as_bytes());
    put_count_i16(buf, param_formats.len());
    for f in param_formats {
        buf.put_i16(*f);
    }
    let count_at = buf.len();
    buf.put_i16(0);
    let mut count: usize = 0;
    for p in params {
        put_nullable(buf, p);
        count = count.saturating_add(1);
    }
    patch(
        buf,
        count_at,
        &i16::try_from(count).unwrap_or(i16::MAX).to_be_bytes(),
    );
    put_count_i16(buf, result_formats.len());
    for f in result_formats {
        buf.put_i16(*f);
    }
    finish(buf, at);
}

/// Describe a statement (`kind` = `S`) or portal (`P`).
pub fn describe(buf: &mut BytesMut, kind: u8, name: &str) {
    let at = begin(buf, fe::DESCRIBE);
    buf.put_u8(kind);
    put_cstr(buf, name.as_bytes());
    finish(buf, at);
}

pub fn execute(buf: &mut BytesMut, portal: &str, max_rows: i32) {
    let at = begin(buf, fe::EXECUTE);
    put_cstr(buf, portal.as_bytes());
    buf.put_i32(max_rows);
    finish(buf, at);
}

/// Close a statement (`kind` = `S`) or portal (`P`).
pub fn close(buf: &mut BytesMut, kind: u8, name: &str) {
    let at = begin(buf, fe::CLOSE);
    buf.put_u8(kind);
    put_cstr(buf, name.as_bytes());
    finish(buf, at);
}

pub fn copy_fail(buf: &mut BytesMut, message: &str) {
    let at = begin(buf, fe::COPY_FAIL);
    put_cstr(buf, message.as_bytes());
    finish(buf, at);
}

pub fn sync(buf: &mut BytesMut) {
    empty(buf, fe::SYNC);
}

pub fn flush(buf: &mut BytesMut) {
    empty(buf, fe::FLUSH);
}

pub fn terminate(buf: &mut BytesMut) {
    empty(buf, fe::TERMINATE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ErrorResponse;
    use crate::frame::split_frame;
    use crate::frontend::Query;

    #[test]
    fn exact_bytes_of_simple_messages() {
        let mut b = BytesMut::new();
        auth_ok(&mut b);
        assert_eq!(b.as_ref(), b"R\0\0\0\x08\0\0\0\0");
        b.clear();
        ready_for_query(&mut b, b'I');
        assert_eq!(b.as_ref(), b"Z\0\0\0\x05I");
        b.clear();
        query(&mut b, "SELECT 1");
        assert_eq!(b.as_ref(), b"Q\0\0\0\x0dSELECT 1\0");
        b.clear();
        ssl_request(&mut b);
        assert_eq!(b.as_ref(), b"\0\0\0\x08\x04\xd2\x16\x2f");
        b.clear();
        cancel_request(&mut b, 1, 2);
        assert_eq!(
            b.as_ref(),
            b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\0\x01\0\0\0\x02"
        );
        b.clear();
        data_row(&mut b, [Some(&b"ab"[..]), None]);
        assert_eq!(b.as_ref(), b"D\0\0\0\x10\0\x02\0\0\0\x02ab\xff\xff\xff\xff");
        b.clear();
        negotiate_protocol_version(&mut b, 3 << 16, &["_pq_.x"]);
        assert_eq!(b.as_ref(), b"v\0\0\0\x13\0\x03\0\0\0\0\0\x01_pq_.x\0");
    }

    #[test]
    fn builders_append_after_existing_bytes() {
        let mut b = BytesMut::from(&b"junk"[..]);
        sync(&mut b);
        command_complete(&mut b, "SELECT 1");
        assert_eq!(&b[..4], b"junk");
        let _ = b.split_to(4);
        assert_eq!(split_frame(&mut b, 64).unwrap().unwrap().tag, b'S');
        assert_eq!(
            split_frame(&mut b, 64).unwrap().unwrap().body(),
            b"SELECT 1\0"
        );
    }

    #[test]
    fn interior_nul_is_dropped_not_framed() {
        let mut b = BytesMut::new();
        query(&mut b, "SELECT\0 1");
        let f = split_frame(&mut b, 64).unwrap().unwrap();
        assert_eq!(Query::decode(f.body()).unwrap().sql, "SELECT 1");

        error_response_fields(&mut b, [(b'M', "a\0b"), (0, "skipped"), (b'C', "XX000")]);
        let f = split_frame(&mut b, 64).unwrap().unwrap();
        let e = ErrorResponse::decode(f.body()).unwrap();
        assert_eq!(e.fields, vec![(b'M', "ab"), (b'C', "XX000")]);
    }
}
