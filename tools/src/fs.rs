//! An opened filesystem: its device set, options, allocator, btrees and journal, with commits
//! (journal first, then the btrees), write-back (reclaim), and clean unmount.
//!
//! A commit reserves journal space for its keys, pins the seq, then applies the keys; the pin
//! is released when write-back has made the btree changes durable, which is what lets the
//! journal reuse its buckets. Write-back flushes the journal first, so no btree node ever
//! carries an update from a journal entry that is not durable; it then journals the alloc keys
//! its node writes produce and, at the end, the new btree roots, which is where recovery finds
//! them.
//!
//! Allocator decisions come back as alloc-key updates; committing them is this layer's job,
//! and committing them can allocate btree nodes, which produces more updates: the loop that
//! applies them is bounded and converges because each round touches fewer buckets.
//!
//! Opening read-write marks the filesystem unclean in the superblock until a clean unmount
//! records the roots again, so a crash is always seen as one.

use std::sync::Arc;
use std::time::Instant;

use allocator::{Allocator, BtreeNodeAlloc, DeviceInit};
use fs_core::bkey::{AllocV4, Bkey, BtreePtrV2, DataType, ExtentPtr, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::node::BTREE_NODE_SALT;
use fs_core::btree::{BtreeConfig, Btrees, KeyOverlay, NodeAllocator, NodeInfo, NodeIo, NodeLocation, Root};
use fs_core::dev::SharedDevice;
use fs_core::error::{ErrCode, Error, Result};
use fs_core::opts::Options;
use fs_core::sb::{CleanRoot, CleanSection, DeviceSet, fs_magic};
use journal::format::JSET_SALT;
use journal::{Journal, JournalConfig, JournalWatermark, JsetEntry, Ring};

/// Rounds of "commit alloc updates, write back" before giving up: each round's updates touch
/// only the buckets the previous round's node writes used, so a few rounds always suffice.
const MAX_SETTLE_ROUNDS: usize = 32;

/// Stands in for the allocator on a filesystem opened read-only: any write is refused.
pub(crate) struct ReadOnlyNodes;

impl NodeAllocator for ReadOnlyNodes {
    fn alloc_nodes(&self, _nr: usize, btree: BtreeId, _level: u8) -> Result<Vec<NodeLocation>> {
        Err(Error::new(ErrCode::Erofs, "filesystem opened read-only").btree(btree))
    }
    fn release_unused(&self, _nodes: Vec<NodeLocation>) {}
    fn free_node(&self, _ptrs: &[ExtentPtr]) {}
}

pub struct Fs {
    pub set: DeviceSet,
    pub opts: Options,
    pub btrees: Btrees,
    /// `None` when opened read-only.
    pub alloc: Option<Arc<Allocator>>,
    nodes: Option<Arc<BtreeNodeAlloc>>,
    /// `None` when opened read-only.
    pub journal: Option<Journal>,
    journal_seq: u64,
    /// Alloc-key updates taken from the allocator but not yet committed.
    pending_alloc: Vec<(BtreeId, Bkey)>,
    /// Inside [`Fs::wait_for_buckets`].
    waiting_for_buckets: bool,
}

/// Waits on the allocator one commit makes at most before it gives up with the error.
const MAX_ALLOCATOR_WAITS: u32 = 4;

/// Entries of one journal entry at most; a transaction's keys are split into entries this big.
const MAX_JOURNAL_ENTRY_BYTES: usize = 256 << 10;

/// What the allocator needs to know of each member: its layout and journal buckets.
pub fn device_inits(set: &DeviceSet) -> Vec<DeviceInit> {
    set.sb
        .members
        .iter()
        .enumerate()
        .filter(|(_, m)| !m.is_unused())
        .filter_map(|(i, m)| {
            Some(DeviceInit {
                dev_idx: u8::try_from(i).ok()?,
                member: m.clone(),
                journal: set.device(i).map(|d| d.sb.journal.clone()).unwrap_or_default(),
            })
        })
        .collect()
}

/// Journal rings of the present devices, continuing after each ring's newest bucket.
pub fn journal_rings(set: &DeviceSet) -> Result<Vec<Ring>> {
    let magic = fs_magic(&set.sb.uuid, JSET_SALT);
    let mut rings = Vec::new();
    for (i, m) in set.devices.iter().enumerate() {
        let Some(m) = m else { continue };
        let buckets: Vec<u64> = m.sb.journal.buckets().collect();
        let Some(member) = set.sb.members.get(i) else { continue };
        if buckets.is_empty() || member.durability == 0 {
            continue;
        }
        rings.push(Ring::resume(i as u8, m.dev.clone(), u64::from(member.bucket_size), buckets, magic)?);
    }
    Ok(rings)
}

pub fn journal_config(set: &DeviceSet, opts: &Options, nr_rings: usize) -> JournalConfig {
    let smallest_bucket =
        set.sb.members.iter().filter(|m| !m.is_unused()).map(|m| m.bucket_size).min().unwrap_or(0);
    JournalConfig {
        magic: fs_magic(&set.sb.uuid, JSET_SALT),
        block_size: opts.block_size(),
        replicas: (opts.metadata_replicas() as usize).min(nr_rings.max(1)),
        max_entry_bytes: MAX_JOURNAL_ENTRY_BYTES.min(smallest_bucket as usize / 4),
        flush_delay: opts.journal_flush_delay(),
        target_devs: set
            .sb
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.is_unused() && m.in_target(opts.metadata_target()))
            .filter_map(|(i, _)| u8::try_from(i).ok())
            .collect(),
    }
}

