//! The recovery passes and the one runner that executes them, for mount and fsck alike.
//!
//! The runner walks bcachefs's pass table (`fs_core::recovery_pass`) in its order. A pass runs
//! when its flags ask for it (`ALWAYS`; `FSCK` when fsck was asked for; `UNCLEAN` after an
//! unclean shutdown), or when a pass that runs requires it (check_allocations requires
//! check_topology, as bcachefs's table says). Every pass of the
//! table is handled here: run, skipped with the reason, or listed as not modelled by bcsim;
//! the outcome of each is recorded and logged, never dropped.
//!
//! The passes share a [`RecoveryCtx`]: the journal keys, the btrees (opened once), the
//! allocator, and, from `set_may_go_rw` on, the assembled filesystem. A check that writes
//! nothing (`fsck -n`) runs the same passes through the journal keys as an overlay and skips
//! the ones that would write.
//!
//! Each pass lives in a file of its own.

mod alloc_read;
mod check_alloc_info;
mod check_allocations;
mod check_dirents;
mod check_nlinks;
mod check_topology;
mod fs_freespace_init;
mod journal_replay;
mod set_may_go_rw;

use std::collections::BTreeMap;
use std::fmt;

use allocator::{Allocator, BtreeNodeAlloc};
use fs_core::bkey::{AllocV4, Bkey};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::{BtreeConfig, Btrees, KeyOverlay, NodeInfo};
use fs_core::error::{ErrCode, Error, Result};
use fs_core::fsck_err::{FsckErr, FsckFlags};
use fs_core::health::FsHealth;
use fs_core::opts::LiveOpts;
use fs_core::recovery_pass::{PassFlags, RecoveryPass};
use fs_core::sb::DeviceSet;
use fs_core::sync::Arc;
use journal::JournalPin;

use crate::fs::Fs;
use crate::recovery::journal::RecoveryJournal;
use crate::recovery::{ReclaimMode, RecoveryTimes};

/// What the run may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A mount; fsck passes (`-o fsck`) fix as `fix_errors` says.
    Mount { fix_errors: FixErrors },
    /// `fsck -n`: read everything, write nothing; journal keys stay an overlay.
    Check,
    /// `fsck -y`: fix everything fixable.
    Fix,
    /// `fsck -p`: fix only what bcachefs marks `FSCK_AUTOFIX`.
    Preen,
}

/// `fix_errors=`: what a mount with fsck passes does with what they find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FixErrors {
    /// Refuse to finish the mount while errors are left.
    Exit,
    Yes,
    No,
    /// There is nobody to ask: as `no`, with a log line saying so.
    Ask,
}

impl Mode {
    pub(crate) fn writes(self) -> bool {
        self != Mode::Check
    }
}

/// `Ok` when `problems` is empty, else one line: `{what}: N problems, first: ...`. For the
/// campaigns, whose checks require a clean check or recovery.
pub fn none_found(problems: &[Problem], what: &str) -> std::result::Result<(), String> {
    match problems.first() {
        None => Ok(()),
        Some(p) => Err(format!("{what}: {} problems, first: {}", problems.len(), p.msg)),
    }
}

/// One error found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub err: FsckErr,
    pub msg: String,
    pub fixed: bool,
    /// Times this error was seen (the journal read counts repeats).
    pub count: u64,
}

/// A finding of a pass and, if it can be repaired, the updates that repair it.
pub(crate) struct Finding {
    pub err: FsckErr,
    pub msg: String,
    pub fix: Option<Vec<(BtreeId, Bkey)>>,
}

impl Finding {
    pub(crate) fn new(err: FsckErr, msg: String, fix: Option<Vec<(BtreeId, Bkey)>>) -> Self {
        Finding { err, msg, fix }
    }
}

/// What became of a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassOutcome {
    Ran,
    /// Not run, and why.
    Skipped(String),
    /// bcsim does not model this pass, and why not.
    NotModelled(&'static str),
}

impl fmt::Display for PassOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PassOutcome::Ran => f.write_str("ran"),
            PassOutcome::Skipped(why) => write!(f, "skipped: {why}"),
            PassOutcome::NotModelled(why) => write!(f, "not modelled: {why}"),
        }
    }
}

