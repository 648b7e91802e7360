//! The btree against a `BTreeMap` model (inserts, overwrites, deletes, lookups, iteration both
//! ways, write-back and reload from disk), node corruption with replica fallback, swapped
//! nodes, header/pointer mismatches in both profiles, blocked allocation with no partial change,
//! and the overlay rules (journal wins; deletions hide btree keys).

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::bkey::{Bkey, ExtentPtr, KeyType};
use crate::bpos::{Bpos, BtreeId};
use crate::dev::{BlockDevice, MemDevice, SharedDevice};
use crate::error::{ErrCode, Result};
use crate::opts::Behavior;
use crate::sync::Mutex;

const NODE: u64 = 4096;
const DEV_BYTES: u64 = 64 << 20;
const MAGIC: u64 = 0x1234_5678;

/// A bump allocator over memory devices; it can be told to block, and counts what it handed out.
struct TestAlloc {
    state: Mutex<AllocState>,
    replicas: usize,
    nr_devs: usize,
}

#[derive(Default)]
struct AllocState {
    next: Vec<u64>,
    blocked: bool,
    live: usize,
}

impl TestAlloc {
    fn new(nr_devs: usize, replicas: usize) -> Arc<Self> {
        Arc::new(TestAlloc {
            state: Mutex::new(AllocState { next: vec![NODE; nr_devs], ..Default::default() }),
            replicas,
            nr_devs,
        })
    }
    fn block(&self, on: bool) {
        self.state.lock().blocked = on;
    }
}

impl NodeAllocator for TestAlloc {
    fn alloc_nodes(&self, nr: usize, _btree: BtreeId, _level: u8) -> crate::error::Result<Vec<NodeLocation>> {
        let mut s = self.state.lock();
        if s.blocked {
            return Err(crate::error::Error::code_only(ErrCode::BucketAllocBlocked));
        }
        let mut out = Vec::new();
        for _ in 0..nr {
            let mut ptrs = Vec::new();
            for dev in 0..self.replicas.min(self.nr_devs) {
                let off = s.next[dev];
                s.next[dev] += NODE;
                ptrs.push(ExtentPtr { dev: dev as u8, bucket_gen: 0, offset: off / 512 });
            }
            out.push(NodeLocation { ptrs });
        }
        s.live += nr;
        Ok(out)
    }
    fn release_unused(&self, nodes: Vec<NodeLocation>) -> Result<()> {
        self.state.lock().live -= nodes.len();
        Ok(())
    }
    fn free_node(&self, _ptrs: &[ExtentPtr]) -> Result<()> {
        self.state.lock().live -= 1;
        Ok(())
    }
}

struct Setup {
    devs: Vec<Arc<MemDevice>>,
    alloc: Arc<TestAlloc>,
}

impl Setup {
    fn new(nr_devs: usize, replicas: usize) -> Self {
        let devs = (0..nr_devs).map(|i| Arc::new(MemDevice::new(format!("mem{i}"), DEV_BYTES))).collect();
        Setup { devs, alloc: TestAlloc::new(nr_devs, replicas) }
    }
    fn open(&self, roots: Vec<Root>, behavior: Behavior) -> Btrees {
        let devices = self.devs.iter().map(|d| Some(d.clone() as SharedDevice)).collect();
        let cfg = BtreeConfig { behavior, cache_nodes: 32, seq_seed: None };
        Btrees::new(NodeIo::new(devices, MAGIC, NODE), self.alloc.clone(), roots, cfg)
    }
}

fn key(i: u64, v: u64) -> Bkey {
    Bkey::new(Bpos::new(i / 7, i, 0), KeyType::Set, v.to_le_bytes().repeat((v % 3) as usize + 1))
}

fn contents(t: &mut Btrees, btree: BtreeId) -> Vec<Bkey> {
    let mut it = t.iter(btree, Bpos::MIN);
    let mut out = Vec::new();
    while let Some(k) = it.next(t, None).unwrap() {
        out.push(k);
    }
    out
}

fn contents_rev(t: &mut Btrees, btree: BtreeId) -> Vec<Bkey> {
    let mut it = t.iter(btree, Bpos::MAX);
    let mut out = Vec::new();
    while let Some(k) = it.prev(t, None).unwrap() {
        out.push(k);
    }
    out.reverse();
    out
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u64, u64),
    Delete(u64),
    Get(u64),
    WriteBack,
    Reload,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u64..3000, any::<u64>()).prop_map(|(k, v)| Op::Insert(k, v)),
        3 => (0u64..3000).prop_map(Op::Delete),
        2 => (0u64..3000).prop_map(Op::Get),
        1 => Just(Op::WriteBack),
        1 => Just(Op::Reload),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The btree holds exactly what a BTreeMap given the same operations holds, forwards and
    /// backwards, across write-back and reload from disk with an empty cache.
    #[test]
    fn btree_matches_model(ops in prop::collection::vec(arb_op(), 1..1500)) {
        let s = Setup::new(2, 2);
        let mut t = s.open(Vec::new(), Behavior::Fixed);
        let mut model: BTreeMap<Bpos, Bkey> = BTreeMap::new();
        for (seq, op) in ops.iter().enumerate() {
            match op {
                Op::Insert(k, v) => {
                    let k = key(*k, *v);
                    t.insert(BtreeId::Extents, k.clone(), seq as u64).unwrap();
                    model.insert(k.pos, k);
                }
                Op::Delete(k) => {
                    let pos = key(*k, 0).pos;
                    t.delete(BtreeId::Extents, pos, seq as u64).unwrap();
                    model.remove(&pos);
                }
                Op::Get(k) => {
                    let pos = key(*k, 0).pos;
                    prop_assert_eq!(t.get(BtreeId::Extents, pos).unwrap(), model.get(&pos).cloned());
                }
                Op::WriteBack => {
                    t.write_dirty().unwrap();
                    prop_assert_eq!(t.dirty_nodes(), 0);
                }
                Op::Reload => {
                    t.write_dirty().unwrap();
                    let roots = t.roots();
                    t = s.open(roots, Behavior::Fixed);
                }
            }
        }
        let want: Vec<Bkey> = model.values().cloned().collect();
        prop_assert_eq!(&contents(&mut t, BtreeId::Extents), &want);
        prop_assert_eq!(&contents_rev(&mut t, BtreeId::Extents), &want);
        t.write_dirty().unwrap();
        let roots = t.roots();
        let mut t = s.open(roots, Behavior::Fixed);
        prop_assert_eq!(contents(&mut t, BtreeId::Extents), want);
    }
}

