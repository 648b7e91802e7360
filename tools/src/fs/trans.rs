//! Transactions: the one path every update takes into the btrees — the file layer's commits,
//! fsck's repairs, the allocator's published alloc keys, and journal replay.
//!
//! A transaction reserves room in the open journal entry (which fixes its seq), applies its
//! updates to the btrees under the btree lock, accounts the data sectors it adds and drops in
//! the allocator, and puts the alloc keys of exactly those buckets into the btrees and the same
//! journal entry (bcachefs's triggers): after a crash the extents and their buckets' alloc keys
//! come back together or not at all. Anything that fails undoes all of it — btree updates,
//! sector counts, the keys taken from the allocator — and a failed undo is fatal. A full journal
//! sends it to journal reclaim, then it retries. An allocator that cannot give a btree node now
//! (`operation_blocked`) sends a waiting transaction to [`FsShared::wait_on_allocator`], then it
//! retries.
//!
//! Btree nodes a transaction allocates or frees (splits) change their buckets in the allocator
//! only; those alloc keys are published by write-back in the journal entry that carries the new
//! roots, the first that makes the nodes reachable or unreachable on disk
//! ([`FsShared::publish_locked`]).
//!
//! Journal replay commits through [`ReplayTrans`]: no reservation (the keys are in the journal
//! already, at their own seqs), the caller's watermark, and each key routed by btree. That is
//! where bcachefs sends level-0 alloc keys through the key cache.

use std::collections::BTreeMap;

use allocator::Watermark;
use fs_core::bkey::alloc::ALLOC_V4_BYTES;
use fs_core::bkey::{Bkey, DataType, ExtentPtr, KEY_HEADER_BYTES, KeyRef};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::Btrees;
use fs_core::error::{ErrCode, Error, Result};
use fs_core::sync::MutexGuard;
use journal::{JournalWatermark, JsetEntry};
use key_cache::{FillInput, Update};

use super::{Fs, FsShared};

/// Rounds of "commit alloc updates, write back" before giving up: each round's updates touch
/// only the buckets the previous round's node writes used, so a few rounds always suffice.
pub(crate) const MAX_SETTLE_ROUNDS: usize = 32;

/// Journal-full retries of one transaction, each after journal reclaim.
const MAX_JOURNAL_RETRIES: usize = 3;

/// How a transaction commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CommitFlags {
    /// Whose journal space it may use: reclaim's own commits may use the reserve.
    pub wm: JournalWatermark,
    /// A transaction blocked on the allocator waits for it and retries. Commits made by
    /// write-back (reclaim's work) never wait: they return the error.
    pub may_wait: bool,
}

impl CommitFlags {
    pub(crate) const NORMAL: CommitFlags = CommitFlags { wm: JournalWatermark::Normal, may_wait: true };
    pub(crate) const RECLAIM: CommitFlags = CommitFlags { wm: JournalWatermark::Reclaim, may_wait: false };
}

/// How [`FsShared::apply`] treats positions of the key cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// A transaction: cached btrees' keys go through the cache.
    Cache,
    /// Write-back's publication: everything into the btree; entries there are dropped.
    WriteThrough,
}

/// The btrees whose transactions go through the key cache at run time, as in bcachefs: alloc,
/// whose keys every data write and discard updates, and inodes, which every write, truncate and
/// link count change updates. Reads go through the cache (`Fs::get`, `Fs::list`); the one
/// read that does not, the highest inode number at start (`Fs::last_until`), needs only the
/// position, which the btree always has where the cache holds an entry.
fn runtime_cached(btree: BtreeId) -> bool {
    matches!(btree, BtreeId::Alloc | BtreeId::Inodes)
}

/// What undoing applied updates takes: each position's previous key, in apply order.
type Undo = Vec<(BtreeId, Bpos, Option<Bkey>)>;

/// Journal bytes an update may take: its key, and an entry header of its own at worst (one
/// per btree in the transaction).
pub fn update_bytes(u: &(BtreeId, Bkey)) -> usize {
    u.1.encoded_bytes() + journal::format::ENTRY_HEADER_BYTES
}

pub(crate) fn not_settling() -> Error {
    Error::new(
        ErrCode::BucketAccounting,
        format!("alloc updates did not settle in {MAX_SETTLE_ROUNDS} rounds"),
    )
}

