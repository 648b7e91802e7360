//! The health of a filesystem: the first error it hit, and the emergency read-only state that
//! every part of a running mount observes.
//!
//! A fatal error — a failed flush, a failed undo, an allocator that contradicts itself, a
//! background worker that fails — makes the filesystem emergency read-only, once: the first
//! fatal error is kept and never replaced by a later one (an error raised while cleaning up
//! must not hide the one that started it). Going read-only wakes everything that waits on the
//! health state and runs the hooks the parts of the filesystem registered (the journal shuts
//! down, allocator waiters wake and fail). Non-fatal errors worth naming later — a topology
//! error the profile lets the filesystem run on with — are noted, the first one kept.
//!
//! bcachefs keeps these as `BCH_FS_emergency_ro` and `BCH_FS_topology_error` bits in `c->flags`;
//! the message `bch2_fs_emergency_read_only()` logs is what [`FsHealth::emergency_ro_error`]
//! gives callers.

use std::fmt;
use std::time::Duration;

use crate::error::{ErrCode, Error, Result};
use crate::opts::ErrorAction;
use crate::sync::{AtomicBool, AtomicU32, Condvar, Mutex, Ordering};

/// An error as the health state keeps it: its code and its one-line text (an [`Error`] is not
/// `Clone`, and what is kept is what gets reported).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorRecord {
    pub code: ErrCode,
    pub text: String,
}

impl ErrorRecord {
    pub fn of(err: &Error) -> Self {
        ErrorRecord { code: err.code(), text: err.to_string() }
    }
}

impl fmt::Display for ErrorRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

type Hook = Box<dyn Fn(&ErrorRecord) + Send + Sync>;

#[derive(Default)]
struct HealthState {
    /// The fatal error that made the filesystem read-only; `Some` exactly when it is.
    emergency_ro: Option<ErrorRecord>,
    /// The first non-fatal error noted.
    first_noted: Option<ErrorRecord>,
    /// Fatal errors reported, the first included.
    nr_fatal: u64,
}

/// Shared by every part of a mounted filesystem (`Arc<FsHealth>`).
#[derive(Default)]
pub struct FsHealth {
    /// Mirrors `state.emergency_ro.is_some()` for checks on hot paths.
    ro: AtomicBool,
    /// Recovery is over: filesystem errors follow `errors=` from now on.
    running: AtomicBool,
    /// `errors=`: 0 continue, 1 ro (the option's own numbering).
    errors: AtomicU32,
    state: Mutex<HealthState>,
    changed: Condvar,
    hooks: Mutex<Vec<Hook>>,
}

impl FsHealth {
    pub fn new() -> Self {
        FsHealth::default()
    }

    pub fn is_emergency_ro(&self) -> bool {
        self.ro.load(Ordering::Acquire)
    }

    /// Reports a fatal error: the filesystem goes emergency read-only, unless it already is;
    /// the first fatal error is the one kept. Returns true if this call made it read-only.
    pub fn fatal(&self, err: &Error) -> bool {
        let record = ErrorRecord::of(err);
        let first = {
            let mut st = self.state.lock();
            st.nr_fatal += 1;
            if st.emergency_ro.is_some() {
                false
            } else {
                st.emergency_ro = Some(record.clone());
                self.ro.store(true, Ordering::Release);
                true
            }
        };
        if first {
            self.changed.notify_all();
            // Hooks run outside the state lock: they take locks of their own (the journal's,
            // the allocator's) and may read the health state.
            for hook in self.hooks.lock().iter() {
                hook(&record);
            }
        }
        first
    }

    /// Notes a non-fatal error to be named later (the first one is kept).
    pub fn note(&self, err: &Error) {
        self.state.lock().first_noted.get_or_insert_with(|| ErrorRecord::of(err));
    }

    /// Sets what a filesystem error does once recovery is over (`errors=`). `fix_safe` acts as
    /// `ro` here, as in bcachefs's `bch2_inconsistent_error`: what it adds concerns fsck errors,
    /// which the recovery passes handle.
    pub fn set_error_action(&self, action: ErrorAction) {
        self.errors.store(if action == ErrorAction::Continue { 0 } else { 1 }, Ordering::Release);
    }

    /// Recovery is over: from now on filesystem errors follow `errors=`. During recovery they
    /// are only noted: recovery's passes decide what to do about them (bcachefs schedules
    /// check_topology then).
    pub fn set_running(&self) {
        self.running.store(true, Ordering::Release);
    }

