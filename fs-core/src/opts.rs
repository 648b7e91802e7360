//! Options: one table of every option bcsim knows (name, type, range, default, where it may be
//! set, help), the parser for `-o a=b,c` strings, the options value set, and the live handle a
//! mounted filesystem reads and changes at run time.
//!
//! The flags mirror bcachefs's: `FS` options belong to the whole filesystem and persist in the
//! superblock; `FORMAT` ones may be given to `bcsim format`; `MOUNT` ones to mount; `MOUNT_OLD`
//! ones were mount options once and now only change at run time (`metadata_replicas`);
//! `RUNTIME` ones may change on a mounted filesystem (sysfs in bcachefs, `set-option` here);
//! `DEVICE` ones belong to one member device.

use std::fmt;
use std::time::Duration;

use bitflags::bitflags;

use crate::error::{ErrCode, Error, Result};
use crate::size::{format_size, parse_size};
use crate::sync::{Condvar, Mutex};

bitflags! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct OptFlags: u8 {
        const FS = 1 << 0;
        const FORMAT = 1 << 1;
        const MOUNT = 1 << 2;
        const RUNTIME = 1 << 3;
        const MOUNT_OLD = 1 << 4;
        const DEVICE = 1 << 5;
    }
}

/// The type and allowed values of an option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptType {
    Bool,
    /// An integer in `min..=max`.
    U64 {
        min: u64,
        max: u64,
    },
    /// A size in bytes, a power of two in `min..=max`; 0 means "chosen automatically" when
    /// `auto` is set.
    Size {
        min: u64,
        max: u64,
        auto: bool,
    },
    /// One of the listed names; the value is the index.
    Enum(&'static [&'static str]),
    /// A target: a device label or label group (`ssd`, `ssd.nvme0`), or empty for none.
    Target,
    /// A device label such as `ssd.nvme0`, or empty.
    Label,
}

/// An option's value. Bools, integers, sizes and enum indexes are all `U64` on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptValue {
    U64(u64),
    Str(String),
}

impl OptValue {
    pub fn as_u64(&self) -> u64 {
        match self {
            OptValue::U64(v) => *v,
            OptValue::Str(_) => 0,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            OptValue::Str(s) => s,
            OptValue::U64(_) => "",
        }
    }
}

