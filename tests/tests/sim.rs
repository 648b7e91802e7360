//! The seeded fault swarm (`bcsim sim`): a window of seeds passes every check, and a campaign
//! split into shards and merged back reports exactly what the unsharded run reports.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use bcsim::sim::{Shard, SimReport, run_seeds, shard_seeds};

const SEEDS: std::ops::Range<u64> = 0..150;

/// Every seed of the window mounts after each crash (degraded once a device vanished), holds
/// every fsynced operation, keeps its allocator equal to its btrees, and checks clean (after
/// fsck -y where damage was injected).
#[test]
fn a_window_of_seeds_passes() {
    let seeds = shard_seeds(SEEDS, None);
    let report = SimReport { results: run_seeds(&seeds, 2, &|_, _| {}) };
    let crashes = report.total(|r| r.crashes);
    let flipped = report.total(|r| r.bits_flipped);
    let (cuts, vanished) = (report.total(|r| r.power_cuts), report.total(|r| r.vanished));
    let write_dead = report.total(|r| r.write_dead);
    eprintln!(
        "sim: {} seeds, {crashes} crashes, {cuts} power cuts, {flipped} bits flipped, {vanished} devices vanished, \
         {write_dead} died for writes",
        report.results.len()
    );
    assert_eq!(report.results.len(), seeds.len());
    assert!(
        crashes >= seeds.len() && flipped > 0 && cuts > 0 && vanished > 0 && write_dead > 0,
        "the window injected too little to be a test"
    );
    let failed: Vec<String> = report
        .failures()
        .map(|r| {
            format!(
                "seed {}: {} (bcsim sim --seeds {}..{})",
                r.seed,
                r.failure.as_deref().unwrap_or(""),
                r.seed,
                r.seed
            )
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Two shards, written as JSON and merged, give the unsharded run's report, seed for seed; a
/// merge of reports that disagree on a seed is refused.
#[test]
fn shards_merge_into_the_unsharded_run() {
    let range = 1000..1024;
    let whole = SimReport { results: run_seeds(&shard_seeds(range.clone(), None), 1, &|_, _| {}) };
    let parts: Vec<SimReport> = (0..2)
        .map(|i| {
            let seeds = shard_seeds(range.clone(), Some(Shard { index: i, count: 2 }));
            let part = SimReport { results: run_seeds(&seeds, 2, &|_, _| {}) };
            SimReport::from_json(&serde_json::from_str(&part.to_json().to_string()).unwrap()).unwrap()
        })
        .collect();
    assert!(parts.iter().all(|p| !p.results.is_empty()));
    let merged = SimReport::merge(parts.clone()).unwrap();
    assert_eq!(merged.results, whole.results);
    assert_eq!(merged.to_json(), whole.to_json());

    let mut other = parts[0].clone();
    other.results[0].ops_run += 1;
    assert!(SimReport::merge(vec![parts[0].clone(), other]).is_err());
}
