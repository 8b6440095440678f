//! PostgreSQL masking rewrites: pure functions over raw backend frames
//! (RowDescription, DataRow, CopyData, ErrorResponse/NoticeResponse).
//!
//! Every function takes a whole frame (tag, length, body), checks every
//! length against the bytes actually present, and writes a rewritten frame
//! only when something changed, so unchanged frames are forwarded as the
//! original `Bytes` without a copy. The formats are parsed here directly
//! (a handful of fields) to keep masking independent of the codec crate.
//!
//! COPY TO STDOUT: PostgreSQL's CopyOutResponse carries no column names, so
//! column rules apply to COPY rows only when the adapter knows the column
//! list (from the statement) and passes a plan built from it; otherwise every
//! field is scanned by the detectors, which is the conservative choice. Text
//! format is handled field by field (escapes decoded and re-encoded); CSV
//! lines are scanned as a whole, which is safe because replacements contain
//! no quote, comma or newline. Binary COPY cannot be masked: an adapter
//! should refuse `COPY ... (FORMAT binary) TO STDOUT` for masked sessions.

use airlock_pipeline::mask::{CellOutcome, ColumnMeta, ConnectionMasker, MaskStats, RowPlan};
use bytes::{BufMut, BytesMut};

/// A frame that cannot be parsed or rewritten safely. The caller should not
/// forward such a frame to a masked client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskWireError {
    #[error("expected a {expected} message, got tag 0x{got:02x}")]
    UnexpectedTag { expected: &'static str, got: u8 },
    #[error("{message} message is truncated")]
    Truncated { message: &'static str },
    #[error(
        "{message} length field says {declared} but the frame holds {actual} bytes after the tag"
    )]
    LengthMismatch {
        message: &'static str,
        declared: i32,
        actual: usize,
    },
    #[error("{message} has an invalid {what}: {value}")]
    Invalid {
        message: &'static str,
        what: &'static str,
        value: i64,
    },
    #[error("{message} has {extra} bytes after its last field")]
    TrailingBytes { message: &'static str, extra: usize },
    #[error("DataRow has {got} columns but its RowDescription had {expected}")]
    ColumnCountMismatch { expected: usize, got: usize },
    #[error("rewritten {message} is too large for a message length")]
    TooLarge { message: &'static str },
}

/// One field of a RowDescription, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowField {
    pub name: String,
    pub table_oid: u32,
    pub attnum: i16,
    pub type_oid: u32,
    pub typlen: i16,
    pub typmod: i32,
    /// 0 = text, 1 = binary.
    pub format: i16,
}

/// Bounds-checked big-endian reader over a message body.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            message,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], MaskWireError> {
        let end = self.pos.checked_add(n).ok_or(self.truncated())?;
        let s = self.buf.get(self.pos..end).ok_or(self.truncated())?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MaskWireError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, MaskWireError> {
        Ok(self.array::<1>()?[0])
    }

    fn i16(&mut self) -> Result<i16, MaskWireError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, MaskWireError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, MaskWireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A NUL-terminated string, without the NUL.
    fn cstr(&mut self) -> Result<&'a [u8], MaskWireError> {
        let rest = self.buf.get(self.pos..).ok_or(self.truncated())?;
        let n = rest.iter().position(|b| *b == 0).ok_or(self.truncated())?;
        let s = self.take(n)?;
        self.pos += 1;
        Ok(s)
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn truncated(&self) -> MaskWireError {
        MaskWireError::Truncated {
            message: self.message,
        }
    }
}

/// Checks the tag and length of a whole frame and returns its body.
fn frame_body<'a>(
    frame: &'a [u8],
    tags: &[u8],
    message: &'static str,
) -> Result<&'a [u8], MaskWireError> {
    let (&tag, rest) = frame
        .split_first()
        .ok_or(MaskWireError::Truncated { message })?;
    if !tags.contains(&tag) {
        return Err(MaskWireError::UnexpectedTag {
            expected: message,
            got: tag,
        });
    }
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or(MaskWireError::Truncated { message })?;
    let declared = i32::from_be_bytes(len_bytes);
    if usize::try_from(declared).ok() != Some(rest.len()) {
        return Err(MaskWireError::LengthMismatch {
            message,
            declared,
            actual: rest.len(),
        });
    }
    rest.get(4..).ok_or(MaskWireError::Truncated { message })
}

/// Starts an output frame: tag and a length placeholder. Returns the offset
/// of the length field for [`finish_frame`].
fn start_frame(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    at
}

