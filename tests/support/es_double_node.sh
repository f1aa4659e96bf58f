#!/bin/bash
# bin/elasticsearch of the Elasticsearch test double's distribution archive
# (Harness::package_es_double): starts es_double.py as one node of a cluster, as the rendered
# config/elasticsearch.yml says, the way Rally's launcher runs Elasticsearch: `-d` detaches,
# `-p FILE` names the pid file Rally waits for. Exits 0 once the node writes its pid file, or
# 1 with the tail of the node's log when the node dies before.
set -u
home="$(cd "$(dirname "$0")/.." && pwd)"
daemon=0
pid_file="$home/pid"
while [ $# -gt 0 ]; do
  case "$1" in
    -d|--daemonize) daemon=1 ;;
    -p|--pidfile) pid_file="$2"; shift ;;
  esac
  shift
done
python=python3
if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; fi
node=("$python" "$home/lib/es_double.py" --node-config "$home/config/elasticsearch.yml"
      --pid-file "$pid_file" --version "$(cat "$home/lib/version")")
if [ "$daemon" = 0 ]; then exec "${node[@]}"; fi

startup_log="$home/logs-startup.txt"
setsid "${node[@]}" </dev/null >"$startup_log" 2>&1 &
child=$!
for _ in $(seq 300); do
  if [ -s "$pid_file" ]; then exit 0; fi
  if ! kill -0 "$child" 2>/dev/null; then
    echo "the Elasticsearch test double did not start:" >&2
    tail -n 20 "$startup_log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "the Elasticsearch test double wrote no pid file to $pid_file within 30 s" >&2
exit 1
