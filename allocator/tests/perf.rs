//! Performance sanity, not a timed assertion: 100k btree node slots allocated and freed on eight
//! devices of 262144 buckets must not be pathologically slow (a free-bucket search that scans the
//! device, say). The elapsed time is printed for whoever runs it with `--nocapture`.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use allocator::Allocator;
use common::{dev, member};
use fs_core::bkey::DataType;
use fs_core::bpos::BtreeId;
use fs_core::btree::NodeAllocator;

const NBUCKETS: u64 = 262_144;
const NODE_SIZE: u64 = 256 << 10;
const SLOTS: usize = 100_000;

#[test]
fn hundred_thousand_node_slots_on_eight_big_devices() {
    let start = Instant::now();
    let devices = (0..8u8).map(|d| dev(d, member(NBUCKETS, 1 << 20, 1, 1, "ssd"), 1..1025)).collect();
    let a = Arc::new(Allocator::new(devices, NODE_SIZE).unwrap());
    let built = start.elapsed();

    let nodes = common::node_alloc(a.clone(), 2, "ssd");
    let mut locs = Vec::with_capacity(SLOTS / 2);
    for _ in 0..SLOTS / 2 / 10 {
        locs.extend(nodes.alloc_nodes(10, BtreeId::Extents, 0).unwrap());
    }
    let allocated = start.elapsed();
    let slots: usize = locs.iter().map(|l| l.ptrs.len()).sum();
    assert_eq!(slots, SLOTS);
    let btree: u64 = (0..8).map(|d| a.dev_usage(d).unwrap().btree).sum();
    // Four nodes per 1 MiB bucket: every btree bucket is full but at most one open per device.
    let full = SLOTS as u64 / 4;
    assert!((full..=full + 8).contains(&btree), "{btree} btree buckets for {SLOTS} slots");

    for (i, loc) in locs.iter().enumerate() {
        nodes.try_free_node(&loc.ptrs, i as u64).unwrap();
    }
    let freed = start.elapsed();
    for d in 0..8 {
        let u = a.dev_usage(d).unwrap();
        assert_eq!(u.btree, 0);
        assert_eq!(u.need_discard + u.free, NBUCKETS - 1 - 1024);
        assert_eq!(a.bucket(d, 1025).unwrap().data_type, DataType::NeedDiscard);
    }
    eprintln!("perf: built {built:?}, allocated {SLOTS} slots by {allocated:?}, freed by {freed:?}");
}
