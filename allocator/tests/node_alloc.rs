//! Btree node allocation: node-sized slots filling a bucket in order, pointers that name the
//! slot and the bucket's gen, sectors accounted per slot, all-or-nothing `alloc_nodes`, and what
//! a bucket becomes when its nodes are released unwritten or freed after being written.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use allocator::{Allocator, BtreeNodeAlloc, PENDING_SEQ, Watermark};
use common::{Model, dev, member};
use fs_core::bkey::{DataType, ExtentPtr};
use fs_core::bpos::BtreeId;
use fs_core::btree::NodeAllocator;
use fs_core::error::ErrCode;
use fs_core::opts::{OptId, OptValue, Options};

const NODE_SIZE: u64 = 16 << 10;
const BUCKET: u32 = 128 << 10;
const SLOTS: u64 = BUCKET as u64 / NODE_SIZE;
const NODE_SECTORS: u32 = (NODE_SIZE / 512) as u32;

fn allocator(devs: &[(u64, u8, &str)]) -> Arc<Allocator> {
    let inits = devs
        .iter()
        .enumerate()
        .map(|(i, &(nbuckets, durability, label))| {
            dev(i as u8, member(nbuckets, BUCKET, 1, durability, label), 1..3)
        })
        .collect();
    Arc::new(Allocator::new(inits, NODE_SIZE).unwrap())
}

fn bucket_of(p: &ExtentPtr) -> u64 {
    p.offset * 512 / u64::from(BUCKET)
}

/// Eight 16 KiB nodes fill a 128 KiB bucket slot by slot; the ninth opens the next bucket.
/// Each slot adds its sectors to the bucket, and the alloc keys record it.
#[test]
fn slots_fill_a_bucket_then_the_next_opens() {
    let a = allocator(&[(64, 1, "")]);
    let mut model = Model::synced(&a);
    let nodes = common::node_alloc(a.clone(), 1, "");
    let locs = nodes.alloc_nodes(SLOTS as usize + 1, BtreeId::Extents, 0).unwrap();
    let first = bucket_of(&locs[0].ptrs[0]);
    for (i, loc) in locs.iter().take(SLOTS as usize).enumerate() {
        let p = loc.ptrs[0];
        assert_eq!(p.offset, (first * u64::from(BUCKET) + i as u64 * NODE_SIZE) / 512, "slot {i}");
        assert_eq!(p.bucket_gen, 0);
    }
    let next = bucket_of(&locs[SLOTS as usize].ptrs[0]);
    assert_ne!(next, first);
    assert_eq!(locs[SLOTS as usize].ptrs[0].offset, next * u64::from(BUCKET) / 512);
    let st = a.bucket(0, first).unwrap();
    assert_eq!((st.data_type, st.dirty_sectors), (DataType::Btree, SLOTS as u32 * NODE_SECTORS));
    assert_eq!(a.bucket(0, next).unwrap().dirty_sectors, NODE_SECTORS);
    assert_eq!(nodes.open_buckets(), vec![(0, next, 1)]);
    model.sync(&a).unwrap();
    assert_eq!(model.alloc[&fs_core::bkey::alloc::bucket_pos(0, first)].dirty_sectors, BUCKET / 512);
}

/// Replicas of a node go to distinct devices, target first, each with its own open bucket.
#[test]
fn replicas_on_distinct_devices_target_first() {
    let a = allocator(&[(64, 1, "hdd.a"), (64, 1, "ssd.a"), (64, 1, "ssd.b")]);
    let nodes = common::node_alloc(a.clone(), 2, "ssd");
    assert_eq!(nodes.metadata_replicas(), 2);
    for loc in nodes.alloc_nodes(20, BtreeId::Alloc, 0).unwrap() {
        let devs: BTreeSet<u8> = loc.ptrs.iter().map(|p| p.dev).collect();
        assert_eq!(devs, BTreeSet::from([1, 2]), "{loc:?}");
    }
    common::set_replicas(&nodes, 3).unwrap();
    let loc = nodes.alloc_nodes(1, BtreeId::Alloc, 0).unwrap().remove(0);
    assert_eq!(loc.ptrs.iter().map(|p| p.dev).collect::<BTreeSet<_>>(), BTreeSet::from([0, 1, 2]));
    assert_eq!(common::set_replicas(&nodes, 0).unwrap_err().code(), ErrCode::OptionValueInvalid);
    assert_eq!(nodes.metadata_replicas(), 3);
    let e = nodes.alloc_nodes(0, BtreeId::Alloc, 0).unwrap();
    assert!(e.is_empty());
    common::set_replicas(&nodes, 4).unwrap();
    let e = nodes.alloc_nodes(1, BtreeId::Alloc, 2).unwrap_err();
    assert_eq!(e.code(), ErrCode::InsufficientDevices, "{e}");
    assert_eq!((e.context().btree, e.context().level), (Some(BtreeId::Alloc), Some(2)));
}

