//! [`FaultyDevice`]: a wrapper that makes any device fail the way real storage fails.
//!
//! It injects I/O errors, silent torn writes and bit flips on read by [`FaultRule`]s; it models
//! a volatile write cache that loses or tears unflushed writes on [`FaultyDevice::crash`]; it
//! corrupts stored bits on demand; and it can log every write and flush so a test can rebuild
//! each state a crash could have left. Every random choice draws from one [`Rng`] seeded at
//! creation, so a single-threaded run that fails replays exactly from its seed.
//!
//! All state sits behind one mutex. Reads release it before touching the inner device when no
//! cached write could overlay them; writes, flushes and crashes hold it across inner I/O, because
//! the order in which they reach the inner device and the log is what crash tests reason about.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use super::{BlockDevice, SECTOR_SIZE, SharedDevice, check_range};
use crate::error::{ErrCode, Error, Result};
use crate::rng::Rng;
use crate::sync::Mutex;

/// The operation a rule watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOp {
    Read,
    Write,
    Flush,
}

/// When a rule fires, counted over the operations it matches (right op, overlapping range).
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// On every matching operation.
    Always,
    /// Lets `skip` matching operations pass, then fires on the next `count`, then never again.
    Nth { skip: u64, count: u64 },
    /// On each matching operation independently, with this probability (drawn from the device's
    /// seeded generator).
    Probability(f64),
}

/// What a firing rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The operation fails with `IoRead`, `IoWrite` or `IoFlush` naming the device and offset,
    /// and does nothing.
    Eio,
    /// Writes only: a random non-empty proper subset of the write's 512-byte sectors lands (a
    /// write within one sector lands nothing) and the call returns `Ok`. Nothing reports it: only
    /// checksums can catch it, which is the point.
    TornWrite,
    /// Reads only: the caller gets its data with one random bit flipped; the stored data stays
    /// intact, as with a transient transfer error.
    BitFlipOnRead,
    /// Reads only: a bad sector. Reads overlapping the rule's range fail as with `Eio` until a
    /// write covers the whole range, which remaps it as a disk does with a pending sector: the
    /// rule is then gone, and reads return what that write stored.
    BadSector,
}

/// One fault to inject.
///
/// A rule whose kind does not fit its op (`TornWrite` on a read, `BitFlipOnRead` on a write,
/// anything but `Eio` on a flush) never matches, so it neither fires nor advances its count.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    pub op: FaultOp,
    /// Only operations overlapping this byte range match; `None` matches all. Flushes have no
    /// range, so a flush rule ignores it.
    pub range: Option<Range<u64>>,
    pub trigger: Trigger,
    pub kind: FaultKind,
}

impl FaultRule {
    fn kind_fits_op(&self) -> bool {
        matches!(
            (self.op, self.kind),
            (_, FaultKind::Eio)
                | (FaultOp::Write, FaultKind::TornWrite)
                | (FaultOp::Read, FaultKind::BitFlipOnRead | FaultKind::BadSector)
        )
    }

    /// True when an operation of `op` on `len` bytes at `offset` is one this rule watches.
    fn matches(&self, op: FaultOp, offset: u64, len: usize) -> bool {
        if op != self.op || !self.kind_fits_op() {
            return false;
        }
        if op == FaultOp::Flush {
            return true;
        }
        let Some(range) = &self.range else {
            return true;
        };
        let end = offset.saturating_add(len as u64);
        offset.max(range.start) < end.min(range.end)
    }
}

/// What happens to unflushed writes when the device crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unflushed write is lost.
    DropUnflushed,
    /// Each unflushed write independently lands whole, lands torn (a random non-empty proper
    /// subset of its sectors) or is lost, chosen by the device's generator. A one-sector write
    /// cannot tear, so "torn" becomes "lost" for it.
    TearUnflushed,
}

/// How a crash resolved the unflushed writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    pub lost_writes: u64,
    pub torn_writes: u64,
    pub landed_writes: u64,
}

/// One entry of the write log: replaying a prefix onto a copy of the starting image gives a
/// state the device passed through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEntry {
    /// Bytes that reached the device (or its volatile cache). A torn write logs only the pieces
    /// that landed, so replay never shows data the device never held.
    Write {
        offset: u64,
        data: Arc<[u8]>,
    },
    Flush,
}

/// Operations seen (injected failures included) and faults injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub faults_injected: u64,
}

struct ActiveRule {
    id: usize,
    rule: FaultRule,
    /// Matching operations seen so far: what `Trigger::Nth` counts.
    matched: u64,
}

/// What a crash does to one unflushed write.
enum Fate {
    Landed,
    Torn,
    Lost,
}

struct PendingWrite {
    offset: u64,
    data: Arc<[u8]>,
}

impl PendingWrite {
    fn end(&self) -> u64 {
        self.offset.saturating_add(self.data.len() as u64)
    }
}

struct State {
    rng: Rng,
    rules: Vec<ActiveRule>,
    next_rule_id: usize,
    volatile_cache: bool,
    /// A flush also makes the inner device durable on the host (see
    /// [`FaultyDevice::set_host_sync`]).
    host_sync: bool,
    /// Writes accepted but not yet in the inner device, oldest first.
    pending: VecDeque<PendingWrite>,
    logging: bool,
    log: Vec<LogEntry>,
    stats: FaultStats,
}

