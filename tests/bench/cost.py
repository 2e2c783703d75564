#!/usr/bin/env python3
"""CPU per request, tbot vs the Go reference peer, at fixed request rates.

Usage: cost.py TBOT_PORT TBOT_PID GO_PORT GO_PID [FLOOR_PORT FLOOR_PID]; with
the floor (tests/bench/floor.c, a fixed 200 OK: the least a server can do per
request here), the table also shows its cost and tbot/floor, go/floor.

Run by tests/bench/cost.sh (which builds and starts both servers); not part
of the test suite. Loopback only, bounded in time; it starts no process.

Method (issue 11, item 4):
- an open-loop driver: requests are sent on a fixed schedule (RATE per
  second), whether or not earlier answers have come back; keep-alive requests
  go out on an idle connection of a small pool (a new one is opened when all
  are busy), "new" requests each open, use and close their own connection
  (Connection: close, as kubelet's probes do);
- the two servers alternate in 1-second slices, SLICES slices each per row;
- CPU is read from a cgroup v1 cpuacct group per server (all threads,
  including exited ones, in ns), falling back to /proc/PID/stat
  utime+stime (10 ms ticks) when no group can be made;
- a slice's requests are those sent in it; the slice ends when all of them
  are answered (or 2 s after the last was sent), and its CPU covers that.
"""

import base64
import os
import selectors
import socket
import ssl
import sys
import time

CG_ROOT = "/sys/fs/cgroup/cpuacct"


class Cpu:
    """CPU time (ns) of one process, all threads."""

    def __init__(self, name, pid):
        self.pid = pid
        self.group = None
        path = f"{CG_ROOT}/tbot-bench-{os.getpid()}-{name}"
        try:
            os.mkdir(path)
            with open(f"{path}/cgroup.procs", "w") as f:
                f.write(str(pid))
            self.group = path
        except OSError as e:
            print(f"# {name}: no cpuacct group ({e}); using /proc/{pid}/stat ticks", file=sys.stderr)
            if os.path.isdir(path):
                os.rmdir(path)

    def ns(self):
        if self.group:
            with open(f"{self.group}/cpuacct.usage") as f:
                return int(f.read())
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")

    def close(self):
        """Moves the process back to the root group and removes ours."""
        if not self.group:
            return
        try:
            with open(f"{CG_ROOT}/cgroup.procs", "w") as f:
                f.write(str(self.pid))
        except OSError:
            pass
        try:
            os.rmdir(self.group)
        except OSError:
            pass


