//! The sync shim and the live options handle: a condition-variable hand-off never loses a
//! wake-up, lock-protected and atomic increments are never lost, and a waiter on an option
//! change always wakes. Under `--cfg loom` every interleaving is checked (a lost wake-up is a
//! loom deadlock); in a normal build the same bodies run once on real threads.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

use fs_core::opts::{LiveOpts, OptId, OptValue, Options};
use fs_core::sync::{Arc, AtomicUsize, Condvar, Mutex, Ordering, RwLock, model, thread};

#[test]
fn condvar_handoff_never_loses_a_wakeup() {
    model(|| {
        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let p2 = pair.clone();
        let t = thread::spawn(move || {
            let (m, c) = &*p2;
            *m.lock() = true;
            c.notify_one();
        });
        let (m, c) = &*pair;
        let mut ready = m.lock();
        while !*ready {
            ready = c.wait(ready);
        }
        drop(ready);
        t.join().unwrap();
    });
}

#[test]
fn increments_are_not_lost() {
    model(|| {
        let locked = Arc::new(Mutex::new(0u32));
        let atomic = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(RwLock::new(0u32));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (l, a, s) = (locked.clone(), atomic.clone(), shared.clone());
                thread::spawn(move || {
                    *l.lock() += 1;
                    a.fetch_add(1, Ordering::SeqCst);
                    *s.write() += 1;
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(*locked.lock(), 2);
        assert_eq!(atomic.load(Ordering::SeqCst), 2);
        assert_eq!(*shared.read(), 2);
    });
}

#[test]
fn option_change_wakes_a_waiter() {
    model(|| {
        let live = Arc::new(LiveOpts::new(Options::default()));
        let g0 = live.generation();
        let waiter = {
            let live = live.clone();
            thread::spawn(move || live.wait_for_change(g0, Duration::from_secs(3600)))
        };
        live.set(OptId::MetadataReplicas, OptValue::U64(1)).unwrap();
        assert_eq!(waiter.join().unwrap(), g0 + 1);
    });
}