impl State {
    /// Runs every rule matching the operation (so each one's count advances) and returns the kind
    /// of the first that fires, in the order the rules were added.
    fn decide(&mut self, op: FaultOp, offset: u64, len: usize) -> Option<FaultKind> {
        let State { rng, rules, .. } = self;
        let mut fired = None;
        for active in rules.iter_mut() {
            if !active.rule.matches(op, offset, len) {
                continue;
            }
            let fires = match active.rule.trigger {
                Trigger::Always => true,
                Trigger::Nth { skip, count } => {
                    let seen = active.matched;
                    active.matched = active.matched.saturating_add(1);
                    seen >= skip && seen - skip < count
                }
                Trigger::Probability(p) => rng.chance(p),
            };
            if fires && fired.is_none() {
                fired = Some(active.rule.kind);
            }
        }
        if fired.is_some() {
            self.stats.faults_injected = self.stats.faults_injected.saturating_add(1);
        }
        fired
    }
}

/// Splits a write of `len` bytes at `offset` at device sector boundaries: the units a device
/// writes atomically, and so the units a torn write keeps or loses. Ranges index the buffer.
fn sector_pieces(offset: u64, len: usize) -> Vec<Range<usize>> {
    let mut pieces = Vec::new();
    let mut start = 0usize;
    let mut pos = offset;
    while start < len {
        let to_boundary = SECTOR_SIZE - pos % SECTOR_SIZE;
        let piece_len = usize::try_from(to_boundary).unwrap_or(usize::MAX).min(len - start);
        pieces.push(start..start + piece_len);
        start += piece_len;
        pos = pos.saturating_add(piece_len as u64);
    }
    pieces
}

/// Picks which sectors of a write land when it tears: a random non-empty proper subset, as runs of
/// adjacent landed sectors (each run one write). A write within one sector lands nothing.
fn torn_landing(rng: &mut Rng, offset: u64, data: &[u8]) -> Vec<(u64, Arc<[u8]>)> {
    let pieces = sector_pieces(offset, data.len());
    let count = pieces.len();
    if count < 2 {
        return Vec::new();
    }
    let landing_count = 1 + rng.below(count as u64 - 1) as usize;
    let mut order: Vec<usize> = (0..count).collect();
    rng.shuffle(&mut order);
    let mut lands = vec![false; count];
    for &i in order.iter().take(landing_count) {
        if let Some(l) = lands.get_mut(i) {
            *l = true;
        }
    }
    let mut runs = Vec::new();
    let mut run: Option<Range<usize>> = None;
    for (piece, landed) in pieces.into_iter().zip(lands) {
        run = match (run, landed) {
            (Some(r), true) => Some(r.start..piece.end),
            (None, true) => Some(piece),
            (Some(r), false) => {
                runs.push(r);
                None
            }
            (None, false) => None,
        };
    }
    runs.extend(run);
    runs.into_iter()
        .filter_map(|r| {
            let bytes = data.get(r.clone())?;
            Some((offset.saturating_add(r.start as u64), Arc::from(bytes)))
        })
        .collect()
}

/// Copies the bytes of `pending` writes that overlap `buf` (which holds `offset..`) into it,
/// oldest first, so the newest write wins on every byte.
fn overlay(pending: &VecDeque<PendingWrite>, buf: &mut [u8], offset: u64) {
    let end = offset.saturating_add(buf.len() as u64);
    for w in pending {
        let start = offset.max(w.offset);
        let stop = end.min(w.end());
        if start >= stop {
            continue;
        }
        let dst = buf.get_mut((start - offset) as usize..(stop - offset) as usize);
        let src = w.data.get((start - w.offset) as usize..(stop - w.offset) as usize);
        if let (Some(dst), Some(src)) = (dst, src) {
            if dst.len() == src.len() {
                dst.copy_from_slice(src);
            }
        }
    }
}

/// A device wrapper injecting faults and crashes, driven by a seeded generator.
pub struct FaultyDevice {
    inner: SharedDevice,
    seed: u64,
    state: Mutex<State>,
}

impl fmt::Debug for FaultyDevice {
    /// Never blocks: a device is often printed from an error path that may hold its lock.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("FaultyDevice");
        d.field("inner", &self.inner).field("seed", &self.seed);
        if let Some(st) = self.state.try_lock() {
            d.field("rules", &st.rules.len())
                .field("volatile_cache", &st.volatile_cache)
                .field("pending_writes", &st.pending.len())
                .field("stats", &st.stats);
        }
        d.finish()
    }
}

impl FaultyDevice {
    /// Wraps `inner` with no rules, no volatile cache and no logging: until configured it passes
    /// everything through unchanged.
    pub fn new(inner: SharedDevice, seed: u64) -> FaultyDevice {
        FaultyDevice {
            inner,
            seed,
            state: Mutex::new(State {
                rng: Rng::new(seed),
                rules: Vec::new(),
                next_rule_id: 0,
                volatile_cache: false,
                host_sync: true,
                pending: VecDeque::new(),
                logging: false,
                log: Vec::new(),
                stats: FaultStats::default(),
            }),
        }
    }

    /// The seed every random choice derives from: print it when a test fails.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The wrapped device, for looking at what is really stored (bypassing cache and faults).
    pub fn inner(&self) -> &SharedDevice {
        &self.inner
    }

    /// Adds a rule and returns its id for [`FaultyDevice::remove_rule`].
    pub fn add_rule(&self, rule: FaultRule) -> usize {
        let mut st = self.state.lock();
        let id = st.next_rule_id;
        st.next_rule_id = st.next_rule_id.wrapping_add(1);
        st.rules.push(ActiveRule { id, rule, matched: 0 });
        id
    }

