//! The replay decision: which journal seqs recovery replays, and which seqs the mount after an
//! unclean shutdown must blacklist. The journal read finds the facts (rule 4 of the read: the
//! newest good flush entry is the replay end, its `last_seq` the start; the blacklist ranges its
//! entries carry; the newest seq any copy claims); this is the one place that turns them into
//! answers, and recovery, `fsck -n` and `list-journal` ask it rather than work them out again.
//!
//! A seq with a good copy stands, checked in this order:
//!
//! | # | when | status | replayed |
//! |---|---|---|---|
//! | 1 | inside a blacklist range read from an entry | `Blacklisted` | no |
//! | 2 | the journal has no flush entry (`replay_end == 0`) | `PastReplayEnd` | no |
//! | 3 | below `last_seq` | `BelowLastSeq`: already in the btrees | no |
//! | 4 | above `replay_end` | `PastReplayEnd`: no flush made it durable | no |
//! | 5 | otherwise | `Replayed` | yes |
//!
//! After an unclean shutdown the mount blacklists `[replay_end + 1, newest + 1 + BLACKLIST_AHEAD)`
//! with `newest = max(newest_seq, replay_end)`: every seq past the replay range that any copy
//! claims may have reached btree nodes without its entry becoming durable, and so may the
//! entries after it, whose seqs no copy shows: bsets written before the entry they belong to
//! (write-back stamps its bsets with the entry it is about to write).

/// Seqs blacklisted after an unclean shutdown beyond the newest seq found, as bcachefs skips
/// them (`journal_start.cur_seq += JOURNAL_BUF_NR * 4` in `bch2_fs_recovery`, v1.37.5 and
/// v1.39.2): btree writes may reference entries that were never written.
pub const BLACKLIST_AHEAD: u64 = 64;

/// Where a seq stands with respect to replay (the table in the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqStatus {
    Replayed,
    /// Inside a blacklist range: written, but never made durable as a whole.
    Blacklisted,
    /// Below `last_seq`: already written back to the btrees.
    BelowLastSeq,
    /// Past `replay_end` (no-flush entries after the last flush, a torn write, or no flush entry
    /// at all).
    PastReplayEnd,
}

/// The replay decision of one journal read ([`super::JournalRead::replay`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayDecision<'a> {
    /// First seq to replay (at least 1); 0 with `replay_end` when there is nothing to replay.
    pub last_seq: u64,
    /// Last seq to replay: the newest good flush entry not blacklisted; 0 if there is none.
    pub replay_end: u64,
    /// The highest seq any copy (good or bad) claims, 0 if none.
    pub newest_seq: u64,
    /// `[start, end)` ranges found in blacklist entries, sorted, duplicates removed.
    pub blacklist: &'a [(u64, u64)],
}

impl ReplayDecision<'_> {
    /// No flush entry was found: nothing replays.
    pub fn is_empty(&self) -> bool {
        self.replay_end == 0
    }

    /// Whether a blacklist range read from the journal holds `seq`.
    pub fn blacklisted(&self, seq: u64) -> bool {
        in_blacklist(self.blacklist, seq)
    }

    /// The table in the module docs.
    pub fn status(&self, seq: u64) -> SeqStatus {
        if self.blacklisted(seq) {
            SeqStatus::Blacklisted
        } else if self.is_empty() || seq > self.replay_end {
            SeqStatus::PastReplayEnd
        } else if seq < self.last_seq {
            SeqStatus::BelowLastSeq
        } else {
            SeqStatus::Replayed
        }
    }

    /// Whether recovery replays jset `seq` (if it has a good copy).
    pub fn replays(&self, seq: u64) -> bool {
        self.status(seq) == SeqStatus::Replayed
    }

    /// The seqs the mount after an unclean shutdown blacklists, `[start, end)`: past the replay
    /// range, they may have reached btree nodes without their journal entry becoming durable.
    pub fn blacklist_after(&self) -> (u64, u64) {
        let newest = self.newest_seq.max(self.replay_end);
        (self.replay_end.saturating_add(1), newest.saturating_add(1).saturating_add(BLACKLIST_AHEAD))
    }

    /// Every `[start, end)` range whose bsets the btrees must ignore once the mount has
    /// blacklisted [`ReplayDecision::blacklist_after`]: the ranges read, and that one.
    pub fn btree_blacklist(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::with_capacity(self.blacklist.len() + 1);
        out.extend_from_slice(self.blacklist);
        out.push(self.blacklist_after());
        out
    }
}

/// Whether one of the `[start, end)` ranges holds `seq`.
pub(crate) fn in_blacklist(ranges: &[(u64, u64)], seq: u64) -> bool {
    ranges.iter().any(|&(start, end)| (start..end).contains(&seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row of the table in the module docs, and the rows' order where two apply.
    #[test]
    fn status_follows_the_table() {
        let blacklist = [(6, 8), (20, 21)];
        let d = ReplayDecision { last_seq: 4, replay_end: 10, newest_seq: 12, blacklist: &blacklist };
        let rows = [
            (3, SeqStatus::BelowLastSeq),
            (4, SeqStatus::Replayed),
            (5, SeqStatus::Replayed),
            (6, SeqStatus::Blacklisted),
            (7, SeqStatus::Blacklisted),
            (8, SeqStatus::Replayed),
            (10, SeqStatus::Replayed),
            (11, SeqStatus::PastReplayEnd),
            (20, SeqStatus::Blacklisted),
        ];
        for (seq, want) in rows {
            assert_eq!(d.status(seq), want, "seq {seq}");
            assert_eq!(d.replays(seq), want == SeqStatus::Replayed, "seq {seq}");
        }
        let empty = ReplayDecision { last_seq: 0, replay_end: 0, newest_seq: 3, blacklist: &blacklist };
        assert_eq!(empty.status(0), SeqStatus::PastReplayEnd);
        assert_eq!(empty.status(2), SeqStatus::PastReplayEnd);
        assert_eq!(empty.status(20), SeqStatus::Blacklisted);
    }

    /// The blacklist after a crash starts right after the replay end and covers the newest seq
    /// found and BLACKLIST_AHEAD (64, as bcachefs) more; with nothing found past the replay
    /// end, just those.
    #[test]
    fn blacklist_after_covers_newest_and_the_seqs_ahead() {
        let read = [(2, 3)];
        let d = ReplayDecision { last_seq: 4, replay_end: 10, newest_seq: 12, blacklist: &read };
        assert_eq!(d.blacklist_after(), (11, 13 + 64));
        assert_eq!(d.btree_blacklist(), vec![(2, 3), (11, 13 + 64)]);
        let d = ReplayDecision { newest_seq: 10, ..d };
        assert_eq!(d.blacklist_after(), (11, 11 + 64));
        let empty = ReplayDecision { last_seq: 0, replay_end: 0, newest_seq: 0, blacklist: &[] };
        assert_eq!(empty.blacklist_after(), (1, 1 + 64));
    }
}
