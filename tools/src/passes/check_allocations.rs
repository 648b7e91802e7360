//! `check_allocations` (5): every bucket's alloc key against what the metadata says it holds —
//! superblock and journal buckets from the layout, btree nodes from check_topology, data from
//! the extents (through the journal keys until replay). A bucket without a key is unused. Runs
//! before the filesystem may write: the allocator is rebuilt from the repaired keys at once, and
//! the repairs are committed after journal replay.
//!
//! A crash never calls for this: every alloc-key change reaches the journal in the entry that
//! carries the change causing it (see `tools/src/fs/trans.rs`). It runs for fsck.

use std::collections::{BTreeMap, BTreeSet};

use allocator::Allocator;
use fs_core::bkey::alloc::{ALLOC_NEED_DISCARD, ALLOC_NEED_INC_GEN, bucket_pos};
use fs_core::bkey::ptr::SECTOR_BYTES;
use fs_core::bkey::{AllocV4, Bkey, DataType, Extent, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::NodeInfo;
use fs_core::error::Result;
use fs_core::fsck_err::FsckErr;
use fs_core::opts::Options;

use super::{Finding, RecoveryCtx, View};
use crate::fs::layout::device_inits;
use crate::fs::read_alloc_keys;

pub(super) fn run(ctx: &mut RecoveryCtx) -> Result<()> {
    let nodes = std::mem::take(&mut ctx.topology);
    let mut findings = Vec::new();
    let node_size = ctx.opts.with(Options::btree_node_size);
    let fixed = ctx.with_view(|v| check(v, node_size, &nodes, &mut findings))?;
    let fixes = ctx.record(findings);
    // Its repairs are all FSCK_AUTOFIX: a run applies all of them or none, so the allocator
    // can take the repaired keys whole.
    if !fixes.is_empty() {
        if let Some(alloc) = &ctx.alloc {
            let inits = device_inits(ctx.set_ref()?);
            let keys = fixed.iter().map(|(p, a)| (*p, *a));
            alloc.replace(Allocator::from_alloc_keys(inits, node_size, keys)?);
        }
        if let Some(n) = &ctx.nodes {
            n.reset_open_buckets();
        }
        ctx.fixes_after_replay.extend(fixes);
    }
    ctx.alloc_view = Some(fixed);
    Ok(())
}

/// What the metadata says a bucket should hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Usage {
    data_type: Option<DataType>,
    sectors: u32,
    max_ptr_gen: Option<u8>,
}

fn add_use(
    uses: &mut BTreeMap<(u8, u64), Usage>,
    key: (u8, u64),
    dt: DataType,
    sectors: u32,
    ptr_gen: Option<u8>,
) -> Option<String> {
    let u = uses.entry(key).or_default();
    let clash = u
        .data_type
        .filter(|&t| t != dt)
        .map(|t| format!("bucket {}:{} holds both {t} and {dt}", key.0, key.1));
    u.data_type = Some(dt);
    u.sectors = u.sectors.saturating_add(sectors);
    u.max_ptr_gen = match (u.max_ptr_gen, ptr_gen) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    clash
}

/// `a` holding `dt` with `sectors`, flags kept consistent (NEED_DISCARD and NEED_INC_GEN exactly
/// when the bucket is need_discard, as the allocator writes them).
fn retyped(a: AllocV4, dt: DataType, sectors: u32) -> AllocV4 {
    let flags = if dt == DataType::NeedDiscard {
        ALLOC_NEED_DISCARD | ALLOC_NEED_INC_GEN
    } else {
        a.flags & !(ALLOC_NEED_DISCARD | ALLOC_NEED_INC_GEN)
    };
    AllocV4 { data_type: dt, dirty_sectors: sectors, flags, ..a }
}

