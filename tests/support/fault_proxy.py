#!/usr/bin/env python3
"""Fault-injecting HTTP proxy for rallyctl's end-to-end tests (Python 3 stdlib only).

Listens on 127.0.0.1 (port 0: the kernel picks one, written to --port-file) and forwards every
request to --upstream (moto), Host header and body unchanged, except that it answers some calls
itself with an error, chosen by the call's action: the EC2 query protocol's form field `Action`,
or the operation named by `X-Amz-Target` (JSON protocol, e.g. EC2 Instance Connect).

Rules, repeatable: --fault ACTION:KIND:COUNT
  ACTION  e.g. RunInstances, DescribeInstances; ACTION[FIELD=VALUE] only the calls whose form
          field FIELD is VALUE, e.g. RunInstances[SubnetId=subnet-0a1b]; a call with
          DryRun=true is the action ACTION/DryRun (RunInstances/DryRun), counted apart and
          faulted only by rules that name it, so a launch's faults leave its dry run alone
  KIND    RequestLimitExceeded          HTTP 503 with that EC2 error code (errors are XML for
                                        EC2's query protocol, JSON for X-Amz-Target calls)
          InsufficientInstanceCapacity  HTTP 500 with that EC2 error code
          any other EC2 error code      HTTP 400 with that code
          an HTTP status such as 500    that status with a plain-text body
          hang                          no answer: the call is held, never forwarded, until
                                        the client disconnects or --hang-bound seconds pass
                                        (then HTTP 504); a test can kill the client while a
                                        call is in flight, e.g. TerminateInstances:hang:1
          lost                          the call is forwarded and done, but its answer is
                                        held, never sent, until the client disconnects or
                                        --hang-bound seconds pass: a client killed then never
                                        learns what it made (e.g. RunInstances:lost:1)
  COUNT   a number (the first COUNT calls of ACTION fail) or `always`
  UnauthorizedOperation answers as EC2 does, its message ending in an encoded reason, and
  VcpuLimitExceeded with EC2's own message (which names no quota), e.g.
  RunInstances/DryRun:UnauthorizedOperation:always, RunInstances:VcpuLimitExceeded:always

GET /_faults answers {"injected": {action: n}, "forwarded": {action: n}, "held": {action: n}}
so that tests can assert that the faults really happened: `injected` counts every faulted call,
hung ones included (counted when the hold begins); `held` counts hung calls still being held.

ClientToken, which EC2 honours and moto ignores: a RunInstances whose ClientToken an earlier
successful one carried is answered with that one's instances in their state now (terminated
ones too, as EC2 does for at least a day), without launching; with other parameters it fails
with IdempotentParameterMismatch (HTTP 400).

Instances EC2 does not know, as real EC2 has them and moto never does:
  --young-not-found SECONDS  an instance is unknown for its first SECONDS after the RunInstances
                             answer that named it (EC2's eventual consistency)
  POST /_reclaim {"ids": [...]}  DescribeInstances answers these instances with the state reason
                             EC2 gives a spot instance it reclaimed, shutting down while moto
                             still runs them (the test terminates them in moto itself)
  POST /_purge {"ids": [...]}  these instances are unknown from now on (EC2 purges terminated
                             instances about an hour after termination)
An unknown instance is answered as EC2 does: DescribeInstances or TerminateInstances naming it
in `InstanceId.N` fail whole with InvalidInstanceID.NotFound (HTTP 400); DescribeInstances by
filters leaves it out of the answer; SendSSHPublicKey answers EC2InstanceNotFoundException.
Each such answer counts as injected for its action (a DescribeInstances answer when it left
an instance out).

What moto does not do as AWS does, answered by the proxy:
  --deprecated AMI           (repeatable) DescribeImages leaves AMI out of its answer unless
                             the call says IncludeDeprecated=true, as EC2 does with a
                             deprecated image; RunInstances still launches it
  --quota SERVICE:CODE:VALUE (repeatable) Service Quotas' GetServiceQuota of that quota
                             answers VALUE (moto knows only some VPC quotas)
  --no-spot-history          DescribeSpotPriceHistory answers no prices, as EC2 does for an
                             instance type without spot history in the region (moto's stub
                             always names one)
  --decoded TEXT             STS DecodeAuthorizationMessage answers TEXT as the decoded
                             message; without it, AccessDenied (moto does not implement it),
                             as for an identity without sts:DecodeAuthorizationMessage

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

CreateImage as EC2 has it, where moto differs:
  Snapshot tag specifications (`TagSpecification.N.ResourceType=snapshot`), which moto refuses
  (HTTP 500), are taken out of the call moto gets and applied to the new image's snapshots with
  CreateTags before the answer reaches the client, as EC2 tags them when it makes them.
  --image-state STATE[:CODE]  images made by CreateImage read STATE (e.g. `pending`, `failed`)
                             in DescribeImages answers, with the state reason CODE if given;
                             with CODE `Client.InstanceTerminated` the image's instance is
                             terminated (in moto) before the CreateImage answer reaches the client

Placement groups, which moto does not have:
  CreatePlacementGroup (its dry run: DryRunOperation), DeletePlacementGroup and
  DescribePlacementGroups (by `tag:` filters only) are answered here, with EC2's errors: a
  name made before is InvalidPlacementGroup.Duplicate, an unknown one
  InvalidPlacementGroup.Unknown, a group holding an instance that moto does not read
  terminated InvalidPlacementGroup.InUse.
  A RunInstances into a group that does not exist fails with InvalidPlacementGroup.Unknown, one
  into a group that does is forwarded and its instances are remembered as the group's (moto
  ignores Placement.GroupName); DescribeInstances takes the filter `placement-group-name`.
  GET /_faults lists the groups under "placement_groups" ({name: {"strategy", "tags",
  "instances"}}) and the deleted ones under "deleted_placement_groups" ([{"name",
  "instances"}], in order).

Boots, as cloud-init has them (the harness's instances run no cloud-init of their own):
  --boot DIR                 after a RunInstances answer, each launched instance runs its user
                             data (instance.py: DIR/<private ip>/user-data); CreateImage without
                             NoReboot reboots the instance as EC2 does: before its answer reaches
                             the client, the instance runs cloud-init's per-boot scripts
                             (DIR/<private ip>/reboot, done when reboot.done appears)
"""

