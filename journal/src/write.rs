//! The journal write path: reservations in the open entry, writing entries to their replicas,
//! the flush delay, and `last_seq`.
//!
//! A committer first reserves room in the open entry ([`Journal::reserve`]), which fixes the
//! seq its updates belong to; it applies its updates in memory at that seq, pins the seq (see
//! [`crate::pin`]) and then commits the reservation with its keys ([`Journal::commit`]), or
//! cancels it. The open entry is written only when no reservation on it is outstanding, so an
//! entry on disk always holds every update of its seq. It is written when the next reservation
//! does not fit it, on a flush (fsync), or once it is older than `journal_flush_delay` (the
//! journal reclaim thread calls [`Journal::tick`]).
//!
//! Each entry goes to `metadata_replicas` rings, devices of `metadata_target` first, the
//! emptiest first; with fewer rings than that the journal refuses (`insufficient_devices`)
//! rather than write fewer copies than asked for. Both options are read from the live options at
//! each write. When no ring can take an entry the journal is full: `journal_full` (an
//! `operation_blocked` error) tells the committer to run reclaim — flush pins, which writes back
//! what they protect — and retry. Reclaim itself needs a little journal space (the alloc keys
//! its node writes produce), so one bucket per ring is held back for commits made at the
//! reclaim watermark; if even that is gone, reclaim gets `journal_reclaim_would_deadlock`
//! instead of waiting on itself.
//!
//! Locking: one mutex over the journal's state (rings, open entry, pins); device writes happen
//! under it. Pin callbacks run under the separate flush lock and never under the state lock.
//! Once the filesystem is emergency read-only every reservation and flush fails with
//! `journal_shutdown`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fs_core::dev::SharedDevice;
use fs_core::error::{ErrCode, Error, Result};
use fs_core::health::FsHealth;
use fs_core::opts::{LiveOpts, OptId, Options};
use fs_core::sb::label_in_target;
use fs_core::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::format::{JSET_HEADER_BYTES, JSET_NO_FLUSH, Jset, JsetEntry};
use crate::pin::PinTable;
use crate::ring::Ring;

/// What the journal's configuration fixes for its lifetime; everything an option can change
/// at run time is read from the live options instead.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    pub magic: u64,
    pub block_size: u64,
    /// An open entry is written once it holds this many bytes.
    pub max_entry_bytes: usize,
    /// Each ring's device label, for `metadata_target`.
    pub labels: BTreeMap<u8, String>,
    /// Each ring's device durability: the replicas a copy there counts as (1 if absent).
    pub durability: BTreeMap<u8, u8>,
    /// Every device of the filesystem: a flush entry is written only once they are flushed, so
    /// whatever an update in the entry points at (data written before it was committed) is
    /// durable before the entry is (bcachefs's journal write carries REQ_PREFLUSH, and sends
    /// an empty flush to every other member).
    pub preflush: Vec<SharedDevice>,
}

