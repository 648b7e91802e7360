//! Journal pins and reservations: reclaim flushes pins oldest first (those that write back in
//! bulk last) through their owners' callbacks and so advances `last_seq`; a failing callback makes the filesystem emergency
//! read-only and keeps its pin; a callback that keeps its pin is an internal error; nothing at
//! or past the replay barrier is flushed; an entry is never written while a reservation on it is
//! outstanding; a leaked pin is caught by a debug assertion.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fs_core::bkey::{Bkey, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::dev::{MemDevice, SharedDevice};
use fs_core::error::{ErrCode, Error, Result};
use fs_core::health::FsHealth;
use fs_core::opts::{LiveOpts, Options};
use fs_core::sync::Mutex;
use journal::{Journal, JournalConfig, JournalPin, JournalWatermark, JsetEntry, PinFlush, Ring};

const BUCKET: u64 = 64 << 10;

fn journal(health: Arc<FsHealth>) -> Journal {
    journal_at(health, 1)
}

/// A one-ring journal whose first entry gets `first_seq`.
fn journal_at(health: Arc<FsHealth>, first_seq: u64) -> Journal {
    let dev: SharedDevice = Arc::new(MemDevice::new("mem0", 4 << 20));
    let ring = Ring::empty(0, dev, BUCKET, (1..=8).collect()).unwrap();
    let cfg = JournalConfig {
        magic: 0xabc,
        block_size: 4096,
        max_entry_bytes: 16 << 10,
        labels: BTreeMap::new(),
        durability: BTreeMap::new(),
        preflush: Vec::new(),
    };
    Journal::new(vec![ring], cfg, first_seq, Arc::new(LiveOpts::new(Options::default())), health).unwrap()
}

fn keys(n: u64) -> Vec<JsetEntry> {
    vec![JsetEntry::BtreeKeys {
        btree: BtreeId::Extents,
        level: 0,
        keys: (0..n).map(|i| Bkey::new(Bpos::new(1, i, 0), KeyType::Set, vec![1; 8])).collect(),
    }]
}

/// What an owner's callback does when reclaim calls it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnFlush {
    Release,
    Fail,
    KeepPin,
}

/// A pin owner recording the order its callbacks ran in.
struct Owner {
    pin: Mutex<Option<JournalPin>>,
    on_flush: OnFlush,
    log: Arc<Mutex<Vec<u64>>>,
    /// Says it writes back in bulk ([`PinFlush::bulk`]).
    bulk: bool,
}

impl PinFlush for Owner {
    fn flush_pin(&self, j: &Journal, seq: u64) -> Result<()> {
        self.log.lock().push(seq);
        match self.on_flush {
            OnFlush::Fail => Err(Error::new(ErrCode::IoWrite, "write-back failed")),
            OnFlush::KeepPin => Ok(()),
            OnFlush::Release => match self.pin.lock().take() {
                Some(p) => j.pin_drop(p),
                None => Err(Error::internal("flushed a pin it does not hold")),
            },
        }
    }
    fn name(&self) -> &'static str {
        "test owner"
    }
    fn bulk(&self) -> bool {
        self.bulk
    }
}

fn owner(j: &Journal, seq: u64, on_flush: OnFlush, log: &Arc<Mutex<Vec<u64>>>) -> Arc<Owner> {
    owner_of(j, seq, on_flush, log, false)
}

fn owner_of(j: &Journal, seq: u64, on_flush: OnFlush, log: &Arc<Mutex<Vec<u64>>>, bulk: bool) -> Arc<Owner> {
    let o = Arc::new(Owner { pin: Mutex::new(None), on_flush, log: log.clone(), bulk });
    *o.pin.lock() = Some(j.pin_add(seq, o.clone()).unwrap());
    o
}

/// Commits one small transaction and returns its seq, writing the entry so the next one opens.
/// Nothing pins it: pin it before the next entry is written (or hold last_seq with [`hold`]).
fn entry(j: &Journal) -> u64 {
    let seq = j.add(keys(4), JournalWatermark::Normal, Instant::now()).unwrap();
    j.flush().unwrap();
    seq
}

/// Holds last_seq at the open entry, so entries written from now on may be pinned in any order.
fn hold(j: &Journal) -> JournalPin {
    j.pin_add(j.seq(), Arc::new(journal::Unflushable("hold"))).unwrap()
}

