//! Typed errors: an error-code tree mirroring bcachefs's `errcode.h`, and an error value that
//! carries its code, where it happened and what caused it.
//!
//! Every code has at most one parent; [`ErrCode::matches`] walks up the parents the way
//! `bch2_err_matches()` does, so callers test for a class (`OperationBlocked`: wait and retry;
//! `TransactionRestart`: retry from the top; `Erofs`: stop writing) rather than for a leaf.

use std::error::Error as StdError;
use std::fmt;

use crate::bpos::{Bpos, BtreeId};

macro_rules! errcodes {
    ($( $variant:ident = $name:literal, $parent:ident, $doc:literal; )*) => {
        /// An error code. Roots have `Root` as parent; see the module docs for the tree.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrCode {
            /// Not an error: the parent of every root, never carried by an error value.
            Root,
            $( #[doc = $doc] $variant, )*
        }

        impl ErrCode {
            pub const ALL: &'static [ErrCode] = &[$( ErrCode::$variant, )*];

            /// bcachefs's name for the code (`bch2_err_str`).
            pub const fn name(self) -> &'static str {
                match self {
                    ErrCode::Root => "root",
                    $( ErrCode::$variant => $name, )*
                }
            }

            /// The class this code belongs to, or `None` for a root.
            pub const fn parent(self) -> Option<ErrCode> {
                let parent = match self {
                    ErrCode::Root => return None,
                    $( ErrCode::$variant => ErrCode::$parent, )*
                };
                match parent {
                    ErrCode::Root => None,
                    p => Some(p),
                }
            }

            /// The code bcachefs calls `name`, if bcsim has it.
            pub fn from_name(name: &str) -> Option<ErrCode> {
                ErrCode::ALL.iter().copied().find(|c| c.name() == name)
            }

            /// What the code means, in a sentence.
            pub const fn describe(self) -> &'static str {
                match self {
                    ErrCode::Root => "",
                    $( ErrCode::$variant => $doc, )*
                }
            }
        }
    };
}

