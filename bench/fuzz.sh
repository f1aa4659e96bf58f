#!/usr/bin/env bash
# Long fuzz run of the plan parser and the state loader: every proptest property in
# tests/robustness.rs (release build), CASES cases each instead of CI's 2000, one property at a
# time (one core), printing the cases per property, the total and the wall times.
#
#   bash bench/fuzz.sh [CASES]        # default 200000 cases per property
#
# proptest runs each property until CASES cases have passed (these properties reject none, so
# that is also the number of executions); it stops at the first failure, shrinks it and prints the
# minimal failing input, and the script then exits 1 after the remaining properties. The test
# binary is built once and run directly, so every property runs the same build and the wall
# times hold no compiling (even if the sources change meanwhile). The state properties write a
# state file per case (with fsync): their temp files go to tmpfs (/dev/shm) when there is one, so
# that the run measures the loader rather than the disk.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

cases=${1:-200000}
if [[ ! $cases =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: bash bench/fuzz.sh [CASES]   (cases per property, default 200000)" >&2
    exit 2
fi

now_ms() { date +%s%3N; }
secs() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }
test_cmd=(cargo test --release --locked --test robustness)

echo "== build: ${test_cmd[*]} --no-run"
t0=$(now_ms)
bin=$("${test_cmd[@]}" --no-run --message-format=json |
    grep '"name":"robustness"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
if [[ ! -x $bin ]]; then
    echo "cannot find the robustness test binary" >&2
    exit 1
fi
echo "built $bin in $(secs $(($(now_ms) - t0))) s"

mapfile -t props < <("$bin" --list --format terse | sed -n 's/: test$//p')
if ((${#props[@]} == 0)); then
    echo "no properties found in tests/robustness.rs" >&2
    exit 1
fi

if [[ -d /dev/shm && -w /dev/shm ]]; then
    TMPDIR=$(mktemp -d /dev/shm/rallyctl-fuzz.XXXXXX)
    export TMPDIR
    trap 'rm -rf "$TMPDIR"' EXIT
fi

echo "== ${#props[@]} properties x $cases cases (temp files in ${TMPDIR:-/tmp})"
failed=()
passed=0
rows=()
start=$(now_ms)
for p in "${props[@]}"; do
    echo "-- $p"
    t=$(now_ms)
    if PROPTEST_CASES=$cases "$bin" --exact "$p"; then
        result=ok
        passed=$((passed + 1))
    else
        result=FAILED
        failed+=("$p")
    fi
    ms=$(($(now_ms) - t))
    rows+=("$(printf '%-52s %10s %9s s %9s/s  %s' "$p" "$cases" "$(secs "$ms")" $((cases * 1000 / (ms > 0 ? ms : 1))) "$result")")
done
total_ms=$(($(now_ms) - start))

echo
echo "== fuzz summary"
printf '%-52s %10s %11s %11s  %s\n' property cases wall rate result
printf '%s\n' "${rows[@]}"
echo "total: $((cases * passed)) executions ($passed passed properties x $cases cases) in $(secs "$total_ms") s wall"
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]} (fewer than $cases cases each; minimal failing inputs above)"
    exit 1
fi