type PassFn = fn(&mut RecoveryCtx) -> Result<()>;

/// How bcsim handles a pass of the table. Every pass has a row: adding a pass to the table
/// does not compile until it is handled here.
enum PassImpl {
    Runs(PassFn),
    NotModelled(&'static str),
}

fn implementation(pass: RecoveryPass) -> PassImpl {
    use PassImpl::{NotModelled, Runs};
    match pass {
        RecoveryPass::CheckTopology => Runs(check_topology::run),
        RecoveryPass::AllocRead => Runs(alloc_read::run),
        RecoveryPass::CheckAllocations => Runs(check_allocations::run),
        RecoveryPass::TransMarkDevSbs => NotModelled(
            "superblock and journal buckets get their alloc keys at format time (fs_freespace_init)",
        ),
        RecoveryPass::FsJournalAlloc => {
            NotModelled("journal buckets are laid out at format time and never resized")
        }
        RecoveryPass::SetMayGoRw => Runs(set_may_go_rw::run),
        RecoveryPass::JournalReplay => Runs(journal_replay::run),
        RecoveryPass::CheckAllocInfo => Runs(check_alloc_info::run),
        RecoveryPass::FsFreespaceInit => Runs(fs_freespace_init::run),
        RecoveryPass::CheckInodes => {
            NotModelled("inodes are checked only for their link counts (check_nlinks)")
        }
        RecoveryPass::CheckExtents => NotModelled(
            "extents are checked against their buckets by check_allocations; bcsim's file layer never overlaps them",
        ),
        RecoveryPass::CheckDirents => Runs(check_dirents::run),
        RecoveryPass::CheckRoot => {
            NotModelled("the root directory is created with the file layer and not checked")
        }
        RecoveryPass::CheckDirectoryStructure => NotModelled("directory loops are not checked"),
        RecoveryPass::CheckNlinks => Runs(check_nlinks::run),
    }
}

/// Passes a pass requires: they run whenever it does (bcachefs's table dependencies).
fn requires(pass: RecoveryPass) -> &'static [RecoveryPass] {
    match pass {
        RecoveryPass::CheckAllocations => &[RecoveryPass::CheckTopology],
        _ => &[],
    }
}

