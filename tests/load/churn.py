#!/usr/bin/env python3
"""Tail latency under config churn (issue 18, item 5): p50 ... p99.9 and max latency at a fixed
request rate while the configuration changes every 100 ms, against the same run with no changes,
for meshgate, nginx (`nginx -s reload`) and haproxy (master-worker seamless reload). Python 3.11,
standard library only; reuses run.py's upstream, process, config and k6 helpers. See
tests/load/README.md ("Tail latency under config churn").

    python3 tests/load/churn.py --repeat 3 --md /tmp/churn.md --out /tmp/churn.json
    python3 tests/load/churn.py --targets meshgate,nginx --duration 10 --repeat 1 --rate 1000

Every proxy runs as shipped (run.py's `--mode defaults`: one worker per CPU, nothing pinned)
behind run.py's upstream nginx. A change alternates the proxy's configuration between two real
variants that route the benchmark requests (`GET /1k`, Host bench.local) to the same upstream;
variant 1 adds a route for `/churn/` to a second backend that is the same upstream, marked with
the change's number (the route's name in meshgate's /config_dump; an `x-churn` response header
on `/churn/` in nginx and haproxy), so that the script can wait until the last change is served:

  * meshgate: the VirtualService file in its config folder is rewritten (a hidden temporary in
    the same folder, then rename); meshgate watches the folder and swaps in a new snapshot.
    Applied changes: the `meshgate_config_version` gauge on its metrics port.
  * nginx: nginx.conf is rewritten (temporary + rename), then `nginx -s reload`. Applied
    reloads: "start worker processes" notices in its error log.
  * haproxy: haproxy.cfg is rewritten, then `reload` on the master CLI (`-W -S`), which
    re-executes the master; the new worker takes the listening sockets from the old one.
    Applied reloads: the master's reload and failed-reload counters (`show proc`).

The rate is one for all targets: 50 % of the lowest saturation (wrk, measured first in the same
setup), capped by the highest rate k6 sustains here with no dropped iterations (found by short
probes, unless --rate is given). Progress goes to stderr, the markdown table to stdout (and
--md PATH), the JSON to --out PATH.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import http.client
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (run.py's helpers: upstream, processes, configs, k6, /proc readings)
from run import log  # noqa: E402

TARGETS = ["meshgate", "nginx", "haproxy"]
CPU = run.PROXY_CPU  # unused in run.py's defaults mode (nothing is pinned), but Proc wants one
BENCH_PATH = "/1k"

# k6 as run.py calls it (constant-arrival-rate: requests leave on schedule even when earlier
# ones are slow, so a stall shows up as latency rather than as fewer requests), plus counters
# that tell non-2xx answers from transport errors, and new connections: nginx and haproxy close
# keep-alive connections when a reload retires their workers, and http_req_duration does not
# include the new connection's set-up. `blocked` is GetConn -> GotConn in k6's tracer, so
# blocked + duration is what the caller waited, connection set-up included.
K6_SCRIPT = r"""
import http from 'k6/http';
import { Counter, Trend } from 'k6/metrics';

const non2xx = new Counter('non_2xx');
const transportErrors = new Counter('transport_errors');
const newConnections = new Counter('new_connections');
const withConnect = new Trend('duration_with_connect', true);
const params = { headers: { Host: __ENV.BENCH_HOST } };
const slowMs = parseFloat(__ENV.BENCH_SLOW_MS);

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'p(99.9)', 'max'],
  scenarios: {
    latency: {
      executor: 'constant-arrival-rate',
      rate: parseInt(__ENV.BENCH_RATE),
      timeUnit: '1s',
      duration: __ENV.BENCH_DURATION,
      preAllocatedVUs: parseInt(__ENV.BENCH_VUS),
      maxVUs: parseInt(__ENV.BENCH_MAX_VUS),
    },
  },
};

export default function () {
  const res = http.get(__ENV.BENCH_URL, params);
  if (res.status === 0) {
    transportErrors.add(1);
  } else if (res.status < 200 || res.status >= 300) {
    non2xx.add(1);
  }
  if (res.timings.connecting > 0) {
    newConnections.add(1);
  }
  const total = res.timings.blocked + res.timings.duration;
  withConnect.add(total);
  if (total > slowMs) {
    // When it ended (ms since the epoch) and how long it took: churn.py lines these up with
    // the times it made its changes.
    console.log(`slow ${Date.now()} ${total.toFixed(3)}`);
  }
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
    p99_connect_ms: v('duration_with_connect', 'p(99)'),
    max_connect_ms: v('duration_with_connect', 'max'),
    requests: v('http_reqs', 'count'),
    non_2xx: v('non_2xx', 'count') || 0,
    transport_errors: v('transport_errors', 'count') || 0,
    new_connections: v('new_connections', 'count') || 0,
    dropped_iterations: v('dropped_iterations', 'count') || 0,
    vus_max: v('vus_max', 'max') || v('vus_max', 'value'),
  };
  return { [__ENV.BENCH_SUMMARY]: JSON.stringify(out) };
}
"""


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    """A hidden temporary in the same folder, then rename: a reader sees the old file or the new
    one, never half of one (meshgate skips hidden files; nginx and haproxy read the config only
    when told to reload)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def spawn_and_wait(argv: list[str]) -> tuple[int, float, str]:
    """Runs a command to completion; returns (exit status, its CPU seconds, its output). wait4
    gives the child's own rusage, so the reload commands' CPU can be told from k6's."""
    out = tempfile.TemporaryFile()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=[
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, out.fileno(), 1), (os.POSIX_SPAWN_DUP2, out.fileno(), 2)])
    _, status, usage = os.wait4(pid, 0)
    out.seek(0)
    text = out.read().decode(errors="replace")
    out.close()
    return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, text


def churn_marker(port: int) -> str | None:
    """The `x-churn` response header on `/churn/` (nginx and haproxy add it there in variant 1
    only, with the change's number): which configuration a new connection is served by. "?"
    when the answer was not HTTP (a worker going away)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/churn/", headers={"Host": run.HOST})
        r = conn.getresponse()
        r.read()
        return r.getheader("x-churn")
    except http.client.HTTPException:
        return "?"
    finally:
        conn.close()


def metric(port: int, name: str, labels: str = "") -> float | None:
    """One sample from a Prometheus text page: `name` with exactly `labels` (`a="b"`) or none."""
    series = f"{name}{{{labels}}} " if labels else f"{name} "
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/prometheus", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(series):
                return float(line.split()[-1])
    return None


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of the live process tree plus what its root reaped (cutime + cstime): nginx
    and haproxy retire a worker generation at every reload, and a worker that exited during the
    run is counted by its master's cutime."""
    live = sum(u + s for u, s in run.tree_cpu_split(pid).values())
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()  # rest[0] is field 3; field n is rest[n - 3]
    return live + (int(rest[13]) + int(rest[14])) / run.CLK_TCK


