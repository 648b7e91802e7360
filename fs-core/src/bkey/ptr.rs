//! Pointers: where a replica lives (`ExtentPtr`) and the btree node pointer (`btree_ptr_v2`)
//! that interior nodes and roots hold for their children.

use crate::bkey::{FixedFields, KEY_HEADER_BYTES};
use crate::bpos::Bpos;
use crate::encode::{Reader, Writer};
use crate::error::{ErrCode, Error, Result};

/// Bytes per sector: pointer offsets and `sectors_written` count in these.
pub const SECTOR_BYTES: u64 = 512;

/// One replica: device, offset in sectors, and the bucket gen it expects (a reused bucket has a
/// newer gen, so a stale pointer is detected).
///
/// ```text
///  0 dev         u8
///  1 bucket_gen  u8
///  2 reserved    [6]
///  8 offset      u64  sectors
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExtentPtr {
    pub dev: u8,
    pub bucket_gen: u8,
    /// Offset on the device in 512-byte sectors.
    pub offset: u64,
}

pub const EXTENT_PTR_BYTES: usize = 16;
const EXTENT_PTR_OFF_DEV: usize = 0;
const EXTENT_PTR_OFF_BUCKET_GEN: usize = EXTENT_PTR_OFF_DEV + 1;
const EXTENT_PTR_OFF_RESERVED: usize = EXTENT_PTR_OFF_BUCKET_GEN + 1;
const EXTENT_PTR_OFF_OFFSET: usize = EXTENT_PTR_OFF_RESERVED + 6;
const _: () = assert!(EXTENT_PTR_OFF_OFFSET + 8 == EXTENT_PTR_BYTES);

impl ExtentPtr {
    pub fn byte_offset(&self) -> u64 {
        self.offset.saturating_mul(SECTOR_BYTES)
    }

    pub fn encode(&self, w: &mut Writer) {
        let mut b = [0u8; EXTENT_PTR_BYTES];
        b.set_field::<EXTENT_PTR_OFF_DEV, 1>([self.dev]);
        b.set_field::<EXTENT_PTR_OFF_BUCKET_GEN, 1>([self.bucket_gen]);
        b.set_field::<EXTENT_PTR_OFF_OFFSET, 8>(self.offset.to_le_bytes());
        w.bytes(&b);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<ExtentPtr> {
        let b: [u8; EXTENT_PTR_BYTES] = r.array()?;
        Ok(ExtentPtr {
            dev: u8::from_le_bytes(b.field::<EXTENT_PTR_OFF_DEV, 1>()),
            bucket_gen: u8::from_le_bytes(b.field::<EXTENT_PTR_OFF_BUCKET_GEN, 1>()),
            offset: u64::from_le_bytes(b.field::<EXTENT_PTR_OFF_OFFSET, 8>()),
        })
    }
}

/// The most replicas a pointer may list.
pub const MAX_PTRS: usize = 8;

/// `btree_ptr_v2`: what a parent knows about a child node and checks when reading it.
///
/// ```text
///  0 seq              u64  the child's seq: a node with another seq is not this child
///  8 sectors_written  u32  sectors known written when the pointer was made
/// 12 nr_ptrs          u8
/// 13 reserved         [3]
/// 16 min_key          24 bytes (a position)
/// 40 ptrs             nr_ptrs x ExtentPtr (16 bytes each)
/// ```
/// The child's max_key is the pointer key's own position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtreePtrV2 {
    pub seq: u64,
    pub sectors_written: u32,
    pub min_key: Bpos,
    pub ptrs: Vec<ExtentPtr>,
}

/// Bytes of a `btree_ptr_v2` value before its pointers.
pub const BTREE_PTR_V2_FIXED_BYTES: usize = 40;
const BTREE_PTR_V2_OFF_SEQ: usize = 0;
const BTREE_PTR_V2_OFF_SECTORS_WRITTEN: usize = BTREE_PTR_V2_OFF_SEQ + 8;
const BTREE_PTR_V2_OFF_NR_PTRS: usize = BTREE_PTR_V2_OFF_SECTORS_WRITTEN + 4;
const BTREE_PTR_V2_OFF_RESERVED: usize = BTREE_PTR_V2_OFF_NR_PTRS + 1;
const BTREE_PTR_V2_OFF_MIN_KEY: usize = BTREE_PTR_V2_OFF_RESERVED + 3;
const BTREE_PTR_V2_OFF_PTRS: usize = BTREE_PTR_V2_OFF_MIN_KEY + POS_BYTES;
const _: () = assert!(BTREE_PTR_V2_OFF_PTRS == BTREE_PTR_V2_FIXED_BYTES);

impl BtreePtrV2 {
    /// Bytes of the encoded value: the fixed part and one `ExtentPtr` per replica.
    pub fn val_bytes(&self) -> usize {
        BTREE_PTR_V2_FIXED_BYTES + EXTENT_PTR_BYTES * self.ptrs.len()
    }

