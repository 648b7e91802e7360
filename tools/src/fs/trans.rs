//! Transactions: the one path every update takes into the btrees — the file layer's commits,
//! the allocator's alloc-key updates, fsck's repairs, and journal replay.
//!
//! A transaction reserves room in the open journal entry (which fixes its seq), applies its
//! updates to the btrees under the btree lock (undoing them all if one fails), pins the seq for
//! write-back, and commits its keys into the reservation: all of it replays or none. A full
//! journal sends it to journal reclaim, then it retries. An allocator that cannot give a btree
//! node now (`operation_blocked`) sends a waiting transaction to [`FsShared::wait_on_allocator`],
//! then it retries.
//!
//! The allocator decides and returns alloc-key updates; committing them is this layer's job.
//! They ride along with the next transaction while they fit, and committing them can allocate
//! btree nodes, which produces more updates: the loop that applies them is bounded and converges
//! because each round touches fewer buckets.
//!
//! Journal replay commits through [`ReplayTrans`]: no reservation (the keys are in the journal
//! already, at their own seqs), the caller's watermark, and each key routed by btree. That is
//! where bcachefs sends level-0 alloc keys through the key cache.

use std::collections::BTreeMap;
use std::time::Instant;

use allocator::Watermark;
use fs_core::bkey::{Bkey, DataType, ExtentPtr, KeyRef};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::Btrees;
use fs_core::error::{ErrCode, Error, Result};
use fs_core::sync::MutexGuard;
use journal::{JournalWatermark, JsetEntry};

use super::{Fs, FsShared};

/// Rounds of "commit alloc updates, write back" before giving up: each round's updates touch
/// only the buckets the previous round's node writes used, so a few rounds always suffice.
pub(crate) const MAX_SETTLE_ROUNDS: usize = 32;

/// Waits on the allocator one commit makes at most before it gives up with the error.
const MAX_ALLOCATOR_WAITS: u32 = 4;

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
    const NO_WAIT: CommitFlags = CommitFlags { wm: JournalWatermark::Normal, may_wait: false };
}

/// What undoing applied updates takes: each position's previous key, in apply order.
type Undo = Vec<(BtreeId, Bpos, Option<Bkey>)>;

/// The btrees whose keys record bucket state: updates to them are the allocator's.
const ALLOC_BTREES: [BtreeId; 3] = [BtreeId::Alloc, BtreeId::Freespace, BtreeId::NeedDiscard];

