//! fs-core: the ground floor of bcsim.
//!
//! It owns what every other crate stands on, and must never depend on a higher crate: where it
//! needs a service from one (a node allocator, a journal-key overlay) it defines a trait the
//! higher crate implements.
//!
//! - [`bpos`], [`bkey`]: positions, btree ids, keys and their values.
//! - [`error`]: the typed error tree; [`fsck_err`]: fsck errors with stable ids;
//!   [`recovery_pass`]: the recovery-pass table.
//! - [`opts`]: the option table, option strings, and the live options of a mounted filesystem.
//! - [`health`]: a filesystem's first error and its emergency read-only state.
//! - [`sync`]: the one switch between parking_lot and loom.
//! - [`dev`]: block devices (image files, memory, fault injection); [`sb`]: the superblock;
//!   [`format`](mod@format): laying out a new filesystem; [`encode`]: little-endian encoding helpers.
//! - [`btree`]: btree nodes on disk, the node cache, descent, inserts, splits, write-back.
//! - [`rng`], [`uuid`], [`size`]: a seeded generator, uuids, sizes with units.

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
