//! The robustness matrix: each class of image damage against each command, through the built
//! binary, on a small two-device filesystem (`metadata_replicas=2`) that a seeded workload has
//! filled, unmounted, and filled some more before the power went (so mount and fsck replay its
//! journal). Every cell starts from a fresh copy of that set; the last rows run the commands on
//! the committed #1107 and #1108 sets instead.
//!
//! Hard defects fail the test wherever they appear: a panic, a hang (a run past its time
//! limit), an exit status outside fsck(8)'s 0/1/4/8, an operational error that is not one
//! `bcsim: ...` line at the end of stderr, an `fsck -n` or a reading command that changes an
//! image, and an `fsck -y` that reports repairs after which `fsck -n` is not clean. Everything
//! else is an outcome, and the table of outcomes is docs/ROBUSTNESS.md: the test fails when the
//! table there is not what it measures (`cargo test -p bcsim --test robustness -- --ignored
//! regenerate` rewrites it).

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Out, ok};

/// The commands, each a column: name and what runs (the images are appended).
const COMMANDS: &[(&str, &[&[&str]])] = &[
    ("fsck -nf", &[&["fsck", "-nf"]]),
    ("fsck -yf; fsck -nf", &[&["fsck", "-yf"], &["fsck", "-nf"]]),
    ("mount", &[&["mount"]]),
    ("list", &[&["list"]]),
    ("list-journal", &[&["list-journal"]]),
    ("show-super", &[&["show-super"]]),
];

/// A damage class, a row: what it does to the images in a directory, and which images the
/// commands get.
struct Damage {
    name: &'static str,
    apply: fn(&Path) -> Vec<String>,
}

const BOTH: [&str; 2] = ["a.img", "b.img"];

fn both() -> Vec<String> {
    BOTH.iter().map(|s| (*s).to_owned()).collect()
}

fn json(dir: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args, dir)).unwrap()
}

/// `(dev, byte offset)` of each replica of the root node of the extents btree.
fn node_ptrs(dir: &Path) -> Vec<(u64, u64)> {
    node_ptrs_of(dir, "extents")
}

/// `(dev, byte offset)` of each replica of the root node of `btree`.
fn node_ptrs_of(dir: &Path, btree: &str) -> Vec<(u64, u64)> {
    first_node_ptrs(dir, btree, |_| true)
}

/// `(dev, byte offset)` of each replica of the first node of `btree` that `which` picks, in the
/// order `list --nodes` prints them.
fn first_node_ptrs(dir: &Path, btree: &str, which: fn(&serde_json::Value) -> bool) -> Vec<(u64, u64)> {
    let nodes = json(dir, &["list", "--nodes", "--json", "-b", btree, "a.img", "b.img"]);
    let node = nodes.as_array().unwrap().iter().find(|n| n["btree"] == btree && which(n)).unwrap();
    node["ptrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["dev"].as_u64().unwrap(), p["offset_sectors"].as_u64().unwrap() * 512))
        .collect()
}

/// Copies of the newest journal entry: `(dev, byte offset)`.
fn newest_journal(dir: &Path) -> Vec<(u64, u64)> {
    journal_copies(dir, |n| n - 1)
}

/// Copies of the entry in the middle of the replayed ones: `(dev, byte offset)`.
fn middle_journal(dir: &Path) -> Vec<(u64, u64)> {
    journal_copies(dir, |n| n / 2)
}

/// Copies of the replayed entry at index `which(number of entries)`.
fn journal_copies(dir: &Path, which: fn(usize) -> usize) -> Vec<(u64, u64)> {
    let entries = json(dir, &["list-journal", "--json", "a.img", "b.img"]);
    let all = entries.as_array().unwrap();
    assert!(all.len() >= 3, "the base set replays too few entries: {}", all.len());
    let newest = all[which(all.len())].clone();
    newest["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["dev"].as_u64().unwrap(), c["offset"].as_u64().unwrap()))
        .collect()
}

fn image(dir: &Path, dev: u64) -> PathBuf {
    dir.join(BOTH[dev as usize])
}

/// Swaps the `len` bytes at `a` and at `b` of `path`: two nodes each in the other's place, as
/// a misdirected write or a firmware remap leaves them.
fn swap(path: &Path, a: u64, b: u64, len: usize) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let (mut x, mut y) = (vec![0u8; len], vec![0u8; len]);
    f.read_exact_at(&mut x, a).unwrap();
    f.read_exact_at(&mut y, b).unwrap();
    f.write_all_at(&y, a).unwrap();
    f.write_all_at(&x, b).unwrap();
}

/// The set's btree node size in bytes.
fn node_size(d: &Path) -> usize {
    let opts = json(d, &["show-super", "--json", "a.img"]);
    usize::try_from(fs_core::size::parse_size(opts["options"]["btree_node_size"].as_str().unwrap()).unwrap())
        .unwrap()
}

/// The root nodes of the extents and dirents btrees swapped on the first `replicas` devices.
fn swap_roots(d: &Path, replicas: usize) -> Vec<String> {
    let node = node_size(d);
    let (x, y) = (node_ptrs_of(d, "extents"), node_ptrs_of(d, "dirents"));
    for &(dev, a) in x.iter().take(replicas) {
        let &(_, b) =
            y.iter().find(|(dev_b, _)| *dev_b == dev).expect("both roots have a replica on each device");
        swap(&image(d, dev), a, b, node);
    }
    both()
}

fn write(path: &Path, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn flip(path: &Path, offset: u64, mask: u8) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, offset).unwrap();
}

