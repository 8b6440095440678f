//! `Reader`: a bounds-checked cursor over a message body, shared by all decoders.
//!
//! Every read returns an error instead of panicking, so decoders can be written
//! as straight-line code over untrusted bytes.

use crate::WireError;

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The unread bytes, without consuming them.
    pub(crate) fn peek(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let head = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    pub(crate) fn i8(&mut self) -> Result<i8, WireError> {
        Ok(i8::from_be_bytes(self.array()?))
    }

    pub(crate) fn i16(&mut self) -> Result<i16, WireError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, WireError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn array4(&mut self) -> Result<[u8; 4], WireError> {
        self.array()
    }

    /// A NUL-terminated byte string, without its terminator.
    pub(crate) fn cbytes(&mut self) -> Result<&'a [u8], WireError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(WireError::MissingNul)?;
        let s = self.bytes(end)?;
        // Skip the terminator found above.
        self.bytes(1)?;
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string, without its terminator.
    pub(crate) fn cstr(&mut self) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.cbytes()?).map_err(|_| WireError::InvalidUtf8)
    }

    /// A count field (Int16) that must not be negative.
    pub(crate) fn count16(&mut self) -> Result<usize, WireError> {
        usize::try_from(self.i16()?).map_err(|_| WireError::Malformed("negative count"))
    }

    /// An Int32 length-prefixed value where -1 means NULL.
    pub(crate) fn nullable(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        match self.i32()? {
            -1 => Ok(None),
            n => {
                let n = usize::try_from(n)
                    .map_err(|_| WireError::Malformed("negative value length"))?;
                self.bytes(n).map(Some)
            }
        }
    }

    /// `count` Int16 values. The capacity is bounded by the bytes actually
    /// present, so a lying count cannot force a large allocation.
    pub(crate) fn i16s(&mut self, count: usize) -> Result<Vec<i16>, WireError> {
        if count.saturating_mul(2) > self.buf.len() {
            return Err(WireError::Truncated);
        }
        (0..count).map(|_| self.i16()).collect()
    }

    /// `count` nullable values, see [`Reader::nullable`].
    pub(crate) fn nullables(&mut self, count: usize) -> Result<Vec<Option<&'a [u8]>>, WireError> {
        // Each value needs at least its 4-byte length.
        if count.saturating_mul(4) > self.buf.len() {
            return Err(WireError::Truncated);
        }
        (0..count).map(|_| self.nullable()).collect()
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails when bytes are left over: fixed-shape messages must be consumed exactly.
    pub(crate) fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes)
        }
    }
}