/// Enough keys in small nodes grow the tree to depth 3 or more; every node's keys lie inside
/// its range and children tile their parent's range exactly.
#[test]
fn splits_reach_depth_three_and_topology_holds() {
    let s = Setup::new(1, 1);
    let mut t = s.open(Vec::new(), Behavior::Fixed);
    let mut rng = crate::rng::Rng::new(42);
    for i in 0..20_000u64 {
        t.insert(BtreeId::Inodes, key(rng.below(1 << 30), i), i).unwrap();
    }
    t.write_dirty().unwrap();
    let infos = t.node_infos(BtreeId::Inodes).unwrap();
    let root_level = infos[0].level;
    assert!(root_level >= 2, "root level {root_level}: depth below 3");
    for level in 0..=root_level {
        let mut at_level: Vec<_> = infos.iter().filter(|n| n.level == level).collect();
        at_level.sort_by_key(|n| n.min_key);
        assert_eq!(at_level.first().unwrap().min_key, Bpos::MIN, "level {level}");
        assert_eq!(at_level.last().unwrap().max_key, Bpos::MAX, "level {level}");
        for w in at_level.windows(2) {
            assert_eq!(w[0].max_key.successor(), w[1].min_key, "level {level}: gap or overlap");
        }
    }
}

/// Sequential inserts leave full nodes behind: the node count stays near the minimum.
#[test]
fn sequential_inserts_fill_nodes() {
    let s = Setup::new(1, 1);
    let mut t = s.open(Vec::new(), Behavior::Fixed);
    for i in 0..10_000u64 {
        t.insert(BtreeId::Extents, Bkey::new(Bpos::new(0, i, 0), KeyType::Set, vec![0u8; 8]), 1).unwrap();
    }
    let infos = t.node_infos(BtreeId::Extents).unwrap();
    let leaves = infos.iter().filter(|n| n.level == 0).count();
    let per_leaf = (NODE as usize - 512) * 2 / 3 / 40;
    assert!(leaves <= 10_000 / per_leaf + 2, "{leaves} leaves for {per_leaf} keys per leaf");
}

fn written_tree(s: &Setup) -> (Vec<Root>, Vec<Bkey>) {
    let mut t = s.open(Vec::new(), Behavior::Fixed);
    for i in 0..2000 {
        t.insert(BtreeId::Alloc, key(i, i), 1).unwrap();
    }
    t.write_dirty().unwrap();
    let all = contents(&mut t, BtreeId::Alloc);
    (t.roots(), all)
}

fn leaf_ptrs(s: &Setup, roots: &[Root]) -> Vec<Vec<ExtentPtr>> {
    let mut t = s.open(roots.to_vec(), Behavior::Fixed);
    t.node_infos(BtreeId::Alloc).unwrap().into_iter().filter(|n| n.level == 0).map(|n| n.ptrs).collect()
}

fn flip(dev: &MemDevice, offset: u64) {
    let mut b = [0u8];
    dev.read_at(&mut b, offset).unwrap();
    b[0] ^= 0x40;
    dev.write_at(&b, offset).unwrap();
}

/// A corrupt replica is reported and the other replica serves the read; with every replica
/// corrupt the read is a typed error with btree, level and position, never a panic.
#[test]
fn corrupt_replica_falls_back_then_fails_typed() {
    let s = Setup::new(2, 2);
    let (roots, all) = written_tree(&s);
    let leaf = leaf_ptrs(&s, &roots)[1].clone();
    flip(&s.devs[leaf[0].dev as usize], leaf[0].byte_offset() + 700);
    let mut t = s.open(roots.clone(), Behavior::Fixed);
    assert!(contents(&mut t, BtreeId::Alloc) == all, "keys lost or changed reading past a bad replica");
    let log = t.take_log();
    assert!(
        log.iter().any(|l| l.contains("read from another replica") && l.contains("bset_bad_csum")),
        "{log:?}"
    );

    flip(&s.devs[leaf[1].dev as usize], leaf[1].byte_offset() + 700);
    let mut t = s.open(roots, Behavior::Fixed);
    let mut it = t.iter(BtreeId::Alloc, Bpos::MIN);
    let err = loop {
        match it.next(&mut t, None) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("iteration succeeded over a node with no good replica"),
            Err(e) => break e,
        }
    };
    assert!(err.matches(ErrCode::Eio), "{err}");
    assert_eq!(err.context().btree, Some(BtreeId::Alloc));
    assert_eq!(err.context().level, Some(0));
    assert!(err.to_string().contains("all 2 replicas bad"), "{err}");
}

/// fsck's salvage: a leaf, an interior node or the root no replica of which reads is replaced
/// by an empty node over the same range. Exactly the keys under it are lost, the tree takes
/// inserts there again, and after write-back (the empty node written at a new place, the old
/// place freed) it reads back from disk with the same keys.
#[test]
fn unreadable_nodes_are_dropped_and_the_rest_kept() {
    for level in [0u8, 1, 2] {
        let s = Setup::new(1, 1);
        let (roots, all) = written_tree(&s);
        let infos = s.open(roots.clone(), Behavior::Fixed).node_infos(BtreeId::Alloc).unwrap();
        let max_level = infos.iter().map(|n| n.level).max().unwrap();
        assert!(max_level >= 2, "the tree must reach level 2 for this test");
        let victim =
            infos.iter().filter(|n| n.level == level.min(max_level)).nth(1).or(infos.first()).unwrap();
        let (lo, hi) = (victim.min_key, victim.max_key);
        let p = &victim.ptrs[0];
        s.devs[p.dev as usize].write_at(&[0u8; 512], p.byte_offset()).unwrap();

        let mut t = s.open(roots, Behavior::Fixed);
        let live_before = s.alloc.state.lock().live;
        let lost = t.drop_unreadable(BtreeId::Alloc).unwrap();
        assert_eq!(lost.len(), 1, "level {level}: {lost:?}");
        assert_eq!((lost[0].min_key, lost[0].max_key, lost[0].level), (lo, hi, victim.level));
        assert!(lost[0].error.matches(ErrCode::Eio), "{}", lost[0].error);
        let kept: Vec<Bkey> = all.iter().filter(|k| k.pos < lo || k.pos > hi).cloned().collect();
        assert!(
            contents(&mut t, BtreeId::Alloc) == kept,
            "level {level}: not exactly the lost range dropped"
        );

        let k = key(1, 99);
        t.insert(BtreeId::Alloc, Bkey::new(lo, k.ty, k.val.clone()), 2).unwrap();
        t.write_dirty().unwrap();
        assert!(s.alloc.state.lock().live >= live_before, "level {level}: freed more than it allocated");
        let mut expect = kept;
        expect.push(Bkey::new(lo, k.ty, k.val));
        expect.sort_by_key(|k| k.pos);
        let mut again = s.open(t.roots(), Behavior::Fixed);
        assert!(
            contents(&mut again, BtreeId::Alloc) == expect,
            "level {level}: not as salvaged after reload"
        );
        assert!(again.drop_unreadable(BtreeId::Alloc).unwrap().is_empty());
    }
}

