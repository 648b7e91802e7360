//! A mounted filesystem: its parts, shared between the threads of a running mount.
//!
//! [`FsShared`] holds the parts, each behind its own lock (or internally locked), all through
//! `fs_core::sync`: the device set and superblock, the live options, the health state, the
//! allocator and btree node allocator, the journal (with its pins), and the btrees. The btrees
//! sit behind one lock, a simplification of bcachefs's per-node locks: a transaction holds it
//! while it applies its updates, write-back while it writes nodes. Room is kept for the key cache,
//! which plugs into the same transaction path and journal pins.
//!
//! [`Fs`] is the handle the mounting thread holds: transactions ([`trans`]), write-back
//! ([`write_back`]), fsync and unmount. On a read-write mount a journal reclaim thread
//! ([`reclaim`]) runs beside it: it writes the open journal entry after `journal_flush_delay`
//! and flushes journal pins when the journal fills. Dropping an `Fs` without unmounting is a crash:
//! the thread stops and what was only in memory is gone.
//!
//! Lock order: btrees, then the write-back pin, then the allocator's and the journal's own
//! locks; the superblock lock is taken alone or after the btrees. Journal pin callbacks run
//! with no journal lock held.

pub mod alloc_wait;
pub mod discard;
pub mod layout;
pub mod reclaim;
pub mod trans;
pub mod write_back;

use std::collections::BTreeMap;
use std::time::Instant;