errcodes! {
    // errno-like roots
    Eio = "EIO", Root, "input/output error: a device failed or stored data is corrupt";
    Erofs = "EROFS", Root, "the filesystem is read-only";
    Enospc = "ENOSPC", Root, "no space left";
    Eagain = "EAGAIN", Root, "resource temporarily unavailable";
    Einval = "EINVAL", Root, "invalid argument";
    Enoent = "ENOENT", Root, "no such file or device";
    Eexist = "EEXIST", Root, "already exists";
    Eisdir = "EISDIR", Root, "is a directory";

    // operation_blocked: wait, then retry
    OperationBlocked = "operation_blocked", Root, "blocked: wait for the resource, then retry";
    BucketAllocBlocked = "bucket_alloc_blocked", OperationBlocked, "no bucket free now; waiting on the allocator";
    OpenBucketAllocBlocked = "open_bucket_alloc_blocked", OperationBlocked, "no open bucket free now; waiting on the allocator";
    BtreeCacheCannibalizeLockBlocked = "btree_cache_cannibalize_lock_blocked", OperationBlocked, "btree node cache full and another thread is reclaiming it";
    JournalResBlocked = "journal_res_blocked", OperationBlocked, "journal reservation must wait";
    JournalFull = "journal_full", JournalResBlocked, "journal full: reclaim must free journal buckets";
    JournalStuck = "journal_stuck", JournalResBlocked, "journal stuck: reclaim cannot make progress";

    FreelistEmpty = "freelist_empty", Eagain, "no free bucket on the device";
    NoBucketsFound = "no_buckets_found", FreelistEmpty, "no free bucket found on any allowed device";
    BucketAllocNoProgress = "bucket_alloc_no_progress", FreelistEmpty, "allocation made no progress";
    OpenBucketsEmpty = "open_buckets_empty", Eagain, "no open bucket structures left";

    // transaction_restart: retry the transaction from the top
    TransactionRestart = "transaction_restart", Root, "transaction must restart from the top";
    RestartFaultInject = "transaction_restart_fault_inject", TransactionRestart, "injected restart";
    RestartRelock = "transaction_restart_relock", TransactionRestart, "relock failed";
    RestartRelockPath = "transaction_restart_relock_path", TransactionRestart, "relocking a path failed";
    RestartRelockPathIntent = "transaction_restart_relock_path_intent", TransactionRestart, "relocking a path for intent failed";
    RestartRelockAfterFill = "transaction_restart_relock_after_fill", TransactionRestart, "relock after node fill failed";
    RestartTooManyIters = "transaction_restart_too_many_iters", TransactionRestart, "too many iterators";
    RestartLockNodeReused = "transaction_restart_lock_node_reused", TransactionRestart, "locked node was reused";
    RestartFillRelock = "transaction_restart_fill_relock", TransactionRestart, "relock during node fill failed";
    RestartFillMemAllocFail = "transaction_restart_fill_mem_alloc_fail", TransactionRestart, "memory for node fill unavailable";
    RestartMemRealloced = "transaction_restart_mem_realloced", TransactionRestart, "transaction memory reallocated";
    RestartInTraverseAll = "transaction_restart_in_traverse_all", TransactionRestart, "restart while traversing all paths";
    RestartWouldDeadlock = "transaction_restart_would_deadlock", TransactionRestart, "lock would deadlock";
    RestartWouldDeadlockWrite = "transaction_restart_would_deadlock_write", TransactionRestart, "write lock would deadlock";
    RestartDeadlockRecursionLimit = "transaction_restart_deadlock_recursion_limit", TransactionRestart, "deadlock cycle detector hit its limit";
    RestartUpgrade = "transaction_restart_upgrade", TransactionRestart, "lock upgrade failed";
    RestartKeyCacheUpgrade = "transaction_restart_key_cache_upgrade", TransactionRestart, "key cache lock upgrade failed";
    RestartKeyCacheFill = "transaction_restart_key_cache_fill", TransactionRestart, "key cache entry filled meanwhile";
    RestartKeyCacheRaced = "transaction_restart_key_cache_raced", TransactionRestart, "key cache entry changed meanwhile";
    RestartKeyCacheRealloced = "transaction_restart_key_cache_realloced", TransactionRestart, "key cache entry reallocated";
    RestartJournalPreresGet = "transaction_restart_journal_preres_get", TransactionRestart, "journal pre-reservation must be retaken";
    RestartSplitRace = "transaction_restart_split_race", TransactionRestart, "node split raced with another update";
    RestartWriteBufferFlush = "transaction_restart_write_buffer_flush", TransactionRestart, "write buffer flushed meanwhile";
    RestartNested = "transaction_restart_nested", TransactionRestart, "nested transaction restarted";
    RestartCommit = "transaction_restart_commit", TransactionRestart, "commit must restart";
    RestartJournalOverwritesChanged = "transaction_restart_journal_overwrites_changed", TransactionRestart, "journal keys the commit overwrites changed meanwhile";

    JournalReclaimWouldDeadlock = "journal_reclaim_would_deadlock", Root, "journal reclaim would wait on itself";

    // A BUG_ON of the modelled kernel version (profiles v1.37.5 and v1.39): the filesystem stops dead.
    ControlSocket = "control_socket", Root, "the control socket of a running mount could not be served or reached";
    FsAlreadyMounted = "fs_already_mounted", Root, "the filesystem is already mounted: its control socket answers";
    KernelBug = "kernel_bug", Root, "simulated kernel BUG: the filesystem stopped dead";

    // EROFS
    InsufficientDevices = "insufficient_devices", Erofs, "not enough devices to satisfy the request or to mount";
    EmergencyRo = "emergency_ro", Erofs, "the filesystem went emergency read-only after a fatal error";
    JournalShutdown = "journal_shutdown", Erofs, "the journal is shut down";

    // Not bcachefs's: bcsim's own invariant checks. A failure here is a bug, never bad input.
    Internal = "internal_error", Eio, "an internal invariant of bcsim failed (a bug: please report it)";
    TransactionTooBig = "transaction_too_big", Root, "a transaction larger than one journal entry: its caller must split it (nothing was changed)";
    // EIO: devices
    IoRead = "io_read_error", Eio, "device read failed";
    IoWrite = "io_write_error", Eio, "device write failed";
    IoFlush = "io_flush_error", Eio, "device flush failed";
    DeviceTruncated = "device_truncated", Eio, "the device is shorter than its superblock says";
    // EIO: superblock
    InvalidSb = "invalid_sb", Eio, "superblock invalid";
    InvalidSbMagic = "invalid_sb_magic", InvalidSb, "not a bcsim superblock";
    InvalidSbCsum = "invalid_sb_csum", InvalidSb, "superblock checksum mismatch";
    InvalidSbVersion = "invalid_sb_version", InvalidSb, "unsupported superblock version";
    InvalidSbLayout = "invalid_sb_layout", InvalidSb, "superblock size or layout invalid";
    InvalidSbMembers = "invalid_sb_members", InvalidSb, "superblock member table invalid";
    InvalidSbField = "invalid_sb_field", InvalidSb, "superblock field invalid";
    InvalidSbOptions = "invalid_sb_options", InvalidSb, "superblock option invalid";
    InvalidSbJournal = "invalid_sb_journal", InvalidSb, "superblock journal bucket list invalid";
    InvalidSbClean = "invalid_sb_clean", InvalidSb, "superblock clean section invalid";
    InvalidDump = "invalid_dump", Eio, "not a bcsim dump, or a damaged one";
    NoValidSuperblock = "no_valid_superblock", Eio, "no superblock copy on the device is valid";
    // EIO: btree
    BtreeNeedTopologyRepair = "btree_need_topology_repair", Eio, "btree topology is damaged: run fsck (check_topology)";
    BtreeNodeReadErr = "btree_node_read_err", Eio, "btree node read failed validation";
    BtreeNodeBadMagic = "btree_node_bad_magic", BtreeNodeReadErr, "btree node magic wrong";
    BtreeNodeUnsupportedVersion = "btree_node_unsupported_version", BtreeNodeReadErr, "btree node written in a format version this bcsim does not read";
    BtreeNodeBadSeq = "btree_node_bad_seq", BtreeNodeReadErr, "got wrong btree node (seq mismatch)";
    BtreeNodeBadBtree = "btree_node_bad_btree", BtreeNodeReadErr, "btree node belongs to another btree";
    BtreeNodeBadLevel = "btree_node_bad_level", BtreeNodeReadErr, "btree node level wrong";
    BtreeNodeBadMinKey = "btree_node_bad_min_key", BtreeNodeReadErr, "btree node min_key wrong";
    BtreeNodeBadMaxKey = "btree_node_bad_max_key", BtreeNodeReadErr, "btree node max_key wrong";
    BtreeNodeReadErrCached = "btree_node_read_err_cached", BtreeNodeReadErr, "a read of this btree node failed before and is cached as failed";
    BtreeNodeDataMissing = "btree_node_data_missing", BtreeNodeReadErr, "btree node has less data than its pointer says";
    BsetBadCsum = "bset_bad_csum", BtreeNodeReadErr, "bset checksum mismatch";
    BtreeKeyCacheCoherency = "btree_key_cache_coherency", Eio, "a dirty key cache entry has no live key in the btree (key cache coherency violated)";
    // EIO: journal
    JournalReadErr = "journal_read_err", Eio, "journal could not be read";
    JournalEntriesMissing = "journal_entries_missing", JournalReadErr, "journal entries missing";

    // ENOSPC
    EnospcDiskReservation = "ENOSPC_disk_reservation", Enospc, "disk reservation failed";
    EnospcBucketAlloc = "ENOSPC_bucket_alloc", Enospc, "bucket allocation failed for lack of space";
    EnospcSb = "ENOSPC_sb", Enospc, "superblock does not fit its reserved area";
    EnospcBtreeDepth = "ENOSPC_btree_depth", Enospc, "the btree would grow deeper than its maximum depth";
    DeviceTooSmall = "device_too_small", Enospc, "device too small to hold a filesystem";

    // EINVAL: the command line or option string is wrong (usage errors)
    InvalidOption = "invalid_option", Einval, "invalid option";
    OptionUnknown = "option_unknown", InvalidOption, "unknown option";
    OptionValueInvalid = "option_value_invalid", InvalidOption, "option value invalid";
    OptionNotSettable = "option_not_settable", InvalidOption, "option cannot be set here";
    OptionNotModelled = "option_not_modelled", InvalidOption, "bcsim does not model what this option controls";
    InvalidArgument = "invalid_argument", Einval, "invalid argument";
    ControlRequestInvalid = "control_request_invalid", InvalidArgument, "a control socket request was malformed, too long or too slow";

    // Device sets: the images given do not form one filesystem
    DeviceSetInvalid = "device_set_invalid", Root, "the devices given do not form one filesystem";
    FsUuidMismatch = "fs_uuid_mismatch", DeviceSetInvalid, "devices belong to different filesystems";
    DeviceDuplicate = "device_duplicate", DeviceSetInvalid, "the same member was given twice";
    DeviceMissing = "device_missing", DeviceSetInvalid, "a member device was not given";

    FsExists = "fs_exists", Eexist, "the device already holds a bcsim filesystem";

    // fsck
    Fsck = "fsck", Root, "fsck found an error";
    FsckFix = "fsck_fix", Fsck, "fsck fixed the error";
    FsckIgnore = "fsck_ignore", Fsck, "fsck ignored the error";
    FsckErrorsNotFixed = "fsck_errors_not_fixed", Fsck, "fsck left errors unfixed";
    FsckRepairUnimplemented = "fsck_repair_unimplemented", Fsck, "fsck cannot repair this yet";
    FsckRepairImpossible = "fsck_repair_impossible", Fsck, "the error cannot be repaired";
    BucketAccounting = "bucket_accounting", Fsck, "bucket state or sector accounting inconsistent (alloc keys disagree with their users)";
}