/// Patches the length of a frame begun by [`start_frame`].
fn finish_frame(
    out: &mut BytesMut,
    len_at: usize,
    message: &'static str,
) -> Result<(), MaskWireError> {
    let len = out.len() - len_at;
    let len = i32::try_from(len).map_err(|_| MaskWireError::TooLarge { message })?;
    if let Some(slot) = out.get_mut(len_at..len_at + 4) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

/// Parses every field of a RowDescription ('T') frame.
pub fn parse_row_description(frame: &[u8]) -> Result<Vec<RowField>, MaskWireError> {
    const M: &str = "RowDescription";
    let body = frame_body(frame, b"T", M)?;
    let mut r = Reader::new(body, M);
    let n = r.i16()?;
    let n = usize::try_from(n).map_err(|_| MaskWireError::Invalid {
        message: M,
        what: "field count",
        value: i64::from(n),
    })?;
    // Each field takes at least 19 bytes; never trust the count for capacity.
    let mut fields = Vec::with_capacity(n.min(r.remaining() / 19));
    for _ in 0..n {
        let name = String::from_utf8_lossy(r.cstr()?).into_owned();
        fields.push(RowField {
            name,
            table_oid: r.u32()?,
            attnum: r.i16()?,
            type_oid: r.u32()?,
            typlen: r.i16()?,
            typmod: r.i32()?,
            format: r.i16()?,
        });
    }
    if r.remaining() != 0 {
        return Err(MaskWireError::TrailingBytes {
            message: M,
            extra: r.remaining(),
        });
    }
    Ok(fields)
}

/// The columns of a RowDescription for [`ConnectionMasker::plan`]. Tables
/// are left unresolved (`None`): the frame only has their OIDs, which the
/// adapter can resolve with [`parse_row_description`] if it wants
/// table-qualified column rules.
pub fn columns_from_row_description(frame: &[u8]) -> Result<Vec<ColumnMeta>, MaskWireError> {
    parse_row_description(frame)?
        .into_iter()
        .map(|f| {
            let binary = match f.format {
                0 => false,
                1 => true,
                other => {
                    return Err(MaskWireError::Invalid {
                        message: "RowDescription",
                        what: "format code",
                        value: i64::from(other),
                    });
                }
            };
            Ok(ColumnMeta {
                name: f.name,
                table: None,
                type_oid: f.type_oid,
                binary,
            })
        })
        .collect()
}

/// Rewrites one DataRow ('D') under `plan`. When a cell changes, the whole
/// rewritten frame (with recomputed lengths) is appended to `out` and `true`
/// returned; otherwise nothing is written and the caller forwards the
/// original frame. NULL cells stay NULL. `scratch` is a reusable buffer.
pub fn rewrite_data_row(
    plan: &RowPlan,
    frame: &[u8],
    out: &mut BytesMut,
    scratch: &mut Vec<u8>,
    stats: &mut MaskStats,
) -> Result<bool, MaskWireError> {
    const M: &str = "DataRow";
    if plan.is_noop() {
        return Ok(false);
    }
    let body = frame_body(frame, b"D", M)?;
    let mut r = Reader::new(body, M);
    let n = r.i16()?;
    let n = usize::try_from(n).map_err(|_| MaskWireError::Invalid {
        message: M,
        what: "column count",
        value: i64::from(n),
    })?;
    if n != plan.len() {
        return Err(MaskWireError::ColumnCountMismatch {
            expected: plan.len(),
            got: n,
        });
    }
    let base = out.len();
    let result = rewrite_cells(plan, body, &mut r, n, out, scratch, stats);
    if result.is_err() {
        // Never leave half a frame behind.
        out.truncate(base);
    }
    result
}

fn rewrite_cells(
    plan: &RowPlan,
    body: &[u8],
    r: &mut Reader<'_>,
    n: usize,
    out: &mut BytesMut,
    scratch: &mut Vec<u8>,
    stats: &mut MaskStats,
) -> Result<bool, MaskWireError> {
    const M: &str = "DataRow";
    let mut len_at: Option<usize> = None;
    // Body bytes before this offset are already in `out`.
    let mut copied = 0usize;
    for col in 0..n {
        let cell_start = r.pos;
        let len = r.i32()?;
        if len == -1 {
            continue;
        }
        let len = usize::try_from(len).map_err(|_| MaskWireError::Invalid {
            message: M,
            what: "cell length",
            value: i64::from(len),
        })?;
        let value = r.take(len)?;
        let outcome = plan.mask_cell_counted(col, value, scratch, stats);
        if outcome == CellOutcome::Unchanged {
            continue;
        }
        if len_at.is_none() {
            len_at = Some(start_frame(out, b'D'));
        }
        out.put_slice(body.get(copied..cell_start).unwrap_or(&[]));
        match outcome {
            CellOutcome::Null => out.put_i32(-1),
            _ => {
                let new_len = i32::try_from(scratch.len())
                    .map_err(|_| MaskWireError::TooLarge { message: M })?;
                out.put_i32(new_len);
                out.put_slice(scratch);
            }
        }
        copied = r.pos;
    }
    if r.remaining() != 0 {
        return Err(MaskWireError::TrailingBytes {
            message: M,
            extra: r.remaining(),
        });
    }
    let Some(len_at) = len_at else {
        return Ok(false);
    };
    out.put_slice(body.get(copied..).unwrap_or(&[]));
    finish_frame(out, len_at, M)?;
    Ok(true)
}

/// Rewrites one CopyData ('d') frame of a text-format COPY TO STDOUT.
///
/// PostgreSQL sends one row per CopyData; several newline-terminated rows in
/// one frame are handled too. Fields are split on the unescaped `delimiter`
/// (tab by default), `\N` is NULL and stays so. With a `plan` (built from the
/// COPY's column list, types unknown = text) column rules apply by position;
/// fields beyond the plan, or all fields without one, are scanned by the
/// detectors. Masked fields are re-escaped. Writes to `out` and returns true
/// only when something changed.
pub fn rewrite_copy_data_text_row(
    masker: &ConnectionMasker,
    plan: Option<&RowPlan>,
    delimiter: u8,
    frame: &[u8],
    out: &mut BytesMut,
    scratch: &mut Vec<u8>,
    stats: &mut MaskStats,
) -> Result<bool, MaskWireError> {
    const M: &str = "CopyData";
    let payload = frame_body(frame, b"d", M)?;
    if !masker.has_detectors() && plan.is_none_or(RowPlan::is_noop) {
        return Ok(false);
    }
    let base = out.len();
    let mut len_at: Option<usize> = None;
    let mut copied = 0usize;
    let mut unescaped = Vec::new();
    let mut pos = 0usize;
    let mut col = 0usize;
    while pos <= payload.len() {
        // Find the end of this field: an unescaped delimiter, a newline
        // (end of row) or the end of the payload.
        let mut end = pos;
        let mut has_escape = false;
        while let Some(&b) = payload.get(end) {
            if b == b'\\' {
                has_escape = true;
                end += 2;
                continue;
            }
            if b == delimiter || b == b'\n' {
                break;
            }
            end += 1;
        }
        let end = end.min(payload.len());
        let field = payload.get(pos..end).unwrap_or(&[]);
        let terminator = payload.get(end).copied();

        if !field.is_empty() && field != b"\\N" {
            let value: &[u8] = if has_escape {
                copy_unescape(field, &mut unescaped);
                &unescaped
            } else {
                field
            };
            let outcome = match plan.filter(|p| col < p.len()) {
                Some(p) => p.mask_cell_counted(col, value, scratch, stats),
                None => {
                    if masker.scan(value, scratch, Some(stats)) {
                        CellOutcome::Replaced
                    } else {
                        CellOutcome::Unchanged
                    }
                }
            };
            if outcome != CellOutcome::Unchanged {
                if len_at.is_none() {
                    len_at = Some(start_frame(out, b'd'));
                }
                out.put_slice(payload.get(copied..pos).unwrap_or(&[]));
                match outcome {
                    CellOutcome::Null => out.put_slice(b"\\N"),
                    _ => copy_escape(scratch, delimiter, out),
                }
                copied = end;
            }
        }

        match terminator {
            Some(b'\n') => col = 0,
            Some(_) => col += 1,
            None => break,
        }
        pos = end + 1;
        if terminator == Some(b'\n') && pos == payload.len() {
            break;
        }
    }
    let Some(len_at) = len_at else {
        return Ok(false);
    };
    out.put_slice(payload.get(copied..).unwrap_or(&[]));
    if let Err(e) = finish_frame(out, len_at, M) {
        out.truncate(base);
        return Err(e);
    }
    Ok(true)
}

/// Rewrites one CopyData ('d') frame of a CSV-format COPY TO STDOUT by
/// running the detectors over the whole line. Column rules do not apply
/// (CSV quoting makes field positions unreliable without a full parser); the
/// replacements contain no quote, comma or newline, so the CSV stays valid.
pub fn rewrite_copy_data_csv_row(
    masker: &ConnectionMasker,
    frame: &[u8],
    out: &mut BytesMut,
    scratch: &mut Vec<u8>,
    stats: &mut MaskStats,
) -> Result<bool, MaskWireError> {
    const M: &str = "CopyData";
    let payload = frame_body(frame, b"d", M)?;
    if !masker.scan(payload, scratch, Some(stats)) {
        return Ok(false);
    }
    let base = out.len();
    let len_at = start_frame(out, b'd');
    out.put_slice(scratch);
    if let Err(e) = finish_frame(out, len_at, M) {
        out.truncate(base);
        return Err(e);
    }
    Ok(true)
}

/// Decodes COPY text escapes (`\t`, `\n`, `\\`, `\x41`, octal `\101`, ...).
fn copy_unescape(src: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0usize;
    while let Some(&b) = src.get(i) {
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&c) = src.get(i) else {
            out.push(b'\\');
            break;
        };
        i += 1;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match src.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut digits = 0;
                while digits < 2 {
                    match src.get(i).and_then(|d| char::from(*d).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    out.push(b'x');
                } else {
                    out.push((v & 0xff) as u8);
                }
            }
            other => out.push(other),
        }
    }
}

