//! The `bcsim` binary on good and bad input: every bad input gets one line on stderr naming the
//! problem and the image, exit 8 (operational) or 16 (usage) as fsck(8) has it, never a panic;
//! refused formats leave the images as they were; per-device flags reach the right devices; a
//! stdout whose reader went away (`| head`) ends the output quietly and nothing else.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Out, bcsim, bcsim_head, bcsim_reader_gone, fails, gunzip, ok, quiet};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn format_ok(dir: &Path, args: &[&str]) {
    let out = bcsim(&[&["format"], args].concat(), dir);
    assert_eq!(out.code, 0, "format failed: {}", out.stderr);
}

/// Unpacks the two-device fixture `name` as image.0 and image.1 in `dir`.
fn unpack_fixture(dir: &Path, name: &str) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    for n in ["image.0", "image.1"] {
        gunzip(&fixture.join(format!("{n}.gz")), &dir.join(n));
    }
}

fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0xff;
    f.write_all_at(&b, offset).unwrap();
}

fn sb_offsets(dir: &Path, image: &str) -> (u64, u64) {
    let out = bcsim(&["show-super", "--json", image], dir);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    (v["copies"][0].as_u64().unwrap(), v["copies"][1].as_u64().unwrap())
}

#[test]
fn format_then_show_super_round_trips() {
    let d = tmp();
    format_ok(
        d.path(),
        &[
            "--size",
            "1G",
            "--label",
            "hdd.a",
            "a.img",
            "--label",
            "ssd.n0",
            "--durability",
            "2",
            "b.img",
            "--bucket-size",
            "512k",
            "c.img",
            "--metadata-replicas",
            "2",
            "--metadata-target",
            "ssd",
            "-U",
            "11111111-2222-4333-8444-555555555555",
        ][..],
    );
    let out = bcsim(&["show-super", "--json", "c.img"], d.path());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["uuid"], "11111111-2222-4333-8444-555555555555");
    assert_eq!(v["dev_idx"], 2);
    let m = &v["members"];
    // Per-device flags apply to the images after them, until given again.
    assert_eq!(m[0]["label"], "hdd.a");
    assert_eq!(m[0]["durability"], 1);
    assert_eq!(m[1]["label"], "ssd.n0");
    assert_eq!(m[1]["durability"], 2);
    assert_eq!(m[2]["label"], "ssd.n0");
    assert_eq!(m[2]["durability"], 2);
    assert_eq!(m[2]["bucket_size"], 512 << 10);
    assert_eq!(m[0]["bucket_size"], 256 << 10);
    assert_eq!(v["options"]["metadata_replicas"], 2);
    assert_eq!(v["options"]["metadata_target"], "ssd");
    assert_eq!(v["clean"], true);

    let text = bcsim(&["show-super", "-f", "members", "a.img"], d.path());
    assert_eq!(text.code, 0);
    assert!(text.stdout.contains("Label:               hdd.a"), "{}", text.stdout);
    assert!(!text.stdout.contains("Options:"), "-f members shows members only");

    let all = bcsim(&["show-super", "a.img", "b.img", "c.img"], d.path());
    assert_eq!(all.code, 0, "{}", all.stderr);
    assert_eq!(all.stdout.matches("External UUID:").count(), 3);
}

#[test]
fn missing_directory_empty_and_garbage_images() {
    let d = tmp();
    fails(&bcsim(&["show-super", "nope.img"], d.path()), 8, "nope.img: no such file");
    fails(&bcsim(&["show-super", "."], d.path()), 8, "is a directory");
    std::fs::write(d.path().join("empty.img"), b"").unwrap();
    fails(&bcsim(&["show-super", "empty.img"], d.path()), 8, "empty.img: not a bcsim filesystem");
    let garbage: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(d.path().join("junk.img"), garbage).unwrap();
    fails(&bcsim(&["show-super", "junk.img"], d.path()), 8, "junk.img: not a bcsim filesystem");
}

/// A damaged superblock copy is an fsck error under its stable id: `fsck -n` (quick or forced)
/// exits 4 and writes nothing, `fsck -y` rewrites the copy and exits 1, and the next check is
/// clean. A mount heals it too, and says so.
#[test]
fn damaged_superblock_copy_is_an_fsck_error() {
    let d = tmp();
    format_ok(d.path(), &["--size", "256M", "a.img", "b.img"]);
    let (copy0, _) = sb_offsets(d.path(), "b.img");
    flip_byte(&d.path().join("b.img"), copy0 + 200);
    let before = std::fs::read(d.path().join("b.img")).unwrap();
    for args in [&["fsck", "-n"][..], &["fsck", "-nf"][..]] {
        let out = bcsim(&[args, &["a.img", "b.img"][..]].concat(), d.path());
        assert_eq!(out.code, 4, "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("sb_copy_damaged: b.img: superblock copy at byte"), "{}", out.stdout);
    }
    assert!(std::fs::read(d.path().join("b.img")).unwrap() == before, "fsck -n wrote");
    let out = bcsim(&["fsck", "-y", "a.img", "b.img"], d.path());
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("sb_copy_damaged") && out.stdout.contains("(fixed)"), "{}", out.stdout);
    let out = bcsim(&["fsck", "-nf", "a.img", "b.img"], d.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);

    flip_byte(&d.path().join("a.img"), copy0 + 200);
    let out = bcsim(&["mount", "--json", "a.img", "b.img"], d.path());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(v["problems"].to_string().contains("sb_copy_damaged"), "{}", out.stdout);
    assert_eq!(bcsim(&["fsck", "-nf", "a.img", "b.img"], d.path()).code, 0);
}

#[test]
fn truncated_and_damaged_images() {
    let d = tmp();
    format_ok(d.path(), &["--size", "256M", "a.img", "b.img"]);
    let (copy0, copy1) = sb_offsets(d.path(), "a.img");

    // One damaged copy: still readable, the damage is reported.
    flip_byte(&d.path().join("a.img"), copy0 + 200);
    let out = bcsim(&["show-super", "a.img"], d.path());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(&format!("Damaged copy:            at {copy0}")), "{}", out.stdout);

    // Both copies damaged.
    flip_byte(&d.path().join("a.img"), copy1 + 200);
    fails(&bcsim(&["show-super", "a.img"], d.path()), 8, "no valid superblock copy");

    // Truncated: the backup copy and most buckets are gone.
    let f = std::fs::OpenOptions::new().write(true).open(d.path().join("b.img")).unwrap();
    f.set_len(64 << 20).unwrap();
    fails(&bcsim(&["show-super", "b.img"], d.path()), 8, "truncated");
}

#[test]
fn images_of_two_filesystems_are_refused() {
    let d = tmp();
    format_ok(d.path(), &["--size", "256M", "a.img", "b.img"]);
    format_ok(d.path(), &["--size", "256M", "c.img"]);
    fails(&bcsim(&["show-super", "a.img", "c.img"], d.path()), 8, "c.img: belongs to filesystem");
    fails(&bcsim(&["show-super", "a.img", "a.img"], d.path()), 8, "given twice");
}