def children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Usage:
    """CPU over a measured run, to tell a proxy's own stalls from a busy machine: the proxy's
    CPU and run-queue wait (time its threads were ready while something else had the CPU), the
    upstream's, the client side's (k6, reload commands, this script) and the whole machine's;
    `machine_other_pct` is what none of them used (other work on the machine). 100 = one CPU."""

    def __init__(self, proxy_pid: int, upstream_pid: int):
        self.proxy_pid, self.upstream_pid = proxy_pid, upstream_pid
        self.t0, self.cpus0 = time.monotonic(), run.cpu_times()
        self.tree0 = set(run.proc_tree(proxy_pid))
        self.proxy0, self.wait0 = tree_cpu_seconds(proxy_pid), run.proc_wait_seconds(proxy_pid)
        self.up0, self.own0 = run.proc_cpu_seconds(upstream_pid), own_cpu_seconds()

    def finish(self, children_cpu_s: float, reload_cpu_s: float) -> dict:
        wall = time.monotonic() - self.t0
        proxy = tree_cpu_seconds(self.proxy_pid) - self.proxy0
        # Only while the same processes ran the whole time: a worker retired by a reload (nginx,
        # haproxy) takes its wait with it, and nothing sums it as cutime does CPU time.
        wait = None
        if set(run.proc_tree(self.proxy_pid)) == self.tree0 and self.wait0 is not None:
            wait = max(0.0, (run.proc_wait_seconds(self.proxy_pid) or 0.0) - self.wait0)
        upstream = run.proc_cpu_seconds(self.upstream_pid) - self.up0
        own = own_cpu_seconds() - self.own0
        busy = run.machine_busy_pct(self.cpus0, run.cpu_times())

        def pct(seconds: float) -> float:
            return round(100 * seconds / wall, 1)

        ours = pct(proxy) + pct(upstream) + pct(children_cpu_s) + pct(own)
        return {"proxy_cpu_pct": pct(proxy), "proxy_wait_pct": pct(wait) if wait is not None else None,
                "upstream_cpu_pct": pct(upstream), "k6_cpu_pct": pct(children_cpu_s - reload_cpu_s),
                "reload_commands_cpu_pct": pct(reload_cpu_s), "machine_busy_pct": busy,
                "machine_other_pct": round(max(0.0, busy - ours), 1) if busy is not None else None}


# --------------------------------------------------------------------------------------------
# Targets: start, change, verify
# --------------------------------------------------------------------------------------------


