//! Setting a filesystem up from its superblock: what the allocator needs to know of each
//! member, the journal rings and their configuration, the btrees with their roots.

use fs_core::bkey::BtreePtrV2;
use fs_core::btree::node::BTREE_NODE_SALT;
use fs_core::btree::{BtreeConfig, Btrees, NodeAllocator, NodeIo, Root};
use fs_core::dev::SharedDevice;
use fs_core::error::{ErrCode, Error, Result};
use fs_core::sb::{DeviceSet, fs_magic};
use fs_core::sync::Arc;
use journal::format::JSET_SALT;
use journal::{JournalConfig, Ring};

use allocator::DeviceInit;

/// Entries of one journal entry at most; a transaction's keys are split into entries this big.
pub const MAX_JOURNAL_ENTRY_BYTES: usize = 256 << 10;

/// What the allocator needs to know of each member: its layout and journal buckets.
pub fn device_inits(set: &DeviceSet) -> Vec<DeviceInit> {
    set.sb
        .members
        .iter()
        .enumerate()
        .filter(|(_, m)| !m.is_unused())
        .filter_map(|(i, m)| {
            Some(DeviceInit {
                dev_idx: u8::try_from(i).ok()?,
                member: m.clone(),
                journal: set.device(i).map(|d| d.sb.journal.clone()).unwrap_or_default(),
                present: set.device(i).is_some(),
            })
        })
        .collect()
}

/// Journal rings of the present devices, continuing after each ring's newest bucket; and a log
/// line for each journal bucket that could not be read (skipped).
pub fn journal_rings(set: &DeviceSet) -> Result<(Vec<Ring>, Vec<String>)> {
    let magic = fs_magic(&set.sb.uuid, JSET_SALT);
    let mut rings = Vec::new();
    let mut log = Vec::new();
    for (i, m) in set.devices.iter().enumerate() {
        let Some(m) = m else { continue };
        let buckets: Vec<u64> = m.sb.journal.buckets().collect();
        let Some(member) = set.sb.members.get(i) else { continue };
        if buckets.is_empty() || member.durability == 0 {
            continue;
        }
        let dev_idx = u8::try_from(i).map_err(|_| Error::internal(format!("member index {i} beyond 255")))?;
        let (ring, unreadable) =
            Ring::resume(dev_idx, m.dev.clone(), u64::from(member.bucket_size), buckets, magic)?;
        rings.push(ring);
        log.extend(unreadable.into_iter().map(|e| format!("journal read error, bucket skipped: {e}")));
    }
    Ok((rings, log))
}

/// The journal's fixed configuration: its magic, the block size entries are padded to, the
/// largest entry (the smallest bucket, at most [`MAX_JOURNAL_ENTRY_BYTES`]: write-back publishes
/// the alloc keys of every node it allocated and freed in one entry), and each member's label
/// and durability.
pub fn journal_config(set: &DeviceSet, block_size: u64) -> JournalConfig {
    let smallest_bucket =
        set.sb.members.iter().filter(|m| !m.is_unused()).map(|m| m.bucket_size).min().unwrap_or(0);
    JournalConfig {
        magic: fs_magic(&set.sb.uuid, JSET_SALT),
        block_size,
        max_entry_bytes: MAX_JOURNAL_ENTRY_BYTES.min(smallest_bucket as usize),
        labels: members(set).map(|(i, m)| (i, m.label.clone())).collect(),
        durability: members(set).map(|(i, m)| (i, m.durability)).collect(),
        preflush: set.present().map(|m| m.dev.clone()).collect(),
    }
}

/// The members in use, by index.
fn members(set: &DeviceSet) -> impl Iterator<Item = (u8, &fs_core::sb::Member)> {
    set.sb
        .members
        .iter()
        .enumerate()
        .filter(|(_, m)| !m.is_unused())
        .filter_map(|(i, m)| Some((u8::try_from(i).ok()?, m)))
}

/// The persisted roots of a cleanly unmounted filesystem.
pub fn clean_roots(set: &DeviceSet) -> Result<Vec<Root>> {
    let Some(clean) = &set.sb.clean else {
        return Err(Error::new(
            ErrCode::InvalidSbClean,
            "filesystem was not unmounted cleanly: its btrees need journal replay",
        ));
    };
    clean
        .roots
        .iter()
        .map(|r| Ok(Root { btree: r.btree, level: r.level, ptr: BtreePtrV2::decode(&r.key)? }))
        .collect()
}

/// The member devices by index, `None` for absent ones.
pub fn devices(set: &DeviceSet) -> Vec<Option<SharedDevice>> {
    set.devices.iter().map(|d| d.as_ref().map(|m| m.dev.clone())).collect()
}

/// The btrees of `set` with `roots`, nodes of `btree_node_size`, new nodes from `nodes`, bsets
/// of journal seqs for which `blacklisted` is true ignored. The one place btrees are opened.
pub fn open_btrees(
    set: &DeviceSet,
    btree_node_size: u64,
    nodes: Arc<dyn NodeAllocator>,
    roots: Vec<Root>,
    cfg: BtreeConfig,
    blacklisted: Option<Box<dyn Fn(u64) -> bool + Send + Sync>>,
) -> Btrees {
    let io = NodeIo::new(devices(set), fs_magic(&set.sb.uuid, BTREE_NODE_SALT), btree_node_size);
    let mut t = Btrees::new(io, nodes, roots, cfg);
    if let Some(f) = blacklisted {
        t.set_blacklist(f);
    }
    t
}
