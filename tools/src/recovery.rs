//! Mount = recovery: superblocks, journal read, btree roots, journal keys, then the recovery
//! passes in their table order, journal replay, and write-back.
//!
//! The log it produces reads like bcachefs's dmesg lines, so a recovery here can be compared
//! with a kernel's line by line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use allocator::{Allocator, BtreeNodeAlloc, Watermark};
use fs_core::bkey::AllocV4;
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::node::BTREE_NODE_SALT;
use fs_core::btree::{BtreeConfig, Btrees, NodeAllocator, NodeIo, Root};
use fs_core::error::{ErrCode, Error, Result};
use fs_core::fsck_err::FsckErr;
use fs_core::opts::{Behavior, OptContext, OptFlags, Options, ParsedOpt};
use fs_core::recovery_pass::{PassFlags, RecoveryPass};
use fs_core::sb::{DeviceSet, fs_magic};
use journal::format::JSET_SALT;
use journal::keys::JournalKeys;
use journal::read::{JournalDevice, JournalRead, JournalReplay, ReadOpts, read_journal_for_replay};
use journal::{Journal, JournalWatermark, JsetEntry, Ring};

use crate::fs::{Fs, device_inits, journal_config};

/// What `mount` was asked for.
#[derive(Clone, Debug, Default)]
pub struct MountOpts {
    /// Options given with `-o`, already parsed for the mount context.
    pub opts: Vec<ParsedOpt>,
}

impl MountOpts {
    pub fn degraded(&self) -> bool {
        self.flag(fs_core::opts::OptId::Degraded)
    }

    pub fn fsck(&self) -> bool {
        self.flag(fs_core::opts::OptId::Fsck)
    }

    fn flag(&self, id: fs_core::opts::OptId) -> bool {
        self.opts.iter().rev().find(|p| p.id == id).is_some_and(|p| p.value.as_u64() == 1)
    }
}

/// A mounted filesystem and the story of its recovery.
pub struct Mounted {
    pub fs: Fs,
    pub log: Vec<String>,
    /// `Some((first, last))` when journal entries were replayed.
    pub replayed: Option<(u64, u64)>,
    pub journal_keys_read: usize,
    pub journal_keys_kept: usize,
    /// Fsck errors the journal read counted.
    pub fsck_errors: Vec<(FsckErr, u64)>,
    /// Alloc keys check_allocations repaired during recovery.
    pub alloc_repairs: Vec<crate::fsck::Problem>,
    /// Wall time of each mount phase (all zero after a clean shutdown), for benchmarks.
    pub times: RecoveryTimes,
}

/// Wall time of the phases of a recovery, in the order they run. The recovery passes other
/// than replay (alloc_read, going read-write) are not counted in any of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryTimes {
    /// Reading every device's journal, checking and merging the copies, choosing the range.
    pub journal_read: PhaseTime,
    /// Collecting the journal keys, sorting them and compacting them to one per position.
    pub sort: PhaseTime,
    /// `journal_replay`: the sorted pass and the journal-order pass.
    pub replay: PhaseTime,
    /// Writing back the replayed btrees, releasing the replay range, writing the superblock.
    pub write_back: PhaseTime,
}

/// When a phase began, counted from the start of recovery, and how long it took: enough to
/// place it on a timeline (memory samples, say).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseTime {
    pub start: Duration,
    pub took: Duration,
}

impl PhaseTime {
    /// The phase that began at `began`, in a recovery that began at `t0`, ending now.
    fn until_now(t0: Instant, began: Instant) -> PhaseTime {
        PhaseTime { start: began.saturating_duration_since(t0), took: began.elapsed() }
    }
}

/// The filesystem options with the mount options applied. In the v1.37.5 profile a
/// `MOUNT_OLD` option (metadata_replicas, metadata_target) is refused the way the kernel did:
/// logged and ignored. The fixed profile accepts it as a recovery option.
fn mount_options(set: &DeviceSet, mopts: &MountOpts, log: &mut Vec<String>) -> Result<Options> {
    let mut opts = set.sb.opts.clone();
    let behavior_given = mopts.opts.iter().rev().find(|p| p.id == fs_core::opts::OptId::Behavior);
    if let Some(b) = behavior_given {
        opts.set(b.id, b.value.clone())?;
    }
    for p in &mopts.opts {
        let flags = p.id.desc().flags;
        if flags.contains(OptFlags::MOUNT_OLD)
            && !flags.contains(OptFlags::MOUNT)
            && opts.behavior() == Behavior::V1_37_5
        {
            log.push(format!(
                "{}: option may no longer be specified at mount time; set via sysfs opts dir",
                p.id
            ));
            continue;
        }
        opts.set(p.id, p.value.clone())?;
    }
    Ok(opts)
}