class ChurnTarget:
    """A proxy under test whose configuration can change while it serves. `generation` counts the
    changes written so far; the configuration on disk is variant `generation % 2`."""

    name = ""

    def __init__(self, work: Path, upstream_port: int):
        self.work, self.upstream_port = work, upstream_port
        self.port = run.free_port()
        self.generation = 0
        self.proc: run.Proc | None = None
        work.mkdir(parents=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def bench_target(self) -> run.Target:
        """The same running proxy as run.py's Target, for its wrk helpers."""
        return run.Target(self.name, {"http": self.port}, self.proc)

    def start(self) -> None:
        raise NotImplementedError

    def change(self, deadline: float) -> tuple[str | None, float]:
        """Writes the next variant and has the proxy apply it; `deadline` is when the next change
        is due. Returns (an error or None, CPU seconds of a reload command run for it)."""
        raise NotImplementedError

    def applied(self) -> dict:
        """The proxy's own cumulative counters: `applied` (configurations it applied),
        `apply_failed` (reloads it rejected) and any other; a run reports their deltas."""
        raise NotImplementedError

    def serves_last_change(self) -> bool:
        """Whether the proxy serves configuration number `generation` (its own marker of it)."""
        raise NotImplementedError

    def retired_gone(self) -> bool:
        """Whether no generation of workers retired by a reload is still running."""
        return True

    def begin_run(self) -> None:
        """Called just before a measured run."""

    def end_run(self) -> dict:
        """What the proxy itself says about the run just measured."""
        return {}

    def settle(self, timeout: float = 30.0) -> None:
        """Returns once the proxy serves the last change and no retiring generation is left: the
        readiness check between runs."""
        run.wait_until(self.serves_last_change, f"{self.name} serving change {self.generation}", self.proc.p,
                       self.proc.logfile, timeout=timeout)
        run.wait_until(self.retired_gone, f"{self.name}: retired workers gone", self.proc.p, self.proc.logfile,
                       timeout=timeout)

    def marker_matches(self, marker: str | None) -> bool:
        """Variant 1 carries the change's number, variant 0 none: the previous configuration
        always differs from the last one."""
        return marker == (str(self.generation) if self.generation % 2 else None)

    def wait_serving(self) -> None:
        run.wait_until(lambda: run.http_get(self.port, BENCH_PATH) == (200, run.www_body(BENCH_PATH)),
                       f"{self.name} serving {BENCH_PATH}", self.proc.p, self.proc.logfile, timeout=60.0)

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


class Meshgate(ChurnTarget):
    name = "meshgate"

    def __init__(self, work: Path, upstream_port: int, binary: str):
        super().__init__(work, upstream_port)
        self.binary = binary
        self.folder = work / "config"
        self.status_port, self.metrics_port, self.admin_port = run.free_port(), run.free_port(), run.free_port()
        self.log_offset = 0

    def virtual_service(self) -> list[dict]:
        # Variant 1: a route for /churn/ to a second Service (same upstream) ahead of the
        # catch-all: a new route and a new cluster to compile, the benchmark's route unchanged.
        routes = [{"name": "all", "route": [run.dest("upstream")]}]
        if self.generation % 2:
            routes.insert(0, {"name": f"churn-{self.generation}", "match": [{"uri": {"prefix": "/churn/"}}],
                              "route": [run.dest("upstream-b")]})
        return [run.virtual_service("bench", run.HOST, routes)]

    def write_vs(self) -> None:
        path = self.folder / "03-virtualservice.yaml"
        text = "# the benchmark's route; churn.py alternates two variants\n" + "".join(
            "---\n" + run.to_yaml(d) + "\n" for d in self.virtual_service())
        write_atomically(path, text)

    def start(self) -> None:
        self.folder.mkdir()
        services = run.service_objs("upstream", self.upstream_port) + run.service_objs("upstream-b", self.upstream_port)
        run.write_docs(self.folder / "01-upstream.yaml", services, "the nginx upstream, as two Services")
        run.write_docs(self.folder / "02-gateway.yaml", [run.gateway_obj(["*"], tls=False)], "port 80, every host")
        self.write_vs()
        # Defaults: no --threads (one worker per CPU), access log off. RUST_LOG=info for the
        # "snapshot serving" line with compile_ms at every swap (no per-request logging).
        argv = [self.binary, "--config", str(self.folder), "--port-map", f"80=127.0.0.1:{self.port}",
                "--status-addr", f"127.0.0.1:{self.status_port}", "--metrics-addr", f"127.0.0.1:{self.metrics_port}",
                "--admin-addr", f"127.0.0.1:{self.admin_port}", "--access-log", "off", "--drain-seconds", "1"]
        self.proc = run.Proc(self.name, CPU, argv, self.work / "gateway.log",
                             env=dict(os.environ, RUST_LOG="info", NO_COLOR="1"))
        run.wait_until(lambda: run.http_get(self.status_port, "/healthz/ready")[0] == 200, "meshgate readiness",
                       self.proc.p, self.proc.logfile, timeout=60.0)
        self.wait_serving()

    def change(self, deadline: float) -> tuple[str | None, float]:
        self.generation += 1
        self.write_vs()  # the folder watch (10 ms debounce) does the rest
        return None, 0.0

    def version(self) -> int:
        return int(metric(self.metrics_port, "meshgate_config_version") or 0)

    def applied(self) -> dict:
        # The version moves once per snapshot swapped in; a rejected config would keep its last
        # good version and count a `partial` reload.
        partial = metric(self.metrics_port, "meshgate_config_reloads_total", 'result="partial"')
        return {"applied": self.version(), "apply_failed": int(partial or 0),
                "swaps": int(metric(self.metrics_port, "meshgate_config_swaps_total") or 0)}

    def serves_last_change(self) -> bool:
        # The snapshot being served (/config_dump) names variant 1's route after its change.
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/config_dump", timeout=2) as r:
            dump = r.read().decode()
        marker = re.search(r'"churn-(\d+)"', dump)
        return self.marker_matches(marker.group(1) if marker else None)

    def begin_run(self) -> None:
        self.swaps_logged()  # skip what start-up, the warm-up and earlier runs logged

    def end_run(self) -> dict:
        swaps = self.swaps_logged()
        compile_ms = sorted(s["compile_ms"] for s in swaps if s["compile_ms"] is not None)
        return {"swaps_logged": len(swaps), "compile_ms_max": compile_ms[-1] if compile_ms else None,
                "compile_ms_median": statistics.median(compile_ms) if compile_ms else None}

    def swaps_logged(self) -> list[dict]:
        """The "snapshot serving" lines logged since the last call: version and compile_ms."""
        with open(self.proc.logfile, "rb") as f:
            f.seek(self.log_offset)
            text = f.read().decode(errors="replace")
            self.log_offset = f.tell()
        out = []
        for line in text.splitlines():
            if "snapshot serving" in line:
                v, c = re.search(r"version=(\d+)", line), re.search(r"compile_ms=(\d+)", line)
                out.append({"version": int(v.group(1)) if v else None, "compile_ms": int(c.group(1)) if c else None})
        return out


class Nginx(ChurnTarget):
    name = "nginx"

    def __init__(self, work: Path, upstream_port: int):
        super().__init__(work, upstream_port)
        self.conf = work / "nginx.conf"
        self.nginx = run.which("nginx")

    def argv(self) -> list[str]:
        return [self.nginx, "-p", str(self.work), "-e", str(self.work / "error.log"), "-c", str(self.conf)]

    def config(self) -> str:
        # run.py's --mode defaults nginx: master process and `worker_processes auto`, the same
        # upstream block and proxy settings. The error log at notice records every reload.
        common = run.nginx_common(self.work, shipped=True).replace("error.log warn;", "error.log notice;")
        settings = run.nginx_proxy_settings("            ")
        churn = ""
        if self.generation % 2:  # variant 1: a location for /churn/ to a second upstream block
            churn = f"""        location /churn/ {{
            proxy_pass http://up_b;
            add_header x-churn {self.generation} always;
{settings}        }}
"""
        upstreams = "".join(f"""    upstream {name} {{
        server 127.0.0.1:{self.upstream_port};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
""" for name in ["up", "up_b"])
        return common + f"""http {{
{run.nginx_http_common(self.work)}{upstreams}    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
{churn}        location / {{
            proxy_pass http://up;
{settings}        }}
    }}
}}
"""

    def start(self) -> None:
        self.conf.write_text(self.config())
        self.proc = run.Proc(self.name, CPU, self.argv(), self.work / "stdout.log")
        self.wait_serving()

    def change(self, deadline: float) -> tuple[str | None, float]:
        self.generation += 1
        write_atomically(self.conf, self.config())
        # `nginx -s reload` reads the pid file and sends SIGHUP to the master, which re-reads the
        # config, starts new workers and tells the old ones to finish their requests and exit.
        rc, cpu, out = spawn_and_wait([*self.argv(), "-s", "reload"])
        return (None if rc == 0 else f"nginx -s reload exited {rc}: {out.strip()[:200]}"), cpu

    def error_log(self) -> str:
        path = self.work / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def applied(self) -> dict:
        # One "start worker processes" per configuration the master loaded; a reload it could
        # not apply logs [emerg]. SIGHUPs that arrive while one is pending merge into one.
        text = self.error_log()
        return {"applied": text.count("start worker processes"),
                "apply_failed": len(re.findall(r"\[(emerg|alert|crit)\]", text)),
                "sighup": text.count("signal 1 (SIGHUP) received")}

    def workers(self) -> list[str]:
        """Command lines of the master's children: "nginx: worker process" and, while a reload
        retires them, "nginx: worker process is shutting down"."""
        out = []
        for pid in run.proc_tree(self.pid)[1:]:
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
            except OSError:
                continue
        return out

    def serves_last_change(self) -> bool:
        return self.marker_matches(churn_marker(self.port))

    def retired_gone(self) -> bool:
        w = self.workers()
        return len(w) == (os.cpu_count() or 1) and not any("shutting down" in c for c in w)


class Haproxy(ChurnTarget):
    name = "haproxy"

    def __init__(self, work: Path, upstream_port: int):
        super().__init__(work, upstream_port)
        self.conf = work / "haproxy.cfg"
        self.master_sock = work / "master.sock"
        self.busy_retries = 0

    def config(self) -> str:
        # run.py's --mode defaults haproxy (no nbthread: one thread per CPU; keep-alive both
        # sides, http-reuse always, no logging). The stats socket's `expose-fd listeners` is how
        # a new process takes the listening sockets from the old one outside master-worker mode;
        # with -W (2.6) the master passes them over its own socketpair, but declaring it keeps
        # the config seamless if started without -W.
        churn_rule, churn_backend = "", ""
        if self.generation % 2:  # variant 1: /churn/ to a second backend (the same upstream)
            churn_rule = "    use_backend be_churn if { path_beg /churn/ }\n"
            churn_backend = f"""
backend be_churn
    http-response set-header x-churn {self.generation}
    server up 127.0.0.1:{self.upstream_port}
"""
        return f"""global
    maxconn 4096
    stats socket {self.work}/stats.sock mode 600 level admin expose-fd listeners

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:{self.port}
{churn_rule}    default_backend be

backend be
    server up 127.0.0.1:{self.upstream_port}
{churn_backend}"""

    def start(self) -> None:
        self.conf.write_text(self.config())
        # -W: master-worker; -S: the master CLI (reload, show proc); -db: the master stays in
        # the foreground, a child of this script.
        argv = [run.which("haproxy"), "-W", "-S", str(self.master_sock), "-db", "-f", str(self.conf)]
        self.proc = run.Proc(self.name, CPU, argv, self.work / "haproxy.log")
        run.wait_until(self.master_sock.exists, "haproxy master CLI", self.proc.p, self.proc.logfile)
        self.wait_serving()

    def master_cli(self, command: str) -> str:
        """One command on the master CLI: the answer ends when the master closes the socket."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.master_sock))
            s.sendall(command.encode() + b"\n")
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def change(self, deadline: float) -> tuple[str | None, float]:
        self.generation += 1
        write_atomically(self.conf, self.config())
        # `reload` re-executes the master (as SIGUSR2 does) and closes the CLI connection. While
        # the master re-executes, its CLI socket refuses connections, or resets one it accepted
        # before reading the command: that reload was not received, so it is retried until the
        # next change is due (counted as busy retries), and counted as an error after.
        while True:
            try:
                self.master_cli("reload")
                return None, 0.0
            except (ConnectionRefusedError, ConnectionResetError) as e:
                if time.monotonic() >= deadline:
                    return f"master CLI busy until the next change was due ({e.strerror})", 0.0
                self.busy_retries += 1
                time.sleep(0.002)
            except OSError as e:
                return f"master CLI: {e}", 0.0

    def show_proc(self) -> str:
        # The master may be re-executing (refusing connections) for a moment after a reload.
        answers = []

        def ask() -> bool:
            answers.append(self.master_cli("show proc"))
            return " master " in answers[-1]

        run.wait_until(ask, "haproxy master CLI", self.proc.p, self.proc.logfile)
        return answers[-1]

    def applied(self) -> dict:
        text = self.show_proc()
        m = re.search(r"^\d+\s+master\s+(\d+)\s+\[failed:\s*(\d+)\]", text, re.M)
        if not m:
            raise RuntimeError(f"haproxy: no master line in show proc:\n{text}")
        return {"applied": int(m.group(1)), "apply_failed": int(m.group(2)), "busy_retries": self.busy_retries}

    def old_workers(self) -> int:
        text = self.show_proc()
        section = text.split("# old workers", 1)[1] if "# old workers" in text else ""
        section = section.split("# programs", 1)[0]
        return sum(1 for line in section.splitlines() if re.match(r"^\d+\s+worker", line))

    def serves_last_change(self) -> bool:
        return self.marker_matches(churn_marker(self.port))

    def retired_gone(self) -> bool:
        return self.old_workers() == 0


def make_target(name: str, work: Path, upstream_port: int, gateway: str) -> ChurnTarget:
    if name == "meshgate":
        return Meshgate(work, upstream_port, gateway)
    if name == "nginx":
        return Nginx(work, upstream_port)
    if name == "haproxy":
        return Haproxy(work, upstream_port)
    raise ValueError(name)


# --------------------------------------------------------------------------------------------
# The change driver
# --------------------------------------------------------------------------------------------


class Churner(threading.Thread):
    """Changes the target's configuration every `period` seconds until stopped. Ticks are on an
    absolute schedule (start + k * period), so a slow change delays the next one without
    shifting all that follow; a change that overran a whole period is counted as late."""

    def __init__(self, target: ChurnTarget, period: float):
        super().__init__(daemon=True)
        self.target, self.period = target, period
        self.halt = threading.Event()
        self.changes, self.errors, self.late = 0, [], 0
        self.command_cpu = 0.0
        self.took: list[float] = []
        self.times: list[float] = []  # wall-clock start of each change, to line up with k6's

    def run(self) -> None:
        due = time.monotonic() + self.period
        while not self.halt.wait(max(0.0, due - time.monotonic())):
            t0 = time.monotonic()
            self.times.append(time.time())
            err, cpu = self.target.change(deadline=due + self.period)
            self.took.append(time.monotonic() - t0)
            self.changes += 1
            self.command_cpu += cpu
            if err:
                self.errors.append(err)
            due += self.period
            if time.monotonic() > due:
                self.late += 1
                due = time.monotonic()

    def finish(self) -> dict:
        self.halt.set()
        self.join()
        took = sorted(self.took) or [0.0]
        return {"changes": self.changes, "change_errors": len(self.errors), "error_samples": self.errors[:3],
                "late_ticks": self.late, "change_ms_median": round(1e3 * statistics.median(took), 2),
                "change_ms_max": round(1e3 * took[-1], 2), "reload_command_cpu_s": round(self.command_cpu, 3)}


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def k6(target: ChurnTarget, rate: int, seconds: float, args, tmp: Path, tag: str) -> dict:
    """One k6 run at `rate`; its summary, the requests slower than --slow-ms (end time in epoch
    seconds, duration ms) and the CPU seconds of this script's reaped children meanwhile (k6, and
    any reload command run in the meantime)."""
    script = tmp / "churn.js"
    if not script.exists():
        script.write_text(K6_SCRIPT)
    summary = tmp / f"k6-{tag}.json"
    env = dict(os.environ, BENCH_URL=f"http://127.0.0.1:{target.port}{BENCH_PATH}", BENCH_HOST=run.HOST,
               BENCH_RATE=str(rate), BENCH_DURATION=f"{seconds}s", BENCH_SUMMARY=str(summary),
               BENCH_VUS=str(args.vus), BENCH_MAX_VUS=str(args.max_vus), BENCH_SLOW_MS=str(args.slow_ms),
               K6_NO_USAGE_REPORT="true")
    kids0 = children_cpu_seconds()
    r = run.run_pinned(CPU, [run.k6_path(), "run", "--quiet", "--no-color", str(script)], env=env)
    kids1 = children_cpu_seconds()
    if r.returncode != 0:
        raise RuntimeError(f"k6 failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    res = json.loads(summary.read_text())
    res["slow"] = [(int(end) / 1000, float(ms)) for end, ms in re.findall(r"slow (\d+) ([\d.]+)", r.stderr)]
    res["children_cpu_s"] = kids1 - kids0
    return res


def measured_run(target: ChurnTarget, churn: bool, rate: int, args, tmp: Path, tag: str,
                 upstream_pid: int) -> dict:
    """A warm-up without changes, then the measured k6 run, with the change driver running for
    its whole length when `churn`. Readiness before and after: the proxy serves the last change
    and no retiring generation is left."""
    target.settle()
    k6(target, rate, args.warmup, args, tmp, f"{tag}-warmup")
    target.begin_run()
    before = target.applied()
    usage = Usage(target.pid, upstream_pid)
    churner = Churner(target, args.period) if churn else None
    if churner:
        churner.start()
    try:
        res = k6(target, rate, args.duration, args, tmp, tag)
    finally:
        driven = churner.finish() if churner else {"changes": 0}
    res.update(usage.finish(res.pop("children_cpu_s"), driven.get("reload_command_cpu_s", 0.0)))
    target.settle()
    after = target.applied()
    res.update(driven)
    res.update({f"{k}_delta" if k not in ("applied", "apply_failed") else k: after[k] - before[k] for k in after})
    res["rate"] = rate
    slow = res.pop("slow")
    res["slow_requests"] = len(slow)
    if churner:
        res["slow_after_change"] = slow_near_changes(slow, churner.times, args.period)
    res.update(target.end_run())
    return res


def slow_near_changes(slow: list[tuple[float, float]], changes: list[float], period: float) -> dict:
    """When slow requests started, relative to the last change before them: 10 buckets over the
    change period. Unrelated to the changes, they spread evenly (10 % per bucket); caused by
    them, they crowd the first buckets."""
    buckets = [0] * 10
    for end, ms in slow:
        start = end - ms / 1000
        i = bisect.bisect_right(changes, start) - 1
        if i < 0 or start - changes[i] >= period:
            continue  # before the first change or after the last period
        buckets[int(10 * (start - changes[i]) / period)] += 1
    n = sum(buckets)
    return {"buckets": buckets, "n": n, "first_30pct": round(100 * sum(buckets[:3]) / n, 1) if n else None}


def saturation(target: ChurnTarget, upstream: run.Proc, seconds: int) -> dict:
    """run.py's saturation run (wrk -t1 -c16, keep-alive, 1 s warm-up) on the started target."""
    res = run.saturation_run(target.bench_target(), upstream, "ka-1k", seconds)
    return {k: res.get(k) for k in ["rps", "requests", "errors", "non2xx", "proxy_cpu_pct", "cpu_us_per_req",
                                    "machine_busy_pct", "loadgen_cpu_pct"]}