    /// Removes the rule with this id; false if there was none.
    pub fn remove_rule(&self, id: usize) -> bool {
        let mut st = self.state.lock();
        let before = st.rules.len();
        st.rules.retain(|r| r.id != id);
        st.rules.len() != before
    }

    pub fn clear_rules(&self) {
        self.state.lock().rules.clear();
    }

    /// Keeps only the rules `keep` is true for (bad sectors, say, which outlive a crash).
    pub fn retain_rules(&self, keep: impl Fn(&FaultRule) -> bool) {
        self.state.lock().rules.retain(|r| keep(&r.rule));
    }

    /// Turns the volatile write cache on or off. While on, writes wait in a pending list until
    /// `flush` (or are lost or torn by `crash`). Turning it off takes full effect once the pending
    /// writes are flushed or crashed away: until then new writes queue behind them, so that no
    /// write can overtake an older one.
    pub fn set_volatile_cache(&self, on: bool) {
        self.state.lock().volatile_cache = on;
    }

    /// Whether a flush also syncs the inner device on the host (on by default). What survives
    /// a simulated crash is decided by the volatile cache, not the host, so a run that ends
    /// with [`FaultyDevice::sync_host`] may turn this off: flushes then land the cached writes
    /// in the inner device as before but do not wait for the host's disk, which made building
    /// a large image set cost one host fsync per device per journal flush.
    pub fn set_host_sync(&self, on: bool) {
        self.state.lock().host_sync = on;
    }