/// Flips the bits of `mask` at `offset` into each of `copies` (`(dev, byte offset)`); the set
/// is then given whole.
fn flip_copies(d: &Path, copies: &[(u64, u64)], offset: u64, mask: u8) -> Vec<String> {
    for &(dev, at) in copies {
        flip(&image(d, dev), at + offset, mask);
    }
    both()
}

fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `(dev, byte offset)` of each replica of the first leaf of the alloc btree.
fn alloc_leaf_ptrs(dir: &Path) -> Vec<(u64, u64)> {
    first_node_ptrs(dir, "alloc", |n| n["level"] == 0)
}

/// In each replica of the first alloc leaf, the alloc key of a bucket holding user data says the
/// bucket is free, and the node's checksums are recomputed: what a bug that wrote a
/// wrong alloc key leaves, which no checksum catches.
fn alloc_key_rewritten(d: &Path) -> Vec<String> {
    rewrite_user_alloc_key(d);
    both()
}

/// Rewrites the newest alloc key of a user bucket in the first alloc leaf, on every replica,
/// to say the bucket is free, and reseals the node; returns the bucket's position.
fn rewrite_user_alloc_key(d: &Path) -> fs_core::bpos::Bpos {
    use fs_core::bkey::alloc::{AllocV4, DataType};
    use fs_core::bkey::{Bkey, KEY_HEADER_BYTES, KeyType};
    use fs_core::encode::Reader;
    let mut bucket = None;
    for (dev, at) in alloc_leaf_ptrs(d) {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(image(d, dev)).unwrap();
        let mut node = vec![0u8; node_size(d)];
        f.read_exact_at(&mut node, at).unwrap();
        // Every bset of the node (sector-aligned after the header sector, each of the node's
        // seq); the newest version of a user bucket's key is the last one found.
        let node_seq = &node[16..24].to_vec();
        let mut bset = 512;
        let mut found = None;
        while bset + 32 <= node.len() && &node[bset + 8..bset + 16] == node_seq {
            let bytes = u32::from_le_bytes(node[bset + 4..bset + 8].try_into().unwrap()) as usize;
            let nr_keys = u32::from_le_bytes(node[bset + 24..bset + 28].try_into().unwrap());
            let keys_at = bset + fs_core::btree::node::BSET_HEADER_BYTES;
            let mut r = Reader::new(&node[keys_at..], "bset", fs_core::error::ErrCode::BtreeNodeReadErr);
            for _ in 0..nr_keys {
                let start = r.pos();
                let k = Bkey::decode(&mut r).unwrap();
                if k.ty == KeyType::AllocV4 && AllocV4::decode(&k.val).unwrap().data_type == DataType::User {
                    found = Some((keys_at + start + KEY_HEADER_BYTES, k.pos));
                }
            }
            bset += bytes.next_multiple_of(512);
        }
        let (val_at, pos) = found.expect("the first alloc leaf holds a user bucket's alloc key");
        bucket = Some(pos);
        let mut a = AllocV4::decode(&node[val_at..val_at + fs_core::bkey::alloc::ALLOC_V4_BYTES]).unwrap();
        a.data_type = DataType::Free;
        a.dirty_sectors = 0;
        node[val_at..val_at + fs_core::bkey::alloc::ALLOC_V4_BYTES].copy_from_slice(&a.encode());
        fs_core::btree::node::reseal_node(&mut node);
        f.write_all_at(&node, at).unwrap();
    }
    bucket.expect("the alloc btree has a leaf")
}

