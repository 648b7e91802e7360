//! The running filesystem: mount and fsck run every pass of the recovery-pass table (run,
//! skipped with a reason, or listed as not modelled) in each mode; mount and `fsck -n` see the
//! same journal keys after a crash; each error is counted in the superblock once; the journal
//! reclaim thread writes the open entry when `journal_flush_delay` has passed; a write-back that
//! fails in the background makes the filesystem emergency read-only instead of losing updates.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bcsim::files::Files;
use bcsim::fs::Fs;
use bcsim::fsck::{FixMode, FsckOpts, fsck};
use bcsim::recovery::{MountOpts, PassOutcome, ReclaimMode, mount, open_view};
use bcsim::workload::{generate, run_op};
use fs_core::bkey::{Bkey, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::BtreeConfig;
use fs_core::dev::{
    CrashMode, FaultKind, FaultOp, FaultRule, FaultyDevice, MemDevice, SharedDevice, Trigger,
};
use fs_core::error::ErrCode;
use fs_core::format::{DeviceSpec, format};
use fs_core::opts::{OptId, OptValue, Options};
use fs_core::recovery_pass::RecoveryPass;
use fs_core::sb::DeviceSet;

fn devices(seed: u64) -> Vec<Arc<FaultyDevice>> {
    devices_of(seed, 2, 64 << 20, 16 << 10, Some(256 << 10))
}

/// `nr` formatted devices of `bytes` each (sparse, in memory), `metadata_replicas=2`, btree
/// nodes of `node` bytes, buckets of `bucket` bytes (`None`: chosen from the size).
fn devices_of(seed: u64, nr: u64, bytes: u64, node: u64, bucket: Option<u64>) -> Vec<Arc<FaultyDevice>> {
    let faulty: Vec<Arc<FaultyDevice>> = (0..nr)
        .map(|i| Arc::new(FaultyDevice::new(Arc::new(MemDevice::new(format!("dev{i}"), bytes)), seed ^ i)))
        .collect();
    let mut opts = Options::default();
    opts.set(OptId::MetadataReplicas, OptValue::U64(2)).unwrap();
    opts.set(OptId::BtreeNodeSize, OptValue::U64(node)).unwrap();
    let specs: Vec<DeviceSpec> = faulty
        .iter()
        .map(|f| DeviceSpec { bucket_size: bucket, ..DeviceSpec::new(f.clone() as SharedDevice) })
        .collect();
    format(&specs, &opts, None).unwrap();
    faulty
}

fn set(devs: &[Arc<FaultyDevice>]) -> DeviceSet {
    DeviceSet::open(devs.iter().map(|f| f.clone() as SharedDevice).collect()).unwrap()
}

fn manual() -> MountOpts {
    MountOpts { reclaim: ReclaimMode::Manual, ..MountOpts::default() }
}

/// Devices after a seeded workload of `ops` operations and a crash that loses unflushed writes.
fn crashed(seed: u64, ops: usize) -> Vec<Arc<FaultyDevice>> {
    crash(devices(seed), seed, ops, 50)
}

/// The crash of [`crashed`] on `devs`, writing back every `write_back_every` operations.
fn crash(
    devs: Vec<Arc<FaultyDevice>>,
    seed: u64,
    ops: usize,
    write_back_every: usize,
) -> Vec<Arc<FaultyDevice>> {
    for d in &devs {
        d.set_volatile_cache(true);
    }
    {
        let mut fs = bcsim::recovery::mount(set(&devs), &manual()).unwrap().fs;
        let mut files = Files::new(&mut fs).unwrap();
        for (i, op) in generate(seed, ops).iter().enumerate() {
            run_op(&mut fs, &mut files, op).unwrap();
            if i % write_back_every == write_back_every - 1 {
                fs.write_back().unwrap();
            }
        }
    }
    for d in &devs {
        d.crash(CrashMode::DropUnflushed).unwrap();
    }
    devs
}

/// Every pass of the table appears once, in table order: the runner dropped none.
fn assert_every_pass(
    what: &str,
    passes: &[(RecoveryPass, PassOutcome)],
) -> BTreeMap<&'static str, PassOutcome> {
    let order: Vec<RecoveryPass> = passes.iter().map(|(p, _)| *p).collect();
    assert_eq!(order, RecoveryPass::ALL, "{what}: passes missing or out of order: {passes:?}");
    passes.iter().map(|(p, o)| (p.name(), o.clone())).collect()
}