import argparse
import base64
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
# What an encoded authorization failure message looks like (opaque to the client).
ENCODED_REASON = "ZW5jb2RlZC1yZWFzb24tZm9yLXJhbGx5Y3Rs"
MESSAGES = {
    "UnauthorizedOperation": "You are not authorized to perform this operation. "
    "Encoded authorization failure message: " + ENCODED_REASON,
    "VcpuLimitExceeded": "You have requested more vCPU capacity than your current vCPU "
    "limit of 32 allows for the instance bucket that the specified instance type belongs "
    "to. Please visit http://aws.amazon.com/contact-us/ec2-request to request an "
    "adjustment to this limit.",
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
        m = re.fullmatch(r"(\w+)\[([\w.]+)=([^\]]*)\]", self.action)
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


def namespace(root):
    """The namespace of an EC2 XML answer as ElementTree spells it in tag names: `{uri}`, or
    nothing."""
    return root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""


def parsed(payload):
    """An EC2 XML answer and its namespace, which stays the default one when it is
    serialized again."""
    root = ET.fromstring(payload)
    ns = namespace(root)
    ET.register_namespace("", ns.strip("{}"))
    return root, ns


def serialized(root):
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def mark_reclaimed(payload, reclaimed):
    """A DescribeInstances answer in which the instances in `reclaimed` carry EC2's state
    reason for a reclaimed spot instance, and read `shutting-down` while moto still has them
    running: EC2 shuts a reclaimed instance down, killing what runs on it, before it reads
    terminated."""
    root, ns = parsed(payload)
    for inst in root.iter(f"{ns}item"):
        if inst.findtext(f"{ns}instanceId") not in reclaimed:
            continue
        state = inst.find(f"{ns}instanceState")
        if state is not None and state.findtext(f"{ns}name") in ("pending", "running"):
            state.find(f"{ns}code").text = "32"
            state.find(f"{ns}name").text = "shutting-down"
        reason = inst.find(f"{ns}stateReason")
        if reason is None:
            reason = ET.SubElement(inst, f"{ns}stateReason")
        for child in list(reason):
            reason.remove(child)
        for tag, text in zip(("code", "message"), SPOT_RECLAIMED):
            ET.SubElement(reason, f"{ns}{tag}").text = text
    return serialized(root)


def strip_instances(payload, unknown):
    """A DescribeInstances answer without the instances in `unknown` (and reservations left
    empty)."""
    root, ns = parsed(payload)
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
    return serialized(root)


def without_snapshot_tags(body):
    """A CreateImage body without its snapshot tag specifications, and their (key, value)s."""
    fields = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    specs = {}
    for k, v in fields:
        m = re.fullmatch(r"TagSpecification\.(\d+)\.ResourceType", k)
        if m and v == "snapshot":
            specs[m.group(1)] = []
    if not specs:
        return body, []
    kept, tags = [], {}
    for k, v in fields:
        m = re.fullmatch(r"TagSpecification\.(\d+)\.(.*)", k)
        if m and m.group(1) in specs:
            t = re.fullmatch(r"Tag\.(\d+)\.(Key|Value)", m.group(2))
            if t:
                tags.setdefault((m.group(1), t.group(1)), {})[t.group(2)] = v
            continue
        kept.append((k, v))
    pairs = [(t["Key"], t.get("Value", "")) for _, t in sorted(tags.items())]
    return urllib.parse.urlencode(kept).encode(), pairs


def without_group_filter(body):
    """A DescribeInstances body without its `placement-group-name` filter (moto has no
    placement groups), the filters after it renumbered, and the group it named (or None)."""
    fields = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    names = {}
    for k, v in fields:
        m = re.fullmatch(r"Filter\.(\d+)\.Name", k)
        if m:
            names[m.group(1)] = v
    dropped = [n for n, v in names.items() if v == "placement-group-name"]
    if not dropped:
        return body, None
    group = None
    renumbered = {n: str(i) for i, n in enumerate(
        sorted((n for n in names if n not in dropped), key=int), 1)}
    kept = []
    for k, v in fields:
        m = re.fullmatch(r"Filter\.(\d+)\.(.*)", k)
        if m and m.group(1) in dropped:
            if m.group(2).startswith("Value"):
                group = v
            continue
        if m:
            k = f"Filter.{renumbered[m.group(1)]}.{m.group(2)}"
        kept.append((k, v))
    return urllib.parse.urlencode(kept).encode(), group


def instance_ids(payload):
    return {i.decode() for i in re.findall(rb"<instanceId>(i-[0-9a-f]+)</instanceId>", payload)}


def placement_answer(action, group=None, groups=None):
    """EC2's answer to CreatePlacementGroup (of `group`), DeletePlacementGroup, or
    DescribePlacementGroups (of `groups`)."""
    ns = "http://ec2.amazonaws.com/doc/2016-11-15/"
    root = ET.Element(f"{action}Response", xmlns=ns)
    ET.SubElement(root, "requestId").text = str(uuid.uuid4())

    def add(parent, tag, group):
        pg = ET.SubElement(parent, tag)
        for key in ("groupName", "groupId", "strategy"):
            ET.SubElement(pg, key).text = group[key]
        ET.SubElement(pg, "state").text = "available"
        tags = ET.SubElement(pg, "tagSet")
        for k, v in group["tags"].items():
            item = ET.SubElement(tags, "item")
            ET.SubElement(item, "key").text = k
            ET.SubElement(item, "value").text = v

    if groups is not None:
        found = ET.SubElement(root, "placementGroupSet")
        for g in groups:
            add(found, "item", g)
    else:
        ET.SubElement(root, "return").text = "true"
    if group is not None:
        add(root, "placementGroup", group)
    return 200, "text/xml;charset=UTF-8", ET.tostring(root, encoding="utf-8")


def strip_images(payload, hidden):
    """A DescribeImages answer without the images in `hidden`."""
    root, ns = parsed(payload)
    for iset in root.iter(f"{ns}imagesSet"):
        for image in list(iset):
            if image.findtext(f"{ns}imageId") in hidden:
                iset.remove(image)
    return serialized(root)


def strip_set(payload, name):
    """An EC2 answer whose list `name` is empty."""
    root, ns = parsed(payload)
    for items in root.iter(f"{ns}{name}"):
        for item in list(items):
            items.remove(item)
    return serialized(root)


def service_quota(spec, service, code):
    """GetServiceQuota's answer for the --quota SERVICE:CODE:VALUE that matches, or None."""
    for q in spec:
        s, c, value = q.split(":")
        if (s, c) == (service, code):
            return json.dumps(
                {
                    "Quota": {
                        "ServiceCode": s,
                        "QuotaCode": c,
                        "QuotaName": f"quota {c}",
                        "Value": float(value),
                        "Unit": "None",
                        "Adjustable": True,
                        "GlobalQuota": False,
                    }
                }
            ).encode()
    return None


def sts_answer(decoded):
    """(status, content type, body) of DecodeAuthorizationMessage, in STS's XML."""
    ns = "https://sts.amazonaws.com/doc/2011-06-15/"
    if decoded is None:
        body = (
            f'<ErrorResponse xmlns="{ns}"><Error><Type>Sender</Type><Code>AccessDenied</Code>'
            "<Message>User is not authorized to perform: sts:DecodeAuthorizationMessage"
            f"</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
        )
        return 403, "text/xml", body.encode()
    root = ET.Element("DecodeAuthorizationMessageResponse", xmlns=ns)
    ET.SubElement(ET.SubElement(root, "DecodeAuthorizationMessageResult"),
                  "DecodedMessage").text = decoded
    ET.SubElement(ET.SubElement(root, "ResponseMetadata"), "RequestId").text = str(uuid.uuid4())
    return 200, "text/xml", ET.tostring(root, encoding="utf-8")


class State:
    def __init__(self, rules, upstream, young_not_found, disks=None, images=None,
                 image_state=None, boot=None, deprecated=(), quotas=(), decoded=None, s3=None,
                 no_spot_history=False):
        self.boot = boot
        self.image_state = image_state.split(":", 1) + [None] if image_state else None
        self.made_images = set()  # image ids CreateImage answered
        self.deprecated = set(deprecated)
        self.no_spot_history = no_spot_history
        self.quotas = list(quotas)
        self.decoded = decoded
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
        self.tokens = {}  # ClientToken -> (the other parameters, the RunInstances answer)
        self.groups = {}  # placement group name -> {"groupName", "groupId", "strategy", "tags"}
        self.group_of = {}  # instance id -> the placement group it was launched into
        self.deleted_groups = []

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
                "placement_groups": {
                    name: {
                        "strategy": g["strategy"],
                        "tags": g["tags"],
                        "instances": sorted(i for i, n in self.group_of.items() if n == name),
                    }
                    for name, g in self.groups.items()
                },
                "deleted_placement_groups": list(self.deleted_groups),
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
            if fields.get("DryRun", ["false"])[0] == "true":
                return fields["Action"][0] + "/DryRun"
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
        answer = self._answered_here(action, body)
        if answer is not None:
            self.state.count_injected(action)
            self.log_message("answered %s as AWS does", action)
            return self._send(*answer)
        fields = form_fields(self.headers, body)
        if action == "RunInstances" and fields.get("ClientToken"):
            answer = self._repeated_launch(fields, body)
            if answer is not None:
                self.state.count_injected(action)
                return self._send(*answer)
        rule = self.state.fault_for(action, fields)
        if rule is not None and rule.kind == "hang":
            self.log_message("holding %s (hang)", action)
            if self._hold(action):
                self.log_message("client gone while %s was held", action)
                self.close_connection = True
                return None
            self.log_message("held %s for %ss: answering 504", action, self.hang_bound)
        if rule is not None and rule.kind == "lost":
            status, ctype, payload, headers = self._forward(action, body)
            self.log_message("did %s (HTTP %s), holding its answer (lost)", action, status)
            if self._hold(action):
                self.close_connection = True
                return None
            return self._send(status, ctype, payload, headers)
        if rule is not None:
            status, ctype, payload = rule.answer("X-Amz-Target" in self.headers, s3 is not None)
            self.log_message("injected %s %s for %s", status, rule.kind, action)
            return self._send(status, ctype, payload)
        answer = self._placement_answer(action, fields)
        if answer is not None:
            return self._send(*answer)
        if action == "DescribeInstances":
            body, group = without_group_filter(body)
            if group is not None:
                status, ctype, payload, headers = self._forward(action, body)
                if status == 200:
                    with self.state.lock:
                        outside = {i for i in instance_ids(payload)
                                   if self.state.group_of.get(i) != group}
                    payload = strip_instances(payload, outside)
                return self._send(status, ctype, payload, headers)
        return self._send(*self._forward(action, body))

    def _placement_answer(self, action, fields):
        """EC2's answer to a placement group call, which moto does not have, or to a launch
        into a group that does not exist; None for every other call."""
        name = (fields.get("GroupName") or [None])[0]
        st = self.state
        if action == "CreatePlacementGroup/DryRun":
            status, ctype, payload = ec2_error(
                "DryRunOperation", "Request would have succeeded, but DryRun flag is set.")
            return 412, ctype, payload
        if action == "CreatePlacementGroup":
            tags = {}
            for k, v in fields.items():
                m = re.fullmatch(r"TagSpecification\.1\.Tag\.(\d+)\.Key", k)
                if m:
                    tags[v[0]] = fields.get(f"TagSpecification.1.Tag.{m.group(1)}.Value", [""])[0]
            with st.lock:
                if name in st.groups:
                    return ec2_error("InvalidPlacementGroup.Duplicate",
                                     f"The Placement Group '{name}' already exists.")
                group = st.groups[name] = {
                    "groupName": name,
                    "groupId": "pg-" + uuid.uuid4().hex[:17],
                    "strategy": fields.get("Strategy", [""])[0],
                    "tags": tags,
                }
            self.log_message("made placement group %s (%s)", name, group["strategy"])
            return placement_answer(action, group)
        if action == "DeletePlacementGroup":
            with st.lock:
                known = name in st.groups
                members = [i for i, n in st.group_of.items() if n == name]
            if not known:
                return ec2_error("InvalidPlacementGroup.Unknown",
                                 f"The Placement Group '{name}' is unknown.")
            if members:
                call = {"Action": "DescribeInstances", "Version": "2016-11-15"}
                call.update({f"InstanceId.{n}": i for n, i in enumerate(members, 1)})
                root = self._upstream(call)
                ns = namespace(root)
                states = [item.findtext(f"{ns}instanceState/{ns}name")
                          for item in root.iter(f"{ns}item")
                          if item.findtext(f"{ns}instanceId") in members]
                if any(s != "terminated" for s in states):
                    return ec2_error("InvalidPlacementGroup.InUse",
                                     f"The placement group '{name}' is in use and may not be "
                                     "deleted.")
            with st.lock:
                st.groups.pop(name, None)
                st.deleted_groups.append({"name": name, "instances": sorted(members)})
            self.log_message("deleted placement group %s", name)
            return placement_answer(action)
        if action == "DescribePlacementGroups":
            wanted = {}
            for k, v in fields.items():
                m = re.fullmatch(r"Filter\.(\d+)\.Name", k)
                if m:
                    values = [fields[f] for f in fields
                              if re.fullmatch(rf"Filter\.{m.group(1)}\.Value\.\d+", f)]
                    wanted[v[0]] = {x[0] for x in values}
            if any(not name.startswith("tag:") for name in wanted):
                return ec2_error("InvalidParameterValue",
                                 f"the fault proxy filters placement groups by tag only: {wanted}")
            with st.lock:
                groups = [g for g in st.groups.values()
                          if all(g["tags"].get(name[4:]) in values
                                 for name, values in wanted.items())]
            return placement_answer(action, groups=groups)
        if action == "RunInstances":
            group = (fields.get("Placement.GroupName") or [None])[0]
            with st.lock:
                unknown = group is not None and group not in st.groups
            if unknown:
                return ec2_error("InvalidPlacementGroup.Unknown",
                                 f"The Placement Group '{group}' is unknown.")
        return None

    def _forward(self, action, body):
        """The upstream's answer to this call, as EC2 would have given it."""
        snapshot_tags = []
        if action == "CreateImage":
            body, snapshot_tags = without_snapshot_tags(body)
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
            if action == "CreateImage" and resp.status == 200:
                self._made_image(payload, form_fields(self.headers, body), snapshot_tags)
            payload = self._as_ec2_would(action, resp.status, payload, body)
            headers = [
                (k, v)
                for k, v in resp.getheaders()
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-type"
            ]
            if (
                self.state.s3
                and self.state.s3["without_list_bucket"]
                and action in ("GetObject", "HeadObject")
                and resp.status == 404
                and s3_action(self.command, self.path, self.headers)
            ):
                self.state.count_injected(action)
                self.log_message("answered %s of a missing key as S3 does without ListBucket", action)
                return (*s3_error(403, "AccessDenied", "Access Denied"), [])
            return resp.status, resp.getheader("Content-Type"), payload, headers
        except OSError as e:
            return 502, "text/plain", f"fault_proxy: upstream: {e}\n".encode(), []
        finally:
            conn.close()

    def _repeated_launch(self, fields, body):
        """EC2's answer to a RunInstances whose ClientToken was used before, or None."""
        token = fields["ClientToken"][0]
        params = sorted((k, v) for k, v in fields.items() if k != "ClientToken")
        with self.state.lock:
            earlier = self.state.tokens.get(token)
        if earlier is None:
            return None
        if earlier[0] != params:
            self.log_message("RunInstances repeats ClientToken %s with other parameters", token)
            return ec2_error(
                "IdempotentParameterMismatch",
                f"Arguments on this idempotent request are inconsistent with arguments used in "
                f"previous request(s) with token {token}.",
            )
        payload = earlier[1]
        ids = [i.decode() for i in re.findall(rb"<instanceId>(i-[0-9a-f]+)</instanceId>", payload)]
        described = urllib.parse.urlencode(
            [("Action", "DescribeInstances"), ("Version", fields.get("Version", ["2016-11-15"])[0])]
            + [(f"InstanceId.{n}", i) for n, i in enumerate(ids, 1)]
        ).encode()
        status, _, now, _ = self._forward("DescribeInstances", described)
        if status != 200:
            return None
        states = {}
        root, ns = parsed(now)
        for item in root.iter(f"{ns}item"):
            state = item.find(f"{ns}instanceState")
            if item.findtext(f"{ns}instanceId") and state is not None:
                states[item.findtext(f"{ns}instanceId")] = state
        root = ET.fromstring(payload)
        for item in root.iter(f"{ns}item"):
            old = item.find(f"{ns}instanceState")
            new = states.get(item.findtext(f"{ns}instanceId"))
            if old is not None and new is not None:
                for child in list(old):
                    old.remove(child)
                for child in new:
                    old.append(child)
        self.log_message("RunInstances repeats ClientToken %s: answered with %s", token, ids)
        return 200, "text/xml;charset=UTF-8", serialized(root)

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

    def _upstream(self, fields):
        """An EC2 call of the proxy's own to moto, signed (moto does not check) as the call
        being answered, so that it lands in the same region; its answer's XML root."""
        body = urllib.parse.urlencode(fields, doseq=True).encode()
        up = self.state.upstream
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
        try:
            conn.putrequest("POST", "/", skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in HOP_BY_HOP and not k.lower().startswith("amz-sdk"):
                    conn.putheader(k, v)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            payload = resp.read()
            if resp.status != 200:
                raise RuntimeError("%s answered %s: %s" % (fields["Action"], resp.status, payload))
            return ET.fromstring(payload)
        finally:
            conn.close()

    def _made_image(self, payload, fields, snapshot_tags):
        """After CreateImage: tags its snapshots as EC2 would have, terminates its instance
        for --image-state ...:Client.InstanceTerminated."""
        root, ns = parsed(payload)
        image_id = root.findtext(f"{ns}imageId")
        with self.state.lock:
            self.state.made_images.add(image_id)
        if snapshot_tags:
            described = self._upstream({"Action": "DescribeImages", "Version": "2016-11-15",
                                        "ImageId.1": image_id})
            dns = namespace(described)
            snapshots = [e.text for e in described.iter(f"{dns}snapshotId") if e.text]
            call = {"Action": "CreateTags", "Version": "2016-11-15"}
            for n, snap in enumerate(snapshots, 1):
                call[f"ResourceId.{n}"] = snap
            for n, (k, v) in enumerate(snapshot_tags, 1):
                call[f"Tag.{n}.Key"], call[f"Tag.{n}.Value"] = k, v
            if snapshots:
                self._upstream(call)
            self.log_message("tagged snapshots %s of %s as EC2 would", snapshots, image_id)
        if self.state.boot and fields.get("NoReboot", ["false"])[0] != "true":
            self._reboot(fields.get("InstanceId", [""])[0])
        if self.state.image_state and self.state.image_state[1] == "Client.InstanceTerminated":
            instance = fields.get("InstanceId", [""])[0]
            self._upstream({"Action": "TerminateInstances", "Version": "2016-11-15",
                            "InstanceId.1": instance})
            self.log_message("terminated %s while it was imaged", instance)

    def _first_boot(self, fields, payload):
        """--boot: each launched instance runs the call's user data."""
        user_data = base64.b64decode(fields.get("UserData", [""])[0])
        root, ns = parsed(payload)
        for item in root.iter(f"{ns}item"):
            ip, instance = item.findtext(f"{ns}privateIpAddress"), item.findtext(f"{ns}instanceId")
            if not ip or not instance:
                continue
            with self.state.lock:
                self.state.ip_of[instance] = ip
            requests = os.path.join(self.state.boot, ip)
            os.makedirs(requests, exist_ok=True)
            with open(os.path.join(requests, "user-data.tmp"), "wb") as f:
                f.write(user_data)
            os.replace(os.path.join(requests, "user-data.tmp"), os.path.join(requests, "user-data"))
            self.log_message("%s (%s) boots with its user data", instance, ip)

    def _reboot(self, instance):
        """--boot: the instance reboots for CreateImage; it has once this returns."""
        with self.state.lock:
            ip = self.state.ip_of.get(instance)
        if not ip:
            return
        requests = os.path.join(self.state.boot, ip)
        done = os.path.join(requests, "reboot.done")
        with open(os.path.join(requests, "reboot"), "w"):
            pass
        deadline = time.monotonic() + 30
        while not os.path.exists(done):
            if time.monotonic() > deadline:
                raise RuntimeError("instance %s (%s) did not reboot within 30 s" % (instance, ip))
            time.sleep(0.05)
        os.remove(done)
        self.log_message("rebooted %s (%s) for CreateImage", instance, ip)

    def _image_state(self, payload):
        """--image-state: the images CreateImage made read that state (and reason)."""
        state, code = self.state.image_state[0], self.state.image_state[1]
        root, ns = parsed(payload)
        with self.state.lock:
            made = set(self.state.made_images)
        for item in root.iter(f"{ns}item"):
            if item.findtext(f"{ns}imageId") not in made:
                continue
            item.find(f"{ns}imageState").text = state
            if code:
                reason = item.find(f"{ns}stateReason")
                if reason is None:
                    reason = ET.SubElement(item, f"{ns}stateReason")
                for child in list(reason):
                    reason.remove(child)
                ET.SubElement(reason, f"{ns}code").text = code
                ET.SubElement(reason, f"{ns}message").text = code + ": injected by fault_proxy"
        return serialized(root)
    def _answered_here(self, action, body):
        """What the proxy answers itself where moto would not answer as AWS does, or None."""
        if action == "GetServiceQuota":
            ask = json.loads(body or b"{}")
            quota = service_quota(self.state.quotas, ask.get("ServiceCode"), ask.get("QuotaCode"))
            if quota is not None:
                return 200, "application/x-amz-json-1.1", quota
        if action == "DecodeAuthorizationMessage":
            return sts_answer(self.state.decoded)
        return None

    def _follow_disks(self, action, fields, payload):
        """--disks: a launched instance's disk starts empty or as its image's; CreateImage
        copies the instance's disk as the image's."""
        root, ns = parsed(payload)
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
        if action == "DescribeImages" and self.state.image_state:
            payload = self._image_state(payload)
        if action == "RunInstances" and self.state.boot:
            self._first_boot(form_fields(self.headers, body), payload)
        if action == "DescribeSpotPriceHistory" and self.state.no_spot_history:
            self.state.count_injected(action)
            return strip_set(payload, "spotPriceHistorySet")
        if action == "DescribeImages" and self.state.deprecated:
            fields = form_fields(self.headers, body)
            if fields.get("IncludeDeprecated", ["false"])[0] != "true":
                stripped = strip_images(payload, self.state.deprecated)
                if stripped != payload:
                    self.state.count_injected(action)
                return stripped
        if action == "RunInstances":
            now = time.monotonic()
            fields = form_fields(self.headers, body)
            if fields.get("ClientToken"):
                params = sorted((k, v) for k, v in fields.items() if k != "ClientToken")
                with self.state.lock:
                    self.state.tokens[fields["ClientToken"][0]] = (params, payload)
            group = (fields.get("Placement.GroupName") or [None])[0]
            with self.state.lock:
                for i in instance_ids(payload):
                    self.state.launched.setdefault(i, now)
                    if group is not None:
                        self.state.group_of[i] = group
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
    p.add_argument("--image-state", metavar="STATE[:CODE]",
                   help="images made by CreateImage read STATE, with state reason CODE")
    p.add_argument("--boot", metavar="DIR",
                   help="instances run their user data at launch and reboot for CreateImage")
    p.add_argument("--deprecated", action="append", default=[], metavar="AMI",
                   help="DescribeImages hides AMI unless IncludeDeprecated=true")
    p.add_argument("--quota", action="append", default=[], metavar="SERVICE:CODE:VALUE",
                   help="GetServiceQuota of SERVICE's CODE answers VALUE")
    p.add_argument("--no-spot-history", action="store_true",
                   help="DescribeSpotPriceHistory answers no prices")
    p.add_argument("--decoded", help="DecodeAuthorizationMessage answers this decoded message")
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
                          args.disks, args.images, image_state=args.image_state, boot=args.boot,
                          deprecated=args.deprecated, quotas=args.quota, decoded=args.decoded,
                          s3=s3, no_spot_history=args.no_spot_history)
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
