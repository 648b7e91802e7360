//! Iteration over a btree, optionally through an overlay of pending keys.
//!
//! While journal replay is unfinished, every btree read must see the journal keys not yet
//! replayed, with the journal winning over the btree at the same position; the journal crate
//! implements [`KeyOverlay`] for that. An overlay key that is deleted hides the btree key at
//! its position.

use crate::bkey::Bkey;
use crate::bpos::{Bpos, BtreeId};
use crate::btree::tree::Btrees;
use crate::error::Result;

/// Pending keys laid over a btree's leaves.
pub trait KeyOverlay {
    /// The first overlay key (deleted ones included) at or after `pos`.
    fn first_from(&self, btree: BtreeId, pos: Bpos) -> Option<Bkey>;
    /// The last overlay key (deleted ones included) at or before `pos`.
    fn last_until(&self, btree: BtreeId, pos: Bpos) -> Option<Bkey>;
}

impl Btrees {
    /// The first live key at or after `pos`, the overlay winning at equal positions.
    pub fn peek(
        &mut self,
        btree: BtreeId,
        mut pos: Bpos,
        overlay: Option<&dyn KeyOverlay>,
    ) -> Result<Option<Bkey>> {
        let Some(ov) = overlay else { return self.first_from(btree, pos) };
        loop {
            let b = self.first_from(btree, pos)?;
            match ov.first_from(btree, pos) {
                Some(o) if b.as_ref().is_none_or(|b| o.pos <= b.pos) => {
                    if !o.is_deleted() {
                        return Ok(Some(o));
                    }
                    if o.pos == Bpos::MAX {
                        return Ok(None);
                    }
                    pos = o.pos.successor();
                }
                _ => return Ok(b),
            }
        }
    }

    /// The last live key at or before `pos`, the overlay winning at equal positions.
    pub fn prev(
        &mut self,
        btree: BtreeId,
        mut pos: Bpos,
        overlay: Option<&dyn KeyOverlay>,
    ) -> Result<Option<Bkey>> {
        let Some(ov) = overlay else { return self.last_until(btree, pos) };
        loop {
            let b = self.last_until(btree, pos)?;
            match ov.last_until(btree, pos) {
                Some(o) if b.as_ref().is_none_or(|b| o.pos >= b.pos) => {
                    if !o.is_deleted() {
                        return Ok(Some(o));
                    }
                    if o.pos == Bpos::MIN {
                        return Ok(None);
                    }
                    pos = o.pos.predecessor();
                }
                _ => return Ok(b),
            }
        }
    }

    /// The key exactly at `pos`: the overlay's if it has one (deleted or not), else the btree's,
    /// else a deleted key at `pos`.
    pub fn peek_slot(&mut self, btree: BtreeId, pos: Bpos, overlay: Option<&dyn KeyOverlay>) -> Result<Bkey> {
        if let Some(o) = overlay.and_then(|ov| ov.first_from(btree, pos)).filter(|o| o.pos == pos) {
            return Ok(o);
        }
        Ok(self.get(btree, pos)?.unwrap_or_else(|| Bkey::deleted(pos)))
    }

    /// A cursor over `btree` starting at `start`.
    pub fn iter(&self, btree: BtreeId, start: Bpos) -> BtreeIter {
        BtreeIter { btree, pos: start, done: false, before_start: false }
    }
}

/// A position in a btree that moves forward or backward by live keys. It holds no borrow of
/// the tree, so updates may happen between steps; each step starts again from the root.
#[derive(Clone, Debug)]
pub struct BtreeIter {
    btree: BtreeId,
    pos: Bpos,
    /// Moved forward past `POS_MAX`: nothing further.
    done: bool,
    /// Moved backward past `POS_MIN`: nothing before.
    before_start: bool,
}

impl BtreeIter {
    pub fn pos(&self) -> Bpos {
        self.pos
    }

    /// The key at or after the cursor, without moving.
    pub fn peek(&self, t: &mut Btrees, overlay: Option<&dyn KeyOverlay>) -> Result<Option<Bkey>> {
        if self.done {
            return Ok(None);
        }
        t.peek(self.btree, self.pos, overlay)
    }

    /// The key at or after the cursor; the cursor moves past it.
    pub fn next(&mut self, t: &mut Btrees, overlay: Option<&dyn KeyOverlay>) -> Result<Option<Bkey>> {
        let k = self.peek(t, overlay)?;
        self.before_start = false;
        match &k {
            Some(k) if k.pos == Bpos::MAX => self.done = true,
            Some(k) => self.pos = k.pos.successor(),
            None => self.done = true,
        }
        Ok(k)
    }

    /// The key at or before the cursor; the cursor moves before it.
    pub fn prev(&mut self, t: &mut Btrees, overlay: Option<&dyn KeyOverlay>) -> Result<Option<Bkey>> {
        if self.before_start {
            return Ok(None);
        }
        let k = t.prev(self.btree, self.pos, overlay)?;
        self.done = false;
        match &k {
            Some(k) if k.pos == Bpos::MIN => self.before_start = true,
            Some(k) => self.pos = k.pos.predecessor(),
            None => self.before_start = true,
        }
        Ok(k)
    }
}