/// The persisted roots of a cleanly unmounted filesystem.
fn clean_roots(set: &DeviceSet) -> Result<Vec<Root>> {
    let Some(clean) = &set.sb.clean else {
        return Err(Error::new(
            ErrCode::InvalidSbClean,
            "filesystem was not unmounted cleanly: its btrees need journal replay",
        ));
    };
    clean
        .roots
        .iter()
        .map(|r| Ok(Root { btree: r.btree, level: r.level, ptr: BtreePtrV2::decode(&r.key)? }))
        .collect()
}

fn devices(set: &DeviceSet) -> Vec<Option<SharedDevice>> {
    set.devices.iter().map(|d| d.as_ref().map(|m| m.dev.clone())).collect()
}

impl Fs {
    /// Opens a cleanly unmounted filesystem. Read-write opens read the alloc btree to rebuild
    /// the allocator (or start it from the layout on a new filesystem).
    pub fn open(set: DeviceSet, writable: bool, cfg: BtreeConfig) -> Result<Fs> {
        let opts = set.sb.opts.clone();
        Fs::open_with(set, opts, writable, cfg)
    }

    /// [`Fs::open`] running with `opts` (the stored options with mount options applied); the
    /// superblock keeps its stored options: mount options never change what is on disk.
    pub fn open_with(set: DeviceSet, opts: Options, writable: bool, cfg: BtreeConfig) -> Result<Fs> {
        let roots = clean_roots(&set)?;
        let journal_seq = set.sb.clean.as_ref().map_or(0, |c| c.journal_seq);
        let io = NodeIo::new(devices(&set), fs_magic(&set.sb.uuid, BTREE_NODE_SALT), opts.btree_node_size());
        let cfg = BtreeConfig { behavior: opts.behavior(), ..cfg };
        if !writable {
            let btrees = Btrees::new(io, Arc::new(ReadOnlyNodes), roots, cfg);
            return Ok(Fs {
                set,
                opts,
                btrees,
                alloc: None,
                nodes: None,
                journal: None,
                journal_seq,
                pending_alloc: Vec::new(),
                waiting_for_buckets: false,
            });
        }
        set.require_all(false)?;
        let inits = device_inits(&set);
        // Read the alloc btree first (read-only), then build the allocator from it.
        let mut reader = Btrees::new(
            NodeIo::new(devices(&set), io.magic(), opts.btree_node_size()),
            Arc::new(ReadOnlyNodes),
            roots.clone(),
            cfg,
        );
        let alloc_keys = read_alloc_keys(&mut reader, None)?;
        let new_fs = alloc_keys.is_empty();
        let alloc = Arc::new(if new_fs {
            Allocator::new(inits, opts.btree_node_size())?
        } else {
            Allocator::from_alloc_keys(inits, opts.btree_node_size(), alloc_keys)?
        });
        let nodes = Arc::new(BtreeNodeAlloc::from_options(alloc.clone(), &opts)?);
        let btrees = Btrees::new(io, nodes.clone(), roots, cfg);
        let rings = journal_rings(&set)?;
        let jcfg = journal_config(&set, &opts, rings.len());
        let journal = Journal::new(rings, jcfg, journal_seq + 1)?;
        let mut fs = Fs::from_parts(set, opts, btrees, alloc, nodes, journal, journal_seq);
        if new_fs {
            fs.init_alloc_info()?;
        }
        fs.go_rw()?;
        Ok(fs)
    }

