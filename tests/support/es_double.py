#!/usr/bin/env python3
"""Elasticsearch-compatible HTTP test double for rallyctl's end-to-end tests (stdlib only).

It answers what Rally 2.13's `benchmark-only` pipeline asks of a target cluster for a small track
(info, cluster health and settings, node/index stats, index create/delete/exists, _bulk, _search,
refresh/forcemerge/flush, ...) and what Rally asks of an Elasticsearch *metrics store* (index
templates, indices `rally-metrics-*`, `rally-races-*`, `rally-results-*`, bulk and single-document
writes, searches for previous races).

Every response carries `X-Elastic-Product: Elasticsearch` and a JSON body (none for HEAD).

Test endpoints (not Elasticsearch API):
  GET  /_test/requests  JSON list of {"method", "path", "status", "unhandled", "client"} for every
                        request ("client": the address it came from)
  GET  /_test/docs      JSON object index -> number of documents received (bulk and single writes)
  POST /_test/latency   body {"search_ms": N} and/or {"bulk_ms": M}: from now on every search-type
                        answer (_search, _msearch, _count) of this cluster comes N milliseconds
                        late, every _bulk answer M (0: at once); the other requests are not
                        slowed down
  POST /_test/reset     forget indices, templates, settings, requests and documents;
                        latencies back to 0

Usage: es_double.py --host 127.0.0.1 --port 0 --port-file FILE [--clusters N]
Binds, writes the chosen port to FILE atomically (write to a temporary file, then rename), then
serves until killed. With --clusters N it serves N independent clusters (own indices, settings,
records) on N ports, written one per line: races that run at the same time against one cluster
share its indices, and one race's delete-index makes the other's searches fail. Unknown requests answer 404 (GET/HEAD) or 400 (others) with an Elasticsearch
style error and are marked "unhandled" in /_test/requests so that tests can spot them.

Usage as one node of a cluster of several processes (what `bin/elasticsearch` of the double's
distribution archive runs, tests/support/es_double_node.sh):
    es_double.py --node-config config/elasticsearch.yml --pid-file FILE --version 8.15.0
It serves HTTP on the yml's network.host:http.port as node.name of cluster.name, and answers
other nodes on transport.port. The discovery.seed_hosts (IP:transport port) that answer there
are the cluster's members (`/`, `/_cluster/health` with number_of_nodes and green once every
seed host is up, `/_nodes`, `/_cat/nodes`); the first seed host is the master, whose state every
node serves the data from (index, bulk, search, settings, `/_test/docs`, `/_test/latency`: a
node forwards them to the master's transport port). `/_test/requests` and `/_test/reset` are
each node's own: which requests it answered, and from where. It logs to path.logs
(`<cluster.name>.log`, and a `gc.log`) and writes the pid file once both ports listen; SIGTERM
stops it. With --daemonize it exits 0 once the node serves in a child of its own session, or 1
when the node cannot listen (the reason in its log and on stderr).
"""

import argparse
import fnmatch
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

VERSION = {
    "number": "8.15.0",
    "build_flavor": "default",
    "build_type": "tar",
    "build_hash": "1a77947f34deddb41af25e6f0ddb8e830159c179",
    "build_date": "2024-08-05T10:05:34.233336849Z",
    "build_snapshot": False,
    "lucene_version": "9.11.1",
    "minimum_wire_compatibility_version": "7.17.0",
    "minimum_index_compatibility_version": "7.0.0",
}
CLUSTER_NAME = "es-double"
CLUSTER_UUID = "c0ffee00-0000-4000-8000-00000000e5d0"
NODE_ID = "esdoubleNode0000000000"
NODE_NAME = "es-double-0"
# Marks an answer to a request the double does not handle, so that a node that forwarded the
# request records it as unhandled too.
UNHANDLED_HEADER = "X-Es-Double-Unhandled"


