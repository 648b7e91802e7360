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

/// At format every bucket has its layout state and the first batch of updates records all of
/// them, sorted by btree then position; the next batch is empty.
#[test]
fn format_records_every_bucket() {
    let a = one_device(32);
    let u = a.dev_usage(0).unwrap();
    assert_eq!((u.sb, u.journal, u.free), (2, 3, 27));
    let sb = a.bucket(0, 1).unwrap();
    assert_eq!((sb.data_type, sb.dirty_sectors), (DataType::Sb, BUCKET_SECTORS));
    let j = a.bucket(0, 4).unwrap();
    assert_eq!((j.data_type, j.dirty_sectors), (DataType::Journal, BUCKET_SECTORS));

    let updates = a.take_updates();
    assert_eq!(updates.len(), 3 * 32);
    let order: Vec<_> = updates.iter().map(|(b, k)| (*b, k.pos)).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
    for (btree, k) in &updates {
        let b = k.pos.offset;
        let free = b >= 5;
        match btree {
            BtreeId::Alloc => {
                assert_eq!(k.ty, KeyType::AllocV4);
                let want = if free {
                    DataType::Free
                } else if b < 2 {
                    DataType::Sb
                } else {
                    DataType::Journal
                };
                assert_eq!(AllocV4::decode(&k.val).unwrap().data_type, want);
            }
            BtreeId::Freespace => assert_eq!(k.ty, if free { KeyType::Set } else { KeyType::Whiteout }),
            BtreeId::NeedDiscard => assert_eq!(k.ty, KeyType::Whiteout),
            other => panic!("update for {other}"),
        }
    }
    assert!(a.take_updates().is_empty());
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
    assert!(!model.freespace.contains(&pos));

    a.add_sectors(0, b.bucket, DataType::User, -60, 12).unwrap();
    model.sync(&a).unwrap();
    let k = model.alloc[&pos];
    assert_eq!((k.data_type, k.journal_seq_empty, k.bucket_gen), (DataType::NeedDiscard, 12, 0));
    assert_eq!(k.flags, ALLOC_NEED_DISCARD | ALLOC_NEED_INC_GEN);
    assert!(model.need_discard.contains(&pos) && !model.freespace.contains(&pos));

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
    assert!(model.freespace.contains(&pos) && !model.need_discard.contains(&pos));
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

/// A bucket allocated and never written goes back to free with its gen unchanged.
#[test]
fn release_of_unwritten_bucket_keeps_gen() {
    let a = one_device(32);
    let mut model = Model::synced(&a);
    let b = a.alloc_buckets(&user(Watermark::Normal)).unwrap()[0];
    model.sync(&a).unwrap();
    assert_eq!(model.alloc[&bucket_pos(0, b.bucket)].data_type, DataType::User);
    a.release_bucket(0, b.bucket).unwrap();
    model.sync(&a).unwrap();
    let k = model.alloc[&bucket_pos(0, b.bucket)];
    assert_eq!((k.data_type, k.bucket_gen), (DataType::Free, b.bucket_gen));
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
    let two = DeviceInit { dev_idx: 0, member: m(), journal: JournalBuckets { ranges: vec![2..5, 4..6] } };
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
