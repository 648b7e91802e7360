//! [`MemDevice`]: a sparse in-memory device for tests and crash-state enumeration.
//!
//! Storage is a map of 64 KiB chunks allocated on first write, so a device of 1 TiB nominal size
//! costs only what is written; bytes never written read as zero, like a fresh sparse image.

use std::collections::HashMap;
use std::fmt;

use super::{BlockDevice, check_range};
use crate::error::{ErrCode, Result};
use crate::sync::Mutex;

/// The allocation unit: large enough that metadata-sized writes touch one or two chunks, small
/// enough that scattered writes on a huge device stay cheap.
const CHUNK_SIZE_BYTES: u64 = 64 * 1024;
const CHUNK_LEN: usize = CHUNK_SIZE_BYTES as usize;

type Chunks = HashMap<u64, Box<[u8]>>;

/// A sparse device in memory. Flush is a no-op: memory is as durable as it gets here.
pub struct MemDevice {
    name: String,
    size_bytes: u64,
    chunks: Mutex<Chunks>,
}

impl fmt::Debug for MemDevice {
    /// Name, size and allocation only: the contents could be gigabytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemDevice")
            .field("name", &self.name)
            .field("size_bytes", &self.size_bytes)
            .field("allocated_bytes", &self.allocated_bytes())
            .finish()
    }
}

/// The piece of a request that falls in one chunk: the chunk's index, where in the chunk the piece
/// starts, and its length (at most `remaining`, never crossing the chunk's end).
fn chunk_piece(pos: u64, remaining: usize) -> (u64, usize, usize) {
    let index = pos / CHUNK_SIZE_BYTES;
    let start = (pos % CHUNK_SIZE_BYTES) as usize;
    let len = remaining.min(CHUNK_LEN - start);
    (index, start, len)
}

/// Copies `src` into the front of `dst`. Zipping never panics; callers size both sides equal.
fn copy_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
}

impl MemDevice {
    /// An all-zero device of `size_bytes`; nothing is allocated until written.
    pub fn new(name: impl Into<String>, size_bytes: u64) -> MemDevice {
        MemDevice { name: name.into(), size_bytes, chunks: Mutex::new(HashMap::new()) }
    }

    /// An independent device with the same size and contents under a new name: later writes to
    /// either do not show in the other. Crash tests fork a base image this way.
    pub fn deep_copy(&self, name: impl Into<String>) -> MemDevice {
        let chunks = self.chunks.lock().clone();
        MemDevice { name: name.into(), size_bytes: self.size_bytes, chunks: Mutex::new(chunks) }
    }

    /// Bytes of memory holding data: written chunks times the chunk size.
    pub fn allocated_bytes(&self) -> u64 {
        (self.chunks.lock().len() as u64).saturating_mul(CHUNK_SIZE_BYTES)
    }
}

