//! The journal write path: the open entry, reservations, writing entries to their replicas,
//! pins and `last_seq`.
//!
//! Each member device with journal buckets is a ring of buckets. An entry is appended,
//! block-aligned, at the ring position of each of the `replicas` devices it goes to; one that
//! does not fit the rest of a bucket starts the next bucket. A bucket may be reused only when
//! every entry in it is older than `last_seq`, the oldest seq some update still pins (its btree
//! changes are not yet written back). When no ring can take an entry the journal is full:
//! `journal_full` (an `operation_blocked` error) tells the committer to run reclaim — write back
//! dirty btree nodes, which releases pins — and retry.
//!
//! Reclaim itself needs a little journal space (the alloc keys its node writes produce), so one
//! bucket per ring is held back for commits made by reclaim; if even that is gone, reclaim
//! gets `journal_reclaim_would_deadlock` instead of waiting on itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fs_core::dev::SharedDevice;
use fs_core::error::{ErrCode, Error, Result};

use crate::format::{JSET_HEADER_BYTES, JSET_NO_FLUSH, Jset, JsetEntry};

/// One device's journal buckets, as a ring, with where the next entry goes.
#[derive(Debug)]
pub struct Ring {
    pub dev_idx: u8,
    pub dev: SharedDevice,
    pub bucket_size: u64,
    /// Journal bucket indexes in ring order (from the device's superblock).
    pub buckets: Vec<u64>,
    /// Index into `buckets` of the bucket being filled.
    cur: usize,
    /// Byte offset inside the current bucket of the next entry.
    offset: u64,
    /// Newest seq in each bucket; 0 for a bucket holding nothing still needed.
    bucket_seq: Vec<u64>,
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
    pub fn resume(
        dev_idx: u8,
        dev: SharedDevice,
        bucket_size: u64,
        buckets: Vec<u64>,
        magic: u64,
    ) -> Result<Ring> {
        let mut newest: Option<(u64, usize)> = None;
        let mut block = vec![0u8; crate::format::JSET_HEADER_BYTES];
        for (i, &b) in buckets.iter().enumerate() {
            dev.read_at(&mut block, b.saturating_mul(bucket_size)).map_err(|e| e.dev(dev_idx))?;
            if let Some(seq) = crate::format::peek_seq(&block, magic) {
                if newest.is_none_or(|(s, _)| seq > s) {
                    newest = Some((seq, i));
                }
            }
        }
        let n = buckets.len();
        let cur = newest.map_or(0, |(_, i)| (i + 1) % n.max(1));
        Ring::new(dev_idx, dev, bucket_size, buckets, cur, vec![0; n])
    }

    fn next_index(&self) -> usize {
        (self.cur + 1) % self.buckets.len().max(1)
    }

    /// Buckets that hold nothing still needed (older than `last_seq`) ahead of the current one.
    fn free_buckets(&self, last_seq: u64) -> usize {
        let n = self.buckets.len();
        (1..n)
            .map(|i| (self.cur + i) % n)
            .take_while(|&i| self.bucket_seq.get(i).is_none_or(|&s| s < last_seq))
            .count()
    }

    /// Where an entry of `bytes` (padded) would go: the current bucket, or the next one.
    /// `None` if that needs a bucket still holding needed entries, or more than the reserve.
    fn place(&self, bytes: u64, last_seq: u64, reserve: usize) -> Option<(usize, u64)> {
        if bytes > self.bucket_size {
            return None;
        }
        if self.offset + bytes <= self.bucket_size {
            return Some((self.cur, self.offset));
        }
        (self.free_buckets(last_seq) > reserve).then(|| (self.next_index(), 0))
    }

    fn byte_offset(&self, idx: usize, offset: u64) -> u64 {
        self.buckets.get(idx).copied().unwrap_or(0).saturating_mul(self.bucket_size).saturating_add(offset)
    }
}

/// Journal settings.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    pub magic: u64,
    pub block_size: u64,
    /// Copies of each entry, on distinct devices (`metadata_replicas`).
    pub replicas: usize,
    /// An open entry is written once it holds this many bytes.
    pub max_entry_bytes: usize,
    /// An open entry with updates is written after this long (`journal_flush_delay`).
    pub flush_delay: Duration,
    /// Devices of the metadata target: entries go there first, elsewhere only when these
    /// cannot take them. Empty: no preference.
    pub target_devs: Vec<u8>,
}

/// Who is asking for journal space: reclaim may use the reserve others may not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalWatermark {
    Normal,
    Reclaim,
}

/// Buckets per ring held back for reclaim's own commits.
pub const RECLAIM_RESERVE_BUCKETS: usize = 1;

/// Counters for reports and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub entries_written: u64,
    pub bytes_written: u64,
    pub flushes: u64,
}

