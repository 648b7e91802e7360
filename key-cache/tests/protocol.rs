//! The key cache's protocols on the real `Journal`, with a `BTreeMap` standing in for the btree
//! behind [`FlushTarget`]: the fill rule of each profile, dirty tracking under pins, flushes that
//! race updates, the coherency check of each profile, and a seeded random sequence of updates,
//! deletions and flushes against a model (proptest).

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use fs_core::bkey::{Bkey, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::error::{ErrCode, Result};
use fs_core::opts::Behavior;
use fs_core::sync::{Arc, Mutex};
use journal::{Journal, JournalWatermark, JsetEntry};
use key_cache::{EntryFlags, FillInput, FlushTarget, Found, KeyCache, Update, fill_rule};

use common::{Tree, journal, target};
use proptest::prelude::*;

/// A commit into the open entry, as a transaction does: its seq, pinned by the update that
/// follows before [`written`] closes the entry (the next commit then has the next seq).
fn commit(j: &Journal) -> u64 {
    let res = j.reserve(64, JournalWatermark::Normal).unwrap();
    let seq = res.seq();
    let keys = vec![JsetEntry::BtreeKeys { btree: BtreeId::Alloc, level: 0, keys: vec![key(0, 0)].into() }];
    j.commit(res, keys, Instant::now()).unwrap();
    seq
}

/// Writes the open entry.
fn written(j: &Journal) {
    j.flush().unwrap();
}

fn key(i: u64, v: u8) -> Bkey {
    Bkey::new(Bpos::new(0, i, 0), KeyType::Set, vec![v; 8])
}

fn setup(behavior: Behavior, tree: Tree) -> (Arc<Tree>, Arc<KeyCache>, Arc<Journal>) {
    let tree = Arc::new(tree);
    let cache = KeyCache::new(behavior, target(&tree));
    (tree, cache, journal())
}

/// A fill from what the tree holds, with no journal keys pending.
fn from(tree: &Tree, pos: Bpos) -> impl FnOnce() -> Result<FillInput> + '_ {
    move || Ok(FillInput { btree_key: tree.keys.lock().get(&pos).cloned(), journal_key: None })
}

/// The fill rule of each profile on the #1107 fill-rule case (a live btree key with a pending
/// journal deletion) and its neighbours.
#[test]
fn fill_rules_per_profile() {
    let live = Some(key(1, 1));
    let gone = Some(Bkey::whiteout(Bpos::new(0, 1, 0)));
    let pending_deletion = FillInput { btree_key: live.clone(), journal_key: gone.clone() };
    let f = fill_rule(Behavior::V1_37_5, pending_deletion.clone());
    assert_eq!((f.key, f.immediate_flush), (live.clone(), false), "v1.37.5 caches the stale live key");
    for b in [Behavior::V1_39, Behavior::Fixed] {
        let f = fill_rule(b, pending_deletion.clone());
        assert_eq!((f.key, f.immediate_flush), (None, true), "{b:?}");
        let newer = FillInput { btree_key: live.clone(), journal_key: Some(key(1, 2)) };
        assert_eq!(fill_rule(b, newer).key, Some(key(1, 2)), "{b:?}: the journal key wins");
        let deleted_in_btree = FillInput { btree_key: gone.clone(), journal_key: Some(key(1, 3)) };
        let f = fill_rule(b, deleted_in_btree);
        assert_eq!((f.key, f.immediate_flush), (Some(key(1, 3)), true), "{b:?}");
    }
    let f = fill_rule(Behavior::V1_37_5, FillInput { btree_key: gone, journal_key: Some(key(1, 4)) });
    assert_eq!(
        (f.key, f.immediate_flush),
        (Some(key(1, 4)), true),
        "v1.37.5 looks at the journal key when the btree's is deleted, and flushes it immediately"
    );
    let newer = FillInput { btree_key: live.clone(), journal_key: Some(key(1, 2)) };
    assert_eq!(fill_rule(Behavior::V1_37_5, newer).key, live, "v1.37.5 ignores a newer journal key");
    for b in [Behavior::V1_37_5, Behavior::V1_39, Behavior::Fixed] {
        let f = fill_rule(b, FillInput::default());
        assert_eq!(f.key, None, "{b:?}: nothing to cache where there is no key");
    }
    // A new key (none in the btree, the one being replayed pending): an empty slot reads as
    // deleted, so every profile writes it through; a dirty entry is only ever over a live key.
    let new_key = FillInput { btree_key: None, journal_key: Some(key(1, 7)) };
    for b in [Behavior::V1_37_5, Behavior::V1_39, Behavior::Fixed] {
        assert!(fill_rule(b, new_key.clone()).immediate_flush, "{b:?}");
    }
}