/// The journal entries of a transaction: one `btree_keys` entry per btree, in order.
fn entries(updates: &[(BtreeId, Bkey)]) -> Vec<JsetEntry> {
    let mut by_btree: BTreeMap<BtreeId, Vec<Bkey>> = BTreeMap::new();
    for (btree, k) in updates {
        by_btree.entry(*btree).or_default().push(k.clone());
    }
    by_btree
        .into_iter()
        .map(|(btree, keys)| JsetEntry::BtreeKeys { btree, level: 0, keys: keys.into() })
        .collect()
}

/// Errors after which the in-memory state cannot be trusted: the allocator contradicting the
/// btree, or a broken invariant. The filesystem goes emergency read-only on them.
fn is_fatal(e: &Error) -> bool {
    e.matches(ErrCode::BucketAccounting) || e.matches(ErrCode::Internal)
}

/// Journal bytes one bucket's alloc keys may take when a transaction or a publication hands
/// them out: its alloc key, its need_discard key, and the freespace range keys it rewrites (a
/// change of one bucket removes at most two runs and adds at most two; four keys is the bound).
pub const ALLOC_UPDATE_BYTES: usize =
    KEY_HEADER_BYTES + ALLOC_V4_BYTES + KEY_HEADER_BYTES + 4 * KEY_HEADER_BYTES;

/// The entry headers of a transaction's alloc keys: one entry per alloc btree.
const ALLOC_ENTRIES_BYTES: usize = 3 * journal::format::ENTRY_HEADER_BYTES;

/// Room a write-back round leaves in its entry for roots it creates (a btree's first root).
const ROOTS_SLACK_BYTES: usize = 1024;

/// Journal bytes the alloc keys of `buckets` buckets may take in one transaction.
pub fn alloc_update_bytes(buckets: usize) -> usize {
    if buckets == 0 {
        0
    } else {
        ALLOC_ENTRIES_BYTES.saturating_add(buckets.saturating_mul(ALLOC_UPDATE_BYTES))
    }
}

/// A transaction's data sector changes, `(dev, bucket, delta)`, and other buckets whose pending
/// alloc keys it commits (`delta` 0: discarded buckets).
type Sectors = Vec<(u8, u64, i64)>;

impl FsShared {
    /// Reports `e` to the health state if it is fatal, and hands it back.
    pub(crate) fn check_fatal(&self, e: Error) -> Error {
        if is_fatal(&e) {
            self.health.fatal(&e);
        }
        e
    }

    /// Commits updates to any btrees as one transaction with the data sectors it adds or drops
    /// (`sectors`: extent pointers with the sectors each gains, negative: loses), and the alloc
    /// keys of those buckets, all in one journal entry. Returns the journal seq.
    ///
    /// A bucket the transaction empties is stamped with the transaction's own seq: it is
    /// discarded only once that seq is durable, when no key pointing into it can come back.
    pub(crate) fn commit_with_sectors(
        &self,
        mut updates: Vec<(BtreeId, Bkey)>,
        sectors: &[(&[ExtentPtr], i64)],
    ) -> Result<u64> {
        let mut by_bucket: BTreeMap<(u8, u64), i64> = BTreeMap::new();
        for &(ptrs, delta) in sectors {
            for p in ptrs {
                *by_bucket.entry((p.dev, p.byte_offset() / self.bucket_size(p.dev))).or_default() += delta;
            }
        }
        let sectors: Sectors =
            by_bucket.into_iter().filter(|(_, d)| *d != 0).map(|((dev, b), d)| (dev, b, d)).collect();
        let seq = self.commit_waiting(&mut updates, &sectors, CommitFlags::NORMAL)?;
        self.maybe_publish()?;
        Ok(seq)
    }

    /// A foreground commit that leaves the key cache past its throttle threshold flushes the
    /// pins below its own seq before it returns: it does the reclaim it would otherwise wait
    /// for.
    fn throttle_on_key_cache(&self, seq: u64) -> Result<()> {
        if self.key_cache.as_ref().is_some_and(|c| c.pressure() == key_cache::Pressure::Throttle) {
            match self.journal_rw()?.flush_pins(seq.saturating_sub(1)) {
                // Not now: reclaim's reserve is gone; the next commit tries again.
                Err(e) if e.matches(ErrCode::JournalReclaimWouldDeadlock) => {}
                r => {
                    r?;
                }
            }
        }
        Ok(())
    }

