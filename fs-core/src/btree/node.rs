//! A btree node in memory and on disk.
//!
//! On disk a node is a header sector followed by bsets appended over time, each sector-aligned:
//!
//! ```text
//! node header (sector 0; NODE_HEADER_BYTES = 88 used, the rest zero)
//!  0 csum       u32  crc32c of bytes [4, 88)
//!  4 reserved   u32
//!  8 magic      u64  fs_magic(uuid, BTREE_NODE_SALT)
//! 16 seq        u64  the node's identity; its pointer carries the same seq
//! 24 btree_id   u8
//! 25 level      u8
//! 26 reserved   u16
//! 28 version    u32  FORMAT_VERSION; a node of another version is refused
//! 32 min_key    24 bytes (inode u64, offset u64, snapshot u32, reserved u32)
//! 56 max_key    24 bytes
//! 80 reserved   u64
//! bset (at a sector boundary after the header sector; BSET_HEADER_BYTES = 32, then keys)
//!  0 csum        u32  crc32c of bytes [4, bytes)
//!  4 bytes       u32  header and keys, before padding to a sector
//!  8 node_seq    u64  the node's seq: a bset left by an earlier node in this place is not ours
//! 16 journal_seq u64  newest journal seq whose updates this bset carries
//! 24 nr_keys     u32
//! 28 reserved    u32
//! 32 keys        sorted, strictly increasing positions, each a bkey
//! ```
//!
//! The `NODE_OFF_*` and `BSET_OFF_*` constants below are these tables in code.
//!
//! In memory a leaf keeps its keys in a map; a deletion of a key that may be on disk stays as a
//! whiteout until a bset carrying it is written. Interior nodes hold child pointers keyed by the
//! child's max_key.

use crate::bkey::ptr::{POS_BYTES, SECTOR_BYTES, pos_from_bytes, pos_to_bytes};
use crate::bkey::{Bkey, BtreePtrV2, ExtentPtr, FixedFields, KeyRef, KeyType};
use crate::bpos::{Bpos, BtreeId};
use crate::btree::pos_map::{Leaf, LeafMap, PosMap};
use crate::encode::{Reader, Writer};
use crate::error::{ErrCode, Error, Result};
use crate::sb::FORMAT_VERSION;

/// Salt for node magic numbers.
pub const BTREE_NODE_SALT: u64 = 0x6263_7369_6d5f_626e; // "bcsim_bn"
/// The header takes the whole first sector; bsets start after it.
pub const HEADER_SECTORS: u32 = 1;

pub const NODE_HEADER_BYTES: usize = 88;
const NODE_OFF_CSUM: usize = 0;
const NODE_OFF_RESERVED0: usize = NODE_OFF_CSUM + 4;
const NODE_OFF_MAGIC: usize = NODE_OFF_RESERVED0 + 4;
const NODE_OFF_SEQ: usize = NODE_OFF_MAGIC + 8;
const NODE_OFF_BTREE_ID: usize = NODE_OFF_SEQ + 8;
const NODE_OFF_LEVEL: usize = NODE_OFF_BTREE_ID + 1;
const NODE_OFF_RESERVED1: usize = NODE_OFF_LEVEL + 1;
const NODE_OFF_VERSION: usize = NODE_OFF_RESERVED1 + 2;
const NODE_OFF_MIN_KEY: usize = NODE_OFF_VERSION + 4;
const NODE_OFF_MAX_KEY: usize = NODE_OFF_MIN_KEY + POS_BYTES;
const NODE_OFF_RESERVED2: usize = NODE_OFF_MAX_KEY + POS_BYTES;
const _: () = assert!(NODE_OFF_RESERVED2 + 8 == NODE_HEADER_BYTES);
const _: () = assert!(NODE_HEADER_BYTES <= HEADER_SECTORS as usize * SECTOR_BYTES as usize);
/// The header checksum covers everything after the checksum itself.
const NODE_CSUM_FROM: usize = NODE_OFF_CSUM + 4;

