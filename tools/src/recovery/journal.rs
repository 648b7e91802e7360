//! Recovery's journal read: what the journal of a set of images says to replay, where the
//! btrees start, which seqs to ignore, and how the rings continue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fs_core::btree::Root;
use fs_core::error::Result;
use fs_core::sb::{DeviceSet, fs_magic};
use journal::format::JSET_SALT;
use journal::keys::JournalKeys;
use journal::read::{JournalDevice, JournalRead, JournalReplay, ReadOpts, read_journal_for_replay};
use journal::{JsetEntry, Ring};

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

/// Bsets the btrees read with a journal seq past the newest entry found. bcsim writes a node
/// only once the journal entries of its keys are durable, so one means journal entries were
/// lost (and, past the blacklist, its keys are dropped).
pub struct FutureBsets {
    /// The newest journal seq found.
    pub newest: u64,
    count: AtomicU64,
    first: AtomicU64,
}

impl FutureBsets {
    /// How many such bsets were read, and the lowest seq among them.
    pub fn seen(&self) -> Option<(u64, u64)> {
        let n = self.count.load(Ordering::Relaxed);
        (n > 0).then(|| (n, self.first.load(Ordering::Relaxed)))
    }
}

/// What recovery takes from the journal: the read, the keys to replay, and the decision of
/// what replays and what the btrees must ignore, all as the journal crate decided them.
pub struct RecoveryJournal {
    pub read: JournalRead,
    /// Sorted and compacted: the overlay over the btrees until replay, and what it replays.
    pub keys: JournalKeys,
    /// Keys read before compaction.
    pub nr_read: usize,
    /// `[start, end)`: the seqs after the replay range this recovery blacklists.
    pub new_blacklist: (u64, u64),
    /// Every blacklisted range: those the journal lists and the one this recovery adds.
    blacklist: Vec<(u64, u64)>,
    future: Arc<FutureBsets>,
    pub read_time: Duration,
    pub sort_time: Duration,
}

impl RecoveryJournal {
    /// Reads the journal of `set`: the same read and keys for a mount and for a check.
    pub fn read(set: &DeviceSet, ropts: &ReadOpts) -> Result<RecoveryJournal> {
        let JournalReplay { read, keys, keys_read, read_time, sort_time } =
            read_journal_for_replay(&journal_devices(set), ropts)?;
        let new_blacklist = read.replay().blacklist_after();
        let blacklist = read.replay().btree_blacklist();
        let future = Arc::new(FutureBsets {
            newest: read.newest_seq,
            count: AtomicU64::new(0),
            first: AtomicU64::new(u64::MAX),
        });
        Ok(RecoveryJournal {
            read,
            keys,
            nr_read: keys_read,
            new_blacklist,
            blacklist,
            future,
            read_time,
            sort_time,
        })
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

    /// A test for the seqs whose bsets the btrees must ignore: the blacklisted ranges, which
    /// reach [`journal::BLACKLIST_AHEAD`] seqs past the newest entry found. It also notes every
    /// bset it is asked about whose seq is past the one entry that may have been in flight at
    /// the crash ([`RecoveryJournal::future_bsets`]): write-back stamps its bsets with the entry
    /// it is about to write, so bsets of that one are what any crash in a write-back leaves,
    /// and later ones mean entries were lost.
    pub fn blacklisted(&self) -> Box<dyn Fn(u64) -> bool + Send + Sync> {
        let ranges = self.blacklist.clone();
        let future = self.future.clone();
        Box::new(move |seq| {
            if seq > future.newest.saturating_add(1) {
                future.count.fetch_add(1, Ordering::Relaxed);
                future.first.fetch_min(seq, Ordering::Relaxed);
            }
            in_ranges(&ranges, seq)
        })
    }

    /// Where [`RecoveryJournal::blacklisted`] notes the bsets past the newest entry found; it
    /// outlives the journal keys.
    pub fn future_bsets(&self) -> Arc<FutureBsets> {
        self.future.clone()
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
