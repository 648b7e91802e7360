//! Image sets that reproduce bcachefs issues: bcsim's own format, workload and crash, then named
//! damage steps, each of the kind hardware or a kernel bug leaves (see docs/REPRO-1107.md). A
//! step never writes what recovery is supposed to produce: no key replay would write, no log
//! line. Every step is reproducible from the seed and is reported as it is applied.

use std::path::PathBuf;

use fs_core::bkey::ptr::SECTOR_BYTES;
use fs_core::bpos::BtreeId;
use fs_core::btree::node::duplicated_pointer_bset;
use fs_core::btree::{BtreeConfig, NodeInfo};
use fs_core::error::{ErrCode, Error, Result, io_error};
use fs_core::opts::{OptId, Options};
use fs_core::rng::Rng;
use fs_core::sb::DeviceSet;
use fs_core::uuid::Uuid;
use journal::format::JsetHeader;

use crate::images::{ImageSpec, format_images, open_device_set};
use crate::list_journal::read as read_journal_all;
use crate::recovery::{MountOpts, open_view};
use crate::workload::run_on_images_with;

const TIB: u64 = 1 << 40;
const GIB: u64 = 1 << 30;

/// The 8-member layout of #1107 and #1108 (and `bcsim demo`): (file name, size, label). Six
/// 1 TiB hard disks and two 256 GiB NVMe disks; metadata goes to the `ssd` group.
pub fn eight_member_layout() -> Vec<(String, u64, String)> {
    let hdds = (0..6).map(|i| (format!("hdd{i}.img"), TIB, format!("hdd.hdd{i}")));
    let ssds = (0..2).map(|i| (format!("nvme{i}.img"), 256 * GIB, format!("ssd.nvme{i}")));
    hdds.chain(ssds).collect()
}

/// The options of that layout: two metadata replicas on the ssd group.
pub fn eight_member_options() -> Result<Options> {
    let mut opts = Options::default();
    opts.set_text(OptId::MetadataReplicas, "2")?;
    opts.set_text(OptId::MetadataTarget, "ssd")?;
    Ok(opts)
}

/// Which #1107 image set to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant1107 {
    /// The report's damage: alloc leaf lookups that reach a node whose header does not match
    /// the pointer.
    Reported,
}

impl Variant1107 {
    pub fn name(self) -> &'static str {
        match self {
            Variant1107::Reported => "reported",
        }
    }
}

/// What `bcsim repro 1107` builds.
#[derive(Clone, Debug)]
pub struct Opts1107 {
    pub dir: PathBuf,
    /// Journal keys to aim for: the workload's length follows from it.
    pub keys: u64,
    pub seed: u64,
    pub variant: Variant1107,
}

/// A step as it is applied: its name (as docs/REPRO-1107.md lists it) and what it did.
#[derive(Clone, Debug)]
pub struct Step {
    pub name: &'static str,
    pub detail: String,
}

/// What was built.
#[derive(Debug)]
pub struct Built1107 {
    /// The members to give to mount, in member order.
    pub images: Vec<PathBuf>,
    /// The member left out (a failed disk), kept aside.
    pub absent: PathBuf,
    pub steps: Vec<Step>,
    /// The workload: its operations (`workload::generate(seed, ops)`), how many ran before the
    /// power went, and how many had returned from their last fsync.
    pub ops: usize,
    pub ops_run: usize,
    pub last_fsync_after: usize,
}

/// The member that fails.
const ABSENT: &str = "hdd5.img";
/// Hard disks that carry stale journal buckets from before metadata_target=ssd.
const STALE_JOURNAL_DEVS: [u8; 5] = [0, 1, 2, 3, 4];
/// Journal keys read at mount per 100 workload operations, about (measured: 2500 operations
/// of seed 1107 leave 7331 keys to read, 2089 after compaction).
const KEYS_PER_100_OPS: u64 = 293;

