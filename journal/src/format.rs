//! Journal entries on disk: `jset`s written block-aligned into each device's journal buckets.
//!
//! ```text
//! jset header (JSET_HEADER_BYTES = 40)
//!  0 csum        u32  crc32c of bytes [4, bytes)
//!  4 bytes       u32  header and entries, before padding to the block size
//!  8 magic       u64  fs_magic(uuid, JSET_SALT)
//! 16 seq         u64
//! 24 last_seq    u64  oldest seq replay still needs when this entry was written; <= seq
//! 32 version     u16  FORMAT_VERSION
//! 34 flags       u16  bit 0: NO_FLUSH (written without a flush; not a replay end point)
//! 36 nr_entries  u32
//! 40 entries     nr_entries of them, back to back, then nothing up to `bytes`
//!
//! entry header (ENTRY_HEADER_BYTES = 8), then the body
//!  0 bytes       u32  header included, a multiple of 8
//!  4 type        u8   below
//!  5 btree       u8   btree id (0 for blacklist)
//!  6 level       u8   btree level (0 for blacklist)
//!  7 reserved    u8   zero
//!
//! bodies
//!   btree_keys (1), overwrite (4): keys in bkey encoding
//!   btree_root (2): one btree_ptr_v2 key at POS_MAX
//!   blacklist (3): 0 start u64, 8 end u64: journal seqs [start, end) are blacklisted; start < end
//! ```
//! An entry never crosses a bucket boundary; the rest of a bucket after its last entry is left
//! as it was, which a reader recognises by magic, seq and checksum.
//!
//! Every way of reading a jset goes through one walker ([`walk_jset`]): it makes every check of a
//! good jset's contents (version, `last_seq`, each entry's length, type, btree id and body, no
//! bytes after the last entry) and reports a failure as a [`JsetInvalid`]. [`decode_jset`]
//! builds the entries from the walk; [`for_each_btree_key`], recovery's path for the keys to
//! replay, hands each btree key out of the walk as it is checked, allocating nothing per key. A
//! jset one accepts the other accepts, and one they reject they reject for the same reason.

use fs_core::bkey::{Bkey, BtreePtrV2, KeyRef, KeyType, PackedKeys};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::encode::{Reader, Writer};
use fs_core::error::{ErrCode, Error, Result};

/// Salt for journal entry magic numbers.
pub const JSET_SALT: u64 = 0x6263_7369_6d5f_6a65; // "bcsim_je"
pub const JSET_NO_FLUSH: u16 = 1 << 0;

pub const JSET_HEADER_BYTES: usize = 40;
const OFF_CSUM: usize = 0;
const OFF_BYTES: usize = OFF_CSUM + 4;
const OFF_MAGIC: usize = OFF_BYTES + 4;
const OFF_SEQ: usize = OFF_MAGIC + 8;
const OFF_LAST_SEQ: usize = OFF_SEQ + 8;
const OFF_VERSION: usize = OFF_LAST_SEQ + 8;
const OFF_FLAGS: usize = OFF_VERSION + 2;
const OFF_NR_ENTRIES: usize = OFF_FLAGS + 2;
const OFF_ENTRIES: usize = OFF_NR_ENTRIES + 4;
const _: () = assert!(OFF_ENTRIES == JSET_HEADER_BYTES);

pub const ENTRY_HEADER_BYTES: usize = 8;
const ENTRY_OFF_BYTES: usize = 0;
const ENTRY_OFF_TYPE: usize = ENTRY_OFF_BYTES + 4;
const ENTRY_OFF_BTREE: usize = ENTRY_OFF_TYPE + 1;
const ENTRY_OFF_LEVEL: usize = ENTRY_OFF_BTREE + 1;
const ENTRY_OFF_RESERVED: usize = ENTRY_OFF_LEVEL + 1;
const ENTRY_OFF_BODY: usize = ENTRY_OFF_RESERVED + 1;
const _: () = assert!(ENTRY_OFF_BODY == ENTRY_HEADER_BYTES);

/// Entry lengths, and so entry starts, are multiples of this.
const ENTRY_ALIGN: usize = 8;