impl BlockDevice for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(&self.name, offset, buf.len(), self.size_bytes, ErrCode::IoRead)?;
        let chunks = self.chunks.lock();
        let mut rest = buf;
        let mut pos = offset;
        while !rest.is_empty() {
            let (index, start, len) = chunk_piece(pos, rest.len());
            let (dst, tail) = rest.split_at_mut(len);
            match chunks.get(&index) {
                Some(chunk) => copy_into(dst, chunk.get(start..).unwrap_or_default()),
                None => dst.fill(0),
            }
            rest = tail;
            // Cannot overflow: check_range proved offset + buf.len() fits in u64.
            pos = pos.saturating_add(len as u64);
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(&self.name, offset, buf.len(), self.size_bytes, ErrCode::IoWrite)?;
        let mut chunks = self.chunks.lock();
        let mut rest = buf;
        let mut pos = offset;
        while !rest.is_empty() {
            let (index, start, len) = chunk_piece(pos, rest.len());
            let (src, tail) = rest.split_at(len);
            // Zeros over an unallocated chunk change nothing it would read back, so stay sparse.
            let absent = !chunks.contains_key(&index);
            if !(absent && src.iter().all(|&b| b == 0)) {
                let chunk = chunks.entry(index).or_insert_with(|| vec![0u8; CHUNK_LEN].into_boxed_slice());
                if let Some(dst) = chunk.get_mut(start..) {
                    copy_into(dst, src);
                }
            }
            rest = tail;
            pos = pos.saturating_add(len as u64);
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// Drops the chunks the range covers whole and zeroes the parts of the others.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
        check_range(&self.name, offset, len_usize, self.size_bytes, ErrCode::IoWrite)?;
        let mut chunks = self.chunks.lock();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let (index, start, n) = chunk_piece(pos, usize::try_from(end - pos).unwrap_or(usize::MAX));
            if n == CHUNK_LEN {
                chunks.remove(&index);
            } else if let Some(part) = chunks.get_mut(&index).and_then(|c| c.get_mut(start..start + n)) {
                part.fill(0);
            }
            pos = pos.saturating_add(n as u64);
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size_bytes
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A discard drops whole chunks and zeroes partial ones: the range reads as zeros, the
    /// bytes around it are kept, and memory is given back.
    #[test]
    fn discard_zeroes_and_frees() {
        let dev = MemDevice::new("m", 8 * CHUNK_SIZE_BYTES);
        dev.write_at(&vec![9u8; (4 * CHUNK_SIZE_BYTES) as usize], 0).unwrap();
        dev.discard(CHUNK_SIZE_BYTES / 2, 2 * CHUNK_SIZE_BYTES).unwrap();
        assert_eq!(dev.allocated_bytes(), 3 * CHUNK_SIZE_BYTES, "the whole chunk in the middle is dropped");
        let mut buf = vec![1u8; (4 * CHUNK_SIZE_BYTES) as usize];
        dev.read_at(&mut buf, 0).unwrap();
        let (a, b) =
            ((CHUNK_SIZE_BYTES / 2) as usize, (CHUNK_SIZE_BYTES / 2 + 2 * CHUNK_SIZE_BYTES) as usize);
        assert!(
            buf[..a].iter().all(|&x| x == 9)
                && buf[a..b].iter().all(|&x| x == 0)
                && buf[b..].iter().all(|&x| x == 9)
        );
        assert_eq!(dev.discard(8 * CHUNK_SIZE_BYTES, 1).unwrap_err().code(), ErrCode::IoWrite);
    }
    use crate::rng::Rng;

    fn pattern(len: usize, salt: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt)).collect()
    }

    /// Writes spanning several chunks read back exactly, whole and in unaligned parts.
    #[test]
    fn cross_chunk_round_trip() {
        let dev = MemDevice::new("mem0", 1 << 20);
        let data = pattern(3 * CHUNK_LEN + 100, 1);
        let offset = CHUNK_SIZE_BYTES - 50;
        dev.write_at(&data, offset).unwrap();
        let mut back = vec![0u8; data.len()];
        dev.read_at(&mut back, offset).unwrap();
        assert_eq!(back, data);
        let mut part = vec![0u8; 200];
        dev.read_at(&mut part, offset + CHUNK_SIZE_BYTES - 100).unwrap();
        assert_eq!(part[..], data[CHUNK_LEN - 100..CHUNK_LEN + 100]);
        assert_eq!(dev.allocated_bytes(), 5 * CHUNK_SIZE_BYTES);
    }

    /// Unwritten bytes read as zero, also next to written ones; zero writes stay sparse.
    #[test]
    fn unwritten_reads_zero() {
        let dev = MemDevice::new("mem0", 1 << 40);
        let mut buf = vec![0xaau8; 4096];
        dev.read_at(&mut buf, (1 << 40) - 4096).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        dev.write_at(&[0u8; 8192], 12345).unwrap();
        assert_eq!(dev.allocated_bytes(), 0);
        dev.write_at(&[9u8; 4], 100).unwrap();
        let mut buf = [0xaau8; 8];
        dev.read_at(&mut buf, 98).unwrap();
        assert_eq!(buf, [0, 0, 9, 9, 9, 9, 0, 0]);
    }

    /// Requests past the end, or whose end overflows, are typed errors naming device and offset.
    #[test]
    fn bounds_errors() {
        let dev = MemDevice::new("mem7", 4096);
        let mut buf = [0u8; 2];
        let e = dev.read_at(&mut buf, 4095).unwrap_err();
        assert_eq!(e.code(), ErrCode::IoRead);
        assert_eq!(e.context().offset, Some(4095));
        assert_eq!(e.context().path.as_deref(), Some("mem7"));
        let e = dev.write_at(&buf, 4095).unwrap_err();
        assert_eq!(e.code(), ErrCode::IoWrite);
        let e = dev.write_at(&buf, u64::MAX).unwrap_err();
        assert_eq!(e.code(), ErrCode::IoWrite);
        dev.write_at(&buf, 4094).unwrap();
        dev.read_at(&mut [], 4096).unwrap();
    }

    /// A deep copy starts equal and then evolves independently of its original.
    #[test]
    fn deep_copy_is_independent() {
        let dev = MemDevice::new("base", 1 << 20);
        dev.write_at(&pattern(1000, 3), 500).unwrap();
        let copy = dev.deep_copy("copy");
        assert_eq!(copy.name(), "copy");
        assert_eq!(copy.size(), dev.size());
        dev.write_at(&[1u8; 10], 500).unwrap();
        copy.write_at(&[2u8; 10], 700).unwrap();
        let mut a = vec![0u8; 1000];
        let mut b = vec![0u8; 1000];
        dev.read_at(&mut a, 500).unwrap();
        copy.read_at(&mut b, 500).unwrap();
        let orig = pattern(1000, 3);
        assert_eq!(a[..10], [1u8; 10]);
        assert_eq!(b[..10], orig[..10]);
        assert_eq!(b[200..210], [2u8; 10]);
        assert_eq!(a[200..210], orig[200..210]);
    }

    /// Random writes and reads agree with a flat reference buffer (seeded).
    #[test]
    fn random_ops_match_reference() {
        let seed = 0x5eed_0001;
        let mut rng = Rng::new(seed);
        let size = 4 * CHUNK_LEN;
        let dev = MemDevice::new("mem", size as u64);
        let mut model = vec![0u8; size];
        for step in 0..500 {
            let offset = rng.below(size as u64) as usize;
            let len = rng.below((size - offset) as u64 + 1).min(3 * CHUNK_SIZE_BYTES / 2) as usize;
            if rng.chance(0.5) {
                let mut data = vec![0u8; len];
                rng.fill_bytes(&mut data);
                dev.write_at(&data, offset as u64).unwrap();
                model[offset..offset + len].copy_from_slice(&data);
            } else {
                let mut buf = vec![0u8; len];
                dev.read_at(&mut buf, offset as u64).unwrap();
                assert!(
                    buf[..] == model[offset..offset + len],
                    "seed {seed} step {step}: read at {offset} len {len} differs"
                );
            }
        }
    }
}