/// Builds the #1107 image set in `o.dir`, calling `say` as each step is applied.
pub fn build_1107(o: &Opts1107, say: &mut dyn FnMut(&Step)) -> Result<Built1107> {
    std::fs::create_dir_all(&o.dir).map_err(|e| {
        io_error(e, ErrCode::IoWrite, "cannot create the image directory").path(o.dir.display().to_string())
    })?;
    let mut steps = Vec::new();
    let mut step = |name: &'static str, detail: String| {
        let s = Step { name, detail };
        say(&s);
        steps.push(s);
    };

    let specs: Vec<ImageSpec> = eight_member_layout()
        .into_iter()
        .map(|(name, size, label)| {
            let mut s = ImageSpec::new(o.dir.join(name));
            s.size = Some(size);
            s.label = label;
            s
        })
        .collect();
    let paths: Vec<PathBuf> = specs.iter().map(|s| s.path.clone()).collect();
    let mut opts = eight_member_options()?;
    opts.set_text(OptId::DataReplicas, "2")?;
    let uuid = Uuid::from_rng(&mut Rng::new(o.seed));
    let formatted = format_images(&specs, &opts, Some(uuid), true)?;
    step(
        "format",
        format!(
            "8 members (6 hdd of 1 TiB, 2 nvme of 256 GiB), metadata_replicas=2 on ssd, data_replicas=2, uuid {}",
            formatted.uuid
        ),
    );

    // The power goes after five sixths of the operations.
    let run = (o.keys.saturating_mul(100) / KEYS_PER_100_OPS).max(200);
    let ops = usize::try_from(run.saturating_mul(6) / 5).unwrap_or(usize::MAX);
    let crash_after = usize::try_from(run).unwrap_or(usize::MAX).min(ops);
    let cfg = BtreeConfig { seq_seed: Some(o.seed), ..BtreeConfig::default() };
    let run = run_on_images_with(&paths, ops, o.seed, Some(crash_after), &MountOpts::default(), cfg)?;
    step(
        "workload-and-crash",
        format!(
            "seeded file workload (seed {}), {} operations, last fsync after {}; then power lost: {} unflushed writes gone",
            o.seed, run.ops_run, run.last_fsync_after, run.unflushed_writes_lost
        ),
    );

    let set = open_device_set(&paths, true)?;
    let detail = stale_journal_buckets(&set, o.seed)?;
    step("stale-journal-buckets", detail);

    match o.variant {
        Variant1107::Reported => {
            let nodes = {
                let set = open_device_set(&paths, false)?;
                open_view(set, &MountOpts::default())?.nodes(BtreeId::Alloc)?
            };
            let detail = duplicate_alloc_pointer(&set, &nodes, o.seed)?;
            step("duplicated-alloc-pointer", detail);
        }
    }
    drop(set);

    let failed_dir = o.dir.join("failed");
    std::fs::create_dir_all(&failed_dir).map_err(|e| {
        io_error(e, ErrCode::IoWrite, "cannot create directory").path(failed_dir.display().to_string())
    })?;
    let absent = failed_dir.join(ABSENT);
    std::fs::rename(o.dir.join(ABSENT), &absent).map_err(|e| {
        io_error(e, ErrCode::IoWrite, "cannot move the failed member aside")
            .path(absent.display().to_string())
    })?;
    step("member-fails", format!("{ABSENT} stops answering: moved to {}", absent.display()));
    let images = paths.into_iter().filter(|p| !p.ends_with(ABSENT)).collect();
    Ok(Built1107 { images, absent, steps, ops, ops_run: run.ops_run, last_fsync_after: run.last_fsync_after })
}

