//! The scan for btree nodes (bcachefs's `scan_for_btree_nodes`): fsck's way to the btrees when
//! no journal entry survives to say where their roots are.
//!
//! Every node-sized slot of every bucket of every present member (superblock and journal buckets
//! aside) is probed for a node header of this filesystem. For each btree the root is the node
//! spanning `POS_MIN..=POS_MAX` whose newest bset carries the highest journal seq: a root is
//! written whenever the tree under it changes shape, so an older root freed since (a split grew
//! the tree) was last written before it. Replicas are the slots holding the same node seq. What
//! was only in the lost journal is lost; the passes after it repair what follows from that.

use std::cell::Cell;
use std::collections::BTreeMap;

use fs_core::bkey::{BtreePtrV2, ExtentPtr};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::Root;
use fs_core::btree::node::{BTREE_NODE_SALT, Expected, NodeHeader, decode_node, peek_header};
use fs_core::error::Result;
use fs_core::sb::{DeviceSet, fs_magic};

/// Bytes probed per slot: the node header lies in its first sector.
const PROBE_BYTES: usize = 512;

/// What a scan found.
pub struct ScanResult {
    /// One per btree that has a node spanning the whole key space.
    pub roots: Vec<Root>,
    /// Node headers found, replicas counted once each.
    pub nodes_found: usize,
    /// The highest journal seq of any bset of the roots: new journal entries go above it.
    pub newest_seq: u64,
}

/// A node seen in the scan: its header and where its replicas are.
struct Found {
    hdr: NodeHeader,
    ptrs: Vec<ExtentPtr>,
}

/// Scans every present member of `set` for btree nodes of `node_size` and picks each btree's
/// root.
pub fn scan_for_roots(set: &DeviceSet, node_size: u64) -> Result<ScanResult> {
    let magic = fs_magic(&set.sb.uuid, BTREE_NODE_SALT);
    let mut by_seq: BTreeMap<u64, Found> = BTreeMap::new();
    let mut probe = vec![0u8; PROBE_BYTES];
    let mut headers = 0usize;
    for (i, m) in set.devices.iter().enumerate() {
        let (Some(dev), Some(member)) = (m, set.sb.members.get(i)) else { continue };
        let Ok(dev_idx) = u8::try_from(i) else { continue };
        let bucket_size = u64::from(member.bucket_size);
        let slots = bucket_size / node_size.max(1);
        let journal: Vec<std::ops::Range<u64>> = dev.sb.journal.ranges.clone();
        for b in u64::from(member.first_bucket)..member.nbuckets {
            if journal.iter().any(|r| r.contains(&b)) {
                continue;
            }
            for slot in 0..slots {
                let at = b * bucket_size + slot * node_size;
                if dev.dev.read_at(&mut probe, at).is_err() {
                    continue;
                }
                let Some(hdr) = peek_header(&probe, magic) else { continue };
                headers += 1;
                let ptr = ExtentPtr { dev: dev_idx, bucket_gen: 0, offset: at / 512 };
                by_seq.entry(hdr.seq).or_insert_with(|| Found { hdr, ptrs: Vec::new() }).ptrs.push(ptr);
            }
        }
    }
    let mut best: BTreeMap<BtreeId, (u64, u8, Root)> = BTreeMap::new();
    let mut buf = vec![0u8; node_size as usize];
    for f in by_seq.values().filter(|f| f.hdr.min_key == Bpos::MIN && f.hdr.max_key == Bpos::MAX) {
        let Some((sectors, newest)) = read_newest(set, &f.ptrs, &f.hdr, magic, &mut buf) else { continue };
        let better = best.get(&f.hdr.btree).is_none_or(|&(s, l, _)| (newest, f.hdr.level) > (s, l));
        if better {
            let ptr = BtreePtrV2 {
                seq: f.hdr.seq,
                sectors_written: sectors,
                min_key: Bpos::MIN,
                ptrs: f.ptrs.clone(),
            };
            best.insert(
                f.hdr.btree,
                (newest, f.hdr.level, Root { btree: f.hdr.btree, level: f.hdr.level, ptr }),
            );
        }
    }
    let newest_seq = best.values().map(|&(s, _, _)| s).max().unwrap_or(0);
    Ok(ScanResult {
        roots: best.into_values().map(|(_, _, r)| r).collect(),
        nodes_found: headers,
        newest_seq,
    })
}

/// Reads the node from the first replica that decodes: how many sectors its valid bsets take,
/// and the highest journal seq among them.
fn read_newest(
    set: &DeviceSet,
    ptrs: &[ExtentPtr],
    hdr: &NodeHeader,
    magic: u64,
    buf: &mut [u8],
) -> Option<(u32, u64)> {
    let exp = Expected {
        btree: hdr.btree,
        level: hdr.level,
        min_key: hdr.min_key,
        max_key: hdr.max_key,
        seq: hdr.seq,
        sectors_written: 0,
    };
    ptrs.iter().find_map(|p| {
        let dev = set.device(usize::from(p.dev))?;
        dev.dev.read_at(buf, p.byte_offset()).ok()?;
        let newest = Cell::new(0u64);
        let node = decode_node(buf, magic, &exp, &|seq| {
            newest.set(newest.get().max(seq));
            false
        })
        .ok()?;
        Some((node.sectors_written, newest.get()))
    })
}
