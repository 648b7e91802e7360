//! The wait list: where a refused allocation (`bucket_alloc_blocked`) parks until something
//! could change the answer.
//!
//! A request that cannot be met takes a [`Ticket`] under the allocator's lock — what it saw: the
//! per-device counts of buckets freed or discarded, the live options' generation, the time — and
//! parks with it. It wakes ([`Wake`]) on anything newer than its ticket:
//!
//! - buckets freed or discarded on a device it can use (a per-device counter, so a free on a
//!   device it cannot use does not wake it);
//! - a change of the live options (their generation), which the caller follows by rebuilding
//!   the request or not, as its profile says;
//! - emergency read-only, which ends the wait in v1.39 and fixed; v1.37.5 stays parked, as
//!   the kernel did;
//! - its stuck timeout, after which the caller prints the stuck report and decides whether to
//!   wait again.
//!
//! Every event is recorded under the list's lock before the waiters are notified, and a waiter
//! compares with its ticket under that lock before it sleeps: a wake-up is never lost, whichever
//! comes first. Time comes from the list's [`Clock`]: real time, or a manual clock that moves
//! only when its owner says ([`WaitList::advance_to`]), so tests and reproducible runs never
//! sleep.

use std::time::{Duration, Instant};

use fs_core::health::FsHealth;
use fs_core::opts::{Behavior, LiveOpts};
use fs_core::sync::{Arc, Condvar, Mutex};

/// Why a parked request woke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Buckets were freed or discarded on a device the request can use.
    Buckets { dev: u8 },
    /// The live options changed: this is their generation now.
    Options { generation: u64 },
    /// The filesystem went emergency read-only.
    EmergencyRo,
    /// The timeout passed with nothing new.
    Timeout,
}

/// The wait list's time.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// Real time since the given instant.
    Real(Instant),
    /// Time that moves only by [`WaitList::advance_to`].
    Manual,
}

/// What a refused request saw: it wakes on anything newer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    freed: Vec<u64>,
    generation: u64,
    at: Duration,
}

impl Ticket {
    /// When it was taken, on the wait list's clock: the moment the request was refused.
    pub fn at(&self) -> Duration {
        self.at
    }

    /// The options generation the request was built from.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

#[derive(Debug)]
struct State {
    /// Per device, buckets freed or discarded so far.
    freed: Vec<u64>,
    generation: u64,
    emergency_ro: bool,
    /// The manual clock's time.
    now: Duration,
    parked: usize,
}

/// The allocator's wait list.
#[derive(Debug)]
pub struct WaitList {
    clock: Clock,
    state: Mutex<State>,
    cond: Condvar,
}

impl WaitList {
    /// A list for `nr_devs` devices, with the live options at `generation`.
    pub fn new(nr_devs: usize, generation: u64, clock: Clock) -> WaitList {
        let state = State {
            freed: vec![0; nr_devs],
            generation,
            emergency_ro: false,
            now: Duration::ZERO,
            parked: 0,
        };
        WaitList { clock, state: Mutex::new(state), cond: Condvar::new() }
    }

    /// The list's time: since its creation (real clock), or as last advanced (manual).
    pub fn elapsed(&self) -> Duration {
        let st = self.state.lock();
        self.now(&st)
    }

    /// The wait list of a filesystem with these live options and health: every change of the
    /// options, and emergency read-only, wakes the requests parked on it. This is how a mount
    /// wires it.
    pub fn wired(opts: &Arc<LiveOpts>, health: &FsHealth, nr_devs: usize, clock: Clock) -> Arc<WaitList> {
        let w = Arc::new(WaitList::new(nr_devs, opts.generation(), clock));
        let (w2, weak_opts) = (w.clone(), Arc::downgrade(opts));
        opts.subscribe(move |_, _| {
            if let Some(o) = weak_opts.upgrade() {
                w2.options_changed(o.generation());
            }
        });
        let w3 = w.clone();
        health.on_emergency_ro(move |_| w3.emergency_ro());
        w
    }

    fn now(&self, st: &State) -> Duration {
        match self.clock {
            Clock::Real(base) => base.elapsed(),
            Clock::Manual => st.now,
        }
    }

    /// What a request refused now has seen. Take it before the attempt whose refusal then
    /// waits on it (or under the lock that refused the request), so that nothing that happens
    /// after the refusal is missed.
    pub fn ticket(&self) -> Ticket {
        let st = self.state.lock();
        Ticket { freed: st.freed.clone(), generation: st.generation, at: self.now(&st) }
    }