const BLACKLIST_OFF_START: usize = 0;
const BLACKLIST_OFF_END: usize = BLACKLIST_OFF_START + 8;
const BLACKLIST_BYTES: usize = BLACKLIST_OFF_END + 8;

const TYPE_BTREE_KEYS: u8 = 1;
const TYPE_BTREE_ROOT: u8 = 2;
const TYPE_BLACKLIST: u8 = 3;
const TYPE_OVERWRITE: u8 = 4;

/// `N` little-endian bytes at `at`. Every caller reads a field of a fixed-size header at a
/// constant offset checked against the header's size above, so the zeros are never returned.
fn field<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    buf.get(at..).and_then(|b| b.first_chunk::<N>()).copied().unwrap_or([0; N])
}

/// Writes `v` at `at`; as [`field`], always inside the header it is given.
fn put(buf: &mut [u8], at: usize, v: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at.saturating_add(v.len())) {
        dst.copy_from_slice(v);
    }
}

/// The checksum a jset's first `bytes` bytes must carry: crc32c of everything after the
/// checksum field.
fn jset_csum(jset: &[u8]) -> u32 {
    crc32c::crc32c(jset.get(OFF_BYTES..).unwrap_or_default())
}

/// The header of a jset, field by field (the layout at the top of this file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JsetHeader {
    pub csum: u32,
    pub bytes: u32,
    pub magic: u64,
    pub seq: u64,
    pub last_seq: u64,
    pub version: u16,
    pub flags: u16,
    pub nr_entries: u32,
}

impl JsetHeader {
    pub fn to_bytes(&self) -> [u8; JSET_HEADER_BYTES] {
        let mut h = [0u8; JSET_HEADER_BYTES];
        put(&mut h, OFF_CSUM, &self.csum.to_le_bytes());
        put(&mut h, OFF_BYTES, &self.bytes.to_le_bytes());
        put(&mut h, OFF_MAGIC, &self.magic.to_le_bytes());
        put(&mut h, OFF_SEQ, &self.seq.to_le_bytes());
        put(&mut h, OFF_LAST_SEQ, &self.last_seq.to_le_bytes());
        put(&mut h, OFF_VERSION, &self.version.to_le_bytes());
        put(&mut h, OFF_FLAGS, &self.flags.to_le_bytes());
        put(&mut h, OFF_NR_ENTRIES, &self.nr_entries.to_le_bytes());
        h
    }

    pub fn from_bytes(h: &[u8; JSET_HEADER_BYTES]) -> JsetHeader {
        JsetHeader {
            csum: u32::from_le_bytes(field(h, OFF_CSUM)),
            bytes: u32::from_le_bytes(field(h, OFF_BYTES)),
            magic: u64::from_le_bytes(field(h, OFF_MAGIC)),
            seq: u64::from_le_bytes(field(h, OFF_SEQ)),
            last_seq: u64::from_le_bytes(field(h, OFF_LAST_SEQ)),
            version: u16::from_le_bytes(field(h, OFF_VERSION)),
            flags: u16::from_le_bytes(field(h, OFF_FLAGS)),
            nr_entries: u32::from_le_bytes(field(h, OFF_NR_ENTRIES)),
        }
    }

    /// The header at the start of `buf`; `None` if `buf` is shorter than a header.
    pub fn read(buf: &[u8]) -> Option<JsetHeader> {
        buf.first_chunk::<JSET_HEADER_BYTES>().map(JsetHeader::from_bytes)
    }

    /// The header's own rules, checked once the checksum has vouched for it.
    fn check(&self) -> Result<(), JsetInvalid> {
        if self.version != fs_core::sb::FORMAT_VERSION {
            return Err(JsetInvalid::Version { version: self.version });
        }
        if self.last_seq > self.seq {
            return Err(JsetInvalid::LastSeqAfterSeq { last_seq: self.last_seq, seq: self.seq });
        }
        Ok(())
    }
}

/// An entry header (the layout at the top of this file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntryHeader {
    bytes: u32,
    ty: u8,
    btree: u8,
    level: u8,
}