pub const BSET_HEADER_BYTES: usize = 32;
const BSET_OFF_CSUM: usize = 0;
const BSET_OFF_BYTES: usize = BSET_OFF_CSUM + 4;
const BSET_OFF_NODE_SEQ: usize = BSET_OFF_BYTES + 4;
const BSET_OFF_JOURNAL_SEQ: usize = BSET_OFF_NODE_SEQ + 8;
const BSET_OFF_NR_KEYS: usize = BSET_OFF_JOURNAL_SEQ + 8;
const BSET_OFF_RESERVED: usize = BSET_OFF_NR_KEYS + 4;
const BSET_OFF_KEYS: usize = BSET_OFF_RESERVED + 4;
const _: () = assert!(BSET_OFF_KEYS == BSET_HEADER_BYTES);
/// The bset checksum covers the bset from its `bytes` field to its last key.
const BSET_CSUM_FROM: usize = BSET_OFF_CSUM + 4;

/// btree levels run 0 (leaves) to MAX_LEVEL.
pub const MAX_LEVEL: u8 = 3;

/// Value bytes a leaf entry holds in place; longer values go to the heap.
pub const VAL_INLINE_BYTES: usize = 22;

/// A leaf entry's value. Most values are small (alloc keys, inodes, extents with one or two
/// pointers): keeping them in the entry saves a heap block of at least 32 bytes and a cache
/// miss per key, in a structure that holds tens of millions of keys after a replay.
#[derive(Clone, PartialEq, Eq)]
pub enum Val {
    Inline { len: u8, bytes: [u8; VAL_INLINE_BYTES] },
    Heap(Box<[u8]>),
}

impl Val {
    pub fn new(v: &[u8]) -> Val {
        let mut bytes = [0u8; VAL_INLINE_BYTES];
        match bytes.get_mut(..v.len()) {
            Some(head) => {
                head.copy_from_slice(v);
                Val::Inline { len: v.len() as u8, bytes }
            }
            None => Val::Heap(v.into()),
        }
    }
}

impl From<Box<[u8]>> for Val {
    fn from(v: Box<[u8]>) -> Val {
        if v.len() <= VAL_INLINE_BYTES { Val::new(&v) } else { Val::Heap(v) }
    }
}

impl std::ops::Deref for Val {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Val::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Val::Heap(b) => b,
        }
    }
}

impl std::fmt::Debug for Val {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// A leaf key's type, size and value (its position is the map key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVal {
    pub ty: KeyType,
    pub size: u32,
    pub val: Val,
    /// Changed since the node was last written: goes into the next bset.
    pub pending: bool,
}

impl KeyVal {
    pub fn from_key(k: Bkey, pending: bool) -> (Bpos, KeyVal) {
        (k.pos, KeyVal { ty: k.ty, size: k.size, val: k.val.into(), pending })
    }

    pub fn from_ref(k: KeyRef<'_>, pending: bool) -> (Bpos, KeyVal) {
        (k.pos, KeyVal { ty: k.ty, size: k.size, val: Val::new(k.val), pending })
    }

    pub fn to_key(&self, pos: Bpos) -> Bkey {
        Bkey { pos, ty: self.ty, size: self.size, val: (*self.val).into() }
    }

    pub fn is_deleted(&self) -> bool {
        self.ty.is_deleted()
    }

    pub fn encoded_bytes(&self) -> usize {
        crate::bkey::KEY_HEADER_BYTES + self.val.len().next_multiple_of(8)
    }
}

/// An interior node's pointer to a child, keyed by the child's max_key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    pub ptr: BtreePtrV2,
    pub pending: bool,
}

impl Child {
    /// Encoded size of the pointer key.
    pub fn encoded_bytes(&self) -> usize {
        self.ptr.key_bytes()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKeys {
    Leaf(Leaf),
    Interior(PosMap<Child>),
}

/// What a node's header says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeHeader {
    pub btree: BtreeId,
    pub level: u8,
    pub min_key: Bpos,
    pub max_key: Bpos,
    pub seq: u64,
}

/// The range of a cached node's own key, as bcachefs keeps it beside the node (`b->key`): the
/// pointer the node was read through, or made with. It is not the pointer of a later lookup:
/// the node cache is indexed by the pointer's seq alone, so a lookup through another pointer
/// carrying the same seq finds this node, key and all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeKey {
    pub min_key: Bpos,
    pub max_key: Bpos,
}

