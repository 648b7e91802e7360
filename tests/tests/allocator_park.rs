//! A btree update blocked on the allocator parks on the wait list of a running mount, and what
//! wakes it, per behaviour profile (see `bcsim::fs::alloc_wait`):
//!
//! - fixed: an option change rebuilds the request, so `metadata_replicas=1` lets it go on;
//! - v1.37.5: an option change wakes it, but it keeps the replica count it was built with and
//!   parks again (#1108's chicken-and-egg); only freed buckets on its devices move it;
//! - emergency read-only ends the wait in v1.39 (with the update's own error) and in fixed
//!   (with EROFS);
//! - the stuck report comes at the timeout, on a manual clock: no test sleeps.
//!
//! The blocked state is made by draining one of two devices with `metadata_replicas=2`: every
//! bucket of `hdd.b` is taken through the allocator at the highest watermark, as data, and kept.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use allocator::{AllocRequest, Watermark};
use bcsim::fs::Fs;
use bcsim::recovery::{MountOpts, mount_with};
use fs_core::bkey::{Bkey, DataType, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::BtreeConfig;
use fs_core::dev::{MemDevice, SharedDevice};
use fs_core::error::{ErrCode, Error, Result};
use fs_core::format::{DeviceSpec, format};
use fs_core::opts::{Behavior, OptId, OptValue, Options};
use fs_core::sb::DeviceSet;

const DEV_BYTES: u64 = 8 << 20;
const BUCKET: u64 = 64 << 10;

/// Two devices, `ssd.a` and `hdd.b`, `metadata_replicas=2`, 16 KiB nodes, in `behavior`,
/// mounted with a manual wait-list clock; every bucket of `hdd.b` is then taken and kept
/// (returned, so the test can give them back).
fn blocked_fs(behavior: Behavior) -> (Fs, Vec<u64>) {
    let devs: Vec<SharedDevice> =
        (0..2).map(|i| Arc::new(MemDevice::new(format!("mem{i}"), DEV_BYTES)) as SharedDevice).collect();
    let mut opts = Options::default();
    opts.set(OptId::BtreeNodeSize, OptValue::U64(16 << 10)).unwrap();
    opts.set(OptId::MetadataReplicas, OptValue::U64(2)).unwrap();
    opts.set(OptId::Behavior, OptValue::U64(behavior as u64)).unwrap();
    let specs: Vec<DeviceSpec> = devs
        .iter()
        .zip(["ssd.a", "hdd.b"])
        .map(|(d, label)| DeviceSpec {
            bucket_size: Some(BUCKET),
            label: label.to_owned(),
            ..DeviceSpec::new(d.clone())
        })
        .collect();
    format(&specs, &opts, None).unwrap();
    let mopts = MountOpts { manual_wait_clock: true, ..MountOpts::default() };
    let cfg = BtreeConfig { cache_nodes: 64, ..Default::default() };
    let fs = mount_with(DeviceSet::open(devs).unwrap(), &mopts, cfg).unwrap().fs;
    assert_eq!(fs.options().behavior(), behavior);
    let alloc = fs.alloc().unwrap().clone();
    let req = AllocRequest {
        nr_replicas: 1,
        target: "hdd.b".to_owned(),
        data_type: DataType::User,
        watermark: Watermark::InteriorUpdates,
    };
    let mut taken = Vec::new();
    loop {
        let got = alloc.alloc_buckets(&req).unwrap();
        let b = got[0];
        if b.dev != 1 {
            // hdd.b is empty: placement fell back to the other device.
            alloc.release_bucket(b.dev, b.bucket).unwrap();
            break;
        }
        taken.push(b.bucket);
    }
    assert!(taken.len() > 10, "drained only {} buckets", taken.len());
    (fs, taken)
}

/// Commits transactions of 200 inode keys until `n` have committed: enough splits that node
/// allocation soon needs a bucket on the drained device.
fn writer(fs: &Fs, n: usize, done: &AtomicBool) -> Result<()> {
    let r = (0..n).try_for_each(|t| {
        let keys = (0..200u64)
            .map(|i| Bkey::new(Bpos::new(0, (t as u64) * 200 + i + 4096, 0), KeyType::Set, Vec::new()));
        fs.commit(BtreeId::Inodes, keys).map(|_| ())
    });
    done.store(true, Ordering::SeqCst);
    r
}

/// Waits, by yielding, until the writer is parked (`parked` times in all, counted by the log
/// lines), or panics if it finished instead.
fn until_parked(fs: &Fs, done: &AtomicBool) {
    let waits = fs.shared().waits().unwrap();
    let watchdog = Watchdog::new("the writer to park");
    while waits.parked() == 0 {
        watchdog.check();
        assert!(!done.load(Ordering::SeqCst), "the writer never parked: {:?}", fs.shared().events());
        std::thread::yield_now();
    }
}

/// Waits, by yielding, until a line containing `want` is logged; panics if the writer finished
/// first or a line containing `forbidden` is logged.
fn until_logged(fs: &Fs, done: &AtomicBool, want: &str, forbidden: &str) {
    let watchdog = Watchdog::new(want);
    loop {
        watchdog.check();
        let events = fs.shared().events();
        if events.iter().any(|l| l.contains(want)) {
            return;
        }
        assert!(!events.iter().any(|l| l.contains(forbidden)), "logged '{forbidden}': {events:?}");
        assert!(!done.load(Ordering::SeqCst), "the writer finished before logging '{want}': {events:?}");
        std::thread::yield_now();
    }
}

const TRANSACTIONS: usize = 60;

/// Turns a wait that would never end (the code under test broken) into a failure. Not a timing
/// check: every wait here ends in microseconds when the code works.
struct Watchdog {
    what: String,
    since: std::time::Instant,
}

impl Watchdog {
    const LIMIT: Duration = Duration::from_secs(120);

    fn new(what: &str) -> Watchdog {
        Watchdog { what: what.to_owned(), since: std::time::Instant::now() }
    }

    fn check(&self) {
        assert!(self.since.elapsed() < Self::LIMIT, "watchdog: waited {:?} for {}", Self::LIMIT, self.what);
    }
}

/// The writer on a thread of its own, not a scoped one: a test that fails while the writer is
/// parked must end, not wait for it.
fn spawn_writer(fs: &Arc<Fs>, done: &Arc<AtomicBool>) -> std::thread::JoinHandle<Result<()>> {
    let (fs, done) = (fs.clone(), done.clone());
    std::thread::spawn(move || writer(&fs, TRANSACTIONS, &done))
}

/// The filesystem back from the writer's share, to unmount.
fn owned(fs: Arc<Fs>) -> Fs {
    Arc::try_unwrap(fs).ok().expect("the writer still holds the filesystem")
}

/// fixed: the parked update wakes on `metadata_replicas=1` and is rebuilt with it; every
/// transaction commits.
#[test]
fn fixed_rebuilds_the_request_when_replicas_change() {
    let (fs, _taken) = blocked_fs(Behavior::Fixed);
    let (fs, done) = (Arc::new(fs), Arc::new(AtomicBool::new(false)));
    {
        let w = spawn_writer(&fs, &done);
        until_parked(&fs, &done);
        fs.opts().set(OptId::MetadataReplicas, OptValue::U64(1)).unwrap();
        until_logged(&fs, &done, "retrying with metadata_replicas=1", "keeps metadata_replicas");
        w.join().unwrap().unwrap();
    }
    owned(fs).unmount().unwrap();
}

/// v1.37.5: the option change wakes the update, which keeps `metadata_replicas=2` and parks
/// again; buckets given back on the drained device then let it go on.
#[test]
fn v1_37_5_keeps_its_request_until_buckets_free() {
    let (fs, taken) = blocked_fs(Behavior::V1_37_5);
    let (fs, done) = (Arc::new(fs), Arc::new(AtomicBool::new(false)));
    {
        let w = spawn_writer(&fs, &done);
        until_parked(&fs, &done);
        fs.opts().set(OptId::MetadataReplicas, OptValue::U64(1)).unwrap();
        until_logged(&fs, &done, "keeps metadata_replicas=2", "retrying with metadata_replicas=1");
        until_parked(&fs, &done);
        assert!(!done.load(Ordering::SeqCst), "the option change moved a v1.37.5 request");
        let alloc = fs.alloc().unwrap();
        for &b in &taken {
            alloc.release_bucket(1, b).unwrap();
        }
        fs.shared().waits().unwrap().buckets_freed(1);
        w.join().unwrap().unwrap();
    }
    owned(fs).unmount().unwrap();
}

/// Emergency read-only ends the wait: v1.39 with the update's own error, fixed with EROFS.
#[test]
fn emergency_ro_ends_the_wait_in_v1_39_and_fixed() {
    for (behavior, want) in [(Behavior::V1_39, ErrCode::OperationBlocked), (Behavior::Fixed, ErrCode::Erofs)]
    {
        let (fs, _taken) = blocked_fs(behavior);
        let (fs, done) = (Arc::new(fs), Arc::new(AtomicBool::new(false)));
        let err = {
            let w = spawn_writer(&fs, &done);
            until_parked(&fs, &done);
            fs.health().fatal(&Error::new(ErrCode::Eio, "injected: a background worker failed"));
            w.join().unwrap().unwrap_err()
        };
        assert!(err.matches(want), "{behavior:?}: {err}");
        owned(fs).unmount().unwrap_err();
    }
}

/// The stuck report comes when the timeout passes on the wait list's clock, names the devices
/// with their free and need_discard buckets and the request; fixed repeats it at every timeout
/// with what changed since the last.
#[test]
fn stuck_report_at_the_timeout() {
    let (fs, _taken) = blocked_fs(Behavior::Fixed);
    let (fs, done) = (Arc::new(fs), Arc::new(AtomicBool::new(false)));
    {
        let w = spawn_writer(&fs, &done);
        until_parked(&fs, &done);
        let waits = fs.shared().waits().unwrap();
        waits.advance_to(waits.elapsed() + Duration::from_secs(31));
        until_logged(&fs, &done, "Allocator stuck? Waited for", "buckets freed on dev");
        waits.advance_to(waits.elapsed() + Duration::from_secs(31));
        until_logged(&fs, &done, "since the last report: nothing changed", "buckets freed on dev");
        fs.opts().set(OptId::MetadataReplicas, OptValue::U64(1)).unwrap();
        until_logged(&fs, &done, "retrying with metadata_replicas=1", "keeps metadata_replicas");
        w.join().unwrap().unwrap();
    }
    let events = fs.shared().events();
    let report: Vec<&String> = events.iter().skip_while(|l| !l.starts_with("Allocator stuck?")).collect();
    assert!(report[0].contains("err bucket_alloc_blocked"), "{report:?}");
    assert!(report.iter().any(|l| l.contains("dev 1 (hdd.b)") && l.contains("free 0")), "{report:?}");
    assert!(
        report.iter().any(|l| l.contains("request: replicas 2") && l.contains("data_type btree")),
        "{report:?}"
    );
    owned(fs).unmount().unwrap();
}

/// fixed: the discard workers unblock a parked update. The drained device's buckets are
/// written and emptied (need_discard, emptied at a durable seq); the worker of that device
/// discards all but its rewind buffer (4 % of its capacity), wakes the update parked on it, and
/// the update goes on with `metadata_replicas=2`, which no option change was needed for.
#[test]
fn discard_workers_unblock_a_parked_update() {
    let (fs, taken) = blocked_fs(Behavior::Fixed);
    let (fs, done) = (Arc::new(fs), Arc::new(AtomicBool::new(false)));
    let w = spawn_writer(&fs, &done);
    until_parked(&fs, &done);
    let alloc = fs.alloc().unwrap();
    let seq = fs.journal().unwrap().flushed_seq();
    for &b in &taken {
        alloc.add_sectors(1, b, DataType::User, 8, seq).unwrap();
        alloc.add_sectors(1, b, DataType::User, -8, seq).unwrap();
    }
    until_logged(&fs, &done, "discard: dev 1:", "options changed");
    w.join().unwrap().unwrap();
    let events = fs.shared().events();
    assert!(events.iter().any(|l| l.contains("buckets freed on dev 1: retrying")), "{events:?}");
    // 4 % of 127 buckets of 64 KiB: 5 buckets kept back.
    assert!(alloc.dev_usage(1).unwrap().need_discard <= 5, "{:?}", alloc.dev_usage(1));
    owned(fs).unmount().unwrap();
}