/// Parses `-o` text for mount.
pub fn parse_mount_opts(text: &str) -> Result<MountOpts> {
    Ok(MountOpts { opts: fs_core::opts::parse_opts(text, OptContext::Mount)? })
}

/// The journal of every present member that has journal buckets, as the journal read takes it.
pub fn journal_devices(set: &DeviceSet) -> Vec<JournalDevice> {
    set.devices
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let m = m.as_ref()?;
            let member = set.sb.members.get(i)?;
            let buckets: Vec<u64> = m.sb.journal.buckets().collect();
            (!buckets.is_empty()).then(|| JournalDevice {
                dev_idx: i as u8,
                dev: m.dev.clone(),
                bucket_size: u64::from(member.bucket_size),
                buckets,
            })
        })
        .collect()
}

/// How to read `set`'s journal: its jset magic, entries padded to `block_size`, the absent
/// members. `keep_all` stays off: recovery replays only the replay range.
pub fn journal_read_opts(set: &DeviceSet, block_size: u64, degraded: bool) -> ReadOpts {
    ReadOpts {
        magic: fs_magic(&set.sb.uuid, JSET_SALT),
        block_size,
        degraded,
        missing: set.missing().iter().filter_map(|&d| u8::try_from(d).ok()).collect(),
        keep_all: false,
    }
}

/// The roots the newest replayed entry carries (every entry carries them).
fn journal_roots(jr: &JournalRead) -> Vec<Root> {
    let mut roots: std::collections::BTreeMap<BtreeId, Root> = std::collections::BTreeMap::new();
    for e in &jr.entries {
        for entry in &e.jset.entries {
            if let JsetEntry::BtreeRoot { btree, level, ptr } = entry {
                roots.insert(*btree, Root { btree: *btree, level: *level, ptr: ptr.clone() });
            }
        }
    }
    roots.into_values().collect()
}

/// A filesystem recovered in memory only: journal keys as an overlay over read-only btrees.
/// Nothing is written, so a check can run without changing one byte of the images.
pub struct ReadOnlyView {
    pub set: DeviceSet,
    pub btrees: Btrees,
    /// The journal keys a replay would apply; `None` on a clean filesystem.
    pub keys: Option<JournalKeys>,
    pub journal: Option<JournalRead>,
    pub log: Vec<String>,
}

/// Reads what recovery would read, without writing: superblocks, journal (if unclean), roots
/// and journal keys.
pub fn open_read_only(set: DeviceSet, mopts: &MountOpts) -> Result<ReadOnlyView> {
    let mut log = Vec::new();
    let opts = mount_options(&set, mopts, &mut log)?;
    set.require_all(mopts.degraded())?;
    if let Some(clean) = &set.sb.clean {
        log.push(format!("clean filesystem, journal seq {}", clean.journal_seq));
        let roots = clean
            .roots
            .iter()
            .map(|r| {
                Ok(Root { btree: r.btree, level: r.level, ptr: fs_core::bkey::BtreePtrV2::decode(&r.key)? })
            })
            .collect::<Result<Vec<_>>>()?;
        let btrees = open_btrees(&set, &opts, Arc::new(crate::fs::ReadOnlyNodes), roots, Vec::new());
        return Ok(ReadOnlyView { set, btrees, keys: None, journal: None, log });
    }
    let ropts = journal_read_opts(&set, opts.block_size(), mopts.degraded());
    let JournalReplay { read: jr, keys, keys_read: nr_read, .. } =
        read_journal_for_replay(&journal_devices(&set), &ropts)?;
    log.extend(jr.log.iter().cloned());
    log.push(JournalKeys::summary(nr_read, keys.len()));
    let blacklist = jr.replay().btree_blacklist();
    let btrees = open_btrees(&set, &opts, Arc::new(crate::fs::ReadOnlyNodes), journal_roots(&jr), blacklist);
    Ok(ReadOnlyView { set, btrees, keys: Some(keys), journal: Some(jr), log })
}