#[derive(Clone, Debug)]
pub struct Node {
    /// The header as held in memory (`b->data`): what the node's next write puts on disk.
    pub hdr: NodeHeader,
    /// The node's own key (`b->key`). A read checks the header against it, so the two agree
    /// until something changes the header in memory; `btree_check_header` compares them on
    /// every cached lookup, and an iterator leaves a leaf by this key's max_key.
    pub key: NodeKey,
    /// Where the node lives, one pointer per replica.
    pub ptrs: Vec<ExtentPtr>,
    pub keys: NodeKeys,
    /// Sectors of the node written so far (header included); 0 for a node never written.
    pub sectors_written: u32,
    /// Encoded bytes of the keys (live and whiteouts): what a full rewrite would take.
    pub key_bytes: usize,
    /// Newest journal seq among pending keys.
    pub journal_seq: u64,
    /// Dirty: has pending keys or was never written.
    pub dirty: bool,
    /// Logical clock of the last access, for cache eviction.
    pub last_used: u64,
    /// The replicas disagreed or one was bad when the node was read: appending to them would
    /// leave them different, so the next write puts the whole node somewhere new.
    pub needs_rewrite: bool,
    /// Encoded bytes of the keys inserted since the node was last written, counted as they
    /// arrive (an overwritten key counts twice): an upper bound of the next bset.
    pub unwritten_bytes: usize,
    /// A place reserved for writing the node anew when its next bset will not fit in the
    /// space left: reserved by the insert that makes it so, as bcachefs compacts a node whose
    /// space is used up in the update that finds it full, not in write-back.
    pub spare: Option<super::NodeLocation>,
}

impl Node {
    pub fn new(hdr: NodeHeader, ptrs: Vec<ExtentPtr>) -> Self {
        let keys =
            if hdr.level == 0 { NodeKeys::Leaf(Leaf::default()) } else { NodeKeys::Interior(PosMap::new()) };
        Node {
            hdr,
            key: NodeKey { min_key: hdr.min_key, max_key: hdr.max_key },
            ptrs,
            keys,
            sectors_written: 0,
            key_bytes: 0,
            journal_seq: 0,
            dirty: true,
            last_used: 0,
            needs_rewrite: false,
            unwritten_bytes: 0,
            spare: None,
        }
    }

    /// Keys held, whiteouts included; inserts not yet sorted into a leaf count as new keys.
    pub fn nr_keys(&self) -> usize {
        match &self.keys {
            NodeKeys::Leaf(l) => l.len_upper_bound(),
            NodeKeys::Interior(m) => m.len(),
        }
    }

    /// A leaf's keys with every pending insert sorted in (`key_bytes` corrected for the keys
    /// they replaced); `None` for an interior node.
    pub fn leaf_mut(&mut self) -> Option<&mut LeafMap> {
        let NodeKeys::Leaf(l) = &mut self.keys else { return None };
        let (map, replaced) = l.settle();
        self.key_bytes = self.key_bytes.saturating_sub(replaced);
        Some(map)
    }

    /// The pointer a parent holds for this node.
    pub fn ptr(&self) -> BtreePtrV2 {
        BtreePtrV2 {
            seq: self.hdr.seq,
            sectors_written: self.sectors_written,
            min_key: self.hdr.min_key,
            ptrs: self.ptrs.clone(),
        }
    }

    /// Encodes the header sector.
    pub fn encode_header(&self, magic: u64) -> Vec<u8> {
        let mut h = [0u8; NODE_HEADER_BYTES];
        h.set_field::<NODE_OFF_MAGIC, 8>(magic.to_le_bytes());
        h.set_field::<NODE_OFF_SEQ, 8>(self.hdr.seq.to_le_bytes());
        h.set_field::<NODE_OFF_BTREE_ID, 1>([self.hdr.btree as u8]);
        h.set_field::<NODE_OFF_LEVEL, 1>([self.hdr.level]);
        h.set_field::<NODE_OFF_VERSION, 4>(u32::from(FORMAT_VERSION).to_le_bytes());
        h.set_field::<NODE_OFF_MIN_KEY, POS_BYTES>(pos_to_bytes(self.hdr.min_key));
        h.set_field::<NODE_OFF_MAX_KEY, POS_BYTES>(pos_to_bytes(self.hdr.max_key));
        let csum = crc32c::crc32c(&h[NODE_CSUM_FROM..]);
        h.set_field::<NODE_OFF_CSUM, 4>(csum.to_le_bytes());
        let mut out = Vec::with_capacity(SECTOR_BYTES as usize);
        out.extend_from_slice(&h);
        out.resize(SECTOR_BYTES as usize, 0);
        out
    }

