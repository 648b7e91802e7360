//! `bcsim sim`: a seeded fault swarm, in the manner of FoundationDB's simulation and
//! TigerBeetle's VOPR.
//!
//! Each seed draws a filesystem (1 to 4 in-memory devices, replica counts, a behaviour profile)
//! and a workload with fsyncs, and runs it in rounds. Every device sits behind the
//! fault-injecting wrapper with a volatile write cache. In a round the filesystem is mounted,
//! runs a stretch of the workload (sometimes changing `data_replicas` at run time, sometimes
//! with writes, or writes and reads, failing with EIO now and then, sometimes with the power
//! cut after some writes: every write and flush from then on fails), and crashes: each
//! unflushed write lands whole, lands torn or is lost. Sometimes bits of stored data flip on one
//! device while it is down, or a bad sector appears (reads of its 4 KiB fail until a write
//! covers it); sometimes, where every replica has another, a device stops answering and the
//! filesystem runs degraded, until at a later crash the device may answer again, stale. After
//! a repair of such damage the seed goes on from what the files then hold, if that is still a
//! prefix of the operations.
//!
//! After every crash the filesystem must mount, hold a prefix of the operations that includes
//! every fsync that returned, and check clean with `fsck -n` once `fsck -y` has repaired what
//! the injected damage broke; the allocator's state must equal its btrees. Damage may make a
//! mount or a read fail, but only with an error: contents that silently differ, a panic, or a
//! seed that runs past its step or time budget are failures. Everything is drawn from the seed
//! and the filesystem runs without background threads, so `bcsim sim --seeds S..S` replays a
//! failing seed exactly.

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use fs_core::dev::{
    CrashMode, FaultKind, FaultOp, FaultRule, FaultyDevice, MemDevice, SharedDevice, Trigger,
};
use fs_core::error::{ErrCode, Error, Result};
use fs_core::format::DeviceSpec;
use fs_core::opts::{OptId, OptValue, Options};
use fs_core::rng::Rng;
use fs_core::sb::DeviceSet;
use fs_core::sync::{Arc, AtomicU64, Mutex, Ordering};
use serde_json::{Value, json};

use crate::files::Files;
use crate::fs::Fs;
use crate::fsck::{FixMode, FsckOpts, fsck};
use crate::images::format_devices;
use crate::passes::none_found;
use crate::recovery::{MountOpts, ReclaimMode, mount};
use crate::workload::{Op, generate, matching_prefixes, run_op};

/// Size of each in-memory device.
const DEV_BYTES: u64 = 16 << 20;
/// A seed running longer than this is a failure (a hang, or something close to one).
const SEED_TIME_BUDGET: Duration = Duration::from_secs(60);
/// Operations a seed may run in all, re-runs after a crash included.
const SEED_STEP_BUDGET: usize = 2000;

/// What one seed drew and what came of it. Equal for equal seeds, on any machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedResult {
    pub seed: u64,
    pub devices: usize,
    pub metadata_replicas: u64,
    pub data_replicas: u64,
    pub profile: &'static str,
    pub rounds: usize,
    pub ops_run: usize,
    pub crashes: usize,
    pub bits_flipped: usize,
    pub eio_rounds: usize,
    /// Of the EIO rounds, those in which reads fail now and then too.
    pub read_eio_rounds: usize,
    /// Bad sectors: 4 KiB of a device whose reads fail for the rest of the seed.
    pub bad_sectors: usize,
    /// Rounds whose crash came in the middle of an operation: from some write on, nothing
    /// more reaches the devices.
    pub power_cuts: usize,
    /// A device that stopped answering at a crash; the filesystem runs degraded from then on.
    pub vanished: usize,
    /// A vanished device that came back, stale, at a later crash.
    pub returned: usize,
    /// A device whose writes and flushes all failed from some point in a round on (a drive
    /// gone read-only at the end of its life), taken out at the round's crash.
    pub write_dead: usize,
    /// Damage reported (a mount or read failing with an error, fsck problems repaired).
    pub reported: usize,
    /// The first failure, with the round it came in.
    pub failure: Option<String>,
}