impl JournalConfig {
    fn durability(&self, dev: u8) -> u8 {
        self.durability.get(&dev).copied().unwrap_or(1)
    }
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

/// Room reserved in the open entry for one transaction's keys, at [`JournalRes::seq`]. It must
/// be committed or cancelled; until then the entry is not written.
#[must_use = "a journal reservation must be committed or cancelled"]
#[derive(Debug)]
pub struct JournalRes {
    seq: u64,
    bytes: usize,
    done: bool,
}

impl JournalRes {
    /// The seq the reserved updates belong to.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl Drop for JournalRes {
    fn drop(&mut self) {
        debug_assert!(
            self.done || std::thread::panicking(),
            "journal reservation at seq {} dropped without commit or cancel",
            self.seq
        );
    }
}

pub(crate) struct State {
    rings: Vec<Ring>,
    /// Seq of the open entry.
    pub(crate) seq: u64,
    open: Vec<JsetEntry>,
    /// Bytes the open entry takes: header, committed entries, roots.
    open_bytes: usize,
    opened_at: Option<Instant>,
    /// Reservations on the open entry not yet committed or cancelled, and their bytes.
    outstanding: usize,
    reserved_bytes: usize,
    /// Newest seq known durable (written and flushed).
    flushed_seq: u64,
    /// Once set, every reservation fails: the journal is shut down.
    shutdown: Option<String>,
    /// The btree roots, written into every entry (as bcachefs does) so that the newest entry
    /// of any replay range says where the btrees start.
    roots: Vec<JsetEntry>,
    roots_bytes: usize,
    /// The roots changed since the last entry was written.
    roots_dirty: bool,
    stats: JournalStats,
    pub(crate) pins: PinTable,
}

impl State {
    /// The oldest seq still pinned, or the open seq when nothing is: entries below it are not
    /// needed for replay.
    pub(crate) fn last_seq(&self) -> u64 {
        self.pins.oldest().map_or(self.seq, |p| p.min(self.seq))
    }
}

/// The journal seqs bcachefs keeps pins for at once (its pin fifo, `JOURNAL_PIN`): reclaim
/// flushes the pins of the older half once the open seq is half of it past them.
pub const PIN_FIFO_SEQS: u64 = 32 * 1024;

pub struct Journal {
    st: Mutex<State>,
    /// Signalled when a reservation completes, a pin goes, or an entry is written.
    changed: Condvar,
    /// Held for the whole of a pin flush: one flusher at a time.
    pub(crate) flush_lock: Mutex<()>,
    cfg: JournalConfig,
    opts: Arc<LiveOpts>,
    pub(crate) health: Arc<FsHealth>,
}

impl Journal {
    /// A journal on `rings` whose next entry has seq `next_seq`, following the live `opts`
    /// (`metadata_replicas`, `metadata_target`, `journal_flush_delay`) and stopping when `health`
    /// goes emergency read-only.
    pub fn new(
        rings: Vec<Ring>,
        cfg: JournalConfig,
        next_seq: u64,
        opts: Arc<LiveOpts>,
        health: Arc<FsHealth>,
    ) -> Result<Journal> {
        let want = opts.u64(OptId::MetadataReplicas);
        let total: u64 = rings.iter().map(|r| u64::from(cfg.durability(r.dev_idx))).sum();
        if rings.is_empty() || total < want {
            return Err(Error::new(
                ErrCode::InsufficientDevices,
                format!(
                    "metadata_replicas={want} but the {} devices with journal buckets give only {total} replicas of durability",
                    rings.len()
                ),
            ));
        }
        Ok(Journal {
            st: Mutex::new(State {
                rings,
                seq: next_seq.max(1),
                open: Vec::new(),
                open_bytes: JSET_HEADER_BYTES,
                opened_at: None,
                outstanding: 0,
                reserved_bytes: 0,
                flushed_seq: next_seq.saturating_sub(1),
                shutdown: None,
                roots: Vec::new(),
                roots_bytes: 0,
                roots_dirty: false,
                stats: JournalStats::default(),
                pins: PinTable::default(),
            }),
            changed: Condvar::new(),
            flush_lock: Mutex::new(()),
            cfg,
            opts,
            health,
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock()
    }

    pub(crate) fn wake(&self) {
        self.changed.notify_all();
    }

    /// Seq of the open entry: what the next reservation gets.
    pub fn seq(&self) -> u64 {
        self.lock().seq
    }

    pub fn flushed_seq(&self) -> u64 {
        self.lock().flushed_seq
    }

    pub fn stats(&self) -> JournalStats {
        self.lock().stats
    }

    /// The oldest seq still pinned, or the open seq when nothing is.
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq()
    }

    /// The live options the journal follows.
    pub fn options(&self) -> &Arc<LiveOpts> {
        &self.opts
    }

    /// Sets the btree roots every entry from now on carries (`btree_root` entries).
    pub fn set_roots(&self, roots: Vec<JsetEntry>) {
        let mut st = self.lock();
        let bytes: usize = roots.iter().map(JsetEntry::encoded_bytes).sum();
        st.open_bytes = st.open_bytes - st.roots_bytes + bytes;
        st.roots_bytes = bytes;
        st.roots = roots;
        st.roots_dirty = true;
    }

    /// Refuses all further reservations.
    pub fn shut_down(&self, why: impl Into<String>) {
        self.lock().shutdown.get_or_insert_with(|| why.into());
        self.wake();
    }

    fn check_running(&self, st: &State) -> Result<()> {
        if let Some(why) = &st.shutdown {
            return Err(Error::new(ErrCode::JournalShutdown, format!("journal shut down: {why}")));
        }
        if let Some(cause) = self.health.emergency_ro_cause() {
            return Err(Error::new(
                ErrCode::JournalShutdown,
                format!("journal shut down: emergency read-only after: {cause}"),
            ));
        }
        Ok(())
    }

    /// Bytes of updates one reservation may carry: what fits in an entry beside its header
    /// and the roots.
    pub fn reservation_capacity(&self) -> usize {
        let st = self.lock();
        self.max_entry_bytes(&st).saturating_sub(JSET_HEADER_BYTES + st.roots_bytes)
    }

    /// The largest entry the rings can hold.
    fn max_entry_bytes(&self, st: &State) -> usize {
        let smallest_bucket = st.rings.iter().map(|r| r.bucket_size).min().unwrap_or(0);
        (smallest_bucket as usize).min(self.cfg.max_entry_bytes.max(JSET_HEADER_BYTES))
    }

    /// Reserves room for `bytes` of entries in the open entry (writing the open entry first if
    /// they do not fit beside what it holds). Fails with `journal_full` when no journal space
    /// is left for this watermark, `journal_reclaim_would_deadlock` when reclaim itself finds
    /// none, and `transaction_too_big` for more than an entry can carry.
    pub fn reserve(&self, bytes: usize, wm: JournalWatermark) -> Result<JournalRes> {
        let mut st = self.lock();
        self.check_running(&st)?;
        let capacity = self.max_entry_bytes(&st).saturating_sub(JSET_HEADER_BYTES + st.roots_bytes);
        if bytes > capacity {
            return Err(Error::new(
                ErrCode::TransactionTooBig,
                format!("journal reservation of {bytes} bytes larger than an entry can carry ({capacity})"),
            ));
        }
        if st.open_bytes + st.reserved_bytes + bytes > self.cfg.max_entry_bytes
            && (!st.open.is_empty() || st.outstanding > 0)
        {
            st = self.wait_no_reservations(st)?;
            if !st.open.is_empty() {
                self.write_open(&mut st, false, wm)?;
            }
        }
        // The entry must be writable once closed: check its place now, not when it is too late.
        let padded =
            (st.open_bytes + st.reserved_bytes + bytes).next_multiple_of(self.cfg.block_size.max(1) as usize);
        self.choose_rings(&st, padded as u64, wm)?;
        st.outstanding += 1;
        st.reserved_bytes += bytes;
        Ok(JournalRes { seq: st.seq, bytes, done: false })
    }

    /// Grows `res` to `bytes`, in its own entry: for a committer that reserved before it knew
    /// exactly what it commits and must not move to another entry. Refused with
    /// `transaction_too_big` when the entry has no room left for it.
    pub fn grow(&self, res: &mut JournalRes, bytes: usize, wm: JournalWatermark) -> Result<()> {
        let mut st = self.lock();
        self.check_running(&st)?;
        let extra = bytes.saturating_sub(res.bytes);
        let total = st.open_bytes + st.reserved_bytes + extra;
        if res.seq != st.seq || total > self.max_entry_bytes(&st) {
            return Err(Error::new(
                ErrCode::TransactionTooBig,
                format!("journal entry {} has no room for {extra} more reserved bytes", res.seq),
            ));
        }
        self.choose_rings(&st, total.next_multiple_of(self.cfg.block_size.max(1) as usize) as u64, wm)?;
        st.reserved_bytes += extra;
        res.bytes += extra;
        Ok(())
    }

    /// Adds the reservation's entries to the open entry; returns their seq. `now` starts the
    /// flush delay of an entry that held nothing yet.
    pub fn commit(&self, mut res: JournalRes, entries: Vec<JsetEntry>, now: Instant) -> Result<u64> {
        res.done = true;
        let bytes: usize = entries.iter().map(JsetEntry::encoded_bytes).sum();
        let seq = {
            let mut st = self.lock();
            st.outstanding = st.outstanding.saturating_sub(1);
            st.reserved_bytes = st.reserved_bytes.saturating_sub(res.bytes);
            if bytes > res.bytes {
                drop(st);
                self.wake();
                return Err(Error::internal(format!(
                    "journal commit of {bytes} bytes into a reservation of {}",
                    res.bytes
                ))
                .journal_seq(res.seq));
            }
            st.open.extend(entries);
            st.open_bytes += bytes;
            st.opened_at.get_or_insert(now);
            st.seq
        };
        self.wake();
        debug_assert_eq!(seq, res.seq, "the open entry was written under a reservation");
        Ok(seq)
    }

    /// Gives a reservation back unused.
    pub fn cancel(&self, mut res: JournalRes) {
        res.done = true;
        {
            let mut st = self.lock();
            st.outstanding = st.outstanding.saturating_sub(1);
            st.reserved_bytes = st.reserved_bytes.saturating_sub(res.bytes);
        }
        self.wake();
    }

    /// Reserves and commits `entries` at once (callers that apply nothing in memory: recovery's
    /// blacklist entry, benchmarks); returns their seq.
    pub fn add(&self, entries: Vec<JsetEntry>, wm: JournalWatermark, now: Instant) -> Result<u64> {
        let bytes: usize = entries.iter().map(JsetEntry::encoded_bytes).sum();
        let res = self.reserve(bytes, wm)?;
        self.commit(res, entries, now)
    }

    /// Waits until no reservation on the open entry is outstanding. Reservations are held only
    /// while a committer applies its updates in memory, which never waits on the journal.
    fn wait_no_reservations<'a>(&'a self, mut st: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>> {
        while st.outstanding > 0 {
            self.check_running(&st)?;
            st = self.changed.wait(st);
        }
        Ok(st)
    }

    /// The rings an entry of `bytes` goes to: `metadata_replicas` of them (at most as many as
    /// there are), those of `metadata_target` first, then those with most free buckets.
    fn choose_rings(&self, st: &State, bytes: u64, wm: JournalWatermark) -> Result<Vec<(usize, usize, u64)>> {
        let (want, target) =
            self.opts.with(|o: &Options| (o.metadata_replicas(), o.metadata_target().to_owned()));
        let want = want.max(1);
        let durability = |i: usize| st.rings.get(i).map_or(0, |r| u64::from(self.cfg.durability(r.dev_idx)));
        let total: u64 = (0..st.rings.len()).map(durability).sum();
        if total < want {
            // Never fewer copies than asked for without saying so (ARCHITECTURE.md, principle 1).
            return Err(Error::new(
                ErrCode::InsufficientDevices,
                format!(
                    "metadata_replicas={want} but the {} devices with journal buckets give only {total} replicas of durability",
                    st.rings.len()
                ),
            )
            .journal_seq(st.seq));
        }
        let last_seq = st.last_seq();
        let reserve = match wm {
            JournalWatermark::Normal => RECLAIM_RESERVE_BUCKETS,
            JournalWatermark::Reclaim => 0,
        };
        let mut fits: Vec<(usize, usize, u64, usize)> = st
            .rings
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.place(bytes, last_seq, reserve).map(|(b, o)| (i, b, o, r.free_buckets(last_seq)))
            })
            .collect();
        let in_target = |i: usize| {
            target.is_empty()
                || st
                    .rings
                    .get(i)
                    .and_then(|r| self.cfg.labels.get(&r.dev_idx))
                    .is_some_and(|l| label_in_target(l, &target))
        };
        fits.sort_by_key(|&(i, _, _, free)| (!in_target(i), std::cmp::Reverse(free), i));
        let mut chosen = Vec::new();
        let mut got = 0;
        for (i, b, o, _) in fits {
            if got >= want {
                break;
            }
            got += durability(i);
            chosen.push((i, b, o));
        }
        if got < want {
            return Err(match wm {
                JournalWatermark::Normal => Error::new(
                    ErrCode::JournalFull,
                    format!("journal full: {got} of {want} replicas fit an entry (last_seq {last_seq})"),
                ),
                JournalWatermark::Reclaim => Error::new(
                    ErrCode::JournalReclaimWouldDeadlock,
                    format!("journal reclaim needs journal space and none is left, even in the reserve (last_seq {last_seq})"),
                ),
            }
            .journal_seq(st.seq));
        }
        Ok(chosen)
    }

