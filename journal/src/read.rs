//! The journal read at mount (`bch2_journal_read`): every member device's journal buckets,
//! scanned in parallel, merged into the list of entries recovery replays.
//!
//! The read runs in passes:
//! 1. One thread per device walks its journal buckets in ring order, as many devices at a time as
//!    there are CPUs, each wave merged (pass 3) before the next starts. A bucket whose first block
//!    holds nothing of ours is skipped after that one block (journals are large and image files
//!    sparse); a used bucket is read whole. Within a bucket, [`scan_bucket`] applies the
//!    per-bucket rules: an empty block ends the bucket unless an entry with a good checksum,
//!    newer than the bucket's, follows further on (a hole: logged and counted as
//!    `journal_bucket_hole`, and read past; bcachefs would end the bucket and lose what
//!    follows), a seq below the bucket's first seq ends it too (a stale tail left by an earlier
//!    lap of the ring), and a bad checksum marks that copy bad and resumes at the next block;
//!    from then on empty blocks are stepped over rather than ending the bucket, since they may
//!    be the inside of the bad entry.
//! 2. Each device's bucket seqs are checked for ring order ([`check_bucket_order`]): a violation
//!    is logged and counted, never fatal.
//! 3. Copies are merged by seq ([`Merger`]): same device and offset is the same copy; same device
//!    at another offset is a duplicate; good copies that differ are a replica mismatch; otherwise
//!    the pointer lists merge.
//! 4. The replay range is chosen scanning back from the newest seq ([`replay_range`]); which
//!    seqs replay, and which the next mount blacklists, is then [`ReplayDecision`]'s to say
//!    ([`JournalRead::replay`]), for the read itself and for every caller.
//! 5. Seqs missing from the range force one full re-read (every block of every bucket, no
//!    shortcuts); what is still missing is logged and counted, or, when member devices are
//!    absent and `-o degraded=very` was not given, fails the mount.
//!
//! Conventions (the rules leave these open):
//! - An empty journal (no good flush entry anywhere) reads as no entries with
//!   `last_seq == replay_end == 0`; [`JournalRead::is_empty`] says so. Whether a dirty
//!   filesystem may have an empty journal is for the caller to judge.
//! - Seq 0 is never written (bcachefs starts at 1), so a `last_seq` of 0 replays from seq 1.
//! - Every bad-checksum-only seq above the newest good flush entry is skipped, not just the
//!   newest: several journal writes can be in flight at a crash, and everything above the replay
//!   end is blacklisted by the next mount anyway. The first is logged as the torn newest write.
//! - Blacklist ranges come from every good entry read. A blacklisted seq is never the replay end
//!   and never missing. A blacklisted *flush* entry inside the replay range counts
//!   `jset_seq_blacklisted` (it should not exist); a blacklisted no-flush entry is the expected
//!   leftover of a crash and is dropped silently, as bcachefs does.
//! - An entry that decodes badly behind a good checksum is treated as a bad copy, like a bad
//!   checksum: another device's copy may serve.

mod decision;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use fs_core::dev::SharedDevice;
use fs_core::error::{ErrCode, Error, Result};
use fs_core::fsck_err::FsckErr;

use self::decision::in_blacklist;
pub use self::decision::{BLACKLIST_AHEAD, ReplayDecision, SeqStatus};
use crate::format::{Decode, Jset, JsetEntry, JsetInvalid, JsetRead, decode_jset, decode_jset_with};
use crate::keys::{JournalKeys, KeySink};

/// One present member device's journal: its bucket list from the superblock, in ring order.
#[derive(Clone, Debug)]
pub struct JournalDevice {
    pub dev_idx: u8,
    pub dev: SharedDevice,
    pub bucket_size: u64,
    /// Bucket indexes in ring order; bucket `b` starts at byte `b * bucket_size`.
    pub buckets: Vec<u64>,
}

/// How to read.
#[derive(Clone, Debug)]
pub struct ReadOpts {
    /// The filesystem's jset magic: anything else is not ours.
    pub magic: u64,
    /// Entries are padded to this; a bad entry is skipped one block at a time.
    pub block_size: u64,
    /// `-o degraded=very`: replay even if some entries survive only on absent devices.
    pub degraded: bool,
    /// Member devices not present.
    pub missing: Vec<u8>,
    /// Also return every entry with a good copy in [`JournalRead::all_entries`], not only the
    /// ones to replay (for `list-journal -a`). Changes nothing else about the read.
    pub keep_all: bool,
}

/// Where a copy of an entry sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryPtr {
    pub dev: u8,
    /// The bucket index (not the ring position).
    pub bucket: u64,
    /// Byte offset on the device.
    pub offset: u64,
}

/// An entry to replay, with one pointer per good copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadEntry {
    pub jset: Jset,
    pub ptrs: Vec<EntryPtr>,
}

/// What the read found on one device's ring: what the write path needs to continue it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRing {
    pub dev: u8,
    /// Per ring position, the newest seq in that bucket (stale tail excluded), 0 if the bucket is
    /// empty or could not be read (bcachefs's `ja->bucket_seq`): a bucket may be reused once
    /// this is below `last_seq`.
    pub bucket_seqs: Vec<u64>,
    /// Ring position of the head bucket (the one with the newest first seq); 0 if empty.
    pub head_idx: usize,
    /// Byte offset inside the head bucket just past its last entry: where the next entry goes.
    pub head_end: u64,
}

