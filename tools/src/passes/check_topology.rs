//! `check_topology` (4): every node of every btree read and validated; each level must tile the
//! key space from POS_MIN to POS_MAX. The nodes it read are kept for check_allocations, which
//! requires it.
//!
//! A node none of whose replicas reads is dropped (`btree_node_unreadable`): an empty node takes
//! its place and range, its keys are lost, and the passes after it repair what follows from
//! that (link counts, alloc info). `fsck -n` drops it in memory only, so that the later checks
//! run and report; a run that may fix it (`fsck -y`) writes the empty node at a new place; any
//! other run stops here, before anything is written, with the error not fixed. Other topology
//! errors are reported, not repaired: bcsim has no node scan to rebuild from.

use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::{Btrees, NodeInfo, READ_AROUND};
use fs_core::error::{ErrCode, Result};
use fs_core::fsck_err::FsckErr;

use super::{Finding, Mode, Problem, RecoveryCtx};

pub(super) fn run(ctx: &mut RecoveryCtx) -> Result<()> {
    let mut findings = Vec::new();
    let (nodes, absent) =
        ctx.with_view(|v| Ok((check(v.t, &mut findings)?, v.t.take_absent_replica_reads())))?;
    let set = ctx.set_ref()?;
    if set.missing().is_empty() {
        // Nodes a degraded mount wrote short of metadata_replicas: rewritten with all members.
        let want = ctx.opts.with(fs_core::opts::Options::metadata_replicas);
        let member_durability: Vec<u64> = set.sb.members.iter().map(|m| u64::from(m.durability)).collect();
        let durability = |n: &NodeInfo| -> u64 {
            n.ptrs.iter().filter_map(|p| member_durability.get(usize::from(p.dev))).sum()
        };
        let short: Vec<(&NodeInfo, u64)> = nodes
            .iter()
            .map(|n| (n, durability(n)))
            .filter(|&(n, d)| !n.ptrs.is_empty() && d < want)
            .collect();
        let writes = ctx.mode.writes();
        for (n, have) in short {
            let fix = if writes && ctx.may_fix(FsckErr::ReplicasWrittenShort) {
                ctx.with_view(|v| v.t.rewrite_later(n.btree, n.level, n.max_key))?.then(Vec::new)
            } else {
                None
            };
            findings.push(Finding::new(
                FsckErr::ReplicasWrittenShort,
                format!(
                    "btree {} level {} {}..{}: {} replicas of metadata_replicas={want}{}",
                    n.btree,
                    n.level,
                    n.min_key,
                    n.max_key,
                    have,
                    if fix.is_some() { ": rewritten with every member" } else { "" }
                ),
                fix,
            ));
        }
    }
    if absent > 0 {
        ctx.log.push(format!(
            "check_topology: {absent} nodes read without their replica on an absent member (degraded); rewritten on write-back"
        ));
    }
    let lost = findings.iter().any(|f| f.err == FsckErr::BtreeNodeUnreadable);
    if lost && ctx.mode != Mode::Check && !ctx.may_fix(FsckErr::BtreeNodeUnreadable) {
        // The empty nodes are in memory only: stopping before the filesystem may write keeps
        // them there.
        ctx.stop = Some("btree nodes no replica of which reads are dropped only by fsck -y".to_owned());
    }
    ctx.topology = nodes;
    let writes = ctx.mode.writes();
    let (read_around, findings): (Vec<_>, Vec<_>) =
        findings.into_iter().partition(|f| f.err == FsckErr::BtreeNodeReadError && f.fix.is_some());
    for f in read_around {
        let msg = if writes { format!("{}: rewritten from the good replica", f.msg) } else { f.msg };
        ctx.problems.push(Problem { err: f.err, msg, fixed: writes, count: 1 });
    }
    let fixes = ctx.record(findings);
    debug_assert!(fixes.is_empty(), "topology repairs are made in the btrees, not as updates");
    Ok(())
}

/// Drops the unreadable nodes of every btree, then reads every node and checks that each level
/// tiles the key space.
fn check(t: &mut Btrees, findings: &mut Vec<Finding>) -> Result<Vec<NodeInfo>> {
    let mut all = Vec::new();
    for &btree in BtreeId::ALL {
        for lost in t.drop_unreadable(btree)? {
            findings.push(Finding::new(
                FsckErr::BtreeNodeUnreadable,
                format!(
                    "btree {btree} level {} {}..{}: no replica reads ({}): dropped, its keys are lost",
                    lost.level, lost.min_key, lost.max_key, lost.error
                ),
                Some(Vec::new()),
            ));
        }
        let infos = match t.node_infos(btree) {
            Ok(i) => i,
            Err(e) if e.matches(ErrCode::Eio) => {
                findings.push(Finding::new(FsckErr::BtreeNodeReadError, format!("btree {btree}: {e}"), None));
                continue;
            }
            Err(e) => return Err(e),
        };
        let max_level = infos.iter().map(|n| n.level).max().unwrap_or(0);
        for level in 0..=max_level {
            let mut at: Vec<_> = infos.iter().filter(|n| n.level == level).collect();
            if at.is_empty() {
                continue;
            }
            at.sort_by_key(|n| n.min_key);
            let mut expect = Bpos::MIN;
            for n in &at {
                if n.min_key != expect {
                    findings.push(Finding::new(
                        FsckErr::BtreeNodeTopologyBadMinKey,
                        format!(
                            "btree {btree} level {level}: node {}..{} should start at {expect}",
                            n.min_key, n.max_key
                        ),
                        None,
                    ));
                }
                expect = n.max_key.successor();
            }
            if at.last().is_some_and(|n| n.max_key != Bpos::MAX) {
                findings.push(Finding::new(
                    FsckErr::BtreeNodeTopologyBadMaxKey,
                    format!("btree {btree} level {level}: last node does not end at POS_MAX"),
                    None,
                ));
            }
        }
        for line in t.take_log() {
            // A node read from another replica is rewritten from it at the next write-back
            // (the read marked it): any run that writes repairs it.
            let fix = line.contains(READ_AROUND).then(Vec::new);
            findings.push(Finding::new(FsckErr::BtreeNodeReadError, line, fix));
        }
        all.extend(infos);
    }
    Ok(all)
}