/// Everything the passes share.
pub struct RecoveryCtx {
    pub mode: Mode,
    /// The fsck passes are on (`fsck`, or `mount -o fsck`).
    pub fsck: bool,
    /// The filesystem was not unmounted cleanly: the journal is replayed.
    pub unclean: bool,
    pub log: Vec<String>,
    /// What the passes and the journal read found, in the order found.
    pub problems: Vec<Problem>,
    /// What became of every pass of the table, in table order.
    pub outcomes: Vec<(RecoveryPass, PassOutcome)>,
    pub times: RecoveryTimes,
    /// `Some((first, last))` when journal entries were replayed.
    pub replayed: Option<(u64, u64)>,
    pub keys_replayed: usize,
    /// Journal keys read, and left after sorting and compacting.
    pub keys_read: usize,
    pub keys_kept: usize,
    /// When the run began: phase times count from here.
    pub(crate) t0: std::time::Instant,
    pub(crate) set: Option<DeviceSet>,
    pub(crate) opts: Arc<LiveOpts>,
    pub(crate) health: Arc<FsHealth>,
    pub(crate) cfg: BtreeConfig,
    pub(crate) reclaim: ReclaimMode,
    pub(crate) progress: crate::recovery::progress::Progress,
    /// See [`crate::recovery::MountOpts::replay_write_back_keys`].
    pub(crate) replay_write_back_keys: Option<usize>,
    /// The journal of an unclean filesystem.
    pub(crate) journal: Option<RecoveryJournal>,
    /// Journal replay has run: the journal keys are in the btrees, no overlay any more.
    pub(crate) replay_done: bool,
    /// The btrees until the filesystem is assembled (then they live in it).
    pub(crate) btrees: Option<Btrees>,
    pub(crate) alloc: Option<Arc<Allocator>>,
    pub(crate) nodes: Option<Arc<BtreeNodeAlloc>>,
    /// No alloc keys at all: a new filesystem, whose alloc info fs_freespace_init writes.
    pub(crate) new_fs: bool,
    pub(crate) fs: Option<Fs>,
    /// Holds the replay range until replay is written back.
    pub(crate) replay_pin: Option<JournalPin>,
    /// Where log lines go as they are written, and how many have gone.
    pub(crate) live_log: Option<crate::recovery::LiveLog>,
    pub(crate) log_printed: usize,
    /// Every node check_topology read, for check_allocations.
    pub(crate) topology: Vec<NodeInfo>,
    /// Keys in each btree's leaves, as check_topology counted them: the totals the long passes
    /// report their progress against.
    pub(crate) keys_per_btree: std::collections::BTreeMap<BtreeId, usize>,
    /// The pass running, for its progress lines.
    pub(crate) pass_name: &'static str,
    /// The alloc keys as check_allocations says they should be, for check_alloc_info.
    pub(crate) alloc_view: Option<BTreeMap<Bpos, AllocV4>>,
    /// The first seq the journal may use when no journal read says (roots from a node scan).
    pub(crate) next_seq: Option<u64>,
    /// Bsets read past the newest journal entry (after an unclean shutdown).
    pub(crate) future_bsets: Option<Arc<crate::recovery::journal::FutureBsets>>,
    /// Set by a pass that found what this run may not repair and must not go past: the passes
    /// after it are skipped with this reason, and nothing is written.
    pub(crate) stop: Option<String>,
    /// Repairs found before the filesystem may write, committed after journal replay (where
    /// bcachefs puts them into the journal keys to be replayed).
    pub(crate) fixes_after_replay: Vec<(BtreeId, Bkey)>,
    /// The mount's control socket state, told when the filesystem is assembled.
    pub(crate) control: Option<Arc<crate::control::Control>>,
    /// See [`crate::recovery::MountOpts::manual_wait_clock`].
    pub(crate) manual_wait_clock: bool,
    /// How many fsck errors of each type a mount has logged, for the ratelimit.
    pub(crate) fsck_errs_logged: BTreeMap<FsckErr, u64>,
    /// Passes asked for while this run went on (`bch2_run_explicit_recovery_pass`): they run
    /// whatever their flags say.
    pub(crate) explicit: Vec<RecoveryPass>,
}

/// The btrees as a pass reads them: through the journal keys until replay has run.
pub(crate) struct View<'a> {
    pub t: &'a mut Btrees,
    pub overlay: Option<&'a dyn KeyOverlay>,
    pub set: &'a DeviceSet,
    /// Where a walk reports its progress.
    walk: Walk<'a>,
}

/// What a walk of a whole btree needs to report progress: the pass, the totals, the log.
struct Walk<'a> {
    progress: crate::recovery::progress::Progress,
    pass: &'static str,
    totals: &'a std::collections::BTreeMap<BtreeId, usize>,
    log: &'a mut Vec<String>,
}

/// Keys between looks at the clock in a walk.
const WALK_TICK_KEYS: usize = 4096;

impl View<'_> {
    /// Every key of `btree` through the overlay, in order (`Btrees::for_each_key`), reporting
    /// the pass's progress as journal replay does: `check_allocations: extents: N%, done X/Y
    /// keys`, at most every interval.
    pub fn for_each_key(
        &mut self,
        btree: BtreeId,
        mut f: impl FnMut(fs_core::bkey::KeyRef<'_>) -> Result<()>,
    ) -> Result<()> {
        let w = &mut self.walk;
        let total = w.totals.get(&btree).copied().unwrap_or(0);
        let mut meter =
            crate::recovery::progress::Meter::new(w.progress, format!("{}: {btree}", w.pass), "keys");
        let mut done = 0usize;
        let log = &mut *w.log;
        let r = self.t.for_each_key(btree, self.overlay, |k| {
            done += 1;
            if done % WALK_TICK_KEYS == 0 {
                meter.tick(done, total.max(done), log);
            }
            f(k)
        });
        if r.is_ok() {
            meter.tick(done, total.max(done), log);
        }
        meter.finish();
        r
    }
}

