//! One device's journal buckets as a ring: where the next entry goes, and which buckets hold
//! nothing still needed.
//!
//! An entry is appended, block-aligned, at the ring position; one that does not fit the rest of
//! a bucket starts the next bucket. A bucket may be reused only when every entry in it is older
//! than `last_seq`, the oldest seq some update still pins.

use fs_core::dev::SharedDevice;
use fs_core::error::{ErrCode, Error, Result};

/// One device's journal buckets, as a ring, with where the next entry goes.
#[derive(Debug)]
pub struct Ring {
    pub dev_idx: u8,
    pub dev: SharedDevice,
    pub bucket_size: u64,
    /// Journal bucket indexes in ring order (from the device's superblock).
    pub buckets: Vec<u64>,
    /// Index into `buckets` of the bucket being filled.
    pub(crate) cur: usize,
    /// Byte offset inside the current bucket of the next entry.
    pub(crate) offset: u64,
    /// Newest seq in each bucket; 0 for a bucket holding nothing still needed.
    pub(crate) bucket_seq: Vec<u64>,
}

impl Ring {
    /// A ring that starts writing at the start of bucket `cur`; `bucket_seq` gives, per bucket,
    /// the newest seq it holds that may still be needed (0 for none).
    pub fn new(
        dev_idx: u8,
        dev: SharedDevice,
        bucket_size: u64,
        buckets: Vec<u64>,
        cur: usize,
        bucket_seq: Vec<u64>,
    ) -> Result<Ring> {
        Ring::at(dev_idx, dev, bucket_size, buckets, cur, 0, bucket_seq)
    }

    /// A ring whose next entry goes at byte `offset` of bucket index `cur`: where journal read
    /// found the end of the newest entry, so writing continues right after it.
    pub fn at(
        dev_idx: u8,
        dev: SharedDevice,
        bucket_size: u64,
        buckets: Vec<u64>,
        cur: usize,
        offset: u64,
        bucket_seq: Vec<u64>,
    ) -> Result<Ring> {
        if buckets.is_empty()
            || bucket_seq.len() != buckets.len()
            || cur >= buckets.len()
            || offset > bucket_size
        {
            return Err(Error::new(
                ErrCode::InvalidSbJournal,
                "journal ring without buckets or with bad state",
            )
            .dev(dev_idx));
        }
        Ok(Ring { dev_idx, dev, bucket_size, buckets, cur, offset, bucket_seq })
    }

    /// A fresh ring: nothing written yet.
    pub fn empty(dev_idx: u8, dev: SharedDevice, bucket_size: u64, buckets: Vec<u64>) -> Result<Ring> {
        let n = buckets.len();
        Ring::new(dev_idx, dev, bucket_size, buckets, 0, vec![0; n])
    }

    /// A ring that continues after the bucket holding the newest entry found by reading each
    /// bucket's first block, so new entries extend the ring instead of starting over at bucket
    /// 0 (which would leave older entries ahead of newer ones). Entries already there are
    /// treated as no longer needed (everything up to the caller's replay range is written back).
    ///
    /// A bucket whose first block cannot be read is skipped, as bcachefs's journal read skips
    /// a bucket it fails to read rather than failing recovery; its error is returned beside the
    /// ring for the caller to log.
    pub fn resume(
        dev_idx: u8,
        dev: SharedDevice,
        bucket_size: u64,
        buckets: Vec<u64>,
        magic: u64,
    ) -> Result<(Ring, Vec<Error>)> {
        let mut newest: Option<(u64, usize)> = None;
        let mut unreadable = Vec::new();
        let mut block = vec![0u8; crate::format::JSET_HEADER_BYTES];
        for (i, &b) in buckets.iter().enumerate() {
            if let Err(e) = dev.read_at(&mut block, b.saturating_mul(bucket_size)) {
                unreadable.push(e.dev(dev_idx).bucket(b));
                continue;
            }
            if let Some(seq) = crate::format::peek_seq(&block, magic) {
                if newest.is_none_or(|(s, _)| seq > s) {
                    newest = Some((seq, i));
                }
            }
        }
        let n = buckets.len();
        let cur = newest.map_or(0, |(_, i)| (i + 1) % n.max(1));
        Ok((Ring::new(dev_idx, dev, bucket_size, buckets, cur, vec![0; n])?, unreadable))
    }

