//! The btree: nodes on disk, the node cache, iterators, inserts and splits.

pub mod node_alloc;

pub use node_alloc::{NodeAllocator, NodeLocation};