impl SeedResult {
    pub fn to_json(&self) -> Value {
        json!({
            "seed": self.seed, "devices": self.devices,
            "metadata_replicas": self.metadata_replicas, "data_replicas": self.data_replicas,
            "profile": self.profile, "rounds": self.rounds, "ops_run": self.ops_run,
            "crashes": self.crashes, "bits_flipped": self.bits_flipped, "eio_rounds": self.eio_rounds,
            "read_eio_rounds": self.read_eio_rounds, "bad_sectors": self.bad_sectors,
            "power_cuts": self.power_cuts, "vanished": self.vanished, "returned": self.returned,
            "write_dead": self.write_dead, "reported": self.reported, "failure": self.failure,
        })
    }

    pub fn from_json(v: &Value) -> Result<SeedResult> {
        let bad = |what: &str| {
            Error::new(ErrCode::InvalidArgument, format!("sim result: missing or bad \"{what}\""))
        };
        let num = |k: &str| v.get(k).and_then(Value::as_u64).ok_or_else(|| bad(k));
        let size = |k: &str| num(k).and_then(|n| usize::try_from(n).map_err(|_| bad(k)));
        let profile = match v.get("profile").and_then(Value::as_str) {
            Some("v1.37.5") => "v1.37.5",
            Some("v1.39") => "v1.39",
            Some("fixed") => "fixed",
            _ => return Err(bad("profile")),
        };
        Ok(SeedResult {
            seed: num("seed")?,
            devices: size("devices")?,
            metadata_replicas: num("metadata_replicas")?,
            data_replicas: num("data_replicas")?,
            profile,
            rounds: size("rounds")?,
            ops_run: size("ops_run")?,
            crashes: size("crashes")?,
            bits_flipped: size("bits_flipped")?,
            eio_rounds: size("eio_rounds")?,
            read_eio_rounds: size("read_eio_rounds")?,
            bad_sectors: size("bad_sectors")?,
            power_cuts: size("power_cuts")?,
            vanished: size("vanished")?,
            returned: size("returned")?,
            write_dead: size("write_dead")?,
            reported: size("reported")?,
            failure: match v.get("failure") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(bad("failure")),
            },
        })
    }
}

/// `I/N`: this machine runs the seeds whose offset in the range is `I` modulo `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Shard> {
        let bad =
            || Error::new(ErrCode::InvalidArgument, format!("'{s}' is not a shard: expected I/N with I < N"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.parse::<u64>().map_err(|_| bad())?, n.parse::<u64>().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// The seeds of `range` that `shard` runs.
pub fn shard_seeds(range: Range<u64>, shard: Option<Shard>) -> Vec<u64> {
    let start = range.start;
    range.filter(|s| shard.is_none_or(|sh| (s - start) % sh.count == sh.index)).collect()
}

/// Runs `seeds` on `threads` threads; `progress` is called with (done, total) as seeds finish.
/// Results come back sorted by seed.
pub fn run_seeds(seeds: &[u64], threads: usize, progress: &(dyn Fn(usize, usize) + Sync)) -> Vec<SeedResult> {
    let next = Arc::new(AtomicU64::new(0));
    let results = Arc::new(Mutex::new(Vec::with_capacity(seeds.len())));
    let seeds: Arc<Vec<u64>> = Arc::new(seeds.to_vec());
    // A pool of workers taking the next seed, not a protocol of the filesystem: scoped threads.
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            let (next, results, seeds) = (next.clone(), results.clone(), seeds.clone());
            scope.spawn(move || {
                loop {
                    let i = usize::try_from(next.fetch_add(1, Ordering::Relaxed)).unwrap_or(usize::MAX);
                    let Some(&seed) = seeds.get(i) else { break };
                    let r = run_seed(seed);
                    let done = {
                        let mut all = results.lock();
                        all.push(r);
                        all.len()
                    };
                    progress(done, seeds.len());
                }
            });
        }
    });
    let mut all = std::mem::take(&mut *results.lock());
    all.sort_by_key(|r| r.seed);
    all
}

