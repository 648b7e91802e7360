//! Replica placement and its errors: `insufficient_devices` when the devices can never satisfy a
//! request, `freelist_empty` / `bucket_alloc_blocked` when they could but not now; target devices
//! first; durability counted per device; reserves enforced per watermark, with the #1108 numbers.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use allocator::{AllocRequest, Allocator, Watermark};
use common::{Model, dev, member};
use fs_core::bkey::alloc::{ALLOC_NEED_DISCARD, ALLOC_NEED_INC_GEN, bucket_pos};
use fs_core::bkey::{AllocV4, DataType};
use fs_core::bpos::BtreeId;
use fs_core::btree::NodeAllocator;
use fs_core::error::ErrCode;
use fs_core::sb::MemberState;

const NODE_SIZE: u64 = 16 << 10;
const BUCKET: u32 = 128 << 10;

fn req(nr_replicas: u8, target: &str, watermark: Watermark) -> AllocRequest {
    AllocRequest { nr_replicas, target: target.to_owned(), data_type: DataType::User, watermark }
}

/// Durability that is not there (a read-only device, a durability-0 device) does not count:
/// asking for more is `insufficient_devices`, an EROFS-class error naming the request.
#[test]
fn insufficient_devices_names_the_request() {
    let mut ro = member(64, BUCKET, 1, 1, "ssd.c");
    ro.state = MemberState::Ro;
    let a = Allocator::new(
        vec![
            dev(0, member(64, BUCKET, 1, 1, "ssd.a"), 1..3),
            dev(1, member(64, BUCKET, 1, 1, "ssd.b"), 1..3),
            dev(2, ro, 1..3),
            dev(3, member(64, BUCKET, 1, 0, "cache"), 1..3),
        ],
        NODE_SIZE,
    )
    .unwrap();
    let mut model = Model::synced(&a);
    let e = a.alloc_buckets(&req(3, "ssd", Watermark::Normal)).unwrap_err();
    assert_eq!(e.code(), ErrCode::InsufficientDevices, "{e}");
    assert!(e.matches(ErrCode::Erofs));
    let msg = e.to_string();
    assert!(
        msg.contains("3 replicas") && msg.contains("target ssd") && msg.contains("durability 2"),
        "{msg}"
    );
    assert_eq!(a.pending_updates(), 0);
    model.sync(&a).unwrap();

    let got = a.alloc_buckets(&req(2, "ssd", Watermark::Normal)).unwrap();
    let mut devs: Vec<u8> = got.iter().map(|b| b.dev).collect();
    devs.sort_unstable();
    assert_eq!(devs, vec![0, 1]);
}

/// A device too small to ever clear the reserve of a watermark does not count at that
/// watermark, and does at a higher one.
#[test]
fn reserve_decides_what_could_ever_serve() {
    // 40 buckets of 64 KiB with 16 KiB nodes: nr_btree_reserve 7 and 40 >> 6 = 0, so the normal
    // reserve is 14 and the btree reserve 7; 40 - 1 superblock - 26 journal = 13 data buckets.
    let a = Allocator::new(vec![dev(0, member(40, 64 << 10, 1, 1, ""), 1..27)], NODE_SIZE).unwrap();
    let e = a.alloc_buckets(&req(1, "", Watermark::Normal)).unwrap_err();
    assert_eq!(e.code(), ErrCode::InsufficientDevices, "{e}");
    let b = a.alloc_buckets(&req(1, "", Watermark::Btree)).unwrap();
    assert_eq!(b.len(), 1);
}

