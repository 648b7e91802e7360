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
use crate::recovery::progress::Progress;
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
    /// Where the workload reports its progress (a large `keys` runs for minutes).
    pub progress: Progress,
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
/// Journal bytes each NVMe member is given per journal key asked for: a key and its share of
/// its entry take about 60 bytes, and reclaim keeps a ring at most half full, so twice that,
/// rounded up. It exceeds bcachefs's rule (1 GiB on these members) only past about 8M keys.
const JOURNAL_BYTES_PER_KEY: u64 = 128;
/// The workload does one fsync in `ceil(keys / KEYS_PER_FSYNC_THINNING)`. It fsyncs about every
/// 8 operations, about 28 keys per journal entry, and reclaim flushes the pins more than 16384
/// seqs old (half of bcachefs's pin fifo): so thinned, the journal a large `keys` leaves stays
/// under about 12000 entries.
const KEYS_PER_FSYNC_THINNING: u64 = 28 * 12_000;
/// Image space the build takes per journal key asked for, about: mostly the workload's file
/// data, twice replicated on the hard disks (measured: 16 GB for 3M keys).
const IMAGE_BYTES_PER_KEY: u64 = 5500;

/// Refuses a build that cannot fit in `dir`'s filesystem before it runs for minutes and fails
/// on a full disk: `keys` asks for about `keys * IMAGE_BYTES_PER_KEY`.
fn check_space(dir: &std::path::Path, keys: u64) -> Result<()> {
    let needed = keys.saturating_mul(IMAGE_BYTES_PER_KEY);
    let st = rustix::fs::statvfs(dir).map_err(|e| {
        Error::new(ErrCode::IoRead, format!("cannot see the free space: {e}")).path(dir.display().to_string())
    })?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if needed > free {
        return Err(Error::new(
            ErrCode::Enospc,
            format!(
                "--keys {keys} needs about {} GiB of image space (file data on the hard disk images), \
                 {} GiB are free there",
                needed.div_ceil(1 << 30),
                free >> 30
            ),
        )
        .path(dir.display().to_string()));
    }
    Ok(())
}