    /// Encodes a bset of the pending keys (all keys when `all`), padded to whole sectors.
    pub fn encode_bset(&mut self, all: bool) -> Vec<u8> {
        let mut w = Writer::with_capacity(BSET_HEADER_BYTES + self.key_bytes.min(1 << 20));
        // Room for the header, which is known only once the keys are written.
        w.bytes(&[0; BSET_HEADER_BYTES]);
        let mut nr: u32 = 0;
        if let Some(m) = self.leaf_mut() {
            for (pos, kv) in m.iter().filter(|(_, kv)| all || kv.pending) {
                if all && kv.is_deleted() {
                    continue;
                }
                crate::bkey::encode_key(&mut w, *pos, kv.ty, kv.size, &kv.val);
                nr += 1;
            }
        } else if let NodeKeys::Interior(m) = &self.keys {
            for (pos, c) in m.iter().filter(|(_, c)| all || c.pending) {
                Bkey::new(*pos, KeyType::BtreePtrV2, c.ptr.encode()).encode(&mut w);
                nr += 1;
            }
        }
        let mut out = w.into_vec();
        let mut h = [0u8; BSET_HEADER_BYTES];
        h.set_field::<BSET_OFF_BYTES, 4>((out.len() as u32).to_le_bytes());
        h.set_field::<BSET_OFF_NODE_SEQ, 8>(self.hdr.seq.to_le_bytes());
        h.set_field::<BSET_OFF_JOURNAL_SEQ, 8>(self.journal_seq.to_le_bytes());
        h.set_field::<BSET_OFF_NR_KEYS, 4>(nr.to_le_bytes());
        // The writer started with BSET_HEADER_BYTES of room: the keys are what follows.
        let keys = out.get(BSET_HEADER_BYTES..).unwrap_or_default();
        let csum = crc32c::crc32c_append(crc32c::crc32c(&h[BSET_CSUM_FROM..]), keys);
        h.set_field::<BSET_OFF_CSUM, 4>(csum.to_le_bytes());
        if let Some(head) = out.get_mut(..BSET_HEADER_BYTES) {
            head.copy_from_slice(&h);
        }
        out.resize((out.len() as u64).next_multiple_of(SECTOR_BYTES) as usize, 0);
        out
    }

    /// After a bset was written: nothing pending, whiteouts forgotten (the bset carries them).
    pub fn mark_written(&mut self, sectors_written: u32) {
        self.sectors_written = sectors_written;
        self.unwritten_bytes = 0;
        self.dirty = false;
        self.journal_seq = 0;
        if let Some(m) = self.leaf_mut() {
            let mut removed = 0;
            m.retain(|_, kv| {
                kv.pending = false;
                let keep = !kv.is_deleted();
                if !keep {
                    removed += kv.encoded_bytes();
                }
                keep
            });
            self.key_bytes = self.key_bytes.saturating_sub(removed);
        } else if let NodeKeys::Interior(m) = &mut self.keys {
            m.values_mut().for_each(|c| c.pending = false);
        }
    }
}

/// Damage as a bug in an interior update writes it: the bytes of one bset of interior node
/// `parent`, to be appended after its written sectors, whose pointer for child `victim` carries
/// the seq and location of child `left` (its neighbour), `victim`'s range kept. For scenario
/// builders and tests.
pub fn duplicated_pointer_bset(
    parent: &crate::btree::NodeInfo,
    left: &crate::btree::NodeInfo,
    victim: &crate::btree::NodeInfo,
) -> Vec<u8> {
    let hdr = NodeHeader {
        btree: parent.btree,
        level: parent.level,
        min_key: parent.min_key,
        max_key: parent.max_key,
        seq: parent.seq,
    };
    let ptr = BtreePtrV2 {
        seq: left.seq,
        sectors_written: left.sectors_written,
        min_key: victim.min_key,
        ptrs: left.ptrs.clone(),
    };
    let mut node = Node::new(hdr, Vec::new());
    if let NodeKeys::Interior(m) = &mut node.keys {
        m.insert(victim.max_key, Child { ptr, pending: true });
    }
    // An old journal seq: never blacklisted, never past the replay range.
    node.journal_seq = 1;
    node.encode_bset(false)
}

