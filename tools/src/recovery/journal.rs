//! Recovery's journal read: what the journal of a set of images says to replay, where the
//! btrees start, which seqs to ignore, and how the rings continue.

use fs_core::btree::Root;
use fs_core::error::Result;
use fs_core::sb::{DeviceSet, fs_magic};
use journal::format::JSET_SALT;
use journal::keys::JournalKeys;
use journal::read::{JournalDevice, JournalRead, ReadOpts, read_journal, read_journal_keys};
use journal::{JsetEntry, Ring};

/// Journal seqs blacklisted after an unclean shutdown beyond the newest seq found: the open
/// entry at the crash had the next seq and may have reached btree nodes.
const BLACKLIST_AHEAD: u64 = 1;

/// The journal of every present member that has journal buckets, as the journal read takes it.
pub fn journal_devices(set: &DeviceSet) -> Vec<JournalDevice> {
    set.devices
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let m = m.as_ref()?;
            let member = set.sb.members.get(i)?;
            let buckets: Vec<u64> = m.sb.journal.buckets().collect();
            (!buckets.is_empty()).then(|| JournalDevice {
                dev_idx: i as u8,
                dev: m.dev.clone(),
                bucket_size: u64::from(member.bucket_size),
                buckets,
            })
        })
        .collect()
}

/// How to read `set`'s journal: its jset magic, entries padded to `block_size`, the absent
/// members. `keep_all` stays off: recovery replays only the replay range.
pub fn journal_read_opts(set: &DeviceSet, block_size: u64, degraded: bool) -> ReadOpts {
    ReadOpts {
        magic: fs_magic(&set.sb.uuid, JSET_SALT),
        block_size,
        degraded,
        missing: set.missing().iter().filter_map(|&d| u8::try_from(d).ok()).collect(),
        keep_all: false,
    }
}

/// What recovery takes from the journal.
pub struct RecoveryJournal {
    pub read: JournalRead,
    /// Sorted and compacted: the overlay over the btrees until replay, and what it replays.
    pub keys: JournalKeys,
    /// Keys read before compaction.
    pub nr_read: usize,
    /// Every blacklisted range: those the journal lists and the one this recovery adds.
    pub blacklist: Vec<(u64, u64)>,
    /// `[start, end)`: the seqs after the replay range this recovery blacklists.
    pub new_blacklist: (u64, u64),
    /// When the read ended and sorting the keys began.
    pub sort_began: std::time::Instant,
}

impl RecoveryJournal {
    /// Reads the journal of `set`.
    pub fn read(set: &DeviceSet, ropts: &ReadOpts) -> Result<RecoveryJournal> {
        let (read, sink) = read_journal_keys(&journal_devices(set), ropts)?;
        let sort_began = std::time::Instant::now();
        // The read moved the keys of the entries it kept into `sink` as it went: what is to
        // replay are those of the replay range, less blacklisted seqs.
        let replays =
            |seq: u64| (read.last_seq..=read.replay_end).contains(&seq) && !in_ranges(&read.blacklist, seq);
        let (keys, nr_read) = JournalKeys::from_sink(sink, replays);
        Ok(RecoveryJournal::new(read, keys, nr_read, sort_began))
    }

    /// Reads the journal of `set` for a check that writes nothing.
    pub fn read_for_check(set: &DeviceSet, ropts: &ReadOpts) -> Result<RecoveryJournal> {
        let read = read_journal(&journal_devices(set), ropts)?;
        let sort_began = std::time::Instant::now();
        let (keys, nr_read) = JournalKeys::from_entries(&read.entries);
        Ok(RecoveryJournal::new(read, keys, nr_read, sort_began))
    }

    fn new(
        read: JournalRead,
        keys: JournalKeys,
        nr_read: usize,
        sort_began: std::time::Instant,
    ) -> RecoveryJournal {
        let new_blacklist = blacklist_after(&read);
        let mut blacklist = read.blacklist.clone();
        blacklist.push(new_blacklist);
        RecoveryJournal { read, keys, nr_read, blacklist, new_blacklist, sort_began }
    }

    /// The roots the newest replayed entry carries (every entry carries them).
    pub fn roots(&self) -> Vec<Root> {
        let mut roots: std::collections::BTreeMap<fs_core::bpos::BtreeId, Root> =
            std::collections::BTreeMap::new();
        for e in &self.read.entries {
            for entry in &e.jset.entries {
                if let JsetEntry::BtreeRoot { btree, level, ptr } = entry {
                    roots.insert(*btree, Root { btree: *btree, level: *level, ptr: ptr.clone() });
                }
            }
        }
        roots.into_values().collect()
    }

    /// A test for the seqs whose bsets the btrees must ignore.
    pub fn blacklisted(&self) -> Box<dyn Fn(u64) -> bool + Send + Sync> {
        let ranges = self.blacklist.clone();
        Box::new(move |seq| in_ranges(&ranges, seq))
    }

    /// Rings positioned right after the newest entry the read found on each device.
    pub fn continue_rings(&self, set: &DeviceSet) -> Result<Vec<Ring>> {
        let mut rings = Vec::new();
        for jd in journal_devices(set) {
            let Some(member) = set.sb.members.get(usize::from(jd.dev_idx)) else { continue };
            if member.durability == 0 {
                continue;
            }
            let n = jd.buckets.len();
            let ring = match self.read.rings.iter().find(|r| r.dev == jd.dev_idx) {
                Some(r) if r.bucket_seqs.len() == n => Ring::at(
                    jd.dev_idx,
                    jd.dev,
                    jd.bucket_size,
                    jd.buckets,
                    r.head_idx.min(n.saturating_sub(1)),
                    r.head_end.min(jd.bucket_size),
                    r.bucket_seqs.clone(),
                )?,
                _ => Ring::empty(jd.dev_idx, jd.dev, jd.bucket_size, jd.buckets)?,
            };
            rings.push(ring);
        }
        Ok(rings)
    }
}

/// Whether `seq` lies in one of the `[start, end)` ranges.
fn in_ranges(ranges: &[(u64, u64)], seq: u64) -> bool {
    ranges.iter().any(|&(s, e)| (s..e).contains(&seq))
}

/// The seqs to blacklist after an unclean shutdown, `[start, end)`: past the replay range they
/// may have reached btree nodes without their journal entry becoming durable.
fn blacklist_after(jr: &JournalRead) -> (u64, u64) {
    (jr.replay_end + 1, jr.newest_seq.max(jr.replay_end) + 1 + BLACKLIST_AHEAD)
}
