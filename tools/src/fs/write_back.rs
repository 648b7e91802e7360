//! Btree write-back: dirty nodes written, the alloc keys their writes produce committed, the
//! new roots journalled, and the write-back pin dropped.
//!
//! Every transaction pins its seq for write-back ([`FsShared::ensure_wb_pin`]); the pin's flush
//! callback, which journal reclaim calls, is [`FsShared::write_back`]. The journal is flushed
//! before nodes are written, under the btree lock, so no node ever carries an update from a
//! journal entry that is not durable. The roots of the written btrees go into the journal
//! before the pin is dropped: the first entry whose `last_seq` no longer covers the written
//! updates also carries roots that contain them.

use fs_core::error::{ErrCode, Error, Result};
use fs_core::sync::Weak;
use journal::{Journal, PinFlush};

use super::trans::{CommitFlags, MAX_SETTLE_ROUNDS, not_settling};
use super::{FsShared, root_entries};

/// The write-back pin's flush callback: writes the filesystem's btrees back.
pub(crate) struct WriteBackPin {
    pub(crate) fs: Weak<FsShared>,
}

impl PinFlush for WriteBackPin {
    fn flush_pin(&self, _journal: &Journal, _seq: u64) -> Result<()> {
        match self.fs.upgrade() {
            Some(fs) => fs.write_back(),
            // The filesystem is gone (a crash): nothing in memory is left to write.
            None => Ok(()),
        }
    }

    fn name(&self) -> &'static str {
        "btree write-back"
    }

    /// It writes every dirty node, whatever the seq.
    fn bulk(&self) -> bool {
        true
    }
}

impl FsShared {
    /// Writes every dirty node, journals the new roots and publishes the alloc keys of the
    /// nodes allocated and freed since the last publication in the same entry, until nothing is
    /// dirty or pending; then drops the write-back pin. Its commits are reclaim's: they may use
    /// the journal reserve and never wait on the allocator.
    ///
    /// Other threads may keep handing the allocator updates (discard workers emptying
    /// thousands of buckets), which each round publishes, dirtying alloc leaves anew, so the
    /// rounds need not settle. Once they have not, every node that was dirty before the last
    /// round has been written by it, and what is dirty now carries that round's entry: the pin
    /// moves there (or goes, if nothing is dirty), and reclaim comes back when it needs that
    /// entry gone. Unmount, with those threads stopped, uses [`FsShared::write_back_all`].
    pub fn write_back(&self) -> Result<()> {
        self.write_back_rounds(false)
    }

    /// [`FsShared::write_back`] that settles or fails: nothing dirty or pending is left.
    pub(crate) fn write_back_all(&self) -> Result<()> {
        self.write_back_rounds(true)
    }

    fn write_back_rounds(&self, settle: bool) -> Result<()> {
        let journal = self.journal_rw()?.clone();
        self.health.check_rw()?;
        for round_nr in 1..=MAX_SETTLE_ROUNDS {
            let mut t = self.btrees.lock();
            // Nodes written anew here are journal reclaim's interior updates: they may use the
            // last buckets, as bcachefs's do.
            let saved = self.nodes.as_ref().map(|n| {
                let old = n.watermark();
                n.set_watermark(allocator::Watermark::Reclaim);
                old
            });
            let round = self.write_round(&mut t, &journal);
            if let (Some(n), Some(old)) = (&self.nodes, saved) {
                n.set_watermark(old);
            }
            let (_, entry) = round?;
            let dirty = t.dirty_nodes();
            let pending = self.alloc.as_ref().is_some_and(|a| a.pending_updates() > 0);
            if dirty == 0 && !pending {
                // Nothing applied is unwritten: the pin has nothing left to hold. The roots
                // set above go out with the next entry, the first one whose last_seq moves.
                if let Some(p) = self.wb_pin.lock().take() {
                    journal.pin_drop(p)?;
                }
                return Ok(());
            }
            if !settle && round_nr == MAX_SETTLE_ROUNDS {
                // Under the btree lock still: no update comes between the check and the move.
                let mut pin = self.wb_pin.lock();
                if dirty == 0 {
                    if let Some(p) = pin.take() {
                        journal.pin_drop(p)?;
                    }
                } else if let Some(p) = pin.as_mut().filter(|p| p.seq() < entry) {
                    journal.pin_update(p, entry)?;
                }
                return Ok(());
            }
        }
        Err(self.check_fatal(not_settling()))
    }
}

