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
at the defaults). With `--nginx`, nginx as the proxy runs the same way with one worker and with
`worker_processes auto`: the machine's own cost of spreading the load over more cores (caches,
fewer events per wake-up, the client and upstream competing), which no design removes.
Needs release builds (`cargo build --release -p gateway`), nginx and wrk.
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
        (user0, sys0), workers0, conns0 = R.proc_cpu_split(proc.pid), worker_cpu(proc.pid), worker_connections(metrics)
        out = subprocess.run(wrk + [f"-d{seconds}s", url], capture_output=True, text=True, check=True).stdout
        (user1, sys1), workers1, conns1 = R.proc_cpu_split(proc.pid), worker_cpu(proc.pid), worker_connections(metrics)
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
        "cpu_us": (user1 - user0 + sys1 - sys0) / done * 1e6,
        "user_us": (user1 - user0) / done * 1e6,
        "sys_us": (sys1 - sys0) / done * 1e6,
        "rps": done / seconds,
        "workers": len(busy),
        "cpu_share": [round(100 * busy[k] / total_busy) for k in sorted(busy)],
        "conn_share": [round(100 * conns[k] / total_conns) for k in sorted(conns, key=int)],
    }


def measure_nginx(workers: str, upstream_port: int, tmp: Path, seconds: int) -> dict:
    """nginx as the proxy with `workers` worker processes (`1` or `auto`), unpinned."""
    work = Path(tempfile.mkdtemp(prefix=f"nginx-{workers}-", dir=tmp))
    ports = {"http": R.free_port(), "tls": R.free_port(), "h2c": R.free_port()}
    conf = R.nginx_proxy_conf(work, upstream_port, ports, "simple")
    conf = conf.replace("master_process off;\nworker_processes 1;", f"worker_processes {workers};")
    (work / "nginx.conf").write_text(conf)
    proc = subprocess.Popen([R.which("nginx"), "-p", str(work), "-e", str(work / "error.log"), "-c",
                             str(work / "nginx.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        R.wait_until(lambda: R.http_get(ports["http"], "/1k")[0] == 200, "nginx", proc, work / "error.log")
        url = f"http://127.0.0.1:{ports['http']}/1k"
        wrk = [R.which("wrk"), "-t2", "-c16", "-H", "Host: bench.local"]
        subprocess.run(wrk + ["-d1s", url], capture_output=True, check=True)
        before = R.tree_cpu_split(proc.pid)
        out = subprocess.run(wrk + [f"-d{seconds}s", url], capture_output=True, text=True, check=True).stdout
        user, kernel = R.tree_cpu_delta(before, R.tree_cpu_split(proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    done = R.parse_wrk(out)["requests"]
    return {"cpu_us": (user + kernel) / done * 1e6, "user_us": user / done * 1e6, "sys_us": kernel / done * 1e6,
            "rps": done / seconds, "workers": 0, "cpu_share": [], "conn_share": []}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,default",
                    help="comma list of thread counts to compare; `default` runs without --threads (default: 1,default)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    ap.add_argument("--gateway", default=str(RELEASE / "gateway"))
    ap.add_argument("--nginx", action="store_true", help="also nginx with 1 and `auto` workers, as the control")
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
            runs = [("default" if t is None else f"--threads {t}", t) for t in order]
            if args.nginx:
                runs += [("nginx 1", "1"), ("nginx auto", "auto")]
            for name, threads in runs:
                if name.startswith("nginx"):
                    r = measure_nginx(threads, ports["http"], tmp, args.duration)
                else:
                    r = measure(args.gateway, threads, ports["http"], tmp, args.duration)
                results.setdefault(name, []).append(r)
                print(f"{name:12} {r['cpu_us']:6.1f} µs/request (user {r['user_us']:.1f}, kernel {r['sys_us']:.1f})"
                      f" {r['rps']:8.0f} rps  workers {r['workers']}"
                      f"  CPU share {r['cpu_share']}  connections {r['conn_share']}", flush=True)
    finally:
        upstream.stop()
    base = statistics.median(r["cpu_us"] for r in results.get("--threads 1", [{"cpu_us": float("nan")}]))
    print("\nmedian CPU µs/request (min–max), ratio to --threads 1 (nginx: to nginx 1):")
    nginx_base = statistics.median(r["cpu_us"] for r in results.get("nginx 1", [{"cpu_us": float("nan")}]))
    for name, runs in results.items():
        ref = nginx_base if name.startswith("nginx") else base
        cpu = [r["cpu_us"] for r in runs]
        user = statistics.median(r["user_us"] for r in runs)
        kernel = statistics.median(r["sys_us"] for r in runs)
        print(f"  {name:12} {statistics.median(cpu):6.1f} ({min(cpu):.1f}–{max(cpu):.1f})"
              f"  ×{statistics.median(cpu) / ref:.3f}  user {user:.1f}, kernel {kernel:.1f}"
              f"  rps {statistics.median(r['rps'] for r in runs):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
