//! fsck on committed images, the way e2fsprogs runs its f_* tests: each directory under
//! tests/fixtures holds a damaged image set (gzip'd) and the expected output of
//! `bcsim fsck -yf` run twice: expect.1 (the fixes, exit 1) and expect.2 (clean, exit 0). The
//! images pin the on-disk format: a format change that breaks reading them fails here.
//!
//! The fixtures are made by bcsim itself: `cargo test -p bcsim --test fsck_fixtures --
//! --ignored regenerate` rebuilds them (after a deliberate format change).

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::gunzip;

use bcsim::files::Files;
use bcsim::fs::Fs;
use bcsim::images::{ImageSpec, format_images, open_device_set};
use bcsim::workload::{generate, resolve, run_op};
use fs_core::bkey::alloc::bucket_pos;
use fs_core::bkey::{Bkey, Dirent, Extent, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::BtreeConfig;
use fs_core::opts::{OptId, Options};
use fs_core::uuid::Uuid;

const IMAGES: [&str; 2] = ["image.0", "image.1"];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A damage to apply to a small, healthy filesystem.
struct Damage {
    name: &'static str,
    apply: fn(&mut Fs),
}

fn first_extent(fs: &mut Fs) -> (Bkey, Extent) {
    let k = fs.list(BtreeId::Extents, Bpos::MIN, Bpos::MAX).unwrap().into_iter().next().unwrap();
    let e = Extent::decode(&k.val).unwrap();
    (k, e)
}

const DAMAGES: &[Damage] = &[
    Damage {
        name: "f_alloc_key_missing",
        apply: |fs| {
            // The bucket holding a file's data loses its alloc key.
            let (_, e) = first_extent(fs);
            let p = e.ptrs[0];
            let bucket = p.byte_offset() / fs.bucket_size(p.dev);
            fs.commit(BtreeId::Alloc, [Bkey::whiteout(bucket_pos(p.dev, bucket))]).unwrap();
        },
    },
    Damage {
        name: "f_dirent_to_missing_inode",
        apply: |fs| {
            let d = Dirent { target: 999_999, d_type: 8, name: "ghost".into() };
            let pos = Bpos::new(bcsim::files::ROOT_INO, Dirent::name_hash("ghost"), 0);
            fs.commit(BtreeId::Dirents, [Bkey::new(pos, KeyType::Dirent, d.encode())]).unwrap();
        },
    },
    Damage {
        name: "f_inode_wrong_nlink",
        apply: |fs| {
            let inum = resolve(fs, "/victim").unwrap();
            let mut i = Files::inode(fs, inum).unwrap().unwrap();
            i.nlink = 7;
            fs.commit(BtreeId::Inodes, [Bkey::new(Bpos::new(0, inum, 0), KeyType::Inode, i.encode())])
                .unwrap();
        },
    },
    Damage {
        name: "f_freespace_key_wrong",
        apply: |fs| {
            // A run of free buckets loses its freespace key (a range key at the run's end,
            // its size the run's length); a used bucket gains a one-bucket run. The run is the
            // last one, the free tail of the last device: buckets are allocated lowest first,
            // so the writes of the unmount leave it alone.
            let free = fs.list(BtreeId::Freespace, Bpos::MIN, Bpos::MAX).unwrap().last().unwrap().pos;
            let (_, e) = first_extent(fs);
            let p = e.ptrs[0];
            let used = p.byte_offset() / fs.bucket_size(p.dev);
            let mut wrong = Bkey::new(bucket_pos(p.dev, used + 1), KeyType::Set, Vec::new());
            wrong.size = 1;
            fs.commit(BtreeId::Freespace, [Bkey::whiteout(free), wrong]).unwrap();
        },
    },
];

/// Builds a small healthy filesystem in `dir` (fixed uuid and workload: reproducible), applies
/// `damage`, and unmounts cleanly.
fn build(dir: &Path, damage: &Damage) {
    let specs: Vec<ImageSpec> =
        IMAGES.iter().map(|n| ImageSpec { size: Some(8 << 20), ..ImageSpec::new(dir.join(n)) }).collect();
    let mut opts = Options::default();
    opts.set_text(OptId::BtreeNodeSize, "16k").unwrap();
    opts.set_text(OptId::MetadataReplicas, "2").unwrap();
    let uuid = Uuid::parse("0b5e55ed-1107-4108-8000-000000000001").unwrap();
    format_images(&specs, &opts, Some(uuid), true).unwrap();
    let paths: Vec<PathBuf> = IMAGES.iter().map(|n| dir.join(n)).collect();
    let mut fs = Fs::open(open_device_set(&paths, true).unwrap(), true, BtreeConfig::default()).unwrap();
    let mut files = Files::new(&mut fs).unwrap();
    let create = bcsim::workload::Op::Create { path: "/victim".into() };
    run_op(&mut fs, &mut files, &create).unwrap();
    for op in generate(11, 20) {
        // The workload names its files f<n>, d<n>, r<n>: never /victim.
        let _ = run_op(&mut fs, &mut files, &op);
    }
    let f1 = resolve(&mut fs, "/victim").unwrap();
    files.write(&mut fs, f1, 0, 42).unwrap();
    (damage.apply)(&mut fs);
    fs.unmount().unwrap();
}

fn bcsim_fsck(dir: &Path) -> (String, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_bcsim"))
        .args(["fsck", "-yf"])
        .args(IMAGES)
        .current_dir(dir)
        .env("XDG_RUNTIME_DIR", dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = out.status.code().unwrap_or(-1);
    (format!("{stdout}Exit status is {code}\n"), code)
}

fn gzip(path: &Path) {
    let ok = Command::new("gzip").args(["-9", "-n", "-f"]).arg(path).status().unwrap().success();
    assert!(ok, "gzip failed on {}", path.display());
}

/// Rebuilds every fixture: images, expect.1 and expect.2.
#[test]
#[ignore = "rebuilds the committed fixtures; run after a deliberate format change"]
fn regenerate() {
    for damage in DAMAGES {
        let dir = fixtures_dir().join(damage.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        build(&dir, damage);
        let work = tempfile::tempdir().unwrap();
        for n in IMAGES {
            std::fs::copy(dir.join(n), work.path().join(n)).unwrap();
            gzip(&dir.join(n));
        }
        let (first, _) = bcsim_fsck(work.path());
        let (second, _) = bcsim_fsck(work.path());
        std::fs::write(dir.join("expect.1"), first).unwrap();
        std::fs::write(dir.join("expect.2"), second).unwrap();
    }
}

/// Each fixture: the first fsck -y fixes what expect.1 lists and exits 1, the second finds
/// nothing and exits 0, both exactly as recorded.
#[test]
fn fixtures_match_expected_output() {
    let mut seen = 0;
    for damage in DAMAGES {
        let dir = fixtures_dir().join(damage.name);
        let work = tempfile::tempdir().unwrap();
        for n in IMAGES {
            gunzip(&dir.join(format!("{n}.gz")), &work.path().join(n));
        }
        let expect1 = std::fs::read_to_string(dir.join("expect.1")).unwrap();
        let expect2 = std::fs::read_to_string(dir.join("expect.2")).unwrap();
        let (first, code1) = bcsim_fsck(work.path());
        let (second, code2) = bcsim_fsck(work.path());
        assert_eq!(first, expect1, "{}: first fsck -y differs", damage.name);
        assert_eq!(second, expect2, "{}: second fsck -y differs", damage.name);
        assert_eq!((code1, code2), (1, 0), "{}: exit codes", damage.name);
        seen += 1;
    }
    assert_eq!(seen, DAMAGES.len());
}
