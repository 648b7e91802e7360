//! Helpers shared by the allocator's integration tests: devices, and a model of the committed
//! alloc / freespace / need_discard btrees that `take_updates` batches are applied to.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};

use std::sync::Arc;

use allocator::{Allocator, BtreeNodeAlloc, DeviceInit};
use fs_core::bkey::{AllocV4, Bkey, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::opts::{LiveOpts, OptId, OptValue, Options};
use fs_core::sb::{JournalBuckets, Member, MemberState};
use fs_core::uuid::Uuid;

/// A member device; the uuid only needs to be non-nil (a nil uuid marks an unused slot).
pub fn member(nbuckets: u64, bucket_size: u32, first_bucket: u32, durability: u8, label: &str) -> Member {
    Member {
        uuid: Uuid([7; 16]),
        nbuckets,
        bucket_size,
        first_bucket,
        durability,
        state: MemberState::Rw,
        label: label.to_owned(),
        freespace_initialized_to: None,
        data_allowed: Default::default(),
    }
}

pub fn dev(dev_idx: u8, member: Member, journal: std::ops::Range<u64>) -> DeviceInit {
    let ranges = if journal.is_empty() { Vec::new() } else { vec![journal] };
    DeviceInit { dev_idx, member, journal: JournalBuckets { ranges }, present: true }
}

/// The committed alloc, freespace and need_discard btrees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub alloc: BTreeMap<Bpos, AllocV4>,
    /// Freespace range keys: end position -> buckets covered.
    pub freespace_keys: BTreeMap<Bpos, u32>,
    pub need_discard: BTreeSet<Bpos>,
}

impl Model {
    /// Applies one `take_updates` batch as a commit would.
    pub fn apply(&mut self, updates: Vec<(BtreeId, Bkey)>) -> Result<(), String> {
        for (btree, key) in updates {
            match (btree, key.ty) {
                (BtreeId::Alloc, KeyType::AllocV4) => {
                    let a = AllocV4::decode(&key.val).map_err(|e| format!("{}: {e}", key.pos))?;
                    self.alloc.insert(key.pos, a);
                }
                (BtreeId::Alloc, KeyType::Whiteout) => {
                    self.alloc.remove(&key.pos);
                }
                (BtreeId::Freespace, KeyType::Set) => {
                    if key.size == 0 {
                        return Err(format!("{}: freespace key of no buckets", key.pos));
                    }
                    self.freespace_keys.insert(key.pos, key.size);
                }
                (BtreeId::Freespace, KeyType::Whiteout) => {
                    self.freespace_keys.remove(&key.pos);
                }
                (BtreeId::NeedDiscard, KeyType::Set) => {
                    self.need_discard.insert(key.pos);
                }
                (BtreeId::NeedDiscard, KeyType::Whiteout) => {
                    self.need_discard.remove(&key.pos);
                }
                (btree, ty) => return Err(format!("unexpected {ty} key in {btree} at {}", key.pos)),
            }
        }
        Ok(())
    }

    /// Every bucket the freespace range keys cover; overlapping keys are an error.
    pub fn freespace(&self) -> Result<BTreeSet<Bpos>, String> {
        let mut out = BTreeSet::new();
        for (end, &size) in &self.freespace_keys {
            for b in end.offset - u64::from(size)..end.offset {
                if !out.insert(Bpos::new(end.inode, b, 0)) {
                    return Err(format!("freespace keys overlap at {}:{b}", end.inode));
                }
            }
        }
        Ok(out)
    }

    /// Takes the allocator's updates, applies them, and checks the invariants.
    pub fn sync(&mut self, alloc: &Allocator) -> Result<(), String> {
        self.apply(alloc.take_updates())?;
        alloc.check_invariants(&self.alloc, &self.freespace()?, &self.need_discard)
    }

    /// A model holding the full initial record of a fresh allocator.
    pub fn synced(alloc: &Allocator) -> Model {
        let mut m = Model::default();
        m.sync(alloc).unwrap();
        m
    }
}

/// Seeds for a random test: `BCSIM_SEED=n` replays one, otherwise `0..count`.
pub fn seeds(count: u64) -> Vec<u64> {
    match std::env::var("BCSIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => (0..count).collect(),
    }
}

/// Btree node allocation on `a` with `replicas` replicas on `target` (`""`: any device), through
/// live options as a mounted filesystem has them.
pub fn node_alloc(a: Arc<Allocator>, replicas: u8, target: &str) -> BtreeNodeAlloc {
    let mut opts = Options::default();
    opts.set(OptId::BtreeNodeSize, OptValue::U64(a.btree_node_size())).unwrap();
    opts.set(OptId::MetadataReplicas, OptValue::U64(u64::from(replicas))).unwrap();
    opts.set(OptId::MetadataTarget, OptValue::Str(target.to_owned())).unwrap();
    BtreeNodeAlloc::new(a, Arc::new(LiveOpts::new(opts))).unwrap()
}

/// Changes `metadata_replicas` on the live options `nodes` reads, as a running mount would.
pub fn set_replicas(nodes: &BtreeNodeAlloc, nr: u8) -> fs_core::error::Result<u64> {
    nodes.options().set(OptId::MetadataReplicas, OptValue::U64(u64::from(nr)))
}

/// Changes `metadata_target` on the live options `nodes` reads.
pub fn set_target(nodes: &BtreeNodeAlloc, target: &str) {
    nodes.options().set(OptId::MetadataTarget, OptValue::Str(target.to_owned())).unwrap();
}
