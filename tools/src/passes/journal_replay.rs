//! `journal_replay` (9): the journal keys go into the btrees through journal replay's
//! transaction — a sorted pass in btree order at the normal watermark, queueing keys that must
//! wait for the allocator, then a pass over the queued keys in journal order at the reclaim
//! watermark. Then the repairs found before the filesystem could write are committed on top,
//! the replay range is released, and the journal pins are flushed synchronously, as
//! `__bch2_fs_recovery` does: everything replayed is written back before the mount goes on.

use std::collections::HashSet;
use std::time::Instant;

use allocator::Watermark;
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::error::{ErrCode, Result};
use journal::JournalKeys;

use super::RecoveryCtx;
use crate::fs::FsShared;
use crate::recovery::PhaseTime;
use crate::recovery::progress::Meter;

/// Keys replayed between node write-backs during replay. Written nodes are clean and may be
/// evicted, so the btree's memory stays within its cache bound however many keys the journal
/// holds, as journal reclaim keeps it in bcachefs; nodes written before the new roots reach the
/// journal are safe because the allocator does not reuse emptied buckets before their journal
/// seq is durable.
const REPLAY_WRITE_BACK_KEYS: usize = 1 << 20;

/// Keys replayed between looks at the node alloc keys waiting for publication, which must fit
/// one journal entry: a look is cheap, but not free.
const PUBLISH_CHECK_KEYS: usize = 4096;

pub(super) fn run(ctx: &mut RecoveryCtx) -> Result<()> {
    let t_replay = Instant::now();
    let Some(mut rj) = ctx.journal.take() else {
        commit_fixes_before_rw(ctx, &HashSet::new())?;
        ctx.replay_done = true;
        return Ok(());
    };
    let shared = ctx.fs()?.shared().clone();
    let mut meter = Meter::new(ctx.progress, "journal replay", "keys");
    shared.set_rewind_seq(Some(rj.read.last_seq.max(1)));
    let mut live = Live { log: &mut ctx.log, printed: &mut ctx.log_printed, sink: ctx.live_log.as_ref() };
    shared.record_replay_overwrites(true);
    let every = ctx.replay_write_back_keys.unwrap_or(REPLAY_WRITE_BACK_KEYS).max(1);
    let mut overwritten = HashSet::new();
    let replayed = replay(
        &shared,
        &mut rj.keys,
        rj.read.last_seq.max(1),
        every,
        &mut overwritten,
        &mut live,
        &mut meter,
    );
    overwritten.extend(shared.take_replay_overwrites());
    shared.record_replay_overwrites(false);
    shared.set_rewind_seq(None);
    meter.finish();
    let replayed = replayed?;
    ctx.replayed = Some((rj.read.last_seq, rj.read.replay_end));
    ctx.keys_replayed = replayed;
    ctx.replay_done = true;
    ctx.times.replay = PhaseTime::until_now(ctx.t0, t_replay);
    // Replay has written every journal key into the btrees: free them before write-back.
    ctx.keys_kept = rj.keys.len();
    drop(rj);
    // The repairs are transactions: at positions the key cache holds, they go through it.
    commit_fixes_before_rw(ctx, &overwritten)?;
    let t_write_back = Instant::now();
    let journal = shared.journal_rw()?.clone();
    if let Some(p) = ctx.replay_pin.take() {
        journal.pin_drop(p)?;
    }
    journal.set_replay_barrier(None);
    journal.flush_all_pins()?;
    // Replay's entries are all clean now and go; updates the discard workers made through the
    // cache meanwhile (from going read-write in v1.39 and fixed) stay, pinned, for reclaim.
    if let Some(cache) = shared.key_cache() {
        cache.drop_clean();
    }
    ctx.times.write_back = PhaseTime::until_now(ctx.t0, t_write_back);
    Ok(())
}

/// Commits what passes found before the filesystem could write, except where a commit during
/// replay wrote the position since (`overwritten`). bcachefs commits such a repair into the
/// journal keys before going read-write, and a later commit at its position marks it
/// overwritten like any journal key: the repair was computed from an older state (a node
/// alloc key check_allocations rebuilt, before a write-back during replay moved the node).
fn commit_fixes_before_rw(ctx: &mut RecoveryCtx, overwritten: &HashSet<(BtreeId, Bpos)>) -> Result<()> {
    let mut fixes = std::mem::take(&mut ctx.fixes_after_replay);
    let found = fixes.len();
    fixes.retain(|(btree, k)| !overwritten.contains(&(*btree, k.pos)));
    if fixes.len() < found {
        ctx.log.push(format!(
            "journal_replay: {} of the repairs found before going read-write were overwritten by commits during replay",
            found - fixes.len()
        ));
    }
    ctx.commit_fixes(fixes)
}

/// The recovery log as replay writes it: lines said before a wait are out before it.
struct Live<'a> {
    log: &'a mut Vec<String>,
    printed: &'a mut usize,
    sink: Option<&'a crate::recovery::LiveLog>,
}

impl Live<'_> {
    fn flush(&mut self) {
        crate::recovery::flush_live(self.log, self.printed, self.sink);
    }
}

