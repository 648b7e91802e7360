//! Benchmarks that print JSON, one object per line. Run in release mode:
//!
//!   cargo run --release --bin bcsim-bench -- format
//!
//! `format`: formats 8 sparse image files of 1 TiB each (4 MiB buckets) in a temporary
//! directory, several times, and reports wall time and the disk space the images take (`du`).
//!
//! `btree [KEYS]` (default 10M): inserts KEYS keys in key order and in random order into
//! `std::collections::BTreeMap`, into the btree in memory (no write-back), and into the btree
//! on image files with write-back every million keys; reports keys/s, peak RSS per phase (each
//! phase runs in its own process) and the btree/BTreeMap time ratios.
//!
//! `recovery [KEYS] [UNIQUE]` (default 29M and 22M, the figures of #1107's recovery log):
//! formats 8 sparse images, opens them, writes a journal of KEYS keys over UNIQUE positions
//! without applying them to the btrees, and crashes (drops the filesystem). Then, each in its
//! own process: a mount (recovery), reporting the time of each phase and peak RSS; and a floor,
//! the same keys sorted, compacted and loaded into `BTreeMap`s in memory. Reports the ratios and
//! whether the targets are met: total within 3x the floor, 2M keys/s end to end, peak RSS within
//! 2x the compacted keys' encoded bytes. Per-phase peak RSS of the mount comes from sampling
//! VmRSS every 10 ms (the phases run inside one library call); the floor's phases reset VmHWM
//! between them. `recovery-setup DIR KEYS UNIQUE` leaves the crashed images in DIR, and
//! `recovery-phase mount DIR KEYS UNIQUE` mounts them, for profiling one phase by hand.
//!
//! `key-cache [N]` (default 1M): N cached alloc keys updated through the key cache by 1 and by
//! 2 threads, then flushed by journal reclaim; updates/s and flushes/s.
//!
//! `alloc-wait [N]` (default 2000): the wake latency of a request parked on the allocator's
//! wait list after an option change: median, p99 and max over N wakes, in process (the live
//! options set directly) and through a mount's control socket (`set metadata_replicas=...` sent
//! by a client, as `bcsim set-fs-option` does). The wait list is wired to the options as a
//! mount wires it.
//!
//! `crash-states [OPS]` (default 200): `bcsim crash-states` on 4 devices with reorder 1, seed 1:
//! the states checked per second (target: 100).
//!
//! `sim [SEEDS]` (default 1000): `bcsim sim` over seeds 0..SEEDS on 2 threads: seeds per second
//! (target: 50).
//!
//! `alloc-info`: what alloc info costs as devices grow. On 8 sparse images of 4 GiB and of
//! 1 TiB (`metadata_replicas=2`, default bucket sizes), each step in its own process: format,
//! the first mount (open and unmount), the same small workload (300 operations, seed 1,
//! crashed after 250), the recovery mount, and `fsck -fn`. Reports wall time and peak RSS of
//! each, and the 1 TiB / 4 GiB ratios (the target: within 3x).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bcsim::fs::Fs;
use bcsim::images::{ImageSpec, format_images, open_device_set};
use bcsim::recovery::{MountOpts, ReclaimMode, mount};
use fs_core::bkey::alloc::{AllocV4, bucket_pos};
use fs_core::bkey::{Bkey, KeyRef, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::BtreeConfig;
use fs_core::dev::{MemDevice, SharedDevice};
use fs_core::format::{DeviceSpec, format};
use fs_core::opts::{OptId, OptValue, Options};
use fs_core::rng::Rng;
use fs_core::sb::DeviceSet;
use journal::{JournalWatermark, JsetEntry};
use serde_json::json;

const TIB: u64 = 1 << 40;

fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS (VmHWM) to the current RSS, so the next phase's peak is its own. False
/// where the kernel does not allow it; peaks are then cumulative.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Samples this process's RSS every `RSS_SAMPLE_INTERVAL` on a thread of its own, for the peak
/// of phases that run inside one library call.
struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Duration, u64)>>,
}

const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

impl RssSampler {
    fn start(t0: Instant) -> Result<RssSampler, String> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                let mut samples = Vec::new();
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    samples.push((t0.elapsed(), status_kib("VmRSS:")));
                    std::thread::sleep(RSS_SAMPLE_INTERVAL);
                }
                samples
            })
            .map_err(|e| e.to_string())?;
        Ok(RssSampler { stop, thread })
    }

    fn finish(self) -> Vec<(Duration, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The largest sample in `[start, start + took]`.
fn sampled_peak(samples: &[(Duration, u64)], start: Duration, took: Duration) -> u64 {
    samples.iter().filter(|(t, _)| *t >= start && *t <= start + took).map(|&(_, kib)| kib).max().unwrap_or(0)
}

fn usage(dir: &Path) -> (u64, u64) {
    let mut du = 0;
    let mut apparent = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(md) = e.metadata() {
            du += md.blocks() * 512;
            apparent += md.len();
        }
    }
    (du, apparent)
}

