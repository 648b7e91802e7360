//! `check_invariants`: the allocator checked against itself and against the committed alloc,
//! freespace and need_discard btrees. Tests run it after every step; it is a full scan, not a
//! hot-path check.

use std::collections::{BTreeMap, BTreeSet};

use fs_core::bkey::alloc::{AllocV4, DataType, bucket_pos};
use fs_core::bpos::Bpos;

use crate::alloc::Inner;
use crate::device::{Device, Layout, is_allocatable};

impl Inner {
    pub(crate) fn check_invariants(
        &self,
        alloc: &BTreeMap<Bpos, AllocV4>,
        freespace: &BTreeSet<Bpos>,
        need_discard: &BTreeSet<Bpos>,
    ) -> Result<(), String> {
        let mut nr_buckets = 0u64;
        for d in self.devs.values() {
            check_device(d)?;
            for (b, st) in d.buckets() {
                let want = st.alloc_v4();
                match alloc.get(&bucket_pos(d.dev, b)) {
                    Some(key) if *key == want => {}
                    Some(key) => {
                        return Err(format!(
                            "dev {} bucket {b}: alloc key {key:?}, in memory {want:?}",
                            d.dev
                        ));
                    }
                    None => return Err(format!("dev {} bucket {b}: no alloc key", d.dev)),
                }
            }
            nr_buckets += d.nbuckets();
        }
        if alloc.len() as u64 != nr_buckets {
            let stray = alloc.keys().find(|pos| !self.is_bucket(**pos));
            return Err(format!(
                "{} alloc keys for {nr_buckets} buckets (first stray: {stray:?})",
                alloc.len()
            ));
        }
        check_index("freespace", alloc, freespace, DataType::Free)?;
        check_index("need_discard", alloc, need_discard, DataType::NeedDiscard)
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
        if d.is_free_listed(b) != (st.data_type == DataType::Free) {
            return bad("free list membership disagrees with the data type");
        }
        let layout_ok = match d.layout(b) {
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
    if d.nr_free() != d.count(DataType::Free) {
        return Err(format!(
            "dev {dev}: free list holds {}, {} buckets are free",
            d.nr_free(),
            d.count(DataType::Free)
        ));
    }
    Ok(())
}

/// An index btree holds exactly the positions whose alloc key has `data_type`.
fn check_index(
    name: &str,
    alloc: &BTreeMap<Bpos, AllocV4>,
    index: &BTreeSet<Bpos>,
    data_type: DataType,
) -> Result<(), String> {
    for (pos, a) in alloc {
        if (a.data_type == data_type) != index.contains(pos) {
            return Err(format!(
                "{pos}: alloc key is {}, {name} index has it: {}",
                a.data_type,
                index.contains(pos)
            ));
        }
    }
    match index.iter().find(|pos| !alloc.contains_key(pos)) {
        Some(pos) => Err(format!("{pos}: {name} key without an alloc key")),
        None => Ok(()),
    }
}