/// How a command-line tool reports an error class, as fsck(8) exit codes do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitClass {
    /// The command line or an option value was wrong: fsck(8) exit 16.
    Usage,
    /// Everything else that stops the command: fsck(8) exit 8.
    Operational,
}

impl ErrCode {
    /// True if `self` is `class` or descends from it (`bch2_err_matches`).
    pub fn matches(self, class: ErrCode) -> bool {
        let mut code = Some(self);
        // The tree is at most a few levels deep; the bound guards against a cycle slipping in.
        for _ in 0..16 {
            match code {
                Some(c) if c == class => return true,
                Some(c) => code = c.parent(),
                None => return false,
            }
        }
        false
    }

    pub fn exit_class(self) -> ExitClass {
        if self.matches(ErrCode::Einval) { ExitClass::Usage } else { ExitClass::Operational }
    }
}

impl fmt::Display for ErrCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where an error happened. Every field is optional; the ones that apply are filled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// The image file or device path.
    pub path: Option<String>,
    pub btree: Option<BtreeId>,
    pub level: Option<u8>,
    pub pos: Option<Bpos>,
    /// A member device index, as everywhere else (`u8`: at most 256 members).
    pub dev: Option<u8>,
    pub bucket: Option<u64>,
    pub journal_seq: Option<u64>,
    /// Byte offset on the device.
    pub offset: Option<u64>,
    /// A checksum mismatch: what the data hashes to, and what was stored beside it.
    pub csum: Option<CsumMismatch>,
}

