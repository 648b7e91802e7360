//! Superblock reports for `bcsim show-super` and `bcsim format`: the same facts as text for
//! people and as JSON for programs.

use std::fmt::Write as _;

use fs_core::opts::OptId;
use fs_core::sb::{DamagedCopy, JournalBuckets, Member, Superblock};
use fs_core::size::format_size;
use serde_json::{Value, json};

/// Sections of a superblock report (`show-super -f`); the header is always shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Members,
    Options,
    Journal,
    Clean,
    Errors,
}

impl Field {
    pub const ALL: [Field; 5] = [Field::Members, Field::Options, Field::Journal, Field::Clean, Field::Errors];

    pub fn name(self) -> &'static str {
        match self {
            Field::Members => "members",
            Field::Options => "options",
            Field::Journal => "journal",
            Field::Clean => "clean",
            Field::Errors => "errors",
        }
    }

    /// Parses `members,options` or `all`.
    pub fn parse_list(text: &str) -> Result<Vec<Field>, String> {
        let mut out = Vec::new();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if name == "all" {
                return Ok(Field::ALL.to_vec());
            }
            let field = Field::ALL.into_iter().find(|f| f.name() == name).ok_or_else(|| {
                let names: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
                format!("unknown field '{name}': expected all or {}", names.join(", "))
            })?;
            out.push(field);
        }
        Ok(out)
    }
}

/// One device's superblock as read, ready to print.
pub struct SuperReport<'a> {
    pub device: &'a str,
    pub sb: &'a Superblock,
    pub copy_offset: u64,
    pub damaged: &'a [DamagedCopy],
}

fn journal_summary(j: &JournalBuckets) -> String {
    let ranges: Vec<String> =
        j.ranges.iter().map(|r| format!("{}-{}", r.start, r.end.saturating_sub(1))).collect();
    format!("{} buckets in {} range(s): {}", j.nr(), j.ranges.len(), ranges.join(", "))
}

fn member_line(idx: usize, m: &Member) -> String {
    if m.is_unused() {
        return format!("  Device {idx}: (unused slot)\n");
    }
    format!(
        "  Device {idx}:\n    UUID:                {}\n    Label:               {}\n    State:               {}\n    \
         Durability:          {}\n    Data allowed:        {}\n    Bucket size:         {}\n    \
         Buckets:             {} (first {})\n    Size:                {}\n",
        m.uuid,
        if m.label.is_empty() { "(none)" } else { &m.label },
        m.state.name(),
        m.durability,
        m.data_allowed.names(),
        format_size(u64::from(m.bucket_size)),
        m.nbuckets,
        m.first_bucket,
        format_size(m.bucket_bytes()),
    )
}

impl SuperReport<'_> {
    pub fn text(&self, fields: &[Field]) -> String {
        let sb = self.sb;
        let mut s = String::new();
        let _ = writeln!(s, "Device:                  {}", self.device);
        let _ = writeln!(s, "External UUID:           {}", sb.uuid);
        let _ = writeln!(s, "Format version:          {}", sb.version);
        let _ = writeln!(s, "Superblock seq:          {}", sb.seq);
        let _ = writeln!(s, "Device index:            {} of {}", sb.dev_idx, sb.members.len());
        let _ = writeln!(
            s,
            "Superblock copies:       {} and {} (read from {})",
            sb.offsets[0], sb.offsets[1], self.copy_offset
        );
        for d in self.damaged {
            let _ = writeln!(s, "Damaged copy:            at {}: {}", d.offset, d.error);
        }
        let clean = match &sb.clean {
            Some(c) => format!("yes (journal seq {}, {} btree roots)", c.journal_seq, c.roots.len()),
            None => "no (needs journal replay)".to_owned(),
        };
        let _ = writeln!(s, "Clean:                   {clean}");
        if sb.needs_fsck {
            let _ = writeln!(
                s,
                "Errors:                  recorded, not yet repaired by fsck (it checks even when clean)"
            );
        }
        for field in fields {
            s.push('\n');
            match field {
                Field::Members => {
                    let _ = writeln!(s, "Members ({}):", sb.members.len());
                    for (i, m) in sb.members.iter().enumerate() {
                        s.push_str(&member_line(i, m));
                    }
                }
                Field::Options => {
                    let _ = writeln!(s, "Options:");
                    for (id, value) in sb.opts.fs_options() {
                        let _ =
                            writeln!(s, "  {:<24} {}", format!("{}:", id.name()), id.desc().format(value));
                    }
                }
                Field::Journal => {
                    let _ = writeln!(s, "Journal buckets:         {}", journal_summary(&sb.journal));
                }
                Field::Clean => {
                    let _ = writeln!(s, "Clean section:");
                    match &sb.clean {
                        None => {
                            let _ = writeln!(s, "  (none)");
                        }
                        Some(c) => {
                            let _ = writeln!(s, "  journal seq:           {}", c.journal_seq);
                            for r in &c.roots {
                                let _ = writeln!(
                                    s,
                                    "  root {}: level {}, {} key bytes",
                                    r.btree,
                                    r.level,
                                    r.key.len()
                                );
                            }
                        }
                    }
                }
                Field::Errors => {
                    if sb.errors.is_empty() {
                        let _ = writeln!(s, "Errors:                  none");
                    } else {
                        let _ = writeln!(s, "Errors:");
                        for e in &sb.errors {
                            let _ = writeln!(s, "  {:<40} {} (id {})", e.name(), e.count, e.id);
                        }
                    }
                }
            }
        }
        s
    }

    pub fn json(&self, fields: &[Field]) -> Value {
        let sb = self.sb;
        let mut v = json!({
            "device": self.device,
            "uuid": sb.uuid.to_string(),
            "version": sb.version,
            "seq": sb.seq,
            "dev_idx": sb.dev_idx,
            "nr_devices": sb.members.len(),
            "copies": sb.offsets,
            "read_from": self.copy_offset,
            "damaged_copies": self.damaged.iter().map(|d| json!({
                "offset": d.offset, "code": d.error.code().name(), "error": d.error.to_string(),
            })).collect::<Vec<_>>(),
            "clean": sb.is_clean(),
            "needs_fsck": sb.needs_fsck,
        });
        for field in fields {
            let (key, value) = match field {
                Field::Members => ("members", Value::Array(sb.members.iter().map(member_json).collect())),
                Field::Options => (
                    "options",
                    Value::Object(
                        sb.opts
                            .fs_options()
                            .map(|(id, value)| (id.name().to_owned(), option_json(id, value)))
                            .collect(),
                    ),
                ),
                Field::Journal => (
                    "journal",
                    json!({
                        "nr_buckets": sb.journal.nr(),
                        "ranges": sb.journal.ranges.iter().map(|r| json!([r.start, r.end])).collect::<Vec<_>>(),
                    }),
                ),
                Field::Clean => (
                    "clean_section",
                    sb.clean.as_ref().map_or(Value::Null, |c| {
                        json!({
                            "journal_seq": c.journal_seq,
                            "roots": c.roots.iter().map(|r| json!({
                                "btree": r.btree.name(), "level": r.level, "key_bytes": r.key.len(),
                            })).collect::<Vec<_>>(),
                        })
                    }),
                ),
                Field::Errors => (
                    "errors",
                    Value::Array(
                        sb.errors
                            .iter()
                            .map(|e| json!({"id": e.id, "name": e.name(), "count": e.count, "last_time_secs": e.last_time_secs}))
                            .collect(),
                    ),
                ),
            };
            if let Some(obj) = v.as_object_mut() {
                obj.insert(key.to_owned(), value);
            }
        }
        v
    }
}

