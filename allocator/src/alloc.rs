//! The allocator: bucket state of every member device behind one lock, bucket allocation with
//! watermarks and replica placement, sector accounting, discards, and the alloc-key updates the
//! caller commits.
//!
//! Bucket life cycle: `free` -> allocated (data type of the request, 0 sectors) -> sectors
//! accounted -> empty again -> `need_discard` (recording `journal_seq_empty`) -> discard bumps the
//! gen -> `free`. The one shortcut: a bucket allocated but never written goes back to `free` with
//! its gen unchanged (see [`Allocator::release_bucket`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use fs_core::bkey::Bkey;
use fs_core::bkey::alloc::{AllocV4, DataType};
use fs_core::bkey::ptr::SECTOR_BYTES;
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::error::{ErrCode, Error, Result};
use fs_core::sync::{Mutex, MutexGuard};

use crate::device::{BucketState, DevUsage, Device, DeviceInit, TakeUndo, Updates, is_allocatable};
use crate::placement::{Candidate, Shortfall, place};
use crate::watermark::Watermark;

/// A request for buckets.
///
/// `nr_replicas` is read once, when the request is made. The next step is the wait list: a
/// request parked there re-reads its replica count from the live options when they change,
/// instead of waiting forever for a count the devices cannot meet (bcachefs #1108).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocRequest {
    pub nr_replicas: u8,
    /// A label or label group (`ssd`, `ssd.nvme0`); `""` for any device.
    pub target: String,
    pub data_type: DataType,
    pub watermark: Watermark,
}

/// The need_discard buckets discards keep back so that a journal rewind still finds what the
/// rewound-to btrees pointed at: the most recently emptied ones, up to a budget of `percent` of
/// capacity (`journal_rewind_discard_buffer_percent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewindBuffer {
    /// v1.37.5: one budget for the whole filesystem, over all devices' buckets together, so a
    /// small metadata device behind big HDDs can have every need_discard bucket kept.
    FsWide { percent: u8 },
    /// Since v1.38: each device keeps `percent` of its own capacity.
    PerDevice { percent: u8 },
}

impl RewindBuffer {
    pub fn percent(self) -> u8 {
        match self {
            RewindBuffer::FsWide { percent } | RewindBuffer::PerDevice { percent } => percent,
        }
    }
}

/// Keys handed out by a take, with what undoing the take needs if they are not committed.
#[must_use = "taken keys must be committed, or given back with Allocator::untake"]
#[derive(Debug)]
pub struct Taken {
    pub updates: Vec<(BtreeId, Bkey)>,
    undo: Vec<(u8, TakeUndo)>,
}

/// One bucket handed out: pointers into it carry `bucket_gen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocatedBucket {
    pub dev: u8,
    pub bucket: u64,
    pub bucket_gen: u8,
}

/// Bucket state of every member device. All methods take `&self`; one mutex guards the state.
pub struct Allocator {
    inner: Mutex<Inner>,
}

/// What one undo-log entry restores when an all-or-nothing operation fails.
enum Undo {
    Bucket { dev: u8, bucket: u64, old: BucketState, was_changed: bool },
    Cursor { dev: u8, old: u64 },
}

pub(crate) struct Inner {
    pub(crate) devs: BTreeMap<u8, Device>,
    pub(crate) btree_node_size: u64,
    /// Active while an all-or-nothing operation runs: every bucket change is logged here first.
    undo: Option<Vec<Undo>>,
}

/// An error for state that contradicts itself: the bcachefs analogues (bucket sector count
/// overflow, pointer to a bucket of another data type, need_discard key for a bucket that does
/// not need one) are fsck errors.
pub(crate) fn inconsistent(dev: u8, bucket: u64, msg: impl Into<String>) -> Error {
    Error::new(ErrCode::BucketAccounting, msg).dev(dev).bucket(bucket)
}