/// Devices that could serve but have no bucket above the reserve now: `freelist_empty` for
/// buckets (EAGAIN class), `bucket_alloc_blocked` for btree nodes (operation_blocked: wait and
/// retry). A discard makes room again.
#[test]
fn blocked_is_not_insufficient() {
    let a = Arc::new(Allocator::new(vec![dev(0, member(24, BUCKET, 1, 1, ""), 1..3)], NODE_SIZE).unwrap());
    let mut model = Model::synced(&a);
    // 21 data buckets; btree reserve 4 leaves 17 at the btree watermark.
    let mut taken = Vec::new();
    loop {
        match a.alloc_buckets(&req(1, "", Watermark::Btree)) {
            Ok(mut b) => taken.append(&mut b),
            Err(e) => {
                assert_eq!(e.code(), ErrCode::FreelistEmpty, "{e}");
                assert!(e.matches(ErrCode::Eagain) && !e.matches(ErrCode::OperationBlocked));
                assert!(e.to_string().contains("dev 0: 4 free, 0 need_discard, 4 reserved"), "{e}");
                break;
            }
        }
    }
    assert_eq!(taken.len(), 17);
    model.sync(&a).unwrap();

    let nodes = common::node_alloc(a.clone(), 1, "");
    let e = nodes.alloc_nodes(1, BtreeId::Inodes, 1).unwrap_err();
    assert_eq!(e.code(), ErrCode::BucketAllocBlocked, "{e}");
    assert!(e.matches(ErrCode::OperationBlocked));
    assert_eq!((e.context().btree, e.context().level), (Some(BtreeId::Inodes), Some(1)));
    assert_eq!(a.pending_updates(), 0, "a failed node allocation changed nothing");

    // Nodes may dig into the reserve at interior_updates; an unwritten node goes straight back.
    nodes.set_watermark(Watermark::InteriorUpdates);
    let locs = nodes.alloc_nodes(1, BtreeId::Inodes, 1).unwrap();
    assert_eq!(a.dev_usage(0).unwrap().free, 3);
    nodes.release_unused(locs).unwrap();
    assert_eq!(a.dev_usage(0).unwrap().free, 4);

    let first = taken[0];
    a.add_sectors(first.dev, first.bucket, DataType::User, 8, 3).unwrap();
    a.add_sectors(first.dev, first.bucket, DataType::User, -8, 4).unwrap();
    assert_eq!(a.dev_usage(0).unwrap().need_discard, 1);
    assert!(a.alloc_buckets(&req(1, "", Watermark::Btree)).is_err(), "need_discard is not free");
    a.discard(first.dev, first.bucket).unwrap();
    // Its 5 free buckets: one above the btree reserve, four inside it. The discarded bucket is
    // among them, with a new gen.
    let mut rest = a.alloc_buckets(&req(1, "", Watermark::Btree)).unwrap();
    rest.extend((0..4).flat_map(|_| a.alloc_buckets(&req(1, "", Watermark::Reclaim)).unwrap()));
    let again = rest.iter().find(|b| b.bucket == first.bucket).unwrap();
    assert_eq!(again.bucket_gen, first.bucket_gen.wrapping_add(1));
    assert_eq!(a.dev_usage(0).unwrap().free, 0);
    model.sync(&a).unwrap();
}

/// Target devices are used first, the fuller free list first among them; other devices fill in
/// only when the target's durability is not enough.
#[test]
fn target_devices_first() {
    let a = Allocator::new(
        vec![
            dev(0, member(200, BUCKET, 1, 1, "hdd.big"), 1..3),
            dev(1, member(64, BUCKET, 1, 1, "ssd.a"), 1..3),
            dev(2, member(80, BUCKET, 1, 1, "ssd.b"), 1..3),
            dev(3, member(100, BUCKET, 1, 1, "hdd.mid"), 1..3),
        ],
        NODE_SIZE,
    )
    .unwrap();
    let devs = |r: &AllocRequest| a.alloc_buckets(r).unwrap().iter().map(|b| b.dev).collect::<Vec<_>>();
    assert_eq!(devs(&req(2, "ssd", Watermark::Normal)), vec![2, 1]);
    assert_eq!(devs(&req(2, "ssd.a", Watermark::Normal)), vec![1, 0]);
    assert_eq!(devs(&req(3, "hdd", Watermark::Normal)), vec![0, 3, 2]);
    assert_eq!(devs(&req(1, "", Watermark::Normal)), vec![0]);
    assert_eq!(devs(&req(1, "nvme", Watermark::Normal)), vec![0], "an empty target falls back to all");
}

