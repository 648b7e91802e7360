//! `check_dirents` (27): every dirent must point at an inode that exists; one that does not is
//! removed. The inodes it read are kept for check_nlinks.

use std::collections::BTreeMap;

use fs_core::bkey::{Bkey, Dirent, Inode, KeyType};
use fs_core::bpos::BtreeId;
use fs_core::error::Result;
use fs_core::fsck_err::FsckErr;

use super::{Finding, RecoveryCtx, View};

pub(super) fn run(ctx: &mut RecoveryCtx) -> Result<()> {
    let findings = ctx.with_view(|mut v| {
        let inodes = inodes(&mut v)?;
        let mut findings = Vec::new();
        v.for_each_key(BtreeId::Dirents, |k| {
            let d = Dirent::decode(k.val).map_err(|e| e.btree(BtreeId::Dirents).pos(k.pos))?;
            if !inodes.contains_key(&d.target) {
                findings.push(Finding::new(
                    FsckErr::DirentToMissingInode,
                    format!(
                        "dirent '{}' in directory {} points at missing inode {}",
                        d.name, k.pos.inode, d.target
                    ),
                    Some(vec![(BtreeId::Dirents, Bkey::whiteout(k.pos))]),
                ));
            }
            Ok(())
        })?;
        Ok(findings)
    })?;
    let fixes = ctx.record(findings);
    ctx.commit_fixes(fixes)
}

/// Every inode, by number.
pub(super) fn inodes(v: &mut View<'_>) -> Result<BTreeMap<u64, Inode>> {
    let mut inodes = BTreeMap::new();
    v.for_each_key(BtreeId::Inodes, |k| {
        if k.ty == KeyType::Inode {
            inodes
                .insert(k.pos.offset, Inode::decode(k.val).map_err(|e| e.btree(BtreeId::Inodes).pos(k.pos))?);
        }
        Ok(())
    })?;
    Ok(inodes)
}