fn no_device(dev: u8) -> Error {
    Error::new(ErrCode::BucketAccounting, format!("no member device {dev}")).dev(dev)
}

impl Allocator {
    /// An allocator for a freshly laid out set of devices (format): every bucket is as the layout
    /// says, gen 0, and the first [`take_updates`](Self::take_updates) returns the keys a new
    /// filesystem starts with: the superblock and journal buckets' alloc keys and one freespace
    /// key per run of free buckets (unused buckets have no alloc key). Unused member slots are
    /// skipped; devices not `rw` keep their state but never allocate. `btree_node_size` sizes
    /// each device's btree reserve.
    pub fn new(devices: Vec<DeviceInit>, btree_node_size: u64) -> Result<Allocator> {
        Allocator::laid_out(devices, btree_node_size, true)
    }

    /// The devices as their layout says; `fresh`: nothing of them is on disk yet.
    pub(crate) fn laid_out(devices: Vec<DeviceInit>, btree_node_size: u64, fresh: bool) -> Result<Allocator> {
        if btree_node_size == 0 || btree_node_size % SECTOR_BYTES != 0 {
            return Err(Error::new(
                ErrCode::InvalidArgument,
                format!("btree_node_size {btree_node_size} is not a positive multiple of {SECTOR_BYTES}"),
            ));
        }
        let mut devs = BTreeMap::new();
        for init in devices {
            if init.member.is_unused() {
                continue;
            }
            let dev = init.dev_idx;
            if devs.contains_key(&dev) {
                return Err(
                    Error::new(ErrCode::DeviceDuplicate, format!("member device {dev} given twice")).dev(dev)
                );
            }
            devs.insert(dev, Device::new(init, btree_node_size, fresh)?);
        }
        Ok(Allocator::from_inner(Inner { devs, btree_node_size, undo: None }))
    }

    /// Takes on `other`'s state whole (fsck rebuilds the allocator from repaired alloc keys):
    /// everyone holding this allocator sees the new state from the next call on.
    pub fn replace(&self, other: Allocator) {
        *self.lock() = other.inner.into_inner();
    }

