#!/usr/bin/env python3
"""What a service costs (issue 21, section 3), measured through the real
binary. Run by tests/bench/service_cost.sh (which builds the release binary);
as root, for the cgroup rows.

Rows (ROWS picks some, default all: fds memory limit idle reload exec
syscalls):
  fds     descriptors per identity output: (fds at 500 outputs - fds at 10) / 490
  memory  the cgroup memory peak (RSS, kernel memory and page cache together:
          v2 memory.peak, v1 memory.max_usage_in_bytes) of 500 identity outputs
          that start, renew (renewal_interval 5s, until each has renewed twice)
          and serve scrapes (/metrics, with and without gzip)
  limit   the same under a LIMIT_MB (default 32) cgroup memory limit: survived
          or killed
  idle    voluntary context switches of every thread over IDLE seconds
          (default 30) with 10 identity outputs, a multiplexer and the
          diagnostics service configured, all healthy
  reload  RSS over RELOADS (default 1000) SIGHUPs that add and remove 10
          identity outputs (to 10 others that stay)
  exec    exec -> /readyz 200 (every service healthy) at 1000 identity
          outputs, fresh destinations; the median of EXEC_ROUNDS (default 3),
          with tbot's CPU time (user + system) until then; NICE=-10 runs
          that tbot at nice -10
  syscalls the system calls of a start of SYSCALL_OUTPUTS (default 100)
          identity outputs into fresh destinations, per output, until every
          service is healthy (strace -f -c, so slower than the exec row):
          the file-system ones (open, create, write, fsync, link, rename,
          stat, read a link or a directory, close...) and futex

Every process started here is killed by PID, every cgroup made here removed.
Loopback only. The load average column is the machine's 1-minute load at the
end of the row (other work on the box shows there).
"""
import datetime
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

TBOT = sys.argv[1]
ROWS = os.environ.get("ROWS", "fds memory limit idle reload exec syscalls").split()
SYSCALL_OUTPUTS = int(os.environ.get("SYSCALL_OUTPUTS", "100"))
# What the syscalls row counts as file-system calls (strace's names).
FS_CALLS = {
    "open", "openat", "openat2", "creat", "close", "read", "write", "pwrite64",
    "fsync", "fdatasync", "sync_file_range", "fadvise64", "fchmod", "fchown",
    "fstat", "newfstatat", "statx", "stat", "lstat", "readlink", "readlinkat",
    "symlink", "symlinkat", "rename", "renameat", "renameat2", "unlink",
    "unlinkat", "mkdir", "mkdirat", "getdents64", "fsetxattr", "fgetxattr",
    "getxattr", "setxattr", "flock", "fcntl",
}
LIMIT_MB = int(os.environ.get("LIMIT_MB", "32"))
IDLE = int(os.environ.get("IDLE", "30"))
RELOADS = int(os.environ.get("RELOADS", "1000"))
EXEC_ROUNDS = int(os.environ.get("EXEC_ROUNDS", "3"))
# The exec row's tbot runs at this nice value, and in a cpu group of its own
# with this weight (CPU_SHARES=262144, the most: its share of a machine
# loaded by other work comes closer to a quiet machine's; the disk is
# still shared).
NICE = int(os.environ.get("NICE", "0"))
CPU_SHARES = int(os.environ.get("CPU_SHARES", "0"))
# EXEC_FS=work (the default): the exec rounds write under $TMPDIR, on the
# host's file system, as tbot would; mind that ext4 skips the inodes deleted
# in the last minutes when it allocates new ones (recently_deleted()), so a
# run right after another one removed its 12,000 files spends CPU there.
# EXEC_FS=loop: each round on a fresh 256 MB ext4 (a loop device made and
# removed here): no such history, but every fsync goes through two
# journals, which favours many writers at once.
EXEC_FS = os.environ.get("EXEC_FS", "work")
MOUNTS = []  # mounted here, unmounted at exit
USER = os.environ.get("BENCH_PRINCIPAL", "bench")

WORK = tempfile.mkdtemp(prefix="tbot-service-cost.")
STARTED = []  # Popen objects, killed by PID at exit
CGROUPS = []  # directories made here


