#!/usr/bin/env python3
"""Fault-injecting HTTP proxy for rallyctl's end-to-end tests (Python 3 stdlib only).

Listens on 127.0.0.1 (port 0: the kernel picks one, written to --port-file) and forwards every
request to --upstream (moto), Host header and body unchanged, except that it answers some calls
itself with an error, chosen by the call's action: the EC2 query protocol's form field `Action`,
or the operation named by `X-Amz-Target` (JSON protocol, e.g. EC2 Instance Connect).

Rules, repeatable: --fault ACTION:KIND:COUNT
  ACTION  e.g. RunInstances, DescribeInstances; ACTION[FIELD=VALUE] only the calls whose form
          field FIELD is VALUE, e.g. RunInstances[SubnetId=subnet-0a1b]
  KIND    RequestLimitExceeded          HTTP 503 with that EC2 error code (errors are XML for
                                        EC2's query protocol, JSON for X-Amz-Target calls)
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

Instances EC2 does not know, as real EC2 has them and moto never does:
  --young-not-found SECONDS  an instance is unknown for its first SECONDS after the RunInstances
                             answer that named it (EC2's eventual consistency)
  POST /_reclaim {"ids": [...]}  DescribeInstances answers these instances with the state reason
                             EC2 gives a spot instance it reclaimed (the test terminates them
                             in moto itself)
  POST /_purge {"ids": [...]}  these instances are unknown from now on (EC2 purges terminated
                             instances about an hour after termination)
An unknown instance is answered as EC2 does: DescribeInstances or TerminateInstances naming it
in `InstanceId.N` fail whole with InvalidInstanceID.NotFound (HTTP 400); DescribeInstances by
filters leaves it out of the answer; SendSSHPublicKey answers EC2InstanceNotFoundException.
Each such answer counts as injected for its action (a DescribeInstances answer when it left
an instance out).

S3's REST calls (path-style, as S3-compatible stores are reached) are named by their operation
(GetObject, HeadObject, PutObject, CopyObject, DeleteObject, ListObjectsV2, HeadBucket, ...), so
--fault rules take them too (their errors are S3's XML, e.g. DeleteObject:NotImplemented:1);
S3's own answers where moto is kinder:
  --s3-without-list-bucket   the caller lacks s3:ListBucket: ListObjects(V2) and HeadBucket
                             answer 403 AccessDenied, and so does a GetObject or HeadObject of a
                             missing key (moto's 404), as S3 does for such a caller
  --s3-bucket-region REGION  every bucket is in REGION: a call signed for another region
                             answers 301 PermanentRedirect with `x-amz-bucket-region: REGION`
  --s3-refuse-checksums      a store that keeps S3's older API: a call carrying any flexible
                             checksum header (x-amz-checksum-*, x-amz-sdk-checksum-algorithm,
                             a trailer) answers 501 NotImplemented
Each counts as injected for its operation. GET /_faults also lists every S3 call under "s3":
{"action", "key", "if_match": bool} in order.

Disks that follow images, as EC2's root volumes do (the harness's instances share this
machine's filesystem, each with a private directory DISKS/<private ip> that it sees at the
harness's `host_dir`):
  --disks DISKS --images IMAGES  before a RunInstances answer reaches the client, each launched
                             instance's disk is emptied, then filled with a copy of
                             IMAGES/<ImageId> when that image was made by CreateImage; before
                             a CreateImage answer does, the instance's disk is copied to
                             IMAGES/<new image id>. A plain AMI so starts empty, an image made
                             from an instance starts with what that instance had installed.
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
import re
import shutil
import subprocess
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

CODE_STATUS = {
    "RequestLimitExceeded": 503,
    "InsufficientInstanceCapacity": 500,
    "AccessDenied": 403,
    "NotImplemented": 501,
    "PermanentRedirect": 301,
}
MESSAGES = {
    "RequestLimitExceeded": "Request limit exceeded.",
    "InsufficientInstanceCapacity": "We currently do not have sufficient capacity in the "
    "Availability Zone you requested.",
    "AccessDenied": "Access Denied",
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
        self.field = None
        m = re.fullmatch(r"(\w+)\[(\w+)=([^\]]*)\]", self.action)
        if m:
            self.action, self.field = m.group(1), (m.group(2), m.group(3))
        self.remaining = None if count == "always" else int(count)

    def take(self, fields):
        """True if this call gets the fault (and counts it)."""
        if self.field and fields.get(self.field[0], [None])[0] != self.field[1]:
            return False
        if self.remaining is None:
            return True
        if self.remaining > 0:
            self.remaining -= 1
            return True
        return False

    def answer(self, json_protocol, s3=False):
        """(status, content type, body) of the injected error, as XML (EC2's query protocol, or
        S3's with `s3`) or as JSON (`json_protocol`: EC2 Instance Connect)."""
        if self.kind == "hang":
            return 504, "text/plain", b"fault_proxy: held call timed out\n"
        if self.kind.isdigit():
            status = int(self.kind)
            return status, "text/plain", f"injected HTTP {status}\n".encode()
        status = CODE_STATUS.get(self.kind, 400)
        message = MESSAGES.get(self.kind, f"Injected {self.kind}.")
        if s3:
            return s3_error(status, self.kind, message)
        if json_protocol:
            payload = json.dumps({"__type": self.kind, "Message": message}).encode()
            return status, "application/x-amz-json-1.1", payload
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Response><Errors><Error><Code>{self.kind}</Code>"
            f"<Message>{message}</Message></Error></Errors>"
            f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
        )
        return status, "text/xml;charset=UTF-8", body.encode()


