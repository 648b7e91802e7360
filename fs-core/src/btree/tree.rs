//! All btrees of a filesystem: roots, the node cache, descent, inserts with splits, write-back.
//!
//! The structure is single-threaded (`&mut self`); the filesystem serialises access to it. A
//! node is identified by its seq; the cache maps seq to node. Clean nodes are evicted beyond the
//! cache bound; dirty nodes stay until written.
//!
//! An update that needs new nodes (a split, a new root, a rewrite) reserves all of them from the
//! [`NodeAllocator`] before it changes anything, so `operation_blocked` leaves the tree as it was.

use std::collections::HashMap;

use crate::bkey::{Bkey, BtreePtrV2, ExtentPtr, KeyRef};
use crate::bpos::{Bpos, BtreeId};
use crate::btree::io::NodeIo;
use crate::btree::node::{Child, Expected, KeyVal, MAX_LEVEL, Node, NodeHeader, NodeKey, NodeKeys};
use crate::btree::node_alloc::{NodeAllocator, NodeLocation};
use crate::btree::pos_map::LeafMap;
use crate::error::{ErrCode, Error, Result};
use crate::health::FsHealth;
use crate::opts::Behavior;
use crate::rng::Rng;
use crate::sync::Arc;

const NR_BTREE_SLOTS: usize = 32;
/// What a bset takes beyond its keys' bytes, at most: its header and the padding to a sector.
const BSET_SLACK_BYTES: u64 = 1024;

/// Node seqs are random 64-bit numbers, so they are their own hash: hashing them again (SipHash,
/// the std default) costs a large share of every descent for nothing.
#[derive(Default)]
struct SeqHasher(u64);

impl std::hash::Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type NodeMap = HashMap<u64, Node, std::hash::BuildHasherDefault<SeqHasher>>;

/// Leaves a walk reads ahead of the one it goes down to: bcachefs's `btree_path_prefetch`
/// from a level-1 node before the filesystem has started.
const PREFETCH_SIBLINGS: usize = 16;

/// The words the log line of a node read past a bad replica carries, which marks the node
/// for a rewrite from the good one.
pub const READ_AROUND: &str = "read from another replica";

/// A btree root as persisted (journal `btree_root` entries, the superblock clean section).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    pub btree: BtreeId,
    pub level: u8,
    pub ptr: BtreePtrV2,
}

/// What a node looks like, for `bcsim list --nodes` and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub btree: BtreeId,
    pub level: u8,
    pub min_key: Bpos,
    pub max_key: Bpos,
    pub seq: u64,
    pub ptrs: Vec<ExtentPtr>,
    pub sectors_written: u32,
    pub nr_keys: usize,
    pub dirty: bool,
}

/// A node fsck dropped because no replica of it could be read ([`Btrees::drop_unreadable`]).
#[derive(Debug)]
pub struct LostNode {
    pub btree: BtreeId,
    pub level: u8,
    pub min_key: Bpos,
    pub max_key: Bpos,
    pub ptrs: Vec<ExtentPtr>,
    /// Why the read failed (the first replica's error).
    pub error: Error,
}

/// Settings of the btree layer.
#[derive(Clone, Copy, Debug)]
pub struct BtreeConfig {
    pub behavior: Behavior,
    /// Clean nodes kept in memory at most (dirty ones are never evicted).
    pub cache_nodes: usize,
    /// Seed for node seqs (unique identities of node incarnations). `None` draws one from the
    /// system: seqs must not repeat across mounts, or a new node could take an old one's seq.
    pub seq_seed: Option<u64>,
}

impl Default for BtreeConfig {
    fn default() -> Self {
        BtreeConfig { behavior: Behavior::Fixed, cache_nodes: 4096, seq_seed: None }
    }
}

pub struct Btrees {
    io: NodeIo,
    alloc: Arc<dyn NodeAllocator>,
    cfg: BtreeConfig,
    /// Root node seq per btree, once the root is in the cache.
    root_seq: [Option<u64>; NR_BTREE_SLOTS],
    /// Persisted roots not yet read.
    root_ptr: [Option<Root>; NR_BTREE_SLOTS],
    nodes: NodeMap,
    clock: u64,
    seqs: Rng,
    /// Keys of a node may take this many bytes before it splits: a third of the space after
    /// the header stays for appended bsets.
    split_bytes: usize,
    /// Header checks on cached nodes are off until `check_allocations` has run, as in bcachefs.
    check_headers: bool,
    /// Where filesystem errors found here (topology errors) are reported.
    health: Option<Arc<FsHealth>>,
    topology_errors: u64,
    /// Nodes read without a replica that lies on an absent member (they are rewritten).
    absent_replica_reads: u64,
    /// Topology errors per btree, and the first one's log line.
    topology_by_btree: std::collections::BTreeMap<BtreeId, (u64, String)>,
    /// Prefetch reads that failed, by the seq they were read under, with the error: a lookup
    /// of that seq gets `btree_node_read_err_cached` until check_topology drops them.
    prefetch_failed: HashMap<u64, String>,
    /// Btrees a failed prefetch read lost data of (`bch2_btree_lost_data`), for recovery to
    /// rebuild; taken by [`Btrees::take_lost_data`].
    lost_data: std::collections::BTreeSet<BtreeId>,
    blacklisted: Box<dyn Fn(u64) -> bool + Send + Sync>,
    log: Vec<String>,
    /// No eviction scan until the cache holds more nodes than this: set when a scan found too
    /// few clean nodes to get under the bound (dirty nodes are never evicted), so that a cache
    /// full of dirty nodes is not scanned again on every update; cleared by write-back.
    evict_scan_above: usize,
    /// Where the last descent ended, for the next lookup in key order (journal replay, bulk
    /// loads), which would make the same choices at every level and the same header checks.
    last_leaf: Option<LastLeaf>,
}

/// A leaf and every position a descent from the root would reach it for: at each level the
/// positions above the previous child's max_key and up to this child's max_key. Valid until
/// the tree's shape or a header changes: everything that changes them clears it.
#[derive(Clone, Copy, Debug)]
struct LastLeaf {
    btree: BtreeId,
    seq: u64,
    min: Bpos,
    max: Bpos,
}

fn slot(btree: BtreeId) -> usize {
    btree as usize % NR_BTREE_SLOTS
}

fn missing_node(seq: u64) -> Error {
    Error::new(ErrCode::BtreeNeedTopologyRepair, format!("btree node {seq:#x} vanished from the cache"))
}

impl Btrees {
    /// Opens the btrees with the persisted `roots` (none for a new filesystem).
    pub fn new(io: NodeIo, alloc: Arc<dyn NodeAllocator>, roots: Vec<Root>, cfg: BtreeConfig) -> Self {
        let usable = io.node_size().saturating_sub(crate::bkey::ptr::SECTOR_BYTES) as usize;
        let mut root_ptr: [Option<Root>; NR_BTREE_SLOTS] = std::array::from_fn(|_| None);
        for r in roots {
            if let Some(s) = root_ptr.get_mut(slot(r.btree)) {
                *s = Some(r);
            }
        }
        Btrees {
            io,
            alloc,
            cfg,
            root_seq: [None; NR_BTREE_SLOTS],
            root_ptr,
            nodes: NodeMap::default(),
            clock: 0,
            seqs: Rng::new(cfg.seq_seed.unwrap_or_else(|| crate::uuid::Uuid::random().low_u64())),
            split_bytes: usable * 2 / 3,
            check_headers: true,
            health: None,
            topology_errors: 0,
            absent_replica_reads: 0,
            topology_by_btree: std::collections::BTreeMap::new(),
            prefetch_failed: HashMap::new(),
            lost_data: std::collections::BTreeSet::new(),
            blacklisted: Box::new(|_| false),
            log: Vec::new(),
            evict_scan_above: 0,
            last_leaf: None,
        }
    }