#[test]
fn every_pass_is_run_skipped_or_not_modelled_in_every_mode() {
    let ran = |m: &BTreeMap<&str, PassOutcome>, p: &str| m[p] == PassOutcome::Ran;
    // Clean mount: the ALWAYS passes, no check.
    let devs = devices(1);
    let m = mount(set(&devs), &manual()).unwrap();
    let clean = assert_every_pass("clean mount", &m.passes);
    assert!(ran(&clean, "alloc_read") && ran(&clean, "set_may_go_rw") && ran(&clean, "journal_replay"));
    assert!(matches!(clean["check_allocations"], PassOutcome::Skipped(_)), "{clean:?}");
    assert!(matches!(clean["trans_mark_dev_sbs"], PassOutcome::NotModelled(_)), "{clean:?}");
    m.fs.unmount().unwrap();

    // Unclean mount: replay, and no check (the alloc keys need no repair after a crash).
    let devs = crashed(2, 120);
    let m = mount(set(&devs), &manual()).unwrap();
    let unclean = assert_every_pass("unclean mount", &m.passes);
    assert!(ran(&unclean, "journal_replay") && m.replayed.is_some(), "{unclean:?}");
    for p in ["check_topology", "check_allocations", "check_alloc_info", "check_dirents"] {
        assert!(matches!(unclean[p], PassOutcome::Skipped(_)), "unclean mount: {p}: {unclean:?}");
    }
    m.fs.unmount().unwrap();

    // fsck -n: the fsck passes run, the writing ones are skipped.
    let devs = crashed(3, 120);
    let opts = FsckOpts { mode: FixMode::No, force: true, mount: MountOpts::default() };
    let r = fsck(set(&devs), &opts).unwrap();
    let check = assert_every_pass("fsck -n", &r.passes);
    assert!(ran(&check, "check_dirents") && ran(&check, "check_nlinks"), "{check:?}");
    for p in ["set_may_go_rw", "journal_replay", "fs_freespace_init"] {
        assert!(matches!(&check[p], PassOutcome::Skipped(why) if why.contains("-n")), "{p}: {check:?}");
    }

    // fsck -y: everything runs.
    let opts = FsckOpts { mode: FixMode::Yes, force: true, mount: MountOpts::default() };
    let r = fsck(set(&devs), &opts).unwrap();
    let fix = assert_every_pass("fsck -y", &r.passes);
    for p in ["check_topology", "check_allocations", "journal_replay", "check_alloc_info", "check_nlinks"] {
        assert!(ran(&fix, p), "fsck -y: {p} did not run: {fix:?}");
    }
}

#[test]
fn mount_and_fsck_n_see_the_same_journal_keys() {
    for seed in 0..4 {
        let devs = crashed(10 + seed, 150);
        let opts = FsckOpts { mode: FixMode::No, force: true, mount: MountOpts::default() };
        let check = fsck(set(&devs), &opts).unwrap();
        let summary = |log: &[String]| log.iter().find(|l| l.starts_with("Journal keys:")).cloned();
        let view = fsck_view(&devs);
        let m = mount(set(&devs), &manual()).unwrap();
        assert!(m.replayed.is_some(), "seed {seed}: nothing replayed");
        assert_eq!(summary(&check.log), summary(&m.log), "seed {seed}: different journal keys");
        assert!(summary(&m.log).is_some(), "seed {seed}: {:?}", m.log);
        // Every key fsck -n saw through its overlay is what the mount replayed: the namespace
        // btrees, which no repair touches, are equal key for key.
        assert!(view.values().any(|keys| !keys.is_empty()), "seed {seed}: nothing to compare");
        for btree in [BtreeId::Inodes, BtreeId::Dirents, BtreeId::Extents] {
            let mounted = m.fs.list(btree, Bpos::MIN, Bpos::MAX).unwrap();
            assert_eq!(view[&btree], mounted, "seed {seed}: {btree} differs between fsck -n and mount");
        }
        m.fs.unmount().unwrap();
    }
}

/// The namespace btrees as `fsck -n` sees them: the btrees with the journal keys laid over
/// them in memory, nothing written.
fn fsck_view(devs: &[Arc<FaultyDevice>]) -> BTreeMap<BtreeId, Vec<Bkey>> {
    let mut view = open_view(set(devs), &MountOpts::default()).unwrap();
    assert!(view.unclean());
    [BtreeId::Inodes, BtreeId::Dirents, BtreeId::Extents]
        .into_iter()
        .map(|b| (b, view.list(b, Bpos::MIN, Bpos::MAX).unwrap()))
        .collect()
}

