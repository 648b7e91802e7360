//! Journal pins: who still needs which journal entries, and how to make them let go.
//!
//! An update is journalled at seq `S` and applied in memory (a dirty btree node, a dirty key
//! cache entry). Until that memory is written back, the entry at `S` must survive, so its owner
//! holds a [`JournalPin`] at `S`; `last_seq`, the oldest entry replay needs, is the oldest pin.
//! A pin is registered with a flush callback ([`PinFlush`]): journal reclaim calls it to make the
//! owner write its memory back and drop the pin (or move it to a newer seq, when newer updates
//! arrived meanwhile), which lets `last_seq` advance and journal buckets be reused.
//!
//! The rules, each enforced here:
//! 1. Pins are flushed oldest first, one flusher at a time (the flush lock), and never at or past
//!    the replay barrier: an entry not yet replayed is not fully in memory, so flushing its pins
//!    would let `last_seq` pass updates that exist only in the journal. A pin whose owner writes
//!    back in bulk ([`PinFlush::bulk`]: btree write-back, which writes every dirty node) goes
//!    after the other pins due, whatever its seq: those flushes dirty nodes (a key cache entry
//!    written into its leaf), and one bulk write then covers them all instead of one per seq.
//!    The order among the pins due does not change what is written, only how often.
//! 2. A callback runs with no journal lock held (it commits through the journal itself), for
//!    one pin at a time, and never for a pin already given back. After it returns, its pin must
//!    be gone or moved to a newer seq (which is flushed again if still within the target).
//! 3. A callback that fails (other than `journal_reclaim_would_deadlock`, which only says "not
//!    now") makes the filesystem emergency read-only; its pin stays where it was, so `last_seq`
//!    never passes what was not written back.
//! 4. A pin is a handle: it is dropped by giving it back ([`Journal::pin_drop`]), which takes it
//!    by value, so it cannot be dropped twice; a handle that goes out of scope without being
//!    given back is a leak, caught by a debug assertion.
//! 5. An owner adds a pin while holding the lock its callback takes to find the pin, so reclaim
//!    can never call the callback before the owner holds the handle (the loom model in
//!    `tests/loom_pins.rs` finds exactly that race when the rule is broken).
//!
//! ```compile_fail
//! # use journal::{Journal, JournalPin};
//! fn drop_twice(j: &Journal, pin: JournalPin) {
//!     j.pin_drop(pin);
//!     j.pin_drop(pin); // a pin is moved by the first drop: this does not compile
//! }
//! ```

use std::collections::BTreeMap;

use fs_core::error::{ErrCode, Error, Result};
use fs_core::sync::Arc;

use crate::write::Journal;

/// The most callbacks one flush of the pins runs, whatever other threads add meanwhile.
const MAX_FLUSHES: usize = 1 << 20;

/// Whoever holds a pin: how to write back what the pin protects.
pub trait PinFlush: Send + Sync {
    /// Writes back everything the pin at `seq` protects, then drops the pin or moves it past
    /// `seq` (the owner holds the handle). Called by journal reclaim with no journal lock held.
    fn flush_pin(&self, journal: &Journal, seq: u64) -> Result<()>;

    /// What the owner is, for errors and logs ("btree write-back").
    fn name(&self) -> &'static str;

    /// Whether the callback writes back everything its owner holds, not just what this pin
    /// protects, so that it is best flushed after the other pins due (rule 1).
    fn bulk(&self) -> bool {
        false
    }
}

/// The flush callback of a pin no reclaim may flush: the journal range recovery must replay is
/// pinned this way until replay has written it back, and reclaim never reaches it (it sits at
/// the replay barrier). Flushing it anyway is an internal error.
pub struct Unflushable(pub &'static str);

impl PinFlush for Unflushable {
    fn flush_pin(&self, _journal: &Journal, seq: u64) -> Result<()> {
        Err(Error::internal(format!("journal pin '{}' at seq {seq} cannot be flushed", self.0))
            .journal_seq(seq))
    }

    fn name(&self) -> &'static str {
        self.0
    }
}

/// A held journal pin. Give it back with [`Journal::pin_drop`]; move it with
/// [`Journal::pin_update`].
#[must_use = "a journal pin must be given back with Journal::pin_drop"]
#[derive(Debug)]
pub struct JournalPin {
    pub(crate) id: u64,
    pub(crate) seq: u64,
    /// Cleared when the pin is given back: a handle dropped while set was leaked.
    pub(crate) live: bool,
}

