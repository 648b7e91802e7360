//! One bucket's life cycle and its persistent record: layout states at format, sector
//! accounting with typed errors, empty -> need_discard -> discard with a gen bump (wrapping),
//! release of an unwritten bucket without one, and the alloc / freespace / need_discard keys that
//! `take_updates` returns for each change.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use allocator::{AllocRequest, Allocator, DeviceInit, Watermark};
use common::{Model, dev, member};
use fs_core::bkey::alloc::{ALLOC_NEED_DISCARD, ALLOC_NEED_INC_GEN, bucket_pos};
use fs_core::bkey::{AllocV4, DataType, KeyType};
use fs_core::bpos::BtreeId;
use fs_core::error::ErrCode;
use fs_core::sb::{JournalBuckets, MemberState};
use fs_core::uuid::Uuid;

const NODE_SIZE: u64 = 16 << 10;
const BUCKET: u32 = 64 << 10;
const BUCKET_SECTORS: u32 = BUCKET / 512;

fn one_device(nbuckets: u64) -> Allocator {
    Allocator::new(vec![dev(0, member(nbuckets, BUCKET, 2, 1, ""), 2..5)], NODE_SIZE).unwrap()
}

fn user(watermark: Watermark) -> AllocRequest {
    AllocRequest { nr_replicas: 1, target: String::new(), data_type: DataType::User, watermark }
}

/// At format every bucket has its layout state and the first batch of updates records what a
/// new filesystem's alloc info holds, sorted by btree then position: alloc keys for the
/// superblock and journal buckets only (unused buckets have none), one freespace key covering
/// the free run, and no need_discard key or whiteout (no bucket ever was need_discard). The next
/// batch is empty.
#[test]
fn format_records_the_layout_sparsely() {
    let a = one_device(32);
    let u = a.dev_usage(0).unwrap();
    assert_eq!((u.sb, u.journal, u.free), (2, 3, 27));
    let sb = a.bucket(0, 1).unwrap();
    assert_eq!((sb.data_type, sb.dirty_sectors), (DataType::Sb, BUCKET_SECTORS));
    let j = a.bucket(0, 4).unwrap();
    assert_eq!((j.data_type, j.dirty_sectors), (DataType::Journal, BUCKET_SECTORS));

    let updates = a.take_updates();
    let order: Vec<_> = updates.iter().map(|(b, k)| (*b, k.pos)).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
    let of =
        |btree: BtreeId| updates.iter().filter(move |(b, _)| *b == btree).map(|(_, k)| k).collect::<Vec<_>>();
    let alloc = of(BtreeId::Alloc);
    assert_eq!(alloc.len(), 5, "{alloc:?}");
    for k in alloc {
        let want = if k.pos.offset < 2 { DataType::Sb } else { DataType::Journal };
        assert_eq!((k.ty, AllocV4::decode(&k.val).unwrap().data_type), (KeyType::AllocV4, want));
    }
    let free = of(BtreeId::Freespace);
    assert_eq!(free.len(), 1, "{free:?}");
    assert_eq!(
        (free[0].ty, free[0].pos.offset, free[0].size),
        (KeyType::Set, 32, 27),
        "one key for buckets 5..32"
    );
    assert!(of(BtreeId::NeedDiscard).is_empty());
    assert!(a.take_updates().is_empty());
}

/// A need_discard key or whiteout is handed out only when a bucket's need_discard state changes:
/// filling a bucket changes its alloc key alone; emptying it sets the key; the discard whites
/// it out.
#[test]
fn need_discard_keys_only_when_need_discard_changes() {
    let a = one_device(32);
    let _ = a.take_updates();
    let need_discard = |a: &Allocator| {
        let u = a.take_updates();
        assert!(u.iter().any(|(b, _)| *b == BtreeId::Alloc), "no alloc key for a changed bucket: {u:?}");
        u.into_iter().filter(|(b, _)| *b == BtreeId::NeedDiscard).map(|(_, k)| k.ty).collect::<Vec<_>>()
    };
    let b = a.alloc_buckets(&user(Watermark::InteriorUpdates)).unwrap()[0];
    for (i, delta) in [100i64, -40].into_iter().enumerate() {
        a.add_sectors(0, b.bucket, DataType::User, delta, 10 + i as u64).unwrap();
        assert_eq!(need_discard(&a), vec![], "sector change {delta}");
    }
    a.add_sectors(0, b.bucket, DataType::User, -60, 12).unwrap();
    assert_eq!(need_discard(&a), vec![KeyType::Set]);
    a.discard(0, b.bucket).unwrap();
    assert_eq!(need_discard(&a), vec![KeyType::Whiteout]);
}

