//! The journal read rules of BCACHEFS-NOTES §4, each on a journal laid out by hand or by a seeded writer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fs_core::bkey::{Bkey, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::dev::{
    BlockDevice, FaultKind, FaultOp, FaultRule, FaultyDevice, MemDevice, SharedDevice, Trigger,
};
use fs_core::error::{ErrCode, Result};
use fs_core::fsck_err::FsckErr;
use fs_core::rng::Rng;
use journal::format::JSET_NO_FLUSH;
use journal::{
    EntryPtr, JournalDevice, JournalKey, JournalRead, Jset, JsetEntry, ReadOpts, read_journal,
    read_journal_for_replay,
};

const MAGIC: u64 = 0x6a6f_7572_6e61_6c21;
const BLOCK: u64 = 512;
const BUCKET: u64 = 8 * BLOCK;
const NBUCKETS: u64 = 32;

fn mem(name: &str) -> Arc<MemDevice> {
    Arc::new(MemDevice::new(name, NBUCKETS * BUCKET))
}

/// A flush entry carrying one key whose value names the seq.
fn entry(seq: u64, last_seq: u64) -> Jset {
    let key = Bkey::new(Bpos::new(1, seq, 0), KeyType::Set, seq.to_le_bytes().to_vec());
    Jset {
        seq,
        last_seq,
        flags: 0,
        entries: vec![JsetEntry::BtreeKeys { btree: BtreeId::Alloc, level: 0, keys: vec![key].into() }],
    }
}

fn no_flush(seq: u64, last_seq: u64) -> Jset {
    Jset { flags: JSET_NO_FLUSH, ..entry(seq, last_seq) }
}

fn put(dev: &dyn BlockDevice, offset: u64, j: &Jset) {
    dev.write_at(&j.encode(MAGIC, BLOCK as usize), offset).unwrap();
}

fn flip_byte(dev: &dyn BlockDevice, offset: u64) {
    let mut b = [0u8; 1];
    dev.read_at(&mut b, offset).unwrap();
    b[0] ^= 0x5a;
    dev.write_at(&b, offset).unwrap();
}

/// Damages the entry at `offset` so that its checksum fails but its header (magic, seq) stays.
fn corrupt(dev: &dyn BlockDevice, offset: u64) {
    flip_byte(dev, offset + 44);
}

/// A device's journal ring written the way the writer does: entries appended block-aligned, an
/// entry that does not fit going to the start of the next bucket in ring order.
struct Ring {
    dev: Arc<MemDevice>,
    idx: u8,
    bucket_size: u64,
    buckets: Vec<u64>,
    cur: usize,
    off: u64,
    /// Times the writer came back to the first ring position.
    laps: u64,
}

impl Ring {
    fn new(idx: u8, buckets: Vec<u64>) -> Ring {
        Ring { dev: mem(&format!("mem{idx}")), idx, bucket_size: BUCKET, buckets, cur: 0, off: 0, laps: 0 }
    }

    /// Where an entry of `len` bytes goes next, moving to the next bucket if it does not fit.
    fn reserve(&mut self, len: u64) -> u64 {
        if self.off + len > self.bucket_size {
            self.cur = (self.cur + 1) % self.buckets.len();
            self.off = 0;
            self.laps += u64::from(self.cur == 0);
        }
        let at = self.buckets[self.cur] * self.bucket_size + self.off;
        self.off += len;
        at
    }

    fn append(&mut self, j: &Jset) -> u64 {
        let bytes = j.encode(MAGIC, BLOCK as usize);
        let at = self.reserve(bytes.len() as u64);
        self.dev.write_at(&bytes, at).unwrap();
        at
    }

    /// Leaves the rest of the current bucket unused: the next entry starts the next bucket.
    fn next_bucket(&mut self) {
        self.off = self.bucket_size;
    }

    fn jdev(&self) -> JournalDevice {
        JournalDevice {
            dev_idx: self.idx,
            dev: self.dev.clone(),
            bucket_size: self.bucket_size,
            buckets: self.buckets.clone(),
        }
    }
}

fn opts() -> ReadOpts {
    ReadOpts { magic: MAGIC, block_size: BLOCK, degraded: false, missing: Vec::new(), keep_all: false }
}

fn read(rings: &[&Ring]) -> JournalRead {
    let devs: Vec<JournalDevice> = rings.iter().map(|r| r.jdev()).collect();
    read_journal(&devs, &opts()).unwrap()
}

fn seqs(r: &JournalRead) -> Vec<u64> {
    r.entries.iter().map(|e| e.jset.seq).collect()
}

fn logged(r: &JournalRead, needle: &str) -> bool {
    r.log.iter().any(|l| l.contains(needle))
}

fn ptrs_of(r: &JournalRead, seq: u64) -> Vec<EntryPtr> {
    r.entries.iter().find(|e| e.jset.seq == seq).map(|e| e.ptrs.clone()).unwrap_or_default()
}

/// Rule 1: a block that is not ours (another filesystem's entry here, or zeroes) ends the
/// bucket, unless an entry with a good checksum, newer than the bucket's, follows in the same
/// bucket: then that is a hole, read past and counted as `journal_bucket_hole` (bcachefs would
/// end the bucket and lose the entries after it). A stale (older) entry after it does not make
/// a hole.
#[test]
fn rule1_empty_block_ends_bucket_unless_a_newer_entry_follows() {
    let mut r = Ring::new(0, vec![0, 1, 2, 3]);
    for seq in 1..=3 {
        r.append(&entry(seq, 1));
    }
    let foreign = entry(9, 1).encode(MAGIC ^ 1, BLOCK as usize);
    let at = r.reserve(BLOCK);
    r.dev.write_at(&foreign, at).unwrap();
    r.append(&entry(4, 1));

    let got = read(&[&r]);
    assert_eq!(seqs(&got), vec![1, 2, 3, 4], "{:#?}", got.log);
    assert_eq!((got.last_seq, got.replay_end, got.newest_seq), (1, 4, 4));
    assert_eq!(got.fsck_count(FsckErr::JournalBucketHole), 1);
    assert!(logged(&got, "journal hole on dev 0"), "{:#?}", got.log);
    assert_eq!(got.rings[0].head_end, 5 * BLOCK, "the next entry goes after the one past the hole");

    // A stale entry (an earlier lap's) behind the foreign block: the bucket ends there.
    let mut r = Ring::new(0, vec![0, 1, 2, 3]);
    for seq in 5..=7 {
        r.append(&entry(seq, 5));
    }
    let at = r.reserve(BLOCK);
    r.dev.write_at(&foreign, at).unwrap();
    r.append(&entry(2, 1));
    let got = read(&[&r]);
    assert_eq!(seqs(&got), vec![5, 6, 7], "{:#?}", got.log);
    assert_eq!(got.fsck_count(FsckErr::JournalBucketHole), 0);
    assert_eq!(got.rings[0].head_end, 3 * BLOCK, "the next entry goes where the foreign block is");
}