    /// Replaces the node allocator (after the allocator was rebuilt, e.g. by fsck repairs).
    pub fn set_node_allocator(&mut self, alloc: Arc<dyn NodeAllocator>) {
        self.alloc = alloc;
    }

    /// Reports the errors found from now on (topology errors) to `health`.
    pub fn set_health(&mut self, health: Arc<FsHealth>) {
        self.health = Some(health);
    }

    pub fn set_check_headers(&mut self, on: bool) {
        self.last_leaf = None;
        self.check_headers = on;
    }

    /// Bsets carrying a journal seq for which `f` is true are ignored when nodes are read.
    pub fn set_blacklist(&mut self, f: impl Fn(u64) -> bool + Send + Sync + 'static) {
        self.last_leaf = None;
        self.blacklisted = Box::new(f);
    }

    pub fn topology_errors(&self) -> u64 {
        self.topology_errors
    }

    /// Log lines (bad replicas, topology errors) since the last call.
    /// The topology errors `btree` has had, and the first one's log line.
    pub fn topology_errors_of(&self, btree: BtreeId) -> (u64, Option<String>) {
        self.topology_by_btree.get(&btree).map_or((0, None), |(n, first)| (*n, Some(first.clone())))
    }

    /// How many node reads skipped a replica on an absent member, since the last call.
    pub fn take_absent_replica_reads(&mut self) -> u64 {
        std::mem::take(&mut self.absent_replica_reads)
    }