    pub(crate) fn from_inner(inner: Inner) -> Allocator {
        Allocator { inner: Mutex::new(inner) }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    pub fn btree_node_size(&self) -> u64 {
        self.lock().btree_node_size
    }

    /// Indexes of the member devices the allocator knows, ascending.
    pub fn devices(&self) -> Vec<u8> {
        self.lock().devs.keys().copied().collect()
    }

    /// One bucket's state, or `None` if there is no such bucket.
    pub fn bucket(&self, dev: u8, bucket: u64) -> Option<BucketState> {
        self.lock().devs.get(&dev)?.bucket(bucket).copied()
    }

    /// Bucket counts of one device, or `None` if there is no such device.
    pub fn dev_usage(&self, dev: u8) -> Option<DevUsage> {
        self.lock().devs.get(&dev).map(Device::usage)
    }

    /// Allocates one bucket on each of enough devices to reach `nr_replicas` durability.
    ///
    /// Errors, with nothing changed: `insufficient_devices` when the rw devices could never
    /// satisfy the request; `freelist_empty` when they could but have too few buckets free above
    /// the watermark's reserve now (wait for discards, then retry).
    pub fn alloc_buckets(&self, req: &AllocRequest) -> Result<Vec<AllocatedBucket>> {
        check_request(req.nr_replicas, req.data_type)?;
        let mut inner = self.lock();
        let cands = inner.bucket_candidates(&req.target, req.watermark, req.data_type);
        let devs = place(cands, req.nr_replicas).map_err(|s| {
            inner.shortfall_error(
                s,
                ErrCode::FreelistEmpty,
                &format!("{} replicas of {}", req.nr_replicas, req.data_type),
                &req.target,
                req.watermark,
            )
        })?;
        inner.atomically(|inner| {
            devs.iter()
                .map(|&dev| {
                    let (bucket, bucket_gen) = inner.take_free_bucket(dev, req.data_type)?;
                    Ok(AllocatedBucket { dev, bucket, bucket_gen })
                })
                .collect()
        })
    }

    /// Accounts `delta` sectors of `data_type` in a bucket allocated for that type.
    ///
    /// A bucket that goes from nonempty to empty becomes `need_discard` with
    /// `journal_seq_empty = journal_seq`; it is never free directly, because pointers to it may
    /// be on disk until the journal flushes past that seq. Errors (typed, nothing changed): no
    /// such bucket, a bucket of another data type, a count going below zero or above the bucket.
    pub fn add_sectors(
        &self,
        dev: u8,
        bucket: u64,
        data_type: DataType,
        delta: i64,
        journal_seq: u64,
    ) -> Result<()> {
        self.lock().change_sectors(dev, bucket, data_type, delta, journal_seq, true)
    }

    /// Gives back a bucket that was allocated and never written: it goes straight back to free
    /// with its gen unchanged. That is safe because no sectors were ever accounted in it, so no
    /// key anywhere points into it with this gen; a bucket that held data reaches free only
    /// through `need_discard` and [`discard`](Self::discard), which bumps the gen.
    pub fn release_bucket(&self, dev: u8, bucket: u64) -> Result<()> {
        self.lock().release(dev, bucket)
    }

    /// Discards a `need_discard` bucket: it becomes free and its gen is bumped (wrapping), so a
    /// stale pointer carrying the old gen is recognised once the bucket is reused.
    pub fn discard(&self, dev: u8, bucket: u64) -> Result<()> {
        self.lock().discard(dev, bucket)
    }

    /// Discards every `need_discard` bucket whose emptying is durable (`journal_seq_empty` at
    /// or below `durable_seq`, so no pointer into it can come back from the journal) and that
    /// the rewind buffer does not keep, and returns them, `(dev, bucket)`: the work a
    /// transaction blocked on the allocator waits for. Issuing the device-level discards is the
    /// caller's (the allocator never writes).
    pub fn discard_durable(&self, durable_seq: u64, keep: RewindBuffer) -> Result<Vec<(u8, u64)>> {
        self.discard_durable_on(None, durable_seq, keep, usize::MAX)
    }

    /// [`Allocator::discard_durable`] of one device's buckets only (`None`: every device's),
    /// at most `max` of them (the first in device and bucket order): a caller that commits
    /// their keys concurrently with other transactions keeps each round within what one
    /// journal entry takes. The rewind buffer is counted as the profile counts it, over every
    /// device for [`RewindBuffer::FsWide`].
    pub fn discard_durable_on(
        &self,
        only: Option<u8>,
        durable_seq: u64,
        keep: RewindBuffer,
        max: usize,
    ) -> Result<Vec<(u8, u64)>> {
        let mut inner = self.lock();
        // Most rounds find nothing to do: the per-device counts say so without a scan.
        if inner
            .devs
            .values()
            .all(|d| only.is_some_and(|o| o != d.dev) || d.count(DataType::NeedDiscard) == 0)
        {
            return Ok(Vec::new());
        }
        // Every need_discard bucket, newest emptied first: the rewind buffer keeps from the
        // front, up to its budget.
        let mut nd: Vec<(u64, u8, u64, u64)> = inner
            .devs
            .iter()
            .flat_map(|(&dev, d)| {
                let size = d.bucket_size();
                d.touched()
                    .filter(|(_, st)| st.data_type == DataType::NeedDiscard)
                    .map(move |(b, st)| (st.journal_seq_empty, dev, b, size))
            })
            .collect();
        nd.sort_unstable_by(|a, b| b.cmp(a));
        let budget = |dev: Option<u8>| -> u64 {
            let pct = u64::from(keep.percent());
            let bytes: u64 = inner
                .devs
                .values()
                .filter(|d| dev.is_none_or(|x| x == d.dev))
                .map(|d| d.nbuckets().saturating_mul(d.bucket_size()))
                .sum();
            bytes / 100 * pct
        };
        let mut left: BTreeMap<Option<u8>, u64> = BTreeMap::new();
        let mut ready = Vec::new();
        for (seq_empty, dev, bucket, size) in nd {
            let key = match keep {
                RewindBuffer::FsWide { .. } => None,
                RewindBuffer::PerDevice { .. } => Some(dev),
            };
            let room = left.entry(key).or_insert_with(|| budget(key));
            if *room >= size {
                *room -= size;
                continue;
            }
            *room = 0;
            if seq_empty <= durable_seq && only.is_none_or(|d| d == dev) {
                ready.push((dev, bucket));
            }
        }
        ready.sort_unstable();
        ready.truncate(max);
        for &(dev, bucket) in &ready {
            inner.discard(dev, bucket)?;
        }
        Ok(ready)
    }

    /// The persistent records of every bucket changed since the last call, for the caller to
    /// commit: the `alloc_v4` key (a whiteout for an unused bucket) in the alloc btree, a `set`
    /// key or a whiteout in the need_discard btree, and the freespace range keys (`set` keys at
    /// the run's end, `size` buckets long) rewritten around them. Sorted by btree, then position,
    /// so a caller can insert them in order. A bucket a freed btree node emptied is stamped with
    /// `journal_seq` as its `journal_seq_empty`: the seq of the update that commits these keys.
    pub fn take_updates_at(&self, journal_seq: u64) -> Taken {
        self.lock().take(None, journal_seq)
    }

    /// [`Allocator::take_updates_at`] of only `buckets` (`(dev, bucket)`): the buckets a
    /// transaction's own sector accounting changed. Other changes stay pending.
    pub fn take_updates_of(&self, buckets: &[(u8, u64)], journal_seq: u64) -> Taken {
        self.lock().take(Some(buckets), journal_seq)
    }

    /// [`Allocator::take_updates_at`] for callers that commit what they take for sure and free
    /// no btree node meanwhile (tests, laying out a new filesystem).
    pub fn take_updates(&self) -> Vec<(BtreeId, Bkey)> {
        self.lock().take(None, 0).updates
    }

    /// Gives back keys taken but not committed (the transaction failed): their buckets are
    /// pending again, exactly as before the take.
    pub fn untake(&self, taken: Taken) {
        let mut inner = self.lock();
        for (dev, undo) in taken.undo.into_iter().rev() {
            if let Some(d) = inner.devs.get_mut(&dev) {
                d.untake(undo);
            }
        }
    }

    /// The states of `buckets`, to put back with [`Allocator::restore`] if the transaction
    /// that changes them fails.
    pub fn states_of(&self, buckets: &[(u8, u64)]) -> Result<Vec<(u8, u64, BucketState)>> {
        let inner = self.lock();
        buckets.iter().map(|&(dev, b)| Ok((dev, b, inner.state(dev, b)?))).collect()
    }

    /// Puts back bucket states saved with [`Allocator::states_of`].
    pub fn restore(&self, states: &[(u8, u64, BucketState)]) -> Result<()> {
        let mut inner = self.lock();
        for &(dev, b, st) in states.iter().rev() {
            inner.set_bucket(dev, b, st)?;
        }
        Ok(())
    }

    /// Buckets changed since their keys were last handed out.
    pub fn pending_updates(&self) -> u64 {
        self.lock().nr_changed()
    }

    /// At most how many bytes of keys (entry headers not counted) taking every pending update
    /// would hand out; `usize::MAX` before a new filesystem's first take (its freespace keys
    /// are the whole devices').
    pub fn pending_key_bytes(&self) -> usize {
        self.lock().devs.values().map(Device::pending_key_bytes).fold(0usize, usize::saturating_add)
    }

    /// Applies sector changes of one transaction, all or nothing: `(dev, bucket, data type,
    /// delta)` each, emptied buckets stamped with `journal_seq`. See
    /// [`Allocator::add_sectors`].
    pub fn add_sectors_all(&self, changes: &[(u8, u64, DataType, i64)], journal_seq: u64) -> Result<()> {
        self.lock().atomically(|inner| {
            changes.iter().try_for_each(|&(dev, bucket, dt, delta)| {
                inner.change_sectors(dev, bucket, dt, delta, journal_seq, true)
            })
        })
    }

    /// Bytes the bucket states of every device take in memory (reports, benchmarks).
    pub fn memory_bytes(&self) -> usize {
        self.lock().devs.values().map(Device::memory_bytes).sum()
    }

    /// Checks the allocator against itself and against committed alloc, freespace and
    /// need_discard btrees (given as maps after applying every [`take_updates`](Self::take_updates)
    /// batch): every bucket in exactly one state, counts that match, index keys that mirror the
    /// alloc keys, and alloc keys equal to the in-memory state. Returns the first violation.
    pub fn check_invariants(
        &self,
        alloc: &BTreeMap<Bpos, AllocV4>,
        freespace: &BTreeSet<Bpos>,
        need_discard: &BTreeSet<Bpos>,
    ) -> Result<(), String> {
        self.lock().check_invariants(alloc, freespace, need_discard)
    }
}

/// A request must ask for at least one replica of a data type buckets are allocated for.
pub(crate) fn check_request(nr_replicas: u8, data_type: DataType) -> Result<()> {
    if nr_replicas == 0 {
        return Err(Error::new(ErrCode::InvalidArgument, "allocation request for 0 replicas"));
    }
    if !is_allocatable(data_type) {
        return Err(Error::new(
            ErrCode::InvalidArgument,
            format!("buckets are not allocated for data type {data_type}"),
        ));
    }
    Ok(())
}

impl Inner {
    pub(crate) fn device(&self, dev: u8) -> Result<&Device> {
        self.devs.get(&dev).ok_or_else(|| no_device(dev))
    }