impl FsShared {
    /// One round of write-back under the btree lock: flushes the journal (no node may carry an
    /// update of an entry that is not durable), reserves the entry that will carry the round's
    /// new roots and the alloc keys of the nodes it allocates and frees, writes every dirty
    /// node with that entry's seq in its bset, sets the roots and publishes the alloc keys into
    /// the entry. A crash before the entry is durable leaves bsets recovery blacklists: the
    /// nodes on disk never point past what the alloc keys say (bcachefs's btree updates take
    /// their journal reservation before they write, for the same reason). Returns how many
    /// nodes it wrote, and the seq of the entry it published into: what the publication
    /// dirtied carries that seq.
    pub(crate) fn write_round(
        &self,
        t: &mut fs_core::btree::Btrees,
        journal: &journal::Journal,
    ) -> Result<(usize, u64)> {
        journal.flush_with(CommitFlags::RECLAIM.wm)?;
        let (res, reserved) = self.reserve_publication(t, journal).map_err(|e| self.check_fatal(e))?;
        let entry = res.seq();
        let written = t.write_dirty_in(entry);
        journal.set_roots(root_entries(t));
        self.publish_locked(t, journal, res, reserved).map_err(|e| self.check_fatal(e))?;
        let written = written.map_err(|e| reclaim_blocked(e).unwrap_or_else(|e| self.check_fatal(e)))?;
        Ok((written, entry))
    }

    /// A new filesystem's first alloc keys (its superblock and journal buckets) and freespace
    /// keys (one per run of free buckets) go straight into the btrees, not through the
    /// journal, which would have to hold an alloc key per journal bucket; the nodes are written
    /// and their roots journalled and flushed. A crash before that leaves a filesystem with no
    /// alloc keys, whose next mount does this again. `format` runs it as its first mount.
    pub(crate) fn init_alloc_info(&self) -> Result<()> {
        let journal = self.journal_rw()?.clone();
        let Some(alloc) = &self.alloc else { return Ok(()) };
        for _ in 0..MAX_SETTLE_ROUNDS {
            let updates = alloc.take_updates();
            let mut t = self.btrees.lock();
            if updates.is_empty() && t.dirty_nodes() == 0 {
                journal.set_roots(root_entries(&mut t));
                drop(t);
                journal.flush()?;
                return Ok(());
            }
            for (btree, k) in updates {
                t.insert(btree, k, 0).map_err(|e| self.check_fatal(e))?;
            }
            t.write_dirty().map_err(|e| self.check_fatal(e))?;
        }
        Err(self.check_fatal(not_settling()))
    }
}

/// Journal reclaim never waits on the allocator (it is what frees journal space, and waiting
/// could wait on itself): an update of its own that is refused for want of buckets becomes
/// `journal_reclaim_would_deadlock`, which leaves the pin for a later round, as bcachefs's
/// commits with `BCH_TRANS_COMMIT_journal_reclaim` do. `Err` gives back any other error.
pub(crate) fn reclaim_blocked(e: Error) -> std::result::Result<Error, Error> {
    if e.matches(ErrCode::OperationBlocked) && !e.matches(ErrCode::JournalResBlocked) {
        Ok(Error::new(ErrCode::JournalReclaimWouldDeadlock, format!("waits on the allocator: {e}")))
    } else {
        Err(e)
    }
}

impl super::Fs {
    /// Writes everything back now (see [`FsShared::write_back`]).
    pub fn write_back(&self) -> Result<()> {
        self.shared.write_back()
    }
}