/// If the last of `nr` nodes cannot be placed, the ones before it are given back: bucket states,
/// open buckets and pending updates are exactly as before.
#[test]
fn alloc_nodes_is_all_or_nothing() {
    // 12 buckets: 9 data buckets, btree reserve 4 leaves 5 at the btree watermark: 40 slots.
    let a = allocator(&[(12, 1, "")]);
    let mut model = Model::synced(&a);
    let nodes = common::node_alloc(a.clone(), 1, "");
    let held = nodes.alloc_nodes(3, BtreeId::Extents, 0).unwrap();
    model.sync(&a).unwrap();
    let before: Vec<_> = (0..12).map(|b| a.bucket(0, b).unwrap()).collect();
    let open = nodes.open_buckets();

    let e = nodes.alloc_nodes(40, BtreeId::Extents, 0).unwrap_err();
    assert_eq!(e.code(), ErrCode::BucketAllocBlocked, "{e}");
    assert_eq!(a.pending_updates(), 0);
    assert_eq!((0..12).map(|b| a.bucket(0, b).unwrap()).collect::<Vec<_>>(), before);
    assert_eq!(nodes.open_buckets(), open);

    let more = nodes.alloc_nodes(37, BtreeId::Extents, 0).unwrap();
    assert_eq!(a.dev_usage(0).unwrap().free, 4, "the reserve is left");
    let all: BTreeSet<u64> = held.iter().chain(&more).map(|l| l.ptrs[0].offset).collect();
    assert_eq!(all.len(), 40, "no slot handed out twice");
    model.sync(&a).unwrap();
}

/// Nodes released unwritten give their bucket back as free with the same gen; a node freed after
/// being written sends its bucket to need_discard once the bucket empties.
#[test]
fn release_unused_versus_free_node() {
    let a = allocator(&[(64, 1, "")]);
    let mut model = Model::synced(&a);
    let nodes = common::node_alloc(a.clone(), 1, "");

    let locs = nodes.alloc_nodes(3, BtreeId::Extents, 0).unwrap();
    let bucket = bucket_of(&locs[0].ptrs[0]);
    nodes.release_unused(locs[..2].to_vec()).unwrap();
    assert_eq!(a.bucket(0, bucket).unwrap().dirty_sectors, NODE_SECTORS);
    nodes.release_unused(locs[2..].to_vec()).unwrap();
    let st = a.bucket(0, bucket).unwrap();
    assert_eq!((st.data_type, st.bucket_gen), (DataType::Free, 0));
    assert!(nodes.open_buckets().is_empty(), "an emptied bucket is closed");
    model.sync(&a).unwrap();

    let locs = nodes.alloc_nodes(2, BtreeId::Extents, 0).unwrap();
    let bucket = bucket_of(&locs[0].ptrs[0]);
    nodes.free_node(&locs[0].ptrs).unwrap();
    nodes.release_unused(vec![locs[1].clone()]).unwrap();
    // A node in it was written: need_discard, and not discardable until the update that
    // publishes the free takes its keys and stamps its seq.
    let st = a.bucket(0, bucket).unwrap();
    assert_eq!((st.data_type, st.journal_seq_empty), (DataType::NeedDiscard, PENDING_SEQ));
    assert!(
        a.discard_durable(u64::MAX - 1, allocator::RewindBuffer::PerDevice { percent: 0 })
            .unwrap()
            .is_empty(),
        "discarded before its free was published"
    );
    model.apply(a.take_updates_at(42).updates).unwrap();
    assert_eq!(a.bucket(0, bucket).unwrap().journal_seq_empty, 42);
    assert_eq!(model.alloc[&fs_core::bkey::alloc::bucket_pos(0, bucket)].journal_seq_empty, 42);
    model.sync(&a).unwrap();
    a.discard(0, bucket).unwrap();
    assert_eq!(a.bucket(0, bucket).unwrap().bucket_gen, 1);
    model.sync(&a).unwrap();
}

