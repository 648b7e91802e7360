//! One member device's buckets: the state of each bucket, counts per data type, the free set,
//! which buckets' alloc keys must change, and what the freespace btree was last told.
//!
//! What the btrees hold of a bucket is its *persisted* state ([`BucketState::persisted`]): its
//! `alloc_v4` key (none for an unused bucket: free, gen 0), a `need_discard` key when it needs a
//! discard, and its place in a `freespace` range key when it is free. A bucket allocated but not
//! yet holding any accounted sectors (an open bucket) is persisted as free: nothing on disk
//! points into it yet.
//!
//! Every change to a bucket goes through `Device::set`, which keeps the counts, the free set and
//! the changed set in step with the bucket; nothing else writes a bucket.

use std::collections::BTreeMap;

use fs_core::bkey::alloc::{ALLOC_NEED_DISCARD, ALLOC_NEED_INC_GEN, AllocV4, DataType, bucket_pos};
use fs_core::bkey::ptr::SECTOR_BYTES;
use fs_core::bkey::{Bkey, KeyType};
use fs_core::bpos::Bpos;
use fs_core::error::{ErrCode, Error, Result};
use fs_core::sb::{JournalBuckets, Member, MemberState};

use crate::bucket_set::BucketSet;
use crate::bucket_table::BucketTable;
use crate::watermark::{Watermark, nr_btree_reserve, reserved_buckets};

/// What the allocator needs to know about one member device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInit {
    pub dev_idx: u8,
    pub member: Member,
    /// The device's journal buckets from the superblock: they are never allocated.
    pub journal: JournalBuckets,
    /// False for a member that was not given (a degraded mount): it never allocates, and its
    /// journal buckets, which only its own superblock lists, come from its alloc keys.
    pub present: bool,
}

/// The in-memory state of one bucket; its persistent record is the `alloc_v4` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketState {
    pub bucket_gen: u8,
    /// Kept as the alloc key had it: gc of gens is not modelled, so nothing here moves it.
    pub oldest_gen: u8,
    pub data_type: DataType,
    /// In memory only: data may have reached the bucket since it was allocated. A bucket that
    /// empties without ever being written goes straight back to free with its gen unchanged,
    /// since no pointer to it can have been made durable; one that was written must be discarded.
    pub written: bool,
    pub dirty_sectors: u32,
    /// Journal seq at which the bucket last became empty.
    pub journal_seq_empty: u64,
}

/// Bytes of an alloc key with its value.
const ALLOC_KEY_BYTES: usize = fs_core::bkey::KEY_HEADER_BYTES + fs_core::bkey::alloc::ALLOC_V4_BYTES;
/// Bytes of a freespace or need_discard key (no value).
const INDEX_KEY_BYTES: usize = fs_core::bkey::KEY_HEADER_BYTES;

/// `journal_seq_empty` of a bucket a freed btree node emptied, until the update that makes the
/// node unreachable is journalled and stamps its seq: never at or below a durable seq, so the
/// bucket cannot be discarded while a durable pointer may still lead into it.
pub const PENDING_SEQ: u64 = u64::MAX;

impl BucketState {
    /// A bucket never used: free, gen 0. It has no alloc key.
    pub const UNUSED: BucketState = BucketState {
        bucket_gen: 0,
        oldest_gen: 0,
        data_type: DataType::Free,
        written: false,
        dirty_sectors: 0,
        journal_seq_empty: 0,
    };

    fn layout(data_type: DataType, dirty_sectors: u32) -> BucketState {
        BucketState {
            bucket_gen: 0,
            oldest_gen: 0,
            data_type,
            written: false,
            dirty_sectors,
            journal_seq_empty: 0,
        }
    }

    /// The bucket's `alloc_v4` record. `need_discard` carries both flags: the bucket must be
    /// discarded, and its gen bumped before reuse.
    pub fn alloc_v4(&self) -> AllocV4 {
        let flags =
            if self.data_type == DataType::NeedDiscard { ALLOC_NEED_DISCARD | ALLOC_NEED_INC_GEN } else { 0 };
        AllocV4 {
            bucket_gen: self.bucket_gen,
            oldest_gen: self.oldest_gen,
            data_type: self.data_type,
            flags,
            dirty_sectors: self.dirty_sectors,
            cached_sectors: 0,
            journal_seq_empty: self.journal_seq_empty,
        }
    }

