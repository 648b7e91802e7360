//! `alloc_read`: the allocator rebuilt from the alloc btree at mount.
//!
//! Keys are taken verbatim (bcachefs replays bucket states as they are, without triggers), after
//! checks that a key could have been written by this allocator: a key that contradicts the device
//! layout or itself is a typed error naming its position, left for fsck to repair, never
//! silently rewritten. A bucket without a key is unused: free, gen 0. Only the keys there are
//! are read, so an empty terabyte costs next to nothing; the freespace keys on disk are taken to
//! be the runs of free buckets the alloc keys leave (check_alloc_info checks that they are),
//! except that a free bucket they leave out is held back ([`Allocator::hold_unlisted`]): the
//! alloc key may be the wrong one, and bcachefs, allocating from the freespace btree, would
//! not hand that bucket out.
//!
//! Not persistent, so not rebuilt: the in-memory `written` mark (a bucket whose key says
//! allocated with 0 sectors counts as never written: nothing durable points into it) and the
//! open btree buckets (partly used btree buckets stay as they are and are not filled further).

use std::collections::{BTreeMap, BTreeSet};

use fs_core::bkey::alloc::{AllocV4, DataType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::error::{ErrCode, Error, Result};

use crate::alloc::{Allocator, Inner};
use crate::device::{BucketState, Device, DeviceInit, Layout, is_allocatable};

impl Allocator {
    /// Rebuilds the allocator from the alloc keys of the given devices (`alloc_read`).
    ///
    /// Errors (`fsck` class, with position, device and bucket): a key for no member device or
    /// beyond its buckets, a key given twice, a data type the layout forbids there (a superblock
    /// or journal bucket that is not, or the reverse), sector counts out of range for the data
    /// type, flags that disagree with the data type, cached sectors or `need_gc_gens` (neither
    /// is modelled).
    pub fn from_alloc_keys(
        devices: Vec<DeviceInit>,
        btree_node_size: u64,
        keys: impl IntoIterator<Item = (Bpos, AllocV4)>,
    ) -> Result<Allocator> {
        let alloc = Allocator::laid_out(devices, btree_node_size, false)?;
        {
            let mut inner = alloc.lock();
            let mut seen: BTreeMap<u8, BTreeSet<u64>> = BTreeMap::new();
            for (pos, key) in keys {
                inner.read_alloc_key(pos, &key, &mut seen)?;
            }
            for d in inner.devs.values_mut() {
                d.finish_read();
            }
        }
        Ok(alloc)
    }

    /// Holds back every bucket whose alloc key says free but which the freespace keys on disk
    /// leave out: `listed` gives, per device, the bucket runs its freespace keys cover. Such a
    /// bucket stays off the free list while it stays free, as in bcachefs, which allocates from
    /// the freespace btree; fsck reports the disagreement and repairs it. Returns the buckets
    /// held, as (device, bucket).
    pub fn hold_unlisted(&self, listed: &BTreeMap<u8, Vec<std::ops::Range<u64>>>) -> Vec<(u8, u64)> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for (&dev, d) in inner.devs.iter_mut() {
            let runs = listed.get(&dev).map_or(&[][..], Vec::as_slice);
            out.extend(d.hold_unlisted(runs).into_iter().map(|b| (dev, b)));
        }
        out
    }
}

impl Inner {
    fn read_alloc_key(
        &mut self,
        pos: Bpos,
        key: &AllocV4,
        seen: &mut BTreeMap<u8, BTreeSet<u64>>,
    ) -> Result<()> {
        let err = |msg: String| Error::new(ErrCode::BucketAccounting, msg).btree(BtreeId::Alloc).pos(pos);
        let dev = u8::try_from(pos.inode)
            .ok()
            .filter(|dev| self.devs.contains_key(dev))
            .ok_or_else(|| err(format!("alloc key for no member device ({})", pos.inode)))?;
        let d = self.devs.get_mut(&dev).ok_or_else(|| err(format!("no member device {dev}")))?;
        let bucket = pos.offset;
        let err = |msg: String| err(msg).dev(dev).bucket(bucket);
        if pos.snapshot != 0 || bucket >= d.nbuckets() {
            return Err(err(format!("alloc key beyond the device's {} buckets", d.nbuckets())));
        }
        if !seen.entry(dev).or_default().insert(bucket) {
            return Err(err("alloc key given twice".to_owned()));
        }
        let state =
            bucket_from_key(d, bucket, key).map_err(|msg| err(format!("alloc key {key:?}: {msg}")))?;
        d.set_read(bucket, state);
        Ok(())
    }
}

/// The bucket state an alloc key stands for, if the key is one this allocator could have written.
fn bucket_from_key(d: &Device, bucket: u64, key: &AllocV4) -> Result<BucketState, String> {
    let layout_ok = match d.layout(bucket) {
        Layout::Sb => key.data_type == DataType::Sb,
        Layout::Journal => key.data_type == DataType::Journal,
        // An absent member's journal buckets are known only from their keys.
        Layout::Data => {
            key.data_type != DataType::Sb && (key.data_type != DataType::Journal || !d.is_present())
        }
    };
    if !layout_ok {
        return Err(format!("data type {} where the layout has {:?}", key.data_type, d.layout(bucket)));
    }
    if key.cached_sectors != 0 {
        return Err("cached sectors are not modelled".to_owned());
    }
    if key.dirty_sectors > d.bucket_sectors() {
        return Err(format!("more sectors than the bucket's {}", d.bucket_sectors()));
    }
    let sectors_ok = match key.data_type {
        DataType::Free | DataType::NeedDiscard => key.dirty_sectors == 0,
        DataType::Sb | DataType::Journal => key.dirty_sectors > 0,
        DataType::NeedGcGens => return Err("need_gc_gens is not modelled".to_owned()),
        t => is_allocatable(t),
    };
    if !sectors_ok {
        return Err(format!("{} sectors for data type {}", key.dirty_sectors, key.data_type));
    }
    let state = BucketState {
        bucket_gen: key.bucket_gen,
        oldest_gen: key.oldest_gen,
        data_type: key.data_type,
        written: false,
        dirty_sectors: key.dirty_sectors,
        journal_seq_empty: key.journal_seq_empty,
    };
    if state.alloc_v4().flags != key.flags {
        return Err(format!("flags {:#x} do not match data type {}", key.flags, key.data_type));
    }
    Ok(state)
}