impl JournalPin {
    /// The seq this pin holds.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Gives the pin up without touching the journal, which is going away with it (a crash or
    /// an emergency shutdown, where what was only in memory is lost on purpose). Not a leak.
    pub fn abandon(mut self) {
        self.live = false;
    }
}

impl Drop for JournalPin {
    fn drop(&mut self) {
        debug_assert!(
            !self.live || std::thread::panicking(),
            "journal pin {} at seq {} leaked: dropped without Journal::pin_drop",
            self.id,
            self.seq
        );
    }
}

/// Every held pin, by (seq, id): the first entry is the oldest.
#[derive(Default)]
pub(crate) struct PinTable {
    pins: BTreeMap<(u64, u64), Arc<dyn PinFlush>>,
    next_id: u64,
    /// The pin whose callback is running, if any.
    pub(crate) flushing: Option<(u64, u64)>,
    /// Pins at or past this seq are not flushed: their entries are not yet replayed.
    pub(crate) replay_barrier: Option<u64>,
}

impl PinTable {
    pub(crate) fn oldest(&self) -> Option<u64> {
        self.pins.keys().next().map(|&(seq, _)| seq)
    }

    pub(crate) fn len(&self) -> usize {
        self.pins.len()
    }

    pub(crate) fn add(&mut self, seq: u64, flush: Arc<dyn PinFlush>) -> JournalPin {
        self.next_id += 1;
        let id = self.next_id;
        self.pins.insert((seq, id), flush);
        JournalPin { id, seq, live: true }
    }

    /// Removes the pin; false if the table did not hold it (a bug: see rule 4).
    pub(crate) fn remove(&mut self, pin: &JournalPin) -> bool {
        self.pins.remove(&(pin.seq, pin.id)).is_some()
    }

    pub(crate) fn move_to(&mut self, pin: &mut JournalPin, seq: u64) -> bool {
        let Some(flush) = self.pins.remove(&(pin.seq, pin.id)) else { return false };
        pin.seq = seq;
        self.pins.insert((seq, pin.id), flush);
        true
    }

    pub(crate) fn contains(&self, key: (u64, u64)) -> bool {
        self.pins.contains_key(&key)
    }

    /// The pin at or below `through` to flush next: the oldest, bulk pins last (rule 1).
    pub(crate) fn next_to_flush(&self, through: u64) -> Option<((u64, u64), Arc<dyn PinFlush>)> {
        let limit = self.replay_barrier.map_or(through, |b| through.min(b.saturating_sub(1)));
        let mut due = self.pins.range(..=(limit, u64::MAX));
        let (&key, flush) = due.clone().find(|(_, f)| !f.bulk()).or_else(|| due.next())?;
        Some((key, flush.clone()))
    }
}

impl Journal {
    /// Pins `seq`: the entry at `seq` and every later one stay until the pin is dropped or
    /// moved. `seq` must not be older than `last_seq` (those entries may be gone already) nor
    /// newer than the open entry.
    pub fn pin_add(&self, seq: u64, flush: Arc<dyn PinFlush>) -> Result<JournalPin> {
        let mut st = self.lock();
        let (last, open) = (st.last_seq(), st.seq);
        if seq < last || seq > open {
            return Err(Error::internal(format!(
                "pin at seq {seq} outside the live journal {last}..={open} ({})",
                flush.name()
            ))
            .journal_seq(seq));
        }
        Ok(st.pins.add(seq, flush))
    }

    /// Pins `seq` for recovery, which may pin entries older than anything this journal wrote:
    /// the range it is about to replay. Reclaim never flushes such a pin (it sits at the replay
    /// barrier); recovery drops it once replay is written back.
    pub fn pin_replay_range(&self, seq: u64) -> JournalPin {
        let mut st = self.lock();
        st.pins.replay_barrier = Some(seq);
        st.pins.add(seq, Arc::new(Unflushable("journal replay")))
    }

    /// Sets the replay barrier: pins at or past `seq` are not flushed (`None`: no barrier).
    pub fn set_replay_barrier(&self, seq: Option<u64>) {
        self.lock().pins.replay_barrier = seq;
    }