def load1():
    return open("/proc/loadavg").read().split()[0]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(port, path, timeout=5.0, headers=None):
    """(status, body) or (None, error text)."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body
    except OSError as e:
        return None, str(e)


def config(dirname, n, port, extra="", renewal=None, names=None):
    """A configuration with `n` identity outputs (or those `names`) and the
    diagnostics service on `port`; `extra` is appended to the service list."""
    lines = [
        "version: v2",
        f"storage: {{type: directory, path: {dirname}/storage}}",
        f"diag_addr: 127.0.0.1:{port}",
    ]
    if renewal:
        lines.append(f"renewal_interval: {renewal}")
    lines.append("services:")
    for name in names if names is not None else [f"id-{i}" for i in range(n)]:
        lines.append(
            f"  - {{type: identity, name: {name}, principals: [{USER}], "
            f"destination: {{type: directory, path: {dirname}/out/{name}}}}}"
        )
    return "\n".join(lines) + "\n" + extra


class Cgroup:
    """A child memory cgroup (v2 when the unified hierarchy has the memory
    controller, else v1)."""

    def __init__(self, limit_mb=None):
        v2 = "/sys/fs/cgroup"
        controllers = os.path.join(v2, "cgroup.controllers")
        if os.path.exists(controllers) and "memory" in open(controllers).read().split():
            self.v2 = True
            self.path = os.path.join(v2, f"tbot-bench-{os.getpid()}-{len(CGROUPS)}")
        else:
            self.v2 = False
            self.path = f"/sys/fs/cgroup/memory/tbot-bench-{os.getpid()}-{len(CGROUPS)}"
        os.mkdir(self.path)
        CGROUPS.append(self.path)
        if limit_mb:
            name = "memory.max" if self.v2 else "memory.limit_in_bytes"
            self.write(name, str(limit_mb * 1024 * 1024))
            if self.v2:
                self.write("memory.swap.max", "0")

    def write(self, name, value):
        with open(os.path.join(self.path, name), "w") as f:
            f.write(value)

    def read(self, name):
        try:
            return open(os.path.join(self.path, name)).read()
        except OSError:
            return None

    def join_self(self):
        """For preexec_fn: moves the child into the group before exec."""
        self.write("cgroup.procs", str(os.getpid()))

    def peak(self):
        """(peak, kernel memory peak or None) in bytes."""
        if self.v2:
            return int(self.read("memory.peak")), None
        kmem = self.read("memory.kmem.max_usage_in_bytes")
        return int(self.read("memory.max_usage_in_bytes")), int(kmem) if kmem else None

    def stat(self):
        text = self.read("memory.stat") or ""
        return dict((l.split()[0], int(l.split()[1])) for l in text.splitlines() if len(l.split()) == 2)


class CpuGroup:
    """A child cpu cgroup with a weight (v1 cpu.shares, v2 cpu.weight)."""

    def __init__(self, shares):
        if os.path.isdir("/sys/fs/cgroup/cpu"):
            self.path = f"/sys/fs/cgroup/cpu/tbot-bench-cpu-{os.getpid()}-{len(CGROUPS)}"
            os.mkdir(self.path)
            CGROUPS.append(self.path)
            open(self.path + "/cpu.shares", "w").write(str(shares))
        else:
            self.path = f"/sys/fs/cgroup/tbot-bench-cpu-{os.getpid()}-{len(CGROUPS)}"
            os.mkdir(self.path)
            CGROUPS.append(self.path)
            open(self.path + "/cpu.weight", "w").write(str(max(1, min(10000, shares * 100 // 1024))))

    def join_self(self):
        open(self.path + "/cgroup.procs", "w").write(str(os.getpid()))


class Tbot:
    def __init__(self, tag, text, cgroup=None, nice=0):
        self.dir = os.path.join(WORK, tag)
        os.makedirs(self.dir, exist_ok=True)
        self.cfg = os.path.join(self.dir, "tbot.yaml")
        open(self.cfg, "w").write(text)
        self.logpath = os.path.join(self.dir, "tbot.log")
        self.log = open(self.logpath, "wb")
        self.t0_wall = time.time()
        self.p = subprocess.Popen(
            [TBOT, "start", "-c", self.cfg],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            preexec_fn=(lambda: (cgroup and cgroup.join_self(), nice and os.nice(nice))),
        )
        STARTED.append(self.p)
        self.pid = self.p.pid

    def status(self, key):
        for l in open(f"/proc/{self.pid}/status"):
            if l.startswith(key + ":"):
                return int(l.split()[1])
        return None

    def cpu(self):
        """CPU seconds (user + system, all threads) so far."""
        fields = open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def logtext(self):
        return open(self.logpath, errors="replace").read()

    def until_ready(self, port, within=120.0):
        """(seconds from exec to every service healthy, CPU seconds then).
        Read from the log, not by polling /readyz (whose answers at 1000
        services would cost tbot CPU, more the longer it takes): the time
        of the line that made the last service healthy (each change is
        logged with its time), once `/readyz` confirms 200."""
        end = time.monotonic() + within
        healthy, total, last, cpu = set(), None, None, None
        with open(self.logpath, errors="replace") as f:
            buf = ""
            while time.monotonic() < end:
                if self.p.poll() is not None:
                    raise SystemExit(f"tbot exited ({self.p.returncode}):\n{self.logtext()[-3000:]}")
                buf += f.read()
                *lines, buf = buf.split("\n")
                for l in lines:
                    if "tbot started" in l:
                        total = int(l.split("services=")[1].split()[0])
                    elif "from=initializing to=healthy" in l:
                        healthy.add(l.split("service=")[1].split()[0])
                        last = l.split()[0]
                if total and len(healthy) >= total and cpu is None:
                    cpu = self.cpu()
                    if get(port, "/readyz", timeout=10.0)[0] == 200:
                        ts = datetime.datetime.strptime(last, "%Y-%m-%dT%H:%M:%S.%fZ")
                        ts = ts.replace(tzinfo=datetime.timezone.utc).timestamp()
                        return ts - self.t0_wall, cpu
                    cpu = None
                time.sleep(0.01)
        raise SystemExit(f"not ready within {within}s:\n{self.logtext()[-3000:]}")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def fresh_ext4(d):
    img = d + ".img"
    with open(img, "wb") as f:
        f.truncate(256 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True)
    subprocess.run(["mount", "-o", "loop", img, d], check=True)
    MOUNTS.append(d)


def unmount(d):
    subprocess.run(["umount", d], check=True)
    MOUNTS.remove(d)
    os.remove(d + ".img")


def ctxsw(pid):
    """{tid: (voluntary context switches, name)}."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            for l in open(f"/proc/{pid}/task/{tid}/status"):
                if l.startswith("voluntary_ctxt_switches:"):
                    out[tid] = (int(l.split()[1]), name)
        except OSError:
            pass
    return out