    /// Has write-back publish the node alloc keys waiting for it once there are many: they must
    /// fit the one journal entry that publishes them.
    fn maybe_publish(&self) -> Result<()> {
        if self.publish_due() {
            self.write_back()?;
        }
        Ok(())
    }

    /// True once the alloc keys waiting for publication could, at worst, fill a journal entry:
    /// whoever allocates btree nodes outside transactions (replay, bulk loads) then writes back.
    /// The worst case ([`ALLOC_UPDATE_BYTES`] a bucket) is about three times what publication
    /// really writes, which leaves room for the rewrites of the write-back that publishes them.
    /// Constant time: it runs after every transaction.
    pub fn publish_due(&self) -> bool {
        let Some(alloc) = &self.alloc else { return false };
        let worst = alloc_update_bytes(usize::try_from(alloc.pending_updates()).unwrap_or(usize::MAX));
        worst > self.transaction_capacity()
    }

    /// One transaction; blocked on the allocator, it waits (when `flags` allow) and retries a
    /// bounded number of times.
    fn commit_waiting(
        &self,
        updates: &mut Vec<(BtreeId, Bkey)>,
        sectors: &Sectors,
        flags: CommitFlags,
    ) -> Result<u64> {
        let mut waiter = None;
        loop {
            match self.transaction(updates, sectors, flags) {
                Ok(seq) => {
                    if flags.may_wait {
                        self.throttle_on_key_cache(seq)?;
                    }
                    return Ok(seq);
                }
                Err(e)
                    if flags.may_wait
                        && e.matches(ErrCode::OperationBlocked)
                        && !e.matches(ErrCode::JournalResBlocked) =>
                {
                    waiter.get_or_insert_with(|| self.alloc_waiter()).wait(e)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// What a transaction blocked on the allocator waits for, done by the waiting thread
    /// itself: everything written back (and the node alloc keys published) and the journal
    /// flushed, so that nothing on disk or in the journal still points into the buckets emptied
    /// so far (nor into the btree nodes freed by splits and rewrites), then every such bucket
    /// discarded — on the device too when the `discard` option is on. Returns how many buckets
    /// became free.
    pub(crate) fn wait_on_allocator(&self) -> Result<usize> {
        self.discard_round().map(|freed| freed.len())
    }

    /// [`FsShared::wait_on_allocator`], returning the buckets freed, `(dev, bucket)`.
    pub(crate) fn discard_round(&self) -> Result<Vec<(u8, u64)>> {
        let Some(alloc) = &self.alloc else { return Ok(Vec::new()) };
        self.write_back()?;
        let durable = self.journal_rw()?.flush()?;
        // While journal replay runs, buckets emptied in the range being replayed stay: a
        // rewind of the replay may need what they hold.
        let durable = durable.min(self.rewind_seq().saturating_sub(1));
        if !self.discards_running() {
            return Ok(Vec::new());
        }
        self.discard_in_rounds(alloc, None, durable)
    }

    /// A discard worker's round on `dev`: the need_discard buckets whose emptying the journal
    /// has made durable (without flushing it) and that the rewind buffer does not keep are
    /// discarded — on the device too when the `discard` option is on — their alloc keys
    /// committed, and the updates parked on `dev` woken. Returns how many.
    pub(crate) fn discard_dev(&self, dev: u8) -> Result<usize> {
        let Some(alloc) = &self.alloc else { return Ok(0) };
        if !self.discards_running() {
            return Ok(0);
        }
        let durable = self.journal_rw()?.flushed_seq().min(self.rewind_seq().saturating_sub(1));
        let freed = self.discard_in_rounds(alloc, Some(dev), durable)?;
        if !freed.is_empty() {
            self.klog(&format!("discard: dev {dev}: {} buckets discarded", freed.len()));
        }
        Ok(freed.len())
    }

    /// Discards what is durable up to `durable` on `only` (or every device), a round at a
    /// time, each round's alloc keys committed in one transaction before the next: the keys of
    /// discarded buckets wait in the allocator until committed, and write-back publishes
    /// whatever waits there in one journal entry, so no more than a transaction's worth may
    /// ever wait (with discard workers, write-back runs beside them). Parked updates on each
    /// device that gained buckets are woken after each round.
    fn discard_in_rounds(
        &self,
        alloc: &allocator::Allocator,
        only: Option<u8>,
        durable: u64,
    ) -> Result<Vec<(u8, u64)>> {
        let per_round = self.buckets_per_transaction();
        let mut all = Vec::new();
        loop {
            let freed = alloc
                .discard_durable_on(only, durable, self.rewind_buffer(), per_round)
                .map_err(|e| self.check_fatal(e))?;
            if freed.is_empty() {
                return Ok(all);
            }
            if self.opts.u64(fs_core::opts::OptId::Discard) == 1 {
                self.discard_on_devices(&freed)?;
            }
            self.commit_buckets(&freed)?;
            if let Some(waits) = &self.waits {
                for &(dev, _) in &freed {
                    waits.buckets_freed(dev);
                }
            }
            all.extend(freed);
        }
    }

    /// Discarded buckets whose alloc keys one transaction commits.
    fn buckets_per_transaction(&self) -> usize {
        (self.transaction_capacity() / ALLOC_UPDATE_BYTES / 2).max(1)
    }

    /// Commits the pending alloc keys of `buckets` (discarded ones), in as many transactions
    /// as they need: unlike a node's, a discarded bucket's keys stand on their own.
    fn commit_buckets(&self, buckets: &[(u8, u64)]) -> Result<()> {
        for chunk in buckets.chunks(self.buckets_per_transaction()) {
            let work: Sectors = chunk.iter().map(|&(dev, b)| (dev, b, 0)).collect();
            self.transaction(&mut Vec::new(), &work, CommitFlags::RECLAIM)?;
        }
        Ok(())
    }

    /// Device-level discards of `buckets`, `(dev, bucket)`: they read back as zeros from now
    /// on, so no stale node or data in them can be mistaken for a live one. A failed discard
    /// is an I/O error like any other write's.
    fn discard_on_devices(&self, buckets: &[(u8, u64)]) -> Result<()> {
        for &(dev, bucket) in buckets {
            let Some(d) = self.device(dev) else { continue };
            let size = self.bucket_size(dev);
            d.discard(bucket * size, size)
                .map_err(|e| e.dev(dev).bucket(bucket).prefix("discarding a bucket"))?;
        }
        Ok(())
    }

    /// Commits updates in as many transactions as their size needs: for bulk loads and
    /// repairs, where atomicity across the whole set is not wanted. Returns the last seq.
    pub(crate) fn commit_batched(&self, updates: Vec<(BtreeId, Bkey)>) -> Result<u64> {
        let mut seq = 0;
        for mut batch in self.batches(updates) {
            seq = self.commit_waiting(&mut batch, &Vec::new(), CommitFlags::NORMAL)?;
            self.maybe_publish()?;
        }
        Ok(seq)
    }

    /// `updates` cut into transactions that each fit one journal reservation, in order.
    pub(crate) fn batches(&self, updates: Vec<(BtreeId, Bkey)>) -> Vec<Vec<(BtreeId, Bkey)>> {
        let capacity = self.transaction_capacity();
        let mut out: Vec<Vec<(BtreeId, Bkey)>> = Vec::new();
        let mut bytes = 0usize;
        for u in updates {
            let b = update_bytes(&u);
            if out.is_empty() || bytes.saturating_add(b) > capacity {
                out.push(Vec::new());
                bytes = 0;
            }
            bytes += b;
            if let Some(last) = out.last_mut() {
                last.push(u);
            }
        }
        out
    }

    pub(crate) fn transaction_capacity(&self) -> usize {
        self.journal.as_ref().map_or(usize::MAX, |j| j.reservation_capacity())
    }

    /// One transaction (see the module docs). A full journal (at the normal watermark) runs
    /// journal reclaim and tries again.
    ///
    /// The updates are taken from `updates`; a transaction that fails puts them back, so that
    /// the caller can retry without having kept a copy.
    fn transaction(
        &self,
        updates: &mut Vec<(BtreeId, Bkey)>,
        sectors: &Sectors,
        flags: CommitFlags,
    ) -> Result<u64> {
        let journal = self.journal_rw()?.clone();
        self.health.check_rw()?;
        for _ in 0..MAX_JOURNAL_RETRIES {
            let mut t = self.btrees.lock();
            match self.transaction_locked(&mut t, &journal, updates, sectors, flags) {
                Ok(seq) => return Ok(seq),
                Err(e) => {
                    drop(t);
                    if e.code() != ErrCode::JournalFull || flags.wm != JournalWatermark::Normal {
                        return Err(self.check_fatal(e));
                    }
                    // Direct reclaim: flush the pins (writing back what they hold), then retry.
                    journal.flush_all_pins()?;
                }
            }
        }
        Err(Error::new(ErrCode::JournalStuck, "journal still full after reclaim"))
    }

    /// [`FsShared::transaction`] under the btree lock.
    fn transaction_locked(
        &self,
        t: &mut Btrees,
        journal: &journal::Journal,
        updates: &mut Vec<(BtreeId, Bkey)>,
        sectors: &Sectors,
        flags: CommitFlags,
    ) -> Result<u64> {
        let capacity = journal.reservation_capacity();
        let user_bytes: usize = entries(updates).iter().map(JsetEntry::encoded_bytes).sum();
        let bytes = user_bytes + alloc_update_bytes(sectors.len());
        if bytes > capacity {
            return Err(Error::new(
                ErrCode::TransactionTooBig,
                format!("transaction of {bytes} bytes does not fit one journal entry ({capacity} bytes)"),
            ));
        }
        let res = journal.reserve(bytes, flags.wm)?;
        let seq = res.seq();
        let undo = match self.apply(t, updates, seq, Route::Cache) {
            Ok(undo) => undo,
            Err(e) => {
                journal.cancel(res);
                return Err(e);
            }
        };
        let alloc_updates = match self.account(t, sectors, seq) {
            Ok(a) => a,
            Err(e) => {
                let e = self.undo(t, undo, seq, e);
                journal.cancel(res);
                return Err(e);
            }
        };
        if let Err(e) = self.ensure_wb_pin(seq) {
            journal.cancel(res);
            return Err(e);
        }
        let mut all = std::mem::take(updates);
        all.extend(alloc_updates);
        // Fails only on more bytes than reserved: a wrong estimate, an internal error (fatal).
        let seq = journal.commit(res, entries(&all), self.now())?;
        self.note_replay_overwrites(&all);
        Ok(seq)
    }

    /// Accounts `sectors` in the allocator and puts the alloc keys of those buckets into the
    /// btrees at `seq`; returns the keys for the journal. On failure nothing of it remains: the
    /// keys are given back to the allocator and the buckets' states restored.
    fn account(&self, t: &mut Btrees, sectors: &Sectors, seq: u64) -> Result<Vec<(BtreeId, Bkey)>> {
        let Some(alloc) = self.alloc.as_ref().filter(|_| !sectors.is_empty()) else { return Ok(Vec::new()) };
        let buckets: Vec<(u8, u64)> = sectors.iter().map(|&(dev, b, _)| (dev, b)).collect();
        let before = alloc.states_of(&buckets)?;
        let changes: Vec<(u8, u64, DataType, i64)> =
            sectors.iter().filter(|s| s.2 != 0).map(|&(dev, b, d)| (dev, b, DataType::User, d)).collect();
        alloc.add_sectors_all(&changes, seq)?;
        let taken = alloc.take_updates_of(&buckets, seq);
        match self.apply(t, &taken.updates, seq, Route::Cache) {
            Ok(_) => Ok(taken.updates),
            Err(e) => {
                alloc.untake(taken);
                if let Err(r) = alloc.restore(&before) {
                    self.health.fatal(
                        &r.prefix(format_args!("restoring bucket states after a failed transaction ({e})")),
                    );
                }
                Err(e)
            }
        }
    }

    /// Applies updates to the btrees; on failure undoes the ones applied and returns the
    /// error. On success returns what undoing them takes.
    ///
    /// With `Route::Cache` (transactions), a live key of a btree the key cache holds at run time
    /// (alloc) goes to the cache when the position has an entry or a live btree key to fill one
    /// from: the entry is dirty and pinned at `seq`, and its flush writes it back later. Cache
    /// updates are made once every btree insert has succeeded (they do not fail, so nothing
    /// there needs undoing). A deletion, and a key with nothing to fill from, go into the btree
    /// and drop the entry, if any. With `Route::WriteThrough` (write-back's publication) every
    /// key goes into the btree and drops the entry at its position: publication never makes
    /// the cache dirty, so write-back settles.
    fn apply(&self, t: &mut Btrees, updates: &[(BtreeId, Bkey)], seq: u64, route: Route) -> Result<Undo> {
        let mut undo: Undo = Vec::with_capacity(updates.len());
        let mut to_cache = Vec::new();
        let mut to_drop = Vec::new();
        for (btree, k) in updates {
            let old = match t.get(*btree, k.pos) {
                Ok(old) => old,
                Err(e) => return Err(self.undo(t, undo, seq, e)),
            };
            if let Some(cache) = &self.key_cache {
                let entry = cache.has_entry(*btree, k.pos);
                let fill_from = old.as_ref().is_some_and(|o| !o.is_deleted());
                let cached = route == Route::Cache
                    && !k.is_deleted()
                    && (entry || (runtime_cached(*btree) && fill_from));
                if cached {
                    to_cache.push((*btree, k, old));
                    continue;
                }
                if entry {
                    to_drop.push((*btree, k.pos));
                }
            }
            if let Err(e) = t.insert(*btree, k.clone(), seq) {
                return Err(self.undo(t, undo, seq, e));
            }
            undo.push((*btree, k.pos, old));
        }
        if let (Some(cache), Some(journal)) = (&self.key_cache, &self.journal) {
            for (btree, pos) in to_drop {
                cache.invalidate(journal, btree, pos).map_err(|e| self.check_fatal(e))?;
            }
            for (btree, k, old) in to_cache {
                let fill = || Ok(FillInput { btree_key: old, journal_key: None });
                cache.update(journal, btree, k.clone(), seq, fill).map_err(|e| self.check_fatal(e))?;
            }
        }
        Ok(undo)
    }

    /// Puts back what `apply` replaced, newest first, and returns `cause`, the error that made
    /// the undo necessary. Putting back a value that was there before needs no new node in
    /// practice; if it fails anyway, the filesystem goes emergency read-only, and `cause` is
    /// still what the caller sees.
    fn undo(&self, t: &mut Btrees, undo: Undo, seq: u64, cause: Error) -> Error {
        for (btree, pos, old) in undo.into_iter().rev() {
            if let Err(e) = t.insert_undo(btree, old.unwrap_or_else(|| Bkey::whiteout(pos)), seq) {
                self.health.fatal(&e.prefix(format_args!("undoing a failed transaction ({cause})")));
                break;
            }
        }
        cause
    }

    /// Pins `seq` for write-back: the pin sits at the oldest seq whose updates are in btree
    /// nodes not yet written. Called with the btree lock held, so write-back, which drops the
    /// pin once nothing is dirty, never misses an update applied meanwhile.
    pub(crate) fn ensure_wb_pin(&self, seq: u64) -> Result<()> {
        let Some(journal) = &self.journal else { return Ok(()) };
        let mut pin = self.wb_pin.lock();
        match pin.as_mut() {
            None => *pin = Some(journal.pin_add(seq, self.wb_flush.clone())?),
            Some(p) if p.seq() > seq => journal.pin_update(p, seq)?,
            Some(_) => {}
        }
        Ok(())
    }

    /// Publishes the alloc keys waiting in the allocator — the buckets btree nodes were
    /// allocated in and freed from, discards — in one transaction, under the btree lock held by
    /// write-back right after it set the new roots: the entry that carries these keys is the
    /// first whose roots reach the new nodes and no longer reach the freed ones, and a freed
    /// node's bucket is stamped with this entry's seq, so it is discarded only once the entry
    /// is durable. The keys themselves dirty alloc btree nodes, which the next round of
    /// write-back writes and (if that allocates nodes) publishes in turn.
    pub(crate) fn publish_locked(
        &self,
        t: &mut Btrees,
        journal: &journal::Journal,
        mut res: journal::JournalRes,
        reserved: usize,
    ) -> Result<()> {
        let Some(alloc) = &self.alloc else {
            journal.cancel(res);
            return Ok(());
        };
        let pending = alloc.pending_updates();
        if pending == 0 {
            journal.cancel(res);
            return Ok(());
        }
        let seq = res.seq();
        let taken = alloc.take_updates_at(seq);
        let jentries = entries(&taken.updates);
        let bytes: usize = jentries.iter().map(JsetEntry::encoded_bytes).sum();
        // More than the bound at the start of the round: buckets a discard worker freed
        // meanwhile wait here too. The entry is the one the round's bsets carry: grow in it.
        if bytes > reserved && journal.grow(&mut res, bytes, CommitFlags::RECLAIM.wm).is_err() {
            alloc.untake(taken);
            journal.cancel(res);
            return Err(Error::new(
                ErrCode::TransactionTooBig,
                format!(
                    "the alloc keys of {pending} buckets of btree nodes allocated and freed since the last write-back \
                     ({bytes} bytes) do not fit one journal entry ({reserved} bytes): write back more often, or use \
                     larger buckets"
                ),
            ));
        }
        if let Err(e) = self.apply(t, &taken.updates, seq, Route::WriteThrough) {
            alloc.untake(taken);
            journal.cancel(res);
            return Err(e);
        }
        if let Err(e) = self.ensure_wb_pin(seq) {
            journal.cancel(res);
            return Err(e);
        }
        journal.commit(res, jentries, self.now())?;
        self.note_replay_overwrites(&taken.updates);
        Ok(())
    }

    /// The reservation a write-back round publishes into, taken before it writes: the alloc
    /// keys waiting now, and at worst, for every dirty node, a rewrite that allocates one node
    /// and frees another on each replica; at most what an entry takes beside the roots. What
    /// is published is measured exactly, so the bound only has to be a bound.
    pub(crate) fn reserve_publication(
        &self,
        t: &Btrees,
        journal: &journal::Journal,
    ) -> Result<(journal::JournalRes, usize)> {
        let pending = self.alloc.as_ref().map_or(0, |a| a.pending_key_bytes());
        let replicas = usize::try_from(self.opts.u64(fs_core::opts::OptId::MetadataReplicas)).unwrap_or(1);
        let rewrites = t.dirty_nodes().saturating_mul(2 * replicas).saturating_mul(ALLOC_UPDATE_BYTES);
        let bound = ALLOC_ENTRIES_BYTES.saturating_add(pending).saturating_add(rewrites);
        // New roots may still join the entry's roots: leave them room.
        let room = journal.reservation_capacity().saturating_sub(ROOTS_SLACK_BYTES);
        let reserved = bound.min(room);
        Ok((journal.reserve(reserved, CommitFlags::RECLAIM.wm)?, reserved))
    }

    /// Journal replay's transaction: see [`ReplayTrans`]. The replayed keys' seqs start at
    /// `first_seq`; nodes are allocated at `wm` while it lasts.
    pub fn replay_trans(&self, wm: Watermark, first_seq: u64) -> Result<ReplayTrans<'_>> {
        self.health.check_rw()?;
        let btrees = self.btrees.lock();
        self.ensure_wb_pin(first_seq)?;
        let saved_wm = self.nodes.as_ref().map(|n| {
            let old = n.watermark();
            n.set_watermark(wm);
            old
        });
        Ok(ReplayTrans { fs: self, btrees, saved_wm, cached: 0, written_through: 0 })
    }
}

/// Where a replayed key goes: level-0 `alloc` keys through the btree key cache, as bcachefs
/// does at v1.37.5 and since; everything else into its btree.
fn replay_route(btree: BtreeId, level: u8) -> ReplayRoute {
    if btree == BtreeId::Alloc && level == 0 { ReplayRoute::KeyCache } else { ReplayRoute::Btree }
}

enum ReplayRoute {
    Btree,
    KeyCache,
}

/// Journal replay's transaction: keys that are already in the journal go into the btrees at
/// their own seqs, with no journal reservation, in whatever order the caller gives them
/// (sorted, for speed), borrowed straight from the journal keys. Holds the btree lock for its
/// whole life; the write-back pin covers every seq from the first one on.
pub struct ReplayTrans<'a> {
    fs: &'a FsShared,
    btrees: MutexGuard<'a, Btrees>,
    saved_wm: Option<Watermark>,
    /// Keys routed through the key cache: kept there, and written through to the btree.
    pub cached: usize,
    pub written_through: usize,
}

impl ReplayTrans<'_> {
    /// Replays one key. `operation_blocked` leaves the btree as it was, for a later pass.
    pub fn insert(&mut self, btree: BtreeId, level: u8, key: KeyRef<'_>, seq: u64) -> Result<()> {
        match (replay_route(btree, level), &self.fs.key_cache, &self.fs.journal) {
            (ReplayRoute::KeyCache, Some(cache), Some(journal)) => {
                // The fill sees the btree's key and, replay being unfinished, the pending journal
                // key at the position: the one being replayed (keys are compacted per position).
                let t = &mut self.btrees;
                let fill =
                    || Ok(FillInput { btree_key: t.get(btree, key.pos)?, journal_key: Some(key.to_bkey()) });
                match cache.update(journal, btree, key.to_bkey(), seq, fill)? {
                    Update::Cached => {
                        self.cached += 1;
                        Ok(())
                    }
                    Update::WriteThrough => {
                        self.written_through += 1;
                        self.btrees.insert_ref(btree, key, seq).map_err(|e| self.fs.check_fatal(e))
                    }
                }
            }
            _ => self.btrees.insert_ref(btree, key, seq).map_err(|e| self.fs.check_fatal(e)),
        }
    }

    /// True once node alloc keys waiting for publication could fill a journal entry (see
    /// [`FsShared::publish_due`]): time to [`ReplayTrans::write_dirty`].
    pub fn publish_due(&self) -> bool {
        self.fs.publish_due()
    }

    /// Writes the dirty nodes, so that memory stays bounded however many keys are replayed,
    /// and publishes their roots and node alloc keys, so that those stay within one journal
    /// entry. Safe before replay ends: the replay range stays pinned, so a crash now replays
    /// all of it again onto these roots.
    pub fn write_dirty(&mut self) -> Result<usize> {
        let journal = self.fs.journal_rw()?.clone();
        self.fs.write_round(&mut self.btrees, &journal).map(|(written, _)| written)
    }
}

impl Drop for ReplayTrans<'_> {
    fn drop(&mut self) {
        if let (Some(n), Some(wm)) = (&self.fs.nodes, self.saved_wm) {
            n.set_watermark(wm);
        }
    }
}

