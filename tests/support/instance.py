#!/usr/bin/python3
"""One fake "EC2 instance" for rallyctl's end-to-end tests (stdlib only, run as root).

Started by the Rust harness as

    unshare --pid --fork --kill-child --mount-proc /usr/bin/python3 instance.py \
        --sshd-config CFG --sshd-log LOG --host-key-dir DIR [--forward PORT ...] \
        [--proxy-port 3128] [--private-dir SRC DST ...] --ready-file F

with stdin = a TCP socket already listening on the instance's private address (127.0.X.N:PORT,
bound by the harness in the host's network namespace). This process is PID 1 of a new PID
namespace and moves itself into a new, empty network namespace, so that the instance behaves like
a machine of its own:

* processes: only the instance's own are visible (Rally refuses to start while another Rally
  process is visible);
* network: its own loopback, so Rally's actor system (which always binds port 1900 and joins
  whatever answers on 127.0.0.1:1900) cannot collide with a race on another instance;
* SSH: every connection accepted on the inherited socket is handed to `sshd -i` (inetd mode),
  which therefore runs inside the instance's namespaces; sshd sees the private address as its
  local address, exactly like on EC2; every start of an instance creates a new host key;
* each --forward PORT: 127.0.0.1:PORT inside the instance is relayed to 127.0.0.1:PORT of the
  host (the Elasticsearch test double, moto);
* --bridge BRIDGE: the instance is also on a bridge of the host (a veth pair, its end `eth0`
  inside holding the private address), so that instances of one harness reach one another at
  their private addresses on any port, as instances of one VPC subnet do;
* --proxy-port: an HTTP CONNECT proxy on 127.0.0.1:PORT inside the instance whose connections
  leave from the host's network namespace (pip reaches the package index through it; sshd's
  SetEnv gives sessions https_proxy);
* each --private-dir SRC DST: DST inside the instance shows SRC (a bind mount in the instance's
  own mount namespace, which `unshare --mount-proc` made): a disk of the instance's own, so that
  instances that otherwise share this machine's filesystem can hold files at one path (a lease
  file, a venv) without seeing each other's. The host sees DST unchanged (empty); SRC outlives
  a restart of the instance at the same address, like a disk outlives a reboot.

Killing the `unshare` process with SIGKILL kills this PID 1 and with it every process of the
instance: that is what a terminated instance looks like.
"""

import argparse
import ctypes
import fcntl
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)
HOST_NETNS_FD = None  # fd of the host's network namespace, opened before leaving it


def log(msg):
    sys.stderr.write("[instance %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def enter_host_netns():
    """Move the *calling thread* into the host's network namespace (sockets keep their netns)."""
    if LIBC.setns(HOST_NETNS_FD, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "setns(host netns): " + os.strerror(err))


def loopback_up():
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, siocgifflags, ifr))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def in_host_netns(fn):
    """Runs fn() in a thread that entered the host's network namespace (what it starts too)."""
    failure = []

    def run():
        try:
            enter_host_netns()
            fn()
        except (OSError, subprocess.CalledProcessError) as e:
            failure.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if failure:
        raise failure[0]


def veth_names(ip):
    """Host-side and (until moved and renamed) instance-side names of an instance's veth pair:
    unique per address on this machine, and within the 15 characters Linux allows."""
    _, _, x, n = ip.split(".")
    return "rce%s-%s" % (x, n), "rce%si%s" % (x, n)


def create_veth(bridge, ip):
    """The pair, both ends still in the host's namespace, the host end on `bridge`. A pair of
    a killed instance at this address vanishes with its namespace, maybe not yet: drop it."""
    host_end, inner = veth_names(ip)
    subprocess.run(["ip", "link", "del", host_end], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", inner],
                   check=True)
    subprocess.run(["ip", "link", "set", host_end, "master", bridge, "up"], check=True)


def join_bridge(ip):
    """Moves the instance end of the pair into this (new) namespace as eth0 with the private
    address. 127.0.0.0/8 is loopback: the kernel routes all of it to lo and drops it as martian
    on any other device, so the /8 local route goes (127.0.0.1 stays local) and eth0 gets
    route_localnet, which lets it carry and answer ARP for 127.x addresses."""
    _, inner = veth_names(ip)
    pid = str(os.getpid())
    in_host_netns(lambda: subprocess.run(["ip", "link", "set", inner, "netns", pid], check=True))
    subprocess.run(["ip", "route", "del", "127.0.0.0/8", "dev", "lo", "table", "local"],
                   check=True)
    subprocess.run(["ip", "link", "set", inner, "name", "eth0"], check=True)
    # A MAC address of the private IP's own: the other instances' ARP caches stay right for a
    # successor at this address (a random one would leave them sending to the old one for
    # many seconds).
    mac = "02:00:%02x:%02x:%02x:%02x" % tuple(int(o) for o in ip.split("."))
    subprocess.run(["ip", "link", "set", "eth0", "address", mac], check=True)
    with open("/proc/sys/net/ipv4/conf/eth0/route_localnet", "w") as f:
        f.write("1")
    subprocess.run(["ip", "addr", "add", ip + "/24", "dev", "eth0"], check=True)
    subprocess.run(["ip", "link", "set", "eth0", "up"], check=True)