    /// Writes the open entry if it holds updates, is older than `journal_flush_delay` and no
    /// reservation is outstanding on it. Returns whether it wrote.
    pub fn tick(&self, now: Instant) -> Result<bool> {
        let delay = Duration::from_millis(self.opts.u64(OptId::JournalFlushDelay));
        let mut st = self.lock();
        match st.opened_at {
            Some(at)
                if now.saturating_duration_since(at) >= delay
                    && !st.open.is_empty()
                    && st.outstanding == 0 =>
            {
                self.check_running(&st)?;
                self.write_open(&mut st, true, JournalWatermark::Normal)?;
                drop(st);
                self.wake();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// When the open entry's flush delay ends, if it holds updates: the reclaim thread sleeps
    /// until then.
    pub fn flush_due(&self) -> Option<Instant> {
        let delay = Duration::from_millis(self.opts.u64(OptId::JournalFlushDelay));
        let st = self.lock();
        st.opened_at.filter(|_| !st.open.is_empty()).map(|at| at + delay)
    }

    /// The seq through which reclaim must flush pins (bcachefs's `journal_seq_to_flush`): the
    /// newest seq of the bucket half a ring ahead, the largest over the rings, so that every
    /// ring stays at most half full; and at least the seq half of [`PIN_FIFO_SEQS`] behind the
    /// open one. `None` when no pin is that old. Only the older half of the journal is written
    /// back; the newer half keeps its pins.
    pub fn seq_to_flush(&self) -> Option<u64> {
        let st = self.lock();
        let rings = st.rings.iter().map(Ring::seq_to_flush).max().unwrap_or(0);
        let seq = rings.max(st.seq.saturating_sub(PIN_FIFO_SEQS / 2));
        (seq >= st.last_seq()).then_some(seq)
    }

    /// Makes everything committed so far durable (fsync): writes the open entry as a flush
    /// entry. Returns the seq now durable.
    pub fn flush(&self) -> Result<u64> {
        self.flush_with(JournalWatermark::Normal)
    }

    /// `flush` for a caller at watermark `wm` (reclaim flushes into the reserve).
    pub fn flush_with(&self, wm: JournalWatermark) -> Result<u64> {
        let mut st = self.lock();
        self.check_running(&st)?;
        st = self.wait_no_reservations(st)?;
        if !st.open.is_empty() || st.roots_dirty || st.flushed_seq + 1 < st.seq {
            self.write_open(&mut st, true, wm)?;
        }
        let flushed = st.flushed_seq;
        drop(st);
        self.wake();
        Ok(flushed)
    }

    /// Closes the open entry, writes it to its replicas and opens the next one. No reservation
    /// may be outstanding on it.
    fn write_open(&self, st: &mut State, flush: bool, wm: JournalWatermark) -> Result<()> {
        debug_assert_eq!(st.outstanding, 0, "journal entry written under a reservation");
        let nr_updates = st.open.len();
        let mut jset = Jset {
            seq: st.seq,
            last_seq: st.last_seq(),
            flags: if flush { 0 } else { JSET_NO_FLUSH },
            entries: std::mem::take(&mut st.open),
        };
        jset.entries.extend(st.roots.iter().cloned());
        let bytes = jset.encode(self.cfg.magic, self.cfg.block_size as usize);
        let restore = |st: &mut State, mut jset: Jset| {
            jset.entries.truncate(nr_updates);
            st.open = jset.entries;
        };
        let targets = match self.choose_rings(st, bytes.len() as u64, wm) {
            Ok(t) => t,
            Err(e) => {
                restore(st, jset);
                return Err(e);
            }
        };
        if flush {
            for dev in &self.cfg.preflush {
                if let Err(e) = dev.flush() {
                    let seq = st.seq;
                    restore(st, jset);
                    return Err(e.journal_seq(seq).prefix("flushing before a journal entry"));
                }
            }
        }
        for &(ri, bi, off) in &targets {
            let Some(ring) = st.rings.get(ri) else { continue };
            let at = ring.byte_offset(bi, off);
            if let Err(e) = ring.dev.write_at(&bytes, at) {
                let seq = st.seq;
                restore(st, jset);
                return Err(e.journal_seq(seq).prefix("writing journal entry"));
            }
        }
        if flush {
            for &(ri, _, _) in &targets {
                if let Some(ring) = st.rings.get(ri) {
                    ring.dev.flush().map_err(|e| e.journal_seq(jset.seq))?;
                }
            }
            st.stats.flushes += 1;
        }
        let seq = st.seq;
        for &(ri, bi, off) in &targets {
            if let Some(ring) = st.rings.get_mut(ri) {
                ring.cur = bi;
                ring.offset = off + bytes.len() as u64;
                if let Some(s) = ring.bucket_seq.get_mut(bi) {
                    *s = if off == 0 { seq } else { (*s).max(seq) };
                }
            }
        }
        st.stats.entries_written += 1;
        st.stats.bytes_written += (bytes.len() * targets.len()) as u64;
        if flush {
            st.flushed_seq = seq;
        }
        st.seq += 1;
        st.open_bytes = JSET_HEADER_BYTES + st.roots_bytes;
        st.opened_at = None;
        st.roots_dirty = false;
        Ok(())
    }

    /// Waits until `seq` is durable or `timeout` passes; returns the durable seq. For callers
    /// that wait on the flush delay instead of forcing a flush.
    pub fn wait_flushed(&self, seq: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while st.flushed_seq < seq {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || st.shutdown.is_some() || self.health.is_emergency_ro() {
                break;
            }
            let (guard, _) = self.changed.wait_timeout(st, left);
            st = guard;
        }
        st.flushed_seq
    }
}