    pub(crate) fn state(&self, dev: u8, bucket: u64) -> Result<BucketState> {
        let d = self.device(dev)?;
        d.bucket(bucket).copied().ok_or_else(|| {
            inconsistent(dev, bucket, format!("bucket {bucket} beyond the device's {} buckets", d.nbuckets()))
        })
    }

    /// Replaces a bucket's state, logging the old one if an all-or-nothing operation is running.
    fn set_bucket(&mut self, dev: u8, bucket: u64, new: BucketState) -> Result<()> {
        let d = self.devs.get_mut(&dev).ok_or_else(|| no_device(dev))?;
        let was_changed = d.is_changed(bucket);
        let old = d.set(bucket, new).ok_or_else(|| inconsistent(dev, bucket, "no such bucket"))?;
        if let Some(log) = self.undo.as_mut() {
            log.push(Undo::Bucket { dev, bucket, old, was_changed });
        }
        Ok(())
    }

    fn set_cursor(&mut self, dev: u8, cursor: u64) -> Result<()> {
        let d = self.devs.get_mut(&dev).ok_or_else(|| no_device(dev))?;
        let old = std::mem::replace(&mut d.alloc_cursor, cursor);
        if let Some(log) = self.undo.as_mut() {
            log.push(Undo::Cursor { dev, old });
        }
        Ok(())
    }

