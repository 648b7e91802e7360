//! The entries of a node in memory: a sorted map from position to a leaf's [`KeyVal`] or an
//! interior node's [`Child`](crate::btree::node::Child).
//!
//! A leaf holds thousands of keys (a 256 KiB node of small keys). A general-purpose map spreads
//! them over many small heap nodes, so a lookup in a cold leaf costs a cache and TLB miss per
//! level. Here the entries sit in short sorted runs ("chunks") of at most [`CHUNK_MAX`]
//! positions, with positions and values in separate arrays, and a fence array holds each
//! chunk's first position. A lookup is a binary search of the fences and one of a 1.5 KiB
//! position array, then one value; an insert moves at most a chunk.
//!
//! Invariants: no chunk is empty; `firsts[i]` is the first position of chunk `i`; positions
//! strictly increase through the chunks in order; `len` counts them all.

use std::ops::RangeBounds;

use crate::bpos::Bpos;
use crate::btree::node::KeyVal;

/// Positions per chunk at most: a chunk's positions fill 24 cache lines.
pub const CHUNK_MAX: usize = 64;
/// A chunk shrunk below this by removals is merged into its successor when they fit together.
const CHUNK_MIN: usize = CHUNK_MAX / 4;

#[derive(Clone, Debug, Default)]
struct Chunk<V> {
    keys: Vec<Bpos>,
    vals: Vec<V>,
}

impl<V> Chunk<V> {
    fn pairs(&self) -> std::iter::Zip<std::slice::Iter<'_, Bpos>, std::slice::Iter<'_, V>> {
        self.keys.iter().zip(self.vals.iter())
    }

    fn split_off(&mut self, at: usize) -> Chunk<V> {
        Chunk { keys: self.keys.split_off(at), vals: self.vals.split_off(at) }
    }

    fn first(&self) -> Option<Bpos> {
        self.keys.first().copied()
    }
}

#[derive(Clone, Debug)]
pub struct PosMap<V> {
    firsts: Vec<Bpos>,
    chunks: Vec<Chunk<V>>,
    len: usize,
}

/// A leaf's sorted keys.
pub type LeafMap = PosMap<KeyVal>;

impl<V> Default for PosMap<V> {
    fn default() -> Self {
        PosMap { firsts: Vec::new(), chunks: Vec::new(), len: 0 }
    }
}

impl<V: PartialEq> PartialEq for PosMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<V: Eq> Eq for PosMap<V> {}

