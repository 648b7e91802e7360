//! The state of every bucket of a device, stored in chunks that exist only once a bucket in them
//! is not free with gen 0: a terabyte device that holds little data costs little memory, and a
//! bucket's state is still one index away.

use crate::device::BucketState;

/// Buckets per chunk: 4096 buckets of 24 bytes, about 96 KiB once touched.
const CHUNK_BUCKETS: u64 = 4096;

/// What a bucket in an absent chunk is: free, gen 0, never used.
pub(crate) const UNUSED: BucketState = BucketState::UNUSED;

#[derive(Clone, Debug, Default)]
pub(crate) struct BucketTable {
    chunks: Vec<Option<Box<[BucketState]>>>,
    nbuckets: u64,
}

fn chunk_of(b: u64) -> (usize, usize) {
    // A device's bucket count fits a Vec of chunks: checked when the table is built.
    ((b / CHUNK_BUCKETS) as usize, (b % CHUNK_BUCKETS) as usize)
}

impl BucketTable {
    /// `nbuckets` buckets, all unused; `None` if the count does not fit in memory.
    pub(crate) fn new(nbuckets: u64) -> Option<BucketTable> {
        let nr_chunks = usize::try_from(nbuckets.div_ceil(CHUNK_BUCKETS)).ok()?;
        Some(BucketTable { chunks: vec![None; nr_chunks], nbuckets })
    }

    pub(crate) fn get(&self, b: u64) -> Option<&BucketState> {
        if b >= self.nbuckets {
            return None;
        }
        let (c, i) = chunk_of(b);
        match self.chunks.get(c)? {
            Some(chunk) => chunk.get(i),
            None => Some(&UNUSED),
        }
    }

    /// Replaces bucket `b`'s state, returning the old one; `None` if `b` is not on the device.
    pub(crate) fn replace(&mut self, b: u64, st: BucketState) -> Option<BucketState> {
        if b >= self.nbuckets {
            return None;
        }
        let (c, i) = chunk_of(b);
        let slot = self.chunks.get_mut(c)?;
        if slot.is_none() {
            if st == UNUSED {
                return Some(UNUSED);
            }
            *slot = Some(vec![UNUSED; CHUNK_BUCKETS as usize].into_boxed_slice());
        }
        let chunk = slot.as_mut()?;
        Some(std::mem::replace(chunk.get_mut(i)?, st))
    }

    /// Every bucket that may be in use, in order: the buckets of the chunks that exist. Buckets
    /// of absent chunks are unused.
    pub(crate) fn touched(&self) -> impl Iterator<Item = (u64, &BucketState)> {
        self.chunks.iter().enumerate().filter_map(|(c, chunk)| chunk.as_ref().map(|ch| (c, ch))).flat_map(
            move |(c, chunk)| {
                let base = c as u64 * CHUNK_BUCKETS;
                (base..).zip(chunk.iter()).take_while(move |(b, _)| *b < self.nbuckets)
            },
        )
    }

    /// Every bucket, in order (unused ones included).
    pub(crate) fn all(&self) -> impl Iterator<Item = (u64, &BucketState)> {
        (0..self.nbuckets).filter_map(move |b| self.get(b).map(|st| (b, st)))
    }

    /// Bytes of memory the chunks that exist take.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.chunks.iter().flatten().map(|c| std::mem::size_of_val(&**c)).sum()
    }
}

#[cfg(test)]
mod tests {
    use fs_core::bkey::alloc::DataType;

    use super::*;

    /// An untouched table costs no chunks; setting a bucket touches exactly its chunk; setting
    /// an unused bucket unused again touches nothing; reads give back what was set.
    #[test]
    fn chunks_appear_only_when_touched() {
        let mut t = BucketTable::new(3 * CHUNK_BUCKETS + 5).unwrap();
        assert_eq!(t.memory_bytes(), 0);
        assert_eq!(t.get(3 * CHUNK_BUCKETS + 4), Some(&UNUSED));
        assert_eq!(t.get(3 * CHUNK_BUCKETS + 5), None);
        assert_eq!(t.replace(7, UNUSED), Some(UNUSED));
        assert_eq!(t.memory_bytes(), 0);
        let used = BucketState { data_type: DataType::User, dirty_sectors: 8, ..UNUSED };
        assert_eq!(t.replace(3 * CHUNK_BUCKETS + 4, used), Some(UNUSED));
        assert_eq!(t.get(3 * CHUNK_BUCKETS + 4), Some(&used));
        assert!(t.memory_bytes() > 0);
        let touched: Vec<u64> = t.touched().filter(|(_, st)| **st != UNUSED).map(|(b, _)| b).collect();
        assert_eq!(touched, vec![3 * CHUNK_BUCKETS + 4]);
        assert_eq!(t.touched().count(), 5, "the last chunk holds only the buckets the device has");
        assert_eq!(t.all().count() as u64, 3 * CHUNK_BUCKETS + 5);
    }
}