/// What a reader expects of a node, from the pointer that led to it.
#[derive(Clone, Copy, Debug)]
pub struct Expected {
    pub btree: BtreeId,
    pub level: u8,
    pub min_key: Bpos,
    pub max_key: Bpos,
    pub seq: u64,
    pub sectors_written: u32,
}

fn node_err(code: ErrCode, exp: &Expected, msg: impl Into<String>) -> Error {
    Error::new(code, msg).btree(exp.btree).level(exp.level).pos(exp.max_key)
}

/// Decodes and validates a node image (`buf` is the whole node-sized area). `blacklisted` says
/// which journal seqs' bsets must be ignored. The node's `sectors_written` says how far valid
/// bsets reached, so replicas can be compared.
pub fn decode_node(
    buf: &[u8],
    magic: u64,
    exp: &Expected,
    blacklisted: &dyn Fn(u64) -> bool,
) -> Result<Node> {
    let hdr = decode_header(buf, magic, exp)?;
    let mut node = Node::new(hdr, Vec::new());
    let mut offset = u64::from(HEADER_SECTORS) * SECTOR_BYTES;
    let written_bytes = u64::from(exp.sectors_written) * SECTOR_BYTES;
    while let Some(rest) = buf.get(offset as usize..) {
        let Some((bset_bytes, journal_seq, keys)) = decode_bset(rest, exp, offset < written_bytes)? else {
            break;
        };
        if blacklisted(journal_seq) {
            // Rewritten without it at the next write-back, so that no later read (a clean
            // mount has no blacklist to consult) takes it back.
            node.needs_rewrite = true;
        } else {
            apply_bset(&mut node, keys, exp)?;
        }
        offset += (bset_bytes as u64).next_multiple_of(SECTOR_BYTES);
    }
    if offset < written_bytes {
        return Err(node_err(
            ErrCode::BtreeNodeDataMissing,
            exp,
            format!("btree node has {offset} bytes of bsets, its pointer says {written_bytes}"),
        ));
    }
    node.sectors_written = (offset / SECTOR_BYTES) as u32;
    node.dirty = false;
    Ok(node)
}

/// Recomputes the checksums of a node image: its header's and each bset's, walking the bsets
/// as a read does until one's length does not fit. See [`crate::encode::reseal_record`].
pub fn reseal_node(buf: &mut [u8]) {
    crate::encode::reseal_fixed(buf, NODE_HEADER_BYTES);
    let mut offset = HEADER_SECTORS as usize * SECTOR_BYTES as usize;
    while let Some(rest) = buf.get_mut(offset..) {
        let bytes = rest.first_chunk::<BSET_HEADER_BYTES>().map(|h| h.field::<BSET_OFF_BYTES, 4>());
        let bytes = bytes.map_or(0, |b| u32::from_le_bytes(b) as usize);
        if bytes < BSET_HEADER_BYTES || !crate::encode::reseal_record(rest) {
            break;
        }
        offset += bytes.next_multiple_of(SECTOR_BYTES as usize);
    }
}

/// The header of the node image at the start of `buf` if it is one of this filesystem's
/// (magic, checksum and version good), whatever a pointer would expect there: for a scan of
/// the devices for btree nodes.
pub fn peek_header(buf: &[u8], magic: u64) -> Option<NodeHeader> {
    decode_header(buf, magic, &header_expectation(buf)?).ok()
}

