//! Wire primitives: big-endian integers, `u16`-length UTF-8 strings, `u32`-length byte strings
//! and `u32`-count arrays. The [`Reader`] never panics on short or hostile input and checks an
//! array count against the bytes left before anything is allocated.

use std::ops::Range;

use crate::error::ProtocolError;

/// Encoded size of a string with no characters (its `u16` length).
pub(crate) const MIN_STRING_BYTES: u64 = 2;

/// A cursor over one frame body.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Takes the next `len` bytes, as a range of the underlying buffer.
    fn take_range(
        &mut self,
        len: usize,
        field: &'static str,
    ) -> Result<Range<usize>, ProtocolError> {
        if len > self.remaining() {
            return Err(ProtocolError::Truncated { field });
        }
        let range = self.pos..self.pos + len;
        self.pos += len;
        Ok(range)
    }

    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        let range = self.take_range(len, field)?;
        self.buf
            .get(range)
            .ok_or(ProtocolError::Truncated { field })
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtocolError> {
        let bytes = self.take(N, field)?;
        bytes
            .try_into()
            .map_err(|_| ProtocolError::Truncated { field })
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, ProtocolError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        let len = usize::from(self.u16(field)?);
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ProtocolError::InvalidUtf8 { field })
    }

    /// A `u32`-length byte string, returned as a range of the underlying buffer (so the caller
    /// can slice a shared `Bytes` without copying).
    pub(crate) fn bytes_range(
        &mut self,
        field: &'static str,
    ) -> Result<Range<usize>, ProtocolError> {
        let len = self.u32(field)?;
        let len = usize::try_from(len).map_err(|_| ProtocolError::Truncated { field })?;
        self.take_range(len, field)
    }

    /// An array count, checked against the bytes left given that every element takes at least
    /// `min_element_bytes`; the result is safe to use as a `Vec` capacity.
    pub(crate) fn count(
        &mut self,
        field: &'static str,
        min_element_bytes: u64,
    ) -> Result<usize, ProtocolError> {
        let count = self.u32(field)?;
        let needed = u64::from(count).saturating_mul(min_element_bytes.max(1));
        let remaining = self.remaining();
        if needed > remaining as u64 {
            return Err(ProtocolError::CountExceedsRemaining {
                field,
                count,
                needed,
                remaining,
            });
        }
        usize::try_from(count).map_err(|_| ProtocolError::Truncated { field })
    }

    /// All the bytes not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        rest
    }

    /// Fails if any byte is left (frames other than Hello/HelloOk have no extension room).
    pub(crate) fn finish(&self, frame: &'static str) -> Result<(), ProtocolError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(ProtocolError::TrailingBytes { frame, count }),
        }
    }
}

pub(crate) fn put_u8(out: &mut Vec<u8>, value: u8) {
    out.push(value);
}

pub(crate) fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

pub(crate) fn put_i32(out: &mut Vec<u8>, value: i32) {
    out.extend_from_slice(&value.to_be_bytes());
}

pub(crate) fn put_i64(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(&value.to_be_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_be_bytes());
}

pub(crate) fn put_string(
    out: &mut Vec<u8>,
    value: &str,
    field: &'static str,
) -> Result<(), ProtocolError> {
    let len = u16::try_from(value.len()).map_err(|_| ProtocolError::FieldTooLong {
        field,
        len: value.len(),
    })?;
    put_u16(out, len);
    out.extend_from_slice(value.as_bytes());
    Ok(())
}

pub(crate) fn put_bytes(
    out: &mut Vec<u8>,
    value: &[u8],
    field: &'static str,
) -> Result<(), ProtocolError> {
    put_count(out, value.len(), field)?;
    out.extend_from_slice(value);
    Ok(())
}

pub(crate) fn put_count(
    out: &mut Vec<u8>,
    count: usize,
    field: &'static str,
) -> Result<(), ProtocolError> {
    let count =
        u32::try_from(count).map_err(|_| ProtocolError::FieldTooLong { field, len: count })?;
    put_u32(out, count);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_rejects_short_input_and_huge_counts() {
        let mut reader = Reader::new(&[0, 5, b'a']);
        assert!(matches!(
            reader.string("name"),
            Err(ProtocolError::Truncated { field: "name" })
        ));

        let mut reader = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0, 0]);
        assert!(matches!(
            reader.count("items", 2),
            Err(ProtocolError::CountExceedsRemaining {
                count: u32::MAX,
                ..
            })
        ));

        let mut reader = Reader::new(&[0, 0, 0, 1, 0, 0]);
        assert_eq!(reader.count("items", 2).unwrap(), 1);
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let mut reader = Reader::new(&[0, 2, 0xc3, 0x28]);
        assert!(matches!(
            reader.string("topic"),
            Err(ProtocolError::InvalidUtf8 { field: "topic" })
        ));
    }
}