/// A device whose reads are counted, to see what the read costs.
#[derive(Debug)]
struct Counting {
    inner: MemDevice,
    bytes: AtomicU64,
}

impl BlockDevice for Counting {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
}

/// Rule 1 (cost): a bucket whose first block is empty costs one block read, a used bucket is read
/// whole, and nothing more is read when the journal has no gap.
#[test]
fn rule1_empty_first_block_skips_rest_of_bucket() {
    let bucket_size = 128 * BLOCK;
    let nbuckets = 40u64;
    let dev = Arc::new(Counting {
        inner: MemDevice::new("counted", nbuckets * bucket_size),
        bytes: AtomicU64::new(0),
    });
    // Two used buckets: 150 one-block entries fill the first (128 blocks) and spill into the second.
    for seq in 1..=150u64 {
        let at = if seq <= 128 { (seq - 1) * BLOCK } else { bucket_size + (seq - 129) * BLOCK };
        put(dev.as_ref(), at, &entry(seq, 1));
    }
    let jdev = JournalDevice { dev_idx: 0, dev: dev.clone(), bucket_size, buckets: (0..nbuckets).collect() };
    let got = read_journal(&[jdev], &opts()).unwrap();
    assert_eq!(got.replay_end, 150);
    assert_eq!(got.entries.len(), 150);
    assert_eq!(dev.bytes.load(Ordering::Relaxed), 2 * bucket_size + (nbuckets - 2) * BLOCK);
}

/// Rule 1: entries older than a bucket's first entry are the stale tail of an earlier lap and end
/// the bucket: a stale copy of seq 2 is neither counted as a duplicate nor used, and the bucket's
/// newest seq ignores the tail.
#[test]
fn rule1_stale_tail_ends_bucket() {
    let mut r = Ring::new(0, vec![3, 7]);
    for seq in 1..=4 {
        r.append(&entry(seq, 1));
    }
    r.next_bucket();
    let a5 = r.append(&entry(5, 1));
    r.append(&entry(6, 1));
    let mut stale = entry(2, 1);
    stale.entries.clear();
    let stale_at = r.reserve(BLOCK);
    put(r.dev.as_ref(), stale_at, &stale);
    r.append(&entry(1, 1));

    let got = read(&[&r]);
    assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(got.fsck_count(FsckErr::JournalEntryDupSameDevice), 0, "{:#?}", got.log);
    assert_eq!(ptrs_of(&got, 2), vec![EntryPtr { dev: 0, bucket: 3, offset: 3 * BUCKET + BLOCK }]);
    assert_eq!(got.entries[1], journal::ReadEntry { jset: entry(2, 1), ptrs: ptrs_of(&got, 2) });
    assert_eq!(got.rings[0].bucket_seqs, vec![4, 6]);
    assert_eq!((got.rings[0].head_idx, got.rings[0].head_end), (1, stale_at - a5));
    assert!(got.fsck_errors.is_empty(), "{:?}", got.fsck_errors);
}

/// An entry taking several blocks.
fn big_entry(seq: u64, last_seq: u64) -> Jset {
    let keys: Vec<Bkey> =
        (0..6).map(|i| Bkey::new(Bpos::new(2, i, 0), KeyType::Set, vec![seq as u8; 200])).collect();
    Jset {
        seq,
        last_seq,
        flags: 0,
        entries: vec![JsetEntry::BtreeKeys { btree: BtreeId::Inodes, level: 0, keys: keys.into() }],
    }
}

/// Rules 1 and 3: a bad checksum marks that copy bad (counted, logged), reading resumes at the
/// next block (stepping through the rest of the damaged multi-block entry, whose length cannot
/// be trusted), and the good copy on another device wins.
#[test]
fn rule1_bad_checksum_marks_copy_and_resumes_at_next_block() {
    let mut r0 = Ring::new(0, vec![0, 1]);
    let mut r1 = Ring::new(1, vec![4, 5]);
    let mut at0 = Vec::new();
    let mut at1 = Vec::new();
    for seq in 1..=4 {
        let j = if seq == 2 { big_entry(seq, 1) } else { entry(seq, 1) };
        assert!(seq != 2 || j.encoded_bytes() > 2 * BLOCK as usize);
        at0.push(r0.append(&j));
        at1.push(r1.append(&j));
    }
    corrupt(r0.dev.as_ref(), at0[1]);

    let got = read(&[&r0, &r1]);
    assert_eq!(seqs(&got), vec![1, 2, 3, 4]);
    assert_eq!(got.bad_copies, 1);
    assert!(
        logged(&got, &format!("journal entry 2 on dev 0 bucket 0 offset {}: bad checksum", at0[1])),
        "{:#?}",
        got.log
    );
    assert_eq!(ptrs_of(&got, 2), vec![EntryPtr { dev: 1, bucket: 4, offset: at1[1] }]);
    // Dev 0 kept reading after the bad block: its copies of 3 and 4 are there.
    for (i, seq) in [(2, 3), (3, 4)] {
        assert_eq!(
            ptrs_of(&got, seq),
            vec![
                EntryPtr { dev: 0, bucket: 0, offset: at0[i] },
                EntryPtr { dev: 1, bucket: 4, offset: at1[i] }
            ]
        );
    }
    assert!(!logged(&got, "missing"), "{:#?}", got.log);
    // The bad copy is damage, counted once.
    assert_eq!(got.fsck_errors, vec![(FsckErr::JournalEntryCopyBad, 1)]);
}

/// Rule 2 (control): a ring that wrapped, read back from its head, is in order: nothing logged.
#[test]
fn rule2_wrapped_ring_in_order_is_not_reported() {
    let mut r = Ring::new(2, vec![9, 2, 30, 11]);
    for seq in 1..=45u64 {
        r.append(&entry(seq, seq.saturating_sub(6).max(1)));
    }
    let got = read(&[&r]);
    assert_eq!(seqs(&got), (39..=45).collect::<Vec<_>>());
    assert!(!logged(&got, "not monotonic"), "{:#?}", got.log);
    assert!(got.fsck_errors.is_empty(), "{:?}", got.fsck_errors);
    // 45 one-block entries in 8-block buckets: the sixth bucket written (ring position 1) holds
    // 41..=45.
    assert_eq!((got.rings[0].head_idx, got.rings[0].head_end), (1, 5 * BLOCK));
    assert_eq!(got.rings[0].bucket_seqs, vec![40, 45, 24, 32]);
}

