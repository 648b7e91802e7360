//! Journal entries on disk: `jset`s written block-aligned into each device's journal buckets.
//!
//! ```text
//! jset header (40 bytes)
//!  0 csum        u32  crc32c of bytes [4, bytes)
//!  4 bytes       u32  header and entries, before padding to the block size
//!  8 magic       u64  fs_magic(uuid, JSET_SALT)
//! 16 seq         u64
//! 24 last_seq    u64  oldest seq replay still needs when this entry was written
//! 32 version     u16  FORMAT_VERSION
//! 34 flags       u16  bit 0: NO_FLUSH (written without a flush; not a replay end point)
//! 36 nr_entries  u32
//! entry: {bytes u32 (header included, multiple of 8), type u8, btree u8, level u8, reserved u8}
//!   btree_keys (1), overwrite (4): keys in bkey encoding
//!   btree_root (2): one btree_ptr_v2 key at POS_MAX
//!   blacklist (3): {start u64, end u64}: journal seqs [start, end) are blacklisted
//! ```
//! An entry never crosses a bucket boundary; the rest of a bucket after its last entry is left
//! as it was, which a reader recognises by magic, seq and checksum.

use fs_core::bkey::{Bkey, BtreePtrV2, KeyRef, KeyType, PackedKeys};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::encode::{Reader, Writer};
use fs_core::error::{ErrCode, Error, Result};

/// Salt for journal entry magic numbers.
pub const JSET_SALT: u64 = 0x6263_7369_6d5f_6a65; // "bcsim_je"
pub const JSET_HEADER_BYTES: usize = 40;
pub const ENTRY_HEADER_BYTES: usize = 8;
pub const JSET_NO_FLUSH: u16 = 1 << 0;

const TYPE_BTREE_KEYS: u8 = 1;
const TYPE_BTREE_ROOT: u8 = 2;
const TYPE_BLACKLIST: u8 = 3;
const TYPE_OVERWRITE: u8 = 4;

/// One entry inside a jset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsetEntry {
    /// Updates to replay into `btree` at `level`.
    BtreeKeys { btree: BtreeId, level: u8, keys: PackedKeys },
    /// The root of `btree` as of this entry.
    BtreeRoot { btree: BtreeId, level: u8, ptr: BtreePtrV2 },
    /// Journal seqs `[start, end)` must be ignored: written, but never made durable as a whole.
    Blacklist { start: u64, end: u64 },
    /// The values the keys of this entry overwrote (for `list-journal`; not replayed).
    Overwrite { btree: BtreeId, level: u8, keys: PackedKeys },
}

impl JsetEntry {
    /// Encoded size in bytes, header included.
    pub fn encoded_bytes(&self) -> usize {
        ENTRY_HEADER_BYTES
            + match self {
                JsetEntry::BtreeKeys { keys, .. } | JsetEntry::Overwrite { keys, .. } => keys.bytes().len(),
                JsetEntry::BtreeRoot { ptr, .. } => {
                    fs_core::bkey::KEY_HEADER_BYTES + (40 + 16 * ptr.ptrs.len()).next_multiple_of(8)
                }
                JsetEntry::Blacklist { .. } => 16,
            }
    }

    fn encode(&self, w: &mut Writer) {
        let start = w.len();
        w.u32(0);
        let (ty, btree, level) = match self {
            JsetEntry::BtreeKeys { btree, level, .. } => (TYPE_BTREE_KEYS, *btree as u8, *level),
            JsetEntry::BtreeRoot { btree, level, .. } => (TYPE_BTREE_ROOT, *btree as u8, *level),
            JsetEntry::Blacklist { .. } => (TYPE_BLACKLIST, 0, 0),
            JsetEntry::Overwrite { btree, level, .. } => (TYPE_OVERWRITE, *btree as u8, *level),
        };
        w.u8(ty);
        w.u8(btree);
        w.u8(level);
        w.u8(0);
        match self {
            JsetEntry::BtreeKeys { keys, .. } | JsetEntry::Overwrite { keys, .. } => w.bytes(keys.bytes()),
            JsetEntry::BtreeRoot { ptr, .. } => {
                Bkey::new(Bpos::MAX, KeyType::BtreePtrV2, ptr.encode()).encode(w)
            }
            JsetEntry::Blacklist { start, end } => {
                w.u64(*start);
                w.u64(*end);
            }
        }
        let bytes = (w.len() - start) as u32;
        w.patch_u32(start, bytes);
    }

