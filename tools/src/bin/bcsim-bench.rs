//! Benchmarks that print JSON, one object per line. Run in release mode:
//!
//!   cargo run --release --bin bcsim-bench -- format
//!
//! `format`: formats 8 sparse image files of 1 TiB each (4 MiB buckets) in a temporary
//! directory, several times, and reports wall time and the disk space the images take (`du`).
//!
//! `btree [KEYS]` (default 10M): inserts KEYS keys in key order and in random order into
//! `std::collections::BTreeMap`, into the btree in memory (no write-back), and into the btree
//! on image files with write-back every million keys; reports keys/s, peak RSS per phase (each
//! phase runs in its own process) and the btree/BTreeMap time ratios.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use std::sync::Arc;

use bcsim::fs::Fs;
use bcsim::images::{ImageSpec, format_images, open_device_set};
use fs_core::bkey::{Bkey, KeyType};
use fs_core::bpos::{Bpos, BtreeId};
use fs_core::btree::BtreeConfig;
use fs_core::dev::{MemDevice, SharedDevice};
use fs_core::format::{DeviceSpec, format};
use fs_core::opts::Options;
use fs_core::rng::Rng;
use fs_core::sb::DeviceSet;
use serde_json::json;

const TIB: u64 = 1 << 40;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn usage(dir: &Path) -> (u64, u64) {
    let mut du = 0;
    let mut apparent = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(md) = e.metadata() {
            du += md.blocks() * 512;
            apparent += md.len();
        }
    }
    (du, apparent)
}