class State:
    """Everything the double remembers; guarded by one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.indices = {}  # name -> {"docs": int, "body": dict, "sources": [dict]}
        self.templates = {"_template": {}, "_index_template": {}, "_component_template": {}}
        self.settings = {"persistent": {}, "transient": {}}
        self.requests = []  # [{"method", "path", "status", "unhandled"}]
        self.docs = {}  # index -> documents received
        self.search_ms = 0  # delay of every _search, _msearch and _count answer (/_test/latency)
        self.bulk_ms = 0  # delay of every _bulk answer (/_test/latency)
        self.started = time.time()


def now_ms():
    return int(time.time() * 1000)


def error_body(status, etype, reason, index=None):
    err = {"type": etype, "reason": reason}
    if index is not None:
        err["index"] = index
        err["resource.type"] = "index_or_alias"
        err["resource.id"] = index
    return {"error": {"root_cause": [dict(err)], **err}, "status": status}


def shard_stats(docs):
    """A plausible per-index stats section (primaries and total share it)."""
    return {
        "docs": {"count": docs, "deleted": 0},
        "store": {"size_in_bytes": 200 * docs + 1024, "total_data_set_size_in_bytes": 200 * docs + 1024,
                  "reserved_in_bytes": 0},
        "indexing": {"index_total": docs, "index_time_in_millis": docs // 10, "index_current": 0,
                     "index_failed": 0, "delete_total": 0, "delete_time_in_millis": 0,
                     "noop_update_total": 0, "is_throttled": False, "throttle_time_in_millis": 0},
        "search": {"open_contexts": 0, "query_total": 0, "query_time_in_millis": 0, "query_current": 0,
                   "fetch_total": 0, "fetch_time_in_millis": 0, "fetch_current": 0, "scroll_total": 0,
                   "scroll_time_in_millis": 0, "scroll_current": 0},
        "merges": {"current": 0, "current_docs": 0, "current_size_in_bytes": 0, "total": 0,
                   "total_time_in_millis": 0, "total_docs": 0, "total_size_in_bytes": 0,
                   "total_stopped_time_in_millis": 0, "total_throttled_time_in_millis": 0,
                   "total_auto_throttle_in_bytes": 20971520},
        "refresh": {"total": 1, "total_time_in_millis": 1, "external_total": 1,
                    "external_total_time_in_millis": 1, "listeners": 0},
        "flush": {"total": 0, "periodic": 0, "total_time_in_millis": 0},
        "segments": {"count": 1 if docs else 0, "memory_in_bytes": 0, "terms_memory_in_bytes": 0,
                     "stored_fields_memory_in_bytes": 0, "term_vectors_memory_in_bytes": 0,
                     "norms_memory_in_bytes": 0, "points_memory_in_bytes": 0,
                     "doc_values_memory_in_bytes": 0, "index_writer_memory_in_bytes": 0,
                     "version_map_memory_in_bytes": 0, "fixed_bit_set_memory_in_bytes": 0,
                     "max_unsafe_auto_id_timestamp": -1, "file_sizes": {}},
        "translog": {"operations": 0, "size_in_bytes": 55, "uncommitted_operations": 0,
                     "uncommitted_size_in_bytes": 55, "earliest_last_modified_age": 0},
    }


class Node:
    """Who a server answers as: the one node of a cluster of its own (--clusters), or one node
    of a cluster of several processes (--node-config)."""

    def __init__(self, name=NODE_NAME, node_id=NODE_ID, host="127.0.0.1", http_port=9200,
                 transport_port=9300, cluster_name=CLUSTER_NAME, cluster_uuid=CLUSTER_UUID,
                 heap_bytes=1073741824):
        self.name = name
        self.id = node_id
        self.host = host
        self.http_port = http_port
        self.transport_port = transport_port
        self.cluster_name = cluster_name
        self.cluster_uuid = cluster_uuid
        self.heap_bytes = heap_bytes

    def to_json(self):
        return dict(self.__dict__)

    @staticmethod
    def from_json(d):
        return Node(d["name"], d["id"], d["host"], d["http_port"], d["transport_port"],
                    d["cluster_name"], d["cluster_uuid"], d["heap_bytes"])


def node_info(state, me):
    return {
        "name": me.name,
        "transport_address": "%s:%d" % (me.host, me.transport_port),
        "host": me.host,
        "ip": me.host,
        "version": VERSION["number"],
        "build_flavor": VERSION["build_flavor"],
        "build_type": VERSION["build_type"],
        "build_hash": VERSION["build_hash"],
        "roles": ["data", "ingest", "master"],
        "attributes": {},
        "settings": {"node": {"name": me.name}, "cluster": {"name": me.cluster_name}},
        "os": {"name": "Linux", "pretty_name": "Debian GNU/Linux 12 (bookworm)", "arch": "amd64",
               "version": "6.1.0", "available_processors": 2, "allocated_processors": 2},
        "process": {"refresh_interval_in_millis": 1000, "id": 1, "mlockall": False},
        "jvm": {"pid": 1, "version": "21.0.2", "vm_name": "OpenJDK 64-Bit Server VM",
                "vm_version": "21.0.2+13-58", "vm_vendor": "Oracle Corporation",
                "start_time_in_millis": int(state.started * 1000),
                "mem": {"heap_init_in_bytes": me.heap_bytes, "heap_max_in_bytes": me.heap_bytes},
                "gc_collectors": ["G1 Young Generation", "G1 Concurrent GC", "G1 Old Generation"],
                "memory_pools": ["CodeHeap 'non-nmethods'", "Metaspace", "G1 Eden Space",
                                 "G1 Old Gen", "G1 Survivor Space"],
                "input_arguments": ["-Xms1g", "-Xmx1g"]},
        "plugins": [],
        "modules": [],
        "ingest": {"processors": []},
    }


def node_stats(state, me):
    with state.lock:
        total_docs = sum(i["docs"] for i in state.indices.values())
    pool = {"used_in_bytes": 1 << 20, "max_in_bytes": 1 << 30, "peak_used_in_bytes": 2 << 20,
            "peak_max_in_bytes": 1 << 30}
    return {
        "timestamp": now_ms(),
        "name": me.name,
        "transport_address": "%s:%d" % (me.host, me.transport_port),
        "host": me.host,
        "ip": "%s:%d" % (me.host, me.transport_port),
        "roles": ["data", "ingest", "master"],
        "attributes": {},
        "indices": shard_stats(total_docs),
        "os": {"timestamp": now_ms(), "cpu": {"percent": 1, "load_average": {"1m": 0.1}},
               "mem": {"total_in_bytes": 1 << 34, "free_in_bytes": 1 << 33, "used_in_bytes": 1 << 33,
                       "free_percent": 50, "used_percent": 50}},
        "process": {"timestamp": now_ms(), "open_file_descriptors": 100, "max_file_descriptors": 65535,
                    "cpu": {"percent": 1, "total_in_millis": 1000},
                    "mem": {"total_virtual_in_bytes": 1 << 32}},
        "jvm": {
            "timestamp": now_ms(),
            "uptime_in_millis": int((time.time() - state.started) * 1000),
            "mem": {"heap_used_in_bytes": 1 << 28, "heap_used_percent": 25,
                    "heap_committed_in_bytes": 1 << 30, "heap_max_in_bytes": 1 << 30,
                    "non_heap_used_in_bytes": 1 << 26, "non_heap_committed_in_bytes": 1 << 27,
                    "pools": {"young": dict(pool), "survivor": dict(pool), "old": dict(pool)}},
            "threads": {"count": 40, "peak_count": 40},
            "gc": {"collectors": {"young": {"collection_count": 0, "collection_time_in_millis": 0},
                                  "old": {"collection_count": 0, "collection_time_in_millis": 0}}},
            "buffer_pools": {},
            "classes": {"current_loaded_count": 1, "total_loaded_count": 1, "total_unloaded_count": 0},
        },
        "thread_pool": {},
        "fs": {"timestamp": now_ms(), "total": {"total_in_bytes": 1 << 36, "free_in_bytes": 1 << 35,
                                                 "available_in_bytes": 1 << 35}},
        "transport": {"server_open": 0, "rx_count": 0, "rx_size_in_bytes": 0, "tx_count": 0,
                      "tx_size_in_bytes": 0},
        "http": {"current_open": 1, "total_opened": 1},
        "breakers": {},
        "script": {"compilations": 0, "cache_evictions": 0, "compilation_limit_triggered": 0},
        "ingest": {"total": {"count": 0, "time_in_millis": 0, "current": 0, "failed": 0},
                   "pipelines": {}},
        "indexing_pressure": {"memory": {"current": {}, "total": {}, "limit_in_bytes": 0}},
    }


def split_indices(expr):
    return [unquote(p) for p in expr.split(",") if p]


def matching(state, expr):
    """Existing index names matching a comma separated list of names/wildcards (lock held)."""
    names = []
    for part in split_indices(expr):
        if part in ("_all", "*"):
            names.extend(state.indices)
        elif "*" in part or "?" in part:
            names.extend(fnmatch.filter(state.indices, part))
        elif part in state.indices:
            names.append(part)
    seen = set()
    return [n for n in names if not (n in seen or seen.add(n))]


def has_wildcard(expr):
    return any(("*" in p or "?" in p or p == "_all") for p in split_indices(expr))


# Documents of these indices are kept (and searchable): Rally's metrics store reads its own
# metrics back with searches and aggregations to compute the results. Other indices (the
# benchmark's target) only count their documents.
STORED_INDEX_PATTERNS = ("rally-*",)


def new_index(body=None):
    return {"docs": 0, "body": body or {}, "sources": []}


def ensure_index(state, name):
    """Auto-create an index on write, as Elasticsearch does (lock held)."""
    if name not in state.indices:
        state.indices[name] = new_index()


def count_doc(state, index, n=1, sources=None):
    """Record n documents received for index, keeping sources of stored indices (lock held)."""
    ensure_index(state, index)
    state.indices[index]["docs"] += n
    state.docs[index] = state.docs.get(index, 0) + n
    if sources and any(fnmatch.fnmatch(index, p) for p in STORED_INDEX_PATTERNS):
        state.indices[index]["sources"].extend(sources)


# --- a small query engine over stored documents: what Rally's metrics store asks -------------

def field_values(doc, path):
    """Values of a dotted field path in a source document (lists flattened)."""
    cur = [doc]
    for part in path.split("."):
        nxt = []
        for c in cur:
            if isinstance(c, dict) and part in c:
                v = c[part]
                nxt.extend(v if isinstance(v, list) else [v])
        cur = nxt
    return cur


def same_term(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return str(a).lower() == str(b).lower()
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return str(a) == str(b)


def matches(doc, q):
    """Does source `doc` match query `q` (term, terms, range, exists, match_all, bool, ids)?"""
    if not q:
        return True
    (kind, spec), = q.items()
    if kind == "match_all":
        return True
    if kind == "match_none":
        return False
    if kind == "term":
        (field, val), = spec.items()
        if isinstance(val, dict):
            val = val.get("value")
        return any(same_term(v, val) for v in field_values(doc, field))
    if kind == "terms":
        (field, vals), = ((k, v) for k, v in spec.items() if k != "boost")
        return any(same_term(v, w) for v in field_values(doc, field) for w in vals)
    if kind == "exists":
        return bool(field_values(doc, spec["field"]))
    if kind == "range":
        (field, cond), = spec.items()
        ops = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
               "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}
        for v in field_values(doc, field):
            try:
                if all(ops[o](v, b) for o, b in cond.items() if o in ops):
                    return True
            except TypeError:
                continue
        return False
    if kind == "bool":
        def as_list(x):
            return x if isinstance(x, list) else ([x] if x else [])
        if not all(matches(doc, c) for c in as_list(spec.get("filter")) + as_list(spec.get("must"))):
            return False
        if any(matches(doc, c) for c in as_list(spec.get("must_not"))):
            return False
        should = as_list(spec.get("should"))
        if should:
            minimum = spec.get("minimum_should_match", 0 if (spec.get("filter") or spec.get("must")) else 1)
            if sum(1 for c in should if matches(doc, c)) < int(minimum):
                return False
        return True
    raise ValueError("es_double: unsupported query [%s]" % kind)


def percentile_value(sorted_values, percentile):
    """Same interpolation as Rally's in-memory store, so both stores report the same numbers."""
    rank = float(percentile) / 100.0 * (len(sorted_values) - 1)
    lo = int(rank)
    if rank == lo:
        return sorted_values[lo]
    return sorted_values[lo] + (sorted_values[lo + 1] - sorted_values[lo]) * (rank - lo)


