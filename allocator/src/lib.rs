//! allocator: buckets on every member device and who gets them.
//!
//! This crate owns per-device bucket state (gen, data type, sector counts,
//! `journal_seq_empty`) with `alloc_v4` keys as its persistent record and the `freespace` /
//! `need_discard` indexes kept consistent with them; watermarks and reserves; replica placement
//! across a target's devices by durability; btree node allocation for the btree, following the
//! live `metadata_replicas` and `metadata_target`; and discards of buckets whose emptying is
//! durable. The wait list ([`wait`]) is where a refused btree update parks until buckets are
//! freed, options change, the filesystem goes emergency read-only or a timeout passes (the
//! filesystem layer runs that loop; see `bcsim::fs::alloc_wait`).
//!
//! It decides and returns alloc-key updates; it never commits them itself, and it never writes
//! to a device.
//!
//! - [`alloc`]: the [`Allocator`]: bucket allocation, sector accounting, release, discard,
//!   alloc-key updates.
//! - [`alloc_read`]: rebuilding the allocator from the alloc btree at mount.
//! - [`device`]: one device's buckets, their states and counts; [`DevUsage`] for reports.
//! - [`watermark`]: watermarks and the reserves they leave.
//! - `placement`: which devices a request's replicas go to.
//! - [`node_alloc`]: [`BtreeNodeAlloc`], the btree's `NodeAllocator`.
//! - `check`: `check_invariants`, the full consistency scan tests run after every step.
//! - `bucket_set`: the bitmap behind the free list and the set of changed buckets.
//! - [`wait`]: the [`WaitList`] refused requests park on.

pub mod alloc;
pub mod alloc_read;
mod bucket_set;
mod bucket_table;
mod check;
pub mod device;
pub mod node_alloc;
mod placement;
pub mod wait;
pub mod watermark;

pub use alloc::{AllocRequest, AllocatedBucket, Allocator, RewindBuffer, Taken};
pub use device::{BucketState, DevUsage, DeviceInit, PENDING_SEQ, is_unused};
pub use node_alloc::{BtreeNodeAlloc, NodeRequestSpec};
pub use wait::{Clock, Ticket, WaitList, Wake};
pub use watermark::{Watermark, nr_btree_reserve, reserved_buckets};
