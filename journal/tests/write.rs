//! The journal write path: entries land block-aligned in the rings of `replicas` distinct
//! devices, flush entries and NO_FLUSH entries are marked as such, a full journal says
//! journal_full until pins are released, reclaim may use the reserve and otherwise gets
//! journal_reclaim_would_deadlock, the flush delay works from an injected clock, a shut-down
//! journal refuses reservations, and after a crash exactly the flushed entries survive.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fs_core::bkey::{Bkey, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::dev::{BlockDevice, CrashMode, FaultyDevice, MemDevice, SharedDevice};
use fs_core::error::ErrCode;
use fs_core::health::FsHealth;
use fs_core::opts::{LiveOpts, OptId, OptValue, Options};
use journal::format::{JsetRead, decode_jset};
use journal::{Journal, JournalConfig, JournalPin, JournalWatermark, JsetEntry, Ring, Unflushable};

const MAGIC: u64 = 0xabc;
const BUCKET: u64 = 64 << 10;
const BLOCK: u64 = 4096;

fn cfg() -> JournalConfig {
    JournalConfig {
        magic: MAGIC,
        block_size: BLOCK,
        max_entry_bytes: 16 << 10,
        labels: BTreeMap::new(),
        durability: BTreeMap::new(),
        preflush: Vec::new(),
    }
}

/// Live options with `metadata_replicas` = `replicas` and the default 1 s flush delay.
fn opts(replicas: u64) -> Arc<LiveOpts> {
    let mut o = Options::default();
    o.set(OptId::MetadataReplicas, OptValue::U64(replicas)).unwrap();
    Arc::new(LiveOpts::new(o))
}

/// A journal on `devs` (`nr_buckets` each) writing `replicas` copies, next seq `next_seq`.
fn journal(devs: &[SharedDevice], nr_buckets: u64, replicas: u64, next_seq: u64) -> Journal {
    Journal::new(rings(devs, nr_buckets), cfg(), next_seq, opts(replicas), Arc::new(FsHealth::new())).unwrap()
}

/// A pin no reclaim flushes: the test releases it by hand.
fn pin(j: &Journal, seq: u64) -> JournalPin {
    j.pin_add(seq, Arc::new(Unflushable("test"))).unwrap()
}

fn rings(devs: &[SharedDevice], nr_buckets: u64) -> Vec<Ring> {
    devs.iter()
        .enumerate()
        .map(|(i, d)| Ring::empty(i as u8, d.clone(), BUCKET, (1..=nr_buckets).collect()).unwrap())
        .collect()
}

fn mem(n: usize) -> Vec<SharedDevice> {
    (0..n).map(|i| Arc::new(MemDevice::new(format!("mem{i}"), 4 << 20)) as SharedDevice).collect()
}

fn keys(n: u64, at: u64) -> Vec<JsetEntry> {
    vec![JsetEntry::BtreeKeys {
        btree: BtreeId::Extents,
        level: 0,
        keys: (0..n).map(|i| Bkey::new(Bpos::new(at, i, 0), KeyType::Set, vec![1; 16])).collect(),
    }]
}

/// Every good jset on every device: seq -> [(dev, byte offset, flags)].
fn scan(devs: &[&dyn BlockDevice], nr_buckets: u64) -> BTreeMap<u64, Vec<(usize, u64, u16)>> {
    let mut out: BTreeMap<u64, Vec<(usize, u64, u16)>> = BTreeMap::new();
    for (d, dev) in devs.iter().enumerate() {
        for b in 1..=nr_buckets {
            let mut buf = vec![0u8; BUCKET as usize];
            dev.read_at(&mut buf, b * BUCKET).unwrap();
            let mut off = 0;
            while off < BUCKET {
                match decode_jset(&buf[off as usize..], MAGIC).unwrap() {
                    JsetRead::Good { jset, bytes, .. } => {
                        out.entry(jset.seq).or_default().push((d, b * BUCKET + off, jset.flags));
                        off += u64::from(bytes).next_multiple_of(BLOCK);
                    }
                    _ => break,
                }
            }
        }
    }
    out
}