def aggregate(docs, aggs):
    out = {}
    for name, spec in (aggs or {}).items():
        sub = spec.get("aggs") or spec.get("aggregations")
        kind = next(k for k in spec if k not in ("aggs", "aggregations", "meta"))
        body = spec[kind]
        nums = [v for d in docs for v in field_values(d, body.get("field", ""))
                if isinstance(v, (int, float)) and not isinstance(v, bool)] if "field" in body else []
        if kind == "stats":
            out[name] = {"count": len(nums), "min": min(nums) if nums else None,
                         "max": max(nums) if nums else None,
                         "avg": sum(nums) / len(nums) if nums else None,
                         "sum": float(sum(nums))}
        elif kind in ("min", "max", "avg", "sum", "value_count"):
            fn = {"min": min, "max": max, "sum": sum, "value_count": len,
                  "avg": lambda x: sum(x) / len(x)}[kind]
            out[name] = {"value": fn(nums) if (nums or kind in ("sum", "value_count")) else None}
        elif kind == "percentiles":
            vals = sorted(nums)
            out[name] = {"values": {str(float(p)): (percentile_value(vals, p) if vals else None)
                                    for p in body.get("percents", [1, 5, 25, 50, 75, 95, 99])}}
        elif kind == "terms":
            groups = {}
            for d in docs:
                for v in field_values(d, body["field"]):
                    key = v
                    groups.setdefault(json.dumps(key), (key, []))[1].append(d)
            buckets = []
            for key, members in sorted(groups.values(), key=lambda g: -len(g[1]))[: body.get("size", 10)]:
                b = {"key": key, "doc_count": len(members)}
                if isinstance(key, bool):
                    b["key"] = 1 if key else 0
                    b["key_as_string"] = "true" if key else "false"
                if sub:
                    b.update(aggregate(members, sub))
                buckets.append(b)
            out[name] = {"doc_count_error_upper_bound": 0, "sum_other_doc_count": 0,
                         "buckets": buckets}
        else:
            out[name] = {"buckets": []} if sub else {"value": None}
    return out


