//! Keys: a position, a type and a value, and their byte encoding inside bsets and journal
//! entries.
//!
//! ```text
//! key header (32 bytes), then the value padded to 8 bytes
//!  0 type       u8   KeyType (bcachefs's KEY_TYPE numbers)
//!  1 reserved   u8   zero
//!  2 val_bytes  u16  value length before padding
//!  4 size       u32  extent size in sectors (0 for other keys)
//!  8 inode      u64
//! 16 offset     u64
//! 24 snapshot   u32
//! 28 reserved   u32  zero
//! ```

pub mod alloc;
pub mod fs;
pub mod packed;
pub mod ptr;

pub use alloc::{AllocV4, DataType};
pub use fs::{Dirent, Extent, Inode};
pub use packed::PackedKeys;
pub use ptr::{BtreePtrV2, ExtentPtr};

use crate::bpos::Bpos;
use crate::encode::{Reader, Writer};
use crate::error::{ErrCode, Error, Result};

pub const KEY_HEADER_BYTES: usize = 32;
/// Largest value a key may carry.
pub const MAX_VAL_BYTES: usize = 4096;

crate::ids::stable_ids! {
    /// Key types with bcachefs's `KEY_TYPE_*` numbers.
    pub enum KeyType {
        Deleted = 0, "deleted";
        Whiteout = 1, "whiteout";
        Extent = 6, "extent";
        Inode = 8, "inode";
        Dirent = 10, "dirent";
        Xattr = 11, "xattr";
        BtreePtrV2 = 18, "btree_ptr_v2";
        Set = 25, "set";
        AllocV4 = 27, "alloc_v4";
    }
}

impl KeyType {
    /// Deleted and whiteout keys say "nothing here".
    pub fn is_deleted(self) -> bool {
        matches!(self, KeyType::Deleted | KeyType::Whiteout)
    }
}

/// Fields of a fixed-size on-disk layout (a node or bset header, the fixed part of a value),
/// read and written at `OFF_*` constants. A field that would run past the end of the layout
/// fails to compile, and a value of the wrong width is a type error, so no access can fail at
/// run time.
pub trait FixedFields {
    /// The `N` bytes at offset `OFF`.
    fn field<const OFF: usize, const N: usize>(&self) -> [u8; N];
    /// Sets the `N` bytes at offset `OFF`.
    fn set_field<const OFF: usize, const N: usize>(&mut self, v: [u8; N]);
}

// Each access is in bounds: the inline const fails to compile any instance where it is not.
impl<const LEN: usize> FixedFields for [u8; LEN] {
    fn field<const OFF: usize, const N: usize>(&self) -> [u8; N] {
        const { assert!(OFF + N <= LEN, "field runs past the end of its layout") };
        let mut v = [0; N];
        v.copy_from_slice(&self[OFF..OFF + N]);
        v
    }

    fn set_field<const OFF: usize, const N: usize>(&mut self, v: [u8; N]) {
        const { assert!(OFF + N <= LEN, "field runs past the end of its layout") };
        self[OFF..OFF + N].copy_from_slice(&v);
    }
}

/// Encodes a key from its parts, for holders of keys that are not [`Bkey`]s.
pub fn encode_key(w: &mut Writer, pos: Bpos, ty: KeyType, size: u32, val: &[u8]) {
    // One append per key (node write-back encodes millions): the header and the value
    // assembled in a buffer first when the value is small.
    let mut buf = [0u8; KEY_HEADER_BYTES + 32];
    let padded = val.len().next_multiple_of(8);
    let fields: [&[u8]; 7] = [
        &[ty as u8, 0],
        &(val.len() as u16).to_le_bytes(),
        &size.to_le_bytes(),
        &pos.inode.to_le_bytes(),
        &pos.offset.to_le_bytes(),
        &pos.snapshot.to_le_bytes(),
        &[0; 4],
    ];
    let mut at = 0;
    for f in fields {
        if let Some(dst) = buf.get_mut(at..at + f.len()) {
            dst.copy_from_slice(f);
        }
        at += f.len();
    }
    match buf.get_mut(KEY_HEADER_BYTES..KEY_HEADER_BYTES + val.len()) {
        Some(dst) => {
            dst.copy_from_slice(val);
            w.bytes(buf.get(..KEY_HEADER_BYTES + padded).unwrap_or_default());
        }
        None => {
            w.bytes(buf.get(..KEY_HEADER_BYTES).unwrap_or_default());
            w.bytes(val);
            w.pad_to(8);
        }
    }
}

/// A key whose value is borrowed: what scans that only look at keys pass around, so that a scan
/// of millions of keys does not copy each value to the heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRef<'a> {
    pub pos: Bpos,
    pub ty: KeyType,
    pub size: u32,
    pub val: &'a [u8],
}

impl<'a> KeyRef<'a> {
    /// The key with its value copied out.
    pub fn to_bkey(&self) -> Bkey {
        let mut k = Bkey::new(self.pos, self.ty, self.val.to_vec());
        k.size = self.size;
        k
    }