/// Builds the #1107 image set in `o.dir`, calling `say` as each step is applied.
pub fn build_1107(o: &Opts1107, say: &mut dyn FnMut(&Step)) -> Result<Built1107> {
    std::fs::create_dir_all(&o.dir).map_err(|e| {
        io_error(e, ErrCode::IoWrite, "cannot create the image directory").path(o.dir.display().to_string())
    })?;
    check_space(&o.dir, o.keys)?;
    let mut steps = Vec::new();
    let mut step = |name: &'static str, detail: String| {
        let s = Step { name, detail };
        say(&s);
        steps.push(s);
    };

    let journal_bytes = o.keys.saturating_mul(JOURNAL_BYTES_PER_KEY);
    let specs: Vec<ImageSpec> = eight_member_layout()
        .into_iter()
        .map(|(name, size, label)| {
            let mut s = ImageSpec::new(o.dir.join(name));
            s.size = Some(size);
            s.journal_bytes = label.starts_with("ssd.").then_some(journal_bytes);
            s.label = label;
            s
        })
        .collect();
    let paths: Vec<PathBuf> = specs.iter().map(|s| s.path.clone()).collect();
    let mut opts = eight_member_options()?;
    opts.set_text(OptId::DataReplicas, "2")?;
    let uuid = Uuid::from_rng(&mut Rng::new(o.seed));
    let formatted = format_images(&specs, &opts, Some(uuid), true)?;
    let nvme_journal = formatted
        .devices
        .iter()
        .find(|d| d.name.ends_with("nvme0.img"))
        .map_or(0, |d| d.journal.nr().saturating_mul(u64::from(d.member.bucket_size)));
    step(
        "format",
        format!(
            "8 members (6 hdd of 1 TiB, 2 nvme of 256 GiB, a journal of {} MiB on each nvme), \
             metadata_replicas=2 on ssd, data_replicas=2, uuid {}",
            nvme_journal >> 20,
            formatted.uuid
        ),
    );

    // The power goes after five sixths of the operations.
    let run = (o.keys.saturating_mul(100) / KEYS_PER_100_OPS).max(200);
    let ops = usize::try_from(run.saturating_mul(6) / 5).unwrap_or(usize::MAX);
    let crash_after = usize::try_from(run).unwrap_or(usize::MAX).min(ops);
    let cfg = BtreeConfig { seq_seed: Some(o.seed), ..BtreeConfig::default() };
    let mopts = MountOpts { progress: o.progress, ..MountOpts::default() };
    let fsync_every = usize::try_from(o.keys.div_ceil(KEYS_PER_FSYNC_THINNING)).unwrap_or(usize::MAX).max(1);
    let run = run_on_images_with(&paths, ops, o.seed, Some(crash_after), &mopts, cfg, fsync_every)?;
    let fsyncs = if fsync_every > 1 { format!(" (1 fsync in {fsync_every} done)") } else { String::new() };
    step(
        "workload-and-crash",
        format!(
            "seeded file workload (seed {}), {} operations{fsyncs}, last fsync after {}; then power lost: {} unflushed writes gone",
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

// ---------------------------------------------------------------------------------------------
// #1108: btree splits in journal replay that find no second metadata device.

/// The report's device names: four hard disks and the NVMe pair vde, vdf.
const NVME_1108: [&str; 2] = ["vde", "vdf"];
/// Figures of the report, at scale 1: vde's buckets and need_discard count, vdf's free and
/// need_discard counts. vdf's size is not in the report; it is chosen to leave a few buckets of
/// metadata and cold data beside those.
const VDE_BUCKETS: u64 = 41522;
const VDE_NEED_DISCARD: u64 = 9416;
const VDF_FREE: u64 = 5109;
const VDF_NEED_DISCARD: u64 = 41681;
const VDF_BUCKETS: u64 = 47000;
/// What the steps after `emptied-data` change, measured at scale 1 with the default seed: the
/// churn's rewritten btree nodes empty 3 more buckets into need_discard on each NVMe disk, and
/// the churn and replay take 4 of vdf's free buckets. The steps leave that much less (more,
/// for vdf's free count), so that the stuck report shows the report's figures.
const CHURN_EMPTIES: u64 = 3;
const CHURN_TAKES_FROM_VDF: u64 = 4;
/// Hard disks: their size is not in the report either. Large enough that v1.37.5's
/// filesystem-wide rewind buffer (4% of all capacity) covers every need_discard bucket of the
/// NVMe pair, which is why the running filesystem never gave them back.
const HDD_BYTES: u64 = 2 * TIB;
const BUCKET_1108: u64 = 4 << 20;
/// Cold data goes in files of at most this many buckets (4 GiB), extents of a bucket each.
const COLD_FILE_BUCKETS: u64 = 1024;
/// Extents per transaction in the cold-data steps.
const COLD_PER_TRANS: usize = 32;
/// Files whose inodes the churn step updates, round after round.
const CHURN_FILES: u64 = 20_000;

/// Which #1108 image set to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant1108 {
    /// As reported: vde holds 9416 need_discard buckets, emptied before the journal's last
    /// reclaim, so a profile that discards during recovery gets them back.
    Reported,
    /// vde holds no emptied bucket at all (the data stays): nothing for discards to free on
    /// it, so only fewer metadata replicas let the split go ahead.
    NoDiscard,
}

impl Variant1108 {
    pub fn name(self) -> &'static str {
        match self {
            Variant1108::Reported => "reported",
            Variant1108::NoDiscard => "no-discard",
        }
    }
}

/// What `bcsim repro 1108` builds.
#[derive(Clone, Debug)]
pub struct Opts1108 {
    pub dir: PathBuf,
    /// Divides every size and count (1: the report's figures).
    pub scale: u64,
    pub seed: u64,
    pub variant: Variant1108,
}