/// Keys an odd seed's replays replay between node write-backs (see [`run_seed`]).
const SIM_REPLAY_WRITE_BACK_KEYS: usize = 64;

/// One seed, start to end; a panic inside is caught and is the seed's failure.
pub fn run_seed(seed: u64) -> SeedResult {
    let mut r = draw(seed);
    let started = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| rounds(seed, &mut r, started)));
    r.failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(why)) => Some(why),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Some(format!("round {}: panic: {msg}", r.rounds))
        }
    };
    if r.failure.is_none() && started.elapsed() > SEED_TIME_BUDGET {
        r.failure = Some(format!("ran {:?}, past its budget of {SEED_TIME_BUDGET:?}", started.elapsed()));
    }
    r
}

/// Whether a device may stop answering or writing with no fsynced data lost: every replica has
/// another (two of each on three or more devices), no run-time change may have written single
/// copies, no device is out already, and no bits were flipped so far (a bad replica nothing
/// has read yet stays bad: fsck checks metadata, and nothing here scrubs data).
fn redundant(r: &SeedResult, absent: Option<usize>, ever_damaged: bool, replicas_changed: bool) -> bool {
    absent.is_none()
        && !ever_damaged
        && !replicas_changed
        && r.devices >= 3
        && r.metadata_replicas >= 2
        && r.data_replicas >= 2
}

/// The filesystem a seed runs on.
fn draw(seed: u64) -> SeedResult {
    let mut rng = Rng::new(seed ^ 0x5eed_5eed);
    let devices = 1 + rng.below(4) as usize;
    let replicas = |rng: &mut Rng| 1 + rng.below(devices.min(2) as u64);
    let metadata_replicas = replicas(&mut rng);
    let data_replicas = replicas(&mut rng);
    let profile = *rng.choose(&["v1.37.5", "v1.39", "fixed"]).unwrap_or(&"fixed");
    SeedResult {
        seed,
        devices,
        metadata_replicas,
        data_replicas,
        profile,
        rounds: 0,
        ops_run: 0,
        crashes: 0,
        bits_flipped: 0,
        eio_rounds: 0,
        read_eio_rounds: 0,
        bad_sectors: 0,
        power_cuts: 0,
        vanished: 0,
        returned: 0,
        write_dead: 0,
        reported: 0,
        failure: None,
    }
}

