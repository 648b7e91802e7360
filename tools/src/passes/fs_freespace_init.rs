//! `fs_freespace_init` (16): a new filesystem's first alloc, freespace and need_discard keys,
//! one per bucket, written straight into the btrees and not through the journal (which would
//! need to be as big as they are), as bcachefs's pass does. On a filesystem that has them
//! already there is nothing to do.

use fs_core::error::Result;

use super::RecoveryCtx;

pub(super) fn run(ctx: &mut RecoveryCtx) -> Result<()> {
    if !ctx.new_fs {
        return Ok(());
    }
    ctx.fs()?.shared().init_alloc_info()?;
    ctx.log.push("fs_freespace_init: alloc info written for every bucket".to_owned());
    Ok(())
}