/// The result of [`read_journal`].
#[derive(Clone, Debug, Default)]
pub struct JournalRead {
    /// In seq order, the entries [`JournalRead::replay`] replays: `last_seq..=replay_end`,
    /// blacklisted seqs and missing seqs left out.
    pub entries: Vec<ReadEntry>,
    /// Only with [`ReadOpts::keep_all`], else empty: every seq with a good copy, in seq order,
    /// including those below `last_seq`, past `replay_end` (no-flush, above a torn write) and
    /// blacklisted ones. Seqs with only bad copies have no contents to show and are left out.
    pub all_entries: Vec<ReadEntry>,
    pub last_seq: u64,
    pub replay_end: u64,
    /// The highest seq any copy (good or bad) claims, 0 if none: new seqs start above it, and
    /// `replay_end + 1..=newest_seq` is what the next mount must blacklist.
    pub newest_seq: u64,
    /// `[start, end)` ranges found in blacklist entries, sorted, duplicates removed.
    pub blacklist: Vec<(u64, u64)>,
    /// dmesg-like lines, in the order things were found.
    pub log: Vec<String>,
    /// Counts per fsck error, sorted by id.
    pub fsck_errors: Vec<(FsckErr, u64)>,
    /// The log line of each counted error's first occurrence.
    pub fsck_first: BTreeMap<FsckErr, String>,
    /// Copies that were unusable: bad checksums, invalid entries, buckets that failed to read.
    pub bad_copies: u64,
    /// One per device read, in the order given.
    pub rings: Vec<DeviceRing>,
}

impl JournalRead {
    /// No entry to replay: no good flush entry was found.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many times `err` was counted.
    pub fn fsck_count(&self, err: FsckErr) -> u64 {
        self.fsck_errors.iter().find(|(e, _)| *e == err).map_or(0, |(_, n)| *n)
    }

    /// Which seqs replay, and which the next mount must blacklist: ask this, never the fields.
    pub fn replay(&self) -> ReplayDecision<'_> {
        ReplayDecision {
            last_seq: self.last_seq,
            replay_end: self.replay_end,
            newest_seq: self.newest_seq,
            blacklist: &self.blacklist,
        }
    }
}

/// The journal as recovery and `fsck -n` take it ([`read_journal_for_replay`]): the read, and the
/// btree keys of the seqs its replay decision replays, sorted and compacted.
#[derive(Debug)]
pub struct JournalReplay {
    /// The read, its entries without their btree keys (the other entries intact): those are in
    /// `keys`.
    pub read: JournalRead,
    pub keys: JournalKeys,
    /// Keys of the replayed seqs before compaction (`read` in [`JournalKeys::summary`]).
    pub keys_read: usize,
    /// Wall time of the read, and of sorting and compacting the keys after it.
    pub read_time: Duration,
    pub sort_time: Duration,
}

/// Reads the journal of every present device and decides what to replay. See the module docs
/// for the rules. Errors: an invalid geometry (`JournalReadErr`), or entries that survive only on
/// absent devices without `opts.degraded` (`InsufficientDevices`).
pub fn read_journal(devs: &[JournalDevice], opts: &ReadOpts) -> Result<JournalRead> {
    read(devs, opts, None).map(|(jr, _)| jr)
}

/// [`read_journal`] for recovery and `fsck -n`, with the journal keys to replay: the one way to
/// get them. The scans check keys without keeping them, and the keys of each entry kept are
/// read again from the one copy kept, straight into sort records, as the entry is merged; once
/// the read has decided, the records of the seqs [`JournalRead::replay`] replays are sorted and
/// compacted. The read thus never holds the journal's keys twice (decoded copies and sort
/// records), nor decoded copies it then frees (memory the allocator keeps). The entries come
/// back without their btree keys, so `opts.keep_all` is no use with it.
pub fn read_journal_for_replay(devs: &[JournalDevice], opts: &ReadOpts) -> Result<JournalReplay> {
    let t0 = Instant::now();
    let (read, sink) = read(devs, opts, Some(KeySink::default()))?;
    let read_time = t0.elapsed();
    let t_sort = Instant::now();
    let replay = read.replay();
    let (keys, keys_read) = JournalKeys::from_sink(sink.unwrap_or_default(), |seq| replay.replays(seq));
    let sort_time = t_sort.elapsed();
    Ok(JournalReplay { read, keys, keys_read, read_time, sort_time })
}

fn read(
    devs: &[JournalDevice],
    opts: &ReadOpts,
    sink: Option<KeySink>,
) -> Result<(JournalRead, Option<KeySink>)> {
    for d in devs {
        Geometry::new(d, opts)?;
    }
    let mut m = Merger { sink, magic: opts.magic, ..Merger::default() };
    let mut rings = Vec::with_capacity(devs.len());
    scan_all(devs, opts, Pass::First, &mut m, |m, scan| {
        m.add_scan(scan, &mut rings, None);
        m.fill_sink(devs);
        Ok(())
    })?;
    m.collect_blacklist();

    let Some((last_seq, replay_end)) = replay_range(&mut m) else {
        m.retry_sink(devs)?;
        let sink = m.sink.take();
        return Ok((m.finish_empty(rings, opts), sink));
    };
    let range_line = format!("(replaying {last_seq}-{replay_end})");
    m.count_blacklisted(last_seq, replay_end);

    let mut gaps = m.gaps(last_seq, replay_end);
    if !gaps.is_empty() {
        m.log.push(format!("journal entries missing {range_line}: re-reading every journal bucket in full"));
        scan_all(devs, opts, Pass::Full(&gaps), &mut m, |m, scan| {
            m.add_scan(scan, &mut Vec::new(), Some(&gaps));
            m.fill_sink(devs);
            Ok(())
        })?;
        gaps = m.gaps(last_seq, replay_end);
    }
    if !gaps.is_empty() && !opts.missing.is_empty() && !opts.degraded {
        return Err(insufficient_devices(&gaps, opts));
    }
    for gap in &gaps {
        m.log.push(format!("journal entries {}-{} missing! {range_line}", gap.start(), gap.end()));
        m.count(FsckErr::JournalEntriesMissing);
    }
    m.check_copies(last_seq, replay_end, &opts.missing);
    if !opts.missing.is_empty() {
        let state = if gaps.is_empty() {
            "every entry to replay has a copy on a present device"
        } else {
            "replaying without the missing entries (-o degraded=very)"
        };
        m.log.push(format!("journal read degraded: devices {} missing; {state}", dev_list(&opts.missing)));
    }
    m.log.push(format!("journal read done, replaying entries {last_seq}-{replay_end}"));
    m.retry_sink(devs)?;
    let sink = m.sink.take();
    Ok((m.finish(last_seq, replay_end, rings, opts.keep_all), sink))
}

