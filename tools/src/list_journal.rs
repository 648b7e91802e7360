//! `bcsim list-journal`: which journal entries to show and how they read, as text for people
//! and JSON for programs, like bcachefs-tools' `list_journal`.
//!
//! The read is recovery's own ([`journal::read_journal`] on [`journal_devices`]), so what is
//! listed as replayed is exactly what a mount would replay. Listing never writes: a missing
//! member only makes the read degraded, and nothing here decides anything recovery acts on.

use fs_core::bpos::BtreeId;
use fs_core::error::{ErrCode, Error, Result};
use fs_core::sb::DeviceSet;
use journal::{JournalRead, JsetEntry, ReadEntry, SeqStatus, read_journal};
use serde_json::{Value, json};

use crate::recovery::journal::{journal_devices, journal_read_opts};
use crate::report::{key_json, key_text};

/// Reads `set`'s journal the way recovery does. Degraded by design: listing shows what the
/// present devices hold rather than refusing. `all` keeps every entry found (`-a`).
pub fn read(set: &DeviceSet, all: bool) -> Result<JournalRead> {
    let opts = journal::ReadOpts { keep_all: all, ..journal_read_opts(set, set.sb.opts.block_size(), true) };
    read_journal(&journal_devices(set), &opts)
}

/// A seq or an inclusive seq range (`-s SEQ`, `-s A..B`, `-s A..`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqRange {
    pub start: u64,
    /// Inclusive; `None`: no upper bound.
    pub end: Option<u64>,
}

impl SeqRange {
    pub fn parse(text: &str) -> Result<SeqRange> {
        let bad = |why: &str| {
            Error::new(
                ErrCode::InvalidArgument,
                format!("invalid --seq '{text}': {why}; expected SEQ, A..B or A.."),
            )
        };
        let num = |s: &str| s.trim().parse::<u64>().map_err(|_| bad(&format!("'{s}' is not a seq")));
        let range = match text.split_once("..") {
            None => {
                let seq = num(text)?;
                SeqRange { start: seq, end: Some(seq) }
            }
            Some((a, b)) if b.trim().is_empty() => SeqRange { start: num(a)?, end: None },
            Some((a, b)) => SeqRange { start: num(a)?, end: Some(num(b)?) },
        };
        if range.end.is_some_and(|end| end < range.start) {
            return Err(bad("the range ends before it starts"));
        }
        Ok(range)
    }

    pub fn contains(self, seq: u64) -> bool {
        seq >= self.start && self.end.is_none_or(|end| seq <= end)
    }
}

/// What to list. Filters apply in this order: which entries (`all`), `seqs`, `flush_only`,
/// `btree`, then `nr` keeps the newest of what is left.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `-a`: every entry found, not only those replay uses.
    pub all: bool,
    /// `-n`: only the last `nr` entries.
    pub nr: Option<usize>,
    /// `-s`: only these seqs.
    pub seqs: Option<SeqRange>,
    /// `-F`: only flush entries.
    pub flush_only: bool,
    /// `-b`: only entries touching this btree, and within them only its btree_keys, overwrite
    /// and btree_root entries. A jset without btree_keys or overwrite keys for it is left out
    /// entirely: every jset carries every root, so roots alone would match them all.
    pub btree: Option<BtreeId>,
}

/// Where an entry stands with respect to replay. Without `-a` every entry listed is replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Replayed,
    /// Inside a blacklist range: written, but never made durable as a whole.
    Blacklisted,
    /// Below `last_seq`: already written back to the btrees.
    BelowLastSeq,
    /// Past `replay_end` (no-flush entries after the last flush, or no flush entry at all).
    PastReplayEnd,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Replayed => "replayed",
            Status::Blacklisted => "blacklisted",
            Status::BelowLastSeq => "below_last_seq",
            Status::PastReplayEnd => "past_replay_end",
        }
    }
}

/// One jset to print, with the entries inside it that pass the filter.
#[derive(Debug)]
pub struct Listed<'a> {
    pub entry: &'a ReadEntry,
    pub status: Status,
    pub items: Vec<&'a JsetEntry>,
}

/// The journal read's own replay decision, in list-journal's words.
fn status(jr: &JournalRead, seq: u64) -> Status {
    match jr.replay().status(seq) {
        SeqStatus::Replayed => Status::Replayed,
        SeqStatus::Blacklisted => Status::Blacklisted,
        SeqStatus::BelowLastSeq => Status::BelowLastSeq,
        SeqStatus::PastReplayEnd => Status::PastReplayEnd,
    }
}

fn item_btree(e: &JsetEntry) -> Option<BtreeId> {
    match e {
        JsetEntry::BtreeKeys { btree, .. }
        | JsetEntry::Overwrite { btree, .. }
        | JsetEntry::BtreeRoot { btree, .. } => Some(*btree),
        JsetEntry::Blacklist { .. } => None,
    }
}

/// A btree_keys or overwrite entry of `btree` with at least one key.
fn has_keys_of(e: &JsetEntry, btree: BtreeId) -> bool {
    match e {
        JsetEntry::BtreeKeys { btree: b, keys, .. } | JsetEntry::Overwrite { btree: b, keys, .. } => {
            *b == btree && !keys.is_empty()
        }
        _ => false,
    }
}