/// Marks overwritten the journal keys at the positions transactions committed since the last
/// look (the node alloc keys a write-back during replay publishes): a journal key is older than
/// any commit made after the journal was read, so replaying it would put the older key back.
fn mark_overwrites(fs: &FsShared, keys: &mut JournalKeys, overwritten: &mut HashSet<(BtreeId, Bpos)>) {
    for (btree, pos) in fs.take_replay_overwrites() {
        keys.mark_overwritten(btree, 0, pos);
        overwritten.insert((btree, pos));
    }
}

/// Replays `keys`, whose seqs start at `first_seq`, writing the dirty nodes back every
/// `write_back_every` keys; returns how many keys were replayed. The positions commits wrote
/// meanwhile go into `overwritten`.
///
/// Keys are taken by index, not searched for, and their values copied from their records
/// straight into the leaves; a key the btree refuses stays live in the journal keys, so the
/// overlay shows it until it is replayed. Every `write_back_every` keys
/// (`REPLAY_WRITE_BACK_KEYS` unless a test says otherwise) the dirty nodes are written.
fn replay(
    fs: &FsShared,
    keys: &mut JournalKeys,
    first_seq: u64,
    write_back_every: usize,
    overwritten: &mut HashSet<(BtreeId, Bpos)>,
    live: &mut Live<'_>,
    meter: &mut Meter,
) -> Result<usize> {
    let total = keys.len();
    let mut queued: Vec<usize> = Vec::new();
    let mut done = 0usize;
    // The interval is set at run time: a count to compare with, not a division per key.
    let mut next_write_back = write_back_every;
    let (mut cached, mut written_through) = {
        let mut trans = fs.replay_trans(Watermark::Btree, first_seq)?;
        for i in 0..keys.len() {
            let Some(k) = keys.at(i).filter(|k| !k.overwritten && k.level == 0) else { continue };
            let (btree, pos) = (k.btree, k.key.pos);
            match trans.insert(btree, k.level, k.key, k.seq) {
                Ok(()) => {
                    keys.mark_overwritten_at(i);
                    done += 1;
                    if done % PUBLISH_CHECK_KEYS == 0 {
                        meter.tick(done, total, live.log);
                    }
                    let interval_over = done == next_write_back;
                    if interval_over {
                        next_write_back += write_back_every;
                    }
                    if interval_over || (done % PUBLISH_CHECK_KEYS == 0 && trans.publish_due()) {
                        match trans.write_dirty() {
                            // A node to be written anew found no place: it stays dirty for
                            // the next round, as write-back leaves it.
                            Err(e) if e.matches(ErrCode::JournalReclaimWouldDeadlock) => {}
                            r => {
                                r?;
                            }
                        }
                        mark_overwrites(fs, keys, overwritten);
                    }
                }
                Err(e) if e.matches(ErrCode::OperationBlocked) => queued.push(i),
                Err(e) => return Err(e.prefix(format_args!("btree={btree} pos={pos}"))),
            }
        }
        (trans.cached, trans.written_through)
    };
    if !queued.is_empty() {
        live.log.push(format!(
            "journal_replay: {} keys wait for the allocator; replaying them in journal order",
            queued.len()
        ));
        live.flush();
        // Stable: keys of one seq stay in btree order.
        queued.sort_by_key(|&i| keys.at(i).map_or(0, |k| k.seq));
        let mut trans = fs.replay_trans(Watermark::Reclaim, first_seq)?;
        for &i in &queued {
            // While an update waits on the allocator, the btree lock is free: reclaim's
            // write-back may have committed meanwhile.
            mark_overwrites(fs, keys, overwritten);
            let Some(k) = keys.at(i).filter(|k| !k.overwritten) else { continue };
            let (btree, pos) = (k.btree, k.key.pos);
            let mut waiter = None;
            loop {
                match trans.insert(btree, k.level, k.key, k.seq) {
                    Ok(()) => break,
                    Err(e)
                        if e.matches(ErrCode::OperationBlocked) && !e.matches(ErrCode::JournalResBlocked) =>
                    {
                        // As bch2_btree_update_start: the btree lock goes while the update
                        // waits on the allocator, and the update starts over after.
                        let w = waiter.get_or_insert_with(|| fs.alloc_waiter());
                        cached += trans.cached;
                        written_through += trans.written_through;
                        drop(trans);
                        w.wait(e.prefix(format_args!("journal order: btree={btree} pos={pos}")))?;
                        trans = fs.replay_trans(Watermark::Reclaim, first_seq)?;
                    }
                    Err(e) => return Err(e.prefix(format_args!("journal order: btree={btree} pos={pos}"))),
                }
            }
            keys.mark_overwritten_at(i);
            done += 1;
        }
        cached += trans.cached;
        written_through += trans.written_through;
    }
    meter.tick(done, total, live.log);
    live.log.push(format!("journal_replay: {done} keys replayed"));
    if cached + written_through > 0 {
        live.log.push(format!(
            "journal_replay: {} alloc keys through the key cache: {cached} cached, {written_through} written through",
            cached + written_through
        ));
    }
    Ok(done)
}
