#!/bin/bash
# bin/elasticsearch of the Elasticsearch test double's distribution archive
# (Harness::put_es_double_distribution): es_double.py as one node of a cluster, as the rendered
# config/elasticsearch.yml says, taking Rally's launcher's arguments: `-d` detaches (exit 0
# once the node serves, 1 with the reason on stderr when it cannot), `-p FILE` names the pid
# file Rally waits for.
set -eu
home="$(cd "$(dirname "$0")/.." && pwd)"
args=()
pid_file="$home/pid"
while [ $# -gt 0 ]; do
  case "$1" in
    -d|--daemonize) args+=(--daemonize) ;;
    -p|--pidfile) pid_file="$2"; shift ;;
  esac
  shift
done
python=python3
if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; fi
exec "$python" "$home/lib/es_double.py" --node-config "$home/config/elasticsearch.yml" \
  --pid-file "$pid_file" --version "$(cat "$home/lib/version")" "${args[@]}"