def ec2_error(code, message):
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Errors><Error><Code>{code}</Code>"
        f"<Message>{message}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    )
    return 400, "text/xml;charset=UTF-8", body.encode()


def s3_error(status, code, message, extra=""):
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{extra}"
        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    )
    return status, "application/xml", body.encode()


def s3_action(method, url, headers):
    """The S3 operation of a path-style REST call, with its key; None for other calls (EC2's
    query protocol and JSON calls post to `/`)."""
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.unquote(parts.path)
    if method == "POST" and path == "/" or path.startswith("/_") or path.startswith("/moto-api"):
        return None
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket:
        return ("ListBuckets", "") if method == "GET" else None
    if not key:
        if method == "HEAD":
            return "HeadBucket", ""
        if method == "GET" and "location" in query:
            return "GetBucketLocation", ""
        if method == "GET":
            return ("ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"), ""
        if method == "POST" and "delete" in query:
            return "DeleteObjects", ""
        return {"PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(method, "?"), ""
    if method == "PUT" and "x-amz-copy-source" in {k.lower() for k in headers.keys()}:
        return "CopyObject", key
    names = {"GET": "GetObject", "HEAD": "HeadObject", "PUT": "PutObject", "DELETE": "DeleteObject"}
    return names.get(method, "?"), key


def signed_region(headers):
    """The region an AWS SigV4 request was signed for."""
    m = re.search(r"Credential=[^/]+/\d+/([^/]+)/", headers.get("Authorization", ""))
    return m.group(1) if m else None


def carries_checksum(headers):
    for k, v in headers.items():
        k = k.lower()
        if k.startswith("x-amz-checksum-") or k in ("x-amz-sdk-checksum-algorithm", "x-amz-trailer"):
            return k
        if k == "content-encoding" and "aws-chunked" in v:
            return k
    return None


SPOT_RECLAIMED = ("Server.SpotInstanceTermination", "Server.SpotInstanceTermination: Spot instance termination")


def mark_reclaimed(payload, reclaimed):
    """A DescribeInstances answer in which the instances in `reclaimed` carry EC2's state
    reason for a reclaimed spot instance."""
    root = ET.fromstring(payload)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    ET.register_namespace("", ns.strip("{}"))
    for inst in root.iter(f"{ns}item"):
        if inst.findtext(f"{ns}instanceId") not in reclaimed:
            continue
        reason = inst.find(f"{ns}stateReason")
        if reason is None:
            reason = ET.SubElement(inst, f"{ns}stateReason")
        for child in list(reason):
            reason.remove(child)
        for tag, text in zip(("code", "message"), SPOT_RECLAIMED):
            ET.SubElement(reason, f"{ns}{tag}").text = text
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def strip_instances(payload, unknown):
    """A DescribeInstances answer without the instances in `unknown` (and reservations left
    empty)."""
    root = ET.fromstring(payload)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    ET.register_namespace("", ns.strip("{}"))
    for rset in root.iter(f"{ns}reservationSet"):
        for reservation in list(rset):
            iset = reservation.find(f"{ns}instancesSet")
            if iset is None:
                continue
            for inst in list(iset):
                if inst.findtext(f"{ns}instanceId") in unknown:
                    iset.remove(inst)
            if len(iset) == 0:
                rset.remove(reservation)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


class State:
    def __init__(self, rules, upstream, young_not_found, disks=None, images=None, s3=None):
        self.s3 = s3  # the S3 options (--s3-*)
        self.s3_calls = []
        self.disks = disks
        self.images = images
        self.ip_of = {}  # instance id -> private IP, from RunInstances answers
        self.rules = rules
        self.upstream = urllib.parse.urlsplit(upstream)
        self.lock = threading.Lock()
        self.injected = {}
        self.forwarded = {}
        self.held = {}
        self.young_not_found = young_not_found
        self.launched = {}  # instance id -> when a RunInstances answer first named it
        self.purged = set()
        self.reclaimed = set()

    def unknown(self):
        """The instance ids EC2 would not know right now."""
        now = time.monotonic()
        with self.lock:
            young = {i for i, t in self.launched.items() if now - t < self.young_not_found}
            return young | self.purged

    def count_injected(self, action):
        with self.lock:
            self.injected[action] = self.injected.get(action, 0) + 1

    def fault_for(self, action, fields):
        with self.lock:
            for rule in self.rules:
                if rule.action == action and rule.take(fields):
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
                "s3": list(self.s3_calls),
            }


