//! The #1107 image set through the library: built by `bcsim repro`'s code, mounted in each
//! profile before any repair, repaired by fsck, and checked against the workload that made it.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use bcsim::fsck::{FixMode, FsckOpts, fsck};
use bcsim::images::open_device_set;
use bcsim::recovery::progress::Progress;
use bcsim::recovery::{mount, parse_mount_opts};
use bcsim::repro::{Opts1107, Variant1107, build_1107};
use bcsim::workload::{generate, matching_prefixes};
use fs_core::error::ErrCode;

/// The reported set, 4000 keys, built in `dir`.
fn opts(dir: &std::path::Path, seed: u64) -> Opts1107 {
    Opts1107 {
        dir: dir.to_path_buf(),
        keys: 4000,
        seed,
        variant: Variant1107::Reported,
        progress: Progress::default(),
    }
}

/// A mount of the set under `errors=ro`, per profile. bcachefs indexes cached nodes by seq,
/// and a walk reads the leaves to the right of the one it goes down to through their own
/// pointers first (prefetch): the duplicated pointer, which carries the first leaf's seq, is
/// read before the first leaf and fails, and the failure is cached under that seq. The walk
/// then fails at the first leaf, the alloc btree is flagged as having lost data, and recovery
/// rewinds to check_topology, which under errors=ro may not drop the pointer: the mount stops
/// there, before going read-write, in every profile.
#[test]
fn unrepaired_set_stops_before_going_rw_per_profile() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path(), 1107);
    let built = build_1107(&o, &mut |_| {}).unwrap();
    for behavior in ["v1.37.5", "v1.39", "fixed"] {
        let mut mopts = parse_mount_opts(&format!("degraded,behavior={behavior},errors=ro")).unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        mopts.failed_log = Some(log.clone());
        let Err(e) = mount(open_device_set(&built.images, true).unwrap(), &mopts) else {
            panic!("{behavior}: the unrepaired set mounted");
        };
        let log = log.lock().unwrap().clone();
        let case = format!("{behavior}: {e}\n{log:#?}");
        assert_eq!(e.code(), ErrCode::FsckErrorsNotFixed, "{case}");
        let at = |want: &dyn Fn(&str) -> bool| log.iter().position(|l| want(l));
        let keys = at(&|l| l.starts_with("Journal keys: "));
        let read_error = at(&|l| l.starts_with("btree node read error at btree alloc level 0"));
        let flagged = at(&|l| l == "flagging btree alloc lost data");
        let rewind =
            at(&|l| l == "running recovery pass check_topology (4), currently at alloc_read (0) - rewinding");
        let not_fixed =
            at(&|l| l.contains("its pointer leads to another node") && l.ends_with("lost, not fixing"));
        assert!(keys.is_some() && keys < read_error, "{case}");
        assert!(read_error < flagged && flagged < rewind && rewind < not_fixed, "{case}");
        assert!(!log.iter().any(|l| l == "going read-write"), "{case}");
    }
}

/// After `fsck -y`, after `fsck -p` (every error that repair needs is FSCK_AUTOFIX in bcachefs's
/// table), or after a plain mount (errors=fix_safe) repaired it, the set
/// mounts degraded and holds the workload's files exactly as after some prefix of its
/// operations that includes every fsynced one: the damage costs alloc keys, which the repair
/// rebuilds, and never file data (data_replicas=2 covers the failed member). Either way `fsck
/// -n` finds nothing left.
#[test]
fn repaired_set_keeps_every_fsynced_file() {
    for how in [Some(FixMode::Yes), Some(FixMode::Preen), None] {
        check_repaired_set(how);
    }
}

/// Repairs a fresh set with fsck in mode `how`, or with a plain mount for `None`, and checks it.
fn check_repaired_set(how: Option<FixMode>) {
    let dir = tempfile::tempdir().unwrap();
    let seed = 1107;
    let o = opts(dir.path(), seed);
    let built = build_1107(&o, &mut |_| {}).unwrap();
    let degraded = parse_mount_opts("degraded").unwrap();
    if let Some(mode) = how {
        let fix = FsckOpts { mode, force: true, mount: degraded.clone() };
        let report = fsck(open_device_set(&built.images, true).unwrap(), &fix).unwrap();
        assert_eq!(report.exit_code(), 1, "{:#?}", report.problems.iter().take(5).collect::<Vec<_>>());
    } else {
        let m = mount(open_device_set(&built.images, true).unwrap(), &degraded).unwrap();
        assert!(m.log.iter().any(|l| l.ends_with("- rewinding")), "{:#?}", m.log);
        m.fs.unmount().unwrap();
    }
    let check = FsckOpts { mode: FixMode::No, force: true, mount: degraded.clone() };
    let report = fsck(open_device_set(&built.images, true).unwrap(), &check).unwrap();
    assert_eq!(
        report.exit_code(),
        0,
        "repaired by {how:?}: {:#?}",
        report.problems.iter().take(5).collect::<Vec<_>>()
    );
    let mut fs = mount(open_device_set(&built.images, true).unwrap(), &degraded).unwrap().fs;
    let ops = generate(seed, built.ops);
    let prefixes = matching_prefixes(&mut fs, &ops, built.last_fsync_after, built.ops_run).unwrap();
    assert!(
        !prefixes.is_empty(),
        "no prefix from the last fsync ({}) to the crash ({}) matches",
        built.last_fsync_after,
        built.ops_run
    );
    fs.unmount().unwrap();
}

/// A mount whose fsck passes may fix (`-o degraded,fsck,fix_errors=yes`) drops the duplicated
/// pointer in check_topology, then logs the report's next steps in the report's order:
/// check_allocations' "missing in alloc btree" (eleven times, the last followed by bcachefs's
/// ratelimit line, as `bch2_fsck_err` prints them), then "going read-write". Journal replay's alloc keys then go
/// through the key cache with no coherency failure: the topology was repaired before.
#[test]
fn repairing_mount_logs_missing_alloc_keys_before_going_rw() {
    for behavior in ["v1.37.5", "fixed"] {
        // A set of its own per profile: the first mount repairs what it mounts.
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path(), 1107);
        let built = build_1107(&o, &mut |_| {}).unwrap();
        let mopts = parse_mount_opts(&format!("degraded,fsck,fix_errors=yes,behavior={behavior}")).unwrap();
        let m = mount(open_device_set(&built.images, true).unwrap(), &mopts).unwrap();
        let log = m.log.clone();
        let at = |want: &dyn Fn(&str) -> bool| log.iter().position(|l| want(l));
        let missing = log.iter().filter(|l| l.ends_with("but missing in alloc btree, fixing")).count();
        assert_eq!(missing, 11, "{behavior}: {log:#?}");
        let dropped = at(&|l| l.contains("its pointer leads to another node") && l.ends_with(", fixing"));
        let first_missing = at(&|l| l.ends_with("missing in alloc btree, fixing"));
        let ratelimit = at(&|l| l == "Ratelimiting new instances of previous error");
        let rw = at(&|l| l == "going read-write");
        assert!(dropped.is_some() && dropped < first_missing, "{behavior}: {log:#?}");
        assert!(first_missing < ratelimit && ratelimit < rw, "{behavior}: {log:#?}");
        assert!(m.problems.iter().filter(|p| p.msg.ends_with("missing in alloc btree")).count() > missing);
        m.fs.unmount().unwrap();
    }
}