    /// What the btrees hold of this bucket: its `alloc_v4` record, except that an allocated
    /// bucket holding no accounted sectors yet is still free there.
    pub fn persisted(&self) -> AllocV4 {
        if is_allocatable(self.data_type) && self.dirty_sectors == 0 {
            return BucketState { data_type: DataType::Free, written: false, ..*self }.alloc_v4();
        }
        self.alloc_v4()
    }
}

/// True if `a` is the record of an unused bucket: such a bucket has no alloc key.
pub fn is_unused(a: &AllocV4) -> bool {
    *a == BucketState::UNUSED.alloc_v4()
}

/// Data types the allocator hands buckets out for and accounts sectors against. Superblock and
/// journal buckets come from the device layout; free, need_discard and need_gc_gens are states.
pub fn is_allocatable(data_type: DataType) -> bool {
    matches!(
        data_type,
        DataType::Btree | DataType::User | DataType::Cached | DataType::Parity | DataType::Stripe
    )
}

/// What the device layout says a bucket is, whatever its alloc key says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    Sb,
    Journal,
    Data,
}

const NR_DATA_TYPES: usize = DataType::ALL.len();

pub(crate) struct Device {
    pub(crate) dev: u8,
    pub(crate) member: Member,
    journal: JournalBuckets,
    buckets: BucketTable,
    counts: [u64; NR_DATA_TYPES],
    free: BucketSet,
    /// Buckets whose persisted state changed since their keys were last handed out.
    changed: BucketSet,
    /// Buckets the freespace keys handed out so far say are free.
    pub_free: BucketSet,
    /// Buckets whose need_discard key was handed out (and not whited out since): only a change
    /// of this needs a need_discard key or whiteout.
    pub_nd: BucketSet,
    /// The freespace keys handed out so far, `end -> start`: each covers buckets `start..end`.
    runs: BTreeMap<u64, u64>,
    /// Buckets whose alloc key says free but which the freespace keys on disk leave out (a
    /// wrong alloc key behind good checksums): kept off the free list while they stay free,
    /// as bcachefs, which allocates from the freespace btree, never finds them. fsck repairs
    /// whichever of the two is wrong.
    held: BucketSet,
    /// No freespace key was handed out yet (a new filesystem): the next take writes them all.
    runs_unwritten: bool,
    /// See [`DeviceInit::present`].
    present: bool,
    /// Where the next search for a free bucket starts: allocation rotates through the device
    /// rather than reusing the lowest bucket at once.
    pub(crate) alloc_cursor: u64,
    /// Buckets that are neither superblock nor journal.
    data_buckets: u64,
    pub(crate) nr_btree_reserve: u64,
}

fn member_error(dev: u8, msg: String) -> Error {
    Error::new(ErrCode::InvalidSbMembers, msg).dev(dev)
}

