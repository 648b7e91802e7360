//! allocator: buckets on every member device and who gets them.
//!
//! This crate will own per-device bucket state (gen, data type, sector counts,
//! `journal_seq_empty`) with `alloc_v4` keys as its persistent record and the `freespace` /
//! `need_discard` indexes kept consistent with them; watermarks and reserves; replica placement
//! across a target's devices by durability; discards; and the wait list for blocked allocations,
//! which in the fixed profile restarts a waiting request when replica options change, on
//! emergency read-only, on new free buckets, and after a timeout with a stuck report.
//!
//! It decides and returns alloc-key updates; it never commits them itself.