/// What every bucket holds according to the layout, the btree nodes and the extents.
fn bucket_uses(
    v: &mut View<'_>,
    node_size: u64,
    nodes: &[NodeInfo],
    alloc: &BTreeMap<Bpos, AllocV4>,
    findings: &mut Vec<Finding>,
) -> Result<BTreeMap<(u8, u64), Usage>> {
    let set = v.set;
    let bucket_of = |dev: u8, byte: u64| {
        let bs = set.sb.members.get(usize::from(dev)).map_or(1, |m| u64::from(m.bucket_size).max(1));
        (dev, byte / bs)
    };
    let mut uses: BTreeMap<(u8, u64), Usage> = BTreeMap::new();
    for (i, m) in set.sb.members.iter().enumerate() {
        if m.is_unused() {
            continue;
        }
        let bucket_sectors = (u64::from(m.bucket_size) / SECTOR_BYTES) as u32;
        // A member added or grown offline has no alloc keys past `freespace_initialized_to`
        // yet, its superblock and journal buckets included: fs_freespace_init writes them.
        let keyed = m.freespace_initialized_to.unwrap_or(u64::MAX);
        for b in (0..u64::from(m.first_bucket)).filter(|&b| b < keyed) {
            add_use(&mut uses, (i as u8, b), DataType::Sb, bucket_sectors, None);
        }
        // Only a member's own superblock lists its journal buckets: for an absent member (a
        // degraded mount) its alloc keys are all there is to go by.
        let journal: Vec<u64> = match set.device(i) {
            Some(d) => d.sb.journal.buckets().collect(),
            None => alloc
                .range(bucket_pos(i as u8, 0)..=bucket_pos(i as u8, u64::MAX))
                .filter(|(_, a)| a.data_type == DataType::Journal)
                .map(|(p, _)| p.offset)
                .collect(),
        };
        for b in journal.into_iter().filter(|&b| b < keyed) {
            add_use(&mut uses, (i as u8, b), DataType::Journal, bucket_sectors, None);
        }
    }
    let node_sectors = (node_size / SECTOR_BYTES) as u32;
    for n in nodes {
        for p in &n.ptrs {
            let at = bucket_of(p.dev, p.byte_offset());
            if let Some(msg) = add_use(&mut uses, at, DataType::Btree, node_sectors, Some(p.bucket_gen)) {
                findings.push(Finding::new(FsckErr::PtrBucketDataTypeMismatch, msg, None));
            }
        }
    }
    v.for_each_key(BtreeId::Extents, |k| {
        if k.ty != KeyType::Extent {
            return Ok(());
        }
        let e = Extent::decode(k.val).map_err(|e| e.btree(BtreeId::Extents).pos(k.pos))?;
        for p in &e.ptrs {
            let at = bucket_of(p.dev, p.byte_offset());
            if let Some(msg) = add_use(&mut uses, at, DataType::User, k.size, Some(p.bucket_gen)) {
                findings.push(Finding::new(
                    FsckErr::PtrBucketDataTypeMismatch,
                    format!("{msg} (extent {})", k.pos),
                    None,
                ));
            }
        }
        Ok(())
    })?;
    Ok(uses)
}

/// Alloc keys against the buckets the metadata uses. Returns the alloc keys with the repairs
/// applied.
fn check(
    mut v: View<'_>,
    node_size: u64,
    nodes: &[NodeInfo],
    findings: &mut Vec<Finding>,
) -> Result<BTreeMap<Bpos, AllocV4>> {
    let alloc: BTreeMap<Bpos, AllocV4> = read_alloc_keys(v.t, v.overlay)?.into_iter().collect();
    let uses = bucket_uses(&mut v, node_size, nodes, &alloc, findings)?;
    let mut fixed = alloc.clone();
    // Both in bucket order already: the union needs no sort.
    let mut keys: BTreeSet<(u8, u64)> = uses.keys().copied().collect();
    keys.extend(alloc.keys().filter_map(|p| u8::try_from(p.inode).ok().map(|d| (d, p.offset))));
    for (dev, bucket) in keys {
        let pos = bucket_pos(dev, bucket);
        let want = uses.get(&(dev, bucket)).copied().unwrap_or_default();
        let have = alloc.get(&pos).copied();
        let fix = |a: AllocV4| Some(vec![(BtreeId::Alloc, Bkey::new(pos, KeyType::AllocV4, a.encode()))]);
        let repaired = match (have, want.data_type) {
            (None, Some(dt)) => {
                let a = retyped(AllocV4::free(want.max_ptr_gen.unwrap_or(0)), dt, want.sectors);
                findings.push(Finding::new(
                    FsckErr::PtrToMissingAllocKey,
                    format!(
                        "bucket {dev}:{bucket} in use ({dt}, {} sectors) but missing in alloc btree",
                        want.sectors
                    ),
                    fix(a),
                ));
                Some(a)
            }
            (None, None) => None,
            (Some(a), Some(dt)) => {
                if want.max_ptr_gen.is_some_and(|g| g > a.bucket_gen) {
                    findings.push(Finding::new(
                        FsckErr::PtrGenNewerThanBucketGen,
                        format!("bucket {dev}:{bucket}: pointer gen newer than bucket gen {}", a.bucket_gen),
                        None,
                    ));
                }
                (a.data_type != dt || a.dirty_sectors != want.sectors).then(|| {
                    let err = if a.data_type != dt {
                        FsckErr::AllocKeyDataTypeWrong
                    } else {
                        FsckErr::AllocKeyDirtySectorsWrong
                    };
                    let b = retyped(a, dt, want.sectors);
                    findings.push(Finding::new(
                        err,
                        format!(
                            "bucket {dev}:{bucket}: alloc key says {} with {} sectors, metadata says {dt} with {}",
                            a.data_type, a.dirty_sectors, want.sectors
                        ),
                        fix(b),
                    ));
                    b
                })
            }
            (Some(a), None) => (!matches!(a.data_type, DataType::Free | DataType::NeedDiscard)).then(|| {
                // Nothing points into it: it is empty, and was written, so it waits for discard.
                let b = retyped(a, DataType::NeedDiscard, 0);
                findings.push(Finding::new(
                    FsckErr::AllocKeyDataTypeWrong,
                    format!(
                        "bucket {dev}:{bucket}: alloc key says {} with {} sectors, but nothing uses it",
                        a.data_type, a.dirty_sectors
                    ),
                    fix(b),
                ));
                b
            }),
        };
        if let Some(a) = repaired {
            fixed.insert(pos, a);
        }
    }
    Ok(fixed)
}