/// A compile-time default, turned into an [`OptValue`] by [`OptId::default_value`].
#[derive(Clone, Copy, Debug)]
enum Default {
    U64(u64),
    Str(&'static str),
}

pub struct OptDesc {
    pub id: OptId,
    pub name: &'static str,
    pub ty: OptType,
    default: Default,
    pub flags: OptFlags,
    pub help: &'static str,
}

macro_rules! options {
    ($( $variant:ident = $num:literal, $name:literal, $ty:expr, $default:expr, $flags:expr, $help:literal; )*) => {
        /// Option ids; the number is what the superblock stores and is never reused. Numbers
        /// are dense and follow table order (checked at compile time below).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u16)]
        pub enum OptId { $( $variant = $num, )* }

        pub const NR_OPTIONS: usize = [$( $num ),*].len();

        const OPTIONS_TABLE: [OptDesc; NR_OPTIONS] = [$(
            OptDesc { id: OptId::$variant, name: $name, ty: $ty, default: $default, flags: $flags, help: $help },
        )*];

        /// The option table, in id order.
        pub static OPTIONS: &[OptDesc] = &OPTIONS_TABLE;

        impl OptId {
            pub const fn from_u16(n: u16) -> Option<OptId> {
                match n { $( $num => Some(OptId::$variant), )* _ => None }
            }
        }
    };
}

/// `errors=` in bcachefs's order (`BCH_ERROR_ACTIONS`), which is also how the superblock
/// stores it: 1, the default, is `fix_safe` in both.
const ERRORS_ACTIONS: &[&str] = &["continue", "fix_safe", "panic", "ro"];
const FIX_ERRORS: &[&str] = &["exit", "yes", "no", "ask"];
/// `degraded=` as of bcachefs v1.39 (a bare `degraded` is `yes`, `nodegraded` is `no`).
const DEGRADED: &[&str] = &["no", "yes", "very", "ask"];
const BEHAVIORS: &[&str] = &["fixed", "v1.37.5", "v1.39"];

const FS_FORMAT_MOUNT_RUNTIME: OptFlags =
    OptFlags::FS.union(OptFlags::FORMAT).union(OptFlags::MOUNT).union(OptFlags::RUNTIME);
const FS_FORMAT_MOUNTOLD_RUNTIME: OptFlags =
    OptFlags::FS.union(OptFlags::FORMAT).union(OptFlags::MOUNT_OLD).union(OptFlags::RUNTIME);
const FS_FORMAT: OptFlags = OptFlags::FS.union(OptFlags::FORMAT);
const DEVICE_FORMAT: OptFlags = OptFlags::DEVICE.union(OptFlags::FORMAT);
const FS_FORMAT_MOUNT: OptFlags = OptFlags::FS.union(OptFlags::FORMAT).union(OptFlags::MOUNT);

options! {
    MetadataReplicas = 0, "metadata_replicas", OptType::U64 { min: 1, max: 4 }, Default::U64(1),
        FS_FORMAT_MOUNTOLD_RUNTIME, "Number of replicas for metadata (journal and btree nodes)";
    DataReplicas = 1, "data_replicas", OptType::U64 { min: 1, max: 4 }, Default::U64(1),
        FS_FORMAT_MOUNT_RUNTIME, "Number of replicas for user data";
    MetadataTarget = 2, "metadata_target", OptType::Target, Default::Str(""),
        FS_FORMAT_MOUNTOLD_RUNTIME, "Device or label group for metadata writes (empty: foreground_target)";
    ForegroundTarget = 3, "foreground_target", OptType::Target, Default::Str(""),
        FS_FORMAT_MOUNT_RUNTIME, "Device or label group for foreground writes (empty: any device)";
    Errors = 4, "errors", OptType::Enum(ERRORS_ACTIONS), Default::U64(1),
        FS_FORMAT_MOUNT_RUNTIME, "Action on a filesystem error: continue; fix_safe (repair what fsck marks safe to repair, else as ro); panic; ro (emergency read-only)";
    Degraded = 5, "degraded", OptType::Enum(DEGRADED), Default::U64(0),
        OptFlags::MOUNT, "Mount with member devices missing: no; yes (every journal entry and btree node still has a replica); very (also without the journal entries that have none); ask (as yes: nobody to ask)";
    Fsck = 6, "fsck", OptType::Bool, Default::U64(0),
        OptFlags::MOUNT, "Run the fsck recovery passes while mounting";
    FixErrors = 7, "fix_errors", OptType::Enum(FIX_ERRORS), Default::U64(0),
        OptFlags::MOUNT, "What fsck does with an error it can fix: exit, yes, no or ask";
    Discard = 8, "discard", OptType::Bool, Default::U64(1),
        FS_FORMAT_MOUNT_RUNTIME, "Discard buckets when they become empty";
    AllocatorStuckTimeout = 9, "allocator_stuck_timeout", OptType::U64 { min: 0, max: 3600 }, Default::U64(30),
        FS_FORMAT_MOUNT_RUNTIME, "Seconds an allocation may wait before a stuck report (0: never report)";
    JournalFlushDelay = 10, "journal_flush_delay", OptType::U64 { min: 1, max: u32::MAX as u64 }, Default::U64(1000),
        FS_FORMAT_MOUNT_RUNTIME, "Milliseconds before an open journal entry is written";
    BtreeNodeSize = 11, "btree_node_size", OptType::Size { min: 4096, max: 1 << 20, auto: false }, Default::U64(256 << 10),
        FS_FORMAT, "Btree node size";
    BlockSize = 12, "block_size", OptType::Size { min: 512, max: 64 << 10, auto: false }, Default::U64(4096),
        FS_FORMAT, "Block size: journal entries are padded to it";
    Behavior = 13, "behavior", OptType::Enum(BEHAVIORS), Default::U64(0),
        FS_FORMAT_MOUNT, "Behaviour profile: fixed (bcsim's fixes), v1.37.5 (the kernel as issues #1107 and #1108 saw it) or v1.39 (upstream as of v1.39.2: key cache fill, BUG_ON and allocator waits as there; its per-device discards are not modelled yet)";
    BucketSize = 14, "bucket_size", OptType::Size { min: 4096, max: 1 << 30, auto: true }, Default::U64(0),
        DEVICE_FORMAT, "Bucket size of a device (0: chosen from the device size)";
    Durability = 15, "durability", OptType::U64 { min: 0, max: 4 }, Default::U64(1),
        DEVICE_FORMAT, "How many replicas a copy on this device counts as";
    Label = 16, "label", OptType::Label, Default::Str(""),
        DEVICE_FORMAT, "Device label, e.g. ssd.nvme0; its groups (ssd, ssd.nvme0) are usable as targets";
    JournalRewindDiscardBufferPercent = 17, "journal_rewind_discard_buffer_percent", OptType::U64 { min: 0, max: 10 }, Default::U64(4),
        FS_FORMAT_MOUNT_RUNTIME, "Percent of capacity whose most recently emptied buckets discards keep back for a journal rewind (per device; filesystem-wide in v1.37.5)";
}

// Row i of the table has id i, so an id indexes the table and `Options::values` directly.
#[expect(clippy::indexing_slicing, reason = "const evaluation: an out-of-range index fails the build")]
const _: () = {
    let mut i = 0;
    while i < NR_OPTIONS {
        assert!(OPTIONS_TABLE[i].id as usize == i, "option ids must be dense and in table order");
        i += 1;
    }
};

impl OptId {
    pub fn desc(self) -> &'static OptDesc {
        #[expect(clippy::indexing_slicing, reason = "ids are dense table indexes, checked at compile time")]
        &OPTIONS_TABLE[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.desc().name
    }

