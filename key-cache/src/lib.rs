//! key-cache: the btree key cache for the cached btrees (`alloc`, `inodes`), at leaf level.
//!
//! An entry holds one key of a cached btree, its flags (ACCESSED, DIRTY), the journal seq of
//! its newest update and, while dirty, a journal pin at the seq of its oldest update not yet in
//! the btree. The protocols, each enforced here:
//!
//! 1. **Fill.** An update of a position with no entry fills one by the profile's rule
//!    ([`fill_rule`], `btree_key_cache_fill`). v1.37.5 reads the btree key without the
//!    journal-key overlay and looks at the journal keys only when the btree key is deleted; the
//!    journal key it then takes must be flushed immediately. Since v1.39 the journal key is laid
//!    over the btree key whenever replay is unfinished, and the entry must be flushed
//!    immediately when the key is deleted in either. So v1.37.5 caches a stale key where the
//!    btree is live and a newer journal key (or deletion) is pending.
//! 2. **Write-through.** An update that deletes, and one whose fill must flush immediately (or
//!    found nothing), goes into the btree instead (`flush_new_cached_update`), and the entry, if
//!    any, is dropped with its pin (`bch2_btree_key_cache_drop`): the btree now has the newest
//!    key. So the cache never holds a deleted key, and an entry is dirty only over a live btree
//!    key.
//! 3. **Commit.** A cached update replaces the entry's key under its lock, marks it DIRTY and,
//!    if it held no pin, pins the update's seq; an older pin stays, covering both updates.
//! 4. **Flush** is the pin's callback ([`PinFlush`]), run by journal reclaim. It copies the key
//!    and the entry's update count under the lock, releases it, and hands the key to the
//!    [`FlushTarget`], which under its btree lock looks the position up bypassing the cache,
//!    checks coherency — the btree must hold a live key there — and inserts. Then, under the
//!    lock again: if no update came meanwhile, DIRTY is cleared and the pin dropped; otherwise
//!    the pin moves to the newer update's seq and the entry stays dirty. No dirty bit is lost
//!    and no half-written key is flushed. An update in the same journal entry as the pin (which
//!    cannot move to its own seq) is written by the same flush, which tries again.
//! 5. **Coherency.** A flush that finds no live key is the BUG_ON of key_cache.c (line 475 at
//!    v1.37.5, 469 at v1.39): a simulated kernel BUG (`kernel_bug`) in those profiles, the typed
//!    error `btree_key_cache_coherency` naming the btree's earlier topology errors in the fixed
//!    profile. Either way the entry stays dirty and pinned. The kernel's flush also sees journal
//!    keys not yet replayed; at a position the entry was updated at, a commit has marked that
//!    journal key overwritten, so the btree is what the check sees, as here. By rules 1 and 2
//!    it finds none only if the btree changed under a dirty entry: a lookup that reaches a
//!    different node than the fill did.
//!
//! 6. **Pressure.** Above 1024 + nr/2 dirty entries journal reclaim flushes pins; above
//!    4096 + 3/4·nr a commit flushes them itself before it returns (it is throttled)
//!    ([`KeyCache::pressure`]). Clean entries are evicted by a clock sweep ([`KeyCache::evict`]):
//!    one not accessed since the last sweep goes, the others lose ACCESSED; a dirty one stays.
//!
//! Lock order: the caller's btree lock, the entry map, an entry, the journal. The flush takes
//! no map lock and takes the btree lock with no entry lock held.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;

use bitflags::bitflags;
use fs_core::bkey::Bkey;
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::error::{ErrCode, Error, Result};
use fs_core::opts::Behavior;
use fs_core::sync::{Arc, AtomicUsize, Mutex, Ordering, Weak};
use journal::{Journal, JournalPin, PinFlush};

/// Writes of an entry updated again within its pinned journal entry, before a flush gives up.
const FLUSH_SAME_SEQ_TRIES: usize = 8;

bitflags! {
    /// An entry's state (`BKEY_CACHED_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct EntryFlags: u8 {
        /// Read or updated since the last look (kept for eviction).
        const ACCESSED = 1 << 0;
        /// Holds an update the btree does not have yet; the entry holds a journal pin.
        const DIRTY = 1 << 1;
    }
}

