#!/usr/bin/env python3
"""Memory of meshgate and its peers, idle and holding 2,000 idle keep-alive connections (issue 18,
item 6). Python 3.11, standard library only; the targets, configs and /proc readings are run.py's
(see tests/load/README.md, "Memory").

    python3 tests/load/memory.py                                  # --mode defaults, 3 repeats, every peer
    python3 tests/load/memory.py --mode both --repeat 3 --md /tmp/memory.md --out /tmp/memory.json
    python3 tests/load/memory.py --targets meshgate,nginx --gateway /tmp/gateway --repeat 5

Per target, mode and repeat it starts the target afresh with run.py's one-route config, sends a
handful of keep-alive requests, and reads the process tree's memory once it has stopped moving
(VmRSS, RssAnon, RssFile from /proc/PID/status, summed over nginx's master and workers). It then
opens 2,000 connections to the plain HTTP port, each carrying one `GET /1k` whose response is read
in full and checked, leaves them idle for --idle-seconds, checks that the proxy still holds every
one (a non-blocking peek must say EAGAIN, not EOF), reads the memory again and closes them. The
table gives the median (min-max) over repeats and the KiB each connection costs. Progress goes to
stderr, the markdown table to stdout (and --md PATH), the JSON to --out PATH.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import errno
import hashlib
import json
import os
import platform
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (run.py next to this file: targets, configs, /proc readings)

DEFAULT_TARGETS = ["meshgate", "bare-pingora", "nginx", "haproxy", "caddy", "pingap"]
CONNECTIONS = 2000
# Connections being opened at once. Bounded so that a proxy opens at most this many upstream
# connections to serve the burst (as many as nginx's and Caddy's idle upstream pools keep, 64):
# the figure is then the cost of idle client connections, not of a 2,000-connection upstream pool.
IN_FLIGHT = 64
IDLE_SECONDS = 2.0
# The shortest idle keep-alive timeout among the targets (meshgate's --idle-timeout and haproxy's
# `timeout http-keep-alive`, both 60 s; nginx 300 s, Caddy 5 min): every connection must still be
# inside it when the memory is read, so --idle-seconds stays well below.
SHORTEST_KEEPALIVE_TIMEOUT = 60.0
WARMUP_REQUESTS = 10
REQUEST = f"GET /1k HTTP/1.1\r\nHost: {run.HOST}\r\n\r\n".encode()
BODY = run.www_body("/1k")
# /proc/PID/status fields, summed over the process tree. VmRSS = RssAnon + RssFile + RssShmem; the
# file-backed part is mostly the binary's text, which depends on what the page cache holds.
STATUS_FIELDS = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}


# --------------------------------------------------------------------------------------------
# Memory readings
# --------------------------------------------------------------------------------------------


def tree_memory_kib(pid: int) -> dict[str, int]:
    """STATUS_FIELDS summed over `pid` and its descendants (run.proc_tree), each process's fields
    from one read of its status file; pages shared between processes count once per process, as
    run.tree_rss_kib counts them."""
    total = dict.fromkeys(STATUS_FIELDS.values(), 0)
    total["processes"] = 0
    for p in run.proc_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                lines = f.readlines()
        except OSError:
            continue  # exited in between
        total["processes"] += 1
        for line in lines:
            key, _, value = line.partition(":")
            if key in STATUS_FIELDS:
                total[STATUS_FIELDS[key]] += int(value.split()[0])
    return total


def settled_memory(pid: int, quiet: float = 0.5, timeout: float = 5.0) -> tuple[dict[str, int], bool]:
    """The tree's memory once VmRSS has not moved for `quiet` seconds (sampled every 100 ms): right
    after the warm-up a proxy may still be freeing buffers or finishing start-up work. Returns the
    reading and whether it settled before `timeout` (if not, the last reading)."""
    needed = round(quiet / 0.1) + 1
    recent: collections.deque[int] = collections.deque(maxlen=needed)
    deadline = time.monotonic() + timeout
    while True:
        reading = tree_memory_kib(pid)
        recent.append(reading["rss"])
        if len(recent) == needed and len(set(recent)) == 1:
            return reading, True
        if time.monotonic() >= deadline:
            return reading, False
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# HTTP/1.1 client: one GET /1k per connection, then the connection stays open
# --------------------------------------------------------------------------------------------


def parse_response(buf: bytes) -> tuple[int, bytes] | None:
    """(status, body) once `buf` holds a whole response with a Content-Length body, None while
    more is to come. Every target passes on the upstream's Content-Length for a static file."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    status_line, *header_lines = buf[:end].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    if "content-length" not in headers:
        raise ValueError(f"response without Content-Length: {status_line!r} {headers}")
    body = buf[end + 4:]
    length = int(headers["content-length"])
    if len(body) < length:
        return None
    if len(body) > length:
        raise ValueError(f"{len(body) - length} bytes after the response")
    return int(status_line.split()[1]), body