#[test]
fn entries_land_on_distinct_devices_block_aligned() {
    let devs = mem(3);
    let j = journal(&devs, 8, 2, 1);
    let now = Instant::now();
    // 200 keys take about 10k: two reservations overflow a 16k entry, which is then written
    // without a flush; every fourth reservation asks for a flush.
    for i in 0..40 {
        j.add(keys(200, i), JournalWatermark::Normal, now).unwrap();
        if i % 4 == 0 {
            j.flush().unwrap();
        }
    }
    j.flush().unwrap();
    let refs: Vec<&dyn BlockDevice> = devs.iter().map(|d| d.as_ref()).collect();
    let found = scan(&refs, 8);
    assert_eq!(found.len() as u64, j.seq() - 1, "every written seq is on disk");
    for (seq, copies) in &found {
        assert_eq!(copies.len(), 2, "seq {seq} has {} copies", copies.len());
        assert_ne!(copies[0].0, copies[1].0, "seq {seq}: both copies on one device");
        assert!(copies.iter().all(|c| c.1 % BLOCK == 0));
    }
    let flags: Vec<u16> = found.values().map(|c| c[0].2).collect();
    assert!(flags.contains(&0) && flags.contains(&journal::format::JSET_NO_FLUSH));
    assert_eq!(j.flushed_seq(), j.seq() - 1);
}

#[test]
fn full_journal_blocks_until_pins_are_released() {
    let devs = mem(1);
    let j = journal(&devs, 4, 1, 1);
    let now = Instant::now();
    let first = j.add(keys(10, 0), JournalWatermark::Normal, now).unwrap();
    let mut pins = vec![pin(&j, first)];
    let mut blocked = None;
    for i in 0..1000 {
        match j.add(keys(200, i), JournalWatermark::Normal, now) {
            Ok(seq) => pins.push(pin(&j, seq)),
            Err(e) => {
                blocked = Some(e);
                break;
            }
        }
    }
    let e = blocked.expect("journal never filled");
    assert_eq!(e.code(), ErrCode::JournalFull, "{e}");
    assert!(e.matches(ErrCode::OperationBlocked));

    // Reclaim may use the reserved bucket; past it, it must not wait on itself.
    let mut reclaim_err = None;
    for i in 0..1000 {
        if let Err(e) = j.add(keys(200, i), JournalWatermark::Reclaim, now) {
            reclaim_err = Some(e);
            break;
        }
    }
    assert_eq!(reclaim_err.expect("reserve never ran out").code(), ErrCode::JournalReclaimWouldDeadlock);

    // Reclaim wrote everything back: pins go, last_seq advances, space returns.
    for p in pins {
        j.pin_drop(p).unwrap();
    }
    assert_eq!(j.last_seq(), j.seq());
    j.add(keys(200, 1), JournalWatermark::Normal, now).unwrap();
    j.flush().unwrap();
}

#[test]
fn flush_delay_uses_the_given_clock() {
    let devs = mem(1);
    let j = journal(&devs, 4, 1, 7);
    let t0 = Instant::now();
    assert_eq!(j.add(keys(3, 0), JournalWatermark::Normal, t0).unwrap(), 7);
    assert!(!j.tick(t0 + Duration::from_millis(999)).unwrap(), "written before the delay");
    assert!(j.tick(t0 + Duration::from_millis(1000)).unwrap(), "not written after the delay");
    assert_eq!(j.flushed_seq(), 7);
    assert!(!j.tick(t0 + Duration::from_secs(5)).unwrap(), "an empty entry is not written");
}

#[test]
fn shut_down_journal_refuses() {
    let devs = mem(1);
    let j = journal(&devs, 4, 1, 1);
    j.shut_down("emergency read-only");
    let e = j.add(keys(1, 0), JournalWatermark::Normal, Instant::now()).unwrap_err();
    assert_eq!(e.code(), ErrCode::JournalShutdown);
    assert!(e.matches(ErrCode::Erofs));
    assert!(j.flush().is_err());
    // Emergency read-only shuts the journal down too, naming the cause.
    let health = Arc::new(FsHealth::new());
    let j = Journal::new(rings(&devs, 4), cfg(), 1, opts(1), health.clone()).unwrap();
    j.add(keys(1, 0), JournalWatermark::Normal, Instant::now()).unwrap();
    health.fatal(&fs_core::error::Error::new(ErrCode::IoWrite, "disk on fire"));
    let e = j.flush().unwrap_err();
    assert_eq!(e.code(), ErrCode::JournalShutdown);
    assert!(e.to_string().contains("disk on fire"), "{e}");
    assert_eq!(
        Journal::new(Vec::new(), cfg(), 1, opts(1), Arc::new(FsHealth::new())).err().unwrap().code(),
        ErrCode::InsufficientDevices
    );
}

