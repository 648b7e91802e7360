//! A parked allocation racing each event that must wake it, on the real `WaitList` through
//! `fs_core::sync`. Under `--cfg loom` every interleaving (up to the preemption bound CI sets)
//! is checked; in a normal build the same bodies run once on real threads.
//!
//! Invariants:
//! - no wake-up is lost: whether the event comes before the waiter sleeps or after, the wait
//!   ends (a lost one is a deadlock, which loom reports);
//! - a woken fixed-profile waiter sees the new options generation;
//! - a free on a device the request cannot use does not end its wait;
//! - emergency read-only ends every wait in v1.39 and fixed.
//!
//! The last two are also checked through the wiring a mount uses (`WaitList::wired`): the real
//! `LiveOpts::set` and `FsHealth::fatal` racing the waiter, not calls on the list.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

use allocator::{Clock, WaitList, Wake};
use fs_core::error::{ErrCode, Error};
use fs_core::health::FsHealth;
use fs_core::opts::{Behavior, LiveOpts, OptId, OptValue, Options};
use fs_core::sync::{Arc, model, thread};

/// Parks a request on devices 0 and 1 (refused before `event` runs), runs `event` on another
/// thread, and returns how the wait ended.
fn race(behavior: Behavior, event: fn(&WaitList)) -> Wake {
    let list = Arc::new(WaitList::new(3, 1, Clock::Manual));
    let ticket = list.ticket();
    let notifier = {
        let list = list.clone();
        thread::spawn(move || event(&list))
    };
    let wake = list.wait(&ticket, &[0, 1], Duration::MAX, behavior);
    notifier.join().unwrap();
    wake
}

#[test]
fn an_option_change_wakes_with_the_new_generation() {
    model(|| {
        assert_eq!(race(Behavior::Fixed, |l| l.options_changed(2)), Wake::Options { generation: 2 });
    });
}

#[test]
fn a_free_on_a_usable_device_wakes_and_one_elsewhere_does_not() {
    model(|| {
        let wake = race(Behavior::Fixed, |l| {
            l.buckets_freed(2);
            l.buckets_freed(1);
        });
        assert_eq!(wake, Wake::Buckets { dev: 1 });
    });
}

#[test]
fn emergency_read_only_ends_the_wait_in_v1_39_and_fixed() {
    model(|| {
        for behavior in [Behavior::V1_39, Behavior::Fixed] {
            assert_eq!(race(behavior, WaitList::emergency_ro), Wake::EmergencyRo);
        }
    });
}

/// `set-fs-option --metadata_replicas=1` on a running mount, through the live options, races a
/// fixed-profile waiter: the wait ends, and what the woken waiter reads from the live options is
/// the new value, at a generation no older than the one it woke with.
#[test]
fn a_live_option_set_wakes_a_waiter_that_sees_it() {
    model(|| {
        let live = Arc::new(LiveOpts::new(Options::default()));
        let health = FsHealth::new();
        let list = WaitList::wired(&live, &health, 2, Clock::Manual);
        let ticket = list.ticket();
        let setter = {
            let live = live.clone();
            thread::spawn(move || live.set(OptId::MetadataReplicas, OptValue::U64(3)).unwrap())
        };
        let wake = list.wait(&ticket, &[0, 1], Duration::MAX, Behavior::Fixed);
        let Wake::Options { generation } = wake else { panic!("woke with {wake:?}") };
        let (opts, now) = live.snapshot();
        assert!(now >= generation, "woke at generation {generation}, options at {now}");
        assert_eq!(opts.metadata_replicas(), 3);
        setter.join().unwrap();
    });
}

/// A fatal error sending the filesystem emergency read-only, through its health state, ends a
/// parked wait in v1.39 and fixed, whether it comes before the waiter sleeps or after.
#[test]
fn a_fatal_error_ends_the_wait_through_health() {
    model(|| {
        for behavior in [Behavior::V1_39, Behavior::Fixed] {
            let live = Arc::new(LiveOpts::new(Options::default()));
            let health = Arc::new(FsHealth::new());
            let list = WaitList::wired(&live, &health, 2, Clock::Manual);
            let ticket = list.ticket();
            let failer = {
                let health = health.clone();
                thread::spawn(move || {
                    health.fatal(&Error::new(ErrCode::Eio, "a background worker failed"));
                })
            };
            assert_eq!(list.wait(&ticket, &[0, 1], Duration::MAX, behavior), Wake::EmergencyRo);
            failer.join().unwrap();
        }
    });
}
