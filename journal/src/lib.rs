//! journal: bcsim's journal, from bytes on disk to the replay overlay.
//!
//! This crate owns journal entries (`jset`) on disk and their replication across the metadata
//! devices; the write path: reservations, the open entry, flush on fsync and after
//! `journal_flush_delay`; journal pins with their owners' flush callbacks, and reclaim, which
//! flushes them oldest first and so advances `last_seq`; the journal read across all devices
//! with bcachefs's rules for stale tails, bad checksums, duplicates, gaps and blacklisted seqs;
//! and the sorted, compacted journal keys that act as an overlay over every btree iterator until
//! replay finishes.
//!
//! It never commits btree updates itself and never reaches into the key cache or the allocator:
//! those sit above it and register flush callbacks on its pins.
//!
//! - [`format`]: the jset and its entries, byte by byte.
//! - [`ring`]: one device's journal buckets as a ring.
//! - [`write`]: the [`Journal`]: reservations, writing entries, the flush delay, `last_seq`.
//! - [`pin`]: pins, their flush callbacks, and reclaim's [`Journal::flush_pins`].
//! - [`read`]: the journal read at mount.
//! - [`keys`]: journal keys sorted and compacted, the overlay replay works from.

pub mod format;
pub mod keys;
pub mod pin;
pub mod read;
pub mod ring;
pub mod write;

pub use format::{Jset, JsetEntry, JsetInvalid, JsetRead, decode_jset};
pub use keys::{JournalKey, JournalKeys};
pub use pin::{JournalPin, PinFlush, Unflushable};
pub use read::{
    BLACKLIST_AHEAD, DeviceRing, EntryPtr, JournalDevice, JournalRead, JournalReplay, ReadEntry, ReadOpts,
    ReplayDecision, SeqStatus, read_journal, read_journal_for_replay,
};
pub use ring::Ring;
pub use write::{Journal, JournalConfig, JournalRes, JournalStats, JournalWatermark};