/// Two nodes swapped on disk: the pointer's seq catches it ("got wrong btree node").
#[test]
fn swapped_nodes_are_detected() {
    let s = Setup::new(1, 1);
    let (roots, _) = written_tree(&s);
    let leaves = leaf_ptrs(&s, &roots);
    let (a, b) = (leaves[0][0], leaves[1][0]);
    let dev = &s.devs[0];
    let mut na = vec![0u8; NODE as usize];
    let mut nb = vec![0u8; NODE as usize];
    dev.read_at(&mut na, a.byte_offset()).unwrap();
    dev.read_at(&mut nb, b.byte_offset()).unwrap();
    dev.write_at(&nb, a.byte_offset()).unwrap();
    dev.write_at(&na, b.byte_offset()).unwrap();
    let mut t = s.open(roots, Behavior::Fixed);
    let err = t.first_from(BtreeId::Alloc, Bpos::MIN).unwrap_err();
    assert_eq!(err.code(), ErrCode::BtreeNodeBadSeq, "{err}");
    assert!(err.to_string().contains("got wrong btree node"), "{err}");
}

/// A cached node whose header stops matching its pointer: v1.37.5 and v1.39 log the topology
/// error and use the node; the fixed profile refuses with btree_need_topology_repair.
#[test]
fn header_mismatch_on_cached_node_per_profile() {
    for behavior in [Behavior::V1_37_5, Behavior::V1_39, Behavior::Fixed] {
        let s = Setup::new(1, 1);
        let (roots, all) = written_tree(&s);
        let mut t = s.open(roots, behavior);
        let pos = all[500].pos;
        assert!(t.get(BtreeId::Alloc, pos).unwrap().is_some());
        assert!(t.corrupt_cached_header(BtreeId::Alloc, 0, pos).unwrap());
        let r = t.get(BtreeId::Alloc, pos);
        assert_eq!(t.topology_errors(), 1, "{behavior:?}");
        let log = t.take_log();
        assert!(log[0].starts_with("btree node header doesn't match ptr: btree=alloc level=0"), "{log:?}");
        match behavior {
            Behavior::V1_37_5 | Behavior::V1_39 => assert!(r.unwrap().is_some()),
            Behavior::Fixed => {
                assert_eq!(r.unwrap_err().code(), ErrCode::BtreeNeedTopologyRepair);
                assert!(
                    log.iter().any(|l| l.starts_with("check_topology scheduled: btree alloc")),
                    "{log:?}"
                );
            }
        }
        if behavior != Behavior::Fixed {
            assert!(!log.iter().any(|l| l.contains("check_topology scheduled")), "{log:?}");
        }
        // With header checks off (before check_allocations) bcachefs checks nothing; the fixed
        // profile still compares the header with the pointer of the lookup.
        t.set_check_headers(false);
        assert_eq!(t.get(BtreeId::Alloc, pos).is_ok(), behavior != Behavior::Fixed, "{behavior:?}");
    }
}

/// Every key of `btree` as a whole-btree walk (`for_each_key`) yields them.
fn walked(t: &mut Btrees, btree: BtreeId) -> Result<Vec<Bpos>> {
    let mut out = Vec::new();
    t.for_each_key(btree, None, |k| {
        out.push(k.pos);
        Ok(())
    })?;
    Ok(out)
}

/// A leaf whose header changes in memory after a correct read (#1107's bad headers): bcachefs
/// leaves a leaf by the node's own key (`b->key`), which the change does not touch, so a walk in
/// v1.37.5 and v1.39 still yields every key, the mismatch logged; it must not stop at the
/// changed header's max_key. The fixed profile refuses the node.
#[test]
fn walk_leaves_a_leaf_by_its_key_not_its_header() {
    for behavior in [Behavior::V1_37_5, Behavior::V1_39, Behavior::Fixed] {
        let s = Setup::new(1, 1);
        let (roots, all) = written_tree(&s);
        let want: Vec<Bpos> = all.iter().map(|k| k.pos).collect();
        let mut t = s.open(roots, behavior);
        assert_eq!(walked(&mut t, BtreeId::Alloc).unwrap(), want);
        // A leaf in the middle of the btree, with another after it.
        assert!(t.corrupt_cached_header(BtreeId::Alloc, 0, all[500].pos).unwrap());
        let r = walked(&mut t, BtreeId::Alloc);
        let log = t.take_log();
        assert!(
            log.iter().any(|l| l.starts_with("btree node header doesn't match ptr: btree=alloc level=0")),
            "{log:?}"
        );
        match behavior {
            Behavior::V1_37_5 | Behavior::V1_39 => assert_eq!(r.unwrap(), want, "{behavior:?}"),
            Behavior::Fixed => assert_eq!(r.unwrap_err().code(), ErrCode::BtreeNeedTopologyRepair),
        }
    }
}

/// The alloc btree of [`written_tree`] with the pointer of its second leaf given the first
/// leaf's seq and location, its own range kept: a bset appended to the interior node, as the
/// #1107 image set has it. Returns the roots, every key, the first leaf (reached twice) and the
/// leaf the pointer lost.
fn with_duplicated_pointer(s: &Setup) -> (Vec<Root>, Vec<Bkey>, NodeInfo, NodeInfo) {
    use crate::btree::node::duplicated_pointer_bset;
    let (roots, all) = written_tree(s);
    let mut t = s.open(roots.clone(), Behavior::Fixed);
    let infos = t.node_infos(BtreeId::Alloc).unwrap();
    let parent = infos.iter().find(|n| n.level == 1).unwrap().clone();
    let leaves: Vec<_> = infos.iter().filter(|n| n.level == 0).cloned().collect();
    assert!(leaves.len() >= 3, "{} leaves", leaves.len());
    let (left, victim) = (&leaves[0], &leaves[1]);
    let bset = duplicated_pointer_bset(&parent, left, victim);
    let at = u64::from(parent.sectors_written) * crate::bkey::ptr::SECTOR_BYTES;
    s.devs[0].write_at(&bset, parent.ptrs[0].byte_offset() + at).unwrap();
    (roots, all, left.clone(), victim.clone())
}

