#!/usr/bin/env python3
"""Makes gateway/link/order.txt: the functions a gateway runs, which gateway/build.rs hands to
lld (`--symbol-ordering-file`) so that they sit together at the start of the release binary's
text (see docs/benchmarks.md, "Memory": the idle gateway's resident text is what it executed
plus the kernel's fault-around neighbours; spread out, ~2.5 MiB of executed code kept ~10.6 MiB
of text resident).

    python3 tests/load/orderfile.py              # runs target/release/gateway, writes the list
    python3 tests/load/orderfile.py --replica target/replica/release/gateway   # and the replica's
    python3 tests/load/orderfile.py --check      # how much of the list the current binary has

Each run starts the release gateway under `valgrind --tool=callgrind --demangle=no` (symbol
names as the linker knows them) behind run.py's upstream nginx, at its defaults (a worker per
CPU, HTTP on port 80 and HTTPS on 443) and drives what a serving gateway does, dumping
callgrind's counts after each phase: start-up, HTTP/1.1 keep-alive and new connections,
readiness and metrics probes, HTTPS, h2c, h2 over TLS, the admin pages, a config change. The
runs (RUNS below) cover both request loops, the access log off, to a file and to stdout,
run.py's one-route and realistic configs (the matchers), and examples/bookinfo with its
upstreams. With --replica, one more run has the replica build (`cargo build --release -p
gateway --no-default-features`, the Helm chart's; build it with CARGO_TARGET_DIR=target/replica
to keep target/release/gateway the default build) take its snapshots from
target/release/controller: its `gateway` crate's symbols differ from the default build's, so
the list carries both. The list's groups (GROUPS below) keep each optional path together.
Symbol names carry hashes of the dependency graph and its features (and ThinLTO's promoted
locals, `.llvm.<hash>`, one of their module's code), so the list is remade when dependencies or
features change, or when code changes have worn it down; a stale list only loses the layout
(the `--check` figure drops), never behaviour.
"""
from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402  (the benchmark runner: upstream, configs, helpers)

RELEASE = R.ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "release"
ORDER = R.ROOT / "gateway" / "link" / "order.txt"
STEADY_REQUESTS = 300


def text_symbols(binary: Path) -> set[str]:
    out = subprocess.run(["nm", "--defined-only", str(binary)], capture_output=True, text=True, check=True).stdout
    return {p[2] for p in (line.split() for line in out.splitlines()) if len(p) == 3 and p[1] in "tT"}


def exclusive_costs(path: Path) -> dict[str, int]:
    """Exclusive instruction counts per function name from a callgrind output file (names
    compressed as `fn=(id) name` on first use; a `calls=` line's next line is the callee's
    inclusive cost, not the caller's own)."""
    names: dict[str, str] = {}
    costs: dict[str, int] = {}
    current = None
    skip = False
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("fn="):
            m = re.match(r"fn=\((\d+)\)(?: (.*))?$", line)
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                current = names.get(m.group(1))
            else:
                current = line[3:]
            costs.setdefault(current, 0)
            continue
        if line.startswith("cfn="):
            m = re.match(r"cfn=\((\d+)\) (.*)$", line)
            if m:
                names[m.group(1)] = m.group(2)
            continue
        if line.startswith("calls="):
            skip = True
            continue
        if skip:
            skip = False
            continue
        if current is not None and (line[:1].isdigit() or line[:1] in "+-*"):
            parts = line.split()
            if len(parts) >= 2:
                costs[current] += int(parts[1])
    return costs


def h2load(url: str, n: int) -> None:
    r = subprocess.run([R.which("h2load"), f"-n{n}", "-c1", "-H", f":authority: {R.HOST}", url],
                       capture_output=True, text=True, timeout=300)
    res = R.parse_h2load(r.stdout) if r.returncode == 0 else None
    if not res or res["requests"] != n or res["errors"] or res["non2xx"]:
        raise RuntimeError(f"h2load {url}:\n{r.stdout}{r.stderr}")


def keep_alive(port: int, n: int, tls: bool = False) -> None:
    conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=120, context=ssl._create_unverified_context())
            if tls else http.client.HTTPConnection("127.0.0.1", port, timeout=120))
    for i in range(n):
        path = "/64k" if i % 10 == 0 else "/1k"
        conn.request("GET", path, headers={"Host": R.HOST})
        resp = conn.getresponse()
        if resp.read() != R.www_body(path) or resp.status != 200:
            raise RuntimeError(f"unexpected answer from port {port}: {resp.status}")
    conn.close()


