//! Journal keys (`bch2_journal_keys_sort` and the journal-key overlay): the `btree_keys` of the
//! entries to replay, sorted by (btree, level, pos) and compacted to the newest per position.
//!
//! Until replay finishes every btree iterator sees these keys over the btree's leaves, the
//! journal winning at equal positions; a deleted key or whiteout hides the btree key under it.
//! A commit that writes a position marks the journal key there overwritten, and the overlay
//! stops showing it.
//!
//! Recovery may hold tens of millions of keys, so the vector is built once at its final size,
//! sorted in place with a total order (no stable-sort buffer), compacted in place, and searched
//! by bisection. Overwritten keys are skipped through a hierarchical bitset of live keys
//! ([`LiveSet`]) rather than one by one: the sorted replay pass marks keys overwritten in order,
//! and a lookup from below that run must not walk millions of dead keys.

use std::cmp::Ordering;

use fs_core::bkey::Bkey;
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::iter::KeyOverlay;

use crate::format::JsetEntry;
use crate::read::ReadEntry;

/// One key to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalKey {
    pub btree: BtreeId,
    pub level: u8,
    pub key: Bkey,
    /// The jset the key came from.
    pub seq: u64,
    /// The key's index among the keys of its jset: two updates to one position inside one jset
    /// are ordered by it (bcachefs's `journal_offset`).
    pub journal_offset: u32,
    /// A commit wrote this position after the journal key: replay and the overlay skip it.
    pub overwritten: bool,
}

impl JournalKey {
    fn cmp_journal_order(&self, other: &JournalKey) -> Ordering {
        self.cmp_pos(other.btree, other.level, other.key.pos)
            .then(self.seq.cmp(&other.seq))
            .then(self.journal_offset.cmp(&other.journal_offset))
    }

    fn cmp_pos(&self, btree: BtreeId, level: u8, pos: Bpos) -> Ordering {
        self.btree.cmp(&btree).then(self.level.cmp(&level)).then(self.key.pos.cmp(&pos))
    }
}

/// The sorted, compacted journal keys: at most one per (btree, level, pos).
#[derive(Clone, Debug, Default)]
pub struct JournalKeys {
    keys: Vec<JournalKey>,
    /// Bit `i` set while `keys[i]` is not overwritten.
    live: LiveSet,
}

impl JournalKeys {
    /// From the entries' `btree_keys` entries: sorted by (btree, level, pos), ties oldest seq
    /// first, then only the newest per position kept. Returns the keys and the number read (for
    /// [`JournalKeys::summary`]). Clones every key; [`JournalKeys::from_entries_owned`] does not.
    pub fn from_entries(entries: &[ReadEntry]) -> (JournalKeys, usize) {
        let mut keys = Vec::with_capacity(count_keys(entries));
        for e in entries {
            push_keys(&mut keys, e.jset.seq, e.jset.entries.iter().cloned());
        }
        JournalKeys::sort_and_compact(keys)
    }

    /// As [`JournalKeys::from_entries`], moving the keys out of the entries.
    pub fn from_entries_owned(entries: Vec<ReadEntry>) -> (JournalKeys, usize) {
        let mut keys = Vec::with_capacity(count_keys(&entries));
        for e in entries {
            push_keys(&mut keys, e.jset.seq, e.jset.entries.into_iter());
        }
        JournalKeys::sort_and_compact(keys)
    }

    fn sort_and_compact(mut keys: Vec<JournalKey>) -> (JournalKeys, usize) {
        let read = keys.len();
        // (btree, level, pos, seq, journal_offset) is unique per key, so an unstable sort is
        // deterministic and needs no buffer.
        keys.sort_unstable_by(JournalKey::cmp_journal_order);
        // dedup_by keeps the first of a run and hands it over as `kept`; swapping in the later
        // key each time leaves the newest in the kept slot.
        keys.dedup_by(|later, kept| {
            let same = later.cmp_pos(kept.btree, kept.level, kept.key.pos) == Ordering::Equal;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        keys.shrink_to_fit();
        let live = LiveSet::full(keys.len());
        (JournalKeys { keys, live }, read)
    }

    /// The recovery log line: `Journal keys: {read} read, {kept} after sorting and compacting`.
    pub fn summary(read: usize, kept: usize) -> String {
        format!("Journal keys: {read} read, {kept} after sorting and compacting")
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every key in sorted order, overwritten ones included (check `overwritten`): the replay's
    /// sorted pass.
    pub fn iter(&self) -> impl Iterator<Item = &JournalKey> {
        self.keys.iter()
    }

    /// The key at exactly this position, overwritten or not.
    pub fn get(&self, btree: BtreeId, level: u8, pos: Bpos) -> Option<&JournalKey> {
        self.index_of(btree, level, pos).and_then(|i| self.keys.get(i))
    }

    /// A commit wrote `pos` after the journal key: the overlay must stop showing the journal key
    /// there. True if a not yet overwritten key was there.
    pub fn mark_overwritten(&mut self, btree: BtreeId, level: u8, pos: Bpos) -> bool {
        let Some(i) = self.index_of(btree, level, pos) else { return false };
        match self.keys.get_mut(i) {
            Some(k) if !k.overwritten => {
                k.overwritten = true;
                self.live.clear(i);
                true
            }
            _ => false,
        }
    }

    /// The index of the first key at or after (btree, level, pos).
    fn lower_bound(&self, btree: BtreeId, level: u8, pos: Bpos) -> usize {
        self.keys.partition_point(|k| k.cmp_pos(btree, level, pos) == Ordering::Less)
    }

    fn index_of(&self, btree: BtreeId, level: u8, pos: Bpos) -> Option<usize> {
        let i = self.lower_bound(btree, level, pos);
        self.keys.get(i).filter(|k| k.cmp_pos(btree, level, pos) == Ordering::Equal).map(|_| i)
    }

    /// The live leaf key at index `i`, if it belongs to `btree`.
    fn leaf_at(&self, btree: BtreeId, i: usize) -> Option<Bkey> {
        self.keys.get(i).filter(|k| k.btree == btree && k.level == 0).map(|k| k.key.clone())
    }
}

impl KeyOverlay for JournalKeys {
    /// Leaf keys only; overwritten keys skipped; deleted keys and whiteouts returned.
    fn first_from(&self, btree: BtreeId, pos: Bpos) -> Option<Bkey> {
        let i = self.live.next_set(self.lower_bound(btree, 0, pos))?;
        self.leaf_at(btree, i)
    }

    fn last_until(&self, btree: BtreeId, pos: Bpos) -> Option<Bkey> {
        let end = self.keys.partition_point(|k| k.cmp_pos(btree, 0, pos) != Ordering::Greater);
        let i = self.live.prev_set(end.checked_sub(1)?)?;
        self.leaf_at(btree, i)
    }
}

fn count_keys(entries: &[ReadEntry]) -> usize {
    entries
        .iter()
        .flat_map(|e| &e.jset.entries)
        .map(|e| match e {
            JsetEntry::BtreeKeys { keys, .. } => keys.len(),
            _ => 0,
        })
        .sum()
}

/// Appends the `btree_keys` of one jset, numbering them in jset order.
fn push_keys(out: &mut Vec<JournalKey>, seq: u64, entries: impl Iterator<Item = JsetEntry>) {
    let mut journal_offset = 0u32;
    for entry in entries {
        let JsetEntry::BtreeKeys { btree, level, keys } = entry else { continue };
        for key in keys {
            out.push(JournalKey { btree, level, key, seq, journal_offset, overwritten: false });
            journal_offset = journal_offset.saturating_add(1);
        }
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