/// A pointer carrying its left neighbour's seq, its own range kept, reaches the neighbour once
/// that is cached through its own pointer (here by a point lookup, which does not read ahead):
/// the node cache is indexed by seq. bcachefs compares the header with the node's own key,
/// which matches, so v1.37.5 and v1.39 log nothing, with header checks on or off; their walk
/// then cannot leave the neighbour forward (its key ends before the range) and stops typed,
/// naming the leaf it reached, where bcachefs's iterator would loop. The fixed profile compares the header with the lookup's pointer too, at any
/// time, and refuses the node with the header line.
#[test]
fn duplicated_pointer_to_a_cached_neighbour_per_profile() {
    let s = Setup::new(1, 1);
    let (roots, _, left, victim) = with_duplicated_pointer(&s);

    for behavior in [Behavior::V1_37_5, Behavior::V1_39, Behavior::Fixed] {
        for check_headers in [false, true] {
            let mut t = s.open(roots.clone(), behavior);
            t.set_check_headers(check_headers);
            t.get(BtreeId::Alloc, left.min_key).unwrap();
            let e = walked(&mut t, BtreeId::Alloc).unwrap_err();
            assert_eq!(e.code(), ErrCode::BtreeNeedTopologyRepair, "{e}");
            let log = t.take_log();
            let case = format!("{behavior:?} check_headers={check_headers}: {e} {log:?}");
            match behavior {
                Behavior::V1_37_5 | Behavior::V1_39 => {
                    assert_eq!(t.topology_errors(), 0, "{case}");
                    assert!(log.is_empty(), "{case}");
                    let reached = format!(
                        "the leaf reached for {} is {}..{}",
                        victim.min_key, left.min_key, left.max_key
                    );
                    assert!(e.to_string().contains(&reached), "{case}");
                }
                Behavior::Fixed => {
                    assert_eq!(t.topology_errors(), 1, "{case}");
                    assert!(e.to_string().contains("header doesn't match ptr"), "{case}");
                    assert!(
                        log.iter().any(|l| l.starts_with("check_topology scheduled: btree alloc")),
                        "{case}"
                    );
                }
            }
        }
    }
}

/// A write of a node whose header no longer matches its own key (v1.37.5 uses such a node)
/// updates the parent's pointer at the node's own key, as bcachefs does: the parent keeps one
/// slot per leaf, and the tree read back from disk holds every key, the new one included.
#[test]
fn a_written_node_updates_the_pointer_at_its_own_key() {
    let s = Setup::new(1, 1);
    let (roots, all) = written_tree(&s);
    let mut t = s.open(roots, Behavior::V1_37_5);
    let leaves =
        |t: &mut Btrees| t.node_infos(BtreeId::Alloc).unwrap().iter().filter(|n| n.level == 0).count();
    let before = leaves(&mut t);
    let pos = all[500].pos;
    assert!(t.get(BtreeId::Alloc, pos).unwrap().is_some());
    assert!(t.corrupt_cached_header(BtreeId::Alloc, 0, pos).unwrap());
    let new = Bkey { val: vec![7; 8].into(), ..all[500].clone() };
    t.insert(BtreeId::Alloc, new.clone(), 2).unwrap();
    t.write_dirty().unwrap();
    assert_eq!(leaves(&mut t), before, "the parent gained a slot");
    let mut want = all.clone();
    want[500] = new;
    let mut reread = s.open(t.roots(), Behavior::V1_37_5);
    assert_eq!(contents(&mut reread, BtreeId::Alloc), want);
}

/// A walk from a cold cache reads ahead before it goes down to the first leaf: the duplicated
/// pointer, which carries the first leaf's seq, is read first and fails (the node it reaches
/// begins at POS_MIN), and that failure is kept under the seq. The first leaf's own pointer
/// then gets `btree_node_read_err_cached`, in every profile, and the alloc btree is flagged as
/// having lost data, once. check_topology's read of every pointer forgets the failure: the
/// first leaf reads through its own pointer, and only the duplicate is dropped.
#[test]
fn read_ahead_through_a_duplicated_pointer_fails_the_seq() {
    let s = Setup::new(1, 1);
    let (roots, _, left, victim) = with_duplicated_pointer(&s);
    for behavior in [Behavior::V1_37_5, Behavior::V1_39, Behavior::Fixed] {
        let mut t = s.open(roots.clone(), behavior);
        let e = walked(&mut t, BtreeId::Alloc).unwrap_err();
        let log = t.take_log();
        let case = format!("{behavior:?}: {e} {log:?}");
        assert_eq!(e.code(), ErrCode::BtreeNodeReadErrCached, "{case}");
        assert!(e.to_string().contains("doesn't match ptr"), "{case}");
        let read_error =
            format!("btree node read error at btree alloc level 0 {}..{}", victim.min_key, victim.max_key);
        assert!(log.first().is_some_and(|l| l.starts_with(&read_error)), "{case}");
        assert_eq!(log.get(1).map(String::as_str), Some("flagging btree alloc lost data"), "{case}");
        assert_eq!(t.take_lost_data().into_iter().collect::<Vec<_>>(), [BtreeId::Alloc], "{case}");
        // Again: the failure is cached, nothing is read or flagged anew.
        assert_eq!(walked(&mut t, BtreeId::Alloc).unwrap_err().code(), ErrCode::BtreeNodeReadErrCached);
        assert!(t.take_log().is_empty() && t.take_lost_data().is_empty(), "{case}");
        let lost = t.drop_unreadable(BtreeId::Alloc).unwrap();
        let dropped: Vec<_> = lost.iter().map(|l| (l.min_key, l.max_key)).collect();
        assert_eq!(dropped, [(victim.min_key, victim.max_key)], "{case}");
        assert!(t.get(BtreeId::Alloc, left.min_key).is_ok(), "{case}");
    }
}