# Groups of the list, in layout order. A function goes to the first group whose phase ran it,
# so what every gateway runs (HTTP/1 through Pingora's loop, the probes, then start-up) comes
# first, the request path's hottest functions at the very start, and
# each optional path (TLS, HTTP/2, the admin pages, a change, the own loop) is one contiguous
# stretch after it: a gateway that never takes that path leaves the whole stretch untouched
# rather than having its pages pulled in as neighbours of what it does run.
GROUPS = ["http1", "probes", "start", "tls", "h2c", "h2-tls", "admin", "change", "own-loop"]
# Runs: (name, config, access log, request loop). The phases of the own loop's run all count as
# "own-loop". The last run is the README's bookinfo example (its upstreams from
# target/release/upstreams): its Istio samples' resources and the HTTP/1 path, the way
# `examples/run.sh` serves it.
RUNS = [("pingora-simple", "simple", "off", "pingora"), ("pingora-realistic", "realistic", "file", "pingora"),
        ("own-simple", "simple", "stdout", "own"), ("bookinfo", "bookinfo", "off", "pingora")]


def one_run(work: Path, binary: Path, upstream_port: int, config: str, access: str, loop: str,
            controller: Path | None = None) -> dict[str, Path]:
    """Runs the gateway under callgrind through the phases; returns each phase's callgrind file
    (callgrind_control dumps one at the end of each). With `controller`, the gateway is a
    replica taking its snapshots from that controller binary serving the config folder."""
    folder = work / "config"
    realistic = config == "realistic"
    example = None
    if config == "bookinfo":
        shutil.copytree(R.ROOT / "examples" / config, folder)
        example = subprocess.Popen([str(RELEASE / "upstreams"), str(folder)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    else:
        (R.meshgate_realistic_config if realistic else R.meshgate_simple_config)(folder, upstream_port)
    http, tls, status, metrics, admin = (R.free_port() for _ in range(5))
    out = work / "callgrind.out"
    env = dict(os.environ, RUST_LOG="warn", MESHGATE_REQUEST_LOOP=loop)
    access = {"file": str(work / "access.log")}.get(access, access)
    source = ["--config", str(folder)]
    served = None
    if controller:
        listen, token = R.free_port(), "orderfile-" + "t" * 16
        env["MESHGATE_TOKEN"] = token
        served = subprocess.Popen([str(controller), "--config", str(folder), "--listen", f"127.0.0.1:{listen}",
                                   "--token", token], stdout=subprocess.DEVNULL, stderr=open(work / "controller.log", "w"),
                                  env=dict(os.environ, RUST_LOG="warn"))
        source = ["--controller", f"http://127.0.0.1:{listen}"]
    argv = ["valgrind", "--tool=callgrind", "--demangle=no", "--dump-instr=no", f"--callgrind-out-file={out}",
            str(binary), *source, "--port-map", f"80=127.0.0.1:{http}",
            "--port-map", f"443=127.0.0.1:{tls}", "--status-addr", f"127.0.0.1:{status}",
            "--metrics-addr", f"127.0.0.1:{metrics}", "--admin-addr", f"127.0.0.1:{admin}",
            "--access-log", access, "--drain-seconds", "1"]
    log = work / "stderr.log"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)
    phases: list[str] = []

    def phase_done(name: str) -> None:
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        phases.append(name)

    def get(port: int, path: str) -> None:
        code, _ = R.http_get(port, path, timeout=30)
        if code != 200:
            raise RuntimeError(f"{path} answered {code}")

    try:
        R.wait_until(lambda: R.http_get(status, "/healthz/ready")[0] == 200, "gateway readiness", proc, log, 180)
        if example:
            R.wait_until(lambda: R.http_get(http, "/productpage")[0] == 200, "bookinfo's product page", proc, log, 60)
            phase_done("start")
            for _ in range(STEADY_REQUESTS // 3):
                get(http, "/productpage")
            phase_done("http1")
            for port, path in [(status, "/healthz/ready"), (metrics, "/stats/prometheus")] * 3:
                get(port, path)
            phases.append("probes")  # the rest, written when the process exits
            return finish(proc, work, out, phases, example)
        phase_done("start")
        keep_alive(http, STEADY_REQUESTS)
        for _ in range(20):
            get(http, "/1k")  # a new connection each
        phase_done("http1")
        for port, path in [(status, "/healthz/ready"), (metrics, "/stats/prometheus")] * 3:
            get(port, path)
        phase_done("probes")
        keep_alive(tls, STEADY_REQUESTS // 3, tls=True)
        phase_done("tls")
        h2load(f"http://127.0.0.1:{http}/1k", STEADY_REQUESTS // 3)
        phase_done("h2c")
        h2load(f"https://127.0.0.1:{tls}/1k", STEADY_REQUESTS // 3)
        phase_done("h2-tls")
        for path in ["/config_dump", "/clusters", "/clusters?format=json", "/certs", "/stats/prometheus", "/ready"]:
            get(admin, path)
        phase_done("admin")
        # A change: the other config in place of this one, applied when the config dump shows it.
        for f in folder.glob("*.yaml"):
            f.unlink()
        staged = work / "next"
        (R.meshgate_simple_config if realistic else R.meshgate_realistic_config)(staged, upstream_port)
        for f in staged.iterdir():
            f.rename(folder / f.name)

        def changed() -> bool:
            dump = R.http_get(admin, "/config_dump", timeout=30)[1]
            return (b"svc7" in dump) != realistic
        R.wait_until(changed, "the config change applied", proc, log, 120)
        keep_alive(http, STEADY_REQUESTS // 3)
        phases.append("change")  # the rest, written when the process exits
    finally:
        if proc.poll() is None:
            proc.terminate()
        for helper in (example, served):
            if helper:
                helper.terminate()
    return finish(proc, work, out, phases, example)


def finish(proc: subprocess.Popen, work: Path, out: Path, phases: list[str], example) -> dict[str, Path]:
    proc.terminate()
    proc.wait(timeout=300)
    if example:
        example.terminate()
        example.wait()
    dumps = sorted(work.glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:])) + [out]
    if len(dumps) != len(phases):
        raise RuntimeError(f"callgrind wrote {len(dumps)} files in {work} for {len(phases)} phases")
    return dict(zip(phases, dumps))


def is_replica(symbols: set[str]) -> bool:
    """The replica build has no controller crate in it."""
    return not any("10controller" in sym for sym in symbols)


def check(binary: Path) -> int:
    text = ORDER.read_text()
    listed = [line for line in text.splitlines() if line and not line.startswith("#")]
    have = text_symbols(binary)
    kind = "replica" if is_replica(have) else "default"
    m = re.search(rf"^# {kind} build: (\d+)", text, re.M)
    expected = int(m.group(1)) if m else len(listed)
    found = sum(1 for sym in listed if sym in have)
    print(f"{ORDER.relative_to(R.ROOT)}: {binary} ({kind} build) has {found} of the {expected} symbols "
          f"listed for it ({100 * found / max(expected, 1):.0f} %)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gateway", type=Path, default=RELEASE / "gateway", help="release gateway binary")
    ap.add_argument("--replica", type=Path, help="also the replica build (`cargo build --release -p gateway "
                    "--no-default-features`, e.g. with CARGO_TARGET_DIR=target/replica), fed by target/release/controller")
    ap.add_argument("--check", action="store_true", help="only report how much of the list the binary has")
    args = ap.parse_args()
    if args.check:
        return check(args.gateway)
    for tool in ["valgrind", "callgrind_control", "nginx", "h2load", "nm"]:
        if not shutil.which(tool):
            sys.exit(f"orderfile.py: {tool} is missing (apt-get install valgrind nginx nghttp2-client binutils)")
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-order-"))
    binary = tmp / "gateway"
    shutil.copy2(args.gateway, binary)
    runs = [(name, config, access, loop, binary, None) for name, config, access, loop in RUNS]
    if args.replica:
        shutil.copy2(args.replica, tmp / "replica-gateway")
        runs.append(("replica", "simple", "off", "pingora", tmp / "replica-gateway", RELEASE / "controller"))
    R.make_certificate(tmp)
    upstream, ports = R.start_upstream(tmp)
    costs: dict[str, dict[str, int]] = {g: {} for g in GROUPS}
    try:
        for name, config, access, loop, gateway, controller in runs:
            work = tmp / name
            work.mkdir()
            print(f"orderfile.py: {name} under callgrind in {work}", file=sys.stderr)
            for phase, path in one_run(work, gateway, ports["http"], config, access, loop, controller).items():
                # Every phase of the own loop's run: what it shares with Pingora's path is
                # placed by the other runs already (a function goes to its first group).
                group = "own-loop" if loop == "own" else phase
                for fn, c in exclusive_costs(path).items():
                    if c > 0:
                        costs[group][fn] = costs[group].get(fn, 0) + c
    finally:
        upstream.stop()
    default_syms = text_symbols(binary)
    replica_syms = text_symbols(tmp / "replica-gateway") if args.replica else set()
    have = default_syms | replica_syms
    placed: set[str] = set()
    order: list[str] = []
    sizes = []
    for group in GROUPS:
        # Within a group the hottest first: they share the fewest cache lines and pages.
        fns = sorted((fn for fn in costs[group] if fn in have and fn not in placed), key=lambda fn: (-costs[group][fn], fn))
        placed.update(fns)
        order += fns
        sizes.append(f"{group} {len(fns)}")
    ORDER.parent.mkdir(parents=True, exist_ok=True)
    # lld skips lines starting with '#' (lld/Common/Args.cpp, getLines).
    header = ["# The release gateway's link order (gateway/build.rs), made by tests/load/orderfile.py.",
              f"# default build: {sum(1 for fn in order if fn in default_syms)}"]
    if args.replica:
        header.append(f"# replica build: {sum(1 for fn in order if fn in replica_syms)}")
    ORDER.write_text("".join(f"{line}\n" for line in header + order))
    print(f"orderfile.py: wrote {ORDER.relative_to(R.ROOT)}: {len(order)} functions ({', '.join(sizes)})")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