    pub fn from_name(name: &str) -> Option<OptId> {
        OPTIONS.iter().find(|d| d.name == name).map(|d| d.id)
    }

    pub fn default_value(self) -> OptValue {
        match self.desc().default {
            Default::U64(v) => OptValue::U64(v),
            Default::Str(s) => OptValue::Str(s.to_owned()),
        }
    }
}

impl fmt::Display for OptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn value_error(desc: &OptDesc, value: &str, allowed: impl fmt::Display) -> Error {
    Error::new(
        ErrCode::OptionValueInvalid,
        format!("invalid value '{value}' for option {}: expected {allowed}", desc.name),
    )
}

/// Checks a label or target name: dot-separated parts of lowercase letters, digits, `_` and `-`.
fn valid_label(s: &str) -> bool {
    s.len() <= 32
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
        })
}

impl OptDesc {
    /// Parses a value from its text form, checking type and range.
    pub fn parse(&self, text: &str) -> Result<OptValue> {
        match self.ty {
            OptType::Bool => match text {
                "1" | "yes" | "true" | "on" => Ok(OptValue::U64(1)),
                "0" | "no" | "false" | "off" => Ok(OptValue::U64(0)),
                _ => Err(value_error(self, text, "a boolean: 1/0, yes/no, true/false, on/off")),
            },
            OptType::U64 { min, max } => {
                let v: u64 = text
                    .parse()
                    .map_err(|_| value_error(self, text, format_args!("an integer in {min}..={max}")))?;
                self.validate_u64(v)
                    .map(|()| OptValue::U64(v))
                    .map_err(|_| value_error(self, text, format_args!("an integer in {min}..={max}")))
            }
            OptType::Size { .. } => {
                let v = parse_size(text).map_err(|_| value_error(self, text, self.allowed()))?;
                self.validate_u64(v)
                    .map(|()| OptValue::U64(v))
                    .map_err(|_| value_error(self, text, self.allowed()))
            }
            OptType::Enum(names) => names
                .iter()
                .position(|&n| n == text)
                .map(|i| OptValue::U64(i as u64))
                .ok_or_else(|| value_error(self, text, self.allowed())),
            OptType::Target | OptType::Label => {
                if text.is_empty() || valid_label(text) {
                    Ok(OptValue::Str(text.to_owned()))
                } else {
                    Err(value_error(self, text, self.allowed()))
                }
            }
        }
    }

