//! The two ways of reading a jset agree: `decode_jset` (the journal read's scans, `list-journal`)
//! and `for_each_btree_key` (recovery's keys, straight from the kept copy) accept the same jsets,
//! give the same keys, and reject the same damaged jsets with the same `JsetInvalid`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use fs_core::bkey::{Bkey, BtreePtrV2, ExtentPtr, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use journal::format::{ENTRY_HEADER_BYTES, JSET_HEADER_BYTES, JsetHeader, for_each_btree_key};
use journal::{Jset, JsetEntry, JsetInvalid, JsetRead, decode_jset};
use proptest::prelude::*;

const MAGIC: u64 = 0x6a73_6574;
const BLOCK: usize = 512;

/// What one way of reading made of a jset.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Not taken: not ours, a bad checksum, or not the copy asked for.
    NotTaken,
    /// Accepted, with its btree keys in order: (btree, level, key).
    Good(Vec<(BtreeId, u8, Bkey)>),
    Invalid(JsetInvalid),
}

/// The full decoder's verdict.
fn full(buf: &[u8]) -> Outcome {
    match decode_jset(buf, MAGIC) {
        Ok(JsetRead::Good { jset, .. }) => Outcome::Good(
            jset.entries
                .iter()
                .filter_map(|e| match e {
                    JsetEntry::BtreeKeys { btree, level, keys } => Some((btree, level, keys)),
                    _ => None,
                })
                .flat_map(|(btree, level, keys)| keys.iter().map(|k| (*btree, *level, k.to_key())))
                .collect(),
        ),
        Ok(JsetRead::Empty | JsetRead::BadChecksum { .. }) => Outcome::NotTaken,
        Ok(other @ JsetRead::Known { .. }) => panic!("decode_jset knows nothing: {other:?}"),
        Err(e) => Outcome::Invalid(JsetInvalid::of(&e).cloned().unwrap_or_else(|| panic!("untyped: {e}"))),
    }
}

/// The fast path's verdict, asked for the copy the header describes (as a scan found it).
fn fast(buf: &[u8]) -> Outcome {
    let h = JsetHeader::read(buf).unwrap_or_default();
    let mut keys = Vec::new();
    match for_each_btree_key(buf, MAGIC, h.seq, h.bytes, h.csum, |btree, level, k| {
        keys.push((btree, level, k.to_key()));
    }) {
        Ok(true) => Outcome::Good(keys),
        Ok(false) => Outcome::NotTaken,
        Err(e) => Outcome::Invalid(JsetInvalid::of(&e).cloned().unwrap_or_else(|| panic!("untyped: {e}"))),
    }
}

fn key(offset: u64, tag: u8) -> Bkey {
    Bkey::new(Bpos::new(1, offset, 0), KeyType::Set, vec![tag; 3])
}

fn root() -> JsetEntry {
    JsetEntry::BtreeRoot {
        btree: BtreeId::Alloc,
        level: 1,
        ptr: BtreePtrV2 {
            seq: 7,
            sectors_written: 8,
            min_key: Bpos::MIN,
            ptrs: vec![ExtentPtr { dev: 0, bucket_gen: 1, offset: 2 }],
        },
    }
}

/// A good jset with one entry of each kind: btree_keys (entry 0), btree_root (1), blacklist
/// (2), overwrite (3), btree_keys again (4).
fn sample() -> Jset {
    Jset {
        seq: 9,
        last_seq: 4,
        flags: 0,
        entries: vec![
            JsetEntry::BtreeKeys {
                btree: BtreeId::Extents,
                level: 0,
                keys: vec![key(1, 1), key(2, 2)].into(),
            },
            root(),
            JsetEntry::Blacklist { start: 5, end: 6 },
            JsetEntry::Overwrite { btree: BtreeId::Extents, level: 0, keys: vec![key(1, 0)].into() },
            JsetEntry::BtreeKeys { btree: BtreeId::Inodes, level: 0, keys: vec![key(3, 3)].into() },
        ],
    }
}

/// Byte offset of entry `i` of a jset with the given entries.
fn entry_at(j: &Jset, i: usize) -> usize {
    JSET_HEADER_BYTES + j.entries.iter().take(i).map(JsetEntry::encoded_bytes).sum::<usize>()
}

