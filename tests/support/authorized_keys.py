#!/usr/bin/python3
"""sshd AuthorizedKeysCommand that behaves like EC2 Instance Connect, against moto (stdlib only).

sshd_config (one per instance address):
    AuthorizedKeysCommand /run/rallyctl-e2e/H/authorized_keys.py --moto http://127.0.0.1:PORT \
        --region REGION --server-addr 127.0.X.N --log FILE %u %t %k
    AuthorizedKeysCommandUser root

Positional arguments: the OS user (%u), the offered key's type (%t) and base64 blob (%k).
The server (instance) address comes from --server-addr: OpenSSH 9.2 (Debian 12) does not know
the %C token for AuthorizedKeysCommand ("vdollar_percent_expand: unknown key %C", and sshd then
refuses every key). With a newer sshd, `%u %C %t %k` without --server-addr works too (the
endpoints' third field is the server address).

It prints the pushed key (one authorized_keys line) only if
  1. moto has an instance in state `running` whose private IP is the server address, and
  2. moto's request recorder holds an ec2-instance-connect SendSSHPublicKey call for that
     instance id, that OS user and exactly that public key (type and blob), made in REGION
     within the last 60 seconds.
Otherwise it prints nothing, and sshd refuses the key.

Time of a push: moto's recorder stores no timestamp of its own, but every recorded request keeps
its headers, and SigV4 signing puts the request's signing time in `X-Amz-Date` (UTC, seconds).
The SDK signs immediately before sending, on the same clock, so the push happened at X-Amz-Date
(+ a few ms). A recorded push without X-Amz-Date (an unsigned request) is never accepted.

Every decision is appended to --log (sshd discards the command's stderr).
"""

import argparse
import base64
import calendar
import json
import sys
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

VALIDITY_SECONDS = 60
CLOCK_SKEW_SECONDS = 5
TARGET = "AWSEC2InstanceConnectService.SendSSHPublicKey"


USER_AGENT = "rallyctl-e2e-harness/authorized-keys"  # lets tests tell our calls from rallyctl's


def http(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers={"User-Agent": USER_AGENT, **(headers or {})})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


def running_instance_with_ip(moto, region, ip):
    """Instance id of the running instance with private IP `ip`, or None."""
    body = urllib.parse.urlencode({
        "Action": "DescribeInstances",
        "Version": "2016-11-15",
        "Filter.1.Name": "private-ip-address",
        "Filter.1.Value.1": ip,
        "Filter.2.Name": "instance-state-name",
        "Filter.2.Value.1": "running",
    }).encode()
    # moto takes the region from the credential scope of the Authorization header.
    auth = ("AWS4-HMAC-SHA256 Credential=testing/20260101/%s/ec2/aws4_request, "
            "SignedHeaders=host, Signature=0" % region)
    xml = http(moto.rstrip("/") + "/", body, {
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "Authorization": auth,
    })
    root = ET.fromstring(xml)
    ids = []
    for el in root.iter():
        if el.tag.endswith("instancesSet"):
            for item in el:
                for child in item:
                    if child.tag.endswith("instanceId"):
                        ids.append(child.text)
    return ids


def header(headers, name):
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


def pushes(moto):
    """Yield (epoch seconds or None, region or None, body dict) for every recorded push."""
    raw = http(moto.rstrip("/") + "/moto-api/recorder/download-recording").decode()
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        headers = entry.get("headers") or {}
        if header(headers, "X-Amz-Target") != TARGET:
            continue
        body = entry.get("body") or ""
        if entry.get("body_encoded"):
            body = base64.b64decode(body).decode("utf-8", "replace")
        try:
            payload = json.loads(body)
        except ValueError:
            continue
        when = None
        amz_date = header(headers, "X-Amz-Date")
        if amz_date:
            try:
                when = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
            except ValueError:
                when = None
        region = None
        auth = header(headers, "Authorization") or ""
        if "Credential=" in auth:
            scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
            if len(scope) >= 3:
                region = scope[2]
        yield when, region, payload


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moto", required=True, help="moto endpoint, e.g. http://127.0.0.1:5000")
    ap.add_argument("--region", required=True)
    ap.add_argument("--server-addr", default=None, help="the instance's private IP")
    ap.add_argument("--log", default=None)
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="%%u [%%C] %%t %%k")
    args = ap.parse_args()

    def note(msg):
        if args.log:
            try:
                with open(args.log, "a") as f:
                    f.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), msg))
            except OSError:
                pass

    # user, [endpoints (1 or 4 argv entries, space separated)], key type, key blob
    rest = args.rest
    if len(rest) < 3:
        note("refused: bad arguments %r" % (rest,))
        return 0
    user, key_type, key_blob = rest[0], rest[-2], rest[-1]
    server_addr = args.server_addr
    if server_addr is None:
        endpoints = " ".join(rest[1:-2]).split()
        if len(endpoints) != 4:
            note("refused: no --server-addr and bad endpoints %r" % (endpoints,))
            return 0
        server_addr = endpoints[2]

    try:
        ids = running_instance_with_ip(args.moto, args.region, server_addr)
    except Exception as e:  # noqa: BLE001 - any failure means "no key"
        note("refused: DescribeInstances failed: %r" % (e,))
        return 0
    if len(ids) != 1:
        note("refused: %d running instances with private IP %s: %s" % (len(ids), server_addr, ids))
        return 0
    instance_id = ids[0]

    now = time.time()
    try:
        records = list(pushes(args.moto))
    except Exception as e:  # noqa: BLE001
        note("refused: cannot read moto's recording: %r" % (e,))
        return 0
    for when, region, p in reversed(records):
        if p.get("InstanceId") != instance_id or p.get("InstanceOSUser") != user:
            continue
        fields = (p.get("SSHPublicKey") or "").split()
        if len(fields) < 2 or fields[0] != key_type or fields[1] != key_blob:
            continue
        if region is not None and region != args.region:
            note("skipped: push for %s in region %s, instance is in %s" % (instance_id, region,
                                                                          args.region))
            continue
        if when is None:
            note("skipped: push for %s without X-Amz-Date" % instance_id)
            continue
        age = now - when
        if age > VALIDITY_SECONDS or age < -CLOCK_SKEW_SECONDS:
            note("skipped: push for %s %s@%s is %.0f s old" % (key_type, user, instance_id, age))
            continue
        note("accepted: %s key for %s@%s (%s), pushed %.0f s ago" % (key_type, user, instance_id,
                                                                      server_addr, age))
        sys.stdout.write(" ".join(fields) + "\n")
        return 0
    note("refused: no fresh push of this %s key for %s@%s (%s); %d pushes recorded"
         % (key_type, user, instance_id, server_addr, len(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