/// Rule 2: walking back from the head, a bucket whose first seq is higher than the next one's
/// is logged with the device and counted once; the read still returns every entry.
#[test]
fn rule2_seq_increase_walking_back_is_logged_not_fatal() {
    let r = Ring::new(3, vec![0, 1, 2]);
    for (bucket, seqs) in [(0, [3, 4]), (1, [1, 2]), (2, [5, 6])] {
        for (i, seq) in seqs.into_iter().enumerate() {
            put(r.dev.as_ref(), bucket * BUCKET + i as u64 * BLOCK, &entry(seq, 1));
        }
    }
    let got = read(&[&r]);
    assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5, 6]);
    assert!(logged(&got, "journal bucket seqs not monotonic on dev 3"), "{:#?}", got.log);
    assert_eq!(got.fsck_count(FsckErr::JournalBucketSeqNotMonotonic), 1);
}

/// Rule 2: data behind (older than) an empty bucket is logged and counted, not fatal.
#[test]
fn rule2_data_behind_empty_bucket_is_logged_not_fatal() {
    let r = Ring::new(1, vec![0, 1, 2, 3]);
    for (bucket, seqs) in [(0, [1, 2]), (2, [3, 4])] {
        for (i, seq) in seqs.into_iter().enumerate() {
            put(r.dev.as_ref(), bucket * BUCKET + i as u64 * BLOCK, &entry(seq, 1));
        }
    }
    let got = read(&[&r]);
    assert_eq!(seqs(&got), vec![1, 2, 3, 4]);
    assert!(logged(&got, "journal bucket seqs not monotonic on dev 1"), "{:#?}", got.log);
    assert!(logged(&got, "behind empty bucket 1"), "{:#?}", got.log);
    assert_eq!(got.fsck_count(FsckErr::JournalBucketSeqNotMonotonic), 1);
}

/// Rule 3: the same bytes seen twice (the full re-read after a gap, or a bucket listed twice) are
/// one copy: one bad copy counted once, one pointer, no duplicate error.
#[test]
fn rule3_same_device_same_offset_is_one_copy() {
    let mut r = Ring::new(0, vec![0, 1]);
    let at: Vec<u64> = (1..=3).map(|seq| r.append(&entry(seq, 1))).collect();
    corrupt(r.dev.as_ref(), at[1]);
    let got = read(&[&r]);
    assert!(logged(&got, "re-reading every journal bucket"), "{:#?}", got.log);
    assert_eq!(got.bad_copies, 1);
    assert_eq!(
        got.log.iter().filter(|l| l.contains("journal entry 2 on dev 0")).count(),
        1,
        "{:#?}",
        got.log
    );

    let twice = Ring { buckets: vec![0, 0], ..Ring::new(0, vec![]) };
    put(twice.dev.as_ref(), 0, &entry(1, 1));
    let got = read(&[&twice]);
    assert_eq!(seqs(&got), vec![1]);
    assert_eq!(ptrs_of(&got, 1).len(), 1);
    assert_eq!(got.fsck_count(FsckErr::JournalEntryDupSameDevice), 0);
}

/// Rule 3: a second good copy on the same device at another offset counts
/// `journal_entry_dup_same_device` and is not used.
#[test]
fn rule3_same_device_other_offset_counts_dup() {
    let mut r = Ring::new(0, vec![0, 1]);
    let at3 = [1, 2, 3].map(|seq| r.append(&entry(seq, 1)))[2];
    r.next_bucket();
    let dup_at = r.append(&entry(3, 1));
    r.append(&entry(4, 1));
    let got = read(&[&r]);
    assert_eq!(seqs(&got), vec![1, 2, 3, 4]);
    assert_eq!(got.fsck_count(FsckErr::JournalEntryDupSameDevice), 1);
    assert_eq!(ptrs_of(&got, 3), vec![EntryPtr { dev: 0, bucket: 0, offset: at3 }]);
    assert!(
        logged(&got, &format!("duplicate journal entry 3 on dev 0 at offsets {at3} and {dup_at}")),
        "{:#?}",
        got.log
    );
}

/// Rule 3: two good copies on different devices with different contents count
/// `journal_entry_replicas_data_mismatch`; the first device's copy is kept and the log says so.
#[test]
fn rule3_replicas_mismatch_counts_and_keeps_first_device() {
    let mut r0 = Ring::new(0, vec![0]);
    let mut r1 = Ring::new(1, vec![1]);
    for seq in 1..=3 {
        r0.append(&entry(seq, 1));
        let mut j = entry(seq, 1);
        if seq == 2 {
            j.entries.push(JsetEntry::Blacklist { start: 100, end: 101 });
        }
        r1.append(&j);
    }
    let got = read(&[&r0, &r1]);
    assert_eq!(got.fsck_count(FsckErr::JournalEntryReplicasDataMismatch), 1);
    assert_eq!(got.entries[1].jset, entry(2, 1));
    assert_eq!(ptrs_of(&got, 2).iter().map(|p| p.dev).collect::<Vec<_>>(), vec![0]);
    assert!(logged(&got, "journal entry 2: replicas differ"), "{:#?}", got.log);
    assert!(logged(&got, "keeping dev 0's copy"), "{:#?}", got.log);
    assert_eq!(ptrs_of(&got, 3).len(), 2);
}

/// Rule 3: identical good copies at different places on different devices merge into one entry
/// with one pointer per copy.
#[test]
fn rule3_identical_copies_merge_pointers() {
    let mut r0 = Ring::new(4, vec![2, 3]);
    let mut r1 = Ring::new(7, vec![10, 11]);
    r1.append(&entry(50, 1)); // shifts dev 7's positions: copies sit at different offsets
    let mut want = Vec::new();
    for seq in 51..=60 {
        let p0 = r0.append(&entry(seq, 51));
        let p1 = r1.append(&entry(seq, 51));
        want.push(vec![
            EntryPtr { dev: 4, bucket: p0 / BUCKET, offset: p0 },
            EntryPtr { dev: 7, bucket: p1 / BUCKET, offset: p1 },
        ]);
    }
    let got = read(&[&r0, &r1]);
    assert_eq!(seqs(&got), (51..=60).collect::<Vec<_>>());
    assert_eq!(got.entries.iter().map(|e| e.ptrs.clone()).collect::<Vec<_>>(), want);
    assert!(got.fsck_errors.is_empty(), "{:?}", got.fsck_errors);
}