/// Mounts (recovers) the filesystem on `set`, read-write.
pub fn mount(set: DeviceSet, mopts: &MountOpts) -> Result<Mounted> {
    let mut log = Vec::new();
    let opts = mount_options(&set, mopts, &mut log)?;
    let nr = set.sb.members.iter().filter(|m| !m.is_unused()).count();
    log.push(format!(
        "bcsim ({}): starting version {} opts={}",
        set.sb.uuid,
        set.sb.version,
        mopts
            .opts
            .iter()
            .map(|p| format!("{}={}", p.id, p.id.desc().format(&p.value)))
            .collect::<Vec<_>>()
            .join(",")
    ));
    set.require_all(mopts.degraded())?;
    let missing = set.missing();
    if !missing.is_empty() {
        log.push(format!("mounting degraded: {} of {nr} devices missing", missing.len()));
    }
    if set.sb.is_clean() {
        log.push(format!(
            "recovering from clean shutdown, journal seq {}",
            set.sb.clean.as_ref().map_or(0, |c| c.journal_seq)
        ));
        let fs = Fs::open_with(set, opts, true, BtreeConfig::default())?;
        log.push("done".to_owned());
        return Ok(Mounted {
            fs,
            log,
            replayed: None,
            journal_keys_read: 0,
            journal_keys_kept: 0,
            fsck_errors: Vec::new(),
            alloc_repairs: Vec::new(),
            times: RecoveryTimes::default(),
        });
    }
    log.push("recovering from unclean shutdown".to_owned());
    recover(set, opts, mopts, log)
}

