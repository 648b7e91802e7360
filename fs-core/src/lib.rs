//! fs-core: the ground floor of bcsim.
//!
//! It owns what every other crate stands on: key positions and btree ids, the typed error tree,
//! the option table, the sync shim (`parking_lot` or loom), block devices (image files, memory,
//! fault injection), the on-disk encoding helpers and the superblock. The btree lands here too.
//!
//! It must never depend on a higher crate: where it needs a service from one (a node allocator,
//! a journal-key overlay) it defines a trait the higher crate implements.

#[macro_use]
mod ids;

pub mod bkey;
pub mod bpos;
pub mod btree;
pub mod dev;
pub mod encode;
pub mod error;
pub mod format;
pub mod fsck_err;
pub mod health;
pub mod opts;
pub mod recovery_pass;
pub mod rng;
pub mod sb;
pub mod size;
pub mod sync;
pub mod uuid;

pub use bpos::{Bpos, BtreeId};
pub use error::{ErrCode, Error, Result};