impl<V> PosMap<V> {
    pub fn new() -> Self {
        PosMap::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunk that holds `pos` or would: the last whose first position is at or before it,
    /// or the first chunk.
    fn chunk_for(&self, pos: &Bpos) -> usize {
        self.firsts.partition_point(|f| f <= pos).saturating_sub(1)
    }

    /// Chunk index and the index inside it where `pos` is (`Ok`) or would go (`Err`).
    fn find(&self, pos: &Bpos) -> Option<(usize, Result<usize, usize>)> {
        let c = self.chunk_for(pos);
        self.chunks.get(c).map(|chunk| (c, chunk.keys.binary_search(pos)))
    }

    pub fn get(&self, pos: &Bpos) -> Option<&V> {
        let (c, Ok(i)) = self.find(pos)? else { return None };
        self.chunks.get(c)?.vals.get(i)
    }

    /// The last position before `pos`, and the first entry at or after it: where a descent
    /// for `pos` goes in an interior node, and where the child's range starts.
    pub fn neighbours(&self, pos: &Bpos) -> (Option<Bpos>, Option<(&Bpos, &V)>) {
        let (c, i) = self.lower_bound(pos, false);
        let next = self.chunks.get(c).and_then(|ch| Some((ch.keys.get(i)?, ch.vals.get(i)?)));
        let prev = match i.checked_sub(1) {
            Some(p) => self.chunks.get(c).and_then(|ch| ch.keys.get(p)),
            None => c.checked_sub(1).and_then(|p| self.chunks.get(p)).and_then(|ch| ch.keys.last()),
        };
        (prev.copied(), next)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.chunks.iter_mut().flat_map(|c| c.vals.iter_mut())
    }

    pub fn contains_key(&self, pos: &Bpos) -> bool {
        matches!(self.find(pos), Some((_, Ok(_))))
    }

    /// Inserts or replaces; returns the value that was there.
    pub fn insert(&mut self, pos: Bpos, kv: V) -> Option<V> {
        // Appended when after the last position.
        let kv = self.append(pos, kv)?;
        let (c, found) = self.find(&pos)?;
        let chunk = self.chunks.get_mut(c)?;
        let i = match found {
            Ok(i) => return chunk.vals.get_mut(i).map(|v| std::mem::replace(v, kv)),
            Err(i) => i,
        };
        self.insert_new_at(c, i, pos, kv);
        None
    }

    /// Adds an entry after the last one, or hands it back when `pos` is not after the last
    /// position. Appends (bulk loads, journal replay) need no search.
    fn append(&mut self, pos: Bpos, v: V) -> Option<V> {
        let last = self.chunks.last_mut();
        if last.as_ref().and_then(|c| c.keys.last()).is_some_and(|l| *l >= pos) {
            return Some(v);
        }
        self.len += 1;
        if let Some(last) = last.filter(|c| c.keys.len() < CHUNK_MAX) {
            last.keys.push(pos);
            last.vals.push(v);
        } else {
            // Keys arriving in order will fill it: take the whole chunk at once rather than
            // growing it by doubling.
            let mut c = Chunk { keys: Vec::with_capacity(CHUNK_MAX), vals: Vec::with_capacity(CHUNK_MAX) };
            c.keys.push(pos);
            c.vals.push(v);
            self.firsts.push(pos);
            self.chunks.push(c);
        }
        None
    }

    /// Puts a position that is not in the map at index `i` of chunk `c` (an existing chunk:
    /// an empty map takes [`PosMap::append`]), splitting the chunk in halves when it is full;
    /// returns where the entry went.
    fn insert_new_at(&mut self, c: usize, i: usize, pos: Bpos, v: V) -> (usize, usize) {
        let (mut c, mut i) = (c, i);
        if let Some(chunk) = self.chunks.get_mut(c).filter(|ch| ch.keys.len() >= CHUNK_MAX) {
            let half = chunk.keys.len() / 2;
            let right = chunk.split_off(half);
            self.firsts.insert(c + 1, right.first().unwrap_or(pos));
            self.chunks.insert(c + 1, right);
            if i > half {
                (c, i) = (c + 1, i - half);
            }
        }
        if let Some(chunk) = self.chunks.get_mut(c) {
            chunk.keys.insert(i, pos);
            chunk.vals.insert(i, v);
            self.len += 1;
        }
        if i == 0 {
            if let Some(f) = self.firsts.get_mut(c) {
                *f = pos;
            }
        }
        (c, i)
    }

    /// Inserts entries sorted by position, equal positions allowed (the later one wins), and
    /// hands each value that lost to `replaced`.
    ///
    /// A batch of random positions lands in most chunks of a cold node. Inserting one at a
    /// time pays a binary search per entry, each probe a dependent cache miss; here a cursor
    /// walks the fences and each chunk front to back, reads the prefetcher can run ahead of.
    pub fn insert_sorted(&mut self, batch: impl IntoIterator<Item = (Bpos, V)>, mut replaced: impl FnMut(V)) {
        let (mut c, mut i) = (0, 0);
        // The batch is sorted: once one entry is after the last position, the rest are too.
        let last = self.chunks.last().and_then(|ch| ch.keys.last()).copied();
        let mut batch = batch.into_iter().peekable();
        while let Some((pos, v)) = batch.next_if(|(p, _)| last.is_some_and(|l| *p <= l)) {
            while self.firsts.get(c + 1).is_some_and(|f| *f <= pos) {
                (c, i) = (c + 1, 0);
            }
            if let Some(chunk) = self.chunks.get(c) {
                while chunk.keys.get(i).is_some_and(|k| *k < pos) {
                    i += 1;
                }
                if chunk.keys.get(i) == Some(&pos) {
                    if let Some(slot) = self.chunks.get_mut(c).and_then(|ch| ch.vals.get_mut(i)) {
                        replaced(std::mem::replace(slot, v));
                    }
                    continue;
                }
            }
            (c, i) = self.insert_new_at(c, i, pos, v);
        }
        for (pos, v) in batch {
            if let Some(v) = self.append(pos, v) {
                // An equal position later in the batch: it replaces the one just appended.
                if let Some(slot) = self.chunks.last_mut().and_then(|ch| ch.vals.last_mut()) {
                    replaced(std::mem::replace(slot, v));
                }
            }
        }
    }

    /// Removes the value at `pos`, if any.
    pub fn remove(&mut self, pos: &Bpos) -> Option<V> {
        let (c, Ok(i)) = self.find(pos)? else { return None };
        let chunk = self.chunks.get_mut(c)?;
        chunk.keys.remove(i);
        let old = chunk.vals.remove(i);
        self.len -= 1;
        match chunk.first() {
            None => {
                self.chunks.remove(c);
                self.firsts.remove(c);
            }
            Some(first) => {
                if let Some(f) = self.firsts.get_mut(c) {
                    *f = first;
                }
                self.maybe_merge(c);
            }
        }
        Some(old)
    }

    /// Merges chunk `c` with its successor when `c` got small and both fit in one chunk.
    fn maybe_merge(&mut self, c: usize) {
        let (Some(this), Some(next)) = (self.chunks.get(c), self.chunks.get(c + 1)) else { return };
        if this.keys.len() >= CHUNK_MIN || this.keys.len() + next.keys.len() > CHUNK_MAX {
            return;
        }
        let next = self.chunks.remove(c + 1);
        self.firsts.remove(c + 1);
        if let Some(this) = self.chunks.get_mut(c) {
            this.keys.extend(next.keys);
            this.vals.extend(next.vals);
        }
    }

    /// All entries in position order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&Bpos, &V)> + Clone + '_ {
        self.chunks.iter().flat_map(Chunk::pairs)
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &Bpos> + Clone + '_ {
        self.chunks.iter().flat_map(|c| c.keys.iter())
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + Clone + '_ {
        self.chunks.iter().flat_map(|c| c.vals.iter())
    }