fn recover(mut set: DeviceSet, opts: Options, mopts: &MountOpts, mut log: Vec<String>) -> Result<Mounted> {
    let t0 = Instant::now();
    let ropts = journal_read_opts(&set, opts.block_size(), mopts.degraded());
    let mut times = RecoveryTimes::default();
    let JournalReplay { read: jr, mut keys, keys_read: nr_read, read_time, sort_time } =
        read_journal_for_replay(&journal_devices(&set), &ropts)?;
    times.journal_read = PhaseTime { start: Duration::ZERO, took: read_time };
    times.sort = PhaseTime { start: read_time, took: sort_time };
    log.extend(jr.log.iter().cloned());
    for &(err, n) in &jr.fsck_errors {
        set.sb.count_error(err, n);
    }
    if jr.entries.is_empty() {
        return Err(Error::new(
            ErrCode::JournalEntriesMissing,
            "unclean shutdown but no journal entries found: nothing says where the btrees are (run fsck)",
        ));
    }
    log.push(format!("journal read in {read_time:.2?}"));

    let roots = journal_roots(&jr);
    log.push(JournalKeys::summary(nr_read, keys.len()));

    // Seqs after the replay range may have reached btree nodes without their journal entry
    // becoming durable: their bsets must be ignored from now on.
    let (bl_start, bl_end) = jr.replay().blacklist_after();
    let blacklist = jr.replay().btree_blacklist();
    log.push(format!("blacklisting journal seqs {bl_start}-{}", bl_end - 1));

    let mut alloc: Option<Arc<Allocator>> = None;
    let mut btrees: Option<Btrees> = None;
    let mut nodes: Option<Arc<BtreeNodeAlloc>> = None;
    let mut journal: Option<Journal> = None;
    let mut replayed = 0usize;
    let mut alloc_problems = Vec::new();
    let mut alloc_fixes = Vec::new();
    let unclean = true;
    for &pass in RecoveryPass::ALL {
        let flags = pass.flags();
        let runs = flags.contains(PassFlags::ALWAYS)
            || (mopts.fsck() && flags.contains(PassFlags::FSCK))
            || (unclean && flags.contains(PassFlags::UNCLEAN));
        if !runs {
            continue;
        }
        match pass {
            RecoveryPass::AllocRead => {
                let mut reader = open_btrees(
                    &set,
                    &opts,
                    Arc::new(crate::fs::ReadOnlyNodes),
                    roots.clone(),
                    blacklist.clone(),
                );
                reader.set_check_headers(false);
                // check_allocations: bucket usage recomputed from the metadata as recovered.
                let (fixed_alloc, problems, fixes) =
                    crate::fsck::recovery_alloc_check(&set, &mut reader, Some(&keys))?;
                log.extend(reader.take_log());
                if !problems.is_empty() {
                    log.push(format!(
                        "check_allocations: {} alloc keys repaired after unclean shutdown",
                        problems.len()
                    ));
                }
                alloc_problems = problems;
                alloc_fixes = fixes;
                let alloc_keys: Vec<(Bpos, AllocV4)> = fixed_alloc.into_iter().collect();
                let a = if alloc_keys.is_empty() {
                    Allocator::new(device_inits(&set), opts.btree_node_size())?
                } else {
                    Allocator::from_alloc_keys(device_inits(&set), opts.btree_node_size(), alloc_keys)?
                };
                let a = Arc::new(a);
                let n = Arc::new(BtreeNodeAlloc::from_options(a.clone(), &opts)?);
                let mut t = open_btrees(&set, &opts, n.clone(), roots.clone(), blacklist.clone());
                // bcachefs checks cached node headers only once check_allocations has run.
                t.set_check_headers(false);
                alloc = Some(a);
                nodes = Some(n);
                btrees = Some(t);
                log.push("alloc_read done".to_owned());
            }
            RecoveryPass::SetMayGoRw => {
                let rings = continue_rings(&set, &jr)?;
                let jcfg = journal_config(&set, &opts, rings.len());
                let mut j = Journal::new(rings, jcfg, bl_end)?;
                // The replay range stays pinned until replay is written back.
                j.pin(jr.last_seq.max(1));
                j.add(
                    vec![JsetEntry::Blacklist { start: bl_start, end: bl_end }],
                    JournalWatermark::Normal,
                    Instant::now(),
                )?;
                j.flush()?;
                journal = Some(j);
                if let Some(t) = btrees.as_mut() {
                    t.set_check_headers(true);
                }
                log.push("going read-write".to_owned());
            }
            RecoveryPass::JournalReplay => {
                let (t, n) = match (btrees.as_mut(), nodes.as_ref()) {
                    (Some(t), Some(n)) => (t, n),
                    _ => {
                        return Err(Error::internal("journal_replay before alloc_read"));
                    }
                };
                let t_replay = Instant::now();
                replayed = replay(t, n, &mut keys, &mut log)?;
                times.replay = PhaseTime::until_now(t0, t_replay);
            }
            _ => {}
        }
    }
    // Replay has written every journal key into the btrees: free them before write-back.
    let nr_kept = keys.len();
    drop(keys);
    let (Some(alloc), Some(nodes), Some(btrees), Some(journal)) = (alloc, nodes, btrees, journal) else {
        return Err(Error::internal("recovery passes incomplete"));
    };
    let mut fs = Fs::from_parts(set, opts, btrees, alloc, nodes, journal, jr.replay_end);
    // Replay put back the alloc keys the journal had; the repaired ones go on top.
    if !alloc_fixes.is_empty() {
        fs.commit_batched_updates(alloc_fixes)?;
    }
    for p in &alloc_problems {
        fs.set.sb.count_error(p.err, 1);
    }
    let t_write_back = Instant::now();
    fs.write_back()?;
    if let Some(j) = fs.journal.as_mut() {
        j.unpin(jr.last_seq.max(1));
    }
    fs.write_back()?;
    fs.set.write_super()?;
    times.write_back = PhaseTime::until_now(t0, t_write_back);
    log.push(format!("recovery done: {replayed} keys replayed ({:.2?})", t0.elapsed()));
    Ok(Mounted {
        fs,
        log,
        replayed: Some((jr.last_seq, jr.replay_end)),
        journal_keys_read: nr_read,
        journal_keys_kept: nr_kept,
        fsck_errors: jr.fsck_errors.clone(),
        alloc_repairs: alloc_problems,
        times,
    })
}

/// Rings positioned right after the newest entry journal read found on each device.
fn continue_rings(set: &DeviceSet, jr: &JournalRead) -> Result<Vec<Ring>> {
    let mut rings = Vec::new();
    for jd in journal_devices(set) {
        let Some(member) = set.sb.members.get(usize::from(jd.dev_idx)) else { continue };
        if member.durability == 0 {
            continue;
        }
        let n = jd.buckets.len();
        let ring = match jr.rings.iter().find(|r| r.dev == jd.dev_idx) {
            Some(r) if r.bucket_seqs.len() == n => Ring::at(
                jd.dev_idx,
                jd.dev,
                jd.bucket_size,
                jd.buckets,
                r.head_idx.min(n.saturating_sub(1)),
                r.head_end.min(jd.bucket_size),
                r.bucket_seqs.clone(),
            )?,
            _ => Ring::empty(jd.dev_idx, jd.dev, jd.bucket_size, jd.buckets)?,
        };
        rings.push(ring);
    }
    Ok(rings)
}

/// Keys replayed between node write-backs during replay. Written nodes are clean and may be
/// evicted, so the btree's memory stays within its cache bound however many keys the journal
/// holds, as journal reclaim keeps it in bcachefs; nodes written before the new roots reach the
/// journal are safe because the allocator does not reuse emptied buckets before their journal
/// seq is durable.
const REPLAY_WRITE_BACK_KEYS: usize = 1 << 20;