    /// Decodes one key in place; the reader's code is the caller's "invalid key" error.
    ///
    /// The fixed header is taken with one bounds check and its fields split out of the array:
    /// journal read decodes every key of the journal twice, and per-field reads cost it a third
    /// of its time.
    pub fn decode(r: &mut Reader<'a>) -> Result<KeyRef<'a>> {
        let h = r.array::<KEY_HEADER_BYTES>()?;
        let [raw_ty] = h.field::<0, 1>();
        let val_bytes = usize::from(u16::from_le_bytes(h.field::<2, 2>()));
        let size = u32::from_le_bytes(h.field::<4, 4>());
        let inode = u64::from_le_bytes(h.field::<8, 8>());
        let offset = u64::from_le_bytes(h.field::<16, 8>());
        let snapshot = u32::from_le_bytes(h.field::<24, 4>());
        let ty =
            KeyType::from_u8(raw_ty).ok_or_else(|| r.error(format_args!("unknown key type {raw_ty}")))?;
        if val_bytes > MAX_VAL_BYTES {
            return Err(r.error(format_args!("value of {val_bytes} bytes")));
        }
        let val = r.take(val_bytes)?;
        r.align_to(8)?;
        Ok(KeyRef { pos: Bpos { inode, offset, snapshot }, ty, size, val })
    }

    pub fn is_deleted(&self) -> bool {
        self.ty.is_deleted()
    }

    /// Checks the key can be encoded (value length limit).
    pub fn validate(&self) -> Result<()> {
        if self.val.len() > MAX_VAL_BYTES {
            return Err(Error::new(ErrCode::InvalidArgument, format!("value of {} bytes", self.val.len()))
                .pos(self.pos));
        }
        Ok(())
    }

    pub fn to_key(&self) -> Bkey {
        Bkey { pos: self.pos, ty: self.ty, size: self.size, val: self.val.into() }
    }
}

/// A key with its value bytes. Typed values: [`alloc::AllocV4`], [`ptr::BtreePtrV2`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bkey {
    pub pos: Bpos,
    pub ty: KeyType,
    /// Extent size in sectors; 0 for other keys.
    pub size: u32,
    pub val: Box<[u8]>,
}

impl Bkey {
    pub fn new(pos: Bpos, ty: KeyType, val: impl Into<Box<[u8]>>) -> Self {
        Bkey { pos, ty, size: 0, val: val.into() }
    }

    /// A whiteout at `pos`: a deletion that must reach the disk.
    pub fn whiteout(pos: Bpos) -> Self {
        Bkey { pos, ty: KeyType::Whiteout, size: 0, val: Box::new([]) }
    }

    /// A deleted key at `pos`, what `peek_slot` returns for an empty slot.
    pub fn deleted(pos: Bpos) -> Self {
        Bkey { pos, ty: KeyType::Deleted, size: 0, val: Box::new([]) }
    }

    pub fn is_deleted(&self) -> bool {
        self.ty.is_deleted()
    }

    pub fn as_ref(&self) -> KeyRef<'_> {
        KeyRef { pos: self.pos, ty: self.ty, size: self.size, val: &self.val }
    }

    /// Encoded length in bytes, header and padding included.
    pub fn encoded_bytes(&self) -> usize {
        KEY_HEADER_BYTES + self.val.len().next_multiple_of(8)
    }

    pub fn encode(&self, w: &mut Writer) {
        encode_key(w, self.pos, self.ty, self.size, &self.val);
    }

    /// Decodes one key; the reader's code is the caller's "invalid key" error.
    pub fn decode(r: &mut Reader<'_>) -> Result<Bkey> {
        KeyRef::decode(r).map(|k| k.to_key())
    }

    /// Checks the key can be encoded (value length limit).
    pub fn validate(&self) -> Result<()> {
        self.as_ref().validate()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn arb_key() -> impl Strategy<Value = Bkey> {
        (
            any::<(u64, u64, u32)>(),
            prop::sample::select(vec![
                KeyType::Deleted,
                KeyType::Whiteout,
                KeyType::Extent,
                KeyType::Inode,
                KeyType::BtreePtrV2,
                KeyType::AllocV4,
                KeyType::Set,
            ]),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..100),
        )
            .prop_map(|((i, o, s), ty, size, val)| Bkey {
                pos: Bpos::new(i, o, s),
                ty,
                size,
                val: val.into(),
            })
    }

    proptest! {
        /// Every key decodes to itself, and the encoded length is what `encoded_bytes` says.
        #[test]
        fn round_trip(keys in prop::collection::vec(arb_key(), 0..20)) {
            let mut w = Writer::new();
            for k in &keys {
                k.encode(&mut w);
            }
            prop_assert_eq!(w.len(), keys.iter().map(Bkey::encoded_bytes).sum::<usize>());
            let bytes = w.into_vec();
            let mut r = Reader::new(&bytes, "keys", ErrCode::BtreeNodeReadErr);
            for k in &keys {
                prop_assert_eq!(&Bkey::decode(&mut r).unwrap(), k);
            }
            prop_assert!(r.is_empty());
        }

        /// Garbage never panics the decoder.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut r = Reader::new(&bytes, "keys", ErrCode::BtreeNodeReadErr);
            while !r.is_empty() {
                if Bkey::decode(&mut r).is_err() {
                    break;
                }
            }
        }
    }
}