def refusing(refuse_file):
    """True while the harness wants this instance's sshd to look not started yet."""
    try:
        with open(refuse_file) as f:
            return time.time() < float(f.read().strip())
    except (OSError, ValueError):
        return False


def accept_in_background(lsock, handle):
    """Serves each connection accepted on lsock with handle(conn), in its own thread."""

    def loop():
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def pump(a, b):
    """Copy bytes both ways until both directions are closed."""
    socks = [a, b]
    peer = {a: b, b: a}
    open_dirs = 2
    try:
        while open_dirs and socks:
            readable, _, _ = select.select(socks, [], [], 3600)
            if not readable:
                break
            for s in readable:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if data:
                    peer[s].sendall(data)
                else:
                    socks.remove(s)
                    open_dirs -= 1
                    try:
                        peer[s].shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
    except OSError:
        pass
    finally:
        a.close()
        b.close()


def listen_local(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s


def serve_forward(port):
    lsock = listen_local(port)

    def handle(conn):
        try:
            enter_host_netns()
            up = socket.create_connection(("127.0.0.1", port), timeout=10)
            up.settimeout(None)
        except OSError as e:
            log("forward %d: cannot reach host: %s" % (port, e))
            conn.close()
            return
        pump(conn, up)

    accept_in_background(lsock, handle)


def serve_proxy(port):
    lsock = listen_local(port)

    def handle(conn):
        try:
            conn.settimeout(30)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(4096)
                if not chunk:
                    conn.close()
                    return
                buf += chunk
                if len(buf) > 65536:
                    raise OSError("request head too large")
            head, rest = buf.split(b"\r\n\r\n", 1)
            parts = head.split(b"\r\n")[0].split()
            if len(parts) < 2 or parts[0] != b"CONNECT":
                conn.sendall(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")
                conn.close()
                return
            host, _, port_s = parts[1].decode().rpartition(":")
            enter_host_netns()
            up = socket.create_connection((host.strip("[]"), int(port_s)), timeout=30)
            up.settimeout(None)
            conn.settimeout(None)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                up.sendall(rest)
        except (OSError, ValueError) as e:
            log("proxy: %s" % e)
            try:
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            conn.close()
            return
        pump(conn, up)

    accept_in_background(lsock, handle)


def reap_forever():
    """PID 1 duty: collect every orphan (detached races, finished sshd sessions)."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.2)
        except InterruptedError:
            pass


def fake_shutdown(log_path, scratch, ip):
    """EC2's watchdog is `shutdown -h +N` in the user data, run again before each further race
    on one instance. An instance here is a process tree on the test host, whose init must never
    hear of it: inside the instance (its own mount namespace) `shutdown` only records what it
    was asked, as the schedule EC2 would keep. It is first in PATH (/usr/local/sbin) and stands
    in for the real one too, should a session's PATH put that first."""
    bindir = os.path.join(scratch, "shutdown-%s-%d" % (ip, time.time_ns()))
    os.makedirs(bindir)
    shim = os.path.join(bindir, "shutdown")
    with open(shim, "w") as f:
        f.write('#!/bin/sh\necho "$(date +%%s) $*" >> \'%s\'\n' % log_path.replace("'", ""))
    os.chmod(shim, 0o755)
    os.makedirs("/usr/local/sbin", exist_ok=True)
    subprocess.run(["mount", "--bind", bindir, "/usr/local/sbin"], check=True)
    real = shutil.which("shutdown", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if real:
        subprocess.run(["mount", "--bind", shim, os.path.realpath(real)], check=True)


def private_cloud_dir(boot_dir, ip):
    """/var/lib/cloud of this instance start alone: what its user data writes there (the
    watchdog's deadline, cloud-init's per-boot scripts) is its own, as on an instance's disk."""
    cloud = os.path.join(boot_dir, "cloud-%s-%d" % (ip, time.time_ns()))
    os.makedirs(cloud)
    os.makedirs("/var/lib/cloud", exist_ok=True)
    subprocess.run(["mount", "--bind", cloud, "/var/lib/cloud"], check=True)


def serve_boots(requests):
    """cloud-init's part of a boot, when the fault proxy (`--boot`) asks for it in `requests`:
    `user-data` is run once, as cloud-init runs an instance's user data at its first boot;
    `reboot` runs cloud-init's per-boot scripts, as at every later boot, then `reboot.done`
    says so."""
    os.makedirs(requests, exist_ok=True)
    user_data = os.path.join(requests, "user-data")
    reboot = os.path.join(requests, "reboot")
    per_boot = "/var/lib/cloud/scripts/per-boot"
    while True:
        if os.path.exists(user_data):
            os.replace(user_data, user_data + ".ran")
            r = subprocess.run(["bash", user_data + ".ran"], capture_output=True, text=True)
            log("user data ran (exit %d): %s%s" % (r.returncode, r.stdout, r.stderr))
        if os.path.exists(reboot):
            os.remove(reboot)
            scripts = sorted(os.listdir(per_boot)) if os.path.isdir(per_boot) else []
            for name in scripts:
                r = subprocess.run([os.path.join(per_boot, name)], capture_output=True, text=True)
                log("per-boot %s ran (exit %d): %s%s" % (name, r.returncode, r.stdout, r.stderr))
            log("rebooted: ran the per-boot scripts %s" % scripts)
            with open(reboot + ".done", "w"):
                pass
        time.sleep(0.1)


def main():
    global HOST_NETNS_FD
    ap = argparse.ArgumentParser()
    ap.add_argument("--sshd", default="/usr/sbin/sshd")
    ap.add_argument("--sshd-config", required=True)
    ap.add_argument("--sshd-log", required=True)
    ap.add_argument("--host-key-dir", required=True,
                    help="where to create this instance's own SSH host key (new on every start)")
    ap.add_argument("--forward", type=int, action="append", default=[])
    ap.add_argument("--proxy-port", type=int, default=0)
    ap.add_argument("--bridge", default="",
                    help="reach the other instances on this host bridge at their private IPs")
    ap.add_argument("--private-dir", nargs=2, action="append", default=[], metavar=("SRC", "DST"),
                    help="bind-mount SRC at DST inside the instance only")
    ap.add_argument("--watchdog-log", default="",
                    help="`shutdown` inside the instance appends its arguments here, and does "
                         "nothing else")
    ap.add_argument("--boot-dir", default="",
                    help="this instance's /var/lib/cloud is private, under here; the fault "
                         "proxy's `--boot` asks for its user data and reboots in BOOT_DIR/<ip>")
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--refuse-file", default="",
                    help="holds a Unix time; until then SSH connections are closed at once, "
                         "as by an instance whose sshd is not up yet")
    args = ap.parse_args()

    # The listening socket on the private address comes in as stdin (host network namespace).
    ssh_listener = socket.socket(fileno=os.dup(0))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    addr = ssh_listener.getsockname()

    # A fresh host key per instance start, like a new VM: an instance relaunched at a reused
    # private IP presents a different host key (clients must not pin keys by address).
    host_key = os.path.join(args.host_key_dir, "ssh_host_ed25519_key-%s-%d" % (addr[0], time.time_ns()))
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "instance-%s" % addr[0],
                    "-f", host_key], check=True, stdin=subprocess.DEVNULL)

    if args.private_dir:
        # unshare(1) already makes the new mount namespace private; say so anyway, so that no
        # bind mount below can ever propagate to the host's namespace.
        subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    for src, dst in args.private_dir:
        os.makedirs(src, exist_ok=True)
        os.makedirs(dst, exist_ok=True)
        subprocess.run(["mount", "--bind", src, dst], check=True)
    if args.watchdog_log:
        fake_shutdown(args.watchdog_log, args.host_key_dir, addr[0])
    if args.boot_dir:
        private_cloud_dir(args.boot_dir, addr[0])

    if args.bridge:
        create_veth(args.bridge, addr[0])
    HOST_NETNS_FD = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    if LIBC.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "unshare(CLONE_NEWNET): " + os.strerror(err))
    loopback_up()
    # A default route (via lo) so that "which local address would reach 8.8.8.8?" has an answer:
    # Rally's actor system (thespian) asks exactly that and crashes ("Unable to determine valid
    # external socket address") in a namespace without any route. Traffic that really leaves
    # lo goes nowhere, like an instance without internet; pip uses the CONNECT proxy below.
    subprocess.run(["ip", "route", "add", "default", "dev", "lo", "src", "127.0.0.1"], check=True)
    if args.bridge:
        join_bridge(addr[0])
    for port in args.forward:
        serve_forward(port)
    if args.proxy_port:
        serve_proxy(args.proxy_port)
    # SIGCHLD must not be ignored (sshd and the sessions wait for their children).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    threading.Thread(target=reap_forever, daemon=True).start()
    if args.boot_dir:
        threading.Thread(target=serve_boots, args=(os.path.join(args.boot_dir, addr[0]),),
                         daemon=True).start()

    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%s:%d pid=%d\n" % (addr[0], addr[1], os.getpid()))
    os.replace(tmp, args.ready_file)
    log("ready: ssh on %s:%d, forwards %s, proxy %s, private dirs %s, bridge %s"
        % (addr[0], addr[1], args.forward, args.proxy_port, args.private_dir, args.bridge or "-"))

    while True:
        try:
            conn, peer = ssh_listener.accept()
        except InterruptedError:
            continue
        if refusing(args.refuse_file):
            log("refusing ssh from %s (sshd not up yet)" % (peer,))
            conn.close()
            continue
        try:
            # sshd -i: one connection on stdin/stdout, runs inside this instance's namespaces.
            subprocess.Popen(
                [args.sshd, "-i", "-f", args.sshd_config, "-o", "HostKey=" + host_key,
                 "-E", args.sshd_log],
                stdin=conn.fileno(), stdout=conn.fileno(), stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as e:
            log("cannot start sshd for %s: %s" % (peer, e))
        finally:
            conn.close()


if __name__ == "__main__":
    main()