#[test]
fn each_error_is_counted_once_in_the_superblock() {
    let mut seen = 0;
    for seed in 20..24 {
        // A crash after a dirent to an inode that does not exist reached the journal: fsck -y
        // of the unclean filesystem finds and repairs it (and whatever the journal read found).
        let devs = crashed(seed, 100);
        {
            let fs = mount(set(&devs), &manual()).unwrap().fs;
            let ghost = fs_core::bkey::Dirent { name: "ghost".into(), target: 999_999, d_type: 8 };
            let pos = Bpos::new(4096, fs_core::bkey::Dirent::name_hash("ghost"), 0);
            fs.commit(BtreeId::Dirents, [Bkey::new(pos, KeyType::Dirent, ghost.encode())]).unwrap();
            fs.fsync().unwrap();
        }
        let opts = FsckOpts { mode: FixMode::Yes, force: true, mount: MountOpts::default() };
        let r = fsck(set(&devs), &opts).unwrap();
        let mut want: BTreeMap<u16, u64> = BTreeMap::new();
        for p in &r.problems {
            *want.entry(p.err.id()).or_default() += p.count;
        }
        seen += r.problems.len();
        let got: BTreeMap<u16, u64> = set(&devs).sb.errors.iter().map(|e| (e.id, e.count)).collect();
        assert_eq!(got, want, "seed {seed}: superblock counts vs problems {:#?}", r.problems);
    }
    assert!(seen >= 4, "fsck found too little to check the counts: {seen} problems");
}

#[test]
fn the_reclaim_thread_writes_the_open_entry_after_the_flush_delay() {
    let devs = devices(30);
    let fs = Fs::open(set(&devs), true, BtreeConfig::default()).unwrap();
    fs.opts().set(OptId::JournalFlushDelay, OptValue::U64(1)).unwrap();
    let j = fs.journal().unwrap().clone();
    let seq =
        fs.commit(BtreeId::Inodes, [Bkey::new(Bpos::new(0, 4096, 0), KeyType::Set, Vec::new())]).unwrap();
    // No fsync: only the reclaim thread can make it durable. Bounded wait, not a sleep.
    assert_eq!(j.wait_flushed(seq, Duration::from_secs(30)), seq.max(j.flushed_seq()), "never written");
    assert!(j.flushed_seq() >= seq);
    fs.unmount().unwrap();

    // Without the thread nothing is written until the caller ticks its own clock.
    let fs = bcsim::recovery::mount(set(&devs), &manual()).unwrap().fs;
    fs.opts().set(OptId::JournalFlushDelay, OptValue::U64(1000)).unwrap();
    let j = fs.journal().unwrap().clone();
    let t0 = Instant::now();
    let seq =
        fs.commit(BtreeId::Inodes, [Bkey::new(Bpos::new(0, 4097, 0), KeyType::Set, Vec::new())]).unwrap();
    fs.tick(t0).unwrap();
    assert!(j.flushed_seq() < seq, "written before its delay");
    fs.tick(t0 + Duration::from_secs(2)).unwrap();
    assert!(j.flushed_seq() >= seq, "not written after its delay");

    // Once ticked, the filesystem runs on the caller's clock alone: an entry opened by a
    // commit after a tick at T ages from T, whatever the real time is (an hour ahead here),
    // so a workload stepped one millisecond per operation flushes at the same operations on
    // any machine.
    let t1 = t0 + Duration::from_secs(3600);
    fs.tick(t1).unwrap();
    let seq =
        fs.commit(BtreeId::Inodes, [Bkey::new(Bpos::new(0, 4098, 0), KeyType::Set, Vec::new())]).unwrap();
    fs.tick(t1 + Duration::from_millis(999)).unwrap();
    assert!(j.flushed_seq() < seq, "aged on the real clock, not the ticked one");
    fs.tick(t1 + Duration::from_millis(1000)).unwrap();
    assert!(j.flushed_seq() >= seq, "not written after its delay on the ticked clock");
    fs.unmount().unwrap();
}

#[test]
fn a_failed_background_write_back_goes_emergency_read_only() {
    let devs = devices(40);
    let fs = Fs::open(set(&devs), true, BtreeConfig::default()).unwrap();
    for i in 0..50u64 {
        fs.commit(BtreeId::Inodes, [Bkey::new(Bpos::new(0, 5000 + i, 0), KeyType::Set, vec![1; 32])])
            .unwrap();
    }
    fs.fsync().unwrap();
    // Every write fails from now on: the reclaim thread's write-back cannot succeed.
    for d in &devs {
        d.add_rule(FaultRule {
            op: FaultOp::Write,
            range: None,
            trigger: Trigger::Always,
            kind: FaultKind::Eio,
        });
    }
    fs.reclaim().unwrap_err();
    assert!(fs.health().is_emergency_ro());
    let e =
        fs.commit(BtreeId::Inodes, [Bkey::new(Bpos::new(0, 6000, 0), KeyType::Set, Vec::new())]).unwrap_err();
    assert!(e.matches(ErrCode::Erofs), "{e}");
    let e = fs.unmount().unwrap_err();
    assert!(e.matches(ErrCode::Erofs), "{e}");
    // Not marked clean: the next mount replays what was journalled.
    for d in &devs {
        d.clear_rules();
    }
    assert!(!set(&devs).sb.is_clean());
}