impl Device {
    /// Builds the device as its layout says: superblock buckets below `first_bucket`, full
    /// journal buckets, everything else unused. For a new filesystem (`fresh`) nothing is on
    /// disk yet: the superblock and journal buckets' keys and every freespace key are to be
    /// handed out. Otherwise the caller reads the alloc keys in, then [`Device::finish_read`].
    pub(crate) fn new(init: DeviceInit, btree_node_size: u64, fresh: bool) -> Result<Device> {
        let DeviceInit { dev_idx: dev, member, journal, present } = init;
        let bucket_sectors = bucket_sectors(&member)
            .ok_or_else(|| member_error(dev, format!("bucket size {} bytes invalid", member.bucket_size)))?;
        let first = u64::from(member.first_bucket);
        if member.nbuckets <= first {
            return Err(member_error(dev, format!("{} buckets, first bucket {first}", member.nbuckets)));
        }
        let mut buckets = BucketTable::new(member.nbuckets)
            .ok_or_else(|| member_error(dev, format!("{} buckets do not fit in memory", member.nbuckets)))?;
        validate_journal(dev, &member, &journal)?;

        let mut free = BucketSet::new(member.nbuckets);
        free.fill();
        let mut changed = BucketSet::new(member.nbuckets);
        let mut counts = [0u64; NR_DATA_TYPES];
        let layout =
            (0..first).map(|b| (b, DataType::Sb)).chain(journal.buckets().map(|b| (b, DataType::Journal)));
        for (b, t) in layout {
            buckets.replace(b, BucketState::layout(t, bucket_sectors));
            free.remove(b);
            if fresh {
                changed.insert(b);
            }
            if let Some(c) = counts.get_mut(t as usize) {
                *c += 1;
            }
        }
        if let Some(c) = counts.get_mut(DataType::Free as usize) {
            *c = free.len();
        }
        let data_buckets = member.nbuckets.saturating_sub(first).saturating_sub(journal.nr());
        let nr_btree_reserve = nr_btree_reserve(u64::from(member.bucket_size), btree_node_size);
        let pub_nd = BucketSet::new(member.nbuckets);
        let held = BucketSet::new(member.nbuckets);
        Ok(Device {
            dev,
            member,
            journal,
            buckets,
            counts,
            pub_free: free.clone(),
            pub_nd,
            free,
            changed,
            runs: BTreeMap::new(),
            held,
            runs_unwritten: true,
            present,
            alloc_cursor: first,
            data_buckets,
            nr_btree_reserve,
        })
    }

    /// Takes a state read back from the bucket's alloc key: it is what the disk holds, so the
    /// bucket is not changed.
    pub(crate) fn set_read(&mut self, b: u64, st: BucketState) -> Option<()> {
        self.set(b, st)?;
        self.changed.remove(b);
        self.note_published(b, &st.persisted());
        Some(())
    }

    /// After the alloc keys were read in: the freespace keys on disk are the runs of free
    /// buckets those keys leave — below `freespace_initialized_to` for a device that grew, whose
    /// buckets past it have no freespace keys yet: those are changed, so the next take writes
    /// their runs (and rewrites the run they join).
    pub(crate) fn finish_read(&mut self) {
        let upto = self.member.freespace_initialized_to.unwrap_or(u64::MAX).min(self.nbuckets());
        self.changed.clear();
        // A device added offline has no keys at all yet: its superblock and journal buckets
        // need their alloc keys too.
        let layout: Vec<u64> = (0..u64::from(self.member.first_bucket))
            .chain(self.journal.buckets())
            .filter(|&b| b >= upto)
            .collect();
        for b in layout {
            self.changed.insert(b);
        }
        let mut b = upto;
        while let Some(next) = self.pub_free.next_from(b) {
            self.pub_free.remove(next);
            self.changed.insert(next);
            b = next + 1;
        }
        self.runs = self.pub_free.runs_in(0, upto).into_iter().map(|r| (r.end, r.start)).collect();
        self.runs_unwritten = false;
    }

    /// After [`Device::finish_read`]: holds back every bucket its alloc key calls free that
    /// `listed`, the runs the freespace keys on disk cover, leaves out. Returns them.
    pub(crate) fn hold_unlisted(&mut self, listed: &[std::ops::Range<u64>]) -> Vec<u64> {
        let mut listed: Vec<std::ops::Range<u64>> = listed.to_vec();
        listed.sort_by_key(|r| r.start);
        let mut out = Vec::new();
        // The runs are disjoint and in order: one walk along both lists.
        let mut first = 0;
        for (&end, &start) in &self.runs {
            while listed.get(first).is_some_and(|r| r.end <= start) {
                first += 1;
            }
            let mut b = start;
            for r in listed.iter().skip(first).take_while(|r| r.start < end) {
                out.extend(b..r.start.max(b).min(end));
                b = b.max(r.end);
            }
            out.extend(b..end);
        }
        for &b in &out {
            self.free.remove(b);
            self.held.insert(b);
        }
        out
    }

    pub(crate) fn is_held(&self, b: u64) -> bool {
        self.held.contains(b)
    }

    pub(crate) fn nr_held(&self) -> u64 {
        self.held.len()
    }