def sort_key_fn(sort):
    """A key function list for ES `sort` (list of field names or {field: order|{order}})."""
    keys = []
    for item in sort if isinstance(sort, list) else [sort]:
        if isinstance(item, str):
            keys.append((item, False))
        else:
            (field, how), = item.items()
            order = how.get("order", "asc") if isinstance(how, dict) else how
            keys.append((field, order == "desc"))
    return keys


def parse_bulk(raw, default_index):
    """Parse an ndjson bulk body; return (items, per-index doc counts, per-index sources)."""
    items = []
    counts = {}
    sources = {}
    lines = [ln for ln in raw.split(b"\n") if ln.strip()]
    i = 0
    seq = 0
    while i < len(lines):
        try:
            action_line = json.loads(lines[i])
        except ValueError:
            raise ValueError("Malformed action/metadata line [%d]" % (i + 1))
        i += 1
        if not isinstance(action_line, dict) or len(action_line) != 1:
            raise ValueError("Malformed action/metadata line [%d]" % i)
        op, meta = next(iter(action_line.items()))
        if op not in ("index", "create", "update", "delete"):
            raise ValueError("Unknown action [%s]" % op)
        meta = meta or {}
        index = meta.get("_index", default_index)
        if not index:
            raise ValueError("index is missing")
        source = None
        if op != "delete":
            if i < len(lines) and index.startswith("rally-"):
                try:
                    source = json.loads(lines[i])
                except ValueError:
                    source = None
            i += 1  # the source (or update body) line
        seq += 1
        doc_id = meta.get("_id") or uuid.uuid4().hex[:20]
        status = 200 if op in ("update", "delete") else 201
        result = {"index": "created", "create": "created", "update": "updated", "delete": "deleted"}[op]
        items.append({op: {"_index": index, "_id": doc_id, "_version": 1, "result": result,
                           "_shards": {"total": 1, "successful": 1, "failed": 0},
                           "_seq_no": seq, "_primary_term": 1, "status": status}})
        if op in ("index", "create"):
            counts[index] = counts.get(index, 0) + 1
            if isinstance(source, dict):
                sources.setdefault(index, []).append(source)
    return items, counts, sources