    fn validate_u64(&self, v: u64) -> Result<()> {
        let ok = match self.ty {
            OptType::Bool => v <= 1,
            OptType::U64 { min, max } => (min..=max).contains(&v),
            OptType::Size { min, max, auto } => {
                (auto && v == 0) || ((min..=max).contains(&v) && v.is_power_of_two())
            }
            OptType::Enum(names) => (v as usize) < names.len(),
            OptType::Target | OptType::Label => false,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::new(
                ErrCode::OptionValueInvalid,
                format!("value {v} out of range for option {}: expected {}", self.name, self.allowed()),
            ))
        }
    }

    /// Checks a value of the right shape is in range (used when decoding the superblock).
    pub fn validate(&self, value: &OptValue) -> Result<()> {
        match (self.ty, value) {
            (OptType::Target | OptType::Label, OptValue::Str(s)) if s.is_empty() || valid_label(s) => Ok(()),
            (OptType::Target | OptType::Label, _) => Err(Error::new(
                ErrCode::OptionValueInvalid,
                format!("invalid value for option {}: expected {}", self.name, self.allowed()),
            )),
            (_, OptValue::U64(v)) => self.validate_u64(*v),
            (_, OptValue::Str(_)) => Err(Error::new(
                ErrCode::OptionValueInvalid,
                format!("option {} takes a number, not text", self.name),
            )),
        }
    }

    /// What values are allowed, for help and errors.
    pub fn allowed(&self) -> String {
        match self.ty {
            OptType::Bool => "0 or 1".to_owned(),
            OptType::U64 { min, max } => format!("{min}..={max}"),
            OptType::Size { min, max, auto } => format!(
                "a power of two from {} to {}{}",
                format_size(min),
                format_size(max),
                if auto { ", or 0 for automatic" } else { "" }
            ),
            OptType::Enum(names) => names.join("|"),
            OptType::Target => "a device label or label group such as ssd or ssd.nvme0".to_owned(),
            OptType::Label => {
                "a label such as ssd.nvme0: lowercase letters, digits, _ and -, parts joined by dots"
                    .to_owned()
            }
        }
    }

    /// The canonical text of a value: it parses back to the same value.
    pub fn format(&self, value: &OptValue) -> String {
        match (self.ty, value) {
            (OptType::Enum(names), OptValue::U64(v)) => {
                names.get(*v as usize).map_or_else(|| v.to_string(), |s| (*s).to_owned())
            }
            (OptType::Size { .. }, OptValue::U64(v)) => format_size(*v),
            (_, OptValue::U64(v)) => v.to_string(),
            (_, OptValue::Str(s)) => s.clone(),
        }
    }
}

/// The behaviour profile (`behavior=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// bcsim's fixes: typed errors, emergency read-only, restartable allocations.
    Fixed,
    /// The kernel as issues #1107 and #1108 saw it.
    V1_37_5,
    /// Upstream as of v1.39.2.
    V1_39,
}

/// What a filesystem error does (`errors=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorAction {
    Continue,
    /// bcachefs's default: an fsck error marked FSCK_AUTOFIX is repaired during any mount;
    /// any other filesystem error is treated as under `ro`.
    FixSafe,
    Ro,
    Panic,
}