class Resp:
    """Incremental HTTP/1.1 response reader (Content-Length or chunked)."""

    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf += data

    def take(self):
        """Returns (status, bytes) of one complete response, or None."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.buf[:end].decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        length, chunked = 0, False
        for line in head[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "transfer-encoding" and "chunked" in v.lower():
                chunked = True
        pos = end + 4
        if chunked:
            while True:
                nl = self.buf.find(b"\r\n", pos)
                if nl < 0:
                    return None
                size = int(self.buf[pos:nl].split(b";")[0], 16)
                if len(self.buf) < nl + 2 + size + 2:
                    return None
                pos = nl + 2 + size + 2
                if size == 0:
                    break
        else:
            if len(self.buf) < pos + length:
                return None
            pos += length
        self.buf = self.buf[pos:]
        return status


class Conn:
    def __init__(self, sel, addr, keep, tls=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # TLS (TLS=1): the TCP connect blocks (loopback, at once), the
        # handshake does not (driven by the loop, as the request is).
        self.handshaking = tls is not None
        if tls is not None:
            self.sock.connect(addr)
            self.sock.setblocking(False)
            self.sock = tls.wrap_socket(self.sock, do_handshake_on_connect=False)
        else:
            self.sock.setblocking(False)
            self.sock.connect_ex(addr)
        self.keep = keep
        self.resp = Resp()
        self.busy = False
        self.pending = b""
        self.sel = sel
        sel.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)

    def send(self, req):
        self.busy = True
        self.pending += req
        self.sel.modify(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)

    def close(self):
        self.sel.unregister(self.sock)
        self.sock.close()


def handshake(c):
    """Moves a TLS handshake on; True once it is done."""
    try:
        c.sock.do_handshake()
    except ssl.SSLWantReadError:
        c.sel.modify(c.sock, selectors.EVENT_READ, c)
        return False
    except ssl.SSLWantWriteError:
        c.sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        return False
    c.handshaking = False
    c.sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    return True


def recv_all(c):
    """What the socket has (for TLS, records already decrypted too: select
    cannot see those); b"" at the end of the stream."""
    try:
        data = c.sock.recv(65536)
        while data and isinstance(c.sock, ssl.SSLSocket) and c.sock.pending():
            data += c.sock.recv(65536)
        return data
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return None
    except OSError:
        return b""


def slice_run(addr, path, keep, rate, secs, pool):
    """Drives one server for `secs` seconds; returns (answered, errors)."""
    hdr = b"Accept-Encoding: gzip\r\n" if path == "/metrics" else b""
    if pool.get("auth"):
        hdr += b"Authorization: Basic " + base64.b64encode(pool["auth"].encode()) + b"\r\n"
    conn_hdr = b"" if keep else b"Connection: close\r\n"
    req = (f"GET {path} HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\n".encode()
           + hdr + conn_hdr + b"User-Agent: cost.py\r\n\r\n")
    sel = pool["sel"]
    why = pool["why"]
    idle = pool["idle"]
    live = set(pool["live"])
    total = int(rate * secs)
    start = time.monotonic()
    sent = answered = errors = 0
    end_by = start + secs + 2.0
    while True:
        now = time.monotonic()
        due = min(total, int((now - start) * rate) + 1)
        while sent < due:
            if keep and idle:
                c = idle.pop()
            else:
                c = Conn(sel, addr, keep, pool.get("tls"))
                live.add(c)
                pool["peak"] = max(pool.get("peak", 0), len(live))
            c.send(req)
            sent += 1
        if sent >= total and answered + errors >= total:
            break
        if now > end_by:
            why["no answer in 2 s"] = why.get("no answer in 2 s", 0) + total - answered - errors
            errors += total - answered - errors
            break
        wait = max(0.0, start + sent / rate - now) if sent < total else 0.05
        for key, ev in sel.select(timeout=wait):
            c = key.data
            try:
                if c.handshaking and not handshake(c):
                    continue
                if ev & selectors.EVENT_WRITE and c.pending:
                    try:
                        n = c.sock.send(c.pending)
                        c.pending = c.pending[n:]
                    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
            except OSError as e:
                errors += 1
                why[type(e).__name__] = why.get(type(e).__name__, 0) + 1
                live.discard(c)
                c.close()
                continue
            if ev & selectors.EVENT_WRITE and not c.pending:
                sel.modify(c.sock, selectors.EVENT_READ, c)
            if ev & selectors.EVENT_READ:
                data = recv_all(c)
                if data is None:
                    continue
                if data:
                    c.resp.feed(data)
                    status = c.resp.take()
                    if status is not None:
                        if status == 200 or (status == 503 and path.startswith("/readyz")):
                            answered += 1
                        else:
                            errors += 1
                            why[f"status {status}"] = why.get(f"status {status}", 0) + 1
                        c.busy = False
                        if keep:
                            idle.append(c)
                        else:
                            live.discard(c)
                            c.close()
                else:
                    if c.busy:
                        errors += 1
                        why["closed unanswered"] = why.get("closed unanswered", 0) + 1
                    live.discard(c)
                    if c in idle:
                        idle.remove(c)
                    c.close()
    pool["live"] = live
    return answered, errors


def load():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def main():
    tport, tpid, gport, gpid = map(int, sys.argv[1:5])
    floor = sys.argv[5:7]
    rates = [int(r) for r in os.environ.get("RATES", "50 500 2000").split()]
    slices = int(os.environ.get("SLICES", "6"))
    rows = [("/livez", True), ("/livez", False), ("/readyz", True),
            ("/readyz", False), ("/metrics", True)]
    # ROWS="/livez:keep-alive /readyz:new" runs only those rows.
    only = os.environ.get("ROWS", "").split()
    if only:
        rows = [r for r in rows if f"{r[0]}:{'keep-alive' if r[1] else 'new'}" in only]
    servers = {"tbot": (("127.0.0.1", tport), Cpu("tbot", tpid)),
               "go": (("127.0.0.1", gport), Cpu("go", gpid))}
    if floor:
        servers["floor"] = (("127.0.0.1", int(floor[0])), Cpu("floor", int(floor[1])))
    # TLS=1: HTTPS, certificates not verified (as the kubelet); AUTH=user:pw
    # sends basic auth with every request.
    tls = None
    if os.environ.get("TLS") == "1":
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    auth = os.environ.get("AUTH", "")
    head = f"{'endpoint':<9} {'conn':<10} {'rate':>5} {'tbot us/req':>11} {'go us/req':>10} "
    if floor:
        head += f"{'floor us/req':>12} "
    head += f"{'tbot/go':>7} "
    if floor:
        head += f"{'tbot/floor':>10} {'go/floor':>8} "
    print(head + f"{'errors ' + '/'.join(n[0] for n in servers):>12} {'load1':>6}")
    try:
        for path, keep in rows:
            for rate in rates:
                acc = {n: [0, 0, 0] for n in servers}  # ns, answered, errors
                pools = {n: {"sel": selectors.DefaultSelector(), "idle": [], "live": set(), "why": {},
                             "tls": tls, "auth": auth}
                         for n in servers}
                loads = []
                # One warm-up slice each, not counted (opens the keep-alive pool).
                for n, (addr, _) in servers.items():
                    slice_run(addr, path, keep, rate, 0.3, pools[n])
                    pools[n]["why"].clear()
                for _ in range(slices):
                    for n, (addr, cpu) in servers.items():
                        a = cpu.ns()
                        ok, err = slice_run(addr, path, keep, rate, 1.0, pools[n])
                        b = cpu.ns()
                        acc[n][0] += b - a
                        acc[n][1] += ok
                        acc[n][2] += err
                        loads.append(float(load()))
                for n in servers:
                    for c in list(pools[n]["live"]):
                        c.close()
                us = {n: acc[n][0] / 1000 / max(1, acc[n][1]) for n in servers}
                def ratio(a, b):
                    return us[a] / us[b] if us[b] else float("nan")
                line = (f"{path:<9} {'keep-alive' if keep else 'new':<10} {rate:>5} "
                        f"{us['tbot']:>11.1f} {us['go']:>10.1f} ")
                if floor:
                    line += f"{us['floor']:>12.1f} "
                line += f"{ratio('tbot', 'go'):>7.2f} "
                if floor:
                    line += f"{ratio('tbot', 'floor'):>10.2f} {ratio('go', 'floor'):>8.2f} "
                errors = "/".join(str(acc[n][2]) for n in servers)
                print(line + f"{errors:>12} {sum(loads) / len(loads):>6.2f}", flush=True)
                for n in servers:
                    if pools[n]["why"]:
                        # The most connections the driver had open to the
                        # server at once: past tbot's diag_max_connections
                        # (64), newcomers evict idle keep-alive connections.
                        print(f"#   {n} errors: {pools[n]['why']} "
                              f"(at most {pools[n].get('peak', 0)} connections open)", flush=True)
    finally:
        for _, cpu in servers.values():
            cpu.close()


if __name__ == "__main__":
    main()