#[test]
fn format_refusals_change_nothing() {
    let d = tmp();
    fails(
        &bcsim(&["format", "--size", "1M", "small.img"], d.path()),
        8,
        "small.img: device of 1048576 bytes is too small",
    );
    fails(
        &bcsim(&["format", "--size", "1G", "--bucket-size", "300k", "x.img"], d.path()),
        16,
        "power of two",
    );
    fails(
        &bcsim(&["format", "--size", "1G", "--metadata-replicas", "3", "a.img", "b.img"], d.path()),
        16,
        "metadata_replicas=3",
    );
    fails(
        &bcsim(&["format", "--metadata-target", "ssd", "--size", "1G", "a.img"], d.path()),
        16,
        "matches no device label",
    );
    fails(
        &bcsim(&["format", "-o", "errors=maybe", "--size", "1G", "a.img"], d.path()),
        16,
        "continue|fix_safe|panic|ro",
    );
    fails(
        &bcsim(&["format", "-o", "frobnicate", "--size", "1G", "a.img"], d.path()),
        16,
        "unknown option 'frobnicate'",
    );
    fails(&bcsim(&["format", "new.img"], d.path()), 16, "give --size");
    fails(&bcsim(&["format", "--size", "1G", "a.img", "--label", "x"], d.path()), 16, "after the last image");
    let left: Vec<PathBuf> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "refused formats created {left:?}");

    // An existing filesystem needs -f; the refusal leaves it intact.
    format_ok(d.path(), &["--size", "256M", "-U", "11111111-2222-4333-8444-555555555555", "a.img"]);
    fails(&bcsim(&["format", "a.img"], d.path()), 8, "already holds bcsim filesystem 11111111");
    let out = bcsim(&["show-super", "--json", "a.img"], d.path());
    assert!(out.stdout.contains("11111111-2222-4333-8444-555555555555"));
    format_ok(d.path(), &["-f", "a.img"]);
    let out = bcsim(&["show-super", "--json", "a.img"], d.path());
    assert!(!out.stdout.contains("11111111-2222-4333-8444-555555555555"), "-f formats anew");
}

#[test]
fn usage_errors_exit_16_and_help_exits_0() {
    let d = tmp();
    assert_eq!(bcsim(&[], d.path()).code, 16);
    assert_eq!(bcsim(&["frobnicate"], d.path()).code, 16);
    assert_eq!(bcsim(&["format"], d.path()).code, 16);
    assert_eq!(bcsim(&["show-super", "--bogus", "a.img"], d.path()).code, 16);
    fails(&bcsim(&["show-super", "-f", "nonsense", "a.img"], d.path()), 16, "unknown field 'nonsense'");
    for cmd in ["format", "show-super", "demo"] {
        let out = bcsim(&[cmd, "--help"], d.path());
        assert_eq!(out.code, 0);
        assert!(out.stdout.contains("Usage: bcsim"), "{cmd} --help: {}", out.stdout);
    }
}

/// The main job: format the default set, run and crash a workload, recover, fsck clean; then
/// #1107 and #1108 in each profile, one verdict line each.
#[test]
fn demo_formats_runs_crashes_recovers_and_checks() {
    let d = tmp();
    let out = bcsim(&["demo", "--dir", "set"], d.path());
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.matches("  dev ").count(), 8, "{}", out.stdout);
    assert!(out.stdout.contains("then crashed"), "{}", out.stdout);
    assert!(out.stdout.contains("recovering from unclean shutdown"), "{}", out.stdout);
    assert!(out.stdout.contains("Journal keys: "), "{}", out.stdout);
    assert!(out.stdout.contains("fsck: clean"), "{}", out.stdout);
    // The journal went to the metadata target (the ssd pair), not the hdds.
    assert!(out.stdout.contains("hdd0.img): 0 copies"), "{}", out.stdout);
    assert!(!out.stdout.contains("nvme0.img): 0 copies"), "{}", out.stdout);
    // #1107 and #1108, a verdict line per profile.
    let line =
        |start: &str| out.stdout.lines().find(|l| l.trim_start().starts_with(start)).unwrap_or_default();
    for p in ["v1.37.5 ", "v1.39 ", "fixed "] {
        assert!(
            line(p).contains("mounts (exit 0), after rewinding to check_topology"),
            "#1107 {p}: {}",
            out.stdout
        );
    }
    assert!(line("fsck -y -o degraded").ends_with("mounts (exit 0)"), "{}", out.stdout);
    assert!(line("reported   v1.37.5").contains("allocator stuck in journal replay"), "{}", out.stdout);
    assert!(line("reported   v1.39").contains("mounts (exit 0) after discard: dev 4"), "{}", out.stdout);
    assert!(line("reported   fixed").contains("mounts (exit 0) after discard: dev 4"), "{}", out.stdout);
    assert!(line("no-discard v1.39").contains("may no longer be specified"), "{}", out.stdout);
    assert!(line("no-discard v1.39").contains("allocator stuck"), "{}", out.stdout);
    assert!(line("no-discard fixed").ends_with("mounts (exit 0)"), "{}", out.stdout);
    // Sparse: 6.5 TiB of images take metadata and a little data only.
    use std::os::unix::fs::MetadataExt;
    let used: u64 = std::fs::read_dir(d.path().join("set"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum();
    assert!(used < 1 << 30, "images use {used} bytes");
}

/// Detaches a loop device when the test ends, whatever happened.
struct LoopDevice(String);

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// The same commands work on a block device: format and show-super through /dev/loopN.
/// Needs root and loop devices; when those are missing the test says so and checks nothing.
#[test]
fn loop_device_works_when_available() {
    let d = tmp();
    let image = d.path().join("backing.img");
    std::fs::File::create(&image).unwrap().set_len(128 << 20).unwrap();
    let attach = Command::new("losetup").args(["-f", "--show"]).arg(&image).output();
    let dev = match attach {
        Ok(o) if o.status.success() => LoopDevice(String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        Ok(o) => {
            eprintln!("SKIPPED: loop devices unavailable: {}", String::from_utf8_lossy(&o.stderr).trim());
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED: losetup unavailable: {e}");
            return;
        }
    };
    format_ok(d.path(), &["--label", "ssd.loop", &dev.0]);
    let out = bcsim(&["show-super", "--json", &dev.0], d.path());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["members"][0]["label"], "ssd.loop");
    // The block device's size came from the device itself: buckets cover the 128 MiB.
    let nbuckets = v["members"][0]["nbuckets"].as_u64().unwrap();
    assert_eq!(nbuckets, ((128u64 << 20) - (60 << 10)) / (256 << 10));
    fails(&bcsim(&["format", &dev.0], d.path()), 8, "already holds bcsim filesystem");
    fails(&bcsim(&["format", "--size", "1G", "-f", &dev.0], d.path()), 8, "block device has");
}

/// `bcsim list` prints what was committed: keys in order within --start/--end, alloc keys for
/// the buckets nodes took, the node layout with --nodes, JSON with --json; bad names and
/// positions, and a range that ends before it starts, are usage errors.
#[test]
fn list_shows_committed_keys_and_nodes() {
    use fs_core::bkey::{Bkey, KeyType};
    use fs_core::bpos::{Bpos, BtreeId};
    let d = tmp();
    format_ok(
        d.path(),
        &["--size", "256M", "--metadata-replicas", "2", "--btree-node-size", "16k", "a.img", "b.img"],
    );
    let paths = [d.path().join("a.img"), d.path().join("b.img")];
    let set = bcsim::images::open_device_set(&paths, true).unwrap();
    let fs = bcsim::fs::Fs::open(set, true, Default::default()).unwrap();
    let keys = (0..3000u64).map(|i| Bkey::new(Bpos::new(i / 100, i, 0), KeyType::Set, vec![7; 8]));
    fs.commit_batched(BtreeId::Extents, keys).unwrap();
    fs.unmount().unwrap();

    let out = bcsim(&["list", "-b", "extents", "a.img", "b.img"], d.path());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 3000);
    assert!(
        out.stdout.lines().next().unwrap().starts_with("POS_MIN set: 0707070707070707"),
        "{}",
        out.stdout
    );

    let out = bcsim(&["list", "--start", "5:500", "--end", "5:509", "a.img", "b.img"], d.path());
    assert_eq!(out.stdout.lines().count(), 10, "{}", out.stdout);

    let out = bcsim(&["list", "-b", "alloc", "--json", "a.img", "b.img"], d.path());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let btree_buckets = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["value"].as_str().unwrap().contains("data_type btree"))
        .count();
    assert!(btree_buckets >= 2, "node buckets on both devices: {btree_buckets}");

    let out = bcsim(&["list", "--nodes", "--json", "a.img", "b.img"], d.path());
    let nodes: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let nodes = nodes.as_array().unwrap();
    assert!(nodes.len() > 3, "3000 keys in 16k nodes need several nodes");
    assert!(nodes.iter().all(|n| n["ptrs"].as_array().unwrap().len() == 2));
    assert_eq!(nodes[0]["min_key"], "POS_MIN");

    fails(&bcsim(&["list", "-b", "nosuch", "a.img", "b.img"], d.path()), 16, "unknown btree 'nosuch'");
    fails(&bcsim(&["list", "--start", "x:y", "a.img", "b.img"], d.path()), 16, "invalid --start position");
    // A reversed range is refused, as list-journal refuses one, not listed as empty.
    fails(
        &bcsim(&["list", "-s", "9:9", "-e", "0:0", "a.img", "b.img"], d.path()),
        16,
        "ends before it starts",
    );
    // A fresh filesystem lists nothing.
    format_ok(d.path(), &["--size", "256M", "c.img"]);
    let out = bcsim(&["list", "c.img"], d.path());
    assert_eq!((out.code, out.stdout.as_str()), (0, ""));
}

