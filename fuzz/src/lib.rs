//! Fuzz targets: one per decoder that reads bytes bcsim does not control, the image formats,
//! the dump files users share and the control socket's requests.
//!
//! A target takes any bytes and must return: a decoder may refuse them with a typed error, but
//! never panic, hang or allocate without bound. Where a format carries checksums, the target
//! first recomputes them over the bytes it was given ([`fs_core::encode::reseal_record`]), so
//! mutations reach the checks behind the checksum rather than dying at it; a target whose
//! decode succeeds also checks that encoding the value and decoding it again gives it back.
//!
//! The same functions run under the coverage-guided fuzzer (`src/main.rs`, built with
//! `cargo afl`) and in `tests/replay.rs`, which replays every committed corpus and regression
//! input on each test run. docs/FUZZING.md says how to run a campaign.

use std::sync::Arc;

use bcsim::control::{Control, Request, parse_request};
use bcsim::dump::DumpReader;
use fs_core::bkey::alloc::AllocV4;
use fs_core::bkey::fs::{Dirent, Extent, Inode};
use fs_core::bkey::ptr::BtreePtrV2;
use fs_core::btree::node::{decode_node, header_expectation, header_magic, reseal_node};
use fs_core::encode::reseal_record;
use fs_core::opts::{LiveOpts, Options};
use fs_core::sb::Superblock;
use fs_core::uuid::Uuid;
use journal::format::{JsetEntry, JsetHeader, JsetRead, decode_jset};

/// A fuzz target: its name (the corpus directory and the fuzzer's argument) and its function.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, in the order docs/FUZZING.md lists them.
pub const TARGETS: &[Target] = &[
    Target { name: "superblock", run: superblock },
    Target { name: "jset", run: jset },
    Target { name: "btree_node", run: btree_node },
    Target { name: "alloc_v4", run: alloc_v4 },
    Target { name: "btree_ptr_v2", run: btree_ptr_v2 },
    Target { name: "inode", run: inode },
    Target { name: "dirent", run: dirent },
    Target { name: "extent", run: extent },
    Target { name: "control_request", run: control_request },
    Target { name: "dump", run: dump },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn resealed(data: &[u8], reseal: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut buf = data.to_vec();
    reseal(&mut buf);
    buf
}

/// A superblock copy with its member table, fields and options.
pub fn superblock(data: &[u8]) {
    let buf = resealed(data, |b| {
        reseal_record(b);
    });
    if let Ok(sb) = Superblock::decode(&buf) {
        // A superblock that decodes must encode (its member count and sizes are in range) and
        // read back as itself.
        let again = sb.encode().and_then(|bytes| Superblock::decode(&bytes));
        assert!(matches!(&again, Ok(s) if *s == sb), "superblock does not round-trip: {again:?}");
    }
}

/// A journal entry, with the magic it carries (any filesystem's), and each key's value through
/// its type's decoder as replay and `list-journal` would read it.
pub fn jset(data: &[u8]) {
    let buf = resealed(data, |b| {
        reseal_record(b);
    });
    let magic = JsetHeader::read(&buf).map_or(0, |h| h.magic);
    let Ok(JsetRead::Good { jset, .. }) = decode_jset(&buf, magic) else { return };
    for entry in &jset.entries {
        if let JsetEntry::BtreeKeys { keys, .. } | JsetEntry::Overwrite { keys, .. } = entry {
            for k in keys.iter() {
                decode_value(k.ty, k.val);
            }
        }
    }
}

/// A btree node image as a read of its pointer sees it: the header's own btree, level, range
/// and seq are what the pointer expects, and the last byte of the input decides whether the
/// pointer says the node was written to its end or does not say (0, a pointer of an older
/// version).
pub fn btree_node(data: &[u8]) {
    let buf = resealed(data, reseal_node);
    let (Some(mut exp), Some(magic)) = (header_expectation(&buf), header_magic(&buf)) else { return };
    if buf.last().is_some_and(|b| b & 1 == 1) {
        exp.sectors_written = (buf.len() / 512) as u32;
    }
    // Some seqs blacklisted, as after an unclean shutdown.
    let _ = decode_node(&buf, magic, &exp, &|seq| seq % 7 == 3);
}

fn decode_value(ty: fs_core::bkey::KeyType, val: &[u8]) {
    use fs_core::bkey::KeyType;
    match ty {
        KeyType::AllocV4 => alloc_v4(val),
        KeyType::BtreePtrV2 => btree_ptr_v2(val),
        KeyType::Inode => inode(val),
        KeyType::Dirent => dirent(val),
        KeyType::Extent => extent(val),
        _ => {}
    }
}

/// Asserts that a value that decoded encodes to bytes that decode to it again.
macro_rules! round_trip {
    ($ty:ty, $data:expr) => {
        if let Ok(v) = <$ty>::decode($data) {
            let again = <$ty>::decode(&v.encode());
            assert!(matches!(&again, Ok(w) if *w == v), "{} does not round-trip: {v:?} then {again:?}", stringify!($ty));
        }
    };
}

pub fn alloc_v4(data: &[u8]) {
    round_trip!(AllocV4, data);
}

pub fn btree_ptr_v2(data: &[u8]) {
    round_trip!(BtreePtrV2, data);
}

pub fn inode(data: &[u8]) {
    round_trip!(Inode, data);
}

pub fn dirent(data: &[u8]) {
    round_trip!(Dirent, data);
}

pub fn extent(data: &[u8]) {
    round_trip!(Extent, data);
}

/// A dump's content after its gzip layer (flate2's decoder, not bcsim's): the header, then
/// each image's runs, written nowhere. Every piece the reader hands out must lie within its
/// image, and no length in the input may make it allocate beyond its bound.
pub fn dump(data: &[u8]) {
    let mut r = DumpReader::new(data, "fuzz input");
    let Ok(images) = r.header() else { return };
    for (name, size) in images {
        let mut within = |off: u64, bytes: &[u8]| {
            assert!(
                off.checked_add(bytes.len() as u64).is_some_and(|end| end <= size),
                "{name}: {} bytes at {off} handed out past the image's {size}",
                bytes.len()
            );
            Ok(())
        };
        if r.runs(size, &mut within).is_err() {
            return;
        }
    }
}

/// A control-socket request line, answered by a mount's control state as far as it can be
/// without a running filesystem: `status`, `show`, and `set` on live options (validated, set,
/// logged; the superblock write is queued as before the filesystem is assembled). `umount`
/// is parsed only: answering it waits for an unmount.
pub fn control_request(data: &[u8]) {
    let Ok(request) = parse_request(data) else { return };
    let control = Control::new(Uuid::default(), Vec::new(), |_| {});
    control.attach_opts(Arc::new(LiveOpts::new(Options::default())));
    match request {
        Request::Status | Request::Umount => {}
        Request::Show => {
            let _ = control.show();
        }
        Request::Set(text) => {
            let _ = control.set_options(text);
        }
    }
}