    /// A new filesystem's first alloc, freespace and need_discard records (one key per bucket
    /// each) go straight into the btrees and are written back with the superblock still clean,
    /// as bcachefs's `fs_freespace_init` does: through the journal they would need a journal as
    /// big as the record.
    fn init_alloc_info(&mut self) -> Result<()> {
        let Some(alloc) = self.alloc.clone() else { return Ok(()) };
        for _ in 0..MAX_SETTLE_ROUNDS {
            let updates = alloc.take_updates();
            if updates.is_empty() && self.btrees.dirty_nodes() == 0 {
                return self.write_clean_section(self.journal_seq);
            }
            for (btree, k) in updates {
                self.btrees.insert(btree, k, 0)?;
            }
            self.btrees.write_dirty()?;
        }
        Err(not_settling())
    }

    /// A filesystem assembled by recovery from the parts its passes built.
    pub(crate) fn from_parts(
        set: DeviceSet,
        opts: Options,
        btrees: Btrees,
        alloc: Arc<Allocator>,
        nodes: Arc<BtreeNodeAlloc>,
        journal: Journal,
        journal_seq: u64,
    ) -> Fs {
        let mut fs = Fs {
            set,
            opts,
            btrees,
            alloc: Some(alloc),
            nodes: Some(nodes),
            journal: Some(journal),
            journal_seq,
            pending_alloc: Vec::new(),
            waiting_for_buckets: false,
        };
        let roots = root_entries(&mut fs.btrees);
        if let Some(j) = fs.journal.as_mut() {
            j.set_roots(roots);
        }
        fs
    }

    /// Writable from here on: the current roots go into the journal (a crash before the next
    /// write-back finds them there), then the superblock stops saying clean.
    pub fn go_rw(&mut self) -> Result<()> {
        self.journal_roots()?;
        self.journal_mut()?.flush()?;
        self.set.sb.clean = None;
        self.set.write_super()
    }

    fn journal_mut(&mut self) -> Result<&mut Journal> {
        self.journal.as_mut().ok_or_else(|| Error::new(ErrCode::Erofs, "filesystem opened read-only"))
    }

    /// Journal reclaim: write back every dirty node, which releases every pin.
    pub fn reclaim(&mut self) -> Result<()> {
        self.write_back_with(JournalWatermark::Reclaim)
    }

    fn journal_roots(&mut self) -> Result<()> {
        let roots = root_entries(&mut self.btrees);
        self.journal_mut()?.set_roots(roots);
        Ok(())
    }

    /// Commits `keys` to `btree` as one transaction, then the allocator's updates the same
    /// way. Returns the journal seq. A transaction is one journal reservation: all of it
    /// replays or none; one larger than a journal entry is refused (see `commit_batched`).
    pub fn commit(&mut self, btree: BtreeId, keys: impl IntoIterator<Item = Bkey>) -> Result<u64> {
        self.commit_updates(keys.into_iter().map(|k| (btree, k)).collect())
    }

