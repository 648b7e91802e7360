//! Keys kept in their byte encoding: a journal entry's keys as read from disk.
//!
//! A journal holds tens of millions of keys and every replica of every entry is read. Decoding
//! each key into a [`Bkey`] costs a heap value per key and twice the memory of the encoding;
//! comparing two replicas key by key costs a walk over both. Here the keys of an entry stay one
//! validated byte string, read in place as [`KeyRef`]s, and replicas compare as bytes.

use crate::bkey::{Bkey, KeyRef};
use crate::encode::{Reader, Writer};
use crate::error::{ErrCode, Result};

/// Encoded keys, each known to decode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedKeys {
    bytes: Box<[u8]>,
    nr: usize,
}

impl PackedKeys {
    /// Takes every key left in `r`, checking that each decodes.
    pub fn decode(r: &mut Reader<'_>) -> Result<PackedKeys> {
        let start = r.pos();
        let nr = PackedKeys::check(r)?;
        Ok(PackedKeys { bytes: r.read_since(start).into(), nr })
    }

    /// Checks that every key left in `r` decodes, keeping none; returns how many there were.
    pub fn check(r: &mut Reader<'_>) -> Result<usize> {
        let mut nr = 0;
        while !r.is_empty() {
            KeyRef::decode(r)?;
            nr += 1;
        }
        Ok(nr)
    }

    pub fn len(&self) -> usize {
        self.nr
    }

    pub fn is_empty(&self) -> bool {
        self.nr == 0
    }

    /// The encoding: what a journal entry carries.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn iter(&self) -> impl Iterator<Item = KeyRef<'_>> + '_ {
        let mut r = Reader::new(&self.bytes, "packed keys", ErrCode::JournalReadErr);
        // Every key was checked when the bytes were made, so decoding cannot fail here; if it
        // did, the iteration would end early rather than panic.
        std::iter::from_fn(move || if r.is_empty() { None } else { KeyRef::decode(&mut r).ok() })
    }

    pub fn to_keys(&self) -> Vec<Bkey> {
        self.iter().map(|k| k.to_key()).collect()
    }
}

/// From keys or references to keys, encoded in order.
impl<K: std::borrow::Borrow<Bkey>> FromIterator<K> for PackedKeys {
    fn from_iter<I: IntoIterator<Item = K>>(iter: I) -> Self {
        let mut w = Writer::new();
        let mut nr = 0;
        for k in iter {
            k.borrow().encode(&mut w);
            nr += 1;
        }
        PackedKeys { bytes: w.into_vec().into(), nr }
    }
}

impl From<Vec<Bkey>> for PackedKeys {
    fn from(keys: Vec<Bkey>) -> Self {
        keys.iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bkey::KeyType;
    use crate::bpos::Bpos;

    /// Packing keeps every key, in order, and decoding the bytes gives the same packed keys;
    /// a key that does not decode makes the whole decode fail.
    #[test]
    fn round_trip_and_validation() {
        let keys: Vec<Bkey> = (0..50u64)
            .map(|i| Bkey::new(Bpos::new(i, i * 3, 1), KeyType::Set, vec![i as u8; (i % 20) as usize]))
            .collect();
        let packed = PackedKeys::from(keys.clone());
        assert_eq!(packed.len(), 50);
        assert_eq!(packed.to_keys(), keys);
        let mut r = Reader::new(packed.bytes(), "keys", ErrCode::JournalReadErr);
        assert_eq!(PackedKeys::decode(&mut r).unwrap(), packed);
        let mut bad = packed.bytes().to_vec();
        bad[0] = 200; // no such key type
        let mut r = Reader::new(&bad, "keys", ErrCode::JournalReadErr);
        assert!(PackedKeys::decode(&mut r).is_err());
    }
}