/// An insert that needs new nodes while the allocator is blocked returns operation_blocked and
/// leaves the tree exactly as it was; after unblocking the same insert succeeds.
#[test]
fn blocked_allocation_changes_nothing() {
    let s = Setup::new(1, 1);
    let mut t = s.open(Vec::new(), Behavior::Fixed);
    let mut i = 0;
    // Fill until the next insert must split.
    loop {
        s.alloc.block(true);
        let r = t.insert(BtreeId::Extents, key(i, i), 1);
        s.alloc.block(false);
        match r {
            Ok(()) => i += 1,
            Err(e) => {
                assert!(e.matches(ErrCode::OperationBlocked), "{e}");
                break;
            }
        }
        assert!(i < 100_000, "never needed a new node");
    }
    let before = contents(&mut t, BtreeId::Extents);
    let nodes_before = t.node_infos(BtreeId::Extents).unwrap().len();
    assert_eq!(before.len() as u64, i, "the blocked insert left a key behind");
    t.insert(BtreeId::Extents, key(i, i), 1).unwrap();
    assert_eq!(contents(&mut t, BtreeId::Extents).len() as u64, i + 1);
    assert!(t.node_infos(BtreeId::Extents).unwrap().len() > nodes_before);
}

/// An insert refused for want of nodes changes nothing, in an empty btree (no root leaf) and
/// at a split, and the same insert succeeds once the allocator has nodes again.
#[test]
fn blocked_insert_changes_nothing() {
    let s = Setup::new(1, 1);
    let mut t = s.open(Vec::new(), Behavior::Fixed);
    s.alloc.block(true);
    let e = t.insert(BtreeId::Extents, key(0, 0), 1).unwrap_err();
    assert!(e.matches(ErrCode::OperationBlocked), "{e}");
    assert!(contents(&mut t, BtreeId::Extents).is_empty());
    s.alloc.block(false);
    t.insert(BtreeId::Extents, key(0, 0), 1).unwrap();
    s.alloc.block(true);
    let mut i = 1;
    let refused = loop {
        match t.insert_ref(BtreeId::Extents, key(i, i).as_ref(), 1) {
            Ok(()) => i += 1,
            Err(e) => break e,
        }
        assert!(i < 100_000, "never needed a new node");
    };
    assert!(refused.matches(ErrCode::OperationBlocked), "{refused}");
    assert_eq!(contents(&mut t, BtreeId::Extents).len() as u64, i);
    s.alloc.block(false);
    t.insert_ref(BtreeId::Extents, key(i, i).as_ref(), 1).unwrap();
    assert_eq!(contents(&mut t, BtreeId::Extents).len() as u64, i + 1);
}

/// A written leaf whose next bset would not fit reserves the node for its rewrite in the
/// insert that fills it, so that insert can be refused (and changes nothing); a deletion that
/// finds nothing reserves nothing; what an aborted transaction puts back never asks the
/// allocator, so an undo cannot be refused half-way.
#[test]
fn a_filled_written_leaf_reserves_its_rewrite_but_undo_never_allocates() {
    let s = Setup::new(1, 1);
    let mut t = s.open(Vec::new(), Behavior::Fixed);
    t.insert(BtreeId::Extents, key(0, 0), 1).unwrap();
    t.write_dirty().unwrap();
    s.alloc.block(true);
    // Overwrites of one key: the leaf's keys stay the same size, its unwritten bsets grow.
    let mut v = 1;
    let refused = loop {
        match t.insert(BtreeId::Extents, key(0, v), 1) {
            Ok(()) => v += 1,
            Err(e) => break e,
        }
        assert!(v < 100_000, "a written leaf never reserved its rewrite");
    };
    assert!(refused.matches(ErrCode::OperationBlocked), "{refused}");
    assert_eq!(contents(&mut t, BtreeId::Extents), vec![key(0, v - 1)], "the refused insert left its key");
    // Deleting keys the leaf does not hold changes nothing, so it neither fills the leaf nor
    // reserves a node (which would stay with a leaf that stays clean): never refused.
    for i in 1..200 {
        t.delete(BtreeId::Extents, key(i, 0).pos, 1).unwrap();
    }
    t.insert_undo(BtreeId::Extents, key(0, v - 2), 1).unwrap();
    t.insert_undo(BtreeId::Extents, Bkey::whiteout(key(0, 0).pos), 1).unwrap();
    assert!(contents(&mut t, BtreeId::Extents).is_empty());
    s.alloc.block(false);
    t.insert(BtreeId::Extents, key(0, v), 1).unwrap();
    t.write_dirty().unwrap();
    assert_eq!(contents(&mut t, BtreeId::Extents), vec![key(0, v)]);
}

/// Lookups and inserts in key order reuse the last leaf a descent found; across splits,
/// write-back, eviction and direction changes every answer must still be the model's.
#[test]
fn lookups_in_key_order_match_model() {
    let s = Setup::new(2, 2);
    let mut t = s.open(Vec::new(), Behavior::Fixed);
    let mut model: BTreeMap<Bpos, Bkey> = BTreeMap::new();
    let mut rng = crate::rng::Rng::new(7);
    let ascending = 0..6_000u64;
    let descending = (6_000..12_000u64).rev();
    let random: Vec<u64> = (0..6_000).map(|_| rng.below(12_000)).collect();
    for (n, i) in ascending.chain(descending).chain(random).enumerate() {
        let k = key(i, n as u64);
        t.insert(BtreeId::Extents, k.clone(), 1).unwrap();
        model.insert(k.pos, k);
        for probe in [i, i.saturating_sub(1), i + 1, i / 2, rng.below(12_000)] {
            let pos = key(probe, 0).pos;
            assert_eq!(
                t.get(BtreeId::Extents, pos).unwrap(),
                model.get(&pos).cloned(),
                "after {n} inserts, at {probe}"
            );
        }
        if n % 1_000 == 999 {
            t.write_dirty().unwrap();
        }
        if n % 2_500 == 2_499 {
            let gone = key(rng.below(12_000), 0).pos;
            t.delete(BtreeId::Extents, gone, 1).unwrap();
            model.remove(&gone);
        }
    }
    let want: Vec<Bkey> = model.values().cloned().collect();
    assert_eq!(contents(&mut t, BtreeId::Extents), want);
    assert_eq!(contents_rev(&mut t, BtreeId::Extents), want);
}

struct MapOverlay(BTreeMap<Bpos, Bkey>);

use crate::bkey::KeyRef;

impl KeyOverlay for MapOverlay {
    fn first_from(&self, _btree: BtreeId, pos: Bpos) -> Option<Bkey> {
        self.0.range(pos..).next().map(|(_, k)| k.clone())
    }
    fn last_until(&self, _btree: BtreeId, pos: Bpos) -> Option<Bkey> {
        self.0.range(..=pos).next_back().map(|(_, k)| k.clone())
    }
    fn range<'a>(
        &'a self,
        _btree: BtreeId,
        from: Bpos,
        to: Bpos,
    ) -> Box<dyn Iterator<Item = KeyRef<'a>> + 'a> {
        Box::new(self.0.range(from..=to).map(|(_, k)| k.as_ref()))
    }
}