/// What the owner of the btrees does for the cache: the flush's lookup, check and insert, done
/// together under its btree lock.
pub trait FlushTarget: Send + Sync {
    /// Looks `btree` up at `key.pos`, at leaf level, bypassing the key cache; passes what it
    /// finds, with the topology errors `btree` has had, to `check`, and if that passes, inserts
    /// `key` as an update of journal seq `seq`.
    fn flush_key(
        &self,
        btree: BtreeId,
        key: &Bkey,
        seq: u64,
        check: &dyn Fn(Found<'_>) -> Result<()>,
    ) -> Result<()>;
}

/// What a flush's lookup found.
pub struct Found<'a> {
    /// The btree's key (`None`: an empty slot).
    pub key: Option<&'a Bkey>,
    /// Topology errors of the btree so far, and the first one's message: the typed coherency
    /// error names them.
    pub topology_errors: u64,
    pub first_topology_error: Option<&'a str>,
}

/// What a fill sees at a position.
#[derive(Clone, Debug, Default)]
pub struct FillInput {
    /// The btree's key, read without the journal-key overlay (`None`: none there).
    pub btree_key: Option<Bkey>,
    /// The newest pending journal key at the position, if replay is unfinished.
    pub journal_key: Option<Bkey>,
}

/// What a fill decides: the key to cache (never a deleted one), and whether the entry must be
/// flushed immediately (its updates write through).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fill {
    pub key: Option<Bkey>,
    pub immediate_flush: bool,
}

/// The fill rule of `behavior` (see the module doc, rule 1).
pub fn fill_rule(behavior: Behavior, input: FillInput) -> Fill {
    let live = |k: &Option<Bkey>| k.as_ref().is_some_and(|k| !k.is_deleted());
    match behavior {
        // The btree key as read, without the overlay; the journal key only if the btree's is
        // deleted, and then flushed immediately. A live btree key with a pending journal
        // deletion or newer key is cached as it is: stale.
        Behavior::V1_37_5 => {
            if live(&input.btree_key) {
                Fill { key: input.btree_key, immediate_flush: false }
            } else {
                Fill { key: input.journal_key.filter(|k| !k.is_deleted()), immediate_flush: true }
            }
        }
        Behavior::V1_39 | Behavior::Fixed => {
            // An empty slot reads as a deleted key (peek_slot).
            let deleted_somewhere =
                !live(&input.btree_key) || input.journal_key.as_ref().is_some_and(Bkey::is_deleted);
            let key = input.journal_key.or(input.btree_key).filter(|k| !k.is_deleted());
            Fill { immediate_flush: deleted_somewhere || key.is_none(), key }
        }
    }
}

/// How far the dirty entries are past the thresholds (rule 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pressure {
    None,
    /// Journal reclaim should flush pins.
    Reclaim,
    /// A commit should wait for (here: do) the flushing itself.
    Throttle,
}

/// Dirty entries past which reclaim starts: 1024 + half the entries.
pub fn reclaim_threshold(nr_keys: usize) -> usize {
    1024 + nr_keys / 2
}

/// Dirty entries past which commits are throttled: 4096 + three quarters of the entries.
pub fn throttle_threshold(nr_keys: usize) -> usize {
    4096 + nr_keys / 4 * 3
}

/// Where an update went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// Into the cache: the entry is dirty and pinned.
    Cached,
    /// The caller writes it into the btree itself (a deletion, or an entry that may not hold
    /// it: rule 2).
    WriteThrough,
}

struct EntryState {
    key: Bkey,
    flags: EntryFlags,
    /// Journal seq of the newest update.
    seq: u64,
    /// Updates so far: a flush compares it to see whether one came meanwhile.
    updates: u64,
    /// Held exactly while DIRTY.
    pin: Option<JournalPin>,
}

/// One cached key.
pub struct Entry {
    btree: BtreeId,
    pos: Bpos,
    state: Mutex<EntryState>,
}

impl Entry {
    /// The cached key, its flags and its newest update's seq.
    pub fn snapshot(&self) -> (Bkey, EntryFlags, u64) {
        let st = self.state.lock();
        (st.key.clone(), st.flags, st.seq)
    }