fn bench_format(devices: usize, size: u64, runs: usize) -> Result<serde_json::Value, String> {
    let dir = std::env::temp_dir().join(format!("bcsim-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let specs: Vec<ImageSpec> = (0..devices)
        .map(|i| {
            let mut s = ImageSpec::new(dir.join(format!("dev{i}.img")));
            s.size = Some(size);
            s
        })
        .collect();
    let mut seconds = Vec::with_capacity(runs);
    let mut nbuckets = 0;
    let mut bucket_size = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let report = format_images(&specs, &Options::default(), None, true).map_err(|e| e.to_string())?;
        seconds.push(t.elapsed().as_secs_f64());
        if let Some(d) = report.devices.first() {
            nbuckets = d.member.nbuckets;
            bucket_size = d.member.bucket_size;
        }
    }
    let (du_bytes, apparent_bytes) = usage(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    seconds.sort_by(f64::total_cmp);
    Ok(json!({
        "bench": "format",
        "devices": devices,
        "device_size_bytes": size,
        "bucket_size_bytes": bucket_size,
        "nbuckets_per_device": nbuckets,
        "runs": runs,
        "seconds_min": seconds.first(),
        "seconds_median": seconds.get(seconds.len() / 2),
        "seconds_max": seconds.last(),
        "du_bytes": du_bytes,
        "apparent_bytes": apparent_bytes,
        "peak_rss_kib": peak_rss_kib(),
    }))
}

const BTREE_DEV_BYTES: u64 = 16 << 30;
const WRITE_BACK_EVERY: u64 = 1_000_000;

fn positions(n: u64, sorted: bool) -> Vec<Bpos> {
    if sorted {
        return (0..n).map(|i| Bpos::new(1, i, 0)).collect();
    }
    let mut rng = Rng::new(0xb7ee);
    (0..n).map(|_| Bpos::new(1, rng.next_u64(), 0)).collect()
}

fn value(p: &Bpos) -> Box<[u8]> {
    p.offset.to_le_bytes().into()
}

/// One phase, run in this process; prints nothing, returns its JSON.
fn btree_phase(phase: &str, n: u64) -> Result<serde_json::Value, String> {
    let sorted = phase.ends_with("sorted");
    let keys = positions(n, sorted);
    let rss_before = peak_rss_kib();
    let e = |err: fs_core::error::Error| err.to_string();
    let (seconds, detail) = match phase {
        "btreemap-sorted" | "btreemap-random" => {
            let t = Instant::now();
            let mut m = std::collections::BTreeMap::new();
            for p in &keys {
                m.insert(*p, value(p));
            }
            let secs = t.elapsed().as_secs_f64();
            (secs, json!({"len": m.len()}))
        }
        "mem-sorted" | "mem-random" => {
            let devs: Vec<SharedDevice> = (0..2)
                .map(|i| Arc::new(MemDevice::new(format!("mem{i}"), BTREE_DEV_BYTES)) as SharedDevice)
                .collect();
            let specs: Vec<DeviceSpec> = devs.iter().cloned().map(DeviceSpec::new).collect();
            format(&specs, &Options::default(), None).map_err(e)?;
            let cfg = BtreeConfig { cache_nodes: 1 << 20, ..BtreeConfig::default() };
            let mut fs = Fs::open(DeviceSet::open(devs).map_err(e)?, true, cfg).map_err(e)?;
            let t = Instant::now();
            insert_all(&mut fs, &keys, None)?;
            let secs = t.elapsed().as_secs_f64();
            (secs, json!({"nodes_cached": fs.btrees.cached_nodes()}))
        }
        "file-sorted" | "file-random" => {
            let dir = std::env::temp_dir().join(format!("bcsim-bench-btree-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|err| err.to_string())?;
            let specs: Vec<ImageSpec> = (0..2)
                .map(|i| {
                    let mut s = ImageSpec::new(dir.join(format!("dev{i}.img")));
                    s.size = Some(BTREE_DEV_BYTES);
                    s
                })
                .collect();
            format_images(&specs, &Options::default(), None, true).map_err(e)?;
            let paths: Vec<_> = specs.iter().map(|s| s.path.clone()).collect();
            let cfg = BtreeConfig { cache_nodes: 4096, ..BtreeConfig::default() };
            let mut fs = Fs::open(open_device_set(&paths, true).map_err(e)?, true, cfg).map_err(e)?;
            let t = Instant::now();
            insert_all(&mut fs, &keys, Some(WRITE_BACK_EVERY))?;
            fs.unmount().map_err(e)?;
            let secs = t.elapsed().as_secs_f64();
            let (du, _) = usage(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            (secs, json!({"du_bytes": du}))
        }
        other => return Err(format!("unknown phase '{other}'")),
    };
    Ok(json!({
        "phase": phase,
        "keys": n,
        "seconds": seconds,
        "keys_per_sec": n as f64 / seconds,
        "peak_rss_kib": peak_rss_kib(),
        "rss_before_kib": rss_before,
        "detail": detail,
    }))
}

fn insert_all(fs: &mut Fs, keys: &[Bpos], write_back_every: Option<u64>) -> Result<(), String> {
    let e = |err: fs_core::error::Error| err.to_string();
    for (i, p) in keys.iter().enumerate() {
        fs.btrees.insert(BtreeId::Extents, Bkey::new(*p, KeyType::Set, value(p)), 1).map_err(e)?;
        if i % 65536 == 65535 {
            fs.apply_alloc_updates().map_err(e)?;
        }
        if write_back_every.is_some_and(|every| i as u64 % every == every - 1) {
            fs.write_back().map_err(e)?;
        }
    }
    fs.apply_alloc_updates().map_err(e)
}

/// Runs every btree phase in its own process and reports them together.
fn bench_btree(n: u64) -> Result<serde_json::Value, String> {
    let exe = std::env::current_exe().map_err(|err| err.to_string())?;
    let mut results = serde_json::Map::new();
    for phase in
        ["btreemap-sorted", "mem-sorted", "file-sorted", "btreemap-random", "mem-random", "file-random"]
    {
        let out = std::process::Command::new(&exe)
            .args(["btree-phase", phase, &n.to_string()])
            .output()
            .map_err(|err| err.to_string())?;
        if !out.status.success() {
            return Err(format!("phase {phase} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|err| err.to_string())?;
        eprintln!(
            "bcsim-bench: {phase}: {:.2} s",
            v.get("seconds").and_then(serde_json::Value::as_f64).unwrap_or(0.0)
        );
        results.insert(phase.to_owned(), v);
    }
    let secs = |p: &str| {
        results.get(p).and_then(|v| v.get("seconds")).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN)
    };
    let ratios = json!({
        "mem_sorted_vs_btreemap": secs("mem-sorted") / secs("btreemap-sorted"),
        "mem_random_vs_btreemap": secs("mem-random") / secs("btreemap-random"),
        "file_sorted_vs_btreemap": secs("file-sorted") / secs("btreemap-sorted"),
        "file_random_vs_btreemap": secs("file-random") / secs("btreemap-random"),
    });
    Ok(json!({"bench": "btree", "keys": n, "value_bytes": 8, "phases": results, "time_ratios": ratios}))
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map_or("format", String::as_str);
    let n_arg = |i: usize, default: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let result = match which {
        "format" => bench_format(8, TIB, 20),
        "btree" => bench_btree(n_arg(2, 10_000_000)),
        "btree-phase" => btree_phase(args.get(2).map_or("", String::as_str), n_arg(3, 10_000_000)),
        other => Err(format!("unknown benchmark '{other}': expected format or btree")),
    };
    match result {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bcsim-bench: {e}");
            std::process::ExitCode::from(8)
        }
    }
}