    /// The entries whose positions lie in `range`, in position order (both ends supported).
    pub fn range(
        &self,
        range: impl RangeBounds<Bpos>,
    ) -> impl DoubleEndedIterator<Item = (&Bpos, &V)> + Clone + '_ {
        use std::ops::Bound;
        let (sc, si) = match range.start_bound() {
            Bound::Unbounded => (0, 0),
            Bound::Included(p) => self.lower_bound(p, false),
            Bound::Excluded(p) => self.lower_bound(p, true),
        };
        let (ec, ei) = match range.end_bound() {
            Bound::Unbounded => (self.chunks.len(), 0),
            Bound::Included(p) => self.lower_bound(p, true),
            Bound::Excluded(p) => self.lower_bound(p, false),
        };
        // Entries from (sc, si) up to but excluding (ec, ei).
        let empty = (sc, si) >= (ec, ei);
        self.chunks.get(sc..(ec + 1).min(self.chunks.len())).unwrap_or_default().iter().enumerate().flat_map(
            move |(n, chunk)| {
                let c = sc + n;
                let lo = if c == sc { si } else { 0 };
                let hi = if c == ec { ei } else { chunk.keys.len() };
                let (lo, hi) = if empty { (0, 0) } else { (lo.min(hi), hi) };
                let keys = chunk.keys.get(lo..hi).unwrap_or_default();
                let vals = chunk.vals.get(lo..hi).unwrap_or_default();
                keys.iter().zip(vals.iter())
            },
        )
    }

    /// Where the first entry at or after `pos` (after it, with `strict`) is: a chunk and an
    /// index inside it, normalised so that the index is inside the chunk, or
    /// `(chunks.len(), 0)` for "no such entry".
    fn lower_bound(&self, pos: &Bpos, strict: bool) -> (usize, usize) {
        let c = self.chunk_for(pos);
        let Some(chunk) = self.chunks.get(c) else { return (self.chunks.len(), 0) };
        let i = if strict {
            chunk.keys.partition_point(|k| k <= pos)
        } else {
            chunk.keys.partition_point(|k| k < pos)
        };
        if i < chunk.keys.len() { (c, i) } else { (c + 1, 0) }
    }

    /// Keeps the entries for which `f` is true (and lets it change their values).
    pub fn retain(&mut self, mut f: impl FnMut(&Bpos, &mut V) -> bool) {
        let mut len = 0;
        for chunk in &mut self.chunks {
            let gone = chunk.vals.iter_mut().zip(chunk.keys.iter()).position(|(v, k)| !f(k, v));
            let Some(gone) = gone else {
                len += chunk.keys.len();
                continue;
            };
            // Rare: something goes. Entries before `gone` were kept, `gone` was refused; f
            // has not seen the rest yet.
            let keys = std::mem::take(&mut chunk.keys);
            let vals = std::mem::take(&mut chunk.vals);
            for (idx, (k, mut v)) in keys.into_iter().zip(vals).enumerate() {
                if idx < gone || (idx > gone && f(&k, &mut v)) {
                    chunk.keys.push(k);
                    chunk.vals.push(v);
                }
            }
            len += chunk.keys.len();
        }
        self.len = len;
        self.chunks.retain(|c| !c.keys.is_empty());
        self.firsts = self.chunks.iter().filter_map(Chunk::first).collect();
    }

    /// Moves the entries at and after `pos` into a new map.
    pub fn split_off(&mut self, pos: &Bpos) -> PosMap<V> {
        let (c, i) = self.lower_bound(pos, false);
        let mut right_chunks = self.chunks.split_off(c.min(self.chunks.len()));
        self.firsts.truncate(self.chunks.len());
        if i > 0 {
            // `pos` falls inside chunk c: its head stays on the left.
            if let Some(first) = right_chunks.first_mut() {
                let head =
                    Chunk { keys: first.keys.drain(..i).collect(), vals: first.vals.drain(..i).collect() };
                self.firsts.extend(head.first());
                self.chunks.push(head);
            }
        }
        let right = PosMap::from_chunks(right_chunks);
        self.len -= right.len;
        right
    }

    fn from_chunks(chunks: Vec<Chunk<V>>) -> PosMap<V> {
        let chunks: Vec<Chunk<V>> = chunks.into_iter().filter(|c| !c.keys.is_empty()).collect();
        let firsts = chunks.iter().filter_map(Chunk::first).collect();
        let len = chunks.iter().map(|c| c.keys.len()).sum();
        PosMap { firsts, chunks, len }
    }
}