/// The seed's rounds; `Err` is its failure.
fn rounds(seed: u64, r: &mut SeedResult, started: Instant) -> std::result::Result<(), String> {
    let mut rng = Rng::new(seed);
    // The write-dead fault draws from a generator of its own: the rest of a seed's draws do
    // not depend on it.
    let mut later_rng = Rng::new(seed ^ 0xdead_d15c);
    let fail = |round: usize, what: String| format!("round {round}: {what}");
    let devs = setup(seed, r).map_err(|e| fail(0, format!("format: {e}")))?;
    // A device that vanished is left out of every later mount, which is then degraded.
    let absent: std::cell::Cell<Option<usize>> = std::cell::Cell::new(None);
    let shared = || -> Vec<SharedDevice> {
        devs.iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != absent.get())
            .map(|(_, d)| d.clone() as SharedDevice)
            .collect()
    };
    let mut replicas_changed = false;
    let mut ever_damaged = false;
    // A bad sector: 4 KiB of one device that fail every read from the crash that made them
    // until a write covers them.
    let mut bad_sector = false;
    let nr_rounds = 2 + rng.below(3) as usize;
    let ops = generate(seed, 40 + rng.below(120) as usize);
    let opts_for = |o: String| -> std::result::Result<MountOpts, String> {
        let opts = fs_core::opts::parse_opts(&o, fs_core::opts::OptContext::Mount)
            .map_err(|e| fail(0, e.to_string()))?;
        // Odd seeds write nodes back during replay every few keys, as a recovery of millions of
        // keys does every million: the commits that makes must win over the journal keys.
        let replay_write_back_keys = (seed % 2 == 1).then_some(SIM_REPLAY_WRITE_BACK_KEYS);
        Ok(MountOpts { opts, reclaim: ReclaimMode::Manual, replay_write_back_keys, ..MountOpts::default() })
    };
    let whole = opts_for(format!("behavior={}", r.profile))?;
    let degraded = opts_for(format!("degraded,behavior={}", r.profile))?;
    // The operations known durable, and how far the workload got.
    let mut at = 0usize;
    for round in 1..=nr_rounds {
        r.rounds = round;
        if started.elapsed() > SEED_TIME_BUDGET || r.ops_run > SEED_STEP_BUDGET {
            return Err(fail(round, format!("past the seed's budget ({} operations run)", r.ops_run)));
        }
        let mopts = if absent.get().is_some() { &degraded } else { &whole };
        let eio = rng.chance(0.25);
        let read_eio = eio && rng.chance(0.5);
        let cut = rng.chance(0.5);
        // A device whose writes die for good in this round, where the others can stand in.
        let dying = (redundant(r, absent.get(), ever_damaged, replicas_changed) && later_rng.chance(0.1))
            .then(|| later_rng.below(r.devices as u64) as usize);
        let stop = (at + 1 + rng.below(ops.len() as u64) as usize).min(ops.len());
        let (acked, begun) = 'round: {
            let set = DeviceSet::open(shared()).map_err(|e| fail(round, format!("open: {e}")))?;
            let eio_on = |op, p| {
                for d in &devs {
                    d.add_rule(FaultRule {
                        op,
                        range: None,
                        trigger: Trigger::Probability(p),
                        kind: FaultKind::Eio,
                    });
                }
            };
            r.eio_rounds += usize::from(eio);
            if read_eio {
                // From the mount on: the journal read and the node reads of recovery meet them.
                r.read_eio_rounds += 1;
                eio_on(FaultOp::Read, 0.003);
            }
            // A read that failed may fail the mount or the file layer's first reads, with an
            // error; nothing ran.
            let read_failed = |e: &Error| (read_eio || bad_sector) && !e.matches(ErrCode::Internal);
            // The clock journal reclaim steps on (see below). Stepped once before anything is
            // committed, so that every entry is opened on it and the flush delay ends at the
            // same operation on every run.
            let t0 = Instant::now();
            let started =
                mount(set, mopts).map_err(|e| e.prefix("mount before the workload")).and_then(|m| {
                    let mut fs = m.fs;
                    fs.tick(t0).map_err(|e| e.prefix("journal reclaim before the workload"))?;
                    let files = Files::new(&mut fs).map_err(|e| e.prefix("file layer"))?;
                    Ok((fs, files))
                });
            let (mut fs, mut files) = match started {
                Ok(started) => started,
                Err(e) if read_failed(&e) => {
                    r.reported += 1;
                    break 'round (at, at);
                }
                Err(e) => return Err(fail(round, e.to_string())),
            };
            if eio {
                eio_on(FaultOp::Write, 0.002);
            }
            if let Some(d) = dying.and_then(|i| devs.get(i)) {
                let skip = later_rng.below(64);
                for op in [FaultOp::Write, FaultOp::Flush] {
                    let trigger = Trigger::Nth { skip, count: u64::MAX };
                    d.add_rule(FaultRule { op, range: None, trigger, kind: FaultKind::Eio });
                }
            }
            if cut {
                // The power goes after some writes: every write and flush from then on fails
                // and never lands, on every device.
                r.power_cuts += 1;
                for d in &devs {
                    let skip = rng.below(64);
                    for op in [FaultOp::Write, FaultOp::Flush] {
                        let trigger = Trigger::Nth { skip, count: u64::MAX };
                        d.add_rule(FaultRule { op, range: None, trigger, kind: FaultKind::Eio });
                    }
                }
            }
            let change_at = rng.chance(0.3).then(|| at + rng.below((stop - at) as u64 + 1) as usize);
            let mut acked = at;
            let mut begun = at;
            for (i, op) in ops.iter().enumerate().take(stop).skip(at) {
                if Some(i) == change_at {
                    replicas_changed = true;
                    let v = 1 + rng.below(r.devices.min(2) as u64);
                    // Refused when the devices cannot give it; that is the option's business.
                    let _ = fs.opts().set(OptId::DataReplicas, OptValue::U64(v));
                }
                begun = i + 1;
                r.ops_run += 1;
                // Journal reclaim steps after each operation, as a mount's reclaim thread runs
                // it, on a clock of 10 ms an operation: the flush delay writes the open entry
                // every 100 operations without an fsync.
                let tick = |fs: &mut Fs| fs.tick(t0 + Duration::from_millis(10 * (i as u64 + 1)));
                match run_op(&mut fs, &mut files, op).and_then(|()| tick(&mut fs)) {
                    Ok(()) if *op == Op::Fsync => acked = i + 1,
                    Ok(()) => {}
                    // An injected I/O error: the operation failed, the filesystem may have
                    // gone read-only; the round ends in a crash either way.
                    Err(_) if eio || cut || bad_sector || dying.is_some() => break,
                    Err(e) => return Err(fail(round, format!("operation {} ({op:?}): {e}", i + 1))),
                }
            }
            drop(files);
            drop(fs);
            (acked, begun)
        };
        for d in &devs {
            // The round's faults end with it; a bad sector stays until a write remaps it.
            d.retain_rules(|rule| rule.kind == FaultKind::BadSector);
            let mode = if rng.chance(0.5) { CrashMode::TearUnflushed } else { CrashMode::DropUnflushed };
            d.crash(mode).map_err(|e| fail(round, format!("crash: {e}")))?;
        }
        r.crashes += 1;
        if !bad_sector && rng.chance(0.05) {
            let victim = rng.below(devs.len() as u64) as usize;
            let at = rng.below(DEV_BYTES / 4096) * 4096;
            if let Some(d) = devs.get(victim) {
                d.add_rule(FaultRule {
                    op: FaultOp::Read,
                    range: Some(at..at + 4096),
                    trigger: Trigger::Always,
                    kind: FaultKind::BadSector,
                });
                bad_sector = true;
                r.bad_sectors += 1;
                ever_damaged = true;
            }
        }
        // Reads of the bad sector fail until a write covers it, which this seed cannot see:
        // damage is allowed from its crash on.
        let mut damaged = bad_sector;
        if rng.chance(0.2) {
            let victim = rng.below(devs.len() as u64) as usize;
            let n = 1 + rng.below(8) as usize;
            if let Some(d) = devs.get(victim) {
                r.bits_flipped +=
                    d.flip_random_bits(0..DEV_BYTES, n).map_err(|e| fail(round, e.to_string()))?.len();
                damaged = true;
                ever_damaged = true;
            }
        }
        // The device whose writes died is taken out, if the others still hold a replica of
        // everything (the round may have changed the replicas since); if not, its failure was
        // a passing one (a controller reset), and the crash ended it with the round's other
        // faults.
        let may_lose = redundant(r, absent.get(), ever_damaged, replicas_changed);
        if let Some(i) = dying.filter(|_| may_lose) {
            absent.set(Some(i));
            r.write_dead += 1;
        } else if may_lose && rng.chance(0.3) {
            absent.set(Some(rng.below(r.devices as u64) as usize));
            r.vanished += 1;
        } else if absent.get().is_some() && rng.chance(0.3) {
            // It answers again, as it was when it went: everything written since is missing
            // from it.
            absent.set(None);
            r.returned += 1;
        }
        let mopts = if absent.get().is_some() { &degraded } else { &whole };
        match check(&shared, mopts, &ops, acked, begun, damaged, r).map_err(|e| fail(round, e))? {
            Some(held) => at = held,
            None => break,
        }
    }
    Ok(())
}

