//! Discard workers: one thread per present member of a read-write mount, as bcachefs runs its
//! discard work per device.
//!
//! A worker sleeps until kicked — by journal reclaim after each round (the journal may have
//! become durable further), and by a btree update about to park on the allocator — or at least
//! every [`IDLE_WAKE`]. Awake, it discards the need_discard buckets of its device whose
//! emptying is durable and that the rewind buffer does not keep ([`FsShared::discard_dev`]),
//! commits their alloc keys, and wakes the updates parked on that device. It does nothing until
//! discards run (from going read-write in v1.39 and fixed, after recovery in v1.37.5).
//!
//! A worker's failure is a background worker's failure: the filesystem goes emergency
//! read-only and the worker ends; stopping the workers hands that failure to whoever stops them.
//! Each holds only a weak reference, so a filesystem dropped without unmounting (a crash) is not
//! kept alive by them.

use std::time::Duration;

use fs_core::error::{ErrCode, Error, Result};
use fs_core::sync::{Arc, Condvar, Mutex, Weak, thread};

use super::FsShared;

/// The longest a worker sleeps without a kick.
const IDLE_WAKE: Duration = Duration::from_millis(500);

#[derive(Default)]
struct KickState {
    kicks: u64,
    stop: bool,
}

/// How the filesystem reaches its discard workers.
#[derive(Default)]
pub(crate) struct DiscardKick {
    state: Mutex<KickState>,
    wake: Condvar,
}

impl DiscardKick {
    /// Wakes every worker to look for buckets to discard.
    pub(crate) fn kick(&self) {
        self.state.lock().kicks += 1;
        self.wake.notify_all();
    }
}

/// The running workers.
pub(crate) struct Discards {
    kick: Arc<DiscardKick>,
    threads: Vec<thread::JoinHandle<Result<()>>>,
}

impl Discards {
    /// Starts a worker for every present member of `fs`.
    pub(crate) fn start(fs: &Arc<FsShared>) -> Result<Discards> {
        let kick = fs.discard_kick().clone();
        kick.state.lock().stop = false;
        let devs: Vec<u8> = fs.set().present().filter_map(|m| u8::try_from(m.sb.dev_idx).ok()).collect();
        let mut threads = Vec::with_capacity(devs.len());
        for dev in devs {
            let (k, weak) = (kick.clone(), Arc::downgrade(fs));
            let t = thread::Builder::new()
                .name(format!("bcsim-discard-{dev}"))
                .spawn(move || run(&k, &weak, dev))
                .map_err(|e| Error::internal(format!("starting the discard worker of dev {dev}: {e}")))?;
            threads.push(t);
        }
        Ok(Discards { kick, threads })
    }

    /// Stops every worker and waits for them; returns the first error one stopped on.
    pub(crate) fn stop(self) -> Result<()> {
        self.kick.state.lock().stop = true;
        self.kick.wake.notify_all();
        let mut first = Ok(());
        for t in self.threads {
            let r = t.join().unwrap_or_else(|_| Err(Error::internal("a discard worker panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

fn run(k: &DiscardKick, fs: &Weak<FsShared>, dev: u8) -> Result<()> {
    let mut seen = 0;
    loop {
        {
            let mut st = k.state.lock();
            if !st.stop && st.kicks == seen {
                st = k.wake.wait_timeout(st, IDLE_WAKE).0;
            }
            if st.stop {
                return Ok(());
            }
            seen = st.kicks;
        }
        let Some(fs) = fs.upgrade() else { return Ok(()) };
        if fs.health().is_emergency_ro() {
            return Ok(());
        }
        match fs.discard_dev(dev) {
            Ok(_) => {}
            // The journal or the allocator is busy: the keys stay pending, and the next kick
            // tries again.
            Err(e) if e.matches(ErrCode::OperationBlocked) => {}
            Err(e) => {
                let e = e.prefix(format_args!("discard worker of dev {dev}"));
                fs.health().fatal(&e);
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use allocator::{AllocRequest, Watermark};
    use fs_core::bkey::DataType;
    use fs_core::dev::{MemDevice, SharedDevice};
    use fs_core::format::{DeviceSpec, format};
    use fs_core::opts::{OptId, OptValue, Options};
    use fs_core::sb::DeviceSet;

    use crate::recovery::{MountOpts, ReclaimMode, mount};

    /// While journal replay runs (a rewind seq is set), a discard leaves the buckets emptied at
    /// or after the first seq being replayed, however durable: a rewind of the replay may need
    /// what they hold. Once replay is done, they go too.
    #[test]
    fn no_discards_into_the_range_being_replayed() {
        let dev: SharedDevice = Arc::new(MemDevice::new("mem0", 8 << 20));
        let mut opts = Options::default();
        opts.set(OptId::BtreeNodeSize, OptValue::U64(16 << 10)).unwrap();
        format(&[DeviceSpec { bucket_size: Some(64 << 10), ..DeviceSpec::new(dev.clone()) }], &opts, None)
            .unwrap();
        let mopts = MountOpts { reclaim: ReclaimMode::Manual, ..MountOpts::default() };
        let fs = mount(DeviceSet::open(vec![dev]).unwrap(), &mopts).unwrap().fs;
        fs.opts().set(OptId::JournalRewindDiscardBufferPercent, OptValue::U64(0)).unwrap();
        let alloc = fs.alloc().unwrap().clone();
        let req = AllocRequest {
            nr_replicas: 1,
            target: String::new(),
            data_type: DataType::User,
            watermark: Watermark::Normal,
        };
        // Five buckets emptied at seq 1 (before the replay), five at seq 2 (in it).
        let buckets: Vec<(u64, u64)> = (0..10u64)
            .map(|i| {
                let b = alloc.alloc_buckets(&req).unwrap()[0].bucket;
                let seq = 1 + i / 5;
                alloc.add_sectors(0, b, DataType::User, 8, seq).unwrap();
                alloc.add_sectors(0, b, DataType::User, -8, seq).unwrap();
                (b, seq)
            })
            .collect();
        let state = |b: u64| alloc.bucket(0, b).unwrap().data_type;
        let shared = fs.shared();
        shared.set_rewind_seq(Some(2));
        shared.discard_round().unwrap();
        for &(b, seq) in &buckets {
            let want = if seq < 2 { DataType::Free } else { DataType::NeedDiscard };
            assert_eq!(state(b), want, "bucket {b} emptied at seq {seq}, replay from 2");
        }
        shared.set_rewind_seq(None);
        shared.discard_round().unwrap();
        assert!(buckets.iter().all(|&(b, _)| state(b) == DataType::Free));
        fs.unmount().unwrap();
    }
}
