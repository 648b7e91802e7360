//! A btree update blocked on the allocator (`bucket_alloc_blocked`): the wait of
//! `bch2_btree_update_start`, as each behaviour profile does it.
//!
//! The update's thread first makes what was emptied durable (write back, journal flush). On a
//! mount with discard workers it then takes a ticket of the wait list, kicks the workers and
//! retries once; refused again, it parks on that ticket: a worker that discarded a bucket on one
//! of its devices since wakes it. A filesystem without workers (stepped by hand) discards the
//! durable buckets itself ([`FsShared::wait_on_allocator`]) and retries at once if that freed
//! something. Parked, it retries when it wakes:
//!
//! | | v1.37.5 | v1.39 | fixed |
//! |---|---|---|---|
//! | replica count and target | kept from the first attempt | kept from the first attempt | read from the live options on every retry |
//! | stuck report | once, after `allocator_stuck_timeout`; then waits forever | after the timeout, then at most every 2 min | at every timeout, with what changed since the last |
//! | emergency read-only | ignored: stays parked | ends the wait with the update's error | ends the wait with `EROFS` |
//!
//! The kernel's v1.37.5 and v1.39 build the `alloc_request` once, with
//! `READ_ONCE(c->opts.metadata_replicas)`, and `closure_sync` on it: an option changed through
//! sysfs never reaches the waiting request. bcsim keeps that request by pinning it in the node
//! allocator for the waiting thread ([`BtreeNodeAlloc::pin_request`]); an option change wakes the
//! waiter, which retries with the old request and parks again, which is what the kernel's
//! waiter amounts to. A request no device could ever meet fails with `insufficient_devices`
//! before any wait, in every profile.
//!
//! Parking needs someone who can wake the waiter: a mount with its own threads (journal reclaim,
//! the control socket). A filesystem stepped by hand (`ReclaimMode::Manual`) has nobody, so
//! there the update fails with its error instead of waiting forever.

use std::time::Duration;

use allocator::{BtreeNodeAlloc, NodeRequestSpec, Ticket, Wake, Watermark};
use fs_core::error::{ErrCode, Error, Result};
use fs_core::opts::{Behavior, Options};
use fs_core::sync::Arc;

use super::FsShared;

/// Synchronous rounds (write back, flush, discard) that free buckets the update still cannot
/// use, before it parks.
const MAX_SYNC_ROUNDS: u32 = 4;

/// v1.39's shortest interval between two stuck reports.
const V1_39_REPORT_INTERVAL: Duration = Duration::from_secs(120);

/// One device's figures in a stuck report.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DevFigures {
    dev: u8,
    free: u64,
    need_discard: u64,
}

/// The wait of one blocked btree update, across its retries.
pub(crate) struct AllocWaiter<'a> {
    fs: &'a FsShared,
    behavior: Behavior,
    /// The watermark the update allocates at.
    watermark: Watermark,
    /// The request as built (v1.37.5, v1.39), pinned for this thread until the update ends.
    pinned: Option<Arc<BtreeNodeAlloc>>,
    sync_rounds: u32,
    /// The ticket taken at a refusal, before the retry whose refusal parks on it.
    armed: Option<Ticket>,
    /// When it first parked, on the wait list's clock.
    parked_since: Option<Duration>,
    reports: u32,
    /// The last report's figures and options generation (fixed: what changed since).
    last: Option<(Vec<DevFigures>, u64)>,
}

impl FsShared {
    /// The waiter of a btree update that has just been refused: v1.37.5 and v1.39 keep the
    /// request it was built with from here on.
    pub(crate) fn alloc_waiter(&self) -> AllocWaiter<'_> {
        let behavior = self.opts.with(Options::behavior);
        let pinned = match (behavior, &self.nodes) {
            (Behavior::V1_37_5 | Behavior::V1_39, Some(nodes)) => {
                nodes.pin_request(Some(nodes.request_now()));
                Some(nodes.clone())
            }
            _ => None,
        };
        let watermark = self.nodes.as_ref().map_or(Watermark::Btree, |n| n.watermark());
        AllocWaiter {
            fs: self,
            behavior,
            watermark,
            pinned,
            sync_rounds: 0,
            armed: None,
            parked_since: None,
            reports: 0,
            last: None,
        }
    }
}

