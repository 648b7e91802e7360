//! `check_alloc_info` (10): the freespace and need_discard btrees must mirror the alloc keys.
//! Before anything was written it compares with the alloc keys as check_allocations repaired
//! them; once the filesystem writes, with the alloc btree as it now is.
//!
//! The freespace btree holds one key per maximal run of free buckets (`set` key at the run's
//! end, `size` buckets long); a bucket is free when its alloc key says so or, outside the
//! superblock and journal buckets, when it has none. Every bucket-level difference is one
//! finding; keys that cover the right buckets but are not one key per run are one more. The
//! repair rewrites the device's differing keys.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use fs_core::bkey::{AllocV4, Bkey, DataType, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::error::Result;
use fs_core::fsck_err::FsckErr;
use fs_core::sb::DeviceSet;

use super::{Finding, RecoveryCtx};
use crate::fs::read_alloc_keys;

pub(super) fn run(ctx: &mut RecoveryCtx) -> Result<()> {
    let view = if ctx.fs.is_some() { None } else { ctx.alloc_view.take() };
    let findings = ctx.with_view(|mut v| {
        let alloc: BTreeMap<Bpos, AllocV4> = match view {
            Some(a) => a,
            None => read_alloc_keys(v.t, v.overlay)?.into_iter().collect(),
        };
        let mut findings = Vec::new();
        let mut have: BTreeMap<u8, Vec<(u64, u64)>> = BTreeMap::new();
        v.for_each_key(BtreeId::Freespace, |k| {
            let dev = u8::try_from(k.pos.inode).unwrap_or(u8::MAX);
            have.entry(dev).or_default().push((k.pos.offset.saturating_sub(u64::from(k.size)), k.pos.offset));
            Ok(())
        })?;
        for (dev, want) in free_runs(v.set, &alloc) {
            check_device_runs(dev, &want, &have.remove(&dev).unwrap_or_default(), &mut findings);
        }
        for (dev, keys) in have {
            check_device_runs(dev, &[], &keys, &mut findings);
        }
        let mut nd = BTreeSet::new();
        v.for_each_key(BtreeId::NeedDiscard, |k| {
            nd.insert(k.pos);
            Ok(())
        })?;
        let want: BTreeSet<Bpos> =
            alloc.iter().filter(|(_, a)| a.data_type == DataType::NeedDiscard).map(|(p, _)| *p).collect();
        let err = FsckErr::NeedDiscardKeyWrong;
        for p in want.difference(&nd) {
            findings.push(Finding::new(
                err,
                format!("bucket {}:{} is need_discard but has no need_discard key", p.inode, p.offset),
                Some(vec![(BtreeId::NeedDiscard, Bkey::new(*p, KeyType::Set, Vec::new()))]),
            ));
        }
        for p in nd.difference(&want) {
            findings.push(Finding::new(
                err,
                format!("need_discard key for bucket {}:{} that is not need_discard", p.inode, p.offset),
                Some(vec![(BtreeId::NeedDiscard, Bkey::whiteout(*p))]),
            ));
        }
        Ok(findings)
    })?;
    let fixes = ctx.record(findings);
    ctx.commit_fixes(fixes)
}

/// Per member device, the maximal runs of free buckets the alloc keys say there are.
fn free_runs(set: &DeviceSet, alloc: &BTreeMap<Bpos, AllocV4>) -> Vec<(u8, Vec<(u64, u64)>)> {
    let mut out = Vec::new();
    for (i, m) in set.sb.members.iter().enumerate() {
        let Ok(dev) = u8::try_from(i) else { continue };
        if m.is_unused() {
            continue;
        }
        // Buckets that are not free: superblock and journal buckets by the layout (unless a key
        // says otherwise), and every bucket whose key is not free.
        let mut taken: BTreeSet<u64> = (0..u64::from(m.first_bucket)).collect();
        if let Some(d) = set.device(i) {
            taken.extend(d.sb.journal.buckets());
        }
        for (pos, a) in
            alloc.range(Bpos::new(u64::from(dev), 0, 0)..=Bpos::new(u64::from(dev), u64::MAX, u32::MAX))
        {
            if a.data_type == DataType::Free {
                taken.remove(&pos.offset);
            } else {
                taken.insert(pos.offset);
            }
        }
        // A member that grew offline has freespace keys below `freespace_initialized_to` only,
        // until fs_freespace_init writes the rest.
        let end = m.freespace_initialized_to.unwrap_or(m.nbuckets).min(m.nbuckets);
        let mut runs = Vec::new();
        let mut at = 0u64;
        for &b in taken.iter().filter(|&&b| b < end) {
            if b > at {
                runs.push((at, b));
            }
            at = b + 1;
        }
        if at < end {
            runs.push((at, end));
        }
        out.push((dev, runs));
    }
    out
}

