//! `check_nlinks` (31): each inode's link count must match the dirents naming it (directories:
//! 2 plus their subdirectories). An inode no dirent names is unreachable — unless an unlink is
//! still deleting it (link count 0, listed in deleted_inodes): the next mount finishes those.
//! An unreachable inode is reattached in the root directory as `#INUM` (e2fsck's name in
//! lost+found; bcsim has no lost+found), with its link count set to match.

use std::collections::{BTreeSet, HashMap};

use fs_core::bkey::fs::{DT_DIR, DT_REG};
use fs_core::bkey::{Bkey, Dirent, Inode, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::error::Result;
use fs_core::fsck_err::FsckErr;

use super::check_dirents::inodes;
use super::{Finding, RecoveryCtx};
use crate::files::{ROOT_INO, dirent_pos};

pub(super) fn run(ctx: &mut RecoveryCtx) -> Result<()> {
    let findings = ctx.with_view(|mut v| {
        let inodes = inodes(&mut v)?;
        let mut dying = BTreeSet::new();
        v.for_each_key(BtreeId::DeletedInodes, |k| {
            dying.insert(k.pos.offset);
            Ok(())
        })?;
        let mut links: HashMap<u64, u32> = HashMap::new();
        let mut subdirs: HashMap<u64, u32> = HashMap::new();
        let mut taken: BTreeSet<Bpos> = BTreeSet::new();
        v.for_each_key(BtreeId::Dirents, |k| {
            taken.insert(k.pos);
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
        // The root goes last: reattaching directories adds to its subdirectories.
        let root = inodes.get_key_value(&ROOT_INO);
        for (&inum, inode) in inodes.iter().filter(|(i, _)| **i != ROOT_INO).chain(root) {
            let named = links.get(&inum).copied().unwrap_or(0);
            if named == 0 && inode.nlink == 0 && dying.contains(&inum) {
                continue;
            }
            if named == 0 && inum != ROOT_INO {
                let (name, pos) = free_name(&mut taken, inum);
                let d_type = if inode.is_dir() { DT_DIR } else { DT_REG };
                let dirent = Dirent { target: inum, d_type, name: name.clone() };
                let mut fix = vec![(BtreeId::Dirents, Bkey::new(pos, KeyType::Dirent, dirent.encode()))];
                let want = if inode.is_dir() { 2 + subdirs.get(&inum).copied().unwrap_or(0) } else { 1 };
                if inode.nlink != want {
                    fix.push(inode_key(inum, Inode { nlink: want, ..*inode }));
                }
                if inode.is_dir() {
                    *subdirs.entry(ROOT_INO).or_default() += 1;
                }
                findings.push(Finding::new(
                    FsckErr::InodeUnreachable,
                    format!("inode {inum} is not in any directory: reattached as /{name}"),
                    Some(fix),
                ));
                continue;
            }
            let want = if inode.is_dir() { 2 + subdirs.get(&inum).copied().unwrap_or(0) } else { named };
            if inode.nlink != want {
                let fixed = Inode { nlink: want, ..*inode };
                findings.push(Finding::new(
                    FsckErr::InodeWrongNlink,
                    format!("inode {inum} has link count {}, should be {want}", inode.nlink),
                    Some(vec![inode_key(inum, fixed)]),
                ));
            }
        }
        Ok(findings)
    })?;
    let fixes = ctx.record(findings);
    ctx.commit_fixes(fixes)
}

fn inode_key(inum: u64, inode: Inode) -> (BtreeId, Bkey) {
    (BtreeId::Inodes, Bkey::new(Bpos::new(0, inum, 0), KeyType::Inode, inode.encode()))
}

/// A name in the root directory for reattaching `inum`: `#INUM`, or `#INUM.N` when that name's
/// hash is taken. Marks its position taken.
fn free_name(taken: &mut BTreeSet<Bpos>, inum: u64) -> (String, Bpos) {
    let mut n = 0u32;
    loop {
        let name = if n == 0 { format!("#{inum}") } else { format!("#{inum}.{n}") };
        let pos = dirent_pos(ROOT_INO, &name);
        if taken.insert(pos) {
            return (name, pos);
        }
        n += 1;
    }
}
