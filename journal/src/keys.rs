//! Journal keys (`bch2_journal_keys_sort` and the journal-key overlay): the `btree_keys` of the
//! entries to replay, sorted by (btree, level, pos) and compacted to the newest per position.
//!
//! Until replay finishes every btree iterator sees these keys over the btree's leaves, the
//! journal winning at equal positions; a deleted key or whiteout hides the btree key under it.
//! A commit that writes a position marks the journal key there overwritten, and the overlay
//! stops showing it.
//!
//! Recovery may hold tens of millions of keys, so they are sorted as flat 56-byte records
//! ([`SortKey`], small values inline) in one vector built at its final size, in place with a
//! total order (no stable-sort buffer; the halves around the median on their own threads),
//! compacted in place, and kept as they are: a key is read as a [`JournalKey`] view of its
//! record, found by bisection, and copied out only when replay hands it to the btree (a heap
//! value per key would double the memory). Overwritten keys are skipped through a
//! hierarchical bitset of live keys ([`LiveSet`]) rather than one by one: the sorted replay pass
//! marks keys overwritten in order, and a lookup from below that run must not walk millions of
//! dead keys.

use std::cmp::Ordering;

use fs_core::bkey::{Bkey, KeyRef, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::iter::KeyOverlay;
use fs_core::error::Result;

use crate::format::for_each_btree_key;

/// One key to replay, as [`JournalKeys`] shows it (its value borrowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalKey<'a> {
    pub btree: BtreeId,
    pub level: u8,
    pub key: KeyRef<'a>,
    /// The jset the key came from.
    pub seq: u64,
    /// The key's index among the keys of its jset: two updates to one position inside one jset
    /// are ordered by it (bcachefs's `journal_offset`).
    pub journal_offset: u32,
    /// A commit wrote this position after the journal key: replay and the overlay skip it.
    pub overwritten: bool,
}

/// The sorted, compacted journal keys: at most one per (btree, level, pos), kept as the
/// records they were sorted as (56 bytes, small values inline).
#[derive(Clone, Debug, Default)]
pub struct JournalKeys {
    recs: Vec<SortKey>,
    /// Values too big to travel inline, indexed from their records.
    boxed: Vec<Box<[u8]>>,
    /// Bit `i` set while `recs[i]` is not overwritten.
    live: LiveSet,
}

impl JournalKeys {
    /// From the keys a journal read put in `sink`, those of the jsets `replays` keeps: sorted by
    /// (btree, level, pos), ties oldest seq first (then by place in the jset), then only the
    /// newest per position kept. Returns the keys and the number taken before compaction (for
    /// [`JournalKeys::summary`]). [`crate::read::read_journal_for_replay`] is the one caller, with
    /// the read's replay decision.
    pub(crate) fn from_sink(sink: KeySink, replays: impl Fn(u64) -> bool) -> (JournalKeys, usize) {
        let mut sk = sink.0;
        sk.recs.retain(|r| replays(r.seq));
        JournalKeys::sort_and_compact(sk)
    }