    /// Bytes of a key holding this value, key header and padding included: what a bset or a
    /// journal entry spends on the pointer.
    pub fn key_bytes(&self) -> usize {
        KEY_HEADER_BYTES + self.val_bytes().next_multiple_of(8)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut fixed = [0u8; BTREE_PTR_V2_FIXED_BYTES];
        fixed.set_field::<BTREE_PTR_V2_OFF_SEQ, 8>(self.seq.to_le_bytes());
        fixed.set_field::<BTREE_PTR_V2_OFF_SECTORS_WRITTEN, 4>(self.sectors_written.to_le_bytes());
        fixed.set_field::<BTREE_PTR_V2_OFF_NR_PTRS, 1>([self.ptrs.len() as u8]);
        fixed.set_field::<BTREE_PTR_V2_OFF_MIN_KEY, POS_BYTES>(pos_to_bytes(self.min_key));
        let mut w = Writer::with_capacity(self.val_bytes());
        w.bytes(&fixed);
        for p in &self.ptrs {
            p.encode(&mut w);
        }
        w.into_vec()
    }

    pub fn decode(val: &[u8]) -> Result<BtreePtrV2> {
        let mut r = Reader::new(val, "btree_ptr_v2", ErrCode::BtreeNodeReadErr);
        let fixed: [u8; BTREE_PTR_V2_FIXED_BYTES] = r.array()?;
        let nr = usize::from(u8::from_le_bytes(fixed.field::<BTREE_PTR_V2_OFF_NR_PTRS, 1>()));
        if nr == 0 || nr > MAX_PTRS {
            return Err(Error::new(ErrCode::BtreeNodeReadErr, format!("btree_ptr_v2 with {nr} pointers")));
        }
        let ptrs = (0..nr).map(|_| ExtentPtr::decode(&mut r)).collect::<Result<Vec<_>>>()?;
        if !r.is_empty() {
            return Err(r.error("trailing bytes"));
        }
        Ok(BtreePtrV2 {
            seq: u64::from_le_bytes(fixed.field::<BTREE_PTR_V2_OFF_SEQ, 8>()),
            sectors_written: u32::from_le_bytes(fixed.field::<BTREE_PTR_V2_OFF_SECTORS_WRITTEN, 4>()),
            min_key: pos_from_bytes(&fixed.field::<BTREE_PTR_V2_OFF_MIN_KEY, POS_BYTES>()),
            ptrs,
        })
    }
}

/// A position on disk:
///
/// ```text
///  0 inode     u64
///  8 offset    u64
/// 16 snapshot  u32
/// 20 reserved  u32
/// ```
pub const POS_BYTES: usize = 24;
const POS_OFF_INODE: usize = 0;
const POS_OFF_OFFSET: usize = POS_OFF_INODE + 8;
const POS_OFF_SNAPSHOT: usize = POS_OFF_OFFSET + 8;
const POS_OFF_RESERVED: usize = POS_OFF_SNAPSHOT + 4;
const _: () = assert!(POS_OFF_RESERVED + 4 == POS_BYTES);

pub fn pos_to_bytes(pos: Bpos) -> [u8; POS_BYTES] {
    let mut b = [0u8; POS_BYTES];
    b.set_field::<POS_OFF_INODE, 8>(pos.inode.to_le_bytes());
    b.set_field::<POS_OFF_OFFSET, 8>(pos.offset.to_le_bytes());
    b.set_field::<POS_OFF_SNAPSHOT, 4>(pos.snapshot.to_le_bytes());
    b
}

pub fn pos_from_bytes(b: &[u8; POS_BYTES]) -> Bpos {
    Bpos {
        inode: u64::from_le_bytes(b.field::<POS_OFF_INODE, 8>()),
        offset: u64::from_le_bytes(b.field::<POS_OFF_OFFSET, 8>()),
        snapshot: u32::from_le_bytes(b.field::<POS_OFF_SNAPSHOT, 4>()),
    }
}

pub fn encode_pos(w: &mut Writer, pos: Bpos) {
    w.bytes(&pos_to_bytes(pos));
}

pub fn decode_pos(r: &mut Reader<'_>) -> Result<Bpos> {
    r.array().map(|b| pos_from_bytes(&b))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A btree pointer decodes to itself, takes the bytes `val_bytes` and `key_bytes` say
        /// (what journal entries and nodes reserve for it), and truncations are typed errors.
        #[test]
        fn btree_ptr_round_trip(seq in any::<u64>(), sw in any::<u32>(), min in any::<(u64, u64, u32)>(),
                                ptrs in prop::collection::vec(any::<(u8, u8, u64)>(), 1..=MAX_PTRS)) {
            let p = BtreePtrV2 {
                seq, sectors_written: sw, min_key: Bpos::new(min.0, min.1, min.2),
                ptrs: ptrs.into_iter().map(|(dev, bucket_gen, offset)| ExtentPtr { dev, bucket_gen, offset }).collect(),
            };
            let bytes = p.encode();
            prop_assert_eq!(bytes.len(), p.val_bytes());
            prop_assert_eq!(crate::bkey::Bkey::new(Bpos::MAX, crate::bkey::KeyType::BtreePtrV2, bytes.clone())
                .encoded_bytes(), p.key_bytes());
            prop_assert_eq!(BtreePtrV2::decode(&bytes).unwrap(), p);
            for cut in 0..bytes.len() {
                prop_assert!(BtreePtrV2::decode(&bytes[..cut]).is_err());
            }
        }
    }
}