impl EntryHeader {
    fn to_bytes(self) -> [u8; ENTRY_HEADER_BYTES] {
        let mut h = [0u8; ENTRY_HEADER_BYTES];
        put(&mut h, ENTRY_OFF_BYTES, &self.bytes.to_le_bytes());
        put(&mut h, ENTRY_OFF_TYPE, &[self.ty]);
        put(&mut h, ENTRY_OFF_BTREE, &[self.btree]);
        put(&mut h, ENTRY_OFF_LEVEL, &[self.level]);
        h
    }

    fn from_bytes(h: &[u8; ENTRY_HEADER_BYTES]) -> EntryHeader {
        EntryHeader {
            bytes: u32::from_le_bytes(field(h, ENTRY_OFF_BYTES)),
            ty: u8::from_le_bytes(field(h, ENTRY_OFF_TYPE)),
            btree: u8::from_le_bytes(field(h, ENTRY_OFF_BTREE)),
            level: u8::from_le_bytes(field(h, ENTRY_OFF_LEVEL)),
        }
    }
}

/// Why a jset whose checksum is good is still refused: a bug or a checksum collision, not
/// damage. Both ways of reading a jset refuse it for the same reason; it travels as the
/// `source` of a `journal_read_err` carrying the jset's seq ([`JsetInvalid::of`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsetInvalid {
    /// `version` is not [`fs_core::sb::FORMAT_VERSION`].
    Version {
        version: u16,
    },
    /// `last_seq` is newer than the jset's own seq.
    LastSeqAfterSeq {
        last_seq: u64,
        seq: u64,
    },
    /// Entry `entry` (counted from 0) gives a length below its header or not a multiple of 8.
    EntryLength {
        entry: u32,
        bytes: u32,
    },
    /// Entry `entry`, or its header, runs past the jset's `bytes`.
    EntryPastEnd {
        entry: u32,
    },
    /// Bytes between the last of `nr_entries` entries and the jset's `bytes`.
    TrailingBytes {
        bytes: usize,
    },
    UnknownEntryType {
        entry: u32,
        ty: u8,
    },
    UnknownBtree {
        entry: u32,
        btree: u8,
    },
    /// A key of a btree_keys or overwrite entry does not decode.
    Key {
        entry: u32,
        why: String,
    },
    /// A btree_root entry is not one valid btree_ptr_v2 key.
    Root {
        entry: u32,
        why: String,
    },
    /// A blacklist entry's body is not two seqs.
    BlacklistLength {
        entry: u32,
        bytes: usize,
    },
    /// A blacklist entry's range is empty or backwards.
    BlacklistRange {
        entry: u32,
        start: u64,
        end: u64,
    },
}

impl JsetInvalid {
    /// The reason an error from [`decode_jset`] or [`for_each_btree_key`] carries, if it is one.
    pub fn of(e: &Error) -> Option<&JsetInvalid> {
        std::error::Error::source(e)?.downcast_ref::<JsetInvalid>()
    }

    /// As an error: `journal_read_err`, with the jset's seq.
    fn at(self, seq: u64) -> Error {
        Error::new(ErrCode::JournalReadErr, "journal entry invalid").journal_seq(seq).source(self)
    }
}

impl std::fmt::Display for JsetInvalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsetInvalid::Version { version } => write!(
                f,
                "version {version} unsupported (this bcsim reads version {})",
                fs_core::sb::FORMAT_VERSION
            ),
            JsetInvalid::LastSeqAfterSeq { last_seq, seq } => {
                write!(f, "last_seq {last_seq} newer than its seq {seq}")
            }
            JsetInvalid::EntryLength { entry, bytes } => write!(
                f,
                "entry {entry} length {bytes}: not a multiple of {ENTRY_ALIGN} of at least {ENTRY_HEADER_BYTES}"
            ),
            JsetInvalid::EntryPastEnd { entry } => write!(f, "entry {entry} runs past the end of the jset"),
            JsetInvalid::TrailingBytes { bytes } => write!(f, "{bytes} bytes after the last entry"),
            JsetInvalid::UnknownEntryType { entry, ty } => write!(f, "entry {entry}: unknown type {ty}"),
            JsetInvalid::UnknownBtree { entry, btree } => {
                write!(f, "entry {entry}: unknown btree id {btree}")
            }
            JsetInvalid::Key { entry, why } => write!(f, "entry {entry}: {why}"),
            JsetInvalid::Root { entry, why } => write!(f, "entry {entry}: btree_root {why}"),
            JsetInvalid::BlacklistLength { entry, bytes } => {
                write!(f, "entry {entry}: blacklist body of {bytes} bytes, not {BLACKLIST_BYTES}")
            }
            JsetInvalid::BlacklistRange { entry, start, end } => {
                write!(f, "entry {entry}: blacklist {start}..{end} is empty")
            }
        }
    }
}

