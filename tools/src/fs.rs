//! An opened filesystem: its device set, options, allocator and btrees, with the few
//! operations that exist before the journal does: commit keys, write back, unmount cleanly.
//!
//! Allocator decisions come back as alloc-key updates; committing them is this layer's job,
//! and committing them can allocate btree nodes, which produces more updates: the loop that
//! applies them is bounded and converges because each round touches fewer buckets.

use std::sync::Arc;

use allocator::{Allocator, BtreeNodeAlloc, DeviceInit};
use fs_core::bkey::{AllocV4, Bkey, BtreePtrV2, ExtentPtr, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::node::BTREE_NODE_SALT;
use fs_core::btree::{BtreeConfig, Btrees, NodeAllocator, NodeInfo, NodeIo, NodeLocation, Root};
use fs_core::dev::SharedDevice;
use fs_core::error::{ErrCode, Error, Result};
use fs_core::opts::Options;
use fs_core::sb::{CleanRoot, CleanSection, DeviceSet, fs_magic};

/// Rounds of "commit alloc updates, write back" before giving up: each round's updates touch
/// only the buckets the previous round's node writes used, so a few rounds always suffice.
const MAX_SETTLE_ROUNDS: usize = 32;

/// Stands in for the allocator on a filesystem opened read-only: any write is refused.
struct ReadOnlyNodes;

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
    journal_seq: u64,
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
        let roots = clean_roots(&set)?;
        let journal_seq = set.sb.clean.as_ref().map_or(0, |c| c.journal_seq);
        let io = NodeIo::new(devices(&set), fs_magic(&set.sb.uuid, BTREE_NODE_SALT), opts.btree_node_size());
        let cfg = BtreeConfig { behavior: opts.behavior(), ..cfg };
        if !writable {
            let btrees = Btrees::new(io, Arc::new(ReadOnlyNodes), roots, cfg);
            return Ok(Fs { set, opts, btrees, alloc: None, nodes: None, journal_seq });
        }
        set.require_all(false)?;
        let inits: Vec<DeviceInit> = set
            .sb
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.is_unused())
            .map(|(i, m)| DeviceInit {
                dev_idx: i as u8,
                member: m.clone(),
                journal: set.device(i).map(|d| d.sb.journal.clone()).unwrap_or_default(),
            })
            .collect();
        // Read the alloc btree first (read-only), then build the allocator from it.
        let mut reader = Btrees::new(
            NodeIo::new(devices(&set), io.magic(), opts.btree_node_size()),
            Arc::new(ReadOnlyNodes),
            roots.clone(),
            cfg,
        );
        let alloc_keys = read_alloc_keys(&mut reader)?;
        let alloc = Arc::new(if alloc_keys.is_empty() {
            Allocator::new(inits, opts.btree_node_size())?
        } else {
            Allocator::from_alloc_keys(inits, opts.btree_node_size(), alloc_keys)?
        });
        let nodes = Arc::new(BtreeNodeAlloc::from_options(alloc.clone(), &opts)?);
        let btrees = Btrees::new(io, nodes.clone(), roots, cfg);
        Ok(Fs { set, opts, btrees, alloc: Some(alloc), nodes: Some(nodes), journal_seq })
    }

    pub fn journal_seq(&self) -> u64 {
        self.journal_seq
    }

    /// Inserts `keys` into `btree` as one update, then commits the allocator's updates.
    pub fn commit(&mut self, btree: BtreeId, keys: impl IntoIterator<Item = Bkey>) -> Result<()> {
        self.journal_seq += 1;
        if let Some(n) = &self.nodes {
            n.set_journal_seq(self.journal_seq);
        }
        for k in keys {
            self.btrees.insert(btree, k, self.journal_seq)?;
        }
        self.apply_alloc_updates()
    }

    /// Commits what the allocator decided (alloc, freespace and need_discard keys).
    pub fn apply_alloc_updates(&mut self) -> Result<()> {
        let Some(alloc) = self.alloc.clone() else { return Ok(()) };
        for _ in 0..MAX_SETTLE_ROUNDS {
            let updates = alloc.take_updates();
            if updates.is_empty() {
                return Ok(());
            }
            for (btree, k) in updates {
                self.btrees.insert(btree, k, self.journal_seq)?;
            }
        }
        Err(not_settling())
    }

    /// Writes every dirty node and the alloc keys its writes produced, until nothing is dirty.
    pub fn write_back(&mut self) -> Result<()> {
        for _ in 0..MAX_SETTLE_ROUNDS {
            self.apply_alloc_updates()?;
            self.btrees.write_dirty()?;
            let pending = self.alloc.as_ref().map_or(0, |a| a.pending_updates());
            if pending == 0 && self.btrees.dirty_nodes() == 0 {
                return Ok(());
            }
        }
        Err(not_settling())
    }

    /// Writes everything back and records the btree roots in a clean section.
    pub fn unmount(mut self) -> Result<()> {
        if self.alloc.is_none() {
            return Ok(());
        }
        self.write_back()?;
        let roots = self
            .btrees
            .roots()
            .into_iter()
            .map(|r| CleanRoot { btree: r.btree, level: r.level, key: r.ptr.encode() })
            .collect();
        self.set.sb.clean = Some(CleanSection { journal_seq: self.journal_seq, roots });
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

fn not_settling() -> Error {
    Error::new(
        ErrCode::BucketAccounting,
        format!("alloc updates did not settle in {MAX_SETTLE_ROUNDS} rounds"),
    )
}

fn read_alloc_keys(t: &mut Btrees) -> Result<Vec<(Bpos, AllocV4)>> {
    let mut it = t.iter(BtreeId::Alloc, Bpos::MIN);
    let mut out = Vec::new();
    while let Some(k) = it.next(t, None)? {
        if k.ty == KeyType::AllocV4 {
            out.push((k.pos, AllocV4::decode(&k.val).map_err(|e| e.btree(BtreeId::Alloc).pos(k.pos))?));
        }
    }
    Ok(out)
}
