//! Crash-state enumeration (`bcsim crash-states`) over a small workload: every write boundary,
//! every flush epoch's end with up to two unflushed writes missing, and every torn write must
//! fsck clean, mount without repair, and hold every operation whose fsync had returned (and
//! nothing that had not started); and the checker must catch a state no crash can leave.

// A failed unwrap or index in a test is that test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use bcsim::crash_states::{CrashOpts, StateId, check_state, record, run, states};

fn small(seed: u64) -> CrashOpts {
    CrashOpts { seed, ops: 40, devices: 2, reorder: 2, dev_bytes: 16 << 20, limit: None, only: None }
}

/// Every crash state of a 40-operation workload on two devices recovers to a prefix of the
/// operations that includes every returned fsync.
#[test]
fn every_crash_state_of_a_small_workload_recovers() {
    let o = small(1107);
    let (_, report) = run(&o, &mut |_, _| {}).unwrap();
    eprintln!(
        "seed {}: checked {} crash states ({} boundaries, {} dropped, {} torn) over {} writes and {} flushes",
        o.seed, report.checked, report.prefix, report.dropped, report.torn, report.writes, report.flushes
    );
    assert!(report.writes > 100, "the workload wrote too little to be a test: {} writes", report.writes);
    assert!(report.dropped > 0 && report.torn > 0, "{report:?}");
    let lines: Vec<String> =
        report.failures.iter().map(|f| format!("{}: {}\n  {}", f.state, f.what, f.replay)).collect();
    assert!(lines.is_empty(), "{} failing crash states:\n{}", lines.len(), lines.join("\n"));
}

/// A state a crash cannot leave, every write of device 0 lost although flushes covered them, is
/// reported as a failure: the checks can fail.
#[test]
fn a_state_losing_flushed_writes_is_caught() {
    let o = small(1108);
    let rec = record(&o).unwrap();
    let all = states(&rec, 0, o.seed);
    let Some(StateId::Prefix(end)) = all.iter().rev().find(|s| matches!(s, StateId::Prefix(_))).cloned()
    else {
        panic!("no prefix states");
    };
    let first = match all.first() {
        Some(StateId::Prefix(k)) => *k,
        other => panic!("enumeration starts with {other:?}"),
    };
    let lost: Vec<usize> = (first..end).filter(|&i| rec.writes_to(i) == Some(0)).collect();
    assert!(!lost.is_empty());
    let verdict = check_state(&rec, &StateId::Dropped { at: end, lost }).unwrap();
    assert!(verdict.is_err(), "losing every write of device 0 went unnoticed");
}