/// fsck -n on a damaged image set reports, exits 4 and leaves every byte as it was; -y fixes
/// (exit 1), records the error count in the superblock under the error's stable id, and a
/// second check is clean (exit 0). Mutually exclusive modes are a usage error.
#[test]
fn fsck_modes_exit_codes_and_error_counts() {
    let d = tmp();
    unpack_fixture(d.path(), "f_inode_wrong_nlink");
    let before: Vec<Vec<u8>> =
        ["image.0", "image.1"].iter().map(|n| std::fs::read(d.path().join(n)).unwrap()).collect();
    let out = bcsim(&["fsck", "-nf", "image.0", "image.1"], d.path());
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("inode_wrong_nlink") && out.stdout.contains("(not fixed)"), "{}", out.stdout);
    let after: Vec<Vec<u8>> =
        ["image.0", "image.1"].iter().map(|n| std::fs::read(d.path().join(n)).unwrap()).collect();
    assert!(before == after, "fsck -n changed the images");

    let out = bcsim(&["fsck", "-yf", "--json", "image.0", "image.1"], d.path());
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["problems"][0]["id"], 209);
    let sb = bcsim(&["show-super", "--json", "-f", "errors", "image.0"], d.path());
    let sb: serde_json::Value = serde_json::from_str(&sb.stdout).unwrap();
    let errors = sb["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["id"] == 209 && e["name"] == "inode_wrong_nlink" && e["count"] == 1),
        "{errors:?}"
    );
    assert_eq!(bcsim(&["fsck", "-fn", "image.0", "image.1"], d.path()).code, 0);

    assert_eq!(bcsim(&["fsck", "-n", "-y", "image.0", "image.1"], d.path()).code, 16);
    fails(&bcsim(&["fsck", "-n", "nope.img"], d.path()), 8, "nope.img: no such file");
}