/// Encodes a field for COPY text format, as PostgreSQL does.
fn copy_escape(src: &[u8], delimiter: u8, out: &mut BytesMut) {
    for &b in src {
        match b {
            b'\\' => out.put_slice(b"\\\\"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b'\t' => out.put_slice(b"\\t"),
            8 => out.put_slice(b"\\b"),
            12 => out.put_slice(b"\\f"),
            11 => out.put_slice(b"\\v"),
            d if d == delimiter => {
                out.put_u8(b'\\');
                out.put_u8(d);
            }
            _ => out.put_u8(b),
        }
    }
}

/// ErrorResponse/NoticeResponse fields whose text can quote data.
const MASKED_FIELDS: &[u8] = b"MDHWq";

/// Rewrites an ErrorResponse ('E') or NoticeResponse ('N'): the message,
/// detail, hint, context and internal query fields go through the detectors.
/// A `Key (col, ...)=(val, ...)` detail (unique and foreign-key violations)
/// also gets the connection's column rules, using the error's table field,
/// so a masked `email` column does not leak through a duplicate-key error.
pub fn rewrite_error_or_notice(
    masker: &ConnectionMasker,
    frame: &[u8],
    out: &mut BytesMut,
) -> Result<bool, MaskWireError> {
    const M: &str = "ErrorResponse/NoticeResponse";
    let tag = frame.first().copied().unwrap_or(0);
    let body = frame_body(frame, b"EN", M)?;
    let mut r = Reader::new(body, M);
    let mut fields: Vec<(u8, &[u8])> = Vec::new();
    loop {
        let code = r.u8()?;
        if code == 0 {
            break;
        }
        fields.push((code, r.cstr()?));
    }
    if r.remaining() != 0 {
        return Err(MaskWireError::TrailingBytes {
            message: M,
            extra: r.remaining(),
        });
    }
    let table = fields
        .iter()
        .find(|(c, _)| *c == b't')
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());

    let mut replaced: Vec<Option<String>> = vec![None; fields.len()];
    for ((code, value), slot) in fields.iter().zip(replaced.iter_mut()) {
        if !MASKED_FIELDS.contains(code) {
            continue;
        }
        let text = String::from_utf8_lossy(value);
        let keyed = if *code == b'D' {
            mask_key_detail(masker, table.as_deref(), &text)
        } else {
            None
        };
        let current = keyed.as_deref().unwrap_or(&text);
        *slot = match masker.mask_text(current) {
            Some(masked) => Some(masked),
            None => keyed,
        };
    }
    if replaced.iter().all(Option::is_none) {
        return Ok(false);
    }
    let base = out.len();
    let len_at = start_frame(out, tag);
    for ((code, value), new) in fields.iter().zip(&replaced) {
        out.put_u8(*code);
        match new {
            // Replacement text never contains NUL; strip any, to be sure
            // the field stays one C string.
            Some(s) => out.extend(s.bytes().filter(|b| *b != 0)),
            None => out.put_slice(value),
        }
        out.put_u8(0);
    }
    out.put_u8(0);
    if let Err(e) = finish_frame(out, len_at, M) {
        out.truncate(base);
        return Err(e);
    }
    Ok(true)
}