impl std::error::Error for JsetInvalid {}

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
                JsetEntry::BtreeRoot { ptr, .. } => ptr.key_bytes(),
                JsetEntry::Blacklist { .. } => BLACKLIST_BYTES,
            }
    }

    fn encode(&self, w: &mut Writer) {
        let start = w.len();
        let (ty, btree, level) = match self {
            JsetEntry::BtreeKeys { btree, level, .. } => (TYPE_BTREE_KEYS, *btree as u8, *level),
            JsetEntry::BtreeRoot { btree, level, .. } => (TYPE_BTREE_ROOT, *btree as u8, *level),
            JsetEntry::Blacklist { .. } => (TYPE_BLACKLIST, 0, 0),
            JsetEntry::Overwrite { btree, level, .. } => (TYPE_OVERWRITE, *btree as u8, *level),
        };
        // The length goes in once the body is written.
        w.bytes(&EntryHeader { bytes: 0, ty, btree, level }.to_bytes());
        match self {
            JsetEntry::BtreeKeys { keys, .. } | JsetEntry::Overwrite { keys, .. } => w.bytes(keys.bytes()),
            JsetEntry::BtreeRoot { ptr, .. } => {
                Bkey::new(Bpos::MAX, KeyType::BtreePtrV2, ptr.encode()).encode(w)
            }
            JsetEntry::Blacklist { start, end } => {
                let mut body = [0u8; BLACKLIST_BYTES];
                put(&mut body, BLACKLIST_OFF_START, &start.to_le_bytes());
                put(&mut body, BLACKLIST_OFF_END, &end.to_le_bytes());
                w.bytes(&body);
            }
        }
        let bytes = (w.len() - start) as u32;
        w.patch_u32(start + ENTRY_OFF_BYTES, bytes);
    }
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
        // Length and checksum go in once the entries are written.
        let header = JsetHeader {
            csum: 0,
            bytes: 0,
            magic,
            seq: self.seq,
            last_seq: self.last_seq,
            version: fs_core::sb::FORMAT_VERSION,
            flags: self.flags,
            nr_entries: self.entries.len() as u32,
        };
        w.bytes(&header.to_bytes());
        for e in &self.entries {
            e.encode(&mut w);
        }
        let bytes = w.len() as u32;
        w.patch_u32(OFF_BYTES, bytes);
        let csum = jset_csum(w.as_slice());
        w.patch_u32(OFF_CSUM, csum);
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
    JsetHeader::read(buf).filter(|h| h.magic == magic).map(|h| h.seq)
}

/// A jset at the start of a buffer with its header read and its checksum checked, nothing more.
enum Found<'a> {
    /// Not this filesystem's: too short for a header, or another magic.
    NotOurs,
    /// Ours, but `bytes` is below a header, past the buffer, or the checksum does not match.
    BadChecksum(JsetHeader),
    /// `jset` is the entry's `bytes` bytes, header included.
    Good { header: JsetHeader, jset: &'a [u8] },
}

fn find_jset(buf: &[u8], magic: u64) -> Found<'_> {
    let Some(header) = JsetHeader::read(buf).filter(|h| h.magic == magic) else { return Found::NotOurs };
    match buf.get(..header.bytes as usize) {
        Some(jset) if jset.len() >= JSET_HEADER_BYTES && jset_csum(jset) == header.csum => {
            Found::Good { header, jset }
        }
        _ => Found::BadChecksum(header),
    }
}

