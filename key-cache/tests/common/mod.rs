//! What the key cache tests share: a journal on a memory device, and a `BTreeMap` standing in
//! for the btree behind `FlushTarget`.

use std::collections::BTreeMap;

use fs_core::bkey::Bkey;
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::dev::{MemDevice, SharedDevice};
use fs_core::error::{Error, Result};
use fs_core::health::FsHealth;
use fs_core::opts::{LiveOpts, Options};
use fs_core::sync::{Arc, Mutex};
use journal::{Journal, JournalConfig, Ring};
use key_cache::{FlushTarget, Found};

const BUCKET: u64 = 64 << 10;

/// A journal of four 64 KiB buckets on a memory device, starting at seq 1.
pub fn journal() -> Arc<Journal> {
    let dev: SharedDevice = std::sync::Arc::new(MemDevice::new("kc0", 5 * BUCKET));
    let ring = Ring::empty(0, dev, BUCKET, (1..=4).collect()).expect("ring");
    let cfg = JournalConfig {
        magic: 0xabc,
        block_size: 4096,
        max_entry_bytes: 16 << 10,
        labels: BTreeMap::new(),
        durability: BTreeMap::new(),
        preflush: Vec::new(),
    };
    let opts = Arc::new(LiveOpts::new(Options::default()));
    Arc::new(Journal::new(vec![ring], cfg, 1, opts, Arc::new(FsHealth::new())).expect("journal"))
}

/// The btree behind the cache: a map, and how many topology errors it "had".
#[derive(Default)]
pub struct Tree {
    pub keys: Mutex<BTreeMap<Bpos, Bkey>>,
    pub topology_errors: u64,
}

impl FlushTarget for Tree {
    fn flush_key(
        &self,
        _btree: BtreeId,
        key: &Bkey,
        _seq: u64,
        check: &dyn Fn(Found<'_>) -> Result<()>,
    ) -> Result<()> {
        // Every value the tests commit is eight equal bytes: anything else was torn.
        if key.val.len() != 8 || key.val.windows(2).any(|w| w.first() != w.last()) {
            return Err(Error::internal(format!("half-written key flushed: {:?}", key.val)));
        }
        let mut keys = self.keys.lock();
        let first = "btree node header doesn't match ptr: btree=alloc level=0";
        check(Found {
            key: keys.get(&key.pos),
            topology_errors: self.topology_errors,
            first_topology_error: (self.topology_errors > 0).then_some(first),
        })?;
        keys.insert(key.pos, key.clone());
        Ok(())
    }
}

/// `tree` as the cache's flush target.
pub fn target(tree: &Arc<Tree>) -> std::sync::Weak<dyn FlushTarget> {
    Arc::downgrade(&(tree.clone() as Arc<dyn FlushTarget>))
}
