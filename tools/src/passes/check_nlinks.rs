//! `check_nlinks` (31): each inode's link count must match the dirents naming it (directories:
//! 2 plus their subdirectories). An inode no dirent names is unreachable — unless an unlink is
//! still deleting it (link count 0, listed in deleted_inodes): the next mount finishes those.

use std::collections::{BTreeSet, HashMap};

use fs_core::bkey::{Bkey, Dirent, Inode, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::error::Result;
use fs_core::fsck_err::FsckErr;

use super::check_dirents::inodes;
use super::{Finding, RecoveryCtx};

pub(super) fn run(ctx: &mut RecoveryCtx) -> Result<()> {
    let findings = ctx.with_view(|mut v| {
        let inodes = inodes(&mut v)?;
        let mut dying = BTreeSet::new();
        v.t.for_each_key(BtreeId::DeletedInodes, v.overlay, |k| {
            dying.insert(k.pos.offset);
            Ok(())
        })?;
        let mut links: HashMap<u64, u32> = HashMap::new();
        let mut subdirs: HashMap<u64, u32> = HashMap::new();
        v.t.for_each_key(BtreeId::Dirents, v.overlay, |k| {
            let d = Dirent::decode(k.val).map_err(|e| e.btree(BtreeId::Dirents).pos(k.pos))?;
            if inodes.contains_key(&d.target) {
                *links.entry(d.target).or_default() += 1;
                if d.d_type == fs_core::bkey::fs::DT_DIR {
                    *subdirs.entry(k.pos.inode).or_default() += 1;
                }
            }
            Ok(())
        })?;
        let mut findings = Vec::new();
        for (&inum, inode) in &inodes {
            let named = links.get(&inum).copied().unwrap_or(0);
            if named == 0 && inode.nlink == 0 && dying.contains(&inum) {
                continue;
            }
            if named == 0 && inum != crate::files::ROOT_INO {
                findings.push(Finding::new(
                    FsckErr::InodeUnreachable,
                    format!("inode {inum} is not in any directory"),
                    None,
                ));
                continue;
            }
            let want = if inode.is_dir() { 2 + subdirs.get(&inum).copied().unwrap_or(0) } else { named };
            if inode.nlink != want {
                let fixed = Inode { nlink: want, ..*inode };
                findings.push(Finding::new(
                    FsckErr::InodeWrongNlink,
                    format!("inode {inum} has link count {}, should be {want}", inode.nlink),
                    Some(vec![(
                        BtreeId::Inodes,
                        Bkey::new(Bpos::new(0, inum, 0), KeyType::Inode, fixed.encode()),
                    )]),
                ));
            }
        }
        Ok(findings)
    })?;
    let fixes = ctx.record(findings);
    ctx.commit_fixes(fixes)
}