def search_response(state, index_expr, body):
    body = body if isinstance(body, dict) else {}
    with state.lock:
        names = matching(state, index_expr) if index_expr else list(state.indices)
        stored = [(n, list(state.indices[n]["sources"])) for n in names
                  if any(fnmatch.fnmatch(n, p) for p in STORED_INDEX_PATTERNS)]
        counted = sum(state.indices[n]["docs"] for n in names
                      if not any(fnmatch.fnmatch(n, p) for p in STORED_INDEX_PATTERNS))
    query = body.get("query") or {}
    hits = [(n, d) for n, ds in stored for d in ds if matches(d, query)]
    # documents of other indices are only counted: they match a match_all or absent query
    unstored = counted if (not query or "match_all" in query) else 0
    total = len(hits) + unstored
    if body.get("sort"):
        for field, desc in reversed(sort_key_fn(body["sort"])):
            present = [h for h in hits if field_values(h[1], field)]
            missing = [h for h in hits if not field_values(h[1], field)]
            present.sort(key=lambda h, f=field: field_values(h[1], f)[0], reverse=desc)
            hits = present + missing  # documents without the field sort last, as in ES
    size = body.get("size", 10) if isinstance(body.get("size", 10), int) else 10
    start = body.get("from", 0) if isinstance(body.get("from", 0), int) else 0
    page = [{"_index": n, "_id": str(k), "_score": 1.0, "_source": d}
            for k, (n, d) in enumerate(hits[start:start + size])]
    if len(page) < size and unstored and names:
        page += [{"_index": names[0], "_id": str(k), "_score": 1.0, "_source": {}}
                 for k in range(min(size - len(page), unstored))]
    resp = {
        "took": 1,
        "timed_out": False,
        "_shards": {"total": max(len(names), 1), "successful": max(len(names), 1), "skipped": 0,
                    "failed": 0},
        "hits": {"total": {"value": total, "relation": "eq"}, "max_score": 1.0 if total else None,
                 "hits": page},
    }
    aggs = body.get("aggs") or body.get("aggregations")
    if aggs:
        resp["aggregations"] = aggregate([d for _, d in hits], aggs)
    return resp


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "es-double/1.0"

    @property
    def state(self):
        return self.server.state

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):  # quiet; the record is at /_test/requests
        if self.server.log_requests or os.environ.get("ES_DOUBLE_VERBOSE"):
            sys.stderr.write("%s - %s\n" % (self.address_string(), fmt % args))

    # --- plumbing ------------------------------------------------------------------------
    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            raw = b"".join(chunks)
        else:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding", "").lower() == "gzip" and raw:
            import gzip
            raw = gzip.decompress(raw)
        return raw

    def _send(self, status, body, unhandled=False):
        self._send_payload(status, b"" if body is None else json.dumps(body).encode(), unhandled)

    def _send_payload(self, status, payload, unhandled):
        self.send_response(status)
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if unhandled:
            self.send_header(UNHANDLED_HEADER, "true")
        # Headers and body in one write: two small writes trip Nagle + delayed ACK (~40 ms each).
        if self.command != "HEAD":
            self._headers_buffer.append(b"\r\n" + payload)
            self.flush_headers()
        else:
            self.end_headers()
        if self.server.record and not self.path.startswith("/_test/"):
            with self.state.lock:
                self.state.requests.append({"method": self.command, "path": self.path, "status": status,
                                            "unhandled": unhandled,
                                            "client": self.client_address[0]})

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _dispatch(self):
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        parts = [p for p in url.path.split("/") if p]
        raw = self._body() if self.command in ("PUT", "POST", "DELETE", "GET") else b""
        master = self.server.master()
        if master and not is_node_local(parts):
            self._forward(master, raw)
            return
        try:
            status, body = self.route(self.command, parts, raw)
        except ValueError as e:
            status, body = 400, error_body(400, "illegal_argument_exception", str(e))
        except Exception as e:  # a bug in the double: answer 500 and keep serving
            status, body = 500, error_body(500, "es_double_exception", repr(e))
        if status is None:
            m = self.command
            status = 404 if m in ("GET", "HEAD") else 400
            self._send(status, error_body(status, "es_double_unhandled",
                                          "es_double does not handle %s %s" % (m, self.path)),
                       unhandled=True)
            return
        self._send(status, body)

    def _forward(self, master, raw):
        """Serve a request of the cluster's data from the master node's state, as its
        transport port answers it."""
        conn = http.client.HTTPConnection(master[0], master[1], timeout=120)
        try:
            conn.request(self.command, self.path, body=raw,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            payload = resp.read()
            self._send_payload(resp.status, payload,
                               resp.getheader(UNHANDLED_HEADER) == "true")
        except OSError as e:
            self._send(503, error_body(503, "master_not_discovered_exception",
                                       "master %s:%d: %s" % (master[0], master[1], e)))
        finally:
            conn.close()

    def _json(self, raw):
        if not raw.strip():
            return {}
        return json.loads(raw)

    # --- routing -------------------------------------------------------------------------
    def route(self, m, parts, raw):
        n = len(parts)
        first = parts[0] if parts else ""

        if n == 0:
            if m in ("GET", "HEAD"):
                me = self.server.node
                return 200, {"name": me.name, "cluster_name": me.cluster_name,
                             "cluster_uuid": me.cluster_uuid, "version": VERSION,
                             "tagline": "You Know, for Search"}
            return None, None

        if first == "_test":
            return self.route_test(m, parts[1:], raw)
        if first == "_cluster":
            return self.route_cluster(m, parts[1:], raw)
        if first == "_nodes":
            return self.route_nodes(m, parts[1:])
        if first == "_stats" and m == "GET":
            return 200, self.index_stats(None)
        if first in ("_template", "_index_template", "_component_template"):
            return self.route_template(m, first, parts[1:], raw)
        if first == "_bulk" and m in ("POST", "PUT"):
            return self.bulk(raw, None)
        if first in ("_search", "_msearch", "_count"):
            return self.route_search(m, "", first, raw)
        if first in ("_refresh", "_flush", "_forcemerge", "_cache"):
            return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
        if first == "_cat" and parts[1:] == ["nodes"] and m == "GET":
            master = self.server.master_id()
            return 200, [{"ip": nd.host, "name": nd.name, "node.role": "dim",
                          "master": "*" if nd.id == master else "-"}
                         for nd in self.server.members()]
        if first == "_cat":
            return 200, []
        if first == "_internal" and parts[1:] == ["node"] and m == "GET":
            return 200, self.server.node.to_json()
        if first == "_tasks":
            return 200, {"nodes": {}}
        if first == "_license":
            return 200, {"license": {"status": "active", "type": "basic",
                                     "uid": self.server.node.cluster_uuid}}
        if first == "_xpack":
            return 200, {"features": {}, "license": {"status": "active", "type": "basic"}}
        if first == "_ingest":
            return 200, ({} if m == "GET" else {"acknowledged": True})
        if first == "_alias" or first == "_aliases":
            return 200, ({} if m == "GET" else {"acknowledged": True})
        if first == "_snapshot":
            return 200, ({} if m == "GET" else {"acknowledged": True})
        if first == "_ml":
            return 200, ({"count": 0, "jobs": [], "datafeeds": []} if m == "GET"
                         else {"acknowledged": True})
        if first.startswith("_"):
            return None, None

        # index-level: /INDEX[/...]
        index = unquote(first)
        if n == 1:
            return self.route_index(m, index, raw)
        sub = parts[1]
        if sub in ("_search", "_msearch", "_count"):
            return self.route_search(m, index, sub, raw)
        if sub == "_bulk" and m in ("POST", "PUT"):
            return self.bulk(raw, index)
        if sub in ("_doc", "_create") and m in ("POST", "PUT"):
            doc = self._json(raw)
            doc_id = unquote(parts[2]) if n > 2 else uuid.uuid4().hex[:20]
            with self.state.lock:
                count_doc(self.state, index, 1, [doc] if isinstance(doc, dict) else None)
            return 201, {"_index": index, "_id": doc_id, "_version": 1, "result": "created",
                         "_shards": {"total": 1, "successful": 1, "failed": 0}, "_seq_no": 0,
                         "_primary_term": 1}
        if sub == "_doc" and m in ("GET", "HEAD"):
            return 404, {"_index": index, "_id": unquote(parts[2]) if n > 2 else "",
                         "found": False}
        if sub in ("_refresh", "_flush", "_forcemerge", "_cache"):
            with self.state.lock:
                names = matching(self.state, index)
            if not names and not has_wildcard(index):
                return 404, error_body(404, "index_not_found_exception", "no such index [%s]" % index,
                                       index)
            return 200, {"_shards": {"total": len(names), "successful": len(names), "failed": 0}}
        if sub == "_stats" and m == "GET":
            return 200, self.index_stats(index)
        if sub in ("_settings", "_mapping", "_mappings"):
            if m == "GET":
                with self.state.lock:
                    names = matching(self.state, index)
                key = "settings" if sub == "_settings" else "mappings"
                return 200, {nm: {key: {}} for nm in names}
            return 200, {"acknowledged": True}
        if sub in ("_alias", "_aliases"):
            return 200, ({} if m == "GET" else {"acknowledged": True})
        if sub in ("_open", "_close", "_shrink", "_split", "_clone", "_rollover", "_block"):
            return 200, {"acknowledged": True, "shards_acknowledged": True, "index": index}
        if sub == "_delete_by_query" or sub == "_update_by_query":
            return 200, {"took": 1, "timed_out": False, "total": 0, "deleted": 0, "updated": 0,
                         "failures": []}
        return None, None

    def route_test(self, m, rest, raw):
        if m == "GET" and rest == ["requests"]:
            with self.state.lock:
                return 200, list(self.state.requests)
        if m == "GET" and rest == ["docs"]:
            with self.state.lock:
                return 200, dict(self.state.docs)
        if m == "POST" and rest == ["reset"]:
            with self.state.lock:
                self.state.reset()
            return 200, {"acknowledged": True}
        if m == "POST" and rest == ["latency"]:
            body = self._json(raw)
            delays = {k: body[k] for k in ("search_ms", "bulk_ms") if k in body}
            for k, ms in delays.items():
                if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 <= ms <= 600000:
                    raise ValueError("/_test/latency: %s takes N from 0 to 600000, not %r" % (k, ms))
            if not delays:
                raise ValueError("/_test/latency takes {\"search_ms\": N} and/or {\"bulk_ms\": M}, not %r"
                                 % (body,))
            with self.state.lock:
                for k, ms in delays.items():
                    setattr(self.state, k, ms)
            return 200, {"acknowledged": True, **delays}
        return None, None

    def route_cluster(self, m, rest, raw):
        what = rest[0] if rest else ""
        if what == "health" and m == "GET":
            with self.state.lock:
                n_idx = len(self.state.indices)
            nodes = len(self.server.members())
            status = "green" if nodes >= self.server.expected_nodes() else "yellow"
            return 200, {"cluster_name": self.server.node.cluster_name, "status": status,
                         "timed_out": False, "number_of_nodes": nodes,
                         "number_of_data_nodes": nodes,
                         "active_primary_shards": n_idx, "active_shards": n_idx,
                         "relocating_shards": 0, "initializing_shards": 0, "unassigned_shards": 0,
                         "delayed_unassigned_shards": 0, "number_of_pending_tasks": 0,
                         "number_of_in_flight_fetch": 0, "task_max_waiting_in_queue_millis": 0,
                         "active_shards_percent_as_number": 100.0}
        if what == "settings":
            if m == "GET":
                with self.state.lock:
                    resp = {"persistent": dict(self.state.settings["persistent"]),
                            "transient": dict(self.state.settings["transient"])}
                if self.query.get("include_defaults", ["false"])[0] == "true":
                    resp["defaults"] = {}
                return 200, resp
            if m == "PUT":
                body = self._json(raw)
                with self.state.lock:
                    for scope in ("persistent", "transient"):
                        for k, v in (body.get(scope) or {}).items():
                            if v is None:
                                self.state.settings[scope].pop(k, None)
                            else:
                                self.state.settings[scope][k] = v
                return 200, {"acknowledged": True, "persistent": body.get("persistent") or {},
                             "transient": body.get("transient") or {}}
        if what == "state" and m == "GET":
            with self.state.lock:
                names = list(self.state.indices)
            me = self.server.node
            return 200, {"cluster_name": me.cluster_name, "cluster_uuid": me.cluster_uuid,
                         "master_node": self.server.master_id(),
                         "metadata": {"indices": {n: {} for n in names}},
                         "nodes": {nd.id: {"name": nd.name} for nd in self.server.members()}}
        if what == "stats" and m == "GET":
            me = self.server.node
            return 200, {"cluster_name": me.cluster_name, "cluster_uuid": me.cluster_uuid,
                         "status": "green", "nodes": {"count": {"total": len(self.server.members())}},
                         "indices": {}}
        if what == "pending_tasks" and m == "GET":
            return 200, {"tasks": []}
        return None, None

    def route_nodes(self, m, rest):
        if m != "GET":
            return None, None
        # /_nodes, /_nodes/{node_id|metric}, /_nodes/stats[/{metric}], /_nodes/{id}/stats[/{m}],
        # /_nodes/hot_threads, /_nodes/usage ...
        is_stats = "stats" in rest
        if "hot_threads" in rest:
            return 200, {}
        members = self.server.members()
        header = {"_nodes": {"total": len(members), "successful": len(members), "failed": 0},
                  "cluster_name": self.server.node.cluster_name}
        if is_stats:
            return 200, {**header, "nodes": {nd.id: node_stats(self.state, nd) for nd in members}}
        if "usage" in rest:
            return 200, {**header, "nodes": {nd.id: {"rest_actions": {}} for nd in members}}
        return 200, {**header, "nodes": {nd.id: node_info(self.state, nd) for nd in members}}

    def route_template(self, m, kind_name, rest, raw):
        store = self.state.templates[kind_name]
        name = unquote(rest[0]) if rest else None
        if m in ("PUT", "POST") and name:
            body = self._json(raw)
            with self.state.lock:
                store[name] = body
            return 200, {"acknowledged": True}
        if m == "HEAD" and name:
            with self.state.lock:
                return (200 if name in store else 404), None
        if m == "DELETE" and name:
            with self.state.lock:
                existed = store.pop(name, None) is not None
            if existed:
                return 200, {"acknowledged": True}
            return 404, error_body(404, "resource_not_found_exception", "template [%s] missing" % name)
        if m == "GET":
            with self.state.lock:
                names = [k for k in store if name is None or fnmatch.fnmatch(k, name)]
                if kind_name == "_template":
                    found = {k: store[k] for k in names}
                elif kind_name == "_index_template":
                    found = {"index_templates": [{"name": k, "index_template": store[k]} for k in names]}
                else:
                    found = {"component_templates": [{"name": k, "component_template": store[k]}
                                                     for k in names]}
            if name and not names and "*" not in name:
                return 404, error_body(404, "resource_not_found_exception",
                                       "index template matching [%s] not found" % name)
            return 200, found
        return None, None

    def route_index(self, m, index, raw):
        if m == "HEAD" or m == "GET":
            with self.state.lock:
                names = matching(self.state, index)
            if not names and not has_wildcard(index):
                return 404, (None if m == "HEAD" else error_body(
                    404, "index_not_found_exception", "no such index [%s]" % index, index))
            if m == "HEAD":
                return 200, None
            return 200, {nm: {"aliases": {}, "mappings": {}, "settings": {"index": {
                "number_of_shards": "1", "number_of_replicas": "0", "provided_name": nm}}}
                for nm in names}
        if m == "PUT":
            body = self._json(raw)
            with self.state.lock:
                if index in self.state.indices:
                    return 400, error_body(400, "resource_already_exists_exception",
                                           "index [%s/xyz] already exists" % index, index)
                self.state.indices[index] = new_index(body)
            return 200, {"acknowledged": True, "shards_acknowledged": True, "index": index}
        if m == "DELETE":
            with self.state.lock:
                names = matching(self.state, index)
                if not names and not has_wildcard(index):
                    ignore = self.query.get("ignore_unavailable", ["false"])[0] == "true"
                    if not ignore:
                        return 404, error_body(404, "index_not_found_exception",
                                               "no such index [%s]" % index, index)
                for nm in names:
                    del self.state.indices[nm]
            return 200, {"acknowledged": True}
        if m == "POST":
            # POST /INDEX is not an API; treat like auto-create-on-write noise
            return None, None
        return None, None

    def route_search(self, m, index, what, raw):
        if m not in ("GET", "POST"):
            return None, None
        with self.state.lock:
            delay_ms = self.state.search_ms
        if delay_ms > 0:
            time.sleep(delay_ms / 1000.0)  # outside the lock: other requests go on meanwhile
        if what == "_msearch":
            lines = [ln for ln in raw.split(b"\n") if ln.strip()]
            responses = []
            for k in range(0, len(lines) - 1, 2):
                header = json.loads(lines[k]) or {}
                body = json.loads(lines[k + 1])
                idx = header.get("index", index)
                if isinstance(idx, list):
                    idx = ",".join(idx)
                responses.append({**search_response(self.state, idx, body), "status": 200})
            return 200, {"took": 1, "responses": responses}
        body = self._json(raw)
        if index and not has_wildcard(index):
            with self.state.lock:
                missing = [p for p in split_indices(index) if p not in self.state.indices]
            if missing:
                return 404, error_body(404, "index_not_found_exception",
                                       "no such index [%s]" % missing[0], missing[0])
        if what == "_count":
            resp = search_response(self.state, index, body)
            return 200, {"count": resp["hits"]["total"]["value"], "_shards": resp["_shards"]}
        return 200, search_response(self.state, index, body)

    def bulk(self, raw, default_index):
        start = time.perf_counter()
        with self.state.lock:
            delay_ms = self.state.bulk_ms
        if delay_ms > 0:
            time.sleep(delay_ms / 1000.0)  # outside the lock, as a search's delay
        items, counts, sources = parse_bulk(raw, default_index)
        with self.state.lock:
            for idx, c in counts.items():
                count_doc(self.state, idx, c, sources.get(idx))
        took = int((time.perf_counter() - start) * 1000)
        return 200, {"took": took, "errors": False, "items": items}

    def index_stats(self, index):
        with self.state.lock:
            names = matching(self.state, index) if index else list(self.state.indices)
            per = {nm: self.state.indices[nm]["docs"] for nm in names}
        total = sum(per.values())
        level = self.query.get("level", ["indices"])[0]
        indices = {}
        for nm, docs in per.items():
            entry = {"uuid": uuid.uuid5(uuid.NAMESPACE_DNS, nm).hex, "health": "green",
                     "status": "open", "primaries": shard_stats(docs), "total": shard_stats(docs)}
            if level == "shards":
                entry["shards"] = {"0": [{"routing": {"state": "STARTED", "primary": True,
                                                      "node": self.server.node.id},
                                          **shard_stats(docs)}]}
            indices[nm] = entry
        return {"_shards": {"total": len(per), "successful": len(per), "failed": 0},
                "_all": {"primaries": shard_stats(total), "total": shard_stats(total)},
                "indices": indices}


def is_node_local(parts):
    """Requests a node answers itself; every other one is about the cluster's data, which the
    master node holds."""
    first = parts[0] if parts else ""
    return (not parts or first in ("_nodes", "_cat", "_internal")
            or parts[:2] in (["_cluster", "health"], ["_test", "requests"], ["_test", "reset"]))


class Server(ThreadingHTTPServer):
    """One cluster of its own (`cluster` None), or the HTTP or transport port of one node of a
    cluster of several processes."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, state=None, node=None, cluster=None, record=True):
        super().__init__(addr, Handler)
        self.state = state or State()
        self.node = node or Node()
        self.cluster = cluster
        # A transport port serves other nodes: what it answers was recorded where it was asked.
        self.record = record
        # A node's HTTP port logs each request (client, request line, status) to the node's
        # log, as an access log would: what it served is seen in its collected log once the
        # node is gone.
        self.log_requests = cluster is not None and record

    def members(self):
        return self.cluster.members() if self.cluster else [self.node]

    def expected_nodes(self):
        return self.cluster.expected() if self.cluster else 1

    def master(self):
        """(host, transport port) of the master node when that is another node, else None."""
        return self.cluster.master() if self.cluster and self.record else None

    def master_id(self):
        if not self.cluster:
            return self.node.id
        host, port = self.cluster.master_addr()
        for nd in self.members():
            if (nd.host, nd.transport_port) == (host, port):
                return nd.id
        return None


class Cluster:
    """A node's view of its cluster: the seed hosts (`discovery.seed_hosts`, transport
    addresses) that answer on their transport port are its members; the first seed host is the
    master, whose state every node serves the cluster's data from."""

    def __init__(self, me, seeds):
        self.me = me
        self.seeds = seeds or [(me.host, me.transport_port)]
        self.lock = threading.Lock()
        self.peers = {}  # (host, transport port) -> Node, of the seeds that answer

    def expected(self):
        return len(self.seeds)

    def master_addr(self):
        return self.seeds[0]

    def master(self):
        addr = self.master_addr()
        return None if addr == (self.me.host, self.me.transport_port) else addr

    def members(self):
        with self.lock:
            others = list(self.peers.values())
        return sorted([self.me] + others, key=lambda nd: nd.name)

    def watch(self):
        while True:
            for addr in self.seeds:
                if addr == (self.me.host, self.me.transport_port):
                    continue
                try:
                    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=1)
                    conn.request("GET", "/_internal/node")
                    peer = Node.from_json(json.loads(conn.getresponse().read()))
                    conn.close()
                except (OSError, ValueError, KeyError):
                    peer = None
                with self.lock:
                    if peer:
                        self.peers[addr] = peer
                    else:
                        self.peers.pop(addr, None)
            time.sleep(0.3)


