//! `bcsim crash-states`: every state a crash could leave a seeded workload's devices in, checked.
//!
//! A seeded file workload runs on in-memory devices whose writes and flushes are recorded in
//! one global order (each flush names its device: it makes only that device's earlier writes
//! durable). The fault-injecting wrapper's own log is kept per device; a crash state is cut
//! from the order across devices, so this records through a wrapper of its own. From the log, the states a crash can leave are enumerated, as CrashMonkey and
//! ALICE do:
//!
//! - **prefix** `p<k>`: every write before log position `k` landed, nothing after;
//! - **dropped** `d<k>-<i>.<j>...`: at the end of a flush epoch (position `k` is a flush, or the
//!   end of the log), the listed writes did not land although later ones did. Only writes no
//!   flush of their own device has covered by `k` may be missing. At most `--reorder` of them
//!   go missing at once; this also stands for writes landing out of order, since a write that
//!   landed before an earlier one is, at a crash between the two, the earlier one missing;
//! - **torn** `t<k>`: every write before `k` landed, and write `k` landed its first half only
//!   (whole sectors), as a power cut in the middle of a large write leaves it.
//!
//! Each state must: pass `fsck -n` before any mount, mount without recovery repairing anything,
//! hold the contents of some prefix of the operations that includes every operation whose
//! fsync had returned by then (and none that had not started), and pass `fsck -n` after an
//! unmount. A state that does not is a failure, named by its id: `--state ID` checks that one
//! state again, `--dump DIR` writes its images.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use fs_core::dev::{BlockDevice, MemDevice, SECTOR_SIZE, SharedDevice};
use fs_core::error::{ErrCode, Error, Result, io_error};
use fs_core::format::DeviceSpec;
use fs_core::opts::{OptId, Options};
use fs_core::rng::Rng;
use fs_core::sb::DeviceSet;
use fs_core::sync::{Arc, Mutex};

use crate::files::Files;
use crate::fsck::{FixMode, FsckOpts, fsck};
use crate::images::format_devices;
use crate::passes::none_found;
use crate::recovery::{MountOpts, ReclaimMode, mount};
use crate::workload::{Op, generate, matching_prefixes, run_op};

/// What to run and how far to enumerate.
#[derive(Clone, Debug)]
pub struct CrashOpts {
    pub seed: u64,
    pub ops: usize,
    pub devices: usize,
    /// Writes that may be missing at once in a dropped state (0: prefixes and torn writes only).
    pub reorder: usize,
    /// Size of each in-memory device.
    pub dev_bytes: u64,
    /// Check only the first `limit` states of the enumeration.
    pub limit: Option<usize>,
    /// Check only this state.
    pub only: Option<StateId>,
}

impl CrashOpts {
    /// The command line that checks `state` of this run again.
    pub fn replay_command(&self, state: &StateId) -> String {
        format!(
            "bcsim crash-states --seed {} --ops {} --devices {} --reorder {} --state {state}",
            self.seed, self.ops, self.devices, self.reorder
        )
    }
}

/// Dropped states checked per flush epoch at most: the subsets beyond it are sampled from the
/// seed.
const MAX_DROPPED_PER_EPOCH: usize = 12;
/// Operations between two write-backs of the workload, as journal reclaim would run them.
const WRITE_BACK_EVERY: usize = 8;

/// One crash state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StateId {
    Prefix(usize),
    Dropped { at: usize, lost: Vec<usize> },
    Torn(usize),
}

impl StateId {
    pub fn kind(&self) -> &'static str {
        match self {
            StateId::Prefix(_) => "prefix",
            StateId::Dropped { .. } => "dropped",
            StateId::Torn(_) => "torn",
        }
    }
}

impl fmt::Display for StateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateId::Prefix(k) => write!(f, "p{k}"),
            StateId::Torn(k) => write!(f, "t{k}"),
            StateId::Dropped { at, lost } => {
                let lost: Vec<String> = lost.iter().map(usize::to_string).collect();
                write!(f, "d{at}-{}", lost.join("."))
            }
        }
    }
}

impl FromStr for StateId {
    type Err = Error;

