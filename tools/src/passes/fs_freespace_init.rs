//! `fs_freespace_init` (16): a new filesystem's first alloc keys (superblock and journal
//! buckets only: a never-used bucket has none) and freespace keys (one per run of free
//! buckets), written straight into the btrees and not through the journal, as bcachefs's pass
//! does. `format` runs it with its first mount; on a filesystem that has alloc keys already
//! there is nothing to do.

use fs_core::error::Result;

use super::RecoveryCtx;

pub(super) fn run(ctx: &mut RecoveryCtx) -> Result<()> {
    if !ctx.new_fs {
        return Ok(());
    }
    ctx.fs()?.shared().init_alloc_info()?;
    ctx.log.push("fs_freespace_init: initial alloc and freespace keys written".to_owned());
    Ok(())
}
