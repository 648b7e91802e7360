//! Where new btree nodes come from. The btree asks; the allocator crate answers.

use crate::bkey::ExtentPtr;
use crate::bpos::BtreeId;
use crate::error::Result;

/// A place for one new btree node: one pointer per replica, on distinct devices, each at the
/// start of a node-sized slot in a bucket of data type `btree`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLocation {
    pub ptrs: Vec<ExtentPtr>,
}

/// The service the btree needs from the allocator.
///
/// An update reserves every node it may need before it changes anything; if the reservation
/// fails with `operation_blocked` the update returns that error with nothing changed, so the
/// caller can wait on the allocator and retry.
pub trait NodeAllocator: Send + Sync {
    /// Allocates `nr` node locations for `btree` at `level`, each with `metadata_replicas`
    /// replicas on the metadata target. Errors: `operation_blocked` (wait, then retry),
    /// `insufficient_devices` (the devices can never satisfy the request).
    fn alloc_nodes(&self, nr: usize, btree: BtreeId, level: u8) -> Result<Vec<NodeLocation>>;

    /// Returns locations that were allocated but not written: they go back to the pool.
    /// An error means the allocator's accounting contradicts the btree's (a bug or damage):
    /// the caller reports it as fatal.
    fn release_unused(&self, nodes: Vec<NodeLocation>) -> Result<()>;

    /// A written node at these pointers is no longer referenced: its sectors are freed.
    /// Errors as for [`NodeAllocator::release_unused`].
    fn free_node(&self, ptrs: &[ExtentPtr]) -> Result<()>;
}
