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