    fn sort_and_compact(sk: SortKeys) -> (JournalKeys, usize) {
        let SortKeys { mut recs, boxed } = sk;
        let read = recs.len();
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        sort_keys(&mut recs, threads);
        // dedup_by keeps the first of a run and hands it over as `kept`; swapping in the later
        // key each time leaves the newest in the kept slot.
        recs.dedup_by(|later, kept| {
            let same = later.cmp_pos(kept) == Ordering::Equal;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        // Give back what compaction freed (a large vector shrinks in place).
        recs.shrink_to_fit();
        let live = LiveSet::full(recs.len());
        (JournalKeys { recs, boxed, live }, read)
    }

    /// The recovery log line: `Journal keys: {read} read, {kept} after sorting and compacting`.
    pub fn summary(read: usize, kept: usize) -> String {
        format!("Journal keys: {read} read, {kept} after sorting and compacting")
    }

    pub fn len(&self) -> usize {
        self.recs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    fn view(&self, i: usize) -> Option<JournalKey<'_>> {
        let r = self.recs.get(i)?;
        let val = if r.val_len == VAL_BOXED {
            let index = r.val.first_chunk::<8>().map_or(0, |b| u64::from_le_bytes(*b));
            self.boxed.get(index as usize).map_or(&[][..], |b| &b[..])
        } else {
            r.val.get(..usize::from(r.val_len)).unwrap_or_default()
        };
        Some(JournalKey {
            btree: r.btree,
            level: r.level,
            key: KeyRef { pos: Bpos::new(r.inode, r.offset, r.snapshot), ty: r.ty, size: r.size, val },
            seq: r.seq,
            journal_offset: r.journal_offset,
            overwritten: !self.live.contains(i),
        })
    }

    /// Every key in sorted order, overwritten ones included (check `overwritten`): the replay's
    /// sorted pass.
    pub fn iter(&self) -> impl Iterator<Item = JournalKey<'_>> + '_ {
        (0..self.recs.len()).filter_map(|i| self.view(i))
    }

    /// The key at exactly this position, overwritten or not.
    pub fn get(&self, btree: BtreeId, level: u8, pos: Bpos) -> Option<JournalKey<'_>> {
        self.index_of(btree, level, pos).and_then(|i| self.view(i))
    }

    /// The key at index `i` of the sorted order (the `i`-th that [`JournalKeys::iter`] yields),
    /// overwritten or not.
    pub fn at(&self, i: usize) -> Option<JournalKey<'_>> {
        self.view(i)
    }

    /// A commit wrote `pos` after the journal key: the overlay must stop showing the journal key
    /// there. True if a not yet overwritten key was there.
    pub fn mark_overwritten(&mut self, btree: BtreeId, level: u8, pos: Bpos) -> bool {
        self.index_of(btree, level, pos).is_some_and(|i| self.mark_overwritten_at(i))
    }

    /// [`JournalKeys::mark_overwritten`] for the key at index `i`, for a caller that walks the
    /// keys in order (the replay) and so need not search for them. True if the key was live.
    pub fn mark_overwritten_at(&mut self, i: usize) -> bool {
        if i >= self.recs.len() || !self.live.contains(i) {
            return false;
        }
        self.live.clear(i);
        true
    }

    /// The index of the first key at or after (btree, level, pos).
    fn lower_bound(&self, btree: BtreeId, level: u8, pos: Bpos) -> usize {
        self.recs.partition_point(|r| r.cmp_to(btree, level, pos) == Ordering::Less)
    }

    fn index_of(&self, btree: BtreeId, level: u8, pos: Bpos) -> Option<usize> {
        let i = self.lower_bound(btree, level, pos);
        self.recs.get(i).filter(|r| r.cmp_to(btree, level, pos) == Ordering::Equal).map(|_| i)
    }

    /// The live leaf key at index `i`, if it belongs to `btree`.
    fn leaf_at(&self, btree: BtreeId, i: usize) -> Option<Bkey> {
        self.view(i).filter(|k| k.btree == btree && k.level == 0).map(|k| k.key.to_key())
    }
}

impl KeyOverlay for JournalKeys {
    /// Leaf keys only; overwritten keys skipped; deleted keys and whiteouts returned.
    fn first_from(&self, btree: BtreeId, pos: Bpos) -> Option<Bkey> {
        let i = self.live.next_set(self.lower_bound(btree, 0, pos))?;
        self.leaf_at(btree, i)
    }

    fn range<'a>(
        &'a self,
        btree: BtreeId,
        from: Bpos,
        to: Bpos,
    ) -> Box<dyn Iterator<Item = KeyRef<'a>> + 'a> {
        let start = self.lower_bound(btree, 0, from);
        Box::new(
            (start..self.recs.len())
                .map_while(move |i| {
                    let r = self.recs.get(i)?;
                    (r.cmp_to(btree, 0, to) != Ordering::Greater).then_some(i)
                })
                .filter(|&i| self.live.contains(i))
                .filter_map(|i| self.view(i).map(|k| k.key)),
        )
    }

    fn last_until(&self, btree: BtreeId, pos: Bpos) -> Option<Bkey> {
        let end = self.recs.partition_point(|r| r.cmp_to(btree, 0, pos) != Ordering::Greater);
        let i = self.live.prev_set(end.checked_sub(1)?)?;
        self.leaf_at(btree, i)
    }
}