/// Applies column rules to `(cols)=(vals)` pairs in a detail such as
/// `Key (email)=(john@example.com) already exists.` Values are split on
/// `, ` like the columns; when the counts disagree (a value containing a
/// comma), the whole value list is redacted if any named column is masked.
fn mask_key_detail(masker: &ConnectionMasker, table: Option<&str>, text: &str) -> Option<String> {
    let mut out = String::new();
    let mut last = 0usize;
    let mut search = 0usize;
    let mut changed = false;
    while let Some(rel) = text.get(search..).and_then(|t| t.find(")=(")) {
        let eq = search + rel;
        let vstart = eq + 3;
        let Some(open) = text.get(..eq).and_then(|t| t.rfind('(')) else {
            search = vstart;
            continue;
        };
        let cols = text.get(open + 1..eq).unwrap_or("");
        // The value list ends at the first `)` followed by a space, a period
        // or the end of the text.
        let rest = text.get(vstart..).unwrap_or("");
        let close = rest.char_indices().find(|&(i, c)| {
            c == ')'
                && rest
                    .get(i + 1..)
                    .is_none_or(|after| after.is_empty() || after.starts_with([' ', '.']))
        });
        let Some((close, _)) = close else {
            break;
        };
        let vend = vstart + close;
        let vals = text.get(vstart..vend).unwrap_or("");
        if let Some(masked) = mask_key_values(masker, table, cols, vals) {
            out.push_str(text.get(last..vstart).unwrap_or(""));
            out.push_str(&masked);
            last = vend;
            changed = true;
        }
        search = vend;
    }
    if !changed {
        return None;
    }
    out.push_str(text.get(last..).unwrap_or(""));
    Some(out)
}

