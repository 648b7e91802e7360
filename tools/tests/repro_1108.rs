//! `bcsim repro 1108` and what each behaviour profile does with the sets it builds, through the
//! built binary: the reporter's kernel (v1.37.5) prints the allocator stuck report and waits
//! for ever, whatever option changes reach it, until the metadata device grows offline; v1.39
//! and fixed discard vde's emptied buckets as they go read-write and finish replay; on the set
//! where vde has nothing to discard, v1.39 needs the option set offline, and fixed finishes
//! once `set-fs-option --metadata_replicas=1` reaches the parked update through the control
//! socket, or with the option given at mount.
//!
//! Sets are built at `--scale 16` (the report's bucket counts divided by 16). A mount is
//! followed line by line on its stderr, never by sleeping; a watchdog kills it if the line
//! awaited never comes, so a broken wake fails the test instead of hanging it.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;

use common::{bcsim, ok};

use common::IMAGES_1108 as IMAGES;

/// A mount of the set in `dir`, running in the background.
fn mount(dir: &Path, args: &[&str]) -> common::Running {
    common::Running::mount(dir, args, &IMAGES)
}

fn build(dir: &Path, variant: &str) {
    let out = ok(&["repro", "1108", "--dir", "set", "--scale", "16", "--variant", variant], dir);
    for name in ["format", "emptied-data", "cold-data", "btree-churn", "power-lost"] {
        assert!(out.contains(&format!(" {name}: ")), "step {name} missing: {out}");
    }
}

/// A fresh copy of the built set in `dir/name`, so that each mount starts from the crash.
fn copy_set(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir.join(name)).unwrap();
    for img in IMAGES {
        // The hard disks are sparse files of 128 GiB: copy their holes as holes.
        let st = std::process::Command::new("cp")
            .arg("--sparse=always")
            .arg(dir.join("set").join(img))
            .arg(dir.join(name).join(img))
            .status()
            .unwrap();
        assert!(st.success(), "cp {img} failed");
    }
}

/// The reported set: v1.37.5 reports the stuck allocator for vde (nothing free, its emptied
/// buckets waiting for a discard that recovery never runs) and keeps waiting; v1.39 and fixed
/// discard them as the filesystem goes read-write, the split goes ahead without a stuck report,
/// and the mount finishes; the filesystem then checks clean.
#[test]
fn reported_set_hangs_v1_37_5_and_discards_free_it_in_v1_39_and_fixed() {
    let d = tempfile::tempdir().unwrap();
    build(d.path(), "reported");

    common::reported_1108_behaves(16, &|name| {
        copy_set(d.path(), name);
        d.path().join(name)
    });
}

/// The no-discard set: fixed parks the split and reports it (vde has nothing to discard);
/// `set-fs-option --metadata_replicas=1` from another process reaches it through the control
/// socket, it is rebuilt for one replica, and the held mount completes; the new replica count
/// is in the superblock after unmount.
#[test]
fn no_discard_set_completes_in_fixed_after_set_fs_option() {
    let d = tempfile::tempdir().unwrap();
    build(d.path(), "no-discard");
    copy_set(d.path(), "fixed");
    common::no_discard_1108_completes_after_set(&d.path().join("fixed"));
}

fn build_in(dir: &Path, variant: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    build(dir, variant);
    dir.to_path_buf()
}

/// v1.37.5 on both sets: `-o metadata_replicas=1` is refused with the kernel's message, the
/// stuck report comes and the wait goes on; a live `set-fs-option --metadata_replicas=1` is
/// accepted, wakes the waiter, and it keeps the two replicas it was built with (the report's
/// chicken-and-egg). The reporter's way out works: grow vde offline, then mount.
#[test]
fn v1_37_5_waits_for_ever_until_vde_grows_offline() {
    let d = tempfile::tempdir().unwrap();
    for variant in ["reported", "no-discard"] {
        let base = build_in(&d.path().join(variant), variant);
        copy_set(&base, "hung");
        let dir = base.join("hung");
        let opts = "behavior=v1.37.5,allocator_stuck_timeout=1,metadata_replicas=1";
        let mut m = mount(&dir, &["--hold", "-o", opts]);
        m.until("metadata_replicas: option may no longer be specified at mount time; set via sysfs opts dir");
        m.until("the kernel waits here forever");
        let set = ok(&[&["set-fs-option", "--metadata_replicas=1"][..], &IMAGES].concat(), &dir);
        assert!(set.contains("set on the running mount"), "{variant}: {set}");
        m.until("but the waiting request keeps metadata_replicas=2 it was built with");
        assert!(m.child.try_wait().unwrap().is_none(), "{variant}: v1.37.5 did not keep waiting");
        drop(m);

        copy_set(&base, "grown");
        let dir = base.join("grown");
        let size = std::fs::metadata(dir.join("vde.img")).unwrap().len() + (256 << 20);
        ok(&["device", "resize", "vde.img", &size.to_string()], &dir);
        let (code, all) =
            mount(&dir, &["-o", "behavior=v1.37.5,allocator_stuck_timeout=1"]).finish("Allocator stuck?");
        assert_eq!(code, 0, "{variant}: mount after growing vde: {all}");
    }
}

/// v1.39 on the no-discard set: it waits (nothing to discard on vde) and a live option change
/// does not reach the waiting request; set offline before the mount, the option is read when
/// the request is built, and the mount finishes.
#[test]
fn v1_39_no_discard_needs_the_option_set_offline() {
    let d = tempfile::tempdir().unwrap();
    let base = build_in(d.path(), "no-discard");
    copy_set(&base, "live");
    let dir = base.join("live");
    let mut m = mount(&dir, &["--hold", "-o", "behavior=v1.39,allocator_stuck_timeout=1"]);
    m.until("Allocator stuck? Waited for");
    ok(&[&["set-fs-option", "--metadata_replicas=1"][..], &IMAGES].concat(), &dir);
    m.until("but the waiting request keeps metadata_replicas=2 it was built with");
    drop(m);

    copy_set(&base, "offline");
    let dir = base.join("offline");
    let set = ok(&[&["set-fs-option", "--metadata_replicas=1"][..], &IMAGES].concat(), &dir);
    assert!(!set.contains("running mount"), "{set}");
    let (code, all) =
        mount(&dir, &["-o", "behavior=v1.39,allocator_stuck_timeout=1"]).finish("Allocator stuck?");
    assert_eq!(code, 0, "{all}");
}

/// fixed on the no-discard set with `-o metadata_replicas=1`: a recovery option there, so the
/// split never waits; the metadata it wrote with one replica is recorded, and fsck reports it.
#[test]
fn fixed_accepts_fewer_replicas_at_mount_and_fsck_reports_them() {
    let d = tempfile::tempdir().unwrap();
    let base = build_in(d.path(), "no-discard");
    copy_set(&base, "m");
    let dir = base.join("m");
    let (code, all) = mount(&dir, &["-o", "behavior=fixed,allocator_stuck_timeout=1,metadata_replicas=1"])
        .finish("Allocator stuck?");
    assert_eq!(code, 0, "{all}");
    assert!(all.contains("metadata_replicas=1 for this mount, below the filesystem's 2"), "{all}");
    let fsck = bcsim(&[&["fsck", "-n"][..], &IMAGES].concat(), &dir);
    assert_eq!(fsck.code, 4, "fsck -n after a mount with fewer replicas: {}{}", fsck.stdout, fsck.stderr);
    assert!(fsck.stdout.contains("replicas"), "{}", fsck.stdout);
}