/// What a pointer to the node image at the start of `buf` would have to expect for its header
/// to match: the header's own btree, level, range and seq (`sectors_written` unknown, 0).
/// `None` if `buf` is shorter than a header or names no btree. Nothing is checked.
pub fn header_expectation(buf: &[u8]) -> Option<Expected> {
    let h = buf.first_chunk::<NODE_HEADER_BYTES>()?;
    Some(Expected {
        btree: BtreeId::from_u8(u8::from_le_bytes(h.field::<NODE_OFF_BTREE_ID, 1>()))?,
        level: u8::from_le_bytes(h.field::<NODE_OFF_LEVEL, 1>()),
        min_key: pos_from_bytes(&h.field::<NODE_OFF_MIN_KEY, POS_BYTES>()),
        max_key: pos_from_bytes(&h.field::<NODE_OFF_MAX_KEY, POS_BYTES>()),
        seq: u64::from_le_bytes(h.field::<NODE_OFF_SEQ, 8>()),
        sectors_written: 0,
    })
}

/// The magic the node image at the start of `buf` carries, checked or not.
pub fn header_magic(buf: &[u8]) -> Option<u64> {
    buf.first_chunk::<NODE_HEADER_BYTES>().map(|h| u64::from_le_bytes(h.field::<NODE_OFF_MAGIC, 8>()))
}

fn decode_header(buf: &[u8], magic: u64, exp: &Expected) -> Result<NodeHeader> {
    let Some(h) = buf.first_chunk::<NODE_HEADER_BYTES>() else {
        return Err(node_err(ErrCode::BtreeNodeDataMissing, exp, "btree node shorter than its header"));
    };
    let csum = u32::from_le_bytes(h.field::<NODE_OFF_CSUM, 4>());
    if u64::from_le_bytes(h.field::<NODE_OFF_MAGIC, 8>()) != magic {
        return Err(node_err(
            ErrCode::BtreeNodeBadMagic,
            exp,
            "bad btree node magic (not a node of this filesystem)",
        ));
    }
    let computed = crc32c::crc32c(&h[NODE_CSUM_FROM..]);
    if csum != computed {
        return Err(node_err(ErrCode::BtreeNodeReadErr, exp, "btree node header checksum mismatch")
            .csum(computed, csum));
    }
    // The rest of the header, and the bsets, are laid out as their version says: check it
    // before believing any other field.
    let version = u32::from_le_bytes(h.field::<NODE_OFF_VERSION, 4>());
    if version != u32::from(FORMAT_VERSION) {
        return Err(node_err(
            ErrCode::BtreeNodeUnsupportedVersion,
            exp,
            format!("btree node format version {version}, this bcsim reads version {FORMAT_VERSION}"),
        ));
    }
    let seq = u64::from_le_bytes(h.field::<NODE_OFF_SEQ, 8>());
    let raw_btree = u8::from_le_bytes(h.field::<NODE_OFF_BTREE_ID, 1>());
    let level = u8::from_le_bytes(h.field::<NODE_OFF_LEVEL, 1>());
    let min_key = pos_from_bytes(&h.field::<NODE_OFF_MIN_KEY, POS_BYTES>());
    let max_key = pos_from_bytes(&h.field::<NODE_OFF_MAX_KEY, POS_BYTES>());
    if seq != exp.seq {
        return Err(node_err(
            ErrCode::BtreeNodeBadSeq,
            exp,
            format!("got wrong btree node: seq {seq:#x}, pointer wants {:#x}", exp.seq),
        ));
    }
    let btree = BtreeId::from_u8(raw_btree).filter(|&b| b == exp.btree).ok_or_else(|| {
        node_err(
            ErrCode::BtreeNodeBadBtree,
            exp,
            format!("btree node is of btree {raw_btree}, wanted {}", exp.btree),
        )
    })?;
    let checks = [
        (level == exp.level, ErrCode::BtreeNodeBadLevel, format!("level {level}, wanted {}", exp.level)),
        (
            min_key == exp.min_key,
            ErrCode::BtreeNodeBadMinKey,
            format!("min_key {min_key}, wanted {}", exp.min_key),
        ),
        (
            max_key == exp.max_key,
            ErrCode::BtreeNodeBadMaxKey,
            format!("max_key {max_key}, wanted {}", exp.max_key),
        ),
    ];
    for (ok, code, what) in checks {
        if !ok {
            return Err(node_err(code, exp, format!("btree node header doesn't match ptr: {what}")));
        }
    }
    Ok(NodeHeader { btree, level, min_key, max_key, seq })
}