impl ErrorAction {
    /// The action an `errors` value stands for (its index in `ERRORS_ACTIONS`).
    pub fn from_value(v: u64) -> ErrorAction {
        match v {
            0 => ErrorAction::Continue,
            1 => ErrorAction::FixSafe,
            2 => ErrorAction::Panic,
            _ => ErrorAction::Ro,
        }
    }

    /// Whether an fsck error bcachefs marks FSCK_AUTOFIX is repaired without being asked
    /// (`__bch2_fsck_err`: under `continue` or `fix_safe`).
    pub fn autofixes(self) -> bool {
        matches!(self, ErrorAction::Continue | ErrorAction::FixSafe)
    }
}

/// A full set of option values, one per table row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    values: Vec<OptValue>,
}

impl std::default::Default for Options {
    fn default() -> Self {
        Options { values: OPTIONS.iter().map(|d| d.id.default_value()).collect() }
    }
}

impl Options {
    pub fn get(&self, id: OptId) -> &OptValue {
        #[expect(clippy::indexing_slicing, reason = "values has one entry per id, ids are dense indexes")]
        &self.values[id as usize]
    }

    pub fn u64(&self, id: OptId) -> u64 {
        self.get(id).as_u64()
    }

    pub fn str(&self, id: OptId) -> &str {
        self.get(id).as_str()
    }

    /// Sets a value after checking it against the table.
    pub fn set(&mut self, id: OptId, value: OptValue) -> Result<()> {
        id.desc().validate(&value)?;
        if let Some(slot) = self.values.get_mut(id as usize) {
            *slot = value;
        }
        Ok(())
    }

    /// Parses `name=value` text for one option and sets it.
    pub fn set_text(&mut self, id: OptId, text: &str) -> Result<()> {
        let v = id.desc().parse(text)?;
        self.set(id, v)
    }

    pub fn metadata_replicas(&self) -> u64 {
        self.u64(OptId::MetadataReplicas)
    }

    pub fn data_replicas(&self) -> u64 {
        self.u64(OptId::DataReplicas)
    }

    pub fn behavior(&self) -> Behavior {
        match self.u64(OptId::Behavior) {
            1 => Behavior::V1_37_5,
            2 => Behavior::V1_39,
            _ => Behavior::Fixed,
        }
    }

    pub fn errors(&self) -> ErrorAction {
        ErrorAction::from_value(self.u64(OptId::Errors))
    }

    pub fn btree_node_size(&self) -> u64 {
        self.u64(OptId::BtreeNodeSize)
    }

    pub fn block_size(&self) -> u64 {
        self.u64(OptId::BlockSize)
    }

    pub fn allocator_stuck_timeout(&self) -> Duration {
        Duration::from_secs(self.u64(OptId::AllocatorStuckTimeout))
    }

    pub fn journal_flush_delay(&self) -> Duration {
        Duration::from_millis(self.u64(OptId::JournalFlushDelay))
    }

    /// `metadata_target`, falling back to `foreground_target` as bcachefs does; empty: any.
    pub fn metadata_target(&self) -> &str {
        match self.str(OptId::MetadataTarget) {
            "" => self.str(OptId::ForegroundTarget),
            t => t,
        }
    }

    /// Every filesystem option (flag `FS`) with its value: what the superblock persists.
    pub fn fs_options(&self) -> impl Iterator<Item = (OptId, &OptValue)> {
        OPTIONS.iter().filter(|d| d.flags.contains(OptFlags::FS)).map(|d| (d.id, self.get(d.id)))
    }
}

/// Where an option string is being applied; decides which flags allow an option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptContext {
    Format,
    Mount,
    Runtime,
    /// `set-fs-option` with no mount running: written into the superblock. Options fixed at
    /// format time, and mount-only ones the superblock does not keep, are refused.
    Offline,
}