/// The committed image set of an issue restored in `d` (beside the base set, which the
/// commands are then not given): its images as `bcsim repro` built them.
fn issue_set(d: &Path, name: &str) -> Vec<String> {
    let dump = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/images/{name}/{name}.dump"));
    let out = ok(&["undump", dump.to_str().unwrap(), "--dir", "issue"], d);
    out.lines().map(|l| l.trim().to_owned()).collect()
}

fn sb_copies(dir: &Path) -> (u64, u64) {
    let v = json(dir, &["show-super", "--json", "a.img"]);
    (v["copies"][0].as_u64().unwrap(), v["copies"][1].as_u64().unwrap())
}

const DAMAGES: &[Damage] = &[
    Damage {
        name: "random bytes over a btree node, one replica",
        apply: |d| {
            let (dev, at) = node_ptrs(d)[0];
            write(&image(d, dev), at, &seeded_bytes(11, 4096));
            both()
        },
    },
    Damage {
        name: "a bit flipped in a btree node, one replica",
        apply: |d| flip_copies(d, &node_ptrs(d)[..1], 700, 0x10),
    },
    Damage {
        name: "a bit flipped in a btree node, every replica",
        apply: |d| flip_copies(d, &node_ptrs(d), 700, 0x10),
    },
    Damage {
        name: "a btree node zeroed, one replica",
        apply: |d| {
            let (dev, at) = node_ptrs(d)[0];
            write(&image(d, dev), at, &[0u8; 4096]);
            both()
        },
    },
    Damage {
        name: "a btree node zeroed, every replica",
        apply: |d| {
            for (dev, at) in node_ptrs(d) {
                write(&image(d, dev), at, &[0u8; 4096]);
            }
            both()
        },
    },
    Damage {
        name: "an alloc btree leaf zeroed, every replica",
        apply: |d| {
            for (dev, at) in alloc_leaf_ptrs(d) {
                write(&image(d, dev), at, &[0u8; 4096]);
            }
            both()
        },
    },
    Damage {
        name: "an alloc key rewritten wrong, checksums good, every replica",
        apply: alloc_key_rewritten,
    },
    Damage { name: "two btree nodes swapped, one replica", apply: |d| swap_roots(d, 1) },
    Damage { name: "two btree nodes swapped, every replica", apply: |d| swap_roots(d, 2) },
    Damage {
        name: "a zeroed 4 KiB block at 1 MiB, every image",
        apply: |d| {
            for img in BOTH {
                write(&d.join(img), 1 << 20, &[0u8; 4096]);
            }
            both()
        },
    },
    Damage {
        name: "superblock copy 1 damaged",
        apply: |d| {
            let (first, _) = sb_copies(d);
            flip(&d.join("a.img"), first + 200, 0xff);
            both()
        },
    },
    Damage {
        name: "superblock copy 2 damaged",
        apply: |d| {
            let (_, second) = sb_copies(d);
            flip(&d.join("a.img"), second + 200, 0xff);
            both()
        },
    },
    Damage {
        name: "both superblock copies damaged",
        apply: |d| {
            let (first, second) = sb_copies(d);
            flip(&d.join("a.img"), first + 200, 0xff);
            flip(&d.join("a.img"), second + 200, 0xff);
            both()
        },
    },
    Damage {
        name: "newest journal entry damaged, one copy",
        apply: |d| flip_copies(d, &newest_journal(d)[..1], 100, 0xff),
    },
    Damage {
        name: "newest journal entry damaged, every copy",
        apply: |d| flip_copies(d, &newest_journal(d), 100, 0xff),
    },
    Damage {
        name: "a middle journal entry damaged, one copy",
        apply: |d| flip_copies(d, &middle_journal(d)[..1], 100, 0xff),
    },
    Damage {
        name: "a middle journal entry damaged, every copy",
        apply: |d| flip_copies(d, &middle_journal(d), 100, 0xff),
    },
    Damage {
        name: "an image truncated to half",
        apply: |d| {
            let f = std::fs::OpenOptions::new().write(true).open(d.join("b.img")).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len / 2).unwrap();
            both()
        },
    },
    Damage { name: "a member missing", apply: |_| vec!["a.img".to_owned()] },
    Damage {
        name: "images of two filesystems",
        apply: |d| {
            let out = common::bcsim(&["format", "-f", "--size", "64M", "other.img"], d);
            assert_eq!(out.code, 0, "{}", out.stderr);
            vec!["a.img".to_owned(), "other.img".to_owned()]
        },
    },
    Damage { name: "the same image twice", apply: |_| vec!["a.img".to_owned(), "a.img".to_owned()] },
    Damage {
        name: "the #1107 set as `repro 1107` leaves it (a member failed)",
        apply: |d| issue_set(d, "issue-1107"),
    },
    Damage { name: "the #1108 set as `repro 1108` leaves it", apply: |d| issue_set(d, "issue-1108") },
];