def read_node_config(path):
    """The flat `key: value` lines of an elasticsearch.yml as Rally renders it from the team's
    template; flow lists (`["a","b"]`, `['a']`) become Python lists."""
    conf = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if ":" not in line:
                continue
            key, value = (x.strip() for x in line.split(":", 1))
            if value.startswith("[") and value.endswith("]"):
                conf[key] = [v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip()]
            else:
                conf[key] = value.strip("'\"")
    return conf


def heap_bytes(jvm_options):
    """-Xmx of the car's jvm.options (what `heap_size` made of it), 1 GiB without one."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    try:
        with open(jvm_options) as f:
            for line in f:
                line = line.strip()
                if line.startswith("-Xmx") and line[-1].lower() in units:
                    return int(line[4:-1]) * units[line[-1].lower()]
    except OSError:
        pass
    return 1 << 30


def write_pid_file(path, pid):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write("%d" % pid)
    os.replace(tmp, path)


def serve_node(config_path, pid_file, version, daemonize):
    """One node of a cluster of several processes, started as Elasticsearch's `bin/elasticsearch`
    would be: settings from the rendered elasticsearch.yml, log and GC log in `path.logs`,
    the pid file written once both ports listen. `daemonize` (`-d`): the node goes on in a
    child of its own session and this process exits 0, or 1 when the node cannot start, its
    reason in the node's log and on stderr."""
    conf = read_node_config(config_path)
    host = conf.get("network.host", "127.0.0.1")
    http_port = int(conf.get("http.port", 9200))
    transport_port = int(conf.get("transport.port", http_port + 100))
    cluster_name = conf.get("cluster.name", CLUSTER_NAME)
    name = conf.get("node.name", "node-%s-%d" % (host, http_port))
    seeds = []
    for seed in conf.get("discovery.seed_hosts", []):
        seed_host, _, seed_port = seed.rpartition(":") if ":" in seed else (seed, "", "")
        seeds.append((seed_host, int(seed_port) if seed_port else transport_port))
    logs = conf.get("path.logs", ".")
    os.makedirs(logs, exist_ok=True)
    for data in conf.get("path.data", []):
        os.makedirs(data, exist_ok=True)
    gc_log = os.path.join(logs, "gc.log")
    with open(gc_log, "a") as f:
        f.write("[0.004s][info][gc] Using G1\n[0.005s][info][gc,init] Version: 21.0.2+13-58\n")
    if version:
        VERSION["number"] = version
    me = Node(name=name, node_id=uuid.uuid5(uuid.NAMESPACE_DNS, name).hex[:22], host=host,
              http_port=http_port, transport_port=transport_port, cluster_name=cluster_name,
              cluster_uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, "cluster " + cluster_name)),
              heap_bytes=heap_bytes(os.path.join(os.path.dirname(config_path), "jvm.options")))
    cluster = Cluster(me, seeds)
    state = State()
    log = open(os.path.join(logs, cluster_name + ".log"), "a", buffering=1)
    try:
        http_srv = Server((host, http_port), state, me, cluster)
        transport_srv = Server((host, transport_port), state, me, cluster, record=False)
    except OSError as e:
        msg = "node %s cannot listen on %s:%d and %d: %s\n" % (name, host, http_port,
                                                               transport_port, e)
        log.write(msg)
        sys.stderr.write(msg)
        sys.exit(1)
    if daemonize:
        child = os.fork()
        if child:
            write_pid_file(pid_file, child)
            os._exit(0)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
    else:
        write_pid_file(pid_file, os.getpid())
    os.dup2(log.fileno(), 2)
    sys.stderr = log

    def stop(signum, _frame):
        with open(gc_log, "a") as f:
            f.write("[%.3fs][info][gc] Stopping\n" % (time.time() - state.started))
        sys.stderr.write("node %s stopped by signal %d\n" % (name, signum))
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=cluster.watch, daemon=True).start()
    threading.Thread(target=transport_srv.serve_forever, daemon=True).start()
    sys.stderr.write("node %s of cluster %s: http %s:%d, transport %s:%d, seed hosts %s\n"
                     % (name, cluster_name, host, http_port, host, transport_port, seeds))
    http_srv.serve_forever()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0,
                    help="port of the first cluster (0: any free port); further clusters use free ports")
    ap.add_argument("--clusters", type=int, default=1,
                    help="number of independent clusters to serve, one port each")
    ap.add_argument("--port-file", help="write the bound port(s) here, one per line, atomically")
    ap.add_argument("--node-config",
                    help="serve as one node of a cluster, as this elasticsearch.yml says")
    ap.add_argument("--pid-file", help="with --node-config: where to write the pid once serving")
    ap.add_argument("--version", help="with --node-config: the Elasticsearch version to claim")
    ap.add_argument("--daemonize", action="store_true",
                    help="with --node-config: exit once the node serves, which goes on detached")
    args = ap.parse_args()
    if args.node_config:
        serve_node(args.node_config, args.pid_file, args.version, args.daemonize)
        return
    servers = [Server((args.host, args.port if k == 0 else 0)) for k in range(max(args.clusters, 1))]
    ports = [srv.server_address[1] for srv in servers]
    if args.port_file:
        tmp = "%s.tmp.%d" % (args.port_file, os.getpid())
        with open(tmp, "w") as f:
            f.write("".join("%d\n" % p for p in ports))
        os.replace(tmp, args.port_file)
    sys.stderr.write("es_double listening on %s ports %s\n" % (args.host, ports))
    sys.stderr.flush()
    for srv in servers[1:]:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        servers[0].serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
