#!/usr/bin/env python3
"""Instructions per request of each proxy, counted by callgrind: repeatable to the instruction
whatever else the machine runs, so small changes on the request path show up where wall-clock
and /proc CPU figures drown in noise (see docs/benchmarks.md, "Instructions per request").

    python3 tests/load/instructions.py                     # bare-pingora meshgate meshgate-realistic
    python3 tests/load/instructions.py meshgate -n 5000 --top 30
    python3 tests/load/instructions.py bare-pingora meshgate-realistic-log   # the issue's target
    python3 tests/load/instructions.py meshgate meshgate-trace --gateway /tmp/main-gateway

Targets: bare-pingora, meshgate (1 route), meshgate-realistic (10 hosts / 50 routes), and either
meshgate target with `-log` appended for the access log on (written to a file) and/or `-trace`
for tracing on at 100 % sampling, exporting to a collector in this script that accepts every
POST (so the count covers span building, the queue and the export thread, not a real
collector's work); e.g. meshgate-realistic-log-trace.

Each target runs under `valgrind --tool=callgrind --instr-atstart=no` behind the same nginx
upstream as tests/load/run.py; after a warm-up of 200 requests instrumentation is switched on,
N keep-alive requests of 1 KiB are sent one at a time, and it is switched off again. Prints
instructions per request per target and, for each meshgate target, the functions whose
exclusive count differs most from bare Pingora's. Needs release builds (taken from
$CARGO_TARGET_DIR/release when set, else target/release) and valgrind (apt).
"""
import argparse
import http.client
import http.server
import threading
import time
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402  (the benchmark runner: upstream, configs, helpers)

WARMUP = 200
# Release binaries: where cargo put them (CARGO_TARGET_DIR, relative to the workspace root
# like cargo resolves it, or the workspace's own target/).
RELEASE = R.ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "release"


def drive(port: int, n: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(n):
        conn.request("GET", "/1k", headers={"Host": R.HOST})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            sys.exit(f"instructions.py: got {resp.status} from port {port}")
    conn.close()


class Collector:
    """An OTLP/HTTP endpoint that answers 200 to every POST and counts the requests and
    bytes, so a run shows that spans were exported."""

    def __init__(self) -> None:
        self.posts = 0
        self.bytes = 0
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                collector.posts += 1
                collector.bytes += len(body)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def freeze(tmp: Path) -> Path:
    """Copies of the binaries, so a build finishing during the run changes nothing measured."""
    frozen = tmp / "bin"
    frozen.mkdir()
    for binary in ["gateway", "bare-proxy"]:
        if (RELEASE / binary).is_file():
            shutil.copy2(RELEASE / binary, frozen / binary)
    return frozen


def start(name: str, work: Path, upstream_port: int, out: Path, bins: Path,
          collector: Collector) -> tuple[subprocess.Popen, int]:
    port = R.free_port()
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no", "--instr-atstart=no"]
    env = dict(os.environ, RUST_LOG="warn")
    err = open(work / "stderr.log", "w")
    if name.startswith("meshgate"):
        config = work / "config"
        realistic = name.startswith("meshgate-realistic")
        (R.meshgate_realistic_config if realistic else R.meshgate_simple_config)(config, upstream_port)
        status = R.free_port()
        options = name.split("-")
        access = str(work / "access.log") if "log" in options else "off"
        argv = vg + [str(bins / "gateway"), "--config", str(config), "--port-map",
                     f"80=127.0.0.1:{port}", "--status-addr", f"127.0.0.1:{status}",
                     "--metrics-addr", f"127.0.0.1:{R.free_port()}", "--admin-addr", f"127.0.0.1:{R.free_port()}",
                     "--access-log", access, "--threads", "1"]
        if "trace" in options:
            argv += ["--otlp-endpoint", f"http://127.0.0.1:{collector.port}/v1/traces", "--trace-sampling", "100"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        R.wait_until(lambda: R.http_get(status, "/healthz/ready")[0] == 200, name, proc, work / "stderr.log", 120)
    else:
        argv = vg + [str(bins / "bare-proxy"), f"127.0.0.1:{port}", f"127.0.0.1:{upstream_port}"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)

        def accepting() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                return True
            except OSError:
                return False
        R.wait_until(accepting, name, proc, work / "stderr.log", 120)
    return proc, port


def exclusive_counts(out: Path) -> dict[str, int]:
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", str(out)], capture_output=True, text=True,
                          check=True).stdout
    counts: dict[str, int] = {}
    table = False
    for line in text.splitlines():
        if "file:function" in line:
            table = True
            continue
        if not table or line.startswith("---"):
            continue
        if not line.strip():
            if counts:
                break
            continue
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(.*)$", line)
        if m:
            name = re.sub(r" \[[^\]]*\]$", "", m.group(2))
            name = name.split(":", 1)[1] if ":" in name else name
            counts[name] = counts.get(name, 0) + int(m.group(1).replace(",", ""))
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", default=["bare-pingora", "meshgate", "meshgate-realistic"])
    ap.add_argument("-n", type=int, default=3000, help="measured requests per target (default 3000)")
    ap.add_argument("--top", type=int, default=20, help="functions listed per comparison")
    ap.add_argument("--gateway", type=Path, help="gateway binary to count instead of the release build's "
                    "(e.g. a copy of another branch's, to compare two builds back to back)")
    args = ap.parse_args()
    for tool in ["valgrind", "callgrind_control", "callgrind_annotate", "nginx"]:
        if not shutil.which(tool):
            sys.exit(f"instructions.py: {tool} is missing (apt-get install valgrind nginx)")
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-instr-"))
    print(f"binaries from {RELEASE}; callgrind output in {tmp}/<target>/callgrind.out", file=sys.stderr)
    bins = freeze(tmp)
    if args.gateway:
        shutil.copy2(args.gateway, bins / "gateway")
    # The runner's upstream also serves HTTPS (and meshgate's configs declare port 443), so the
    # run's certificate comes first.
    R.make_certificate(tmp)
    upstream, ports = R.start_upstream(tmp)
    upstream_port = ports["http"]
    collector = Collector()
    counts: dict[str, dict[str, int]] = {}
    try:
        for name in args.targets:
            work = tmp / name
            work.mkdir()
            out = work / "callgrind.out"
            proc, port = start(name, work, upstream_port, out, bins, collector)
            posts = collector.posts
            drive(port, WARMUP)
            subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
            drive(port, args.n)
            if "trace" in name.split("-"):
                # Spans wait up to a second for their batch (export.rs FLUSH_INTERVAL): their
                # export belongs in the count too.
                time.sleep(2)
            subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
            proc.terminate()
            proc.wait(timeout=120)
            counts[name] = exclusive_counts(out)
            exported = f"  ({collector.posts - posts} OTLP POSTs)" if "trace" in name.split("-") else ""
            print(f"{name:20} {sum(counts[name].values()) / args.n:10,.0f} instructions/request{exported}", flush=True)
    finally:
        upstream.stop()
    base = counts.get("bare-pingora")
    for name, c in counts.items():
        if base is None or name == "bare-pingora":
            continue
        total = (sum(c.values()) - sum(base.values())) / args.n
        print(f"\n{name} - bare-pingora: {total:+,.0f} instructions/request; largest differences:")
        diffs = sorted(((c.get(k, 0) - base.get(k, 0)) / args.n, k) for k in set(c) | set(base))
        for d, k in sorted(diffs, key=lambda x: -abs(x[0]))[: args.top]:
            print(f"  {d:+8,.0f}  {k[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