def form_fields(headers, body):
    """The fields of an EC2 query-protocol call; none for other calls."""
    if "X-Amz-Target" in headers:
        return {}
    return urllib.parse.parse_qs(body.decode("utf-8", "replace"))


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
        if self.command == "POST" and self.path == "/_reclaim":
            with self.state.lock:
                self.state.reclaimed.update(json.loads(body)["ids"])
            return self._send(200, "application/json", b"{}")
        if self.command == "POST" and self.path == "/_purge":
            with self.state.lock:
                self.state.purged.update(json.loads(body)["ids"])
            return self._send(200, "application/json", b"{}")
        s3 = s3_action(self.command, self.path, self.headers)
        action = s3[0] if s3 else action_of(self.headers, body)
        if s3:
            with self.state.lock:
                self.state.s3_calls.append(
                    {"action": action, "key": s3[1], "if_match": "If-Match" in self.headers}
                )
            answer = self._s3_answer(action)
            if answer is not None:
                self.state.count_injected(action)
                self.log_message("answered %s as S3 does: %s", action, answer[0])
                return self._send(*answer)
        answer = self._unknown_answer(action, body)
        if answer is not None:
            self.state.count_injected(action)
            self.log_message("answered %s as EC2 does for an unknown instance", action)
            return self._send(*answer)
        rule = self.state.fault_for(action, form_fields(self.headers, body))
        if rule is not None and rule.kind == "hang":
            self.log_message("holding %s (hang)", action)
            if self._hold(action):
                self.log_message("client gone while %s was held", action)
                self.close_connection = True
                return None
            self.log_message("held %s for %ss: answering 504", action, self.hang_bound)
        if rule is not None:
            status, ctype, payload = rule.answer("X-Amz-Target" in self.headers, s3 is not None)
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
            payload = self._as_ec2_would(action, resp.status, payload, body)
            headers = [
                (k, v)
                for k, v in resp.getheaders()
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-type"
            ]
            if (
                s3
                and self.state.s3["without_list_bucket"]
                and action in ("GetObject", "HeadObject")
                and resp.status == 404
            ):
                self.state.count_injected(action)
                self.log_message("answered %s of a missing key as S3 does without ListBucket", action)
                return self._send(*s3_error(403, "AccessDenied", "Access Denied"))
            self._send(resp.status, resp.getheader("Content-Type"), payload, headers)
        except OSError as e:
            self._send(502, "text/plain", f"fault_proxy: upstream: {e}\n".encode())
        finally:
            conn.close()

    def _s3_answer(self, action):
        """S3's own answer to a call where moto would answer otherwise (--s3-*), or None."""
        opts = self.state.s3
        region = opts["bucket_region"]
        signed = signed_region(self.headers)
        if region and signed and signed != region:
            status, ctype, body = s3_error(
                301,
                "PermanentRedirect",
                "The bucket you are attempting to access must be addressed using the specified"
                " endpoint. Please send all future requests to this endpoint.",
                f"<Endpoint>s3.{region}.amazonaws.com</Endpoint>",
            )
            return status, ctype, body, [("x-amz-bucket-region", region)]
        if opts["refuse_checksums"]:
            header = carries_checksum(self.headers)
            if header:
                return s3_error(
                    501, "NotImplemented", f"Header '{header}' is not implemented"
                )
        if opts["without_list_bucket"] and action in ("ListObjectsV2", "ListObjects", "HeadBucket"):
            status, ctype, body = s3_error(403, "AccessDenied", "Access Denied")
            return status, ctype, body, [("x-amz-bucket-region", region or signed or "")]
        return None

    def _unknown_answer(self, action, body):
        """The error EC2 gives a call naming an instance it does not know, or None."""
        unknown = self.state.unknown()
        if not unknown:
            return None
        if action in ("DescribeInstances", "TerminateInstances"):
            fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
            named = [v[0] for k, v in fields.items() if re.fullmatch(r"InstanceId\.\d+", k)]
            missing = [i for i in named if i in unknown]
            if missing:
                return ec2_error(
                    "InvalidInstanceID.NotFound",
                    f"The instance ID '{missing[0]}' does not exist",
                )
        if action == "SendSSHPublicKey":
            instance = json.loads(body or b"{}").get("InstanceId")
            if instance in unknown:
                payload = json.dumps(
                    {
                        "__type": "EC2InstanceNotFoundException",
                        "Message": f"Instance not found: {instance}",
                    }
                ).encode()
                return 400, "application/x-amz-json-1.1", payload
        return None

    def _follow_disks(self, action, fields, payload):
        """--disks: a launched instance's disk starts empty or as its image's; CreateImage
        copies the instance's disk as the image's."""
        root = ET.fromstring(payload)
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        if action == "RunInstances":
            image = os.path.join(self.state.images, fields.get("ImageId", [""])[0])
            for inst in root.iter(f"{ns}instancesSet"):
                for item in inst:
                    ip = item.findtext(f"{ns}privateIpAddress")
                    with self.state.lock:
                        self.state.ip_of[item.findtext(f"{ns}instanceId")] = ip
                    disk = os.path.join(self.state.disks, ip)
                    os.makedirs(disk, exist_ok=True)
                    # Emptied in place: the running instance bind-mounts this very directory.
                    for entry in os.listdir(disk):
                        path = os.path.join(disk, entry)
                        if os.path.isdir(path) and not os.path.islink(path):
                            shutil.rmtree(path)
                        else:
                            os.remove(path)
                    if os.path.isdir(image):
                        subprocess.run(["cp", "-a", image + "/.", disk], check=True)
                    self.log_message("disk of %s (%s) starts as %s", ip,
                                     item.findtext(f"{ns}instanceId"),
                                     image if os.path.isdir(image) else "empty")
        elif action == "CreateImage":
            instance = fields.get("InstanceId", [""])[0]
            with self.state.lock:
                ip = self.state.ip_of.get(instance)
            image_id = root.findtext(f"{ns}imageId")
            if ip and image_id:
                target = os.path.join(self.state.images, image_id)
                os.makedirs(target, exist_ok=True)
                subprocess.run(["cp", "-a", os.path.join(self.state.disks, ip) + "/.", target],
                               check=True)
                self.log_message("image %s holds a copy of the disk of %s (%s)", image_id,
                                 instance, ip)

    def _as_ec2_would(self, action, status, payload, body):
        """Remembers launches; leaves unknown instances out of DescribeInstances answers."""
        if status != 200:
            return payload
        if self.state.disks and action in ("RunInstances", "CreateImage"):
            self._follow_disks(action, form_fields(self.headers, body), payload)
        if action == "RunInstances":
            now = time.monotonic()
            with self.state.lock:
                for i in re.findall(rb"<instanceId>(i-[0-9a-f]+)</instanceId>", payload):
                    self.state.launched.setdefault(i.decode(), now)
        elif action == "DescribeInstances":
            with self.state.lock:
                reclaimed = set(self.state.reclaimed)
            if reclaimed:
                payload = mark_reclaimed(payload, reclaimed)
            unknown = self.state.unknown()
            if unknown:
                stripped = strip_instances(payload, unknown)
                if stripped != payload:
                    self.state.count_injected(action)
                return stripped
        return payload

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
    p.add_argument(
        "--young-not-found",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="instances are unknown for this long after RunInstances named them (default 0)",
    )
    p.add_argument("--disks", help="the instances' private disks, one directory per private IP")
    p.add_argument("--images", help="where images made by CreateImage keep their disk copies")
    p.add_argument("--s3-without-list-bucket", action="store_true")
    p.add_argument("--s3-bucket-region", metavar="REGION")
    p.add_argument("--s3-refuse-checksums", action="store_true")
    args = p.parse_args()
    s3 = {
        "without_list_bucket": args.s3_without_list_bucket,
        "bucket_region": args.s3_bucket_region,
        "refuse_checksums": args.s3_refuse_checksums,
    }
    Handler.state = State([Rule(f) for f in args.fault], args.upstream, args.young_not_found,
                          args.disks, args.images, s3)
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