/// Written, emptied, discarded, reused: need_discard records the emptying seq; only discard frees
/// it, bumping the gen; the index keys follow each step.
#[test]
fn empty_bucket_needs_discard_then_gets_a_new_gen() {
    let a = one_device(32);
    let mut model = Model::synced(&a);
    let b = a.alloc_buckets(&user(Watermark::InteriorUpdates)).unwrap()[0];
    assert_eq!(b.bucket_gen, 0);
    a.add_sectors(0, b.bucket, DataType::User, 100, 10).unwrap();
    a.add_sectors(0, b.bucket, DataType::User, -40, 11).unwrap();
    model.sync(&a).unwrap();
    let pos = bucket_pos(0, b.bucket);
    assert_eq!(model.alloc[&pos].dirty_sectors, 60);
    assert!(!model.freespace().unwrap().contains(&pos));

    a.add_sectors(0, b.bucket, DataType::User, -60, 12).unwrap();
    model.sync(&a).unwrap();
    let k = model.alloc[&pos];
    assert_eq!((k.data_type, k.journal_seq_empty, k.bucket_gen), (DataType::NeedDiscard, 12, 0));
    assert_eq!(k.flags, ALLOC_NEED_DISCARD | ALLOC_NEED_INC_GEN);
    assert!(model.need_discard.contains(&pos) && !model.freespace().unwrap().contains(&pos));

    // Emptying again, releasing and allocating from it are all refused.
    assert_eq!(
        a.add_sectors(0, b.bucket, DataType::User, 1, 13).unwrap_err().code(),
        ErrCode::BucketAccounting
    );
    assert_eq!(a.release_bucket(0, b.bucket).unwrap_err().code(), ErrCode::BucketAccounting);

    a.discard(0, b.bucket).unwrap();
    model.sync(&a).unwrap();
    let k = model.alloc[&pos];
    assert_eq!((k.data_type, k.bucket_gen, k.flags), (DataType::Free, 1, 0));
    assert!(model.freespace().unwrap().contains(&pos) && !model.need_discard.contains(&pos));
    assert_eq!(
        a.discard(0, b.bucket).unwrap_err().code(),
        ErrCode::BucketAccounting,
        "a free bucket is not discarded"
    );
}

/// The gen wraps after 255: 256 reuses of a single data bucket come back to gen 0.
#[test]
fn bucket_gen_wraps() {
    let a = Allocator::new(vec![dev(0, member(8, BUCKET, 1, 1, ""), 1..7)], NODE_SIZE).unwrap();
    let mut model = Model::synced(&a);
    let mut gens = Vec::new();
    for seq in 0..257u64 {
        let b = a.alloc_buckets(&user(Watermark::Reclaim)).unwrap()[0];
        assert_eq!(b.bucket, 7);
        gens.push(b.bucket_gen);
        a.add_sectors(0, 7, DataType::User, 8, seq).unwrap();
        a.add_sectors(0, 7, DataType::User, -8, seq).unwrap();
        a.discard(0, 7).unwrap();
    }
    model.sync(&a).unwrap();
    assert_eq!(&gens[..3], &[0, 1, 2]);
    assert_eq!(&gens[254..], &[254, 255, 0]);
}