    fn from_str(s: &str) -> Result<StateId> {
        let bad = || {
            Error::new(
                ErrCode::InvalidArgument,
                format!("'{s}' is not a crash state: expected p<k>, t<k> or d<k>-<i>.<j>..."),
            )
        };
        let num = |t: &str| t.parse::<usize>().map_err(|_| bad());
        let (kind, rest) = s.split_at_checked(1).ok_or_else(bad)?;
        match kind {
            "p" => Ok(StateId::Prefix(num(rest)?)),
            "t" => Ok(StateId::Torn(num(rest)?)),
            "d" => {
                let (at, lost) = rest.split_once('-').ok_or_else(bad)?;
                let lost = lost.split('.').map(num).collect::<Result<Vec<_>>>()?;
                Ok(StateId::Dropped { at: num(at)?, lost })
            }
            _ => Err(bad()),
        }
    }
}

#[derive(Clone)]
enum Event {
    Write { dev: usize, offset: u64, data: Arc<[u8]> },
    Flush { dev: usize },
}

/// Passes I/O through and records every write and flush of all devices in one order.
#[derive(Debug)]
struct Recorder {
    dev: usize,
    inner: SharedDevice,
    log: Arc<Mutex<Vec<Event>>>,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Write { dev, offset, data } => {
                write!(f, "write dev {dev} at {offset}, {} bytes", data.len())
            }
            Event::Flush { dev } => write!(f, "flush dev {dev}"),
        }
    }
}

impl BlockDevice for Recorder {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.inner.write_at(buf, offset)?;
        self.log.lock().push(Event::Write { dev: self.dev, offset, data: buf.into() });
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()?;
        self.log.lock().push(Event::Flush { dev: self.dev });
        Ok(())
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
}

/// A recorded run: the formatted devices, the log, and where each operation began and ended.
pub struct Recorded {
    base: Vec<Arc<MemDevice>>,
    events: Vec<Event>,
    ops: Vec<Op>,
    /// Per operation, the log length when it started and when it returned.
    started: Vec<usize>,
    returned: Vec<usize>,
}

impl Recorded {
    pub fn writes(&self) -> usize {
        self.events.iter().filter(|e| matches!(e, Event::Write { .. })).count()
    }

    pub fn flushes(&self) -> usize {
        self.events.len() - self.writes()
    }

    /// The device log position `i` wrote to, if it is a write.
    pub fn writes_to(&self, i: usize) -> Option<usize> {
        match self.events.get(i) {
            Some(Event::Write { dev, .. }) => Some(*dev),
            _ => None,
        }
    }

    /// The first position a crash can come at: the filesystem was mounted and its file layer
    /// set up (a crash before is a crash of format).
    fn first(&self) -> usize {
        self.started.first().copied().unwrap_or(self.events.len())
    }

    /// Operations whose fsync had returned by position `k`: the contents must include them.
    fn acked(&self, k: usize) -> usize {
        (0..self.ops.len())
            .rev()
            .find(|&i| self.ops.get(i) == Some(&Op::Fsync) && self.returned.get(i).is_some_and(|&r| r <= k))
            .map_or(0, |i| i + 1)
    }

    /// Operations that had started by position `k`: the contents may include no more.
    fn begun(&self, k: usize) -> usize {
        self.started.iter().take_while(|&&s| s < k).count()
    }

    /// Writes before `k` that no flush of their own device covers by `k`.
    fn unflushed(&self, k: usize) -> Vec<usize> {
        let mut flushed_at = vec![0usize; self.base.len()];
        for (i, e) in self.events.iter().enumerate().take(k) {
            if let Event::Flush { dev } = e {
                if let Some(f) = flushed_at.get_mut(*dev) {
                    *f = i + 1;
                }
            }
        }
        (0..k.min(self.events.len()))
            .filter(|&i| match self.events.get(i) {
                Some(Event::Write { dev, .. }) => flushed_at.get(*dev).is_some_and(|&f| i >= f),
                _ => false,
            })
            .collect()
    }
}

