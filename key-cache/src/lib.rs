//! key-cache: the btree key cache for the cached btrees (`alloc`, `inodes`).
//!
//! This crate will own cached entries (key, ACCESSED / DIRTY flags, journal pin, seq), filling
//! them from the btree with or without the journal-key overlay (the v1.37.5 fill rule and the
//! fixed one), dirty tracking under journal pins, and the flush that writes a dirty entry back to
//! the btree: where v1.37.5 hit `BUG_ON` at key_cache.c:475, the fixed profile returns
//! `btree_key_cache_coherency` and the filesystem goes emergency read-only.
//!
//! It must never hold a deleted key, and never flush past a journal entry not yet replayed.
