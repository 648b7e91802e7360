//! Benchmarks that print JSON, one object per line. Run in release mode:
//!
//!   cargo run --release --bin bcsim-bench -- format
//!
//! `format`: formats 8 sparse image files of 1 TiB each (4 MiB buckets) in a temporary
//! directory, several times, and reports wall time and the disk space the images take (`du`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use bcsim::images::{ImageSpec, format_images};
use fs_core::opts::Options;
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

fn main() -> std::process::ExitCode {
    let which = std::env::args().nth(1).unwrap_or_else(|| "format".to_owned());
    let result = match which.as_str() {
        "format" => bench_format(8, TIB, 20),
        other => Err(format!("unknown benchmark '{other}': expected format")),
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