impl RecoveryCtx {
    pub(crate) fn new(
        mode: Mode,
        set: DeviceSet,
        opts: Arc<LiveOpts>,
        cfg: BtreeConfig,
        reclaim: ReclaimMode,
        log: Vec<String>,
    ) -> RecoveryCtx {
        RecoveryCtx {
            mode,
            fsck: false,
            unclean: !set.sb.is_clean(),
            log,
            problems: Vec::new(),
            outcomes: Vec::new(),
            times: RecoveryTimes::default(),
            replayed: None,
            keys_replayed: 0,
            keys_read: 0,
            keys_kept: 0,
            t0: std::time::Instant::now(),
            set: Some(set),
            opts,
            health: Arc::new(FsHealth::new()),
            cfg,
            reclaim,
            progress: crate::recovery::progress::Progress::default(),
            replay_write_back_keys: None,
            keys_per_btree: std::collections::BTreeMap::new(),
            pass_name: "",
            journal: None,
            replay_done: false,
            btrees: None,
            alloc: None,
            nodes: None,
            new_fs: false,
            fs: None,
            replay_pin: None,
            live_log: None,
            log_printed: 0,
            topology: Vec::new(),
            alloc_view: None,
            stop: None,
            future_bsets: None,
            next_seq: None,
            fixes_after_replay: Vec::new(),
            control: None,
            manual_wait_clock: false,
            fsck_errs_logged: BTreeMap::new(),
            explicit: Vec::new(),
        }
    }

    /// Whether `pass` runs, given its flags and the passes that require it.
    pub(crate) fn requested(&self, pass: RecoveryPass) -> bool {
        let flags = pass.flags();
        flags.contains(PassFlags::ALWAYS)
            || self.explicit.contains(&pass)
            || (self.fsck && flags.contains(PassFlags::FSCK))
            || (self.unclean && flags.contains(PassFlags::UNCLEAN))
            || RecoveryPass::ALL.iter().any(|&p| requires(p).contains(&pass) && self.requested(p))
    }

    /// The device set: the ctx's own until the filesystem is assembled.
    pub(crate) fn set_ref(&self) -> Result<&DeviceSet> {
        self.set.as_ref().ok_or_else(|| Error::internal("the device set moved into the filesystem"))
    }

    /// The assembled filesystem.
    pub(crate) fn fs(&self) -> Result<&Fs> {
        self.fs.as_ref().ok_or_else(|| Error::internal("a pass needs the filesystem before set_may_go_rw"))
    }