def probe_ok(res: dict, args) -> bool:
    return (not res["dropped_iterations"] and not res["transport_errors"] and not res["non_2xx"]
            and res["k6_cpu_pct"] <= args.max_k6_cpu)


def highest_k6_rate(target: ChurnTarget, start: int, args, tmp: Path) -> tuple[int, list[dict]]:
    """The highest rate, from `start` down in steps of 20 %, at which a short k6 run against this
    target drops no iteration (k6 had no free VU when one was due: it fell behind), sees no
    errors and leaves the proxy room (k6 at most --max-k6-cpu % of one CPU). This is k6's
    ceiling on this machine with the proxy beside it, not the proxy's."""
    rate, probes = start, []
    while True:
        t0 = time.monotonic()
        res = k6(target, rate, args.probe_seconds, args, tmp, f"probe-{target.name}-{rate}")
        res["k6_cpu_pct"] = round(100 * res["children_cpu_s"] / (time.monotonic() - t0), 1)
        probes.append({"target": target.name, "rate": rate, "dropped_iterations": res["dropped_iterations"],
                       "p99_ms": res["p99_ms"], "errors": res["transport_errors"] + res["non_2xx"],
                       "k6_cpu_pct": res["k6_cpu_pct"], "ok": probe_ok(res, args)})
        log(f"probe {target.name} @{rate}/s: dropped {res['dropped_iterations']}, p99 {res['p99_ms']:.3f} ms, "
            f"k6 CPU {res['k6_cpu_pct']} %")
        if probes[-1]["ok"] or rate <= 100:
            return rate, probes
        rate = max(100, int(rate * 0.8) // 50 * 50)


# --------------------------------------------------------------------------------------------
# Summary and report
# --------------------------------------------------------------------------------------------

LATENCY = [("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9"), ("max_ms", "max"),
           ("p99_connect_ms", "p99 incl. connect"), ("max_connect_ms", "max incl. connect")]
USAGE = ["proxy_cpu_pct", "proxy_wait_pct", "upstream_cpu_pct", "k6_cpu_pct", "reload_commands_cpu_pct",
         "machine_busy_pct", "machine_other_pct"]
COUNTS = ["requests", "non_2xx", "transport_errors", "dropped_iterations", "new_connections", "changes",
          "change_errors", "applied", "apply_failed", "late_ticks", "slow_requests"]


def summarize(runs: list[dict], targets: list[str]) -> dict:
    out: dict = {}
    for t in targets:
        out[t] = {}
        for kind in ["steady", "churn"]:
            rs = [r for r in runs if r["target"] == t and r["kind"] == kind]
            s = {k: run.spread([r.get(k) for r in rs]) for k, _ in LATENCY}
            s.update({k: run.spread([r.get(k) for r in rs]) for k in USAGE + ["compile_ms_max"]})
            s.update({k: sum(r.get(k) or 0 for r in rs) for k in COUNTS})
            s["vus_max"] = max((r.get("vus_max") or 0 for r in rs), default=0)
            near = [r["slow_after_change"]["buckets"] for r in rs if "slow_after_change" in r]
            buckets = [sum(b) for b in zip(*near)]
            if buckets and sum(buckets):
                s["slow_after_change"] = {"buckets": buckets, "n": sum(buckets),
                                          "first_30pct": round(100 * sum(buckets[:3]) / sum(buckets), 1)}
            out[t][kind] = s
        # Per repeat, churn against the steady run of the same repeat (same process, same
        # minute); then the median of those ratios, and the ratio of the medians.
        pairs = [(c, st) for c in runs for st in runs if c["target"] == t == st["target"]
                 and c["kind"] == "churn" and st["kind"] == "steady" and c["repeat"] == st["repeat"]]
        ratios = {}
        for k in ["p99_ms", "max_ms", "p999_ms"]:
            ratios[k] = run.spread([c[k] / st[k] for c, st in pairs if c.get(k) and st.get(k)])
            a, b = out[t]["churn"][k], out[t]["steady"][k]
            ratios[f"{k}_of_medians"] = round(a["median"] / b["median"], 3) if a and b and b["median"] else None
        out[t]["churn_vs_steady"] = ratios
    if "meshgate" in out:
        m = out["meshgate"]["churn"]["p99_ms"]
        for t in out:
            p = out[t]["churn"]["p99_ms"]
            out[t]["meshgate_churn_p99_vs_this"] = round(m["median"] / p["median"], 3) if m and p else None
    return out


def issue_checks(summary: dict) -> list[dict]:
    """Issue 18 item 5's target (reported, not enforced)."""
    m = summary.get("meshgate")
    if not m:
        return []
    checks = []
    r = m["churn_vs_steady"]["p99_ms_of_medians"]
    if r is not None:
        checks.append({"check": "meshgate p99 under churn <= 1.1x its p99 without", "value": r, "limit": 1.1,
                       "met": r <= 1.1})
    for peer in ["nginx", "haproxy"]:
        if peer in summary and m["churn"]["p99_ms"] and summary[peer]["churn"]["p99_ms"]:
            a, b = m["churn"]["p99_ms"]["median"], summary[peer]["churn"]["p99_ms"]["median"]
            checks.append({"check": f"meshgate p99 under churn < {peer}'s (ms)", "value": a, "limit": b,
                           "met": a < b})
    return checks


def cell(s: dict | None, digits: int = 3) -> str:
    return run.fmt_spread(s, digits)


def markdown(result: dict) -> str:
    meta, rate, summary = result["meta"], result["rate"], result["summary"]
    sat = result["saturation"]
    b = meta.get("gateway_binary")
    built = f" (binary built {b['built']}, newest commit before it {b['newest_commit_before']})" if b else ""
    fractions = ", ".join(f"{t} {100 * rate['rate'] / sat[t]['rps']:.1f} %" for t in sat if sat[t].get("rps"))
    lines = [
        f"## Tail latency under config churn — {meta['date']}",
        "",
        f"meshgate: HEAD {meta['git_commit']}{built}; machine: {meta['cpu_model']}, {meta['cpus']} CPUs, "
        f"Linux {meta['kernel']}, load average at start {meta['loadavg_start']}, at the end {meta['loadavg_end']}. "
        f"Every proxy as shipped (one worker per CPU), nothing pinned. {meta['repeat']} repeat(s) × "
        f"{meta['duration']} s per run after a {meta['warmup']} s warm-up; "
        f"a change every {meta['period_ms']} ms in the churn runs; cells are median (min–max) over repeats. "
        "Tools: " + ", ".join(f"{k} {v}" for k, v in meta["tools"].items()) + ".",
        "",
        f"Rate: **{rate['rate']:,} req/s** (k6 constant-arrival-rate, keep-alive, `GET {BENCH_PATH}`). "
        f"{rate['why']} Fraction of each target's saturation: {fractions}.",
        "",
        "CPU during the runs (% of one CPU, median (min–max)): the proxy's, the time its threads waited for a CPU "
        "while ready (run queue; – when a reload replaced its processes), k6's, and other work on the machine "
        "(busy time of neither proxy, upstream, k6, reload commands nor this script: other sessions, and kernel "
        "work charged to no process).",
        "",
        "| target | saturation req/s (wrk) | proxy CPU % steady / churn | proxy run-queue wait % steady / churn "
        "| k6 CPU % steady / churn | other work % steady / churn |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t, s in sat.items():
        st, ch = summary[t]["steady"], summary[t]["churn"]
        lines.append(f"| {t} | {run.fmt(s.get('rps'))} "
                     + "".join(f"| {cell(st[k], 0)} / {cell(ch[k], 0)} "
                               for k in ["proxy_cpu_pct", "proxy_wait_pct", "k6_cpu_pct", "machine_other_pct"]) + "|")
    lines += ["", "Latency (k6 `http_req_duration`, ms; \"incl. connect\" adds the wait for a connection, "
              "i.e. a new connection's set-up after a reload closed the old one):", "",
              "| target | run | " + " | ".join(label for _, label in LATENCY)
              + " | requests | non-2xx | failed | dropped | new conns | peak VUs |",
              "| --- | --- |" + " ---: |" * (len(LATENCY) + 6)]
    for t, per in summary.items():
        for kind in ["steady", "churn"]:
            s = per[kind]
            lines.append(f"| {t} | {kind} | " + " | ".join(cell(s[k]) for k, _ in LATENCY)
                         + f" | {s['requests']:,} | {s['non_2xx']} | {s['transport_errors']} "
                         f"| {s['dropped_iterations']} | {s['new_connections']:,} | {s['vus_max']} |")
    lines += ["", "Changes (sums over the churn runs) and the ratios:", "",
              "| target | changes made | applied (proxy's count) | reload errors | failed reloads | late ticks "
              f"| p99 churn ÷ steady | max churn ÷ steady | meshgate's churn p99 ÷ this churn p99 "
              f"| requests > {meta['slow_ms']:g} ms steady / churn "
              "| of those under churn, started ≤ 30 ms after a change |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for t, per in summary.items():
        c, r = per["churn"], per["churn_vs_steady"]
        near = c.get("slow_after_change")
        lines.append(f"| {t} | {c['changes']:,} | {c['applied']:,} | {c['change_errors']} | {c['apply_failed']} "
                     f"| {c['late_ticks']} | {run.fmt(r['p99_ms_of_medians'], 2)} (per repeat {cell(r['p99_ms'], 2)}) "
                     f"| {run.fmt(r['max_ms_of_medians'], 2)} | {run.fmt(per.get('meshgate_churn_p99_vs_this'), 2)} "
                     f"| {per['steady']['slow_requests']:,} / {c['slow_requests']:,} "
                     f"| {run.fmt(near['first_30pct'] if near else None, 0, ' %')} |")
    lines += ["", f"'Started ≤ 30 ms after a change': a slow request's start relative to the last change made before "
              f"it; unrelated to the changes, 30 % would. Changes are made every {meta['period_ms']} ms on an absolute "
              "schedule; a late tick is one that came a whole period late (the previous change's command overran).", ""]
    if result["checks"]:
        lines += ["Issue 18 item 5 (reported, not enforced):", "", "| check | value | limit | met |",
                  "| --- | ---: | ---: | --- |"]
        lines += [f"| {c['check']} | {c['value']} | {c['limit']} | {'yes' if c['met'] else 'no'} |"
                  for c in result["checks"]]
        lines.append("")
    notes = result.get("notes") or []
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma list from {', '.join(TARGETS)}")
    ap.add_argument("--duration", type=int, default=20, help="seconds per measured run (default 20)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats (default 3)")
    ap.add_argument("--warmup", type=int, default=3, help="seconds of k6 at the same rate before each run (default 3)")
    ap.add_argument("--period-ms", type=int, default=100, help="one change every this many ms (default 100)")
    ap.add_argument("--rate", type=int, default=None,
                    help="requests/s for every run; default: 50 %% of the lowest saturation, capped by k6's "
                         "highest rate without dropped iterations (probed)")
    ap.add_argument("--max-rate", type=int, default=8000,
                    help="the first rate probed when 50 %% of saturation is higher (default 8000)")
    ap.add_argument("--probe-seconds", type=int, default=None,
                    help="length of each k6 rate probe (default: --duration; k6's hiccups that drop iterations "
                         "come seconds apart, so a short probe passes rates a measured run does not sustain)")
    ap.add_argument("--max-k6-cpu", type=float, default=100.0,
                    help="a probed rate must leave the proxy room: k6 at most this %% of one CPU (default 100, "
                         "half of this 2-CPU machine)")
    ap.add_argument("--vus", type=int, default=64,
                    help="k6 VUs allocated up front, each with its own keep-alive connection (default 64)")
    ap.add_argument("--max-vus", type=int, default=512,
                    help="k6 may add VUs up to this many when every one is waiting (a stall); an iteration due "
                         "while none is free is dropped (default 512)")
    ap.add_argument("--slow-ms", type=float, default=5.0,
                    help="requests slower than this (incl. connect) are logged and lined up with the changes "
                         "(default 5 ms)")
    ap.add_argument("--saturation-seconds", type=int, default=8, help="wrk run per target (default 8)")
    ap.add_argument("--gateway", type=Path, default=run.ROOT / "target/release/gateway",
                    help="the gateway binary (default target/release/gateway); copied to --gateway-copy first")
    ap.add_argument("--gateway-copy", type=Path, default=Path("/tmp/churnhelper/gateway"),
                    help="where the binary is copied and run from, so that a concurrent cargo build cannot "
                         "replace it mid-run (default /tmp/churnhelper/gateway)")
    ap.add_argument("--out", type=Path, help="write the JSON results here")
    ap.add_argument("--md", type=Path, help="also write the markdown report here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (configs, logs, k6 summaries)")
    ap.add_argument("--no-install", action="store_true", help="do not install missing tools (apt, pip)")
    ap.add_argument("--nice", type=int, default=None,
                    help="nice value of every benchmark process, as run.py's (default -10 as root, else 0)")
    args = ap.parse_args()
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in args.targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t}")
    if args.nice is None:
        args.nice = -10 if os.geteuid() == 0 else 0
    args.period = args.period_ms / 1000
    args.probe_seconds = args.probe_seconds or args.duration
    return args


def copy_gateway(args) -> str:
    if "meshgate" not in args.targets:
        return ""
    if not args.gateway.is_file():
        sys.exit(f"churn.py: {args.gateway} not found (build it, or leave meshgate out with --targets)")
    args.gateway_copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(args.gateway, args.gateway_copy)
    log(f"gateway: {args.gateway} copied to {args.gateway_copy}")
    return str(args.gateway_copy)


def git(repo: Path, *argv: str) -> str | None:
    r = subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True)
    return r.stdout.strip() or None


def binary_info(args, copy: str) -> dict | None:
    """Which gateway build ran. Others commit and rebuild in the binary's checkout meanwhile, so
    its HEAD need not be what was built: also the binary's time and the newest commit not newer
    than it."""
    if not copy:
        return None
    st = os.stat(copy)  # copy2 kept the original's mtime
    repo = args.gateway.resolve().parent
    return {"path": copy, "bytes": st.st_size,
            "built": dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "newest_commit_before": git(repo, "log", "-1", "--format=%h", f"--before={int(st.st_mtime)}")}


def meta(args, gateway: str) -> dict:
    cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), "?")
    # The checkout the binary was built in (--gateway's repository), not this script's.
    commit = git(args.gateway.resolve().parent, "rev-parse", "--short", "HEAD")
    tools = {k: v for k, v in run.tool_versions(args.targets, {}).items() if k in ("nginx", "haproxy", "k6")}
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "git_commit": commit,
            "gateway": str(args.gateway), "gateway_binary": binary_info(args, gateway), "cpu_model": cpu_model,
            "cpus": os.cpu_count(), "kernel": os.uname().release,
            "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "duration": args.duration, "repeat": args.repeat, "warmup": args.warmup, "period_ms": args.period_ms,
            "slow_ms": args.slow_ms, "vus": args.vus, "max_vus": args.max_vus,
            "nice": args.nice, "targets": args.targets, "tools": tools}