pub struct Journal {
    rings: Vec<Ring>,
    cfg: JournalConfig,
    /// Seq of the open entry.
    seq: u64,
    open: Vec<JsetEntry>,
    open_bytes: usize,
    opened_at: Option<Instant>,
    /// Pins per seq: updates whose btree changes are not written back yet.
    pins: BTreeMap<u64, u64>,
    /// Newest seq known durable (written and flushed).
    flushed_seq: u64,
    /// Once set, every reservation fails: the journal is shut down (emergency read-only).
    shutdown: Option<String>,
    /// The btree roots, written into every entry (as bcachefs does) so that the newest entry
    /// of any replay range says where the btrees start.
    roots: Vec<JsetEntry>,
    roots_bytes: usize,
    /// The roots changed since the last entry was written.
    roots_dirty: bool,
    stats: JournalStats,
}

impl Journal {
    /// A journal whose next entry has seq `next_seq`.
    pub fn new(rings: Vec<Ring>, cfg: JournalConfig, next_seq: u64) -> Result<Journal> {
        if rings.len() < cfg.replicas.max(1) {
            return Err(Error::new(
                ErrCode::InsufficientDevices,
                format!("journal needs {} devices with journal buckets, has {}", cfg.replicas, rings.len()),
            ));
        }
        Ok(Journal {
            rings,
            cfg,
            seq: next_seq.max(1),
            open: Vec::new(),
            open_bytes: JSET_HEADER_BYTES,
            opened_at: None,
            pins: BTreeMap::new(),
            flushed_seq: next_seq.saturating_sub(1),
            shutdown: None,
            roots: Vec::new(),
            roots_bytes: 0,
            roots_dirty: false,
            stats: JournalStats::default(),
        })
    }