fn option_json(id: OptId, value: &fs_core::opts::OptValue) -> Value {
    match value {
        fs_core::opts::OptValue::U64(n) if matches!(id.desc().ty, fs_core::opts::OptType::U64 { .. }) => {
            json!(n)
        }
        _ => json!(id.desc().format(value)),
    }
}

pub fn member_json(m: &Member) -> Value {
    json!({
        "uuid": m.uuid.to_string(),
        "label": m.label,
        "state": m.state.name(),
        "durability": m.durability,
        "data_allowed": m.data_allowed.names(),
        "bucket_size": m.bucket_size,
        "nbuckets": m.nbuckets,
        "first_bucket": m.first_bucket,
        "used": !m.is_unused(),
    })
}

/// One key as `bcachefs list` prints it: position, type, then the value decoded where bcsim
/// knows the type.
pub fn key_text(k: &fs_core::bkey::Bkey) -> String {
    use fs_core::bkey::{AllocV4, BtreePtrV2, KeyType};
    let val = match k.ty {
        KeyType::AllocV4 => AllocV4::decode(&k.val).map_or_else(
            |e| format!("invalid: {e}"),
            |a| {
                format!(
                    "gen {} oldest_gen {} data_type {} dirty_sectors {} cached_sectors {} journal_seq_empty {} flags {:#x}",
                    a.bucket_gen, a.oldest_gen, a.data_type, a.dirty_sectors, a.cached_sectors, a.journal_seq_empty, a.flags
                )
            },
        ),
        KeyType::BtreePtrV2 => BtreePtrV2::decode(&k.val).map_or_else(
            |e| format!("invalid: {e}"),
            |p| {
                let ptrs: Vec<String> =
                    p.ptrs.iter().map(|x| format!("ptr: {}:{} gen {}", x.dev, x.offset, x.bucket_gen)).collect();
                format!("seq {:x} written {} min_key {} {}", p.seq, p.sectors_written, p.min_key, ptrs.join(" "))
            },
        ),
        _ if k.val.is_empty() => String::new(),
        _ => k.val.iter().take(32).map(|b| format!("{b:02x}")).collect::<String>(),
    };
    let size = if k.size > 0 { format!(" len {}", k.size) } else { String::new() };
    format!("{} {}{}: {}", k.pos, k.ty, size, val).trim_end().to_owned()
}

pub fn key_json(k: &fs_core::bkey::Bkey) -> Value {
    json!({
        "pos": k.pos.to_string(),
        "type": k.ty.name(),
        "size": k.size,
        "value": key_text(k).split_once(": ").map(|(_, v)| v.to_owned()).unwrap_or_default(),
        "value_bytes": k.val.len(),
    })
}

pub fn node_text(n: &fs_core::btree::NodeInfo) -> String {
    let ptrs: Vec<String> = n.ptrs.iter().map(|p| format!("{}:{}", p.dev, p.offset)).collect();
    format!(
        "{}{} level {} {}..{} seq {:x} keys {} written {} sectors ptrs {}",
        "  ".repeat(usize::from(3u8.saturating_sub(n.level))),
        n.btree,
        n.level,
        n.min_key,
        n.max_key,
        n.seq,
        n.nr_keys,
        n.sectors_written,
        ptrs.join(" "),
    )
}

pub fn node_json(n: &fs_core::btree::NodeInfo) -> Value {
    json!({
        "btree": n.btree.name(),
        "level": n.level,
        "min_key": n.min_key.to_string(),
        "max_key": n.max_key.to_string(),
        "seq": format!("{:x}", n.seq),
        "nr_keys": n.nr_keys,
        "sectors_written": n.sectors_written,
        "ptrs": n.ptrs.iter().map(|p| json!({"dev": p.dev, "offset_sectors": p.offset, "gen": p.bucket_gen})).collect::<Vec<_>>(),
    })
}
