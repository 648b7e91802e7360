//! A crash in the middle of a superblock write never leaves a device without a valid superblock:
//! whatever lands, tears or is lost, the device reads back either the old superblock or the new.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;

use fs_core::dev::{
    CrashMode, FaultKind, FaultOp, FaultRule, FaultyDevice, MemDevice, SharedDevice, Trigger,
};
use fs_core::format::{DeviceSpec, format};
use fs_core::opts::Options;
use fs_core::sb::{read_super, write_super};

const SEEDS: u64 = 200;

#[test]
fn crash_during_superblock_write_keeps_one_valid_copy() {
    let base = Arc::new(MemDevice::new("base", 256 << 20));
    format(&[DeviceSpec::new(base.clone() as SharedDevice)], &Options::default(), None).unwrap();
    let old = read_super(base.as_ref()).unwrap().sb;
    let mut new = old.clone();
    new.seq += 1;
    new.clean = None;

    for seed in 0..SEEDS {
        let copy = base.deep_copy(format!("seed{seed}"));
        let faulty = FaultyDevice::new(Arc::new(copy), seed);
        faulty.set_volatile_cache(true);
        // Fail the first or second flush: the crash then catches copy 0 or copy 1 in flight.
        let skip = seed % 2;
        faulty.add_rule(FaultRule {
            op: FaultOp::Flush,
            range: None,
            trigger: Trigger::Nth { skip, count: 1 },
            kind: FaultKind::Eio,
        });
        assert!(write_super(&faulty, &new).is_err(), "seed {seed}: the injected flush error must surface");
        faulty.crash(CrashMode::TearUnflushed).unwrap();
        faulty.clear_rules();

        let read = read_super(&faulty)
            .unwrap_or_else(|e| panic!("seed {seed}: no valid superblock after crash: {e}"));
        assert!(read.sb.seq == old.seq || read.sb.seq == new.seq, "seed {seed}: seq {}", read.sb.seq);
        if skip == 1 {
            assert_eq!(read.sb.seq, new.seq, "seed {seed}: copy 0 was flushed before the crash");
        }
    }
}