def check_response(res: tuple[int, bytes]) -> None:
    status, body = res
    if status != 200 or body != BODY:
        raise ValueError(f"GET /1k answered {status} with {len(body)} bytes (expected 200 and {len(BODY)})")


def warm_up(port: int) -> None:
    """A handful of keep-alive requests on one connection, each response read and checked (the
    path the measured connections take), before idle memory is read."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for _ in range(WARMUP_REQUESTS):
            sock.sendall(REQUEST)
            buf, res = b"", None
            while res is None:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the proxy closed a keep-alive connection during the warm-up")
                buf += data
                res = parse_response(buf)
            check_response(res)


def start_connect(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    err = sock.connect_ex(("127.0.0.1", port))
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        raise OSError(err, os.strerror(err))
    return sock


def open_idle_connections(port: int, count: int, timeout: float = 60.0) -> list[socket.socket]:
    """`count` connections to `port`, each having sent one GET /1k and read its whole response
    (checked); returned open, idle and non-blocking. At most IN_FLIGHT are being opened or served
    at once. Each registered socket's selector data is its response bytes so far."""
    sel = selectors.DefaultSelector()
    done: list[socket.socket] = []
    started = 0
    deadline = time.monotonic() + timeout
    try:
        while len(done) < count:
            while started < count and len(sel.get_map()) < IN_FLIGHT:
                sel.register(start_connect(port), selectors.EVENT_WRITE, b"")
                started += 1
            remaining = deadline - time.monotonic()
            events = sel.select(remaining) if remaining > 0 else []
            if not events:
                raise TimeoutError(f"{len(done)} of {count} connections served after {timeout:.0f} s")
            for key, mask in events:
                sock = key.fileobj
                if mask & selectors.EVENT_WRITE:  # connected (or failed)
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, f"connect: {os.strerror(err)}")
                    # A few dozen bytes into a fresh socket's empty send buffer: sent whole.
                    if sock.send(REQUEST) != len(REQUEST):
                        raise OSError("short send of the request")
                    sel.modify(sock, selectors.EVENT_READ, b"")
                    continue
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError(f"closed before the whole response ({len(key.data)} bytes read)")
                buf = key.data + data
                res = parse_response(buf)
                if res is None:
                    sel.modify(sock, selectors.EVENT_READ, buf)
                    continue
                check_response(res)
                sel.unregister(sock)
                done.append(sock)
    except BaseException:
        for sock in done + [k.fileobj for k in sel.get_map().values()]:
            sock.close()
        raise
    finally:
        sel.close()
    return done


def not_open(socks: list[socket.socket]) -> dict[str, int]:
    """How many of the idle connections the proxy no longer holds, by what a non-blocking peek
    returns: EAGAIN while a connection is open and idle; EOF once the proxy closed it, an error
    once it reset it, bytes if it sent something unasked (e.g. a 408 before closing)."""
    out: collections.Counter[str] = collections.Counter()
    for sock in socks:
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        except OSError:
            out["reset"] += 1
            continue
        out["eof" if not data else "bytes"] += 1
    return dict(out)