/// Inserts a leaf takes without looking at its keys before it sorts them in. Sorting in walks
/// the whole leaf once, so the batch is a good part of a leaf's ~2000 small keys: 512 pending
/// entries take 28 KiB beside a leaf's ~130 KiB.
pub const UNSORTED_MAX: usize = 512;

/// A leaf's keys: the sorted [`LeafMap`] and up to [`UNSORTED_MAX`] inserts not sorted in yet.
///
/// An insert into a leaf that is not in cache would otherwise pay a binary search through cold
/// memory; appending costs one cache line, and sorting a batch in later touches each chunk
/// once for many inserts. The sorted map is reachable only through [`Leaf::settle`] (or
/// [`Leaf::settled`] when nothing is pending), so no reader can miss a pushed key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leaf {
    map: LeafMap,
    unsorted: Vec<(Bpos, KeyVal)>,
}

impl From<LeafMap> for Leaf {
    fn from(map: LeafMap) -> Self {
        Leaf { map, unsorted: Vec::new() }
    }
}

impl Leaf {
    /// Appends an insert; true when the batch is full and the caller should settle.
    pub fn push(&mut self, pos: Bpos, kv: KeyVal) -> bool {
        self.unsorted.push((pos, kv));
        self.unsorted.len() >= UNSORTED_MAX
    }