/// Runs the built bcsim with a time limit; a run past it is a hang.
fn run(args: &[&str], dir: &Path) -> Out {
    common::bcsim_limited(args, dir, 120)
}

fn mtimes(dir: &Path, images: &[String]) -> Vec<std::time::SystemTime> {
    images.iter().filter_map(|i| std::fs::metadata(dir.join(i)).ok()?.modified().ok()).collect()
}

/// Checks one run for hard defects; returns its exit status.
fn checked(what: &str, out: &Out) -> i32 {
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("RUST_BACKTRACE"),
        "{what}: panic:\n{}",
        out.stderr
    );
    assert_ne!(out.code, 124, "{what}: hang (killed after 120 s)");
    assert!([0, 1, 4, 8].contains(&out.code), "{what}: exit {}:\n{}{}", out.code, out.stdout, out.stderr);
    if out.code == 8 {
        let last = out.stderr.lines().last().unwrap_or("");
        assert!(last.starts_with("bcsim: "), "{what}: no one-line error at the end:\n{}", out.stderr);
        let error_lines = out.stderr.lines().filter(|l| l.contains("] [") || l.ends_with(']')).count();
        assert!(error_lines >= 1, "{what}: {}", out.stderr);
    }
    out.code
}

/// One cell: a fresh copy of the set, the damage, the command; its outcome in words.
fn cell(base: &Path, work: &Path, damage: &Damage, command: &(&str, &[&[&str]])) -> String {
    std::fs::create_dir_all(work).unwrap();
    for img in BOTH {
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(base.join(img))
            .arg(work.join(img))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let images = (damage.apply)(work);
    let what = format!("{} / {}", damage.name, command.0);
    let mut codes = Vec::new();
    for args in command.1 {
        let before = mtimes(work, &images);
        let full: Vec<&str> = args.iter().copied().chain(images.iter().map(String::as_str)).collect();
        let out = run(&full, work);
        let code = checked(&what, &out);
        let writes = args[0] != "fsck" || args[1] != "-yf";
        if args[0] != "mount" && writes {
            assert_eq!(mtimes(work, &images), before, "{what}: {} changed an image", args.join(" "));
        }
        codes.push(code);
    }
    match (command.0, codes.as_slice()) {
        ("fsck -yf; fsck -nf", [1, after]) => {
            assert_eq!(*after, 0, "{what}: fsck -nf is not clean after fsck -yf repaired");
            "repaired".to_owned()
        }
        ("fsck -yf; fsck -nf", [0, _]) => "clean".to_owned(),
        ("fsck -yf; fsck -nf", [code, _]) => outcome(*code),
        (_, [code]) => outcome(*code),
        _ => unreachable!(),
    }
}

fn outcome(code: i32) -> String {
    match code {
        0 => "clean".to_owned(),
        1 => "repaired".to_owned(),
        4 => "reported, unrepaired (4)".to_owned(),
        _ => "error (8)".to_owned(),
    }
}

/// The set every cell starts from.
fn base_set(dir: &Path) {
    ok(&["format", "--size", "64M", "--metadata-replicas", "2", "a.img", "b.img"], dir);
    ok(&["run", "--ops", "300", "--seed", "5", "a.img", "b.img"], dir);
    ok(&["run", "--ops", "100", "--seed", "6", "--crash-after", "90", "a.img", "b.img"], dir);
}

fn table() -> String {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    base_set(&base);
    let mut out = String::from("| damage |");
    for (name, _) in COMMANDS {
        out.push_str(&format!(" `{name}` |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(COMMANDS.len()));
    out.push('\n');
    for (i, damage) in DAMAGES.iter().enumerate() {
        out.push_str(&format!("| {} |", damage.name));
        for (j, command) in COMMANDS.iter().enumerate() {
            let work = d.path().join(format!("cell-{i}-{j}"));
            out.push_str(&format!(" {} |", cell(&base, &work, damage, command)));
            let _ = std::fs::remove_dir_all(&work);
        }
        out.push('\n');
    }
    out
}

const BEGIN: &str = "<!-- table: generated by tools/tests/robustness.rs -->\n";
const END: &str = "<!-- end of table -->\n";

fn doc_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ROBUSTNESS.md")
}

/// Every cell is free of hard defects, and docs/ROBUSTNESS.md shows what was measured.
#[test]
fn robustness_matrix_has_no_defects_and_matches_the_doc() {
    let got = table();
    let doc = std::fs::read_to_string(doc_path()).unwrap();
    let start = doc.find(BEGIN).unwrap() + BEGIN.len();
    let end = doc.find(END).unwrap();
    assert_eq!(&doc[start..end], got, "docs/ROBUSTNESS.md is not what was measured; regenerate it");
}

/// A user bucket whose alloc key says free, behind good checksums on every replica, is held
/// back by the mount (the freespace btree leaves it out): a workload run afterwards never
/// hands it out, so the data in it survives, and fsck then repairs the key.
#[test]
fn a_user_bucket_keyed_free_is_not_handed_out() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    base_set(dir);
    let pos = rewrite_user_alloc_key(dir);
    let at = format!("{}:{}", pos.inode, pos.offset);
    let alloc_value = || {
        let v = json(
            dir,
            &["list", "--btree", "alloc", "--json", "--start", &at, "--end", &at, "a.img", "b.img"],
        );
        v[0]["value"].as_str().unwrap().to_owned()
    };
    assert!(alloc_value().contains("data_type free"), "{}", alloc_value());
    let mounted = ok(&["mount", "a.img", "b.img"], dir);
    assert!(mounted.contains("not in the freespace btree") && mounted.contains("held back"), "{mounted}");
    ok(&["run", "--ops", "600", "--seed", "9", "a.img", "b.img"], dir);
    assert!(alloc_value().contains("data_type free"), "the bucket was handed out: {}", alloc_value());
    let fixed = run(&["fsck", "-yf", "a.img", "b.img"], dir);
    assert_eq!(fixed.code, 1, "{}{}", fixed.stdout, fixed.stderr);
    let check = run(&["fsck", "-nf", "a.img", "b.img"], dir);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    assert!(alloc_value().contains("data_type user"), "{}", alloc_value());
}

/// Rewrites the table in docs/ROBUSTNESS.md.
#[test]
#[ignore = "rewrites docs/ROBUSTNESS.md"]
fn regenerate() {
    let got = table();
    let path = doc_path();
    let doc = std::fs::read_to_string(&path).unwrap();
    let start = doc.find(BEGIN).unwrap() + BEGIN.len();
    let end = doc.find(END).unwrap();
    std::fs::write(&path, format!("{}{}{}", &doc[..start], got, &doc[end..])).unwrap();
}
