#!/usr/bin/env bash
# What keeping a workspace in S3 costs and saves, against a local moto server (so without S3's
# network latency: these are rallyctl's own overheads plus loopback HTTP):
#   - `plan` of 10,000 tests against a state of 5,000 results, state local vs in S3;
#   - one state write (`state rm`: lock, read, write, give back), local vs S3;
#   - `results --run` over 500 tests' files: local, and read from S3 with a cold cache (every
#     file downloaded and checked) and a warm one (nothing downloaded).
# Needs tests/setup-env.sh's moto venv and a release build (it runs `cargo bench` to build).
#
#   bash bench/s3_backend.sh [RUNS]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${1:-7}
venv=$root/target/tools/moto-venv/bin
work=$(mktemp -d)
moto_pid=
cleanup() {
    [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cd "$root"
SCALE_WRITE_TO=$work cargo bench --bench plan_scale >/dev/null
bin=$root/target/release/rallyctl
[ -x "$bin" ] || { echo "no release binary at $bin" >&2; exit 1; }

port=$("$venv/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$venv/moto_server" -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
    AWS_REGION=eu-west-1 AWS_EC2_METADATA_DISABLED=true NO_COLOR=1 XDG_CACHE_HOME=$work/cache
for _ in $(seq 100); do
    curl -fs "$AWS_ENDPOINT_URL/moto-api/" >/dev/null 2>&1 && break
    sleep 0.1
done
"$venv/python" - <<PY
import boto3
boto3.client("s3", endpoint_url="$AWS_ENDPOINT_URL").create_bucket(
    Bucket="bench-state", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
PY

# 500 tests' collected files in one run, beside the generated state.
cd "$work"
run=20261202T000000Z-bench0
for s in $(seq 0 4); do
    for t in $(seq 0 99); do
        d=results/scale/$run/suite-$s/test-$t
        mkdir -p "$d"
        cp "$root/tests/fixtures/rally/success/report.csv" "$root/tests/fixtures/rally/success/race.json" "$d/"
    done
done
s3=s3://bench-state/nightly
"$bin" state push scale.toml --backend "$s3" >/dev/null
echo "state: $(stat -c %s state/scale.state.json) bytes, $(find results -type f | wc -l) result files"

# Runs a command RUNS times after one warm-up; prints min, median and max wall seconds.
time_it() {
    local name=$1
    shift
    "$@" >/dev/null 2>&1 || { echo "$name: the command failed: $*" >&2; "$@"; exit 1; }
    local times=()
    for _ in $(seq "$runs"); do
        local start end
        start=$(date +%s%N)
        "$@" >/dev/null 2>&1
        end=$(date +%s%N)
        times+=("$(( (end - start) / 1000000 ))")
    done
    sorted=$(printf '%s\n' "${times[@]}" | sort -n)
    printf '%-58s min %6s ms  median %6s ms  max %6s ms\n' "$name" \
        "$(echo "$sorted" | head -1)" "$(echo "$sorted" | sed -n "$(( (runs + 1) / 2 ))p")" "$(echo "$sorted" | tail -1)"
}

time_it "plan, state local" "$bin" plan scale.toml --refresh=false --prices prices.toml --backend local
time_it "plan, state in S3" "$bin" plan scale.toml --refresh=false --prices prices.toml --backend "$s3"
# `state rm` of a different recorded test each time (the state holds every other test of each
# suite): lock, read, one write, give back.
echo 0 >"$work/removed"
forget() {
    cat <<SH
n=\$(cat '$work/removed'); echo \$((n + 1)) >'$work/removed'
exec '$bin' state rm suite-\$((n % 100)).test-\$((n / 100 * 2)) scale.toml --backend '$1'
SH
}
time_it "one state write (state rm), local" sh -c "$(forget local)"
time_it "one state write (state rm), in S3" sh -c "$(forget "$s3")"
time_it "results --run of 500 tests, local" "$bin" results scale.toml --run "$run" --backend local
time_it "results --run of 500 tests from S3, warm cache" "$bin" results scale.toml --run "$run" --backend "$s3"
time_it "results --run of 500 tests from S3, cold cache" \
    sh -c "rm -rf '$work/cache/rallyctl/results'; exec '$bin' results scale.toml --run '$run' --backend '$s3'"