/// Journal keys collected during the journal read, ready to sort: each kept entry's
/// `btree_keys` move in as the entry is merged.
#[derive(Default)]
pub(crate) struct KeySink(SortKeys);

impl std::fmt::Debug for KeySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySink({} keys)", self.len())
    }
}

impl KeySink {
    /// Takes the `btree_keys` of jset `seq` from its encoding in `buf` (magic `magic`, length
    /// `bytes`, checksum `csum`); false, taking nothing, if `buf` does not hold that entry, and
    /// an error, taking nothing, if it is invalid.
    pub(crate) fn take_from_bytes(
        &mut self,
        buf: &[u8],
        magic: u64,
        seq: u64,
        bytes: u32,
        csum: u32,
    ) -> Result<bool> {
        let start = self.0.recs.len();
        let mut journal_offset = 0u32;
        let sk = &mut self.0;
        let found = for_each_btree_key(buf, magic, seq, bytes, csum, |btree, level, key| {
            sk.push(btree, level, seq, journal_offset, key);
            journal_offset = journal_offset.saturating_add(1);
        });
        if !matches!(found, Ok(true)) {
            self.0.recs.truncate(start);
        }
        found
    }

    /// Keys taken so far (all seqs).
    pub(crate) fn len(&self) -> usize {
        self.0.recs.len()
    }
}

/// Values up to this many bytes travel inside the sort records.
const INLINE_VAL_BYTES: usize = 16;
/// `SortKey::val_len` of a value too big to travel inline: `val` holds its index in
/// [`SortKeys::boxed`] instead.
const VAL_BOXED: u8 = u8::MAX;

/// A journal key while the keys are sorted and compacted: [`JournalKey`] flattened to 56 bytes,
/// with a small value inside the record. Inline, the value is read in key order along with the
/// record after the sort; boxed, it would be wherever the journal read allocated it, in
/// journal order, and reading each in key order (the replay, the node writes after it) would
/// cost a cache and TLB miss per key. The journal keys built after the sort allocate their
/// values in key order.
#[derive(Clone, Debug)]
struct SortKey {
    inode: u64,
    offset: u64,
    seq: u64,
    snapshot: u32,
    journal_offset: u32,
    size: u32,
    btree: BtreeId,
    level: u8,
    ty: KeyType,
    /// Bytes of `val` used, or [`VAL_BOXED`].
    val_len: u8,
    val: [u8; INLINE_VAL_BYTES],
}

impl SortKey {
    fn cmp_to(&self, btree: BtreeId, level: u8, pos: Bpos) -> Ordering {
        (self.btree, self.level, self.inode, self.offset, self.snapshot).cmp(&(
            btree,
            level,
            pos.inode,
            pos.offset,
            pos.snapshot,
        ))
    }

    fn cmp_pos(&self, other: &SortKey) -> Ordering {
        (self.btree, self.level, self.inode, self.offset, self.snapshot).cmp(&(
            other.btree,
            other.level,
            other.inode,
            other.offset,
            other.snapshot,
        ))
    }

    /// Journal order: (btree, level, pos), then oldest first. Total: no two keys of a journal
    /// have the same seq and journal_offset.
    fn cmp_journal_order(&self, other: &SortKey) -> Ordering {
        self.cmp_pos(other)
            .then(self.seq.cmp(&other.seq))
            .then(self.journal_offset.cmp(&other.journal_offset))
    }
}

/// The records being sorted, and the values too big to travel inline.
#[derive(Default)]
struct SortKeys {
    recs: Vec<SortKey>,
    boxed: Vec<Box<[u8]>>,
}

impl SortKeys {
    fn push(&mut self, btree: BtreeId, level: u8, seq: u64, journal_offset: u32, key: KeyRef<'_>) {
        let KeyRef { pos, ty, size, val } = key;
        let mut inline = [0u8; INLINE_VAL_BYTES];
        let val_len = match inline.get_mut(..val.len()) {
            Some(head) => {
                head.copy_from_slice(val);
                val.len() as u8
            }
            None => {
                if let Some(index) = inline.first_chunk_mut::<8>() {
                    *index = (self.boxed.len() as u64).to_le_bytes();
                }
                self.boxed.push(val.into());
                VAL_BOXED
            }
        };
        self.recs.push(SortKey {
            inode: pos.inode,
            offset: pos.offset,
            seq,
            snapshot: pos.snapshot,
            journal_offset,
            size,
            btree,
            level,
            ty,
            val_len,
            val: inline,
        });
    }
}