/// Clean btree nodes a mounted filesystem keeps cached (128 MiB of 256 KiB nodes). Replay
/// writes nodes back as it goes and never comes back to them, so a larger cache would only hold
/// memory beside the journal keys (at 4096 nodes, about 1 GB after a 22M-key replay).
const RECOVERY_CACHE_NODES: usize = 512;

/// Whether `seq` lies in one of the `[start, end)` ranges.
fn in_ranges(ranges: &[(u64, u64)], seq: u64) -> bool {
    ranges.iter().any(|&(s, e)| (s..e).contains(&seq))
}

/// The btrees of `set` as recovery opens them: the given roots, bsets of `blacklist`ed seqs
/// ignored, [`RECOVERY_CACHE_NODES`] clean nodes cached.
fn open_btrees(
    set: &DeviceSet,
    opts: &Options,
    nodes: Arc<dyn NodeAllocator>,
    roots: Vec<Root>,
    blacklist: Vec<(u64, u64)>,
) -> Btrees {
    let devices = set.devices.iter().map(|d| d.as_ref().map(|m| m.dev.clone())).collect();
    let io = NodeIo::new(devices, fs_magic(&set.sb.uuid, BTREE_NODE_SALT), opts.btree_node_size());
    let cfg = BtreeConfig {
        behavior: opts.behavior(),
        cache_nodes: RECOVERY_CACHE_NODES,
        ..BtreeConfig::default()
    };
    let mut t = Btrees::new(io, nodes, roots, cfg);
    t.set_blacklist(move |seq| in_ranges(&blacklist, seq));
    t
}

/// Replays journal keys: a sorted pass in btree order at the normal watermark, queueing keys
/// that must wait for the allocator, then a pass over the queued keys in journal order at the
/// reclaim watermark. Returns how many keys were replayed.
///
/// Keys are taken by index, not searched for, and their values copied from their records
/// straight into the leaves; a key the btree refuses stays live in the journal keys, so the overlay
/// shows it until it is replayed. Every `REPLAY_WRITE_BACK_KEYS` keys the dirty nodes are
/// written.
fn replay(
    t: &mut Btrees,
    nodes: &BtreeNodeAlloc,
    keys: &mut JournalKeys,
    log: &mut Vec<String>,
) -> Result<usize> {
    let mut queued: Vec<usize> = Vec::new();
    let mut done = 0usize;
    for i in 0..keys.len() {
        let Some(k) = keys.at(i).filter(|k| !k.overwritten && k.level == 0) else { continue };
        let (btree, pos) = (k.btree, k.key.pos);
        match t.insert_ref(btree, k.key, k.seq) {
            Ok(()) => {
                keys.mark_overwritten_at(i);
                done += 1;
                if done % REPLAY_WRITE_BACK_KEYS == 0 {
                    t.write_dirty()?;
                }
            }
            Err(e) if e.matches(ErrCode::OperationBlocked) => queued.push(i),
            Err(e) => return Err(e.prefix(format_args!("journal_replay: btree={btree} pos={pos}"))),
        }
    }
    if !queued.is_empty() {
        log.push(format!(
            "journal_replay: {} keys wait for the allocator; replaying them in journal order",
            queued.len()
        ));
        // Stable: keys of one seq stay in btree order.
        queued.sort_by_key(|&i| keys.at(i).map_or(0, |k| k.seq));
        let wm = nodes.watermark();
        nodes.set_watermark(Watermark::Reclaim);
        let r = replay_queued(t, keys, &queued);
        nodes.set_watermark(wm);
        done += r?;
    }
    log.push(format!("journal_replay: {done} keys replayed"));
    Ok(done)
}

/// The journal-order pass over the keys the sorted pass queued.
fn replay_queued(t: &mut Btrees, keys: &mut JournalKeys, queued: &[usize]) -> Result<usize> {
    let mut done = 0;
    for &i in queued {
        let Some(k) = keys.at(i).filter(|k| !k.overwritten) else { continue };
        let (btree, pos) = (k.btree, k.key.pos);
        if let Err(e) = t.insert_ref(btree, k.key, k.seq) {
            return Err(e.prefix(format_args!("journal_replay (journal order): btree={btree} pos={pos}")));
        }
        keys.mark_overwritten_at(i);
        done += 1;
    }
    Ok(done)
}