impl OptContext {
    fn allows(self, flags: OptFlags) -> bool {
        match self {
            OptContext::Format => flags.contains(OptFlags::FORMAT),
            OptContext::Mount => flags.intersects(OptFlags::MOUNT | OptFlags::MOUNT_OLD),
            OptContext::Runtime => flags.contains(OptFlags::RUNTIME),
            OptContext::Offline => {
                flags.contains(OptFlags::FS)
                    && flags.intersects(OptFlags::RUNTIME | OptFlags::MOUNT | OptFlags::MOUNT_OLD)
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            OptContext::Format => "at format time",
            OptContext::Mount => "at mount time",
            OptContext::Runtime => "on a mounted filesystem",
            OptContext::Offline => "in the superblock (fixed at format time, or a mount-only option)",
        }
    }
}

/// One `name=value` from an option string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedOpt {
    pub id: OptId,
    pub value: OptValue,
}

/// Parses `a=b,c,noc` for `context`: a bare name sets a boolean, `no` + name clears it.
/// Errors name the option and what it allows.
pub fn parse_opts(text: &str, context: OptContext) -> Result<Vec<ParsedOpt>> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        out.push(parse_one(item, context)?);
    }
    Ok(out)
}

fn parse_one(item: &str, context: OptContext) -> Result<ParsedOpt> {
    let (name, value) = match item.split_once('=') {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (item, None),
    };
    let (desc, value_text) = match (lookup(name), value) {
        (Some(d), Some(v)) => (d, v.to_owned()),
        (Some(d), None) if d.ty == OptType::Bool => (d, "1".to_owned()),
        (Some(d), None) if d.id == OptId::Degraded => (d, "yes".to_owned()),
        (Some(d), None) => {
            return Err(Error::new(
                ErrCode::OptionValueInvalid,
                format!("option {} needs a value: {}=<{}>", d.name, d.name, d.allowed()),
            ));
        }
        (None, None) => match name.strip_prefix("no").and_then(lookup) {
            Some(d) if d.ty == OptType::Bool => (d, "0".to_owned()),
            Some(d) if d.id == OptId::Degraded => (d, "no".to_owned()),
            _ => return Err(unknown_option(name)),
        },
        (None, Some(_)) => return Err(unknown_option(name)),
    };
    if !context.allows(desc.flags) {
        return Err(Error::new(
            ErrCode::OptionNotSettable,
            format!("option {} cannot be set {}", desc.name, context.name()),
        ));
    }
    let value = desc.parse(&value_text)?;
    check_modelled(desc.id, &value)?;
    Ok(ParsedOpt { id: desc.id, value })
}

/// Options (or values) bcachefs has whose effect bcsim does not model: refused wherever they
/// are given, so that no option is accepted and then silently does nothing.
fn not_modelled(id: OptId, value: &OptValue) -> Option<&'static str> {
    match (id, value.as_u64()) {
        (OptId::Errors, 2) => {
            Some("errors=panic: there is no kernel to panic; errors=ro stops all writes instead")
        }
        _ => None,
    }
}

/// Refuses an option or value bcsim does not model, naming what it would have done.
pub fn check_modelled(id: OptId, value: &OptValue) -> Result<()> {
    match not_modelled(id, value) {
        Some(why) => Err(Error::new(
            ErrCode::OptionNotModelled,
            format!("option {}={} is not modelled: {why}", id.name(), id.desc().format(value)),
        )),
        None => Ok(()),
    }
}

fn lookup(name: &str) -> Option<&'static OptDesc> {
    OPTIONS.iter().find(|d| d.name == name)
}

fn unknown_option(name: &str) -> Error {
    let known: Vec<&str> = OPTIONS.iter().map(|d| d.name).collect();
    Error::new(ErrCode::OptionUnknown, format!("unknown option '{name}' (known: {})", known.join(", ")))
}

type Subscriber = Box<dyn Fn(OptId, &OptValue) + Send + Sync>;

struct LiveState {
    opts: Options,
    generation: u64,
}