/// Formats `o.devices` in-memory devices and runs the seeded workload on them, recording.
pub fn record(o: &CrashOpts) -> Result<Recorded> {
    if o.devices == 0 || o.devices > 16 {
        return Err(Error::new(
            ErrCode::InvalidArgument,
            format!("--devices {} is not in 1..=16", o.devices),
        ));
    }
    let base: Vec<Arc<MemDevice>> =
        (0..o.devices).map(|i| Arc::new(MemDevice::new(format!("mem{i}"), o.dev_bytes))).collect();
    let mut opts = Options::default();
    opts.set_text(OptId::BtreeNodeSize, "16k")?;
    opts.set_text(OptId::MetadataReplicas, if o.devices > 1 { "2" } else { "1" })?;
    let specs: Vec<DeviceSpec> = base.iter().map(|d| DeviceSpec::new(d.clone() as SharedDevice)).collect();
    format_devices(&specs, &opts, Some(fs_core::uuid::Uuid::from_rng(&mut Rng::new(o.seed))))?;

    let log = Arc::new(Mutex::new(Vec::new()));
    let run: Vec<SharedDevice> = base
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let inner: SharedDevice = Arc::new(b.deep_copy(format!("mem{i}")));
            Arc::new(Recorder { dev: i, inner, log: log.clone() }) as SharedDevice
        })
        .collect();
    let ops = generate(o.seed, o.ops);
    let (mut started, mut returned) = (Vec::with_capacity(ops.len()), Vec::with_capacity(ops.len()));
    {
        // No reclaim thread: every recorded write comes from the operations, in one order.
        let mopts = MountOpts { reclaim: ReclaimMode::Manual, ..MountOpts::default() };
        let mut fs = mount(DeviceSet::open(run)?, &mopts)?.fs;
        let mut files = Files::new(&mut fs)?;
        fs.fsync()?;
        for (i, op) in ops.iter().enumerate() {
            started.push(log.lock().len());
            run_op(&mut fs, &mut files, op)
                .map_err(|e| e.prefix(format_args!("operation {} ({op:?})", i + 1)))?;
            // Write-back, as reclaim would: node writes and new roots are crash points too.
            if i % WRITE_BACK_EVERY == WRITE_BACK_EVERY - 1 {
                fs.write_back()?;
            }
            returned.push(log.lock().len());
        }
        // The run ends in a crash: nothing is unmounted.
    }
    let events = std::mem::take(&mut *log.lock());
    Ok(Recorded { base, events, ops, started, returned })
}

/// Every state of the enumeration, in log order: prefixes at every position, torn writes at
/// every write, and dropped subsets of up to `reorder` unflushed writes at each epoch's end.
pub fn states(rec: &Recorded, reorder: usize, seed: u64) -> Vec<StateId> {
    let mut out = Vec::new();
    for k in rec.first()..=rec.events.len() {
        out.push(StateId::Prefix(k));
        if let Some(Event::Write { data, .. }) = rec.events.get(k) {
            if data.len() as u64 >= 2 * SECTOR_SIZE {
                out.push(StateId::Torn(k));
            }
        }
        let epoch_end = k == rec.events.len() || matches!(rec.events.get(k), Some(Event::Flush { .. }));
        if reorder > 0 && epoch_end {
            let candidates: Vec<usize> = rec.unflushed(k).into_iter().filter(|&i| i >= rec.first()).collect();
            out.extend(
                dropped_subsets(&candidates, reorder, seed ^ (k as u64))
                    .into_iter()
                    .map(|lost| StateId::Dropped { at: k, lost }),
            );
        }
    }
    out
}

/// Subsets of `candidates` of 1..=`max` elements: all of them when they are few, else a sample
/// drawn from `seed`, always including each single write when those alone fit.
fn dropped_subsets(candidates: &[usize], max: usize, seed: u64) -> Vec<Vec<usize>> {
    if candidates.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<Vec<usize>> = Vec::new();
    if candidates.len() <= MAX_DROPPED_PER_EPOCH {
        out.extend(candidates.iter().map(|&c| vec![c]));
    }
    let mut rng = Rng::new(seed);
    let mut tries = 0;
    while out.len() < MAX_DROPPED_PER_EPOCH && tries < 8 * MAX_DROPPED_PER_EPOCH {
        tries += 1;
        let n = 1 + rng.below(max.min(candidates.len()) as u64) as usize;
        let mut pick = candidates.to_vec();
        rng.shuffle(&mut pick);
        pick.truncate(n);
        pick.sort_unstable();
        if !out.contains(&pick) {
            out.push(pick);
        }
    }
    out
}