/// Below this many keys a sort stays on one thread: a second would not pay for its start.
const PARALLEL_SORT_MIN_KEYS: usize = 1 << 16;
/// Halvings at most: up to 2^3 threads.
const PARALLEL_SORT_MAX_DEPTH: u32 = 3;

/// Sorts into journal order on up to `threads` threads, in place: split around the median
/// (`select_nth_unstable`, linear), then sort the two halves at once, recursively. The order is
/// total (no two keys compare equal), so the result is the same whatever the split.
fn sort_keys(keys: &mut [SortKey], threads: usize) {
    let depth = threads.max(1).ilog2().min(PARALLEL_SORT_MAX_DEPTH);
    sort_split(keys, depth);
}

fn sort_split(keys: &mut [SortKey], depth: u32) {
    if depth == 0 || keys.len() < PARALLEL_SORT_MIN_KEYS {
        keys.sort_unstable_by(SortKey::cmp_journal_order);
        return;
    }
    let mid = keys.len() / 2;
    keys.select_nth_unstable_by(mid, SortKey::cmp_journal_order);
    let (left, right) = keys.split_at_mut(mid);
    let right_sorted = std::thread::scope(|s| {
        let spawned = std::thread::Builder::new()
            .name("journal-keys-sort".into())
            .spawn_scoped(s, || sort_split(&mut *right, depth - 1));
        sort_split(left, depth - 1);
        spawned.is_ok_and(|h| h.join().is_ok())
    });
    // A thread that could not start, or died (only a panicking comparison could do that; the
    // slice is then still a permutation), leaves its half to this thread.
    if !right_sorted {
        sort_split(right, 0);
    }
}

const WORD_BITS: usize = 64;

/// A set of indexes `0..len` with next/previous-member queries in O(log64 len): level 0 has a bit
/// per index, and each level above a bit per word of the level below, set while that word is
/// not zero. 30M keys take under 4 MiB.
#[derive(Clone, Debug, Default)]
struct LiveSet {
    levels: Vec<Vec<u64>>,
}

/// Enough levels for any `usize` length: 64^11 > 2^64.
const MAX_LEVELS: usize = 12;

impl LiveSet {
    /// Every index in `0..len` present.
    fn full(len: usize) -> LiveSet {
        let mut levels = Vec::new();
        let mut bits = len;
        for _ in 0..MAX_LEVELS {
            let words = bits.div_ceil(WORD_BITS);
            let mut level = vec![u64::MAX; words];
            if let Some(last) = level.last_mut()
                && bits % WORD_BITS != 0
            {
                *last = (1u64 << (bits % WORD_BITS)) - 1;
            }
            levels.push(level);
            if words <= 1 {
                break;
            }
            bits = words;
        }
        LiveSet { levels }
    }

    fn contains(&self, i: usize) -> bool {
        self.levels
            .first()
            .and_then(|words| words.get(i / WORD_BITS))
            .is_some_and(|w| w & (1u64 << (i % WORD_BITS)) != 0)
    }

    fn clear(&mut self, i: usize) {
        let mut idx = i;
        for level in &mut self.levels {
            let Some(word) = level.get_mut(idx / WORD_BITS) else { return };
            *word &= !(1u64 << (idx % WORD_BITS));
            if *word != 0 {
                return;
            }
            idx /= WORD_BITS;
        }
    }

    /// The smallest member `>= from`.
    fn next_set(&self, from: usize) -> Option<usize> {
        let mut pos = from;
        let mut found_at = None;
        // Climb until a word has a member at or after `pos`; above level 0, `pos` counts words
        // of the level below.
        for (level, words) in self.levels.iter().enumerate() {
            let w = pos / WORD_BITS;
            let word = *words.get(w)?;
            let masked = word & (u64::MAX << (pos % WORD_BITS));
            if masked != 0 {
                pos = w * WORD_BITS + masked.trailing_zeros() as usize;
                found_at = Some(level);
                break;
            }
            pos = w + 1;
        }
        self.descend(found_at?, pos, |word| word.trailing_zeros() as usize)
    }

