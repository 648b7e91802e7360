//! The #1107 image set through the library: built by `bcsim repro`'s code, repaired by fsck,
//! and checked against the workload that made it.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use bcsim::fsck::{FixMode, FsckOpts, fsck};
use bcsim::images::open_device_set;
use bcsim::recovery::{mount, parse_mount_opts};
use bcsim::repro::{Opts1107, Variant1107, build_1107};
use bcsim::workload::{generate, matching_prefixes};

/// After `fsck -y`, the set mounts degraded and holds the workload's files exactly as after
/// some prefix of its operations that includes every fsynced one: the damage costs alloc keys,
/// which fsck rebuilds, and never file data (data_replicas=2 covers the failed member).
#[test]
fn repaired_set_keeps_every_fsynced_file() {
    let dir = tempfile::tempdir().unwrap();
    let seed = 1107;
    let o = Opts1107 { dir: dir.path().to_path_buf(), keys: 4000, seed, variant: Variant1107::Reported };
    let built = build_1107(&o, &mut |_| {}).unwrap();
    let degraded = parse_mount_opts("degraded").unwrap();
    let fix = FsckOpts { mode: FixMode::Yes, force: true, mount: degraded.clone() };
    let report = fsck(open_device_set(&built.images, true).unwrap(), &fix).unwrap();
    assert_eq!(report.exit_code(), 1, "{:#?}", report.problems.iter().take(5).collect::<Vec<_>>());
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
