//! Superblock fields: member table, options, journal buckets, clean section, error counts.
//!
//! Every field starts with an 8-byte header `{type u16, reserved u16, bytes u32}` (`bytes`
//! includes the header and is a multiple of 8) followed by its payload; see `docs/FORMAT.md`.

use crate::bpos::BtreeId;
use crate::encode::{Reader, Writer};
use crate::error::{ErrCode, Error, Result};
use crate::fsck_err::FsckErr;
use crate::opts::{OptFlags, OptId, OptValue, Options};
use crate::uuid::Uuid;

const FIELD_MEMBERS: u16 = 1;
const FIELD_OPTIONS: u16 = 2;
const FIELD_JOURNAL: u16 = 3;
const FIELD_CLEAN: u16 = 4;
const FIELD_ERRORS: u16 = 5;

/// Member entry, 80 bytes:
/// ```text
///  0 uuid [16] | 16 nbuckets u64 | 24 bucket_size u32 (bytes) | 28 first_bucket u32
/// 32 durability u8 | 33 state u8 | 34 data_allowed u8 (0: every type) | 35 reserved [5]
/// 40 label [32] NUL-padded
/// 72 freespace_initialized_to u64 (0: every bucket; n + 1: buckets below n only)
/// ```
pub const MEMBER_BYTES: usize = 80;
pub const LABEL_BYTES: usize = 32;
/// The most replicas a single device copy may count as.
pub const MAX_DURABILITY: u8 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    Rw = 0,
    Ro = 1,
    Failed = 2,
    Spare = 3,
}

impl MemberState {
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Rw => "rw",
            MemberState::Ro => "ro",
            MemberState::Failed => "failed",
            MemberState::Spare => "spare",
        }
    }

    fn from_u8(v: u8) -> Option<MemberState> {
        [MemberState::Rw, MemberState::Ro, MemberState::Failed, MemberState::Spare]
            .into_iter()
            .find(|s| *s as u8 == v)
    }
}

bitflags::bitflags! {
    /// What a member may hold (bcachefs's `data_allowed`): a device formatted with
    /// `--data_allowed=user` never gets journal buckets or btree nodes, whatever the targets
    /// say, and allocations that fall back from their target to every device pass it by.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct DataAllowed: u8 {
        const JOURNAL = 1 << 0;
        const BTREE = 1 << 1;
        const USER = 1 << 2;
    }
}

impl Default for DataAllowed {
    fn default() -> Self {
        DataAllowed::all()
    }
}