# --------------------------------------------------------------------------------------------
# One measurement
# --------------------------------------------------------------------------------------------


def measure(name: str, work: Path, upstream: dict[str, int], bins: dict, args) -> dict:
    """Starts `name`, reads its idle memory, opens the connections, reads it again, stops it."""
    target = run.start_target(name, work, upstream, bins, "simple")  # returns once it serves
    try:
        warm_up(target.port)
        idle, settled = settled_memory(target.pid)
        res: dict = {"idle_kib": idle, "idle_settled": settled}
        t0 = time.monotonic()
        socks = open_idle_connections(target.port, args.connections)
        res["open_seconds"] = round(time.monotonic() - t0, 2)
        try:
            # The point of the measurement: memory while the connections sit idle, not while they
            # are being served.
            time.sleep(args.idle_seconds)
            res["closed_before"] = not_open(socks)
            res["conns_kib"] = tree_memory_kib(target.pid)
            res["closed_after"] = not_open(socks)  # still held while the memory was read
        finally:
            for sock in socks:
                sock.close()
        res["held"] = args.connections - sum(res["closed_after"].values())
        delta = res["conns_kib"]["rss"] - idle["rss"]
        res["delta_kib"] = delta
        res["kib_per_conn"] = round(delta / args.connections, 2)
        res["anon_kib_per_conn"] = round((res["conns_kib"]["anon"] - idle["anon"]) / args.connections, 2)
        return res
    finally:
        target.stop()


def run_mode(mode: str, args, tmp: Path, bins: dict) -> list[dict]:
    """Every repeat in `mode`, with an upstream of its own; targets restart each repeat, in an
    order rotated by one each time (as run.py does)."""
    run.MODE[0] = mode
    results = []
    upstream, ports = run.start_upstream(tmp / mode)
    try:
        run.log(f"mode {mode}: upstream nginx on 127.0.0.1:{ports['http']}")
        for rep in range(args.repeat):
            k = rep % len(args.targets)
            for name in args.targets[k:] + args.targets[:k]:
                row = {"mode": mode, "repeat": rep, "target": name}
                try:
                    row.update(measure(name, tmp / mode, ports, bins, args))
                except Exception as e:  # one broken target must not lose the others' figures
                    row["error"] = f"{type(e).__name__}: {e}"
                    run.log(f"{mode} rep {rep + 1}/{args.repeat} {name:<13} failed: {row['error']}")
                else:
                    run.log(progress_line(row, args))
                results.append(row)
    finally:
        upstream.stop()
    return results


def progress_line(row: dict, args) -> str:
    idle, conns = row["idle_kib"], row["conns_kib"]
    lost = args.connections - row["held"]
    return (f"{row['mode']} rep {row['repeat'] + 1}/{args.repeat} {row['target']:<13} idle {idle['rss'] / 1024:6.1f} MiB "
            f"(anon {idle['anon'] / 1024:.1f}, file {idle['file'] / 1024:.1f}{'' if row['idle_settled'] else ', unsettled'})"
            f"  {args.connections} conns {conns['rss'] / 1024:6.1f} MiB (anon {conns['anon'] / 1024:.1f}, "
            f"file {conns['file'] / 1024:.1f})  {row['kib_per_conn']:.1f} KiB/conn  opened in {row['open_seconds']} s"
            + (f"  ⚠ closed by the proxy: {row['closed_before']} / {row['closed_after']}" if lost else ""))


# --------------------------------------------------------------------------------------------
# Set-up: tools, binaries, limits
# --------------------------------------------------------------------------------------------


