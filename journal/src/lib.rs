//! journal: bcsim's journal, from bytes on disk to the replay overlay.
//!
//! This crate will own journal entries (`jset`) on disk and their replication across the
//! metadata devices; the write path (reservations, the open entry, flush on fsync and after
//! `journal_flush_delay`); journal pins and reclaim, which advance `last_seq`; the journal read
//! across all devices with bcachefs's rules for stale tails, bad checksums, duplicates, gaps and
//! blacklisted seqs; and the sorted, compacted journal keys that act as an overlay over every
//! btree iterator until replay finishes.
//!
//! It must never commit btree updates itself or reach into the key cache or the allocator: those
//! sit above it and register flush callbacks on its pins.

pub mod format;
pub mod keys;
pub mod read;
pub mod write;

pub use format::{Jset, JsetEntry, JsetInvalid, JsetRead, decode_jset};
pub use keys::{JournalKey, JournalKeys};
pub use read::{
    BLACKLIST_AHEAD, DeviceRing, EntryPtr, JournalDevice, JournalRead, JournalReplay, ReadEntry, ReadOpts,
    ReplayDecision, SeqStatus, read_journal, read_journal_for_replay,
};
pub use write::{Journal, JournalConfig, JournalStats, JournalWatermark, Ring};
