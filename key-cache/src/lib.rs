//! key-cache: the btree key cache for the cached btrees (`alloc`, `inodes`).
//!
//! It holds no code yet. It is where cached entries (key, ACCESSED / DIRTY flags, journal pin,
//! seq) belong, with their fill from the btree with or without the journal-key overlay (the
//! v1.37.5 fill rule and the later one), dirty tracking under journal pins whose flush callback
//! writes an entry back to the btree, and the coherency check that was a `BUG_ON` at
//! key_cache.c:475 in v1.37.5. The filesystem has room for it: journal replay routes keys per
//! btree (`tools/src/fs/trans.rs`), and journal pins take an owner's flush callback.
//!
//! It must never hold a deleted key, and never flush past a journal entry not yet replayed.