def choose_rate(args, tmp: Path, upstream, gateway: str) -> tuple[dict, dict]:
    """Saturation of each target (wrk), then the common rate: 50 % of the lowest, capped by what k6
    sustains (probes, unless --rate). Returns (saturation per target, rate and why)."""
    sat, k6_cap, probes = {}, None, []
    for name in args.targets:
        target = make_target(name, tmp / f"sat-{name}", upstream[1]["http"], gateway)
        try:
            target.start()
            sat[name] = saturation(target, upstream[0], args.saturation_seconds)
            log(f"saturation {name}: {sat[name]['rps']:,.0f} req/s, proxy CPU {sat[name]['proxy_cpu_pct']} %")
            if args.rate is None:
                # Each target probes down from the rate the previous one sustained.
                half = int(min(s["rps"] for s in sat.values()) * 0.5)
                k6_cap, found = highest_k6_rate(target, min(half, args.max_rate, k6_cap or args.max_rate), args, tmp)
                probes += found
        finally:
            target.stop()
    half = int(min(s["rps"] for s in sat.values()) * 0.5)
    rate = {"half_min_saturation": half, "probes": probes}
    if args.rate is not None:
        return sat, dict(rate, rate=args.rate, why=f"Set with --rate; 50 % of the lowest saturation is {half:,} req/s.")
    failed = sorted({p["rate"] for p in probes if not p["ok"]})
    rate["rate"] = min(half, k6_cap)
    if rate["rate"] == half:
        why = "50 % of the lowest saturation; k6 sustained it without dropped iterations."
    elif failed:
        why = (f"50 % of the lowest saturation would be {half:,} req/s, which one k6 process cannot drive here beside "
               f"the proxy: it dropped iterations (or took more than {args.max_k6_cpu:g} % of a CPU) at "
               f"{', '.join(f'{r:,}' for r in failed)} req/s "
               f"({args.probe_seconds} s probes from {min(half, args.max_rate):,} down in 20 % steps), so every run "
               "uses the highest rate it sustained against every target.")
    else:
        why = (f"50 % of the lowest saturation would be {half:,} req/s; capped at --max-rate ({args.max_rate:,}), "
               "which k6 sustained against every target.")
    return sat, dict(rate, k6_cap=k6_cap, why=why)