/// The options of a mounted filesystem: readable from any thread, changeable at run time, with
/// a generation counter that moves on every change and a way to wait for the next change.
///
/// Waiting work (an allocation parked for free buckets) remembers the generation it saw and
/// re-reads its request when the counter moves, instead of holding a stale copy.
pub struct LiveOpts {
    state: Mutex<LiveState>,
    changed: Condvar,
    subscribers: Mutex<Vec<Subscriber>>,
}

impl LiveOpts {
    pub fn new(opts: Options) -> Self {
        LiveOpts {
            state: Mutex::new(LiveState { opts, generation: 0 }),
            changed: Condvar::new(),
            subscribers: Mutex::new(Vec::new()),
        }
    }

    /// A copy of the current options and the generation they belong to.
    pub fn snapshot(&self) -> (Options, u64) {
        let s = self.state.lock();
        (s.opts.clone(), s.generation)
    }

    pub fn generation(&self) -> u64 {
        self.state.lock().generation
    }

    pub fn u64(&self, id: OptId) -> u64 {
        self.state.lock().opts.u64(id)
    }

    /// Reads the current options under the lock: several values from one generation.
    pub fn with<R>(&self, f: impl FnOnce(&Options) -> R) -> R {
        f(&self.state.lock().opts)
    }

    /// Changes an option at run time. Only `RUNTIME` options may change; the new generation is
    /// returned, waiters wake, and subscribers hear of the change after the lock is dropped.
    pub fn set(&self, id: OptId, value: OptValue) -> Result<u64> {
        check_modelled(id, &value)?;
        if !id.desc().flags.contains(OptFlags::RUNTIME) {
            return Err(Error::new(
                ErrCode::OptionNotSettable,
                format!("option {} cannot be set on a mounted filesystem", id.name()),
            ));
        }
        let generation = {
            let mut s = self.state.lock();
            s.opts.set(id, value.clone())?;
            s.generation += 1;
            s.generation
        };
        self.changed.notify_all();
        for subscriber in self.subscribers.lock().iter() {
            subscriber(id, &value);
        }
        Ok(generation)
    }

    /// Calls `f` after every change, outside the options lock.
    pub fn subscribe(&self, f: impl Fn(OptId, &OptValue) + Send + Sync + 'static) {
        self.subscribers.lock().push(Box::new(f));
    }

