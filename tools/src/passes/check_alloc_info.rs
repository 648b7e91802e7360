//! `check_alloc_info` (10): the freespace and need_discard btrees must mirror the alloc keys
//! exactly. Before anything was written it compares with the alloc keys as check_allocations
//! repaired them; once the filesystem writes, with the alloc btree as it now is.

use std::collections::{BTreeMap, BTreeSet};

use fs_core::bkey::{AllocV4, Bkey, DataType, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::error::Result;
use fs_core::fsck_err::FsckErr;
use fs_core::recovery_pass::RecoveryPass;

use super::{Finding, RecoveryCtx};
use crate::fs::read_alloc_keys;

pub(super) fn run(ctx: &mut RecoveryCtx) -> Result<()> {
    let view = if ctx.fs.is_some() { None } else { ctx.alloc_view.take() };
    let findings = ctx.with_view(|v| {
        let alloc: BTreeMap<Bpos, AllocV4> = match view {
            Some(a) => a,
            None => read_alloc_keys(v.t, v.overlay)?.into_iter().collect(),
        };
        let mut findings = Vec::new();
        let index = [
            (BtreeId::Freespace, DataType::Free, FsckErr::FreespaceKeyWrong),
            (BtreeId::NeedDiscard, DataType::NeedDiscard, FsckErr::NeedDiscardKeyWrong),
        ];
        for (btree, dt, err) in index {
            let mut have = BTreeSet::new();
            v.t.for_each_key(btree, v.overlay, |k| {
                have.insert(k.pos);
                Ok(())
            })?;
            let want: BTreeSet<Bpos> =
                alloc.iter().filter(|(_, a)| a.data_type == dt).map(|(p, _)| *p).collect();
            for p in want.difference(&have) {
                findings.push(Finding::new(
                    err,
                    format!("bucket {}:{} is {dt} but has no {btree} key", p.inode, p.offset),
                    Some(vec![(btree, Bkey::new(*p, KeyType::Set, Vec::new()))]),
                ));
            }
            for p in have.difference(&want) {
                findings.push(Finding::new(
                    err,
                    format!("{btree} key for bucket {}:{} that is not {dt}", p.inode, p.offset),
                    Some(vec![(btree, Bkey::whiteout(*p))]),
                ));
            }
        }
        Ok(findings)
    })?;
    let fixes = ctx.record(RecoveryPass::CheckAllocInfo, findings);
    ctx.commit_fixes(fixes)
}