def measure(args, tmp: Path, upstream, gateway: str, rate: int) -> list[dict]:
    """Every repeat: each target started afresh, in an order rotated by one per repeat, runs
    without and with changes, in an order that alternates by repeat and by target."""
    runs = []
    for rep in range(args.repeat):
        k = rep % len(args.targets)
        for i, name in enumerate(args.targets[k:] + args.targets[:k]):
            kinds = ["steady", "churn"] if (rep + i) % 2 == 0 else ["churn", "steady"]
            target = make_target(name, tmp / f"rep{rep}-{name}", upstream[1]["http"], gateway)
            try:
                target.start()
                for kind in kinds:
                    res = measured_run(target, kind == "churn", rate, args, tmp, f"{name}-{rep}-{kind}",
                                       upstream[0].pid)
                    res.update(target=name, kind=kind, repeat=rep)
                    runs.append(res)
                    log(f"rep {rep + 1}/{args.repeat} {name:<8} {kind:<6} @{rate}/s  p50 {res['p50_ms']:.3f}  "
                        f"p99 {res['p99_ms']:.3f}  p99.9 {res['p999_ms']:.3f}  max {res['max_ms']:.1f} ms  "
                        f"changes {res['changes']} applied {res['applied']} errors {res.get('change_errors', 0)}  "
                        f"dropped {res['dropped_iterations']}  new conns {res['new_connections']}  "
                        f"slow {res['slow_requests']}  proxy {res['proxy_cpu_pct']} % "
                        f"(waiting {res['proxy_wait_pct']} %)  k6 {res['k6_cpu_pct']} %  "
                        f"other work {res['machine_other_pct']} %")
            finally:
                target.stop()
    return runs