/// A topology error on a running filesystem follows `errors=`: with `ro` the filesystem goes
/// emergency read-only naming it; with `continue` it is noted and writing goes on. During
/// recovery it is only noted (recovery decides).
#[test]
fn topology_errors_follow_the_errors_option() {
    for (errors, goes_ro) in [("ro", true), ("continue", false)] {
        let devs = devices(50);
        let fs = Fs::open(set(&devs), true, BtreeConfig::default()).unwrap();
        for i in 0..200u64 {
            fs.commit(BtreeId::Inodes, [Bkey::new(Bpos::new(0, 5000 + i, 0), KeyType::Set, vec![1; 64])])
                .unwrap();
        }
        fs.write_back().unwrap();
        fs.unmount().unwrap();
        let mopts = MountOpts {
            opts: fs_core::opts::parse_opts(&format!("errors={errors}"), fs_core::opts::OptContext::Mount)
                .unwrap(),
            ..manual()
        };
        let fs = mount(set(&devs), &mopts).unwrap().fs;
        let pos = Bpos::new(0, 5100, 0);
        assert!(
            fs.btrees().corrupt_cached_header(BtreeId::Inodes, 0, pos).unwrap_or(false),
            "no leaf cached"
        );
        let e = fs.get(BtreeId::Inodes, pos).unwrap_err();
        assert_eq!(e.code(), ErrCode::BtreeNeedTopologyRepair, "{e}");
        let noted = fs.health().first_noted().unwrap();
        assert_eq!(noted.code, ErrCode::BtreeNeedTopologyRepair);
        assert_eq!(fs.health().is_emergency_ro(), goes_ro, "errors={errors}");
        if goes_ro {
            assert!(fs.health().emergency_ro_cause().unwrap().text.contains("header doesn't match"));
        }
        drop(fs);
    }
}

/// Journal replay reports its progress in v1.39's words ("journal replay: N%, done X/Y keys");
/// with a zero interval every look reports, so the test needs no clock. Off by default.
#[test]
fn journal_replay_reports_progress() {
    use bcsim::recovery::progress::{Progress, ProgressSink};
    let devs = crashed(21, 300);
    let quiet = mount(set(&devs), &manual()).unwrap();
    assert!(!quiet.log.iter().any(|l| l.starts_with("journal replay: ")), "{:#?}", quiet.log);
    drop(quiet.fs);
    let devs = crashed(21, 300);
    let mopts =
        MountOpts { progress: Progress { sink: ProgressSink::Log, every: Duration::ZERO }, ..manual() };
    let m = mount(set(&devs), &mopts).unwrap();
    let line = m.log.iter().find(|l| l.starts_with("journal replay: ")).cloned().unwrap_or_default();
    let (pct, rest) = line.trim_start_matches("journal replay: ").split_once("%, done ").unwrap_or(("", ""));
    assert!(pct.parse::<u32>().is_ok_and(|p| p <= 100) && rest.ends_with(" keys"), "{:#?}", m.log);
    m.fs.unmount().unwrap();
}

/// The long fsck passes report progress like journal replay, per btree they walk, against the
/// keys check_topology counted ("check_allocations: extents: N%, done X/Y keys"); off by
/// default. With a zero interval every look reports, so the test needs no clock.
#[test]
fn fsck_passes_report_progress() {
    use bcsim::recovery::progress::{Progress, ProgressSink};
    let devs = crashed(22, 300);
    let quiet = FsckOpts { mode: FixMode::No, force: true, mount: manual() };
    let r = fsck(set(&devs), &quiet).unwrap();
    assert!(!r.log.iter().any(|l| l.contains("%, done ")), "{:#?}", r.log);
    let progress = Progress { sink: ProgressSink::Log, every: Duration::ZERO };
    let loud = FsckOpts { mount: MountOpts { progress, ..manual() }, ..quiet };
    let r = fsck(set(&devs), &loud).unwrap();
    for walk in ["check_allocations: extents: ", "check_dirents: dirents: ", "check_nlinks: dirents: "] {
        let line = r.log.iter().find(|l| l.starts_with(walk)).cloned().unwrap_or_default();
        let (pct, rest) = line.trim_start_matches(walk).split_once("%, done ").unwrap_or(("", ""));
        let (done, total) = rest.trim_end_matches(" keys").split_once('/').unwrap_or(("", ""));
        assert!(pct == "100" && done == total && !done.is_empty(), "{walk}: {:#?}", r.log);
    }
}