fn insufficient_devices(gaps: &[RangeInclusive<u64>], opts: &ReadOpts) -> Error {
    let seqs: Vec<String> = gaps.iter().map(|g| format!("{}-{}", g.start(), g.end())).collect();
    let first = gaps.first().map_or(0, |g| *g.start());
    Error::new(
        ErrCode::InsufficientDevices,
        format!(
            "journal entries {} have no copy on a present device (devices {} missing); \
             mount with -o degraded=very to replay without them",
            seqs.join(", "),
            dev_list(&opts.missing)
        ),
    )
    .journal_seq(first)
}

fn dev_list(devs: &[u8]) -> String {
    devs.iter().map(u8::to_string).collect::<Vec<_>>().join(",")
}

/// Which pass: the first takes shortcuts; the full re-read reads every block and keeps only the
/// seqs still missing.
#[derive(Clone, Copy, Debug)]
enum Pass<'a> {
    First,
    Full(&'a [RangeInclusive<u64>]),
}

impl Pass<'_> {
    fn is_first(self) -> bool {
        matches!(self, Pass::First)
    }

    fn wants(self, seq: u64) -> bool {
        match self {
            Pass::First => true,
            Pass::Full(gaps) => in_ranges(gaps, seq),
        }
    }
}

fn in_ranges(ranges: &[RangeInclusive<u64>], seq: u64) -> bool {
    ranges.iter().any(|r| r.contains(&seq))
}

/// A device's journal geometry, checked once so the scan never divides by zero or over-reads.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    block_len: usize,
    bucket_len: usize,
}

impl Geometry {
    fn new(d: &JournalDevice, opts: &ReadOpts) -> Result<Geometry> {
        let bad = |why: String| Error::new(ErrCode::JournalReadErr, why).dev(d.dev_idx).path(d.dev.name());
        if opts.block_size == 0 || d.bucket_size < opts.block_size || d.bucket_size % opts.block_size != 0 {
            return Err(bad(format!(
                "journal bucket size {} is not a non-zero multiple of the block size {}",
                d.bucket_size, opts.block_size
            )));
        }
        let block_len = usize::try_from(opts.block_size).map_err(|_| bad("block size too large".into()))?;
        let bucket_len = usize::try_from(d.bucket_size).map_err(|_| bad("bucket size too large".into()))?;
        Ok(Geometry { block_len, bucket_len })
    }
}

/// One copy of an entry as found on a device.
#[derive(Debug)]
struct Copy {
    seq: u64,
    ptr: EntryPtr,
    state: CopyState,
}

#[derive(Debug)]
enum CopyState {
    Good {
        jset: Jset,
        id: CopyId,
    },
    /// Good, and the same as the copy an earlier wave kept (seq, length and checksum): not
    /// decoded again.
    Known,
    /// Unusable; the reason, for the log.
    Bad(String),
}

/// What tells two good copies of a seq apart: their length and checksum.
type CopyId = (u32, u32);

/// The good copy kept for each seq so far, for scans to recognise replicas of.
type Known = HashMap<u64, CopyId>;

/// What a bucket held, for the ring-order check and the write path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BucketState {
    Empty,
    Unreadable,
    /// `first_seq` is the seq of the first copy (good or bad: a torn first entry still dates
    /// the bucket), `newest_seq` the highest seq before any stale tail, `end` the byte offset
    /// just past the last entry.
    Data {
        first_seq: u64,
        newest_seq: u64,
        end: u64,
    },
}

/// What one device's scan found.
#[derive(Debug)]
struct DevScan {
    dev: u8,
    name: String,
    /// Bucket indexes in ring order, parallel to `buckets`.
    bucket_ids: Vec<u64>,
    buckets: Vec<BucketState>,
    copies: Vec<Copy>,
    /// Buckets that could not be read: (bucket, error).
    io_errors: Vec<(u64, Error)>,
    /// Runs of blocks with nothing of ours, inside a bucket, with good entries after them.
    holes: Vec<Hole>,
}

/// Empty blocks inside a journal bucket with a good entry after them: copies lost (zeroed,
/// never landed) in the middle of the ring. bcachefs ends the bucket at the first block without
/// its magic and would lose every entry after it; bcsim reads past, and reports the hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hole {
    pub dev: u8,
    pub bucket: u64,
    /// Device byte offsets: where the hole starts, and the entry after it.
    pub start: u64,
    pub end: u64,
    /// The seq of the entry after the hole.
    pub next_seq: u64,
}