/// The images of state `id`: copies of the formatted devices with the state's writes applied.
pub fn build_state(rec: &Recorded, id: &StateId) -> Result<Vec<Arc<MemDevice>>> {
    let (end, lost, torn): (usize, &[usize], Option<usize>) = match id {
        StateId::Prefix(k) => (*k, &[], None),
        StateId::Torn(k) => (*k, &[], Some(*k)),
        StateId::Dropped { at, lost } => (*at, lost.as_slice(), None),
    };
    let out_of_log = || {
        Error::new(
            ErrCode::InvalidArgument,
            format!("state {id}: the run has {} log positions", rec.events.len()),
        )
    };
    if end > rec.events.len() || end < rec.first() || lost.iter().any(|&i| i >= end) {
        return Err(out_of_log());
    }
    let devs: Vec<Arc<MemDevice>> =
        rec.base.iter().enumerate().map(|(i, b)| Arc::new(b.deep_copy(format!("mem{i}")))).collect();
    let apply = |e: &Event, len: Option<usize>| -> Result<()> {
        if let Event::Write { dev, offset, data } = e {
            let d = devs.get(*dev).ok_or_else(out_of_log)?;
            let bytes = data.get(..len.unwrap_or(data.len())).ok_or_else(out_of_log)?;
            d.write_at(bytes, *offset)?;
        }
        Ok(())
    };
    for (i, e) in rec.events.iter().enumerate().take(end) {
        if !lost.contains(&i) {
            apply(e, None)?;
        }
    }
    if let Some(k) = torn {
        let e = rec.events.get(k).ok_or_else(out_of_log)?;
        let Event::Write { data, .. } = e else { return Err(out_of_log()) };
        let half = (data.len() as u64 / 2 / SECTOR_SIZE * SECTOR_SIZE) as usize;
        apply(e, Some(half))?;
    }
    Ok(devs)
}

/// Checks one state; `Err` describes how it failed (an `Error` of the checker itself, such as a
/// state id outside the log, is returned as such by [`build_state`] first).
pub fn check_state(rec: &Recorded, id: &StateId) -> Result<std::result::Result<(), String>> {
    let devs = build_state(rec, id)?;
    let k = match id {
        StateId::Prefix(k) | StateId::Dropped { at: k, .. } => *k,
        StateId::Torn(k) => *k + 1,
    };
    // A torn write had not returned: only what was acknowledged before it counts.
    let acked = rec.acked(if matches!(id, StateId::Torn(_)) { k - 1 } else { k });
    let begun = rec.begun(k);
    let shared = || -> Vec<SharedDevice> { devs.iter().map(|d| d.clone() as SharedDevice).collect() };
    let check = FsckOpts { mode: FixMode::No, force: true, mount: MountOpts::default() };
    let verdict = (|| -> std::result::Result<(), String> {
        let set = |what: &str| DeviceSet::open(shared()).map_err(|e| format!("{what}: {e}"));
        let before =
            fsck(set("opening for fsck -n")?, &check).map_err(|e| format!("fsck -n before mount: {e}"))?;
        none_found(&before.problems, "fsck -n before mount")?;
        let mopts = MountOpts { reclaim: ReclaimMode::Manual, ..MountOpts::default() };
        let m = mount(set("opening for mount")?, &mopts).map_err(|e| format!("mount: {e}"))?;
        none_found(&m.problems, "recovery repaired")?;
        let mut fs = m.fs;
        let matching =
            matching_prefixes(&mut fs, &rec.ops, acked, begun).map_err(|e| format!("reading: {e}"))?;
        if matching.is_empty() {
            return Err(format!("contents match no prefix of the operations in {acked}..={begun}"));
        }
        fs.unmount().map_err(|e| format!("unmount: {e}"))?;
        let after =
            fsck(set("opening for fsck -n")?, &check).map_err(|e| format!("fsck -n after unmount: {e}"))?;
        none_found(&after.problems, "fsck -n after unmount")?;
        Ok(())
    })();
    Ok(verdict)
}

