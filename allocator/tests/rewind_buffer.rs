//! The rewind buffer of discards, per profile: v1.37.5 keeps one filesystem-wide budget of
//! need_discard buckets, so a small metadata device behind a big one can have every emptied
//! bucket kept and never get one back (bcachefs #1108); since v1.38 each device keeps a budget
//! of its own capacity and discards the rest.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use allocator::{AllocRequest, Allocator, RewindBuffer, Watermark};
use common::{dev, member};
use fs_core::bkey::DataType;

const NODE_SIZE: u64 = 16 << 10;
const BUCKET: u32 = 64 << 10;

/// A small "ssd" of 100 buckets and a big "hdd" of 10000; `emptied` buckets of the ssd were
/// written and emptied at journal seqs 1..=emptied, so they wait for discard.
fn small_behind_big(emptied: u64) -> Allocator {
    let a = Allocator::new(
        vec![
            dev(0, member(100, BUCKET, 1, 1, "ssd"), 1..2),
            dev(1, member(10_000, BUCKET, 1, 1, "hdd"), 1..2),
        ],
        NODE_SIZE,
    )
    .unwrap();
    let req = AllocRequest {
        nr_replicas: 1,
        target: "ssd".to_owned(),
        data_type: DataType::User,
        watermark: Watermark::InteriorUpdates,
    };
    for seq in 1..=emptied {
        let b = a.alloc_buckets(&req).unwrap()[0];
        assert_eq!(b.dev, 0);
        a.add_sectors(0, b.bucket, DataType::User, 8, seq).unwrap();
        a.add_sectors(0, b.bucket, DataType::User, -8, seq).unwrap();
    }
    drop(a.take_updates());
    assert_eq!(a.dev_usage(0).unwrap().need_discard, emptied);
    a
}

/// Filesystem-wide 4 %: the budget is 4 % of 10100 buckets, 404, more than the ssd's 50
/// need_discard buckets: none is discarded, however durable.
#[test]
fn v1_37_5_keeps_a_small_device_s_buckets_behind_a_big_one() {
    let a = small_behind_big(50);
    let freed = a.discard_durable(u64::MAX - 1, RewindBuffer::FsWide { percent: 4 }).unwrap();
    assert!(freed.is_empty(), "{freed:?}");
    assert_eq!(a.dev_usage(0).unwrap().need_discard, 50);
}

/// Per device 4 %: the ssd keeps 4 of its 100 buckets, its most recently emptied (seqs 47..=50),
/// and discards the other 46 once durable; none before.
#[test]
fn per_device_budget_discards_all_but_the_newest() {
    let a = small_behind_big(50);
    assert!(a.discard_durable(0, RewindBuffer::PerDevice { percent: 4 }).unwrap().is_empty());
    let freed = a.discard_durable(u64::MAX - 1, RewindBuffer::PerDevice { percent: 4 }).unwrap();
    assert_eq!(freed.len(), 46, "{freed:?}");
    let u = a.dev_usage(0).unwrap();
    assert_eq!(u.need_discard, 4);
    let kept: Vec<u64> = (0..100)
        .filter_map(|b| a.bucket(0, b).filter(|st| st.data_type == DataType::NeedDiscard))
        .map(|st| st.journal_seq_empty)
        .collect();
    assert_eq!(kept, vec![47, 48, 49, 50]);
    // 0 %: nothing kept.
    let freed = a.discard_durable(u64::MAX - 1, RewindBuffer::PerDevice { percent: 0 }).unwrap();
    assert_eq!(freed.len(), 4);
}