    /// Whether the entry is dirty, and the seq of its pin, read together.
    pub fn dirty_and_pin(&self) -> (bool, Option<u64>) {
        let st = self.state.lock();
        (st.flags.contains(EntryFlags::DIRTY), st.pin.as_ref().map(JournalPin::seq))
    }
}

/// The entries by position, hashed with fixed keys, not per process: the eviction sweep goes
/// in map order, and a seeded run must evict the same entries every time it runs.
type EntryMap = HashMap<(BtreeId, Bpos), Arc<Entry>, BuildHasherDefault<DefaultHasher>>;

/// The key cache of one filesystem.
pub struct KeyCache {
    behavior: Behavior,
    entries: Mutex<EntryMap>,
    nr_keys: AtomicUsize,
    nr_dirty: AtomicUsize,
    target: Weak<dyn FlushTarget>,
    me: Weak<KeyCache>,
}

/// The journal pin callback of one entry.
struct EntryPin {
    cache: Weak<KeyCache>,
    entry: Arc<Entry>,
}

impl PinFlush for EntryPin {
    fn flush_pin(&self, journal: &Journal, _seq: u64) -> Result<()> {
        match self.cache.upgrade() {
            Some(cache) => cache.flush_entry(journal, &self.entry),
            // The filesystem is gone (a crash): nothing in memory is left to write.
            None => Ok(()),
        }
    }

    fn name(&self) -> &'static str {
        "btree key cache"
    }
}

impl KeyCache {
    /// A cache of `behavior` whose flushes go to `target`.
    pub fn new(behavior: Behavior, target: Weak<dyn FlushTarget>) -> Arc<KeyCache> {
        Arc::new_cyclic(|me| KeyCache {
            behavior,
            entries: Mutex::new(HashMap::default()),
            nr_keys: AtomicUsize::new(0),
            nr_dirty: AtomicUsize::new(0),
            target,
            me: me.clone(),
        })
    }

    /// Entries held.
    pub fn nr_keys(&self) -> usize {
        self.nr_keys.load(Ordering::Acquire)
    }

    /// Entries holding an update the btree does not have yet.
    pub fn nr_dirty(&self) -> usize {
        self.nr_dirty.load(Ordering::Acquire)
    }

