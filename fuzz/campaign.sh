#!/usr/bin/env bash
# A fuzzing campaign: each target named (all by default) runs under AFL++ (cargo-afl) from its
# committed seed corpus until EXECS executions (default 10 million), then its figures are
# printed as one JSON line. Inputs that crash (a panic, an abort such as a failed allocation
# under the memory limit) or hang go to OUT/<target>/default/{crashes,hangs}.
#
#   fuzz/campaign.sh [TARGET...]        EXECS=10000000 OUT=target/fuzz-out MEM_MB=1024
#
# Needs cargo-afl (`cargo install cargo-afl --locked`); docs/FUZZING.md says more.
set -euo pipefail
cd "$(dirname "$0")/.."
EXECS=${EXECS:-10000000}
OUT=${OUT:-target/fuzz-out}
MEM_MB=${MEM_MB:-1024}
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(superblock jset btree_node alloc_v4 btree_ptr_v2 inode dirent extent control_request dump)
fi
export CARGO_TARGET_DIR=target/afl
cargo afl build --release -p bcsim-fuzz --features afl --bin bcsim-fuzz >&2
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
for t in "${TARGETS[@]}"; do
    mkdir -p "$OUT/$t"
    # -t: an input running past 1 s is a hang. -m: a run may map at most MEM_MB.
    cargo afl fuzz -i "fuzz/corpus/$t" -o "$OUT/$t" -E "$EXECS" -t 1000 -m "$MEM_MB" \
        -- target/afl/release/bcsim-fuzz "$t" > "$OUT/$t/afl.log" 2>&1 || {
        echo "{\"target\":\"$t\",\"error\":\"afl-fuzz failed: see $OUT/$t/afl.log\"}"
        continue
    }
    stats="$OUT/$t/default/fuzzer_stats"
    get() { awk -v k="$1" '$1 == k { print $3 }' "$stats"; }
    echo "{\"target\":\"$t\",\"execs\":$(get execs_done),\"execs_per_sec\":$(get execs_per_sec),\"seconds\":$(( $(get last_update) - $(get start_time) )),\"corpus\":$(get corpus_count),\"crashes\":$(get saved_crashes),\"hangs\":$(get saved_hangs),\"edges_found\":$(get edges_found),\"total_edges\":$(get total_edges)}"
done