/// With a volatile write cache, a crash keeps the flushed entries and loses the rest.
#[test]
fn crash_keeps_exactly_the_flushed_entries() {
    for seed in 0..20u64 {
        let faulty: Vec<Arc<FaultyDevice>> = (0..2)
            .map(|i| {
                let f = Arc::new(FaultyDevice::new(Arc::new(MemDevice::new(format!("m{i}"), 4 << 20)), seed));
                f.set_volatile_cache(true);
                f
            })
            .collect();
        let devs: Vec<SharedDevice> = faulty.iter().map(|f| f.clone() as SharedDevice).collect();
        let j = journal(&devs, 8, 2, 1);
        let now = Instant::now();
        let mut flushed = 0;
        for i in 0..30 {
            j.add(keys(100, i), JournalWatermark::Normal, now).unwrap();
            if (i + seed) % 7 == 0 {
                flushed = j.flush().unwrap();
            }
        }
        for f in &faulty {
            f.crash(CrashMode::DropUnflushed).unwrap();
        }
        let refs: Vec<&dyn BlockDevice> = faulty.iter().map(|f| f.as_ref() as &dyn BlockDevice).collect();
        let found = scan(&refs, 8);
        let newest = found.keys().next_back().copied().unwrap_or(0);
        assert_eq!(newest, flushed, "seed {seed}: newest surviving seq");
        assert!(
            (1..=flushed).all(|s| found.get(&s).is_some_and(|c| c.len() == 2)),
            "seed {seed}: a flushed seq lost a copy"
        );
    }
}

/// Entries go to the metadata target's devices while they can take them.
#[test]
fn entries_prefer_the_metadata_target() {
    let devs = mem(4);
    let labels =
        (0..4u8).map(|d| (d, if d >= 2 { format!("ssd.n{d}") } else { format!("hdd.h{d}") })).collect();
    let cfg = JournalConfig { labels, ..cfg() };
    let live = opts(2);
    live.set(OptId::MetadataTarget, OptValue::Str("ssd".into())).unwrap();
    let j = Journal::new(rings(&devs, 8), cfg, 1, live, Arc::new(FsHealth::new())).unwrap();
    for i in 0..10 {
        j.add(keys(100, i), JournalWatermark::Normal, Instant::now()).unwrap();
        j.flush().unwrap();
    }
    let refs: Vec<&dyn BlockDevice> = devs.iter().map(|d| d.as_ref()).collect();
    let found = scan(&refs, 8);
    assert!(!found.is_empty());
    for (seq, copies) in &found {
        let mut on: Vec<usize> = copies.iter().map(|c| c.0).collect();
        on.sort_unstable();
        assert_eq!(on, vec![2, 3], "seq {seq} not on the target devices");
    }
}

/// Never fewer copies than asked for: a journal whose devices cannot give `metadata_replicas`
/// refuses to open, and one whose replicas are raised past what its devices give refuses to
/// write, both with `insufficient_devices`. A device of durability 2 counts as two replicas.
#[test]
fn too_few_replicas_are_refused_not_written() {
    let devs = mem(2);
    let e = Journal::new(rings(&devs, 4), cfg(), 1, opts(3), Arc::new(FsHealth::new())).err().unwrap();
    assert_eq!(e.code(), ErrCode::InsufficientDevices, "{e}");

    let j = journal(&devs, 4, 2, 1);
    j.add(keys(3, 0), JournalWatermark::Normal, Instant::now()).unwrap();
    j.flush().unwrap();
    j.options().set(OptId::MetadataReplicas, OptValue::U64(3)).unwrap();
    let e = j.add(keys(3, 1), JournalWatermark::Normal, Instant::now()).unwrap_err();
    assert_eq!(e.code(), ErrCode::InsufficientDevices, "{e}");

    // One device of durability 2 holds both replicas.
    let one = mem(1);
    let cfg2 = JournalConfig { durability: BTreeMap::from([(0, 2)]), ..cfg() };
    let j = Journal::new(rings(&one, 4), cfg2, 1, opts(2), Arc::new(FsHealth::new())).unwrap();
    j.add(keys(3, 0), JournalWatermark::Normal, Instant::now()).unwrap();
    j.flush().unwrap();
    let refs: Vec<&dyn BlockDevice> = one.iter().map(|d| d.as_ref()).collect();
    assert_eq!(scan(&refs, 4).len(), 1);
}