/// Compares device `dev`'s freespace keys `have` (`(start, end)`) with the runs it should hold.
fn check_device_runs(dev: u8, want: &[(u64, u64)], have: &[(u64, u64)], findings: &mut Vec<Finding>) {
    let keys = |runs: &[(u64, u64)]| runs.iter().copied().collect::<BTreeSet<_>>();
    let (want_keys, have_keys) = (keys(want), keys(have));
    if want_keys == have_keys {
        return;
    }
    let pos = |end: u64| Bpos::new(u64::from(dev), end, 0);
    let mut fix: Vec<(BtreeId, Bkey)> = have_keys
        .difference(&want_keys)
        .map(|&(_, end)| (BtreeId::Freespace, Bkey::whiteout(pos(end))))
        .collect();
    for &(start, end) in want_keys.difference(&have_keys) {
        let mut k = Bkey::new(pos(end), KeyType::Set, Vec::new());
        k.size = u32::try_from(end - start).unwrap_or(u32::MAX);
        fix.push((BtreeId::Freespace, k));
    }
    let mut fix = Some(fix);
    let covered = merge(have);
    let free = merge(want);
    let err = FsckErr::FreespaceKeyWrong;
    let mut found = false;
    for r in minus(&free, &covered) {
        findings.push(Finding::new(
            err,
            format!("{} {} free but {} no freespace key", buckets(dev, &r), is_word(&r), have_word(&r)),
            fix.take().or(Some(Vec::new())),
        ));
        found = true;
    }
    for r in minus(&covered, &free) {
        findings.push(Finding::new(
            err,
            format!("freespace key for {} that {} not free", buckets(dev, &r), is_word(&r)),
            fix.take().or(Some(Vec::new())),
        ));
        found = true;
    }
    if !found {
        findings.push(Finding::new(
            err,
            format!("freespace keys of device {dev} are not one key per run of free buckets"),
            fix.take(),
        ));
    }
}

/// "bucket 0:68" or "buckets 0:68..0:70".
fn buckets(dev: u8, r: &Range<u64>) -> String {
    if r.end - r.start == 1 {
        format!("bucket {dev}:{}", r.start)
    } else {
        format!("buckets {dev}:{}..{dev}:{}", r.start, r.end)
    }
}

fn have_word(r: &Range<u64>) -> &'static str {
    if r.end - r.start == 1 { "has" } else { "have" }
}

fn is_word(r: &Range<u64>) -> &'static str {
    if r.end - r.start == 1 { "is" } else { "are" }
}

/// `(start, end)` ranges merged into sorted, disjoint ranges.
fn merge(runs: &[(u64, u64)]) -> Vec<Range<u64>> {
    let mut sorted: Vec<(u64, u64)> = runs.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<Range<u64>> = Vec::new();
    for (s, e) in sorted {
        match out.last_mut() {
            Some(last) if s <= last.end => last.end = last.end.max(e),
            _ => out.push(s..e),
        }
    }
    out
}

/// The parts of `a` not in `b` (both sorted and disjoint).
fn minus(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    for r in a {
        let mut start = r.start;
        for x in b.iter().filter(|x| x.end > r.start && x.start < r.end) {
            if x.start > start {
                out.push(start..x.start);
            }
            start = start.max(x.end);
        }
        if start < r.end {
            out.push(start..r.end);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Range arithmetic: merging overlapping and touching ranges, and taking one set from
    /// another, against a per-bucket reference.
    #[test]
    fn merge_and_minus_match_bucket_sets() {
        let mut rng = fs_core::rng::Rng::new(7);
        for _ in 0..500 {
            let runs = |rng: &mut fs_core::rng::Rng| -> Vec<(u64, u64)> {
                (0..rng.range(0..6))
                    .map(|_| {
                        let s = rng.below(60);
                        (s, s + rng.range(1..12))
                    })
                    .collect()
            };
            let (a, b) = (runs(&mut rng), runs(&mut rng));
            let set = |runs: &[(u64, u64)]| runs.iter().flat_map(|&(s, e)| s..e).collect::<BTreeSet<u64>>();
            let (ma, mb) = (merge(&a), merge(&b));
            assert_eq!(ma.iter().flat_map(|r| r.clone()).collect::<BTreeSet<_>>(), set(&a));
            assert!(ma.windows(2).all(|w| w[0].end < w[1].start), "{ma:?}");
            let want: BTreeSet<u64> = set(&a).difference(&set(&b)).copied().collect();
            assert_eq!(minus(&ma, &mb).iter().flat_map(|r| r.clone()).collect::<BTreeSet<_>>(), want);
        }
    }
}