/// Rule 4: the replay end is the newest good flush entry (no-flush entries above it are not
/// replayed), its last_seq starts the range, older entries are dropped, and a no-flush entry
/// inside the range is replayed.
#[test]
fn rule4_replay_end_is_newest_flush_entry() {
    let mut r = Ring::new(0, vec![0, 1]);
    for seq in 1..=10 {
        r.append(&match seq {
            6 | 9 | 10 => no_flush(seq, 4),
            _ => entry(seq, if seq == 8 { 4 } else { 1 }),
        });
    }
    let got = read(&[&r]);
    assert_eq!((got.last_seq, got.replay_end, got.newest_seq), (4, 8, 10));
    assert_eq!(seqs(&got), vec![4, 5, 6, 7, 8]);
    assert!(got.entries[2].jset.no_flush());
    assert!(logged(&got, "journal read done, replaying entries 4-8"), "{:#?}", got.log);
}

/// Rule 4: a newest entry whose every copy is bad is a torn write: skipped, logged, not missing.
#[test]
fn rule4_torn_newest_entry_is_skipped() {
    let mut r = Ring::new(0, vec![0]);
    let at: Vec<u64> = (1..=6).map(|seq| r.append(&entry(seq, seq.min(2)))).collect();
    corrupt(r.dev.as_ref(), at[5]);
    let got = read(&[&r]);
    assert_eq!((got.last_seq, got.replay_end, got.newest_seq), (2, 5, 6));
    assert_eq!(seqs(&got), vec![2, 3, 4, 5]);
    assert!(logged(&got, "journal entry 6: torn newest write, not replayed"), "{:#?}", got.log);
    assert!(!logged(&got, "missing"), "{:#?}", got.log);
    assert_eq!(got.bad_copies, 1, "{:#?}", got.log);
}

/// Rules 3 and 4: an entry with only bad copies below a good flush entry is not a torn write:
/// it is missing.
#[test]
fn rule4_bad_entry_below_replay_end_is_missing() {
    let mut r = Ring::new(0, vec![0]);
    let at: Vec<u64> = (1..=6).map(|seq| r.append(&entry(seq, 1))).collect();
    corrupt(r.dev.as_ref(), at[4]);
    let got = read(&[&r]);
    assert_eq!(got.replay_end, 6);
    assert_eq!(seqs(&got), vec![1, 2, 3, 4, 6]);
    assert!(got.log.contains(&"journal entries 5-5 missing! (replaying 1-6)".to_string()), "{:#?}", got.log);
}

/// Rule 4: blacklisted seqs are neither replayed nor missing; a blacklisted flush entry in the
/// range counts `jset_seq_blacklisted`, a blacklisted no-flush entry does not.
#[test]
fn rule4_blacklisted_seqs_are_ignored() {
    let mut r = Ring::new(0, vec![0, 1]);
    for seq in 1..=5 {
        r.append(&entry(seq, 1));
    }
    r.append(&no_flush(6, 1));
    r.append(&entry(7, 1));
    // 8 was never written (lost in the crash); the next mount blacklisted 6..9 and went on at 9.
    let mut j9 = entry(9, 1);
    j9.entries.push(JsetEntry::Blacklist { start: 6, end: 9 });
    r.append(&j9);
    r.append(&entry(10, 1));

    let got = read(&[&r]);
    assert_eq!(got.blacklist, vec![(6, 9)]);
    assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5, 9, 10]);
    assert_eq!(got.fsck_count(FsckErr::JsetSeqBlacklisted), 1);
    assert!(logged(&got, "found blacklisted journal entry 7"), "{:#?}", got.log);
    assert!(!logged(&got, "missing"), "{:#?}", got.log);
}

/// Rule 4: a blacklisted entry is never the replay end, flush or not.
#[test]
fn rule4_blacklisted_entry_is_never_the_replay_end() {
    let mut r = Ring::new(0, vec![0, 1]);
    for seq in 1..=11 {
        r.append(&entry(seq, 3));
    }
    let mut j12 = no_flush(12, 3);
    j12.entries.push(JsetEntry::Blacklist { start: 10, end: 12 });
    r.append(&j12);
    let got = read(&[&r]);
    assert_eq!((got.last_seq, got.replay_end), (3, 9));
    assert_eq!(seqs(&got), (3..=9).collect::<Vec<_>>());
}

/// `keep_all` (for `list-journal -a`) changes nothing about the read and returns every seq with a
/// good copy besides: below last_seq, a blacklisted no-flush entry, a no-flush entry past the
/// replay end; a torn newest entry (no good copy) stays out.
#[test]
fn keep_all_returns_every_good_entry_and_changes_nothing_else() {
    let mut r = Ring::new(0, vec![0, 1, 2]);
    for seq in 1..=3 {
        r.append(&entry(seq, 1));
    }
    for seq in 4..=9 {
        r.append(&if seq == 6 || seq == 7 { no_flush(seq, 4) } else { entry(seq, 4) });
    }
    let mut j10 = entry(10, 4);
    j10.entries.push(JsetEntry::Blacklist { start: 7, end: 8 });
    r.append(&j10);
    r.append(&no_flush(11, 4));
    let torn = r.append(&entry(12, 4));
    corrupt(r.dev.as_ref(), torn);

    let plain = read(&[&r]);
    let all = read_journal(&[r.jdev()], &ReadOpts { keep_all: true, ..opts() }).unwrap();
    assert!(plain.all_entries.is_empty(), "filled only when asked");
    assert_eq!(seqs(&plain), vec![4, 5, 6, 8, 9, 10]);
    assert_eq!(all.entries, plain.entries);
    assert_eq!(
        (all.last_seq, all.replay_end, all.newest_seq, all.bad_copies),
        (plain.last_seq, plain.replay_end, plain.newest_seq, plain.bad_copies)
    );
    assert_eq!((all.last_seq, all.replay_end, all.newest_seq), (4, 10, 12));
    assert_eq!(all.blacklist, plain.blacklist);
    assert_eq!(all.log, plain.log);
    assert_eq!(all.fsck_errors, plain.fsck_errors);
    assert_eq!(all.rings, plain.rings);
    let every: Vec<u64> = all.all_entries.iter().map(|e| e.jset.seq).collect();
    assert_eq!(every, (1..=11).collect::<Vec<_>>());
    assert!(all.all_entries.iter().all(|e| e.ptrs.len() == 1));
    // Replayed entries are the same in both lists.
    for e in &all.entries {
        assert_eq!(all.all_entries.iter().find(|a| a.jset.seq == e.jset.seq), Some(e));
    }

    // An empty journal (no flush entry) still returns what it found.
    let mut nf = Ring::new(1, vec![0, 1]);
    nf.append(&no_flush(1, 1));
    nf.append(&no_flush(2, 1));
    let got = read_journal(&[nf.jdev()], &ReadOpts { keep_all: true, ..opts() }).unwrap();
    assert!(got.is_empty());
    assert_eq!(got.all_entries.iter().map(|e| e.jset.seq).collect::<Vec<_>>(), vec![1, 2]);
}