    /// Sorts the pushed inserts into the map (a later push of a position wins over an earlier
    /// one); returns the encoded bytes of the entries they replaced.
    pub fn settle(&mut self) -> (&mut LeafMap, usize) {
        let mut replaced = 0;
        if !self.unsorted.is_empty() {
            let mut batch = std::mem::take(&mut self.unsorted);
            // Stable: equal positions keep their push order, so the last one inserted wins.
            batch.sort_by_key(|(p, _)| *p);
            self.map.insert_sorted(batch.drain(..), |old| replaced += old.encoded_bytes());
            // Keep the allocation for the next batch.
            self.unsorted = batch;
        }
        (&mut self.map, replaced)
    }

    /// The map, when no insert is pending.
    pub fn settled(&self) -> Option<&LeafMap> {
        self.unsorted.is_empty().then_some(&self.map)
    }

    /// Keys, counting pending inserts as new ones.
    pub fn len_upper_bound(&self) -> usize {
        self.map.len() + self.unsorted.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ops::Bound;

    use proptest::prelude::*;

    use super::*;
    use crate::bkey::KeyType;

    fn kv(tag: u64) -> KeyVal {
        KeyVal {
            ty: KeyType::Set,
            size: 0,
            val: crate::btree::node::Val::new(&tag.to_le_bytes()),
            pending: tag % 2 == 0,
        }
    }

    fn pos(i: u64) -> Bpos {
        Bpos::new(i / 7, i % 7, 0)
    }

    impl LeafMap {
        /// The structural invariants of the module doc.
        fn check(&self) {
            assert_eq!(self.firsts.len(), self.chunks.len());
            assert_eq!(self.len, self.chunks.iter().map(|c| c.keys.len()).sum::<usize>());
            for (f, c) in self.firsts.iter().zip(&self.chunks) {
                assert!(!c.keys.is_empty() && c.keys.len() <= CHUNK_MAX);
                assert_eq!(c.keys.len(), c.vals.len());
                assert_eq!(Some(*f), c.first());
            }
            assert!(self.keys().zip(self.keys().skip(1)).all(|(a, b)| a < b), "positions not increasing");
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64),
        Remove(u64),
        Range(Bound<u64>, Bound<u64>),
        Retain(u64),
        SplitOff(u64),
    }

    fn bound() -> impl Strategy<Value = Bound<u64>> {
        prop_oneof![
            Just(Bound::Unbounded),
            (0..700u64).prop_map(Bound::Included),
            (0..700u64).prop_map(Bound::Excluded)
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..700u64).prop_map(Op::Insert),
            3 => (0..700u64).prop_map(Op::Remove),
            2 => (bound(), bound()).prop_map(|(a, b)| Op::Range(a, b)),
            1 => (2..9u64).prop_map(Op::Retain),
            1 => (0..700u64).prop_map(Op::SplitOff),
        ]
    }

    fn map_bound(b: Bound<u64>) -> Bound<Bpos> {
        b.map(pos)
    }

