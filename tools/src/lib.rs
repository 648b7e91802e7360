//! bcsim: the assembled filesystem model and what the `bcsim` command line calls.
//!
//! The command line (`src/main.rs`, `src/cli/`) parses arguments, calls into this library and
//! prints; everything that decides or touches an image lives here so tests and benchmarks call
//! the same code. Today: image files ([`images`]), superblock and key reports ([`report`]), and
//! journal listings ([`list_journal`]).

pub mod files;
pub mod fs;
pub mod fsck;
pub mod images;
pub mod list_journal;
pub mod recovery;
pub mod report;
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
