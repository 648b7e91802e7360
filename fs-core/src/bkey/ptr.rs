//! Pointers: where a replica lives (`ExtentPtr`) and the btree node pointer (`btree_ptr_v2`)
//! that interior nodes and roots hold for their children.

use crate::bpos::Bpos;
use crate::encode::{Reader, Writer};
use crate::error::{ErrCode, Error, Result};

/// Bytes per sector: pointer offsets and `sectors_written` count in these.
pub const SECTOR_BYTES: u64 = 512;

/// One replica: device, offset in sectors, and the bucket gen it expects (a reused bucket has a
/// newer gen, so a stale pointer is detected).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExtentPtr {
    pub dev: u8,
    pub bucket_gen: u8,
    /// Offset on the device in 512-byte sectors.
    pub offset: u64,
}

impl ExtentPtr {
    pub fn byte_offset(&self) -> u64 {
        self.offset.saturating_mul(SECTOR_BYTES)
    }

    /// Encoded as `{dev u8, bucket_gen u8, reserved [6], offset u64}`: 16 bytes.
    pub fn encode(&self, w: &mut Writer) {
        w.u8(self.dev);
        w.u8(self.bucket_gen);
        w.zeros(6);
        w.u64(self.offset);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<ExtentPtr> {
        let dev = r.u8()?;
        let bucket_gen = r.u8()?;
        r.skip(6)?;
        let offset = r.u64()?;
        Ok(ExtentPtr { dev, bucket_gen, offset })
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
/// 16 min_key          inode u64, offset u64, snapshot u32, reserved u32
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

impl BtreePtrV2 {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(40 + 16 * self.ptrs.len());
        w.u64(self.seq);
        w.u32(self.sectors_written);
        w.u8(self.ptrs.len() as u8);
        w.zeros(3);
        encode_pos(&mut w, self.min_key);
        for p in &self.ptrs {
            p.encode(&mut w);
        }
        w.into_vec()
    }

    pub fn decode(val: &[u8]) -> Result<BtreePtrV2> {
        let mut r = Reader::new(val, "btree_ptr_v2", ErrCode::BtreeNodeReadErr);
        let seq = r.u64()?;
        let sectors_written = r.u32()?;
        let nr = usize::from(r.u8()?);
        r.skip(3)?;
        let min_key = decode_pos(&mut r)?;
        if nr == 0 || nr > MAX_PTRS {
            return Err(Error::new(ErrCode::BtreeNodeReadErr, format!("btree_ptr_v2 with {nr} pointers")));
        }
        let ptrs = (0..nr).map(|_| ExtentPtr::decode(&mut r)).collect::<Result<Vec<_>>>()?;
        if !r.is_empty() {
            return Err(r.error("trailing bytes"));
        }
        Ok(BtreePtrV2 { seq, sectors_written, min_key, ptrs })
    }
}

/// A position as 24 bytes: `inode u64, offset u64, snapshot u32, reserved u32`.
pub fn encode_pos(w: &mut Writer, pos: Bpos) {
    w.u64(pos.inode);
    w.u64(pos.offset);
    w.u32(pos.snapshot);
    w.u32(0);
}

pub fn decode_pos(r: &mut Reader<'_>) -> Result<Bpos> {
    let inode = r.u64()?;
    let offset = r.u64()?;
    let snapshot = r.u32()?;
    r.skip(4)?;
    Ok(Bpos { inode, offset, snapshot })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A btree pointer decodes to itself; truncations are typed errors.
        #[test]
        fn btree_ptr_round_trip(seq in any::<u64>(), sw in any::<u32>(), min in any::<(u64, u64, u32)>(),
                                ptrs in prop::collection::vec(any::<(u8, u8, u64)>(), 1..=MAX_PTRS)) {
            let p = BtreePtrV2 {
                seq, sectors_written: sw, min_key: Bpos::new(min.0, min.1, min.2),
                ptrs: ptrs.into_iter().map(|(dev, bucket_gen, offset)| ExtentPtr { dev, bucket_gen, offset }).collect(),
            };
            let bytes = p.encode();
            prop_assert_eq!(BtreePtrV2::decode(&bytes).unwrap(), p);
            for cut in 0..bytes.len() {
                prop_assert!(BtreePtrV2::decode(&bytes[..cut]).is_err());
            }
        }
    }
}