fn mask_key_values(
    masker: &ConnectionMasker,
    table: Option<&str>,
    cols: &str,
    vals: &str,
) -> Option<String> {
    let names: Vec<&str> = cols
        .split(", ")
        .map(|c| c.trim().trim_matches('"'))
        .collect();
    let values: Vec<&str> = vals.split(", ").collect();
    if names.len() != values.len() {
        return names
            .iter()
            .any(|c| masker.has_column_rule(table, c))
            .then(|| "****".to_string());
    }
    let mut changed = false;
    let parts: Vec<String> = names
        .iter()
        .zip(&values)
        .map(|(c, v)| {
            if !masker.has_column_rule(table, c) {
                return v.to_string();
            }
            match masker.mask_column_text(table, c, v) {
                Some(m) => {
                    changed = true;
                    m
                }
                None => v.to_string(),
            }
        })
        .collect();
    changed.then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use airlock_pipeline::mask::{MaskRuleConfig, MaskStrategy, Masker, MaskingConfig};
    use airlock_pipeline::model::{ConnectionInfo, Protocol};
    use proptest::prelude::*;

    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    /// `(name, type oid, format)` per field.
    fn row_description(fields: &[(&str, u32, i16)]) -> Vec<u8> {
        let mut b = (fields.len() as i16).to_be_bytes().to_vec();
        for (i, (name, oid, format)) in fields.iter().enumerate() {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&16_400u32.to_be_bytes());
            b.extend_from_slice(&(i as i16 + 1).to_be_bytes());
            b.extend_from_slice(&oid.to_be_bytes());
            b.extend_from_slice(&(-1i16).to_be_bytes());
            b.extend_from_slice(&(-1i32).to_be_bytes());
            b.extend_from_slice(&format.to_be_bytes());
        }
        frame(b'T', &b)
    }

    fn data_row(cells: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = (cells.len() as i16).to_be_bytes().to_vec();
        for c in cells {
            match c {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        frame(b'D', &b)
    }

    /// Strict re-parse: the declared lengths must account for every byte.
    fn parse_data_row(f: &[u8]) -> Vec<Option<Vec<u8>>> {
        assert_eq!(f[0], b'D');
        let len = i32::from_be_bytes(f[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, f.len() - 1, "frame length");
        let n = i16::from_be_bytes(f[5..7].try_into().unwrap());
        let mut pos = 7;
        let mut cells = Vec::new();
        for _ in 0..n {
            let l = i32::from_be_bytes(f[pos..pos + 4].try_into().unwrap());
            pos += 4;
            if l == -1 {
                cells.push(None);
            } else {
                let l = l as usize;
                cells.push(Some(f[pos..pos + l].to_vec()));
                pos += l;
            }
        }
        assert_eq!(pos, f.len(), "no bytes after the last cell");
        cells
    }

    fn rule(columns: &[&str], detectors: &[&str], strategy: MaskStrategy) -> MaskRuleConfig {
        MaskRuleConfig {
            columns: columns.iter().map(|s| s.to_string()).collect(),
            detectors: detectors.iter().map(|s| s.to_string()).collect(),
            strategy,
            ..MaskRuleConfig::default()
        }
    }

    fn masker(rules: Vec<MaskRuleConfig>) -> Arc<ConnectionMasker> {
        let m = Masker::new(&MaskingConfig {
            rules,
            custom_detectors: BTreeMap::new(),
            hash_key: None,
        })
        .unwrap();
        m.for_connection(&ConnectionInfo {
            name: "shop".into(),
            protocol: Protocol::Postgres,
            tags: vec![],
        })
        .unwrap()
    }

    fn standard() -> Arc<ConnectionMasker> {
        masker(vec![
            rule(&["email", "secret"], &[], MaskStrategy::Partial),
            rule(&[], &["credit_card", "email"], MaskStrategy::Redact),
        ])
    }

    const COLS: &[(&str, u32, i16)] = &[
        ("id", 23, 0),
        ("email", 25, 0),
        ("notes", 1043, 0),
        ("secret", 23, 1),
        ("blob", 17, 1),
        ("name", 25, 1),
    ];

    fn plan() -> RowPlan {
        let cols = columns_from_row_description(&row_description(COLS)).unwrap();
        standard().plan(&cols)
    }

    fn rewrite(
        plan: &RowPlan,
        f: &[u8],
    ) -> (bool, Vec<u8>, Vec<airlock_pipeline::record::MaskCount>) {
        let mut out = BytesMut::new();
        let mut scratch = Vec::new();
        let mut stats = plan.new_stats();
        let changed = rewrite_data_row(plan, f, &mut out, &mut scratch, &mut stats).unwrap();
        (changed, out.to_vec(), stats.counts())
    }

    #[test]
    fn row_description_fields() {
        let f = row_description(&[("id", 23, 0), ("doc", 3802, 1)]);
        let fields = parse_row_description(&f).unwrap();
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[1].name, "doc");
        assert_eq!(fields[1].type_oid, 3802);
        assert_eq!(fields[1].table_oid, 16_400);
        assert_eq!(fields[1].attnum, 2);
        assert_eq!(fields[1].format, 1);
        let cols = columns_from_row_description(&f).unwrap();
        assert_eq!(
            cols[0],
            ColumnMeta {
                name: "id".into(),
                table: None,
                type_oid: 23,
                binary: false
            }
        );
        assert!(cols[1].binary);
        assert!(
            columns_from_row_description(&row_description(&[]))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn malformed_row_descriptions_are_errors() {
        let good = row_description(&[("id", 23, 0)]);
        for cut in 0..good.len() {
            assert!(parse_row_description(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong_tag = good.clone();
        wrong_tag[0] = b'D';
        assert!(matches!(
            parse_row_description(&wrong_tag),
            Err(MaskWireError::UnexpectedTag { got: b'D', .. })
        ));
        let mut extra = good[5..].to_vec();
        extra.push(0);
        assert!(matches!(
            parse_row_description(&frame(b'T', &extra)),
            Err(MaskWireError::TrailingBytes { extra: 1, .. })
        ));
        assert!(matches!(
            parse_row_description(&frame(b'T', &(-1i16).to_be_bytes())),
            Err(MaskWireError::Invalid { .. })
        ));
        // A huge field count with no fields must not allocate or panic.
        assert!(parse_row_description(&frame(b'T', &i16::MAX.to_be_bytes())).is_err());
        let bad_format = row_description(&[("id", 23, 2)]);
        assert!(columns_from_row_description(&bad_format).is_err());
    }

    #[test]
    fn data_row_cells_are_masked_and_lengths_recomputed() {
        let plan = plan();
        let row = data_row(&[
            Some(b"1"),
            Some(b"john.doe@example.com"),
            Some(b"paid with 4111 1111 1111 1111, mail jane@example.org"),
            Some(&7i32.to_be_bytes()),
            Some(b"4111111111111111"),
            None,
        ]);
        let (changed, out, counts) = rewrite(&plan, &row);
        assert!(changed);
        let cells = parse_data_row(&out);
        assert_eq!(
            cells,
            vec![
                Some(b"1".to_vec()),
                Some(b"j****@*****.com".to_vec()),
                Some(b"paid with ****, mail ****".to_vec()),
                None,                               // binary int4 named by a column rule: NULLed
                Some(b"4111111111111111".to_vec()), // binary bytea: not scanned
                None,                               // NULL stays NULL
            ]
        );
        assert_eq!(counts.len(), 2);
        assert_eq!((counts[0].rule.as_str(), counts[0].cells), ("rule1", 2));
        assert_eq!((counts[1].rule.as_str(), counts[1].cells), ("rule2", 1));
    }

    #[test]
    fn binary_text_columns_are_masked_as_text() {
        let plan = plan();
        let row = data_row(&[None, None, None, None, None, Some(b"x a@b.io")]);
        let (changed, out, _) = rewrite(&plan, &row);
        assert!(changed);
        assert_eq!(parse_data_row(&out)[5], Some(b"x ****".to_vec()));
    }

    #[test]
    fn unchanged_rows_write_nothing() {
        let plan = plan();
        let row = data_row(&[
            Some(b"1"),
            None,
            Some(b"nothing to see"),
            None,
            Some(b"x"),
            Some(b"Bob"),
        ]);
        let (changed, out, counts) = rewrite(&plan, &row);
        assert!(!changed);
        assert!(out.is_empty());
        assert!(counts.is_empty());

        let noop = standard()
            .plan(&columns_from_row_description(&row_description(&[("id", 23, 0)])).unwrap());
        assert!(noop.is_noop());
        // A no-op plan does not even look at the frame.
        assert!(!rewrite(&noop, b"garbage").0);
    }

    #[test]
    fn rewritten_frames_append_after_existing_output() {
        let plan = plan();
        let row = data_row(&[None, Some(b"a@b.com"), None, None, None, None]);
        let mut out = BytesMut::from(&b"prefix"[..]);
        let mut scratch = Vec::new();
        let mut stats = plan.new_stats();
        assert!(rewrite_data_row(&plan, &row, &mut out, &mut scratch, &mut stats).unwrap());
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(
            parse_data_row(&out[6..])[1],
            Some(b"a****@*****.com".to_vec())
        );
    }

    #[test]
    fn malformed_data_rows_are_errors_and_leave_no_output() {
        let plan = plan();
        let mut scratch = Vec::new();
        let mut stats = plan.new_stats();
        let mut run = |f: &[u8]| {
            let mut out = BytesMut::from(&b"keep"[..]);
            let r = rewrite_data_row(&plan, f, &mut out, &mut scratch, &mut stats);
            assert_eq!(&out[..], b"keep", "output untouched on error");
            r
        };
        assert!(matches!(
            run(&data_row(&[Some(b"1")])),
            Err(MaskWireError::ColumnCountMismatch {
                expected: 6,
                got: 1
            })
        ));
        let good = data_row(&[None, Some(b"a@b.com"), None, None, None, Some(b"zz")]);
        for cut in 0..good.len() {
            assert!(run(&good[..cut]).is_err(), "cut at {cut}");
        }
        // Lengths that lie: first cell changes, then a cell runs past the end.
        let mut body = 6i16.to_be_bytes().to_vec();
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&7i32.to_be_bytes());
        body.extend_from_slice(b"a@b.com");
        body.extend_from_slice(&100i32.to_be_bytes());
        body.extend_from_slice(b"short");
        assert!(matches!(
            run(&frame(b'D', &body)),
            Err(MaskWireError::Truncated { .. })
        ));
        let mut neg = 6i16.to_be_bytes().to_vec();
        neg.extend_from_slice(&(-2i32).to_be_bytes());
        assert!(matches!(
            run(&frame(b'D', &neg)),
            Err(MaskWireError::Invalid { .. })
        ));
        let mut trailing = good[5..].to_vec();
        trailing.push(9);
        assert!(matches!(
            run(&frame(b'D', &trailing)),
            Err(MaskWireError::TrailingBytes { extra: 1, .. })
        ));
    }

    fn copy_text(
        masker: &ConnectionMasker,
        plan: Option<&RowPlan>,
        delim: u8,
        row: &[u8],
    ) -> Option<Vec<u8>> {
        let mut out = BytesMut::new();
        let mut scratch = Vec::new();
        let mut stats = masker.new_stats();
        let f = frame(b'd', row);
        let changed =
            rewrite_copy_data_text_row(masker, plan, delim, &f, &mut out, &mut scratch, &mut stats)
                .unwrap();
        if !changed {
            assert!(out.is_empty());
            return None;
        }
        let len = i32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
        assert_eq!(out[0], b'd');
        assert_eq!(len, out.len() - 1);
        Some(out[5..].to_vec())
    }

    #[test]
    fn copy_text_rows_scan_every_field_without_a_plan() {
        let m = standard();
        assert_eq!(
            copy_text(
                &m,
                None,
                b'\t',
                b"1\tjohn@example.com\t\\N\t4111111111111111\n"
            )
            .as_deref(),
            Some(&b"1\t****\t\\N\t****\n"[..])
        );
        // Escapes are decoded before scanning and re-encoded after.
        assert_eq!(
            copy_text(&m, None, b'\t', b"a\\tb@c.com\\\\x\tok\n").as_deref(),
            Some(&b"a\\t****\\\\x\tok\n"[..])
        );
        assert_eq!(
            copy_text(&m, None, b',', b"x\\,y,mail: a@b.com\n").as_deref(),
            Some(&b"x\\,y,mail: ****\n"[..])
        );
        assert_eq!(copy_text(&m, None, b'\t', b"1\tplain\t\\N\n"), None);
        assert_eq!(copy_text(&m, None, b'\t', b""), None);
        // Several rows in one frame, no trailing newline on the last.
        assert_eq!(
            copy_text(&m, None, b'\t', b"a@b.com\n1\tc@d.com").as_deref(),
            Some(&b"****\n1\t****"[..])
        );
    }

    #[test]
    fn copy_text_rows_apply_column_rules_with_a_plan() {
        let m = masker(vec![
            rule(&["email"], &[], MaskStrategy::Partial),
            rule(&["ssn"], &[], MaskStrategy::Null),
        ]);
        let cols: Vec<ColumnMeta> = ["id", "email", "ssn", "note"]
            .iter()
            .map(|n| ColumnMeta {
                name: n.to_string(),
                table: None,
                type_oid: 0,
                binary: false,
            })
            .collect();
        let plan = m.plan(&cols);
        assert_eq!(
            copy_text(
                &m,
                Some(&plan),
                b'\t',
                b"1\tjohn@example.com\t123-45-6789\ta@b.com\n"
            )
            .as_deref(),
            Some(&b"1\tj****@*****.com\t\\N\ta@b.com\n"[..])
        );
        assert_eq!(copy_text(&m, Some(&plan), b'\t', b"1\t\\N\t\\N\tx\n"), None);
    }

    #[test]
    fn copy_unescape_and_escape_round_trip() {
        let mut un = Vec::new();
        copy_unescape(b"a\\tb\\nc\\\\d\\x41\\101\\.\\", &mut un);
        assert_eq!(un, b"a\tb\nc\\dAA.\\");
        copy_unescape(b"\\xZ\\7", &mut un);
        assert_eq!(un, b"xZ\x07");
        let mut out = BytesMut::new();
        copy_escape(b"a\tb\nc\\d|e\r\x08\x0b\x0c", b'|', &mut out);
        assert_eq!(&out[..], b"a\\tb\\nc\\\\d\\|e\\r\\b\\v\\f");
    }

    #[test]
    fn copy_csv_lines_are_scanned_whole() {
        let m = standard();
        let mut out = BytesMut::new();
        let mut scratch = Vec::new();
        let mut stats = m.new_stats();
        let f = frame(
            b'd',
            b"1,\"Doe, John\",john@example.com,\"said \"\"a@b.com\"\"\"\n",
        );
        assert!(rewrite_copy_data_csv_row(&m, &f, &mut out, &mut scratch, &mut stats).unwrap());
        assert_eq!(&out[5..], b"1,\"Doe, John\",****,\"said \"\"****\"\"\"\n");
        assert_eq!(stats.total(), 1);
        let mut out = BytesMut::new();
        let plain = frame(b'd', b"1,plain\n");
        assert!(
            !rewrite_copy_data_csv_row(&m, &plain, &mut out, &mut scratch, &mut stats).unwrap()
        );
        assert!(out.is_empty());
        assert!(
            rewrite_copy_data_csv_row(&m, b"d\0\0", &mut out, &mut scratch, &mut stats).is_err()
        );
    }

    fn error_frame(tag: u8, fields: &[(u8, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (c, v) in fields {
            b.push(*c);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        frame(tag, &b)
    }

    fn parse_error_fields(f: &[u8]) -> Vec<(u8, String)> {
        let len = i32::from_be_bytes(f[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, f.len() - 1);
        let mut out = Vec::new();
        let mut pos = 5;
        while f[pos] != 0 {
            let code = f[pos];
            let end = pos + 1 + f[pos + 1..].iter().position(|b| *b == 0).unwrap();
            out.push((code, String::from_utf8(f[pos + 1..end].to_vec()).unwrap()));
            pos = end + 1;
        }
        assert_eq!(pos, f.len() - 1);
        out
    }

    fn unique_violation(detail: &str) -> Vec<u8> {
        error_frame(
            b'E',
            &[
                (b'S', "ERROR"),
                (b'C', "23505"),
                (
                    b'M',
                    "duplicate key value violates unique constraint \"customers_email_key\"",
                ),
                (b'D', detail),
                (b's', "public"),
                (b't', "customers"),
                (b'n', "customers_email_key"),
            ],
        )
    }

    #[test]
    fn unique_violation_detail_is_masked_by_column_rules() {
        // Only a column rule, no detectors: the key detail still gets masked.
        let m = masker(vec![rule(&["customers.email"], &[], MaskStrategy::Partial)]);
        let mut out = BytesMut::new();
        let f = unique_violation("Key (email)=(john@example.com) already exists.");
        assert!(rewrite_error_or_notice(&m, &f, &mut out).unwrap());
        let fields = parse_error_fields(&out);
        assert_eq!(
            fields[3],
            (b'D', "Key (email)=(j****@*****.com) already exists.".into())
        );
        assert_eq!(
            fields[2].1,
            "duplicate key value violates unique constraint \"customers_email_key\""
        );
        assert_eq!(fields.len(), 7);

        let mut out = BytesMut::new();
        let f = unique_violation("Key (tenant, email)=(7, john@example.com) already exists.");
        assert!(rewrite_error_or_notice(&m, &f, &mut out).unwrap());
        assert_eq!(
            parse_error_fields(&out)[3].1,
            "Key (tenant, email)=(7, j****@*****.com) already exists."
        );

        // A value with a comma makes the split ambiguous: all values go.
        let mut out = BytesMut::new();
        let f = unique_violation("Key (tenant, email)=(7, a, b@c.com) already exists.");
        assert!(rewrite_error_or_notice(&m, &f, &mut out).unwrap());
        assert_eq!(
            parse_error_fields(&out)[3].1,
            "Key (tenant, email)=(****) already exists."
        );

        // Another table's email column is not named by `customers.email`.
        let other = error_frame(
            b'E',
            &[
                (b'D', "Key (email)=(x@y.com) already exists."),
                (b't', "staff"),
            ],
        );
        let mut out = BytesMut::new();
        assert!(!rewrite_error_or_notice(&m, &other, &mut out).unwrap());
        assert!(out.is_empty());
    }

    #[test]
    fn error_and_notice_text_goes_through_detectors() {
        let m = standard();
        let mut out = BytesMut::new();
        let f = error_frame(
            b'N',
            &[
                (b'S', "NOTICE"),
                (b'M', "card 4111111111111111 seen"),
                (b'H', "mail john@example.com"),
                (b'W', "PL/pgSQL function f() line 3 at RAISE for a@b.io"),
                (b'F', "a@b.io"),
            ],
        );
        assert!(rewrite_error_or_notice(&m, &f, &mut out).unwrap());
        assert_eq!(out[0], b'N');
        let fields = parse_error_fields(&out);
        assert_eq!(fields[1].1, "card **** seen");
        assert_eq!(fields[2].1, "mail ****");
        assert_eq!(
            fields[3].1,
            "PL/pgSQL function f() line 3 at RAISE for ****"
        );
        // Fields that cannot hold data (file name here) are left alone.
        assert_eq!(fields[4].1, "a@b.io");

        let mut out = BytesMut::new();
        let plain = error_frame(
            b'E',
            &[(b'S', "ERROR"), (b'M', "syntax error at or near \"selec\"")],
        );
        assert!(!rewrite_error_or_notice(&m, &plain, &mut out).unwrap());
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_errors_are_rejected() {
        let m = standard();
        let good = error_frame(b'E', &[(b'M', "a@b.com")]);
        for cut in 0..good.len() {
            let mut out = BytesMut::new();
            assert!(
                rewrite_error_or_notice(&m, &good[..cut], &mut out).is_err(),
                "cut {cut}"
            );
            assert!(out.is_empty());
        }
        let mut out = BytesMut::new();
        // Field value without its NUL terminator.
        assert!(rewrite_error_or_notice(&m, &frame(b'E', b"Mabc"), &mut out).is_err());
        assert!(rewrite_error_or_notice(&m, &frame(b'Z', b"I"), &mut out).is_err());
    }

    /// A Visa-like 16-digit number with a valid Luhn check digit.
    fn luhn_card(body: &[u8]) -> String {
        let mut digits: Vec<u32> = std::iter::once(4)
            .chain(body.iter().map(|d| u32::from(*d % 10)))
            .collect();
        digits.truncate(15);
        let sum: u32 = digits
            .iter()
            .rev()
            .enumerate()
            .map(|(i, d)| {
                if i % 2 == 0 {
                    let x = d * 2;
                    if x > 9 { x - 9 } else { x }
                } else {
                    *d
                }
            })
            .sum();
        digits.push((10 - sum % 10) % 10);
        digits
            .iter()
            .map(|d| char::from_digit(*d, 10).unwrap())
            .collect()
    }

    fn sensitive_cell() -> impl Strategy<Value = (String, String)> {
        let word = "[a-z ]{0,12}";
        prop_oneof![
            (proptest::collection::vec(any::<u8>(), 14), word, word).prop_map(|(b, pre, post)| {
                let c = luhn_card(&b);
                (format!("{pre} {c} {post}"), c)
            }),
            ("[a-z]{1,10}", "[a-z]{1,10}", word, word).prop_map(|(u, d, pre, post)| {
                let e = format!("{u}@{d}.com");
                (format!("{pre} {e} {post}"), e)
            }),
        ]
    }

    proptest! {
        #[test]
        fn rewritten_rows_reparse_and_hide_sensitive_values(
            cells in proptest::collection::vec(
                prop_oneof![
                    Just(None),
                    "[a-z0-9 ]{0,20}".prop_map(|s| Some((s, None))),
                    sensitive_cell().prop_map(|(cell, raw)| Some((cell, Some(raw)))),
                ],
                1..8,
            )
        ) {
            let m = masker(vec![rule(&[], &["credit_card", "email"], MaskStrategy::Partial)]);
            let cols: Vec<ColumnMeta> = (0..cells.len())
                .map(|i| ColumnMeta { name: format!("c{i}"), table: None, type_oid: 25, binary: false })
                .collect();
            let plan = m.plan(&cols);
            let raw_cells: Vec<Option<&[u8]>> =
                cells.iter().map(|c| c.as_ref().map(|(s, _)| s.as_bytes())).collect();
            let row = data_row(&raw_cells);
            let mut out = BytesMut::new();
            let mut scratch = Vec::new();
            let mut stats = plan.new_stats();
            let changed = rewrite_data_row(&plan, &row, &mut out, &mut scratch, &mut stats).unwrap();
            let any_sensitive = cells.iter().any(|c| matches!(c, Some((_, Some(_)))));
            prop_assert_eq!(changed, any_sensitive);
            let result = if changed { parse_data_row(&out) } else { parse_data_row(&row) };
            prop_assert_eq!(result.len(), cells.len());
            for (got, want) in result.iter().zip(&cells) {
                match (got, want) {
                    (None, None) => {}
                    (Some(g), Some((orig, raw))) => {
                        let g = String::from_utf8(g.clone()).unwrap();
                        match raw {
                            Some(raw) => prop_assert!(!g.contains(raw.as_str()), "{} still in {}", raw, g),
                            None => prop_assert_eq!(&g, orig),
                        }
                    }
                    _ => prop_assert!(false, "NULL-ness changed"),
                }
            }
        }

        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let plan = plan();
            let m = standard();
            let mut out = BytesMut::new();
            let mut scratch = Vec::new();
            let mut stats = plan.new_stats();
            for tag in [b'D', b'T', b'd', b'E'] {
                let f = frame(tag, &bytes);
                let _ = rewrite_data_row(&plan, &f, &mut out, &mut scratch, &mut stats);
                let _ = columns_from_row_description(&f);
                let _ = rewrite_copy_data_text_row(&m, Some(&plan), b'\t', &f, &mut out, &mut scratch, &mut stats);
                let _ = rewrite_copy_data_csv_row(&m, &f, &mut out, &mut scratch, &mut stats);
                let _ = rewrite_error_or_notice(&m, &f, &mut out);
            }
            let _ = rewrite_data_row(&plan, &bytes, &mut out, &mut scratch, &mut stats);
            let _ = rewrite_error_or_notice(&m, &bytes, &mut out);
        }
    }
}