/// Scans every device and hands each scan to `merge`, in device order, so the merge is
/// deterministic whatever the threads' timing. Devices are scanned in waves of as many as there
/// are CPUs, one thread each, and each wave is merged before the next starts: a scan holds every
/// entry it decoded, and scanning every device before merging any would hold every replica of
/// the journal in memory at once, where merging keeps one copy per seq. A thread that cannot be
/// started scans on this thread instead: slower, same result. The first error, in device order,
/// ends the read.
fn scan_all(
    devs: &[JournalDevice],
    opts: &ReadOpts,
    pass: Pass<'_>,
    m: &mut Merger,
    mut merge: impl FnMut(&mut Merger, DevScan) -> Result<()>,
) -> Result<()> {
    let wave = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    for chunk in devs.chunks(wave.max(1)) {
        let short = Shortcuts { known: &m.known, keys: m.sink.is_none() };
        for scan in scan_wave(chunk, opts, pass, short) {
            merge(m, scan?)?;
        }
    }
    Ok(())
}

/// What a scan may skip: decoding copies of entries already kept, and keeping keys.
#[derive(Clone, Copy)]
struct Shortcuts<'a> {
    known: &'a Known,
    keys: bool,
}

/// Scans `devs` at once, one thread each; results in device order.
fn scan_wave(
    devs: &[JournalDevice],
    opts: &ReadOpts,
    pass: Pass<'_>,
    short: Shortcuts<'_>,
) -> Vec<Result<DevScan>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = devs
            .iter()
            .map(|d| {
                let spawned = std::thread::Builder::new()
                    .name(format!("journal-read-{}", d.dev_idx))
                    .spawn_scoped(s, move || scan_device(d, opts, pass, short));
                (d, spawned)
            })
            .collect();
        // Join every thread before looking at any result: an unjoined panicked thread would make
        // the scope itself panic.
        handles
            .into_iter()
            .map(|(d, spawned)| match spawned {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(Error::new(ErrCode::JournalReadErr, "journal read thread panicked").dev(d.dev_idx))
                }),
                Err(_) => scan_device(d, opts, pass, short),
            })
            .collect()
    })
}

/// Walks one device's ring. I/O errors are recorded per bucket, never returned: other devices'
/// copies may serve.
fn scan_device(d: &JournalDevice, opts: &ReadOpts, pass: Pass<'_>, short: Shortcuts<'_>) -> Result<DevScan> {
    let geo = Geometry::new(d, opts)?;
    let mut scan = DevScan {
        dev: d.dev_idx,
        name: d.dev.name().to_string(),
        bucket_ids: d.buckets.clone(),
        buckets: Vec::with_capacity(d.buckets.len()),
        copies: Vec::new(),
        io_errors: Vec::new(),
        holes: Vec::new(),
    };
    // One buffer per device, reused for every bucket.
    let mut buf = vec![0u8; geo.bucket_len];
    for &bucket in &d.buckets {
        let state = match read_bucket(d, bucket, &mut buf, geo, opts, pass) {
            Ok(None) => BucketState::Empty,
            Ok(Some(base)) => {
                let ctx = BucketCtx { dev: d.dev_idx, bucket, geo, opts, pass, short };
                scan_bucket(&buf, base, &ctx, &mut scan.copies, &mut scan.holes)
            }
            Err(e) => {
                scan.io_errors.push((bucket, e));
                BucketState::Unreadable
            }
        };
        scan.buckets.push(state);
    }
    Ok(scan)
}

/// Reads `bucket` into `buf` and returns its byte offset, or `None` if the first pass finds its
/// first block empty: then the rest is not read.
fn read_bucket(
    d: &JournalDevice,
    bucket: u64,
    buf: &mut [u8],
    geo: Geometry,
    opts: &ReadOpts,
    pass: Pass<'_>,
) -> Result<Option<u64>> {
    let base = bucket.checked_mul(d.bucket_size).ok_or_else(|| {
        Error::new(ErrCode::JournalReadErr, format!("journal bucket {bucket} lies past any device end"))
            .dev(d.dev_idx)
            .bucket(bucket)
    })?;
    let located = |e: Error| e.dev(d.dev_idx).bucket(bucket);
    if !pass.is_first() {
        d.dev.read_at(buf, base).map_err(located)?;
        return Ok(Some(base));
    }
    let (first, rest) = buf.split_at_mut(geo.block_len.min(buf.len()));
    d.dev.read_at(first, base).map_err(located)?;
    if matches!(decode_jset(first, opts.magic), Ok(JsetRead::Empty)) {
        return Ok(None);
    }
    if !rest.is_empty() {
        d.dev.read_at(rest, base.saturating_add(opts.block_size)).map_err(located)?;
    }
    Ok(Some(base))
}

/// Where a bucket was read from and what the scan knows.
#[derive(Clone, Copy)]
struct BucketCtx<'a> {
    dev: u8,
    bucket: u64,
    geo: Geometry,
    opts: &'a ReadOpts,
    pass: Pass<'a>,
    short: Shortcuts<'a>,
}