    /// A filesystem error (`bch2_fs_error`): noted, and with `errors=ro` or `fix_safe` on a running
    /// filesystem, emergency read-only. Returns true if the filesystem is read-only now.
    pub fn fs_error(&self, err: &Error) -> bool {
        self.note(err);
        if self.running.load(Ordering::Acquire) && self.errors.load(Ordering::Acquire) == 1 {
            self.fatal(err);
        }
        self.is_emergency_ro()
    }

    /// The fatal error that made the filesystem read-only.
    pub fn emergency_ro_cause(&self) -> Option<ErrorRecord> {
        self.state.lock().emergency_ro.clone()
    }

    /// The first non-fatal error noted.
    pub fn first_noted(&self) -> Option<ErrorRecord> {
        self.state.lock().first_noted.clone()
    }

    /// Fatal errors reported so far, the first included.
    pub fn nr_fatal(&self) -> u64 {
        self.state.lock().nr_fatal
    }

    /// `Ok` while the filesystem may write; otherwise the `emergency_ro` error naming its cause.
    pub fn check_rw(&self) -> Result<()> {
        if !self.is_emergency_ro() {
            return Ok(());
        }
        Err(self.emergency_ro_error())
    }

    /// The error operations fail with once the filesystem is emergency read-only.
    pub fn emergency_ro_error(&self) -> Error {
        let cause = self.emergency_ro_cause().map_or_else(|| "unknown cause".to_owned(), |r| r.text);
        Error::new(ErrCode::EmergencyRo, format!("filesystem is emergency read-only after: {cause}"))
    }

    /// Registers `hook` to run once when the filesystem goes emergency read-only (at once, if
    /// it already is).
    pub fn on_emergency_ro(&self, hook: impl Fn(&ErrorRecord) + Send + Sync + 'static) {
        if let Some(cause) = self.emergency_ro_cause() {
            hook(&cause);
            return;
        }
        self.hooks.lock().push(Box::new(hook));
        // Went read-only between the check and the push: the hooks may already have run.
        if let Some(cause) = self.emergency_ro_cause() {
            if let Some(h) = self.hooks.lock().pop() {
                h(&cause);
            }
        }
    }

    /// Waits until the filesystem is emergency read-only or `timeout` passes; true if it is.
    pub fn wait_emergency_ro(&self, timeout: Duration) -> bool {
        let mut st = self.state.lock();
        if st.emergency_ro.is_none() {
            let (guard, _) = self.changed.wait_timeout(st, timeout);
            st = guard;
        }
        st.emergency_ro.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{Arc, AtomicU64};

    /// The first fatal error is kept; later ones are counted but never replace it; hooks run
    /// exactly once; every later check fails naming the first error.
    #[test]
    fn first_fatal_error_is_kept_and_hooks_run_once() {
        let h = FsHealth::new();
        let runs = Arc::new(AtomicU64::new(0));
        let r = runs.clone();
        h.on_emergency_ro(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        });
        assert!(h.check_rw().is_ok());
        assert!(h.fatal(&Error::new(ErrCode::IoWrite, "first")));
        assert!(!h.fatal(&Error::new(ErrCode::Internal, "second")));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(h.nr_fatal(), 2);
        let cause = h.emergency_ro_cause().unwrap();
        assert_eq!(cause.code, ErrCode::IoWrite);
        let e = h.check_rw().err().map(|e| (e.code(), e.to_string()));
        assert!(matches!(&e, Some((ErrCode::EmergencyRo, t)) if t.contains("first")), "{e:?}");
        // A hook registered after the fact runs at once.
        let late = Arc::new(AtomicU64::new(0));
        let l = late.clone();
        h.on_emergency_ro(move |_| {
            l.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(late.load(Ordering::SeqCst), 1);
        assert!(h.wait_emergency_ro(Duration::ZERO));
    }

    /// Noted errors never make the filesystem read-only, and the first one is kept.
    #[test]
    fn noted_errors_are_kept_not_fatal() {
        let h = FsHealth::new();
        h.note(&Error::new(ErrCode::BtreeNeedTopologyRepair, "bad header"));
        h.note(&Error::new(ErrCode::Eio, "later"));
        assert!(!h.is_emergency_ro());
        assert_eq!(h.first_noted().map(|r| r.code), Some(ErrCode::BtreeNeedTopologyRepair));
        assert!(!h.wait_emergency_ro(Duration::ZERO));
    }
}
