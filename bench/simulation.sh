#!/usr/bin/env bash
# Long run of the deterministic simulation (tests/simulation.rs): SEEDS seeds from START instead
# of CI's 2000, on every core, printing the seeds per second and how often each kind of event
# came up (faults, crash points, plan edits, state writes), in all and per seed.
#
#   bash bench/simulation.sh [SEEDS] [START]    # default 100000 seeds from 0, debug build
#   PROFILE=release bash bench/simulation.sh    # the release build (a cold one takes minutes)
#
# The debug build is CI's, so its rate is what CI's seeds cost. The test binary is built once
# and run directly, so the wall time holds no compiling. A failing seed stops the run: its report
# (why, its events, the command that runs it alone) is printed and the script exits 1. The test
# harness's own lines go to a log file, named at the end.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

seeds=${1:-100000}
start=${2:-0}
profile=${PROFILE:-debug}
if [[ ! $seeds =~ ^[1-9][0-9]*$ || ! $start =~ ^[0-9]+$ || ! $profile =~ ^(debug|release)$ ]]; then
    echo "usage: [PROFILE=debug|release] bash bench/simulation.sh [SEEDS] [START]" >&2
    exit 2
fi

now_ms() { date +%s%3N; }
secs() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }
test_cmd=(cargo test --locked --test simulation)
[[ $profile == release ]] && test_cmd+=(--release)

echo "== build: ${test_cmd[*]} --no-run"
t0=$(now_ms)
bin=$("${test_cmd[@]}" --no-run --message-format=json |
    grep '"name":"simulation"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
if [[ ! -x $bin ]]; then
    echo "cannot find the simulation test binary" >&2
    exit 1
fi
echo "built $bin in $(secs $(($(now_ms) - t0))) s"

log=$(mktemp "${TMPDIR:-/tmp}/rallyctl-sim-bench.XXXXXX")
echo "== $seeds seeds from $start ($profile build, $(nproc) cores)"
t=$(now_ms)
status=0
RALLYCTL_SIM_SEEDS=$seeds RALLYCTL_SIM_START=$start RALLYCTL_SIM_REPORT=1 "$bin" --exact \
    as_it_is::every_seed_resumes_to_a_complete_plan_and_gives_every_machine_back \
    --nocapture 2>&1 >"$log" | grep -v '^[0-9]* seeds in ' || status=$?
ms=$(($(now_ms) - t))
echo "wall (with the binary's start): $(secs "$ms") s, $((seeds * 1000 / (ms > 0 ? ms : 1))) seeds/s"
echo "the test harness's output: $log"
exit "$status"