/// An update of a cached key makes the entry dirty and pinned at its seq; the pin's flush
/// writes it into the btree, clears DIRTY and drops the pin. A deletion and a position with no
/// btree key write through; the cache never holds a deleted key.
#[test]
fn updates_pin_and_flushes_write_back() {
    let tree = Tree::default();
    tree.keys.lock().insert(Bpos::new(0, 1, 0), key(1, 0));
    let (tree, cache, j) = setup(Behavior::Fixed, tree);
    let seq = commit(&j);
    let pos = Bpos::new(0, 1, 0);
    assert_eq!(cache.update(&j, BtreeId::Alloc, key(1, 5), seq, from(&tree, pos)).unwrap(), Update::Cached);
    written(&j);
    let (k, flags, s) = cache.entry(BtreeId::Alloc, pos).unwrap().snapshot();
    assert_eq!((k, s), (key(1, 5), seq));
    assert!(flags.contains(EntryFlags::DIRTY));
    assert_eq!((cache.nr_dirty(), j.nr_pins(), j.last_seq()), (1, 1, seq));
    assert_eq!(tree.keys.lock().get(&pos), Some(&key(1, 0)), "not written before the flush");

    j.flush_all_pins().unwrap();
    assert_eq!(tree.keys.lock().get(&pos), Some(&key(1, 5)));
    assert_eq!((cache.nr_dirty(), j.nr_pins()), (0, 0));
    assert!(!cache.entry(BtreeId::Alloc, pos).unwrap().snapshot().1.contains(EntryFlags::DIRTY));

    let seq = commit(&j);
    let none = Bpos::new(0, 9, 0);
    assert_eq!(
        cache.update(&j, BtreeId::Alloc, key(9, 1), seq, from(&tree, none)).unwrap(),
        Update::WriteThrough
    );
    assert!(cache.entry(BtreeId::Alloc, none).is_none());
    cache.update(&j, BtreeId::Alloc, key(1, 6), seq, from(&tree, pos)).unwrap();
    let deletion = Bkey::whiteout(pos);
    assert_eq!(
        cache.update(&j, BtreeId::Alloc, deletion, seq, from(&tree, pos)).unwrap(),
        Update::WriteThrough
    );
    assert!(cache.entry(BtreeId::Alloc, pos).is_none(), "a deleted key is never cached");
    assert_eq!(
        (cache.nr_dirty(), cache.nr_keys(), j.nr_pins()),
        (0, 0, 0),
        "the dirty entry's pin went with it"
    );
}

/// A flush that finds no live btree key: the simulated kernel BUG at the version's line in
/// v1.37.5 and v1.39, the typed error naming the earlier topology errors in the fixed profile.
/// The entry stays dirty and pinned either way.
#[test]
fn coherency_check_per_profile() {
    for (b, want) in [
        (Behavior::V1_37_5, "kernel BUG at fs/bcachefs/btree/key_cache.c:475!"),
        (Behavior::V1_39, "kernel BUG at fs/bcachefs/btree/key_cache.c:469!"),
        (
            Behavior::Fixed,
            "after 9 topology errors in btree alloc (first: btree node header doesn't match ptr",
        ),
    ] {
        let tree = Tree { topology_errors: 9, ..Tree::default() };
        let pos = Bpos::new(0, 1, 0);
        tree.keys.lock().insert(pos, key(1, 0));
        let (tree, cache, j) = setup(b, tree);
        let seq = commit(&j);
        cache.update(&j, BtreeId::Alloc, key(1, 5), seq, from(&tree, pos)).unwrap();
        written(&j);
        // Something deletes the btree key behind the cache's back (a wrong node, a pending
        // journal deletion the fill did not see).
        tree.keys.lock().remove(&pos);
        let e = j.flush_all_pins().unwrap_err();
        let code = if b == Behavior::Fixed { ErrCode::BtreeKeyCacheCoherency } else { ErrCode::KernelBug };
        assert!(e.matches(code), "{b:?}: {e}");
        assert!(e.to_string().contains(want), "{b:?}: {e}");
        assert_eq!((cache.nr_dirty(), j.nr_pins()), (1, 1), "{b:?}");
        if b == Behavior::Fixed {
            assert!(e.matches(ErrCode::Eio), "the typed error is in the EIO class");
        }
        // The journal is emergency read-only now; the pin goes down with it.
        cache.abandon_pins();
        assert_eq!(cache.nr_dirty(), 0);
    }
}