/// Step `stale-journal-buckets`: journal buckets on five hard disks that still hold entries
/// from when the journal was written there (before metadata_target=ssd), left in a different
/// ring order than the one they were written in, as a journal resized or moved between devices
/// leaves them. Copies of entries long reclaimed (below last_seq): nothing replays them, but
/// the read walks every ring and finds its bucket seqs not monotonic.
fn stale_journal_buckets(set: &DeviceSet, seed: u64) -> Result<String> {
    let jr = read_journal_all(set, true)?;
    let old: Vec<_> = jr.all_entries.iter().filter(|e| e.jset.seq < jr.last_seq).collect();
    let [older, newer] = match old.as_slice() {
        [a, .., b] => [*a, *b],
        _ => {
            return Err(Error::new(
                ErrCode::InvalidArgument,
                format!(
                    "the workload left {} reclaimed journal entries, two are needed: raise --keys",
                    old.len()
                ),
            ));
        }
    };
    let copy = |e: &journal::ReadEntry| -> Result<Vec<u8>> {
        let p = e.ptrs.first().ok_or_else(|| Error::internal("a journal entry read with no copy"))?;
        let dev = set
            .device(usize::from(p.dev))
            .ok_or_else(|| Error::internal("journal copy on an absent member"))?;
        let mut hdr = vec![0u8; journal::format::JSET_HEADER_BYTES];
        dev.dev.read_at(&mut hdr, p.offset)?;
        let len = JsetHeader::read(&hdr).map_or(0, |h| h.bytes as u64).next_multiple_of(SECTOR_BYTES);
        let mut buf = vec![0u8; len as usize];
        dev.dev.read_at(&mut buf, p.offset)?;
        Ok(buf)
    };
    let (older_bytes, newer_bytes) = (copy(older)?, copy(newer)?);
    let mut rng = Rng::new(seed ^ 0x1107_0001);
    let mut where_ = Vec::new();
    for dev_idx in STALE_JOURNAL_DEVS {
        let m = set
            .device(usize::from(dev_idx))
            .ok_or_else(|| Error::internal("member missing while building"))?;
        let buckets: Vec<u64> = m.sb.journal.buckets().collect();
        let bucket_bytes = set.sb.members.get(usize::from(dev_idx)).map_or(0, |mm| u64::from(mm.bucket_size));
        // The newer entry at ring position 0; the older one further on, with empty buckets
        // between: walking back from the head, the read finds data behind an empty bucket.
        let far = 2 + rng.below((buckets.len() as u64).saturating_sub(2).max(1)) as usize;
        let (Some(&b0), Some(&b1), true) = (buckets.first(), buckets.get(far), bucket_bytes > 0) else {
            return Err(Error::internal(format!("dev {dev_idx} has too few journal buckets")));
        };
        m.dev.write_at(&newer_bytes, b0 * bucket_bytes)?;
        m.dev.write_at(&older_bytes, b1 * bucket_bytes)?;
        m.dev.flush()?;
        where_.push(format!(
            "dev {dev_idx} buckets {b0} (seq {}) and {b1} (seq {})",
            newer.jset.seq, older.jset.seq
        ));
    }
    Ok(where_.join("; "))
}

/// Step `duplicated-alloc-pointer`: an interior node of the alloc btree gets a bset whose
/// pointer for one leaf carries its left neighbour's seq and location (the leaf's own range
/// kept), as an interior update built from a stale or mis-indexed copy of the node writes it.
/// Both replicas get it, with valid checksums: a bug wrote it, not the disk. A lookup in that
/// leaf's range then reaches the neighbour: from the node cache when the neighbour is cached
/// (a header that does not match the pointer), and as a read error when it is not.
fn duplicate_alloc_pointer(set: &DeviceSet, nodes: &[NodeInfo], seed: u64) -> Result<String> {
    let parent = nodes
        .iter()
        .find(|n| n.level == 1)
        .ok_or_else(|| Error::internal("the alloc btree has no interior node: raise --keys"))?;
    let leaves: Vec<&NodeInfo> = nodes
        .iter()
        .filter(|n| n.level == 0 && n.min_key >= parent.min_key && n.max_key <= parent.max_key)
        .collect();
    if leaves.len() < 3 {
        return Err(Error::internal(format!(
            "the alloc btree has {} leaves, 3 are needed: raise --keys",
            leaves.len()
        )));
    }
    let mut rng = Rng::new(seed ^ 0x1107_0002);
    // Not the last leaf: the one ending at POS_MAX is where new buckets' keys go.
    let i = 1 + rng.below(leaves.len() as u64 - 2) as usize;
    let (Some(&left), Some(&victim)) = (leaves.get(i - 1), leaves.get(i)) else {
        return Err(Error::internal("leaf index out of range"));
    };
    let bset = duplicated_pointer_bset(parent, left, victim);
    let at = u64::from(parent.sectors_written) * SECTOR_BYTES;
    for p in &parent.ptrs {
        let m = set
            .device(usize::from(p.dev))
            .ok_or_else(|| Error::internal("interior node on an absent member"))?;
        m.dev.write_at(&bset, p.byte_offset() + at)?;
        m.dev.flush()?;
    }
    Ok(format!(
        "alloc interior node {}..{}: the pointer for leaf {}..{} now carries the seq and location of leaf {}..{}",
        parent.min_key, parent.max_key, victim.min_key, victim.max_key, left.min_key, left.max_key
    ))
}
