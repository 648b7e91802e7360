//! A new filesystem checks clean: right after `format` (which ends with the first mount and
//! unmount), with nothing else run, a forced fsck finds nothing in every mode (`-n`, `-y`,
//! `-p`), on 1, 2 and 8 devices from the smallest size format accepts up to 16 TiB each
//! (sparse in-memory devices: an empty terabyte costs next to nothing).

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;

use bcsim::fsck::{FixMode, FsckOpts, fsck};
use bcsim::images::format_devices;
use bcsim::recovery::MountOpts;
use fs_core::dev::{MemDevice, SharedDevice};
use fs_core::error::ErrCode;
use fs_core::format::DeviceSpec;
use fs_core::opts::{OptId, OptValue, Options};
use fs_core::sb::DeviceSet;

const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

fn devices(n: u64, size: u64) -> Vec<SharedDevice> {
    (0..n).map(|i| Arc::new(MemDevice::new(format!("dev{i}"), size)) as SharedDevice).collect()
}

fn opts(n: u64) -> Options {
    let mut opts = Options::default();
    opts.set(OptId::MetadataReplicas, OptValue::U64(n.min(2))).unwrap();
    opts
}

/// Formats `n` devices of `size` bytes; `None` when format refuses the size as too small.
fn format_set(n: u64, size: u64) -> Option<Vec<SharedDevice>> {
    let devs = devices(n, size);
    let specs: Vec<DeviceSpec> = devs.iter().cloned().map(DeviceSpec::new).collect();
    match format_devices(&specs, &opts(n), None) {
        Ok(_) => Some(devs),
        Err(e) if e.code() == ErrCode::DeviceTooSmall => None,
        Err(e) => panic!("format of {n} x {size} bytes: {e}"),
    }
}

/// The smallest device size (in 256 KiB steps) format accepts with the default options.
fn min_size() -> u64 {
    let mut size = 1 << 20;
    loop {
        if format_set(1, size).is_some() {
            return size;
        }
        size += 256 << 10;
        assert!(size < GIB, "format refuses every size below 1 GiB");
    }
}

#[test]
fn a_fresh_format_checks_clean_in_every_mode() {
    let min = min_size();
    for n in [1, 2, 8] {
        for size in [min, 4 * GIB, TIB, 16 * TIB] {
            let devs = format_set(n, size).unwrap_or_else(|| panic!("{n} x {size} bytes refused"));
            for mode in [FixMode::No, FixMode::Yes, FixMode::Preen] {
                let o = FsckOpts { mode, force: true, mount: MountOpts::default() };
                let report = fsck(DeviceSet::open(devs.clone()).unwrap(), &o).unwrap();
                assert!(report.checked, "{n} x {size}: fsck {mode:?} skipped the checks");
                assert!(
                    report.problems.is_empty(),
                    "{n} x {size} bytes, fsck {mode:?} after format: {:#?}",
                    report.problems
                );
                assert_eq!(report.exit_code(), 0);
            }
            eprintln!("{n} x {size} bytes: clean in -n, -y and -p");
        }
    }
}
