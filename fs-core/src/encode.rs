//! Little-endian encoding with bounds-checked reads.
//!
//! On-disk structs are written through [`Writer`] and read back through [`Reader`]. A read past
//! the end of the buffer is a typed error carrying the offset it wanted, never a panic, so a
//! truncated or garbage structure always decodes to an error the caller can report.

use crate::error::{ErrCode, Error, Result};

/// Appends little-endian values to a byte vector.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Writer { buf: Vec::new() }
    }

    pub fn with_capacity(bytes: usize) -> Self {
        Writer { buf: Vec::with_capacity(bytes) }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }

    /// Appends zero bytes up to the next multiple of `align`.
    pub fn pad_to(&mut self, align: usize) {
        let rem = self.buf.len() % align.max(1);
        if rem != 0 {
            self.zeros(align - rem);
        }
    }

    pub fn zeros(&mut self, n: usize) {
        self.buf.resize(self.buf.len() + n, 0);
    }

    /// Overwrites a u32 already written at `at` (length or checksum fields filled in last).
    /// Returns false if `at` is not inside what has been written.
    pub fn patch_u32(&mut self, at: usize, v: u32) -> bool {
        match self.buf.get_mut(at..at.saturating_add(4)) {
            Some(dst) if dst.len() == 4 => {
                dst.copy_from_slice(&v.to_le_bytes());
                true
            }
            _ => false,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads little-endian values from a byte slice; every read is bounds-checked.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Which structure is being decoded, for error messages.
    what: &'static str,
    /// The code a short read reports: the caller's "invalid structure" code.
    code: ErrCode,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str, code: ErrCode) -> Self {
        Reader { buf, pos: 0, what, code }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// An error of this reader's code, at its current position.
    pub fn error(&self, msg: impl std::fmt::Display) -> Error {
        Error::new(self.code, format!("{}: {msg} at byte {}", self.what, self.pos))
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.buf.len());
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.error(format_args!("truncated: wanted {n} bytes, {} left", self.remaining()))),
        }
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16> {
        self.array().map(u16::from_le_bytes)
    }

    pub fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Result<u64> {
        self.array().map(u64::from_le_bytes)
    }

    pub fn skip(&mut self, n: usize) -> Result<()> {
        self.take(n).map(|_| ())
    }

    /// Skips to the next multiple of `align` (relative to the buffer start).
    pub fn align_to(&mut self, align: usize) -> Result<()> {
        let rem = self.pos % align.max(1);
        if rem == 0 { Ok(()) } else { self.skip(align - rem) }
    }

    /// A sub-reader over the next `n` bytes, for a length-prefixed section.
    /// The bytes read since position `start`.
    pub fn read_since(&self, start: usize) -> &'a [u8] {
        self.buf.get(start..self.pos).unwrap_or_default()
    }

    pub fn sub(&mut self, n: usize, what: &'static str) -> Result<Reader<'a>> {
        let buf = self.take(n)?;
        Ok(Reader { buf, pos: 0, what, code: self.code })
    }
}

/// Recomputes the checksum of a record laid out as the superblock, a jset and a bset are: a
/// crc32c in bytes `[0, 4)` of everything after it up to the record's length, which is the u32
/// at bytes `[4, 8)`. Returns false, changing nothing, when `buf` is shorter than that length
/// or the length does not cover its own field.
///
/// For fuzzing and hand-made damage: edited bytes then reach the checks behind the checksum,
/// as a bug that wrote a wrong record with a good checksum would.
pub fn reseal_record(buf: &mut [u8]) -> bool {
    let len = buf.get(4..8).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    len.is_some_and(|len| reseal_fixed(buf, len as usize))
}

/// [`reseal_record`] for a record of fixed length `len` (a btree node header).
pub fn reseal_fixed(buf: &mut [u8], len: usize) -> bool {
    let Some(covered) = buf.get(4..len) else { return false };
    let csum = crc32c::crc32c(covered).to_le_bytes();
    match buf.get_mut(..4) {
        Some(dst) => {
            dst.copy_from_slice(&csum);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values read back equal what was written, at the offsets the layout says.
    #[test]
    fn round_trip_and_offsets() {
        let mut w = Writer::new();
        w.u8(1);
        w.u16(0x0203);
        w.u32(0x0405_0607);
        w.u64(0x0809_0a0b_0c0d_0e0f);
        w.pad_to(8);
        assert_eq!(w.len(), 16);
        assert_eq!(&w.as_slice()[1..3], &[0x03, 0x02]);
        let v = w.into_vec();
        let mut r = Reader::new(&v, "test", ErrCode::InvalidSbLayout);
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.u16().unwrap(), 0x0203);
        assert_eq!(r.u32().unwrap(), 0x0405_0607);
        assert_eq!(r.u64().unwrap(), 0x0809_0a0b_0c0d_0e0f);
        r.align_to(8).unwrap();
        assert!(r.is_empty());
    }

    /// A short buffer is a typed error with the reader's code, never a panic.
    #[test]
    fn truncation_is_an_error() {
        let mut r = Reader::new(&[1, 2, 3], "thing", ErrCode::InvalidSbLayout);
        let e = r.u32().unwrap_err();
        assert_eq!(e.code(), ErrCode::InvalidSbLayout);
        assert!(e.to_string().contains("thing: truncated"), "{e}");
        assert!(r.take(usize::MAX).is_err());
        assert!(r.sub(4, "x").is_err());
    }

    #[test]
    fn patch_u32_bounds() {
        let mut w = Writer::new();
        w.u32(0);
        assert!(w.patch_u32(0, 7));
        assert!(!w.patch_u32(1, 7));
        assert!(!w.patch_u32(usize::MAX, 7));
        assert_eq!(w.as_slice(), &[7, 0, 0, 0]);
    }
}