/// What was built.
#[derive(Debug)]
pub struct Built1108 {
    pub images: Vec<PathBuf>,
    pub steps: Vec<Step>,
}

/// Builds the #1108 image set in `o.dir`, calling `say` as each step is applied.
///
/// Everything goes through bcsim's own filesystem, mounted as the reporter's kernel
/// (`behavior=v1.37.5`): files, cold data, deletions, write-back, journal flushes; the last
/// step stops it dead. No step writes an image byte itself.
pub fn build_1108(o: &Opts1108, say: &mut dyn FnMut(&Step)) -> Result<Built1108> {
    use fs_core::opts::{OptContext, parse_opts};

    if o.scale == 0 || o.scale > 64 {
        return Err(Error::new(ErrCode::InvalidArgument, format!("--scale {} is not in 1..=64", o.scale)));
    }
    std::fs::create_dir_all(&o.dir).map_err(|e| {
        io_error(e, ErrCode::IoWrite, "cannot create the image directory").path(o.dir.display().to_string())
    })?;
    let mut steps = Vec::new();
    let mut step = |name: &'static str, detail: String| {
        let s = Step { name, detail };
        say(&s);
        steps.push(s);
    };
    let sc = |n: u64| (n / o.scale).max(1);

    let specs = layout_1108(&o.dir, o.scale);
    let paths: Vec<PathBuf> = specs.iter().map(|s| s.path.clone()).collect();
    let mut opts = Options::default();
    opts.set_text(OptId::MetadataReplicas, "2")?;
    opts.set_text(OptId::MetadataTarget, "ssd")?;
    opts.set_text(OptId::ForegroundTarget, "hdd")?;
    let uuid = Uuid::from_rng(&mut Rng::new(o.seed ^ 0x1108));
    let formatted = format_images(&specs, &opts, Some(uuid), true)?;
    step(
        "format",
        format!(
            "6 members: 4 hdd of {} (data_allowed user), vde of {} buckets and vdf of {} ({} each); \
             metadata_replicas=2 on ssd, user data on hdd; uuid {}",
            fs_core::size::format_size(HDD_BYTES / o.scale),
            sc(VDE_BUCKETS),
            sc(VDF_BUCKETS),
            fs_core::size::format_size(BUCKET_1108),
            formatted.uuid
        ),
    );

    let set = open_device_set(&paths, true)?;
    crate::control::refuse_if_mounted(set.sb.uuid, "repro 1108")?;
    let mopts = MountOpts {
        opts: parse_opts("behavior=v1.37.5", OptContext::Mount)?,
        reclaim: crate::recovery::ReclaimMode::Manual,
        ..MountOpts::default()
    };
    let cfg = BtreeConfig { seq_seed: Some(o.seed), ..BtreeConfig::default() };
    let mut fs = crate::recovery::mount_with(set, &mopts, cfg)?.fs;
    let files = crate::files::Files::new(&mut fs)?;
    let mut b = Builder1108 { fs, files, cold_files: 0 };

    let ops = crate::workload::generate(o.seed, 400);
    for (i, op) in ops.iter().enumerate() {
        crate::workload::run_op(&mut b.fs, &mut b.files, op)
            .map_err(|e| e.prefix(format_args!("operation {} ({op:?})", i + 1)))?;
    }
    b.fs.fsync()?;
    step(
        "files",
        format!("seeded file workload (seed {}), {} operations, on the hard disks", o.seed, ops.len()),
    );
    let inums = b.many_files(CHURN_FILES)?;
    b.fs.fsync()?;
    step("many-files", format!("{CHURN_FILES} empty files created in /meta"));

    let emptied =
        [("vde", sc(VDE_NEED_DISCARD - CHURN_EMPTIES)), ("vdf", sc(VDF_NEED_DISCARD - CHURN_EMPTIES))];
    match o.variant {
        Variant1108::Reported => {
            step("emptied-data", b.emptied(&emptied)?);
            b.fs.reclaim()?;
            let seq = b.fs.fsync()?;
            step(
                "journal-reclaimed",
                format!(
                    "everything written back, journal flushed at seq {seq}: the deletions are behind \
                     its last_seq; v1.37.5's filesystem-wide rewind buffer keeps their buckets"
                ),
            );
        }
        Variant1108::NoDiscard => {
            // vde keeps no emptied bucket: the data that would have been deleted stays.
            step("emptied-data", format!("{}; vde: none, its data stays", b.emptied(&emptied[1..])?));
            b.fs.reclaim()?;
            b.fs.fsync()?;
        }
    }

    let (_, vde_cold) = b.cold("vde", allocator::Watermark::Copygc, u64::MAX, 0)?;
    let vdf_free = b.usage("vdf")?.free;
    let vdf_keep = sc(VDF_FREE + CHURN_TAKES_FROM_VDF);
    let (_, vdf_cold) =
        b.cold("vdf", allocator::Watermark::Normal, vdf_free.saturating_sub(vdf_keep), vdf_keep)?;
    let seq = b.fs.fsync()?;
    let (e, f) = (b.usage("vde")?, b.usage("vdf")?);
    let cold_detail = format!(
        "{vde_cold} buckets of data moved onto vde at the copygc watermark (as copygc writes), \
         {vdf_cold} onto vdf; journal flushed at seq {seq}. vde: free {} need_discard {}; vdf: free {} need_discard {}",
        e.free, e.need_discard, f.free, f.need_discard
    );
    step("cold-data", cold_detail);
    let (rounds, updates, err) = b.churn(&inums)?;
    let seq = b.fs.fsync()?;
    let (e, f) = (b.usage("vde")?, b.usage("vdf")?);
    step(
        "btree-churn",
        format!(
            "{rounds} rounds of touching the {CHURN_FILES} files ({updates} inode updates), each \
             followed by journal reclaim at the reclaim watermark, until reclaim was refused ({}); journal \
             flushed at seq {seq}. vde: free {} btree {} need_discard {}; vdf: free {} btree {}",
            err.as_ref().map_or("none", |e| e.code().name()),
            e.free,
            e.btree,
            e.need_discard,
            f.free,
            f.btree
        ),
    );
    drop(b);
    step("power-lost", "the machine stops: the dirty btree nodes are never written".to_owned());
    Ok(Built1108 { images: paths, steps })
}