/// A freshly formatted set checks clean in every fsck mode, and so does the set right after a
/// crash, before anything mounts it: no crash state needs an allocation repair.
#[test]
fn fresh_format_and_crashed_run_check_clean() {
    let d = tmp();
    let imgs = ["a.img", "b.img", "c.img", "d.img"];
    format_ok(d.path(), &[&["--size", "1G", "--metadata-replicas", "2"][..], &imgs].concat());
    for mode in ["-fn", "-fy", "-fp"] {
        let out = bcsim(&[&["fsck", mode][..], &imgs].concat(), d.path());
        assert_eq!(out.code, 0, "fsck {mode} of a fresh format: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("0 errors found"), "{}", out.stdout);
    }
    let run = bcsim(
        &[&["run", "--ops", "2000", "--seed", "7", "--crash-after", "150"][..], &imgs].concat(),
        d.path(),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = bcsim(&[&["fsck", "-n"][..], &imgs].concat(), d.path());
    assert_eq!(out.code, 0, "fsck -n after a crash: {}{}", out.stdout, out.stderr);
    let m = bcsim(&[&["mount", "--json"][..], &imgs].concat(), d.path());
    assert_eq!(m.code, 0, "{}", m.stderr);
    let v: serde_json::Value = serde_json::from_str(&m.stdout).unwrap();
    assert!(v["replayed"].is_array(), "the crash was not recovered from: {}", m.stdout);
    assert_eq!(v["problems"], serde_json::json!([]), "recovery repaired something");
}

/// A member formatted `--data-allowed user` never holds a journal bucket or a btree node, even
/// when the metadata target's devices are short of buckets and placement falls back to every
/// device; it does take user data; and a format that leaves no device for the journal or the
/// btree is refused.
#[test]
fn data_allowed_keeps_metadata_off_a_member() {
    let d = tmp();
    let imgs = ["hdd.img", "ssd0.img", "ssd1.img"];
    format_ok(
        d.path(),
        &[
            "--size",
            "1G",
            "--data-allowed",
            "user",
            "--label",
            "hdd.a",
            "hdd.img",
            "--size",
            "64M",
            "--data-allowed",
            "journal,btree,user",
            "--label",
            "ssd.n0",
            "ssd0.img",
            "--label",
            "ssd.n1",
            "ssd1.img",
            "--metadata-replicas",
            "2",
            "--metadata-target",
            "ssd",
        ],
    );
    let sup = bcsim(&["show-super", "--json", "hdd.img"], d.path());
    let v: serde_json::Value = serde_json::from_str(&sup.stdout).unwrap();
    assert_eq!(v["members"][0]["data_allowed"], "user", "{}", sup.stdout);
    assert_eq!(v["members"][1]["data_allowed"], "journal,btree,user", "{}", sup.stdout);
    assert_eq!(v["journal"]["nr_buckets"], 0, "the user-only member got journal buckets: {}", sup.stdout);
    let run = bcsim(&[&["run", "--ops", "3000", "--seed", "3"][..], &imgs].concat(), d.path());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let list = bcsim(&[&["list", "-b", "alloc"][..], &imgs].concat(), d.path());
    assert_eq!(list.code, 0, "{}", list.stderr);
    let on_hdd: Vec<&str> = list.stdout.lines().filter(|l| l.starts_with("0:")).collect();
    assert!(on_hdd.iter().any(|l| l.contains("data_type user")), "no user data on the hdd: {on_hdd:?}");
    for l in &on_hdd {
        assert!(
            !l.contains("data_type btree") && !l.contains("data_type journal"),
            "metadata on the hdd: {l}"
        );
    }
    let out = bcsim(&[&["fsck", "-nf"][..], &imgs].concat(), d.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let refused = bcsim(&["format", "--size", "64M", "--data-allowed", "user", "x.img"], d.path());
    fails(&refused, 16, "no device allows journal data");
    let bad = bcsim(&["format", "--size", "64M", "--data-allowed", "user,meta", "y.img"], d.path());
    fails(&bad, 16, "\"meta\" is not one of journal, btree, user");
}

/// run crashes a workload, mount recovers it (and says so), a second mount finds it clean.
#[test]
fn run_crash_then_mount_recovers() {
    let d = tmp();
    format_ok(d.path(), &["--size", "256M", "--metadata-replicas", "2", "a.img", "b.img"]);
    let out = bcsim(
        &["run", "--ops", "400", "--seed", "9", "--crash-after", "300", "--json", "a.img", "b.img"],
        d.path(),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["crashed"], true);
    let m = bcsim(&["mount", "a.img", "b.img"], d.path());
    assert_eq!(m.code, 0, "{}", m.stderr);
    assert!(
        m.stdout.contains("recovering from unclean shutdown") && m.stdout.contains("journal_replay:"),
        "{}",
        m.stdout
    );
    let again = bcsim(&["mount", "a.img", "b.img"], d.path());
    assert!(again.stdout.contains("recovering from clean shutdown"), "{}", again.stdout);
    fails(
        &bcsim(&["run", "--ops", "10", "--crash-after", "20", "a.img", "b.img"], d.path()),
        16,
        "--crash-after is larger",
    );
    fails(&bcsim(&["mount", "-o", "frobnicate", "a.img", "b.img"], d.path()), 16, "unknown option");
    // Mount options apply to that mount only; the stored options stay as formatted.
    assert_eq!(bcsim(&["mount", "-o", "errors=continue", "a.img", "b.img"], d.path()).code, 0);
    let sb = bcsim(&["show-super", "--json", "-f", "options", "a.img"], d.path());
    let sb: serde_json::Value = serde_json::from_str(&sb.stdout).unwrap();
    assert_eq!(sb["options"]["errors"], "fix_safe", "a mount option was written into the superblock");
}

/// Runs `command` on a.img and b.img with a reader and with none: with none it ends quietly,
/// with the exit code (0) and the stderr it has with a reader.
fn same_without_reader(command: &[&str], dir: &Path) {
    let args = [command, &["a.img", "b.img"]].concat();
    let with_reader = bcsim(&args, dir);
    assert_eq!(with_reader.code, 0, "{args:?}: {}", with_reader.stderr);
    assert!(!with_reader.stdout.is_empty(), "{args:?} prints nothing: the test would test nothing");
    let gone = bcsim_reader_gone(&args, dir);
    quiet(&gone, with_reader.code);
    assert_eq!(gone.stderr, with_reader.stderr, "{args:?}");
}

/// Every reading command whose stdout reader is gone ends quietly, as it would with a reader.
/// `list --btree alloc` prints some 900 KiB here and `list-journal -a` some 100 KiB, more than
/// a pipe holds, so `head -n 1` on them meets EPIPE too.
#[test]
fn reading_commands_stop_quietly_when_stdout_closes() {
    let d = tmp();
    format_ok(d.path(), &["--size", "1G", "a.img", "b.img"]);
    let run =
        bcsim(&["run", "--ops", "400", "--seed", "3", "--crash-after", "300", "a.img", "b.img"], d.path());
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Crashed: a journal to list, keys shown with it replayed in memory.
    let commands: &[&[&str]] = &[
        &["list", "--btree", "alloc"],
        &["list", "--btree", "alloc", "--json"],
        &["list", "--btree", "alloc", "--nodes"],
        &["list-journal"],
        &["list-journal", "-a", "-B"],
        &["list-journal", "--json"],
        &["show-super"],
        &["show-super", "--json"],
        &["list", "--help"],
    ];
    for command in commands {
        same_without_reader(command, d.path());
    }
    for command in [&["list", "--btree", "alloc"][..], &["list-journal", "-a"]] {
        let args = [command, &["a.img", "b.img"]].concat();
        let head = bcsim_head(&args, d.path(), 1);
        quiet(&head, 0);
        assert_eq!(head.stdout.lines().count(), 1, "{args:?}");
    }
    // Clean: fsck -n finds nothing (exit 0).
    assert_eq!(bcsim(&["mount", "a.img", "b.img"], d.path()).code, 0);
    for command in
        [&["fsck", "-n"][..], &["fsck", "-nfv"], &["fsck", "-nf", "--json"], &["list", "-b", "alloc"]]
    {
        same_without_reader(command, d.path());
    }
}

/// Commands that write images finish their work when nobody reads their output: the run
/// crashes where it was told, the mount recovers and unmounts cleanly, fsck -y repairs, and
/// each exits as it would with a reader (fsck's code reports the filesystem, not the pipe).
#[test]
fn writing_commands_finish_their_work_when_stdout_closes() {
    let d = tmp();
    quiet(&bcsim_reader_gone(&["format", "--size", "1G", "a.img", "b.img"], d.path()), 0);
    quiet(&bcsim_reader_gone(&["format", "--json", "--size", "256M", "c.img"], d.path()), 0);
    let sb = |image: &str| -> serde_json::Value {
        let out = bcsim(&["show-super", "--json", image], d.path());
        assert_eq!(out.code, 0, "{}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    };
    assert_eq!(sb("a.img")["clean"], true, "format wrote its superblocks");

    let run = ["run", "--ops", "400", "--seed", "3", "--crash-after", "300", "a.img", "b.img"];
    quiet(&bcsim_reader_gone(&run, d.path()), 0);
    assert_eq!(sb("a.img")["clean"], false, "the run crashed as told");
    quiet(&bcsim_reader_gone(&["mount", "a.img", "b.img"], d.path()), 0);
    assert_eq!(sb("a.img")["clean"], true, "the mount recovered and unmounted cleanly");
    quiet(&bcsim_reader_gone(&["mount", "--json", "a.img", "b.img"], d.path()), 0);
    quiet(&bcsim_reader_gone(&["run", "--ops", "50", "--json", "a.img", "b.img"], d.path()), 0);
    assert_eq!(sb("a.img")["clean"], true, "a run without --crash-after unmounts cleanly");

    unpack_fixture(d.path(), "f_inode_wrong_nlink");
    let images = ["image.0", "image.1"];
    quiet(&bcsim_reader_gone(&[&["fsck", "-nf"][..], &images].concat(), d.path()), 4);
    quiet(&bcsim_reader_gone(&[&["fsck", "-yf"][..], &images].concat(), d.path()), 1);
    let again = bcsim(&[&["fsck", "-nf"][..], &images].concat(), d.path());
    assert_eq!(again.code, 0, "fsck -y repaired nothing: {}{}", again.stdout, again.stderr);
}

/// The demo runs to its end (its exit code is its fsck's) with nobody reading it.
#[test]
fn demo_finishes_when_stdout_closes() {
    let d = tmp();
    quiet(&bcsim_reader_gone(&["demo", "--dir", "set"], d.path()), 0);
    let names: Vec<String> = std::fs::read_dir(d.path().join("set"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.iter().filter(|n| n.ends_with(".img")).count(), 8, "{names:?}");
    // The issues' image sets, each in its own directory.
    for set in ["1107", "1108-reported", "1108-no-discard"] {
        assert!(names.iter().any(|n| n == set), "{names:?}");
    }
}

/// Runs the built `bcsim` with `file` as its stdout.
fn bcsim_into(args: &[&str], dir: &Path, file: std::fs::File) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_bcsim"))
        .args(args)
        .current_dir(dir)
        .env("XDG_RUNTIME_DIR", dir)
        .stdout(file)
        .output()
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A stdout that fails for another reason than a reader going away (a full disk behind a
/// redirect) is an operational error: one line naming stdout, exit 8, also for fsck.
#[test]
fn stdout_write_errors_are_operational() {
    let d = tmp();
    format_ok(d.path(), &["--size", "256M", "a.img"]);
    // The first mount writes the alloc keys.
    assert_eq!(bcsim(&["mount", "a.img"], d.path()).code, 0);
    for args in [&["show-super", "a.img"][..], &["fsck", "-n", "a.img"], &["list", "-b", "alloc", "a.img"]] {
        let full = match std::fs::OpenOptions::new().write(true).open("/dev/full") {
            Ok(f) => f,
            Err(e) => {
                eprintln!("SKIPPED: /dev/full unavailable: {e}");
                return;
            }
        };
        fails(&bcsim_into(args, d.path(), full), 8, "cannot write to stdout: No space left on device");
    }
}

/// Where the first replica of `btree`'s root node lives: (image index, byte offset).
fn root_node_at(dir: &Path, btree: &str, images: &[&str]) -> (usize, u64) {
    let out = bcsim(&[&["list", "--nodes", "--json", "-b", btree][..], images].concat(), dir);
    let nodes: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let p = &nodes[0]["ptrs"][0];
    (p["dev"].as_u64().unwrap() as usize, p["offset_sectors"].as_u64().unwrap() * 512)
}

/// A node none of whose replicas reads (the dirents root, zeroed) is dropped by fsck, never
/// an exit 8: `-n` reports it and what follows from it and writes nothing; `-p` may not drop it,
/// so it stops before writing (exit 4); `-y` drops it, reattaches the inodes it named as /#INUM
/// and exits 1; the next check is clean and the filesystem mounts.
#[test]
fn fsck_drops_an_unreadable_node() {
    let d = tmp();
    format_ok(d.path(), &["--size", "1G", "a.img"]);
    let out = bcsim(&["run", "--ops", "400", "--seed", "3", "a.img"], d.path());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (_, at) = root_node_at(d.path(), "dirents", &["a.img"]);
    let f = std::fs::OpenOptions::new().write(true).open(d.path().join("a.img")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 4096], at).unwrap();
    drop(f);
    let before = std::fs::read(d.path().join("a.img")).unwrap();

    for mode in ["-nf", "-pf"] {
        let out = bcsim(&["fsck", mode, "a.img"], d.path());
        assert_eq!(out.code, 4, "{mode}: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("btree_node_unreadable: btree dirents level 0"), "{}", out.stdout);
        assert!(std::fs::read(d.path().join("a.img")).unwrap() == before, "fsck {mode} wrote");
    }
    let out = bcsim(&["fsck", "-yf", "a.img"], d.path());
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("dropped, its keys are lost (fixed)"), "{}", out.stdout);
    assert!(out.stdout.contains("reattached as /#"), "{}", out.stdout);
    let out = bcsim(&["fsck", "-nf", "a.img"], d.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(bcsim(&["mount", "a.img"], d.path()).code, 0);
}

/// A run that fails after going read-write leaves a clean filesystem clean: fsck -y meeting a
/// dirent it cannot decode exits 8, and the filesystem still mounts without recovery.
#[test]
fn failed_fsck_leaves_a_clean_filesystem_clean() {
    use fs_core::bkey::{Bkey, KeyType};
    use fs_core::bpos::{Bpos, BtreeId};
    let d = tmp();
    format_ok(d.path(), &["--size", "256M", "a.img"]);
    let paths = [d.path().join("a.img")];
    let set = bcsim::images::open_device_set(&paths, true).unwrap();
    let fs = bcsim::fs::Fs::open(set, true, Default::default()).unwrap();
    // A dirent value too short to decode: damage a checksum cannot catch (a bug wrote it).
    fs.commit(BtreeId::Dirents, [Bkey::new(Bpos::new(4096, 1, 0), KeyType::Dirent, vec![1, 2, 3])]).unwrap();
    fs.unmount().unwrap();

    let out = bcsim(&["fsck", "-yf", "a.img"], d.path());
    assert_eq!(out.code, 8, "{}{}", out.stdout, out.stderr);
    let out = bcsim(&["show-super", "--json", "a.img"], d.path());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["clean"], true, "a failed fsck left the filesystem unclean");
    let out = bcsim(&["mount", "a.img"], d.path());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("recovering from clean shutdown"), "{}", out.stdout);
}

/// After a crash, one bad replica of the alloc root costs nothing: `fsck -n` reports it (exit
/// 4, nothing written); `fsck -y` and a mount read the good replica and rewrite the node, fsck
/// saying so (exit 1, "fixed"); the next check is clean.
#[test]
fn a_bad_replica_is_read_around_and_rewritten() {
    let d = tmp();
    let imgs = ["a.img", "b.img", "c.img", "d.img"];
    format_ok(d.path(), &[&["--size", "128M", "--metadata-replicas", "2"][..], &imgs].concat());
    let run = [&["run", "--ops", "400", "--seed", "3", "--crash-after", "300"][..], &imgs].concat();
    assert_eq!(bcsim(&run, d.path()).code, 0);
    let (dev, at) = root_node_at(d.path(), "alloc", &imgs);
    let victim = d.path().join(imgs[dev]);
    flip_byte(&victim, at + 1000);
    let saved: Vec<Vec<u8>> = imgs.iter().map(|i| std::fs::read(d.path().join(i)).unwrap()).collect();

    let out = bcsim(&[&["fsck", "-n"][..], &imgs].concat(), d.path());
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("read from another replica") && out.stdout.contains("(not fixed)"),
        "{}",
        out.stdout
    );
    assert!(std::fs::read(&victim).unwrap() == saved[dev], "fsck -n wrote");

    for cmd in [&["fsck", "-y"][..], &["mount"][..]] {
        for (i, bytes) in imgs.iter().zip(&saved) {
            std::fs::write(d.path().join(i), bytes).unwrap();
        }
        let out = bcsim(&[cmd, &imgs].concat(), d.path());
        let want = if cmd[0] == "fsck" { 1 } else { 0 };
        assert_eq!(out.code, want, "{cmd:?}: {}{}", out.stdout, out.stderr);
        if cmd[0] == "fsck" {
            assert!(out.stdout.contains("rewritten from the good replica (fixed)"), "{}", out.stdout);
        }
        let out = bcsim(&[&["fsck", "-nf"][..], &imgs].concat(), d.path());
        assert_eq!(out.code, 0, "after {cmd:?}: {}{}", out.stdout, out.stderr);
    }
}

/// Zeroes the first block of every copy of every journal entry from `from_seq` on.
fn zero_journal_from(dir: &Path, images: &[&str], from_seq: u64) -> usize {
    use std::os::unix::fs::FileExt;
    let out = bcsim(&[&["list-journal", "-a", "--json"][..], images].concat(), dir);
    let entries: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let mut zeroed = 0;
    for e in entries.as_array().unwrap().iter().filter(|e| e["seq"].as_u64().unwrap() >= from_seq) {
        for c in e["copies"].as_array().unwrap() {
            let img = images[c["dev"].as_u64().unwrap() as usize];
            let f = std::fs::OpenOptions::new().write(true).open(dir.join(img)).unwrap();
            f.write_all_at(&[0u8; 4096], c["offset"].as_u64().unwrap()).unwrap();
            zeroed += 1;
        }
    }
    zeroed
}

/// Journal entries lost after the btree nodes that carry their keys were written: the bsets
/// whose journal seq is past the newest entry found are reported (bset_newer_than_journal), not
/// dropped silently; fsck -y rewrites the nodes without them and the next check is clean.
#[test]
fn bsets_newer_than_the_journal_are_reported() {
    use fs_core::bkey::{Bkey, KeyType};
    use fs_core::bpos::{Bpos, BtreeId};
    let d = tmp();
    format_ok(d.path(), &["--size", "256M", "a.img"]);
    let paths = [d.path().join("a.img")];
    let set = bcsim::images::open_device_set(&paths, true).unwrap();
    let fs = bcsim::fs::Fs::open(set, true, Default::default()).unwrap();
    let keys = |r: std::ops::Range<u64>| r.map(|i| Bkey::new(Bpos::new(1, i, 0), KeyType::Set, vec![5; 8]));
    fs.commit(BtreeId::Extents, keys(0..100)).unwrap();
    fs.write_back().unwrap();
    let s1 = fs.commit(BtreeId::Extents, keys(100..200)).unwrap();
    fs.write_back().unwrap();
    drop(fs); // a crash: nothing more is written
    assert!(zero_journal_from(d.path(), &["a.img"], s1) > 0);

    let out = bcsim(&["fsck", "-n", "a.img"], d.path());
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("bset_newer_than_journal"), "{}", out.stdout);
    let out = bcsim(&["fsck", "-y", "a.img"], d.path());
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let out = bcsim(&["fsck", "-nf", "a.img"], d.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = bcsim(&["list", "-b", "extents", "a.img"], d.path());
    assert_eq!(out.stdout.lines().count(), 100, "the keys of the lost entries are gone, the rest kept");
}

/// A hole in a journal bucket (one zeroed block on each of two devices, every entry still with
/// one good copy) loses nothing: the read looks past it, replays as far as without the damage,
/// and reports it (journal_bucket_hole); fsck -y replays and seals, and the next check is clean.
#[test]
fn journal_holes_are_read_past_and_reported() {
    use std::os::unix::fs::FileExt;
    let d = tmp();
    let imgs = ["a.img", "b.img", "c.img", "d.img"];
    format_ok(d.path(), &[&["--size", "128M", "--metadata-replicas", "2"][..], &imgs].concat());
    let run = [&["run", "--ops", "400", "--seed", "3", "--crash-after", "300"][..], &imgs].concat();
    assert_eq!(bcsim(&run, d.path()).code, 0);
    let out = bcsim(&[&["list-journal", "--json"][..], &imgs].concat(), d.path());
    let entries: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let entries = entries.as_array().unwrap();
    let newest = entries.last().unwrap()["seq"].as_u64().unwrap();
    assert!(entries.len() > 20, "too few entries to punch holes in: {}", entries.len());
    // The copies of two entries, a third and two thirds in, on different devices.
    for (nth, dev) in [(entries.len() / 3, 0), (2 * entries.len() / 3, 1)] {
        let copy =
            entries[nth]["copies"].as_array().unwrap().iter().find(|c| c["dev"] == dev).unwrap().clone();
        let f = std::fs::OpenOptions::new().write(true).open(d.path().join(imgs[dev])).unwrap();
        f.write_all_at(&[0u8; 4096], copy["offset"].as_u64().unwrap()).unwrap();
    }

    let out = bcsim(&[&["fsck", "-n"][..], &imgs].concat(), d.path());
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("journal_bucket_hole: journal: journal hole on dev"), "{}", out.stdout);
    let out = bcsim(&[&["fsck", "-y", "--json"][..], &imgs].concat(), d.path());
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let log: Vec<&str> = v["log"].as_array().unwrap().iter().filter_map(|l| l.as_str()).collect();
    let range = log.iter().find_map(|l| l.strip_prefix("journal read done, replaying entries ")).unwrap();
    assert_eq!(range.rsplit('-').next(), Some(newest.to_string().as_str()), "{log:#?}");
    let out = bcsim(&[&["fsck", "-nf"][..], &imgs].concat(), d.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

/// `-o degraded` mounts a filesystem with a member missing when every journal entry and btree
/// node still has a replica: mount, fsck -y and run work, fsck -n reports nothing of the absent
/// member as a fault of the present ones, and with every member back the filesystem checks clean.
/// Without `degraded` the mount is refused; v1.39's degraded=ask|yes|very|no are accepted.
#[test]
fn degraded_mounts_work_and_say_what_is_short() {
    let d = tmp();
    let imgs = ["a.img", "b.img", "c.img", "d.img"];
    let three = &imgs[..3];
    format_ok(
        d.path(),
        &[&["--size", "128M", "--data-replicas", "2", "--metadata-replicas", "2"][..], &imgs].concat(),
    );
    assert_eq!(bcsim(&[&["run", "--ops", "300", "--seed", "5"][..], &imgs].concat(), d.path()).code, 0);
    fails(&bcsim(&[&["mount"][..], three].concat(), d.path()), 8, "mount with -o degraded");
    for cmd in [
        &["fsck", "-nf", "-o", "degraded"][..],
        &["mount", "-o", "degraded"],
        &["fsck", "-yf", "-o", "degraded=ask"],
    ] {
        let out = bcsim(&[cmd, three].concat(), d.path());
        assert_eq!(out.code, 0, "{cmd:?}: {}{}", out.stdout, out.stderr);
    }
    let out =
        bcsim(&[&["run", "--ops", "50", "--seed", "9", "-o", "degraded=very"][..], three].concat(), d.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    fails(&bcsim(&[&["mount", "-o", "degraded=bogus"][..], three].concat(), d.path()), 16, "degraded");
    let out = bcsim(&[&["fsck", "-nf"][..], &imgs].concat(), d.path());
    assert_eq!(out.code, 0, "every member back: {}{}", out.stdout, out.stderr);

    // Two members, one missing: metadata_replicas=2 cannot be met. The mount writes one replica,
    // says so and records it; fsck with both members rewrites what is short.
    let d = tmp();
    format_ok(d.path(), &["--size", "128M", "--metadata-replicas", "2", "a.img", "b.img"]);
    assert_eq!(bcsim(&["run", "--ops", "100", "--seed", "1", "a.img", "b.img"], d.path()).code, 0);
    let out = bcsim(&["run", "--ops", "30", "--seed", "2", "-o", "degraded", "a.img"], d.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = bcsim(&["mount", "-o", "degraded", "a.img"], d.path());
    assert!(
        out.stdout.contains("degraded: metadata_replicas=2 but the present members give 1"),
        "{}",
        out.stdout
    );
    let out = bcsim(&["show-super", "a.img"], d.path());
    assert!(out.stdout.contains("replicas_written_short"), "{}", out.stdout);
    let out = bcsim(&["fsck", "-nf", "a.img", "b.img"], d.path());
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("replicas_written_short: btree"), "{}", out.stdout);
    assert_eq!(bcsim(&["fsck", "-yf", "a.img", "b.img"], d.path()).code, 1);
    let out = bcsim(&["fsck", "-nf", "a.img", "b.img"], d.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

/// A lost journal (every journal bucket zeroed after a crash) does not end in exit 8: fsck
/// finds the btree roots by scanning the devices for btree nodes, reports the loss
/// (dirty_but_no_journal_entries), -y repairs and seals (exit 1), and the filesystem then
/// checks clean and mounts. A plain mount refuses and says what to run.
#[test]
fn lost_journal_is_recovered_by_a_node_scan() {
    let d = tmp();
    let imgs = ["a.img", "b.img"];
    format_ok(d.path(), &[&["--size", "128M", "--metadata-replicas", "2"][..], &imgs].concat());
    let run = [&["run", "--ops", "3000", "--seed", "4", "--crash-after", "2500"][..], &imgs].concat();
    assert_eq!(bcsim(&run, d.path()).code, 0);
    let out = bcsim(&["show-super", "--json", "a.img"], d.path());
    let sb: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let bucket = sb["members"][0]["bucket_size"].as_u64().unwrap();
    for img in imgs {
        let f = std::fs::OpenOptions::new().write(true).open(d.path().join(img)).unwrap();
        for r in sb["journal"]["ranges"].as_array().unwrap() {
            for b in r[0].as_u64().unwrap()..r[1].as_u64().unwrap() {
                std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; bucket as usize], b * bucket)
                    .unwrap();
            }
        }
    }
    fails(&bcsim(&[&["mount"][..], &imgs].concat(), d.path()), 8, "fsck -y finds them by scanning");
    let out = bcsim(&[&["fsck", "-n"][..], &imgs].concat(), d.path());
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("dirty_but_no_journal_entries"), "{}", out.stdout);
    let out = bcsim(&[&["fsck", "-y"][..], &imgs].concat(), d.path());
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let out = bcsim(&[&["fsck", "-nf"][..], &imgs].concat(), d.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = bcsim(&[&["list", "-b", "inodes"][..], &imgs].concat(), d.path());
    assert!(out.stdout.lines().count() > 10, "the scan found the inodes btree: {}", out.stdout);
}

/// Journal replay routes level-0 alloc keys through the key cache. A key new to the btree is
/// written through in every profile (v1.37.5's fill takes the journal key then, and flushes it
/// immediately; since v1.39 an empty slot counts as deleted); a key over a live btree key is
/// cached, and written back by the pin flush. Replay's keys are compacted per position, so the
/// fill rules differ on nothing here: every profile routes the same keys the same way and
/// recovers a filesystem that checks clean.
#[test]
fn replay_routes_alloc_keys_through_the_key_cache() {
    let d = tmp();
    let imgs = ["a.img", "b.img"];
    format_ok(d.path(), &[&["--size", "128M", "--metadata-replicas", "2"][..], &imgs].concat());
    let run = [&["run", "--ops", "3000", "--seed", "3", "--crash-after", "2500"][..], &imgs].concat();
    assert_eq!(bcsim(&run, d.path()).code, 0);
    let saved: Vec<Vec<u8>> = imgs.iter().map(|i| std::fs::read(d.path().join(i)).unwrap()).collect();
    let mut lines = Vec::new();
    for profile in ["v1.37.5", "v1.39", "fixed"] {
        for (i, bytes) in imgs.iter().zip(&saved) {
            std::fs::write(d.path().join(i), bytes).unwrap();
        }
        let opt = format!("behavior={profile}");
        let out = bcsim(&[&["mount", "-o", opt.as_str()][..], &imgs].concat(), d.path());
        assert_eq!(out.code, 0, "{profile}: {}{}", out.stdout, out.stderr);
        let line = out.stdout.lines().find(|l| l.contains("through the key cache")).unwrap_or_default();
        assert!(
            !line.is_empty() && !line.contains(": 0 cached") && !line.ends_with(" 0 written through"),
            "{profile}: both routes taken: {line:?}\n{}",
            out.stdout
        );
        lines.push(line.to_owned());
        let out = bcsim(&[&["fsck", "-nf"][..], &imgs].concat(), d.path());
        assert_eq!(out.code, 0, "{profile}: {}{}", out.stdout, out.stderr);
    }
    assert!(lines.iter().all(|l| *l == lines[0]), "{lines:#?}");
}

/// The #1107 image set: the same seed builds the same set, step by step; one member is left
/// out, so the set mounts only with `-o degraded`; and the damage reaches recovery through the
/// real path. The journal read finds the stale journal buckets of the five hard disks (once per
/// device, before the journal keys line), and the duplicated alloc pointer is refused by the
/// alloc walk in every profile (btree_need_topology_repair, exit 8) instead of its range being
/// read from the wrong node, with the log up to the failure printed first. Then `fsck -n`
/// reports, `fsck -y` repairs, and the set checks clean and mounts.
#[test]
fn repro_1107_builds_the_same_set_and_recovery_meets_its_damage() {
    let d = tmp();
    let steps = |dir: &str| {
        let out = bcsim(&["repro", "1107", "--dir", dir, "--keys", "4000"], d.path());
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        // Without the uuid, which format draws at random.
        let lines: Vec<String> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("step "))
            .map(|l| l.replace(&format!(" {dir}/"), " DIR/"))
            .collect();
        assert_eq!(lines.len(), 5, "{}", out.stdout);
        lines
    };
    assert_eq!(steps("set1"), steps("set2"), "the same seed builds the same set");
    let imgs: Vec<String> = ["hdd0", "hdd1", "hdd2", "hdd3", "hdd4", "nvme0", "nvme1"]
        .iter()
        .map(|n| format!("set1/{n}.img"))
        .collect();
    let imgs: Vec<&str> = imgs.iter().map(String::as_str).collect();
    assert!(d.path().join("set1/failed/hdd5.img").exists());
    let out = bcsim(&[&["mount"][..], &imgs].concat(), d.path());
    assert_eq!(out.code, 8, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("degraded"), "{}", out.stderr);
    // Under errors=ro, each profile's read of the duplicated pointer fails, recovery rewinds to
    // check_topology, and the mount stops there with the error not fixed, writing nothing.
    for profile in ["v1.37.5", "v1.39", "fixed"] {
        let opt = format!("degraded,behavior={profile},errors=ro");
        let out = bcsim(&[&["mount", "-o", opt.as_str()][..], &imgs].concat(), d.path());
        assert_eq!(out.code, 8, "{profile}: {}{}", out.stdout, out.stderr);
        let log: Vec<&str> = out.stdout.lines().collect();
        let not_monotonic: Vec<usize> = (0..log.len())
            .filter(|&i| log[i].starts_with("journal bucket seqs not monotonic on dev"))
            .collect();
        let keys_line = log.iter().position(|l| l.starts_with("Journal keys: "));
        assert_eq!(not_monotonic.len(), 5, "{profile}: {}", out.stdout);
        assert!(keys_line.is_some_and(|k| not_monotonic.iter().all(|&i| i < k)), "{profile}: {}", out.stdout);
        let want = "run fsck or set errors=fix_safe to allow self-healing [fsck_errors_not_fixed]";
        assert!(out.stderr.contains(want), "{profile}: {}", out.stderr);
        let rewound = "running recovery pass check_topology (4), currently at alloc_read (0) - rewinding";
        assert!(out.stdout.contains(rewound), "{profile}: {}", out.stdout);
    }
    // fsck reports what the failed mounts left untouched, and repairs it: check_topology drops
    // the duplicated pointer's range for an empty node, and check_allocations rebuilds the
    // alloc keys it held from the extents and node pointers.
    let fsck = |flags: &str| bcsim(&[&["fsck", flags, "-o", "degraded"][..], &imgs].concat(), d.path());
    let out = fsck("-n");
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    for want in
        ["btree_node_topology_bad_min_key: btree alloc level 0", "but missing in alloc btree (not fixed)"]
    {
        assert!(out.stdout.contains(want), "{want}: {}", out.stdout);
    }
    let out = fsck("-y");
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("its pointer leads to another node"), "{}", out.stdout);
    let out = fsck("-nf");
    assert_eq!(out.code, 0, "clean after fsck -y: {}{}", out.stdout, out.stderr);
    let out = bcsim(&[&["mount", "-o", "degraded"][..], &imgs].concat(), d.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);

    // Under the default errors=fix_safe, a plain mount of the other set heals itself: the
    // prefetch read through the duplicated pointer fails and flags the alloc btree's lost data,
    // recovery rewinds to check_topology, which drops the pointer (FSCK_AUTOFIX), and
    // check_allocations rebuilds the lost alloc keys, all before going read-write. It leaves
    // nothing for fsck.
    let imgs2: Vec<String> = imgs.iter().map(|i| i.replace("set1/", "set2/")).collect();
    let imgs2: Vec<&str> = imgs2.iter().map(String::as_str).collect();
    let out = bcsim(&[&["mount", "-o", "degraded"][..], &imgs2].concat(), d.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let at = |needle: &str| out.stdout.find(needle).unwrap_or_else(|| panic!("{needle}: {}", out.stdout));
    let order = [
        "Journal keys: ",
        "btree node read error at btree alloc level 0",
        "flagging btree alloc lost data",
        "currently at alloc_read (0) - rewinding",
        "its pointer leads to another node",
        "but missing in alloc btree, fixing",
        "going read-write",
        "journal_replay: ",
    ];
    for w in order.windows(2) {
        assert!(at(w[0]) < at(w[1]), "{} before {}: {}", w[0], w[1], out.stdout);
    }
    let out = bcsim(&[&["fsck", "-nf", "-o", "degraded"][..], &imgs2].concat(), d.path());
    assert_eq!(out.code, 0, "clean after the self-healing mount: {}{}", out.stdout, out.stderr);
}

/// A #1107 build whose images could not fit is refused before anything is written: one line
/// naming the space it needs and the space free, exit 8, and no image in the directory.
#[test]
fn repro_1107_refuses_a_build_that_cannot_fit() {
    let d = tmp();
    let out = bcsim(&["repro", "1107", "--dir", "big", "--keys", "1000000000000000"], d.path());
    assert_eq!(out.code, 8, "{}{}", out.stdout, out.stderr);
    let err: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(err.len(), 1, "{}", out.stderr);
    assert!(err[0].contains("GiB of image space") && err[0].contains("[ENOSPC]"), "{}", out.stderr);
    let left: Vec<_> = std::fs::read_dir(d.path().join("big")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `dump --live-only` keeps what a mount reads and nothing else: after a run that rewrote nodes
/// and reclaimed journal entries it is smaller than a full dump, and the restored set checks and
/// mounts exactly as the original. A set that does not open is refused with one line, exit 8,
/// and no dump left behind.
#[test]
fn live_only_dump_keeps_what_a_mount_reads() {
    let d = tmp();
    format_ok(d.path(), &["--size", "256M", "--btree-node-size", "16k", "a.img"]);
    ok(&["run", "--ops", "400", "--seed", "3", "a.img"], d.path());
    let full = ok(&["dump", "-o", "full.dump", "a.img"], d.path());
    let live = ok(&["dump", "--live-only", "-o", "live.dump", "a.img"], d.path());
    let kept = |line: &str| -> u64 {
        line.split(" images, ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap()
    };
    assert!(kept(&live) < kept(&full), "{live} / {full}");
    ok(&["undump", "live.dump", "--dir", "restored"], d.path());
    for args in [&["fsck", "-nf"][..], &["list", "-b", "inodes"][..], &["mount"][..]] {
        let want = bcsim(&[args, &["a.img"]].concat(), d.path());
        let got = bcsim(&[args, &["restored/a.img"]].concat(), d.path());
        assert_eq!(want.code, 0, "{args:?}: {}{}", want.stdout, want.stderr);
        let mask = |s: &str| s.replace("restored/", "");
        assert_eq!((got.code, mask(&got.stdout)), (want.code, want.stdout.clone()), "{args:?}");
    }
    std::fs::write(d.path().join("b.img"), vec![0u8; 1 << 20]).unwrap();
    let out = bcsim(&["dump", "--live-only", "-o", "bad.dump", "b.img"], d.path());
    assert_eq!(out.code, 8, "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(!d.path().join("bad.dump").exists());
}

/// A dump that is not one, or is cut short, fails undump with one line and exit 8 and leaves
/// no image behind; an existing image is never replaced.
#[test]
fn undump_refuses_bad_dumps_and_replaces_nothing() {
    let d = tmp();
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/issue-1107/issue-1107.dump");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(d.path().join("garbage.dump"), b"not a dump at all").unwrap();
    std::fs::write(d.path().join("cut.dump"), &bytes[..bytes.len() / 2]).unwrap();
    for (dump, dir) in [("garbage.dump", "g"), ("cut.dump", "c")] {
        let out = bcsim(&["undump", dump, "--dir", dir], d.path());
        assert_eq!(out.code, 8, "{dump}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{dump}: {}", out.stderr);
        assert!(out.stderr.contains("not a bcsim dump"), "{dump}: {}", out.stderr);
        let left = std::fs::read_dir(d.path().join(dir)).map_or(0, |r| r.count());
        assert_eq!(left, 0, "{dump}: nothing left behind");
    }
    std::fs::create_dir(d.path().join("e")).unwrap();
    std::fs::write(d.path().join("e/nvme1.img"), b"mine").unwrap();
    let out = bcsim(&["undump", good.to_str().unwrap(), "--dir", "e"], d.path());
    assert_eq!(out.code, 8, "{}", out.stderr);
    assert!(out.stderr.contains("replaces nothing"), "{}", out.stderr);
    assert_eq!(std::fs::read(d.path().join("e/nvme1.img")).unwrap(), b"mine");
}

/// `run` on a filesystem it already ran on works in a directory of its own (`/run1`, then
/// `/run2`), instead of failing on the names the first run made; the filesystem checks clean.
#[test]
fn run_again_works_in_a_directory_of_its_own() {
    let d = tmp();
    format_ok(d.path(), &["--size", "128M", "a.img"]);
    for want in ["in /;", "in /run1;", "in /run2;"] {
        let out = bcsim(&["run", "--ops", "60", "--seed", "5", "a.img"], d.path());
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains(want), "{want}: {}", out.stdout);
    }
    let out = bcsim(&["fsck", "-nf", "a.img"], d.path());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}
