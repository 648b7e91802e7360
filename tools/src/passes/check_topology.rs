//! `check_topology` (4): every node of every btree read and validated; each level must tile the
//! key space from POS_MIN to POS_MAX. The nodes it read are kept for check_allocations, which
//! requires it.
//!
//! A node none of whose replicas reads is dropped (`btree_node_unreadable`), and so is a pointer
//! that leads to another node than it describes (`btree_node_topology_bad_min_key` or
//! `_max_key`: a duplicated pointer reaching a neighbour): an empty node takes its place and range, its keys are lost, and the passes after it repair what follows from
//! that (link counts, alloc info). `fsck -n` drops it in memory only, so that the later checks
//! run and report; a run that may fix it (`fsck -y`) writes the empty node at a new place; any
//! other run stops here, before anything is written, with the error not fixed. Other topology
//! errors are reported, not repaired: bcsim has no node scan to rebuild from.

use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::{Btrees, NodeInfo, READ_AROUND};
use fs_core::error::{ErrCode, Result};
use fs_core::fsck_err::FsckErr;
use std::collections::BTreeSet;

use super::{Finding, Mode, Problem, RecoveryCtx};

/// The findings of nodes dropped: the btree in memory has placeholders for them.
const DROPPED: [FsckErr; 3] =
    [FsckErr::BtreeNodeUnreadable, FsckErr::BtreeNodeTopologyBadMinKey, FsckErr::BtreeNodeTopologyBadMaxKey];

pub(super) fn run(ctx: &mut RecoveryCtx) -> Result<()> {
    let mut findings = Vec::new();
    let mut read_around = Vec::new();
    let mut lost = BTreeSet::new();
    let (nodes, absent) = ctx.with_view(|v| {
        Ok((check(v.t, &mut findings, &mut read_around, &mut lost)?, v.t.take_absent_replica_reads()))
    })?;
    if ctx.set_ref()?.missing().is_empty() {
        findings.extend(short_replicas(ctx, &nodes)?);
    }
    if absent > 0 {
        ctx.log.push(format!(
            "check_topology: {absent} nodes read without their replica on an absent member (degraded); rewritten on write-back"
        ));
    }
    let unfixed = findings.iter().any(|f| DROPPED.contains(&f.err) && !ctx.may_fix(f.err));
    if unfixed && ctx.mode != Mode::Check {
        // The empty nodes are in memory only: stopping before the filesystem may write keeps
        // them there.
        ctx.stop = Some(
            "btree nodes that cannot be read or trusted are dropped only by fsck -y or a mount with errors=fix_safe"
                .to_owned(),
        );
    }
    ctx.keys_per_btree.clear();
    for n in nodes.iter().filter(|n| n.level == 0) {
        *ctx.keys_per_btree.entry(n.btree).or_default() += n.nr_keys;
    }
    ctx.topology = nodes;
    // A node read from another replica was marked for a rewrite from it at the next
    // write-back: any run that writes repairs it, whatever it may fix otherwise.
    let writes = ctx.mode.writes();
    for line in read_around {
        let msg = if writes { format!("{line}: rewritten from the good replica") } else { line };
        ctx.problems.push(Problem { err: FsckErr::BtreeNodeReadError, msg, fixed: writes, count: 1 });
    }
    let fixes = ctx.record(findings);
    debug_assert!(fixes.is_empty(), "topology repairs are made in the btrees, not as updates");
    if ctx.stop.is_none() {
        lost_data(ctx, &lost);
    }
    Ok(())
}

/// The btrees that lost nodes lost keys: flagged, and the passes that rebuild what follows
/// from that asked for ([`RecoveryCtx::lost_data`]).
fn lost_data(ctx: &mut RecoveryCtx, lost: &BTreeSet<BtreeId>) {
    for &btree in lost {
        ctx.log.push(format!("flagging btree {btree} lost data"));
        ctx.lost_data(btree);
    }
}

/// Nodes a degraded mount wrote short of `metadata_replicas` (run with every member present):
/// each is marked for a rewrite, which places it with the replicas the allocator gives now.
fn short_replicas(ctx: &mut RecoveryCtx, nodes: &[NodeInfo]) -> Result<Vec<Finding>> {
    let want = ctx.opts.with(fs_core::opts::Options::metadata_replicas);
    let durability: Vec<u64> = ctx.set_ref()?.sb.members.iter().map(|m| u64::from(m.durability)).collect();
    let fixing = ctx.mode.writes() && ctx.may_fix(FsckErr::ReplicasWrittenShort);
    let mut findings = Vec::new();
    for n in nodes.iter().filter(|n| !n.ptrs.is_empty()) {
        let have: u64 = n.ptrs.iter().filter_map(|p| durability.get(usize::from(p.dev))).sum();
        if have >= want {
            continue;
        }
        let fix = if fixing {
            ctx.with_view(|v| v.t.rewrite_later(n.btree, n.level, n.max_key))?.then(Vec::new)
        } else {
            None
        };
        let done = if fix.is_some() { ": rewritten with every member" } else { "" };
        findings.push(Finding::new(
            FsckErr::ReplicasWrittenShort,
            format!(
                "btree {} level {} {}..{}: {have} replicas of metadata_replicas={want}{done}",
                n.btree, n.level, n.min_key, n.max_key
            ),
            fix,
        ));
    }
    Ok(findings)
}

/// Drops the unreadable nodes of every btree, then reads every node and checks that each level
/// tiles the key space. Nodes read around a bad replica go to `read_around`, by their log line.
fn check(
    t: &mut Btrees,
    findings: &mut Vec<Finding>,
    read_around: &mut Vec<String>,
    lost_btrees: &mut BTreeSet<BtreeId>,
) -> Result<Vec<NodeInfo>> {
    let mut all = Vec::new();
    for &btree in BtreeId::ALL {
        for lost in t.drop_unreadable(btree)? {
            lost_btrees.insert(btree);
            let (err, what) = if lost.error.matches(ErrCode::BtreeNodeBadMinKey) {
                (FsckErr::BtreeNodeTopologyBadMinKey, "its pointer leads to another node")
            } else if lost.error.matches(ErrCode::BtreeNodeBadMaxKey)
                || lost.error.matches(ErrCode::BtreeNodeBadLevel)
            {
                (FsckErr::BtreeNodeTopologyBadMaxKey, "its pointer leads to another node")
            } else {
                (FsckErr::BtreeNodeUnreadable, "no replica reads")
            };
            findings.push(Finding::new(
                err,
                format!(
                    "btree {btree} level {} {}..{}: {what} ({}): dropped, its keys are lost",
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
            if line.contains(READ_AROUND) {
                read_around.push(line);
            } else {
                findings.push(Finding::new(FsckErr::BtreeNodeReadError, line, None));
            }
        }
        all.extend(infos);
    }
    Ok(all)
}
