//! Mount = recovery: superblocks, the journal read (after an unclean shutdown), btree roots and
//! journal keys, then the recovery passes in their table order ([`crate::passes`]).
//!
//! [`recover`] is the one way in, for mount and fsck alike; the mode says what the run may
//! change. The log it produces reads like bcachefs's dmesg lines, so a recovery here can be
//! compared with a kernel's line by line.

pub mod journal;
pub mod progress;
pub mod scan;

use std::time::{Duration, Instant};

use fs_core::bkey::Bkey;
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::{BtreeConfig, NodeInfo};
use fs_core::error::{ErrCode, Error, Result};
use fs_core::fsck_err::FsckErr;
use fs_core::opts::{Behavior, ErrorAction, LiveOpts, OptContext, OptFlags, OptId, Options, ParsedOpt};
use fs_core::recovery_pass::RecoveryPass;
use fs_core::sb::DeviceSet;
use fs_core::sync::Arc;

use self::journal::{RecoveryJournal, journal_read_opts};
use crate::fs::layout::{clean_roots, open_btrees};
use crate::fs::{Fs, ReadOnlyNodes};
use crate::passes::RecoveryCtx;
pub use crate::passes::{FixErrors, Mode, PassOutcome, Problem};

/// Clean btree nodes a recovering filesystem keeps cached (128 MiB of 256 KiB nodes). Replay
/// writes nodes back as it goes and never comes back to them, so a larger cache would only hold
/// memory beside the journal keys (at 4096 nodes, about 1 GB after a 22M-key replay).
const RECOVERY_CACHE_NODES: usize = 512;

/// How a read-write mount runs journal reclaim.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReclaimMode {
    /// On a thread of its own, as the kernel does.
    #[default]
    Thread,
    /// Only when the caller calls [`Fs::tick`], with a clock of its own: for runs that must be
    /// reproducible, with every write at the same point each time (seeded workloads, crash
    /// tests that record every write).
    Manual,
}

/// Where a mount's log lines go as they are written, as dmesg shows a kernel's: a mount that
/// hangs has still said everything up to the hang.
#[derive(Clone)]
pub struct LiveLog(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for LiveLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveLog")
    }
}

/// Hands the lines of `log` from `*printed` on to `live`.
pub(crate) fn flush_live(log: &[String], printed: &mut usize, live: Option<&LiveLog>) {
    if let Some(live) = live {
        for line in log.get(*printed..).unwrap_or_default() {
            (live.0)(line);
        }
        *printed = log.len();
    }
}

/// What `mount` was asked for.
#[derive(Clone, Debug, Default)]
pub struct MountOpts {
    /// Options given with `-o`, already parsed for the mount context.
    pub opts: Vec<ParsedOpt>,
    pub reclaim: ReclaimMode,
    /// Where long work reports its progress.
    pub progress: progress::Progress,
    /// Where a failed recovery leaves the log it wrote up to the failure, as dmesg keeps the
    /// lines before an error: the mount command prints them before the error.
    pub failed_log: Option<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
    /// Where log lines go as they are written (`None`: only in the result).
    pub live_log: Option<LiveLog>,
    /// The mount's control socket state: recovery attaches its live options, then its
    /// filesystem, so that options can be shown and set while it runs.
    pub control: Option<Arc<crate::control::Control>>,
    /// The clock of the wait list blocked btree updates park on: real time, or one that moves
    /// only when a test says (`WaitList::advance_to`), so that stuck timeouts need no sleeping.
    pub manual_wait_clock: bool,
    /// Keys journal replay replays between node write-backs; `None`: 1 << 20. Tests make it
    /// small, so that small journals exercise what only recoveries of millions of keys do.
    pub replay_write_back_keys: Option<usize>,
}

impl MountOpts {
    /// `degraded` (yes, very or ask): members may be missing.
    pub fn degraded(&self) -> bool {
        self.last(OptId::Degraded).is_some_and(|p| p.value.as_u64() >= 1)
    }

    /// `degraded=ask`: nobody to ask, so as `yes`, said in the log.
    pub fn degraded_ask(&self) -> bool {
        self.last(OptId::Degraded).is_some_and(|p| p.value.as_u64() == 3)
    }

    /// `degraded=very`: journal entries with no copy on a present member may be left out.
    pub fn degraded_very(&self) -> bool {
        self.last(OptId::Degraded).is_some_and(|p| p.value.as_u64() == 2)
    }

    pub fn fsck(&self) -> bool {
        self.flag(OptId::Fsck)
    }