impl DataAllowed {
    const NAMES: [(&'static str, DataAllowed); 3] =
        [("journal", DataAllowed::JOURNAL), ("btree", DataAllowed::BTREE), ("user", DataAllowed::USER)];

    /// Parses `journal,btree,user` (any non-empty subset, any order).
    pub fn parse(s: &str) -> Result<DataAllowed> {
        let mut out = DataAllowed::empty();
        for part in s.split(',').map(str::trim) {
            let (_, bit) = Self::NAMES.iter().find(|(n, _)| *n == part).ok_or_else(|| {
                Error::new(
                    ErrCode::InvalidArgument,
                    format!("data_allowed: {part:?} is not one of journal, btree, user"),
                )
            })?;
            out |= *bit;
        }
        if out.is_empty() {
            return Err(Error::new(ErrCode::InvalidArgument, "data_allowed: no data type given"));
        }
        Ok(out)
    }

    /// `journal,btree,user`, in that order.
    pub fn names(self) -> String {
        let names: Vec<&str> =
            Self::NAMES.iter().filter(|(_, b)| self.contains(*b)).map(|(n, _)| *n).collect();
        names.join(",")
    }

    /// Whether buckets of `data_type` may go on the device: journal, btree and user data are
    /// governed; every other type (superblock, need_discard, ...) is not allocated by type.
    pub fn allows(self, data_type: crate::bkey::alloc::DataType) -> bool {
        use crate::bkey::alloc::DataType as D;
        match data_type {
            D::Journal => self.contains(DataAllowed::JOURNAL),
            D::Btree => self.contains(DataAllowed::BTREE),
            D::User | D::Cached => self.contains(DataAllowed::USER),
            _ => true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub uuid: Uuid,
    pub nbuckets: u64,
    pub bucket_size: u32,
    /// Buckets below this hold the superblock and are never allocated.
    pub first_bucket: u32,
    pub durability: u8,
    pub state: MemberState,
    pub data_allowed: DataAllowed,
    /// e.g. `ssd.nvme0`: the device is in groups `ssd` and `ssd.nvme0`.
    pub label: String,
    /// `Some(n)`: the freespace btree covers only buckets below `n`; the device grew (offline
    /// `device resize`) and the next mount writes the freespace keys of the rest, as
    /// bcachefs's `fs_freespace_init` does for a member not marked freespace-initialized.
    pub freespace_initialized_to: Option<u64>,
}

/// True if `target` names `label` or one of its groups (`ssd` holds `ssd.nvme0`).
pub fn label_in_target(label: &str, target: &str) -> bool {
    !target.is_empty()
        && (label == target || label.strip_prefix(target).is_some_and(|rest| rest.starts_with('.')))
}

impl Member {
    /// True for an unused slot (a removed device).
    pub fn is_unused(&self) -> bool {
        self.uuid.is_nil()
    }

    /// Bytes of the device that buckets cover.
    pub fn bucket_bytes(&self) -> u64 {
        self.nbuckets.saturating_mul(u64::from(self.bucket_size))
    }

    /// True if `target` names this device's label or one of its groups (`ssd` for `ssd.nvme0`).
    pub fn in_target(&self, target: &str) -> bool {
        label_in_target(&self.label, target)
    }

    fn validate(&self, idx: usize) -> Result<()> {
        if self.is_unused() {
            return Ok(());
        }
        let bad = |what: String| Error::new(ErrCode::InvalidSbMembers, format!("member {idx}: {what}"));
        if !self.bucket_size.is_power_of_two() || self.bucket_size < 4096 {
            return Err(bad(format!(
                "bucket size {} is not a power of two of at least 4096",
                self.bucket_size
            )));
        }
        if self.nbuckets <= u64::from(self.first_bucket) {
            return Err(bad(format!("{} buckets, first bucket {}", self.nbuckets, self.first_bucket)));
        }
        if self.durability > MAX_DURABILITY {
            return Err(bad(format!("durability {} above {MAX_DURABILITY}", self.durability)));
        }
        if self.freespace_initialized_to.is_some_and(|n| n > self.nbuckets) {
            return Err(bad(format!(
                "freespace initialized to bucket {:?}, beyond its {} buckets",
                self.freespace_initialized_to, self.nbuckets
            )));
        }
        if !self.label.is_empty() && OptId::Label.desc().parse(&self.label).is_err() {
            return Err(bad(format!("label '{}' invalid", self.label)));
        }
        Ok(())
    }
}

/// A device's journal buckets as ranges of bucket indexes, in journal order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalBuckets {
    pub ranges: Vec<std::ops::Range<u64>>,
}

impl JournalBuckets {
    pub fn nr(&self) -> u64 {
        self.ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum()
    }

    /// Bucket indexes in journal order.
    pub fn buckets(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|r| r.clone())
    }
}

/// What a clean unmount records: where the journal ended and the btree roots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanSection {
    pub journal_seq: u64,
    pub roots: Vec<CleanRoot>,
}

/// A btree root: the encoded `btree_ptr_v2` key of the root node, kept opaque here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanRoot {
    pub btree: BtreeId,
    pub level: u8,
    pub key: Vec<u8>,
}

/// Deepest btree level a root may have (bcachefs's max depth is 4, levels 0..=3).
pub const MAX_ROOT_LEVEL: u8 = 3;

/// How often an fsck error was seen. `id` is the stable number; an id this build does not
/// know is kept as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorCount {
    pub id: u16,
    pub count: u64,
    pub last_time_secs: u64,
}

impl ErrorCount {
    pub fn name(&self) -> String {
        FsckErr::from_id(self.id).map_or_else(|| format!("unknown_{}", self.id), |e| e.name().to_owned())
    }
}

fn field(w: &mut Writer, ty: u16, body: impl FnOnce(&mut Writer)) {
    let start = w.len();
    w.u16(ty);
    w.u16(0);
    w.u32(0);
    body(w);
    w.pad_to(8);
    let bytes = (w.len() - start) as u32;
    w.patch_u32(start + 4, bytes);
}