/// What a walk over a good jset does with what it has checked.
trait Visit<'a> {
    /// True: btree_keys and overwrite entries reach [`Visit::entry`] with their keys. False: they
    /// arrive without keys, and each key of a btree_keys entry goes to [`Visit::btree_key`] as it
    /// is checked. Either way each key is decoded, and so checked, exactly once.
    fn keep_keys(&self) -> bool;
    fn btree_key(&mut self, btree: BtreeId, level: u8, key: KeyRef<'a>);
    fn entry(&mut self, entry: JsetEntry);
}

/// Every check of a good jset's contents, for every way of reading one: the header's rules, then
/// each of its `nr_entries` entries in order (length, type, btree id, body), then nothing left
/// up to `bytes`. `jset` is the entry's `bytes` bytes, header included. Stops at the first
/// failure, after `v` has seen the entries and keys before it.
fn walk_jset<'a>(header: &JsetHeader, jset: &'a [u8], v: &mut impl Visit<'a>) -> Result<(), JsetInvalid> {
    header.check()?;
    let mut rest = jset.get(OFF_ENTRIES..).unwrap_or_default();
    for entry in 0..header.nr_entries {
        let eh = rest
            .first_chunk::<ENTRY_HEADER_BYTES>()
            .map(EntryHeader::from_bytes)
            .ok_or(JsetInvalid::EntryPastEnd { entry })?;
        let len = eh.bytes as usize;
        if len < ENTRY_HEADER_BYTES || len % ENTRY_ALIGN != 0 {
            return Err(JsetInvalid::EntryLength { entry, bytes: eh.bytes });
        }
        let (this, after) = rest.split_at_checked(len).ok_or(JsetInvalid::EntryPastEnd { entry })?;
        rest = after;
        walk_entry(entry, eh, this.get(ENTRY_OFF_BODY..).unwrap_or_default(), v)?;
    }
    if !rest.is_empty() {
        return Err(JsetInvalid::TrailingBytes { bytes: rest.len() });
    }
    Ok(())
}

/// Checks entry number `entry`, whose header is `eh` and body `body`, and hands it to `v`.
fn walk_entry<'a>(
    entry: u32,
    eh: EntryHeader,
    body: &'a [u8],
    v: &mut impl Visit<'a>,
) -> Result<(), JsetInvalid> {
    let btree = || BtreeId::from_u8(eh.btree).ok_or(JsetInvalid::UnknownBtree { entry, btree: eh.btree });
    let level = eh.level;
    let checked = match eh.ty {
        TYPE_BTREE_KEYS => {
            let btree = btree()?;
            JsetEntry::BtreeKeys { btree, level, keys: walk_keys(entry, Some((btree, level)), body, v)? }
        }
        TYPE_OVERWRITE => {
            let btree = btree()?;
            JsetEntry::Overwrite { btree, level, keys: walk_keys(entry, None, body, v)? }
        }
        TYPE_BTREE_ROOT => {
            let ptr = decode_root(entry, body)?;
            JsetEntry::BtreeRoot { btree: btree()?, level, ptr }
        }
        TYPE_BLACKLIST => decode_blacklist(entry, body)?,
        ty => return Err(JsetInvalid::UnknownEntryType { entry, ty }),
    };
    v.entry(checked);
    Ok(())
}

/// Checks every key of a btree_keys (`replayed` is its btree and level) or overwrite entry:
/// kept, or the btree_keys ones handed to `v` one by one, as `v` wants.
fn walk_keys<'a>(
    entry: u32,
    replayed: Option<(BtreeId, u8)>,
    body: &'a [u8],
    v: &mut impl Visit<'a>,
) -> Result<PackedKeys, JsetInvalid> {
    let bad = |e: Error| JsetInvalid::Key { entry, why: e.message().to_owned() };
    let mut r = Reader::new(body, "journal entry keys", ErrCode::JournalReadErr);
    // PackedKeys::decode checks with the same KeyRef::decode, key by key, as the loop below.
    if v.keep_keys() {
        return PackedKeys::decode(&mut r).map_err(bad);
    }
    while !r.is_empty() {
        let key = KeyRef::decode(&mut r).map_err(bad)?;
        if let Some((btree, level)) = replayed {
            v.btree_key(btree, level, key);
        }
    }
    Ok(PackedKeys::default())
}

