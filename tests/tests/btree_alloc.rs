//! The btree and the real allocator together on formatted images: keys committed, written back
//! and unmounted cleanly come back after reopening; the alloc, freespace and need_discard btrees
//! agree with the allocator's in-memory state; node replicas sit on distinct devices in buckets
//! the alloc btree marks as btree buckets.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bcsim::fs::Fs;
use fs_core::bkey::{Bkey, DataType, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::BtreeConfig;
use fs_core::dev::{MemDevice, SharedDevice};
use fs_core::format::{DeviceSpec, format};
use fs_core::opts::{OptId, OptValue, Options};
use fs_core::rng::Rng;
use fs_core::sb::DeviceSet;

fn formatted(nr: usize, replicas: u64) -> Vec<SharedDevice> {
    let devs: Vec<SharedDevice> =
        (0..nr).map(|i| Arc::new(MemDevice::new(format!("mem{i}"), 256 << 20)) as SharedDevice).collect();
    let mut opts = Options::default();
    opts.set(OptId::MetadataReplicas, OptValue::U64(replicas)).unwrap();
    opts.set(OptId::BtreeNodeSize, OptValue::U64(16 << 10)).unwrap();
    let specs: Vec<DeviceSpec> = devs.iter().cloned().map(DeviceSpec::new).collect();
    format(&specs, &opts, None).unwrap();
    devs
}

fn open(devs: &[SharedDevice], writable: bool) -> Fs {
    Fs::open(
        DeviceSet::open(devs.to_vec()).unwrap(),
        writable,
        BtreeConfig { cache_nodes: 64, ..Default::default() },
    )
    .unwrap()
}

fn all(fs: &mut Fs, btree: BtreeId) -> Vec<Bkey> {
    fs.list(btree, Bpos::MIN, Bpos::MAX).unwrap()
}

#[test]
fn commit_unmount_reopen_and_alloc_btrees_agree() {
    let seed = 0x5eed_u64;
    let devs = formatted(3, 2);
    let fs = open(&devs, true);
    let mut rng = Rng::new(seed);
    let mut model = BTreeMap::new();
    for round in 0..20 {
        let keys: Vec<Bkey> = (0..500)
            .map(|_| {
                let i = rng.below(1 << 20);
                Bkey::new(Bpos::new(i % 97, i, 0), KeyType::Set, i.to_le_bytes().to_vec())
            })
            .collect();
        for k in &keys {
            model.insert(k.pos, k.clone());
        }
        fs.commit_batched(BtreeId::Extents, keys).unwrap();
        if round % 5 == 4 {
            fs.write_back().unwrap();
        }
    }
    fs.unmount().unwrap();

    let mut fs = open(&devs, true);
    let got = all(&mut fs, BtreeId::Extents);
    assert_eq!(got.len(), model.len(), "seed {seed:#x}");
    assert!(got.iter().zip(model.values()).all(|(a, b)| a == b), "seed {seed:#x}: keys differ after reopen");

    // The persisted allocator record matches the allocator rebuilt from it.
    fs.check_alloc_invariants().unwrap();
    let alloc_keys = fs.alloc_records().unwrap().alloc;

    // Every node of every btree: replicas on distinct devices, in btree buckets.
    for btree in [BtreeId::Extents, BtreeId::Alloc, BtreeId::Freespace] {
        for n in fs.nodes(btree).unwrap() {
            assert_eq!(n.ptrs.len(), 2, "{btree} node without 2 replicas");
            assert_ne!(n.ptrs[0].dev, n.ptrs[1].dev, "{btree} node replicas share a device");
            for p in &n.ptrs {
                let bucket = p.byte_offset() / fs.bucket_size(p.dev);
                let a = alloc_keys[&Bpos::new(u64::from(p.dev), bucket, 0)];
                assert_eq!(a.data_type, DataType::Btree, "{btree} node in a {} bucket", a.data_type);
                assert_eq!(a.bucket_gen, p.bucket_gen, "stale pointer");
            }
        }
    }
}

#[test]
fn read_only_open_refuses_writes() {
    let devs = formatted(2, 1);
    let fs = open(&devs, false);
    let e =
        fs.commit(BtreeId::Extents, [Bkey::new(Bpos::new(1, 1, 0), KeyType::Set, vec![0; 8])]).unwrap_err();
    assert!(e.matches(fs_core::error::ErrCode::Erofs), "{e}");
}