    /// Gives up every entry's pin without writing anything back: the filesystem is going down
    /// (a crash, or emergency read-only) and what only the cache held is lost on purpose, as
    /// the journal still holds it.
    pub fn abandon_pins(&self) {
        for entry in self.entries.lock().values() {
            let mut st = entry.state.lock();
            if let Some(pin) = st.pin.take() {
                pin.abandon();
                self.nr_dirty.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Where the dirty entries stand against the thresholds (rule 6).
    pub fn pressure(&self) -> Pressure {
        let (dirty, nr) = (self.nr_dirty(), self.nr_keys());
        if dirty > throttle_threshold(nr) {
            Pressure::Throttle
        } else if dirty > reclaim_threshold(nr) {
            Pressure::Reclaim
        } else {
            Pressure::None
        }
    }

    /// One sweep of the eviction clock while more than `keep` entries are held: a clean entry
    /// not accessed since the last sweep is dropped, an accessed one loses ACCESSED (a second
    /// chance), a dirty one stays. Returns how many were dropped.
    pub fn evict(&self, keep: usize) -> usize {
        let mut entries = self.entries.lock();
        let mut excess = entries.len().saturating_sub(keep);
        if excess == 0 {
            return 0;
        }
        let before = entries.len();
        entries.retain(|_, e| {
            if excess == 0 {
                return true;
            }
            let mut st = e.state.lock();
            if st.flags.contains(EntryFlags::DIRTY) {
                return true;
            }
            if st.flags.contains(EntryFlags::ACCESSED) {
                st.flags.remove(EntryFlags::ACCESSED);
                return true;
            }
            excess -= 1;
            false
        });
        let dropped = before - entries.len();
        self.nr_keys.fetch_sub(dropped, Ordering::AcqRel);
        dropped
    }

    /// Drops every entry, once all are clean (after the pins are flushed): what holds a key
    /// the btree does not have yet cannot be dropped.
    /// Drops every clean entry and returns how many; dirty ones stay (and keep their pins).
    /// After journal replay: replay's entries, all written back, go, while updates that
    /// threads running beside it (discard workers) made through the cache meanwhile stay.
    pub fn drop_clean(&self) -> usize {
        let mut entries = self.entries.lock();
        let before = entries.len();
        entries.retain(|_, e| e.state.lock().flags.contains(EntryFlags::DIRTY));
        let dropped = before - entries.len();
        self.nr_keys.fetch_sub(dropped, Ordering::AcqRel);
        dropped
    }

    pub fn clear(&self) -> Result<()> {
        let mut entries = self.entries.lock();
        let dirty = entries.values().filter(|e| e.state.lock().flags.contains(EntryFlags::DIRTY)).count();
        if dirty > 0 {
            return Err(Error::internal(format!("key cache cleared with {dirty} dirty entries")));
        }
        entries.clear();
        self.nr_keys.store(0, Ordering::Release);
        Ok(())
    }

    /// The cached key at `pos`, if there is an entry (marking it accessed).
    pub fn get(&self, btree: BtreeId, pos: Bpos) -> Option<Bkey> {
        if self.nr_keys() == 0 {
            return None;
        }
        let entry = self.entries.lock().get(&(btree, pos)).cloned()?;
        let mut st = entry.state.lock();
        st.flags.insert(EntryFlags::ACCESSED);
        Some(st.key.clone())
    }

    /// Whether `pos` has an entry: an update there must go through the cache
    /// ([`KeyCache::update`]). Whoever writes a cached btree directly must send those positions
    /// here. Costs one atomic load while the cache is empty, which is all the time outside
    /// replay.
    pub fn has_entry(&self, btree: BtreeId, pos: Bpos) -> bool {
        self.nr_keys() > 0 && self.entries.lock().contains_key(&(btree, pos))
    }

    /// The entry at `pos`, for inspection.
    pub fn entry(&self, btree: BtreeId, pos: Bpos) -> Option<Arc<Entry>> {
        self.entries.lock().get(&(btree, pos)).cloned()
    }

    /// Applies `key`, journalled at `seq`, to the cache (rules 1-3). `fill` is called when the
    /// position has no entry: it reads what the fill rule looks at, with the caller's btree
    /// lock held.
    pub fn update(
        &self,
        journal: &Journal,
        btree: BtreeId,
        key: Bkey,
        seq: u64,
        fill: impl FnOnce() -> Result<FillInput>,
    ) -> Result<Update> {
        let pos = key.pos;
        let mut entries = self.entries.lock();
        if key.is_deleted() {
            self.drop_entry(journal, entries.remove(&(btree, pos)))?;
            return Ok(Update::WriteThrough);
        }
        let entry = match entries.get(&(btree, pos)) {
            Some(e) => e.clone(),
            None => {
                let fill = fill_rule(self.behavior, fill()?);
                // An entry that must be flushed immediately lives only for the write-through
                // that drops it: none is made.
                let Some(filled) = fill.key.filter(|_| !fill.immediate_flush) else {
                    return Ok(Update::WriteThrough);
                };
                let state =
                    EntryState { key: filled, flags: EntryFlags::ACCESSED, seq: 0, updates: 0, pin: None };
                let e = Arc::new(Entry { btree, pos, state: Mutex::new(state) });
                entries.insert((btree, pos), e.clone());
                self.nr_keys.fetch_add(1, Ordering::AcqRel);
                e
            }
        };
        // The entry's lock is taken before the map's is given up, so an eviction sweep (which
        // takes the map, then entries) cannot drop the entry between the two.
        let mut st = entry.state.lock();
        drop(entries);
        if st.pin.is_none() {
            // Rule 5 of the journal pins: added under the lock the callback takes.
            let flush = Arc::new(EntryPin { cache: self.me.clone(), entry: entry.clone() });
            st.pin = Some(journal.pin_add(seq, flush)?);
            self.nr_dirty.fetch_add(1, Ordering::AcqRel);
        }
        st.key = key;
        st.seq = seq;
        st.updates += 1;
        st.flags.insert(EntryFlags::DIRTY | EntryFlags::ACCESSED);
        Ok(Update::Cached)
    }

    /// Drops the entry at `pos`, if any, with its pin: the caller has written a newer key into
    /// the btree itself (rule 2).
    pub fn invalidate(&self, journal: &Journal, btree: BtreeId, pos: Bpos) -> Result<()> {
        let entry = self.entries.lock().remove(&(btree, pos));
        self.drop_entry(journal, entry)
    }

    /// Drops an entry a write-through superseded, with its pin (rule 2).
    fn drop_entry(&self, journal: &Journal, entry: Option<Arc<Entry>>) -> Result<()> {
        let Some(entry) = entry else { return Ok(()) };
        self.nr_keys.fetch_sub(1, Ordering::AcqRel);
        let mut st = entry.state.lock();
        st.flags.remove(EntryFlags::DIRTY);
        if let Some(pin) = st.pin.take() {
            self.nr_dirty.fetch_sub(1, Ordering::AcqRel);
            journal.pin_drop(pin)?;
        }
        Ok(())
    }

    /// Writes `entry` back into the btree (rule 4); its pin's callback. An update made during
    /// the write moves the pin to its seq; one in the very journal entry the pin is at (the pin
    /// cannot move) is written too, a bounded number of times before reclaim is told "not now".
    fn flush_entry(&self, journal: &Journal, entry: &Arc<Entry>) -> Result<()> {
        let target = self
            .target
            .upgrade()
            .ok_or_else(|| Error::internal("key cache flush after its filesystem was torn down"))?;
        for _ in 0..FLUSH_SAME_SEQ_TRIES {
            let (key, seq, updates) = {
                let st = entry.state.lock();
                if !st.flags.contains(EntryFlags::DIRTY) {
                    return Ok(());
                }
                (st.key.clone(), st.seq, st.updates)
            };
            let check = |found: Found<'_>| self.check_coherency(entry, seq, found);
            target.flush_key(entry.btree, &key, seq, &check)?;
            let mut st = entry.state.lock();
            let newest = st.seq;
            let pinned = st.pin.as_ref().map(JournalPin::seq);
            if st.updates == updates {
                st.flags.remove(EntryFlags::DIRTY);
                if let Some(pin) = st.pin.take() {
                    self.nr_dirty.fetch_sub(1, Ordering::AcqRel);
                    journal.pin_drop(pin)?;
                }
                return Ok(());
            }
            if pinned.is_some_and(|p| newest > p) {
                if let Some(pin) = st.pin.as_mut() {
                    journal.pin_update(pin, newest)?;
                }
                return Ok(());
            }
        }
        Err(Error::new(
            ErrCode::JournalReclaimWouldDeadlock,
            format!("key cache entry at {} updated during every flush", entry.pos),
        )
        .btree(entry.btree)
        .pos(entry.pos))
    }

    /// Rule 5: the btree must hold a live key where a dirty entry is flushed.
    fn check_coherency(&self, entry: &Entry, seq: u64, found: Found<'_>) -> Result<()> {
        if found.key.is_some_and(|k| !k.is_deleted()) {
            return Ok(());
        }
        let (btree, pos) = (entry.btree, entry.pos);
        match self.behavior {
            Behavior::V1_37_5 | Behavior::V1_39 => {
                let line = if self.behavior == Behavior::V1_37_5 { 475 } else { 469 };
                Err(Error::new(
                    ErrCode::KernelBug,
                    format!(
                        "kernel BUG at fs/bcachefs/btree/key_cache.c:{line}! (btree_key_cache_flush_pos)"
                    ),
                )
                .btree(btree)
                .pos(pos)
                .journal_seq(seq))
            }
            Behavior::Fixed => {
                let n = found.topology_errors;
                let after = match found.first_topology_error {
                    Some(first) if n > 0 => {
                        format!(" after {n} topology errors in btree {btree} (first: {first})")
                    }
                    _ => String::new(),
                };
                Err(Error::new(
                    ErrCode::BtreeKeyCacheCoherency,
                    format!("flushing the key cache entry at {pos} (seq {seq}): the btree holds no live key there{after}"),
                )
                .btree(btree)
                .pos(pos)
                .journal_seq(seq))
            }
        }
    }
}