    fn note_published(&mut self, b: u64, persisted: &AllocV4) {
        if persisted.data_type == DataType::Free {
            self.pub_free.insert(b);
        } else {
            self.pub_free.remove(b);
        }
        if persisted.data_type == DataType::NeedDiscard {
            self.pub_nd.insert(b);
        } else {
            self.pub_nd.remove(b);
        }
    }

    pub(crate) fn nbuckets(&self) -> u64 {
        self.member.nbuckets
    }

    pub(crate) fn bucket_size(&self) -> u64 {
        u64::from(self.member.bucket_size)
    }

    /// Sectors in one bucket; validated to fit `u32` when the device was built.
    pub(crate) fn bucket_sectors(&self) -> u32 {
        bucket_sectors(&self.member).unwrap_or(0)
    }

    pub(crate) fn is_rw(&self) -> bool {
        self.present && self.member.state == MemberState::Rw
    }

    /// False for a member that was not given (see [`DeviceInit::present`]).
    pub(crate) fn is_present(&self) -> bool {
        self.present
    }

    pub(crate) fn durability(&self) -> u8 {
        self.member.durability
    }

    pub(crate) fn bucket(&self, b: u64) -> Option<&BucketState> {
        self.buckets.get(b)
    }

    /// Every bucket, unused ones included.
    pub(crate) fn buckets(&self) -> impl Iterator<Item = (u64, &BucketState)> {
        self.buckets.all()
    }

    /// Every bucket that may be in use; the others are unused.
    pub(crate) fn touched(&self) -> impl Iterator<Item = (u64, &BucketState)> {
        self.buckets.touched()
    }