    /// Decodes one entry; with `keys` false, the keys of btree_keys and overwrite entries are
    /// checked but not kept.
    fn decode(r: &mut Reader<'_>, keys: bool) -> Result<JsetEntry> {
        let bytes = r.u32()? as usize;
        let ty = r.u8()?;
        let raw_btree = r.u8()?;
        let level = r.u8()?;
        r.skip(1)?;
        if bytes < ENTRY_HEADER_BYTES || bytes % 8 != 0 {
            return Err(r.error(format_args!("journal entry length {bytes}")));
        }
        let mut body = r.sub(bytes - ENTRY_HEADER_BYTES, "journal entry")?;
        let btree = || {
            BtreeId::from_u8(raw_btree)
                .ok_or_else(|| body_error(format_args!("unknown btree id {raw_btree}")))
        };
        let entry = match ty {
            TYPE_BTREE_KEYS | TYPE_OVERWRITE => {
                let btree = btree()?;
                let keys = if keys {
                    PackedKeys::decode(&mut body)?
                } else {
                    PackedKeys::check(&mut body)?;
                    PackedKeys::default()
                };
                if ty == TYPE_BTREE_KEYS {
                    JsetEntry::BtreeKeys { btree, level, keys }
                } else {
                    JsetEntry::Overwrite { btree, level, keys }
                }
            }
            TYPE_BTREE_ROOT => {
                let k = Bkey::decode(&mut body)?;
                if k.ty != KeyType::BtreePtrV2 || !body.is_empty() {
                    return Err(body_error("btree_root entry is not one btree_ptr_v2 key"));
                }
                JsetEntry::BtreeRoot { btree: btree()?, level, ptr: BtreePtrV2::decode(&k.val)? }
            }
            TYPE_BLACKLIST => {
                let (start, end) = (body.u64()?, body.u64()?);
                if start >= end || !body.is_empty() {
                    return Err(body_error(format_args!("blacklist entry {start}..{end}")));
                }
                JsetEntry::Blacklist { start, end }
            }
            _ => return Err(body_error(format_args!("unknown journal entry type {ty}"))),
        };
        Ok(entry)
    }
}

fn body_error(msg: impl std::fmt::Display) -> Error {
    Error::new(ErrCode::JournalReadErr, format!("journal entry invalid: {msg}"))
}

/// A journal entry (`struct jset`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jset {
    pub seq: u64,
    pub last_seq: u64,
    pub flags: u16,
    pub entries: Vec<JsetEntry>,
}

impl Jset {
    pub fn no_flush(&self) -> bool {
        self.flags & JSET_NO_FLUSH != 0
    }

    /// Encoded size before padding.
    pub fn encoded_bytes(&self) -> usize {
        JSET_HEADER_BYTES + self.entries.iter().map(JsetEntry::encoded_bytes).sum::<usize>()
    }

    /// Encodes the entry padded with zeros to a multiple of `block_size`.
    pub fn encode(&self, magic: u64, block_size: usize) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.encoded_bytes().next_multiple_of(block_size.max(1)));
        w.u32(0);
        w.u32(0);
        w.u64(magic);
        w.u64(self.seq);
        w.u64(self.last_seq);
        w.u16(fs_core::sb::FORMAT_VERSION);
        w.u16(self.flags);
        w.u32(self.entries.len() as u32);
        for e in &self.entries {
            e.encode(&mut w);
        }
        let bytes = w.len() as u32;
        w.patch_u32(4, bytes);
        let csum = crc32c::crc32c(w.as_slice().get(4..).unwrap_or_default());
        w.patch_u32(0, csum);
        w.pad_to(block_size.max(1));
        w.into_vec()
    }
}

/// What a reader finds at a block.
#[derive(Debug)]
pub enum JsetRead {
    /// No entry of this filesystem starts here (zeros, another filesystem's bytes, garbage).
    Empty,
    /// An entry of this filesystem whose checksum does not match: damaged or torn.
    BadChecksum { seq: u64, bytes: u32 },
    /// A good entry taking `bytes` (before padding).
    Good { jset: Jset, bytes: u32, csum: u32 },
    /// A good entry the caller said it already has (same seq, length and checksum): not
    /// decoded.
    Known { seq: u64, bytes: u32 },
}

