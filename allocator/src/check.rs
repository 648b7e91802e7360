//! `check_invariants`: the allocator checked against itself and against the committed alloc,
//! freespace and need_discard btrees. Tests run it after every step; it is a full scan, not a
//! hot-path check.

use std::collections::{BTreeMap, BTreeSet};

use fs_core::bkey::alloc::{AllocV4, DataType, bucket_pos};
use fs_core::bpos::Bpos;

use crate::alloc::Inner;
use crate::device::{Device, Layout, is_allocatable, is_unused};

impl Inner {
    /// `alloc` holds the alloc keys (none for unused buckets), `freespace` every bucket the
    /// freespace range keys cover, `need_discard` the need_discard keys; all after every update
    /// was applied.
    pub(crate) fn check_invariants(
        &self,
        alloc: &BTreeMap<Bpos, AllocV4>,
        freespace: &BTreeSet<Bpos>,
        need_discard: &BTreeSet<Bpos>,
    ) -> Result<(), String> {
        let mut nr_keys = 0u64;
        for d in self.devs.values() {
            check_device(d)?;
            for (b, st) in d.buckets() {
                let want = st.persisted();
                let pos = bucket_pos(d.dev, b);
                match alloc.get(&pos) {
                    Some(key) if is_unused(key) => {
                        return Err(format!("dev {} bucket {b}: an alloc key for an unused bucket", d.dev));
                    }
                    Some(key) if *key == want => nr_keys += 1,
                    Some(key) => {
                        return Err(format!(
                            "dev {} bucket {b}: alloc key {key:?}, persisted {want:?}",
                            d.dev
                        ));
                    }
                    None if is_unused(&want) => {}
                    None => return Err(format!("dev {} bucket {b}: no alloc key for {want:?}", d.dev)),
                }
                let in_index = |index: &BTreeSet<Bpos>, t: DataType, name: &str| {
                    if index.contains(&pos) == (want.data_type == t) {
                        Ok(())
                    } else {
                        Err(format!(
                            "dev {} bucket {b}: persisted {}, {name} index has it: {}",
                            d.dev,
                            want.data_type,
                            index.contains(&pos)
                        ))
                    }
                };
                in_index(freespace, DataType::Free, "freespace")?;
                in_index(need_discard, DataType::NeedDiscard, "need_discard")?;
            }
        }
        if alloc.len() as u64 != nr_keys {
            let stray = alloc.keys().find(|pos| !self.is_bucket(**pos));
            return Err(format!(
                "{} alloc keys, {nr_keys} for buckets (first stray: {stray:?})",
                alloc.len()
            ));
        }
        for (name, index) in [("freespace", freespace), ("need_discard", need_discard)] {
            if let Some(pos) = index.iter().find(|p| !self.is_bucket(**p)) {
                return Err(format!("{pos}: {name} key for no bucket"));
            }
        }
        Ok(())
    }

    fn is_bucket(&self, pos: Bpos) -> bool {
        pos.snapshot == 0
            && u8::try_from(pos.inode)
                .ok()
                .and_then(|dev| self.devs.get(&dev))
                .is_some_and(|d| pos.offset < d.nbuckets())
    }
}

/// One device against itself: counts, free list, layout and sector bounds per data type.
fn check_device(d: &Device) -> Result<(), String> {
    let dev = d.dev;
    let bucket_sectors = d.bucket_sectors();
    let mut counts: BTreeMap<DataType, u64> = BTreeMap::new();
    for (b, st) in d.buckets() {
        *counts.entry(st.data_type).or_default() += 1;
        let bad = |what: &str| Err(format!("dev {dev} bucket {b}: {what} ({st:?})"));
        if d.is_free_listed(b) != (st.data_type == DataType::Free && !d.is_held(b)) {
            return bad("free list membership disagrees with the data type");
        }
        if d.is_held(b) && st.data_type != DataType::Free {
            return bad("held back but not free");
        }
        // An absent member's journal buckets are in its own superblock, which was not read:
        // its layout is not known, only what its alloc keys say.
        let layout_ok = !d.is_present()
            || match d.layout(b) {
                Layout::Sb => st.data_type == DataType::Sb,
                Layout::Journal => st.data_type == DataType::Journal,
                Layout::Data => !matches!(st.data_type, DataType::Sb | DataType::Journal),
            };
        if !layout_ok {
            return bad(&format!("data type disagrees with the device layout ({:?})", d.layout(b)));
        }
        if st.dirty_sectors > bucket_sectors {
            return bad(&format!("more sectors than the bucket's {bucket_sectors}"));
        }
        match st.data_type {
            DataType::Free | DataType::NeedDiscard if st.dirty_sectors != 0 || st.written => {
                return bad("an empty state with sectors or a written mark");
            }
            DataType::Sb | DataType::Journal if st.dirty_sectors == 0 => {
                return bad("superblock or journal bucket without sectors");
            }
            DataType::NeedGcGens => return bad("need_gc_gens is not modelled"),
            t if is_allocatable(t) && st.written && st.dirty_sectors == 0 => {
                return bad("written bucket left empty instead of going to need_discard");
            }
            _ => {}
        }
    }
    for &t in DataType::ALL {
        let want = counts.get(&t).copied().unwrap_or(0);
        if d.count(t) != want {
            return Err(format!("dev {dev}: {} {t} buckets counted, {want} present", d.count(t)));
        }
    }
    if d.nr_free() + d.nr_held() != d.count(DataType::Free) {
        return Err(format!(
            "dev {dev}: free list holds {} and {} are held back, {} buckets are free",
            d.nr_free(),
            d.nr_held(),
            d.count(DataType::Free)
        ));
    }
    Ok(())
}
