//! `alloc_v4`: the persistent record of one bucket, at position `(dev, bucket, 0)` in the alloc
//! btree; and bucket data types with bcachefs's numbers.

use crate::bpos::Bpos;
use crate::encode::{Reader, Writer};
use crate::error::{ErrCode, Error, Result};

crate::ids::stable_ids! {
    /// What a bucket holds (`enum bch_data_type`).
    pub enum DataType {
        Free = 0, "free";
        Sb = 1, "sb";
        Journal = 2, "journal";
        Btree = 3, "btree";
        User = 4, "user";
        Cached = 5, "cached";
        Parity = 6, "parity";
        Stripe = 7, "stripe";
        NeedGcGens = 8, "need_gc_gens";
        NeedDiscard = 9, "need_discard";
    }
}

/// Bits of [`AllocV4::flags`].
pub const ALLOC_NEED_DISCARD: u8 = 1 << 0;
pub const ALLOC_NEED_INC_GEN: u8 = 1 << 1;

/// `alloc_v4` value, 24 bytes:
/// ```text
///  0 bucket_gen u8 | 1 oldest_gen u8 | 2 data_type u8 | 3 flags u8 (NEED_DISCARD, NEED_INC_GEN)
///  4 dirty_sectors u32 | 8 cached_sectors u32 | 12 reserved u32 | 16 journal_seq_empty u64
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocV4 {
    pub bucket_gen: u8,
    pub oldest_gen: u8,
    pub data_type: DataType,
    pub flags: u8,
    pub dirty_sectors: u32,
    pub cached_sectors: u32,
    /// The journal seq at which the bucket became empty: it may be discarded and reused only
    /// once the journal has flushed past this seq.
    pub journal_seq_empty: u64,
}

pub const ALLOC_V4_BYTES: usize = 24;

impl AllocV4 {
    pub fn free(bucket_gen: u8) -> Self {
        AllocV4 {
            bucket_gen,
            oldest_gen: bucket_gen,
            data_type: DataType::Free,
            flags: 0,
            dirty_sectors: 0,
            cached_sectors: 0,
            journal_seq_empty: 0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(ALLOC_V4_BYTES);
        w.u8(self.bucket_gen);
        w.u8(self.oldest_gen);
        w.u8(self.data_type as u8);
        w.u8(self.flags);
        w.u32(self.dirty_sectors);
        w.u32(self.cached_sectors);
        w.u32(0);
        w.u64(self.journal_seq_empty);
        w.into_vec()
    }

    pub fn decode(val: &[u8]) -> Result<AllocV4> {
        let mut r = Reader::new(val, "alloc_v4", ErrCode::BtreeNodeReadErr);
        if val.len() != ALLOC_V4_BYTES {
            return Err(Error::new(
                ErrCode::BtreeNodeReadErr,
                format!("alloc_v4 value of {} bytes", val.len()),
            ));
        }
        let bucket_gen = r.u8()?;
        let oldest_gen = r.u8()?;
        let raw_type = r.u8()?;
        let flags = r.u8()?;
        let dirty_sectors = r.u32()?;
        let cached_sectors = r.u32()?;
        r.skip(4)?;
        let journal_seq_empty = r.u64()?;
        let data_type = DataType::from_u8(raw_type)
            .ok_or_else(|| Error::new(ErrCode::BtreeNodeReadErr, format!("alloc_v4 data type {raw_type}")))?;
        Ok(AllocV4 {
            bucket_gen,
            oldest_gen,
            data_type,
            flags,
            dirty_sectors,
            cached_sectors,
            journal_seq_empty,
        })
    }
}

/// Position of a bucket's keys in the alloc, freespace and need_discard btrees.
pub fn bucket_pos(dev: u8, bucket: u64) -> Bpos {
    Bpos::new(u64::from(dev), bucket, 0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// alloc_v4 decodes to itself; other lengths are typed errors.
        #[test]
        fn alloc_round_trip(bucket_gen in any::<u8>(), og in any::<u8>(), t in 0u8..10, flags in 0u8..4,
                            dirty in any::<u32>(), cached in any::<u32>(), seq in any::<u64>()) {
            let a = AllocV4 { bucket_gen, oldest_gen: og, data_type: DataType::from_u8(t).unwrap(), flags,
                              dirty_sectors: dirty, cached_sectors: cached, journal_seq_empty: seq };
            let bytes = a.encode();
            prop_assert_eq!(bytes.len(), ALLOC_V4_BYTES);
            prop_assert_eq!(AllocV4::decode(&bytes).unwrap(), a);
            prop_assert!(AllocV4::decode(&bytes[..23]).is_err());
        }
    }
}