fn header(buf: &[u8]) -> JsetHeader {
    JsetHeader::read(buf).unwrap()
}

fn set_header(buf: &mut [u8], h: JsetHeader) {
    buf[..JSET_HEADER_BYTES].copy_from_slice(&h.to_bytes());
}

fn edit_header(buf: &mut [u8], f: impl FnOnce(&mut JsetHeader)) {
    let mut h = header(buf);
    f(&mut h);
    set_header(buf, h);
}

/// Makes the checksum good again, so that what follows the checksum is what is judged.
fn reseal(buf: &mut [u8]) {
    let mut h = header(buf);
    h.csum = crc32c::crc32c(&buf[4..h.bytes as usize]);
    set_header(buf, h);
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The sample, encoded, damaged by `f`, and resealed.
fn damaged(f: impl FnOnce(&Jset, &mut Vec<u8>)) -> Vec<u8> {
    let j = sample();
    let mut buf = j.encode(MAGIC, BLOCK);
    f(&j, &mut buf);
    reseal(&mut buf);
    buf
}

/// Every check of a jset's contents, one damaged jset each: both ways of reading reject it, for
/// the same typed reason. Written against the fast path as it was (it skipped the version,
/// last_seq, entry-length and trailing-bytes checks, and took the keys of a jset whose later
/// entries were invalid), this test fails.
#[test]
fn both_paths_reject_each_damage_alike() {
    let j = sample();
    let nr = j.entries.len() as u32;
    let cases: Vec<(&str, Vec<u8>, JsetInvalid)> = vec![
        ("version", damaged(|_, b| edit_header(b, |h| h.version = 3)), JsetInvalid::Version { version: 3 }),
        (
            "last_seq > seq",
            damaged(|_, b| edit_header(b, |h| h.last_seq = 10)),
            JsetInvalid::LastSeqAfterSeq { last_seq: 10, seq: 9 },
        ),
        (
            "entry length not a multiple of 8",
            damaged(|j, b| put_u32(b, entry_at(j, 1), j.entries[1].encoded_bytes() as u32 - 4)),
            JsetInvalid::EntryLength { entry: 1, bytes: j.entries[1].encoded_bytes() as u32 - 4 },
        ),
        (
            "entry length below its header",
            damaged(|j, b| put_u32(b, entry_at(j, 2), 0)),
            JsetInvalid::EntryLength { entry: 2, bytes: 0 },
        ),
        (
            "entry length past the jset",
            damaged(|j, b| put_u32(b, entry_at(j, 4), 4096)),
            JsetInvalid::EntryPastEnd { entry: 4 },
        ),
        (
            "more entries counted than there are",
            damaged(|_, b| edit_header(b, |h| h.nr_entries = nr + 1)),
            JsetInvalid::EntryPastEnd { entry: nr },
        ),
        (
            "fewer entries counted than there are",
            damaged(|_, b| edit_header(b, |h| h.nr_entries = nr - 1)),
            JsetInvalid::TrailingBytes { bytes: j.entries[4].encoded_bytes() },
        ),
        (
            "bytes after the last entry",
            damaged(|_, b| edit_header(b, |h| h.bytes += 8)),
            JsetInvalid::TrailingBytes { bytes: 8 },
        ),
        (
            "unknown entry type",
            damaged(|j, b| b[entry_at(j, 2) + 4] = 99),
            JsetInvalid::UnknownEntryType { entry: 2, ty: 99 },
        ),
        (
            "unknown btree id in btree_keys",
            damaged(|j, b| b[entry_at(j, 4) + 5] = 200),
            JsetInvalid::UnknownBtree { entry: 4, btree: 200 },
        ),
        (
            "unknown btree id in btree_root",
            damaged(|j, b| b[entry_at(j, 1) + 5] = 200),
            JsetInvalid::UnknownBtree { entry: 1, btree: 200 },
        ),
        (
            "btree_root not a btree_ptr_v2",
            damaged(|j, b| b[entry_at(j, 1) + ENTRY_HEADER_BYTES] = KeyType::Set as u8),
            JsetInvalid::Root { entry: 1, why: "is not one btree_ptr_v2 key".into() },
        ),
        (
            "empty blacklist range",
            damaged(|j, b| {
                b[entry_at(j, 2) + ENTRY_HEADER_BYTES..][..8].copy_from_slice(&6u64.to_le_bytes())
            }),
            JsetInvalid::BlacklistRange { entry: 2, start: 6, end: 6 },
        ),
    ];
    for (what, buf, want) in cases {
        assert_eq!(full(&buf), Outcome::Invalid(want.clone()), "{what}: decode_jset");
        assert_eq!(fast(&buf), Outcome::Invalid(want), "{what}: for_each_btree_key");
    }
}

/// A key that does not decode is refused by both, for the same reason, whether it sits in a
/// btree_keys entry or in an overwrite entry (which the fast path does not hand out).
#[test]
fn both_paths_reject_a_bad_key_alike() {
    for entry in [0usize, 3] {
        let buf = damaged(|j, b| b[entry_at(j, entry) + ENTRY_HEADER_BYTES] = 200);
        let got = full(&buf);
        assert!(
            matches!(&got, Outcome::Invalid(JsetInvalid::Key { entry: e, .. }) if *e == entry as u32),
            "{got:?}"
        );
        assert_eq!(fast(&buf), got, "entry {entry}");
    }
}

/// The good sample is accepted by both with the same keys; the fast path takes nothing from a
/// copy other than the one asked for, or from another filesystem's jset.
#[test]
fn both_paths_accept_a_good_jset_alike() {
    let buf = sample().encode(MAGIC, BLOCK);
    let got = full(&buf);
    assert_eq!(
        got,
        Outcome::Good(vec![
            (BtreeId::Extents, 0, key(1, 1)),
            (BtreeId::Extents, 0, key(2, 2)),
            (BtreeId::Inodes, 0, key(3, 3))
        ])
    );
    assert_eq!(fast(&buf), got);
    let h = header(&buf);
    let mut seen = 0;
    let mut count = |_: BtreeId, _: u8, _: fs_core::bkey::KeyRef<'_>| seen += 1;
    assert!(!for_each_btree_key(&buf, MAGIC, h.seq + 1, h.bytes, h.csum, &mut count).unwrap());
    assert!(!for_each_btree_key(&buf, MAGIC, h.seq, h.bytes, h.csum ^ 1, &mut count).unwrap());
    assert!(!for_each_btree_key(&buf, MAGIC + 1, h.seq, h.bytes, h.csum, &mut count).unwrap());
    assert_eq!(seen, 0);
}

fn arb_jset() -> impl Strategy<Value = Jset> {
    let key = (0u64..4, 0u64..64, prop::collection::vec(any::<u8>(), 0..24))
        .prop_map(|(i, o, v)| Bkey::new(Bpos::new(i, o, 0), KeyType::Set, v));
    let entry = prop_oneof![
        (0usize..4, prop::collection::vec(key.clone(), 0..6)).prop_map(|(b, keys)| {
            JsetEntry::BtreeKeys { btree: BtreeId::ALL[b], level: 0, keys: keys.into() }
        }),
        prop::collection::vec(key, 0..3).prop_map(|keys| JsetEntry::Overwrite {
            btree: BtreeId::Alloc,
            level: 0,
            keys: keys.into()
        }),
        (1u64..100, 1u64..10).prop_map(|(s, n)| JsetEntry::Blacklist { start: s, end: s + n }),
        Just(root()),
    ];
    (1u64..1000, 0u64..1000, prop::collection::vec(entry, 0..6)).prop_map(|(seq, back, entries)| Jset {
        seq,
        last_seq: seq.saturating_sub(back),
        flags: 0,
        entries,
    })
}

proptest! {
    /// A random byte of a random jset set to a random value, the checksum then made good when
    /// the length still allows: both ways of reading give the same verdict, keys and reason.
    #[test]
    fn both_paths_agree_on_any_damage(j in arb_jset(), at in any::<prop::sample::Index>(), v in any::<u8>()) {
        let mut buf = j.encode(MAGIC, BLOCK);
        let i = at.index(j.encoded_bytes());
        buf[i] = v;
        if (JSET_HEADER_BYTES..=buf.len()).contains(&(header(&buf).bytes as usize)) {
            reseal(&mut buf);
        }
        prop_assert_eq!(fast(&buf), full(&buf), "byte {} set to {}", i, v);
    }
}