/// The seq of the jset header at the start of `buf` if it carries this filesystem's magic (the
/// checksum is not checked: this only locates the newest bucket).
pub fn peek_seq(buf: &[u8], magic: u64) -> Option<u64> {
    let h = buf.get(..JSET_HEADER_BYTES)?;
    let mut r = Reader::new(h, "jset header", ErrCode::JournalReadErr);
    r.skip(8).ok()?;
    (r.u64().ok()? == magic).then(|| r.u64().ok()).flatten()
}

/// Decodes the jset at the start of `buf`. Only a malformed entry behind a good checksum is
/// an error (a bug or a collision, not damage).
pub fn decode_jset(buf: &[u8], magic: u64) -> Result<JsetRead> {
    decode_jset_with(buf, magic, &Decode { known: &|_, _, _| false, keys: true })
}

/// Calls `f` with each key of the btree_keys entries of the jset at the start of `buf`, in
/// order, if it is a good entry with length `bytes` and checksum `csum` (as a scan found it);
/// `Ok(false)` if it is not. Recovery takes the keys to replay this way, straight from the
/// bytes of the copy it keeps.
pub fn for_each_btree_key(
    buf: &[u8],
    bytes: u32,
    csum: u32,
    mut f: impl FnMut(BtreeId, u8, KeyRef<'_>),
) -> Result<bool> {
    let Some(body) = buf.get(..bytes as usize).filter(|b| b.len() >= JSET_HEADER_BYTES) else {
        return Ok(false);
    };
    let mut r = Reader::new(body, "jset", ErrCode::JournalReadErr);
    if r.u32()? != csum || r.u32()? != bytes || crc32c::crc32c(body.get(4..).unwrap_or_default()) != csum {
        return Ok(false);
    }
    r.skip(JSET_HEADER_BYTES - 12)?;
    let nr_entries = r.u32()?;
    for _ in 0..nr_entries {
        let len = r.u32()? as usize;
        let ty = r.u8()?;
        let raw_btree = r.u8()?;
        let level = r.u8()?;
        r.skip(1)?;
        let mut e = r.sub(len.saturating_sub(ENTRY_HEADER_BYTES), "journal entry")?;
        if ty != TYPE_BTREE_KEYS {
            continue;
        }
        let btree = BtreeId::from_u8(raw_btree)
            .ok_or_else(|| body_error(format_args!("unknown btree id {raw_btree}")))?;
        while !e.is_empty() {
            f(btree, level, KeyRef::decode(&mut e)?);
        }
    }
    Ok(true)
}

/// How much of a good entry [`decode_jset_with`] decodes.
pub struct Decode<'a> {
    /// A good entry for which `known(seq, bytes, csum)` is true comes back as
    /// [`JsetRead::Known`] without being decoded: the journal read skips the replicas of entries
    /// it already holds.
    pub known: &'a dyn Fn(u64, u32, u32) -> bool,
    /// False: the keys of btree_keys and overwrite entries are checked but not kept (the
    /// journal read for recovery takes them later, from one copy only).
    pub keys: bool,
}

/// [`decode_jset`] with shortcuts.
pub fn decode_jset_with(buf: &[u8], magic: u64, how: &Decode<'_>) -> Result<JsetRead> {
    let Some(h) = buf.get(..JSET_HEADER_BYTES) else { return Ok(JsetRead::Empty) };
    let mut r = Reader::new(h, "jset header", ErrCode::JournalReadErr);
    let csum = r.u32()?;
    let bytes = r.u32()?;
    if r.u64()? != magic {
        return Ok(JsetRead::Empty);
    }
    let seq = r.u64()?;
    let last_seq = r.u64()?;
    let version = r.u16()?;
    let flags = r.u16()?;
    let nr_entries = r.u32()?;
    let body = match buf.get(..bytes as usize) {
        Some(b)
            if (bytes as usize) >= JSET_HEADER_BYTES
                && crc32c::crc32c(b.get(4..).unwrap_or_default()) == csum =>
        {
            b
        }
        _ => return Ok(JsetRead::BadChecksum { seq, bytes }),
    };
    if (how.known)(seq, bytes, csum) {
        return Ok(JsetRead::Known { seq, bytes });
    }
    if version != fs_core::sb::FORMAT_VERSION {
        return Err(Error::new(
            ErrCode::JournalReadErr,
            format!("journal entry version {version} unsupported"),
        )
        .journal_seq(seq));
    }
    if last_seq > seq {
        return Err(Error::new(
            ErrCode::JournalReadErr,
            format!("journal entry last_seq {last_seq} newer than its seq"),
        )
        .journal_seq(seq));
    }
    let mut r = Reader::new(body, "jset", ErrCode::JournalReadErr);
    r.skip(JSET_HEADER_BYTES)?;
    let mut entries = Vec::with_capacity((nr_entries as usize).min(1 << 16));
    for _ in 0..nr_entries {
        entries.push(JsetEntry::decode(&mut r, how.keys).map_err(|e| e.journal_seq(seq))?);
    }
    if !r.is_empty() {
        return Err(
            Error::new(ErrCode::JournalReadErr, "bytes after the last journal entry").journal_seq(seq)
        );
    }
    Ok(JsetRead::Good { jset: Jset { seq, last_seq, flags, entries }, bytes, csum })
}