impl Fs {
    /// Commits `keys` to `btree` as one transaction, then the allocator's updates the same
    /// way. Returns the journal seq. A transaction is one journal reservation: all of it
    /// replays or none; one larger than a journal entry is refused (see `commit_batched`).
    pub fn commit(&self, btree: BtreeId, keys: impl IntoIterator<Item = Bkey>) -> Result<u64> {
        self.commit_updates(keys.into_iter().map(|k| (btree, k)).collect())
    }

    /// Commits updates to any btrees as one transaction (see [`Fs::commit`]). Blocked on the
    /// allocator, it waits and retries; if waiting frees nothing the error is returned.
    pub fn commit_updates(&self, updates: Vec<(BtreeId, Bkey)>) -> Result<u64> {
        self.shared.commit_with_sectors(updates, &[])
    }

    /// [`Fs::commit_updates`], then the data sectors the transaction added or dropped are
    /// accounted to their buckets: `sectors` lists extent pointers with the sectors each gains
    /// (negative: loses).
    pub fn commit_with_sectors(
        &self,
        updates: Vec<(BtreeId, Bkey)>,
        sectors: &[(&[ExtentPtr], i64)],
    ) -> Result<u64> {
        self.shared.commit_with_sectors(updates, sectors)
    }

    /// Commits `keys` as as many transactions as their size needs: for bulk loads, where
    /// atomicity across the whole set is not wanted. Returns the last seq.
    pub fn commit_batched(&self, btree: BtreeId, keys: impl IntoIterator<Item = Bkey>) -> Result<u64> {
        self.commit_batched_updates(keys.into_iter().map(|k| (btree, k)).collect())
    }