    /// Bytes the bucket states take in memory.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.buckets.memory_bytes()
    }

    pub(crate) fn count(&self, data_type: DataType) -> u64 {
        self.counts.get(data_type as usize).copied().unwrap_or(0)
    }

    pub(crate) fn nr_free(&self) -> u64 {
        self.free.len()
    }

    pub(crate) fn is_free_listed(&self, b: u64) -> bool {
        self.free.contains(b)
    }

    pub(crate) fn reserved(&self, watermark: Watermark) -> u64 {
        reserved_buckets(watermark, self.nbuckets(), self.nr_btree_reserve)
    }

    /// Free buckets a request at `watermark` may take now.
    pub(crate) fn available(&self, watermark: Watermark) -> u64 {
        self.nr_free().saturating_sub(self.reserved(watermark))
    }

    /// True if, once everything on it is freed, the device could serve a request at `watermark`.
    pub(crate) fn could_ever_serve(&self, watermark: Watermark, data_type: DataType) -> bool {
        self.is_rw()
            && self.durability() > 0
            && self.member.data_allowed.allows(data_type)
            && self.data_buckets > self.reserved(watermark)
    }

    pub(crate) fn layout(&self, b: u64) -> Layout {
        if b < u64::from(self.member.first_bucket) {
            Layout::Sb
        } else if self.journal.ranges.iter().any(|r| r.contains(&b)) {
            Layout::Journal
        } else {
            Layout::Data
        }
    }

    /// The next free bucket at or after the cursor, wrapping.
    pub(crate) fn next_free(&self) -> Option<u64> {
        self.free.next_wrapping(self.alloc_cursor)
    }

    /// Replaces bucket `b`'s state, keeping counts, the free set and the changed set in step:
    /// the bucket is changed when its persisted state is. Returns the old state, or `None` (and
    /// changes nothing) if `b` is not on the device.
    pub(crate) fn set(&mut self, b: u64, new: BucketState) -> Option<BucketState> {
        let old = self.buckets.replace(b, new)?;
        if let Some(c) = self.counts.get_mut(old.data_type as usize) {
            *c = c.saturating_sub(1);
        }
        if let Some(c) = self.counts.get_mut(new.data_type as usize) {
            *c += 1;
        }
        // A held bucket stays off the free list for as long as it stays free.
        let held = new.data_type == DataType::Free && self.held.contains(b);
        if !held {
            self.held.remove(b);
        }
        if old.data_type == DataType::Free {
            self.free.remove(b);
        }
        if new.data_type == DataType::Free && !held {
            self.free.insert(b);
        }
        if old.persisted() != new.persisted() {
            self.changed.insert(b);
        }
        Some(old)
    }

    pub(crate) fn is_changed(&self, b: u64) -> bool {
        self.changed.contains(b)
    }

    /// Marks `b` as changed or not, for undo.
    pub(crate) fn set_changed(&mut self, b: u64, changed: bool) {
        if changed {
            self.changed.insert(b);
        } else {
            self.changed.remove(b);
        }
    }

    /// The changed buckets among `buckets`, or all of them, in order.
    pub(crate) fn changed_among(&self, buckets: Option<&[u64]>) -> Vec<u64> {
        match buckets {
            None => self.changed.iter().collect(),
            Some(bs) => {
                let mut v: Vec<u64> = bs.iter().copied().filter(|&b| self.changed.contains(b)).collect();
                v.sort_unstable();
                v.dedup();
                v
            }
        }
    }

    pub(crate) fn nr_changed(&self) -> u64 {
        self.changed.len()
    }

    /// An upper bound of the bytes of keys [`Device::take`] of every changed bucket would hand
    /// out: each bucket's alloc key (or whiteout) and need_discard key, and where its free-ness
    /// flips, three freespace keys (a run split or two joined, and the bucket's own run).
    pub(crate) fn pending_key_bytes(&self) -> usize {
        if self.runs_unwritten {
            return usize::MAX;
        }
        self.changed
            .iter()
            .map(|b| {
                let flips = self.buckets.get(b).is_some_and(|st| {
                    (st.persisted().data_type == DataType::Free) != self.pub_free.contains(b)
                });
                ALLOC_KEY_BYTES + INDEX_KEY_BYTES + if flips { 3 * INDEX_KEY_BYTES } else { 0 }
            })
            .sum()
    }

    /// Hands out the keys of `buckets` (changed ones, in order): an `alloc_v4` key or, for an
    /// unused bucket, a whiteout; a `need_discard` set key or whiteout; and the freespace range
    /// keys around them, rewritten from what was last handed out. A bucket emptied by a freed
    /// btree node gets `stamp` as its `journal_seq_empty`. The buckets are no longer changed.
    pub(crate) fn take(&mut self, buckets: &[u64], stamp: u64, out: &mut Updates, undo: &mut TakeUndo) {
        undo.runs_unwritten = self.runs_unwritten;
        for &b in buckets {
            let Some(mut st) = self.buckets.get(b).copied() else { continue };
            undo.buckets.push(TakenBucket {
                bucket: b,
                changed: self.changed.contains(b),
                pub_free: self.pub_free.contains(b),
                pub_nd: self.pub_nd.contains(b),
                journal_seq_empty: st.journal_seq_empty,
            });
            if st.journal_seq_empty == PENDING_SEQ {
                st.journal_seq_empty = stamp;
                self.buckets.replace(b, st);
            }
            self.changed.remove(b);
            let p = st.persisted();
            let pos = bucket_pos(self.dev, b);
            out.alloc.push(if is_unused(&p) {
                Bkey::whiteout(pos)
            } else {
                Bkey::new(pos, KeyType::AllocV4, p.encode())
            });
            let need_discard = p.data_type == DataType::NeedDiscard;
            if need_discard != self.pub_nd.contains(b) {
                out.need_discard.push(if need_discard {
                    Bkey::new(pos, KeyType::Set, Vec::new())
                } else {
                    Bkey::whiteout(pos)
                });
            }
            self.note_published(b, &p);
        }
        if self.runs_unwritten {
            self.runs_unwritten = false;
            let runs = self.pub_free.runs_in(0, self.nbuckets());
            self.replace_runs(0, self.nbuckets(), runs, out, undo);
            return;
        }
        let mut covered = 0;
        for &b in buckets {
            if b < covered {
                continue;
            }
            let (lo, hi) = self.run_span(b);
            let runs = self.pub_free.runs_in(lo, hi);
            self.replace_runs(lo, hi, runs, out, undo);
            covered = hi;
        }
    }

    /// Undoes a [`Device::take`] whose keys were never committed: the buckets are changed
    /// again and the record of what was handed out is as before.
    pub(crate) fn untake(&mut self, undo: TakeUndo) {
        for end in undo.runs_added.into_iter().rev() {
            self.runs.remove(&end);
        }
        for (end, start) in undo.runs_removed {
            self.runs.insert(end, start);
        }
        for t in undo.buckets.into_iter().rev() {
            let b = t.bucket;
            if let Some(mut st) = self.buckets.get(b).copied() {
                st.journal_seq_empty = t.journal_seq_empty;
                self.buckets.replace(b, st);
            }
            self.set_changed(b, t.changed);
            for (set, was) in [(&mut self.pub_free, t.pub_free), (&mut self.pub_nd, t.pub_nd)] {
                if was {
                    set.insert(b);
                } else {
                    set.remove(b);
                }
            }
        }
        self.runs_unwritten = undo.runs_unwritten;
    }

    /// The span of buckets whose freespace keys a change of bucket `b` may affect: `b` and
    /// every handed-out run touching it or its neighbours, widened until no run crosses an edge.
    fn run_span(&self, b: u64) -> (u64, u64) {
        let (mut lo, mut hi) = (b, b + 1);
        loop {
            let mut grew = false;
            // A run containing lo - 1 (or lo), or hi (or hi - 1), reaches across an edge.
            for probe in [lo.saturating_sub(1), hi.min(self.nbuckets().saturating_sub(1))] {
                if let Some((&end, &start)) = self.runs.range(probe + 1..).next() {
                    if start <= probe && (start < lo || end > hi) {
                        lo = lo.min(start);
                        hi = hi.max(end);
                        grew = true;
                    }
                }
            }
            if !grew {
                return (lo, hi);
            }
        }
    }

    /// Replaces the handed-out runs inside `lo..hi` by `runs`: whiteouts for keys that go, set
    /// keys for new ones (a run longer than a key's size can say is cut in pieces).
    fn replace_runs(
        &mut self,
        lo: u64,
        hi: u64,
        runs: Vec<std::ops::Range<u64>>,
        out: &mut Updates,
        undo: &mut TakeUndo,
    ) {
        let mut new: BTreeMap<u64, u64> = BTreeMap::new();
        for r in runs {
            let mut start = r.start;
            while start < r.end {
                let end = r.end.min(start + u64::from(u32::MAX));
                new.insert(end, start);
                start = end;
            }
        }
        let old: Vec<(u64, u64)> =
            self.runs.range(lo + 1..=hi).map(|(&e, &s)| (e, s)).filter(|&(_, s)| s >= lo).collect();
        for &(end, start) in &old {
            if new.get(&end) != Some(&start) {
                self.runs.remove(&end);
                undo.runs_removed.push((end, start));
                out.freespace.push(Bkey::whiteout(Bpos::new(u64::from(self.dev), end, 0)));
            }
        }
        for (end, start) in new {
            if self.runs.get(&end) == Some(&start) {
                continue;
            }
            if let Some(old) = self.runs.insert(end, start) {
                undo.runs_removed.push((end, old));
            }
            undo.runs_added.push(end);
            let mut k = Bkey::new(Bpos::new(u64::from(self.dev), end, 0), KeyType::Set, Vec::new());
            k.size = u32::try_from(end - start).unwrap_or(u32::MAX);
            out.freespace.push(k);
        }
    }

    pub(crate) fn usage(&self) -> DevUsage {
        DevUsage {
            dev: self.dev,
            state: self.member.state,
            durability: self.member.durability,
            label: self.member.label.clone(),
            nbuckets: self.nbuckets(),
            bucket_size: self.member.bucket_size,
            nr_btree_reserve: self.nr_btree_reserve,
            // What the allocator may hand out: held buckets are not.
            free: self.nr_free(),
            need_discard: self.count(DataType::NeedDiscard),
            sb: self.count(DataType::Sb),
            journal: self.count(DataType::Journal),
            btree: self.count(DataType::Btree),
            user: self.count(DataType::User),
            cached: self.count(DataType::Cached),
            parity: self.count(DataType::Parity),
            stripe: self.count(DataType::Stripe),
            need_gc_gens: self.count(DataType::NeedGcGens),
            dirty_sectors: self.buckets.touched().map(|(_, b)| u64::from(b.dirty_sectors)).sum(),
        }
    }
}