    /// Seq of the open entry: what the next reservation gets.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn flushed_seq(&self) -> u64 {
        self.flushed_seq
    }

    pub fn stats(&self) -> JournalStats {
        self.stats
    }

    /// The oldest seq still pinned, or the open seq when nothing is: entries below it are not
    /// needed for replay.
    pub fn last_seq(&self) -> u64 {
        self.pins.keys().next().copied().unwrap_or(self.seq)
    }

    pub fn pin(&mut self, seq: u64) {
        *self.pins.entry(seq).or_insert(0) += 1;
    }

    /// Releases one pin on `seq`.
    pub fn unpin(&mut self, seq: u64) {
        if let Some(n) = self.pins.get_mut(&seq) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(&seq);
            }
        }
    }

    /// Releases every pin at or below `seq` (reclaim wrote back everything they cover).
    pub fn unpin_through(&mut self, seq: u64) {
        self.pins.retain(|&s, _| s > seq);
    }

    /// Sets the btree roots every entry from now on carries (`btree_root` entries).
    pub fn set_roots(&mut self, roots: Vec<JsetEntry>) {
        let bytes: usize = roots.iter().map(JsetEntry::encoded_bytes).sum();
        self.open_bytes = self.open_bytes - self.roots_bytes + bytes;
        self.roots_bytes = bytes;
        self.roots = roots;
        self.roots_dirty = true;
    }

    /// Refuses all further reservations, e.g. on emergency read-only.
    pub fn shut_down(&mut self, why: impl Into<String>) {
        self.shutdown.get_or_insert_with(|| why.into());
    }

    fn check_running(&self) -> Result<()> {
        match &self.shutdown {
            Some(why) => Err(Error::new(ErrCode::JournalShutdown, format!("journal shut down: {why}"))),
            None => Ok(()),
        }
    }

    /// Adds `entries` to the open entry (one reservation) and returns the seq they belong to.
    /// Fails with `journal_full` when no journal space is left for this watermark, and with
    /// `journal_reclaim_would_deadlock` when reclaim itself finds none.
    pub fn add(&mut self, entries: Vec<JsetEntry>, wm: JournalWatermark, now: Instant) -> Result<u64> {
        self.check_running()?;
        let bytes: usize = entries.iter().map(JsetEntry::encoded_bytes).sum();
        if bytes > self.reservation_capacity() {
            return Err(Error::new(
                ErrCode::TransactionTooBig,
                format!("journal reservation of {bytes} bytes larger than an entry can be"),
            ));
        }
        if self.open_bytes + bytes > self.cfg.max_entry_bytes && !self.open.is_empty() {
            self.write_open(false, wm)?;
        }
        // The entry must be writable once closed: check its place now, not when it is too late.
        let padded = (self.open_bytes + bytes).next_multiple_of(self.cfg.block_size.max(1) as usize) as u64;
        self.choose_rings(padded, wm)?;
        self.open.extend(entries);
        self.open_bytes += bytes;
        self.opened_at.get_or_insert(now);
        Ok(self.seq)
    }

    /// The seq a reservation of `bytes` would get now: the open entry's, or the next one's if
    /// the open entry has to be written first to make room.
    pub fn next_reservation_seq(&self, bytes: usize) -> u64 {
        if self.open_bytes + bytes > self.cfg.max_entry_bytes && !self.open.is_empty() {
            self.seq + 1
        } else {
            self.seq
        }
    }

    /// Bytes of updates one reservation may carry: what fits in an entry beside its header
    /// and the roots.
    pub fn reservation_capacity(&self) -> usize {
        self.max_entry_bytes().saturating_sub(JSET_HEADER_BYTES + self.roots_bytes)
    }

    /// The largest entry the rings can hold.
    fn max_entry_bytes(&self) -> usize {
        let smallest_bucket = self.rings.iter().map(|r| r.bucket_size).min().unwrap_or(0);
        (smallest_bucket as usize).min(self.cfg.max_entry_bytes.max(JSET_HEADER_BYTES))
    }

    /// The rings an entry of `bytes` goes to: `replicas` of them, those with most free buckets
    /// first.
    fn choose_rings(&self, bytes: u64, wm: JournalWatermark) -> Result<Vec<(usize, usize, u64)>> {
        let last_seq = self.last_seq();
        let reserve = match wm {
            JournalWatermark::Normal => RECLAIM_RESERVE_BUCKETS,
            JournalWatermark::Reclaim => 0,
        };
        let mut fits: Vec<(usize, usize, u64, usize)> = self
            .rings
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.place(bytes, last_seq, reserve).map(|(b, o)| (i, b, o, r.free_buckets(last_seq)))
            })
            .collect();
        if fits.len() < self.cfg.replicas.max(1) {
            return Err(match wm {
                JournalWatermark::Normal => Error::new(
                    ErrCode::JournalFull,
                    format!("journal full: {} of {} devices can take an entry (last_seq {last_seq})", fits.len(), self.cfg.replicas),
                ),
                JournalWatermark::Reclaim => Error::new(
                    ErrCode::JournalReclaimWouldDeadlock,
                    format!("journal reclaim needs journal space and none is left, even in the reserve (last_seq {last_seq})"),
                ),
            }
            .journal_seq(self.seq));
        }
        let in_target = |i: usize| {
            self.cfg.target_devs.is_empty()
                || self.rings.get(i).is_some_and(|r| self.cfg.target_devs.contains(&r.dev_idx))
        };
        fits.sort_by_key(|&(i, _, _, free)| (!in_target(i), std::cmp::Reverse(free), i));
        Ok(fits.into_iter().take(self.cfg.replicas.max(1)).map(|(i, b, o, _)| (i, b, o)).collect())
    }

    /// Writes the open entry if it holds updates and is older than the flush delay.
    pub fn tick(&mut self, now: Instant) -> Result<bool> {
        match self.opened_at {
            Some(at)
                if now.saturating_duration_since(at) >= self.cfg.flush_delay && !self.open.is_empty() =>
            {
                self.write_open(true, JournalWatermark::Normal)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Makes everything added so far durable (fsync): writes the open entry as a flush entry.
    /// Returns the seq now durable.
    pub fn flush(&mut self) -> Result<u64> {
        self.flush_with(JournalWatermark::Normal)
    }

    /// `flush` for a caller at watermark `wm` (reclaim flushes into the reserve).
    pub fn flush_with(&mut self, wm: JournalWatermark) -> Result<u64> {
        self.check_running()?;
        if !self.open.is_empty() || self.roots_dirty || self.flushed_seq + 1 < self.seq {
            self.write_open(true, wm)?;
        }
        Ok(self.flushed_seq)
    }

    /// Closes the open entry, writes it to its replicas and opens the next one.
    fn write_open(&mut self, flush: bool, wm: JournalWatermark) -> Result<()> {
        let jset = Jset {
            seq: self.seq,
            last_seq: self.last_seq(),
            flags: if flush { 0 } else { JSET_NO_FLUSH },
            entries: std::mem::take(&mut self.open),
        };
        let nr_updates = jset.entries.len();
        let mut jset = jset;
        jset.entries.extend(self.roots.iter().cloned());
        let bytes = jset.encode(self.cfg.magic, self.cfg.block_size as usize);
        let targets = match self.choose_rings(bytes.len() as u64, wm) {
            Ok(t) => t,
            Err(e) => {
                jset.entries.truncate(nr_updates);
                self.open = jset.entries;
                return Err(e);
            }
        };
        for &(ri, bi, off) in &targets {
            let Some(ring) = self.rings.get(ri) else { continue };
            let at = ring.byte_offset(bi, off);
            if let Err(e) = ring.dev.write_at(&bytes, at) {
                jset.entries.truncate(nr_updates);
                self.open = jset.entries;
                return Err(e.journal_seq(self.seq).prefix("writing journal entry"));
            }
        }
        if flush {
            for &(ri, _, _) in &targets {
                if let Some(ring) = self.rings.get(ri) {
                    ring.dev.flush().map_err(|e| e.journal_seq(self.seq))?;
                }
            }
            self.stats.flushes += 1;
        }
        for &(ri, bi, off) in &targets {
            if let Some(ring) = self.rings.get_mut(ri) {
                if bi != ring.cur {
                    ring.cur = bi;
                }
                ring.offset = off + bytes.len() as u64;
                if let Some(s) = ring.bucket_seq.get_mut(bi) {
                    *s = if off == 0 { self.seq } else { (*s).max(self.seq) };
                }
            }
        }
        self.stats.entries_written += 1;
        self.stats.bytes_written += (bytes.len() * targets.len()) as u64;
        if flush {
            self.flushed_seq = self.seq;
        }
        self.seq += 1;
        self.open_bytes = JSET_HEADER_BYTES + self.roots_bytes;
        self.opened_at = None;
        self.roots_dirty = false;
        Ok(())
    }
}