#[cfg(test)]
mod tests {
    use fs_core::bkey::ExtentPtr;
    use proptest::prelude::*;

    use super::*;

    const MAGIC: u64 = 0xfeed;

    fn arb_jset() -> impl Strategy<Value = Jset> {
        let key = (any::<(u64, u64)>(), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|((i, o), v)| Bkey::new(Bpos::new(i, o, 0), KeyType::Set, v));
        let entry = prop_oneof![
            (0u8..18, prop::collection::vec(key.clone(), 0..10)).prop_map(|(b, keys)| {
                JsetEntry::BtreeKeys { btree: BtreeId::ALL[b as usize], level: 0, keys: keys.into() }
            }),
            (0u8..18, prop::collection::vec(key, 0..10)).prop_map(|(b, keys)| JsetEntry::Overwrite {
                btree: BtreeId::ALL[b as usize],
                level: 0,
                keys: keys.into()
            }),
            (1u64..1000, 1u64..100).prop_map(|(s, n)| JsetEntry::Blacklist { start: s, end: s + n }),
            (any::<u64>(), 0u8..4).prop_map(|(seq, level)| JsetEntry::BtreeRoot {
                btree: BtreeId::Alloc,
                level,
                ptr: BtreePtrV2 {
                    seq,
                    sectors_written: 9,
                    min_key: Bpos::MIN,
                    ptrs: vec![ExtentPtr { dev: 1, bucket_gen: 2, offset: 3 }],
                },
            }),
        ];
        (any::<u64>(), any::<u64>(), 0u16..2, prop::collection::vec(entry, 0..6))
            .prop_map(|(a, b, flags, entries)| Jset { seq: a.max(b), last_seq: a.min(b), flags, entries })
    }

    proptest! {
        /// A jset decodes to itself from its padded encoding; its size is what encoded_bytes says.
        #[test]
        fn round_trip(j in arb_jset()) {
            let bytes = j.encode(MAGIC, 4096);
            prop_assert_eq!(bytes.len() % 4096, 0);
            match decode_jset(&bytes, MAGIC).unwrap() {
                JsetRead::Good { jset, bytes: n, .. } => {
                    prop_assert_eq!(n as usize, j.encoded_bytes());
                    prop_assert_eq!(jset, j);
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }

        /// Any flipped bit inside the entry is a bad checksum or not ours, never a good entry.
        #[test]
        fn flips_are_detected(j in arb_jset(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = j.encode(MAGIC, 512);
            let i = at.index(j.encoded_bytes());
            bytes[i] ^= 1 << bit;
            let good = matches!(decode_jset(&bytes, MAGIC), Ok(JsetRead::Good { .. }));
            prop_assert!(!good, "flip at byte {} bit {} decoded as good", i, bit);
        }
    }

    #[test]
    fn other_magic_and_zeros_are_empty() {
        let j = Jset { seq: 5, last_seq: 1, flags: 0, entries: Vec::new() };
        assert!(matches!(decode_jset(&j.encode(MAGIC, 512), MAGIC + 1).unwrap(), JsetRead::Empty));
        assert!(matches!(decode_jset(&[0u8; 512], MAGIC).unwrap(), JsetRead::Empty));
        assert!(matches!(decode_jset(&[0u8; 3], MAGIC).unwrap(), JsetRead::Empty));
    }
}