    pub fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }

    pub fn cached_nodes(&self) -> usize {
        self.nodes.len()
    }

    pub fn dirty_nodes(&self) -> usize {
        self.nodes.values().filter(|n| n.dirty).count()
    }

    fn new_seq(&mut self) -> u64 {
        loop {
            let s = self.seqs.next_u64();
            if s != 0 && !self.nodes.contains_key(&s) {
                return s;
            }
        }
    }

    fn node(&self, seq: u64) -> Result<&Node> {
        self.nodes.get(&seq).ok_or_else(|| missing_node(seq))
    }

    fn node_mut(&mut self, seq: u64) -> Result<&mut Node> {
        self.nodes.get_mut(&seq).ok_or_else(|| missing_node(seq))
    }

    fn touch(&mut self, seq: u64) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(n) = self.nodes.get_mut(&seq) {
            n.last_used = clock;
        }
    }

    /// The root node's seq, reading the root if needed; `None` for an empty btree.
    fn root(&mut self, btree: BtreeId) -> Result<Option<u64>> {
        let s = slot(btree);
        if let Some(seq) = self.root_seq.get(s).copied().flatten() {
            if self.nodes.contains_key(&seq) {
                return Ok(Some(seq));
            }
        }
        let Some(root) = self.root_ptr.get(s).cloned().flatten() else { return Ok(None) };
        let exp = Expected {
            btree,
            level: root.level,
            min_key: root.ptr.min_key,
            max_key: Bpos::MAX,
            seq: root.ptr.seq,
            sectors_written: root.ptr.sectors_written,
        };
        let node = self.read(&root.ptr.ptrs, &exp)?;
        let seq = node.hdr.seq;
        self.nodes.insert(seq, node);
        if let Some(r) = self.root_seq.get_mut(s) {
            *r = Some(seq);
        }
        Ok(Some(seq))
    }

    fn read(&mut self, ptrs: &[ExtentPtr], exp: &Expected) -> Result<Node> {
        let (mut node, bad) = self.io.read_node(ptrs, exp, &*self.blacklisted)?;
        if node.needs_rewrite {
            node.dirty = true;
        }
        for b in bad {
            // A replica on a member that was not given (a degraded mount) is not damage.
            if b.error.matches(ErrCode::InsufficientDevices) {
                self.absent_replica_reads += 1;
                continue;
            }
            self.log.push(format!("btree node read error on dev {}, {READ_AROUND}: {}", b.dev, b.error));
        }
        Ok(node)
    }

    /// Before a walk goes down from level-1 node `parent` to the leaf covering `pos`, reads the
    /// leaves to its right that are not cached, each through its own pointer, as bcachefs's
    /// `btree_path_prefetch` does during recovery (16 of them from a level-1 node). A read
    /// that fails is kept under the pointer's seq, as bcachefs keeps the failed node in its
    /// cache: every pointer carrying that seq then gets `btree_node_read_err_cached`. The
    /// failure is logged and the btree flagged as having lost data, which recovery repairs
    /// (`bch2_btree_lost_data`). Errors of the devices themselves are not kept: the read that
    /// needs the node tries again.
    fn prefetch_siblings(&mut self, btree: BtreeId, parent: u64, pos: Bpos) -> Result<()> {
        let p = self.node(parent)?;
        let level = p.hdr.level.saturating_sub(1);
        let NodeKeys::Interior(children) = &p.keys else { return Ok(()) };
        // The children are keyed by max_key: the one covering `pos` is the first at or after
        // it, and the siblings are the ones after that.
        let covering_ends_at_pos = children.get(&pos).is_some();
        let wanted: Vec<(Expected, Vec<ExtentPtr>)> = children
            .range((std::ops::Bound::Excluded(pos), std::ops::Bound::Unbounded))
            .skip(usize::from(!covering_ends_at_pos))
            .take(PREFETCH_SIBLINGS)
            .filter(|(_, c)| {
                !self.nodes.contains_key(&c.ptr.seq) && !self.prefetch_failed.contains_key(&c.ptr.seq)
            })
            .map(|(&max_key, c)| {
                let exp = Expected {
                    btree,
                    level,
                    min_key: c.ptr.min_key,
                    max_key,
                    seq: c.ptr.seq,
                    sectors_written: c.ptr.sectors_written,
                };
                (exp, c.ptr.ptrs.clone())
            })
            .collect();
        for (exp, ptrs) in &wanted {
            // Checked again as each is read: an earlier sibling may carry the same seq.
            if self.nodes.contains_key(&exp.seq) || self.prefetch_failed.contains_key(&exp.seq) {
                continue;
            }
            match self.read(ptrs, exp) {
                Ok(mut node) => {
                    // Wanted next: not the first to go when the cache is over its bound.
                    node.last_used = self.clock;
                    self.nodes.insert(exp.seq, node);
                }
                Err(e) if e.matches(ErrCode::BtreeNodeReadErr) => {
                    self.log.push(format!(
                        "btree node read error at btree {btree} level {level} {}..{}: {e}",
                        exp.min_key, exp.max_key
                    ));
                    if self.lost_data.insert(btree) {
                        self.log.push(format!("flagging btree {btree} lost data"));
                    }
                    self.prefetch_failed.insert(exp.seq, e.to_string());
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Btrees a failed prefetch read flagged as having lost data since the last call.
    pub fn take_lost_data(&mut self) -> std::collections::BTreeSet<BtreeId> {
        std::mem::take(&mut self.lost_data)
    }

    /// The child of interior node `parent` covering `pos`, read into the cache if needed.
    fn child(&mut self, btree: BtreeId, parent: u64, pos: Bpos) -> Result<u64> {
        self.child_in(btree, parent, pos, None, true)
    }

    /// [`Btrees::child`]; with `range`, narrows it to the positions for which `parent` leads to
    /// the same child: above the previous child's max_key, up to this child's. Without `check`,
    /// a cached child's header is not checked (fsck's salvage compares it itself).
    fn child_in(
        &mut self,
        btree: BtreeId,
        parent: u64,
        pos: Bpos,
        range: Option<&mut (Bpos, Bpos)>,
        check: bool,
    ) -> Result<u64> {
        let p = self.node(parent)?;
        let level = p.hdr.level.saturating_sub(1);
        let NodeKeys::Interior(children) = &p.keys else {
            return Err(Error::new(ErrCode::BtreeNeedTopologyRepair, "descending below a leaf").btree(btree));
        };
        let (prev_max, next) = children.neighbours(&pos);
        let Some((&max_key, child)) = next else {
            return Err(Error::new(ErrCode::BtreeNeedTopologyRepair, "no child covers the position")
                .btree(btree)
                .level(p.hdr.level)
                .pos(pos));
        };
        if let Some((lo, hi)) = range {
            if let Some(prev_max) = prev_max {
                *lo = (*lo).max(prev_max.successor());
            }
            *hi = (*hi).min(max_key);
        }
        let exp = Expected {
            btree,
            level,
            min_key: child.ptr.min_key,
            max_key,
            seq: child.ptr.seq,
            sectors_written: child.ptr.sectors_written,
        };
        // The cache is indexed by seq alone (`btree_ptr_hash_val`): a pointer carrying another
        // node's seq finds that node here, whatever range the pointer claims, and so finds a
        // failed prefetch read under it.
        if let Some(e) = self.prefetch_failed.get(&exp.seq) {
            return Err(Error::new(
                ErrCode::BtreeNodeReadErrCached,
                format!("btree node read error cached: {e}"),
            )
            .btree(btree)
            .level(level)
            .pos(max_key));
        }
        if let Some(cached) = self.nodes.get(&exp.seq) {
            let (hdr, key) = (cached.hdr, cached.key);
            if check {
                self.check_header(&hdr, key, &exp)?;
            }
            return Ok(exp.seq);
        }
        let ptrs = child.ptr.ptrs.clone();
        let node = self.read(&ptrs, &exp)?;
        self.nodes.insert(exp.seq, node);
        Ok(exp.seq)
    }

    /// `btree_check_header` on a cached node reached through the pointer `exp`.
    ///
    /// bcachefs (v1.37.5 and v1.39.2, `btree_check_header` in btree/cache.c) compares the
    /// header in memory with the node's own key (`b->key`, here `key`), not with the pointer of
    /// this lookup; and `btree_bad_header` does nothing before check_allocations has run
    /// (`check_headers` off). On a mismatch it logs, raises a topology error and uses the node
    /// anyway: a duplicated pointer that reaches a neighbour cached through its own pointer
    /// passes unseen. The fixed profile also compares the header with the lookup's pointer, at
    /// any time, and refuses a node that fails either comparison with
    /// `btree_need_topology_repair`.
    fn check_header(&mut self, hdr: &NodeHeader, key: NodeKey, exp: &Expected) -> Result<()> {
        let own = Expected { min_key: key.min_key, max_key: key.max_key, ..*exp };
        let against_key = if self.check_headers { header_mismatch(hdr, &own) } else { None };
        let mismatch = match self.cfg.behavior {
            Behavior::V1_37_5 | Behavior::V1_39 => against_key,
            Behavior::Fixed => against_key.or_else(|| header_mismatch(hdr, exp)),
        };
        let Some((_, line)) = mismatch else { return Ok(()) };
        self.topology_errors += 1;
        let per_btree = self.topology_by_btree.entry(exp.btree).or_insert_with(|| (0, line.clone()));
        per_btree.0 += 1;
        self.log.push(line.clone());
        let err = Error::new(ErrCode::BtreeNeedTopologyRepair, line)
            .btree(exp.btree)
            .level(exp.level)
            .pos(exp.max_key);
        // A topology error is a filesystem error: noted, and under errors=ro on a running
        // filesystem the end of writing.
        if let Some(h) = &self.health {
            h.fs_error(&err);
        }
        match self.cfg.behavior {
            // btree_bad_header() is void in both: the node is used anyway.
            Behavior::V1_37_5 | Behavior::V1_39 => Ok(()),
            Behavior::Fixed => {
                // The node is not used: whatever needs it (a lookup or flush in its range, a
                // split through it) fails with this error, until check_topology repairs it.
                if self.topology_errors == 1 {
                    self.log.push(format!(
                        "check_topology scheduled: btree {} has a node its pointer does not describe (check_topology repairs it)",
                        exp.btree
                    ));
                }
                Err(err)
            }
        }
    }

    /// The leaf covering `pos`, without recording the path; `None` for an empty btree. This is
    /// the hot path of every insert and lookup.
    fn leaf(&mut self, btree: BtreeId, pos: Bpos) -> Result<Option<u64>> {
        self.leaf_with(btree, pos, false)
    }

    /// [`Btrees::leaf`]; with `prefetch`, a descent from a level-1 node first reads the next
    /// [`PREFETCH_SIBLINGS`] leaves (`BTREE_ITER_prefetch`, for walks).
    fn leaf_with(&mut self, btree: BtreeId, pos: Bpos, prefetch: bool) -> Result<Option<u64>> {
        if let Some(l) = self.last_leaf.filter(|l| l.btree == btree && l.min <= pos && pos <= l.max) {
            self.clock += 1;
            if let Some(n) = self.nodes.get_mut(&l.seq) {
                n.last_used = self.clock;
                return Ok(Some(l.seq));
            }
        }
        let Some(mut seq) = self.root(btree)? else { return Ok(None) };
        let mut range = (Bpos::MIN, Bpos::MAX);
        let topology_errors = self.topology_errors;
        loop {
            self.clock += 1;
            let clock = self.clock;
            let n = self.nodes.get_mut(&seq).ok_or_else(|| missing_node(seq))?;
            n.last_used = clock;
            if n.hdr.level == 0 {
                // A descent that found a header not matching its pointer is not repeated
                // silently: the next one logs and counts it again.
                self.last_leaf = (self.topology_errors == topology_errors).then_some(LastLeaf {
                    btree,
                    seq,
                    min: range.0,
                    max: range.1,
                });
                return Ok(Some(seq));
            }
            if prefetch && n.hdr.level == 1 {
                self.prefetch_siblings(btree, seq, pos)?;
            }
            seq = self.child_in(btree, seq, pos, Some(&mut range), true)?;
        }
    }

    /// Seqs from the root down to the node at `level` covering `pos`; empty for an empty btree.
    fn path(&mut self, btree: BtreeId, pos: Bpos, level: u8) -> Result<Vec<u64>> {
        let Some(mut seq) = self.root(btree)? else { return Ok(Vec::new()) };
        let mut path = vec![seq];
        self.touch(seq);
        while self.node(seq)?.hdr.level > level {
            seq = self.child(btree, seq, pos)?;
            self.touch(seq);
            path.push(seq);
        }
        Ok(path)
    }

    /// Reads every node of `btree` into the cache and describes them, root first.
    pub fn node_infos(&mut self, btree: BtreeId) -> Result<Vec<NodeInfo>> {
        let mut out = Vec::new();
        let Some(root) = self.root(btree)? else { return Ok(out) };
        let mut stack = vec![root];
        while let Some(seq) = stack.pop() {
            let n = self.node(seq)?;
            out.push(NodeInfo {
                btree,
                level: n.hdr.level,
                min_key: n.hdr.min_key,
                max_key: n.hdr.max_key,
                seq,
                ptrs: n.ptrs.clone(),
                sectors_written: n.sectors_written,
                nr_keys: n.nr_keys(),
                dirty: n.dirty,
            });
            let children: Vec<Bpos> = match &n.keys {
                NodeKeys::Interior(m) => m.keys().rev().copied().collect(),
                NodeKeys::Leaf(_) => Vec::new(),
            };
            for max_key in children {
                stack.push(self.child(btree, seq, max_key)?);
            }
        }
        self.maybe_evict();
        Ok(out)
    }

    /// The persisted form of every root; meaningful once `write_dirty` has run.
    pub fn roots(&mut self) -> Vec<Root> {
        let mut out = Vec::new();
        for &btree in BtreeId::ALL {
            let s = slot(btree);
            match self.root_seq.get(s).copied().flatten().and_then(|seq| self.nodes.get(&seq)) {
                Some(n) => out.push(Root { btree, level: n.hdr.level, ptr: n.ptr() }),
                None => {
                    if let Some(r) = self.root_ptr.get(s).cloned().flatten() {
                        out.push(r);
                    }
                }
            }
        }
        out
    }

    // ---- lookups -------------------------------------------------------------------------

    /// The live key at `pos`, if any.
    pub fn get(&mut self, btree: BtreeId, pos: Bpos) -> Result<Option<Bkey>> {
        let Some(leaf) = self.leaf(btree, pos)? else { return Ok(None) };
        let found = self
            .node_mut(leaf)?
            .leaf_mut()
            .and_then(|m| m.get(&pos))
            .filter(|kv| !kv.is_deleted())
            .map(|kv| kv.to_key(pos));
        self.maybe_evict();
        Ok(found)
    }

    /// The first live key at or after `pos`.
    pub fn first_from(&mut self, btree: BtreeId, mut pos: Bpos) -> Result<Option<Bkey>> {
        for _ in 0..self.walk_bound() {
            let Some(leaf) = self.leaf(btree, pos)? else { return Ok(None) };
            let n = self.node_mut(leaf)?;
            let found = n
                .leaf_mut()
                .and_then(|m| m.range(pos..).find(|(_, kv)| !kv.is_deleted()).map(|(p, kv)| kv.to_key(*p)));
            // bcachefs's iterator leaves a leaf by the node's own key (`b->key`), not by its
            // header's max_key.
            let key = n.key;
            if found.is_some() || key.max_key == Bpos::MAX {
                self.maybe_evict();
                return Ok(found);
            }
            if key.max_key < pos {
                return Err(Self::walk_error(btree, pos, key));
            }
            pos = key.max_key.successor();
        }
        Err(Self::walk_bound_error(btree, pos))
    }

    /// The leaf covering `pos`: its own key (`b->key`, by whose max_key a walk leaves it) and
    /// its entries (whiteouts included); `None` for an empty btree. For walks that take a
    /// leaf's entries in one go.
    pub(super) fn leaf_entries(&mut self, btree: BtreeId, pos: Bpos) -> Result<Option<(NodeKey, &LeafMap)>> {
        self.maybe_evict();
        let Some(leaf) = self.leaf_with(btree, pos, true)? else { return Ok(None) };
        let n = self.node_mut(leaf)?;
        let key = n.key;
        match n.leaf_mut() {
            Some(m) => Ok(Some((key, &*m))),
            None => Err(Error::new(ErrCode::BtreeNeedTopologyRepair, "descent ended above the leaves")
                .btree(btree)
                .pos(pos)),
        }
    }

    /// The last live key at or before `pos`.
    pub fn last_until(&mut self, btree: BtreeId, mut pos: Bpos) -> Result<Option<Bkey>> {
        for _ in 0..self.walk_bound() {
            let Some(leaf) = self.leaf(btree, pos)? else { return Ok(None) };
            let n = self.node_mut(leaf)?;
            let found = n.leaf_mut().and_then(|m| {
                m.range(..=pos).rev().find(|(_, kv)| !kv.is_deleted()).map(|(p, kv)| kv.to_key(*p))
            });
            // Backwards, bcachefs's iterator leaves a leaf by its header's min_key
            // (`b->data->min_key`).
            let (min_key, n_key) = (n.hdr.min_key, n.key);
            if found.is_some() || min_key == Bpos::MIN {
                self.maybe_evict();
                return Ok(found);
            }
            if min_key > pos {
                return Err(Self::walk_error(btree, pos, n_key));
            }
            pos = min_key.predecessor();
        }
        Err(Self::walk_bound_error(btree, pos))
    }

    /// A walk across leaves visits each leaf at most once; more steps than there can be leaves
    /// means the topology is broken (a node's range does not cover what its pointer says).
    fn walk_bound(&self) -> usize {
        (self.io.node_size() as usize).saturating_mul(1 << 20)
    }

    /// A walk that reached, for `pos`, a leaf whose own key `key` does not cover it: leaving
    /// the leaf by its key would not move the walk forward. bcachefs's iterator (v1.37.5,
    /// v1.39.2: `__bch2_btree_iter_peek`) has no bound there and descends to the same leaf again
    /// for ever; bcsim stops with a topology error naming both.
    pub(super) fn walk_error(btree: BtreeId, pos: Bpos, key: NodeKey) -> Error {
        Error::new(
            ErrCode::BtreeNeedTopologyRepair,
            format!(
                "leaf walk does not advance: node ranges overlap or leave gaps: the leaf reached for {pos} is {}..{}",
                key.min_key, key.max_key
            ),
        )
        .btree(btree)
        .pos(pos)
    }

    fn walk_bound_error(btree: BtreeId, pos: Bpos) -> Error {
        Error::new(
            ErrCode::BtreeNeedTopologyRepair,
            "leaf walk does not advance: node ranges overlap or leave gaps: more leaves walked than a btree can hold",
        )
        .btree(btree)
        .pos(pos)
    }

    // ---- updates -------------------------------------------------------------------------

    /// Inserts or overwrites `key` (a deleted or whiteout key deletes). `journal_seq` is the
    /// journal entry the update belongs to; the node's next bset records it.
    pub fn insert(&mut self, btree: BtreeId, key: Bkey, journal_seq: u64) -> Result<()> {
        key.validate()?;
        let (pos, kv) = KeyVal::from_key(key, true);
        self.insert_entry(btree, pos, kv, journal_seq, true)
    }

    /// [`Btrees::insert`] of what an aborted transaction puts back (the key it overwrote, or a
    /// whiteout where it added one). A leaf's next rewrite was reserved when the transaction
    /// filled it, so this takes no reservation of its own: undoing must never wait for the
    /// allocator, and a refused undo would leave half a transaction applied.
    pub fn insert_undo(&mut self, btree: BtreeId, key: Bkey, journal_seq: u64) -> Result<()> {
        key.validate()?;
        let (pos, kv) = KeyVal::from_key(key, true);
        self.insert_entry(btree, pos, kv, journal_seq, false)
    }

    /// [`Btrees::insert`] of a borrowed key, whose value is copied only into the leaf: journal
    /// replay inserts tens of millions of keys straight from the journal keys' records.
    pub fn insert_ref(&mut self, btree: BtreeId, key: KeyRef<'_>, journal_seq: u64) -> Result<()> {
        key.validate()?;
        let (pos, kv) = KeyVal::from_ref(key, true);
        self.insert_entry(btree, pos, kv, journal_seq, true)
    }

    /// Inserts an entry. Refused for want of nodes (`operation_blocked`) or for a node that
    /// cannot be read, it changes nothing, so the caller can wait and retry. `reserve`: a
    /// written leaf this fills reserves a node for its rewrite first.
    fn insert_entry(
        &mut self,
        btree: BtreeId,
        pos: Bpos,
        kv: KeyVal,
        journal_seq: u64,
        reserve: bool,
    ) -> Result<()> {
        let Some(leaf) = self.leaf_for_insert(btree, pos, kv.is_deleted())? else { return Ok(()) };
        let split_bytes = self.split_bytes;
        let added = kv.encoded_bytes();
        let node_bytes = self.io.node_size();
        let n = self.node_mut(leaf)?;
        // Deleting a key the leaf does not hold changes nothing (the leaf holds everything its
        // disk copy has): no bytes to write, no rewrite to reserve. A reservation taken here
        // would stay with a clean leaf, its node counted in the alloc keys and never written.
        if kv.is_deleted() && n.leaf_mut().is_some_and(|m| m.get(&pos).is_none()) {
            return Ok(());
        }
        if reserve
            && n.sectors_written > 0
            && n.spare.is_none()
            && !n.needs_rewrite
            && u64::from(n.sectors_written) * crate::bkey::ptr::SECTOR_BYTES
                + (n.unwritten_bytes + added) as u64
                + BSET_SLACK_BYTES
                > node_bytes
        {
            let level = n.hdr.level;
            let loc = self.alloc.alloc_nodes(1, btree, level)?.pop().ok_or_else(|| {
                Error::new(ErrCode::BucketAllocBlocked, "allocator returned no node").btree(btree)
            })?;
            self.node_mut(leaf)?.spare = Some(loc);
        }
        let n = self.node_mut(leaf)?;
        n.unwritten_bytes += added;
        if !kv.is_deleted() && n.hdr.level == 0 {
            // The common case: the key fits even if it replaces nothing. It is appended to the
            // leaf's unsorted inserts, counted as a new key until sorting in corrects the bytes.
            if n.key_bytes + added <= split_bytes {
                if let NodeKeys::Leaf(l) = &mut n.keys {
                    if l.push(pos, kv) {
                        n.leaf_mut();
                    }
                }
                n.key_bytes += added;
                n.dirty = true;
                n.journal_seq = n.journal_seq.max(journal_seq);
                self.maybe_evict();
                return Ok(());
            }
            // It may not fit: take exact bytes.
            let old_bytes = n.leaf_mut().and_then(|m| m.get(&pos)).map_or(0, KeyVal::encoded_bytes);
            if n.key_bytes.saturating_sub(old_bytes) + added > split_bytes {
                let path = self.path(btree, pos, 0)?;
                self.split_insert(btree, &path, pos, kv, journal_seq)?;
                self.maybe_evict();
                return Ok(());
            }
        }
        self.apply_to_leaf(leaf, pos, kv, journal_seq)?;
        self.maybe_evict();
        Ok(())
    }

    /// The leaf an entry at `pos` goes into, after making a root leaf for an empty btree;
    /// `None` for a deletion in an empty btree, which has nothing to do.
    fn leaf_for_insert(&mut self, btree: BtreeId, pos: Bpos, deletion: bool) -> Result<Option<u64>> {
        if self.root(btree)?.is_none() {
            if deletion {
                return Ok(None);
            }
            self.new_root_leaf(btree)?;
        }
        let leaf = self.leaf(btree, pos)?;
        leaf.map(Some).ok_or_else(|| Error::new(ErrCode::BtreeNeedTopologyRepair, "no leaf"))
    }

    /// Deletes the key at `pos` (nothing if there is none).
    pub fn delete(&mut self, btree: BtreeId, pos: Bpos, journal_seq: u64) -> Result<()> {
        self.insert(btree, Bkey::whiteout(pos), journal_seq)
    }

    fn apply_to_leaf(&mut self, leaf: u64, pos: Bpos, kv: KeyVal, journal_seq: u64) -> Result<()> {
        let n = self.node_mut(leaf)?;
        let written = n.sectors_written > 0;
        let Some(m) = n.leaf_mut() else { return Ok(()) };
        let added = kv.encoded_bytes();
        let old = if kv.is_deleted() {
            // A whiteout is needed only if the key may be on disk; the map holds everything the
            // disk has, so a key that is not in it needs no whiteout.
            match m.get(&pos) {
                None => return Ok(()),
                Some(_) if written => m.insert(pos, kv),
                Some(_) => m.remove(&pos),
            }
        } else {
            m.insert(pos, kv)
        };
        let still_there = m.contains_key(&pos);
        n.key_bytes = n.key_bytes.saturating_sub(old.map_or(0, |o| o.encoded_bytes()));
        if still_there {
            n.key_bytes += added;
        }
        n.dirty = true;
        n.journal_seq = n.journal_seq.max(journal_seq);
        Ok(())
    }

    fn new_root_leaf(&mut self, btree: BtreeId) -> Result<()> {
        self.last_leaf = None;
        let mut locs = self.alloc.alloc_nodes(1, btree, 0)?;
        let Some(loc) = locs.pop() else {
            return Err(Error::new(ErrCode::BucketAllocBlocked, "allocator returned no node").btree(btree));
        };
        let seq = self.new_seq();
        let hdr = NodeHeader { btree, level: 0, min_key: Bpos::MIN, max_key: Bpos::MAX, seq };
        self.nodes.insert(seq, Node::new(hdr, loc.ptrs));
        if let Some(r) = self.root_seq.get_mut(slot(btree)) {
            *r = Some(seq);
        }
        Ok(())
    }

    /// How many new nodes a split of the leaf at the end of `path` takes: two per splitting
    /// level (both halves are new nodes) and one for a new root.
    fn nodes_for_split(&self, path: &[u64]) -> Result<(usize, bool)> {
        let mut need = 2;
        for (i, &seq) in path.iter().enumerate().rev().skip(1) {
            let n = self.node(seq)?;
            // The parent gains one pointer; a little slack for its size.
            let ptr_bytes = 128;
            if n.key_bytes + ptr_bytes <= self.split_bytes {
                return Ok((need, false));
            }
            need += 2;
            if i == 0 {
                break;
            }
        }
        let root_level = path.first().map(|&s| self.node(s).map(|n| n.hdr.level)).transpose()?.unwrap_or(0);
        if root_level >= MAX_LEVEL {
            return Err(Error::new(
                ErrCode::EnospcBtreeDepth,
                format!("btree would grow past level {MAX_LEVEL}: node size too small for this many keys"),
            ));
        }
        Ok((need + 1, true))
    }

    /// Gives `kv` back with the error if nothing could be reserved (nothing changed then).
    fn split_insert(
        &mut self,
        btree: BtreeId,
        path: &[u64],
        pos: Bpos,
        kv: KeyVal,
        journal_seq: u64,
    ) -> Result<()> {
        // Splits change the shape of the tree.
        self.last_leaf = None;
        let Some(&leaf) = path.last() else { return Err(missing_node(0)) };
        let (need, _new_root) = self.nodes_for_split(path)?;
        // The point of no return: everything the split needs is reserved first.
        let mut reserved = self.alloc.alloc_nodes(need, btree, 0)?;
        self.apply_to_leaf(leaf, pos, kv, journal_seq)?;
        let mut replaced = Vec::new();
        let result = self.split_upwards(btree, path, pos, journal_seq, &mut reserved, &mut replaced);
        if !reserved.is_empty() {
            replaced.push((reserved.into_iter().flat_map(|l| l.ptrs).collect(), false));
        }
        // The tree is whole again: now the replaced nodes' space goes back. A failure here is
        // the allocator contradicting the btree, which the caller treats as fatal.
        let freed = self.give_back(replaced);
        result.and(freed)
    }

    /// Gives the space of replaced nodes back: `(ptrs, written)` per node; a written node's
    /// slots are freed, an unwritten one's released. Every node is given back even if one
    /// fails; the first error is returned.
    fn give_back(&self, nodes: Vec<(Vec<ExtentPtr>, bool)>) -> Result<()> {
        let mut first = Ok(());
        for (ptrs, written) in nodes {
            let r = if written {
                self.alloc.free_node(&ptrs)
            } else {
                self.alloc.release_unused(vec![NodeLocation { ptrs }])
            };
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Splits the node at the end of `path` and, as long as a parent overflows, the parent.
    fn split_upwards(
        &mut self,
        btree: BtreeId,
        path: &[u64],
        mut hot: Bpos,
        journal_seq: u64,
        reserved: &mut Vec<NodeLocation>,
        replaced: &mut Vec<(Vec<ExtentPtr>, bool)>,
    ) -> Result<()> {
        let mut depth = path.len();
        while depth > 0 {
            let seq = *path.get(depth - 1).ok_or_else(|| missing_node(0))?;
            let mut node = self.nodes.remove(&seq).ok_or_else(|| missing_node(seq))?;
            if let Some(spare) = node.spare.take() {
                replaced.push((spare.ptrs, false));
            }
            let (left, right) = self.split_node(node, hot, reserved, replaced)?;
            let (l_ptr, l_max, r_ptr, r_max, level) =
                (left.ptr(), left.hdr.max_key, right.ptr(), right.hdr.max_key, left.hdr.level);
            self.nodes.insert(left.hdr.seq, left);
            self.nodes.insert(right.hdr.seq, right);
            if depth == 1 {
                return self.grow_root(btree, level + 1, [(l_max, l_ptr), (r_max, r_ptr)], reserved);
            }
            let parent = *path.get(depth - 2).ok_or_else(|| missing_node(0))?;
            let p = self.node_mut(parent)?;
            if let NodeKeys::Interior(m) = &mut p.keys {
                for (max_key, ptr) in [(l_max, l_ptr), (r_max, r_ptr)] {
                    let child = Child { ptr, pending: true };
                    p.key_bytes += child.encoded_bytes();
                    if let Some(old) = m.insert(max_key, child) {
                        p.key_bytes = p.key_bytes.saturating_sub(old.encoded_bytes());
                    }
                }
            }
            p.dirty = true;
            p.journal_seq = p.journal_seq.max(journal_seq);
            if p.key_bytes <= self.split_bytes {
                return Ok(());
            }
            hot = l_max;
            depth -= 1;
        }
        Ok(())
    }

    fn take_location(reserved: &mut Vec<NodeLocation>, btree: BtreeId) -> Result<NodeLocation> {
        reserved.pop().ok_or_else(|| {
            Error::new(ErrCode::BtreeNeedTopologyRepair, "split used more nodes than it reserved")
                .btree(btree)
        })
    }

    /// Replaces `node` by two new nodes (new seqs, new locations) holding its keys; the old
    /// node's space is added to `replaced`, to go back to the allocator once the split is done.
    fn split_node(
        &mut self,
        node: Node,
        hot: Bpos,
        reserved: &mut Vec<NodeLocation>,
        replaced: &mut Vec<(Vec<ExtentPtr>, bool)>,
    ) -> Result<(Node, Node)> {
        let hdr = node.hdr;
        let l_loc = Self::take_location(reserved, hdr.btree)?;
        let r_loc = Self::take_location(reserved, hdr.btree)?;
        let (l_seq, r_seq) = (self.new_seq(), self.new_seq());
        let (left_keys, right_keys, left_max) = split_keys(node.keys, hot);
        let mk = |seq, min_key, max_key, keys, loc: NodeLocation| {
            let mut n = Node::new(NodeHeader { min_key, max_key, seq, ..hdr }, loc.ptrs);
            n.keys = keys;
            n.key_bytes = key_bytes(&n.keys);
            n.journal_seq = node.journal_seq;
            n
        };
        let left = mk(l_seq, hdr.min_key, left_max, left_keys, l_loc);
        let right = mk(r_seq, left_max.successor(), hdr.max_key, right_keys, r_loc);
        replaced.push((node.ptrs, node.sectors_written > 0));
        Ok((left, right))
    }

    fn grow_root(
        &mut self,
        btree: BtreeId,
        level: u8,
        children: [(Bpos, BtreePtrV2); 2],
        reserved: &mut Vec<NodeLocation>,
    ) -> Result<()> {
        let loc = Self::take_location(reserved, btree)?;
        let seq = self.new_seq();
        let mut root =
            Node::new(NodeHeader { btree, level, min_key: Bpos::MIN, max_key: Bpos::MAX, seq }, loc.ptrs);
        if let NodeKeys::Interior(m) = &mut root.keys {
            for (max_key, ptr) in children {
                m.insert(max_key, Child { ptr, pending: true });
            }
        }
        root.key_bytes = key_bytes(&root.keys);
        self.nodes.insert(seq, root);
        if let Some(r) = self.root_seq.get_mut(slot(btree)) {
            *r = Some(seq);
        }
        Ok(())
    }

    // ---- write-back ----------------------------------------------------------------------

    /// Writes every dirty node, level by level from the leaves up. After each level the
    /// devices are flushed, and only then do parents record the children's new
    /// `sectors_written` (and new places, after a rewrite): a pointer never claims sectors that
    /// are not durable. Returns how many node writes were made. A node that must be written
    /// anew (compacted) and finds no place left stays dirty while the rest are written; the
    /// allocator's `operation_blocked` error is then returned after them.
    pub fn write_dirty(&mut self) -> Result<usize> {
        self.write_dirty_in(0)
    }

    /// [`Btrees::write_dirty`] as part of journal entry `seq`: every bset written carries at
    /// least `seq`, so that if the entry never becomes durable (a crash first), recovery
    /// blacklists those bsets and the nodes read as they were before. The caller commits the
    /// alloc keys of the nodes this allocates and frees, and the new roots, in that entry:
    /// on disk the btrees and their alloc keys then change together.
    pub fn write_dirty_in(&mut self, seq: u64) -> Result<usize> {
        let mut writes = 0;
        let mut blocked: Option<Error> = None;
        for level in 0..=MAX_LEVEL {
            let mut dirty: Vec<u64> = self
                .nodes
                .iter_mut()
                .filter(|(_, n)| n.dirty && n.hdr.level == level)
                .map(|(&s, n)| {
                    n.journal_seq = n.journal_seq.max(seq);
                    s
                })
                .collect();
            if dirty.is_empty() {
                continue;
            }
            dirty.sort_unstable();
            let mut written = Vec::with_capacity(dirty.len());
            for seq in dirty {
                match self.write_node(seq) {
                    Ok(s) => {
                        written.push(s);
                        writes += 1;
                    }
                    // A node that must be written anew and finds no place stays dirty; the
                    // others are written, and their parents updated, all the same.
                    Err(e) if e.matches(ErrCode::OperationBlocked) => {
                        blocked.get_or_insert(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            self.io.flush()?;
            for seq in written {
                self.update_parent_ptr(seq)?;
            }
        }
        // Written nodes are clean, so evictable: scan again.
        self.evict_scan_above = 0;
        self.maybe_evict();
        match blocked {
            Some(e) => Err(e),
            None => Ok(writes),
        }
    }

    /// Points the parent of node `seq` at the node as it now is on disk. The pointer is found
    /// and rebuilt from the node's own key (`b->key`), not from its header, as bcachefs's
    /// `btree_node_write_update_key` does: the two differ only for a node whose header no
    /// longer matches its pointer, which v1.37.5 and v1.39 go on using and writing.
    fn update_parent_ptr(&mut self, seq: u64) -> Result<()> {
        self.last_leaf = None;
        let n = self.node(seq)?;
        let (btree, level, max_key) = (n.hdr.btree, n.hdr.level, n.key.max_key);
        let ptr = BtreePtrV2 { min_key: n.key.min_key, ..n.ptr() };
        if self.root_seq.get(slot(btree)).copied().flatten() == Some(seq) {
            return Ok(());
        }
        let path = self.path(btree, max_key, level + 1)?;
        let parent = *path.last().ok_or_else(|| missing_node(seq))?;
        let p = self.node_mut(parent)?;
        if p.hdr.level != level + 1 {
            return Err(Error::new(ErrCode::BtreeNeedTopologyRepair, "parent of a written node not found")
                .btree(btree)
                .level(level)
                .pos(max_key));
        }
        if let NodeKeys::Interior(m) = &mut p.keys {
            m.insert(max_key, Child { ptr, pending: true });
        }
        p.dirty = true;
        Ok(())
    }

    /// Writes one dirty node; returns its seq afterwards (new if it had to be rewritten).
    fn write_node(&mut self, seq: u64) -> Result<u64> {
        let node = self.nodes.get_mut(&seq).ok_or_else(|| missing_node(seq))?;
        let node_bytes = self.io.node_size();
        if node.needs_rewrite {
            return self.rewrite(seq);
        }
        if node.sectors_written == 0 {
            self.write_whole(seq)?;
            return Ok(seq);
        }
        let bset = node.encode_bset(false);
        let at = u64::from(node.sectors_written) * crate::bkey::ptr::SECTOR_BYTES;
        if at + bset.len() as u64 > node_bytes {
            return self.rewrite(seq);
        }
        self.io.write(&node.ptrs, at, &bset)?;
        let sectors = node.sectors_written + (bset.len() as u64 / crate::bkey::ptr::SECTOR_BYTES) as u32;
        let n = self.node_mut(seq)?;
        n.mark_written(sectors);
        // The bset fitted after all (the reservation counts overwritten keys twice).
        if let Some(spare) = n.spare.take() {
            self.alloc.release_unused(vec![spare])?;
        }
        Ok(seq)
    }

    fn write_whole(&mut self, seq: u64) -> Result<()> {
        let node = self.nodes.get_mut(&seq).ok_or_else(|| missing_node(seq))?;
        let mut bytes = node.encode_header(self.io.magic());
        bytes.extend_from_slice(&node.encode_bset(true));
        if bytes.len() as u64 > self.io.node_size() {
            return Err(Error::new(
                ErrCode::BtreeNodeReadErr,
                format!("btree node of {} bytes does not fit node size {}", bytes.len(), self.io.node_size()),
            )
            .btree(node.hdr.btree)
            .level(node.hdr.level)
            .pos(node.hdr.max_key));
        }
        self.io.write(&node.ptrs, 0, &bytes)?;
        let sectors = (bytes.len() as u64 / crate::bkey::ptr::SECTOR_BYTES) as u32;
        self.node_mut(seq)?.mark_written(sectors);
        Ok(())
    }

    /// A node whose space is used up is written anew elsewhere (compacted) under a new seq;
    /// its parent is pointed at the new place after the write is flushed.
    fn rewrite(&mut self, seq: u64) -> Result<u64> {
        self.last_leaf = None;
        let (btree, level) = {
            let n = self.node(seq)?;
            (n.hdr.btree, n.hdr.level)
        };
        let spare = self.node_mut(seq)?.spare.take();
        let loc = match spare {
            Some(loc) => loc,
            None => {
                let mut locs = self.alloc.alloc_nodes(1, btree, level)?;
                Self::take_location(&mut locs, btree)?
            }
        };
        let new_seq = self.new_seq();
        let mut node = self.nodes.remove(&seq).ok_or_else(|| missing_node(seq))?;
        let old_ptrs = std::mem::replace(&mut node.ptrs, loc.ptrs);
        node.hdr.seq = new_seq;
        node.sectors_written = 0;
        node.needs_rewrite = false;
        if let Some(m) = node.leaf_mut() {
            m.retain(|_, kv| !kv.is_deleted());
        }
        node.key_bytes = key_bytes(&node.keys);
        self.nodes.insert(new_seq, node);
        if let Some(r) = self.root_seq.get_mut(slot(btree)).filter(|r| **r == Some(seq)) {
            *r = Some(new_seq);
        }
        let written = self.write_whole(new_seq);
        // The old place is freed once the node lives elsewhere, even if writing it failed: the
        // node stays dirty in memory, at its new place. A node salvage made had none.
        let freed = if old_ptrs.is_empty() { Ok(()) } else { self.alloc.free_node(&old_ptrs) };
        written.and(freed)?;
        Ok(new_seq)
    }

    /// Evicts the least recently used clean nodes beyond the cache bound; roots stay.
    fn maybe_evict(&mut self) {
        let bound = self.cfg.cache_nodes.max(16);
        let slack = bound / 8;
        if self.nodes.len() <= (bound + slack).max(self.evict_scan_above) {
            return;
        }
        let roots: Vec<u64> = self.root_seq.iter().flatten().copied().collect();
        let mut clean: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .filter(|(s, n)| !n.dirty && !roots.contains(s))
            .map(|(&s, n)| (n.last_used, s))
            .collect();
        clean.sort_unstable();
        let excess = self.nodes.len().saturating_sub(bound);
        if excess > 0 {
            self.last_leaf = None;
        }
        for (_, s) in clean.into_iter().take(excess) {
            self.nodes.remove(&s);
        }
        // Still over: the rest is dirty. Scanning again before `slack` more nodes arrive (or a
        // write-back cleans some) would find the same, and cost O(nodes) per update.
        self.evict_scan_above = if self.nodes.len() > bound + slack { self.nodes.len() + slack } else { 0 };
    }

    /// fsck's salvage of `btree`: every node no replica of which can be read is replaced, in
    /// the cache, by an empty node covering the same range at the same level (an interior one
    /// over a chain of empty nodes down to a leaf). Its keys are lost; the rest of the tree is
    /// untouched. The replacement keeps the lost node's seq and pointers, so its parent still
    /// leads to it and check_allocations still sees its buckets in use; it is dirty and marked
    /// for a rewrite, so the first write-back writes it at a new place and frees the old one.
    /// Without a write-back (`fsck -n`) nothing is written. A child that reads but is another
    /// node than its pointer describes (a duplicated pointer reaching a cached neighbour) is
    /// dropped the same way, except that its placeholder takes a new seq and the parent points
    /// to it: the node reached keeps its own place. Returns the nodes lost.
    pub fn drop_unreadable(&mut self, btree: BtreeId) -> Result<Vec<LostNode>> {
        // Failed reads are forgotten (bcachefs evicts them here): each pointer is read again
        // and judged for itself.
        self.prefetch_failed.clear();
        let mut lost = Vec::new();
        let root = match self.root(btree) {
            Ok(Some(seq)) => seq,
            Ok(None) => return Ok(lost),
            Err(error) if error.matches(ErrCode::Eio) => {
                let Some(r) = self.root_ptr.get(slot(btree)).cloned().flatten() else { return Err(error) };
                let seq = self.install_placeholder(
                    btree,
                    r.level,
                    r.ptr.seq,
                    r.ptr.min_key,
                    Bpos::MAX,
                    r.ptr.ptrs.clone(),
                );
                if let Some(s) = self.root_seq.get_mut(slot(btree)) {
                    *s = Some(seq);
                }
                lost.push(LostNode {
                    btree,
                    level: r.level,
                    min_key: r.ptr.min_key,
                    max_key: Bpos::MAX,
                    ptrs: r.ptr.ptrs,
                    error,
                });
                return Ok(lost);
            }
            Err(e) => return Err(e),
        };
        let mut stack = vec![root];
        while let Some(seq) = stack.pop() {
            let n = self.node(seq)?;
            let level = n.hdr.level;
            let NodeKeys::Interior(children) = &n.keys else { continue };
            let children: Vec<(Bpos, BtreePtrV2)> =
                children.iter().map(|(&k, c)| (k, c.ptr.clone())).collect();
            for (max_key, ptr) in children {
                let error = match self.child_in(btree, seq, max_key, None, false) {
                    Ok(child) => match self.mismatch(btree, level, child, &ptr, max_key)? {
                        None => {
                            stack.push(child);
                            continue;
                        }
                        Some(error) => error,
                    },
                    Err(error) if error.matches(ErrCode::Eio) => error,
                    Err(e) => return Err(e),
                };
                lost.push(self.replace_child(btree, seq, level, max_key, ptr, error)?);
            }
        }
        self.last_leaf = None;
        Ok(lost)
    }

    /// Puts an empty node in place of the child of `parent` (at `parent_level`) ending at
    /// `max_key`, which could not be read or is not the node `ptr` describes. It keeps the lost
    /// node's seq and pointers, so the parent still leads to it and check_allocations still
    /// sees its buckets in use, unless another node is cached under that seq (a duplicated
    /// pointer reaching its neighbour): then it takes a new seq with no place yet, the parent
    /// points to it, and the neighbour keeps its place.
    fn replace_child(
        &mut self,
        btree: BtreeId,
        parent: u64,
        parent_level: u8,
        max_key: Bpos,
        ptr: BtreePtrV2,
        error: Error,
    ) -> Result<LostNode> {
        let level = parent_level.saturating_sub(1);
        if self.nodes.contains_key(&ptr.seq) {
            let new = self.new_seq();
            self.install_placeholder(btree, level, new, ptr.min_key, max_key, Vec::new());
            let p = self.node_mut(parent)?;
            if let NodeKeys::Interior(m) = &mut p.keys {
                let to_new =
                    BtreePtrV2 { seq: new, sectors_written: 0, min_key: ptr.min_key, ptrs: Vec::new() };
                m.insert(max_key, Child { ptr: to_new, pending: true });
            }
            p.dirty = true;
        } else {
            self.install_placeholder(btree, level, ptr.seq, ptr.min_key, max_key, ptr.ptrs.clone());
        }
        Ok(LostNode { btree, level, min_key: ptr.min_key, max_key, ptrs: ptr.ptrs, error })
    }

    /// Whether cached node `child`, reached from a node at `parent_level` through `ptr` ending
    /// at `max_key`, is some other node than the pointer describes: the error saying how, as a
    /// read of it would have.
    fn mismatch(
        &self,
        btree: BtreeId,
        parent_level: u8,
        child: u64,
        ptr: &BtreePtrV2,
        max_key: Bpos,
    ) -> Result<Option<Error>> {
        let level = parent_level.saturating_sub(1);
        let exp = Expected {
            btree,
            level,
            min_key: ptr.min_key,
            max_key,
            seq: ptr.seq,
            sectors_written: ptr.sectors_written,
        };
        Ok(header_mismatch(&self.node(child)?.hdr, &exp)
            .map(|(code, line)| Error::new(code, line).btree(btree).level(level).pos(max_key)))
    }

    /// Marks the node of `btree` at `level` ending at `max_key` to be written anew at the next
    /// write-back, at a new place with the replicas the allocator gives now (fsck's repair of a
    /// node written short of `metadata_replicas`). Returns false if there is no such node.
    pub fn rewrite_later(&mut self, btree: BtreeId, level: u8, max_key: Bpos) -> Result<bool> {
        let path = self.path(btree, max_key, level)?;
        let Some(&seq) = path.last() else { return Ok(false) };
        let n = self.node_mut(seq)?;
        if n.hdr.level != level || n.hdr.max_key != max_key {
            return Ok(false);
        }
        n.needs_rewrite = true;
        n.dirty = true;
        Ok(true)
    }

    /// Puts an empty node for `min_key..=max_key` at `level` into the cache under `seq`, at
    /// `ptrs`, to be rewritten elsewhere; below an interior one, a chain of empty nodes down to
    /// a leaf, with no place yet. Returns `seq`.
    fn install_placeholder(
        &mut self,
        btree: BtreeId,
        level: u8,
        seq: u64,
        min_key: Bpos,
        max_key: Bpos,
        ptrs: Vec<ExtentPtr>,
    ) -> u64 {
        let mut node = Node::new(NodeHeader { btree, level, min_key, max_key, seq }, ptrs);
        node.needs_rewrite = true;
        if level > 0 {
            let child = self.new_seq();
            let child = self.install_placeholder(btree, level - 1, child, min_key, max_key, Vec::new());
            let ptr = BtreePtrV2 { seq: child, sectors_written: 0, min_key, ptrs: Vec::new() };
            if let NodeKeys::Interior(m) = &mut node.keys {
                m.insert(max_key, Child { ptr, pending: true });
            }
            node.key_bytes = key_bytes(&node.keys);
        }
        self.nodes.insert(seq, node);
        seq
    }

    /// Fault injection for scenarios: makes the header in memory of the cached node at `level`
    /// covering `pos` claim a different max_key, as the nodes in #1107 were found to after being
    /// read correctly; the node's own key (`b->key`) stays. Returns false if no such node is
    /// cached.
    pub fn corrupt_cached_header(&mut self, btree: BtreeId, level: u8, pos: Bpos) -> Result<bool> {
        self.last_leaf = None;
        let path = self.path(btree, pos, level)?;
        let Some(&seq) = path.last() else { return Ok(false) };
        let n = self.node_mut(seq)?;
        if n.hdr.level != level {
            return Ok(false);
        }
        n.hdr.max_key = n.hdr.max_key.predecessor();
        Ok(true)
    }
}

/// How node header `hdr` differs from what its pointer says (`exp`), if it does: the error code
/// a read would give for the first field that differs, and the `btree node header doesn't match
/// ptr` line.
fn header_mismatch(hdr: &NodeHeader, exp: &Expected) -> Option<(ErrCode, String)> {
    let code = if hdr.btree != exp.btree || hdr.level != exp.level {
        ErrCode::BtreeNodeBadLevel
    } else if hdr.min_key != exp.min_key {
        ErrCode::BtreeNodeBadMinKey
    } else if hdr.max_key != exp.max_key {
        ErrCode::BtreeNodeBadMaxKey
    } else {
        return None;
    };
    let line = format!(
        "btree node header doesn't match ptr: btree={} level={} ptr: {}..{} node: btree={} level={} {}..{}",
        exp.btree, exp.level, exp.min_key, exp.max_key, hdr.btree, hdr.level, hdr.min_key, hdr.max_key
    );
    Some((code, line))
}

/// Splits a node's keys in two by encoded bytes. When the update that caused the split is at
/// the end of the node (`hot` is one of the last two keys: appends in key order), the right
/// node gets only the last key, so sequential inserts leave full nodes behind them instead of
/// half-empty ones.
fn split_keys(keys: NodeKeys, hot: Bpos) -> (NodeKeys, NodeKeys, Bpos) {
    match keys {
        NodeKeys::Leaf(mut l) => {
            let (m, _) = l.settle();
            m.retain(|_, kv| !kv.is_deleted());
            let mut m = std::mem::take(m);
            let left_max = split_point(m.iter(), KeyVal::encoded_bytes, hot);
            let r = m.split_off(&left_max.successor());
            (NodeKeys::Leaf(m.into()), NodeKeys::Leaf(r.into()), left_max)
        }
        NodeKeys::Interior(mut m) => {
            let left_max = split_point(m.iter(), Child::encoded_bytes, hot);
            let r = m.split_off(&left_max.successor());
            (NodeKeys::Interior(m), NodeKeys::Interior(r), left_max)
        }
    }
}

/// The max_key of the left half when splitting the entries of `it` (in position order).
fn split_point<'a, V: 'a>(
    it: impl DoubleEndedIterator<Item = (&'a Bpos, &'a V)> + Clone,
    bytes: impl Fn(&V) -> usize,
    hot: Bpos,
) -> Bpos {
    let mut back = it.clone().rev().map(|(p, _)| *p);
    let last = back.next();
    let second_last = back.next();
    match second_last {
        Some(p) if hot >= p => p,
        _ => {
            let total: usize = it.clone().map(|(_, v)| bytes(v)).sum();
            let mut acc = 0;
            let mut at = Bpos::MIN;
            for (p, v) in it {
                at = *p;
                acc += bytes(v);
                if acc * 2 >= total {
                    break;
                }
            }
            // Never leave the right half empty.
            if Some(at) == last { second_last.unwrap_or(at) } else { at }
        }
    }
}

fn key_bytes(keys: &NodeKeys) -> usize {
    match keys {
        NodeKeys::Leaf(l) => l.settled().map_or(0, |m| m.values().map(KeyVal::encoded_bytes).sum()),
        NodeKeys::Interior(m) => m.values().map(Child::encoded_bytes).sum(),
    }
}
