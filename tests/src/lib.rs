//! Cross-crate tests live in `tests/tests/`; this library holds the helpers they share.

// Helpers for tests only: a failed unwrap here is the calling test failing, with its message.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bcsim::fs::Fs;
use bcsim::fsck::{FixMode, FsckOpts, FsckReport, fsck};
use bcsim::recovery::MountOpts;
use fs_core::btree::BtreeConfig;
use fs_core::dev::{MemDevice, SharedDevice};
use fs_core::format::{DeviceSpec, format};
use fs_core::opts::{OptId, OptValue, Options};
use fs_core::sb::DeviceSet;

/// Two formatted in-memory devices of `dev_bytes` with `bucket` byte buckets and 16 KiB btree
/// nodes: small enough that tests fill them in well under a second.
pub fn two_small_devices(dev_bytes: u64, bucket: u64) -> Vec<SharedDevice> {
    let devs: Vec<SharedDevice> =
        (0..2).map(|i| Arc::new(MemDevice::new(format!("mem{i}"), dev_bytes)) as SharedDevice).collect();
    let mut opts = Options::default();
    opts.set(OptId::BtreeNodeSize, OptValue::U64(16 << 10)).unwrap();
    let specs: Vec<DeviceSpec> = devs
        .iter()
        .cloned()
        .map(|d| DeviceSpec { bucket_size: Some(bucket), ..DeviceSpec::new(d) })
        .collect();
    format(&specs, &opts, None).unwrap();
    devs
}

/// `devs` opened read-write with a 64-node btree cache.
pub fn open_small(devs: &[SharedDevice]) -> Fs {
    let cfg = BtreeConfig { cache_nodes: 64, ..Default::default() };
    Fs::open(DeviceSet::open(devs.to_vec()).unwrap(), true, cfg).unwrap()
}

/// A forced `fsck -n` of `devs`.
pub fn fsck_n(devs: &[SharedDevice]) -> FsckReport {
    let opts = FsckOpts { mode: FixMode::No, force: true, mount: MountOpts::default() };
    let report = fsck(DeviceSet::open(devs.to_vec()).unwrap(), &opts).unwrap();
    assert!(report.checked);
    report
}

/// The alloc, freespace and need_discard btrees of a mounted filesystem as
/// `Allocator::check_invariants` takes them: alloc keys decoded, every bucket a freespace range
/// key covers, need_discard positions.
pub fn alloc_records(
    fs: &Fs,
) -> (
    std::collections::BTreeMap<fs_core::bpos::Bpos, fs_core::bkey::AllocV4>,
    std::collections::BTreeSet<fs_core::bpos::Bpos>,
    std::collections::BTreeSet<fs_core::bpos::Bpos>,
) {
    use fs_core::bpos::{Bpos, BtreeId};
    let all = |b| fs.list(b, Bpos::MIN, Bpos::MAX).unwrap();
    let alloc = all(BtreeId::Alloc)
        .iter()
        .map(|k| (k.pos, fs_core::bkey::AllocV4::decode(&k.val).unwrap()))
        .collect();
    let freespace = all(BtreeId::Freespace)
        .iter()
        .flat_map(|k| {
            (k.pos.offset - u64::from(k.size)..k.pos.offset).map(move |b| Bpos::new(k.pos.inode, b, 0))
        })
        .collect();
    let need_discard = all(BtreeId::NeedDiscard).iter().map(|k| k.pos).collect();
    (alloc, freespace, need_discard)
}