    /// Runs `f` all-or-nothing: if it fails, every bucket and cursor it changed is restored, the
    /// changed-set included, so a failed operation leaves no trace. Nested calls join the outer.
    pub(crate) fn atomically<T>(&mut self, f: impl FnOnce(&mut Inner) -> Result<T>) -> Result<T> {
        if self.undo.is_some() {
            return f(self);
        }
        self.undo = Some(Vec::new());
        let result = f(self);
        let log = self.undo.take().unwrap_or_default();
        if result.is_err() {
            self.rollback(log);
        }
        result
    }

    fn rollback(&mut self, log: Vec<Undo>) {
        for entry in log.into_iter().rev() {
            match entry {
                Undo::Bucket { dev, bucket, old, was_changed } => {
                    if let Some(d) = self.devs.get_mut(&dev) {
                        d.set(bucket, old);
                        d.set_changed(bucket, was_changed);
                    }
                }
                Undo::Cursor { dev, old } => {
                    if let Some(d) = self.devs.get_mut(&dev) {
                        d.alloc_cursor = old;
                    }
                }
            }
        }
    }

    /// Every device as placement sees it for a bucket request.
    fn bucket_candidates(&self, target: &str, watermark: Watermark, data_type: DataType) -> Vec<Candidate> {
        self.devs
            .values()
            .map(|d| Candidate {
                dev: d.dev,
                durability: d.durability(),
                in_target: d.member.in_target(target),
                available: d.available(watermark),
                could_ever_serve: d.could_ever_serve(watermark, data_type),
            })
            .collect()
    }