    /// `fix_errors=` as given (default: exit).
    pub fn fix_errors(&self) -> FixErrors {
        match self.last(OptId::FixErrors).map_or(0, |p| p.value.as_u64()) {
            1 => FixErrors::Yes,
            2 => FixErrors::No,
            3 => FixErrors::Ask,
            _ => FixErrors::Exit,
        }
    }

    fn last(&self, id: OptId) -> Option<&ParsedOpt> {
        self.opts.iter().rev().find(|p| p.id == id)
    }

    fn flag(&self, id: OptId) -> bool {
        self.last(id).is_some_and(|p| p.value.as_u64() == 1)
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
    /// What the journal read and the passes found, and whether it was repaired.
    pub problems: Vec<Problem>,
    /// What became of every recovery pass, in table order.
    pub passes: Vec<(RecoveryPass, PassOutcome)>,
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
    /// Writing back the replayed btrees (flushing the journal pins), releasing the replay range.
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
    pub(crate) fn until_now(t0: Instant, began: Instant) -> PhaseTime {
        PhaseTime { start: began.saturating_duration_since(t0), took: began.elapsed() }
    }
}

/// The filesystem options with the mount options applied. In the v1.37.5 and v1.39 profiles a
/// `MOUNT_OLD` option (metadata_replicas, metadata_target) is refused the way the kernel does:
/// logged and ignored. The fixed profile accepts it as a recovery option.
fn mount_options(set: &DeviceSet, mopts: &MountOpts, log: &mut Vec<String>) -> Result<Options> {
    let mut opts = set.sb.opts.clone();
    if let Some(b) = mopts.last(OptId::Behavior) {
        opts.set(b.id, b.value.clone())?;
    }
    for p in &mopts.opts {
        let flags = p.id.desc().flags;
        if flags.contains(OptFlags::MOUNT_OLD)
            && !flags.contains(OptFlags::MOUNT)
            && matches!(opts.behavior(), Behavior::V1_37_5 | Behavior::V1_39)
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

/// A degraded mount writes with what the present members can give: `metadata_replicas` and
/// `data_replicas` above their durability are lowered for this mount only (the superblock's
/// options stay), and said so. Returns whether any was: the writes are short, which the caller
/// records in the superblock.
fn cap_replicas_to_present(set: &DeviceSet, opts: &mut Options, log: &mut Vec<String>) -> Result<bool> {
    let durability = |journal_only: bool| -> u64 {
        set.sb
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.is_unused() && m.state == fs_core::sb::MemberState::Rw)
            .filter_map(|(i, m)| Some((set.device(i)?, m)))
            .filter(|(d, _)| !journal_only || d.sb.journal.nr() > 0)
            .map(|(_, m)| u64::from(m.durability))
            .sum()
    };
    let mut short = false;
    for (id, have) in [(OptId::MetadataReplicas, durability(true)), (OptId::DataReplicas, durability(false))]
    {
        let want = opts.u64(id);
        if have >= 1 && have < want {
            opts.set(id, fs_core::opts::OptValue::U64(have))?;
            log.push(format!(
                "degraded: {id}={want} but the present members give {have}: writing {have} until every member is back ({} short)",
                want - have
            ));
            short = true;
        }
    }
    Ok(short)
}

/// Parses `-o` text for mount.
pub fn parse_mount_opts(text: &str) -> Result<MountOpts> {
    Ok(MountOpts {
        opts: fs_core::opts::parse_opts(text, OptContext::Mount)?,
        reclaim: ReclaimMode::default(),
        progress: progress::Progress::default(),
        failed_log: None,
        live_log: None,
        control: None,
        manual_wait_clock: false,
        replay_write_back_keys: None,
    })
}

/// Mounts (recovers) the filesystem on `set`, read-write.
pub fn mount(set: DeviceSet, mopts: &MountOpts) -> Result<Mounted> {
    mount_with(set, mopts, BtreeConfig::default())
}

/// [`mount`] with btree settings (node cache size, node seq seed).
pub fn mount_with(set: DeviceSet, mopts: &MountOpts, cfg: BtreeConfig) -> Result<Mounted> {
    let mode = Mode::Mount { fix_errors: mopts.fix_errors() };
    let ctx = recover(set, mopts, mode, mopts.fsck(), cfg)?;
    let fs = ctx.fs.ok_or_else(|| Error::internal("a mount that never went read-write"))?;
    Ok(Mounted {
        fs,
        log: ctx.log,
        replayed: ctx.replayed,
        journal_keys_read: ctx.keys_read,
        journal_keys_kept: ctx.keys_kept,
        problems: ctx.problems,
        passes: ctx.outcomes,
        times: ctx.times,
    })
}

/// Recovers the filesystem on `set` in `mode`, with the fsck passes on if `fsck`: reads the
/// superblock's roots (clean) or the journal (unclean), opens the btrees once, runs the passes.
/// A writing mode ends with the filesystem assembled in the returned context, its errors
/// counted in the superblock.
pub(crate) fn recover(
    set: DeviceSet,
    mopts: &MountOpts,
    mode: Mode,
    fsck: bool,
    cfg: BtreeConfig,
) -> Result<RecoveryCtx> {
    let mut log = Vec::new();
    let mut opts = mount_options(&set, mopts, &mut log)?;
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
    // Fewer replicas are never silent: metadata_replicas below the filesystem's (a recovery
    // option, fixed profile) makes this mount write short, which is recorded like a degraded
    // mount's short writes, for fsck to find and rewrite.
    let (fs_replicas, mount_replicas) = (set.sb.opts.metadata_replicas(), opts.metadata_replicas());
    let mut written_short = mount_replicas < fs_replicas;
    if written_short {
        log.push(format!(
            "metadata_replicas={mount_replicas} for this mount, below the filesystem's {fs_replicas}: metadata it writes is short of {fs_replicas} replicas (recorded as replicas_written_short; fsck rewrites it)"
        ));
    }
    if !missing.is_empty() {
        log.push(format!("mounting degraded: {} of {nr} devices missing", missing.len()));
        if mopts.degraded_ask() {
            log.push("degraded=ask: nobody to ask; mounting degraded as with degraded=yes".to_owned());
        }
        written_short |= cap_replicas_to_present(&set, &mut opts, &mut log)?;
    }
    let cfg = BtreeConfig { behavior: opts.behavior(), ..cfg };
    let errors = opts.errors();
    let live = Arc::new(LiveOpts::new(opts));
    if let Some(c) = &mopts.control {
        c.attach_opts(live.clone());
    }
    let damaged = damaged_sb_copies(&set, mode != Mode::Check);
    let mut ctx = RecoveryCtx::new(mode, set, live.clone(), cfg, mopts.reclaim, log);
    ctx.progress = mopts.progress;
    ctx.replay_write_back_keys = mopts.replay_write_back_keys;
    ctx.control = mopts.control.clone();
    ctx.manual_wait_clock = mopts.manual_wait_clock;
    ctx.live_log = mopts.live_log.clone();
    ctx.flush_log();
    ctx.fsck = fsck;
    // The superblock write that ends a writing run rewrites every copy.
    ctx.problems.extend(damaged);
    // errors= follows the live option: set now, and again whenever it changes.
    ctx.health.set_error_action(errors);
    let health = ctx.health.clone();
    live.subscribe(move |id, v| {
        if id == OptId::Errors {
            health.set_error_action(ErrorAction::from_value(v.as_u64()));
        }
    });
    let opened = if ctx.unclean { open_unclean(&mut ctx, mopts) } else { open_clean(&mut ctx) };
    if let Err(e) = opened.and_then(|()| ctx.run_passes()) {
        ctx.seal_after_error();
        if let Some(keep) = &mopts.failed_log {
            if let Ok(mut l) = keep.lock() {
                *l = std::mem::take(&mut ctx.log);
            }
        }
        return Err(e);
    }
    if let Some((newest, (n, first))) = ctx.future_bsets.as_ref().and_then(|f| Some((f.newest, f.seen()?))) {
        ctx.problems.push(Problem {
            err: FsckErr::BsetNewerThanJournal,
            msg: format!(
                "{n} btree node bsets carry journal seqs past the newest journal entry found ({newest}), from {first}: \
                 journal entries were lost; bsets past the blacklist were dropped"
            ),
            fixed: mode.writes(),
            count: n,
        });
    }
    if let (Some(why), Mode::Mount { .. }) = (&ctx.stop, mode) {
        return Err(Error::new(ErrCode::FsckErrorsNotFixed, format!("{why}: run fsck -y")));
    }
    if mode == Mode::Check || ctx.stop.is_some() {
        return Ok(ctx);
    }
    ctx.count_errors()?;
    if written_short {
        // Recorded for the next fsck with every member back, which rewrites what is short.
        ctx.fs()?.set().sb.count_error(FsckErr::ReplicasWrittenShort, 1);
    }
    // A full fsck that repairs and leaves nothing unfixed clears the mark; anything this run
    // wrote short or left unfixed sets it, so the next fsck checks even a clean filesystem.
    let unfixed = ctx.problems.iter().any(|p| !p.fixed);
    let repaired_all = fsck && matches!(mode, Mode::Fix | Mode::Preen) && !unfixed;
    {
        let mut set = ctx.fs()?.set();
        if written_short || unfixed {
            set.sb.needs_fsck = true;
        } else if repaired_all {
            set.sb.needs_fsck = false;
        }
    }
    ctx.fs()?.set().write_super()?;
    ctx.health.set_running();
    ctx.fs()?.shared().start_discards();
    ctx.log.push(match ctx.replayed {
        Some(_) => format!("recovery done: {} keys replayed ({:.2?})", ctx.keys_replayed, ctx.t0.elapsed()),
        None => "done".to_owned(),
    });
    Ok(ctx)
}

/// A problem for every superblock copy that did not read back (damaged, or stale beside a newer
/// one); `fixed` when the run writes the superblock, which rewrites every copy.
pub(crate) fn damaged_sb_copies(set: &DeviceSet, fixed: bool) -> Vec<Problem> {
    set.present()
        .flat_map(|m| {
            m.damaged.iter().map(move |d| Problem {
                err: FsckErr::SbCopyDamaged,
                msg: format!("{}: superblock copy at byte {}: {}", m.dev.name(), d.offset, d.error),
                fixed,
                count: 1,
            })
        })
        .collect()
}

/// An unclean filesystem whose journal is lost: fsck takes the btree roots from a scan of the
/// devices for btree nodes ([`scan::scan_for_roots`]), reports the loss, and lets the passes
/// repair what follows. New journal entries go above every seq seen on disk.
fn open_from_scan(ctx: &mut RecoveryCtx, newest_journal_seq: u64) -> Result<()> {
    let node_size = ctx.opts.with(Options::btree_node_size);
    let scan = scan::scan_for_roots(ctx.set_ref()?, node_size)?;
    let btrees_found: Vec<String> = scan.roots.iter().map(|r| r.btree.to_string()).collect();
    ctx.log.push(format!(
        "no journal entries: scanned the devices for btree nodes, found {}; roots of {}",
        scan.nodes_found,
        if btrees_found.is_empty() { "no btree".to_owned() } else { btrees_found.join(", ") }
    ));
    open_recovering_btrees(ctx, scan.roots, None)?;
    ctx.next_seq = Some(scan.newest_seq.max(newest_journal_seq).saturating_add(1));
    ctx.problems.push(Problem {
        err: FsckErr::DirtyButNoJournalEntries,
        msg: format!(
            "unclean shutdown but no journal entries found: btree roots taken from a scan for btree nodes \
             ({} btrees found); what only the journal held is lost",
            btrees_found.len()
        ),
        fixed: ctx.mode.writes(),
        count: 1,
    });
    Ok(())
}

/// The btrees of a filesystem recovering from an unclean shutdown, at `roots`, ignoring bsets
/// of `blacklisted` seqs, with a node cache bounded for recovery.
fn open_recovering_btrees(
    ctx: &mut RecoveryCtx,
    roots: Vec<fs_core::btree::Root>,
    blacklisted: Option<Box<dyn Fn(u64) -> bool + Send + Sync>>,
) -> Result<()> {
    let cfg = BtreeConfig { cache_nodes: RECOVERY_CACHE_NODES.min(ctx.cfg.cache_nodes), ..ctx.cfg };
    let node_size = ctx.opts.with(Options::btree_node_size);
    let mut btrees = open_btrees(ctx.set_ref()?, node_size, Arc::new(ReadOnlyNodes), roots, cfg, blacklisted);
    // bcachefs checks cached node headers only once check_allocations has run.
    btrees.set_check_headers(false);
    btrees.set_health(ctx.health.clone());
    ctx.btrees = Some(btrees);
    Ok(())
}

/// A filesystem recovered in memory only, for reading: after an unclean shutdown its journal
/// keys lie over the btrees as an overlay, exactly as `fsck -n` sees them. Nothing is written.
pub struct RecoveredView {
    ctx: RecoveryCtx,
}

impl RecoveredView {
    /// What opening it logged (the journal read, after an unclean shutdown).
    pub fn log(&self) -> &[String] {
        &self.ctx.log
    }

    /// True if the journal had to be read: the filesystem was not unmounted cleanly.
    pub fn unclean(&self) -> bool {
        self.ctx.unclean
    }

    /// Keys of `btree` from `start` to `end` inclusive, journal keys included.
    pub fn list(&mut self, btree: BtreeId, start: Bpos, end: Bpos) -> Result<Vec<Bkey>> {
        self.ctx.with_view(|v| {
            let mut it = v.t.iter(btree, start);
            let mut out = Vec::new();
            while let Some(k) = it.next(v.t, v.overlay)? {
                if k.pos > end {
                    break;
                }
                out.push(k);
            }
            Ok(out)
        })
    }

    /// The nodes of `btree` as they are on disk.
    pub fn nodes(&mut self, btree: BtreeId) -> Result<Vec<NodeInfo>> {
        self.ctx.with_view(|v| v.t.node_infos(btree))
    }
}

/// Opens `set` for reading as recovery would, without running a pass or writing anything.
pub fn open_view(set: DeviceSet, mopts: &MountOpts) -> Result<RecoveredView> {
    let mut log = Vec::new();
    let opts = mount_options(&set, mopts, &mut log)?;
    set.require_all(mopts.degraded())?;
    let cfg = BtreeConfig { behavior: opts.behavior(), ..BtreeConfig::default() };
    let mut ctx =
        RecoveryCtx::new(Mode::Check, set, Arc::new(LiveOpts::new(opts)), cfg, ReclaimMode::Manual, log);
    if ctx.unclean {
        open_unclean(&mut ctx, mopts)?;
    } else {
        open_clean(&mut ctx)?;
    }
    Ok(RecoveredView { ctx })
}

/// A clean filesystem: the btrees start at the roots the superblock recorded.
fn open_clean(ctx: &mut RecoveryCtx) -> Result<()> {
    let set = ctx.set_ref()?;
    let seq = set.sb.clean.as_ref().map_or(0, |c| c.journal_seq);
    let roots = clean_roots(set)?;
    let node_size = ctx.opts.with(Options::btree_node_size);
    let mut btrees = open_btrees(set, node_size, Arc::new(ReadOnlyNodes), roots, ctx.cfg, None);
    btrees.set_health(ctx.health.clone());
    ctx.btrees = Some(btrees);
    ctx.log.push(format!("recovering from clean shutdown, journal seq {seq}"));
    Ok(())
}

/// An unclean filesystem: the journal is read, its keys sorted and compacted, the btrees start
/// at the roots the newest entry carries and ignore bsets of seqs past the replay range. The
/// alloc keys need no repair: every alloc-key change reached the journal in the same entry as
/// the change that caused it.
fn open_unclean(ctx: &mut RecoveryCtx, mopts: &MountOpts) -> Result<()> {
    ctx.log.push("recovering from unclean shutdown".to_owned());
    let set = ctx.set.as_ref().ok_or_else(|| Error::internal("recovery without its device set"))?;
    let ropts = journal_read_opts(set, ctx.opts.with(Options::block_size), mopts.degraded_very());
    let rj = RecoveryJournal::read(set, &ropts)?;
    ctx.times.journal_read = PhaseTime { start: Duration::ZERO, took: rj.read_time };
    ctx.times.sort = PhaseTime { start: rj.read_time, took: rj.sort_time };
    ctx.log.extend(rj.read.log.iter().cloned());
    let fixed = ctx.mode != Mode::Check;
    for &(err, n) in rj.read.fsck_errors.iter().filter(|(_, n)| *n > 0) {
        let first = rj.read.fsck_first.get(&err).map_or_else(|| err.name().to_owned(), Clone::clone);
        let msg = if n > 1 {
            format!("journal: {first} (and {} more)", n - 1)
        } else {
            format!("journal: {first}")
        };
        ctx.problems.push(Problem { err, msg, fixed, count: n });
    }
    if rj.read.entries.is_empty() {
        let scan_allowed =
            ctx.fsck && (ctx.mode == Mode::Check || ctx.may_fix(FsckErr::DirtyButNoJournalEntries));
        if !scan_allowed {
            return Err(Error::new(
                ErrCode::JournalEntriesMissing,
                "unclean shutdown but no journal entries found: nothing says where the btrees are \
                 (fsck -y finds them by scanning the devices)",
            ));
        }
        return open_from_scan(ctx, rj.read.newest_seq);
    }
    ctx.log.push(format!("journal read in {:.2?}", rj.read_time));
    ctx.keys_read = rj.nr_read;
    ctx.keys_kept = rj.keys.len();
    ctx.log.push(::journal::JournalKeys::summary(rj.nr_read, rj.keys.len()));
    let (start, end) = rj.new_blacklist;
    ctx.log.push(format!("blacklisting journal seqs {start}-{}", end - 1));
    open_recovering_btrees(ctx, rj.roots(), Some(rj.blacklisted()))?;
    ctx.future_bsets = Some(rj.future_bsets());
    ctx.journal = Some(rj);
    Ok(())
}