    /// Waits until the generation differs from `seen` or `timeout` passes; returns the current
    /// generation either way.
    pub fn wait_for_change(&self, seen: u64, timeout: Duration) -> u64 {
        let deadline = std::time::Instant::now() + timeout;
        let mut s = self.state.lock();
        while s.generation == seen {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let (guard, timed_out) = self.changed.wait_timeout(s, left);
            s = guard;
            if timed_out {
                break;
            }
        }
        s.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every default is valid for its own option, and every option's canonical text parses back
    /// to the same value.
    #[test]
    fn defaults_valid_and_format_round_trips() {
        let opts = Options::default();
        for d in OPTIONS {
            let v = opts.get(d.id);
            d.validate(v).unwrap_or_else(|e| panic!("default of {}: {e}", d.name));
            assert_eq!(&d.parse(&d.format(v)).unwrap(), v, "{}", d.name);
            assert_eq!(OptId::from_u16(d.id as u16), Some(d.id));
            assert_eq!(OptId::from_name(d.name), Some(d.id));
        }
        assert_eq!(opts.behavior(), Behavior::Fixed);
        assert_eq!(opts.errors(), ErrorAction::FixSafe);
        assert_eq!(opts.btree_node_size(), 256 << 10);
    }

    /// Option strings parse with bare booleans, `no` prefixes and values; errors name the
    /// option and what it allows.
    #[test]
    fn parse_option_strings() {
        let p =
            parse_opts("degraded,errors=continue,nodiscard, metadata_replicas=2", OptContext::Mount).unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(p[0], ParsedOpt { id: OptId::Degraded, value: OptValue::U64(1) });
        assert_eq!(p[1], ParsedOpt { id: OptId::Errors, value: OptValue::U64(0) });
        assert_eq!(p[2], ParsedOpt { id: OptId::Discard, value: OptValue::U64(0) });
        assert_eq!(p[3].value, OptValue::U64(2));

        let e = parse_opts("errors=maybe", OptContext::Mount).unwrap_err();
        assert_eq!(e.code(), ErrCode::OptionValueInvalid);
        assert!(
            e.to_string().contains("errors") && e.to_string().contains("continue|fix_safe|panic|ro"),
            "{e}"
        );

        let e = parse_opts("metadata_replicas=9", OptContext::Runtime).unwrap_err();
        assert!(e.to_string().contains("1..=4"), "{e}");
        let e = parse_opts("frobnicate=1", OptContext::Mount).unwrap_err();
        assert_eq!(e.code(), ErrCode::OptionUnknown);
        assert!(e.to_string().contains("frobnicate"));
        let e = parse_opts("btree_node_size=128k", OptContext::Mount).unwrap_err();
        assert_eq!(e.code(), ErrCode::OptionNotSettable);
        let e = parse_opts("btree_node_size=100k", OptContext::Format).unwrap_err();
        assert!(e.to_string().contains("power of two"), "{e}");
        assert!(parse_opts("metadata_target=SSD", OptContext::Format).is_err());
        assert!(parse_opts("metadata_target=ssd.nvme0", OptContext::Format).is_ok());
        assert!(parse_opts("errors", OptContext::Mount).is_err());
        // What bcsim does not model is refused wherever it is given, never accepted silently.
        for (text, ctx) in [("errors=panic", OptContext::Runtime), ("errors=panic", OptContext::Format)] {
            let e = parse_opts(text, ctx).unwrap_err();
            assert_eq!(e.code(), ErrCode::OptionNotModelled, "{text}: {e}");
            assert!(e.to_string().contains("not modelled"), "{e}");
        }
        assert!(parse_opts("errors=continue", OptContext::Mount).is_ok());
        assert!(parse_opts("allocator_stuck_timeout=10", OptContext::Runtime).is_ok());
        assert!(parse_opts("", OptContext::Mount).unwrap().is_empty());
        assert!(e.matches(ErrCode::Einval));
    }

    /// A run-time change moves the generation, wakes waiters and reaches subscribers; options
    /// that are not RUNTIME are refused and nothing changes.
    #[test]
    fn live_options_change_and_notify() {
        let live = crate::sync::Arc::new(LiveOpts::new(Options::default()));
        let heard = crate::sync::Arc::new(crate::sync::AtomicU64::new(0));
        let h = heard.clone();
        live.subscribe(move |id, v| {
            if id == OptId::MetadataReplicas {
                h.store(v.as_u64(), crate::sync::Ordering::SeqCst);
            }
        });
        let g0 = live.generation();
        let g1 = live.set(OptId::MetadataReplicas, OptValue::U64(1)).unwrap();
        assert_eq!(g1, g0 + 1);
        assert_eq!(live.wait_for_change(g0, Duration::ZERO), g1);
        assert_eq!(heard.load(crate::sync::Ordering::SeqCst), 1);
        let e = live.set(OptId::BtreeNodeSize, OptValue::U64(4096)).unwrap_err();
        assert_eq!(e.code(), ErrCode::OptionNotSettable);
        assert!(live.set(OptId::MetadataReplicas, OptValue::U64(7)).is_err());
        assert_eq!(live.generation(), g1);
        assert_eq!(live.u64(OptId::MetadataReplicas), 1);

        let waiter = {
            let live = live.clone();
            std::thread::spawn(move || live.wait_for_change(g1, Duration::from_secs(60)))
        };
        live.set(OptId::MetadataReplicas, OptValue::U64(2)).unwrap();
        assert_eq!(waiter.join().unwrap(), g1 + 1);
    }
}