fn setup(seed: u64, r: &SeedResult) -> Result<Vec<Arc<FaultyDevice>>> {
    let mem: Vec<SharedDevice> = (0..r.devices)
        .map(|i| Arc::new(MemDevice::new(format!("sim{i}"), DEV_BYTES)) as SharedDevice)
        .collect();
    let mut opts = Options::default();
    opts.set_text(OptId::BtreeNodeSize, "16k")?;
    opts.set(OptId::MetadataReplicas, OptValue::U64(r.metadata_replicas))?;
    opts.set(OptId::DataReplicas, OptValue::U64(r.data_replicas))?;
    let specs: Vec<DeviceSpec> = mem.iter().map(|d| DeviceSpec::new(d.clone())).collect();
    format_devices(&specs, &opts, Some(fs_core::uuid::Uuid::from_rng(&mut Rng::new(seed))))?;
    Ok(mem
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let f = FaultyDevice::new(d, seed.wrapping_add(i as u64));
            f.set_volatile_cache(true);
            Arc::new(f)
        })
        .collect())
}

/// The checks after a crash. Returns how many operations the filesystem now holds, or `None`
/// when injected damage took some of them (reported, as it must be): the files no longer follow
/// the workload, and the seed ends there.
fn check(
    shared: &dyn Fn() -> Vec<SharedDevice>,
    mopts: &MountOpts,
    ops: &[Op],
    acked: usize,
    begun: usize,
    damaged: bool,
    r: &mut SeedResult,
) -> std::result::Result<Option<usize>, String> {
    let open = || DeviceSet::open(shared()).map_err(|e| format!("open: {e}"));
    let fsck_as = |mode| {
        let o = FsckOpts {
            mode,
            force: true,
            mount: MountOpts {
                opts: mopts.opts.clone(),
                reclaim: ReclaimMode::Manual,
                replay_write_back_keys: mopts.replay_write_back_keys,
                ..MountOpts::default()
            },
        };
        fsck(open()?, &o).map_err(|e| format!("fsck: {e}"))
    };
    // What the files hold, or whether damage made the mount or a read fail, or the mount's log
    // name a checksum error (as the kernel's log names one: a journal entry's only copy found
    // bad reads like a write the crash cut short, and only the log can say otherwise).
    let mut broken = None;
    let mut logged = false;
    let (held, failed) = match mount(open()?, mopts) {
        Ok(m) => {
            logged = m.log.iter().any(|l| l.contains("checksum"));
            let mut fs = m.fs;
            let held = matching_prefixes(&mut fs, ops, acked, begun);
            let invariants = fs.check_alloc_invariants();
            fs.unmount().map_err(|e| format!("unmount after the check: {e}"))?;
            if let Err(e) = invariants {
                // Damage may break it, but fsck must then say so (checked below).
                if !damaged {
                    return Err(format!("allocator state differs from its btrees: {e}"));
                }
                broken = Some(e.to_string());
            }
            match held {
                Ok(p) => (p.last().copied(), false),
                Err(_) if damaged => (None, true),
                Err(e) => return Err(format!("reading the files after the crash: {e}")),
            }
        }
        Err(e) if damaged && !e.matches(ErrCode::Internal) => (None, true),
        Err(e) => return Err(format!("mount after the crash: {e}")),
    };
    let first = fsck_as(FixMode::No)?;
    if held.is_none() && !damaged {
        return Err(format!("the files match no prefix of the operations in {acked}..={begun}"));
    }
    if held.is_none() && !failed && !logged && first.problems.is_empty() {
        return Err(format!(
            "the files match no prefix of the operations in {acked}..={begun} and nothing reported damage"
        ));
    }
    if let (Some(e), true) = (&broken, first.problems.is_empty()) {
        return Err(format!(
            "allocator state differs from its btrees after damage, and fsck -n found nothing: {e}"
        ));
    }
    if failed || (held.is_none() && logged) {
        r.reported += 1;
    }
    if !first.problems.is_empty() {
        if !damaged {
            none_found(&first.problems, "fsck -n after a crash")?;
        }
        r.reported += 1;
        fsck_as(FixMode::Yes)?;
        none_found(&fsck_as(FixMode::No)?.problems, "fsck -n after fsck -y")?;
        if damaged {
            // The repair may have dropped what it could not read (reported above): the files
            // go on from what they hold now, if that is still a prefix of the operations.
            let mut fs = mount(open()?, mopts).map_err(|e| format!("mount after fsck -y: {e}"))?.fs;
            let now = matching_prefixes(&mut fs, ops, acked, begun).ok().and_then(|p| p.last().copied());
            fs.unmount().map_err(|e| format!("unmount after fsck -y: {e}"))?;
            return Ok(now.filter(|_| held.is_some()));
        }
    }
    Ok(held)
}