/// Pointers the allocator did not hand out in their current form (stale gen, off a slot
/// boundary, beyond the device) are refused whole: the trait method returns the error to the
/// caller, as the typed method does, and nothing changes.
#[test]
fn bad_pointers_are_refused_whole() {
    let a = allocator(&[(64, 1, ""), (64, 1, "")]);
    let mut model = Model::synced(&a);
    let nodes = common::node_alloc(a.clone(), 2, "");
    let loc = nodes.alloc_nodes(1, BtreeId::Extents, 0).unwrap().remove(0);
    model.sync(&a).unwrap();

    let mut stale = loc.ptrs.clone();
    stale[1].bucket_gen = 9;
    let e = nodes.free_node(&stale).unwrap_err();
    assert_eq!(e.code(), ErrCode::BucketAccounting);
    assert!(e.to_string().contains("stale"), "{e}");
    assert_eq!(a.pending_updates(), 0, "the good pointer was not freed either");

    let mut misaligned = loc.ptrs.clone();
    misaligned[0].offset += 1;
    assert_eq!(nodes.try_free_node(&misaligned, 5).unwrap_err().code(), ErrCode::BucketAccounting);
    let beyond = [ExtentPtr { dev: 0, bucket_gen: 0, offset: 64 * u64::from(BUCKET) / 512 }];
    assert_eq!(nodes.try_free_node(&beyond, 5).unwrap_err().code(), ErrCode::BucketAccounting);
    let no_dev = [ExtentPtr { dev: 7, bucket_gen: 0, offset: 0 }];
    assert_eq!(nodes.try_free_node(&no_dev, 5).unwrap_err().context().dev, Some(7));
    assert_eq!(a.pending_updates(), 0);

    nodes.try_free_node(&loc.ptrs, 5).unwrap();
    // Freed twice: the bucket is empty now, the second free underflows (or hits need_discard).
    assert_eq!(nodes.try_free_node(&loc.ptrs, 6).unwrap_err().code(), ErrCode::BucketAccounting);
    model.sync(&a).unwrap();
}

/// Built from options: replicas from `metadata_replicas`, target from `metadata_target` falling
/// back to `foreground_target`, and the node size must match the allocator's.
#[test]
fn from_live_options() {
    let a = allocator(&[(64, 1, "hdd"), (64, 1, "ssd.a"), (64, 1, "ssd.b")]);
    let mut opts = Options::default();
    opts.set(OptId::BtreeNodeSize, OptValue::U64(NODE_SIZE)).unwrap();
    opts.set(OptId::MetadataReplicas, OptValue::U64(2)).unwrap();
    opts.set(OptId::ForegroundTarget, OptValue::Str("ssd".into())).unwrap();
    let live = Arc::new(fs_core::opts::LiveOpts::new(opts.clone()));
    let nodes = BtreeNodeAlloc::new(a.clone(), live).unwrap();
    assert_eq!((nodes.metadata_replicas(), nodes.metadata_target()), (2, "ssd".to_owned()));
    assert_eq!(nodes.watermark(), Watermark::Btree);
    let loc = nodes.alloc_nodes(1, BtreeId::Extents, 0).unwrap().remove(0);
    assert_eq!(loc.ptrs.iter().map(|p| p.dev).collect::<BTreeSet<_>>(), BTreeSet::from([1, 2]));

    // A node size other than the allocator's is a bug in the caller, not the user's input.
    opts.set(OptId::BtreeNodeSize, OptValue::U64(NODE_SIZE * 2)).unwrap();
    assert_eq!(
        BtreeNodeAlloc::new(a, Arc::new(fs_core::opts::LiveOpts::new(opts))).err().map(|e| e.code()),
        Some(ErrCode::Internal)
    );
}

/// Threads allocating and freeing nodes at once never get the same slot.
#[test]
fn concurrent_allocations_get_distinct_slots() {
    let a = allocator(&[(512, 1, ""), (512, 1, "")]);
    let nodes = Arc::new(common::node_alloc(a.clone(), 2, ""));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let nodes = nodes.clone();
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                for i in 0..200 {
                    let mut locs = nodes.alloc_nodes(2, BtreeId::Extents, 0).unwrap();
                    if (i + t) % 3 == 0 {
                        nodes.free_node(&locs.pop().unwrap().ptrs).unwrap();
                    }
                    kept.extend(locs);
                }
                kept
            })
        })
        .collect();
    let kept: Vec<_> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let slots: BTreeSet<(u8, u64)> =
        kept.iter().flat_map(|l| l.ptrs.iter().map(|p| (p.dev, p.offset))).collect();
    assert_eq!(slots.len(), kept.len() * 2);
    let mut model = Model::default();
    model.sync(&a).unwrap();
}