/// `n` entries, each pinned by an owner that releases its pin when flushed, in seq order.
fn pinned_entries(j: &Journal, n: usize, log: &Arc<Mutex<Vec<u64>>>) -> (Vec<u64>, Vec<Arc<Owner>>) {
    let held = hold(j);
    let seqs: Vec<u64> = (0..n).map(|_| entry(j)).collect();
    let owners = seqs.iter().map(|&s| owner(j, s, OnFlush::Release, log)).collect();
    j.pin_drop(held).unwrap();
    (seqs, owners)
}

fn release(j: &Journal, o: &Owner) {
    if let Some(p) = o.pin.lock().take() {
        j.pin_drop(p).unwrap();
    }
}

#[test]
fn reclaim_flushes_oldest_first_and_advances_last_seq() {
    let j = journal(Arc::new(FsHealth::new()));
    let log = Arc::new(Mutex::new(Vec::new()));
    let held = hold(&j);
    let seqs: Vec<u64> = (0..4).map(|_| entry(&j)).collect();
    // Registered out of order: the flush order comes from the seqs.
    let owners: Vec<_> = [2, 0, 3, 1].iter().map(|&i| owner(&j, seqs[i], OnFlush::Release, &log)).collect();
    j.pin_drop(held).unwrap();
    assert_eq!(j.last_seq(), seqs[0]);
    assert_eq!(j.flush_pins(seqs[1]).unwrap(), 2);
    assert_eq!(*log.lock(), vec![seqs[0], seqs[1]]);
    assert_eq!(j.last_seq(), seqs[2], "last_seq is the oldest pin left");
    assert_eq!(j.flush_all_pins().unwrap(), 2);
    assert_eq!(j.last_seq(), j.seq(), "nothing pinned: last_seq is the open seq");
    assert!(owners.iter().all(|o| o.pin.lock().is_none()));
}

/// Rule 1: a pin that writes back in bulk goes after every other pin due, although its seq is
/// the oldest, so that one bulk write covers what the others dirty; it still goes before the
/// flush returns, and pins past `through` stay.
#[test]
fn a_bulk_pin_is_flushed_after_the_other_pins_due() {
    let j = journal(Arc::new(FsHealth::new()));
    let log = Arc::new(Mutex::new(Vec::new()));
    let held = hold(&j);
    let seqs: Vec<u64> = (0..4).map(|_| entry(&j)).collect();
    let bulk = owner_of(&j, seqs[0], OnFlush::Release, &log, true);
    let due: Vec<_> = [1, 2].iter().map(|&i| owner(&j, seqs[i], OnFlush::Release, &log)).collect();
    let later = owner(&j, seqs[3], OnFlush::Release, &log);
    j.pin_drop(held).unwrap();
    assert_eq!(j.flush_pins(seqs[2]).unwrap(), 3);
    assert_eq!(*log.lock(), vec![seqs[1], seqs[2], seqs[0]], "the bulk pin goes last");
    assert!(bulk.pin.lock().is_none() && due.iter().all(|o| o.pin.lock().is_none()));
    assert_eq!(j.last_seq(), seqs[3], "the pin past `through` stays");
    release(&j, &later);
}

/// `flush_pins_while` flushes the oldest pins first and stops as soon as its condition says
/// enough: reclaim for a key cache past its threshold leaves the newer pins, and with them the
/// journal, where they are.
#[test]
fn flushing_while_a_condition_holds_stops_at_the_oldest_pins_it_needs() {
    let j = journal(Arc::new(FsHealth::new()));
    let log = Arc::new(Mutex::new(Vec::new()));
    let (seqs, owners) = pinned_entries(&j, 4, &log);
    let more = || log.lock().len() < 2;
    assert_eq!(j.flush_pins_while(seqs[3], &more).unwrap(), 2);
    assert_eq!(*log.lock(), vec![seqs[0], seqs[1]], "the oldest two, then it stops");
    assert_eq!(j.last_seq(), seqs[2], "the newer pins stay");
    assert!(owners[2].pin.lock().is_some() && owners[3].pin.lock().is_some());
    for o in &owners[2..] {
        release(&j, o);
    }
}

#[test]
fn failed_flush_goes_emergency_read_only_and_keeps_the_pin() {
    let health = Arc::new(FsHealth::new());
    let j = journal(health.clone());
    let log = Arc::new(Mutex::new(Vec::new()));
    let held = hold(&j);
    let (a, b) = (entry(&j), entry(&j));
    let bad = owner(&j, a, OnFlush::Fail, &log);
    let good = owner(&j, b, OnFlush::Release, &log);
    j.pin_drop(held).unwrap();
    let e = j.flush_all_pins().unwrap_err();
    assert_eq!(e.code(), ErrCode::IoWrite, "{e}");
    assert!(health.is_emergency_ro());
    assert_eq!(health.emergency_ro_cause().unwrap().code, ErrCode::IoWrite);
    assert_eq!(j.last_seq(), a, "the pin of what was not written back is kept");
    assert_eq!(*log.lock(), vec![a], "nothing is flushed after a failure");
    assert_eq!(j.flush_all_pins().unwrap_err().code(), ErrCode::EmergencyRo);
    assert_eq!(
        j.add(keys(1), JournalWatermark::Normal, Instant::now()).unwrap_err().code(),
        ErrCode::JournalShutdown
    );
    release(&j, &bad);
    release(&j, &good);
}

