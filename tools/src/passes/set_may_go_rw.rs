//! `set_may_go_rw` (8): the filesystem may write from here on. The journal is opened — after an
//! unclean shutdown right after the newest entry found, with the replay range pinned and the
//! seqs past it blacklisted — the parts are assembled into the mounted filesystem (which starts
//! its journal reclaim thread), node header checks are turned on, and the superblock stops
//! saying clean.

use std::time::Instant;

use allocator::Clock;
use fs_core::error::{Error, Result};
use fs_core::opts::Options;
use journal::{Journal, JournalWatermark, JsetEntry};

use super::RecoveryCtx;
use crate::fs::layout::{journal_config, journal_rings};
use crate::fs::{Fs, FsShared, Parts};

pub(super) fn run(ctx: &mut RecoveryCtx) -> Result<()> {
    let set = ctx.set.take().ok_or_else(|| Error::internal("set_may_go_rw ran twice"))?;
    let block_size = ctx.opts.with(Options::block_size);
    let (rings, next_seq) = match &ctx.journal {
        Some(rj) => (rj.continue_rings(&set)?, rj.new_blacklist.1),
        None => {
            let after_clean = set.sb.clean.as_ref().map_or(0, |c| c.journal_seq) + 1;
            let (rings, log) = journal_rings(&set)?;
            ctx.log.extend(log);
            (rings, ctx.next_seq.unwrap_or(after_clean).max(after_clean))
        }
    };
    let journal = Journal::new(
        rings,
        journal_config(&set, block_size),
        next_seq,
        ctx.opts.clone(),
        ctx.health.clone(),
    )?;
    if let Some(rj) = &ctx.journal {
        // The replay range stays pinned, and unflushable, until replay is written back.
        ctx.replay_pin = Some(journal.pin_replay_range(rj.read.last_seq.max(1)));
        let (start, end) = rj.new_blacklist;
        journal.add(vec![JsetEntry::Blacklist { start, end }], JournalWatermark::Normal, Instant::now())?;
    }
    let mut btrees =
        ctx.btrees.take().ok_or_else(|| Error::internal("set_may_go_rw before the btrees were opened"))?;
    // bcachefs checks cached node headers only once check_allocations has run.
    btrees.set_check_headers(true);
    let shared = FsShared::new(Parts {
        set,
        opts: ctx.opts.clone(),
        health: ctx.health.clone(),
        alloc: ctx.alloc.clone(),
        nodes: ctx.nodes.clone(),
        journal: Some(std::sync::Arc::new(journal)),
        btrees,
        wait_clock: if ctx.manual_wait_clock { Clock::Manual } else { Clock::Real(Instant::now()) },
    });
    if let Some(c) = &ctx.control {
        c.attach_fs(&shared);
    }
    let fs = Fs::from_shared(shared, ctx.reclaim)?;
    fs.shared().go_rw()?;
    ctx.fs = Some(fs);
    ctx.log.push("going read-write".to_owned());
    Ok(())
}