    pub(crate) fn next_index(&self) -> usize {
        (self.cur + 1) % self.buckets.len().max(1)
    }

    /// Buckets that hold nothing still needed (older than `last_seq`) ahead of the current one.
    pub(crate) fn free_buckets(&self, last_seq: u64) -> usize {
        let n = self.buckets.len();
        (1..n)
            .map(|i| (self.cur + i) % n)
            .take_while(|&i| self.bucket_seq.get(i).is_none_or(|&s| s < last_seq))
            .count()
    }

    /// The newest seq of the bucket half a ring ahead of the current one (bcachefs's
    /// `journal_seq_to_flush`, per device): once the pins up to it are flushed, that bucket
    /// and the ones before it can be reused, so the ring stays at most half full. A ring under
    /// half full gives a seq below `last_seq`, which pins nothing.
    pub(crate) fn seq_to_flush(&self) -> u64 {
        let n = self.buckets.len();
        if n == 0 {
            return 0;
        }
        self.bucket_seq.get((self.cur + n / 2) % n).copied().unwrap_or(0)
    }

    /// Where an entry of `bytes` (padded) would go: the current bucket, or the next one.
    /// `None` if that needs a bucket still holding needed entries, or more than the reserve.
    pub(crate) fn place(&self, bytes: u64, last_seq: u64, reserve: usize) -> Option<(usize, u64)> {
        if bytes > self.bucket_size {
            return None;
        }
        if self.offset + bytes <= self.bucket_size {
            return Some((self.cur, self.offset));
        }
        (self.free_buckets(last_seq) > reserve).then(|| (self.next_index(), 0))
    }

    pub(crate) fn byte_offset(&self, idx: usize, offset: u64) -> u64 {
        self.buckets.get(idx).copied().unwrap_or(0).saturating_mul(self.bucket_size).saturating_add(offset)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use fs_core::dev::{BlockDevice, FaultKind, FaultOp, FaultRule, FaultyDevice, MemDevice, Trigger};
    use fs_core::sync::Arc;

    use super::*;
    use crate::format::JsetHeader;

    const MAGIC: u64 = 0x5eed;
    const BUCKET: u64 = 4096;

    /// Four journal buckets whose first entries carry seqs 5, 9, 7 and nothing, behind a fault
    /// wrapper.
    fn ring_device() -> Arc<FaultyDevice> {
        let mem = Arc::new(MemDevice::new("mem0", 4 * BUCKET));
        for (b, seq) in [(0u64, 5u64), (1, 9), (2, 7)] {
            let h = JsetHeader { magic: MAGIC, seq, ..JsetHeader::default() };
            mem.write_at(&h.to_bytes(), b * BUCKET).unwrap();
        }
        Arc::new(FaultyDevice::new(mem, 1))
    }

    /// Resuming continues after the bucket with the newest seq; a bucket whose first block
    /// cannot be read is skipped, its error returned, instead of failing the mount. With the
    /// newest bucket unreadable, the ring continues after the newest one it could read.
    #[test]
    fn resume_skips_an_unreadable_bucket() {
        let dev = ring_device();
        let (ring, errs) = Ring::resume(0, dev.clone(), BUCKET, vec![0, 1, 2, 3], MAGIC).unwrap();
        assert_eq!((ring.cur, errs.len()), (2, 0));
        dev.add_rule(FaultRule {
            op: FaultOp::Read,
            range: Some(BUCKET..BUCKET + 512),
            trigger: Trigger::Always,
            kind: FaultKind::Eio,
        });
        let (ring, errs) = Ring::resume(0, dev, BUCKET, vec![0, 1, 2, 3], MAGIC).unwrap();
        assert_eq!(ring.cur, 3, "after bucket 2 (seq 7), the newest readable");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].code(), fs_core::error::ErrCode::IoRead);
    }
}
