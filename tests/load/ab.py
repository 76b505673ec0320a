#!/usr/bin/env python3
"""A/B of two gateway binaries: CPU per request of the same target config under the same load.

The runner (run.py) compares different proxies in one run; this compares two builds of meshgate,
for a change whose effect is a few percent. The two binaries take turns (A, B, A, B, ...) behind
the one upstream nginx, each started fresh, warmed up for a second and measured with wrk on the
runner's pinning (proxy on CPU 0, wrk and upstream on CPU 1); CPU time comes from /proc.

    python3 tests/load/ab.py --a /tmp/gateway-before --b target/release/gateway
    python3 tests/load/ab.py --a OLD --b NEW --target meshgate-log --repeat 7 --duration 10

Prints each run and the medians (user, kernel and total µs per request). With `--latency RATE`
each run is instead k6 at RATE requests per second, and the figures are its p50 and p99.
Standard library only; needs what run.py needs (nginx, wrk, k6).
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402  (the runner's functions: targets, pinning, wrk, /proc)


def measure(binary: str, target: str, workload: str, seconds: int, tmp: Path, upstream: dict) -> tuple[float, float]:
    """(user, kernel) µs per request of one fresh `target` process running `binary`."""
    bins = {"gateway": binary, "bare-proxy": "unused"}
    t = R.start_target(target, tmp, upstream, bins)
    try:
        pid = t.proc.p.pid
        R.run_pinned(R.CLIENT_CPU, R.load_cmd(t, workload, 1))  # warm-up: pools, caches
        user0, sys0 = R.proc_cpu_split(pid)
        out = R.run_pinned(R.CLIENT_CPU, R.load_cmd(t, workload, seconds)).stdout
        user1, sys1 = R.proc_cpu_split(pid)
    finally:
        t.proc.stop()
    done = R.parse_wrk(out)["requests"]
    if not done:
        raise SystemExit(f"{binary}: no requests completed")
    return (user1 - user0) / done * 1e6, (sys1 - sys0) / done * 1e6


def latency(binary: str, target: str, workload: str, rate: int, seconds: int, tmp: Path,
            upstream: dict) -> tuple[float, float]:
    """(p50, p99) ms of k6 at `rate` requests per second through one fresh `target` process."""
    t = R.start_target(target, tmp, upstream, {"gateway": binary, "bare-proxy": "unused"})
    try:
        res = R.latency_run(t, workload, rate, seconds, tmp)
    finally:
        t.proc.stop()
    return res["p50_ms"], res["p99_ms"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="gateway binary A (say, before the change)")
    ap.add_argument("--b", required=True, help="gateway binary B (after)")
    ap.add_argument("--target", default="meshgate-realistic", choices=[t for t in R.TARGETS if t.startswith("meshgate")])
    ap.add_argument("--workload", default="ka-1k", choices=[w for w in R.WORKLOADS if R.proto(w) != "h2c"])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8, help="seconds per measured run")
    ap.add_argument("--latency", type=int, metavar="RATE", help="compare k6 p50/p99 at RATE req/s instead of CPU")
    args = ap.parse_args()
    unit = "ms (p50, p99)" if args.latency else "µs/request (user, kernel)"

    tmp = Path(tempfile.mkdtemp(prefix="meshgate-ab-"))
    R.make_certificate(tmp)
    upstream, ports = R.start_upstream(tmp)
    results: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    try:
        for rep in range(args.repeat):
            for label, binary in (("A", args.a), ("B", args.b)):
                if args.latency:
                    pair = latency(binary, args.target, args.workload, args.latency, args.duration, tmp, ports)
                else:
                    pair = measure(binary, args.target, args.workload, args.duration, tmp, ports)
                results[label].append(pair)
                print(f"{rep} {label}: {pair[0]:.3f}, {pair[1]:.3f} {unit}", flush=True)
    finally:
        upstream.stop()
    # The figure compared: total CPU (user + kernel), or p99.
    key = (lambda r: r[1]) if args.latency else (lambda r: r[0] + r[1])
    for label, runs in results.items():
        first, second = (statistics.median(r[i] for r in runs) for i in (0, 1))
        if args.latency:
            print(f"{label} median: p50 {first:.3f} ms, p99 {second:.3f} ms")
        else:
            total = statistics.median(key(r) for r in runs)
            print(f"{label} median: {total:.2f} µs/request (user {first:.2f}, kernel {second:.2f})")
    wins = sum(key(b) < key(a) for a, b in zip(results["A"], results["B"]))
    print(f"B lower than A ({'p99' if args.latency else 'CPU'}) in {wins} of {args.repeat} pairs")


if __name__ == "__main__":
    main()