    proptest! {
        /// LeafMap behaves as a BTreeMap of the same entries under every operation, keeps its
        /// chunk invariants, and both iteration directions agree.
        #[test]
        fn matches_btreemap(ops in prop::collection::vec(op(), 1..1500), sorted_prefix in 0..400u64) {
            let mut m = LeafMap::new();
            let mut model = BTreeMap::new();
            // Some keys arriving in order first, as a bulk load or journal replay does.
            for i in 0..sorted_prefix {
                m.insert(pos(i), kv(i));
                model.insert(pos(i), kv(i));
            }
            m.check();
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert(i) => prop_assert_eq!(m.insert(pos(i), kv(i + n as u64)), model.insert(pos(i), kv(i + n as u64))),
                    Op::Remove(i) => prop_assert_eq!(m.remove(&pos(i)), model.remove(&pos(i))),
                    Op::Range(a, b) => {
                        let r = (map_bound(a), map_bound(b));
                        let valid = match (r.0, r.1) {
                            (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => x < y || (x == y && matches!(r, (Bound::Included(_), Bound::Included(_)))),
                            _ => true,
                        };
                        if valid {
                            let got: Vec<_> = m.range(r).collect();
                            let want: Vec<_> = model.range(r).collect();
                            prop_assert_eq!(&got, &want);
                            let got_rev: Vec<_> = m.range(r).rev().collect();
                            let want_rev: Vec<_> = model.range(r).rev().collect();
                            prop_assert_eq!(got_rev, want_rev);
                        }
                    }
                    Op::Retain(k) => {
                        m.retain(|p, v| { v.pending = false; p.offset % k != 0 });
                        model.retain(|p, v| { v.pending = false; p.offset % k != 0 });
                    }
                    Op::SplitOff(i) => {
                        let r = m.split_off(&pos(i));
                        let want = model.split_off(&pos(i));
                        r.check();
                        prop_assert!(r.iter().eq(want.iter()));
                        // Put them back (in reverse order: tests inserts before the first chunk).
                        for (p, v) in r.iter().rev() {
                            m.insert(*p, v.clone());
                        }
                        model.extend(want);
                    }
                }
                m.check();
                prop_assert_eq!(m.len(), model.len());
                prop_assert!(m.iter().eq(model.iter()));
                prop_assert!(m.iter().rev().eq(model.iter().rev()));
            }
            for i in 0..700 {
                let p = pos(i);
                let want = (model.range(..p).next_back().map(|(k, _)| *k), model.range(p..).next());
                prop_assert_eq!(m.neighbours(&p), want);
                prop_assert_eq!(m.get(&pos(i)), model.get(&pos(i)));
                prop_assert_eq!(m.contains_key(&pos(i)), model.contains_key(&pos(i)));
            }
        }
    }

    proptest! {
        /// Pushed inserts, settled in batches, end as if inserted one by one; `settle` reports
        /// exactly the bytes of the entries they replaced.
        #[test]
        fn leaf_push_and_settle(keys in prop::collection::vec((0..300u64, 0..60u32), 0..1500)) {
            let mut leaf = Leaf::default();
            let mut model = BTreeMap::new();
            let mut replaced_model = 0;
            let mut replaced = 0;
            for (n, (i, read)) in keys.into_iter().enumerate() {
                let v = kv(n as u64);
                replaced_model += model.insert(pos(i), v.clone()).map_or(0, |o: KeyVal| o.encoded_bytes());
                // Batches of every size: a read settles whatever is pending.
                if leaf.push(pos(i), v) || read == 0 {
                    replaced += leaf.settle().1;
                    leaf.settled().unwrap().check();
                }
                prop_assert!(leaf.unsorted.len() < UNSORTED_MAX);
            }
            replaced += leaf.settle().1;
            let m = leaf.settled().unwrap();
            m.check();
            prop_assert!(m.iter().eq(model.iter()));
            prop_assert_eq!(replaced, replaced_model);
        }
    }

    /// Keys arriving in order leave full chunks behind them (the memory a bulk load costs).
    #[test]
    fn appends_fill_chunks() {
        let mut m = LeafMap::new();
        for i in 0..10 * CHUNK_MAX as u64 {
            m.insert(pos(i), kv(i));
        }
        m.check();
        assert_eq!(m.chunks.len(), 10);
        assert!(m.chunks.iter().all(|c| c.keys.len() == CHUNK_MAX));
    }
}