/// Rule 4: no flush entry anywhere (blank devices, or only no-flush entries) reads as an empty
/// journal: no entries, last_seq = replay_end = 0, logged, nothing counted.
#[test]
fn rule4_empty_journal() {
    let blank = Ring::new(0, (0..NBUCKETS).collect());
    let got = read(&[&blank]);
    assert!(got.is_empty());
    assert_eq!((got.last_seq, got.replay_end, got.newest_seq), (0, 0, 0));
    assert!(logged(&got, "journal empty"), "{:#?}", got.log);
    assert!(got.fsck_errors.is_empty());

    let mut r = Ring::new(1, vec![0, 1]);
    r.append(&no_flush(1, 1));
    r.append(&no_flush(2, 1));
    let got = read(&[&r]);
    assert!(got.is_empty());
    assert_eq!((got.last_seq, got.replay_end, got.newest_seq), (0, 0, 2));
}

/// Rule 5: absent seqs in the range force a full re-read, then each missing range is logged in
/// bcachefs's words and counted once; replay goes on with what exists.
#[test]
fn rule5_gaps_logged_after_full_reread() {
    let mut r = Ring::new(0, vec![0, 1, 2]);
    for seq in (1..=12).filter(|s| ![3, 7, 8].contains(s)) {
        r.append(&entry(seq, 2));
    }
    let got = read(&[&r]);
    assert!(logged(&got, "re-reading every journal bucket in full"), "{:#?}", got.log);
    let missing: Vec<&String> = got.log.iter().filter(|l| l.contains("missing!")).collect();
    assert_eq!(
        missing,
        ["journal entries 3-3 missing! (replaying 2-12)", "journal entries 7-8 missing! (replaying 2-12)"]
    );
    assert_eq!(got.fsck_count(FsckErr::JournalEntriesMissing), 2);
    assert_eq!(seqs(&got), vec![2, 4, 5, 6, 9, 10, 11, 12]);
}