fn decode_root(entry: u32, body: &[u8]) -> Result<BtreePtrV2, JsetInvalid> {
    let bad = |why: String| JsetInvalid::Root { entry, why };
    let mut r = Reader::new(body, "btree_root entry", ErrCode::JournalReadErr);
    let k = KeyRef::decode(&mut r).map_err(|e| bad(e.message().to_owned()))?;
    if k.ty != KeyType::BtreePtrV2 || !r.is_empty() {
        return Err(bad("is not one btree_ptr_v2 key".to_owned()));
    }
    BtreePtrV2::decode(k.val).map_err(|e| bad(e.message().to_owned()))
}

fn decode_blacklist(entry: u32, body: &[u8]) -> Result<JsetEntry, JsetInvalid> {
    let Some(b) = body.first_chunk::<BLACKLIST_BYTES>().filter(|_| body.len() == BLACKLIST_BYTES) else {
        return Err(JsetInvalid::BlacklistLength { entry, bytes: body.len() });
    };
    let start = u64::from_le_bytes(field(b, BLACKLIST_OFF_START));
    let end = u64::from_le_bytes(field(b, BLACKLIST_OFF_END));
    if start >= end {
        return Err(JsetInvalid::BlacklistRange { entry, start, end });
    }
    Ok(JsetEntry::Blacklist { start, end })
}

/// Collects the entries of a walk, for [`decode_jset_with`].
struct Entries {
    entries: Vec<JsetEntry>,
    keep_keys: bool,
}

impl Visit<'_> for Entries {
    fn keep_keys(&self) -> bool {
        self.keep_keys
    }

    fn btree_key(&mut self, _: BtreeId, _: u8, _: KeyRef<'_>) {}

    fn entry(&mut self, entry: JsetEntry) {
        self.entries.push(entry);
    }
}

/// Hands the btree keys of a walk to a function, for [`for_each_btree_key`].
struct EachKey<F>(F);

impl<'a, F: FnMut(BtreeId, u8, KeyRef<'a>)> Visit<'a> for EachKey<F> {
    fn keep_keys(&self) -> bool {
        false
    }

    fn btree_key(&mut self, btree: BtreeId, level: u8, key: KeyRef<'a>) {
        (self.0)(btree, level, key);
    }

    fn entry(&mut self, _: JsetEntry) {}
}

/// Decodes the jset at the start of `buf`. Only a malformed entry behind a good checksum is
/// an error (a bug or a collision, not damage); its [`JsetInvalid`] says why.
pub fn decode_jset(buf: &[u8], magic: u64) -> Result<JsetRead> {
    decode_jset_with(buf, magic, &Decode { known: &|_, _, _| false, keys: true })
}