    /// Gives a pin back. The table not holding it is a bug (rule 4): a debug assertion, and an
    /// internal error in release builds.
    pub fn pin_drop(&self, mut pin: JournalPin) -> Result<()> {
        pin.live = false;
        let removed = {
            let mut st = self.lock();
            st.pins.remove(&pin)
        };
        self.wake();
        debug_assert!(removed, "journal pin {} at seq {} dropped twice", pin.id, pin.seq);
        if removed {
            Ok(())
        } else {
            Err(Error::internal(format!("journal pin {} at seq {} dropped twice", pin.id, pin.seq)))
        }
    }

    /// Moves a pin to `seq`, which must be in the live journal as for [`Journal::pin_add`].
    pub fn pin_update(&self, pin: &mut JournalPin, seq: u64) -> Result<()> {
        let mut st = self.lock();
        let (last, open) = (st.last_seq().min(pin.seq), st.seq);
        if seq < last || seq > open {
            return Err(
                Error::internal(format!("pin moved to seq {seq} outside {last}..={open}")).journal_seq(seq)
            );
        }
        if !st.pins.move_to(pin, seq) {
            return Err(Error::internal(format!("journal pin {} at seq {} is not held", pin.id, pin.seq)));
        }
        Ok(())
    }

    /// Pins held.
    pub fn nr_pins(&self) -> usize {
        self.lock().pins.len()
    }

    /// Flushes every pin at or below `through`, oldest first, by calling its owner's callback
    /// (see the module rules). Returns how many callbacks ran. A failed callback is reported to
    /// the filesystem's health (emergency read-only) and returned; the pin stays.
    pub fn flush_pins(&self, through: u64) -> Result<usize> {
        self.flush_pins_while(through, &|| true)
    }

    /// [`Journal::flush_pins`] that stops, before each callback, once `more` says enough has
    /// been flushed: reclaim for a key cache past its threshold flushes the oldest pins until
    /// the cache is back under it, not the whole journal (bcachefs's `min_key_cache`).
    pub fn flush_pins_while(&self, through: u64, more: &dyn Fn() -> bool) -> Result<usize> {
        let _flusher = self.flush_lock.lock();
        // Each callback either removes its pin or moves it past `through`; the pins present at
        // the start bound the work, with room for pins that callbacks add as they write back
        // and for those that other threads add meanwhile (each counted twice).
        let (at_start, first_id) = {
            let st = self.lock();
            (st.pins.len(), st.pins.next_id)
        };
        let mut done = 0usize;
        loop {
            let added = usize::try_from(self.lock().pins.next_id - first_id).unwrap_or(usize::MAX);
            if done >= (at_start + added).saturating_mul(2).saturating_add(64).min(MAX_FLUSHES) {
                break;
            }
            self.health.check_rw().map_err(|e| e.prefix("flushing journal pins"))?;
            if !more() {
                return Ok(done);
            }
            let Some((key, flush)) = ({
                let mut st = self.lock();
                let next = st.pins.next_to_flush(through);
                st.pins.flushing = next.as_ref().map(|(k, _)| *k);
                next
            }) else {
                return Ok(done);
            };
            let r = flush.flush_pin(self, key.0);
            let still_held = {
                let mut st = self.lock();
                st.pins.flushing = None;
                st.pins.contains(key)
            };
            self.wake();
            match r {
                Err(e) if e.matches(ErrCode::JournalReclaimWouldDeadlock) => return Err(e),
                Err(e) => {
                    let e = e.prefix(format_args!(
                        "journal reclaim: flushing '{}' at seq {}",
                        flush.name(),
                        key.0
                    ));
                    self.health.fatal(&e);
                    return Err(e);
                }
                Ok(()) if still_held => {
                    let e = Error::internal(format!(
                        "journal reclaim: '{}' flushed its pin at seq {} but still holds it",
                        flush.name(),
                        key.0
                    ));
                    self.health.fatal(&e);
                    return Err(e);
                }
                Ok(()) => done += 1,
            }
        }
        Err(Error::new(
            ErrCode::JournalStuck,
            format!("journal pins at or below seq {through} did not settle in {done} flushes"),
        ))
    }

    /// Flushes every pin that may be flushed, up to the open entry's seq at the call: everything
    /// committed so far below the replay barrier.
    pub fn flush_all_pins(&self) -> Result<usize> {
        // Everything committed so far: pins that commits made after this call add (a discard
        // worker's, say) belong to later work, and counting them would let a busy filesystem
        // keep this from ever settling.
        self.flush_pins(self.seq())
    }
}