    /// The error for a failed placement. `blocked` is the code for "could, but not now":
    /// `freelist_empty` for the plain API, `bucket_alloc_blocked` for btree nodes. The message
    /// names the request and, when blocked, each device's free, need_discard and reserve counts:
    /// what a stuck report needs.
    pub(crate) fn shortfall_error(
        &self,
        shortfall: Shortfall,
        blocked: ErrCode,
        what: &str,
        target: &str,
        watermark: Watermark,
    ) -> Error {
        let target = if target.is_empty() { "any" } else { target };
        match shortfall {
            Shortfall::Insufficient { durability } => Error::new(
                ErrCode::InsufficientDevices,
                format!(
                    "{what} wanted (target {target}, watermark {watermark}), but the rw devices \
                     give durability {durability} at most"
                ),
            ),
            Shortfall::Blocked { durability } => {
                let mut msg = format!(
                    "{what} wanted (target {target}, watermark {watermark}): devices with buckets \
                     available now give durability {durability}"
                );
                for d in self.devs.values().filter(|d| d.is_rw()) {
                    let _ = write!(
                        msg,
                        "; dev {}: {} free, {} need_discard, {} reserved",
                        d.dev,
                        d.nr_free(),
                        d.count(DataType::NeedDiscard),
                        d.reserved(watermark)
                    );
                }
                Error::new(blocked, msg)
            }
        }
    }

    /// Takes the next free bucket on `dev` (rotating from the device's cursor) for `data_type`.
    pub(crate) fn take_free_bucket(&mut self, dev: u8, data_type: DataType) -> Result<(u64, u8)> {
        let d = self.device(dev)?;
        let bucket = d.next_free().ok_or_else(|| {
            Error::new(ErrCode::FreelistEmpty, format!("no free bucket on device {dev}")).dev(dev)
        })?;
        let st = self.state(dev, bucket)?;
        if st.data_type != DataType::Free {
            return Err(inconsistent(dev, bucket, format!("bucket on the free list is {}", st.data_type)));
        }
        let next_cursor = bucket.saturating_add(1);
        let next_cursor = if next_cursor >= d.nbuckets() { 0 } else { next_cursor };
        self.set_bucket(dev, bucket, BucketState { data_type, written: false, dirty_sectors: 0, ..st })?;
        self.set_cursor(dev, next_cursor)?;
        Ok((bucket, st.bucket_gen))
    }

