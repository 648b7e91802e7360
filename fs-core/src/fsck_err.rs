//! Fsck error ids: a table with stable numbers, bcachefs's `sb/errors_format.h` numbering, and
//! bcsim's own few from [`BCSIM_FIRST_ID`] up.
//!
//! Rules of the table: an id is never reused or renumbered, even when an error is retired (its
//! number goes to [`RETIRED_IDS`]); the superblock persists counts by id, so an id this build
//! does not know is kept as a raw number, not dropped. Later recovery passes add rows here.

use bitflags::bitflags;

bitflags! {
    /// How fsck may treat an error (`enum bch_fsck_flags`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct FsckFlags: u8 {
        const CAN_FIX = 1 << 0;
        const CAN_IGNORE = 1 << 1;
        const NEED_FSCK = 1 << 2;
        const NO_RATELIMIT = 1 << 3;
        /// Fixed without asking, even without `fix_errors`.
        const AUTOFIX = 1 << 4;
    }
}

macro_rules! fsck_errs {
    ($( $variant:ident = $id:literal, $name:literal, $flags:expr; )*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u16)]
        pub enum FsckErr { $( $variant = $id, )* }

        impl FsckErr {
            pub const ALL: &'static [FsckErr] = &[$( FsckErr::$variant, )*];

            pub const fn id(self) -> u16 {
                self as u16
            }

            pub const fn name(self) -> &'static str {
                match self { $( FsckErr::$variant => $name, )* }
            }

            pub const fn flags(self) -> FsckFlags {
                match self { $( FsckErr::$variant => $flags, )* }
            }

            pub const fn from_id(id: u16) -> Option<FsckErr> {
                match id { $( $id => Some(FsckErr::$variant), )* _ => None }
            }

            pub fn from_name(name: &str) -> Option<FsckErr> {
                match name { $( $name => Some(FsckErr::$variant), )* _ => None }
            }
        }
    };
}

const NONE: FsckFlags = FsckFlags::empty();
// The flags are v1.37.5's (`sb/errors_format.h`). v1.39.2 differs in one row of this table:
// it also makes `bset_bad_csum` FSCK_AUTOFIX.
const AUTOFIX: FsckFlags = FsckFlags::AUTOFIX;

fsck_errs! {
    CleanButJournalNotEmpty = 0, "clean_but_journal_not_empty", NONE;
    DirtyButNoJournalEntries = 1, "dirty_but_no_journal_entries", NONE;
    SbCleanJournalSeqMismatch = 3, "sb_clean_journal_seq_mismatch", NONE;
    SbCleanBtreeRootMismatch = 4, "sb_clean_btree_root_mismatch", NONE;
    JsetLastSeqNewerThanSeq = 8, "jset_last_seq_newer_than_seq", NONE;
    JsetPastBucketEnd = 9, "jset_past_bucket_end", NONE;
    JsetSeqBlacklisted = 10, "jset_seq_blacklisted", NONE;
    JournalEntriesMissing = 11, "journal_entries_missing", NONE;
    JournalEntryPastJsetEnd = 13, "journal_entry_past_jset_end", NONE;
    JournalEntryReplicasDataMismatch = 14, "journal_entry_replicas_data_mismatch", NONE;
    JournalEntryBkeyInvalid = 18, "journal_entry_bkey_invalid", NONE;
    BtreeNodeUnreadable = 30, "btree_node_unreadable", NONE;
    BtreeNodeBadMagic = 32, "btree_node_bad_magic", NONE;
    BtreeNodeBadSeq = 33, "btree_node_bad_seq", NONE;
    BtreeNodeUnsupportedVersion = 34, "btree_node_unsupported_version", NONE;
    BtreeNodeDataMissing = 37, "btree_node_data_missing", AUTOFIX;
    BtreeNodeReplicasDataMismatch = 40, "btree_node_replicas_data_mismatch", NONE;
    BsetBadCsum = 42, "bset_bad_csum", NONE;
    BsetBlacklistedJournalSeq = 47, "bset_blacklisted_journal_seq", AUTOFIX;
    BtreeNodeBadBtree = 49, "btree_node_bad_btree", NONE;
    BtreeNodeBadLevel = 50, "btree_node_bad_level", NONE;
    BtreeNodeBadMinKey = 51, "btree_node_bad_min_key", NONE;
    BtreeNodeBadMaxKey = 52, "btree_node_bad_max_key", NONE;
    BtreeNodeBkeyOutOfOrder = 57, "btree_node_bkey_out_of_order", AUTOFIX;
    BtreeRootReadError = 59, "btree_root_read_error", AUTOFIX;
    BtreeNodeReadError = 62, "btree_node_read_error", AUTOFIX;
    BtreeNodeTopologyBadMinKey = 63, "btree_node_topology_bad_min_key", AUTOFIX;
    BtreeNodeTopologyBadMaxKey = 64, "btree_node_topology_bad_max_key", AUTOFIX;
    AllocKeyDataTypeWrong = 106, "alloc_key_data_type_wrong", AUTOFIX;
    AllocKeyGenWrong = 107, "alloc_key_gen_wrong", AUTOFIX;
    AllocKeyDirtySectorsWrong = 108, "alloc_key_dirty_sectors_wrong", AUTOFIX;
    NeedDiscardKeyWrong = 114, "need_discard_key_wrong", AUTOFIX;
    FreespaceKeyWrong = 115, "freespace_key_wrong", AUTOFIX;
    PtrToMissingAllocKey = 148, "ptr_to_missing_alloc_key", AUTOFIX;
    PtrGenNewerThanBucketGen = 152, "ptr_gen_newer_than_bucket_gen", AUTOFIX;
    PtrBucketDataTypeMismatch = 155, "ptr_bucket_data_type_mismatch", NONE;
    InodeWrongNlink = 209, "inode_wrong_nlink", AUTOFIX;
    InodeUnreachable = 210, "inode_unreachable", AUTOFIX;
    DirentToMissingInode = 229, "dirent_to_missing_inode", AUTOFIX;
    JournalEntryDupSameDevice = 246, "journal_entry_dup_same_device", NONE;
    JournalBucketSeqNotMonotonic = 358, "journal_bucket_seq_not_monotonic", NONE;
    // bcsim's own errors, for damage bcachefs repairs without reporting it. sb_copy_damaged: a
    // superblock copy that does not read back (bcachefs rewrites every copy on its next
    // superblock write, silently).
    SbCopyDamaged = 4096, "sb_copy_damaged", AUTOFIX;
    // journal_bucket_hole: empty blocks inside a journal bucket with good entries after them
    // (bcachefs ends the bucket there and loses those entries).
    JournalBucketHole = 4097, "journal_bucket_hole", AUTOFIX;
    // bset_newer_than_journal: a btree node bset whose journal seq is past the newest journal
    // entry found (bcsim writes nodes only after their entries are durable: entries were lost).
    BsetNewerThanJournal = 4098, "bset_newer_than_journal", NONE;
    // replicas_written_short: metadata with fewer replicas than metadata_replicas asks for (a
    // degraded mount wrote it, and counts this error in the superblock when it does).
    ReplicasWrittenShort = 4099, "replicas_written_short", AUTOFIX;
    // journal_entry_copy_bad: a copy of a journal entry to replay that is bad or lost (bcachefs
    // logs a bad journal checksum without an fsck error, and does not count lost copies).
    JournalEntryCopyBad = 4100, "journal_entry_copy_bad", AUTOFIX;
    // emergency_read_only: the filesystem went emergency read-only; the unmount that found it
    // so counts it in the superblock (nothing else is written), and the log says what stopped it.
    EmergencyReadOnly = 4101, "emergency_read_only", NONE;
}