    /// Parks until something newer than `ticket` happens that concerns a request on `devs`, or
    /// `timeout` after the ticket was taken (`Duration::MAX`: never). `behavior` decides whether
    /// emergency read-only ends the wait (not in v1.37.5).
    pub fn wait(&self, ticket: &Ticket, devs: &[u8], timeout: Duration, behavior: Behavior) -> Wake {
        let deadline = ticket.at.checked_add(timeout);
        let mut st = self.state.lock();
        st.parked += 1;
        let wake = loop {
            if st.emergency_ro && behavior != Behavior::V1_37_5 {
                break Wake::EmergencyRo;
            }
            if st.generation != ticket.generation {
                break Wake::Options { generation: st.generation };
            }
            let freed = devs.iter().copied().find(|&d| {
                let i = usize::from(d);
                st.freed.get(i).copied().unwrap_or(0) > ticket.freed.get(i).copied().unwrap_or(0)
            });
            if let Some(dev) = freed {
                break Wake::Buckets { dev };
            }
            let now = self.now(&st);
            match (deadline, self.clock) {
                (Some(d), _) if now >= d => break Wake::Timeout,
                (Some(d), Clock::Real(_)) => st = self.cond.wait_timeout(st, d - now).0,
                _ => st = self.cond.wait(st),
            }
        };
        st.parked -= 1;
        wake
    }

    /// Buckets were freed or discarded on `dev`.
    pub fn buckets_freed(&self, dev: u8) {
        let mut st = self.state.lock();
        if let Some(n) = st.freed.get_mut(usize::from(dev)) {
            *n += 1;
        }
        drop(st);
        self.cond.notify_all();
    }

    /// The live options changed; `generation` is theirs now.
    pub fn options_changed(&self, generation: u64) {
        self.state.lock().generation = generation;
        self.cond.notify_all();
    }

    /// The filesystem went emergency read-only.
    pub fn emergency_ro(&self) {
        self.state.lock().emergency_ro = true;
        self.cond.notify_all();
    }

    /// The manual clock moves to `now` (never back); timed waits that are due return.
    pub fn advance_to(&self, now: Duration) {
        let mut st = self.state.lock();
        st.now = st.now.max(now);
        drop(st);
        self.cond.notify_all();
    }

    /// Requests parked now.
    pub fn parked(&self) -> usize {
        self.state.lock().parked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fs_core::sync::{Arc, thread};

    /// Each event wakes a request parked before it, with its reason; a free on a device the
    /// request cannot use does not; the manual clock's timeout fires only when moved past the
    /// deadline. Threads, no sleeps: the main thread waits for the waiter to park.
    #[test]
    fn each_event_wakes_with_its_reason() {
        type Event = fn(&WaitList);
        let cases: [(Event, Wake); 4] = [
            (|w| w.buckets_freed(2), Wake::Buckets { dev: 2 }),
            (|w| w.options_changed(8), Wake::Options { generation: 8 }),
            (WaitList::emergency_ro, Wake::EmergencyRo),
            (|w| w.advance_to(Duration::from_secs(31)), Wake::Timeout),
        ];
        for (event, want) in cases {
            let list = Arc::new(WaitList::new(4, 7, Clock::Manual));
            let ticket = list.ticket();
            let waiter = {
                let list = list.clone();
                thread::spawn(move || list.wait(&ticket, &[1, 2], Duration::from_secs(30), Behavior::Fixed))
            };
            while list.parked() == 0 {
                thread::yield_now();
            }
            // Not for this request: a free elsewhere, and time short of the deadline.
            list.buckets_freed(3);
            list.advance_to(Duration::from_secs(29));
            event(&list);
            assert_eq!(waiter.join().unwrap(), want);
        }
    }

    /// v1.37.5 ignores emergency read-only: only something else ends its wait.
    #[test]
    fn v1_37_5_stays_parked_through_emergency_ro() {
        let list = WaitList::new(1, 0, Clock::Manual);
        let ticket = list.ticket();
        list.emergency_ro();
        list.options_changed(1);
        assert_eq!(
            list.wait(&ticket, &[0], Duration::MAX, Behavior::V1_37_5),
            Wake::Options { generation: 1 }
        );
        assert_eq!(list.wait(&ticket, &[0], Duration::MAX, Behavior::V1_39), Wake::EmergencyRo);
    }

    /// An event before the wait begins still wakes it: the ticket remembers what was seen.
    #[test]
    fn an_event_before_the_wait_is_not_lost() {
        let list = WaitList::new(2, 0, Clock::Real(Instant::now()));
        let ticket = list.ticket();
        list.buckets_freed(1);
        assert_eq!(list.wait(&ticket, &[1], Duration::MAX, Behavior::Fixed), Wake::Buckets { dev: 1 });
        assert_eq!(list.wait(&list.ticket(), &[1], Duration::ZERO, Behavior::Fixed), Wake::Timeout);
    }
}