/// Applies the per-bucket rules to a bucket read into `buf` at device offset `base`, pushing the
/// copies the pass wants.
fn scan_bucket(
    buf: &[u8],
    base: u64,
    ctx: &BucketCtx<'_>,
    copies: &mut Vec<Copy>,
    holes: &mut Vec<Hole>,
) -> BucketState {
    let BucketCtx { dev, bucket, geo, opts, pass, short } = *ctx;
    let known = short.known;
    let is_known = |seq: u64, bytes: u32, csum: u32| known.get(&seq) == Some(&(bytes, csum));
    let how = Decode { known: &is_known, keys: short.keys };
    let mut pos = 0usize;
    let mut first_seq: Option<u64> = None;
    let mut newest_seq = 0u64;
    let mut end = 0usize;
    // After a bad entry, an empty-looking block may be the inside of that entry (its length
    // cannot be trusted), so the walk goes on block by block instead of ending the bucket, as
    // bcachefs's `saw_bad` does.
    let mut saw_bad = false;
    // Every step advances at least one block, so this bounds the walk.
    for _ in 0..=geo.bucket_len / geo.block_len {
        let Some(block) = buf.get(pos..).filter(|b| !b.is_empty()) else { break };
        let offset = base.saturating_add(pos as u64);
        let ptr = EntryPtr { dev, bucket, offset };
        let (seq, state, step) = match decode_jset_with(block, opts.magic, &how) {
            Ok(JsetRead::Empty) if pass.is_first() && !saw_bad => {
                // The end of what was written, or a hole with good entries after it.
                match next_entry_after_hole(buf, pos, newest_seq, geo, opts) {
                    Some((next, next_seq)) => {
                        let end = base.saturating_add(next as u64);
                        holes.push(Hole { dev, bucket, start: offset, end, next_seq });
                        pos = next;
                        continue;
                    }
                    None => break,
                }
            }
            Ok(JsetRead::Empty) => {
                pos = pos.saturating_add(geo.block_len);
                continue;
            }
            Ok(JsetRead::Good { jset, bytes, csum }) => {
                let step = (bytes as usize).next_multiple_of(geo.block_len).max(geo.block_len);
                (jset.seq, CopyState::Good { jset, id: (bytes, csum) }, step)
            }
            Ok(JsetRead::Known { seq, bytes }) => {
                let step = (bytes as usize).next_multiple_of(geo.block_len).max(geo.block_len);
                (seq, CopyState::Known, step)
            }
            // The length field of a damaged entry cannot be trusted: resume at the next block.
            Ok(JsetRead::BadChecksum { seq, .. }) => {
                (seq, CopyState::Bad("bad checksum".into()), geo.block_len)
            }
            Err(e) => match e.context().journal_seq {
                Some(seq) => (seq, CopyState::Bad(invalid_copy(&e)), geo.block_len),
                // No seq to file it under: nothing to do but step over it.
                None => {
                    pos = pos.saturating_add(geo.block_len);
                    continue;
                }
            },
        };
        // A bucket is reused from its start, so entries older than its first one are a stale
        // tail of the previous lap. The full re-read looks past them: it keeps only seqs still
        // missing, which a stale tail can only help to fill.
        if pass.is_first() && first_seq.is_some_and(|f| seq < f) {
            break;
        }
        first_seq.get_or_insert(seq);
        saw_bad |= matches!(state, CopyState::Bad(_));
        newest_seq = newest_seq.max(seq);
        pos = pos.saturating_add(step);
        end = pos.min(geo.bucket_len);
        if pass.wants(seq) {
            copies.push(Copy { seq, ptr, state });
        }
    }
    match first_seq {
        Some(first_seq) => BucketState::Data { first_seq, newest_seq, end: end as u64 },
        None => BucketState::Empty,
    }
}

/// Past an empty block at `pos`, the first block of the bucket holding an entry with a good
/// checksum newer than `newest` (the bucket's newest so far): the entries after a hole. An
/// older one is a stale tail, and ends the search. Costs one magic check per block left in the
/// bucket, which is already in memory. Returns the block's position and the entry's seq.
fn next_entry_after_hole(
    buf: &[u8],
    pos: usize,
    newest: u64,
    geo: Geometry,
    opts: &ReadOpts,
) -> Option<(usize, u64)> {
    let mut at = pos.saturating_add(geo.block_len);
    while let Some(block) = buf.get(at..).filter(|b| b.len() >= geo.block_len) {
        match decode_jset(block, opts.magic) {
            Ok(JsetRead::Good { jset, .. }) if jset.seq > newest => return Some((at, jset.seq)),
            Ok(JsetRead::Good { .. }) => return None,
            _ => at = at.saturating_add(geo.block_len),
        }
    }
    None
}

/// Why a copy that decoded with an error is bad, for the log.
fn invalid_copy(e: &Error) -> String {
    match JsetInvalid::of(e) {
        Some(why) => format!("invalid entry: {why}"),
        None => format!("invalid entry: {}", e.message()),
    }
}

/// Walking back from the head (the bucket with the newest first seq), each bucket's first seq
/// must be lower than the one after it, and once an empty bucket is met no older bucket may hold
/// data. Returns what is wrong, for the log, or `None`.
fn check_bucket_order(buckets: &[BucketState], bucket_ids: &[u64]) -> Option<String> {
    let head = head_idx(buckets)?;
    let n = buckets.len();
    let mut prev = match buckets.get(head) {
        Some(BucketState::Data { first_seq, .. }) => *first_seq,
        _ => return None,
    };
    let mut empty: Option<usize> = None;
    let id = |i: usize| bucket_ids.get(i).copied().unwrap_or_default();
    for step in 1..n {
        let i = (head + n - step) % n;
        match buckets.get(i) {
            Some(BucketState::Empty) => {
                empty.get_or_insert(i);
            }
            Some(BucketState::Data { first_seq, .. }) => {
                if let Some(e) = empty {
                    return Some(format!(
                        "bucket {} (seq {first_seq}) holds data behind empty bucket {}",
                        id(i),
                        id(e)
                    ));
                }
                if *first_seq >= prev {
                    return Some(format!(
                        "bucket {} seq {first_seq} is not below the next bucket's {prev}",
                        id(i)
                    ));
                }
                prev = *first_seq;
            }
            // Nothing known about it: neither data nor a hole.
            Some(BucketState::Unreadable) | None => {}
        }
    }
    None
}

/// The ring position of the bucket with the newest first seq.
fn head_idx(buckets: &[BucketState]) -> Option<usize> {
    buckets
        .iter()
        .enumerate()
        .filter_map(|(i, b)| match b {
            BucketState::Data { first_seq, .. } => Some((*first_seq, i)),
            _ => None,
        })
        .max()
        .map(|(_, i)| i)
}

