//! bcsim: the assembled filesystem model and what the `bcsim` command line calls.
//!
//! The command line (`src/main.rs`, `src/cli/`) parses arguments, calls into this library and
//! prints; everything that decides or touches an image lives here, so tests and benchmarks call
//! the same code.
//!
//! - [`fs`]: a mounted filesystem — its shared parts, transactions, write-back, journal reclaim.
//! - [`recovery`]: mount, from the superblock and the journal to the recovery passes.
//! - [`passes`]: the recovery pass table's passes and the one runner mount and fsck share.
//! - [`fsck`]: fsck modes and the report.
//! - [`files`]: a small file layer over transactions; [`workload`]: seeded workloads on it.
//! - [`images`]: image files; [`report`]: superblock and key reports; [`list_journal`]: journal
//!   listings.

pub mod control;
pub mod crash_states;
pub mod device;
pub mod dump;
pub mod files;
pub mod fs;
pub mod fsck;
pub mod images;
pub mod list_journal;
pub mod passes;
pub mod recovery;
pub mod report;
pub mod repro;
pub mod sim;
pub mod workload;

use fs_core::error::{Error, ExitClass};

/// fsck(8) exit codes, which every bcsim command uses.
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERRORS_CORRECTED: u8 = 1;
    pub const ERRORS_UNCORRECTED: u8 = 4;
    pub const OPERATIONAL: u8 = 8;
    pub const USAGE: u8 = 16;
}

/// The exit code an error ends a command with: 16 for a usage error, 8 otherwise.
pub fn exit_code(err: &Error) -> u8 {
    match err.code().exit_class() {
        ExitClass::Usage => exit::USAGE,
        ExitClass::Operational => exit::OPERATIONAL,
    }
}
