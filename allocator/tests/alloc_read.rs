//! `from_alloc_keys` (alloc_read) rebuilds exactly the state whose updates were committed, fills
//! in buckets that have no key from the layout, and refuses keys this allocator could not have
//! written with fsck-class errors naming the key.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use allocator::{AllocRequest, Allocator, DeviceInit, Watermark};
use common::{Model, dev, member, seeds};
use fs_core::bkey::alloc::{ALLOC_NEED_DISCARD, ALLOC_NEED_INC_GEN, bucket_pos};
use fs_core::bkey::{AllocV4, DataType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::NodeAllocator;
use fs_core::error::ErrCode;
use fs_core::rng::Rng;

const NODE_SIZE: u64 = 16 << 10;
const BUCKET: u32 = 128 << 10;

fn devices() -> Vec<DeviceInit> {
    vec![
        dev(0, member(96, BUCKET, 1, 1, "ssd.a"), 1..4),
        dev(1, member(80, BUCKET, 2, 2, "ssd.b"), 2..6),
        dev(2, member(120, BUCKET, 1, 1, "hdd.a"), 1..3),
    ]
}

/// Runs a seeded mix of allocations, accounting, node allocation and frees, and discards.
fn churn(a: &Arc<Allocator>, rng: &mut Rng) {
    let nodes = common::node_alloc(a.clone(), 2, "ssd");
    let mut live = Vec::new();
    let mut live_nodes = Vec::new();
    for seq in 1..400u64 {
        match rng.below(6) {
            0 => {
                let req = AllocRequest {
                    nr_replicas: rng.range(1..3) as u8,
                    target: String::new(),
                    data_type: DataType::User,
                    watermark: Watermark::Normal,
                };
                if let Ok(got) = a.alloc_buckets(&req) {
                    for b in got {
                        a.add_sectors(b.dev, b.bucket, DataType::User, rng.range(1..256) as i64, seq)
                            .unwrap();
                        live.push(b);
                    }
                }
            }
            1 if !live.is_empty() => {
                let b = live.swap_remove(rng.below(live.len() as u64) as usize);
                let sectors = a.bucket(b.dev, b.bucket).unwrap().dirty_sectors;
                a.add_sectors(b.dev, b.bucket, DataType::User, -i64::from(sectors), seq).unwrap();
            }
            2 => {
                if let Ok(locs) = nodes.alloc_nodes(rng.range(1..4) as usize, BtreeId::Extents, 0) {
                    live_nodes.extend(locs);
                }
            }
            3 if !live_nodes.is_empty() => {
                let n = live_nodes.swap_remove(rng.below(live_nodes.len() as u64) as usize);
                nodes.try_free_node(&n.ptrs, seq).unwrap();
            }
            4 => {
                let want = rng.below(3) as u8;
                let pending: Vec<(u8, u64)> = (0..120)
                    .filter(|&b| a.bucket(want, b).is_some_and(|s| s.data_type == DataType::NeedDiscard))
                    .map(|b| (want, b))
                    .collect();
                if let Some(&(d, b)) = rng.choose(&pending) {
                    a.discard(d, b).unwrap();
                }
            }
            _ => {
                // An allocated, never written bucket: the state alloc_read must keep as is.
                let req = AllocRequest {
                    nr_replicas: 1,
                    target: "hdd".into(),
                    data_type: DataType::Btree,
                    watermark: Watermark::Btree,
                };
                let _ = a.alloc_buckets(&req);
            }
        }
    }
}

/// After any history, the allocator rebuilt from the committed alloc keys has the same bucket
/// states and counts, nothing pending, the same committed record, and keeps working.
#[test]
fn rebuild_matches_original() {
    for seed in seeds(20) {
        let a = Arc::new(Allocator::new(devices(), NODE_SIZE).unwrap());
        let mut model = Model::synced(&a);
        let mut rng = Rng::new(seed);
        churn(&a, &mut rng);
        model.sync(&a).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let kinds = |t: DataType| model.alloc.values().filter(|k| k.data_type == t).count();
        assert!(
            kinds(DataType::NeedDiscard) > 0 && kinds(DataType::Btree) > 0,
            "seed {seed}: churn too tame"
        );
        assert!(model.alloc.values().any(|k| k.bucket_gen > 0), "seed {seed}: no discard");

        let b = Arc::new(Allocator::from_alloc_keys(devices(), NODE_SIZE, model.alloc.clone()).unwrap());
        assert_eq!(b.pending_updates(), 0, "seed {seed}");
        b.check_invariants(&model.alloc, &model.freespace().unwrap(), &model.need_discard)
            .unwrap_or_else(|e| panic!("seed {seed}: rebuilt: {e}"));
        // What the disk holds comes back; buckets that were only allocated (open, nothing
        // accounted in them) are free again, as after any remount.
        for d in a.devices() {
            for bucket in 0..a.dev_usage(d).unwrap().nbuckets {
                let (x, y) = (a.bucket(d, bucket).unwrap(), b.bucket(d, bucket).unwrap());
                assert_eq!(x.persisted(), y.persisted(), "seed {seed} dev {d} bucket {bucket}");
                assert_eq!(y.alloc_v4(), y.persisted(), "seed {seed}: a rebuilt bucket is open");
            }
            let (ua, ub) = (a.dev_usage(d).unwrap(), b.dev_usage(d).unwrap());
            assert_eq!(
                (ua.need_discard, ua.user, ua.dirty_sectors),
                (ub.need_discard, ub.user, ub.dirty_sectors)
            );
        }
        // The rebuilt allocator keeps going under the same invariants.
        churn(&b, &mut rng);
        model.sync(&b).unwrap_or_else(|e| panic!("seed {seed}: after rebuild: {e}"));
    }
}

/// Alloc info is sparse: a new filesystem's record holds keys only for superblock and journal
/// buckets (unused buckets have none) and one freespace key per run of free buckets. Read back
/// without some of those keys, a bucket without a key is unused and a superblock or journal
/// bucket keeps its layout state: nothing is pending (fsck reports the missing keys).
#[test]
fn alloc_info_is_sparse_and_missing_keys_mean_unused() {
    let a = Allocator::new(devices(), NODE_SIZE).unwrap();
    let model = Model::synced(&a);
    let layout_buckets: usize =
        devices().iter().map(|d| d.member.first_bucket as usize + d.journal.nr() as usize).sum();
    assert_eq!(model.alloc.len(), layout_buckets, "keys only for superblock and journal buckets");
    assert!(model.freespace_keys.len() <= devices().len() * 2, "{:?}", model.freespace_keys);
    let partial: BTreeMap<Bpos, AllocV4> =
        model.alloc.iter().filter(|(p, _)| p.inode != 1).map(|(p, k)| (*p, *k)).collect();
    let b = Allocator::from_alloc_keys(devices(), NODE_SIZE, partial).unwrap();
    assert_eq!(b.pending_updates(), 0);
    assert_eq!(b.bucket(1, 0).unwrap().data_type, DataType::Sb);
    assert_eq!(b.bucket(1, 3).unwrap().data_type, DataType::Journal);
    assert_eq!(b.bucket(1, 40).unwrap().alloc_v4(), AllocV4::free(0));
}

fn nd() -> AllocV4 {
    AllocV4 {
        data_type: DataType::NeedDiscard,
        flags: ALLOC_NEED_DISCARD | ALLOC_NEED_INC_GEN,
        ..AllocV4::free(3)
    }
}

/// Keys that contradict the layout or themselves are fsck errors naming the key; good keys pass.
#[test]
fn bad_keys_are_refused() {
    let user = |sectors| AllocV4 { data_type: DataType::User, dirty_sectors: sectors, ..AllocV4::free(0) };
    let cases: Vec<(Bpos, AllocV4, &str)> = vec![
        (bucket_pos(9, 10), AllocV4::free(0), "no member device"),
        (bucket_pos(0, 96), AllocV4::free(0), "beyond"),
        (Bpos::new(0, 10, 1), AllocV4::free(0), "beyond"),
        (bucket_pos(0, 0), AllocV4::free(0), "layout"),
        (bucket_pos(0, 2), user(8), "layout"),
        (
            bucket_pos(0, 10),
            AllocV4 { data_type: DataType::Sb, dirty_sectors: 8, ..AllocV4::free(0) },
            "layout",
        ),
        (bucket_pos(0, 10), AllocV4 { dirty_sectors: 8, ..AllocV4::free(0) }, "sectors"),
        (bucket_pos(0, 10), AllocV4 { dirty_sectors: 1, ..nd() }, "sectors"),
        (bucket_pos(0, 10), user(BUCKET / 512 + 1), "more sectors"),
        (bucket_pos(0, 10), AllocV4 { flags: ALLOC_NEED_DISCARD, ..nd() }, "flags"),
        (bucket_pos(0, 10), AllocV4 { flags: ALLOC_NEED_DISCARD, ..AllocV4::free(0) }, "flags"),
        (bucket_pos(0, 10), AllocV4 { cached_sectors: 4, ..user(8) }, "cached"),
        (bucket_pos(0, 10), AllocV4 { data_type: DataType::NeedGcGens, ..AllocV4::free(0) }, "need_gc_gens"),
    ];
    for (pos, key, what) in cases {
        let e = Allocator::from_alloc_keys(devices(), NODE_SIZE, [(pos, key)]).err().unwrap();
        assert_eq!(e.code(), ErrCode::BucketAccounting, "{e}");
        assert_eq!((e.context().btree, e.context().pos), (Some(BtreeId::Alloc), Some(pos)), "{e}");
        assert!(e.to_string().contains(what), "{what}: {e}");
    }
    let twice = [(bucket_pos(0, 10), nd()), (bucket_pos(0, 10), nd())];
    let e = Allocator::from_alloc_keys(devices(), NODE_SIZE, twice).err().unwrap();
    assert!(e.to_string().contains("twice"), "{e}");

    let good = [(bucket_pos(0, 10), nd()), (bucket_pos(0, 11), user(8)), (bucket_pos(0, 12), user(0))];
    let a = Allocator::from_alloc_keys(devices(), NODE_SIZE, good).unwrap();
    assert_eq!(a.bucket(0, 10).unwrap().bucket_gen, 3);
    assert_eq!(a.dev_usage(0).unwrap().need_discard, 1);
    // A bucket holding sectors empties into need_discard; one allocated with none counts as
    // never written and may be released straight to free.
    assert_eq!(a.release_bucket(0, 11).unwrap_err().code(), ErrCode::BucketAccounting);
    a.add_sectors(0, 11, DataType::User, -8, 1).unwrap();
    assert_eq!(a.bucket(0, 11).unwrap().data_type, DataType::NeedDiscard);
    a.release_bucket(0, 12).unwrap();
    assert_eq!(a.bucket(0, 12).unwrap().data_type, DataType::Free);
}

/// A bucket whose alloc key says free but that the freespace keys on disk leave out is held
/// back: it counts as neither free nor allocatable, and allocation takes every other free
/// bucket but never it (bcachefs allocates from the freespace btree).
#[test]
fn free_buckets_the_freespace_keys_leave_out_are_held_back() {
    let user = AllocV4 { data_type: DataType::User, dirty_sectors: 8, ..AllocV4::free(0) };
    let a = Allocator::from_alloc_keys(devices(), NODE_SIZE, [(bucket_pos(0, 10), user)]).unwrap();
    let free_before = a.dev_usage(0).unwrap().free;
    // Device 0's free runs are 4..10 and 11..96; the disk lists 4..8 and 20..96.
    let whole = |n: u64| std::iter::once(0..n).collect::<Vec<_>>();
    let listed = BTreeMap::from([(0u8, vec![20..96, 4..8]), (1, whole(80)), (2, whole(120))]);
    let held = a.hold_unlisted(&listed);
    let want: Vec<(u8, u64)> = [8, 9].into_iter().chain(11..20).map(|b| (0, b)).collect();
    assert_eq!(held, want);
    assert_eq!(a.dev_usage(0).unwrap().free, free_before - want.len() as u64);
    let req = AllocRequest {
        nr_replicas: 1,
        target: "ssd.a".to_owned(),
        data_type: DataType::User,
        watermark: Watermark::Reclaim,
    };
    let mut got = Vec::new();
    while let Ok(buckets) = a.alloc_buckets(&req) {
        got.extend(buckets.into_iter().map(|b| (b.dev, b.bucket)));
    }
    // The target falls back to every device once ssd.a is out: count device 0's.
    let from_dev0 = got.iter().filter(|b| b.0 == 0).count() as u64;
    assert_eq!(from_dev0, free_before - want.len() as u64, "every other free bucket goes");
    assert!(got.iter().all(|b| !want.contains(b)), "a held bucket was handed out");
    assert!(want.iter().all(|&(d, b)| a.bucket(d, b).unwrap().data_type == DataType::Free));

    // Listed ranges that overlap each other and span a run's edge (damaged freespace keys).
    let b = Allocator::from_alloc_keys(devices(), NODE_SIZE, [(bucket_pos(0, 10), user)]).unwrap();
    let listed = BTreeMap::from([(0u8, vec![60..70, 2..12, 9..30]), (1, whole(80)), (2, whole(120))]);
    let held: Vec<u64> = b.hold_unlisted(&listed).into_iter().map(|(_, b)| b).collect();
    assert_eq!(held, (30..60).chain(70..96).collect::<Vec<u64>>());
}