/// What a run or a merge of runs found.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub results: Vec<SeedResult>,
}

impl SimReport {
    pub fn failures(&self) -> impl Iterator<Item = &SeedResult> {
        self.results.iter().filter(|r| r.failure.is_some())
    }

    /// A total over the seeds.
    pub fn total(&self, of: fn(&SeedResult) -> usize) -> usize {
        self.results.iter().map(of).sum()
    }

    pub fn to_json(&self) -> Value {
        let failures: Vec<Value> = self
            .failures()
            .map(|r| json!({"seed": r.seed, "failure": r.failure, "replay": format!("bcsim sim --seeds {0}..{0}", r.seed)}))
            .collect();
        json!({
            "seeds": self.results.len(),
            "failed": failures.len(),
            "crashes": self.total(|r| r.crashes),
            "eio_rounds": self.total(|r| r.eio_rounds),
            "read_eio_rounds": self.total(|r| r.read_eio_rounds),
            "bad_sectors": self.total(|r| r.bad_sectors),
            "power_cuts": self.total(|r| r.power_cuts),
            "vanished": self.total(|r| r.vanished),
            "returned": self.total(|r| r.returned),
            "write_dead": self.total(|r| r.write_dead),
            "ops_run": self.total(|r| r.ops_run),
            "bits_flipped": self.total(|r| r.bits_flipped),
            "reported": self.total(|r| r.reported),
            "failures": failures,
            "results": self.results.iter().map(SeedResult::to_json).collect::<Vec<_>>(),
        })
    }

