//! The journal's pin protocol against a reclaim thread, on the real `Journal` through
//! `fs_core::sync`: a committer reserves, pins its seq and commits while reclaim flushes pins
//! and writes the open entry. Under `--cfg loom` every interleaving (up to the preemption bound
//! CI sets) is checked; in a normal build the same bodies run once on real threads.
//!
//! Invariants:
//! - `last_seq` never passes an unflushed pin: every entry written before the pin's owner gave
//!   it back says `last_seq <= ` the pin's seq;
//! - no pin's callback runs twice, nor after its pin was given back;
//! - a flush that fails makes the filesystem emergency read-only and keeps the pin.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fs_core::bkey::{Bkey, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::dev::{MemDevice, SharedDevice};
use fs_core::error::{ErrCode, Error, Result};
use fs_core::health::FsHealth;
use fs_core::opts::{LiveOpts, Options};
use fs_core::sync::{Arc, AtomicU64, Mutex, Ordering, model, thread};
use journal::format::{JsetRead, decode_jset};
use journal::{Journal, JournalConfig, JournalPin, JournalWatermark, JsetEntry, PinFlush, Ring};

const MAGIC: u64 = 0xabc;
const BUCKET: u64 = 64 << 10;
const BLOCK: u64 = 4096;
const NR_BUCKETS: u64 = 4;

fn journal(dev: &SharedDevice, health: Arc<FsHealth>) -> Journal {
    let ring = Ring::empty(0, dev.clone(), BUCKET, (1..=NR_BUCKETS).collect()).unwrap();
    let cfg = JournalConfig {
        magic: MAGIC,
        block_size: BLOCK,
        max_entry_bytes: 16 << 10,
        labels: BTreeMap::new(),
        durability: BTreeMap::new(),
        preflush: Vec::new(),
    };
    Journal::new(vec![ring], cfg, 1, Arc::new(LiveOpts::new(Options::default())), health).unwrap()
}

fn keys() -> Vec<JsetEntry> {
    let k = Bkey::new(Bpos::new(1, 1, 0), KeyType::Set, vec![7; 8]);
    vec![JsetEntry::BtreeKeys { btree: BtreeId::Extents, level: 0, keys: vec![k].into() }]
}

/// Every good entry on the device: (seq, last_seq).
fn written(dev: &SharedDevice) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for b in 1..=NR_BUCKETS {
        let mut buf = vec![0u8; BUCKET as usize];
        dev.read_at(&mut buf, b * BUCKET).unwrap();
        let mut off = 0usize;
        while let Ok(JsetRead::Good { jset, bytes, .. }) = decode_jset(&buf[off..], MAGIC) {
            out.push((jset.seq, jset.last_seq));
            off += (bytes as usize).next_multiple_of(BLOCK as usize);
            if off >= buf.len() {
                break;
            }
        }
    }
    out
}

/// A pin owner: its callback "writes back" (nothing to write here), records what it saw, and
/// gives its pin back — or fails, when told to.
struct Owner {
    pin: Mutex<Option<JournalPin>>,
    fail: bool,
    calls: AtomicU64,
    /// The open seq just before the pin was given back: entries below it were written while
    /// the pin was held.
    dropped_at: AtomicU64,
}

impl PinFlush for Owner {
    fn flush_pin(&self, j: &Journal, _seq: u64) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err(Error::new(ErrCode::IoWrite, "write-back failed"));
        }
        let pin =
            self.pin.lock().take().ok_or_else(|| Error::internal("flushed a pin already given back"))?;
        self.dropped_at.store(j.seq(), Ordering::SeqCst);
        j.pin_drop(pin)
    }
    fn name(&self) -> &'static str {
        "loom owner"
    }
}

/// One committer and one reclaim thread; returns what the model checks afterwards.
fn race(fail: bool) -> (SharedDevice, Arc<Journal>, Arc<Owner>, Arc<FsHealth>) {
    let dev: SharedDevice = std::sync::Arc::new(MemDevice::new("loom0", (NR_BUCKETS + 1) * BUCKET));
    let health = Arc::new(FsHealth::new());
    let j = Arc::new(journal(&dev, health.clone()));
    // An entry before the race, so the pinned seq is not the first one.
    j.add(keys(), JournalWatermark::Normal, Instant::now()).unwrap();
    j.flush().unwrap();
    let owner = Arc::new(Owner {
        pin: Mutex::new(None),
        fail,
        calls: AtomicU64::new(0),
        dropped_at: AtomicU64::new(0),
    });
    let reclaim = {
        let j = j.clone();
        thread::spawn(move || {
            // What the reclaim thread does each round: the flush delay, then the pins.
            let later = Instant::now() + Duration::from_secs(3600);
            let _ = j.tick(later);
            let _ = j.flush_all_pins();
            let _ = j.tick(later);
        })
    };
    // The committer: reserve, pin the seq, commit — as a transaction does — then more
    // entries after it, written while the pin may still be held.
    // The pin is added under the owner's lock, which its callback takes (rule 5 of the pin
    // module): reclaim cannot flush it before the owner holds it.
    let res = j.reserve(64, JournalWatermark::Normal).unwrap();
    {
        let mut slot = owner.pin.lock();
        *slot = Some(j.pin_add(res.seq(), owner.clone()).unwrap());
    }
    j.commit(res, keys(), Instant::now()).unwrap();
    if !fail {
        j.flush().unwrap();
        j.add(keys(), JournalWatermark::Normal, Instant::now()).unwrap();
        j.flush().unwrap();
    }
    reclaim.join().unwrap();
    (dev, j, owner, health)
}

#[test]
fn last_seq_never_passes_an_unflushed_pin_and_no_callback_runs_twice() {
    model(|| {
        let (dev, j, owner, health) = race(false);
        // Reclaim may or may not have found the pin; flushing now must leave none behind.
        j.flush_all_pins().unwrap();
        j.flush().unwrap();
        assert_eq!(owner.calls.load(Ordering::SeqCst), 1, "the callback ran once");
        assert!(owner.pin.lock().is_none());
        assert!(!health.is_emergency_ro());
        let dropped_at = owner.dropped_at.load(Ordering::SeqCst);
        let pinned = 2;
        let entries = written(&dev);
        assert!(
            entries.iter().any(|&(seq, _)| seq > pinned),
            "nothing was written past the pin: {entries:?}"
        );
        for (seq, last_seq) in entries {
            if seq < dropped_at {
                assert!(
                    last_seq <= pinned,
                    "entry {seq} written while seq {pinned} was pinned says last_seq {last_seq}"
                );
            }
        }
        assert_eq!(j.nr_pins(), 0);
    });
}

#[test]
fn a_failed_flush_goes_emergency_read_only_and_keeps_the_pin() {
    model(|| {
        let (_dev, j, owner, health) = race(true);
        let e = j.flush_all_pins().unwrap_err();
        assert!(health.is_emergency_ro(), "{e}");
        assert_eq!(health.emergency_ro_cause().unwrap().code, ErrCode::IoWrite);
        assert_eq!(j.nr_pins(), 1, "the pin of what was not written back is kept");
        assert_eq!(j.last_seq(), 2);
        assert_eq!(owner.calls.load(Ordering::SeqCst), 1, "no flush after the failure");
        // The filesystem is going down: the pin goes with it.
        owner.pin.lock().take().unwrap().abandon();
    });
}