#[test]
fn a_callback_that_keeps_its_pin_is_an_internal_error() {
    let health = Arc::new(FsHealth::new());
    let j = journal(health.clone());
    let log = Arc::new(Mutex::new(Vec::new()));
    let held = hold(&j);
    let o = owner(&j, entry(&j), OnFlush::KeepPin, &log);
    j.pin_drop(held).unwrap();
    let e = j.flush_all_pins().unwrap_err();
    assert_eq!(e.code(), ErrCode::Internal, "{e}");
    assert!(health.is_emergency_ro());
    assert_eq!(log.lock().len(), 1, "the callback ran once");
    release(&j, &o);
}

#[test]
fn nothing_at_or_past_the_replay_barrier_is_flushed() {
    let j = journal(Arc::new(FsHealth::new()));
    let log = Arc::new(Mutex::new(Vec::new()));
    let (seqs, owners) = pinned_entries(&j, 3, &log);
    j.set_replay_barrier(Some(seqs[1]));
    assert_eq!(j.flush_all_pins().unwrap(), 1);
    assert_eq!(*log.lock(), vec![seqs[0]]);
    j.set_replay_barrier(None);
    assert_eq!(j.flush_all_pins().unwrap(), 2);
    assert!(owners.iter().all(|o| o.pin.lock().is_none()));
}

#[test]
fn the_replay_range_pin_holds_last_seq_below_the_journal() {
    // Recovery pins the range it replays, older than anything this journal wrote.
    let j2 = journal_at(Arc::new(FsHealth::new()), 100);
    let replay = j2.pin_replay_range(40);
    assert_eq!(j2.last_seq(), 40);
    assert_eq!(j2.flush_all_pins().unwrap(), 0, "the replay range is never flushed");
    assert!(j2.pin_add(39, Arc::new(journal::Unflushable("x"))).is_err(), "below last_seq");
    j2.pin_drop(replay).unwrap();
    j2.set_replay_barrier(None);
    assert_eq!(j2.last_seq(), 100);
}

#[test]
fn an_entry_is_not_written_under_a_reservation() {
    let j = journal(Arc::new(FsHealth::new()));
    let t0 = Instant::now();
    let res = j.reserve(200, JournalWatermark::Normal).unwrap();
    let seq = res.seq();
    let late = t0 + Duration::from_secs(10);
    assert!(!j.tick(late).unwrap(), "nothing committed yet");
    j.commit(res, keys(4), t0).unwrap();
    let res2 = j.reserve(200, JournalWatermark::Normal).unwrap();
    assert_eq!(res2.seq(), seq, "the entry is still open");
    assert!(!j.tick(late).unwrap(), "written with a reservation outstanding");
    j.cancel(res2);
    assert!(j.tick(late).unwrap());
    assert_eq!(j.flushed_seq(), seq);
    assert_eq!(j.wait_flushed(seq, Duration::ZERO), seq);
    let e = j.reserve(1 << 20, JournalWatermark::Normal).unwrap_err();
    assert_eq!(e.code(), ErrCode::TransactionTooBig);
}

#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "leaked")]
fn a_leaked_pin_is_caught() {
    let j = journal(Arc::new(FsHealth::new()));
    let pin = j.pin_add(j.seq(), Arc::new(journal::Unflushable("leaky"))).unwrap();
    drop(pin);
}

/// The callbacks run one at a time even when two threads reclaim at once, and each pin's
/// callback runs once.
#[test]
fn concurrent_flushers_run_each_callback_once() {
    let j = Arc::new(journal(Arc::new(FsHealth::new())));
    let log = Arc::new(Mutex::new(Vec::new()));
    let (seqs, _owners) = pinned_entries(&j, 32, &log);
    let calls = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (j, calls) = (j.clone(), calls.clone());
            std::thread::spawn(move || calls.fetch_add(j.flush_all_pins().unwrap() as u64, Ordering::SeqCst))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 32);
    let mut seen = log.lock().clone();
    seen.sort_unstable();
    assert_eq!(seen, seqs);
}