/// Calls `f` with each key of the btree_keys entries of the jset at the start of `buf`, in
/// order, if it is the good entry `seq` with length `bytes` and checksum `csum` (as a scan found
/// it); `Ok(false)` if it is not. Recovery takes the keys to replay this way, straight from the
/// bytes of the copy it keeps. The jset is checked exactly as [`decode_jset`] checks it (one
/// walk does both), and an invalid one is the same error; `f` may have seen keys before the
/// failure, which the caller must drop.
pub fn for_each_btree_key<'a>(
    buf: &'a [u8],
    magic: u64,
    seq: u64,
    bytes: u32,
    csum: u32,
    f: impl FnMut(BtreeId, u8, KeyRef<'a>),
) -> Result<bool> {
    let Found::Good { header, jset } = find_jset(buf, magic) else { return Ok(false) };
    if (header.seq, header.bytes, header.csum) != (seq, bytes, csum) {
        return Ok(false);
    }
    walk_jset(&header, jset, &mut EachKey(f)).map_err(|why| why.at(seq))?;
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
    let (header, jset) = match find_jset(buf, magic) {
        Found::NotOurs => return Ok(JsetRead::Empty),
        Found::BadChecksum(h) => return Ok(JsetRead::BadChecksum { seq: h.seq, bytes: h.bytes }),
        Found::Good { header, jset } => (header, jset),
    };
    let JsetHeader { csum, bytes, seq, last_seq, flags, nr_entries, .. } = header;
    if (how.known)(seq, bytes, csum) {
        return Ok(JsetRead::Known { seq, bytes });
    }
    let mut v =
        Entries { entries: Vec::with_capacity((nr_entries as usize).min(1 << 16)), keep_keys: how.keys };
    walk_jset(&header, jset, &mut v).map_err(|why| why.at(seq))?;
    Ok(JsetRead::Good { jset: Jset { seq, last_seq, flags, entries: v.entries }, bytes, csum })
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

    proptest! {
        /// Every header field comes back from its bytes as it went in.
        #[test]
        fn header_round_trip(f in any::<(u32, u32, u64, u64, u64, u16, u16, u32)>()) {
            let (csum, bytes, magic, seq, last_seq, version, flags, nr_entries) = f;
            let h = JsetHeader { csum, bytes, magic, seq, last_seq, version, flags, nr_entries };
            prop_assert_eq!(JsetHeader::from_bytes(&h.to_bytes()), h);
        }
    }

    /// The header and entry fields sit at the offsets the layout comment gives, and an encoded
    /// jset's header says what it holds.
    #[test]
    fn fields_at_documented_offsets() {
        let h = JsetHeader {
            csum: 0x0403_0201,
            bytes: 0x0807_0605,
            magic: 0x1011_1213_1415_1617,
            seq: 0x2021_2223_2425_2627,
            last_seq: 0x3031_3233_3435_3637,
            version: 0x4041,
            flags: 0x4243,
            nr_entries: 0x5051_5253,
        };
        let b = h.to_bytes();
        assert_eq!(b[0..4], 0x0403_0201u32.to_le_bytes());
        assert_eq!(b[4..8], 0x0807_0605u32.to_le_bytes());
        assert_eq!(b[8..16], 0x1011_1213_1415_1617u64.to_le_bytes());
        assert_eq!(b[16..24], 0x2021_2223_2425_2627u64.to_le_bytes());
        assert_eq!(b[24..32], 0x3031_3233_3435_3637u64.to_le_bytes());
        assert_eq!(b[32..34], 0x4041u16.to_le_bytes());
        assert_eq!(b[34..36], 0x4243u16.to_le_bytes());
        assert_eq!(b[36..40], 0x5051_5253u32.to_le_bytes());
        let e = EntryHeader { bytes: 0x0102_0304, ty: 5, btree: 6, level: 7 }.to_bytes();
        assert_eq!(e, [0x04, 0x03, 0x02, 0x01, 5, 6, 7, 0]);

        let j = Jset {
            seq: 7,
            last_seq: 3,
            flags: JSET_NO_FLUSH,
            entries: vec![JsetEntry::Blacklist { start: 1, end: 2 }],
        };
        let buf = j.encode(MAGIC, 512);
        let got = JsetHeader::read(&buf).unwrap();
        assert_eq!(
            got,
            JsetHeader {
                csum: crc32c::crc32c(&buf[4..got.bytes as usize]),
                bytes: (JSET_HEADER_BYTES + ENTRY_HEADER_BYTES + 16) as u32,
                magic: MAGIC,
                seq: 7,
                last_seq: 3,
                version: fs_core::sb::FORMAT_VERSION,
                flags: JSET_NO_FLUSH,
                nr_entries: 1,
            }
        );
        let entry = &buf[JSET_HEADER_BYTES..];
        assert_eq!(entry[..8], [24, 0, 0, 0, TYPE_BLACKLIST, 0, 0, 0]);
        assert_eq!(entry[8..16], 1u64.to_le_bytes());
        assert_eq!(entry[16..24], 2u64.to_le_bytes());
    }

    #[test]
    fn other_magic_and_zeros_are_empty() {
        let j = Jset { seq: 5, last_seq: 1, flags: 0, entries: Vec::new() };
        assert!(matches!(decode_jset(&j.encode(MAGIC, 512), MAGIC + 1).unwrap(), JsetRead::Empty));
        assert!(matches!(decode_jset(&[0u8; 512], MAGIC).unwrap(), JsetRead::Empty));
        assert!(matches!(decode_jset(&[0u8; 3], MAGIC).unwrap(), JsetRead::Empty));
    }
}
