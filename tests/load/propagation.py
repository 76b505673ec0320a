#!/usr/bin/env python3
"""Config propagation at scale (issue 4): milliseconds from writing one VirtualService file to the
first request that follows the new route, with `gateway --config DIR` serving N synthetic
services. Python 3.11, standard library only.

    python3 tests/load/propagation.py                  # 10k services, 5 edits
    python3 tests/load/propagation.py --services 1000 --repeat 10 --no-build

The folder holds `scale --write DIR N`'s config (one file per service, ~1.3 KB each, plus
gateways.yaml) and two more files: `probe-upstream.yaml` (a Gateway for `*.probe.local`, and a
Service and Pod whose address is an HTTP server this script runs on 127.0.0.1) and `probe.yaml`
(one VirtualService). Each round rewrites `probe.yaml` (write to a hidden temporary file, then
rename, as editors and `kubectl cp`-style tools do) to bind a host that was never served, and
polls that host every 5 ms (one kept-alive connection) until it answers 200 from the probe upstream instead of 404.

The gateway's log (kept with --keep) has the pieces: "config files loaded" (debug, with
RUST_LOG=info,controller=debug), "config translated" (ms: translate + publish) and
"snapshot serving" (compile_ms).
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Probe(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = b"probe\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def status(port: int, host: str, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


class Poller:
    """One kept-alive connection, so polling costs the gateway (which shares the two cores with
    this script) one small request per poll rather than a connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def status(self, host: str) -> int:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            self.conn.request("GET", "/", headers={"Host": host})
            response = self.conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return 0


def probe_vs(round_: int) -> str:
    return f"""apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: probe, namespace: default}}
spec:
  hosts: ["r{round_}.probe.local"]
  gateways: ["istio-system/probe-gw"]
  http:
  - route: [{{destination: {{host: probe}}}}]
"""


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_for(what: str, check, timeout: float, every: float = 0.005) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release")
    ap.add_argument("--target-dir", type=Path, default=Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")))
    ap.add_argument("--gateway", type=Path, help="the gateway binary to measure (default: TARGET_DIR/release/gateway)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (config, gateway log)")
    ap.add_argument("--split", action="store_true",
                    help="run the controller as its own process (`controller --config`, as the Helm chart deploys "
                         "it) and the gateway with --controller, instead of the gateway reading the folder itself")
    args = ap.parse_args()

    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "gateway", "-p", "controller", "--bin", "gateway",
                        "--bin", "scale", "--bin", "controller"], cwd=ROOT, check=True)
    bins = args.target_dir / "release"

    work = Path(tempfile.mkdtemp(prefix="meshgate-propagation-"))
    config = work / "config"
    subprocess.run([bins / "scale", "--write", str(config), str(args.services)], check=True)

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Probe)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    uport = upstream.server_address[1]
    (config / "probe-upstream.yaml").write_text(f"""apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: probe-gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*.probe.local"]
---
apiVersion: v1
kind: Service
metadata: {{name: probe, namespace: default}}
spec:
  selector: {{app: probe}}
  ports: [{{name: http, port: 80, targetPort: {uport}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: probe-1, namespace: default, labels: {{app: probe}}}}
status: {{podIP: 127.0.0.1}}
""")
    write_atomically(config / "probe.yaml", probe_vs(0))

    port, status_port = free_port(), free_port()
    log = open(work / "gateway.log", "w")
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info,controller=debug")
    controller = None
    source = ["--config", str(config)]
    if args.split:
        token = work / "token"
        token.write_text("propagation-token\n")
        cport = free_port()
        # The same 10 ms quiet time as the gateway's own folder watch, so both modes compare.
        with open(work / "controller.log", "w") as clog:
            controller = subprocess.Popen(
                [bins / "controller", "--config", str(config), "--listen", f"127.0.0.1:{cport}",
                 "--token-file", str(token), "--debounce-ms", "10"], stdout=clog, stderr=subprocess.STDOUT)
        source = ["--controller", f"http://127.0.0.1:{cport}", "--controller-token-file", str(token)]
    gw = subprocess.Popen(
        [args.gateway or bins / "gateway", *source, "--port-map", f"80=127.0.0.1:{port}",
         "--status-addr", f"127.0.0.1:{status_port}", "--metrics-addr", f"127.0.0.1:{free_port()}",
         "--admin-addr", f"127.0.0.1:{free_port()}", "--access-log", "off", "--drain-seconds", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        started = wait_for("readiness", lambda: status(status_port, "x", "/healthz/ready") == 200, 300)
        wait_for("the first probe route", lambda: status(port, "r0.probe.local") == 200, 60)
        time.sleep(2)  # the config thread gives memory back once the config has settled
        ready_rss = rss_mib(gw.pid)
        print(f"{args.services} services: ready after {started * 1e3:.0f} ms, RSS {ready_rss:.0f} MiB", file=sys.stderr)
        if controller is not None:
            print(f"controller RSS {rss_mib(controller.pid):.0f} MiB", file=sys.stderr)
        times = []
        poller = Poller(port)
        for r in range(1, args.repeat + 1):
            host = f"r{r}.probe.local"
            assert poller.status(host) == 404, "the new host must not be served before the edit"
            t0 = time.monotonic()
            write_atomically(config / "probe.yaml", probe_vs(r))
            wait_for(f"round {r}", lambda: poller.status(host) == 200, 60)
            times.append((time.monotonic() - t0) * 1e3)
            print(f"round {r}: {times[-1]:.0f} ms", file=sys.stderr)
            time.sleep(1)  # let the reload finish settling (old snapshot freed) before the next edit
        print(f"| services | propagation median | min | max | RSS ready / after edits |\n| --- | --- | --- | --- | --- |\n"
              f"| {args.services:,} | {statistics.median(times):.0f} ms | {min(times):.0f} ms | {max(times):.0f} ms "
              f"| {ready_rss:.1f} / {rss_mib(gw.pid):.1f} MiB |")
        if controller is not None:
            print(f"controller RSS after edits: {rss_mib(controller.pid):.0f} MiB", file=sys.stderr)
    finally:
        for process in (gw, controller):
            if process is not None:
                stop(process)
        log.close()
        upstream.shutdown()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