/// Through an overlay the journal's key wins at its position, a journal deletion hides the
/// btree key (peek skips it, peek_slot shows it deleted), and new journal keys appear.
#[test]
fn overlay_rules() {
    let s = Setup::new(1, 1);
    let mut t = s.open(Vec::new(), Behavior::Fixed);
    for i in 1..=5u64 {
        t.insert(BtreeId::Alloc, Bkey::new(Bpos::new(0, i * 10, 0), KeyType::Set, vec![1; 8]), 1).unwrap();
    }
    let mut ov = BTreeMap::new();
    ov.insert(Bpos::new(0, 20, 0), Bkey::new(Bpos::new(0, 20, 0), KeyType::Set, vec![2; 8]));
    ov.insert(Bpos::new(0, 30, 0), Bkey::deleted(Bpos::new(0, 30, 0)));
    ov.insert(Bpos::new(0, 35, 0), Bkey::new(Bpos::new(0, 35, 0), KeyType::Set, vec![3; 8]));
    let ov = MapOverlay(ov);
    let o: Option<&dyn KeyOverlay> = Some(&ov);

    let mut it = t.iter(BtreeId::Alloc, Bpos::MIN);
    let mut seen = Vec::new();
    while let Some(k) = it.next(&mut t, o).unwrap() {
        seen.push((k.pos.offset, k.val[0]));
    }
    assert_eq!(seen, vec![(10, 1), (20, 2), (35, 3), (40, 1), (50, 1)]);
    assert_eq!(t.peek(BtreeId::Alloc, Bpos::new(0, 26, 0), o).unwrap().unwrap().pos.offset, 35);
    assert_eq!(t.prev(BtreeId::Alloc, Bpos::new(0, 34, 0), o).unwrap().unwrap().pos.offset, 20);
    assert!(t.peek_slot(BtreeId::Alloc, Bpos::new(0, 30, 0), o).unwrap().is_deleted());
    assert!(!t.peek_slot(BtreeId::Alloc, Bpos::new(0, 30, 0), None).unwrap().is_deleted());
    assert!(t.peek_slot(BtreeId::Alloc, Bpos::new(0, 31, 0), o).unwrap().is_deleted());
}

/// Regression (shrunk by proptest): a key at POS_MIN made reverse iteration repeat it forever,
/// because POS_MIN's predecessor is POS_MIN.
#[test]
fn reverse_iteration_stops_at_pos_min() {
    let s = Setup::new(1, 1);
    let mut t = s.open(Vec::new(), Behavior::Fixed);
    t.insert(BtreeId::Extents, Bkey::new(Bpos::MIN, KeyType::Set, vec![1; 8]), 1).unwrap();
    t.insert(BtreeId::Extents, Bkey::new(Bpos::new(0, 5, 0), KeyType::Set, vec![2; 8]), 1).unwrap();
    assert_eq!(contents_rev(&mut t, BtreeId::Extents).len(), 2);
    let mut it = t.iter(BtreeId::Extents, Bpos::MIN);
    assert!(it.prev(&mut t, None).unwrap().is_some());
    assert!(it.prev(&mut t, None).unwrap().is_none());
    assert!(it.prev(&mut t, None).unwrap().is_none());
}

/// A leaf of 20 keys written whole (header and one bset) into a node-sized image, and what its
/// pointer says of it.
fn leaf_image() -> (Vec<u8>, crate::btree::node::Expected) {
    use crate::btree::node::{Expected, KeyVal, Node, NodeHeader};
    let hdr = NodeHeader {
        btree: BtreeId::Alloc,
        level: 0,
        min_key: Bpos::new(1, 0, 0),
        max_key: Bpos::new(9, 0, 0),
        seq: 77,
    };
    let mut n = Node::new(hdr, Vec::new());
    if let Some(m) = n.leaf_mut() {
        for i in 0..20 {
            let (p, kv) = KeyVal::from_key(Bkey::new(Bpos::new(2, i, 0), KeyType::Set, vec![1; 8]), true);
            m.insert(p, kv);
        }
    }
    let mut img = n.encode_header(MAGIC);
    img.extend_from_slice(&n.encode_bset(true));
    let sectors = (img.len() / 512) as u32;
    img.resize(NODE as usize, 0);
    let good = Expected {
        btree: hdr.btree,
        level: 0,
        min_key: hdr.min_key,
        max_key: hdr.max_key,
        seq: 77,
        sectors_written: sectors,
    };
    (img, good)
}

/// Every node validation failure is its own typed error carrying btree, level and position:
/// bad magic, wrong seq, btree, level, min_key, max_key, a bad bset checksum inside the written
/// range, and fewer sectors than the pointer says.
#[test]
fn node_validation_errors_are_typed() {
    use crate::btree::node::{Expected, decode_node};
    let (img, good) = leaf_image();
    let sectors = good.sectors_written;
    let none = |_: u64| false;
    assert_eq!(decode_node(&img, MAGIC, &good, &none).unwrap().nr_keys(), 20);

    let cases = [
        (Expected { seq: 78, ..good }, ErrCode::BtreeNodeBadSeq),
        (Expected { btree: BtreeId::Inodes, ..good }, ErrCode::BtreeNodeBadBtree),
        (Expected { level: 1, ..good }, ErrCode::BtreeNodeBadLevel),
        (Expected { min_key: Bpos::MIN, ..good }, ErrCode::BtreeNodeBadMinKey),
        (Expected { max_key: Bpos::MAX, ..good }, ErrCode::BtreeNodeBadMaxKey),
        (Expected { sectors_written: sectors + 3, ..good }, ErrCode::BtreeNodeDataMissing),
    ];
    for (exp, code) in cases {
        let e = decode_node(&img, MAGIC, &exp, &none).unwrap_err();
        assert_eq!(e.code(), code, "{e}");
        assert_eq!(e.context().btree, Some(exp.btree), "{e}");
        assert_eq!(e.context().level, Some(exp.level), "{e}");
        assert_eq!(e.context().pos, Some(exp.max_key), "{e}");
    }
    assert_eq!(decode_node(&img, MAGIC ^ 1, &good, &none).unwrap_err().code(), ErrCode::BtreeNodeBadMagic);
    let mut bad = img.clone();
    bad[512 + 100] ^= 1;
    let e = decode_node(&bad, MAGIC, &good, &none).unwrap_err();
    assert_eq!(e.code(), ErrCode::BsetBadCsum);
    assert!(e.context().csum.is_some_and(|c| c.got != c.expected), "{e}");
    // A blacklisted journal seq drops the bset's keys.
    assert_eq!(decode_node(&img, MAGIC, &good, &|_| true).unwrap().nr_keys(), 0);
}