    /// Runs `f` on the btrees as they stand: the ctx's own, through the journal keys, before
    /// the filesystem is assembled; the filesystem's after, through the keys until replay.
    pub(crate) fn with_view<R>(&mut self, f: impl FnOnce(View<'_>) -> Result<R>) -> Result<R> {
        let overlay = self.journal.as_ref().filter(|_| !self.replay_done).map(|j| &j.keys as &dyn KeyOverlay);
        // Passes read the btrees directly: what the key cache holds goes there first.
        if let Some(fs) = &self.fs {
            let shared = fs.shared();
            if shared.key_cache().is_some_and(|c| c.nr_dirty() > 0) {
                shared.journal_rw()?.flush_all_pins()?;
            }
        }
        let walk = Walk {
            progress: self.progress,
            pass: self.pass_name,
            totals: &self.keys_per_btree,
            log: &mut self.log,
        };
        match (&self.fs, &mut self.btrees, &self.set) {
            (Some(fs), _, _) => {
                let mut t = fs.btrees();
                let set = fs.set();
                f(View { t: &mut t, overlay, set: &set, walk })
            }
            (None, Some(t), Some(set)) => f(View { t, overlay, set, walk }),
            _ => Err(Error::internal("a pass ran before the btrees were opened")),
        }
    }

    /// Whether an error found by `pass` is fixed in this run.
    pub(crate) fn may_fix(&self, err: FsckErr) -> bool {
        match self.mode {
            Mode::Check => false,
            Mode::Fix => true,
            Mode::Preen => err.flags().contains(FsckFlags::AUTOFIX),
            // `__bch2_fsck_err`: under errors=fix_safe (the default) or continue, an error
            // marked FSCK_AUTOFIX is repaired in any mount, fsck passes or not.
            Mode::Mount { fix_errors } => {
                fix_errors == FixErrors::Yes
                    || (err.flags().contains(FsckFlags::AUTOFIX)
                        && self.opts.with(fs_core::opts::Options::errors).autofixes())
            }
        }
    }

    /// Records what a pass found; returns the repairs this run makes. A mount also logs each
    /// finding as bcachefs logs an fsck error (see [`RecoveryCtx::log_fsck_err`]); fsck lists
    /// them in its report instead.
    pub(crate) fn record(&mut self, findings: Vec<Finding>) -> Vec<(BtreeId, Bkey)> {
        let mut fixes = Vec::new();
        for f in findings {
            let fixable = f.fix.is_some();
            let fixed = match f.fix {
                Some(updates) if self.may_fix(f.err) => {
                    fixes.extend(updates);
                    true
                }
                _ => false,
            };
            if matches!(self.mode, Mode::Mount { .. }) {
                self.log_fsck_err(f.err, &f.msg, fixable, fixed);
            }
            self.problems.push(Problem { err: f.err, msg: f.msg, fixed, count: 1 });
        }
        fixes
    }

    /// Logs an fsck error found by a mount, as `bch2_fsck_err` (init/error.c, v1.37.5) prints
    /// it: the message and what is done about it (", fixing", ", not fixing", or
    /// " (repair unimplemented)"). Once `FSCK_ERR_RATELIMIT_NR` (10) errors of a type have been
    /// printed, the next one is printed followed by "Ratelimiting new instances of previous
    /// error", and later ones are not printed.
    fn log_fsck_err(&mut self, err: FsckErr, msg: &str, fixable: bool, fixed: bool) {
        const FSCK_ERR_RATELIMIT_NR: u64 = 10;
        let seen = self.fsck_errs_logged.entry(err).or_default();
        *seen += 1;
        if *seen > FSCK_ERR_RATELIMIT_NR + 1 {
            return;
        }
        let action = match (fixable, fixed) {
            (true, true) => ", fixing",
            (true, false) => ", not fixing",
            (false, _) => " (repair unimplemented)",
        };
        self.log.push(format!("{msg}{action}"));
        if *seen == FSCK_ERR_RATELIMIT_NR + 1 {
            self.log.push("Ratelimiting new instances of previous error".to_owned());
        }
    }

    /// Commits repairs found after the filesystem may write.
    pub(crate) fn commit_fixes(&mut self, fixes: Vec<(BtreeId, Bkey)>) -> Result<()> {
        if fixes.is_empty() {
            return Ok(());
        }
        self.fs()?.commit_batched_updates(fixes).map(|_| ())
    }

    /// Decides, runs and records every pass of the table, in order.
    /// Hands the log lines written since the last call to the live log, if there is one.
    pub(crate) fn flush_log(&mut self) {
        crate::recovery::flush_live(&self.log, &mut self.log_printed, self.live_log.as_ref());
    }

    /// The btrees that failed node reads flagged as having lost data during a pass.
    fn take_lost_data(&mut self) -> std::collections::BTreeSet<BtreeId> {
        match (&self.fs, &mut self.btrees) {
            (Some(fs), _) => fs.btrees().take_lost_data(),
            (None, Some(t)) => t.take_lost_data(),
            (None, None) => std::collections::BTreeSet::new(),
        }
    }

    /// Moves what the btrees logged during a pass (topology errors such as `btree node header
    /// doesn't match ptr`, nodes read from another replica) into the run's log when the pass
    /// ends, failed or not; bcachefs prints them as they happen. check_topology takes its own
    /// first, to report them.
    fn take_btree_log(&mut self) {
        let lines = match (&self.fs, &mut self.btrees) {
            (Some(fs), _) => fs.btrees().take_log(),
            (None, Some(t)) => t.take_log(),
            (None, None) => Vec::new(),
        };
        self.log.extend(lines);
    }

    /// Asks for `pass` while the run goes on, as `bch2_run_explicit_recovery_pass` does, and
    /// logs it as bcachefs does (with bcsim's persistent pass ids). A pass later in the table
    /// than the one running just runs when its turn comes; for one already behind, the caller
    /// rewinds (`rewind_for`).
    pub(crate) fn run_explicit(&mut self, pass: RecoveryPass, rewind: bool) {
        if !self.explicit.contains(&pass) {
            self.explicit.push(pass);
        }
        let current = RecoveryPass::from_name(self.pass_name);
        let (cur_name, cur_id) = current.map_or(("none", 0), |c| (c.name(), c.id()));
        self.log.push(format!(
            "running recovery pass {} ({}), currently at {cur_name} ({cur_id}){}",
            pass.name(),
            pass.id(),
            if rewind { " - rewinding" } else { "" }
        ));
    }

    /// Asks for the passes that rebuild what `btree` lost (`bch2_btree_lost_data`):
    /// check_allocations rebuilds the alloc info of every bucket (lost nodes' own buckets
    /// included), and for the alloc btrees check_alloc_info checks their freespace and
    /// need_discard entries. A pass that runs anyway (fsck) is not asked for again, and nothing
    /// is logged for it. check_topology, which bcachefs also asks for, is the caller's to
    /// rewind to.
    pub(crate) fn lost_data(&mut self, btree: BtreeId) {
        let mut passes = vec![RecoveryPass::CheckAllocations];
        if matches!(btree, BtreeId::Alloc | BtreeId::Freespace | BtreeId::NeedDiscard) {
            passes.push(RecoveryPass::CheckAllocInfo);
        }
        for pass in passes {
            if !self.requested(pass) {
                self.run_explicit(pass, false);
            }
        }
    }

    /// The pass to go back to after `pass` ran (`err` if it failed), having found the btrees
    /// `lost` lost data, if recovery should rewind there.
    ///
    /// A topology error, or a node read that failed and lost data, asks for check_topology
    /// (`__bch2_topology_error`, `bch2_btree_lost_data`); while the filesystem may not write
    /// yet, recovery starts again from that pass (`restart_recovery`). Once the filesystem may
    /// write, bcachefs only logs that it would need the pass; so does bcsim (the error stands).
    /// Each pass is rewound to at most once per run: bcachefs has no such bound, but a repair
    /// that did not remove the error would otherwise go round for ever.
    fn rewind_for(&self, pass: RecoveryPass, err: Option<&Error>, lost: bool) -> Option<RecoveryPass> {
        let to = RecoveryPass::CheckTopology;
        let topology_error = match (&self.fs, &self.btrees) {
            (Some(fs), _) => fs.btrees().topology_errors() > 0,
            (None, Some(t)) => t.topology_errors() > 0,
            (None, None) => false,
        };
        let topology_failure =
            err.is_some_and(|e| e.code() == ErrCode::BtreeNeedTopologyRepair) && topology_error;
        let before_rw = index(pass) < index(RecoveryPass::SetMayGoRw);
        let ran = self.outcomes.iter().any(|(p, o)| *p == to && *o == PassOutcome::Ran);
        (matches!(self.mode, Mode::Mount { .. })
            && (topology_failure || lost)
            && before_rw
            && index(to) < index(pass)
            && !ran
            && !self.explicit.contains(&to))
        .then_some(to)
    }

    pub(crate) fn run_passes(&mut self) -> Result<()> {
        let mut at = 0;
        while let Some(&pass) = RecoveryPass::ALL.get(at) {
            at += 1;
            let outcome = match implementation(pass) {
                PassImpl::NotModelled(why) => PassOutcome::NotModelled(why),
                PassImpl::Runs(_) if self.stop.is_some() => {
                    PassOutcome::Skipped(format!("stopped: {}", self.stop.as_deref().unwrap_or_default()))
                }
                PassImpl::Runs(_) if !self.requested(pass) => PassOutcome::Skipped(not_requested(pass)),
                PassImpl::Runs(_) if !self.mode.writes() && writes(pass) => {
                    PassOutcome::Skipped("fsck -n writes nothing".to_owned())
                }
                PassImpl::Runs(run) => {
                    self.pass_name = pass.name();
                    if !pass.flags().contains(PassFlags::SILENT) {
                        self.log.push(format!("starting {}", pass.name()));
                    }
                    self.flush_log();
                    let ran = run(self).map_err(|e| e.prefix(pass.name()));
                    self.take_btree_log();
                    let lost = self.take_lost_data();
                    for &btree in &lost {
                        self.lost_data(btree);
                    }
                    if let Some(to) = self.rewind_for(pass, ran.as_ref().err(), !lost.is_empty()) {
                        self.run_explicit(to, true);
                        self.flush_log();
                        self.outcomes.retain(|(p, _)| index(*p) < index(to));
                        at = index(to);
                        continue;
                    }
                    self.flush_log();
                    ran?;
                    PassOutcome::Ran
                }
            };
            // A pass that would have run but is not modelled is always said; with fsck, so is
            // every skipped one.
            let say = match &outcome {
                PassOutcome::Ran => false,
                PassOutcome::NotModelled(_) => self.fsck || self.requested(pass),
                PassOutcome::Skipped(_) => self.fsck,
            };
            if say {
                self.log.push(format!("{}: {outcome}", pass.name()));
            }
            self.outcomes.push((pass, outcome));
        }
        self.finish_fix_errors()
    }

    /// After a run failed: leaves the filesystem as it was found where it can. A filesystem
    /// that was clean, or whose journal replay finished, is unmounted cleanly (written back and
    /// sealed), so that a failed fsck or mount does not leave a mountable filesystem marked
    /// unclean. One whose replay did not finish keeps its journal for the next mount to replay.
    pub(crate) fn seal_after_error(&mut self) {
        // The replay range stays in the journal for the next mount: its pin goes with this
        // one, nothing written (the journal is going away).
        if let Some(p) = self.replay_pin.take() {
            p.abandon();
        }
        let Some(fs) = self.fs.take() else { return };
        if self.unclean && !self.replay_done {
            return;
        }
        if let Err(e) = fs.unmount() {
            self.log.push(format!("could not seal the filesystem after the error: {e}"));
        }
    }

    /// `mount -o fsck` with `fix_errors=exit` refuses to finish with errors left.
    fn finish_fix_errors(&mut self) -> Result<()> {
        let Mode::Mount { fix_errors } = self.mode else { return Ok(()) };
        let left = self.problems.iter().filter(|p| !p.fixed).count();
        match fix_errors {
            // A mount without fsck passes asked for: as bcachefs says when an error it may not
            // fix shuts it down.
            FixErrors::Exit if left > 0 && !self.fsck => Err(Error::new(
                ErrCode::FsckErrorsNotFixed,
                format!("{left} errors left unfixed: run fsck or set errors=fix_safe to allow self-healing"),
            )),
            FixErrors::Exit if left > 0 => Err(Error::new(
                ErrCode::FsckErrorsNotFixed,
                format!("{left} errors left unfixed (fix_errors=exit; mount with fix_errors=yes to repair)"),
            )),
            FixErrors::Ask if left > 0 => {
                self.log.push(format!("fix_errors=ask: nobody to ask; {left} errors left unfixed"));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Counts every problem in the superblock, once; written with the next superblock write.
    pub(crate) fn count_errors(&self) -> Result<()> {
        let fs = self.fs()?;
        let mut set = fs.set();
        for p in &self.problems {
            set.sb.count_error(p.err, p.count);
        }
        Ok(())
    }
}

/// Where `pass` is in the table.
fn index(pass: RecoveryPass) -> usize {
    RecoveryPass::ALL.iter().position(|&p| p == pass).unwrap_or(usize::MAX)
}

/// Passes that write: not run by a check that writes nothing.
fn writes(pass: RecoveryPass) -> bool {
    matches!(pass, RecoveryPass::SetMayGoRw | RecoveryPass::JournalReplay | RecoveryPass::FsFreespaceInit)
}

fn not_requested(pass: RecoveryPass) -> String {
    let flags = pass.flags();
    if flags.contains(PassFlags::FSCK) {
        "fsck not requested".to_owned()
    } else if flags.contains(PassFlags::UNCLEAN) {
        "clean shutdown".to_owned()
    } else {
        "not asked for".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pass of the table has an implementation or a reason it is not modelled, and the
    /// passes a pass requires come before it in the table.
    #[test]
    fn every_pass_is_handled_and_requirements_come_first() {
        let at = |p| RecoveryPass::ALL.iter().position(|&q| q == p);
        for &p in RecoveryPass::ALL {
            if let PassImpl::NotModelled(why) = implementation(p) {
                assert!(!why.is_empty(), "{} not modelled without a reason", p.name());
            }
            for &r in requires(p) {
                assert!(at(r) < at(p), "{} requires {}, which runs after it", p.name(), r.name());
            }
        }
    }
}