/// Decodes the bset at the start of `buf`. `None`: no bset of this node here (end of data).
/// A damaged bset inside the written range is an error; past it, a torn tail that ends the node.
fn decode_bset(buf: &[u8], exp: &Expected, within_written: bool) -> Result<Option<(usize, u64, Vec<Bkey>)>> {
    let Some(h) = buf.first_chunk::<BSET_HEADER_BYTES>() else { return Ok(None) };
    let csum = u32::from_le_bytes(h.field::<BSET_OFF_CSUM, 4>());
    let bytes = u32::from_le_bytes(h.field::<BSET_OFF_BYTES, 4>()) as usize;
    let node_seq = u64::from_le_bytes(h.field::<BSET_OFF_NODE_SEQ, 8>());
    let journal_seq = u64::from_le_bytes(h.field::<BSET_OFF_JOURNAL_SEQ, 8>());
    let nr_keys = u32::from_le_bytes(h.field::<BSET_OFF_NR_KEYS, 4>());
    if node_seq != exp.seq || bytes < BSET_HEADER_BYTES {
        return if within_written {
            Err(node_err(ErrCode::BtreeNodeDataMissing, exp, "bset missing inside the node's written range"))
        } else {
            Ok(None)
        };
    }
    let got = buf.get(..bytes).map(|b| crc32c::crc32c(b.get(BSET_CSUM_FROM..).unwrap_or_default()));
    let body = match buf.get(..bytes) {
        Some(b) if got == Some(csum) => b,
        _ if within_written => {
            let err = node_err(ErrCode::BsetBadCsum, exp, "bset checksum mismatch").journal_seq(journal_seq);
            return Err(match got {
                Some(got) => err.csum(got, csum),
                None => err,
            });
        }
        _ => return Ok(None),
    };
    let mut r = Reader::new(body, "bset", ErrCode::BtreeNodeReadErr);
    r.skip(BSET_OFF_KEYS)?;
    // nr_keys is on-disk: reserve no more than the bset's bytes can hold.
    let mut keys = Vec::with_capacity((nr_keys as usize).min(r.remaining() / crate::bkey::KEY_HEADER_BYTES));
    for _ in 0..nr_keys {
        keys.push(Bkey::decode(&mut r)?);
    }
    if !r.is_empty() {
        return Err(node_err(ErrCode::BtreeNodeReadErr, exp, "bytes after the last key of a bset"));
    }
    Ok(Some((bytes, journal_seq, keys)))
}

fn apply_bset(node: &mut Node, keys: Vec<Bkey>, exp: &Expected) -> Result<()> {
    let mut prev: Option<Bpos> = None;
    for k in keys {
        if prev.is_some_and(|p| p >= k.pos) || k.pos < node.hdr.min_key || k.pos > node.hdr.max_key {
            return Err(node_err(
                ErrCode::BtreeNodeReadErr,
                exp,
                format!(
                    "key {} out of order or outside the node's range {}..={}",
                    k.pos, node.hdr.min_key, node.hdr.max_key
                ),
            ));
        }
        prev = Some(k.pos);
        match &mut node.keys {
            NodeKeys::Leaf(l) => {
                // A whiteout in a later bset deletes what an earlier one had.
                let (m, _) = l.settle();
                let (pos, kv) = KeyVal::from_key(k, false);
                let old = if kv.is_deleted() {
                    m.remove(&pos)
                } else {
                    node.key_bytes += kv.encoded_bytes();
                    m.insert(pos, kv)
                };
                node.key_bytes = node.key_bytes.saturating_sub(old.map_or(0, |o| o.encoded_bytes()));
            }
            NodeKeys::Interior(m) => {
                if k.ty != KeyType::BtreePtrV2 {
                    return Err(node_err(
                        ErrCode::BtreeNodeReadErr,
                        exp,
                        format!("interior node holds a {} key", k.ty),
                    ));
                }
                let ptr =
                    BtreePtrV2::decode(&k.val).map_err(|e| e.btree(exp.btree).level(exp.level).pos(k.pos))?;
                let child = Child { ptr, pending: false };
                let added = child.encoded_bytes();
                if let Some(old) = m.insert(k.pos, child) {
                    node.key_bytes = node.key_bytes.saturating_sub(old.encoded_bytes());
                }
                node.key_bytes += added;
            }
        }
    }
    Ok(())
}