use allocator::{Allocator, BtreeNodeAlloc, Clock, WaitList};
use fs_core::bkey::{AllocV4, Bkey, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::{BtreeConfig, Btrees, KeyOverlay, NodeAllocator, NodeInfo, NodeLocation};
use fs_core::dev::SharedDevice;
use fs_core::error::{ErrCode, Error, Result};
use fs_core::health::FsHealth;
use fs_core::opts::{LiveOpts, OptId, Options};
use fs_core::sb::{CleanRoot, CleanSection, DeviceSet};
use fs_core::sync::{Arc, AtomicBool, AtomicU64, Mutex, MutexGuard, Ordering, Weak};
use journal::{Journal, JournalPin, JsetEntry};
use key_cache::{FlushTarget, Found, KeyCache};

use self::layout::{clean_roots, open_btrees};
use self::reclaim::Reclaim;
use self::write_back::WriteBackPin;
use crate::recovery::ReclaimMode;

/// Stands in for the allocator on a filesystem opened read-only: any write is refused.
pub(crate) struct ReadOnlyNodes;

impl NodeAllocator for ReadOnlyNodes {
    fn alloc_nodes(&self, _nr: usize, btree: BtreeId, _level: u8) -> Result<Vec<NodeLocation>> {
        Err(Error::new(ErrCode::Erofs, "filesystem opened read-only").btree(btree))
    }
    fn release_unused(&self, _nodes: Vec<NodeLocation>) -> Result<()> {
        Err(Error::internal("read-only btrees handed out no nodes to release"))
    }
    fn free_node(&self, _ptrs: &[fs_core::bkey::ExtentPtr]) -> Result<()> {
        Err(Error::new(ErrCode::Erofs, "filesystem opened read-only"))
    }
}

/// The parts of a mounted filesystem, shared by its threads.
pub struct FsShared {
    set: Mutex<DeviceSet>,
    opts: Arc<LiveOpts>,
    health: Arc<FsHealth>,
    /// `None` when opened read-only.
    alloc: Option<Arc<Allocator>>,
    nodes: Option<Arc<BtreeNodeAlloc>>,
    journal: Option<Arc<Journal>>,
    btrees: Mutex<Btrees>,
    /// The btree key cache (read-write mounts). Journal replay routes level-0 alloc keys
    /// through it, as bcachefs does; transactions do not use it yet.
    key_cache: Option<Arc<KeyCache>>,
    /// The pin held for updates applied to btree nodes and not yet written back: at the
    /// oldest such seq. Its flush callback is btree write-back.
    wb_pin: Mutex<Option<JournalPin>>,
    wb_flush: Arc<WriteBackPin>,
    /// The time [`Fs::tick`] last gave, which commits then use as theirs: a filesystem
    /// stepped by hand runs on the caller's clock, so `journal_flush_delay` acts at the same
    /// operations every run. `None`: the real clock.
    manual_now: Mutex<Option<Instant>>,
    /// Where blocked btree updates park (read-write mounts).
    waits: Option<Arc<WaitList>>,
    /// Whether the mount's background threads (journal reclaim, discard workers) run: only
    /// then may a blocked update park, someone being there to wake it, and it leaves
    /// discarding to the workers.
    threads: AtomicBool,
    /// See [`FsShared::rewind_seq`].
    rewind_seq: AtomicU64,
    /// While journal replay runs: the positions commits have written since replay last looked
    /// ([`FsShared::take_replay_overwrites`]).
    replay_overwrites: Mutex<Option<Vec<(BtreeId, Bpos)>>>,
    /// Whether need_discard buckets are discarded yet: from going read-write (before journal
    /// replay) in v1.39 and fixed, only once recovery is done in v1.37.5.
    discards: AtomicBool,
    /// Wakes the discard workers (when the mount runs them).
    discard_kick: Arc<discard::DiscardKick>,
    /// Where lines the kernel would put in dmesg while the filesystem runs go (stuck reports),
    /// besides [`FsShared::events`].
    klog_sink: Mutex<Option<LogSink>>,
    /// The last [`EVENTS_KEPT`] lines logged while running.
    events: Mutex<std::collections::VecDeque<String>>,
}

/// Lines [`FsShared::events`] keeps: a long-running mount logs a line per discard round, and
/// keeping them all would grow without end.
const EVENTS_KEPT: usize = 4096;

/// A receiver of log lines.
pub type LogSink = Arc<dyn Fn(&str) + Send + Sync>;

/// What assembling a filesystem takes.
pub struct Parts {
    pub set: DeviceSet,
    pub opts: Arc<LiveOpts>,
    pub health: Arc<FsHealth>,
    pub alloc: Option<Arc<Allocator>>,
    pub nodes: Option<Arc<BtreeNodeAlloc>>,
    pub journal: Option<Arc<Journal>>,
    pub btrees: Btrees,
    /// The clock of the wait list (read-write only).
    pub wait_clock: Clock,
}

impl FsShared {
    /// Assembles the shared parts.
    pub fn new(p: Parts) -> Arc<FsShared> {
        let behavior = p.opts.with(Options::behavior);
        let rw = p.journal.is_some();
        let waits = rw.then(|| WaitList::wired(&p.opts, &p.health, p.set.sb.members.len(), p.wait_clock));
        Arc::new_cyclic(|me: &Weak<FsShared>| FsShared {
            key_cache: rw.then(|| {
                let target: Weak<dyn FlushTarget> = me.clone();
                KeyCache::new(behavior, target)
            }),
            set: Mutex::new(p.set),
            opts: p.opts,
            health: p.health,
            alloc: p.alloc,
            nodes: p.nodes,
            journal: p.journal,
            btrees: Mutex::new(p.btrees),
            wb_pin: Mutex::new(None),
            wb_flush: Arc::new(WriteBackPin { fs: me.clone() }),
            manual_now: Mutex::new(None),
            waits,
            threads: AtomicBool::new(false),
            rewind_seq: AtomicU64::new(u64::MAX),
            replay_overwrites: Mutex::new(None),
            discards: AtomicBool::new(false),
            discard_kick: Arc::new(discard::DiscardKick::default()),
            klog_sink: Mutex::new(None),
            events: Mutex::new(std::collections::VecDeque::new()),
        })
    }

    /// Logs a line as the kernel logs to dmesg while the filesystem runs: kept in
    /// [`FsShared::events`] and handed to the sink if one is set.
    pub fn klog(&self, line: &str) {
        {
            let mut events = self.events.lock();
            if events.len() == EVENTS_KEPT {
                events.pop_front();
            }
            events.push_back(line.to_owned());
        }
        let sink = self.klog_sink.lock().clone();
        if let Some(sink) = sink {
            sink(line);
        }
    }

    /// Sends [`FsShared::klog`] lines to `sink` from now on.
    pub fn set_klog_sink(&self, sink: LogSink) {
        *self.klog_sink.lock() = Some(sink);
    }

    /// The lines logged while running, oldest first (the last [`EVENTS_KEPT`]).
    pub fn events(&self) -> Vec<String> {
        self.events.lock().iter().cloned().collect()
    }

    /// The wait list blocked btree updates park on (read-write only).
    pub fn waits(&self) -> Option<&Arc<WaitList>> {
        self.waits.as_ref()
    }

    /// The journal seq discards stay below: the first seq of the range journal replay is
    /// replaying, while it runs; `u64::MAX` otherwise.
    pub(crate) fn rewind_seq(&self) -> u64 {
        self.rewind_seq.load(Ordering::Acquire)
    }

    pub(crate) fn set_rewind_seq(&self, seq: Option<u64>) {
        self.rewind_seq.store(seq.unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Starts (`true`) or ends recording the positions commits write while journal replay
    /// runs; ending drops what was not taken.
    pub(crate) fn record_replay_overwrites(&self, on: bool) {
        *self.replay_overwrites.lock() = on.then(Vec::new);
    }

    /// The positions committed transactions have written since the last call, while replay
    /// runs. Replay marks the journal keys there overwritten, as bcachefs's commits do during
    /// replay (`bch2_drop_overwrites_from_journal`): a journal key is older than any commit
    /// made after the journal was read, and replaying it later would put the older key back
    /// over the newer one (the node alloc keys a write-back during replay publishes, for
    /// buckets that were freed before the crash).
    pub(crate) fn take_replay_overwrites(&self) -> Vec<(BtreeId, Bpos)> {
        self.replay_overwrites.lock().as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Records the positions of a committed transaction's keys for replay (see
    /// [`FsShared::take_replay_overwrites`]).
    pub(crate) fn note_replay_overwrites(&self, updates: &[(BtreeId, Bkey)]) {
        if let Some(v) = self.replay_overwrites.lock().as_mut() {
            v.extend(updates.iter().map(|(btree, k)| (*btree, k.pos)));
        }
    }

    /// What discards keep back, as the profile computes it: one filesystem-wide budget in
    /// v1.37.5, a budget per device since.
    pub(crate) fn rewind_buffer(&self) -> allocator::RewindBuffer {
        let (behavior, pct) =
            self.opts.with(|o| (o.behavior(), o.u64(OptId::JournalRewindDiscardBufferPercent)));
        let percent = u8::try_from(pct).unwrap_or(u8::MAX);
        match behavior {
            fs_core::opts::Behavior::V1_37_5 => allocator::RewindBuffer::FsWide { percent },
            _ => allocator::RewindBuffer::PerDevice { percent },
        }
    }

    /// The background threads run (see the field): a blocked update may park.
    pub(crate) fn threads_running(&self) -> bool {
        self.threads.load(Ordering::Acquire)
    }

    /// Now, on the clock commits use: the last [`Fs::tick`]'s time, else the real clock.
    pub(crate) fn now(&self) -> Instant {
        (*self.manual_now.lock()).unwrap_or_else(Instant::now)
    }

    pub fn opts(&self) -> &Arc<LiveOpts> {
        &self.opts
    }

    pub fn health(&self) -> &Arc<FsHealth> {
        &self.health
    }

    pub fn alloc(&self) -> Option<&Arc<Allocator>> {
        self.alloc.as_ref()
    }

    pub fn nodes(&self) -> Option<&Arc<BtreeNodeAlloc>> {
        self.nodes.as_ref()
    }

    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.as_ref()
    }

    pub fn key_cache(&self) -> Option<&Arc<KeyCache>> {
        self.key_cache.as_ref()
    }

    /// The journal of a read-write filesystem; `EROFS` when opened read-only.
    pub(crate) fn journal_rw(&self) -> Result<&Arc<Journal>> {
        self.journal.as_ref().ok_or_else(|| Error::new(ErrCode::Erofs, "filesystem opened read-only"))
    }

    /// The btrees, locked.
    pub fn btrees(&self) -> MutexGuard<'_, Btrees> {
        self.btrees.lock()
    }

    /// The device set and superblock, locked.
    pub fn set(&self) -> MutexGuard<'_, DeviceSet> {
        self.set.lock()
    }

    /// A member device's handle, if present.
    pub fn device(&self, dev: u8) -> Option<SharedDevice> {
        self.set.lock().device(usize::from(dev)).map(|m| m.dev.clone())
    }

    /// A member's bucket size in bytes (1 for no such member, so divisions stay defined).
    pub fn bucket_size(&self, dev: u8) -> u64 {
        self.set.lock().sb.members.get(usize::from(dev)).map_or(1, |m| u64::from(m.bucket_size).max(1))
    }

    /// Records the current (written) roots and `journal_seq` as a clean section and writes the
    /// superblocks: the filesystem is clean from here until it is opened read-write again.
    pub(crate) fn write_clean_section(&self, journal_seq: u64) -> Result<()> {
        let roots = self
            .btrees()
            .roots()
            .into_iter()
            .map(|r| CleanRoot { btree: r.btree, level: r.level, key: r.ptr.encode() })
            .collect();
        let mut set = self.set();
        set.sb.clean = Some(CleanSection { journal_seq, roots });
        set.write_super()
    }

    /// Writable from here on: the current roots go into the journal (a crash before the next
    /// write-back finds them there), then the superblock stops saying clean.
    pub(crate) fn go_rw(&self) -> Result<()> {
        let journal = self.journal_rw()?;
        journal.set_roots(root_entries(&mut self.btrees()));
        journal.flush()?;
        let mut set = self.set();
        set.sb.clean = None;
        set.write_super()?;
        drop(set);
        if self.opts.with(Options::behavior) != fs_core::opts::Behavior::V1_37_5 {
            self.start_discards();
        }
        Ok(())
    }

    /// Need_discard buckets are discarded from now on (v1.37.5: once recovery is done).
    pub(crate) fn start_discards(&self) {
        self.discards.store(true, Ordering::Release);
    }

    pub(crate) fn discards_running(&self) -> bool {
        self.discards.load(Ordering::Acquire)
    }

    pub(crate) fn discard_kick(&self) -> &Arc<discard::DiscardKick> {
        &self.discard_kick
    }

    /// Wakes the discard workers, if the mount runs them.
    pub(crate) fn kick_discards(&self) {
        if self.threads_running() {
            self.discard_kick.kick();
        }
    }

    /// After emergency read-only, the one write left: the superblock counts it
    /// (`emergency_read_only`), still not clean, so the next mount replays the journal. A
    /// simulated kernel BUG writes not even that: the filesystem stopped dead. A failure to
    /// write it changes nothing about the error being reported.
    pub(crate) fn record_emergency_ro(&self) {
        if self.health.emergency_ro_cause().is_none_or(|c| c.code == ErrCode::KernelBug) {
            return;
        }
        let mut set = self.set();
        set.sb.count_error(fs_core::fsck_err::FsckErr::EmergencyReadOnly, 1);
        set.sb.needs_fsck = true;
        let _ = set.write_super();
    }

    /// Gives up the pins this filesystem holds without writing anything back: a crash, or an
    /// emergency shutdown, where what was only in memory is lost on purpose.
    pub(crate) fn abandon_pins(&self) {
        if let Some(p) = self.wb_pin.lock().take() {
            p.abandon();
        }
        if let Some(cache) = &self.key_cache {
            cache.abandon_pins();
        }
    }
}

/// The handle of a mounted (or read-only opened) filesystem.
pub struct Fs {
    shared: Arc<FsShared>,
    reclaim: Option<Reclaim>,
    discards: Option<discard::Discards>,
}

impl Fs {
    /// The handle of assembled parts; a read-write filesystem gets its reclaim thread unless
    /// `reclaim` says the caller drives reclaim itself ([`Fs::tick`]).
    pub(crate) fn from_shared(shared: Arc<FsShared>, reclaim: ReclaimMode) -> Result<Fs> {
        let reclaim = match (shared.journal.is_some(), reclaim) {
            (true, ReclaimMode::Thread) => Some(Reclaim::start(&shared)?),
            _ => None,
        };
        let discards = match reclaim {
            Some(_) => Some(discard::Discards::start(&shared)?),
            None => None,
        };
        shared.threads.store(discards.is_some(), Ordering::Release);
        Ok(Fs { shared, reclaim, discards })
    }

    /// One round of journal reclaim at time `now` (the flush delay, then pins if the journal is
    /// filling): what the reclaim thread does, for a mount that drives reclaim itself. From
    /// then on commits take `now` as their time too, so the flush delay runs on the caller's
    /// clock alone (give times that do not go backwards).
    pub fn tick(&self, now: Instant) -> Result<()> {
        *self.shared.manual_now.lock() = Some(now);
        reclaim::step(&self.shared, now).map_err(|e| self.shared.check_fatal(e))
    }

    /// Opens a cleanly unmounted filesystem: read-only (nothing is ever written; no allocator,
    /// no journal), or read-write, which is a mount (see [`crate::recovery::mount_with`]).
    pub fn open(set: DeviceSet, writable: bool, cfg: BtreeConfig) -> Result<Fs> {
        if writable {
            if !set.sb.is_clean() {
                return Err(Error::new(
                    ErrCode::InvalidSbClean,
                    "filesystem was not unmounted cleanly: its btrees need journal replay",
                ));
            }
            let mounted = crate::recovery::mount_with(set, &crate::recovery::MountOpts::default(), cfg)?;
            return Ok(mounted.fs);
        }
        let opts = set.sb.opts.clone();
        let roots = clean_roots(&set)?;
        let cfg = BtreeConfig { behavior: opts.behavior(), ..cfg };
        let btrees = open_btrees(&set, opts.btree_node_size(), Arc::new(ReadOnlyNodes), roots, cfg, None);
        let parts = Parts {
            set,
            opts: Arc::new(LiveOpts::new(opts)),
            health: Arc::new(FsHealth::new()),
            alloc: None,
            nodes: None,
            journal: None,
            btrees,
            wait_clock: Clock::Real(Instant::now()),
        };
        Fs::from_shared(FsShared::new(parts), ReclaimMode::Manual)
    }

    pub fn shared(&self) -> &Arc<FsShared> {
        &self.shared
    }

    pub fn opts(&self) -> &Arc<LiveOpts> {
        &self.shared.opts
    }

    /// A copy of the current options.
    pub fn options(&self) -> Options {
        self.shared.opts.snapshot().0
    }

    pub fn health(&self) -> &Arc<FsHealth> {
        &self.shared.health
    }

    pub fn alloc(&self) -> Option<&Arc<Allocator>> {
        self.shared.alloc.as_ref()
    }

    /// The alloc, freespace and need_discard btrees as [`Allocator::check_invariants`] takes
    /// them: alloc keys decoded, every bucket a freespace range key covers, need_discard
    /// positions.
    pub fn alloc_records(&self) -> Result<AllocRecords> {
        let all = |b| self.list(b, Bpos::MIN, Bpos::MAX);
        let alloc = all(BtreeId::Alloc)?
            .iter()
            .map(|k| Ok((k.pos, AllocV4::decode(&k.val)?)))
            .collect::<Result<_>>()?;
        let freespace = all(BtreeId::Freespace)?
            .iter()
            .flat_map(|k| {
                (k.pos.offset.saturating_sub(u64::from(k.size))..k.pos.offset)
                    .map(move |b| Bpos::new(k.pos.inode, b, 0))
            })
            .collect();
        let need_discard = all(BtreeId::NeedDiscard)?.iter().map(|k| k.pos).collect();
        Ok(AllocRecords { alloc, freespace, need_discard })
    }

    /// The allocator's state against its btrees ([`Fs::alloc_records`]); `bucket_accounting`
    /// names the first difference. Nothing to check on a filesystem opened read-only.
    pub fn check_alloc_invariants(&self) -> Result<()> {
        let Some(alloc) = self.alloc() else { return Ok(()) };
        let r = self.alloc_records()?;
        alloc
            .check_invariants(&r.alloc, &r.freespace, &r.need_discard)
            .map_err(|e| Error::new(ErrCode::BucketAccounting, e))
    }

    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.shared.journal.as_ref()
    }

    pub fn btrees(&self) -> MutexGuard<'_, Btrees> {
        self.shared.btrees()
    }

    pub fn set(&self) -> MutexGuard<'_, DeviceSet> {
        self.shared.set()
    }

    pub fn device(&self, dev: u8) -> Option<SharedDevice> {
        self.shared.device(dev)
    }

    pub fn bucket_size(&self, dev: u8) -> u64 {
        self.shared.bucket_size(dev)
    }

    /// The key at `pos` in `btree`, through the key cache: an entry holds the newest key.
    pub fn get(&self, btree: BtreeId, pos: Bpos) -> Result<Option<Bkey>> {
        let mut t = self.btrees();
        if let Some(k) = self.shared.key_cache().and_then(|c| c.get(btree, pos)) {
            return Ok(Some(k));
        }
        t.get(btree, pos)
    }

    /// The last key at or before `pos`.
    pub fn last_until(&self, btree: BtreeId, pos: Bpos) -> Result<Option<Bkey>> {
        self.btrees().last_until(btree, pos)
    }

    /// Keys of `btree` from `start` to `end` inclusive.
    pub fn list(&self, btree: BtreeId, start: Bpos, end: Bpos) -> Result<Vec<Bkey>> {
        let mut t = self.btrees();
        let mut it = t.iter(btree, start);
        let mut out = Vec::new();
        let cache = self.shared.key_cache();
        while let Some(k) = it.next(&mut t, None)? {
            if k.pos > end {
                break;
            }
            // An entry sits only over a live btree key, and holds the newer key.
            out.push(cache.and_then(|c| c.get(btree, k.pos)).unwrap_or(k));
        }
        Ok(out)
    }

    pub fn nodes(&self, btree: BtreeId) -> Result<Vec<NodeInfo>> {
        self.btrees().node_infos(btree)
    }

    /// Journal reclaim, now: flushes every pin, which writes everything back.
    pub fn reclaim(&self) -> Result<()> {
        let journal = self.shared.journal_rw()?;
        journal.flush_all_pins().map(|_| ())
    }

    /// Makes every commit so far durable (fsync); returns the durable seq. Data goes first:
    /// an extent must never become durable before the data it points at.
    pub fn fsync(&self) -> Result<u64> {
        let journal = self.shared.journal_rw()?;
        for dev in self.set().present().map(|m| m.dev.clone()).collect::<Vec<_>>() {
            dev.flush()?;
        }
        journal.flush()
    }

    /// Writes everything back and records the btree roots in a clean section. An emergency
    /// read-only filesystem is not marked clean: its next mount replays the journal.
    pub fn unmount(mut self) -> Result<()> {
        self.stop_reclaim()?;
        if self.shared.journal.is_none() {
            return Ok(());
        }
        if let Err(e) = self.shared.health.check_rw() {
            self.shared.abandon_pins();
            self.shared.record_emergency_ro();
            return Err(e);
        }
        // The key cache's dirty entries first (their pins' flushes), then what they dirtied.
        let r = self
            .shared
            .journal_rw()
            .and_then(|j| j.flush_all_pins())
            .and_then(|_| self.shared.write_back_all())
            .and_then(|()| self.shared.journal_rw()?.flush());
        let seq = match r {
            Ok(seq) => seq,
            Err(e) => {
                self.shared.health.fatal(&e);
                self.shared.abandon_pins();
                return Err(e);
            }
        };
        self.shared.write_clean_section(seq)
    }

    /// Stops the discard workers and the reclaim thread; a failure of theirs is the error.
    fn stop_reclaim(&mut self) -> Result<()> {
        self.shared.threads.store(false, Ordering::Release);
        let discards = match self.discards.take() {
            Some(d) => d.stop(),
            None => Ok(()),
        };
        let reclaim = match self.reclaim.take() {
            Some(r) => r.stop(),
            None => Ok(()),
        };
        discards.and(reclaim)
    }
}

