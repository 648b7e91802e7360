//! Crash at every write boundary of a small workload: the writes (and flushes) of a run are
//! recorded in their global order; for every boundary k, the images are rebuilt as they would
//! be after a crash there — every write before k landed, or only those before the last flush
//! before k — and each must pass `fsck -n` before any mount, mount without repairing anything,
//! pass a full fsck after, and hold every update whose fsync had returned by k (and nothing
//! that had not started).

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::{Arc, Mutex};

use bcsim::files::Files;
use bcsim::fsck::{FixMode, FsckOpts, fsck};
use bcsim::images::format_devices;
use bcsim::recovery::{MountOpts, ReclaimMode, mount};
use bcsim::workload::{Op, generate, matching_prefixes, run_op};
use fs_core::dev::{BlockDevice, MemDevice, SharedDevice};
use fs_core::error::Result;
use fs_core::format::DeviceSpec;
use fs_core::opts::{OptId, Options};
use fs_core::sb::DeviceSet;

#[derive(Clone)]
enum Event {
    Write { dev: usize, offset: u64, data: Arc<[u8]> },
    Flush,
}

/// Passes I/O through and records writes and flushes of all devices in one global order.
#[derive(Debug)]
struct Recorder {
    dev: usize,
    inner: SharedDevice,
    log: Arc<Mutex<Vec<Event>>>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Write { dev, offset, data } => {
                write!(f, "write dev {dev} at {offset}, {} bytes", data.len())
            }
            Event::Flush => write!(f, "flush"),
        }
    }
}

impl BlockDevice for Recorder {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.log.lock().unwrap().push(Event::Write { dev: self.dev, offset, data: buf.into() });
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.log.lock().unwrap().push(Event::Flush);
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
}

const NR_DEVS: usize = 2;
const OPS: usize = 40;
const SEED: u64 = 1107;

/// Images after a crash: the base plus the chosen writes.
fn crashed(base: &[Arc<MemDevice>], writes: &[&Event]) -> Vec<SharedDevice> {
    let devs: Vec<Arc<MemDevice>> =
        base.iter().enumerate().map(|(i, b)| Arc::new(b.deep_copy(format!("dev{i}")))).collect();
    for e in writes {
        if let Event::Write { dev, offset, data } = e {
            devs[*dev].write_at(data, *offset).unwrap();
        }
    }
    devs.into_iter().map(|d| d as SharedDevice).collect()
}

#[test]
fn crash_at_every_write_boundary() {
    let base: Vec<Arc<MemDevice>> =
        (0..NR_DEVS).map(|i| Arc::new(MemDevice::new(format!("dev{i}"), 16 << 20))).collect();
    let mut opts = Options::default();
    opts.set_text(OptId::BtreeNodeSize, "16k").unwrap();
    opts.set_text(OptId::MetadataReplicas, "2").unwrap();
    let specs: Vec<DeviceSpec> = base.iter().map(|d| DeviceSpec::new(d.clone() as SharedDevice)).collect();
    format_devices(&specs, &opts, None).unwrap();

    // The recorded run, on copies of the base.
    let log = Arc::new(Mutex::new(Vec::new()));
    let run_devs: Vec<SharedDevice> = base
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let inner: SharedDevice = Arc::new(b.deep_copy(format!("dev{i}")));
            Arc::new(Recorder { dev: i, inner, log: log.clone() }) as SharedDevice
        })
        .collect();
    let ops = generate(SEED, OPS);
    // For each op: the log length when it started, and when it returned.
    let mut started = Vec::new();
    let mut returned = Vec::new();
    {
        // No reclaim thread: the recorded writes must come from the operations alone.
        let mopts = MountOpts { reclaim: ReclaimMode::Manual, ..MountOpts::default() };
        let mut fs = mount(DeviceSet::open(run_devs).unwrap(), &mopts).unwrap().fs;
        let mut files = Files::new(&mut fs).unwrap();
        fs.fsync().unwrap();
        for (i, op) in ops.iter().enumerate() {
            started.push(log.lock().unwrap().len());
            run_op(&mut fs, &mut files, op).unwrap();
            // Write-back, as reclaim would: node writes and new roots are crash points too.
            if i % 8 == 7 {
                fs.write_back().unwrap();
            }
            returned.push(log.lock().unwrap().len());
        }
    }
    let events = log.lock().unwrap().clone();
    let fs_ready = started[0];
    assert!(
        events.len() - fs_ready > 100,
        "the workload wrote too little to be a test: {} events",
        events.len() - fs_ready
    );

    let mut states = 0;
    for k in fs_ready..=events.len() {
        // Updates acknowledged by k: ops up to the last fsync that returned by k.
        let acked =
            (0..ops.len()).rev().find(|&i| ops[i] == Op::Fsync && returned[i] <= k).map_or(0, |i| i + 1);
        // Ops that had started by k.
        let begun = started.iter().take_while(|&&s| s < k).count();
        let last_flush = events[..k].iter().rposition(|e| matches!(e, Event::Flush)).map_or(0, |p| p + 1);
        let variants: [(&str, Vec<&Event>); 2] = [
            ("all writes landed", events[..k].iter().collect()),
            ("unflushed writes lost", events[..last_flush].iter().collect()),
        ];
        for (what, writes) in variants {
            let devs = crashed(&base, &writes);
            let check = FsckOpts { mode: FixMode::No, force: true, mount: MountOpts::default() };
            let before = fsck(DeviceSet::open(devs.clone()).unwrap(), &check)
                .unwrap_or_else(|e| panic!("boundary {k} ({what}): fsck -n before mount failed: {e}"));
            assert!(
                before.problems.is_empty(),
                "boundary {k} ({what}): fsck -n before mount: {:?}",
                before.problems
            );
            let m = mount(DeviceSet::open(devs.clone()).unwrap(), &MountOpts::default())
                .unwrap_or_else(|e| panic!("boundary {k} ({what}): mount failed: {e}"));
            assert!(m.problems.is_empty(), "boundary {k} ({what}): recovery repaired: {:?}", m.problems);
            let mut fs = m.fs;
            let p = matching_prefixes(&mut fs, &ops, acked, begun).unwrap();
            assert!(!p.is_empty(), "boundary {k} ({what}): contents match no prefix in {acked}..={begun}");
            fs.unmount().unwrap();
            let report = fsck(DeviceSet::open(devs).unwrap(), &check).unwrap();
            assert!(report.problems.is_empty(), "boundary {k} ({what}): fsck: {:?}", report.problems);
            states += 1;
        }
    }
    eprintln!("checked {states} crash states over {} recorded writes and flushes", events.len() - fs_ready);
}