def notes(runs: list[dict]) -> list[str]:
    """What the tables do not say: changes a proxy did not apply, dropped requests, meshgate's swaps."""
    out = []
    for r in runs:
        if r["kind"] == "churn" and r["applied"] != r["changes"]:
            out.append(f"{r['target']} repeat {r['repeat'] + 1}: {r['changes']} changes made, {r['applied']} applied "
                       "by the proxy's own count.")
        if r["dropped_iterations"]:
            out.append(f"{r['target']} {r['kind']} repeat {r['repeat'] + 1}: k6 dropped {r['dropped_iterations']} "
                       f"requests: when they were due, every VU (peak {r['vus_max']}) was waiting for an answer, "
                       "because k6 fell behind or the proxy stalled. They are missing from the percentiles, which "
                       "understate that run's tail.")
    swaps = [r for r in runs if r["target"] == "meshgate" and r["kind"] == "churn" and r.get("swaps_logged")]
    if swaps:
        out.append(f"meshgate logged {sum(r['swaps_logged'] for r in swaps):,} snapshot swaps in its churn runs; "
                   f"compile_ms per swap: median {statistics.median(r['compile_ms_median'] for r in swaps):g}, "
                   f"max {max(r['compile_ms_max'] for r in swaps)}.")
    return out


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    run.MODE[0] = "defaults"  # every proxy as shipped, nothing pinned
    if args.nice:
        run.NICE[:] = ["nice", "-n", str(args.nice)]
    if not args.no_install:
        run.ensure_tools(args.targets)
    gateway = copy_gateway(args)
    info = meta(args, gateway)
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-churn-"))
    upstream = None
    try:
        run.make_certificate(tmp)  # the upstream's TLS listener needs one
        upstream = run.start_upstream(tmp)
        log(f"upstream nginx on 127.0.0.1:{upstream[1]['http']}; work dir {tmp}")
        sat, rate = choose_rate(args, tmp, upstream, gateway)
        log(f"rate {rate['rate']:,} req/s: {rate['why']}")
        runs = measure(args, tmp, upstream, gateway, rate["rate"])
    finally:
        if upstream:
            upstream[0].stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    info["elapsed_seconds"] = round(time.monotonic() - started, 1)
    info["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    summary = summarize(runs, args.targets)
    result = {"meta": info, "saturation": sat, "rate": rate, "summary": summary, "checks": issue_checks(summary),
              "notes": notes(runs), "runs": runs}
    md = markdown(result)
    print(md)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"done in {info['elapsed_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
