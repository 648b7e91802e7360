//! Block devices: the only way bcsim touches storage.
//!
//! Everything above this module (superblock, journal, btree nodes, bucket data) reads and writes
//! through [`BlockDevice`], so the same code runs on an image file or a real block device
//! ([`FileDevice`]), on memory ([`MemDevice`], cheap enough for terabyte-sized nominal devices in
//! tests), or behind [`FaultyDevice`], which injects I/O errors, torn writes, bit flips and
//! crashes from a seed so that every failure a test finds replays exactly. Every failure is a
//! typed [`Error`] naming the device and the byte offset, never a panic.

pub mod fault;
pub mod file;
pub mod mem;

pub use fault::{
    CrashMode, CrashReport, FaultKind, FaultOp, FaultRule, FaultStats, FaultyDevice, LogEntry, Trigger,
};
pub use file::FileDevice;
pub use mem::MemDevice;

use crate::error::{ErrCode, Error, Result};

/// Everything bcsim reads or writes goes through this trait.
pub trait BlockDevice: Send + Sync + std::fmt::Debug {
    /// Reads exactly `buf.len()` bytes at `offset`. Reading past `size()` is an `IoRead` error
    /// naming offset and length.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Writes all of `buf` at `offset`. Past `size()`: `IoWrite` error. A read-only device:
    /// `IoWrite` error saying so.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;
    /// Tells the device that `len` bytes at `offset` hold nothing anyone needs (a discard, or
    /// TRIM): they read back as zeros afterwards. Image files get a hole punched, memory is
    /// dropped; this default writes zeros, so a wrapper that logs or caches writes (fault
    /// injection, crash recording) sees a discard as the write it is.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_range(
            self.name(),
            offset,
            usize::try_from(len).unwrap_or(usize::MAX),
            self.size(),
            ErrCode::IoWrite,
        )?;
        let zeros = vec![0u8; DISCARD_PIECE_BYTES.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.write_at(zeros.get(..n).unwrap_or_default(), offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
    /// The device's size in bytes.
    fn size(&self) -> u64;
    /// A name for messages: the image path, or e.g. "mem0".
    fn name(&self) -> &str;
}

/// A device shared between the parts of a filesystem and its threads.
pub type SharedDevice = std::sync::Arc<dyn BlockDevice>;

/// The largest write the default discard makes at a time.
const DISCARD_PIECE_BYTES: u64 = 1 << 20;

/// The unit a device writes atomically: a torn write tears at these boundaries.
pub const SECTOR_SIZE: u64 = 512;

/// Checks that `len` bytes at `offset` lie inside a device of `size_bytes`, without overflowing.
///
/// The error carries `code` (`IoRead` for reads, `IoWrite` for writes), the device name as its
/// path and the offset, and its message gives offset, length and device size, because a request
/// past the end is nearly always a wrong size or offset computed higher up.
pub fn check_range(dev_name: &str, offset: u64, len: usize, size_bytes: u64, code: ErrCode) -> Result<()> {
    let end = u64::try_from(len).ok().and_then(|len| offset.checked_add(len));
    match end {
        Some(end) if end <= size_bytes => Ok(()),
        _ => {
            let verb = match code {
                ErrCode::IoRead => "read",
                ErrCode::IoWrite => "write",
                _ => "access",
            };
            Err(Error::new(
                code,
                format!(
                    "{verb} past end of device: offset {offset}, length {len}, device size \
                     {size_bytes}"
                ),
            )
            .path(dev_name)
            .offset(offset))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranges up to the exact end pass; one byte more, or an overflowing end, is a typed error
    /// with the device and offset, never a panic.
    #[test]
    fn check_range_bounds_and_overflow() {
        assert!(check_range("d", 0, 0, 0, ErrCode::IoRead).is_ok());
        assert!(check_range("d", 0, 4096, 4096, ErrCode::IoRead).is_ok());
        assert!(check_range("d", 4096, 0, 4096, ErrCode::IoRead).is_ok());

        let e = check_range("d", 1, 4096, 4096, ErrCode::IoRead).unwrap_err();
        assert_eq!(e.code(), ErrCode::IoRead);
        assert_eq!(e.context().offset, Some(1));
        assert_eq!(e.context().path.as_deref(), Some("d"));
        assert!(e.message().contains("read past end of device"), "{e}");
        assert!(e.message().contains("length 4096"), "{e}");

        let e = check_range("d", u64::MAX, 2, u64::MAX, ErrCode::IoWrite).unwrap_err();
        assert_eq!(e.code(), ErrCode::IoWrite);
        assert!(e.message().contains("write past end"), "{e}");
    }
}
