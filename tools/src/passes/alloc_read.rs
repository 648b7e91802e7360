//! `alloc_read` (0): the allocator rebuilt from the alloc btree (through the journal keys after
//! an unclean shutdown), or laid out anew when there are no alloc keys at all (a new
//! filesystem, whose keys fs_freespace_init writes). A check that writes nothing needs no
//! allocator: it only counts the keys. A bucket whose alloc key says free but that the
//! freespace btree leaves out is held back: bcachefs allocates from the freespace btree and
//! would never find it, and its alloc key may be the wrong one.

use allocator::{Allocator, BtreeNodeAlloc};
use fs_core::error::Result;
use fs_core::opts::Options;
use fs_core::sync::Arc;

use super::{Mode, RecoveryCtx};
use crate::fs::layout::device_inits;
use crate::fs::{read_alloc_keys, read_freespace_runs};

pub(super) fn run(ctx: &mut RecoveryCtx) -> Result<()> {
    let keys = ctx.with_view(|v| read_alloc_keys(v.t, v.overlay))?;
    if ctx.mode == Mode::Check {
        ctx.log.push(format!("alloc_read: {} alloc keys (checking only: no allocator)", keys.len()));
        return Ok(());
    }
    let inits = device_inits(ctx.set_ref()?);
    let node_size = ctx.opts.with(Options::btree_node_size);
    ctx.new_fs = keys.is_empty();
    let alloc = Arc::new(if ctx.new_fs {
        Allocator::new(inits, node_size)?
    } else {
        Allocator::from_alloc_keys(inits, node_size, keys)?
    });
    if !ctx.new_fs {
        let listed = ctx.with_view(|v| read_freespace_runs(v.t, v.overlay))?;
        let held = alloc.hold_unlisted(&listed);
        if let Some((dev, bucket)) = held.first() {
            ctx.log.push(format!(
                "alloc_read: {} buckets free by their alloc keys are not in the freespace btree \
                 (first: dev {dev} bucket {bucket}); held back until fsck repairs them",
                held.len()
            ));
        }
    }
    let nodes = Arc::new(BtreeNodeAlloc::new(alloc.clone(), ctx.opts.clone())?);
    if let Some(t) = ctx.btrees.as_mut() {
        t.set_node_allocator(nodes.clone());
    }
    ctx.alloc = Some(alloc);
    ctx.nodes = Some(nodes);
    Ok(())
}
