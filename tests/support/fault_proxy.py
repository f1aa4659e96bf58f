#!/usr/bin/env python3
"""Fault-injecting HTTP proxy for rallyctl's end-to-end tests (Python 3 stdlib only).

Listens on 127.0.0.1 (port 0: the kernel picks one, written to --port-file) and forwards every
request to --upstream (moto), Host header and body unchanged, except that it answers some calls
itself with an error, chosen by the call's action: the EC2 query protocol's form field `Action`,
or the operation named by `X-Amz-Target` (JSON protocol, e.g. EC2 Instance Connect).

Rules, repeatable: --fault ACTION:KIND:COUNT
  ACTION  e.g. RunInstances, DescribeInstances
  KIND    RequestLimitExceeded          HTTP 503 with that EC2 error code
          InsufficientInstanceCapacity  HTTP 500 with that EC2 error code
          any other EC2 error code      HTTP 400 with that code
          an HTTP status such as 500    that status with a plain-text body
          hang                          no answer: the call is held, never forwarded, until
                                        the client disconnects or --hang-bound seconds pass
                                        (then HTTP 504); a test can kill the client while a
                                        call is in flight, e.g. TerminateInstances:hang:1
  COUNT   a number (the first COUNT calls of ACTION fail) or `always`

GET /_faults answers {"injected": {action: n}, "forwarded": {action: n}, "held": {action: n}}
so that tests can assert that the faults really happened: `injected` counts every faulted call,
hung ones included (counted when the hold begins); `held` counts hung calls still being held.
"""

import argparse
import http.client
import http.server
import json
import os
import select
import socket
import sys
import threading
import time
import urllib.parse
import uuid

CODE_STATUS = {
    "RequestLimitExceeded": 503,
    "InsufficientInstanceCapacity": 500,
}
MESSAGES = {
    "RequestLimitExceeded": "Request limit exceeded.",
    "InsufficientInstanceCapacity": "We currently do not have sufficient capacity in the "
    "Availability Zone you requested.",
}
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
}


class Rule:
    def __init__(self, spec):
        try:
            self.action, self.kind, count = spec.split(":")
        except ValueError:
            raise SystemExit(f"bad --fault {spec!r}: want ACTION:KIND:COUNT")
        self.remaining = None if count == "always" else int(count)

    def take(self):
        """True if this call gets the fault (and counts it)."""
        if self.remaining is None:
            return True
        if self.remaining > 0:
            self.remaining -= 1
            return True
        return False

    def answer(self):
        """(status, content type, body) of the injected error."""
        if self.kind == "hang":
            return 504, "text/plain", b"fault_proxy: held call timed out\n"
        if self.kind.isdigit():
            status = int(self.kind)
            return status, "text/plain", f"injected HTTP {status}\n".encode()
        status = CODE_STATUS.get(self.kind, 400)
        message = MESSAGES.get(self.kind, f"Injected {self.kind}.")
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Response><Errors><Error><Code>{self.kind}</Code>"
            f"<Message>{message}</Message></Error></Errors>"
            f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
        )
        return status, "text/xml;charset=UTF-8", body.encode()


class State:
    def __init__(self, rules, upstream):
        self.rules = rules
        self.upstream = urllib.parse.urlsplit(upstream)
        self.lock = threading.Lock()
        self.injected = {}
        self.forwarded = {}
        self.held = {}

    def fault_for(self, action):
        with self.lock:
            for rule in self.rules:
                if rule.action == action and rule.take():
                    self.injected[action] = self.injected.get(action, 0) + 1
                    return rule
            self.forwarded[action] = self.forwarded.get(action, 0) + 1
            return None

    def hold(self, action, delta):
        with self.lock:
            self.held[action] = self.held.get(action, 0) + delta
            if not self.held[action]:
                del self.held[action]

    def report(self):
        with self.lock:
            return {
                "injected": dict(self.injected),
                "forwarded": dict(self.forwarded),
                "held": dict(self.held),
            }


def action_of(headers, body):
    target = headers.get("X-Amz-Target")
    if target:
        return target.rsplit(".", 1)[-1]
    ctype = headers.get("Content-Type", "")
    if "x-www-form-urlencoded" in ctype or body.startswith(b"Action="):
        fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        if fields.get("Action"):
            return fields["Action"][0]
    return "?"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None  # set in main
    hang_bound = 600.0  # set in main

    def log_message(self, fmt, *args):
        sys.stderr.write("fault_proxy: " + (fmt % args) + "\n")

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status, ctype, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _hold(self, action):
        """Holds a hung call: True once the client has gone, False when the bound passed."""
        self.state.hold(action, 1)
        try:
            deadline = time.monotonic() + self.hang_bound
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                readable, _, _ = select.select([self.connection], [], [], min(left, 1.0))
                if readable:
                    # Readable with nothing to read is EOF: the client closed or died. (A client
                    # sending more on this connection is not expected while it waits.)
                    try:
                        if not self.connection.recv(1, socket.MSG_PEEK):
                            return True
                    except OSError:
                        return True
                    time.sleep(0.05)
        finally:
            self.state.hold(action, -1)

    def _handle(self):
        body = self._body()
        if self.command == "GET" and self.path == "/_faults":
            return self._send(200, "application/json", json.dumps(self.state.report()).encode())
        action = action_of(self.headers, body)
        rule = self.state.fault_for(action)
        if rule is not None and rule.kind == "hang":
            self.log_message("holding %s (hang)", action)
            if self._hold(action):
                self.log_message("client gone while %s was held", action)
                self.close_connection = True
                return None
            self.log_message("held %s for %ss: answering 504", action, self.hang_bound)
        if rule is not None:
            status, ctype, payload = rule.answer()
            self.log_message("injected %s %s for %s", status, rule.kind, action)
            return self._send(status, ctype, payload)
        up = self.state.upstream
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    conn.putheader(k, v)  # Host included, as the client sent it
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            payload = resp.read()
            headers = [
                (k, v)
                for k, v in resp.getheaders()
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-type"
            ]
            self._send(resp.status, resp.getheader("Content-Type"), payload, headers)
        except OSError as e:
            self._send(502, "text/plain", f"fault_proxy: upstream: {e}\n".encode())
        finally:
            conn.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:41234")
    p.add_argument("--port-file", required=True)
    p.add_argument("--fault", action="append", default=[], metavar="ACTION:KIND:COUNT")
    p.add_argument(
        "--hang-bound",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long a `hang` fault holds a call before answering 504 (default 600)",
    )
    args = p.parse_args()
    Handler.state = State([Rule(f) for f in args.fault], args.upstream)
    Handler.hang_bound = args.hang_bound
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