/// A bucket allocated and never written goes back to free with its gen unchanged. While it is
/// open (nothing accounted in it yet) the disk still records it as free: no update is due.
#[test]
fn release_of_unwritten_bucket_keeps_gen() {
    let a = one_device(32);
    let mut model = Model::synced(&a);
    let b = a.alloc_buckets(&user(Watermark::Normal)).unwrap()[0];
    assert_eq!(a.bucket(0, b.bucket).unwrap().data_type, DataType::User);
    assert_eq!(a.pending_updates(), 0, "an open bucket changes nothing on disk");
    model.sync(&a).unwrap();
    a.release_bucket(0, b.bucket).unwrap();
    assert_eq!(a.pending_updates(), 0);
    model.sync(&a).unwrap();
    let st = a.bucket(0, b.bucket).unwrap();
    assert_eq!((st.data_type, st.bucket_gen), (DataType::Free, b.bucket_gen));
    assert!(!model.alloc.contains_key(&bucket_pos(0, b.bucket)), "an unused bucket has no key");
    assert_eq!(
        a.release_bucket(0, b.bucket).unwrap_err().code(),
        ErrCode::BucketAccounting,
        "released twice"
    );
}

/// Accounting that contradicts the bucket is an fsck-class error naming device and bucket, and
/// changes nothing.
#[test]
fn accounting_errors_are_typed_and_change_nothing() {
    let a = one_device(32);
    let mut model = Model::synced(&a);
    let b = a.alloc_buckets(&user(Watermark::Normal)).unwrap()[0];
    a.add_sectors(0, b.bucket, DataType::User, 10, 1).unwrap();
    model.sync(&a).unwrap();
    let cases: [(u8, u64, DataType, i64); 7] = [
        (0, b.bucket, DataType::Btree, 1),
        (0, b.bucket, DataType::User, -11),
        (0, b.bucket, DataType::User, i64::from(BUCKET_SECTORS)),
        (0, b.bucket, DataType::User, i64::MIN),
        (0, 20, DataType::User, 1),
        (0, 1, DataType::Sb, 1),
        (0, 99, DataType::User, 1),
    ];
    for (d, bucket, t, delta) in cases {
        let e = a.add_sectors(d, bucket, t, delta, 2).unwrap_err();
        assert_eq!(e.code(), ErrCode::BucketAccounting, "{e}");
        assert_eq!((e.context().dev, e.context().bucket), (Some(0), Some(bucket)), "{e}");
        assert_eq!(a.pending_updates(), 0, "{e}");
    }
    let e = a.add_sectors(5, 1, DataType::User, 1, 2).unwrap_err();
    assert_eq!((e.code(), e.context().dev), (ErrCode::BucketAccounting, Some(5)));
    assert_eq!(a.bucket(0, b.bucket).unwrap().dirty_sectors, 10);
    a.add_sectors(0, b.bucket, DataType::User, 0, 3).unwrap();
    assert_eq!(a.pending_updates(), 0, "a zero delta is no change");
    model.sync(&a).unwrap();
}

/// Requests and layouts that make no sense are refused up front with typed errors; unused member
/// slots are skipped; a read-only device keeps its state but never allocates.
#[test]
fn bad_requests_and_layouts() {
    let a = one_device(32);
    let mut r = user(Watermark::Normal);
    r.nr_replicas = 0;
    assert_eq!(a.alloc_buckets(&r).unwrap_err().code(), ErrCode::InvalidArgument);
    for t in [DataType::Free, DataType::Sb, DataType::Journal, DataType::NeedDiscard, DataType::NeedGcGens] {
        let r = AllocRequest { data_type: t, ..user(Watermark::Normal) };
        assert_eq!(a.alloc_buckets(&r).unwrap_err().code(), ErrCode::InvalidArgument, "{t}");
    }

    let m = || member(32, BUCKET, 2, 1, "");
    let err = |devs: Vec<DeviceInit>, node: u64| Allocator::new(devs, node).err().map(|e| e.code());
    assert_eq!(err(vec![dev(0, m(), 2..4), dev(0, m(), 2..4)], NODE_SIZE), Some(ErrCode::DeviceDuplicate));
    assert_eq!(err(vec![dev(0, m(), 1..4)], NODE_SIZE), Some(ErrCode::InvalidSbJournal));
    assert_eq!(err(vec![dev(0, m(), 30..33)], NODE_SIZE), Some(ErrCode::InvalidSbJournal));
    let two = DeviceInit {
        dev_idx: 0,
        member: m(),
        journal: JournalBuckets { ranges: vec![2..5, 4..6] },
        present: true,
    };
    assert_eq!(err(vec![two], NODE_SIZE), Some(ErrCode::InvalidSbJournal));
    assert_eq!(
        err(vec![dev(0, member(32, 1000, 2, 1, ""), 2..4)], NODE_SIZE),
        Some(ErrCode::InvalidSbMembers)
    );
    assert_eq!(
        err(vec![dev(0, member(2, BUCKET, 2, 1, ""), 0..0)], NODE_SIZE),
        Some(ErrCode::InvalidSbMembers)
    );
    assert_eq!(err(vec![dev(0, m(), 2..4)], 1000), Some(ErrCode::InvalidArgument));

    let mut unused = m();
    unused.uuid = Uuid::NIL;
    let mut ro = m();
    ro.state = MemberState::Ro;
    let a = Allocator::new(vec![dev(0, unused, 2..4), dev(1, ro, 2..4)], NODE_SIZE).unwrap();
    assert_eq!(a.devices(), vec![1]);
    assert_eq!(a.dev_usage(1).unwrap().free, 28);
    let e = a.alloc_buckets(&user(Watermark::Reclaim)).unwrap_err();
    assert_eq!(e.code(), ErrCode::InsufficientDevices, "{e}");
}