    /// Makes what reached the inner device durable on the host.
    pub fn sync_host(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Unflushed writes waiting in the volatile cache.
    pub fn pending_writes(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// Starts or stops recording successful writes and flushes.
    pub fn set_logging(&self, on: bool) {
        self.state.lock().logging = on;
    }

    /// Takes the log recorded so far, leaving it empty.
    pub fn take_log(&self) -> Vec<LogEntry> {
        std::mem::take(&mut self.state.lock().log)
    }

    pub fn stats(&self) -> FaultStats {
        self.state.lock().stats
    }

    /// Simulates power loss: resolves every unflushed write per `mode` and empties the cache.
    ///
    /// The device stays usable afterwards, as after a reboot; rules, stats and log are kept. If
    /// the inner device fails while landing a write, the crash still happened (the writes not yet
    /// landed are lost) and the error is returned.
    pub fn crash(&self, mode: CrashMode) -> Result<CrashReport> {
        let mut st = self.state.lock();
        let pending = std::mem::take(&mut st.pending);
        let mut report = CrashReport::default();
        for w in pending {
            let fate = match mode {
                CrashMode::DropUnflushed => Fate::Lost,
                CrashMode::TearUnflushed => match st.rng.below(3) {
                    0 => Fate::Landed,
                    1 => Fate::Torn,
                    _ => Fate::Lost,
                },
            };
            match fate {
                Fate::Landed => {
                    self.inner.write_at(&w.data, w.offset)?;
                    report.landed_writes += 1;
                }
                Fate::Torn => {
                    let runs = torn_landing(&mut st.rng, w.offset, &w.data);
                    if runs.is_empty() {
                        report.lost_writes += 1;
                        continue;
                    }
                    for (offset, data) in runs {
                        self.inner.write_at(&data, offset)?;
                    }
                    report.torn_writes += 1;
                }
                Fate::Lost => report.lost_writes += 1,
            }
        }
        Ok(report)
    }

    /// Flips bit `bit` (0 = least significant) of the byte at `offset` in stored data: in the inner
    /// device and in every unflushed write covering that byte, so the flip shows now and
    /// survives whatever a crash keeps. Not counted as an operation, not logged.
    pub fn corrupt_bit(&self, offset: u64, bit: u8) -> Result<()> {
        if bit >= 8 {
            return Err(Error::new(ErrCode::InvalidArgument, format!("bit index {bit} is not in 0..8"))
                .path(self.name())
                .offset(offset));
        }
        check_range(self.name(), offset, 1, self.inner.size(), ErrCode::IoWrite)?;
        let mut st = self.state.lock();
        self.corrupt_bit_locked(&mut st, offset, bit)
    }

    fn corrupt_bit_locked(&self, st: &mut State, offset: u64, bit: u8) -> Result<()> {
        let mask = 1u8 << (bit & 7);
        let mut byte = [0u8; 1];
        self.inner.read_at(&mut byte, offset)?;
        byte[0] ^= mask;
        self.inner.write_at(&byte, offset)?;
        for w in st.pending.iter_mut() {
            if offset < w.offset || offset >= w.end() {
                continue;
            }
            // The log may share this buffer and must keep what was written, so flip a copy.
            let mut data = w.data.to_vec();
            if let Some(b) = data.get_mut((offset - w.offset) as usize) {
                *b ^= mask;
            }
            w.data = Arc::from(data);
        }
        Ok(())
    }

    /// Flips `n` distinct random bits in `range` of stored data (as [`FaultyDevice::corrupt_bit`])
    /// and returns them as `(offset, bit)`, in the order flipped.
    pub fn flip_random_bits(&self, range: Range<u64>, n: usize) -> Result<Vec<(u64, u8)>> {
        let name = self.name();
        let len_bytes = range.end.saturating_sub(range.start);
        let invalid = |msg: String| Error::new(ErrCode::InvalidArgument, msg).path(name).offset(range.start);
        let len = usize::try_from(len_bytes).map_err(|_| invalid("range too large".into()))?;
        check_range(name, range.start, len, self.inner.size(), ErrCode::IoWrite)?;
        let total_bits = len_bytes.checked_mul(8).ok_or_else(|| invalid("range too large".into()))?;
        let n_bits = n as u64;
        if n_bits > total_bits {
            return Err(invalid(format!("cannot flip {n} distinct bits in a range of {len_bytes} bytes")));
        }
        let mut st = self.state.lock();
        // Floyd's sampling: exactly n draws for n distinct bits, however dense the request.
        let mut chosen = HashSet::with_capacity(n);
        let mut picks = Vec::with_capacity(n);
        for j in (total_bits - n_bits)..total_bits {
            let t = st.rng.below(j + 1);
            let pick = if chosen.contains(&t) { j } else { t };
            chosen.insert(pick);
            picks.push((range.start + pick / 8, (pick % 8) as u8));
        }
        for &(offset, bit) in &picks {
            self.corrupt_bit_locked(&mut st, offset, bit)?;
        }
        Ok(picks)
    }

    /// Puts accepted bytes where they go now: the cache if it is on (or still holds older
    /// writes, which must not be overtaken), else the inner device; then logs them.
    fn land(&self, st: &mut State, offset: u64, data: Arc<[u8]>) -> Result<()> {
        if st.volatile_cache || !st.pending.is_empty() {
            st.pending.push_back(PendingWrite { offset, data: Arc::clone(&data) });
        } else {
            self.inner.write_at(&data, offset)?;
        }
        if st.logging {
            st.log.push(LogEntry::Write { offset, data });
        }
        Ok(())
    }
}

impl BlockDevice for FaultyDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.name(), offset, buf.len(), self.inner.size(), ErrCode::IoRead)?;
        let mut st = self.state.lock();
        st.stats.reads = st.stats.reads.saturating_add(1);
        let flip = match st.decide(FaultOp::Read, offset, buf.len()) {
            Some(FaultKind::Eio | FaultKind::BadSector) => {
                return Err(Error::new(ErrCode::IoRead, format!("injected read error: {} bytes", buf.len()))
                    .path(self.name())
                    .offset(offset));
            }
            Some(FaultKind::BitFlipOnRead) if !buf.is_empty() => {
                Some(st.rng.below((buf.len() as u64).saturating_mul(8)))
            }
            _ => None,
        };
        if st.pending.is_empty() {
            drop(st);
            self.inner.read_at(buf, offset)?;
        } else {
            self.inner.read_at(buf, offset)?;
            overlay(&st.pending, buf, offset);
            drop(st);
        }
        if let Some(bit) = flip {
            if let Some(byte) = buf.get_mut((bit / 8) as usize) {
                *byte ^= 1 << (bit % 8);
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(self.name(), offset, buf.len(), self.inner.size(), ErrCode::IoWrite)?;
        let mut st = self.state.lock();
        st.stats.writes = st.stats.writes.saturating_add(1);
        let end = offset.saturating_add(buf.len() as u64);
        // A write over a whole bad sector remaps it (whether or not this write then fails).
        st.rules.retain(|r| {
            let covered =
                r.rule.range.as_ref().is_some_and(|range| offset <= range.start && range.end <= end);
            !(r.rule.kind == FaultKind::BadSector && covered)
        });
        match st.decide(FaultOp::Write, offset, buf.len()) {
            Some(FaultKind::Eio) => {
                Err(Error::new(ErrCode::IoWrite, format!("injected write error: {} bytes", buf.len()))
                    .path(self.name())
                    .offset(offset))
            }
            Some(FaultKind::TornWrite) => {
                for (piece_offset, data) in torn_landing(&mut st.rng, offset, buf) {
                    self.land(&mut st, piece_offset, data)?;
                }
                Ok(())
            }
            _ => self.land(&mut st, offset, Arc::from(buf)),
        }
    }

    fn flush(&self) -> Result<()> {
        let mut st = self.state.lock();
        st.stats.flushes = st.stats.flushes.saturating_add(1);
        if st.decide(FaultOp::Flush, 0, 0).is_some() {
            return Err(Error::new(ErrCode::IoFlush, "injected flush error").path(self.name()));
        }
        while let Some(w) = st.pending.pop_front() {
            if let Err(e) = self.inner.write_at(&w.data, w.offset) {
                // Keep the write and everything after it cached: a retried flush lands them in
                // order, and a crash still decides their fate.
                st.pending.push_front(w);
                return Err(e.prefix("flushing cached write"));
            }
        }
        if st.host_sync {
            self.inner.flush()?;
        }
        if st.logging {
            st.log.push(LogEntry::Flush);
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::MemDevice;

    const SECTOR: usize = SECTOR_SIZE as usize;

    fn faulty(seed: u64, size_bytes: u64) -> FaultyDevice {
        FaultyDevice::new(Arc::new(MemDevice::new("mem0", size_bytes)), seed)
    }

    fn rule(op: FaultOp, range: Option<Range<u64>>, trigger: Trigger, kind: FaultKind) -> FaultRule {
        FaultRule { op, range, trigger, kind }
    }

    fn read(dev: &dyn BlockDevice, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        dev.read_at(&mut buf, offset).unwrap();
        buf
    }

    /// An Eio rule with a range fails exactly the ops overlapping it, naming device and offset,
    /// and a failed write changes nothing.
    #[test]
    fn eio_by_range_hits_only_overlapping() {
        let seed = 1;
        let dev = faulty(seed, 1 << 16);
        dev.write_at(&[5u8; 8192], 4096).unwrap();
        dev.add_rule(rule(FaultOp::Read, Some(4096..8192), Trigger::Always, FaultKind::Eio));
        dev.add_rule(rule(FaultOp::Write, Some(4096..8192), Trigger::Always, FaultKind::Eio));
        let mut buf = [0u8; 512];
        dev.read_at(&mut buf, 0).unwrap();
        dev.read_at(&mut buf, 3584).unwrap();
        dev.read_at(&mut buf, 8192).unwrap();
        let e = dev.read_at(&mut buf, 3585).unwrap_err();
        assert_eq!(e.code(), ErrCode::IoRead, "seed {seed}: {e}");
        assert_eq!(e.context().offset, Some(3585));
        assert_eq!(e.context().path.as_deref(), Some("mem0"));
        let e = dev.read_at(&mut buf, 8191).unwrap_err();
        assert_eq!(e.code(), ErrCode::IoRead, "seed {seed}: {e}");

        let e = dev.write_at(&[9u8; 16], 8000).unwrap_err();
        assert_eq!(e.code(), ErrCode::IoWrite, "seed {seed}: {e}");
        assert_eq!(e.context().offset, Some(8000));
        dev.write_at(&[9u8; 16], 8192).unwrap();
        dev.flush().unwrap();
        assert_eq!(read(dev.inner().as_ref(), 8000, 16), vec![5u8; 16], "seed {seed}");
        assert_eq!(dev.stats().faults_injected, 3, "seed {seed}");
    }

    /// Nth { skip, count } lets exactly `skip` matching ops pass, fails the next `count`, then
    /// never again; non-matching ops do not advance it.
    #[test]
    fn nth_skip_count_fires_exactly_count_times() {
        let seed = 2;
        let dev = faulty(seed, 1 << 16);
        let trigger = Trigger::Nth { skip: 3, count: 2 };
        dev.add_rule(rule(FaultOp::Write, Some(0..4096), trigger, FaultKind::Eio));
        let mut outcomes = Vec::new();
        for i in 0..10u64 {
            // Reads and writes elsewhere must not count toward the rule.
            dev.write_at(&[1], 8192 + i).unwrap();
            dev.read_at(&mut [0u8; 4], 0).unwrap();
            outcomes.push(dev.write_at(&[1, 2, 3], i * 10).is_ok());
        }
        let expected = [true, true, true, false, false, true, true, true, true, true];
        assert_eq!(outcomes, expected, "seed {seed}");
        assert_eq!(dev.stats().faults_injected, 2, "seed {seed}");
    }

    /// Probability(0.0) never fires and Probability(1.0) always does.
    #[test]
    fn probability_extremes() {
        let seed = 3;
        let dev = faulty(seed, 1 << 16);
        let never = dev.add_rule(rule(FaultOp::Read, None, Trigger::Probability(0.0), FaultKind::Eio));
        for i in 0..1000 {
            assert!(dev.read_at(&mut [0u8; 8], i).is_ok(), "seed {seed}: op {i} failed at p=0");
        }
        assert!(dev.remove_rule(never));
        assert!(!dev.remove_rule(never));
        dev.add_rule(rule(FaultOp::Flush, None, Trigger::Probability(1.0), FaultKind::Eio));
        for i in 0..1000 {
            let e = dev.flush().unwrap_err();
            assert_eq!(e.code(), ErrCode::IoFlush, "seed {seed}: op {i}");
        }
        assert_eq!(dev.stats().faults_injected, 1000, "seed {seed}");
        dev.clear_rules();
        dev.flush().unwrap();
    }

    /// Probability(p) in between fires roughly p of the time, reproducibly from the seed.
    #[test]
    fn probability_middle_is_seeded() {
        let run = |seed: u64| {
            let dev = faulty(seed, 1 << 16);
            dev.add_rule(rule(FaultOp::Read, None, Trigger::Probability(0.25), FaultKind::Eio));
            (0..2000).map(|i| dev.read_at(&mut [0u8; 8], i).is_err()).collect::<Vec<bool>>()
        };
        let seed = 4;
        let a = run(seed);
        assert_eq!(a, run(seed), "seed {seed}: not reproducible");
        let hits = a.iter().filter(|&&x| x).count();
        assert!((350..650).contains(&hits), "seed {seed}: {hits} of 2000 at p=0.25");
    }

    /// A torn write returns Ok and lands a non-empty proper subset of its sectors, each sector
    /// whole: old or new, never a mix. A one-sector write lands nothing.
    #[test]
    fn torn_write_lands_proper_subset() {
        for seed in 0..50u64 {
            let dev = faulty(seed, 1 << 16);
            let sectors = 1 + (seed % 16) as usize;
            let offset = 4096;
            dev.write_at(&vec![0xaau8; sectors * SECTOR], offset).unwrap();
            dev.add_rule(rule(FaultOp::Write, None, Trigger::Always, FaultKind::TornWrite));
            dev.write_at(&vec![0x55u8; sectors * SECTOR], offset).unwrap();
            let mut landed = 0;
            for s in 0..sectors {
                let got = read(&dev, offset + (s * SECTOR) as u64, SECTOR);
                if got.iter().all(|&b| b == 0x55) {
                    landed += 1;
                } else {
                    assert!(got.iter().all(|&b| b == 0xaa), "seed {seed}: sector {s} mixed");
                }
            }
            if sectors == 1 {
                assert_eq!(landed, 0, "seed {seed}: a one-sector write tore");
            } else {
                assert!(landed > 0 && landed < sectors, "seed {seed}: {landed} of {sectors}");
            }
            assert_eq!(dev.stats().faults_injected, 1, "seed {seed}");
        }
    }

    /// An unaligned torn write tears at device sector boundaries, not buffer offsets.
    #[test]
    fn torn_write_unaligned_tears_at_sector_boundaries() {
        for seed in 0..20u64 {
            let dev = faulty(seed, 1 << 16);
            dev.add_rule(rule(FaultOp::Write, None, Trigger::Always, FaultKind::TornWrite));
            // Covers 100..1100: pieces 100..512, 512..1024, 1024..1100.
            dev.write_at(&[0x77u8; 1000], 100).unwrap();
            let pieces = [100..512u64, 512..1024, 1024..1100];
            let mut landed = 0;
            for p in pieces {
                let got = read(&dev, p.start, (p.end - p.start) as usize);
                if got.iter().all(|&b| b == 0x77) {
                    landed += 1;
                } else {
                    assert!(got.iter().all(|&b| b == 0), "seed {seed}: piece {p:?} mixed");
                }
            }
            assert!((1..3).contains(&landed), "seed {seed}: {landed} of 3 pieces landed");
        }
    }

    /// A bit flip on read changes exactly one bit of what the caller sees, and nothing stored.
    #[test]
    fn bit_flip_on_read_is_transient() {
        let seed = 6;
        let dev = faulty(seed, 1 << 16);
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        dev.write_at(&data, 0).unwrap();
        let id = dev.add_rule(rule(FaultOp::Read, None, Trigger::Always, FaultKind::BitFlipOnRead));
        let got = read(&dev, 0, 4096);
        let flipped: u32 = got.iter().zip(&data).map(|(a, b)| (a ^ b).count_ones()).sum();
        assert_eq!(flipped, 1, "seed {seed}");
        assert_eq!(read(dev.inner().as_ref(), 0, 4096), data, "seed {seed}: stored data changed");
        dev.remove_rule(id);
        assert_eq!(read(&dev, 0, 4096), data, "seed {seed}");
    }

    /// With the volatile cache on, unflushed writes are visible but not stored; DropUnflushed
    /// loses them, flushed writes survive, and the device keeps working after the crash.
    #[test]
    fn volatile_cache_drop_unflushed() {
        let seed = 7;
        let dev = faulty(seed, 1 << 16);
        dev.set_volatile_cache(true);
        dev.write_at(&[1u8; 512], 0).unwrap();
        dev.flush().unwrap();
        dev.write_at(&[2u8; 512], 4096).unwrap();
        dev.write_at(&[3u8; 100], 400).unwrap();
        assert_eq!(dev.pending_writes(), 2);
        assert_eq!(read(&dev, 4096, 512), vec![2u8; 512]);
        let mut expect = vec![1u8; 512];
        expect[400..500].fill(3);
        assert_eq!(read(&dev, 0, 512), expect);
        assert_eq!(read(dev.inner().as_ref(), 4096, 512), vec![0u8; 512]);

        let report = dev.crash(CrashMode::DropUnflushed).unwrap();
        assert_eq!(report, CrashReport { lost_writes: 2, torn_writes: 0, landed_writes: 0 });
        assert_eq!(dev.pending_writes(), 0);
        assert_eq!(read(&dev, 0, 512), vec![1u8; 512]);
        assert_eq!(read(&dev, 4096, 512), vec![0u8; 512]);

        dev.write_at(&[4u8; 512], 8192).unwrap();
        dev.flush().unwrap();
        assert_eq!(read(dev.inner().as_ref(), 8192, 512), vec![4u8; 512]);
    }

    /// With host sync off a flush still lands the cached writes in the inner device, so a crash
    /// after it keeps them: turning it off changes only what the host's disk is asked for.
    #[test]
    fn a_flush_without_host_sync_still_lands_the_writes() {
        let seed = 9;
        let dev = faulty(seed, 1 << 16);
        dev.set_volatile_cache(true);
        dev.set_host_sync(false);
        dev.write_at(&[5u8; 512], 0).unwrap();
        dev.flush().unwrap();
        assert_eq!(dev.pending_writes(), 0, "seed {seed}");
        assert_eq!(read(dev.inner().as_ref(), 0, 512), vec![5u8; 512]);
        dev.write_at(&[6u8; 512], 512).unwrap();
        let report = dev.crash(CrashMode::DropUnflushed).unwrap();
        assert_eq!(report.lost_writes, 1);
        assert_eq!(read(&dev, 0, 512), vec![5u8; 512]);
        assert_eq!(read(&dev, 512, 512), vec![0u8; 512]);
        dev.sync_host().unwrap();
    }

    /// Reads overlay cached writes byte-exactly with the newest winning, matching a flat model,
    /// and a flush leaves the inner device equal to that model (seeded).
    #[test]
    fn cache_overlay_matches_model() {
        let seed = 8;
        let mut rng = Rng::new(seed);
        let size = 1 << 14;
        let dev = faulty(seed, size as u64);
        dev.set_volatile_cache(true);
        let mut model = vec![0u8; size];
        for step in 0..300 {
            let offset = rng.below(size as u64) as usize;
            let len = rng.below((size - offset).min(3000) as u64 + 1) as usize;
            if rng.chance(0.5) {
                let mut data = vec![0u8; len];
                rng.fill_bytes(&mut data);
                dev.write_at(&data, offset as u64).unwrap();
                model[offset..offset + len].copy_from_slice(&data);
            } else {
                let got = read(&dev, offset as u64, len);
                assert!(got[..] == model[offset..offset + len], "seed {seed} step {step}");
            }
            if rng.chance(0.05) {
                dev.flush().unwrap();
            }
        }
        dev.flush().unwrap();
        assert!(read(dev.inner().as_ref(), 0, size) == model, "seed {seed}: flush lost order");
    }

    /// A failed (injected) flush applies nothing and keeps the writes cached for the next flush.
    #[test]
    fn failed_flush_keeps_pending() {
        let seed = 9;
        let dev = faulty(seed, 1 << 16);
        dev.set_volatile_cache(true);
        dev.write_at(&[6u8; 10], 0).unwrap();
        let id = dev.add_rule(rule(FaultOp::Flush, None, Trigger::Always, FaultKind::Eio));
        assert_eq!(dev.flush().unwrap_err().code(), ErrCode::IoFlush);
        assert_eq!(dev.pending_writes(), 1);
        assert_eq!(read(dev.inner().as_ref(), 0, 10), vec![0u8; 10]);
        dev.remove_rule(id);
        dev.flush().unwrap();
        assert_eq!(read(dev.inner().as_ref(), 0, 10), vec![6u8; 10]);
    }

    /// Runs a fixed workload of non-overlapping cached writes, crashes with TearUnflushed, and
    /// returns the report, the device contents and each write's (offset, sectors, fill byte).
    fn tear_run(seed: u64) -> (CrashReport, Vec<u8>, Vec<(u64, usize, u8)>) {
        let size = 64 * 8 * SECTOR;
        let dev = faulty(seed, size as u64);
        dev.set_volatile_cache(true);
        let mut writes = Vec::new();
        for i in 0..64u64 {
            let sectors = 1 + (i % 8) as usize;
            let offset = i * 8 * SECTOR_SIZE;
            let fill = (i + 1) as u8;
            dev.write_at(&vec![fill; sectors * SECTOR], offset).unwrap();
            writes.push((offset, sectors, fill));
        }
        let report = dev.crash(CrashMode::TearUnflushed).unwrap();
        (report, read(&dev, 0, size), writes)
    }

    /// TearUnflushed replays from its seed (same report, same bytes), and its report matches
    /// what the device holds: each write landed whole, torn at sector granularity, or lost.
    #[test]
    fn tear_unflushed_is_deterministic_and_honest() {
        for seed in [10u64, 11, 12] {
            let (report, bytes, writes) = tear_run(seed);
            let (report2, bytes2, _) = tear_run(seed);
            assert_eq!(report, report2, "seed {seed}");
            assert!(bytes == bytes2, "seed {seed}: contents differ between replays");

            let mut tally = CrashReport::default();
            for (offset, sectors, fill) in writes {
                let mut landed = 0;
                for s in 0..sectors {
                    let start = offset as usize + s * SECTOR;
                    let sector = &bytes[start..start + SECTOR];
                    if sector.iter().all(|&b| b == fill) {
                        landed += 1;
                    } else {
                        assert!(sector.iter().all(|&b| b == 0), "seed {seed}: sector mixed");
                    }
                }
                match landed {
                    0 => tally.lost_writes += 1,
                    l if l == sectors => tally.landed_writes += 1,
                    _ => tally.torn_writes += 1,
                }
            }
            assert_eq!(tally, report, "seed {seed}");
            assert!(report.lost_writes > 0 && report.torn_writes > 0, "seed {seed}: {report:?}");
            assert!(report.landed_writes > 0, "seed {seed}: {report:?}");
        }
        assert_ne!(tear_run(10).1, tear_run(11).1, "seeds 10 and 11 tore identically");
    }

    /// The log holds every successful write and flush in order; failed writes are absent, and
    /// a torn write logs only what landed.
    #[test]
    fn log_records_writes_and_flushes_in_order() {
        let seed = 13;
        let dev = faulty(seed, 1 << 16);
        dev.set_logging(true);
        dev.write_at(&[1, 2, 3], 10).unwrap();
        dev.flush().unwrap();
        dev.set_volatile_cache(true);
        dev.write_at(&[4], 20).unwrap();
        let id = dev.add_rule(rule(FaultOp::Write, None, Trigger::Always, FaultKind::Eio));
        assert!(dev.write_at(&[5], 30).is_err());
        dev.remove_rule(id);
        dev.flush().unwrap();
        let log = dev.take_log();
        let expected = vec![
            LogEntry::Write { offset: 10, data: Arc::from(&[1u8, 2, 3][..]) },
            LogEntry::Flush,
            LogEntry::Write { offset: 20, data: Arc::from(&[4u8][..]) },
            LogEntry::Flush,
        ];
        assert_eq!(log, expected, "seed {seed}");
        assert!(dev.take_log().is_empty());

        dev.add_rule(rule(FaultOp::Write, None, Trigger::Always, FaultKind::TornWrite));
        dev.write_at(&[8u8; 4 * SECTOR], 0).unwrap();
        let logged: usize = dev
            .take_log()
            .iter()
            .map(|e| match e {
                LogEntry::Write { data, .. } => data.len(),
                LogEntry::Flush => 0,
            })
            .sum();
        assert!(logged > 0 && logged < 4 * SECTOR, "seed {seed}: torn write logged {logged}");
    }

    /// Replaying the whole log onto a copy of the base image reproduces the final contents.
    #[test]
    fn log_replay_reproduces_contents() {
        let seed = 14;
        let mut rng = Rng::new(seed);
        let base = MemDevice::new("base", 1 << 14);
        base.write_at(&[0x11u8; 1000], 0).unwrap();
        let copy = base.deep_copy("replay");
        let dev = FaultyDevice::new(Arc::new(base), seed);
        dev.set_logging(true);
        for _ in 0..50 {
            let offset = rng.below(1 << 13);
            let mut data = vec![0u8; rng.range(1..2000) as usize];
            rng.fill_bytes(&mut data);
            dev.write_at(&data, offset).unwrap();
        }
        for entry in dev.take_log() {
            if let LogEntry::Write { offset, data } = entry {
                copy.write_at(&data, offset).unwrap();
            }
        }
        assert!(read(&dev, 0, 1 << 14) == read(&copy, 0, 1 << 14), "seed {seed}");
    }

    /// corrupt_bit changes exactly the one bit asked for, in stored data and in a cached write
    /// covering it, so the flip survives the flush.
    #[test]
    fn corrupt_bit_changes_exactly_one_bit() {
        let seed = 15;
        let dev = faulty(seed, 1 << 16);
        let data = vec![0x0fu8; 4096];
        dev.write_at(&data, 0).unwrap();
        dev.corrupt_bit(100, 6).unwrap();
        let mut expect = data.clone();
        expect[100] ^= 1 << 6;
        assert_eq!(read(&dev, 0, 4096), expect);

        dev.set_volatile_cache(true);
        dev.write_at(&[0u8; 10], 200).unwrap();
        dev.corrupt_bit(205, 0).unwrap();
        expect[200..210].fill(0);
        expect[205] = 1;
        assert_eq!(read(&dev, 0, 4096), expect);
        dev.flush().unwrap();
        assert_eq!(read(dev.inner().as_ref(), 0, 4096), expect);

        assert_eq!(dev.corrupt_bit(0, 8).unwrap_err().code(), ErrCode::InvalidArgument);
        assert_eq!(dev.corrupt_bit(1 << 16, 0).unwrap_err().code(), ErrCode::IoWrite);
    }

    /// flip_random_bits flips exactly n distinct bits inside the range, the ones it reports,
    /// reproducibly from the seed.
    #[test]
    fn flip_random_bits_exact_and_seeded() {
        let run = |seed: u64, n: usize| {
            let dev = faulty(seed, 1 << 12);
            let flips = dev.flip_random_bits(1000..1016, n).unwrap();
            (flips, read(&dev, 0, 1 << 12))
        };
        for seed in 20..30u64 {
            for n in [0usize, 1, 5, 128] {
                let (flips, bytes) = run(seed, n);
                assert_eq!((flips.clone(), bytes.clone()), run(seed, n), "seed {seed} n {n}");
                assert_eq!(flips.len(), n, "seed {seed}");
                let ones: u32 = bytes.iter().map(|b| b.count_ones()).sum();
                assert_eq!(ones as usize, n, "seed {seed} n {n}: bits not distinct");
                for (offset, bit) in flips {
                    assert!((1000..1016).contains(&offset), "seed {seed}: {offset}");
                    assert!(bytes[offset as usize] & (1 << bit) != 0, "seed {seed}");
                }
            }
        }
        let dev = faulty(1, 1 << 12);
        assert!(dev.flip_random_bits(0..2, 17).is_err());
        assert!(dev.flip_random_bits(4000..5000, 1).is_err());
    }

    /// A bad sector fails every overlapping read, and only those, until a write covers all of
    /// it: a write over part of it leaves it bad, one over all of it remaps it and its data
    /// reads back.
    #[test]
    fn bad_sector_fails_reads_until_a_write_covers_it() {
        let dev = faulty(3, 1 << 14);
        dev.write_at(&[7u8; 1 << 14], 0).unwrap();
        dev.add_rule(rule(FaultOp::Read, Some(4096..8192), Trigger::Always, FaultKind::BadSector));
        assert!(dev.read_at(&mut [0u8; 4096], 0).is_ok());
        assert!(dev.read_at(&mut [0u8; 16], 8000).is_err());
        dev.write_at(&[9u8; 2048], 4096).unwrap();
        assert!(dev.read_at(&mut [0u8; 16], 4096).is_err(), "a partial write remapped the sector");
        dev.write_at(&[5u8; 8192], 2048).unwrap();
        let mut buf = [0u8; 16];
        dev.read_at(&mut buf, 6000).unwrap();
        assert_eq!(buf, [5u8; 16]);
    }

    /// Stats count every operation seen, injected failures included.
    #[test]
    fn stats_count_ops() {
        let dev = faulty(16, 1 << 12);
        dev.write_at(&[1], 0).unwrap();
        dev.read_at(&mut [0u8; 1], 0).unwrap();
        dev.add_rule(rule(FaultOp::Read, None, Trigger::Always, FaultKind::Eio));
        assert!(dev.read_at(&mut [0u8; 1], 0).is_err());
        dev.flush().unwrap();
        let expected = FaultStats { reads: 2, writes: 1, flushes: 1, faults_injected: 1 };
        assert_eq!(dev.stats(), expected);
        assert_eq!(dev.name(), "mem0");
        assert_eq!(dev.size(), 1 << 12);
        assert_eq!(dev.seed(), 16);
    }
}