pub(super) fn encode_members(w: &mut Writer, members: &[Member]) {
    field(w, FIELD_MEMBERS, |w| {
        for m in members {
            w.bytes(&m.uuid.0);
            w.u64(m.nbuckets);
            w.u32(m.bucket_size);
            w.u32(m.first_bucket);
            w.u8(m.durability);
            w.u8(m.state as u8);
            w.u8(m.data_allowed.bits());
            w.zeros(5);
            let mut label = [0u8; LABEL_BYTES];
            for (dst, src) in label.iter_mut().zip(m.label.bytes()) {
                *dst = src;
            }
            w.bytes(&label);
            w.u64(m.freespace_initialized_to.map_or(0, |n| n.saturating_add(1)));
        }
    });
}

const OPT_KIND_U64: u8 = 0;
const OPT_KIND_STR: u8 = 1;

/// Option entry: `{id u16, kind u8 (0 u64, 1 text), reserved u8, len u32, value padded to 8}`.
pub(super) fn encode_options(w: &mut Writer, opts: &Options) {
    field(w, FIELD_OPTIONS, |w| {
        for (id, value) in opts.fs_options() {
            w.u16(id as u16);
            match value {
                OptValue::U64(v) => {
                    w.u8(OPT_KIND_U64);
                    w.u8(0);
                    w.u32(8);
                    w.u64(*v);
                }
                OptValue::Str(s) => {
                    w.u8(OPT_KIND_STR);
                    w.u8(0);
                    w.u32(s.len() as u32);
                    w.bytes(s.as_bytes());
                    w.pad_to(8);
                }
            }
        }
    });
}

/// Journal: `{nr u32, reserved u32}` then `nr` ranges `{start u64, end u64}` (end exclusive).
pub(super) fn encode_journal(w: &mut Writer, journal: &JournalBuckets) {
    field(w, FIELD_JOURNAL, |w| {
        w.u32(journal.ranges.len() as u32);
        w.u32(0);
        for r in &journal.ranges {
            w.u64(r.start);
            w.u64(r.end);
        }
    });
}

/// Clean: `{journal_seq u64, nr_roots u32, reserved u32}` then roots
/// `{btree u8, level u8, reserved u16, key_bytes u32, key padded to 8}`.
pub(super) fn encode_clean(w: &mut Writer, clean: &CleanSection) {
    field(w, FIELD_CLEAN, |w| {
        w.u64(clean.journal_seq);
        w.u32(clean.roots.len() as u32);
        w.u32(0);
        for root in &clean.roots {
            w.u8(root.btree as u8);
            w.u8(root.level);
            w.u16(0);
            w.u32(root.key.len() as u32);
            w.bytes(&root.key);
            w.pad_to(8);
        }
    });
}

/// Errors: entries `{id u16, reserved [6], count u64, last_time_secs u64}`.
pub(super) fn encode_errors(w: &mut Writer, errors: &[ErrorCount]) {
    field(w, FIELD_ERRORS, |w| {
        for e in errors {
            w.u16(e.id);
            w.zeros(6);
            w.u64(e.count);
            w.u64(e.last_time_secs);
        }
    });
}

pub(super) struct Decoded {
    pub members: Vec<Member>,
    pub opts: Options,
    pub journal: JournalBuckets,
    pub clean: Option<CleanSection>,
    pub errors: Vec<ErrorCount>,
}