/// The six members of #1108 in `dir`, sizes divided by `scale`.
fn layout_1108(dir: &std::path::Path, scale: u64) -> Vec<ImageSpec> {
    let mut specs = Vec::new();
    for i in 0..4 {
        let mut s = ImageSpec::new(dir.join(format!("hdd{i}.img")));
        s.size = Some(HDD_BYTES / scale);
        s.bucket_size = Some(BUCKET_1108);
        s.label = format!("hdd.hdd{i}");
        s.data_allowed = fs_core::sb::DataAllowed::USER;
        specs.push(s);
    }
    for (name, nbuckets) in NVME_1108.iter().zip([VDE_BUCKETS, VDF_BUCKETS]) {
        let mut s = ImageSpec::new(dir.join(format!("{name}.img")));
        // The backup superblock sits past the last bucket: room for it beyond nbuckets.
        s.size = Some((nbuckets / scale).max(1) * BUCKET_1108 + fs_core::sb::SB_MAX_BYTES);
        s.bucket_size = Some(BUCKET_1108);
        s.label = format!("ssd.{name}");
        specs.push(s);
    }
    specs
}

/// The mounted filesystem the #1108 steps run on.
struct Builder1108 {
    fs: crate::fs::Fs,
    files: crate::files::Files,
    cold_files: u64,
}

impl Builder1108 {
    fn dev(name: &str) -> u8 {
        if name == "vdf" { 5 } else { 4 }
    }

    fn usage(&self, name: &str) -> Result<allocator::DevUsage> {
        self.fs
            .alloc()
            .and_then(|a| a.dev_usage(Self::dev(name)))
            .ok_or_else(|| Error::internal(format!("no bucket counts of {name}")))
    }