/// The two sides of a failed checksum check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsumMismatch {
    pub got: u32,
    pub expected: u32,
}

impl Context {
    fn is_empty(&self) -> bool {
        self.btree.is_none()
            && self.level.is_none()
            && self.pos.is_none()
            && self.dev.is_none()
            && self.bucket.is_none()
            && self.journal_seq.is_none()
            && self.offset.is_none()
            && self.csum.is_none()
    }
}

impl fmt::Display for Context {
    /// `btree=alloc level=0 pos=1:2:0 dev=3 bucket=17 seq=42 offset=4096`, fields that apply only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        let mut field = |f: &mut fmt::Formatter<'_>, name: &str, v: &dyn fmt::Display| {
            let r = write!(f, "{sep}{name}={v}");
            sep = " ";
            r
        };
        if let Some(v) = &self.btree {
            field(f, "btree", v)?;
        }
        if let Some(v) = &self.level {
            field(f, "level", v)?;
        }
        if let Some(v) = &self.pos {
            field(f, "pos", v)?;
        }
        if let Some(v) = &self.dev {
            field(f, "dev", v)?;
        }
        if let Some(v) = &self.bucket {
            field(f, "bucket", v)?;
        }
        if let Some(v) = &self.journal_seq {
            field(f, "seq", v)?;
        }
        if let Some(v) = &self.offset {
            field(f, "offset", v)?;
        }
        if let Some(c) = &self.csum {
            field(f, "csum got", &format_args!("{:#010x} expected={:#010x}", c.got, c.expected))?;
        }
        Ok(())
    }
}