pub(super) fn decode_fields(
    r: &mut Reader<'_>,
    nr_fields: u32,
    nr_devices: u16,
    dev_idx: u16,
) -> Result<Decoded> {
    let mut members = None;
    let mut opts = None;
    let mut journal = None;
    let mut clean = None;
    let mut errors = None;
    for _ in 0..nr_fields {
        let at = r.pos();
        let ty = r.u16()?;
        r.skip(2)?;
        let bytes = r.u32()? as usize;
        if bytes < 8 || bytes % 8 != 0 {
            return Err(field_error(
                ErrCode::InvalidSbField,
                at,
                format_args!("field length {bytes} invalid"),
            ));
        }
        let mut body = r.sub(bytes - 8, "superblock field")?;
        let dup = || field_error(ErrCode::InvalidSbField, at, format_args!("field type {ty} given twice"));
        match ty {
            FIELD_MEMBERS if members.is_none() => members = Some(decode_members(&mut body, nr_devices)?),
            FIELD_OPTIONS if opts.is_none() => opts = Some(decode_options(&mut body)?),
            FIELD_JOURNAL if journal.is_none() => journal = Some(decode_journal(&mut body)?),
            FIELD_CLEAN if clean.is_none() => clean = Some(decode_clean(&mut body)?),
            FIELD_ERRORS if errors.is_none() => errors = Some(decode_errors(&mut body)?),
            FIELD_MEMBERS | FIELD_OPTIONS | FIELD_JOURNAL | FIELD_CLEAN | FIELD_ERRORS => return Err(dup()),
            _ => {
                return Err(field_error(
                    ErrCode::InvalidSbField,
                    at,
                    format_args!("unknown field type {ty}"),
                ));
            }
        }
    }
    if !r.is_empty() {
        return Err(r.error(format_args!("{} bytes after the last field", r.remaining())));
    }
    let members =
        members.ok_or_else(|| Error::new(ErrCode::InvalidSbMembers, "superblock has no member table"))?;
    let journal = journal.unwrap_or_default();
    let own = members.get(usize::from(dev_idx)).filter(|m| !m.is_unused()).ok_or_else(|| {
        Error::new(ErrCode::InvalidSbMembers, format!("device index {dev_idx} names an unused member slot"))
    })?;
    validate_journal(&journal, own)?;
    Ok(Decoded {
        members,
        opts: opts.unwrap_or_default(),
        journal,
        clean,
        errors: errors.unwrap_or_default(),
    })
}

fn field_error(code: ErrCode, at: usize, msg: std::fmt::Arguments<'_>) -> Error {
    Error::new(code, format!("superblock field at byte {at}: {msg}"))
}

fn decode_members(r: &mut Reader<'_>, nr_devices: u16) -> Result<Vec<Member>> {
    let want = usize::from(nr_devices) * MEMBER_BYTES;
    if r.remaining() != want {
        return Err(Error::new(
            ErrCode::InvalidSbMembers,
            format!("member table has {} bytes, {nr_devices} members need {want}", r.remaining()),
        ));
    }
    let mut members = Vec::with_capacity(usize::from(nr_devices));
    for idx in 0..usize::from(nr_devices) {
        let uuid = Uuid(r.array()?);
        let nbuckets = r.u64()?;
        let bucket_size = r.u32()?;
        let first_bucket = r.u32()?;
        let durability = r.u8()?;
        let state_raw = r.u8()?;
        let allowed_raw = r.u8()?;
        r.skip(5)?;
        let label_raw: [u8; LABEL_BYTES] = r.array()?;
        let freespace_raw = r.u64()?;
        let state = MemberState::from_u8(state_raw).ok_or_else(|| {
            Error::new(ErrCode::InvalidSbMembers, format!("member {idx}: state {state_raw} unknown"))
        })?;
        let label_len = label_raw.iter().position(|&b| b == 0).unwrap_or(LABEL_BYTES);
        let label = std::str::from_utf8(label_raw.get(..label_len).unwrap_or_default())
            .map_err(|_| Error::new(ErrCode::InvalidSbMembers, format!("member {idx}: label is not UTF-8")))?
            .to_owned();
        let freespace_initialized_to = freespace_raw.checked_sub(1);
        // 0 is what images from before the field hold: every type allowed.
        let data_allowed = match allowed_raw {
            0 => DataAllowed::all(),
            bits => DataAllowed::from_bits(bits).ok_or_else(|| {
                Error::new(ErrCode::InvalidSbMembers, format!("member {idx}: data_allowed {bits:#x} unknown"))
            })?,
        };
        let m = Member {
            uuid,
            nbuckets,
            bucket_size,
            first_bucket,
            durability,
            state,
            data_allowed,
            label,
            freespace_initialized_to,
        };
        m.validate(idx)?;
        members.push(m);
    }
    Ok(members)
}