    /// Accounts `delta` sectors. `written` says the sectors were (or may have been) written to
    /// the device; only then does emptying the bucket require a discard. Btree node slots that are
    /// taken and given back unwritten pass `false`.
    pub(crate) fn change_sectors(
        &mut self,
        dev: u8,
        bucket: u64,
        data_type: DataType,
        delta: i64,
        journal_seq: u64,
        written: bool,
    ) -> Result<()> {
        if !is_allocatable(data_type) {
            return Err(inconsistent(dev, bucket, format!("sectors are not accounted as {data_type}")));
        }
        let st = self.state(dev, bucket)?;
        if st.data_type != data_type {
            return Err(inconsistent(
                dev,
                bucket,
                format!("{delta} sectors of {data_type} for a bucket of data type {}", st.data_type),
            ));
        }
        if delta == 0 {
            return Ok(());
        }
        let bucket_sectors = self.device(dev)?.bucket_sectors();
        let new = i64::from(st.dirty_sectors).checked_add(delta).filter(|n| *n >= 0);
        let new =
            new.and_then(|n| u32::try_from(n).ok()).filter(|n| *n <= bucket_sectors).ok_or_else(|| {
                inconsistent(
                    dev,
                    bucket,
                    format!(
                        "{data_type} sector count {} {delta:+} leaves 0..={bucket_sectors}",
                        st.dirty_sectors
                    ),
                )
                .journal_seq(journal_seq)
            })?;
        let mut next = BucketState { dirty_sectors: new, written: st.written || written, ..st };
        if new == 0 {
            next = if next.written {
                BucketState { data_type: DataType::NeedDiscard, journal_seq_empty: journal_seq, ..next }
            } else {
                BucketState { data_type: DataType::Free, ..next }
            };
            next.written = false;
        }
        self.set_bucket(dev, bucket, next)
    }

    fn release(&mut self, dev: u8, bucket: u64) -> Result<()> {
        let st = self.state(dev, bucket)?;
        if !is_allocatable(st.data_type) {
            return Err(inconsistent(
                dev,
                bucket,
                format!("released bucket is {}, not allocated", st.data_type),
            ));
        }
        if st.dirty_sectors != 0 || st.written {
            return Err(inconsistent(
                dev,
                bucket,
                format!("released bucket holds {} sectors of {}", st.dirty_sectors, st.data_type),
            ));
        }
        self.set_bucket(dev, bucket, BucketState { data_type: DataType::Free, ..st })
    }

    fn discard(&mut self, dev: u8, bucket: u64) -> Result<()> {
        let st = self.state(dev, bucket)?;
        if st.data_type != DataType::NeedDiscard {
            return Err(inconsistent(
                dev,
                bucket,
                format!("discarded bucket is {}, not need_discard", st.data_type),
            ));
        }
        let next = BucketState {
            bucket_gen: st.bucket_gen.wrapping_add(1),
            data_type: DataType::Free,
            written: false,
            dirty_sectors: 0,
            ..st
        };
        self.set_bucket(dev, bucket, next)
    }

    fn take(&mut self, only: Option<&[(u8, u64)]>, journal_seq: u64) -> Taken {
        let mut u = Updates::default();
        let mut undo = Vec::new();
        for d in self.devs.values_mut() {
            let mine: Option<Vec<u64>> =
                only.map(|bs| bs.iter().filter(|(dev, _)| *dev == d.dev).map(|&(_, b)| b).collect());
            let buckets = d.changed_among(mine.as_deref());
            if buckets.is_empty() && mine.is_some() {
                continue;
            }
            let mut du = TakeUndo::default();
            d.take(&buckets, journal_seq, &mut u, &mut du);
            undo.push((d.dev, du));
        }
        u.freespace.sort_by_key(|k| k.pos);
        let mut out: Vec<(BtreeId, Bkey)> = u.alloc.into_iter().map(|k| (BtreeId::Alloc, k)).collect();
        out.extend(u.freespace.into_iter().map(|k| (BtreeId::Freespace, k)));
        out.extend(u.need_discard.into_iter().map(|k| (BtreeId::NeedDiscard, k)));
        Taken { updates: out, undo }
    }

    fn nr_changed(&self) -> u64 {
        self.devs.values().map(Device::nr_changed).sum()
    }
}