    /// Commits updates to any btrees as one transaction (see `commit`).
    ///
    /// A transaction blocked on the allocator (`operation_blocked`: no bucket for a btree node
    /// now) waits for it, which here means doing in line what the waiter would wait for
    /// ([`Fs::wait_for_buckets`]), and tries again; if that frees nothing, waiting would be
    /// forever and the error is returned.
    pub fn commit_updates(&mut self, updates: Vec<(BtreeId, Bkey)>) -> Result<u64> {
        self.commit_with_sectors(updates, &[])
    }

    /// [`Fs::commit_updates`], then the data sectors the transaction added or dropped are
    /// accounted to their buckets: `sectors` lists extent pointers with the sectors each gains
    /// (negative: loses).
    ///
    /// Accounting follows the commit so that a failed transaction leaves no count behind, and
    /// a bucket the transaction empties is stamped with the transaction's own seq: it is
    /// discarded only once that seq is durable, when no key pointing into it can come back.
    /// The alloc keys it changes go to the journal right after, normally in the same entry;
    /// after a crash between the two, recovery's allocation check recounts the bucket.
    pub fn commit_with_sectors(
        &mut self,
        mut updates: Vec<(BtreeId, Bkey)>,
        sectors: &[(&[ExtentPtr], i64)],
    ) -> Result<u64> {
        let mut waits = 0;
        let seq = loop {
            match self.transaction(&mut updates, JournalWatermark::Normal) {
                Ok(seq) => break seq,
                Err(e) if e.matches(ErrCode::OperationBlocked) && !e.matches(ErrCode::JournalResBlocked) => {
                    // Each wait writes back and discards what it can; one that frees buckets
                    // the transaction still cannot use (a watermark's reserve) is not retried
                    // without end.
                    waits += 1;
                    if waits > MAX_ALLOCATOR_WAITS || self.wait_for_buckets()? == 0 {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        };
        if let Some(alloc) = self.alloc.clone() {
            for &(ptrs, delta) in sectors {
                for p in ptrs {
                    let bucket_size =
                        self.set.sb.members.get(usize::from(p.dev)).map_or(1, |m| u64::from(m.bucket_size));
                    alloc.add_sectors(p.dev, p.byte_offset() / bucket_size, DataType::User, delta, seq)?;
                }
            }
        }
        self.apply_alloc_updates_with(JournalWatermark::Normal)?;
        Ok(seq)
    }

    /// What a thread blocked on the allocator waits for, done in line (the model runs one
    /// thread): everything written back and the journal flushed, so that nothing on disk or in
    /// the journal still points into the buckets emptied so far (nor into the btree nodes freed
    /// by splits and rewrites), then every such bucket discarded. Returns how many buckets
    /// became free; 0 inside a wait (the write-back's own commits must not wait again).
    pub fn wait_for_buckets(&mut self) -> Result<usize> {
        let Some(alloc) = self.alloc.clone() else { return Ok(0) };
        if self.waiting_for_buckets {
            return Ok(0);
        }
        self.waiting_for_buckets = true;
        let written = self.write_back().and_then(|()| self.journal_mut()?.flush());
        self.waiting_for_buckets = false;
        let freed = alloc.discard_durable(written?)?;
        if freed > 0 {
            self.apply_alloc_updates()?;
        }
        Ok(freed)
    }

    /// Commits `keys` as as many transactions as their size needs: for bulk loads, where
    /// atomicity across the whole set is not wanted. Returns the last seq.
    pub fn commit_batched(&mut self, btree: BtreeId, keys: impl IntoIterator<Item = Bkey>) -> Result<u64> {
        self.commit_batched_updates(keys.into_iter().map(|k| (btree, k)).collect())
    }

    /// Commits `fixes` to alloc keys (and anything else) made by a checker that knows better
    /// than the allocator, then rebuilds the allocator from the repaired alloc btree. The
    /// allocator's uncommitted updates are its stale picture of the very buckets being
    /// repaired, so they are dropped, not committed over the repairs.
    pub fn commit_repairs(&mut self, fixes: Vec<(BtreeId, Bkey)>) -> Result<()> {
        if let Some(a) = &self.alloc {
            drop(a.take_updates());
        }
        self.pending_alloc.clear();
        self.commit_batched_updates(fixes)?;
        self.rebuild_allocator()
    }

    /// Rebuilds the allocator from the alloc btree.
    fn rebuild_allocator(&mut self) -> Result<()> {
        self.apply_alloc_updates()?;
        let keys = read_alloc_keys(&mut self.btrees, None)?;
        let alloc =
            Arc::new(Allocator::from_alloc_keys(device_inits(&self.set), self.opts.btree_node_size(), keys)?);
        let nodes = Arc::new(BtreeNodeAlloc::from_options(alloc.clone(), &self.opts)?);
        self.btrees.set_node_allocator(nodes.clone());
        self.alloc = Some(alloc);
        self.nodes = Some(nodes);
        self.apply_alloc_updates()
    }

    /// Commits updates to any btrees in as many transactions as their size needs.
    pub fn commit_batched_updates(&mut self, updates: Vec<(BtreeId, Bkey)>) -> Result<u64> {
        let mut seq = 0;
        for batch in self.batches(updates) {
            seq = self.commit_updates(batch)?;
        }
        Ok(seq)
    }

    /// `updates` cut into transactions that each fit one journal reservation, in order.
    pub fn batches(&self, updates: Vec<(BtreeId, Bkey)>) -> Vec<Vec<(BtreeId, Bkey)>> {
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

    /// Whether `updates` fit one transaction (the bound [`Fs::batches`] cuts at).
    pub fn fits_one_transaction(&self, updates: &[(BtreeId, Bkey)]) -> bool {
        updates.iter().map(update_bytes).sum::<usize>() <= self.transaction_capacity()
    }

    fn transaction_capacity(&self) -> usize {
        self.journal.as_ref().map_or(usize::MAX, Journal::reservation_capacity)
    }

    /// The journal entries of a transaction: one `btree_keys` entry per btree, in order.
    fn entries(updates: &[(BtreeId, Bkey)]) -> Vec<JsetEntry> {
        let mut by_btree: std::collections::BTreeMap<BtreeId, Vec<Bkey>> = std::collections::BTreeMap::new();
        for (btree, k) in updates {
            by_btree.entry(*btree).or_default().push(k.clone());
        }
        by_btree
            .into_iter()
            .map(|(btree, keys)| JsetEntry::BtreeKeys { btree, level: 0, keys: keys.into() })
            .collect()
    }

    /// One transaction: the updates, and the allocator updates pending so far (riding along
    /// while they fit), go into the btrees (undone if one fails), then into one journal
    /// reservation, pinned until written back. A full journal undoes the updates, runs reclaim
    /// and tries again.
    ///
    /// The updates are taken from `updates`; a transaction that fails puts them back, so that
    /// the caller can retry without having kept a copy.
    fn transaction(&mut self, updates: &mut Vec<(BtreeId, Bkey)>, wm: JournalWatermark) -> Result<u64> {
        let mut all = std::mem::take(updates);
        let nr_user = all.len();
        let r = self.transaction_of(&mut all, wm);
        if r.is_err() {
            all.truncate(nr_user);
            *updates = all;
        }
        r
    }

    /// [`Fs::transaction`] of `all`, the caller's updates, to which the allocator's are added.
    fn transaction_of(&mut self, all: &mut Vec<(BtreeId, Bkey)>, wm: JournalWatermark) -> Result<u64> {
        let mut alloc_updates = std::mem::take(&mut self.pending_alloc);
        if let Some(a) = &self.alloc {
            alloc_updates.extend(a.take_updates());
        }
        let capacity = self.journal_mut()?.reservation_capacity();
        let user_bytes: usize = Self::entries(all).iter().map(JsetEntry::encoded_bytes).sum();
        if user_bytes > capacity {
            self.pending_alloc = alloc_updates;
            return Err(Error::new(
                ErrCode::TransactionTooBig,
                format!(
                    "transaction of {user_bytes} bytes does not fit one journal entry ({capacity} bytes)"
                ),
            ));
        }
        // Alloc updates ride along while they fit; the rest follow in their own transactions.
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
        self.pending_alloc = rest;
        let entries = Self::entries(all);
        let bytes: usize = entries.iter().map(JsetEntry::encoded_bytes).sum();
        for _ in 0..3 {
            let seq = self.journal_mut()?.next_reservation_seq(bytes);
            let undo = match self.apply(all, seq) {
                Ok(u) => u,
                Err(e) => {
                    self.keep_alloc_updates(all);
                    return Err(e);
                }
            };
            let added = self.journal_mut()?.add(entries.clone(), wm, Instant::now());
            match added {
                Ok(seq) => {
                    self.journal_mut()?.pin(seq);
                    self.journal_seq = self.journal_seq.max(seq);
                    if let Some(n) = &self.nodes {
                        n.set_journal_seq(seq);
                    }
                    return Ok(seq);
                }
                Err(e) => {
                    self.undo(undo, seq);
                    if e.code() != ErrCode::JournalFull || wm != JournalWatermark::Normal {
                        self.keep_alloc_updates(all);
                        return Err(e);
                    }
                    self.reclaim()?;
                }
            }
        }
        self.keep_alloc_updates(all);
        Err(Error::new(ErrCode::JournalStuck, "journal still full after reclaim"))
    }

    /// A transaction that failed gives its alloc updates back: the allocator's state already
    /// includes them, so they must still reach the btree.
    fn keep_alloc_updates(&mut self, all: &[(BtreeId, Bkey)]) {
        let alloc_btrees = [BtreeId::Alloc, BtreeId::Freespace, BtreeId::NeedDiscard];
        let kept = all.iter().filter(|(b, _)| alloc_btrees.contains(b)).cloned();
        let mut v: Vec<_> = kept.collect();
        v.append(&mut self.pending_alloc);
        self.pending_alloc = v;
    }

    /// Applies updates to the btrees; on failure undoes the ones applied and returns the
    /// error. On success returns what is needed to undo them.
    fn apply(&mut self, updates: &[(BtreeId, Bkey)], seq: u64) -> Result<Vec<(BtreeId, Bpos, Option<Bkey>)>> {
        let mut undo = Vec::with_capacity(updates.len());
        for (btree, k) in updates {
            let old = self.btrees.get(*btree, k.pos)?;
            if let Err(e) = self.btrees.insert(*btree, k.clone(), seq) {
                self.undo(undo, seq);
                return Err(e);
            }
            undo.push((*btree, k.pos, old));
        }
        Ok(undo)
    }

    /// Puts back what `apply` replaced, newest first. Putting back a value that was there
    /// before needs no new node in practice; a failure here is not allowed to hide the error
    /// that caused the undo.
    fn undo(&mut self, undo: Vec<(BtreeId, Bpos, Option<Bkey>)>, seq: u64) {
        for (btree, pos, old) in undo.into_iter().rev() {
            let _ = self.btrees.insert(btree, old.unwrap_or_else(|| Bkey::whiteout(pos)), seq);
        }
    }

    /// Commits what the allocator decided (alloc, freespace and need_discard keys) through
    /// the journal.
    pub fn apply_alloc_updates(&mut self) -> Result<()> {
        self.apply_alloc_updates_with(JournalWatermark::Normal)
    }

    fn apply_alloc_updates_with(&mut self, wm: JournalWatermark) -> Result<()> {
        let Some(alloc) = self.alloc.clone() else { return Ok(()) };
        for _ in 0..MAX_SETTLE_ROUNDS {
            let mut updates = std::mem::take(&mut self.pending_alloc);
            updates.extend(alloc.take_updates());
            if updates.is_empty() {
                return Ok(());
            }
            for mut batch in self.batches(updates) {
                self.transaction(&mut batch, wm)?;
            }
        }
        Err(not_settling())
    }

    /// Writes every dirty node and the alloc keys its writes produced, until nothing is dirty;
    /// then journals the new roots and releases the pins the written updates held.
    pub fn write_back(&mut self) -> Result<()> {
        self.write_back_with(JournalWatermark::Normal)
    }

    fn write_back_with(&mut self, wm: JournalWatermark) -> Result<()> {
        let covered = self.journal.as_ref().map_or(0, Journal::seq);
        if let Some(j) = self.journal.as_mut() {
            j.flush_with(wm)?;
        }
        for _ in 0..MAX_SETTLE_ROUNDS {
            self.apply_alloc_updates_with(wm)?;
            if let Some(j) = self.journal.as_mut() {
                j.flush_with(wm)?;
            }
            self.btrees.write_dirty()?;
            let pending =
                self.alloc.as_ref().map_or(0, |a| a.pending_updates()) + self.pending_alloc.len() as u64;
            if pending == 0 && self.btrees.dirty_nodes() == 0 {
                if self.journal.is_some() {
                    // Every entry from the open one on carries the new roots, so everything
                    // journalled before it is covered by the written btree.
                    self.journal_roots()?;
                    let open = self.journal_mut()?.seq();
                    self.journal_mut()?.unpin_through(covered.max(open.saturating_sub(1)));
                }
                return Ok(());
            }
        }
        Err(not_settling())
    }

    /// Makes every commit so far durable (fsync); returns the durable seq. Data goes first:
    /// an extent must never become durable before the data it points at.
    pub fn fsync(&mut self) -> Result<u64> {
        for m in self.set.present() {
            m.dev.flush()?;
        }
        self.journal_mut()?.flush()
    }

    /// Writes everything back and records the btree roots in a clean section.
    pub fn unmount(mut self) -> Result<()> {
        if self.alloc.is_none() {
            return Ok(());
        }
        self.write_back()?;
        let seq = self.journal_mut()?.flush()?;
        self.write_clean_section(seq)
    }

    /// Records the current (written) roots and `journal_seq` as a clean section and writes the
    /// superblocks: the filesystem is clean from here until it is opened read-write again.
    fn write_clean_section(&mut self, journal_seq: u64) -> Result<()> {
        let roots = self
            .btrees
            .roots()
            .into_iter()
            .map(|r| CleanRoot { btree: r.btree, level: r.level, key: r.ptr.encode() })
            .collect();
        self.set.sb.clean = Some(CleanSection { journal_seq, roots });
        self.set.write_super()
    }

    /// Keys of `btree` from `start` to `end` inclusive.
    pub fn list(&mut self, btree: BtreeId, start: Bpos, end: Bpos) -> Result<Vec<Bkey>> {
        let mut it = self.btrees.iter(btree, start);
        let mut out = Vec::new();
        while let Some(k) = it.next(&mut self.btrees, None)? {
            if k.pos > end {
                break;
            }
            out.push(k);
        }
        Ok(out)
    }

    pub fn nodes(&mut self, btree: BtreeId) -> Result<Vec<NodeInfo>> {
        self.btrees.node_infos(btree)
    }
}

/// Journal bytes an update may take: its key, and an entry header of its own at worst (one
/// per btree in the transaction).
fn update_bytes(u: &(BtreeId, Bkey)) -> usize {
    u.1.encoded_bytes() + journal::format::ENTRY_HEADER_BYTES
}

fn not_settling() -> Error {
    Error::new(
        ErrCode::BucketAccounting,
        format!("alloc updates did not settle in {MAX_SETTLE_ROUNDS} rounds"),
    )
}

/// The `btree_root` journal entries for the btrees' current roots.
fn root_entries(btrees: &mut Btrees) -> Vec<JsetEntry> {
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