/// Reclaim's `seq_to_flush` (bcachefs's `journal_seq_to_flush`) asks for nothing while the ring
/// is at most half full; past half, it names the newest seq of the bucket half a ring ahead,
/// and flushing the pins up to it leaves the ring at most half full with the newer half still
/// pinned.
#[test]
fn reclaim_flushes_the_older_half_of_a_ring_past_half_full() {
    const NR: u64 = 8;
    let devs = mem(1);
    let j = journal(&devs, NR, 1, 1);
    let now = Instant::now();
    let mut pins = Vec::new();
    // Ring index of the bucket holding each seq written so far (bucket b is at b * BUCKET).
    let bucket_of = |seq: u64| -> u64 {
        let at = scan(&[&*devs[0]], NR)[&seq][0].1;
        at / BUCKET - 1
    };
    let mut i = 0;
    let mut seen_under_half = false;
    loop {
        let seq = j.add(keys(200, i), JournalWatermark::Normal, now).unwrap();
        pins.push((seq, pin(&j, seq)));
        j.flush().unwrap();
        i += 1;
        let cur = bucket_of(seq);
        let used = cur - bucket_of(pins[0].0) + 1;
        if used * 2 <= NR {
            assert_eq!(j.seq_to_flush(), None, "{used} of {NR} buckets used: nothing to flush");
            seen_under_half = true;
            continue;
        }
        // Past half: the newest seq of the bucket half a ring ahead of the current one.
        let ahead = (cur + NR / 2) % NR;
        let want = pins.iter().map(|p| p.0).filter(|&s| bucket_of(s) == ahead).max().unwrap();
        assert_eq!(j.seq_to_flush(), Some(want), "{used} of {NR} buckets used");
        let (older, newer): (Vec<_>, Vec<_>) = pins.into_iter().partition(|(s, _)| *s <= want);
        pins = newer;
        for (_, p) in older {
            j.pin_drop(p).unwrap();
        }
        let used = cur - bucket_of(j.last_seq()) + 1;
        assert!(used * 2 <= NR, "still {used} of {NR} buckets in use after flushing");
        assert_eq!(j.seq_to_flush(), None);
        assert!(!pins.is_empty(), "the newer half keeps its pins");
        break;
    }
    assert!(seen_under_half);
    for (_, p) in pins {
        j.pin_drop(p).unwrap();
    }
}

/// The other half of `journal_seq_to_flush`: with the rings far from half full, a pin more
/// than half of bcachefs's pin fifo (`JOURNAL_PIN`) behind the open seq is still due.
#[test]
fn reclaim_flushes_pins_half_a_pin_fifo_behind() {
    const NR: u64 = 320;
    let dev: SharedDevice = Arc::new(MemDevice::new("mem0", (NR + 1) * BUCKET));
    let ring = Ring::empty(0, dev, BUCKET, (1..=NR).collect()).unwrap();
    let cfg = JournalConfig { block_size: 512, ..cfg() };
    let j = Journal::new(vec![ring], cfg, 1, opts(1), Arc::new(FsHealth::new())).unwrap();
    let now = Instant::now();
    let first = j.add(keys(1, 0), JournalWatermark::Normal, now).unwrap();
    let held = pin(&j, first);
    j.flush().unwrap();
    let half = journal::write::PIN_FIFO_SEQS / 2;
    while j.seq() < first + half {
        assert_eq!(j.seq_to_flush(), None, "open seq {}", j.seq());
        j.add(keys(1, j.seq()), JournalWatermark::Normal, now).unwrap();
        j.flush().unwrap();
    }
    assert_eq!(j.seq_to_flush(), Some(first), "open seq {}", j.seq());
    j.pin_drop(held).unwrap();
    assert_eq!(j.seq_to_flush(), None);
}
