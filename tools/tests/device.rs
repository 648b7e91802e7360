//! `bcsim device resize`: an offline grow of one member, the workaround of bcachefs #1108. The
//! new buckets are free, the next mount writes their freespace keys, and the filesystem checks
//! clean before and after; shrinking, a size that adds no bucket and a mounted filesystem are
//! refused with nothing changed.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{bcsim, fails, spawn_piped};

/// After an unclean shutdown (a workload crashed after 250 of 300 operations), member 0 grows
/// from 64 MiB to 128 MiB: `fsck -nf` is clean before the mount (the superblock says the
/// freespace btree covers only the old buckets), the recovery mount writes the new buckets'
/// freespace keys and says so, and `fsck -nf` is clean after, with one freespace run reaching
/// the new last bucket.
#[test]
fn resize_grows_a_member_and_its_freespace() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ok = |args: &[&str]| common::ok(args, dir);
    ok(&["format", "--size", "64M", "--bucket-size", "256k", "a.img", "b.img"]);
    ok(&["run", "--ops", "300", "--seed", "1", "--crash-after", "250", "a.img", "b.img"]);
    let out = ok(&["device", "resize", "--json", "a.img", "128M"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((v["old_nbuckets"].as_u64(), v["new_nbuckets"].as_u64()), (Some(255), Some(511)), "{v}");
    assert_eq!(std::fs::metadata(dir.join("a.img")).unwrap().len(), 128 << 20);
    ok(&["fsck", "-nf", "a.img", "b.img"]);
    let log = ok(&["mount", "a.img", "b.img"]);
    assert!(log.contains("fs_freespace_init: dev 0: freespace keys written for buckets 255..511"), "{log}");
    ok(&["fsck", "-nf", "a.img", "b.img"]);
    let keys = ok(&["list", "-b", "freespace", "a.img", "b.img"]);
    assert!(keys.lines().any(|l| l.starts_with("0:511:0 set")), "{keys}");
    // A second mount has nothing left to write.
    let log = ok(&["mount", "a.img", "b.img"]);
    assert!(!log.contains("fs_freespace_init: dev"), "{log}");
}

/// Shrinking and a size that adds no bucket are usage errors; a mounted filesystem is refused
/// (resize is offline); none of them changes the image.
#[test]
fn resize_refuses_what_it_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = bcsim(&["format", "--size", "64M", "a.img", "b.img"], dir);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let before = std::fs::read(dir.join("a.img")).unwrap();
    fails(&bcsim(&["device", "resize", "a.img", "32M"], dir), 16, "shrinking is not supported");
    fails(&bcsim(&["device", "resize", "a.img", "64M"], dir), 16, "nothing to grow");
    fails(&bcsim(&["device", "resize", "a.img", "lots"], dir), 16, "SIZE");
    fails(&bcsim(&["device", "resize", "nosuch.img", "128M"], dir), 8, "nosuch.img");
    assert!(std::fs::read(dir.join("a.img")).unwrap() == before, "a refused resize changed the image");
    let mut held = spawn_piped(&["mount", "--hold", "a.img", "b.img"], dir);
    let mut stderr = std::io::BufReader::new(held.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("holding until") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0, "mount ended");
    }
    let refused = bcsim(&["device", "resize", "a.img", "128M"], dir);
    let _ = held.kill();
    let _ = held.wait();
    fails(&refused, 8, "resize works offline only");
    assert_eq!(std::fs::metadata(dir.join("a.img")).unwrap().len(), 64 << 20);
}

/// `device add` after an unclean shutdown: the new image is created and laid out, every
/// member's superblock lists it, `fsck -nf` is clean before the first mount (the new member
/// has no keys yet, and says so), the recovery mount writes its alloc and freespace keys, and
/// `fsck -nf` is clean after. A new metadata target on it is then usable at run time. The
/// filesystem's own image, an incomplete member list and a formatted image are refused.
#[test]
fn add_lays_out_a_new_member() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ok = |args: &[&str]| common::ok(args, dir);
    ok(&["format", "--size", "64M", "--metadata-replicas", "2", "a.img", "b.img"]);
    ok(&["run", "--ops", "300", "--seed", "1", "--crash-after", "250", "a.img", "b.img"]);
    fails(
        &bcsim(&["device", "add", "a.img", "--fs", "a.img", "b.img"], dir),
        16,
        "already one of the filesystem's images",
    );
    fails(&bcsim(&["device", "add", "c.img", "--size", "64M", "--fs", "a.img"], dir), 8, "not given");
    ok(&["format", "--size", "64M", "other.img"]);
    fails(
        &bcsim(&["device", "add", "other.img", "--fs", "a.img", "b.img"], dir),
        8,
        "already holds bcsim filesystem",
    );
    assert!(!dir.join("c.img").exists(), "a refused add created the image");

    let out = ok(&[
        "device", "add", "--json", "c.img", "--size", "64M", "--label", "ssd.tmp", "--fs", "a.img", "b.img",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((v["dev"].as_u64(), v["label"].as_str()), (Some(2), Some("ssd.tmp")), "{v}");
    for img in ["a.img", "b.img", "c.img"] {
        let sb = ok(&["show-super", img]);
        assert!(sb.contains("ssd.tmp"), "{img}: {sb}");
    }
    ok(&["fsck", "-nf", "a.img", "b.img", "c.img"]);
    let log = ok(&["mount", "a.img", "b.img", "c.img"]);
    assert!(log.contains("fs_freespace_init: dev 2: freespace keys written for buckets 0..255"), "{log}");
    ok(&["fsck", "-nf", "a.img", "b.img", "c.img"]);
    let alloc = ok(&["list", "-b", "alloc", "a.img", "b.img", "c.img"]);
    assert!(
        alloc.lines().any(|l| l.starts_with("2:0:0 alloc_v4")),
        "no alloc key for dev 2's superblock bucket: {alloc}"
    );
    ok(&["set-fs-option", "--metadata_target=ssd.tmp", "a.img", "b.img", "c.img"]);
    ok(&["run", "--ops", "100", "--seed", "4", "a.img", "b.img", "c.img"]);
    ok(&["fsck", "-nf", "a.img", "b.img", "c.img"]);
}