def renewals(port):
    """The sum of tbot_task_iterations_total{name="output-renewal"}."""
    status, body = get(port, "/metrics", timeout=10.0)
    if status != 200:
        return 0
    total = 0
    for l in body.decode().splitlines():
        if l.startswith("tbot_task_iterations_total{") and 'name="output-renewal"' in l:
            total += float(l.rsplit(" ", 1)[1])
    return total


def row(name, value, target, note=""):
    print(f"{name:<58} {value:>14} {target:>12} {load1():>6}  {note}", flush=True)


def five_hundred(limit_mb=None):
    """Starts 500 identity outputs (renewal every 5s) in a fresh cgroup,
    waits until each renewed twice, scrapes /metrics; returns (tbot or None
    when it was killed, cgroup, note)."""
    cg = Cgroup(limit_mb)
    port = free_port()
    tag = f"m500-{limit_mb or 'nolimit'}"
    d = os.path.join(WORK, tag)
    t = Tbot(tag, config(d, 500, port, renewal="5s"), cg)
    end = time.monotonic() + 120
    while time.monotonic() < end and t.p.poll() is None:
        if renewals(port) >= 1500:
            break
        time.sleep(0.5)
    if t.p.poll() is None:
        for gz in (False, True, False, True):
            get(port, "/metrics", timeout=10.0, headers={"Accept-Encoding": "gzip"} if gz else None)
    if t.p.poll() is not None:
        oom = cg.read("memory.events") or cg.read("memory.oom_control") or ""
        return None, cg, f"exited {t.p.returncode}; {' '.join(oom.split())}"
    return t, cg, ""