fn device_ring(scan: &DevScan) -> DeviceRing {
    let bucket_seqs = scan
        .buckets
        .iter()
        .map(|b| match b {
            BucketState::Data { newest_seq, .. } => *newest_seq,
            _ => 0,
        })
        .collect();
    let head_idx = head_idx(&scan.buckets).unwrap_or(0);
    let head_end = match scan.buckets.get(head_idx) {
        Some(BucketState::Data { end, .. }) => *end,
        _ => 0,
    };
    DeviceRing { dev: scan.dev, bucket_seqs, head_idx, head_end }
}

/// Every copy of one seq.
#[derive(Debug, Default)]
struct Slot {
    good: Option<Jset>,
    good_id: Option<CopyId>,
    /// One per good copy agreeing with `good`.
    ptrs: Vec<EntryPtr>,
    bad: Vec<EntryPtr>,
}

/// Merges copies by seq and keeps the log and the counts.
#[derive(Debug, Default)]
struct Merger {
    slots: BTreeMap<u64, Slot>,
    log: Vec<String>,
    fsck: BTreeMap<FsckErr, u64>,
    fsck_first: BTreeMap<FsckErr, String>,
    bad_copies: u64,
    /// Buckets already counted as unreadable, so a re-read does not count them twice.
    io_failed: BTreeSet<(u8, u64)>,
    blacklist: Vec<(u64, u64)>,
    /// The id of each seq's kept good copy.
    known: Known,
    /// Where the keys of kept entries go, when the caller takes them as they come.
    sink: Option<KeySink>,
    /// The jset magic, to read kept copies again.
    magic: u64,
    /// Entries kept since the last [`Merger::fill_sink`], whose keys it is to read.
    to_sink: Vec<(u64, EntryPtr, CopyId)>,
    /// Entries whose kept copy did not read back; retried from every good copy at the end.
    sink_retry: Vec<(u64, CopyId)>,
    /// Where the kept copies are read again, reused from entry to entry.
    sink_buf: Vec<u8>,
}

impl Merger {
    /// Counts `err`; called right after the log line that says what was found, which is kept
    /// as the error's first occurrence.
    fn count(&mut self, err: FsckErr) {
        *self.fsck.entry(err).or_insert(0) += 1;
        if let Some(line) = self.log.last() {
            self.fsck_first.entry(err).or_insert_with(|| line.clone());
        }
    }

    /// Merges one device's scan. The first pass (`only == None`) also checks the ring order and
    /// records the device's ring; the full re-read merges only seqs in `only`.
    fn add_scan(&mut self, scan: DevScan, rings: &mut Vec<DeviceRing>, only: Option<&[RangeInclusive<u64>]>) {
        let pass = if only.is_some() { " (full re-read)" } else { "" };
        for (bucket, e) in &scan.io_errors {
            self.log.push(format!(
                "journal read error on dev {} ({}) bucket {bucket}{pass}: {e}; other copies must serve",
                scan.dev, scan.name
            ));
            if self.io_failed.insert((scan.dev, *bucket)) {
                self.bad_copies += 1;
            }
        }
        if only.is_none() {
            let used = scan.buckets.iter().filter(|b| matches!(b, BucketState::Data { .. })).count();
            self.log.push(format!(
                "journal read dev {} ({}): {} copies in {used}/{} buckets",
                scan.dev,
                scan.name,
                scan.copies.len(),
                scan.buckets.len()
            ));
            self.check_order(scan.dev, &scan.name, &scan.buckets, &scan.bucket_ids);
            rings.push(device_ring(&scan));
        }
        for h in &scan.holes {
            self.log.push(format!(
                "journal hole on dev {} ({}) bucket {}: bytes {}..{} hold no entry, entry {} follows: read past it",
                h.dev, scan.name, h.bucket, h.start, h.end, h.next_seq
            ));
            self.count(FsckErr::JournalBucketHole);
        }
        for copy in scan.copies {
            if only.is_none_or(|gaps| in_ranges(gaps, copy.seq)) {
                self.add_copy(copy);
            }
        }
    }

    /// Reads the keys of the entries kept since the last call from the copy kept, into the sink.
    /// The copy must read back as it was scanned (same length and checksum); one that does not
    /// (a read error now, a bit flipped on the way) is retried from the other good copies once
    /// every device has been scanned ([`Merger::retry_sink`]).
    fn fill_sink(&mut self, devs: &[JournalDevice]) {
        let Some(sink) = self.sink.as_mut() else { return };
        let copy = KeptCopy { devs, magic: self.magic };
        for (seq, ptr, id) in self.to_sink.drain(..) {
            if !matches!(copy.take_keys(sink, &mut self.sink_buf, seq, ptr, id), Ok(true)) {
                self.sink_retry.push((seq, id));
            }
        }
    }

    /// The entries whose kept copy could not be read again: their keys from any good copy.
    fn retry_sink(&mut self, devs: &[JournalDevice]) -> Result<()> {
        let Some(sink) = self.sink.as_mut() else { return Ok(()) };
        let copy = KeptCopy { devs, magic: self.magic };
        for (seq, id) in self.sink_retry.drain(..) {
            let ptrs = self.slots.get(&seq).map(|s| s.ptrs.clone()).unwrap_or_default();
            let mut last = None;
            let taken =
                ptrs.iter().any(|&ptr| match copy.take_keys(sink, &mut self.sink_buf, seq, ptr, id) {
                    Ok(taken) => taken,
                    Err(e) => {
                        last = Some(e);
                        false
                    }
                });
            if !taken {
                return Err(last.unwrap_or_else(|| {
                    Error::new(ErrCode::JournalReadErr, "journal entry changed while the journal was read")
                        .journal_seq(seq)
                }));
            }
        }
        Ok(())
    }

