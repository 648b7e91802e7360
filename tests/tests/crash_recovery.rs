//! Crash and recover: a seeded workload runs on devices with volatile write caches, the
//! machine "crashes" at a random point (unflushed writes lost or torn), and recovery must give
//! back a filesystem equal to the workload's model after some prefix of the operations that
//! ends at or after the last fsync: every fsynced update is there, no half operation is, all
//! data matches its checksum, and the allocator agrees with the alloc btrees. `fsck -n` of the
//! crashed images finds nothing before any mount, recovery repairs nothing, a full fsck after
//! the unmount finds nothing, and a clean remount gives the same contents.

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
use fs_core::rng::Rng;
use fs_core::sb::DeviceSet;

const SEEDS: u64 = 16;
const OPS: usize = 150;

fn devices(seed: u64) -> Vec<Arc<FaultyDevice>> {
    let faulty: Vec<Arc<FaultyDevice>> = (0..3)
        .map(|i| {
            Arc::new(FaultyDevice::new(Arc::new(MemDevice::new(format!("dev{i}"), 128 << 20)), seed ^ i))
        })
        .collect();
    let mut opts = Options::default();
    opts.set(OptId::MetadataReplicas, OptValue::U64(2)).unwrap();
    opts.set(OptId::DataReplicas, OptValue::U64(2)).unwrap();
    opts.set(OptId::BtreeNodeSize, OptValue::U64(16 << 10)).unwrap();
    // 256 KiB buckets hold 16 data chunks, so overwrites empty buckets that are still open.
    let specs: Vec<DeviceSpec> = faulty
        .iter()
        .map(|f| DeviceSpec { bucket_size: Some(256 << 10), ..DeviceSpec::new(f.clone() as SharedDevice) })
        .collect();
    format_devices(&specs, &opts, None).unwrap();
    for f in &faulty {
        f.set_volatile_cache(true);
    }
    faulty
}

fn set(devs: &[Arc<FaultyDevice>]) -> DeviceSet {
    DeviceSet::open(devs.iter().map(|f| f.clone() as SharedDevice).collect()).unwrap()
}

fn check_alloc(fs: &mut Fs, seed: u64) {
    if let Err(e) = fs.check_alloc_invariants() {
        panic!("seed {seed}: allocator and alloc btrees disagree after recovery: {e}");
    }
}

#[test]
fn crash_at_random_points_recovers_a_prefix_at_or_after_the_last_fsync() {
    for seed in 0..SEEDS {
        let devs = devices(seed);
        let ops = generate(seed, OPS);
        let mut rng = Rng::new(seed ^ 0xc4a5);
        let crash_at = 1 + rng.below(OPS as u64) as usize;
        let mut fs =
            Fs::open(set(&devs), true, BtreeConfig { cache_nodes: 64, ..Default::default() }).unwrap();
        let mut files = Files::new(&mut fs).unwrap();
        fs.fsync().unwrap();
        let mut last_fsync = 0;
        for (i, op) in ops.iter().take(crash_at).enumerate() {
            run_op(&mut fs, &mut files, op).unwrap_or_else(|e| panic!("seed {seed} op {i} {op:?}: {e}"));
            if *op == Op::Fsync {
                last_fsync = i + 1;
            }
            if i % 40 == 39 {
                fs.write_back().unwrap();
            }
        }
        drop(files);
        drop(fs);
        let mode = if seed % 2 == 0 { CrashMode::DropUnflushed } else { CrashMode::TearUnflushed };
        for d in &devs {
            d.crash(mode).unwrap();
        }

        let check = FsckOpts { mode: FixMode::No, force: true, mount: MountOpts::default() };
        let before = fsck(set(&devs), &check).unwrap_or_else(|e| panic!("seed {seed}: fsck -n failed: {e}"));
        assert!(before.problems.is_empty(), "seed {seed}: fsck -n before mount: {:#?}", before.problems);
        let mounted = mount(set(&devs), &MountOpts::default())
            .unwrap_or_else(|e| panic!("seed {seed}: recovery failed (crash after {crash_at} ops): {e}"));
        assert!(mounted.replayed.is_some(), "seed {seed}: an unclean filesystem was not replayed");
        assert!(mounted.problems.is_empty(), "seed {seed}: recovery repaired: {:#?}", mounted.problems);
        let mut fs = mounted.fs;
        let prefixes = matching_prefixes(&mut fs, &ops, last_fsync, crash_at).unwrap();
        assert!(
            !prefixes.is_empty(),
            "seed {seed}: recovered state matches no prefix in {last_fsync}..={crash_at} (crash mode {mode:?})\nlog: {:#?}",
            mounted.log
        );
        check_alloc(&mut fs, seed);
        let recovered = prefixes[0];
        eprintln!(
            "seed {seed}: crash after {crash_at} ops, last fsync after {last_fsync}, recovered {prefixes:?}"
        );

        // Clean unmount; then a full check finds nothing; then a clean mount: same contents.
        fs.unmount().unwrap();
        let report = fsck(set(&devs), &check).unwrap();
        assert!(report.problems.is_empty(), "seed {seed}: fsck after recovery: {:#?}", report.problems);
        let again = mount(set(&devs), &MountOpts::default()).unwrap();
        assert!(again.replayed.is_none(), "seed {seed}: clean unmount was not seen as clean");
        let mut fs = again.fs;
        assert!(
            matching_prefixes(&mut fs, &ops, recovered, recovered).unwrap() == vec![recovered],
            "seed {seed}"
        );
    }
}

/// After a recovery, the mount writes nodes whose bsets carry the seqs of its own new journal
/// entries, past the newest entry the recovery found; the blacklist it installed must not take
/// those for bsets of lost entries. Keys committed after an unclean mount, written back and
/// evicted (a cache of 16 nodes), read back from disk intact.
#[test]
fn writes_after_a_recovery_survive_eviction() {
    use bcsim::recovery::mount_with;
    use fs_core::bkey::{Bkey, KeyType};
    use fs_core::bpos::{Bpos, BtreeId};
    let devs = devices(7);
    let key = |i: u64| Bkey::new(Bpos::new(1, i, 0), KeyType::Set, i.to_le_bytes().to_vec());
    {
        let fs = mount(set(&devs), &MountOpts::default()).unwrap().fs;
        fs.commit(BtreeId::Extents, (0..100).map(key)).unwrap();
        fs.fsync().unwrap();
        drop(fs); // a crash
    }
    for d in &devs {
        d.crash(CrashMode::DropUnflushed).unwrap();
    }
    let cfg = BtreeConfig { cache_nodes: 16, ..BtreeConfig::default() };
    let fs = mount_with(set(&devs), &MountOpts::default(), cfg).unwrap().fs;
    for chunk in (100..20_000u64).collect::<Vec<_>>().chunks(200) {
        fs.commit(BtreeId::Extents, chunk.iter().map(|&i| key(i))).unwrap();
    }
    fs.write_back().unwrap();
    let got = fs.list(BtreeId::Extents, Bpos::MIN, Bpos::MAX).unwrap();
    assert_eq!(got.len(), 20_000, "keys written after the recovery went missing on re-read");
    assert!(got.iter().enumerate().all(|(i, k)| *k == key(i as u64)));
    fs.unmount().unwrap();
}