/// A node header of another format version is refused as such, with the node's btree, level
/// and position, before any other field is believed; the header checksum covers the version,
/// so a version changed without re-checksumming is a checksum error instead.
#[test]
fn node_of_another_version_is_refused() {
    use crate::btree::node::decode_node;
    const VERSION_AT: usize = 28; // the on-disk offset, deliberately not the code's constant
    let (img, good) = leaf_image();
    let none = |_: u64| false;
    assert!(decode_node(&img, MAGIC, &good, &none).is_ok());
    for version in [0u32, 1, 3, u32::MAX] {
        let mut other = img.clone();
        other[VERSION_AT..VERSION_AT + 4].copy_from_slice(&version.to_le_bytes());
        let e = decode_node(&other, MAGIC, &good, &none).unwrap_err();
        assert_eq!(e.code(), ErrCode::BtreeNodeReadErr, "{e}");
        assert!(e.context().csum.is_some(), "{e}");

        let csum = crc32c::crc32c(&other[4..88]);
        other[0..4].copy_from_slice(&csum.to_le_bytes());
        // A pointer that disagrees with the header too: the version is checked first.
        for exp in [good, crate::btree::node::Expected { seq: good.seq + 1, level: 2, ..good }] {
            let e = decode_node(&other, MAGIC, &exp, &none).unwrap_err();
            assert_eq!(e.code(), ErrCode::BtreeNodeUnsupportedVersion, "{e}");
            assert!(e.matches(ErrCode::BtreeNodeReadErr), "{e}");
            assert!(e.to_string().contains(&format!("version {version}")), "{e}");
            assert_eq!(e.context().btree, Some(exp.btree), "{e}");
            assert_eq!(e.context().level, Some(exp.level), "{e}");
            assert_eq!(e.context().pos, Some(exp.max_key), "{e}");
        }
    }
}

proptest! {
    /// `for_each_key` yields exactly what stepping a `BtreeIter` through the same overlay yields,
    /// in a tree of many leaves (small nodes) with whiteouts, written and unwritten entries, and
    /// an overlay that adds keys, replaces keys and deletes keys (also beyond the btree's ends).
    #[test]
    fn for_each_key_matches_iteration(
        tree_keys in prop::collection::vec(0..3000u64, 0..1500),
        deletes in prop::collection::vec(0..3000u64, 0..200),
        overlay in prop::collection::vec((0..3200u64, any::<bool>()), 0..400),
        write_back in any::<bool>(),
    ) {
        let s = Setup::new(1, 1);
        let mut t = s.open(Vec::new(), Behavior::Fixed);
        for &i in &tree_keys {
            t.insert(BtreeId::Extents, key(i, i + 1), 1).unwrap();
        }
        if write_back {
            t.write_dirty().unwrap();
        }
        for &i in &deletes {
            t.delete(BtreeId::Extents, key(i, 0).pos, 2).unwrap();
        }
        let ov = MapOverlay(
            overlay
                .iter()
                .map(|&(i, deleted)| {
                    let k = if deleted { Bkey::whiteout(key(i, 0).pos) } else { key(i, 7 * i) };
                    (k.pos, k)
                })
                .collect(),
        );
        let o: Option<&dyn KeyOverlay> = Some(&ov);
        let mut want = Vec::new();
        let mut it = t.iter(BtreeId::Extents, Bpos::MIN);
        while let Some(k) = it.next(&mut t, o).unwrap() {
            want.push(k);
        }
        let mut got = Vec::new();
        t.for_each_key(BtreeId::Extents, o, |k| {
            got.push(k.to_key());
            Ok(())
        })
        .unwrap();
        prop_assert_eq!(&got, &want);
        let mut plain = Vec::new();
        t.for_each_key(BtreeId::Extents, None, |k| {
            plain.push(k.to_key());
            Ok(())
        })
        .unwrap();
        prop_assert_eq!(plain, contents(&mut t, BtreeId::Extents));
    }
}

/// A value reads back as the bytes it was made of on either side of the inline limit, and
/// only values longer than the limit go to the heap.
#[test]
fn values_inline_up_to_the_limit() {
    use crate::btree::node::{VAL_INLINE_BYTES, Val};
    for len in [0, 1, VAL_INLINE_BYTES - 1, VAL_INLINE_BYTES, VAL_INLINE_BYTES + 1, 300] {
        let bytes: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
        for v in [Val::new(&bytes), Val::from(Box::<[u8]>::from(bytes.as_slice()))] {
            assert_eq!(&*v, &bytes[..], "len {len}");
            assert_eq!(matches!(v, Val::Heap(_)), len > VAL_INLINE_BYTES, "len {len}");
        }
    }
    assert_eq!(std::mem::size_of::<Val>(), 24);
}

/// Hex (whitespace ignored) to bytes, for golden images.
fn unhex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits.chunks(2).map(|d| u8::from_str_radix(std::str::from_utf8(d).unwrap(), 16).unwrap()).collect()
}

/// `bytes` padded with zeros to whole sectors, as bsets and the header sector are on disk.
fn sector_padded(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.resize(bytes.len().next_multiple_of(512), 0);
    bytes
}