    fn check_order(&mut self, dev: u8, name: &str, buckets: &[BucketState], bucket_ids: &[u64]) {
        if let Some(why) = check_bucket_order(buckets, bucket_ids) {
            self.log.push(format!("journal bucket seqs not monotonic on dev {dev} ({name}): {why}"));
            self.count(FsckErr::JournalBucketSeqNotMonotonic);
        }
    }

    /// Copies lost from entries to replay: a bad copy of one, or fewer good copies than a
    /// later flush entry has. A flush entry is written once every earlier write is durable, so
    /// an earlier entry with a bad or missing copy lost it after it was written: damage,
    /// counted as `journal_entry_copy_bad`. The newest entries, with no complete flush entry
    /// after them, may have been cut by the crash mid-write: a bad copy of one is logged, a
    /// missing one not, and neither is counted. Copies on absent members are not counted
    /// either way, and with members absent only bad copies are.
    fn check_copies(&mut self, last_seq: u64, replay_end: u64, absent: &[u8]) {
        let present = |p: &&EntryPtr| !absent.contains(&p.dev);
        let mut lines = Vec::new();
        let mut later_copies = 0usize;
        for (&seq, slot) in self.slots.range(last_seq..=replay_end).rev() {
            let Some(j) = &slot.good else { continue };
            let good = slot.ptrs.iter().filter(present).count();
            for p in slot.bad.iter().filter(present) {
                let cut = if later_copies == 0 { " (written as the machine stopped)" } else { "" };
                lines.push((
                    format!(
                        "journal entry {seq}: copy on dev {} bucket {} offset {} bad{cut}; read from another copy",
                        p.dev, p.bucket, p.offset
                    ),
                    later_copies > 0,
                ));
            }
            // With members absent, how many copies an entry had is not known.
            if slot.bad.is_empty() && absent.is_empty() && good < later_copies {
                lines.push((
                    format!(
                        "journal entry {seq}: {good} good copies, a later flush entry has {later_copies}: a copy was lost"
                    ),
                    true,
                ));
            }
            if !j.no_flush() {
                later_copies = later_copies.max(good);
            }
        }
        for (line, damage) in lines.into_iter().rev() {
            self.log.push(line);
            if damage {
                self.count(FsckErr::JournalEntryCopyBad);
            }
        }
    }

    fn add_copy(&mut self, copy: Copy) {
        let Copy { seq, ptr, state } = copy;
        let slot = self.slots.entry(seq).or_default();
        // The same bytes seen twice (a bucket listed twice, or the full re-read): one copy.
        if slot.ptrs.iter().chain(&slot.bad).any(|p| p.dev == ptr.dev && p.offset == ptr.offset) {
            return;
        }
        let (jset, id) = match state {
            CopyState::Bad(why) => {
                slot.bad.push(ptr);
                self.bad_copies += 1;
                self.log.push(format!(
                    "journal entry {seq} on dev {} bucket {} offset {}: {why}",
                    ptr.dev, ptr.bucket, ptr.offset
                ));
                return;
            }
            CopyState::Good { jset, id } => (Some(jset), id),
            // It matched the kept copy when it was scanned.
            CopyState::Known => match slot.good_id {
                Some(id) => (None, id),
                None => return,
            },
        };
        let (Some(kept_id), Some(first)) = (slot.good_id, slot.ptrs.first().copied()) else {
            let Some(jset) = jset else { return };
            if self.sink.is_some() {
                self.to_sink.push((seq, ptr, id));
            }
            slot.good = Some(jset);
            slot.good_id = Some(id);
            slot.ptrs.push(ptr);
            self.known.insert(seq, id);
            return;
        };
        if let Some(other) = slot.ptrs.iter().find(|p| p.dev == ptr.dev) {
            let line = format!(
                "duplicate journal entry {seq} on dev {} at offsets {} and {}: keeping the first",
                ptr.dev, other.offset, ptr.offset
            );
            self.log.push(line);
            self.count(FsckErr::JournalEntryDupSameDevice);
        } else if kept_id != id {
            let line = format!(
                "journal entry {seq}: replicas differ (dev {} offset {} vs dev {} offset {}): \
                 keeping dev {}'s copy",
                first.dev, first.offset, ptr.dev, ptr.offset, first.dev
            );
            self.log.push(line);
            self.count(FsckErr::JournalEntryReplicasDataMismatch);
        } else {
            slot.ptrs.push(ptr);
        }
    }

    fn collect_blacklist(&mut self) {
        let ranges: BTreeSet<(u64, u64)> = self
            .slots
            .values()
            .filter_map(|s| s.good.as_ref())
            .flat_map(|j| &j.entries)
            .filter_map(|e| match e {
                JsetEntry::Blacklist { start, end } => Some((*start, *end)),
                _ => None,
            })
            .collect();
        self.blacklist = ranges.into_iter().collect();
    }

    fn blacklisted(&self, seq: u64) -> bool {
        in_blacklist(&self.blacklist, seq)
    }

    /// A blacklisted flush entry inside the replay range should not exist: count it.
    fn count_blacklisted(&mut self, last_seq: u64, replay_end: u64) {
        let found: Vec<u64> = self
            .slots
            .range(last_seq..=replay_end)
            .filter(|(seq, s)| s.good.as_ref().is_some_and(|j| !j.no_flush()) && self.blacklisted(**seq))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in found {
            self.log.push(format!("found blacklisted journal entry {seq}: ignoring it"));
            self.count(FsckErr::JsetSeqBlacklisted);
        }
    }