/// One durability-2 device satisfies two replicas alone, for buckets and for btree nodes;
/// mixed with durability-1 devices, it is counted as two.
#[test]
fn durability_two_device_alone_gives_two_replicas() {
    let a = Arc::new(
        Allocator::new(
            vec![
                dev(0, member(64, BUCKET, 1, 2, "ssd.raid"), 1..3),
                dev(1, member(64, BUCKET, 1, 1, "hdd.a"), 1..3),
                dev(2, member(64, BUCKET, 1, 1, "hdd.b"), 1..3),
            ],
            NODE_SIZE,
        )
        .unwrap(),
    );
    let got = a.alloc_buckets(&req(2, "ssd", Watermark::Normal)).unwrap();
    assert_eq!(got.iter().map(|b| b.dev).collect::<Vec<_>>(), vec![0]);
    let got = a.alloc_buckets(&req(3, "ssd", Watermark::Normal)).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].dev, 0);
    let got = a.alloc_buckets(&req(4, "", Watermark::Normal)).unwrap();
    assert_eq!(got.len(), 3);
    assert!(
        a.alloc_buckets(&req(5, "", Watermark::Normal))
            .is_err_and(|e| e.code() == ErrCode::InsufficientDevices)
    );

    let nodes = common::node_alloc(a.clone(), 2, "ssd");
    let locs = nodes.alloc_nodes(3, BtreeId::Extents, 0).unwrap();
    assert!(locs.iter().all(|l| l.ptrs.len() == 1 && l.ptrs[0].dev == 0), "{locs:?}");
}

fn key(data_type: DataType, dirty_sectors: u32) -> AllocV4 {
    let flags = if data_type == DataType::NeedDiscard { ALLOC_NEED_DISCARD | ALLOC_NEED_INC_GEN } else { 0 };
    AllocV4 { data_type, dirty_sectors, flags, ..AllocV4::free(0) }
}

const MIB4: u32 = 4 << 20;

/// The two NVMe devices of #1108 rebuilt from their alloc keys: vde with 1 free bucket, 9416
/// need_discard and the rest user data (41522 buckets of 4 MiB); vdf with 5109 free and 41681
/// need_discard; optionally an HDD with free space outside the metadata target.
fn issue_1108_allocator(with_hdd: bool) -> Arc<Allocator> {
    let full = MIB4 / 512;
    let mut devices = vec![
        dev(0, member(41_522, MIB4, 1, 1, "nvme.vde"), 1..9),
        dev(1, member(46_800, MIB4, 1, 1, "nvme.vdf"), 1..9),
    ];
    if with_hdd {
        devices.push(dev(2, member(100_000, MIB4, 1, 1, "hdd.vda"), 1..9));
    }
    let mut keys = BTreeMap::new();
    for b in 9..41_522u64 {
        let k = match b {
            9 => key(DataType::Free, 0),
            10..9426 => key(DataType::NeedDiscard, 0),
            _ => key(DataType::User, full),
        };
        keys.insert(bucket_pos(0, b), k);
    }
    for b in 9..46_800u64 {
        let k = match b {
            9..5118 => key(DataType::Free, 0),
            5118..46_799 => key(DataType::NeedDiscard, 0),
            _ => key(DataType::Btree, 8 * 512),
        };
        keys.insert(bucket_pos(1, b), k);
    }
    Arc::new(Allocator::from_alloc_keys(devices, 256 << 10, keys).unwrap())
}

/// #1108 as reported: metadata_replicas=2 on the NVMe pair, vde's only free bucket inside its
/// btree reserve of 2. A split at the btree watermark is blocked, not insufficient, and the
/// error names each device's free, need_discard and reserve counts; at the reclaim watermark
/// it goes through; with metadata_replicas=1 it goes to vdf alone.
#[test]
fn issue_1108_numbers() {
    let a = issue_1108_allocator(false);
    let u = a.dev_usage(0).unwrap();
    assert_eq!((u.free, u.need_discard, u.nr_btree_reserve), (1, 9416, 2));
    assert_eq!((u.reserved(Watermark::Btree), u.available(Watermark::Btree)), (2, 0));
    assert_eq!(u.available(Watermark::Reclaim), 1);
    let u = a.dev_usage(1).unwrap();
    assert_eq!((u.free, u.need_discard), (5109, 41_681));

    // Superblock and journal buckets had no keys here: they keep their layout state, and
    // nothing is pending (reading keys never changes what is on disk).
    assert_eq!(a.pending_updates(), 0);

    let nodes = common::node_alloc(a.clone(), 2, "nvme");
    let e = nodes.alloc_nodes(1, BtreeId::Extents, 0).unwrap_err();
    assert_eq!(e.code(), ErrCode::BucketAllocBlocked, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("dev 0: 1 free, 9416 need_discard, 2 reserved"), "{msg}");
    assert!(msg.contains("dev 1: 5109 free, 41681 need_discard, 2 reserved"), "{msg}");
    assert_eq!(a.pending_updates(), 0, "a failed request changes nothing");

    nodes.set_watermark(Watermark::Reclaim);
    let locs = nodes.alloc_nodes(1, BtreeId::Extents, 0).unwrap();
    assert_eq!(locs[0].ptrs.iter().map(|p| p.dev).collect::<Vec<_>>(), vec![1, 0]);
    nodes.release_unused(locs).unwrap();

    nodes.set_watermark(Watermark::Btree);
    common::set_replicas(&nodes, 1).unwrap();
    let locs = nodes.alloc_nodes(1, BtreeId::Extents, 0).unwrap();
    assert_eq!(locs[0].ptrs.iter().map(|p| p.dev).collect::<Vec<_>>(), vec![1]);
}