fn bucket_sectors(member: &Member) -> Option<u32> {
    let size = u64::from(member.bucket_size);
    if size == 0 || size % SECTOR_BYTES != 0 {
        return None;
    }
    u32::try_from(size / SECTOR_BYTES).ok()
}

/// Journal ranges are non-empty, above the superblock buckets, inside the device, and disjoint.
fn validate_journal(dev: u8, member: &Member, journal: &JournalBuckets) -> Result<()> {
    let mut sorted = journal.ranges.clone();
    sorted.sort_by_key(|r| r.start);
    let mut prev_end = u64::from(member.first_bucket);
    for r in &sorted {
        if r.start >= r.end || r.start < prev_end || r.end > member.nbuckets {
            return Err(Error::new(
                ErrCode::InvalidSbJournal,
                format!(
                    "journal bucket range {}..{} invalid (device buckets {}..{}, ranges must not overlap)",
                    r.start, r.end, member.first_bucket, member.nbuckets
                ),
            )
            .dev(dev));
        }
        prev_end = r.end;
    }
    Ok(())
}

/// Bucket counts of one device, for reports (`bcachefs fs usage`, the allocator-stuck dump).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevUsage {
    pub dev: u8,
    pub state: MemberState,
    pub durability: u8,
    pub label: String,
    pub nbuckets: u64,
    pub bucket_size: u32,
    /// Buckets held back for btree nodes (`nr_btree_reserve`).
    pub nr_btree_reserve: u64,
    /// Free buckets the allocator may hand out (not those held back: see `Device::held`).
    pub free: u64,
    pub need_discard: u64,
    pub sb: u64,
    pub journal: u64,
    pub btree: u64,
    pub user: u64,
    pub cached: u64,
    pub parity: u64,
    pub stripe: u64,
    pub need_gc_gens: u64,
    pub dirty_sectors: u64,
}