def ensure_tools(targets: list[str], install: bool) -> None:
    """nginx (the upstream), openssl (the certificate the targets' TLS listeners load), h2load
    (start_target checks each target's h2c port), taskset, and the targets' own servers; with
    `install`, whatever is missing comes from run.ensure_tools (the runner's apt/pip set). A
    missing Caddy without `install` only skips its target (prepare_bins)."""
    required = ["nginx", "openssl", "h2load", "taskset"] + (["haproxy"] if "haproxy" in targets else [])
    wanted = required + (["caddy"] if "caddy" in targets else [])
    if install and not all(run.which(b) for b in wanted):
        run.ensure_tools(targets)
    missing = [b for b in required if not run.which(b)]
    if missing:
        sys.exit(f"memory.py: missing {', '.join(missing)} (drop --no-install, or the targets that need them)")


def prepare_bins(args, tmp: Path) -> tuple[dict, dict[str, str], dict[str, str]]:
    """The binaries each target runs, frozen in `tmp` (a concurrent `cargo build` replaces
    target/release/* and must not change what is measured between repeats); where they were
    copied from; and the targets skipped with the reason (pingap not built, Caddy not
    installed)."""
    bins = {"gateway": str(args.gateway), "bare-proxy": str(args.bare_proxy)}
    for t, key in [("meshgate", "gateway"), ("bare-pingora", "bare-proxy")]:
        if t in args.targets and not Path(bins[key]).is_file():
            sys.exit(f"memory.py: {bins[key]} not found (build it, or drop {t} with --targets)")
    skipped: dict[str, str] = {}
    if "pingap" in args.targets:
        path, why = run.ensure_pingap(args)  # the cached build of run.PINGAP_VERSION, or --pingap-bin
        if path:
            bins["pingap"] = path
        else:
            skipped["pingap"] = why
    if "caddy" in args.targets and not run.which("caddy"):
        skipped["caddy"] = "caddy not installed (--no-install)"
    if "bare-pingora" in args.targets and run.bare_proxy_has_threads(bins["bare-proxy"]):
        bins["bare-proxy-threads"] = "1"  # --mode defaults: --threads <CPU count>
    sources = {}
    (tmp / "bin").mkdir()
    for key in ("gateway", "bare-proxy", "pingap"):
        if key in bins and Path(bins[key]).is_file():
            sources[key] = bins[key]
            bins[key] = str(shutil.copy2(bins[key], tmp / "bin" / key))
    return bins, sources, skipped


