//! The btree: nodes on disk ([`node`]), reading and writing them with replica fallback
//! ([`io`]), all btrees of a filesystem with their node cache, inserts, splits and write-back
//! ([`tree`]), iteration through an optional overlay ([`iter`]), and the [`NodeAllocator`]
//! service the allocator crate provides.

pub mod io;
pub mod iter;
pub mod node;
pub mod node_alloc;
pub mod pos_map;
pub mod tree;

pub use io::NodeIo;
pub use iter::{BtreeIter, KeyOverlay};
pub use node_alloc::{NodeAllocator, NodeLocation};
pub use tree::{BtreeConfig, Btrees, LostNode, NodeInfo, READ_AROUND, Root};

#[cfg(test)]
mod tests;
