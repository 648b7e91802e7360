//! Recovery passes: the table of what mount and fsck run, in order, with stable ids.
//!
//! The declaration order below is the order passes run in; the number is the persistent id
//! (bcachefs's `init/passes_format.h` numbering) used wherever a pass is recorded, e.g. "passes
//! to run on next mount". Passes may be reordered; an id is never reused or renumbered.

use bitflags::bitflags;

bitflags! {
    /// When a pass runs.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PassFlags: u8 {
        /// Logs nothing when it runs.
        const SILENT = 1 << 0;
        /// Runs when fsck is requested.
        const FSCK = 1 << 1;
        /// Runs after an unclean shutdown.
        const UNCLEAN = 1 << 2;
        /// Runs on every mount.
        const ALWAYS = 1 << 3;
        /// May run on a mounted filesystem.
        const ONLINE = 1 << 4;
        /// Needs the allocator's in-memory state.
        const ALLOC = 1 << 5;
    }
}

macro_rules! passes {
    ($( $variant:ident = $id:literal, $name:literal, $flags:expr; )*) => {
        /// A recovery pass; variants are declared in run order.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum RecoveryPass { $( $variant, )* }

        impl RecoveryPass {
            /// Every pass, in run order.
            pub const ALL: &'static [RecoveryPass] = &[$( RecoveryPass::$variant, )*];

            /// The persistent id.
            pub const fn id(self) -> u8 {
                match self { $( RecoveryPass::$variant => $id, )* }
            }

            pub const fn name(self) -> &'static str {
                match self { $( RecoveryPass::$variant => $name, )* }
            }

            pub const fn flags(self) -> PassFlags {
                match self { $( RecoveryPass::$variant => $flags, )* }
            }

            pub const fn from_id(id: u8) -> Option<RecoveryPass> {
                match id { $( $id => Some(RecoveryPass::$variant), )* _ => None }
            }

            pub fn from_name(name: &str) -> Option<RecoveryPass> {
                match name { $( $name => Some(RecoveryPass::$variant), )* _ => None }
            }
        }
    };
}

const ALWAYS: PassFlags = PassFlags::ALWAYS;
const ALWAYS_SILENT: PassFlags = PassFlags::ALWAYS.union(PassFlags::SILENT);
const ALWAYS_SILENT_ALLOC: PassFlags = ALWAYS_SILENT.union(PassFlags::ALLOC);
const FSCK: PassFlags = PassFlags::FSCK;
const FSCK_ALLOC: PassFlags = PassFlags::FSCK.union(PassFlags::ALLOC);
const ONLINE_FSCK_ALLOC: PassFlags = FSCK_ALLOC.union(PassFlags::ONLINE);
const ONLINE_FSCK: PassFlags = PassFlags::FSCK.union(PassFlags::ONLINE);
const NONE: PassFlags = PassFlags::empty();

passes! {
    CheckTopology = 4, "check_topology", NONE;
    AllocRead = 0, "alloc_read", ALWAYS;
    CheckAllocations = 5, "check_allocations", FSCK_ALLOC;
    TransMarkDevSbs = 6, "trans_mark_dev_sbs", ALWAYS_SILENT_ALLOC;
    FsJournalAlloc = 7, "fs_journal_alloc", ALWAYS_SILENT_ALLOC;
    SetMayGoRw = 8, "set_may_go_rw", ALWAYS_SILENT;
    JournalReplay = 9, "journal_replay", ALWAYS;
    CheckAllocInfo = 10, "check_alloc_info", ONLINE_FSCK_ALLOC;
    FsFreespaceInit = 16, "fs_freespace_init", ALWAYS_SILENT;
    CheckInodes = 24, "check_inodes", FSCK;
    CheckExtents = 25, "check_extents", FSCK;
    CheckDirents = 27, "check_dirents", FSCK;
    CheckRoot = 29, "check_root", ONLINE_FSCK;
    CheckDirectoryStructure = 30, "check_directory_structure", ONLINE_FSCK;
    CheckNlinks = 31, "check_nlinks", FSCK;
}

/// Ids that once named a pass and must not be given to a new one.
pub const RETIRED_IDS: &[u8] = &[];

/// The smallest id no pass has ever had in bcachefs's table: the first free number for a pass
/// bcsim adds of its own.
pub const NEXT_ID: u8 = 49;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Ids and names are unique and map back; retired ids stay unused.
    #[test]
    fn table_rules_hold() {
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for &p in RecoveryPass::ALL {
            assert!(ids.insert(p.id()), "id {} used twice", p.id());
            assert!(names.insert(p.name()), "name {} used twice", p.name());
            assert!(p.id() < NEXT_ID);
            assert!(!RETIRED_IDS.contains(&p.id()));
            assert_eq!(RecoveryPass::from_id(p.id()), Some(p));
            assert_eq!(RecoveryPass::from_name(p.name()), Some(p));
        }
    }

    /// Run order as mount depends on it: allocations are checked before going read-write, and
    /// journal replay runs only after that.
    #[test]
    fn run_order() {
        let at = |p| RecoveryPass::ALL.iter().position(|&q| q == p).unwrap_or(usize::MAX);
        assert!(at(RecoveryPass::CheckTopology) < at(RecoveryPass::AllocRead));
        assert!(at(RecoveryPass::AllocRead) < at(RecoveryPass::CheckAllocations));
        assert!(at(RecoveryPass::CheckAllocations) < at(RecoveryPass::SetMayGoRw));
        assert!(at(RecoveryPass::SetMayGoRw) < at(RecoveryPass::JournalReplay));
        assert!(at(RecoveryPass::JournalReplay) < at(RecoveryPass::CheckAllocInfo));
        assert_eq!(RecoveryPass::JournalReplay.id(), 9);
        assert_eq!(RecoveryPass::AllocRead.id(), 0);
    }
}