/// Ids that once named an error and must not be given to a new one.
pub const RETIRED_IDS: &[u16] = &[];

/// One past the highest id in use: a new error bcachefs also has takes its bcachefs number,
/// which is at least this one.
pub const NEXT_ID: u16 = 359;

/// bcsim's own errors (with no bcachefs counterpart) are numbered from here, far above
/// bcachefs's numbering, so that a future bcachefs id never collides with one.
pub const BCSIM_FIRST_ID: u16 = 4096;

/// One past the highest of bcsim's own ids: the next one takes this number.
pub const BCSIM_NEXT_ID: u16 = 4102;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Ids and names are unique, ids never reach the next free id, retired ids stay unused, and
    /// every id and name maps back to its row.
    #[test]
    fn table_rules_hold() {
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for &e in FsckErr::ALL {
            assert!(ids.insert(e.id()), "id {} used twice", e.id());
            assert!(names.insert(e.name()), "name {} used twice", e.name());
            let in_range = e.id() < NEXT_ID || (BCSIM_FIRST_ID..BCSIM_NEXT_ID).contains(&e.id());
            assert!(in_range, "{} id {} outside the bcachefs and bcsim ranges", e.name(), e.id());
            assert!(!RETIRED_IDS.contains(&e.id()), "{} reuses a retired id", e.name());
            assert_eq!(FsckErr::from_id(e.id()), Some(e));
            assert_eq!(FsckErr::from_name(e.name()), Some(e));
        }
    }

    /// The numbers bcachefs gives these errors: persisted counts depend on them.
    #[test]
    fn ids_match_bcachefs() {
        assert_eq!(FsckErr::JournalEntriesMissing.id(), 11);
        assert_eq!(FsckErr::BtreeNodeBadBtree.id(), 49);
        assert_eq!(FsckErr::BtreeNodeBadMaxKey.id(), 52);
        assert_eq!(FsckErr::NeedDiscardKeyWrong.id(), 114);
        assert_eq!(FsckErr::FreespaceKeyWrong.id(), 115);
        assert_eq!(FsckErr::JournalBucketSeqNotMonotonic.id(), 358);
        assert!(FsckErr::PtrToMissingAllocKey.flags().contains(FsckFlags::AUTOFIX));
    }

    /// The errors a mount under the default `errors=fix_safe` repairs by itself are the ones
    /// bcachefs marks FSCK_AUTOFIX: read from v1.37.5's table, row by row.
    #[test]
    fn autofix_flags_match_bcachefs() {
        let autofix: Vec<&str> = FsckErr::ALL
            .iter()
            .filter(|e| e.id() < BCSIM_FIRST_ID && e.flags().contains(FsckFlags::AUTOFIX))
            .map(|e| e.name())
            .collect();
        assert_eq!(
            autofix,
            [
                "btree_node_data_missing",
                "bset_blacklisted_journal_seq",
                "btree_node_bkey_out_of_order",
                "btree_root_read_error",
                "btree_node_read_error",
                "btree_node_topology_bad_min_key",
                "btree_node_topology_bad_max_key",
                "alloc_key_data_type_wrong",
                "alloc_key_gen_wrong",
                "alloc_key_dirty_sectors_wrong",
                "need_discard_key_wrong",
                "freespace_key_wrong",
                "ptr_to_missing_alloc_key",
                "ptr_gen_newer_than_bucket_gen",
                "inode_wrong_nlink",
                "inode_unreachable",
                "dirent_to_missing_inode",
            ]
        );
    }
}