/// Journal bytes an update may take: its key, and an entry header of its own at worst (one
/// per btree in the transaction).
fn update_bytes(u: &(BtreeId, Bkey)) -> usize {
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

impl FsShared {
    /// Reports `e` to the health state if it is fatal, and hands it back.
    pub(crate) fn check_fatal(&self, e: Error) -> Error {
        if is_fatal(&e) {
            self.health.fatal(&e);
        }
        e
    }

    /// Commits updates to any btrees as one transaction, then the data sectors it added or
    /// dropped to their buckets (`sectors`: extent pointers with the sectors each gains,
    /// negative: loses), then the allocator's updates. Returns the journal seq.
    ///
    /// Accounting follows the commit so that a failed transaction leaves no count behind, and
    /// a bucket the transaction empties is stamped with the transaction's own seq: it is
    /// discarded only once that seq is durable, when no key pointing into it can come back.
    /// The alloc keys it changes go to the journal right after, normally in the same entry;
    /// after a crash between the two, recovery's allocation check recounts the bucket.
    pub(crate) fn commit_with_sectors(
        &self,
        mut updates: Vec<(BtreeId, Bkey)>,
        sectors: &[(&[ExtentPtr], i64)],
    ) -> Result<u64> {
        let seq = self.commit_waiting(&mut updates, CommitFlags::NORMAL)?;
        if let Some(alloc) = &self.alloc {
            for &(ptrs, delta) in sectors {
                for p in ptrs {
                    let bucket = p.byte_offset() / self.bucket_size(p.dev);
                    alloc
                        .add_sectors(p.dev, bucket, DataType::User, delta, seq)
                        .map_err(|e| self.check_fatal(e))?;
                }
            }
        }
        self.apply_alloc_updates(CommitFlags::NO_WAIT)?;
        Ok(seq)
    }

    /// One transaction of `updates`; blocked on the allocator, it waits (when `flags` allow)
    /// and retries a bounded number of times.
    fn commit_waiting(&self, updates: &mut Vec<(BtreeId, Bkey)>, flags: CommitFlags) -> Result<u64> {
        let mut waits = 0;
        loop {
            match self.transaction(updates, flags) {
                Ok(seq) => return Ok(seq),
                Err(e)
                    if flags.may_wait
                        && e.matches(ErrCode::OperationBlocked)
                        && !e.matches(ErrCode::JournalResBlocked) =>
                {
                    // Each wait writes back and discards what it can; one that frees buckets
                    // the transaction still cannot use (a watermark's reserve) is not retried
                    // without end.
                    waits += 1;
                    if waits > MAX_ALLOCATOR_WAITS || self.wait_on_allocator()? == 0 {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// What a transaction blocked on the allocator waits for, done by the waiting thread
    /// itself: everything written back and the journal flushed, so that nothing on disk or in
    /// the journal still points into the buckets emptied so far (nor into the btree nodes
    /// freed by splits and rewrites), then every such bucket discarded — on the device too
    /// when the `discard` option is on. Returns how many buckets became free.
    pub(crate) fn wait_on_allocator(&self) -> Result<usize> {
        let Some(alloc) = &self.alloc else { return Ok(0) };
        self.write_back()?;
        let durable = self.journal_rw()?.flush()?;
        let freed = alloc.discard_durable(durable).map_err(|e| self.check_fatal(e))?;
        if self.opts.u64(fs_core::opts::OptId::Discard) == 1 {
            self.discard_on_devices(&freed)?;
        }
        if !freed.is_empty() {
            self.apply_alloc_updates(CommitFlags::NO_WAIT)?;
        }
        Ok(freed.len())
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
            seq = self.commit_waiting(&mut batch, CommitFlags::NORMAL)?;
        }
        Ok(seq)
    }

    /// Commits `fixes` to alloc keys (and anything else) made by a checker that knows better
    /// than the allocator, then rebuilds the allocator from the repaired alloc btree. The
    /// allocator's uncommitted updates are its stale picture of the very buckets being
    /// repaired, so they are dropped, not committed over the repairs.
    pub(crate) fn commit_repairs(&self, fixes: Vec<(BtreeId, Bkey)>) -> Result<()> {
        if let Some(a) = &self.alloc {
            drop(a.take_updates());
        }
        self.pending_alloc.lock().clear();
        self.commit_batched(fixes)?;
        self.rebuild_allocator()
    }

    /// Rebuilds the allocator from the alloc btree (everyone holding it sees the new state).
    fn rebuild_allocator(&self) -> Result<()> {
        let (Some(alloc), Some(nodes)) = (&self.alloc, &self.nodes) else { return Ok(()) };
        self.apply_alloc_updates(CommitFlags::NO_WAIT)?;
        let keys = super::read_alloc_keys(&mut self.btrees(), None)?;
        let inits = super::layout::device_inits(&self.set());
        alloc.replace(allocator::Allocator::from_alloc_keys(inits, alloc.btree_node_size(), keys)?);
        nodes.reset_open_buckets();
        self.apply_alloc_updates(CommitFlags::NO_WAIT)
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

    /// One transaction: the updates, and the allocator updates pending so far (riding along
    /// while they fit), go into one journal reservation and into the btrees. A full journal
    /// (at the normal watermark) runs journal reclaim and tries again.
    ///
    /// The updates are taken from `updates`; a transaction that fails puts them back, so that
    /// the caller can retry without having kept a copy.
    fn transaction(&self, updates: &mut Vec<(BtreeId, Bkey)>, flags: CommitFlags) -> Result<u64> {
        let journal = self.journal_rw()?.clone();
        self.health.check_rw()?;
        for _ in 0..MAX_JOURNAL_RETRIES {
            let mut all = std::mem::take(updates);
            let nr_user = all.len();
            let mut t = self.btrees.lock();
            match self.transaction_locked(&mut t, &journal, &mut all, flags) {
                Ok(seq) => return Ok(seq),
                Err(e) => {
                    self.keep_alloc_updates(all.drain(nr_user..));
                    *updates = all;
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

    /// [`FsShared::transaction`] under the btree lock: `all` holds the caller's updates, to
    /// which the allocator's are added (and left there on failure, for the caller to keep).
    fn transaction_locked(
        &self,
        t: &mut Btrees,
        journal: &journal::Journal,
        all: &mut Vec<(BtreeId, Bkey)>,
        flags: CommitFlags,
    ) -> Result<u64> {
        let capacity = journal.reservation_capacity();
        let user_bytes: usize = entries(all).iter().map(JsetEntry::encoded_bytes).sum();
        if user_bytes > capacity {
            return Err(Error::new(
                ErrCode::TransactionTooBig,
                format!(
                    "transaction of {user_bytes} bytes does not fit one journal entry ({capacity} bytes)"
                ),
            ));
        }
        // Alloc updates ride along while they fit; the rest follow in their own transactions.
        let mut alloc_updates = std::mem::take(&mut *self.pending_alloc.lock());
        if let Some(a) = &self.alloc {
            alloc_updates.extend(a.take_updates());
        }
        let mut bytes = user_bytes;
        let mut rest = Vec::new();
        for u in alloc_updates {
            let b = u.1.encoded_bytes() + journal::format::ENTRY_HEADER_BYTES;
            if rest.is_empty() && bytes + b <= capacity {
                bytes += b;
                all.push(u);
            } else {
                rest.push(u);
            }
        }
        self.keep_alloc_updates(rest.into_iter());
        let entries = entries(all);
        let bytes: usize = entries.iter().map(JsetEntry::encoded_bytes).sum();
        let res = journal.reserve(bytes, flags.wm)?;
        let seq = res.seq();
        if let Err(e) = self.apply(t, all, seq) {
            journal.cancel(res);
            return Err(e);
        }
        if let Err(e) = self.ensure_wb_pin(seq) {
            journal.cancel(res);
            return Err(e);
        }
        let seq = journal.commit(res, entries, Instant::now())?;
        if let Some(n) = &self.nodes {
            n.set_journal_seq(seq);
        }
        Ok(seq)
    }

    /// Alloc updates a transaction could not commit go back to the pending list: the
    /// allocator's state already includes them, so they must still reach the btree.
    fn keep_alloc_updates(&self, updates: impl Iterator<Item = (BtreeId, Bkey)>) {
        let mut kept: Vec<_> = updates.filter(|(b, _)| ALLOC_BTREES.contains(b)).collect();
        if kept.is_empty() {
            return;
        }
        let mut pending = self.pending_alloc.lock();
        kept.append(&mut pending);
        *pending = kept;
    }

    /// Applies updates to the btrees; on failure undoes the ones applied and returns the
    /// error. A failed undo is fatal: the btrees then hold half a transaction.
    fn apply(&self, t: &mut Btrees, updates: &[(BtreeId, Bkey)], seq: u64) -> Result<()> {
        let mut undo: Undo = Vec::with_capacity(updates.len());
        for (btree, k) in updates {
            let old = match t.get(*btree, k.pos) {
                Ok(old) => old,
                Err(e) => return Err(self.undo(t, undo, seq, e)),
            };
            if let Err(e) = t.insert(*btree, k.clone(), seq) {
                return Err(self.undo(t, undo, seq, e));
            }
            undo.push((*btree, k.pos, old));
        }
        Ok(())
    }

    /// Puts back what `apply` replaced, newest first, and returns `cause`, the error that made
    /// the undo necessary. Putting back a value that was there before needs no new node in
    /// practice; if it fails anyway, the filesystem goes emergency read-only, and `cause` is
    /// still what the caller sees.
    fn undo(&self, t: &mut Btrees, undo: Undo, seq: u64, cause: Error) -> Error {
        for (btree, pos, old) in undo.into_iter().rev() {
            if let Err(e) = t.insert(btree, old.unwrap_or_else(|| Bkey::whiteout(pos)), seq) {
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

    /// Commits what the allocator decided (alloc, freespace and need_discard keys) through
    /// the journal, until nothing is pending.
    pub(crate) fn apply_alloc_updates(&self, flags: CommitFlags) -> Result<()> {
        let Some(alloc) = &self.alloc else { return Ok(()) };
        for _ in 0..MAX_SETTLE_ROUNDS {
            let mut updates = std::mem::take(&mut *self.pending_alloc.lock());
            updates.extend(alloc.take_updates());
            if updates.is_empty() {
                return Ok(());
            }
            let mut batches = self.batches(updates).into_iter();
            while let Some(mut batch) = batches.next() {
                if let Err(e) = self.transaction(&mut batch, flags) {
                    // Not committed, but the allocator's state includes them: keep them all.
                    self.keep_alloc_updates(batch.into_iter().chain(batches.flatten()));
                    return Err(e);
                }
            }
        }
        Err(self.check_fatal(not_settling()))
    }

    /// Alloc updates not yet committed, the allocator's and those kept from failed
    /// transactions.
    pub(crate) fn pending_alloc_updates(&self) -> u64 {
        self.alloc.as_ref().map_or(0, |a| a.pending_updates()) + self.pending_alloc.lock().len() as u64
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
        Ok(ReplayTrans { fs: self, btrees, saved_wm })
    }
}

/// Where a replayed key goes. bcachefs sends level-0 keys of the cached btrees (`alloc` at
/// v1.37.5 and since) through the btree key cache; bcsim has no key cache yet, so every key
/// goes to its btree.
fn replay_route(_btree: BtreeId, _level: u8) -> ReplayRoute {
    ReplayRoute::Btree
}

enum ReplayRoute {
    Btree,
}

/// Journal replay's transaction: keys that are already in the journal go into the btrees at
/// their own seqs, with no journal reservation, in whatever order the caller gives them
/// (sorted, for speed), borrowed straight from the journal keys. Holds the btree lock for its
/// whole life; the write-back pin covers every seq from the first one on.
pub struct ReplayTrans<'a> {
    fs: &'a FsShared,
    btrees: MutexGuard<'a, Btrees>,
    saved_wm: Option<Watermark>,
}

impl ReplayTrans<'_> {
    /// Replays one key. `operation_blocked` leaves the btree as it was, for a later pass.
    pub fn insert(&mut self, btree: BtreeId, level: u8, key: KeyRef<'_>, seq: u64) -> Result<()> {
        match replay_route(btree, level) {
            ReplayRoute::Btree => self.btrees.insert_ref(btree, key, seq).map_err(|e| self.fs.check_fatal(e)),
        }
    }

    /// Writes the dirty nodes, so that memory stays bounded however many keys are replayed.
    /// Safe before replay ends: the replayed keys stay in the journal until replay is done.
    pub fn write_dirty(&mut self) -> Result<usize> {
        self.btrees.write_dirty().map_err(|e| self.fs.check_fatal(e))
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

    /// Commits repairs and rebuilds the allocator from them (see [`FsShared::commit_repairs`]).
    pub fn commit_repairs(&self, fixes: Vec<(BtreeId, Bkey)>) -> Result<()> {
        self.shared.commit_repairs(fixes)
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

    /// Commits what the allocator decided so far.
    pub fn apply_alloc_updates(&self) -> Result<()> {
        self.shared.apply_alloc_updates(CommitFlags::NO_WAIT)
    }

    /// Waits on the allocator as a blocked transaction does; returns how many buckets it freed.
    pub fn wait_on_allocator(&self) -> Result<usize> {
        self.shared.wait_on_allocator()
    }
}
