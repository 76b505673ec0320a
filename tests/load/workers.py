#!/usr/bin/env python3
"""Thread-per-core check: CPU per request of meshgate at its defaults (one worker per CPU)
against `--threads 1`, in one run, and how evenly the workers share the load.

    python3 tests/load/workers.py                       # 3 interleaved repeats of 10 s
    python3 tests/load/workers.py --repeat 5 --duration 20 --threads 1,2
    python3 tests/load/workers.py --gateway /tmp/other/gateway

Nothing is pinned (the defaults are what users run): the gateway, wrk (-t2 -c16, HTTP/1.1
keep-alive, GET /1k) and the runner's nginx upstream share the machine's CPUs. For each run it
prints the gateway's CPU µs per request (utime+stime of every thread, from /proc), requests/s,
and per worker thread (`meshgate-wN`) its share of the workers' CPU and of the
connections accepted (`meshgate_worker_connections_total`). The summary gives the medians and
the ratio of each thread count's CPU per request to `--threads 1`'s (issue 18's target: ≤ 1.05
at the defaults). Needs release builds (`cargo build --release -p gateway`), nginx and wrk.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402  (the runner's upstream, configs and /proc helpers)

RELEASE = R.ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "release"


def worker_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each worker thread, by thread name."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if name.startswith("meshgate-w"):
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / R.CLK_TCK
    return out


def worker_connections(metrics_port: int) -> dict[str, int]:
    """Connections accepted so far by each worker, by worker index."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/stats/prometheus", timeout=5).read().decode()
    pattern = r'meshgate_worker_connections_total\{worker="(\d+)"\} (\S+)'
    return {m.group(1): int(float(m.group(2))) for m in re.finditer(pattern, text)}


def measure(gateway: str, threads: int | None, upstream_port: int, tmp: Path, seconds: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"workers-{threads}-", dir=tmp))
    R.meshgate_simple_config(work / "config", upstream_port)
    port, status, metrics, admin = R.free_port(), R.free_port(), R.free_port(), R.free_port()
    argv = [gateway, "--config", str(work / "config"), "--port-map", f"80=127.0.0.1:{port}",
            "--status-addr", f"127.0.0.1:{status}", "--metrics-addr", f"127.0.0.1:{metrics}",
            "--admin-addr", f"127.0.0.1:{admin}", "--access-log", "off", "--drain-seconds", "1"]
    if threads is not None:
        argv += ["--threads", str(threads)]
    log = open(work / "stderr.log", "w")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ, RUST_LOG="warn"))
    try:
        R.wait_until(lambda: R.http_get(status, "/healthz/ready")[0] == 200, "gateway readiness", proc,
                     work / "stderr.log", timeout=60.0)
        url = f"http://127.0.0.1:{port}/1k"
        wrk = [R.which("wrk"), "-t2", "-c16", "-H", "Host: bench.local"]
        subprocess.run(wrk + ["-d1s", url], capture_output=True, check=True)  # warm-up: pools, caches
        cpu0, workers0, conns0 = R.proc_cpu_seconds(proc.pid), worker_cpu(proc.pid), worker_connections(metrics)
        out = subprocess.run(wrk + [f"-d{seconds}s", url], capture_output=True, text=True, check=True).stdout
        cpu1, workers1, conns1 = R.proc_cpu_seconds(proc.pid), worker_cpu(proc.pid), worker_connections(metrics)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    done = R.parse_wrk(out)["requests"]
    if not done:
        raise SystemExit(f"--threads {threads}: no requests completed")
    busy = {k: workers1.get(k, 0.0) - workers0.get(k, 0.0) for k in workers1}
    conns = {k: conns1.get(k, 0) - conns0.get(k, 0) for k in conns1}
    total_busy, total_conns = sum(busy.values()) or 1.0, sum(conns.values()) or 1
    return {
        "cpu_us": (cpu1 - cpu0) / done * 1e6,
        "rps": done / seconds,
        "workers": len(busy),
        "cpu_share": [round(100 * busy[k] / total_busy) for k in sorted(busy)],
        "conn_share": [round(100 * conns[k] / total_conns) for k in sorted(conns, key=int)],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,default",
                    help="comma list of thread counts to compare; `default` runs without --threads (default: 1,default)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    ap.add_argument("--gateway", default=str(RELEASE / "gateway"))
    args = ap.parse_args()
    for tool in ["nginx", "wrk"]:
        if not R.which(tool):
            sys.exit(f"workers.py: {tool} is missing (apt-get install nginx wrk)")
    variants = [None if t == "default" else int(t) for t in args.threads.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-workers-"))
    R.make_certificate(tmp)
    upstream, ports = R.start_upstream(tmp)
    results: dict[str, list[dict]] = {}
    try:
        for rep in range(args.repeat):
            # Rotate the order each repeat, so warm-up and drift fall on every variant alike.
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for threads in order:
                name = "default" if threads is None else f"--threads {threads}"
                r = measure(args.gateway, threads, ports["http"], tmp, args.duration)
                results.setdefault(name, []).append(r)
                print(f"{name:12} {r['cpu_us']:6.1f} µs/request {r['rps']:8.0f} rps  workers {r['workers']}"
                      f"  CPU share {r['cpu_share']}  connections {r['conn_share']}", flush=True)
    finally:
        upstream.stop()
    base = statistics.median(r["cpu_us"] for r in results.get("--threads 1", [{"cpu_us": float("nan")}]))
    print("\nmedian CPU µs/request (min–max), ratio to --threads 1:")
    for name, runs in results.items():
        cpu = [r["cpu_us"] for r in runs]
        print(f"  {name:12} {statistics.median(cpu):6.1f} ({min(cpu):.1f}–{max(cpu):.1f})"
              f"  ×{statistics.median(cpu) / base:.3f}  rps {statistics.median(r['rps'] for r in runs):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
