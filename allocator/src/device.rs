//! One member device's buckets: the state of each bucket, counts per data type, the free set,
//! and which buckets changed since their alloc keys were last handed out.
//!
//! Every change to a bucket goes through `Device::set`, which keeps the counts, the free set and
//! the changed set in step with the bucket; nothing else writes a bucket.

use fs_core::bkey::alloc::{ALLOC_NEED_DISCARD, ALLOC_NEED_INC_GEN, AllocV4, DataType};
use fs_core::bkey::ptr::SECTOR_BYTES;
use fs_core::error::{ErrCode, Error, Result};
use fs_core::sb::{JournalBuckets, Member, MemberState};

use crate::bucket_set::BucketSet;
use crate::watermark::{Watermark, nr_btree_reserve, reserved_buckets};

/// What the allocator needs to know about one member device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInit {
    pub dev_idx: u8,
    pub member: Member,
    /// The device's journal buckets from the superblock: they are never allocated.
    pub journal: JournalBuckets,
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

impl BucketState {
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
    buckets: Vec<BucketState>,
    counts: [u64; NR_DATA_TYPES],
    free: BucketSet,
    /// Buckets whose alloc key (and index keys) have not been handed out since they changed.
    changed: BucketSet,
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
    /// journal buckets, everything else free with gen 0. Every bucket starts out changed, so the
    /// first `take_updates` returns the whole record.
    pub(crate) fn new(init: DeviceInit, btree_node_size: u64) -> Result<Device> {
        let DeviceInit { dev_idx: dev, member, journal } = init;
        let bucket_sectors = bucket_sectors(&member)
            .ok_or_else(|| member_error(dev, format!("bucket size {} bytes invalid", member.bucket_size)))?;
        let first = u64::from(member.first_bucket);
        if member.nbuckets <= first {
            return Err(member_error(dev, format!("{} buckets, first bucket {first}", member.nbuckets)));
        }
        let len = usize::try_from(member.nbuckets)
            .map_err(|_| member_error(dev, format!("{} buckets do not fit in memory", member.nbuckets)))?;
        validate_journal(dev, &member, &journal)?;

        let mut buckets = vec![BucketState::layout(DataType::Free, 0); len];
        for b in buckets.iter_mut().take(usize::try_from(first).unwrap_or(len)) {
            *b = BucketState::layout(DataType::Sb, bucket_sectors);
        }
        for jb in journal.buckets() {
            if let Some(b) = usize::try_from(jb).ok().and_then(|i| buckets.get_mut(i)) {
                *b = BucketState::layout(DataType::Journal, bucket_sectors);
            }
        }
        let mut free = BucketSet::new(member.nbuckets);
        let mut counts = [0u64; NR_DATA_TYPES];
        for (b, st) in (0u64..).zip(&buckets) {
            if let Some(c) = counts.get_mut(st.data_type as usize) {
                *c += 1;
            }
            if st.data_type == DataType::Free {
                free.insert(b);
            }
        }
        let mut changed = BucketSet::new(member.nbuckets);
        changed.fill();
        let data_buckets = member.nbuckets.saturating_sub(first).saturating_sub(journal.nr());
        let nr_btree_reserve = nr_btree_reserve(u64::from(member.bucket_size), btree_node_size);
        Ok(Device {
            dev,
            member,
            journal,
            buckets,
            counts,
            free,
            changed,
            alloc_cursor: first,
            data_buckets,
            nr_btree_reserve,
        })
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
        self.member.state == MemberState::Rw
    }

    pub(crate) fn durability(&self) -> u8 {
        self.member.durability
    }

    pub(crate) fn bucket(&self, b: u64) -> Option<&BucketState> {
        self.buckets.get(usize::try_from(b).ok()?)
    }

    pub(crate) fn buckets(&self) -> impl Iterator<Item = (u64, &BucketState)> {
        (0u64..).zip(&self.buckets)
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
    pub(crate) fn could_ever_serve(&self, watermark: Watermark) -> bool {
        self.is_rw() && self.durability() > 0 && self.data_buckets > self.reserved(watermark)
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

    /// Replaces bucket `b`'s state, keeping counts, the free set and the changed set in step.
    /// Returns the old state, or `None` (and changes nothing) if `b` is not on the device.
    pub(crate) fn set(&mut self, b: u64, new: BucketState) -> Option<BucketState> {
        let slot = self.buckets.get_mut(usize::try_from(b).ok()?)?;
        let old = std::mem::replace(slot, new);
        if let Some(c) = self.counts.get_mut(old.data_type as usize) {
            *c = c.saturating_sub(1);
        }
        if let Some(c) = self.counts.get_mut(new.data_type as usize) {
            *c += 1;
        }
        if old.data_type == DataType::Free {
            self.free.remove(b);
        }
        if new.data_type == DataType::Free {
            self.free.insert(b);
        }
        self.changed.insert(b);
        Some(old)
    }

    pub(crate) fn is_changed(&self, b: u64) -> bool {
        self.changed.contains(b)
    }

    /// Marks `b` as changed or not, for undo and for a state read back from its alloc key.
    pub(crate) fn set_changed(&mut self, b: u64, changed: bool) {
        if changed {
            self.changed.insert(b);
        } else {
            self.changed.remove(b);
        }
    }

    /// The changed buckets in order; the set is emptied.
    pub(crate) fn take_changed(&mut self) -> Vec<u64> {
        if self.changed.len() == 0 {
            return Vec::new();
        }
        let out: Vec<u64> = self.changed.iter().collect();
        self.changed.clear();
        out
    }

    pub(crate) fn nr_changed(&self) -> u64 {
        self.changed.len()
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
            free: self.count(DataType::Free),
            need_discard: self.count(DataType::NeedDiscard),
            sb: self.count(DataType::Sb),
            journal: self.count(DataType::Journal),
            btree: self.count(DataType::Btree),
            user: self.count(DataType::User),
            cached: self.count(DataType::Cached),
            parity: self.count(DataType::Parity),
            stripe: self.count(DataType::Stripe),
            need_gc_gens: self.count(DataType::NeedGcGens),
            dirty_sectors: self.buckets.iter().map(|b| u64::from(b.dirty_sectors)).sum(),
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
