//! `check_topology` (4): every node of every btree read and validated; each level must tile the
//! key space from POS_MIN to POS_MAX. The nodes it read are kept for check_allocations, which
//! requires it. What it finds is reported, not repaired: bcsim has no node scan to rebuild from.

use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::{Btrees, NodeInfo};
use fs_core::error::{ErrCode, Result};
use fs_core::fsck_err::FsckErr;

use super::{Finding, RecoveryCtx};

pub(super) fn run(ctx: &mut RecoveryCtx) -> Result<()> {
    let mut findings = Vec::new();
    let nodes = ctx.with_view(|v| check(v.t, &mut findings))?;
    ctx.topology = nodes;
    let fixes = ctx.record(findings);
    debug_assert!(fixes.is_empty(), "topology findings carry no repairs");
    Ok(())
}

/// Reads every node of every btree and checks that each level tiles the key space.
fn check(t: &mut Btrees, findings: &mut Vec<Finding>) -> Result<Vec<NodeInfo>> {
    let mut all = Vec::new();
    for &btree in BtreeId::ALL {
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
            findings.push(Finding::new(FsckErr::BtreeNodeReadError, line, None));
        }
        all.extend(infos);
    }
    Ok(all)
}