impl DevUsage {
    /// Buckets a request at `watermark` must leave free on this device.
    pub fn reserved(&self, watermark: Watermark) -> u64 {
        reserved_buckets(watermark, self.nbuckets, self.nr_btree_reserve)
    }

    /// Free buckets a request at `watermark` may take now.
    pub fn available(&self, watermark: Watermark) -> u64 {
        self.free.saturating_sub(self.reserved(watermark))
    }

    /// Buckets of one data type.
    pub fn buckets(&self, data_type: DataType) -> u64 {
        match data_type {
            DataType::Free => self.free,
            DataType::Sb => self.sb,
            DataType::Journal => self.journal,
            DataType::Btree => self.btree,
            DataType::User => self.user,
            DataType::Cached => self.cached,
            DataType::Parity => self.parity,
            DataType::Stripe => self.stripe,
            DataType::NeedGcGens => self.need_gc_gens,
            DataType::NeedDiscard => self.need_discard,
        }
    }
}

/// Keys handed out for the three alloc btrees, in the order they are to be committed.
#[derive(Debug, Default)]
pub(crate) struct Updates {
    pub(crate) alloc: Vec<Bkey>,
    pub(crate) freespace: Vec<Bkey>,
    pub(crate) need_discard: Vec<Bkey>,
}

/// A bucket's bookkeeping before a take handed out its keys.
#[derive(Debug)]
struct TakenBucket {
    bucket: u64,
    changed: bool,
    /// Handed out as free (in a freespace run) before.
    pub_free: bool,
    /// Its need_discard key handed out before.
    pub_nd: bool,
    journal_seq_empty: u64,
}

/// What undoing one device's part of a take needs.
#[derive(Debug, Default)]
pub(crate) struct TakeUndo {
    buckets: Vec<TakenBucket>,
    runs_removed: Vec<(u64, u64)>,
    runs_added: Vec<u64>,
    runs_unwritten: bool,
}