/// A state that failed its checks.
#[derive(Clone, Debug)]
pub struct Failure {
    pub state: StateId,
    pub what: String,
    pub replay: String,
}

/// What a run checked and found.
#[derive(Clone, Debug, Default)]
pub struct CrashReport {
    pub writes: usize,
    pub flushes: usize,
    pub checked: usize,
    pub prefix: usize,
    pub dropped: usize,
    pub torn: usize,
    pub record_secs: f64,
    pub check_secs: f64,
    pub failures: Vec<Failure>,
}

impl CrashReport {
    pub fn states_per_sec(&self) -> f64 {
        if self.check_secs > 0.0 { self.checked as f64 / self.check_secs } else { 0.0 }
    }
}

/// Records the run and checks its states (or the one `o.only` names); `progress` is called
/// after each state with (checked, total).
pub fn run(o: &CrashOpts, progress: &mut dyn FnMut(usize, usize)) -> Result<(Recorded, CrashReport)> {
    let t = Instant::now();
    let rec = record(o)?;
    let record_secs = t.elapsed().as_secs_f64();
    let mut all = match &o.only {
        Some(id) => vec![id.clone()],
        None => states(&rec, o.reorder, o.seed),
    };
    if let Some(n) = o.limit {
        all.truncate(n);
    }
    let mut report =
        CrashReport { writes: rec.writes(), flushes: rec.flushes(), record_secs, ..CrashReport::default() };
    let t = Instant::now();
    for (i, id) in all.iter().enumerate() {
        if let Err(what) = check_state(&rec, id)? {
            report.failures.push(Failure { state: id.clone(), what, replay: o.replay_command(id) });
        }
        report.checked += 1;
        match id {
            StateId::Prefix(_) => report.prefix += 1,
            StateId::Dropped { .. } => report.dropped += 1,
            StateId::Torn(_) => report.torn += 1,
        }
        progress(i + 1, all.len());
    }
    report.check_secs = t.elapsed().as_secs_f64();
    Ok((rec, report))
}

/// Writes the images of state `id` into `dir` as `mem<N>.img`; returns their paths.
pub fn dump_state(rec: &Recorded, id: &StateId, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| {
        io_error(e, ErrCode::IoWrite, "cannot create directory").path(dir.display().to_string())
    })?;
    let mut paths = Vec::new();
    for (i, d) in build_state(rec, id)?.iter().enumerate() {
        let path = dir.join(format!("mem{i}.img"));
        let file = std::fs::File::create(&path).map_err(|e| {
            io_error(e, ErrCode::IoWrite, "cannot create image").path(path.display().to_string())
        })?;
        file.set_len(d.size()).map_err(|e| {
            io_error(e, ErrCode::IoWrite, "cannot size image").path(path.display().to_string())
        })?;
        let mut buf = vec![0u8; 1 << 16];
        let mut off = 0u64;
        while off < d.size() {
            let n = buf.len().min((d.size() - off) as usize);
            let chunk = buf.get_mut(..n).ok_or_else(|| Error::internal("chunk out of range"))?;
            d.read_at(chunk, off)?;
            if chunk.iter().any(|&b| b != 0) {
                std::os::unix::fs::FileExt::write_all_at(&file, chunk, off).map_err(|e| {
                    io_error(e, ErrCode::IoWrite, "cannot write image").path(path.display().to_string())
                })?;
            }
            off += n as u64;
        }
        paths.push(path);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_ids_round_trip_and_bad_ones_are_refused() {
        for id in [
            StateId::Prefix(12),
            StateId::Torn(7),
            StateId::Dropped { at: 40, lost: vec![3, 9] },
            StateId::Dropped { at: 5, lost: vec![4] },
        ] {
            assert_eq!(id.to_string().parse::<StateId>().ok(), Some(id.clone()), "{id}");
        }
        for bad in ["", "p", "x3", "d4", "d4-", "d4-1..2", "p-1", "t1.5"] {
            assert!(bad.parse::<StateId>().is_err(), "{bad} parsed");
        }
    }
}