    /// Commits updates to any btrees in as many transactions as their size needs.
    pub fn commit_batched_updates(&self, updates: Vec<(BtreeId, Bkey)>) -> Result<u64> {
        self.shared.commit_batched(updates)
    }

    /// `updates` cut into transactions that each fit one journal reservation, in order.
    pub fn batches(&self, updates: Vec<(BtreeId, Bkey)>) -> Vec<Vec<(BtreeId, Bkey)>> {
        self.shared.batches(updates)
    }

    /// Whether `updates` fit one transaction (the bound [`Fs::batches`] cuts at).
    pub fn fits_one_transaction(&self, updates: &[(BtreeId, Bkey)]) -> bool {
        updates.iter().map(update_bytes).sum::<usize>() <= self.shared.transaction_capacity()
    }

    /// Bytes of updates one transaction may carry.
    pub fn transaction_capacity(&self) -> usize {
        self.shared.transaction_capacity()
    }

    /// True once node alloc keys waiting for publication could fill a journal entry (see
    /// [`FsShared::publish_due`]): a bulk loader inserting into the btrees directly should
    /// write back then.
    pub fn publish_due(&self) -> bool {
        self.shared.publish_due()
    }

    /// Waits on the allocator as a blocked transaction does; returns how many buckets it freed.
    pub fn wait_on_allocator(&self) -> Result<usize> {
        self.shared.wait_on_allocator()
    }
}
