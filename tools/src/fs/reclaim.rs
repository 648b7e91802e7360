//! The journal reclaim thread of a read-write mount (bcachefs's `bch2_journal_reclaim_thread`).
//!
//! It wakes when the open journal entry's `journal_flush_delay` ends, and at least every
//! [`IDLE_WAKE`]. Each time it writes the open entry if its delay is over
//! ([`journal::Journal::tick`]), flushes the pins of the older half of the journal when a ring
//! is more than half full, and the oldest pins while the key cache is past its reclaim
//! threshold; their callbacks write back what they protect. A failure puts the filesystem into
//! emergency read-only (the journal reports failed pin flushes itself) and ends the thread;
//! stopping it hands that failure to whoever stops it.
//!
//! A mount whose writes must come at the same points every run (a seeded workload, a crash
//! test recording every write) runs without the thread and calls [`super::Fs::tick`] with a
//! clock of its own instead: the same step, at points the caller chooses.

use std::time::{Duration, Instant};

use fs_core::error::{Error, Result};
use fs_core::sync::{Arc, Condvar, Mutex, Weak, thread};

use super::FsShared;

/// The longest the thread sleeps with nothing due: it looks at the journal's fill level then.
const IDLE_WAKE: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Control {
    stop: bool,
}

struct Shared {
    control: Mutex<Control>,
    wake: Condvar,
}

/// The running thread and how to stop it.
pub(crate) struct Reclaim {
    shared: Arc<Shared>,
    thread: thread::JoinHandle<Result<()>>,
}

impl Reclaim {
    /// Starts the thread for `fs`; it holds only a weak reference, so a filesystem dropped
    /// without unmounting (a crash) is not kept alive by it.
    pub(crate) fn start(fs: &Arc<FsShared>) -> Result<Reclaim> {
        let shared = Arc::new(Shared { control: Mutex::new(Control::default()), wake: Condvar::new() });
        let (s, weak) = (shared.clone(), Arc::downgrade(fs));
        let thread = thread::Builder::new()
            .name("bcsim-reclaim".to_owned())
            .spawn(move || run(&s, &weak))
            .map_err(|e| Error::internal(format!("starting the journal reclaim thread: {e}")))?;
        Ok(Reclaim { shared, thread })
    }

    /// Stops the thread and waits for it; returns the error it stopped on, if any.
    pub(crate) fn stop(self) -> Result<()> {
        self.shared.control.lock().stop = true;
        self.shared.wake.notify_all();
        self.thread.join().unwrap_or_else(|_| Err(Error::internal("the journal reclaim thread panicked")))
    }
}

fn run(s: &Shared, fs: &Weak<FsShared>) -> Result<()> {
    loop {
        let due = {
            let Some(fs) = fs.upgrade() else { return Ok(()) };
            fs.journal().and_then(|j| j.flush_due())
        };
        let timeout = due.map_or(IDLE_WAKE, |at| at.saturating_duration_since(Instant::now()).min(IDLE_WAKE));
        {
            let mut c = s.control.lock();
            if !c.stop && !timeout.is_zero() {
                c = s.wake.wait_timeout(c, timeout).0;
            }
            if c.stop {
                return Ok(());
            }
        }
        let Some(fs) = fs.upgrade() else { return Ok(()) };
        if fs.health().is_emergency_ro() {
            return Ok(());
        }
        if let Err(e) = step(&fs, Instant::now()) {
            fs.health().fatal(&e);
            return Err(e);
        }
    }
}

/// Clean key cache entries kept at most; a sweep of the eviction clock runs past it.
pub(crate) const KEY_CACHE_KEEP: usize = 1 << 16;

/// One round of reclaim: the flush delay, then pins if the journal is filling or the key cache
/// holds more dirty entries than its reclaim threshold; then a sweep of the key cache's
/// eviction clock if it holds too many entries.
pub(crate) fn step(fs: &FsShared, now: Instant) -> Result<()> {
    let Some(journal) = fs.journal() else { return Ok(()) };
    journal.tick(now)?;
    // The journal may be durable further now: buckets emptied before may be discarded.
    fs.kick_discards();
    let cache = fs.key_cache();
    let through = journal.seq().saturating_sub(1);
    let over = |c: &key_cache::KeyCache| c.pressure() != key_cache::Pressure::None;
    // The pins of the older half of the journal, if a ring is past half full
    // (`journal_seq_to_flush`); then the oldest pins until the key cache is back under its
    // threshold (`min_key_cache`). The journal keeps growing, as bcachefs's does, instead of
    // starting again empty.
    let mut flushed = journal.seq_to_flush().map(|seq| journal.flush_pins(seq.min(through)));
    if let Some(c) = cache.filter(|c| over(c))
        && !flushed.as_ref().is_some_and(Result::is_err)
    {
        flushed = Some(journal.flush_pins_while(through, &|| over(c)));
    }
    match flushed {
        // Not now: the reserve is gone until a foreground flush frees journal space.
        Some(Err(e)) if e.matches(fs_core::error::ErrCode::JournalReclaimWouldDeadlock) => {}
        Some(r) => {
            r?;
        }
        None => {}
    }
    if let Some(c) = cache {
        c.evict(KEY_CACHE_KEEP);
    }
    Ok(())
}