/// An update between a flush's copy and its end is not lost: the entry stays dirty, its pin
/// moves to the newer seq, and the next flush writes the newer key; an update in the pinned
/// entry itself is written by the same flush.
#[test]
fn an_update_during_a_flush_is_repinned() {
    struct Racing {
        tree: Tree,
        during: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }
    impl FlushTarget for Racing {
        fn flush_key(
            &self,
            b: BtreeId,
            key: &Bkey,
            seq: u64,
            check: &dyn Fn(Found<'_>) -> Result<()>,
        ) -> Result<()> {
            let during = self.during.lock().take();
            if let Some(f) = during {
                f();
            }
            self.tree.flush_key(b, key, seq, check)
        }
    }
    let pos = Bpos::new(0, 1, 0);
    let racing = Arc::new(Racing { tree: Tree::default(), during: Mutex::new(None) });
    racing.tree.keys.lock().insert(pos, key(1, 0));
    let target: std::sync::Weak<dyn FlushTarget> = Arc::downgrade(&(racing.clone() as Arc<dyn FlushTarget>));
    let cache = KeyCache::new(Behavior::Fixed, target);
    let j = journal();
    let s1 = commit(&j);
    let fill = || Ok(FillInput { btree_key: Some(key(1, 0)), journal_key: None });
    cache.update(&j, BtreeId::Alloc, key(1, 1), s1, fill).unwrap();
    written(&j);
    let s2 = commit(&j);
    {
        let (cache, j) = (cache.clone(), j.clone());
        *racing.during.lock() = Some(Box::new(move || {
            cache.update(&j, BtreeId::Alloc, key(1, 2), s2, || unreachable!("the entry exists")).unwrap();
        }));
    }
    j.flush_pins(s1).unwrap();
    assert_eq!(racing.tree.keys.lock().get(&pos), Some(&key(1, 1)), "the key copied before the update");
    let (k, flags, _) = cache.entry(BtreeId::Alloc, pos).unwrap().snapshot();
    assert_eq!(k, key(1, 2));
    assert!(flags.contains(EntryFlags::DIRTY), "the update made during the flush is still dirty");
    assert_eq!((j.nr_pins(), j.last_seq()), (1, s2), "re-pinned at the newer seq");
    written(&j);
    j.flush_all_pins().unwrap();
    assert_eq!(racing.tree.keys.lock().get(&pos), Some(&key(1, 2)));
    assert_eq!((cache.nr_dirty(), j.nr_pins()), (0, 0));

    // An update during the flush in the very journal entry the pin is at: the pin cannot move
    // to its own seq, so the same flush writes the newer key too, then drops the pin.
    let s3 = commit(&j);
    cache.update(&j, BtreeId::Alloc, key(1, 3), s3, || unreachable!("the entry exists")).unwrap();
    {
        let (cache, j) = (cache.clone(), j.clone());
        *racing.during.lock() = Some(Box::new(move || {
            cache.update(&j, BtreeId::Alloc, key(1, 4), s3, || unreachable!("the entry exists")).unwrap();
        }));
    }
    written(&j);
    j.flush_all_pins().unwrap();
    assert_eq!(
        racing.tree.keys.lock().get(&pos),
        Some(&key(1, 4)),
        "the update in the same entry is written"
    );
    assert_eq!((cache.nr_dirty(), j.nr_pins()), (0, 0));
}

#[derive(Clone, Debug)]
enum Op {
    Update(u64, u8),
    Delete(u64),
    /// The open journal entry is written: later updates get the next seq.
    Write,
    Flush,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..24, any::<u8>()).prop_map(|(i, v)| Op::Update(i, v)),
        2 => (0u64..24).prop_map(Op::Delete),
        2 => Just(Op::Write),
        1 => Just(Op::Flush),
    ]
}