fn decode_options(r: &mut Reader<'_>) -> Result<Options> {
    let mut opts = Options::default();
    while !r.is_empty() {
        let raw_id = r.u16()?;
        let kind = r.u8()?;
        r.skip(1)?;
        let len = r.u32()? as usize;
        let id =
            OptId::from_u16(raw_id).filter(|id| id.desc().flags.contains(OptFlags::FS)).ok_or_else(|| {
                Error::new(ErrCode::InvalidSbOptions, format!("unknown filesystem option id {raw_id}"))
            })?;
        let value = match kind {
            OPT_KIND_U64 if len == 8 => OptValue::U64(r.u64()?),
            OPT_KIND_STR => {
                let text = std::str::from_utf8(r.take(len)?).map_err(|_| {
                    Error::new(ErrCode::InvalidSbOptions, format!("option {id}: value is not UTF-8"))
                })?;
                r.align_to(8)?;
                OptValue::Str(text.to_owned())
            }
            _ => {
                return Err(Error::new(
                    ErrCode::InvalidSbOptions,
                    format!("option {id}: value kind {kind} with length {len} invalid"),
                ));
            }
        };
        opts.set(id, value)
            .map_err(|e| Error::new(ErrCode::InvalidSbOptions, format!("stored {}", e.message())))?;
    }
    Ok(opts)
}

fn decode_journal(r: &mut Reader<'_>) -> Result<JournalBuckets> {
    let nr = r.u32()? as usize;
    r.skip(4)?;
    if r.remaining() != nr.saturating_mul(16) {
        return Err(Error::new(
            ErrCode::InvalidSbJournal,
            format!("journal field: {nr} ranges do not fit its length"),
        ));
    }
    let mut ranges = Vec::with_capacity(nr);
    for _ in 0..nr {
        let start = r.u64()?;
        let end = r.u64()?;
        ranges.push(start..end);
    }
    Ok(JournalBuckets { ranges })
}

/// Journal ranges are non-empty, inside the device's buckets, and do not overlap.
fn validate_journal(journal: &JournalBuckets, own: &Member) -> Result<()> {
    let mut sorted: Vec<_> = journal.ranges.clone();
    sorted.sort_by_key(|r| r.start);
    let mut prev_end = u64::from(own.first_bucket);
    for r in &sorted {
        if r.start >= r.end || r.start < prev_end || r.end > own.nbuckets {
            return Err(Error::new(
                ErrCode::InvalidSbJournal,
                format!(
                    "journal bucket range {}..{} invalid (device buckets {}..{}, ranges must not overlap)",
                    r.start, r.end, own.first_bucket, own.nbuckets
                ),
            ));
        }
        prev_end = r.end;
    }
    Ok(())
}

fn decode_clean(r: &mut Reader<'_>) -> Result<CleanSection> {
    let journal_seq = r.u64()?;
    let nr_roots = r.u32()?;
    r.skip(4)?;
    let mut roots = Vec::new();
    for _ in 0..nr_roots {
        let raw_btree = r.u8()?;
        let level = r.u8()?;
        r.skip(2)?;
        let len = r.u32()? as usize;
        let key = r.take(len)?.to_vec();
        r.align_to(8)?;
        let btree = BtreeId::from_u8(raw_btree).ok_or_else(|| {
            Error::new(ErrCode::InvalidSbClean, format!("clean section: unknown btree id {raw_btree}"))
        })?;
        if level > MAX_ROOT_LEVEL {
            return Err(Error::new(
                ErrCode::InvalidSbClean,
                format!("clean section: {btree} root at level {level}"),
            ));
        }
        roots.push(CleanRoot { btree, level, key });
    }
    if !r.is_empty() {
        return Err(Error::new(ErrCode::InvalidSbClean, "clean section: bytes after the last root"));
    }
    Ok(CleanSection { journal_seq, roots })
}

fn decode_errors(r: &mut Reader<'_>) -> Result<Vec<ErrorCount>> {
    let mut out = Vec::new();
    while !r.is_empty() {
        let id = r.u16()?;
        r.skip(6)?;
        let count = r.u64()?;
        let last_time_secs = r.u64()?;
        out.push(ErrorCount { id, count, last_time_secs });
    }
    Ok(out)
}