/// Rule 5: the full re-read reads past what the first pass skipped: a bucket whose first entry
/// lost its magic looks empty, but its later entries are found; only the damaged one is missing.
#[test]
fn rule5_full_reread_finds_entries_behind_an_empty_first_block() {
    let mut r = Ring::new(0, vec![0, 1, 2]);
    let mut at = Vec::new();
    for seq in 1..=10 {
        if seq == 5 || seq == 9 {
            r.next_bucket();
        }
        at.push(r.append(&entry(seq, 1)));
    }
    flip_byte(r.dev.as_ref(), at[4] + 8); // seq 5's magic
    let got = read(&[&r]);
    assert_eq!(seqs(&got), vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
    let missing: Vec<&String> = got.log.iter().filter(|l| l.contains("missing!")).collect();
    assert_eq!(missing, ["journal entries 5-5 missing! (replaying 1-10)"]);
    assert_eq!(got.fsck_count(FsckErr::JournalEntriesMissing), 1);
    assert_eq!(ptrs_of(&got, 6), vec![EntryPtr { dev: 0, bucket: 1, offset: at[5] }]);
}

/// Three devices, each seq on two of them (seq % 3 and the next): any one device can go missing.
fn three_devices_two_replicas() -> [Ring; 3] {
    let mut rings = [Ring::new(0, vec![0, 1, 2]), Ring::new(1, vec![0, 1, 2]), Ring::new(2, vec![0, 1, 2])];
    for seq in 1..=12u64 {
        for d in [seq % 3, (seq + 1) % 3] {
            rings[d as usize].append(&entry(seq, 1));
        }
    }
    rings
}

/// Rule 6: with a member missing, a journal whose every entry has a copy on a present device
/// reads completely; the read says it was degraded.
#[test]
fn rule6_missing_device_with_surviving_copies_is_fine() {
    let rings = three_devices_two_replicas();
    let devs = vec![rings[0].jdev(), rings[2].jdev()];
    let got = read_journal(&devs, &ReadOpts { missing: vec![1], ..opts() }).unwrap();
    assert_eq!(seqs(&got), (1..=12).collect::<Vec<_>>());
    assert!(
        logged(
            &got,
            "journal read degraded: devices 1 missing; every entry to replay has a copy on a present device"
        ),
        "{:#?}",
        got.log
    );
    assert!(got.fsck_errors.is_empty(), "{:?}", got.fsck_errors);
}

/// One copy per seq, alternating: odd seqs on dev 1, even ones on dev 0.
fn two_devices_one_replica() -> [Ring; 2] {
    let mut rings = [Ring::new(0, vec![0, 1]), Ring::new(1, vec![0, 1])];
    for seq in 1..=10u64 {
        rings[(seq % 2) as usize].append(&entry(seq, 1));
    }
    rings
}

/// Rule 6: entries surviving only on a missing device fail the read with
/// `insufficient_devices`, naming the seqs and `-o degraded`.
#[test]
fn rule6_missing_copies_without_degraded_is_insufficient_devices() {
    let rings = two_devices_one_replica();
    let err = read_journal(&[rings[0].jdev()], &ReadOpts { missing: vec![1], ..opts() }).unwrap_err();
    assert_eq!(err.code(), ErrCode::InsufficientDevices);
    assert!(err.matches(ErrCode::Erofs));
    assert!(err.message().contains("journal entries 1-1, 3-3, 5-5, 7-7, 9-9 have no copy"), "{err}");
    assert!(err.message().contains("-o degraded"), "{err}");
}

/// Rule 6: with `-o degraded` the same journal reads, the absent entries treated as missing
/// (rule 5): logged and counted, the rest replayed.
#[test]
fn rule6_missing_copies_with_degraded_are_logged_missing() {
    let rings = two_devices_one_replica();
    let got =
        read_journal(&[rings[0].jdev()], &ReadOpts { missing: vec![1], degraded: true, ..opts() }).unwrap();
    assert_eq!(seqs(&got), vec![2, 4, 6, 8, 10]);
    assert_eq!(got.fsck_count(FsckErr::JournalEntriesMissing), 5);
    assert!(got.log.contains(&"journal entries 1-1 missing! (replaying 1-10)".to_string()), "{:#?}", got.log);
    assert!(logged(&got, "journal read degraded: devices 1 missing"), "{:#?}", got.log);
}

fn eio_on(inner: Arc<MemDevice>, range: std::ops::Range<u64>) -> SharedDevice {
    let dev = FaultyDevice::new(inner, 7);
    dev.add_rule(FaultRule {
        op: FaultOp::Read,
        range: Some(range),
        trigger: Trigger::Always,
        kind: FaultKind::Eio,
    });
    Arc::new(dev)
}

/// Rule 7: an I/O error reading a bucket on one device makes that copy bad (logged, counted);
/// the other device's copies serve and nothing is missing.
#[test]
fn rule7_io_error_on_one_device_other_copies_serve() {
    let mut r0 = Ring::new(0, vec![0, 1, 2]);
    let mut r1 = Ring::new(1, vec![0, 1, 2]);
    for seq in 1..=20 {
        r0.append(&entry(seq, 1));
        r1.append(&entry(seq, 1));
    }
    let mut d0 = r0.jdev();
    d0.dev = eio_on(r0.dev.clone(), BUCKET..2 * BUCKET);
    let got = read_journal(&[d0, r1.jdev()], &opts()).unwrap();
    assert_eq!(seqs(&got), (1..=20).collect::<Vec<_>>());
    assert!(logged(&got, "journal read error on dev 0 (mem0) bucket 1"), "{:#?}", got.log);
    assert_eq!(got.bad_copies, 1);
    for seq in 9..=16 {
        assert_eq!(ptrs_of(&got, seq).iter().map(|p| p.dev).collect::<Vec<_>>(), vec![1], "seq {seq}");
    }
    assert_eq!(ptrs_of(&got, 17).len(), 2);
    assert!(!logged(&got, "missing"), "{:#?}", got.log);
}

/// Rules 7 and 5: with no other copy, the unreadable bucket's entries are missing (after the full
/// re-read, which fails the same way and is not counted twice).
#[test]
fn rule7_io_error_with_no_other_copy_leaves_a_gap() {
    let mut r = Ring::new(0, vec![0, 1, 2]);
    for seq in 1..=20 {
        r.append(&entry(seq, 1));
    }
    let mut d = r.jdev();
    d.dev = eio_on(r.dev.clone(), BUCKET..2 * BUCKET);
    let got = read_journal(&[d], &opts()).unwrap();
    assert_eq!(seqs(&got), (1..=8).chain(17..=20).collect::<Vec<_>>());
    assert!(
        got.log.contains(&"journal entries 9-16 missing! (replaying 1-20)".to_string()),
        "{:#?}",
        got.log
    );
    assert_eq!(got.bad_copies, 1);
}

/// A block size that does not divide the bucket size is refused with a typed error naming the
/// device, not read with a wrong stride.
#[test]
fn bad_geometry_is_a_typed_error() {
    let r = Ring::new(5, vec![0]);
    let err = read_journal(&[r.jdev()], &ReadOpts { block_size: 3 * BLOCK, ..opts() }).unwrap_err();
    assert_eq!(err.code(), ErrCode::JournalReadErr);
    assert_eq!(err.context().dev, Some(5));
}

/// A journal laid out at random by the writer's rules.
struct Layout {
    ndev: usize,
    replicas: usize,
    rings: Vec<Ring>,
    /// Per device and ring position: the newest seq written there.
    bucket_seqs: Vec<Vec<u64>>,
    /// Every entry written, with where its copies went.
    written: Vec<(Jset, Vec<EntryPtr>)>,
}

impl Layout {
    /// Replicas across devices, rings that wrap (leaving stale tails), multi-block and no-flush
    /// entries; last_seq advanced as reclaim would, so a bucket is reused only once everything
    /// in it is older than last_seq.
    fn write(rng: &mut Rng) -> Layout {
        let ndev = rng.range(1..4) as usize;
        let replicas = rng.range(1..3).min(ndev as u64) as usize;
        let rings: Vec<Ring> = (0..ndev)
            .map(|d| {
                let mut buckets: Vec<u64> = (0..NBUCKETS).collect();
                rng.shuffle(&mut buckets);
                buckets.truncate(rng.range(4..9) as usize);
                Ring::new(d as u8 * 2, buckets)
            })
            .collect();
        let bucket_seqs = rings.iter().map(|r| vec![0; r.buckets.len()]).collect();
        let mut l = Layout { ndev, replicas, rings, bucket_seqs, written: Vec::new() };
        let mut last_seq = 1u64;
        for seq in 1..=rng.range(20..150) {
            let keys: Vec<Bkey> = (0..rng.range(0..12))
                .map(|i| {
                    Bkey::new(Bpos::new(seq, i, 0), KeyType::Set, vec![seq as u8; rng.range(0..120) as usize])
                })
                .collect();
            let flags = if seq > 1 && rng.chance(0.3) { JSET_NO_FLUSH } else { 0 };
            let entries = vec![JsetEntry::BtreeKeys { btree: BtreeId::Inodes, level: 0, keys: keys.into() }];
            let mut j = Jset { seq, last_seq: 0, flags, entries };
            let len = j.encode(MAGIC, BLOCK as usize).len() as u64;
            let mut devs: Vec<usize> = (0..ndev).collect();
            rng.shuffle(&mut devs);
            devs.truncate(replicas);
            devs.sort();
            last_seq = last_seq.max(seq.saturating_sub(rng.range(2..10))).max(1);
            for &d in &devs {
                let r = &l.rings[d];
                if r.off + len > r.bucket_size {
                    let next = (r.cur + 1) % r.buckets.len();
                    last_seq = last_seq.max(l.bucket_seqs[d][next] + 1);
                }
            }
            j.last_seq = last_seq;
            let mut ptrs = Vec::new();
            for &d in &devs {
                let at = l.rings[d].append(&j);
                l.bucket_seqs[d][l.rings[d].cur] = seq;
                ptrs.push(EntryPtr { dev: l.rings[d].idx, bucket: at / BUCKET, offset: at });
            }
            l.written.push((j, ptrs));
        }
        l
    }

    /// (last_seq, replay_end) the reader must find: the newest flush entry's.
    fn range(&self) -> (u64, u64) {
        let end = &self.written.iter().rev().find(|(j, _)| !j.no_flush()).unwrap().0;
        (end.last_seq, end.seq)
    }

    /// The entries to replay, with their pointers.
    fn want(&self) -> Vec<(Jset, Vec<EntryPtr>)> {
        let (last_seq, replay_end) = self.range();
        self.written.iter().filter(|(j, _)| (last_seq..=replay_end).contains(&j.seq)).cloned().collect()
    }

    fn read(&self) -> JournalRead {
        read(&self.rings.iter().collect::<Vec<_>>())
    }
}

fn have(got: &JournalRead) -> Vec<(Jset, Vec<EntryPtr>)> {
    got.entries.iter().map(|e| (e.jset.clone(), e.ptrs.clone())).collect()
}

/// A random journal laid out by the writer's rules reads back exactly: the entries of
/// last_seq..=replay_end with one pointer per copy written, each ring's head and bucket seqs
/// where the writer left them, and nothing logged as wrong.
#[test]
fn seeded_writer_layout_reads_back_exactly() {
    let mut wrapped_replicated = 0;
    for seed in 0..24u64 {
        let l = Layout::write(&mut Rng::new(seed));
        let got = l.read();
        let ctx = format!("seed {seed} (ndev {} replicas {}): {:#?}", l.ndev, l.replicas, got.log);
        let (last_seq, replay_end) = l.range();
        let newest = l.written.len() as u64;
        assert_eq!((got.last_seq, got.replay_end, got.newest_seq), (last_seq, replay_end, newest), "{ctx}");
        assert_eq!(have(&got), l.want(), "{ctx}");
        assert!(got.fsck_errors.is_empty(), "{ctx}");
        assert_eq!(got.bad_copies, 0, "{ctx}");
        assert!(!logged(&got, "re-reading"), "{ctx}");
        for (d, r) in l.rings.iter().enumerate() {
            let ring = &got.rings[d];
            assert_eq!(ring.bucket_seqs, l.bucket_seqs[d], "dev {d} {ctx}");
            if l.bucket_seqs[d].iter().any(|&s| s > 0) {
                assert_eq!((ring.head_idx, ring.head_end), (r.cur, r.off), "dev {d} {ctx}");
            }
        }
        wrapped_replicated += u32::from(l.replicas > 1 && l.rings.iter().any(|r| r.laps > 0));
    }
    // The layouts must include what the rules are about, not only short unwrapped journals.
    assert!(wrapped_replicated >= 4, "only {wrapped_replicated} seeds wrapped a ring with replicas");
}

/// With two replicas, damaging one copy of random entries in the replay range loses nothing:
/// every entry is read from its other copy, each damaged copy drops out of the pointers, and
/// nothing is missing or re-read. A damaged copy is counted once as damage when a later flush
/// entry was written whole (then it was durable before); one of the newest entries, with no such
/// entry after it, is what a crash during its write leaves, and is not counted.
#[test]
fn seeded_one_damaged_copy_per_entry_is_survived() {
    let mut checked = 0;
    for seed in 0..60u64 {
        let mut rng = Rng::new(seed);
        let l = Layout::write(&mut rng);
        if l.replicas < 2 {
            continue;
        }
        let mut want = l.want();
        let mut damaged = Vec::new();
        for (j, ptrs) in &mut want {
            if rng.chance(0.3) {
                let victim = ptrs.remove(rng.below(ptrs.len() as u64) as usize);
                let ring = l.rings.iter().find(|r| r.idx == victim.dev).unwrap();
                corrupt(ring.dev.as_ref(), victim.offset);
                damaged.push(j.seq);
            }
        }
        // Damage only where a flush entry after it kept a good copy.
        let counted = damaged
            .iter()
            .filter(|&&seq| want.iter().any(|(j, ptrs)| j.seq > seq && !j.no_flush() && !ptrs.is_empty()))
            .count();
        let got = l.read();
        let ctx = format!("seed {seed} ({} damaged, {counted} counted): {:#?}", damaged.len(), got.log);
        assert_eq!(have(&got), want, "{ctx}");
        assert_eq!(got.bad_copies, damaged.len() as u64, "{ctx}");
        assert_eq!(got.fsck_count(FsckErr::JournalEntryCopyBad), counted as u64, "{ctx}");
        assert!(got.fsck_errors.iter().all(|(e, _)| *e == FsckErr::JournalEntryCopyBad), "{ctx}");
        assert!(!logged(&got, "re-reading"), "{ctx}");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} seeds had two replicas");
}

/// Rule 3 across waves: devices are read a wave at a time, and a later wave recognises copies of
/// entries already kept by their length and checksum instead of decoding them. A copy there that
/// differs from the kept one must still count `journal_entry_replicas_data_mismatch`, and an
/// identical one must still add its pointer.
#[test]
fn rule3_mismatch_and_merge_across_waves() {
    let n = std::thread::available_parallelism().map_or(1, |p| p.get()) + 1;
    let mut rings: Vec<Ring> = (0..n).map(|d| Ring::new(d as u8, vec![d as u64])).collect();
    let last = n - 1;
    for seq in 1..=3 {
        rings[0].append(&entry(seq, 1));
        let mut j = entry(seq, 1);
        if seq == 2 {
            j.entries.push(JsetEntry::Blacklist { start: 100, end: 101 });
        }
        rings[last].append(&j);
    }
    let got = read(&rings.iter().collect::<Vec<_>>());
    assert_eq!(got.fsck_count(FsckErr::JournalEntryReplicasDataMismatch), 1, "{:#?}", got.log);
    assert_eq!(got.entries[1].jset, entry(2, 1));
    assert!(logged(&got, "keeping dev 0's copy"), "{:#?}", got.log);
    for seq in [1, 3] {
        let devs: Vec<u8> = ptrs_of(&got, seq).iter().map(|p| p.dev).collect();
        assert_eq!(devs, vec![0, last as u8], "seq {seq}");
    }
}

/// What compaction must keep of `entries` (in seq order): per (btree, level, pos) the last
/// btree key written, with its seq and its index among its jset's btree keys; and how many btree
/// keys there were. Built by hand, as a reference for `read_journal_for_replay`.
type KeyModel = BTreeMap<(BtreeId, u8, Bpos), (Bkey, u64, u32)>;

fn reference_keys(entries: &[journal::ReadEntry]) -> (KeyModel, usize) {
    let mut model = KeyModel::new();
    let mut read = 0;
    for e in entries {
        let mut journal_offset = 0u32;
        for entry in &e.jset.entries {
            let JsetEntry::BtreeKeys { btree, level, keys } = entry else { continue };
            for k in keys.iter() {
                model.insert((*btree, *level, k.pos), (k.to_key(), e.jset.seq, journal_offset));
                journal_offset += 1;
                read += 1;
            }
        }
    }
    (model, read)
}

fn key_row(k: JournalKey<'_>) -> ((BtreeId, u8, Bpos), (Bkey, u64, u32)) {
    ((k.btree, k.level, k.key.pos), (k.key.to_key(), k.seq, k.journal_offset))
}

/// `read_journal_for_replay` (keys moved out as entries are merged, later replicas not decoded,
/// sorted and compacted by the read's own replay decision) finds the same replay range, log,
/// entries (less their keys) and journal keys as `read_journal`, whose entries give the keys a
/// reference built by hand, on random layouts of one to three devices.
#[test]
fn seeded_read_journal_for_replay_matches_plain_read() {
    for seed in 0..24u64 {
        let l = Layout::write(&mut Rng::new(seed));
        let devs: Vec<JournalDevice> = l.rings.iter().map(|r| r.jdev()).collect();
        let plain = read_journal(&devs, &opts()).unwrap();
        let got = read_journal_for_replay(&devs, &opts()).unwrap();
        let sunk = &got.read;
        let ctx = format!("seed {seed} (ndev {} replicas {})", l.ndev, l.replicas);
        assert_eq!(sunk.replay(), plain.replay(), "{ctx}");
        assert_eq!(sunk.log, plain.log, "{ctx}");
        let strip = |j: &Jset| {
            let mut j = j.clone();
            for e in &mut j.entries {
                if let JsetEntry::BtreeKeys { keys, .. } = e {
                    *keys = Default::default();
                }
            }
            j
        };
        let want: Vec<_> = plain.entries.iter().map(|e| (strip(&e.jset), e.ptrs.clone())).collect();
        let have: Vec<_> = sunk.entries.iter().map(|e| (e.jset.clone(), e.ptrs.clone())).collect();
        assert_eq!(have, want, "{ctx}");
        let (want_keys, want_read) = reference_keys(&plain.entries);
        assert!(want_read > 0, "{ctx}");
        assert_eq!(got.keys_read, want_read, "{ctx}");
        let have_keys: Vec<_> = got.keys.iter().map(key_row).collect();
        assert_eq!(have_keys, want_keys.into_iter().collect::<Vec<_>>(), "{ctx}");
        assert!(got.keys.iter().all(|k| !k.overwritten), "{ctx}");
    }
}

/// Only the seqs the replay decision replays give keys: those of a blacklisted seq inside the
/// range, and of no-flush entries past the replay end, are read but never sorted in.
#[test]
fn read_journal_for_replay_takes_only_replayed_seqs() {
    let mut r = Ring::new(0, vec![0, 1, 2, 3]);
    for seq in 1..=3 {
        r.append(&entry(seq, 1));
    }
    let mut j = entry(4, 1);
    j.entries.push(JsetEntry::Blacklist { start: 2, end: 3 });
    r.append(&j);
    r.append(&no_flush(5, 1));
    let got = read_journal_for_replay(&[r.jdev()], &opts()).unwrap();
    let replay = got.read.replay();
    assert_eq!((replay.last_seq, replay.replay_end, replay.newest_seq), (1, 4, 5));
    let seqs: Vec<u64> = got.keys.iter().map(|k| k.seq).collect();
    assert_eq!(seqs, vec![1, 3, 4]);
    assert_eq!(got.keys_read, 3);
    assert_eq!(replay.blacklist_after(), (5, 6 + journal::BLACKLIST_AHEAD));
}

/// Regression: recovery's read takes an entry's keys by reading the kept copy a second time.
/// When that read fails (here a transient EIO on dev 0's second read of the block), the keys
/// come from the other good copy, as a plain read would have used it: the mount does not fail.
#[test]
fn key_sink_survives_a_failed_reread_of_the_kept_copy() {
    let inner = mem("mem0");
    let faulty = Arc::new(FaultyDevice::new(inner.clone(), 7));
    let other = mem("mem1");
    for seq in 1..=3u64 {
        put(&*inner, (seq - 1) * BLOCK, &entry(seq, 1));
        put(&*other, (seq - 1) * BLOCK, &entry(seq, 1));
    }
    faulty.add_rule(FaultRule {
        op: FaultOp::Read,
        range: Some(0..BLOCK),
        trigger: Trigger::Nth { skip: 1, count: 1 },
        kind: FaultKind::Eio,
    });
    let devs = vec![
        JournalDevice { dev_idx: 0, dev: faulty, bucket_size: BUCKET, buckets: (0..NBUCKETS).collect() },
        JournalDevice { dev_idx: 1, dev: other, bucket_size: BUCKET, buckets: (0..NBUCKETS).collect() },
    ];
    let got = read_journal_for_replay(&devs, &opts()).unwrap();
    assert_eq!((got.read.last_seq, got.read.replay_end), (1, 3));
    assert_eq!((got.keys_read, got.keys.len()), (3, 3));
}

/// Copies lost from entries to replay are counted as `journal_entry_copy_bad`: a bad copy, or
/// an entry with fewer good copies than a later flush entry has (written after every earlier
/// write was durable). The newest entry short of a copy (a crash cut its write) is not.
#[test]
fn lost_copies_of_entries_to_replay_are_counted() {
    let mut rings = [Ring::new(0, vec![0, 1]), Ring::new(1, vec![0, 1])];
    let mut at = Vec::new();
    for seq in 1..=5u64 {
        at.push(rings[0].append(&entry(seq, 1)));
        if seq < 5 {
            rings[1].append(&entry(seq, 1));
        }
    }
    let got = read(&[&rings[0], &rings[1]]);
    assert_eq!(got.fsck_count(FsckErr::JournalEntryCopyBad), 0, "the newest entry's missing copy is a crash");

    // Entry 2 loses its copy on dev 0: one byte flipped.
    let mut b = [0u8];
    rings[0].dev.read_at(&mut b, at[1] + 40).unwrap();
    rings[0].dev.write_at(&[b[0] ^ 0x40], at[1] + 40).unwrap();
    let got = read(&[&rings[0], &rings[1]]);
    assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5]);
    assert_eq!(got.fsck_count(FsckErr::JournalEntryCopyBad), 1, "{:#?}", got.log);
    assert!(logged(&got, "journal entry 2: copy on dev 0"), "{:#?}", got.log);
}
