//! A transaction or data write blocked on the allocator waits for it, which means running what
//! the waiter waits for (write-back, journal flush, discards of the buckets emptied so far,
//! on the devices too with `discard`) and trying again; when that frees nothing the error comes
//! back instead of a wait that would never end.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use bcsim::files::{CHUNK_BYTES, Files, ROOT_INO, chunk_data};
use bcsim_tests::{fsck_n, open_small, two_small_devices};
use fs_core::bkey::DataType;
use fs_core::dev::SharedDevice;
use fs_core::error::ErrCode;
use fs_core::opts::{OptId, OptValue};

const DEV_BYTES: u64 = 24 << 20;
/// Journal entries are at most a bucket: 64 KiB buckets keep a file larger than one transaction
/// within the devices.
const BUCKET: u64 = 64 << 10;

fn formatted() -> Vec<SharedDevice> {
    two_small_devices(DEV_BYTES, BUCKET)
}

/// Chunks the devices could hold at most, ignoring metadata.
fn capacity_chunks() -> u64 {
    2 * DEV_BYTES / CHUNK_BYTES as u64
}

/// Overwriting the same eight chunks until one and a half times the devices' size has been
/// written works only if emptied buckets come back: each time the allocator runs dry, the
/// write waits (write-back, flush, discards) and goes on. The last data written reads back,
/// and a forced fsck afterwards finds nothing wrong with the alloc, freespace and need_discard
/// records.
#[test]
fn overwrites_past_capacity_reuse_discarded_buckets() {
    let devs = formatted();
    let mut fs = open_small(&devs);
    let mut files = Files::new(&mut fs).unwrap();
    let ino = files.create(&mut fs, ROOT_INO, "f", false).unwrap();
    let writes = capacity_chunks() * 3 / 2;
    for i in 0..writes {
        files.write(&mut fs, ino, i % 8, i).unwrap_or_else(|e| panic!("write {i} of {writes}: {e}"));
    }
    for chunk in 0..8 {
        let seed = writes - 8 + (chunk + 8 - writes % 8) % 8;
        assert_eq!(Files::read(&mut fs, ino, chunk).unwrap(), Some(chunk_data(seed, chunk)), "chunk {chunk}");
    }
    fs.unmount().unwrap();
    let report = fsck_n(&devs);
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

/// Buckets the wait discards are discarded on the device too, when the `discard` option is on:
/// every free bucket whose gen moved (it was discarded) reads back as zeros, so no stale data
/// survives in it. With `nodiscard` the allocator still reuses them, but the old bytes stay.
#[test]
fn discard_option_decides_whether_devices_see_discards() {
    for discard in [true, false] {
        let devs = formatted();
        let mut fs = open_small(&devs);
        fs.opts().set(OptId::Discard, OptValue::U64(u64::from(discard))).unwrap();
        let mut files = Files::new(&mut fs).unwrap();
        let ino = files.create(&mut fs, ROOT_INO, "f", false).unwrap();
        for i in 0..capacity_chunks() {
            files.write(&mut fs, ino, i % 8, i).unwrap();
        }
        let alloc = fs.alloc().cloned().unwrap();
        let mut discarded = 0;
        let mut zeroed = 0;
        for (dev, d) in devs.iter().enumerate() {
            for bucket in 0..DEV_BYTES / BUCKET {
                // The last bucket is not whole (a superblock copy sits at the end): none there.
                let Some(st) = alloc.bucket(dev as u8, bucket) else { continue };
                if st.data_type != DataType::Free || st.bucket_gen == 0 {
                    continue;
                }
                discarded += 1;
                let mut buf = vec![1u8; BUCKET as usize];
                d.read_at(&mut buf, bucket * BUCKET).unwrap();
                zeroed += u32::from(buf.iter().all(|&b| b == 0));
            }
        }
        assert!(discarded > 0, "discard={discard}: nothing was discarded, the test checks nothing");
        if discard {
            assert_eq!(zeroed, discarded, "discard=on: discarded buckets still hold data");
        } else {
            assert_eq!(zeroed, 0, "discard=off: a discarded bucket was zeroed on the device");
        }
        fs.unmount().unwrap();
    }
}

/// With every chunk written still live nothing can be discarded: the wait frees nothing, and
/// the write that finds no bucket fails with an allocator error (freelist_empty, or
/// operation_blocked for a btree node) before more chunks than the devices hold were written.
#[test]
fn a_full_filesystem_fails_writes_instead_of_waiting_forever() {
    let devs = formatted();
    let mut fs = open_small(&devs);
    let mut files = Files::new(&mut fs).unwrap();
    let ino = files.create(&mut fs, ROOT_INO, "f", false).unwrap();
    let mut written = 0;
    let err = loop {
        match files.write(&mut fs, ino, written, written) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(
            written <= capacity_chunks(),
            "wrote {written} chunks into {} chunks of space",
            capacity_chunks()
        );
    };
    assert!(err.matches(ErrCode::FreelistEmpty) || err.matches(ErrCode::OperationBlocked), "{err}");
    assert!(written > capacity_chunks() / 2, "failed after only {written} chunks: {err}");
}

/// Regression: the file layer once accounted an extent's sectors away before the transaction
/// that drops the extent committed, so a failed transaction (here: a truncate too large for one
/// journal entry) left buckets looking empty under a live extent, and a wait discarded them.
/// Writing another file until the filesystem is full must leave every chunk of the still-linked
/// file readable, and the failed unlink must leave no sector count behind: a forced fsck after
/// unmount finds the alloc records right.
#[test]
fn a_wait_never_discards_a_bucket_a_live_extent_points_into() {
    let devs = formatted();
    let mut fs = open_small(&devs);
    let mut files = Files::new(&mut fs).unwrap();
    let big = files.create(&mut fs, ROOT_INO, "big", false).unwrap();
    // More extents than one transaction can delete.
    let chunks = (fs.transaction_capacity() / 32 + 64) as u64;
    for c in 0..chunks {
        files.write(&mut fs, big, c, c).unwrap();
    }
    let truncated = files.truncate(&mut fs, big, 0);
    assert!(truncated.is_err(), "the truncate was expected not to fit one transaction");
    let other = files.create(&mut fs, ROOT_INO, "other", false).unwrap();
    let mut c = 0;
    while files.write(&mut fs, other, c, 5000 + c).is_ok() {
        c += 1;
    }
    let lost: Vec<u64> = (0..chunks)
        .filter(|&c| Files::read(&mut fs, big, c).ok().flatten() != Some(chunk_data(c, c)))
        .collect();
    assert!(lost.is_empty(), "{} of {chunks} chunks of 'big' lost, first {:?}", lost.len(), lost.first());
    fs.unmount().unwrap();
    let report = fsck_n(&devs);
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}