    /// Seqs in `last_seq..=replay_end` with no good copy and not blacklisted, as ranges.
    fn gaps(&self, last_seq: u64, replay_end: u64) -> Vec<RangeInclusive<u64>> {
        let mut gaps = Vec::new();
        let mut expect = last_seq;
        let present =
            self.slots.range(last_seq..=replay_end).filter(|(_, s)| s.good.is_some()).map(|(seq, _)| *seq);
        for seq in present.chain(replay_end.checked_add(1)) {
            if seq > expect {
                self.push_unblacklisted(expect..=seq - 1, &mut gaps);
            }
            expect = seq.saturating_add(1);
        }
        gaps
    }

    /// Pushes the parts of `range` not covered by a blacklist range.
    fn push_unblacklisted(&self, range: RangeInclusive<u64>, out: &mut Vec<RangeInclusive<u64>>) {
        let (mut start, end) = range.into_inner();
        // The blacklist is sorted by start; each range can only move `start` forward.
        for &(b_start, b_end) in &self.blacklist {
            if start > end {
                return;
            }
            if b_end <= start || b_start > end {
                continue;
            }
            if b_start > start {
                out.push(start..=b_start - 1);
            }
            start = start.max(b_end);
        }
        if start <= end {
            out.push(start..=end);
        }
    }

    fn newest_seq(&self) -> u64 {
        self.slots.keys().next_back().copied().unwrap_or(0)
    }

    fn fsck_errors(&self) -> Vec<(FsckErr, u64)> {
        self.fsck.iter().map(|(e, n)| (*e, *n)).collect()
    }

    /// Every seq with a good copy, in seq order.
    fn all_entries(&self) -> Vec<ReadEntry> {
        self.slots
            .values()
            .filter_map(|s| {
                s.good.as_ref().map(|jset| ReadEntry { jset: jset.clone(), ptrs: s.ptrs.clone() })
            })
            .collect()
    }

    fn finish_empty(mut self, rings: Vec<DeviceRing>, opts: &ReadOpts) -> JournalRead {
        let found = self.slots.len();
        self.log
            .push(format!("journal read done: no flush entry to replay ({found} seqs found), journal empty"));
        if !opts.missing.is_empty() {
            self.log.push(format!("journal read degraded: devices {} missing", dev_list(&opts.missing)));
        }
        JournalRead {
            entries: Vec::new(),
            all_entries: if opts.keep_all { self.all_entries() } else { Vec::new() },
            last_seq: 0,
            replay_end: 0,
            newest_seq: self.newest_seq(),
            fsck_errors: self.fsck_errors(),
            fsck_first: self.fsck_first.clone(),
            blacklist: self.blacklist,
            log: self.log,
            bad_copies: self.bad_copies,
            rings,
        }
    }

    fn finish(self, last_seq: u64, replay_end: u64, rings: Vec<DeviceRing>, keep_all: bool) -> JournalRead {
        let mut jr = JournalRead {
            entries: Vec::new(),
            all_entries: if keep_all { self.all_entries() } else { Vec::new() },
            last_seq,
            replay_end,
            newest_seq: self.newest_seq(),
            fsck_errors: self.fsck_errors(),
            fsck_first: self.fsck_first.clone(),
            blacklist: self.blacklist,
            log: self.log,
            bad_copies: self.bad_copies,
            rings,
        };
        let replay = jr.replay();
        let entries = self
            .slots
            .into_iter()
            .filter(|(seq, _)| replay.replays(*seq))
            .filter_map(|(_, s)| s.good.map(|jset| ReadEntry { jset, ptrs: s.ptrs }))
            .collect();
        jr.entries = entries;
        jr
    }
}

/// Where kept copies are read again from.
#[derive(Clone, Copy)]
struct KeptCopy<'a> {
    devs: &'a [JournalDevice],
    magic: u64,
}

impl KeptCopy<'_> {
    /// Takes the keys of entry `seq` from its copy at `ptr` into `sink`: true if the copy read
    /// back as the entry with the length and checksum `id` it was scanned with.
    fn take_keys(
        self,
        sink: &mut KeySink,
        buf: &mut Vec<u8>,
        seq: u64,
        ptr: EntryPtr,
        id: CopyId,
    ) -> Result<bool> {
        let (bytes, csum) = id;
        let Some(d) = self.devs.iter().find(|d| d.dev_idx == ptr.dev) else { return Ok(false) };
        buf.resize(bytes as usize, 0);
        d.dev.read_at(buf, ptr.offset).map_err(|e| e.dev(ptr.dev).journal_seq(seq))?;
        sink.take_from_bytes(buf, self.magic, seq, bytes, csum)
    }
}

/// Scanning back from the newest seq: blacklisted seqs, no-flush entries and seqs with no good
/// copy (torn writes) are skipped; the first good flush entry is the replay end, and its
/// `last_seq` the start. `None` when there is no such entry.
fn replay_range(m: &mut Merger) -> Option<(u64, u64)> {
    let mut torn = Vec::new();
    let mut found = None;
    for (&seq, slot) in m.slots.iter().rev() {
        if m.blacklisted(seq) {
            continue;
        }
        match &slot.good {
            None => torn.push(seq),
            Some(j) if j.no_flush() => {}
            Some(j) => {
                found = Some((j.last_seq.max(1), seq));
                break;
            }
        }
    }
    for (i, seq) in torn.into_iter().enumerate() {
        let what = if i == 0 { "torn newest write" } else { "no good copy, above the replay end" };
        m.log.push(format!("journal entry {seq}: {what}, not replayed"));
    }
    found
}
