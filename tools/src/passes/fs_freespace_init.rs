//! `fs_freespace_init` (16): a new filesystem's first alloc keys (superblock and journal
//! buckets only: a never-used bucket has none) and freespace keys (one per run of free
//! buckets), written straight into the btrees and not through the journal, as bcachefs's pass
//! does. `format` runs it with its first mount. It also runs for a member that grew offline
//! (`device resize`): the superblock says its freespace keys cover only the buckets below
//! `freespace_initialized_to`, and the pass writes those of the rest, then records the member
//! as initialized. Otherwise there is nothing to do.

use fs_core::error::Result;

use super::RecoveryCtx;

pub(super) fn run(ctx: &mut RecoveryCtx) -> Result<()> {
    if !ctx.new_fs && ctx.fs.is_none() {
        // Nothing is written in a checking run.
        return Ok(());
    }
    let shared = ctx.fs()?.shared().clone();
    let grown: Vec<(usize, u64, u64)> = shared
        .set()
        .sb
        .members
        .iter()
        .enumerate()
        .filter_map(|(i, m)| Some((i, m.freespace_initialized_to?, m.nbuckets)))
        .collect();
    if !ctx.new_fs && grown.is_empty() {
        return Ok(());
    }
    shared.init_alloc_info()?;
    if ctx.new_fs {
        ctx.log.push("fs_freespace_init: initial alloc and freespace keys written".to_owned());
    }
    if !grown.is_empty() {
        let mut set = shared.set();
        for &(i, from, to) in &grown {
            if let Some(m) = set.sb.members.get_mut(i) {
                m.freespace_initialized_to = None;
            }
            ctx.log
                .push(format!("fs_freespace_init: dev {i}: freespace keys written for buckets {from}..{to}"));
        }
        set.write_super()?;
    }
    Ok(())
}
