//! A key cache update racing the flush of the same entry by journal reclaim, on the real
//! `KeyCache` and `Journal` through `fs_core::sync` (a `BTreeMap` behind `FlushTarget` stands in
//! for the btree). Under `--cfg loom` every interleaving (up to the preemption bound CI sets) is
//! checked; in a normal build the same bodies run once on real threads.
//!
//! Invariants:
//! - no dirty bit is lost: after both threads and a final flush, the btree holds the newest key;
//! - no half-written key is flushed: every key the btree receives is one that was committed;
//! - the pin is dropped exactly once: no pin is left, and none was dropped twice (the journal's
//!   pin table asserts that);
//! - an update made during a flush is re-pinned: while the entry is dirty it holds a pin.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use fs_core::bkey::{Bkey, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::opts::Behavior;
use fs_core::sync::{Arc, Mutex, model, thread};
use journal::{Journal, JournalWatermark, JsetEntry};
use key_cache::{FillInput, KeyCache};

use common::{Tree, journal, target};

const POS: Bpos = Bpos { inode: 0, offset: 1, snapshot: 0 };

fn key(v: u8) -> Bkey {
    Bkey::new(POS, KeyType::Set, vec![v; 8])
}

/// The open entry's seq for a commit carrying `v`.
fn commit(j: &Journal, v: u8) -> u64 {
    let res = j.reserve(64, JournalWatermark::Normal).unwrap();
    let seq = res.seq();
    let keys = vec![JsetEntry::BtreeKeys { btree: BtreeId::Alloc, level: 0, keys: vec![key(v)].into() }];
    j.commit(res, keys, Instant::now()).unwrap();
    seq
}

#[test]
fn an_update_racing_its_flush_is_never_lost() {
    model(|| {
        let tree = Arc::new(Tree { keys: Mutex::new(BTreeMap::from([(POS, key(0))])), topology_errors: 0 });
        let cache = KeyCache::new(Behavior::Fixed, target(&tree));
        let j = journal();
        let fill = || Ok(FillInput { btree_key: Some(key(0)), journal_key: None });
        let s1 = commit(&j, 1);
        cache.update(&j, BtreeId::Alloc, key(1), s1, fill).unwrap();
        j.flush().unwrap();

        let reclaim = {
            let j = j.clone();
            thread::spawn(move || j.flush_all_pins().map(|_| ()))
        };
        let s2 = commit(&j, 2);
        cache.update(&j, BtreeId::Alloc, key(2), s2, || unreachable!("the entry exists")).unwrap();
        let (dirty, pin) = cache.entry(BtreeId::Alloc, POS).unwrap().dirty_and_pin();
        assert_eq!(dirty, pin.is_some(), "a dirty entry holds a pin, a clean one none");
        assert!(pin.is_none_or(|p| p <= s2));
        j.flush().unwrap();
        reclaim.join().unwrap().unwrap();

        j.flush_all_pins().unwrap();
        assert_eq!(tree.keys.lock().get(&POS), Some(&key(2)), "the newest update reached the btree");
        assert_eq!((cache.nr_dirty(), j.nr_pins()), (0, 0), "the pin was dropped, once");
    });
}