type Source = Box<dyn StdError + Send + Sync + 'static>;

/// An error value: code, a message a user can act on, context, and an optional cause.
///
/// Boxed so that `Result<T>` stays one pointer wide on hot paths.
pub struct Error(Box<Inner>);

struct Inner {
    code: ErrCode,
    msg: String,
    ctx: Context,
    source: Option<Source>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrCode, msg: impl Into<String>) -> Self {
        Error(Box::new(Inner { code, msg: msg.into(), ctx: Context::default(), source: None }))
    }

    /// An error whose message is the code's own description.
    pub fn code_only(code: ErrCode) -> Self {
        Error::new(code, code.describe())
    }

    pub fn code(&self) -> ErrCode {
        self.0.code
    }

    pub fn message(&self) -> &str {
        &self.0.msg
    }

    pub fn context(&self) -> &Context {
        &self.0.ctx
    }

    /// True if the error's code is `class` or descends from it.
    pub fn matches(&self, class: ErrCode) -> bool {
        self.0.code.matches(class)
    }

    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.0.ctx.path = Some(path.into());
        self
    }

    /// Sets the path only if none is set: an inner layer that knew better keeps its word.
    pub fn or_path(mut self, path: impl Into<String>) -> Self {
        if self.0.ctx.path.is_none() {
            self.0.ctx.path = Some(path.into());
        }
        self
    }

    pub fn btree(mut self, btree: BtreeId) -> Self {
        self.0.ctx.btree = Some(btree);
        self
    }

    pub fn level(mut self, level: u8) -> Self {
        self.0.ctx.level = Some(level);
        self
    }

    pub fn pos(mut self, pos: Bpos) -> Self {
        self.0.ctx.pos = Some(pos);
        self
    }

    pub fn dev(mut self, dev: u8) -> Self {
        self.0.ctx.dev = Some(dev);
        self
    }

    pub fn bucket(mut self, bucket: u64) -> Self {
        self.0.ctx.bucket = Some(bucket);
        self
    }

    pub fn journal_seq(mut self, seq: u64) -> Self {
        self.0.ctx.journal_seq = Some(seq);
        self
    }

    pub fn offset(mut self, offset: u64) -> Self {
        self.0.ctx.offset = Some(offset);
        self
    }

    /// Records a checksum mismatch: `got` is what the data hashes to, `expected` what was stored.
    pub fn csum(mut self, got: u32, expected: u32) -> Self {
        self.0.ctx.csum = Some(CsumMismatch { got, expected });
        self
    }

    /// An internal invariant failed: a bug in bcsim, never the images' or the user's fault.
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::new(ErrCode::Internal, msg)
    }

    pub fn source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.0.source = Some(Box::new(source));
        self
    }

    /// Prefixes the message, keeping code, context and cause: `"reading journal: " + msg`.
    pub fn prefix(mut self, what: impl fmt::Display) -> Self {
        self.0.msg = format!("{what}: {}", self.0.msg);
        self
    }
}

