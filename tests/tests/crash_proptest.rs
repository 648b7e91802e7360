//! Random crash campaign: proptest draws a device count (1 to 4), replica counts, a seeded
//! file workload, how often write-back runs, a crash point and a crash mode. After every
//! crash, before anything mounts the images, `fsck -n` must find nothing (the alloc btree is
//! consistent in every crash state: no repair is ever needed); the mount must succeed without
//! repairing anything, and the recovered filesystem must equal the workload's model after a
//! prefix of the operations that ends at or after the last fsync.
//!
//! The proptest runner is seeded: `BCSIM_PROPTEST_SEED=N` reruns a campaign; the seed in use is
//! printed, and a failing case is printed with its workload seed.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;

use bcsim::files::Files;
use bcsim::fs::Fs;
use bcsim::fsck::{FixMode, FsckOpts, fsck};
use bcsim::images::format_devices;
use bcsim::recovery::{MountOpts, mount};
use bcsim::workload::{Op, generate, matching_prefixes, run_op};
use fs_core::btree::BtreeConfig;
use fs_core::dev::{CrashMode, FaultyDevice, MemDevice, SharedDevice};
use fs_core::format::DeviceSpec;
use fs_core::opts::{OptId, OptValue, Options};
use fs_core::sb::DeviceSet;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

#[derive(Clone, Debug)]
struct Case {
    nr_devs: u64,
    metadata_replicas: u64,
    data_replicas: u64,
    workload_seed: u64,
    ops: usize,
    /// The crash comes after this many operations (at most `ops`).
    crash_at: usize,
    write_back_every: usize,
    tear: bool,
}

fn arb_case() -> impl Strategy<Value = Case> {
    (1u64..=4)
        .prop_flat_map(|n| {
            (
                Just(n),
                1..=n.min(2),
                1..=n.min(2),
                any::<u64>(),
                20usize..160,
                0.0f64..=1.0,
                4usize..64,
                any::<bool>(),
            )
        })
        .prop_map(|(nr_devs, metadata_replicas, data_replicas, workload_seed, ops, at, every, tear)| Case {
            nr_devs,
            metadata_replicas,
            data_replicas,
            workload_seed,
            ops,
            crash_at: 1 + ((ops - 1) as f64 * at) as usize,
            write_back_every: every,
            tear,
        })
}

fn set(devs: &[Arc<FaultyDevice>]) -> DeviceSet {
    DeviceSet::open(devs.iter().map(|f| f.clone() as SharedDevice).collect()).unwrap()
}

fn run_case(c: &Case) -> Result<(), TestCaseError> {
    let devs: Vec<Arc<FaultyDevice>> = (0..c.nr_devs)
        .map(|i| {
            let mem = Arc::new(MemDevice::new(format!("dev{i}"), 64 << 20));
            Arc::new(FaultyDevice::new(mem, c.workload_seed ^ i))
        })
        .collect();
    let mut opts = Options::default();
    opts.set(OptId::MetadataReplicas, OptValue::U64(c.metadata_replicas)).unwrap();
    opts.set(OptId::DataReplicas, OptValue::U64(c.data_replicas)).unwrap();
    opts.set(OptId::BtreeNodeSize, OptValue::U64(16 << 10)).unwrap();
    let specs: Vec<DeviceSpec> = devs
        .iter()
        .map(|f| DeviceSpec { bucket_size: Some(256 << 10), ..DeviceSpec::new(f.clone() as SharedDevice) })
        .collect();
    format_devices(&specs, &opts, None).unwrap();
    for f in &devs {
        f.set_volatile_cache(true);
    }

    let ops = generate(c.workload_seed, c.ops);
    let mut fs = Fs::open(set(&devs), true, BtreeConfig { cache_nodes: 64, ..Default::default() }).unwrap();
    let mut files = Files::new(&mut fs).unwrap();
    fs.fsync().unwrap();
    let mut last_fsync = 0;
    for (i, op) in ops.iter().take(c.crash_at).enumerate() {
        run_op(&mut fs, &mut files, op).map_err(|e| TestCaseError::fail(format!("op {i} {op:?}: {e}")))?;
        if *op == Op::Fsync {
            last_fsync = i + 1;
        }
        if i % c.write_back_every == c.write_back_every - 1 {
            fs.write_back().unwrap();
        }
    }
    drop(files);
    drop(fs);
    let mode = if c.tear { CrashMode::TearUnflushed } else { CrashMode::DropUnflushed };
    for d in &devs {
        d.crash(mode).unwrap();
    }

    let check = FsckOpts { mode: FixMode::No, force: true, mount: MountOpts::default() };
    let before = fsck(set(&devs), &check).map_err(|e| TestCaseError::fail(format!("fsck -n: {e}")))?;
    prop_assert!(before.problems.is_empty(), "fsck -n before mount: {:#?}", before.problems);
    let mounted = mount(set(&devs), &MountOpts::default())
        .map_err(|e| TestCaseError::fail(format!("recovery failed: {e}")))?;
    prop_assert!(mounted.problems.is_empty(), "recovery repaired: {:#?}", mounted.problems);
    let mut fs = mounted.fs;
    let prefixes = matching_prefixes(&mut fs, &ops, last_fsync, c.crash_at).unwrap();
    prop_assert!(
        !prefixes.is_empty(),
        "recovered state matches no prefix in {}..={}",
        last_fsync,
        c.crash_at
    );
    fs.unmount().unwrap();
    eprintln!(
        "{} devs, replicas {}/{}, workload seed {}, crash after {} of {} ops ({mode:?}), last fsync {}, recovered {:?}",
        c.nr_devs,
        c.metadata_replicas,
        c.data_replicas,
        c.workload_seed,
        c.crash_at,
        c.ops,
        last_fsync,
        prefixes
    );
    Ok(())
}

#[test]
fn random_crashes_need_no_repair_and_recover_a_prefix() {
    let seed = std::env::var("BCSIM_PROPTEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1108);
    eprintln!("proptest seed {seed} (BCSIM_PROPTEST_SEED to change)");
    let config =
        Config { cases: 128, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&arb_case(), |c| run_case(&c)) {
        panic!("proptest seed {seed}: {e}");
    }
}