    /// The largest member `<= from`.
    fn prev_set(&self, from: usize) -> Option<usize> {
        let len_bits = self.levels.first().map_or(0, |l| l.len() * WORD_BITS);
        let mut pos = from.min(len_bits.checked_sub(1)?);
        let mut found_at = None;
        for (level, words) in self.levels.iter().enumerate() {
            let w = pos / WORD_BITS;
            let word = *words.get(w)?;
            let masked = word & (u64::MAX >> (WORD_BITS - 1 - pos % WORD_BITS));
            if masked != 0 {
                pos = w * WORD_BITS + (WORD_BITS - 1 - masked.leading_zeros() as usize);
                found_at = Some(level);
                break;
            }
            pos = w.checked_sub(1)?;
        }
        self.descend(found_at?, pos, |word| WORD_BITS - 1 - word.leading_zeros() as usize)
    }

    /// From member `pos` of `level`, down to level 0 picking in each word the bit `pick` names.
    fn descend(&self, level: usize, mut pos: usize, pick: impl Fn(u64) -> usize) -> Option<usize> {
        for below in (0..level).rev() {
            let word = *self.levels.get(below)?.get(pos)?;
            if word == 0 {
                // A summary bit over an empty word: the levels disagree. Not reachable through
                // `clear`, which updates every level it empties.
                return None;
            }
            pos = pos * WORD_BITS + pick(word);
        }
        Some(pos)
    }
}

#[cfg(test)]
mod tests {
    use fs_core::rng::Rng;

    use super::*;

    /// The sort moves every record several times: it must stay as small as the comment on
    /// `SortKey` says.
    #[test]
    fn sort_key_is_56_bytes() {
        assert_eq!(std::mem::size_of::<SortKey>(), 56);
    }

    /// Values too big to travel inline come back from the side vector, each to its own key.
    #[test]
    fn boxed_values_survive_sort_and_compaction() {
        let big = |tag: u8| Bkey::new(Bpos::new(1, u64::from(tag), 0), KeyType::Set, vec![tag; 40]);
        let small = |tag: u8| Bkey::new(Bpos::new(1, u64::from(tag), 0), KeyType::Set, vec![tag; 3]);
        let mut sk = SortKeys::default();
        for (i, k) in [big(9), small(2), big(5), big(2)].into_iter().enumerate() {
            sk.push(BtreeId::Extents, 0, 1, i as u32, k.as_ref());
        }
        let (keys, read) = JournalKeys::sort_and_compact(sk);
        assert_eq!(read, 4);
        let got: Vec<Bkey> = keys.iter().map(|k| k.key.to_key()).collect();
        assert_eq!(got, vec![big(2), big(5), big(9)]);
    }

    /// next_set and prev_set agree with a plain bitmap across word and level boundaries, as
    /// members are cleared in random order.
    #[test]
    fn live_set_matches_bitmap() {
        for seed in 0..6u64 {
            let mut rng = Rng::new(seed);
            let len = [0usize, 1, 63, 64, 65, 4096, 4097, 70_000][seed as usize % 8] + rng.below(3) as usize;
            let mut set = LiveSet::full(len);
            let mut model = vec![true; len];
            for round in 0..(len + 10).min(3000) {
                if len > 0 {
                    let i = rng.below(len as u64) as usize;
                    set.clear(i);
                    model[i] = false;
                }
                let q = rng.below(len as u64 + 70) as usize;
                let next = (q..len).find(|&i| model[i]);
                let prev = (0..=q.min(len.saturating_sub(1))).rev().find(|&i| len > 0 && model[i]);
                assert_eq!(set.next_set(q), next, "seed {seed} len {len} round {round} next({q})");
                assert_eq!(set.prev_set(q), prev, "seed {seed} len {len} round {round} prev({q})");
            }
        }
    }
}