    /// Cold files holding up to `want` buckets on `name`, written at `watermark`, leaving at
    /// least `keep_free` buckets free; returns the files' names and the buckets written.
    fn cold(
        &mut self,
        name: &str,
        watermark: allocator::Watermark,
        want: u64,
        keep_free: u64,
    ) -> Result<(Vec<String>, u64)> {
        let mut names = Vec::new();
        let mut done = 0u64;
        while done < want {
            let room = self.usage(name)?.free.saturating_sub(keep_free);
            if room == 0 {
                break;
            }
            self.cold_files += 1;
            let file = format!("cold-{name}-{}", self.cold_files);
            let inum = self.files.create(&mut self.fs, crate::files::ROOT_INO, &file, false)?;
            names.push(file);
            let n = (want - done).min(COLD_FILE_BUCKETS).min(room);
            // Near the end a bucket at a time, so that the node buckets the commits take
            // count before the next one.
            let per = if room < 2 * COLD_PER_TRANS as u64 { 1 } else { COLD_PER_TRANS };
            let got = self.files.write_cold(&mut self.fs, inum, &format!("ssd.{name}"), watermark, n, per)?;
            done += got;
            if got == 0 {
                break;
            }
        }
        Ok((names, done))
    }

    /// Step `many-files`: `n` empty files in `/meta`, one transaction each.
    fn many_files(&mut self, n: u64) -> Result<Vec<u64>> {
        let dir = self.files.create(&mut self.fs, crate::files::ROOT_INO, "meta", true)?;
        (0..n).map(|i| self.files.create(&mut self.fs, dir, &format!("f{i:08}"), false)).collect()
    }

    /// Step `btree-churn`: rounds of touching every file of `inums`, each round followed by
    /// journal reclaim. The key cache holds the inode updates; reclaim flushes them into the
    /// inodes btree at the reclaim watermark, each flush a bset appended to a leaf, and a leaf
    /// whose space is used up is written anew in a new slot, its old slot freed. A bucket all
    /// of whose slots are freed becomes need_discard, and v1.37.5's filesystem-wide rewind
    /// buffer keeps it so: free buckets on the NVMe pair turn into need_discard ones. It ends
    /// when reclaim can no longer write a leaf anew (no second device for its place) and a
    /// round brought vde's free count no lower; the last round's updates are then only in the
    /// journal and the key cache. Returns the rounds, the updates, and reclaim's refusal.
    fn churn(&mut self, inums: &[u64]) -> Result<(u64, u64, Option<Error>)> {
        let mut rounds = 0u64;
        let mut updates = 0u64;
        let mut last_free = u64::MAX;
        loop {
            rounds += 1;
            for &inum in inums {
                crate::files::Files::touch(&mut self.fs, inum, rounds)?;
                updates += 1;
            }
            let refused = match self.fs.reclaim() {
                Ok(()) => None,
                Err(e) if e.matches(ErrCode::JournalReclaimWouldDeadlock) => Some(e),
                Err(e) => return Err(e),
            };
            let free = self.usage("vde")?.free;
            if refused.is_some() && free == last_free {
                return Ok((rounds, updates, refused));
            }
            if rounds >= 10_000 {
                return Err(Error::internal("btree churn never wedged"));
            }
            last_free = free;
        }
    }

    /// Step `emptied-data`: cold data written on each device and deleted again, leaving its
    /// buckets need_discard.
    fn emptied(&mut self, what: &[(&str, u64)]) -> Result<String> {
        let mut detail = Vec::new();
        for &(name, want) in what {
            let (names, done) = self.cold(name, allocator::Watermark::Normal, want, 0)?;
            if done < want {
                return Err(Error::internal(format!("{name} took {done} of {want} buckets of data")));
            }
            for n in &names {
                self.files.unlink(&mut self.fs, crate::files::ROOT_INO, n)?;
            }
            detail.push(format!("{name}: {done} buckets written in {} files, then deleted", names.len()));
        }
        Ok(detail.join("; "))
    }
}