def main():
    rev = subprocess.run(
        ["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True,
    ).stdout.strip()
    print(f"machine: {os.cpu_count()} cores, {os.uname().release}; tbot {TBOT} (checkout {rev})")
    print(f"load average at start: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    print()
    print(f"{'row':<58} {'measured':>14} {'target':>12} {'load1':>6}")
    fds10 = None
    if "fds" in ROWS or "idle" in ROWS:
        port = free_port()
        d = os.path.join(WORK, "idle")
        mux = (
            "  - {type: ssh-multiplexer, name: mux, identity: id-0, "
            f"destination: {{type: directory, path: {d}/mux}}}}\n"
        )
        t = Tbot("idle", config(d, 10, port, extra=mux))
        t.until_ready(port, within=60)
        time.sleep(3)
        fds10 = t.fds()
        if "idle" in ROWS:
            a = ctxsw(t.pid)
            time.sleep(IDLE)
            b = ctxsw(t.pid)
            woke = {}
            for tid, (n, name) in b.items():
                if tid in a:
                    woke[name] = woke.get(name, 0) + n - a[tid][0]
            total = sum(woke.values())
            who = " ".join(f"{k}:{v}" for k, v in sorted(woke.items(), key=lambda kv: -kv[1]) if v)
            row(f"idle wake-ups in {IDLE}s (10 outputs, mux, diag)", total, "0",
                f"threads {len(b)}; {who}")
        t.stop()
    if "fds" in ROWS or "memory" in ROWS:
        t, cg, note = five_hundred()
        if t is None:
            row("cgroup memory peak, 500 outputs (MB)", "died", "<= 32", note)
        else:
            if "fds" in ROWS:
                fds500 = t.fds()
                row("descriptors per service ((fds@500 - fds@10) / 490)",
                    f"{(fds500 - fds10) / 490:.2f}", "<= 0.1", f"fds {fds10} -> {fds500}")
            threads, rss = t.status("Threads"), t.status("VmRSS")
            t.stop()
            peak, kmem = cg.peak()
            st = cg.stat()
            detail = f"RSS now {rss / 1024:.1f} MB, {threads} threads"
            if kmem is not None:
                detail += f"; kernel memory peak {kmem / 2**20:.1f} MB"
            cache = st.get("file", st.get("cache"))
            if cache is not None:
                detail += f"; page cache at end {cache / 2**20:.1f} MB"
            if "memory" in ROWS:
                row("cgroup memory peak, 500 outputs start+renew+scrape (MB)",
                    f"{peak / 2**20:.1f}", "<= 32", detail)
    if "limit" in ROWS:
        t, cg, note = five_hundred(LIMIT_MB)
        if t is None:
            row(f"500 outputs under a {LIMIT_MB} MB cgroup limit", "killed", "survives", note)
        else:
            t.stop()
            peak, _ = cg.peak()
            row(f"500 outputs under a {LIMIT_MB} MB cgroup limit", "survived", "survives",
                f"peak {peak / 2**20:.1f} MB")
    if "reload" in ROWS:
        port = free_port()
        d = os.path.join(WORK, "reload")
        stay = [f"stay-{i}" for i in range(10)]
        come = [f"come-{i}" for i in range(10)]
        a, b = config(d, 0, port, names=stay), config(d, 0, port, names=stay + come)
        t = Tbot("reload", a)
        t.until_ready(port, within=60)
        done = 0

        def reload_to(text):
            nonlocal done
            open(t.cfg, "w").write(text)
            os.kill(t.pid, signal.SIGHUP)
            end = time.monotonic() + 30
            while True:
                text = t.logtext()
                n = text.count("configuration reloaded") + text.count("configuration reload failed")
                if n > done:
                    done = n
                    return
                if time.monotonic() > end:
                    raise SystemExit("a reload did not end:\n" + text[-3000:])
                time.sleep(0.002)

        marks = {}
        started = time.monotonic()
        for i in range(RELOADS):
            reload_to(b if i % 2 == 0 else a)
            if i + 1 in (20, RELOADS // 2, RELOADS):
                time.sleep(0.5)
                marks[i + 1] = t.status("VmRSS")
        failed = t.logtext().count("configuration reload failed")
        t.stop()
        first, last = marks[20], marks[RELOADS]
        row(f"RSS over {RELOADS} reloads (+-10 outputs), after 20 -> after {RELOADS} (KB)",
            f"{last - first:+d}", "+-64",
            f"{first} -> {marks[RELOADS // 2]} -> {last} KB; {failed} failed; "
            f"{time.monotonic() - started:.0f}s")
    if "exec" in ROWS:
        times = []
        for r in range(EXEC_ROUNDS):
            port = free_port()
            d = os.path.join(WORK, f"exec-{r}")
            os.makedirs(d)
            if EXEC_FS == "loop":
                fresh_ext4(d)
            text = config(d, 1000, port)
            t = Tbot(f"exec-{r}", text, CpuGroup(CPU_SHARES) if CPU_SHARES else None, nice=NICE)
            times.append(t.until_ready(port))
            t.stop()
            if EXEC_FS == "loop":
                unmount(d)
        times.sort()
        wall, cpu = times[len(times) // 2]
        how = (f" nice {NICE}" if NICE else "") + (f" shares {CPU_SHARES}" if CPU_SHARES else "")
        how += " fresh ext4" if EXEC_FS == "loop" else ""
        row(f"exec -> every service healthy, 1000 outputs (s){how}",
            f"{wall:.3f}", "<= 0.5",
            f"CPU {cpu:.2f}s; rounds " + " ".join(f"{w:.3f} (CPU {c:.2f})" for w, c in times))
    if "syscalls" in ROWS:
        syscalls_row()


def syscalls_row():
    """strace -f -c of a start of SYSCALL_OUTPUTS outputs until healthy."""
    if not shutil.which("strace"):
        row(f"file-system calls per output ({SYSCALL_OUTPUTS} outputs)", "no strace", "", "")
        return
    port = free_port()
    d = os.path.join(WORK, "syscalls")
    os.makedirs(d)
    text = config(d, SYSCALL_OUTPUTS, port)
    counts = os.path.join(d, "strace.txt")
    global TBOT
    tbot = TBOT
    wrapper = os.path.join(d, "traced")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexec strace -f -c -o {counts} {tbot} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    TBOT = wrapper
    try:
        t = Tbot("syscalls", text)
    finally:
        TBOT = tbot
    t.until_ready(port, within=120)
    # The pid started is strace's: tbot is its child. SIGTERM tbot (by its
    # pid); strace writes its table when it has gone, and ends.
    children = open(f"/proc/{t.pid}/task/{t.pid}/children").read().split()
    for child in children:
        os.kill(int(child), signal.SIGTERM)
    try:
        t.p.wait(20)
    finally:
        t.stop()
    calls = {}
    for l in open(counts):
        f = l.split()
        if len(f) >= 5 and f[-1].isidentifier() and f[3].isdigit():
            calls[f[-1]] = int(f[3])
    fs = sum(n for k, n in calls.items() if k in FS_CALLS)
    top = sorted(((n, k) for k, n in calls.items() if k in FS_CALLS), reverse=True)[:8]
    row(f"file-system calls per output ({SYSCALL_OUTPUTS} outputs, start to healthy)",
        f"{fs / SYSCALL_OUTPUTS:.1f}", "",
        f"futex {calls.get('futex', 0) / SYSCALL_OUTPUTS:.1f}, clone3 "
        f"{calls.get('clone3', 0) / SYSCALL_OUTPUTS:.2f} per output; "
        + " ".join(f"{k} {n / SYSCALL_OUTPUTS:.1f}" for n, k in top))


def cleanup():
    for p in STARTED:
        if p.poll() is None:
            p.kill()
            p.wait()
    for d in list(MOUNTS):
        subprocess.run(["umount", d])
    for c in CGROUPS:
        for _ in range(50):
            try:
                os.rmdir(c)
                break
            except OSError:
                time.sleep(0.1)
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