/// The node header, a leaf bset and an interior bset (with its `btree_ptr_v2` value) encode
/// byte for byte as format version 1 images hold them, and those bytes decode to the same
/// node: an encoder or decoder change that moves a field would strand every existing image.
#[test]
fn node_encoding_is_pinned() {
    use crate::bkey::BtreePtrV2;
    use crate::btree::node::{Child, Expected, KeyVal, Node, NodeHeader, NodeKeys, decode_node};
    let leaf_hdr = NodeHeader {
        btree: BtreeId::Alloc,
        level: 0,
        min_key: Bpos::new(1, 2, 3),
        max_key: Bpos::new(0x0102_0304_0506_0708, 0x1112_1314_1516_1718, 0x2122_2324),
        seq: 0xa1a2_a3a4_a5a6_a7a8,
    };
    let leaf_keys = [
        Bkey::new(Bpos::new(2, 5, 0), KeyType::Set, vec![0xc1; 3]),
        Bkey::new(Bpos::new(2, 6, 0), KeyType::Set, vec![0xc2; 9]),
    ];
    let mut leaf = Node::new(leaf_hdr, Vec::new());
    leaf.journal_seq = 0xb1b2_b3b4_b5b6_b7b8;
    if let Some(m) = leaf.leaf_mut() {
        for k in &leaf_keys {
            let (p, kv) = KeyVal::from_key(k.clone(), true);
            m.insert(p, kv);
        }
    }
    let ptr = BtreePtrV2 {
        seq: 0xd1d2_d3d4_d5d6_d7d8,
        sectors_written: 0xe1e2_e3e4,
        min_key: Bpos::new(4, 5, 6),
        ptrs: vec![
            ExtentPtr { dev: 1, bucket_gen: 2, offset: 0xf1f2_f3f4_f5f6_f7f8 },
            ExtentPtr { dev: 3, bucket_gen: 4, offset: 5 },
        ],
    };
    let ptr_pos = Bpos::new(7, 8, 9);
    let mut interior = Node::new(NodeHeader { level: 1, ..leaf_hdr }, Vec::new());
    interior.journal_seq = 9;
    if let NodeKeys::Interior(m) = &mut interior.keys {
        m.insert(ptr_pos, Child { ptr: ptr.clone(), pending: true });
    }

    // One field per group, in layout order.
    let header = unhex(
        "76159222 00000000 7856341200000000 a8a7a6a5a4a3a2a1 04 00 0000 02000000
         0100000000000000 0200000000000000 03000000 00000000
         0807060504030201 1817161514131211 24232221 00000000
         0000000000000000",
    );
    let interior_header = unhex(
        "33b774a6 00000000 7856341200000000 a8a7a6a5a4a3a2a1 04 01 0000 02000000
         0100000000000000 0200000000000000 03000000 00000000
         0807060504030201 1817161514131211 24232221 00000000
         0000000000000000",
    );
    let leaf_bset = unhex(
        "5dd1e07f 78000000 a8a7a6a5a4a3a2a1 b8b7b6b5b4b3b2b1 02000000 00000000
         19 00 0300 00000000 0200000000000000 0500000000000000 00000000 00000000 c1c1c10000000000
         19 00 0900 00000000 0200000000000000 0600000000000000 00000000 00000000
         c2c2c2c2c2c2c2c2 c200000000000000",
    );
    let interior_bset = unhex(
        "18697bfc 88000000 a8a7a6a5a4a3a2a1 0900000000000000 01000000 00000000
         12 00 4800 00000000 0700000000000000 0800000000000000 09000000 00000000
         d8d7d6d5d4d3d2d1 e4e3e2e1 02 000000 0400000000000000 0500000000000000 06000000 00000000
         01 02 000000000000 f8f7f6f5f4f3f2f1
         03 04 000000000000 0500000000000000",
    );
    assert_eq!(leaf.encode_header(MAGIC), sector_padded(header.clone()));
    assert_eq!(leaf.encode_bset(true), sector_padded(leaf_bset.clone()));
    assert_eq!(interior.encode_header(MAGIC), sector_padded(interior_header.clone()));
    assert_eq!(interior.encode_bset(true), sector_padded(interior_bset.clone()));

    let none = |_: u64| false;
    let exp = Expected {
        btree: leaf_hdr.btree,
        level: 0,
        min_key: leaf_hdr.min_key,
        max_key: leaf_hdr.max_key,
        seq: leaf_hdr.seq,
        sectors_written: 2,
    };
    let mut img = sector_padded(header);
    img.extend(sector_padded(leaf_bset));
    let mut read = decode_node(&img, MAGIC, &exp, &none).unwrap();
    assert_eq!(read.hdr, leaf_hdr);
    let got: Vec<Bkey> = read.leaf_mut().unwrap().iter().map(|(p, kv)| kv.to_key(*p)).collect();
    assert_eq!(got, leaf_keys);

    let mut img = sector_padded(interior_header);
    img.extend(sector_padded(interior_bset));
    let read = decode_node(&img, MAGIC, &Expected { level: 1, ..exp }, &none).unwrap();
    let NodeKeys::Interior(m) = &read.keys else { panic!("interior node read as a leaf") };
    let children: Vec<(Bpos, BtreePtrV2)> = m.iter().map(|(p, c)| (*p, c.ptr.clone())).collect();
    assert_eq!(children, vec![(ptr_pos, ptr)]);
}

/// A pointer that carries its left neighbour's seq and location, its own range kept (a bset
/// appended to the interior node, as the #1107 image set has it): the neighbour is reached and
/// cached through its own pointer first, so the walk reaches it again through the duplicate,
/// with header checks on or off, whether the profile uses a mismatching node or not.
/// `drop_unreadable` drops that range for an empty node under a new seq, which the parent now
/// points to; the neighbour keeps its place and its keys, and every other key stays.
#[test]
fn duplicated_pointer_is_dropped_and_the_neighbour_kept() {
    let s = Setup::new(1, 1);
    let (roots, all, left, victim) = with_duplicated_pointer(&s);

    let in_victim = |k: &&Bkey| k.pos >= victim.min_key && k.pos <= victim.max_key;
    let want: Vec<Bkey> = all.iter().filter(|k| !in_victim(k)).cloned().collect();
    for behavior in [Behavior::V1_37_5, Behavior::Fixed] {
        for check_headers in [false, true] {
            let mut t = s.open(roots.clone(), behavior);
            t.set_check_headers(check_headers);
            let lost = t.drop_unreadable(BtreeId::Alloc).unwrap();
            assert_eq!(lost.len(), 1, "{lost:?}");
            assert_eq!((lost[0].min_key, lost[0].max_key), (victim.min_key, victim.max_key));
            assert!(lost[0].error.to_string().contains("header doesn't match ptr"), "{}", lost[0].error);
            assert_eq!(contents(&mut t, BtreeId::Alloc), want, "only the duplicated range's keys are gone");
            let infos = t.node_infos(BtreeId::Alloc).unwrap();
            let level0: Vec<_> = infos.iter().filter(|n| n.level == 0).collect();
            assert!(level0.iter().any(|n| n.seq == left.seq && n.max_key == left.max_key), "neighbour kept");
            let placeholder = level0.iter().find(|n| n.min_key == victim.min_key).unwrap();
            assert!(placeholder.seq != left.seq && placeholder.dirty && placeholder.nr_keys == 0);
        }
    }
}
