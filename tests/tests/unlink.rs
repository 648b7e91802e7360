//! Unlinking a file whose extents do not fit one transaction: the name goes at once with the
//! inode listed in deleted_inodes, the data in as many transactions as it needs, and whatever
//! an interruption leaves is finished when the file layer next attaches (bcachefs's
//! delete_dead_inodes pass).

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use bcsim::files::{CHUNK_BYTES, Files, ROOT_INO};
use bcsim::fs::Fs;
use bcsim::recovery::{MountOpts, mount};
use bcsim_tests::{fsck_n, open_small, two_small_devices};
use fs_core::bkey::{Bkey, Dirent, Inode, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::dev::SharedDevice;
use fs_core::fsck_err::FsckErr;
use fs_core::sb::DeviceSet;

const DEV_BYTES: u64 = 32 << 20;

/// 64 KiB buckets: journal entries are at most a bucket, so a file larger than one transaction
/// fits the devices.
fn formatted() -> Vec<SharedDevice> {
    two_small_devices(DEV_BYTES, 64 << 10)
}

/// A file with more extents than one transaction can delete, in a fresh filesystem.
fn big_file(fs: &mut Fs, files: &mut Files) -> (u64, u64) {
    let ino = files.create(fs, ROOT_INO, "big", false).unwrap();
    let chunks = (fs.transaction_capacity() / 32 + 64) as u64;
    for c in 0..chunks {
        files.write(fs, ino, c, c).unwrap();
    }
    (ino, chunks)
}

fn extents_of(fs: &mut Fs, ino: u64) -> usize {
    fs.list(BtreeId::Extents, Bpos::new(ino, 0, 0), Bpos::new(ino, u64::MAX, u32::MAX)).unwrap().len()
}

/// Unlinking a file too large for one transaction succeeds: name, inode and every extent are
/// gone, its buckets come back (a second file as large fits after it), and fsck finds the
/// alloc records and link counts right.
#[test]
fn unlink_of_a_file_larger_than_a_transaction() {
    let devs = formatted();
    let mut fs = open_small(&devs);
    let mut files = Files::new(&mut fs).unwrap();
    let (big, chunks) = big_file(&mut fs, &mut files);
    files.unlink(&mut fs, ROOT_INO, "big").unwrap();
    assert_eq!(Files::lookup(&mut fs, ROOT_INO, "big").unwrap(), None);
    assert!(Files::inode(&mut fs, big).unwrap().is_none());
    assert_eq!(extents_of(&mut fs, big), 0);
    assert!(fs.list(BtreeId::DeletedInodes, Bpos::MIN, Bpos::MAX).unwrap().is_empty());
    // The space is usable again: the same amount of data twice more needs it.
    assert!(3 * chunks * CHUNK_BYTES as u64 > 2 * DEV_BYTES, "test file too small to need reuse");
    for n in 0..2 {
        let ino = files.create(&mut fs, ROOT_INO, &format!("again{n}"), false).unwrap();
        for c in 0..chunks {
            files.write(&mut fs, ino, c, c + 7).unwrap_or_else(|e| panic!("file {n} chunk {c}: {e}"));
        }
        files.unlink(&mut fs, ROOT_INO, &format!("again{n}")).unwrap();
    }
    fs.unmount().unwrap();
    let report = fsck_n(&devs);
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

/// A crash after the name went but before the data did (the first transaction of a large
/// unlink, made durable, then no more): fsck -n sees an inode being deleted, not a namespace
/// error; the file layer's next attach after recovery deletes the data and the inode, and fsck
/// is clean.
#[test]
fn an_interrupted_unlink_is_finished_by_the_next_mount() {
    let devs = formatted();
    let mut fs = open_small(&devs);
    let mut files = Files::new(&mut fs).unwrap();
    let (big, chunks) = big_file(&mut fs, &mut files);
    // What unlink commits first, by hand: the dirent goes, the inode stays with link count 0
    // and is listed as dead.
    let mut inode: Inode = Files::inode(&mut fs, big).unwrap().unwrap();
    inode.nlink = 0;
    fs.commit_updates(vec![
        (BtreeId::Dirents, Bkey::whiteout(Bpos::new(ROOT_INO, Dirent::name_hash("big"), 0))),
        (BtreeId::Inodes, Bkey::new(Bpos::new(0, big, 0), KeyType::Inode, inode.encode())),
        (BtreeId::DeletedInodes, Bkey::new(Bpos::new(0, big, 0), KeyType::Set, Vec::new())),
    ])
    .unwrap();
    fs.fsync().unwrap();
    drop(fs); // crash: no unmount

    // (A crash also leaves the alloc keys of btree nodes allocated since the last write-back
    // for recovery to recount; only the namespace matters here.)
    let report = fsck_n(&devs);
    let namespace = [FsckErr::InodeUnreachable, FsckErr::InodeWrongNlink, FsckErr::DirentToMissingInode];
    let wrong: Vec<_> = report.problems.iter().filter(|p| namespace.contains(&p.err)).collect();
    assert!(wrong.is_empty(), "a pending deletion is not an error: {wrong:#?}");

    let mut m = mount(DeviceSet::open(devs.clone()).unwrap(), &MountOpts::default()).unwrap();
    assert_eq!(extents_of(&mut m.fs, big) as u64, chunks, "recovery alone keeps the data");
    Files::new(&mut m.fs).unwrap();
    assert!(Files::inode(&mut m.fs, big).unwrap().is_none());
    assert_eq!(extents_of(&mut m.fs, big), 0);
    assert!(m.fs.list(BtreeId::DeletedInodes, Bpos::MIN, Bpos::MAX).unwrap().is_empty());
    m.fs.unmount().unwrap();
    let report = fsck_n(&devs);
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}