fn bench_format(devices: usize, size: u64, runs: usize) -> Result<serde_json::Value, String> {
    let dir = std::env::temp_dir().join(format!("bcsim-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let specs: Vec<ImageSpec> = (0..devices)
        .map(|i| {
            let mut s = ImageSpec::new(dir.join(format!("dev{i}.img")));
            s.size = Some(size);
            s
        })
        .collect();
    let mut seconds = Vec::with_capacity(runs);
    let mut nbuckets = 0;
    let mut bucket_size = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let report = format_images(&specs, &Options::default(), None, true).map_err(|e| e.to_string())?;
        seconds.push(t.elapsed().as_secs_f64());
        if let Some(d) = report.devices.first() {
            nbuckets = d.member.nbuckets;
            bucket_size = d.member.bucket_size;
        }
    }
    let (du_bytes, apparent_bytes) = usage(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    seconds.sort_by(f64::total_cmp);
    Ok(json!({
        "bench": "format",
        "devices": devices,
        "device_size_bytes": size,
        "bucket_size_bytes": bucket_size,
        "nbuckets_per_device": nbuckets,
        "runs": runs,
        "seconds_min": seconds.first(),
        "seconds_median": seconds.get(seconds.len() / 2),
        "seconds_max": seconds.last(),
        "du_bytes": du_bytes,
        "apparent_bytes": apparent_bytes,
        "peak_rss_kib": peak_rss_kib(),
    }))
}

const BTREE_DEV_BYTES: u64 = 16 << 30;
const WRITE_BACK_EVERY: u64 = 1_000_000;

fn positions(n: u64, sorted: bool) -> Vec<Bpos> {
    if sorted {
        return (0..n).map(|i| Bpos::new(1, i, 0)).collect();
    }
    let mut rng = Rng::new(0xb7ee);
    (0..n).map(|_| Bpos::new(1, rng.next_u64(), 0)).collect()
}

fn value(p: &Bpos) -> Box<[u8]> {
    p.offset.to_le_bytes().into()
}

/// One phase, run in this process; prints nothing, returns its JSON.
fn btree_phase(phase: &str, n: u64) -> Result<serde_json::Value, String> {
    let sorted = phase.ends_with("sorted");
    let keys = positions(n, sorted);
    let rss_before = peak_rss_kib();
    let e = |err: fs_core::error::Error| err.to_string();
    let (seconds, detail) = match phase {
        "btreemap-sorted" | "btreemap-random" => {
            let t = Instant::now();
            let mut m = std::collections::BTreeMap::new();
            for p in &keys {
                m.insert(*p, value(p));
            }
            let secs = t.elapsed().as_secs_f64();
            (secs, json!({"len": m.len()}))
        }
        "mem-sorted" | "mem-random" => {
            let devs: Vec<SharedDevice> = (0..2)
                .map(|i| Arc::new(MemDevice::new(format!("mem{i}"), BTREE_DEV_BYTES)) as SharedDevice)
                .collect();
            let specs: Vec<DeviceSpec> = devs.iter().cloned().map(DeviceSpec::new).collect();
            format(&specs, &Options::default(), None).map_err(e)?;
            let cfg = BtreeConfig { cache_nodes: 1 << 20, ..BtreeConfig::default() };
            let mut fs = open_manual(DeviceSet::open(devs).map_err(e)?, cfg).map_err(e)?;
            let t = Instant::now();
            insert_all(&mut fs, &keys, None)?;
            let secs = t.elapsed().as_secs_f64();
            let detail = json!({"nodes_cached": fs.btrees().cached_nodes()});
            // Freeing 10M keys takes seconds and is not what is measured: leave it to exit.
            std::mem::forget(fs);
            (secs, detail)
        }
        "file-sorted" | "file-random" => {
            let dir = std::env::temp_dir().join(format!("bcsim-bench-btree-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|err| err.to_string())?;
            let specs: Vec<ImageSpec> = (0..2)
                .map(|i| {
                    let mut s = ImageSpec::new(dir.join(format!("dev{i}.img")));
                    s.size = Some(BTREE_DEV_BYTES);
                    s
                })
                .collect();
            format_images(&specs, &Options::default(), None, true).map_err(e)?;
            let paths: Vec<_> = specs.iter().map(|s| s.path.clone()).collect();
            let cfg = BtreeConfig { cache_nodes: 4096, ..BtreeConfig::default() };
            let mut fs = open_manual(open_device_set(&paths, true).map_err(e)?, cfg).map_err(e)?;
            let t = Instant::now();
            let wb = insert_all(&mut fs, &keys, Some(WRITE_BACK_EVERY))?;
            fs.unmount().map_err(e)?;
            let secs = t.elapsed().as_secs_f64();
            let (du, _) = usage(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            (secs, json!({"du_bytes": du, "write_backs": wb}))
        }
        other => return Err(format!("unknown phase '{other}'")),
    };
    Ok(json!({
        "phase": phase,
        "keys": n,
        "seconds": seconds,
        "keys_per_sec": n as f64 / seconds,
        "peak_rss_kib": peak_rss_kib(),
        "rss_before_kib": rss_before,
        "detail": detail,
    }))
}

/// Inserts `keys` in batches, writing back every `write_back_every` keys and whenever the node
/// alloc keys waiting for publication pile up. Returns the write-backs of each kind.
fn insert_all(
    fs: &mut Fs,
    keys: &[Bpos],
    write_back_every: Option<u64>,
) -> Result<serde_json::Value, String> {
    let e = |err: fs_core::error::Error| err.to_string();
    let (mut periodic, mut for_publication) = (0u64, 0u64);
    // The btree lock is taken per batch, as a transaction would hold it, not per key.
    const BATCH: usize = 65536;
    for (b, batch) in keys.chunks(BATCH).enumerate() {
        {
            let mut t = fs.btrees();
            for p in batch {
                // Borrowed keys, as journal replay inserts them: the 8-byte value lives in the
                // leaf entry, so a heap copy per key would be made only to be freed.
                let val = p.offset.to_le_bytes();
                let key = KeyRef { pos: *p, ty: KeyType::Set, size: 0, val: &val };
                t.insert_ref(BtreeId::Extents, key, 1).map_err(e)?;
            }
        }
        let done = ((b + 1) * BATCH) as u64;
        // With write-back, it also publishes the node alloc keys when they pile up (they must
        // fit one journal entry); in memory nothing is published.
        let due = write_back_every.is_some() && fs.publish_due();
        let periodic_due = write_back_every.is_some_and(|every| done % every < BATCH as u64);
        if due || periodic_due {
            if periodic_due {
                periodic += 1
            } else {
                for_publication += 1
            }
            fs.write_back().map_err(e)?;
        }
    }
    Ok(json!({"periodic": periodic, "for_publication": for_publication}))
}

/// A read-write mount whose journal reclaim runs only when asked: what a benchmark measures
/// is then exactly the work it does itself.
fn open_manual(set: DeviceSet, cfg: BtreeConfig) -> fs_core::error::Result<Fs> {
    let mopts = MountOpts { reclaim: ReclaimMode::Manual, ..MountOpts::default() };
    Ok(bcsim::recovery::mount_with(set, &mopts, cfg)?.fs)
}

/// Runs every btree phase in its own process and reports them together.
fn bench_btree(n: u64) -> Result<serde_json::Value, String> {
    let exe = std::env::current_exe().map_err(|err| err.to_string())?;
    let mut results = serde_json::Map::new();
    for phase in
        ["btreemap-sorted", "mem-sorted", "file-sorted", "btreemap-random", "mem-random", "file-random"]
    {
        let out = std::process::Command::new(&exe)
            .args(["btree-phase", phase, &n.to_string()])
            .output()
            .map_err(|err| err.to_string())?;
        if !out.status.success() {
            return Err(format!("phase {phase} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|err| err.to_string())?;
        eprintln!(
            "bcsim-bench: {phase}: {:.2} s",
            v.get("seconds").and_then(serde_json::Value::as_f64).unwrap_or(0.0)
        );
        results.insert(phase.to_owned(), v);
    }
    let secs = |p: &str| {
        results.get(p).and_then(|v| v.get("seconds")).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN)
    };
    let ratios = json!({
        "mem_sorted_vs_btreemap": secs("mem-sorted") / secs("btreemap-sorted"),
        "mem_random_vs_btreemap": secs("mem-random") / secs("btreemap-random"),
        "file_sorted_vs_btreemap": secs("file-sorted") / secs("btreemap-sorted"),
        "file_random_vs_btreemap": secs("file-random") / secs("btreemap-random"),
    });
    Ok(json!({"bench": "btree", "keys": n, "value_bytes": 8, "phases": results, "time_ratios": ratios}))
}

// ---- recovery ----------------------------------------------------------------------------

const REC_KEYS: u64 = 29_000_000;
const REC_UNIQUE: u64 = 22_000_000;
const REC_DEVICES: usize = 8;
const REC_DEV_BYTES: u64 = 256 << 30;
const REC_BUCKET_BYTES: u64 = 4 << 20;
const REC_METADATA_REPLICAS: u64 = 2;
/// Keys per journal reservation (`Journal::add`): two or three fit one 256 KiB entry.
const REC_KEYS_PER_ADD: usize = 2048;
/// Reservations between flush entries (each flush is an fsync of the entry's devices).
const REC_ADDS_PER_FLUSH: u64 = 256;
/// Positions whose replayed value the mount checks against the generator.
const REC_VERIFY_SAMPLES: u64 = 2_000;
/// Largest encoded key the generator makes (32-byte header, 24-byte alloc value).
const REC_MAX_KEY_BYTES: u64 = 56;
/// One position in this many is a bucket's alloc key (replayed through the key cache).
const REC_ALLOC_EVERY: u64 = 50;
/// Targets from the issue.
const TARGET_TIME_VS_FLOOR: f64 = 3.0;
const TARGET_KEYS_PER_SEC: f64 = 2_000_000.0;
const TARGET_RSS_VS_COMPACTED: f64 = 2.0;

/// splitmix64's finalizer: a bijection on u64, so distinct indexes give distinct positions.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key journalled as update number `i`, to the position with index `k`: one position in
/// five is an inode (8-byte value), one in fifty a bucket's alloc key, and the others extents
/// spread over about a million inodes (16-byte value). The value carries `i`, so the newest
/// update of a position is recognisable; an alloc key carries it coarsely, in the gen of a free
/// bucket, which grows every 2^17 updates.
fn rec_key(k: u64, i: u64) -> (BtreeId, Bkey) {
    if let Some(pos) = rec_alloc_pos(k) {
        let bucket_gen = u8::try_from(1 + (i >> 17)).unwrap_or(u8::MAX);
        return (BtreeId::Alloc, Bkey::new(pos, KeyType::AllocV4, AllocV4::free(bucket_gen).encode()));
    }
    if k % 5 == 4 {
        let pos = Bpos::new(0, 4096 + k, u32::MAX);
        return (BtreeId::Inodes, Bkey::new(pos, KeyType::Set, i.to_le_bytes()));
    }
    let h = mix64(k);
    let pos = Bpos::new(4096 + (h >> 44), h & ((1 << 44) - 1), u32::MAX);
    let mut val = [0u8; 16];
    let (lo, hi) = val.split_at_mut(8);
    lo.copy_from_slice(&i.to_le_bytes());
    hi.copy_from_slice(&k.to_le_bytes());
    (BtreeId::Extents, Bkey::new(pos, KeyType::Set, val))
}

/// The bucket whose alloc key position `k` is, if it is one: buckets are taken from the top of
/// each device down, round robin, far from the superblock, the journal and the buckets the
/// btree nodes go to.
fn rec_alloc_pos(k: u64) -> Option<Bpos> {
    if k % REC_ALLOC_EVERY != 0 {
        return None;
    }
    let j = k / REC_ALLOC_EVERY;
    let devices = REC_DEVICES as u64;
    // The device's buckets end before its backup superblock, as format lays them out.
    let nbuckets = fs_core::sb::backup_offset(REC_DEV_BYTES) / REC_BUCKET_BYTES;
    let bucket = nbuckets.checked_sub(1 + j / devices)?;
    Some(bucket_pos(u8::try_from(j % devices).ok()?, bucket))
}

/// The journal's updates in journal order: `keys` updates over exactly `unique` positions, new
/// positions spread evenly through the journal and the rest overwriting a random earlier one.
/// Yields (update number, position index, btree, key).
struct RecKeys {
    rng: Rng,
    keys: u64,
    unique: u64,
    next: u64,
    created: u64,
}

impl RecKeys {
    fn new(keys: u64, unique: u64) -> RecKeys {
        RecKeys { rng: Rng::new(0x1107), keys, unique: unique.clamp(1, keys.max(1)), next: 0, created: 0 }
    }
}

impl Iterator for RecKeys {
    type Item = (u64, u64, BtreeId, Bkey);

    fn next(&mut self) -> Option<Self::Item> {
        let i = self.next;
        if i >= self.keys {
            return None;
        }
        self.next += 1;
        let due = (u128::from(i) + 1) * u128::from(self.unique) / u128::from(self.keys);
        let k = if self.created == 0 || u128::from(self.created) < due {
            self.created += 1;
            self.created - 1
        } else {
            self.rng.below(self.created)
        };
        let (btree, key) = rec_key(k, i);
        Some((i, k, btree, key))
    }
}

fn rec_dir() -> PathBuf {
    std::env::temp_dir().join(format!("bcsim-bench-recovery-{}", std::process::id()))
}

fn rec_paths(dir: &Path) -> Vec<PathBuf> {
    (0..REC_DEVICES).map(|i| dir.join(format!("dev{i}.img"))).collect()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Journal bytes the entries can use: every device's journal buckets, divided among the replicas.
fn journal_capacity_bytes(set: &DeviceSet) -> u64 {
    let raw: u64 =
        set.devices.iter().flatten().map(|m| m.sb.journal.buckets().count() as u64 * REC_BUCKET_BYTES).sum();
    raw / REC_METADATA_REPLICAS
}

/// Formats the images, opens them (which writes the first alloc info), journals the keys
/// without applying them, and drops the filesystem without unmounting: a crash.
fn rec_setup(dir: &Path, keys: u64, unique: u64) -> Result<serde_json::Value, String> {
    let e = |err: fs_core::error::Error| err.to_string();
    std::fs::create_dir_all(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let specs: Vec<ImageSpec> = rec_paths(dir)
        .into_iter()
        .map(|p| {
            let mut s = ImageSpec::new(p);
            s.size = Some(REC_DEV_BYTES);
            s.bucket_size = Some(REC_BUCKET_BYTES);
            s
        })
        .collect();
    let mut opts = Options::default();
    opts.set(OptId::MetadataReplicas, OptValue::U64(REC_METADATA_REPLICAS)).map_err(e)?;
    let t = Instant::now();
    format_images(&specs, &opts, None, true).map_err(e)?;
    let format_time = t.elapsed();

    let t = Instant::now();
    let paths: Vec<_> = specs.iter().map(|s| s.path.clone()).collect();
    let set = open_device_set(&paths, true).map_err(e)?;
    let capacity = journal_capacity_bytes(&set);
    // Entries are padded to blocks and every entry carries the roots: a tenth more is plenty.
    let needed = keys * REC_MAX_KEY_BYTES * 11 / 10;
    if needed > capacity {
        return Err(format!("journal of {capacity} bytes cannot hold {keys} keys (about {needed} bytes)"));
    }
    let fs = open_manual(set, BtreeConfig::default()).map_err(e)?;
    // The buckets the journal's alloc keys update have been used before: their alloc keys are
    // in the btree, so replay's fills find them and the updates stay in the key cache.
    let used: Vec<Bkey> = (0..unique)
        .filter_map(rec_alloc_pos)
        .map(|pos| Bkey::new(pos, KeyType::AllocV4, AllocV4::free(0).encode()))
        .collect();
    let alloc_keys_in_btree = used.len();
    fs.commit_batched(BtreeId::Alloc, used).map_err(e)?;
    fs.reclaim().map_err(e)?;
    let open_time = t.elapsed();

    let t = Instant::now();
    let j = fs.journal().ok_or("filesystem opened without a journal")?.clone();
    let mut pin = None;
    let mut batch: Vec<(BtreeId, Bkey)> = Vec::with_capacity(REC_KEYS_PER_ADD);
    let mut first_seq = None;
    let mut adds = 0u64;
    let mut gen_keys = RecKeys::new(keys, unique).peekable();
    while let Some((_, _, btree, key)) = gen_keys.next() {
        batch.push((btree, key));
        if batch.len() < REC_KEYS_PER_ADD && gen_keys.peek().is_some() {
            continue;
        }
        let mut by_btree =
            [(BtreeId::Alloc, Vec::new()), (BtreeId::Extents, Vec::new()), (BtreeId::Inodes, Vec::new())];
        for (b, k) in batch.drain(..) {
            if let Some((_, keys)) = by_btree.iter_mut().find(|(btree, _)| *btree == b) {
                keys.push(k);
            }
        }
        let entries: Vec<JsetEntry> = by_btree
            .into_iter()
            .filter(|(_, ks)| !ks.is_empty())
            .map(|(btree, keys)| JsetEntry::BtreeKeys { btree, level: 0, keys: keys.into() })
            .collect();
        let seq = j.add(entries, JournalWatermark::Normal, Instant::now()).map_err(e)?;
        // One pin on the first seq keeps every entry from there on in the replay range.
        if first_seq.is_none() {
            pin = Some(j.pin_add(seq, Arc::new(journal::Unflushable("benchmark set-up"))).map_err(e)?);
            first_seq = Some(seq);
        }
        adds += 1;
        if adds % REC_ADDS_PER_FLUSH == 0 {
            j.flush().map_err(e)?;
        }
    }
    let last_seq = j.flush().map_err(e)?;
    let stats = j.stats();
    let journal_time = t.elapsed();
    // A crash: the pin goes with everything else that was only in memory.
    if let Some(p) = pin {
        p.abandon();
    }
    drop(fs);
    // Nothing of the setup left to write back while the mount is measured.
    for p in &paths {
        std::fs::File::open(p).and_then(|f| f.sync_all()).map_err(|err| format!("{}: {err}", p.display()))?;
    }
    let (du, _) = usage(dir);
    Ok(json!({
        "devices": REC_DEVICES,
        "device_size_bytes": REC_DEV_BYTES,
        "bucket_size_bytes": REC_BUCKET_BYTES,
        "metadata_replicas": REC_METADATA_REPLICAS,
        "journal_capacity_bytes": capacity,
        "alloc_keys_in_btree": alloc_keys_in_btree,
        "format_seconds": secs(format_time),
        "open_seconds": secs(open_time),
        "journal_write_seconds": secs(journal_time),
        "journal_seqs": [first_seq, last_seq],
        "journal_entries_written": stats.entries_written,
        "journal_bytes_written": stats.bytes_written,
        "du_bytes": du,
    }))
}

/// The newest update number of every position, from the generator.
fn newest_updates(keys: u64, unique: u64) -> Vec<u32> {
    let mut newest = vec![0u32; unique as usize];
    for (i, k, _, _) in RecKeys::new(keys, unique) {
        if let Some(slot) = newest.get_mut(k as usize) {
            *slot = i as u32;
        }
    }
    newest
}

/// Mounts (recovers) the images in `dir`; after the peak RSS is taken, checks the counts and a
/// sample of replayed positions against the generator.
fn rec_mount(dir: &Path, keys: u64, unique: u64) -> Result<serde_json::Value, String> {
    let e = |err: fs_core::error::Error| err.to_string();
    let set = open_device_set(&rec_paths(dir), true).map_err(e)?;
    let rss_before = peak_rss_kib();
    let t = Instant::now();
    let sampler = RssSampler::start(t)?;
    let mounted = mount(set, &MountOpts::default());
    let total = t.elapsed();
    let samples = sampler.finish();
    let m = mounted.map_err(e)?;
    let peak = peak_rss_kib();

    if m.journal_keys_read as u64 != keys || m.journal_keys_kept as u64 != unique {
        return Err(format!(
            "mount read {} journal keys and kept {}; expected {keys} and {unique}",
            m.journal_keys_read, m.journal_keys_kept
        ));
    }
    let newest = newest_updates(keys, unique);
    let mut rng = Rng::new(0x5eed);
    let mut sample: Vec<(BtreeId, Bkey, u64)> = (0..REC_VERIFY_SAMPLES.min(unique))
        .map(|_| {
            let k = rng.below(unique);
            let i = newest.get(k as usize).copied().unwrap_or(0);
            let (btree, want) = rec_key(k, u64::from(i));
            (btree, want, k)
        })
        .collect();
    // In key order, so each leaf is read once.
    sample.sort_unstable_by_key(|(btree, want, _)| (*btree, want.pos));
    for (btree, want, k) in sample {
        let got = m.fs.get(btree, want.pos).map_err(e)?;
        if got.as_ref() != Some(&want) {
            return Err(format!("position {k} ({btree} {}): replayed {got:?}, expected {want:?}", want.pos));
        }
    }
    let t = m.times;
    let phases = [
        ("journal_read", t.journal_read),
        ("sort", t.sort),
        ("replay", t.replay),
        ("write_back", t.write_back),
    ];
    let other = total.saturating_sub(phases.iter().map(|(_, p)| p.took).sum());
    let mut phase_secs = serde_json::Map::new();
    let mut phase_rss = serde_json::Map::new();
    for (name, p) in phases {
        phase_secs.insert(name.into(), json!(secs(p.took)));
        phase_rss.insert(name.into(), json!(sampled_peak(&samples, p.start, p.took)));
    }
    phase_secs.insert("other".into(), json!(secs(other)));
    Ok(json!({
        "phases_seconds": phase_secs,
        "phases_peak_rss_kib_sampled": phase_rss,
        "total_seconds": secs(total),
        "keys_per_sec": keys as f64 / secs(total),
        "peak_rss_kib": peak,
        "rss_before_kib": rss_before,
        "journal_keys_read": m.journal_keys_read,
        "journal_keys_kept": m.journal_keys_kept,
        "verified_samples": REC_VERIFY_SAMPLES.min(unique),
        "log": m.log.iter().filter(|l| l.starts_with("Journal keys") || l.contains("replay")).collect::<Vec<_>>(),
    }))
}

/// The floor: the same keys generated in memory, sorted by (btree, level, pos, seq), compacted
/// to the newest per position, and loaded into one `BTreeMap` per btree.
fn rec_floor(keys: u64, unique: u64) -> Result<serde_json::Value, String> {
    let t = Instant::now();
    let mut v: Vec<(BtreeId, u8, Bkey, u64)> = Vec::with_capacity(keys as usize);
    v.extend(RecKeys::new(keys, unique).map(|(i, _, btree, key)| (btree, 0, key, i)));
    let gen_time = t.elapsed();
    let generate_peak = peak_rss_kib();
    let per_phase = reset_peak_rss();

    let t = Instant::now();
    v.sort_unstable_by_key(|x| (x.0, x.1, x.2.pos, x.3));
    v.dedup_by(|later, kept| {
        let same = (later.0, later.1, later.2.pos) == (kept.0, kept.1, kept.2.pos);
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
    let sort_time = t.elapsed();
    let kept = v.len();
    let sort_peak = peak_rss_kib();
    reset_peak_rss();

    let t = Instant::now();
    let mut maps: std::collections::BTreeMap<BtreeId, std::collections::BTreeMap<Bpos, Box<[u8]>>> =
        std::collections::BTreeMap::new();
    let mut it = v.into_iter().peekable();
    while let Some(&(btree, ..)) = it.peek() {
        let mut run = Vec::new();
        while let Some((_, _, key, _)) = it.next_if(|x| x.0 == btree) {
            run.push((key.pos, key.val));
        }
        maps.insert(btree, run.into_iter().collect());
    }
    let build_time = t.elapsed();
    let build_peak = peak_rss_kib();
    let len: usize = maps.values().map(std::collections::BTreeMap::len).sum();
    if kept as u64 != unique || len as u64 != unique {
        return Err(format!("floor kept {kept} keys and built {len}; expected {unique}"));
    }
    Ok(json!({
        "generate_seconds": secs(gen_time),
        "sort_seconds": secs(sort_time),
        "build_seconds": secs(build_time),
        "total_seconds": secs(sort_time + build_time),
        "peak_rss_kib": generate_peak.max(sort_peak).max(build_peak),
        "phases_peak_rss_kib": {"generate": generate_peak, "sort": sort_peak, "build": build_peak},
        "phase_peaks_exact": per_phase,
    }))
}

/// One recovery phase (`mount DIR` or `floor`) in this process.
fn recovery_phase(phase: &str, dir: &str, keys: u64, unique: u64) -> Result<serde_json::Value, String> {
    match phase {
        "mount" => rec_mount(Path::new(dir), keys, unique),
        "floor" => rec_floor(keys, unique),
        other => Err(format!("unknown recovery phase '{other}'")),
    }
}

fn run_child(args: &[&str]) -> Result<serde_json::Value, String> {
    let exe = std::env::current_exe().map_err(|err| err.to_string())?;
    let out = std::process::Command::new(&exe).args(args).output().map_err(|err| err.to_string())?;
    if !out.status.success() {
        return Err(format!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    serde_json::from_slice(&out.stdout).map_err(|err| err.to_string())
}

fn get_f64(v: &serde_json::Value, key: &str) -> f64 {
    v.get(key).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN)
}

/// Encoded bytes of the compacted keys: one key per position, as the generator makes it.
fn rec_compacted_bytes(unique: u64) -> u64 {
    (0..unique).map(|k| rec_key(k, 0).1.encoded_bytes() as u64).sum()
}

fn bench_recovery(keys: u64, unique: u64) -> Result<serde_json::Value, String> {
    if unique == 0 || unique > keys || keys > u64::from(u32::MAX) {
        return Err(format!("need 0 < UNIQUE <= KEYS < 2^32, got {keys} and {unique}"));
    }
    let dir = rec_dir();
    let setup = rec_setup(&dir, keys, unique);
    let mounted = setup.as_ref().map_err(Clone::clone).and_then(|_| {
        eprintln!("bcsim-bench: recovery setup done, mounting");
        let d = dir.to_string_lossy();
        run_child(&["recovery-phase", "mount", &d, &keys.to_string(), &unique.to_string()])
    });
    let _ = std::fs::remove_dir_all(&dir);
    let (setup, mounted) = (setup?, mounted?);
    eprintln!("bcsim-bench: recovery mount done, measuring the floor");
    let floor = run_child(&["recovery-phase", "floor", "-", &keys.to_string(), &unique.to_string()])?;

    let compacted_bytes = rec_compacted_bytes(unique);
    let total = get_f64(&mounted, "total_seconds");
    let floor_total = get_f64(&floor, "total_seconds");
    let rss_bytes = get_f64(&mounted, "peak_rss_kib") * 1024.0;
    let time_ratio = total / floor_total;
    let keys_per_sec = keys as f64 / total;
    let rss_ratio = rss_bytes / compacted_bytes as f64;
    Ok(json!({
        "bench": "recovery",
        "keys": keys,
        "unique": unique,
        "compacted_key_bytes": compacted_bytes,
        "setup": setup,
        "mount": mounted,
        "floor": floor,
        "ratios": {
            "total_vs_floor": time_ratio,
            "peak_rss_vs_compacted_bytes": rss_ratio,
            "floor_rss_vs_compacted_bytes": get_f64(&floor, "peak_rss_kib") * 1024.0 / compacted_bytes as f64,
        },
        "targets": {
            "total_within_3x_floor": time_ratio <= TARGET_TIME_VS_FLOOR,
            "at_least_2m_keys_per_sec": keys_per_sec >= TARGET_KEYS_PER_SEC,
            "peak_rss_within_2x_compacted": rss_ratio <= TARGET_RSS_VS_COMPACTED,
        },
    }))
}

const ALLOC_INFO_SIZES: [(&str, u64); 2] = [("4g", 4 << 30), ("1t", TIB)];
const ALLOC_INFO_STEPS: [&str; 5] = ["format", "first-mount", "workload", "recovery-mount", "fsck-fn"];

/// Runs every alloc-info step for each size in its own process and reports them together.
fn bench_alloc_info() -> Result<serde_json::Value, String> {
    let exe = std::env::current_exe().map_err(|err| err.to_string())?;
    let mut sizes = serde_json::Map::new();
    for (name, size) in ALLOC_INFO_SIZES {
        let dir = std::env::temp_dir().join(format!("bcsim-bench-alloc-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut steps = serde_json::Map::new();
        for step in ALLOC_INFO_STEPS {
            let out = std::process::Command::new(&exe)
                .args(["alloc-info-step", step, &dir.display().to_string(), &size.to_string()])
                .output()
                .map_err(|err| err.to_string())?;
            if !out.status.success() {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("{name} {step} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|err| err.to_string())?;
            eprintln!("bcsim-bench: {name} {step}: {v}");
            steps.insert(step.to_owned(), v);
        }
        let _ = std::fs::remove_dir_all(&dir);
        sizes.insert(name.to_owned(), serde_json::Value::Object(steps));
    }
    let get = |size: &str, step: &str, field: &str| {
        sizes
            .get(size)
            .and_then(|s| s.get(step))
            .and_then(|v| v.get(field))
            .and_then(serde_json::Value::as_f64)
    };
    let mut ratios = serde_json::Map::new();
    let mut within = true;
    for step in ALLOC_INFO_STEPS {
        for field in ["seconds", "peak_rss_kib"] {
            let r = get("1t", step, field).zip(get("4g", step, field)).map(|(a, b)| a / b);
            // Times below a millisecond are noise, not cost.
            let small = field == "seconds" && get("1t", step, field).is_some_and(|t| t < 0.001);
            within &= small || r.is_some_and(|r| r <= 3.0);
            ratios.insert(format!("{step}_{field}"), json!(r));
        }
    }
    Ok(json!({
        "bench": "alloc-info",
        "devices": 8,
        "sizes": sizes,
        "ratios_1t_vs_4g": ratios,
        "targets": {"1t_within_3x_of_4g": within},
    }))
}

/// One alloc-info step on the images in `dir` (8 of `size` bytes).
fn alloc_info_step(step: &str, dir: &Path, size: u64) -> Result<serde_json::Value, String> {
    let e = |err: fs_core::error::Error| err.to_string();
    let paths: Vec<PathBuf> = (0..8).map(|i| dir.join(format!("dev{i}.img"))).collect();
    let t = Instant::now();
    let detail = match step {
        "format" => {
            let specs: Vec<ImageSpec> =
                paths.iter().map(|p| ImageSpec { size: Some(size), ..ImageSpec::new(p) }).collect();
            let mut opts = Options::default();
            opts.set(OptId::MetadataReplicas, OptValue::U64(2)).map_err(e)?;
            let report = format_images(&specs, &opts, None, true).map_err(e)?;
            let m = report.devices.first().map(|d| (d.member.nbuckets, d.member.bucket_size));
            json!({"nbuckets_per_device": m.map(|m| m.0), "bucket_size": m.map(|m| m.1)})
        }
        "first-mount" | "recovery-mount" => {
            let m = mount(open_device_set(&paths, true).map_err(e)?, &MountOpts::default()).map_err(e)?;
            let replayed = m.replayed;
            m.fs.unmount().map_err(e)?;
            json!({"replayed": replayed.map(|(a, b)| json!([a, b]))})
        }
        "workload" => {
            let r = bcsim::workload::run_on_images(&paths, 300, 1, Some(250), &MountOpts::default())
                .map_err(e)?;
            json!({"crashed": r.crashed})
        }
        "fsck-fn" => {
            let o = bcsim::fsck::FsckOpts {
                mode: bcsim::fsck::FixMode::No,
                force: true,
                mount: MountOpts::default(),
            };
            let r = bcsim::fsck::fsck(open_device_set(&paths, false).map_err(e)?, &o).map_err(e)?;
            json!({"problems": r.problems.len()})
        }
        other => return Err(format!("unknown alloc-info step '{other}'")),
    };
    Ok(json!({"seconds": t.elapsed().as_secs_f64(), "peak_rss_kib": peak_rss_kib(), "detail": detail}))
}

/// The key cache's flush target in the key-cache benchmark: a map under a lock, so that what is
/// measured is the cache and its pins, not the btree.
struct MapTarget {
    keys: fs_core::sync::Mutex<std::collections::HashMap<Bpos, Bkey>>,
}

impl key_cache::FlushTarget for MapTarget {
    fn flush_key(
        &self,
        _btree: BtreeId,
        key: &Bkey,
        _seq: u64,
        check: &dyn Fn(key_cache::Found<'_>) -> fs_core::error::Result<()>,
    ) -> fs_core::error::Result<()> {
        let mut keys = self.keys.lock();
        check(key_cache::Found { key: keys.get(&key.pos), topology_errors: 0, first_topology_error: None })?;
        keys.insert(key.pos, key.clone());
        Ok(())
    }
}

/// `key-cache [N]`: N cached alloc keys updated (each a filled entry made dirty and pinned),
/// by 1 and by 2 threads on disjoint positions, one journal commit per 1024 updates; then every
/// dirty entry flushed by journal reclaim. Reports updates/s and flushes/s.
fn bench_key_cache(n: u64) -> Result<serde_json::Value, String> {
    use fs_core::health::FsHealth;
    use fs_core::opts::{Behavior, LiveOpts};
    use journal::{Journal, JournalConfig, Ring};
    use key_cache::{FillInput, KeyCache};
    const BUCKET: u64 = 1 << 20;
    const BATCH: u64 = 1024;
    let e = |err: fs_core::error::Error| err.to_string();
    let mut runs = Vec::new();
    for threads in [1u64, 2] {
        let buckets = (n / BATCH / 64).max(64);
        let dev: SharedDevice = Arc::new(MemDevice::new("kc", (buckets + 1) * BUCKET));
        let ring = Ring::empty(0, dev, BUCKET, (1..=buckets).collect()).map_err(e)?;
        let cfg = JournalConfig {
            magic: 0xabc,
            block_size: 4096,
            max_entry_bytes: 64 << 10,
            labels: Default::default(),
            durability: Default::default(),
            preflush: Vec::new(),
        };
        let opts = Arc::new(LiveOpts::new(Options::default()));
        let j = Arc::new(Journal::new(vec![ring], cfg, 1, opts, Arc::new(FsHealth::new())).map_err(e)?);
        let key = |i: u64, v: u8| Bkey::new(Bpos::new(0, i, 0), KeyType::Set, vec![v; 24]);
        let target = Arc::new(MapTarget {
            keys: fs_core::sync::Mutex::new((0..n).map(|i| (Bpos::new(0, i, 0), key(i, 0))).collect()),
        });
        let weak: std::sync::Weak<dyn key_cache::FlushTarget> =
            Arc::downgrade(&(target.clone() as Arc<dyn key_cache::FlushTarget>));
        let cache = KeyCache::new(Behavior::Fixed, weak);
        let t = Instant::now();
        std::thread::scope(|s| -> Result<(), String> {
            let handles: Vec<_> = (0..threads)
                .map(|th| {
                    let (j, cache, target) = (&j, &cache, &target);
                    s.spawn(move || -> Result<(), String> {
                        let mut i = th;
                        while i < n {
                            let res = j.reserve(64, JournalWatermark::Normal).map_err(e)?;
                            let seq = res.seq();
                            for _ in 0..BATCH {
                                if i >= n {
                                    break;
                                }
                                let fill = || {
                                    Ok(FillInput {
                                        btree_key: target.keys.lock().get(&Bpos::new(0, i, 0)).cloned(),
                                        journal_key: None,
                                    })
                                };
                                cache.update(j, BtreeId::Alloc, key(i, 1), seq, fill).map_err(e)?;
                                i += threads;
                            }
                            j.commit(res, Vec::new(), Instant::now()).map_err(e)?;
                            j.flush().map_err(e)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| "update thread panicked".to_owned())??;
            }
            Ok(())
        })?;
        let update_secs = t.elapsed().as_secs_f64();
        let dirty = cache.nr_dirty();
        let t = Instant::now();
        j.flush_all_pins().map_err(e)?;
        let flush_secs = t.elapsed().as_secs_f64();
        if cache.nr_dirty() != 0 {
            return Err(format!("{} entries still dirty after the flush", cache.nr_dirty()));
        }
        runs.push(json!({
            "threads": threads,
            "updates": n,
            "updates_per_sec": n as f64 / update_secs,
            "dirty_entries": dirty,
            "flushes_per_sec": dirty as f64 / flush_secs,
        }));
    }
    Ok(json!({"bench": "key-cache", "runs": runs}))
}

/// Wake latency of a parked request after an option change: a waiter thread parks, the main
/// thread waits until it is parked, stamps the time and changes the options (directly, or
/// through the control socket); the waiter stamps the time it returns.
fn bench_alloc_wait(n: u64) -> Result<serde_json::Value, String> {
    use bcsim::control::{Control, Server, request};
    use fs_core::health::FsHealth;
    use fs_core::opts::LiveOpts;
    let dir = std::env::temp_dir().join(format!("bcsim-bench-wait-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for via_socket in [false, true] {
        let live = Arc::new(LiveOpts::new(Options::default()));
        let health = Arc::new(FsHealth::new());
        let list = allocator::WaitList::wired(&live, &health, 2, allocator::Clock::Manual);
        let control = Control::new(fs_core::uuid::Uuid::random(), Vec::new(), |_| {});
        control.attach_opts(live.clone());
        let server = via_socket
            .then(|| Server::start(control.clone(), dir.join("bench.sock")))
            .transpose()
            .map_err(|e| e.to_string())?;
        let mut lat: Vec<Duration> = Vec::with_capacity(n as usize);
        for i in 0..n {
            let ticket = list.ticket();
            let waiter = {
                let list = list.clone();
                std::thread::spawn(move || {
                    let wake = list.wait(&ticket, &[0, 1], Duration::MAX, fs_core::opts::Behavior::Fixed);
                    (wake, Instant::now())
                })
            };
            while list.parked() == 0 {
                std::thread::yield_now();
            }
            let replicas = 1 + i % 2;
            let t = Instant::now();
            match &server {
                Some(s) => {
                    request(s.path(), &format!("set metadata_replicas={replicas}"))
                        .map_err(|e| e.to_string())?;
                }
                None => {
                    live.set(OptId::MetadataReplicas, OptValue::U64(replicas)).map_err(|e| e.to_string())?;
                }
            }
            let (wake, woke) = waiter.join().map_err(|_| "waiter panicked".to_owned())?;
            if !matches!(wake, allocator::Wake::Options { .. }) {
                return Err(format!("woke with {wake:?}, expected an options change"));
            }
            lat.push(woke.saturating_duration_since(t));
        }
        lat.sort_unstable();
        let at =
            |q: f64| lat.get(((lat.len() as f64 - 1.0) * q) as usize).map_or(0.0, |d| d.as_secs_f64() * 1e6);
        out.push(json!({
            "via": if via_socket { "control_socket" } else { "in_process" },
            "wakes": n,
            "median_us": at(0.5),
            "p99_us": at(0.99),
            "max_us": at(1.0),
            "target_us": if via_socket { 50_000 } else { 1000 },
        }));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({ "bench": "alloc-wait", "runs": out }))
}

/// Crash states checked per second: `n` operations on 4 devices, reorder 1, seed 1.
fn bench_crash_states(n: u64) -> Result<serde_json::Value, String> {
    use bcsim::crash_states::{CrashOpts, run};
    let o = CrashOpts {
        seed: 1,
        ops: usize::try_from(n).map_err(|e| e.to_string())?,
        devices: 4,
        reorder: 1,
        dev_bytes: 32 << 20,
        limit: None,
        only: None,
    };
    let (_, r) = run(&o, &mut |_, _| {}).map_err(|e| e.to_string())?;
    Ok(json!({
        "bench": "crash-states", "ops": o.ops, "devices": o.devices, "reorder": o.reorder,
        "writes": r.writes, "flushes": r.flushes, "states": r.checked, "failures": r.failures.len(),
        "record_secs": r.record_secs, "check_secs": r.check_secs, "states_per_sec": r.states_per_sec(),
    }))
}

/// Seeds of the fault swarm per second on 2 threads: seeds 0..n.
fn bench_sim(n: u64) -> Result<serde_json::Value, String> {
    use bcsim::sim::{SimReport, run_seeds, shard_seeds};
    let seeds = shard_seeds(0..n, None);
    let t = std::time::Instant::now();
    let report = SimReport { results: run_seeds(&seeds, 2, &|_, _| {}) };
    let secs = t.elapsed().as_secs_f64();
    Ok(json!({
        "bench": "sim", "seeds": seeds.len(), "threads": 2, "secs": secs,
        "seeds_per_sec": seeds.len() as f64 / secs.max(1e-9),
        "crashes": report.total(|r| r.crashes), "failures": report.failures().count(),
    }))
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map_or("format", String::as_str);
    let n_arg = |i: usize, default: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let result = match which {
        "format" => bench_format(8, TIB, 20),
        "btree" => bench_btree(n_arg(2, 10_000_000)),
        "btree-phase" => btree_phase(args.get(2).map_or("", String::as_str), n_arg(3, 10_000_000)),
        "recovery" => bench_recovery(n_arg(2, REC_KEYS), n_arg(3, REC_UNIQUE)),
        // Images left in DIR for profiling `recovery-phase mount DIR KEYS UNIQUE` by hand.
        "recovery-setup" => rec_setup(
            Path::new(args.get(2).map_or("", String::as_str)),
            n_arg(3, REC_KEYS),
            n_arg(4, REC_UNIQUE),
        ),
        "recovery-phase" => recovery_phase(
            args.get(2).map_or("", String::as_str),
            args.get(3).map_or("", String::as_str),
            n_arg(4, REC_KEYS),
            n_arg(5, REC_UNIQUE),
        ),
        "alloc-info" => bench_alloc_info(),
        "key-cache" => bench_key_cache(n_arg(2, 1_000_000)),
        "alloc-wait" => bench_alloc_wait(n_arg(2, 2000)),
        "crash-states" => bench_crash_states(n_arg(2, 200)),
        "sim" => bench_sim(n_arg(2, 1000)),
        "alloc-info-step" => alloc_info_step(
            args.get(2).map_or("", String::as_str),
            Path::new(args.get(3).map_or("", String::as_str)),
            n_arg(4, 4 << 30),
        ),
        other => Err(format!(
            "unknown benchmark '{other}': expected format, btree, recovery, alloc-info, key-cache, alloc-wait, crash-states or sim"
        )),
    };
    match result {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bcsim-bench: {e}");
            std::process::ExitCode::from(8)
        }
    }
}