/// With a device outside the metadata target that has free buckets, placement falls back to it
/// after the target's devices: the second replica goes to the HDD rather than waiting.
#[test]
fn issue_1108_falls_back_outside_the_target() {
    let a = issue_1108_allocator(true);
    let nodes = common::node_alloc(a, 2, "nvme");
    let locs = nodes.alloc_nodes(1, BtreeId::Extents, 0).unwrap();
    assert_eq!(locs[0].ptrs.iter().map(|p| p.dev).collect::<Vec<_>>(), vec![1, 2]);
}

/// A member whose `data_allowed` leaves out a type is never chosen for it, not even when
/// placement falls back from the target to every device: with both ssds out of buckets, btree
/// nodes are blocked (the hdd could hold them by size and watermark, but may not), while user
/// data still lands on the hdd. With the hdd alone allowed nothing, a btree request is
/// `insufficient_devices`.
#[test]
fn data_allowed_is_honoured_on_fallback() {
    use fs_core::sb::DataAllowed;
    let mut hdd = member(256, BUCKET, 1, 1, "hdd.a");
    hdd.data_allowed = DataAllowed::USER;
    let a = Arc::new(
        Allocator::new(
            vec![
                dev(0, hdd, 1..1),
                dev(1, member(8, BUCKET, 1, 1, "ssd.a"), 1..3),
                dev(2, member(8, BUCKET, 1, 1, "ssd.b"), 1..3),
            ],
            NODE_SIZE,
        )
        .unwrap(),
    );
    // Fill both ssds with user data, as far as the normal watermark lets it.
    while let Ok(got) = a.alloc_buckets(&req(2, "ssd", Watermark::Normal)) {
        if got.iter().any(|b| b.dev == 0) {
            break;
        }
    }
    let nodes = common::node_alloc(a.clone(), 2, "ssd");
    nodes.set_watermark(Watermark::Reclaim);
    let mut placed = Vec::new();
    let err = loop {
        match nodes.try_alloc_nodes(1) {
            Ok(got) => placed.extend(got),
            Err(e) => break e,
        }
        assert!(placed.len() < 10_000, "btree nodes never ran out");
    };
    assert!(!placed.is_empty(), "the ssds had room for some nodes");
    for n in &placed {
        assert!(n.ptrs.iter().all(|p| p.dev != 0), "a btree node on the user-only hdd: {n:?}");
    }
    assert_eq!(err.code(), ErrCode::BucketAllocBlocked, "{err}");
    let user = a.alloc_buckets(&req(1, "ssd", Watermark::Normal)).unwrap();
    assert_eq!(user[0].dev, 0, "user data falls back to the hdd");

    let mut hdd_only = member(256, BUCKET, 1, 1, "hdd.a");
    hdd_only.data_allowed = DataAllowed::USER | DataAllowed::JOURNAL;
    let b = Arc::new(Allocator::new(vec![dev(0, hdd_only, 1..3)], NODE_SIZE).unwrap());
    let e = common::node_alloc(b, 1, "").try_alloc_nodes(1).unwrap_err();
    assert_eq!(e.code(), ErrCode::InsufficientDevices, "{e}");
}