/// Taking the updates of some buckets only (a transaction's own accounting) leaves the others
/// pending; a take given back (its transaction failed) is as if it never happened; and what was
/// handed out is consistent on its own: every bucket the freespace keys
/// cover is free by its alloc key (or has none), and every free one is covered. Checked after
/// every partial take of a seeded random history.
#[test]
fn partial_takes_hand_out_a_consistent_record() {
    for seed in 0..30u64 {
        let mut rng = fs_core::rng::Rng::new(seed);
        let a = one_device(64);
        let mut model = Model::synced(&a);
        let mut live: Vec<u64> = Vec::new();
        for seq in 1..200u64 {
            let mut touched = Vec::new();
            match rng.below(3) {
                0 => {
                    if let Ok(got) = a.alloc_buckets(&user(Watermark::Normal)) {
                        a.add_sectors(0, got[0].bucket, DataType::User, 8, seq).unwrap();
                        live.push(got[0].bucket);
                        touched.push(got[0].bucket);
                    }
                }
                1 if !live.is_empty() => {
                    let b = live.swap_remove(rng.below(live.len() as u64) as usize);
                    a.add_sectors(0, b, DataType::User, -8, seq).unwrap();
                    touched.push(b);
                }
                _ => {
                    let nd: Vec<u64> = (0..64)
                        .filter(|&b| a.bucket(0, b).is_some_and(|s| s.data_type == DataType::NeedDiscard))
                        .collect();
                    if let Some(&b) = rng.choose(&nd) {
                        a.discard(0, b).unwrap();
                    }
                }
            }
            // Only some of the touched buckets are taken; discards stay pending.
            let take: Vec<(u8, u64)> = touched.iter().filter(|_| rng.chance(0.7)).map(|&b| (0, b)).collect();
            // A take given back leaves everything as it was: the same take again hands out the
            // same keys.
            let first = a.take_updates_of(&take, seq);
            let keys = first.updates.clone();
            if rng.chance(0.3) {
                a.untake(first);
                let again = a.take_updates_of(&take, seq);
                assert_eq!(again.updates, keys, "seed {seed} seq {seq}: untake did not restore");
                model.apply(again.updates).unwrap();
            } else {
                model.apply(first.updates).unwrap();
            }
            let free = model.freespace().unwrap_or_else(|e| panic!("seed {seed} seq {seq}: {e}"));
            for b in 5..64 {
                let pos = bucket_pos(0, b);
                let k = model.alloc.get(&pos).copied().unwrap_or(AllocV4::free(0));
                assert_eq!(
                    free.contains(&pos),
                    k.data_type == DataType::Free,
                    "seed {seed} seq {seq} bucket {b}: {k:?}"
                );
                assert_eq!(
                    model.need_discard.contains(&pos),
                    k.data_type == DataType::NeedDiscard,
                    "seed {seed} seq {seq} bucket {b}"
                );
            }
        }
        model.sync(&a).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}
