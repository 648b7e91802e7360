//! Journal keys: compaction to the newest key per position, and the overlay iterators see during replay.
//! The keys are built the one way recovery builds them: jsets written to devices, then
//! `read_journal_for_replay`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::Arc;

use fs_core::bkey::{Bkey, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::iter::KeyOverlay;
use fs_core::dev::{BlockDevice, MemDevice};
use fs_core::rng::Rng;
use journal::{JournalDevice, JournalKeys, Jset, JsetEntry, ReadEntry, ReadOpts, read_journal_for_replay};

const MAGIC: u64 = 0x6b65_7973;
const BLOCK: usize = 512;
const DEVICES: usize = 3;

/// The journal keys of `entries` as recovery gets them: each jset written, as a flush entry
/// whose `last_seq` is the oldest seq given, into a bucket of its own on device `i % DEVICES`
/// (`i` its place in `entries`: a shuffled order spreads the seqs over the devices at random,
/// so keys reach the sort out of seq order), then the devices read by `read_journal_for_replay`.
fn journal_keys(entries: &[ReadEntry]) -> (JournalKeys, usize) {
    let first = entries.iter().map(|e| e.jset.seq).min().unwrap_or(1);
    let encoded: Vec<(u64, Vec<u8>)> = entries
        .iter()
        .map(|e| (e.jset.seq, Jset { last_seq: first, flags: 0, ..e.jset.clone() }.encode(MAGIC, BLOCK)))
        .collect();
    let bucket = encoded.iter().map(|(_, b)| b.len()).max().unwrap_or(BLOCK) as u64;
    let devs: Vec<JournalDevice> = (0..DEVICES)
        .map(|d| {
            let mut mine: Vec<&(u64, Vec<u8>)> = encoded.iter().skip(d).step_by(DEVICES).collect();
            mine.sort_by_key(|(seq, _)| *seq);
            let nr = mine.len().max(1) as u64;
            let dev = Arc::new(MemDevice::new(format!("mem{d}"), nr * bucket));
            for (i, (_, bytes)) in mine.iter().enumerate() {
                dev.write_at(bytes, i as u64 * bucket).unwrap();
            }
            JournalDevice { dev_idx: d as u8, dev, bucket_size: bucket, buckets: (0..nr).collect() }
        })
        .collect();
    let opts = ReadOpts {
        magic: MAGIC,
        block_size: BLOCK as u64,
        degraded: false,
        missing: Vec::new(),
        keep_all: false,
    };
    let got = read_journal_for_replay(&devs, &opts).unwrap();
    assert!(got.read.fsck_errors.is_empty(), "{:#?}", got.read.log);
    (got.keys, got.keys_read)
}

fn set(pos: Bpos, tag: u8) -> Bkey {
    Bkey::new(pos, KeyType::Set, vec![tag; 8])
}

fn leaf(btree: BtreeId, keys: Vec<Bkey>) -> JsetEntry {
    JsetEntry::BtreeKeys { btree, level: 0, keys: keys.into() }
}

fn read_entry(seq: u64, entries: Vec<JsetEntry>) -> ReadEntry {
    ReadEntry { jset: Jset { seq, last_seq: 1, flags: 0, entries }, ptrs: Vec::new() }
}

fn p(offset: u64) -> Bpos {
    Bpos::new(1, offset, 0)
}

type Model = BTreeMap<(BtreeId, u8, Bpos), (Bkey, u64)>;

/// A random journal over a small position space (so positions repeat within and across jsets),
/// in seq order, and the model of what compaction must keep: the last write per position.
fn random_journal(rng: &mut Rng) -> (Vec<ReadEntry>, Model, usize) {
    let btrees = [BtreeId::Extents, BtreeId::Inodes, BtreeId::Alloc];
    let mut model = Model::new();
    let mut entries = Vec::new();
    let mut total = 0;
    for seq in 1..=rng.range(1..60) {
        let mut jentries = Vec::new();
        for _ in 0..rng.range(0..4) {
            let btree = *rng.choose(&btrees).unwrap();
            let level = u8::from(rng.chance(0.1));
            let keys: Vec<Bkey> = (0..rng.range(0..8))
                .map(|_| {
                    let pos = Bpos::new(rng.below(3), rng.below(16), rng.below(2) as u32);
                    match rng.below(4) {
                        0 => Bkey::whiteout(pos),
                        1 => Bkey::deleted(pos),
                        _ => set(pos, rng.below(256) as u8),
                    }
                })
                .collect();
            for k in &keys {
                model.insert((btree, level, k.pos), (k.clone(), seq));
            }
            total += keys.len();
            jentries.push(JsetEntry::BtreeKeys { btree, level, keys: keys.into() });
            if rng.chance(0.2) {
                jentries.push(JsetEntry::Overwrite { btree, level, keys: vec![set(p(0), 1)].into() });
            }
        }
        entries.push(read_entry(seq, jentries));
    }
    (entries, model, total)
}

/// Compaction keeps exactly the newest key per (btree, level, pos), in sorted order, whatever
/// order the entries come in, and counts every btree key read (and nothing else): checked
/// against a map model over seeded random journals.
#[test]
fn compaction_keeps_newest_per_position() {
    for seed in 0..40u64 {
        let mut rng = Rng::new(seed);
        let (mut entries, model, total) = random_journal(&mut rng);
        rng.shuffle(&mut entries);
        let (keys, read) = journal_keys(&entries);
        assert_eq!(read, total, "seed {seed}");
        let got: Vec<_> =
            keys.iter().map(|k| ((k.btree, k.level, k.key.pos), (k.key.to_key(), k.seq))).collect();
        let want: Vec<_> = model.into_iter().collect();
        assert_eq!(got, want, "seed {seed}");
        assert_eq!(keys.len(), got.len(), "seed {seed}");
        assert!(keys.iter().all(|k| !k.overwritten), "seed {seed}");
    }
}

/// Ties sort oldest first, so the newest survives: across seqs by seq (not by the order entries
/// are given), and inside one jset by the key's place in it.
#[test]
fn ties_resolve_to_the_newest_write() {
    let entries = vec![
        read_entry(5, vec![leaf(BtreeId::Alloc, vec![set(p(1), 50)])]),
        read_entry(3, vec![leaf(BtreeId::Alloc, vec![set(p(1), 30), set(p(2), 31)])]),
        read_entry(
            4,
            vec![
                leaf(BtreeId::Alloc, vec![set(p(2), 40), set(p(2), 41)]),
                leaf(BtreeId::Alloc, vec![set(p(2), 42)]),
            ],
        ),
    ];
    let (keys, read) = journal_keys(&entries);
    assert_eq!(read, 6);
    let kept: Vec<(Bpos, u8, u64)> = keys.iter().map(|k| (k.key.pos, k.key.val[0], k.seq)).collect();
    assert_eq!(kept, vec![(p(1), 50, 5), (p(2), 42, 4)]);
}

/// The log line is bcachefs's, word for word.
#[test]
fn summary_string() {
    assert_eq!(
        JournalKeys::summary(29_000_000, 22_000_000),
        "Journal keys: 29000000 read, 22000000 after sorting and compacting"
    );
    let (keys, read) = journal_keys(&[]);
    assert!(keys.is_empty());
    assert_eq!(
        JournalKeys::summary(read, keys.len()),
        "Journal keys: 0 read, 0 after sorting and compacting"
    );
}

/// A fixed journal for the overlay tests: alloc leaves at 1 (set), 2 (whiteout), 3 (set), an
/// alloc interior key at 4, an inodes leaf at 0.
fn overlay_keys() -> JournalKeys {
    let entries = vec![read_entry(
        7,
        vec![
            leaf(BtreeId::Alloc, vec![set(p(1), 1), Bkey::whiteout(p(2)), set(p(3), 3)]),
            JsetEntry::BtreeKeys { btree: BtreeId::Alloc, level: 1, keys: vec![set(p(4), 4)].into() },
            leaf(BtreeId::Inodes, vec![set(p(0), 9)]),
        ],
    )];
    journal_keys(&entries).0
}

/// The overlay shows leaf keys of the asked btree only, returns deletions (they hide btree
/// keys), and stops showing a key once it is overwritten.
#[test]
fn overlay_skips_overwritten_and_returns_deletions() {
    let mut keys = overlay_keys();
    let a = BtreeId::Alloc;
    assert_eq!(keys.first_from(a, Bpos::MIN).map(|k| k.pos), Some(p(1)));
    assert_eq!(keys.first_from(a, p(2)), Some(Bkey::whiteout(p(2))));
    assert_eq!(keys.first_from(a, p(4)), None, "interior keys are not overlaid");
    assert_eq!(keys.last_until(a, Bpos::MAX).map(|k| k.pos), Some(p(3)));
    assert_eq!(keys.last_until(a, p(0)), None);
    assert_eq!(keys.first_from(BtreeId::Inodes, p(1)), None, "other btrees' keys never show");
    assert_eq!(keys.last_until(BtreeId::Inodes, Bpos::MAX).map(|k| k.pos), Some(p(0)));
    assert_eq!(keys.first_from(BtreeId::Extents, Bpos::MIN), None);

    assert!(keys.mark_overwritten(a, 0, p(1)));
    assert_eq!(keys.first_from(a, Bpos::MIN).map(|k| k.pos), Some(p(2)));
    assert!(keys.mark_overwritten(a, 0, p(3)));
    assert_eq!(keys.last_until(a, Bpos::MAX).map(|k| k.pos), Some(p(2)));
    assert!(keys.mark_overwritten(a, 0, p(2)));
    assert_eq!(keys.first_from(a, Bpos::MIN), None);
    assert_eq!(keys.last_until(a, Bpos::MAX), None);
    assert_eq!(keys.last_until(BtreeId::Inodes, Bpos::MAX).map(|k| k.pos), Some(p(0)));
}

/// mark_overwritten reports whether a live key was there, only once; the key stays visible to
/// `get` and `iter` with its flag set.
#[test]
fn mark_overwritten_marks_once() {
    let mut keys = overlay_keys();
    let a = BtreeId::Alloc;
    assert!(!keys.mark_overwritten(a, 0, p(9)), "no key there");
    assert!(!keys.mark_overwritten(a, 0, p(4)), "the key at 4 is interior, level 1");
    assert!(keys.mark_overwritten(a, 1, p(4)));
    assert!(keys.mark_overwritten(a, 0, p(2)));
    assert!(!keys.mark_overwritten(a, 0, p(2)), "already overwritten");
    assert!(keys.get(a, 0, p(2)).unwrap().overwritten);
    assert!(!keys.get(a, 0, p(1)).unwrap().overwritten);
    assert!(keys.get(a, 0, p(4)).is_none());
    assert_eq!(keys.iter().filter(|k| k.overwritten).count(), 2);
    assert_eq!(keys.len(), 5);
}

/// Under random overwrites, first_from / last_until agree with a model that scans the live leaf
/// keys, including across long runs of overwritten keys.
#[test]
fn overlay_matches_model_under_random_overwrites() {
    for seed in 0..30u64 {
        let mut rng = Rng::new(seed);
        let (entries, model, _) = random_journal(&mut rng);
        let (mut keys, _) = journal_keys(&entries);
        let mut live: BTreeMap<(BtreeId, Bpos), Bkey> = model
            .iter()
            .filter(|((_, l, _), _)| *l == 0)
            .map(|((b, _, pos), (k, _))| ((*b, *pos), k.clone()))
            .collect();
        for round in 0..300 {
            let btree =
                [BtreeId::Extents, BtreeId::Inodes, BtreeId::Alloc, BtreeId::Lru][rng.below(4) as usize];
            let pos = Bpos::new(rng.below(4), rng.below(18), rng.below(3) as u32);
            if rng.chance(0.4) {
                let was_live = live.remove(&(btree, pos)).is_some();
                assert_eq!(keys.mark_overwritten(btree, 0, pos), was_live, "seed {seed} round {round}");
            }
            let first =
                live.range((btree, pos)..).next().filter(|((b, _), _)| *b == btree).map(|(_, k)| k.clone());
            let last = live
                .range(..=(btree, pos))
                .next_back()
                .filter(|((b, _), _)| *b == btree)
                .map(|(_, k)| k.clone());
            assert_eq!(
                keys.first_from(btree, pos),
                first,
                "seed {seed} round {round} first_from({btree}, {pos})"
            );
            assert_eq!(
                keys.last_until(btree, pos),
                last,
                "seed {seed} round {round} last_until({btree}, {pos})"
            );
        }
    }
}

/// A long run of overwritten keys (the sorted replay pass marks keys in order) is skipped
/// correctly in both directions: the only live key is found past 100k dead ones, and nothing
/// before it.
#[test]
fn overlay_skips_long_overwritten_runs() {
    let n = 100_000u64;
    let keys_in: Vec<Bkey> = (0..=n).map(|i| set(p(i), 1)).collect();
    let (mut keys, read) = journal_keys(&[read_entry(2, vec![leaf(BtreeId::Alloc, keys_in)])]);
    assert_eq!(read, n as usize + 1);
    for i in 0..n {
        assert!(keys.mark_overwritten(BtreeId::Alloc, 0, p(i)));
    }
    assert_eq!(keys.first_from(BtreeId::Alloc, Bpos::MIN).map(|k| k.pos), Some(p(n)));
    assert_eq!(keys.last_until(BtreeId::Alloc, p(n - 1)), None);
}