/// What the alloc btrees hold, in the shape the allocator's invariant check takes.
#[derive(Clone, Debug, Default)]
pub struct AllocRecords {
    pub alloc: std::collections::BTreeMap<Bpos, AllocV4>,
    /// Every bucket some freespace range key covers.
    pub freespace: std::collections::BTreeSet<Bpos>,
    pub need_discard: std::collections::BTreeSet<Bpos>,
}

impl Drop for Fs {
    /// Dropping a filesystem without unmounting it is a crash: the reclaim thread stops, and
    /// the pins are given up with what was only in memory.
    fn drop(&mut self) {
        // The threads' errors, if any, are already in the health state.
        let _ = self.stop_reclaim();
        self.shared.abandon_pins();
    }
}

/// The `btree_root` journal entries for the btrees' current roots.
pub(crate) fn root_entries(btrees: &mut Btrees) -> Vec<JsetEntry> {
    btrees
        .roots()
        .into_iter()
        .map(|r| JsetEntry::BtreeRoot { btree: r.btree, level: r.level, ptr: r.ptr })
        .collect()
}

/// Every alloc key of the alloc btree, decoded; through `overlay` when one is given.
pub(crate) fn read_alloc_keys(
    t: &mut Btrees,
    overlay: Option<&dyn KeyOverlay>,
) -> Result<Vec<(Bpos, AllocV4)>> {
    let mut out = Vec::new();
    t.for_each_key(BtreeId::Alloc, overlay, |k| {
        if k.ty == KeyType::AllocV4 {
            out.push((k.pos, AllocV4::decode(k.val).map_err(|e| e.btree(BtreeId::Alloc).pos(k.pos))?));
        }
        Ok(())
    })?;
    Ok(out)
}