impl AllocWaiter<'_> {
    /// Waits after `err` refused the update. `Ok`: retry it; `Err`: give up with that error.
    pub(crate) fn wait(&mut self, err: Error) -> Result<()> {
        let fs = self.fs;
        let (Some(waits), Some(nodes)) = (fs.waits.as_ref(), fs.nodes.as_ref()) else { return Err(err) };
        if !fs.threads_running() {
            return self.sync_round(err);
        }
        // The discard workers do the discarding: this thread makes what was emptied durable,
        // kicks them, and parks; a worker that frees a bucket wakes it. A worker may free
        // buckets between the refusal and a ticket taken after it, and nothing would wake a
        // wait on that ticket: so a refusal first only takes the ticket and retries, and the
        // refusal after that parks on it (prepare to wait, check again, sleep).
        let Some(ticket) = self.armed.take() else {
            self.armed = Some(waits.ticket());
            fs.write_back()?;
            fs.journal_rw()?.flush()?;
            fs.kick_discards();
            return Ok(());
        };
        let spec = nodes.request_now_for_this_thread();
        let devs = nodes.request_devs(&spec);
        // Blocked since the first refusal: the write-back and journal flush count too.
        let parked_since = *self.parked_since.get_or_insert(ticket.at());
        let stuck_after = fs.opts.with(Options::allocator_stuck_timeout);
        let mut budget = self.next_interval(stuck_after);
        loop {
            match waits.wait(&ticket, &devs, budget, self.behavior) {
                Wake::Buckets { dev } => {
                    fs.klog(&format!("allocator: buckets freed on dev {dev}: retrying the btree update"));
                    return Ok(());
                }
                Wake::Options { generation } => {
                    let now = nodes.request_now();
                    fs.klog(&match self.pinned {
                        None => format!(
                            "allocator: options changed (generation {generation}): retrying with metadata_replicas={} metadata_target={}",
                            now.replicas,
                            target_name(&now.target)
                        ),
                        Some(_) => format!(
                            "allocator: options changed (generation {generation}), but the waiting request keeps metadata_replicas={} it was built with",
                            spec.replicas
                        ),
                    });
                    return Ok(());
                }
                Wake::EmergencyRo => {
                    return Err(match self.behavior {
                        Behavior::Fixed => Error::new(
                            ErrCode::Erofs,
                            "btree update waiting on the allocator: the filesystem went emergency read-only",
                        ),
                        _ => err,
                    });
                }
                Wake::Timeout => {
                    let waited = waits.elapsed().saturating_sub(parked_since);
                    let report = self.stuck_report(&err, &spec, waited, nodes);
                    for line in report {
                        fs.klog(&line);
                    }
                    budget = budget.saturating_add(self.next_interval(stuck_after));
                }
            }
        }
    }

    /// A filesystem without threads: this thread discards the durable buckets itself and
    /// retries if that freed something, a bounded number of times; else the update fails.
    fn sync_round(&mut self, err: Error) -> Result<()> {
        let freed = self.fs.discard_round()?;
        if freed.is_empty() {
            return Err(err);
        }
        let mut per_dev: std::collections::BTreeMap<u8, usize> = std::collections::BTreeMap::new();
        for (dev, _) in &freed {
            *per_dev.entry(*dev).or_default() += 1;
        }
        let list: Vec<String> = per_dev.iter().map(|(d, n)| format!("dev {d}: {n}")).collect();
        self.fs.klog(&format!(
            "allocator: btree update blocked; discarded {} buckets ({}), retrying",
            freed.len(),
            list.join(", ")
        ));
        self.sync_rounds += 1;
        if self.sync_rounds <= MAX_SYNC_ROUNDS { Ok(()) } else { Err(err) }
    }

    /// How long until the next stuck report, as the profile has it (`Duration::MAX`: never).
    fn next_interval(&self, stuck_after: Duration) -> Duration {
        if stuck_after.is_zero() {
            return Duration::MAX;
        }
        match (self.behavior, self.reports) {
            (_, 0) => stuck_after,
            (Behavior::V1_37_5, _) => Duration::MAX,
            (Behavior::V1_39, _) => stuck_after.max(V1_39_REPORT_INTERVAL),
            (Behavior::Fixed, _) => stuck_after,
        }
    }

    /// `Allocator stuck? ...`: per device of the request, its free, need_discard, reserves
    /// and open btree buckets; then the request. The fixed profile adds what changed since its
    /// last report.
    fn stuck_report(
        &mut self,
        err: &Error,
        spec: &NodeRequestSpec,
        waited: Duration,
        nodes: &BtreeNodeAlloc,
    ) -> Vec<String> {
        self.reports += 1;
        let alloc = nodes.allocator();
        let open = nodes.open_buckets();
        let mut lines =
            vec![format!("Allocator stuck? Waited for {} seconds, err {}", waited.as_secs(), err.code())];
        let mut figures = Vec::new();
        for dev in nodes.request_devs(spec) {
            let Some(u) = alloc.dev_usage(dev) else { continue };
            let reserves: Vec<String> =
                Watermark::ALL.iter().map(|&w| format!("{w} {}", u.reserved(w))).collect();
            let nr_open = open.iter().filter(|(d, _, _)| *d == dev).count();
            lines.push(format!(
                "  dev {dev} ({}): buckets {} free {} need_discard {} open btree buckets {nr_open}; reserved: {}",
                target_name(&u.label),
                u.nbuckets,
                u.free,
                u.need_discard,
                reserves.join(", ")
            ));
            figures.push(DevFigures { dev, free: u.free, need_discard: u.need_discard });
        }
        lines.push(format!(
            "  request: replicas {} target {} watermark {} data_type btree",
            spec.replicas,
            target_name(&spec.target),
            self.watermark
        ));
        let generation = self.fs.opts.generation();
        if self.behavior == Behavior::Fixed {
            if let Some((before, gen_before)) = &self.last {
                lines.push(format!(
                    "  since the last report: {}",
                    changes(before, &figures, *gen_before, generation)
                ));
            }
            lines.push(
                "  waiting on: buckets freed or discarded on these devices, a change of metadata_replicas or metadata_target (set-fs-option), emergency read-only"
                    .to_owned(),
            );
        }
        if self.behavior == Behavior::V1_37_5 {
            lines.push(
                "  (v1.37.5: the kernel waits here forever; an option change does not reach this request)"
                    .to_owned(),
            );
        }
        self.last = Some((figures, generation));
        lines
    }
}

impl Drop for AllocWaiter<'_> {
    fn drop(&mut self) {
        if let Some(nodes) = &self.pinned {
            nodes.pin_request(None);
        }
    }
}

fn target_name(t: &str) -> &str {
    if t.is_empty() { "(any)" } else { t }
}

/// What changed between two reports, in a phrase.
fn changes(before: &[DevFigures], now: &[DevFigures], gen_before: u64, gen_now: u64) -> String {
    let mut out: Vec<String> = now
        .iter()
        .filter_map(|n| {
            let b = before.iter().find(|b| b.dev == n.dev)?;
            (b != n).then(|| {
                format!(
                    "dev {} free {:+} need_discard {:+}",
                    n.dev,
                    i128::from(n.free) - i128::from(b.free),
                    i128::from(n.need_discard) - i128::from(b.need_discard)
                )
            })
        })
        .collect();
    if gen_now != gen_before {
        out.push(format!("options generation {gen_before} -> {gen_now}"));
    }
    if out.is_empty() { "nothing changed".to_owned() } else { out.join(", ") }
}