    /// Reads a report [`SimReport::to_json`] wrote.
    pub fn from_json(v: &Value) -> Result<SimReport> {
        let results = v
            .get("results")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::new(ErrCode::InvalidArgument, "sim result: no \"results\" array"))?
            .iter()
            .map(SeedResult::from_json)
            .collect::<Result<Vec<_>>>()?;
        Ok(SimReport { results })
    }

    /// Several shards' reports as one: every seed once, in order. A seed two reports disagree
    /// on is refused (the shards did not run the same build).
    pub fn merge(parts: Vec<SimReport>) -> Result<SimReport> {
        let mut by_seed: std::collections::BTreeMap<u64, SeedResult> = std::collections::BTreeMap::new();
        for r in parts.into_iter().flat_map(|p| p.results) {
            match by_seed.get(&r.seed) {
                Some(old) if *old != r => {
                    return Err(Error::new(
                        ErrCode::InvalidArgument,
                        format!("seed {} has two different results: the shards ran different builds", r.seed),
                    ));
                }
                _ => {
                    by_seed.insert(r.seed, r);
                }
            }
        }
        Ok(SimReport { results: by_seed.into_values().collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_range() {
        let all = shard_seeds(10..31, None);
        let mut parts: Vec<u64> =
            (0..3).flat_map(|i| shard_seeds(10..31, Some(Shard { index: i, count: 3 }))).collect();
        parts.sort_unstable();
        assert_eq!(parts, all);
        for bad in ["", "1", "3/3", "a/2", "1/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!("2/5".parse::<Shard>().ok(), Some(Shard { index: 2, count: 5 }));
    }
}
