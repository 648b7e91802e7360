//! fsck: the recovery passes run with the fsck passes turned on (see [`crate::passes`]).
//! Exit codes follow fsck(8): 0 clean, 1 errors corrected, 4 errors left.
//!
//! `-n` recovers in memory only (journal keys as an overlay over read-only btrees) and writes
//! nothing, so the images stay byte-identical. `-y` and `-p` mount for real (journal replay
//! writes), fix what they may (`-p`: only errors bcachefs marks `FSCK_AUTOFIX`), record error
//! counts in the superblock by their stable ids, and unmount cleanly. A clean filesystem gets
//! only the quick check unless `-f` is given.

use fs_core::btree::BtreeConfig;
use fs_core::error::Result;
use fs_core::recovery_pass::RecoveryPass;
use fs_core::sb::DeviceSet;

use crate::passes::Mode;
pub use crate::passes::{PassOutcome, Problem};
use crate::recovery::{MountOpts, damaged_sb_copies, recover};

/// What fsck may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FixMode {
    /// `-n`: check only, write nothing.
    No,
    /// `-y`: fix everything fixable.
    Yes,
    /// `-p`: fix what is safe to fix without asking (`FSCK_AUTOFIX`).
    Preen,
}

#[derive(Clone, Debug)]
pub struct FsckOpts {
    pub mode: FixMode,
    /// `-f`: check a clean filesystem too (otherwise a clean one gets only the quick checks).
    pub force: bool,
    pub mount: MountOpts,
}

#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    pub problems: Vec<Problem>,
    pub log: Vec<String>,
    /// The full checks ran (not skipped as clean).
    pub checked: bool,
    /// What became of every recovery pass, in table order (empty for the quick check).
    pub passes: Vec<(RecoveryPass, PassOutcome)>,
}

impl FsckReport {
    /// fsck(8) exit code: 0 clean, 1 all errors corrected, 4 errors left uncorrected.
    pub fn exit_code(&self) -> u8 {
        if self.problems.is_empty() {
            crate::exit::OK
        } else if self.problems.iter().all(|p| p.fixed) {
            crate::exit::ERRORS_CORRECTED
        } else {
            crate::exit::ERRORS_UNCORRECTED
        }
    }

    /// The report as e2fsck-style text: one line per problem, then a summary naming `images`;
    /// with `verbose` the recovery log and passes first.
    pub fn text(&self, images: &str, verbose: bool) -> String {
        let mut out = String::new();
        if verbose {
            for line in &self.log {
                out.push_str(line);
                out.push('\n');
            }
        }
        for p in &self.problems {
            let what = if p.fixed { "fixed" } else { "not fixed" };
            out.push_str(&format!("{}: {} ({what})\n", p.err.name(), p.msg));
        }
        let fixed = self.problems.iter().filter(|p| p.fixed).count();
        out.push_str(&format!(
            "{images}: {} errors found, {fixed} fixed{}\n",
            self.problems.len(),
            if self.checked { "" } else { " (clean, quick check only)" }
        ));
        out
    }
}

/// Runs fsck on `set`.
pub fn fsck(set: DeviceSet, o: &FsckOpts) -> Result<FsckReport> {
    let mode = match o.mode {
        FixMode::No => Mode::Check,
        FixMode::Yes => Mode::Fix,
        FixMode::Preen => Mode::Preen,
    };
    // A clean filesystem gets the quick check, unless -f, or errors are recorded.
    let may_skip = set.sb.is_clean() && !o.force;
    let forced = may_skip && set.sb.needs_fsck;
    let quick = may_skip && !forced;
    if quick && mode == Mode::Check {
        // The superblock copies were read to open the set: their damage costs nothing to say.
        let problems = damaged_sb_copies(&set, false);
        let log = vec!["filesystem is clean; use -f to check it anyway".to_owned()];
        return Ok(FsckReport { problems, log, checked: false, passes: Vec::new() });
    }
    let ctx = recover(set, &o.mount, mode, !quick, BtreeConfig::default())?;
    let mut report =
        FsckReport { problems: ctx.problems, log: ctx.log, checked: !quick, passes: ctx.outcomes };
    if forced {
        report.log.insert(0, "filesystem has errors recorded: check forced".to_owned());
    }
    if quick {
        report.log.push("filesystem is clean; use -f to check it anyway".to_owned());
    }
    if let Some(fs) = ctx.fs {
        fs.unmount()?;
    }
    Ok(report)
}