impl fmt::Display for Error {
    /// One line: `path: message (context): cause [code]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.0;
        if let Some(path) = &inner.ctx.path {
            write!(f, "{path}: ")?;
        }
        f.write_str(&inner.msg)?;
        if !inner.ctx.is_empty() {
            write!(f, " ({})", inner.ctx)?;
        }
        if let Some(source) = &inner.source {
            write!(f, ": {source}")?;
        }
        write!(f, " [{}]", inner.code)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source.as_deref().map(|s| s as &(dyn StdError + 'static))
    }
}

impl From<ErrCode> for Error {
    fn from(code: ErrCode) -> Self {
        Error::code_only(code)
    }
}

/// Maps an OS error to the closest code: missing file, a directory, else the given I/O class.
pub fn io_error(err: std::io::Error, io_class: ErrCode, what: impl Into<String>) -> Error {
    let code = match err.kind() {
        std::io::ErrorKind::NotFound => ErrCode::Enoent,
        std::io::ErrorKind::IsADirectory => ErrCode::Eisdir,
        _ => io_class,
    };
    Error::new(code, what).source(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code's parent chain ends at a root within the bound, and names are unique:
    /// a cycle or a duplicate name would make `matches` or error reports lie.
    #[test]
    fn tree_is_a_forest_with_unique_names() {
        let mut names = std::collections::HashSet::new();
        for &code in ErrCode::ALL {
            assert!(names.insert(code.name()), "duplicate name {}", code.name());
            let mut depth = 0;
            let mut c = code;
            while let Some(p) = c.parent() {
                c = p;
                depth += 1;
                assert!(depth < 8, "{code:?} has a parent chain that does not end");
            }
        }
    }

    /// `matches` walks parents and never sideways.
    #[test]
    fn matches_walks_parents() {
        assert!(ErrCode::JournalFull.matches(ErrCode::OperationBlocked));
        assert!(ErrCode::JournalFull.matches(ErrCode::JournalResBlocked));
        assert!(ErrCode::NoBucketsFound.matches(ErrCode::Eagain));
        assert!(!ErrCode::NoBucketsFound.matches(ErrCode::OperationBlocked));
        assert!(ErrCode::RestartSplitRace.matches(ErrCode::TransactionRestart));
        assert!(ErrCode::InsufficientDevices.matches(ErrCode::Erofs));
        assert!(ErrCode::BsetBadCsum.matches(ErrCode::Eio));
        assert!(!ErrCode::JournalReclaimWouldDeadlock.matches(ErrCode::OperationBlocked));
        assert!(!ErrCode::Eio.matches(ErrCode::BsetBadCsum));
        assert!(ErrCode::OptionUnknown.matches(ErrCode::Einval));
    }

    #[test]
    fn exit_classes() {
        assert_eq!(ErrCode::OptionValueInvalid.exit_class(), ExitClass::Usage);
        assert_eq!(ErrCode::InvalidArgument.exit_class(), ExitClass::Usage);
        assert_eq!(ErrCode::InvalidSbCsum.exit_class(), ExitClass::Operational);
        assert_eq!(ErrCode::Enoent.exit_class(), ExitClass::Operational);
        // A bug is an operational failure (exit 8), never the user's usage error (16).
        assert_eq!(ErrCode::Internal.exit_class(), ExitClass::Operational);
        assert_eq!(ErrCode::TransactionTooBig.exit_class(), ExitClass::Operational);
    }

    /// The display is one line naming what, where, why and the code.
    #[test]
    fn display_is_one_actionable_line() {
        let e = Error::new(ErrCode::BtreeNodeBadMaxKey, "btree node header doesn't match ptr")
            .path("img3")
            .btree(BtreeId::Alloc)
            .level(0)
            .dev(3)
            .offset(4096)
            .source(std::io::Error::other("inner"));
        let s = e.to_string();
        assert_eq!(
            s,
            "img3: btree node header doesn't match ptr (btree=alloc level=0 dev=3 offset=4096): \
             inner [btree_node_bad_max_key]"
        );
        assert!(!s.contains('\n'));
        assert!(e.matches(ErrCode::Eio));
    }

    #[test]
    fn io_error_kinds() {
        let nf = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(io_error(nf, ErrCode::IoRead, "open").code(), ErrCode::Enoent);
        let other = std::io::Error::other("x");
        assert_eq!(io_error(other, ErrCode::IoRead, "read").code(), ErrCode::IoRead);
    }
}
