//! Framing: splitting tagged protocol messages off a read buffer, zero-copy.
//!
//! A regular message is `tag: u8`, `len: i32` (counting itself and the body,
//! not the tag), then `len - 4` body bytes. The startup phase has no tag byte;
//! see [`split_startup`].

use bytes::{Bytes, BytesMut};

use crate::WireError;

pub use crate::startup::{StartupMessage, split_startup};

/// Bytes in a tagged message header: the tag plus the Int32 length.
pub const HEADER_LEN: usize = 5;

/// One complete tagged message, still in wire form so it can be relayed untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message type byte. Its meaning depends on the direction: see
    /// [`crate::frontend::tag`] and [`crate::backend::tag`].
    pub tag: u8,
    /// The whole message: tag, length and body.
    pub bytes: Bytes,
}

impl Frame {
    /// The message body, after the tag and length.
    pub fn body(&self) -> &[u8] {
        self.bytes.get(HEADER_LEN..).unwrap_or_default()
    }

    /// The body as a cheap `Bytes` handle sharing this frame's storage.
    pub fn body_bytes(&self) -> Bytes {
        if self.bytes.len() >= HEADER_LEN {
            self.bytes.slice(HEADER_LEN..)
        } else {
            Bytes::new()
        }
    }

    /// Total bytes on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True only for a `Frame` built by hand without bytes; split frames never are.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Checks a big-endian Int32 length field against `min` and `max`, returning it
/// as a `usize`. Negative values are refused here, so callers can size buffers
/// from the result.
pub(crate) fn checked_len(field: [u8; 4], min: usize, max: usize) -> Result<usize, WireError> {
    let raw = i32::from_be_bytes(field);
    let len = usize::try_from(raw).map_err(|_| WireError::BadLength(raw.into()))?;
    if len < min {
        return Err(WireError::BadLength(raw.into()));
    }
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    Ok(len)
}

fn header(buf: &[u8]) -> Option<(u8, [u8; 4])> {
    match buf {
        [tag, a, b, c, d, ..] => Some((*tag, [*a, *b, *c, *d])),
        _ => None,
    }
}

/// Splits the next tagged message off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (the buffer is left as is).
/// `max_len` bounds the length field (body plus 4); a larger or a negative
/// announced length is refused as soon as the 5-byte header has arrived, so a
/// peer can never make the caller buffer an oversized message. On error the
/// buffer is left as is and the connection should be closed.
pub fn split_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, WireError> {
    let Some((tag, field)) = header(buf) else {
        return Ok(None);
    };
    let len = checked_len(field, 4, max_len)?;
    // `len` <= max_len, and a max_len near usize::MAX is the caller's choice;
    // saturate rather than overflow.
    let total = len.saturating_add(1);
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(Frame {
        tag,
        bytes: buf.split_to(total).freeze(),
    }))
}

/// Total size of the next tagged message, once its header has arrived, so a
/// caller can reserve room before reading. `None` when the header is incomplete
/// or the length is invalid or above `max_len` (which [`split_frame`] reports).
pub fn frame_len_hint(buf: &[u8], max_len: usize) -> Option<usize> {
    let (_, field) = header(buf)?;
    checked_len(field, 4, max_len)
        .ok()
        .map(|len| len.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(bytes: &[u8]) -> BytesMut {
        BytesMut::from(bytes)
    }

    #[test]
    fn splits_one_frame_and_keeps_the_rest() {
        let mut b = buf(b"Q\0\0\0\x09abcd\0Sxx");
        let f = split_frame(&mut b, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(f.bytes.as_ref(), b"Q\0\0\0\x09abcd\0");
        assert_eq!(f.body(), b"abcd\0");
        assert_eq!(f.body_bytes().as_ref(), b"abcd\0");
        assert_eq!(f.len(), 10);
        assert_eq!(b.as_ref(), b"Sxx");
    }

    #[test]
    fn empty_body_frame() {
        let mut b = buf(b"S\0\0\0\x04");
        let f = split_frame(&mut b, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'S');
        assert!(f.body().is_empty());
        assert!(b.is_empty());
    }

    #[test]
    fn truncated_input_needs_more() {
        let whole = b"Q\0\0\0\x09abcd\0";
        for n in 0..whole.len() {
            let mut b = buf(&whole[..n]);
            assert_eq!(split_frame(&mut b, 1024), Ok(None), "prefix {n}");
            assert_eq!(b.len(), n, "buffer untouched on prefix {n}");
        }
    }

    #[test]
    fn refuses_short_negative_and_oversized_lengths() {
        assert_eq!(
            split_frame(&mut buf(b"Q\0\0\0\x03"), 1024),
            Err(WireError::BadLength(3))
        );
        assert_eq!(
            split_frame(&mut buf(b"Q\xff\xff\xff\xff"), 1024),
            Err(WireError::BadLength(-1))
        );
        assert_eq!(
            split_frame(&mut buf(b"Q\x80\0\0\0"), 1024),
            Err(WireError::BadLength(i32::MIN.into()))
        );
        // Refused from the header alone, before the body is buffered.
        assert_eq!(
            split_frame(&mut buf(b"Q\0\0\x04\x01"), 1024),
            Err(WireError::TooLarge {
                len: 1025,
                max: 1024
            })
        );
        assert_eq!(
            split_frame(&mut buf(b"Q\x7f\xff\xff\xff"), 1 << 20),
            Err(WireError::TooLarge {
                len: i32::MAX as usize,
                max: 1 << 20
            })
        );
    }

    #[test]
    fn length_hint() {
        assert_eq!(frame_len_hint(b"Q\0\0", 1024), None);
        assert_eq!(frame_len_hint(b"Q\0\0\0\x09ab", 1024), Some(10));
        assert_eq!(frame_len_hint(b"Q\0\0\x04\x01", 1024), None);
        assert_eq!(frame_len_hint(b"Q\xff\xff\xff\xff", 1024), None);
    }

    #[test]
    fn frames_share_the_read_buffer() {
        let mut b = buf(b"Q\0\0\0\x05xS\0\0\0\x04");
        let first = split_frame(&mut b, 64).unwrap().unwrap();
        let second = split_frame(&mut b, 64).unwrap().unwrap();
        assert_eq!(first.body(), b"x");
        assert_eq!(second.tag, b'S');
        assert_eq!(split_frame(&mut b, 64), Ok(None));
    }
}