/// The cache plus the btree against a model map: after any sequence of updates, deletions and
/// flushes, reading through the cache (entry, else btree) gives the model; the dirty count
/// matches the journal's pins (one per dirty entry); after a final flush the btree alone equals
/// the model. Deletions and fills of absent keys write through, as the filesystem does. Seeded:
/// `BCSIM_PROPTEST_SEED=N` reruns a campaign, and the seed in use is printed.
#[test]
fn cache_and_btree_equal_the_model() {
    use proptest::test_runner::{Config, RngSeed, TestRunner};
    let seed = std::env::var("BCSIM_PROPTEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1107);
    eprintln!("proptest seed {seed} (BCSIM_PROPTEST_SEED to change)");
    let config =
        Config { cases: 96, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(arb_op(), 1..120), |ops| run_ops(&ops));
    if let Err(e) = result {
        panic!("proptest seed {seed}: {e}");
    }
}

fn run_ops(ops: &[Op]) -> std::result::Result<(), TestCaseError> {
    let (tree, cache, j) = setup(Behavior::Fixed, Tree::default());
    let mut model: BTreeMap<Bpos, Bkey> = BTreeMap::new();
    for op in ops {
        match *op {
            Op::Update(i, v) => {
                let seq = commit(&j);
                let k = key(i, v);
                let pos = k.pos;
                if cache.update(&j, BtreeId::Alloc, k.clone(), seq, from(&tree, pos)).unwrap()
                    == Update::WriteThrough
                {
                    tree.keys.lock().insert(pos, k.clone());
                }
                model.insert(pos, k);
            }
            Op::Delete(i) => {
                let seq = commit(&j);
                let pos = Bpos::new(0, i, 0);
                let r = cache.update(&j, BtreeId::Alloc, Bkey::whiteout(pos), seq, from(&tree, pos)).unwrap();
                prop_assert_eq!(r, Update::WriteThrough);
                tree.keys.lock().remove(&pos);
                model.remove(&pos);
            }
            Op::Write => written(&j),
            Op::Flush => {
                written(&j);
                j.flush_all_pins().unwrap();
            }
        }
        for i in 0..24u64 {
            let pos = Bpos::new(0, i, 0);
            let seen = cache.get(BtreeId::Alloc, pos).or_else(|| tree.keys.lock().get(&pos).cloned());
            prop_assert_eq!(seen.as_ref(), model.get(&pos), "pos {}", i);
        }
        prop_assert_eq!(cache.nr_dirty(), j.nr_pins());
    }
    written(&j);
    j.flush_all_pins().unwrap();
    prop_assert_eq!(&*tree.keys.lock(), &model);
    prop_assert_eq!((cache.nr_dirty(), j.nr_pins()), (0, 0));
    Ok(())
}

/// Rule 6: the dirty entries against the thresholds (1024 + nr/2 starts reclaim, 4096 + 3/4 nr
/// throttles), and the eviction clock: a clean entry not accessed since the last sweep goes,
/// an accessed one gets a second chance, a dirty one is never dropped.
#[test]
fn pressure_thresholds_and_eviction() {
    use key_cache::{Pressure, reclaim_threshold, throttle_threshold};
    assert_eq!((reclaim_threshold(0), throttle_threshold(0)), (1024, 4096));
    assert_eq!((reclaim_threshold(10_000), throttle_threshold(10_000)), (6024, 11_596));
    let tree = Tree::default();
    let n = 5000u64;
    for i in 0..n {
        tree.keys.lock().insert(Bpos::new(0, i, 0), key(i, 0));
    }
    let (tree, cache, j) = setup(Behavior::Fixed, tree);
    let mut seen = Vec::new();
    let seq = commit(&j);
    for i in 0..n {
        cache.update(&j, BtreeId::Alloc, key(i, 1), seq, from(&tree, Bpos::new(0, i, 0))).unwrap();
        seen.push(cache.pressure());
    }
    written(&j);
    // All entries dirty: nr == dirty, so reclaim starts past 2048 and throttling past 16384.
    assert_eq!(seen[2047], Pressure::None);
    assert_eq!(seen[2048], Pressure::Reclaim);
    assert_eq!(seen[4999], Pressure::Reclaim);
    assert_eq!(cache.evict(0), 0, "dirty entries are never evicted");
    j.flush_all_pins().unwrap();
    assert_eq!(cache.pressure(), Pressure::None);
    // Every entry was accessed by its update: the first sweep only takes that away.
    assert_eq!(cache.evict(1000), 0);
    assert!(cache.get(BtreeId::Alloc, Bpos::new(0, 7, 0)).is_some(), "accessed again");
    assert_eq!(cache.evict(1000), 4000);
    assert_eq!(cache.nr_keys(), 1000);
    assert!(cache.entry(BtreeId::Alloc, Bpos::new(0, 7, 0)).is_some(), "the accessed entry stays");
}