/// The entries of `jr` that `f` selects, in seq order. `jr` must come from [`read`] with
/// `f.all` for `-a` to see more than the replay range.
pub fn select<'a>(jr: &'a JournalRead, f: &Filter) -> Vec<Listed<'a>> {
    let source = if f.all { &jr.all_entries } else { &jr.entries };
    let mut out: Vec<Listed<'a>> = source
        .iter()
        .filter(|e| f.seqs.is_none_or(|r| r.contains(e.jset.seq)))
        .filter(|e| !f.flush_only || !e.jset.no_flush())
        .filter(|e| f.btree.is_none_or(|b| e.jset.entries.iter().any(|i| has_keys_of(i, b))))
        .map(|entry| Listed {
            entry,
            status: status(jr, entry.jset.seq),
            items: entry
                .jset
                .entries
                .iter()
                .filter(|i| f.btree.is_none_or(|b| item_btree(i) == Some(b)))
                .collect(),
        })
        .collect();
    if let Some(nr) = f.nr {
        out.drain(..out.len().saturating_sub(nr));
    }
    out
}

/// `journal entry seq S last_seq L flush|noflush on dev:bucket:offset, ...`, and with `-a` why
/// an entry is not replayed.
pub fn header_text(l: &Listed<'_>) -> String {
    let j = &l.entry.jset;
    let copies: Vec<String> =
        l.entry.ptrs.iter().map(|p| format!("{}:{}:{}", p.dev, p.bucket, p.offset)).collect();
    let flush = if j.no_flush() { "noflush" } else { "flush" };
    let mut s =
        format!("journal entry seq {} last_seq {} {flush} on {}", j.seq, j.last_seq, copies.join(", "));
    if l.status != Status::Replayed {
        s.push_str(&format!(" (not replayed: {})", l.status.name()));
    }
    s
}

/// One jset entry as text lines: a line for the entry, indented two spaces, then its keys
/// indented four.
pub fn item_text(e: &JsetEntry) -> Vec<String> {
    match e {
        JsetEntry::BtreeKeys { btree, level, keys } | JsetEntry::Overwrite { btree, level, keys } => {
            let ty = if matches!(e, JsetEntry::BtreeKeys { .. }) { "btree_keys" } else { "overwrite" };
            std::iter::once(format!("  {ty} btree={btree} level={level}"))
                .chain(keys.iter().map(|k| format!("    {}", key_text(&k.to_key()))))
                .collect()
        }
        JsetEntry::BtreeRoot { btree, level, ptr } => {
            let ptrs: Vec<String> = ptr.ptrs.iter().map(|p| format!("{}:{}", p.dev, p.offset)).collect();
            vec![format!(
                "  btree_root btree={btree} level={level} seq={:x} written={} ptrs={}",
                ptr.seq,
                ptr.sectors_written,
                ptrs.join(",")
            )]
        }
        // Inclusive, as recovery's "blacklisting journal seqs A-B" line prints it.
        JsetEntry::Blacklist { start, end } => vec![format!("  blacklist {start}-{}", end.saturating_sub(1))],
    }
}

/// `-B`: the blacklisted seq ranges the read found, inclusive.
pub fn blacklist_text(jr: &JournalRead) -> Vec<String> {
    if jr.blacklist.is_empty() {
        return vec!["blacklisted journal seqs: none".to_owned()];
    }
    jr.blacklist
        .iter()
        .map(|&(start, end)| format!("blacklisted journal seqs {start}-{}", end.saturating_sub(1)))
        .collect()
}

fn item_json(e: &JsetEntry) -> Value {
    match e {
        JsetEntry::BtreeKeys { btree, level, keys } | JsetEntry::Overwrite { btree, level, keys } => {
            let ty = if matches!(e, JsetEntry::BtreeKeys { .. }) { "btree_keys" } else { "overwrite" };
            json!({"type": ty, "btree": btree.name(), "level": level, "keys": keys.iter().map(|k| key_json(&k.to_key())).collect::<Vec<_>>()})
        }
        JsetEntry::BtreeRoot { btree, level, ptr } => json!({
            "type": "btree_root", "btree": btree.name(), "level": level,
            "seq": format!("{:x}", ptr.seq), "sectors_written": ptr.sectors_written,
            "ptrs": ptr.ptrs.iter().map(|p| json!({"dev": p.dev, "offset_sectors": p.offset, "gen": p.bucket_gen})).collect::<Vec<_>>(),
        }),
        // `end` is exclusive here, as on disk.
        JsetEntry::Blacklist { start, end } => json!({"type": "blacklist", "start": start, "end": end}),
    }
}

/// One jset as JSON; `headers_only` (`-H`) leaves out the `entries` field.
pub fn listed_json(l: &Listed<'_>, headers_only: bool) -> Value {
    let j = &l.entry.jset;
    let mut v = json!({
        "seq": j.seq,
        "last_seq": j.last_seq,
        "flush": !j.no_flush(),
        "status": l.status.name(),
        "copies": l.entry.ptrs.iter().map(|p| json!({"dev": p.dev, "bucket": p.bucket, "offset": p.offset})).collect::<Vec<_>>(),
    });
    if headers_only {
        return v;
    }
    if let Some(obj) = v.as_object_mut() {
        obj.insert("entries".to_owned(), Value::Array(l.items.iter().map(|e| item_json(e)).collect()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_ranges_parse() {
        assert_eq!(SeqRange::parse("7").ok(), Some(SeqRange { start: 7, end: Some(7) }));
        assert_eq!(SeqRange::parse("3..9").ok(), Some(SeqRange { start: 3, end: Some(9) }));
        assert_eq!(SeqRange::parse("3..").ok(), Some(SeqRange { start: 3, end: None }));
        for bad in ["", "x", "9..3", "..4", "1..2..3", "-1"] {
            assert!(SeqRange::parse(bad).is_err(), "{bad}");
        }
        let r = SeqRange { start: 3, end: Some(5) };
        assert!(!r.contains(2) && r.contains(3) && r.contains(5) && !r.contains(6));
        assert!(SeqRange { start: 3, end: None }.contains(u64::MAX));
    }
}