/// The bucket runs the freespace keys cover, per device; through `overlay` when one is given.
pub(crate) fn read_freespace_runs(
    t: &mut Btrees,
    overlay: Option<&dyn KeyOverlay>,
) -> Result<BTreeMap<u8, Vec<std::ops::Range<u64>>>> {
    let mut out: BTreeMap<u8, Vec<std::ops::Range<u64>>> = BTreeMap::new();
    t.for_each_key(BtreeId::Freespace, overlay, |k| {
        if let (KeyType::Set, Ok(dev)) = (k.ty, u8::try_from(k.pos.inode)) {
            let end = k.pos.offset;
            out.entry(dev).or_default().push(end.saturating_sub(u64::from(k.size))..end);
        }
        Ok(())
    })?;
    Ok(out)
}

/// The key cache's flushes go into the btrees, under the btree lock. Key cache pins are flushed
/// only below the replay barrier, once replay is done: the btree alone is what the kernel's
/// flush would see.
impl FlushTarget for FsShared {
    fn flush_key(
        &self,
        btree: BtreeId,
        key: &Bkey,
        seq: u64,
        check: &dyn Fn(Found<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut t = self.btrees.lock();
        let found = t.get(btree, key.pos)?;
        let (topology_errors, first) = t.topology_errors_of(btree);
        check(Found { key: found.as_ref(), topology_errors, first_topology_error: first.as_deref() })?;
        // Journal reclaim's flush may use the last buckets (the reclaim watermark, as bcachefs
        // flushes the key cache) and never waits for more.
        let saved = self.nodes.as_ref().map(|n| {
            let old = n.watermark();
            n.set_watermark(allocator::Watermark::Reclaim);
            old
        });
        let inserted = t.insert(btree, key.clone(), seq);
        if let (Some(n), Some(old)) = (&self.nodes, saved) {
            n.set_watermark(old);
        }
        inserted.map_err(|e| write_back::reclaim_blocked(e).unwrap_or_else(|e| self.check_fatal(e)))?;
        self.ensure_wb_pin(seq)
    }
}