/// A transaction's alloc and inode keys go through the key cache at run time: a key the btree
/// already holds is updated in a dirty entry, pinned in the journal, which `Fs::get` and
/// `Fs::list` see and the btree does not yet. The unmount flushes it: after a remount the
/// btree holds the cached key. A crash instead loses the entry and the journal brings the key
/// back.
#[test]
fn alloc_and_inode_updates_go_through_the_key_cache_at_run_time() {
    for (btree, crash_it) in
        [(BtreeId::Alloc, false), (BtreeId::Alloc, true), (BtreeId::Inodes, false), (BtreeId::Inodes, true)]
    {
        let devs = devices(31);
        for d in &devs {
            d.set_volatile_cache(true);
        }
        let mut fs = mount(set(&devs), &manual()).unwrap().fs;
        let mut files = Files::new(&mut fs).unwrap();
        let cache = fs.shared().key_cache().cloned().unwrap();
        let mut seen = None;
        for (i, op) in generate(31, 400).iter().enumerate() {
            run_op(&mut fs, &mut files, op).unwrap();
            if i % 50 == 49 {
                fs.write_back().unwrap();
            }
            if cache.nr_dirty() > 0 && seen.is_none() {
                let listed = fs.list(btree, Bpos::MIN, Bpos::MAX).unwrap();
                let t = &mut fs.btrees();
                seen = listed.into_iter().find(|k| t.get(btree, k.pos).unwrap().as_ref() != Some(k));
            }
        }
        let cached = seen.unwrap_or_else(|| panic!("no {btree} key was ever cached ahead of the btree"));
        // An inode may have been unlinked since: then the unmount must leave none either.
        let now = fs.get(btree, cached.pos).unwrap();
        if crash_it {
            drop(files);
            drop(fs);
            for d in &devs {
                d.crash(CrashMode::DropUnflushed).unwrap();
            }
        } else {
            drop(files);
            fs.unmount().unwrap();
        }
        let m = mount(set(&devs), &manual()).unwrap();
        let back = m.fs.btrees().get(btree, cached.pos).unwrap();
        if !crash_it {
            assert_eq!(back, now, "{btree}: the unmount wrote the cached key back");
        }
        assert!(back.is_some() || now.is_none(), "{btree}, crash {crash_it}: the key survives");
        m.fs.unmount().unwrap();
        let report = bcsim_tests::fsck_n(&devs.iter().map(|d| d.clone() as SharedDevice).collect::<Vec<_>>());
        assert!(report.problems.is_empty(), "{btree}, crash {crash_it}: {:#?}", report.problems);
    }
}

/// Emergency read-only writes one thing: the unmount that finds it counts
/// `emergency_read_only` in the superblock, which stays unclean (the journal is replayed next
/// time). A simulated kernel BUG writes not even that: the superblock is untouched.
#[test]
fn emergency_read_only_is_recorded_and_a_kernel_bug_writes_nothing() {
    use fs_core::error::Error;
    use fs_core::fsck_err::FsckErr;
    for (code, recorded) in [(ErrCode::IoWrite, true), (ErrCode::KernelBug, false)] {
        let devs = devices(41);
        let fs = Fs::open(set(&devs), true, BtreeConfig::default()).unwrap();
        fs.commit(BtreeId::Inodes, [Bkey::new(Bpos::new(0, 5000, 0), KeyType::Set, vec![1; 32])]).unwrap();
        fs.fsync().unwrap();
        let before = set(&devs).sb;
        fs.health().fatal(&Error::new(code, "stopped"));
        let e = fs.unmount().unwrap_err();
        assert!(e.matches(ErrCode::Erofs), "{code:?}: {e}");
        let after = set(&devs).sb;
        assert!(!after.is_clean(), "{code:?}");
        let counted = after.errors.iter().any(|c| c.id == FsckErr::EmergencyReadOnly.id());
        assert_eq!(counted, recorded, "{code:?}: {:?}", after.errors);
        if !recorded {
            assert_eq!(after.seq, before.seq, "a kernel BUG wrote the superblock");
        }
    }
}