def raise_nofile(connections: int) -> int:
    """Soft RLIMIT_NOFILE up to the hard limit: this process holds every connection, and the
    targets inherit the limit (nginx's worker needs a descriptor per client and upstream
    connection; meshgate derives its connection limit from it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < connections + 256:
        sys.exit(f"memory.py: RLIMIT_NOFILE is {soft}; {connections} connections need {connections + 256}")
    return soft


def binary_meta(path: str) -> dict:
    """What identifies a measured binary: its size, modification time and content hash."""
    p = Path(path)
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    st = p.stat()
    return {"size": st.st_size, "mtime": dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "sha256": digest.hexdigest()[:16]}


def machine_meta(args, bins: dict, sources: dict[str, str], nofile: int) -> dict:
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        thp = None
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    try:
        tools = {k: v for k, v in run.tool_versions(args.targets, bins).items() if k not in ("wrk", "k6")}
    except (IndexError, TypeError):  # run.py's list includes wrk and k6, which this script does not need
        tools = {}
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": model, "cpus": os.cpu_count(), "kernel": platform.release(),
        "memory_mib": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20,
        "transparent_hugepage": thp,
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "script_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=run.ROOT, capture_output=True,
                                        text=True).stdout.strip() or None,
        "binaries": {k: {"path": src, **binary_meta(bins[k])} for k, src in sources.items()},
        "tools": tools,
        "modes": args.modes, "repeat": args.repeat, "connections": args.connections, "in_flight": IN_FLIGHT,
        "idle_seconds": args.idle_seconds, "nofile": nofile, "targets": args.targets,
    }


# --------------------------------------------------------------------------------------------
# Summary and report
# --------------------------------------------------------------------------------------------


def summarize(runs: list[dict], modes: list[str], targets: list[str]) -> dict:
    """Per mode and target: median/min/max (run.spread) of each reading over the repeats that
    completed, the number of repeats that failed, and connections the proxy closed."""
    out: dict = {}
    for mode in modes:
        out[mode] = {}
        for t in targets:
            rows = [r for r in runs if r["mode"] == mode and r["target"] == t]
            ok = [r for r in rows if "error" not in r]
            s = {f"idle_{k}_kib": run.spread([r["idle_kib"][k] for r in ok]) for k in ("rss", "anon", "file")}
            s.update({f"conns_{k}_kib": run.spread([r["conns_kib"][k] for r in ok]) for k in ("rss", "anon", "file")})
            s["delta_kib"] = run.spread([r["delta_kib"] for r in ok])
            s["kib_per_conn"] = run.spread([r["kib_per_conn"] for r in ok])
            s["anon_kib_per_conn"] = run.spread([r["anon_kib_per_conn"] for r in ok])
            s["processes"] = max((r["conns_kib"]["processes"] for r in ok), default=None)
            # A connection closed before the reading is still closed after it: closed_after has both.
            s["closed_by_proxy"] = max((sum(r["closed_after"].values()) for r in ok), default=0)
            s["errors"] = [r["error"] for r in rows if "error" in r]
            s["unsettled"] = sum(1 for r in ok if not r["idle_settled"])
            out[mode][t] = s
    return out


def mib(s: dict | None) -> str:
    return run.fmt_spread(s, 1, 1 / 1024)


def split(s: dict, prefix: str) -> str:
    """Medians of the anon and file parts, MiB."""
    a, f = s[f"{prefix}_anon_kib"], s[f"{prefix}_file_kib"]
    return f"{a['median'] / 1024:.1f} / {f['median'] / 1024:.1f}" if a and f else "–"


def markdown(result: dict) -> str:
    meta, n = result["meta"], result["meta"]["connections"]
    gw = meta["binaries"].get("gateway")
    lines = [
        f"## Memory: idle, and with {n:,} idle keep-alive connections — {meta['date']}", "",
        f"Machine: {meta['cpu_model']}, {meta['cpus']} CPUs, {meta['memory_mib']:,} MiB, Linux {meta['kernel']}, "
        f"transparent huge pages `{meta['transparent_hugepage']}`; load average at start {meta['loadavg_start']}. "
        f"{meta['repeat']} repeat(s), each target restarted per repeat; cells are median (min–max). "
        f"RSS is VmRSS summed over the process tree; anon / file are the medians of RssAnon and RssFile (file: "
        f"mostly the binary's text, which depends on the page cache). Connections: {n:,}, each one `GET /1k` "
        f"answered in full, then idle {meta['idle_seconds']:g} s before the reading."
        + (f" Gateway binary: sha256 {gw['sha256']}, built {gw['mtime']}." if gw else ""), "",
    ]
    for t, why in meta.get("skipped", {}).items():
        lines += [f"⚠ {t} skipped: {why.splitlines()[0]}", ""]
    lines += [f"| target | mode | RSS idle MiB | idle anon / file MiB | RSS with {n:,} conns MiB | anon / file MiB "
              "| Δ MiB | KiB per conn | anon KiB per conn |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for mode, per in result["summary"].items():
        for t, s in per.items():
            notes = ""
            if s["closed_by_proxy"]:
                notes += f" ⚠ closed {s['closed_by_proxy']} of {n:,}"
            if s["errors"]:
                notes += f" ⚠ {len(s['errors'])} failed"
            if s["unsettled"]:
                notes += " (idle RSS still moving)"
            lines.append(f"| {t}{notes} | {mode} | {mib(s['idle_rss_kib'])} | {split(s, 'idle')} "
                         f"| {mib(s['conns_rss_kib'])} | {split(s, 'conns')} | {mib(s['delta_kib'])} "
                         f"| {run.fmt_spread(s['kib_per_conn'], 1)} | {run.fmt_spread(s['anon_kib_per_conn'], 1)} |")
    goal = result["summary"].get("defaults", {}).get("meshgate", {}).get("idle_rss_kib")
    if goal:
        value = goal["median"] / 1024
        lines += ["", f"Issue 18, item 6: meshgate RSS idle at defaults {value:.1f} MiB against ≤ 16 MiB: "
                  f"{'met' if value <= 16 else 'not met'} (reported, not enforced)."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                    help=f"comma list from: {', '.join(DEFAULT_TARGETS)} (default all)")
    ap.add_argument("--mode", choices=["one-worker", "defaults", "both"], default="defaults",
                    help="run.py's modes: defaults (each proxy as shipped, the default), one-worker, or both")
    ap.add_argument("--repeat", type=int, default=3, help="restarts of each target (default 3)")
    ap.add_argument("--connections", type=int, default=CONNECTIONS, help=f"idle connections (default {CONNECTIONS})")
    ap.add_argument("--idle-seconds", type=float, default=IDLE_SECONDS,
                    help=f"idle time before the reading with connections open (default {IDLE_SECONDS:g})")
    ap.add_argument("--gateway", type=Path, default=run.ROOT / "target/release/gateway",
                    help="the meshgate binary (default target/release/gateway; nothing is built)")
    ap.add_argument("--bare-proxy", type=Path, default=run.ROOT / "target/release/bare-proxy",
                    help="the bench/bare-proxy binary (default target/release/bare-proxy)")
    ap.add_argument("--pingap-bin", type=Path, default=None,
                    help=f"a pingap binary (default: run.py's cached build of {run.PINGAP_VERSION})")
    ap.add_argument("--pingap-build-timeout", type=int, default=5400,
                    help="as run.py: give up building pingap after this many seconds and skip it")
    ap.add_argument("--no-install", action="store_true", help="do not install missing tools")
    ap.add_argument("--out", type=Path, help="write the JSON results here")
    ap.add_argument("--md", type=Path, help="also write the markdown table here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs)")
    args = ap.parse_args()
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in args.targets:
        if t not in run.TARGETS or t == "direct":
            ap.error(f"unknown target {t}")
    args.modes = run.MODES if args.mode == "both" else [args.mode]
    if args.repeat < 1 or args.connections < 1:
        ap.error("--repeat and --connections must be positive")
    # Opening the connections takes a second or two, the reading follows the idle wait: the first
    # connection must still be inside every proxy's keep-alive timeout then.
    if args.idle_seconds > SHORTEST_KEEPALIVE_TIMEOUT / 2:
        ap.error(f"--idle-seconds must stay well below the shortest keep-alive timeout ({SHORTEST_KEEPALIVE_TIMEOUT:g} s)")
    return args


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    nofile = raise_nofile(args.connections)  # before any target starts: they inherit it
    ensure_tools(args.targets, not args.no_install)
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-memory-"))
    try:
        bins, sources, skipped = prepare_bins(args, tmp)
        for t, why in skipped.items():
            run.log(f"skipping {t}: {why}")
            args.targets.remove(t)
        meta = machine_meta(args, bins, sources, nofile)
        meta["skipped"] = skipped
        run.make_certificate(tmp)  # every simple config has a TLS listener, so start_target needs it
        runs = [row for mode in args.modes for row in run_mode(mode, args, tmp, bins)]
    finally:
        if args.keep:
            run.log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    meta["elapsed_seconds"] = round(time.monotonic() - started, 1)
    result = {"meta": meta, "summary": summarize(runs, args.modes, args.targets), "runs": runs}
    md = markdown(result)
    print(md)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md + "\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    run.log(f"done in {meta['elapsed_seconds']} s")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
