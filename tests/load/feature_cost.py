#!/usr/bin/env python3
"""What one feature costs per request: the same route with the feature configured against the
same route without it, in the same run, by instructions (callgrind) and by CPU time (/proc).

    python3 tests/load/feature_cost.py --list
    python3 tests/load/feature_cost.py access-log                 # one feature
    python3 tests/load/feature_cost.py header-match regex-match --top 15
    python3 tests/load/feature_cost.py --all --write-docs --gateway /tmp/helper-bins/gateway

For each feature, two configurations of the gateway are measured: "without" is the plain route
(tests/load/run.py's one-route config: a Gateway with ports 80 and 443, one VirtualService route
to a Service whose one Pod is the upstream nginx, access log off, tracing off, metrics on) and
"with" is the same plus what the feature's registry entry adds (YAML for the route, a
DestinationRule, more objects, gateway flags, or the client speaking HTTPS). Requests are
`GET /1k` with `Host: bench.local`, plus any headers the feature needs, sent on both sides.

  * instructions/request: the gateway under `valgrind --tool=callgrind --instr-atstart=no`
    (pinned to CPU 0), 200 warm-up requests, then counting on for -n requests (default 2000)
    sent one at a time over the warm-up's keep-alive connection, plus the feature's settle time
    (e.g. the span export's flush) before counting stops. Exact: the same build and config give
    the same count to within the few hundred that Pingora's wall-clock timers move.
  * CPU µs/request: as tests/load/ab.py and run.py do: the gateway pinned to CPU 0 (wrk and the
    upstream on CPU 1), a 1 s wrk warm-up, then `wrk -t1 -c16 -d<duration>` and the utime+stime
    delta of the gateway from /proc/PID/stat divided by the requests wrk completed. Without and
    with take turns (--repeat pairs, each on a fresh process); medians are reported. Noisy on a
    shared machine: read the ratio, and the instructions for small differences.

Each feature is verified to be active on every "with" process, after its measurement (a probe
that only the feature answers that way, the access-log file, the exported spans, how the
metrics split traffic over endpoints...); a feature that is not active fails the run loudly and
writes no row. `--write-docs` updates the feature's row (and the plain route's) in
docs/benchmarks.md, section "Cost of each feature". To add a feature, add one `@feature(...)`
function below (see README.md next to this file). Python 3.11, standard library only; needs
valgrind, nginx and wrk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402  (upstream, configs, pinning, wrk, /proc)
import instructions as I  # noqa: E402  (the OTLP collector stub, callgrind's per-function counts)

HOST = R.HOST
PATH = "/1k"
BODY = R.www_body(PATH)
DOCS = R.ROOT / "docs" / "benchmarks.md"
SECTION = "## Cost of each feature"
BEGIN = "<!-- feature_cost.py --write-docs: rows between these markers are rewritten -->"
END = "<!-- feature_cost.py: end of table -->"
TABLE_HEAD = [
    "| feature | configured (on top of the plain route) | instructions/request without → with (Δ, %) "
    "| CPU µs/request without → with (ratio) | date | commit |",
    "| --- | --- | --: | --: | --- | --- |",
]
PLAIN = "plain route"  # the baseline row's key
NOISY = 5.0  # % of CPU 0 used by other work during a CPU run above which the cell is flagged (as run.py)


class Inactive(Exception):
    """The feature was configured but the gateway did not act on it."""


# --------------------------------------------------------------------------------------------
# Configuration of one side
# --------------------------------------------------------------------------------------------


@dataclass
class Env:
    """What every configuration can point at, made once per run."""
    tmp: Path
    ca: str  # the CA file that signed the certificate of every TLS listener in the run
    upstream: dict[str, int]  # the runner's nginx: "http", "tls" (HTTPS, the run's certificate), "h2c"
    upstream2: int  # a second nginx (same bodies) for two-endpoint Services
    collector: I.Collector  # OTLP/HTTP stub that accepts every POST
    stall: int  # accepts connections and never answers (route timeouts)


@dataclass
class Cfg:
    """One side's gateway: its config files, flags and client. A feature's function edits the
    "with" side's Cfg, starting from the plain route."""
    env: Env
    files: dict[str, list[dict]] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)  # extra gateway flags
    access_log: bool = False  # --access-log <work>/access.log instead of off
    scheme: str = "http"  # what the client speaks: http (port 80) or https (port 443)
    headers: dict[str, str] = field(default_factory=dict)  # extra request headers
    checks: list[Callable[["Live"], None]] = field(default_factory=list)

    @property
    def vs(self) -> dict:
        return self.files["03-virtualservice.yaml"][0]

    @property
    def route(self) -> dict:
        """The benchmarked route (the last one of the VirtualService)."""
        return self.vs["spec"]["http"][-1]

    def add(self, name: str, objs: list[dict]) -> None:
        self.files[name] = objs

    def destination_rule(self, host: str, spec: dict) -> None:
        self.add(f"04-destinationrule-{host}.yaml", [
            {"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
             "metadata": {"name": host, "namespace": "default"}, "spec": {"host": host, **spec}}])

    def two_endpoints(self) -> None:
        """The upstream Service gets a second Pod (label version v2) at a second nginx, so a
        load balancer has two endpoints to choose from (one endpoint skips the choice)."""
        self.files["01-upstream.yaml"] = two_endpoint_service(self.env)

    def check(self, fn: Callable[["Live"], None]) -> None:
        """Runs on every "with" gateway after its measurement; raises Inactive if the feature did
        not run."""
        self.checks.append(fn)


def plain(env: Env) -> Cfg:
    """tests/load/run.py's one-route config (meshgate_simple_config), as objects."""
    c = Cfg(env)
    c.add("01-upstream.yaml", R.service_objs("upstream", env.upstream["http"]))
    c.add("02-gateway.yaml", [R.gateway_obj(["*"])])
    c.add("03-virtualservice.yaml", [R.virtual_service("bench", HOST, [{"name": "all", "route": [R.dest("upstream")]}])])
    return c


def two_endpoint_service(env: Env) -> list[dict]:
    def pod(i: int, port: int) -> dict:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"upstream-{i}", "namespace": "default",
                             "labels": {"app": "upstream", "version": f"v{i + 1}"}},
                "spec": {"containers": [{"name": "web", "image": "nginx",
                                         "ports": [{"containerPort": port, "name": "web"}]}]},
                "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}}
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "upstream", "namespace": "default"},
         "spec": {"selector": {"app": "upstream"},
                  "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web"}]}},
        pod(0, env.upstream["http"]), pod(1, env.upstream2),
    ]


def write_config(cfg: Cfg, folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, objs in sorted(cfg.files.items()):
        R.write_docs(folder / name, objs, f"feature_cost.py: {name}")


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Feature:
    name: str
    configured: str  # the docs table's "configured" cell
    apply: Callable[[Cfg], None]  # edits the "with" side
    headers: dict[str, str]  # request headers sent on BOTH sides (the client is the same)
    settle: float  # seconds of counting after the last request (asynchronous work of the feature)


FEATURES: dict[str, Feature] = {}


def feature(name: str, configured: str, headers: dict[str, str] | None = None, settle: float = 0.0):
    """Registers `fn(cfg)`, which turns the plain route's Cfg into the feature's and adds the
    checks that prove the feature ran."""
    def register(fn: Callable[[Cfg], None]) -> Callable[[Cfg], None]:
        if name in FEATURES or name == PLAIN:
            raise ValueError(f"feature {name} registered twice")
        FEATURES[name] = Feature(name, configured, fn, dict(headers or {}), settle)
        return fn
    return register


@feature("access-log", "`--access-log FILE`: one JSON line per request, written to a file", settle=0.5)
def _access_log(c: Cfg) -> None:
    c.access_log = True

    def lines(live: Live) -> None:
        n = len((live.work / "access.log").read_bytes().splitlines())
        if n < live.requests:
            raise Inactive(f"access.log has {n} lines for {live.requests} requests")
        dropped = live.metric("meshgate_access_log_dropped_total")
        if dropped:
            live.note(f"{dropped:.0f} access-log lines dropped")
    c.check(lines)


@feature("tracing", "`--otlp-endpoint` to a collector stub that accepts every POST, `--trace-sampling 100`: "
         "a server span per request, exported as OTLP/HTTP JSON", settle=2.0)
def _tracing(c: Cfg) -> None:
    c.args += ["--otlp-endpoint", f"http://127.0.0.1:{c.env.collector.port}/v1/traces", "--trace-sampling", "100"]

    def spans(live: Live) -> None:
        exported = live.metric("meshgate_trace_spans_exported_total")
        dropped = live.metric("meshgate_trace_spans_dropped_total")
        if exported + dropped < live.requests or not exported:
            raise Inactive(f"{exported:.0f} spans exported, {dropped:.0f} dropped, for {live.requests} requests")
        if dropped:
            live.note(f"{dropped:.0f} spans dropped (queue full)")
    c.check(spans)


def expect(status: int, why: str, **request) -> Callable[["Live"], None]:
    """A check: this probe request must get `status` (and, for the gateway's own 404/503, no body:
    the upstream's own 404 has one)."""
    def probe(live: Live) -> None:
        got, body = live.get(**request)
        if got != status or (status in (404, 503) and body):
            raise Inactive(f"{why}: expected {status}, got {got} {body[:80]!r}")
    return probe


@feature("header-match", "route `match: [{headers: {x-bench: {exact: \"on\"}}}]` (requests carry it)",
         headers={"x-bench": "on"})
def _header_match(c: Cfg) -> None:
    c.route["match"] = [{"headers": {"x-bench": {"exact": "on"}}}]
    c.check(expect(404, "a request without x-bench must match no route", headers={}))


@feature("prefix-match", "route `match: [{uri: {prefix: /1}}]`")
def _prefix_match(c: Cfg) -> None:
    c.route["match"] = [{"uri": {"prefix": "/1"}}]
    c.check(expect(404, "/2k must match no route", path="/2k"))


@feature("regex-match", "route `match: [{uri: {regex: \"/[0-9]+k\"}}]`")
def _regex_match(c: Cfg) -> None:
    c.route["match"] = [{"uri": {"regex": "/[0-9]+k"}}]
    c.check(expect(404, "/xk must match no route", path="/xk"))


@feature("route-position", "the route is the 50th of its VirtualService: 49 routes before it with "
         "`uri.prefix` matches that do not match")
def _route_position(c: Cfg) -> None:
    before = [{"name": f"r{i}", "match": [{"uri": {"prefix": f"/r{i}/"}}], "route": [R.dest("missing")]}
              for i in range(49)]
    c.vs["spec"]["http"][:0] = before
    # The earlier routes are there and checked first (their destination is no Service: 503 NC).
    c.check(expect(503, "/r7/x must take the 8th route", path="/r7/x"))


@feature("hosts-10k", "9,999 more VirtualServices, one host and route each (bench.local is one of 10,000)")
def _hosts(c: Cfg) -> None:
    c.add("05-hosts.yaml", [R.virtual_service(f"h{i:05d}", f"h{i:05d}.bench.local",
                                              [{"name": "all", "route": [R.dest("upstream")]}])
                            for i in range(9_999)])
    c.check(expect(200, "host h00003.bench.local must be served", host="h00003.bench.local"))
    c.check(expect(404, "an unknown host must find no virtual host", host="unknown.bench.local"))


@feature("route-timeout", "route `timeout: 5s` (an overall deadline, checked per body chunk); a second host whose route "
         "has `timeout: 1s` to an upstream that never answers proves timeouts are enforced (504)")
def _timeout(c: Cfg) -> None:
    c.route["timeout"] = "5s"
    # Proof the gateway enforces route timeouts from this config: a second host, with the same
    # kind of route (1 s) to an upstream that never answers, gets 504 UT.
    c.add("05-stall.yaml", R.service_objs("stall", c.env.stall) + [
        R.virtual_service("stall", "stall.bench.local", [{"name": "all", "route": [R.dest("stall")],
                                                          "timeout": "1s"}])])

    def stalls(live: Live) -> None:
        t0 = time.monotonic()
        got, _ = live.get(host="stall.bench.local", timeout=60)
        if got != 504:
            raise Inactive(f"a route with timeout 1s to an upstream that never answers got {got}, not 504")
        live.note(f"stalled upstream: 504 after {time.monotonic() - t0:.1f} s")
    c.check(stalls)


def dead_port() -> int:
    """A loopback port nothing listens on (bound and released: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def retries_proved(c: Cfg, retries: dict, expected: int) -> None:
    """Proof that the gateway acts on the route's retry policy: a second host with the same policy
    to an endpoint that refuses connections is retried `expected` times (the metric counts them)."""
    c.add("05-dead.yaml", R.service_objs("dead", dead_port()) + [
        R.virtual_service("dead", "dead.bench.local", [{"name": "all", "route": [R.dest("dead")],
                                                        "retries": retries}])])

    def retried(live: Live) -> None:
        got, _ = live.get(host="dead.bench.local")
        n = live.metric("meshgate_upstream_rq_retry_total", cluster_name="outbound|80||dead.default.svc.cluster.local")
        if got != 503 or n != expected:
            raise Inactive(f"a refused endpoint with retries {retries}: {got} after {n:.0f} retries, not {expected}")
        live.note(f"refused endpoint: {got} after {n:.0f} retries")
    c.check(retried)


@feature("retries-off", "route `retries: {attempts: 0}`: no retry policy; compare with the plain route, which "
         "has Istio's default policy (2 retries on connect-failure, refused-stream, gRPC unavailable/cancelled)")
def _retries_off(c: Cfg) -> None:
    c.route["retries"] = {"attempts": 0}
    retries_proved(c, {"attempts": 0}, 0)


@feature("retries-5xx", "route `retries: {attempts: 3, perTryTimeout: 5s, retryOn: 5xx}` (every 200 is checked "
         "against the policy)")
def _retries_5xx(c: Cfg) -> None:
    policy = {"attempts": 3, "perTryTimeout": "5s", "retryOn": "5xx"}
    c.route["retries"] = policy
    retries_proved(c, policy, 3)


@feature("fault-unfired", "route `fault: {delay: {fixedDelay: 1ms, percentage: {value: 0.0001}}}`: a draw per "
         "request that (nearly) never delays")
def _fault_unfired(c: Cfg) -> None:
    c.route["fault"] = {"delay": {"fixedDelay": "1ms", "percentage": {"value": 0.0001}}}
    # Proof faults act in this config: a second host aborts every request.
    c.add("05-abort.yaml", [R.virtual_service("abort", "abort.bench.local", [
        {"name": "all", "route": [R.dest("upstream")], "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}}}])])

    def aborts(live: Live) -> None:
        got, body = live.get(host="abort.bench.local")
        if (got, body) != (418, b"fault filter abort"):
            raise Inactive(f"a route aborting 100 % answered {got} {body[:40]!r}")
    c.check(aborts)


@feature("mirror", "route `mirror: {host: mirror}` (100 %): every request also copied to a second Service "
         "(the second nginx), its response read and discarded")
def _mirror(c: Cfg) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "mirror-0", "namespace": "default", "labels": {"app": "mirror"}},
           "spec": {"containers": [{"name": "web", "image": "nginx",
                                    "ports": [{"containerPort": c.env.upstream2, "name": "web"}]}]},
           "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}}
    c.add("01-mirror.yaml", [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "mirror", "namespace": "default"},
         "spec": {"selector": {"app": "mirror"},
                  "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web"}]}},
        pod])
    c.route["mirror"] = {"host": "mirror"}

    def copied(live: Live) -> None:
        sent = live.metric("meshgate_mirror_requests_total", outcome="sent")
        if sent < live.requests:
            raise Inactive(f"{sent:.0f} copies sent for {live.requests} requests")
        live.note(f"{sent:.0f} copies sent")
    c.check(copied)


@feature("cors", "route `corsPolicy: {allowOrigins: [{exact: https://bench.example}], allowMethods: [GET], "
         "exposeHeaders: [x-bench]}`; requests carry `Origin: https://bench.example` (an actual request: the "
         "response gets the CORS headers)")
def _cors(c: Cfg) -> None:
    c.route["corsPolicy"] = {"allowOrigins": [{"exact": "https://bench.example"}], "allowMethods": ["GET"],
                             "exposeHeaders": ["x-bench"]}
    c.headers["Origin"] = "https://bench.example"

    def decorated(live: Live) -> None:
        got = live.response_headers().get("access-control-allow-origin")
        if got != "https://bench.example":
            raise Inactive(f"access-control-allow-origin is {got!r}")
    c.check(decorated)


@feature("rewrite-uri", "route `match: [{uri: {prefix: /1}}]` with `rewrite: {uri: /1}`: the path comes out the "
         "same, through the rewrite (a new path, `x-envoy-original-path`); compare with prefix-match")
def _rewrite_uri(c: Cfg) -> None:
    c.route["match"] = [{"uri": {"prefix": "/1"}}]
    c.route["rewrite"] = {"uri": "/1"}
    # Proof on a host of its own (a route ahead of the measured one would cost its position).
    c.add("05-proof.yaml", [R.virtual_service("proof", "proof.bench.local", [
        {"name": "all", "match": [{"uri": {"prefix": "/proof/"}}], "rewrite": {"uri": "/"},
         "route": [R.dest("upstream")]}])])
    c.check(expect(200, "/proof/1k must reach the upstream as /1k", path="/proof/1k", host="proof.bench.local"))


@feature("header-edits", "route `headers`: request `set` x-bench-env, `add` x-bench-team, `remove` cookie; "
         "response `set` cache-control")
def _header_edits(c: Cfg) -> None:
    c.route["headers"] = {"request": {"set": {"x-bench-env": "prod"}, "add": {"x-bench-team": "edge"},
                                      "remove": ["cookie"]},
                          "response": {"set": {"cache-control": "no-store"}}}

    def edited(live: Live) -> None:
        got = live.response_headers().get("cache-control")
        if got != "no-store":
            raise Inactive(f"cache-control is {got!r}, not the route's no-store")
    c.check(edited)


@feature("tls-termination", "the client speaks HTTPS to the Gateway's port 443 server (`tls.mode: SIMPLE`, "
         "ECDSA P-256, TLS 1.3); the plain route has the same server and is reached on port 80")
def _tls_termination(c: Cfg) -> None:
    c.scheme = "https"

    def tls_only(live: Live) -> None:
        try:
            got, _ = live.get(scheme="http", port=live.ports["https"])
        except (OSError, http.client.HTTPException):
            return
        raise Inactive(f"plain HTTP to the TLS port answered {got}")
    c.check(tls_only)


@feature("upstream-tls", "the upstream is nginx's HTTPS port, with a DestinationRule `tls: {mode: SIMPLE, "
         "caCertificates, sni: bench.local}` (TLS 1.3 to the upstream, keep-alive)")
def _upstream_tls(c: Cfg) -> None:
    c.add("01-upstream.yaml", R.service_objs("upstream", c.env.upstream["tls"]))
    c.destination_rule("upstream", {"trafficPolicy": {"tls": {"mode": "SIMPLE", "caCertificates": c.env.ca,
                                                              "sni": HOST}}})

    def tls_port(live: Live) -> None:
        # Every measured request answered 200 with the body from a port that speaks TLS only:
        # plain HTTP there gets nginx's 400.
        got, _ = R.http_get(live.env.upstream["tls"], PATH)
        if got != 400:
            raise Inactive(f"the upstream's TLS port answered plain HTTP with {got}")
    c.check(tls_port)


def spread_over_both(why: str, exact: bool = False) -> Callable[["Live"], None]:
    """A check: the measured requests went to both endpoints (metrics by destination_version)."""
    def both(live: Live) -> None:
        v = live.versions()
        if v.get("v1", 0) == 0 or v.get("v2", 0) == 0:
            raise Inactive(f"{why}: requests per endpoint {v}")
        if exact and abs(v["v1"] - v["v2"]) > max(2, 0.01 * live.requests):
            raise Inactive(f"{why}: requests per endpoint {v} are not even")
        live.note(f"per endpoint {v}")
    return both


def hashed(probe_header: str | None) -> Callable[["Live"], None]:
    """A check: every measured request (one hash key) went to one endpoint; with `probe_header`,
    32 requests with other keys reach both."""
    def one_then_both(live: Live) -> None:
        v = live.versions()
        if len([x for x in v.values() if x]) != 1:
            raise Inactive(f"one hash key, but requests per endpoint {v}")
        if probe_header:
            for i in range(32):
                live.get(headers={probe_header: (f"session=k{i}" if probe_header == "cookie" else f"k{i}")})
            after = live.versions()
            if len([x for x in after.values() if x]) != 2:
                raise Inactive(f"32 other hash keys all went to one endpoint: {after}")
        live.note(f"per endpoint {v}")
    return one_then_both


@feature("weighted-subsets", "Service with 2 endpoints; DestinationRule subsets `v1`/`v2` (by label `version`); "
         "route to both subsets, `weight: 50` each")
def _weighted_subsets(c: Cfg) -> None:
    c.two_endpoints()
    c.destination_rule("upstream", {"subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                {"name": "v2", "labels": {"version": "v2"}}]})
    c.route["route"] = [R.dest("upstream", "v1", 50), R.dest("upstream", "v2", 50)]
    c.check(spread_over_both("weights 50/50"))


def lb(c: Cfg, policy: dict) -> None:
    c.two_endpoints()
    c.destination_rule("upstream", {"trafficPolicy": {"loadBalancer": policy}})


@feature("least-request", "Service with 2 endpoints; DestinationRule `loadBalancer.simple: LEAST_REQUEST` "
         "(the default; with one endpoint there is no choice)")
def _least_request(c: Cfg) -> None:
    lb(c, {"simple": "LEAST_REQUEST"})
    c.check(spread_over_both("LEAST_REQUEST"))


@feature("round-robin", "Service with 2 endpoints; DestinationRule `loadBalancer.simple: ROUND_ROBIN`")
def _round_robin(c: Cfg) -> None:
    lb(c, {"simple": "ROUND_ROBIN"})
    c.check(spread_over_both("ROUND_ROBIN", exact=True))


@feature("random", "Service with 2 endpoints; DestinationRule `loadBalancer.simple: RANDOM`")
def _random(c: Cfg) -> None:
    lb(c, {"simple": "RANDOM"})
    c.check(spread_over_both("RANDOM"))


@feature("hash-header", "Service with 2 endpoints; DestinationRule `consistentHash.httpHeaderName: x-user` "
         "(ring hash, 1024 entries; requests carry `x-user`)", headers={"x-user": "alice"})
def _hash_header(c: Cfg) -> None:
    lb(c, {"consistentHash": {"httpHeaderName": "x-user"}})
    c.check(hashed("x-user"))


@feature("hash-header-maglev", "as hash-header with `consistentHash.maglev: {}` (table of 65,537)",
         headers={"x-user": "alice"})
def _hash_maglev(c: Cfg) -> None:
    lb(c, {"consistentHash": {"httpHeaderName": "x-user", "maglev": {}}})
    c.check(hashed("x-user"))


@feature("hash-cookie", "Service with 2 endpoints; DestinationRule `consistentHash.httpCookie: {name: session, "
         "ttl: 3600s}` (requests carry the cookie)", headers={"cookie": "session=alice"})
def _hash_cookie(c: Cfg) -> None:
    lb(c, {"consistentHash": {"httpCookie": {"name": "session", "ttl": "3600s"}}})
    c.check(hashed("cookie"))


@feature("hash-source-ip", "Service with 2 endpoints; DestinationRule `consistentHash.useSourceIp: true`")
def _hash_source_ip(c: Cfg) -> None:
    lb(c, {"consistentHash": {"useSourceIp": True}})
    c.check(hashed(None))


# Not registered: AuthorizationPolicy / RequestAuthentication. The gateway does not enforce them
# yet; one that selects it denies every request (403, MG0010) unless `--unenforced-policy allow`,
# which lets traffic through as if it were absent. Neither is a feature with a per-request cost.


# --------------------------------------------------------------------------------------------
# Running one side
# --------------------------------------------------------------------------------------------


class Live:
    """A running gateway, for the checks."""

    def __init__(self, cfg: Cfg, ports: dict[str, int], work: Path, requests: int, notes: list[str]):
        self.cfg, self.env, self.ports, self.work, self.requests = cfg, cfg.env, ports, work, requests
        self._notes = notes

    def note(self, text: str) -> None:
        self._notes.append(text)

    def get(self, path: str = PATH, host: str = HOST, headers: dict | None = None, scheme: str | None = None,
            port: int | None = None, timeout: float = 30) -> tuple[int, bytes]:
        scheme = scheme or self.cfg.scheme
        port = port or self.ports[scheme]
        conn = connection(scheme, port, timeout)
        try:
            conn.request("GET", path, headers={"Host": host, **(self.cfg.headers if headers is None else headers)})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def response_headers(self, path: str = PATH, host: str = HOST) -> dict[str, str]:
        """The response headers of one request (lowercase names)."""
        conn = connection(self.cfg.scheme, self.ports[self.cfg.scheme], 30)
        try:
            conn.request("GET", path, headers={"Host": host, **self.cfg.headers})
            r = conn.getresponse()
            r.read()
            return {k.lower(): v for k, v in r.getheaders()}
        finally:
            conn.close()

    def metrics(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["metrics"], timeout=60)
        conn.request("GET", "/stats/prometheus")
        text = conn.getresponse().read().decode()
        conn.close()
        return text

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the series of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def versions(self) -> dict[str, int]:
        """Requests answered 200 per destination_version (v1, v2: the two endpoints)."""
        out: dict[str, int] = {}
        for line in self.metrics().splitlines():
            if line.startswith("istio_requests_total{") and 'response_code="200"' in line:
                m = re.search(r'destination_version="([^"]*)"', line)
                if m:
                    out[m.group(1)] = out.get(m.group(1), 0) + int(float(line.rsplit(" ", 1)[1]))
        return out


def connection(scheme: str, port: int, timeout: float) -> http.client.HTTPConnection:
    if scheme == "https":
        return http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout,
                                           context=ssl._create_unverified_context())
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


class Client:
    """One keep-alive connection, kept from the warm-up into the measurement."""

    def __init__(self, cfg: Cfg, ports: dict[str, int]):
        self.headers = {"Host": HOST, **cfg.headers}
        self.conn = connection(cfg.scheme, ports[cfg.scheme], 60)

    def send(self, n: int) -> None:
        for _ in range(n):
            self.conn.request("GET", PATH, headers=self.headers)
            r = self.conn.getresponse()
            body = r.read()
            if r.status != 200 or body != BODY:
                raise RuntimeError(f"got {r.status} ({len(body)} bytes) instead of 200 with the body")

    def close(self) -> None:
        self.conn.close()


def ports_for() -> dict[str, int]:
    return {k: R.free_port() for k in ("http", "https", "status", "metrics", "admin")}


def gateway_argv(binary: str, cfg: Cfg, work: Path, ports: dict[str, int]) -> list[str]:
    return [binary, "--config", str(work / "config"),
            "--port-map", f"80=127.0.0.1:{ports['http']}", "--port-map", f"443=127.0.0.1:{ports['https']}",
            "--status-addr", f"127.0.0.1:{ports['status']}", "--metrics-addr", f"127.0.0.1:{ports['metrics']}",
            "--admin-addr", f"127.0.0.1:{ports['admin']}",
            "--access-log", str(work / "access.log") if cfg.access_log else "off",
            "--threads", "1", "--drain-seconds", "1", *cfg.args]


def start(label: str, cfg: Cfg, binary: str, tmp: Path, prefix: list[str], timeout: float) -> tuple[R.Proc, Path, dict]:
    work = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=tmp))
    write_config(cfg, work / "config")
    ports = ports_for()
    proc = R.Proc(label, R.PROXY_CPU, [*prefix, *gateway_argv(binary, cfg, work, ports)], work / "stderr.log",
                  env=dict(os.environ, RUST_LOG="warn"))
    try:
        R.wait_until(lambda: R.http_get(ports["status"], "/healthz/ready")[0] == 200, f"{label} readiness",
                     proc.p, work / "stderr.log", timeout)
    except Exception:
        stop(proc, 10)
        raise
    return proc, work, ports


def stop(proc: R.Proc, timeout: float) -> None:
    if proc.p.poll() is None:
        proc.p.send_signal(signal.SIGTERM)
        try:
            proc.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.p.kill()
            proc.p.wait()
    proc.out.close()


def verify(cfg: Cfg, ports: dict, work: Path, requests: int, what: str) -> list[str]:
    notes: list[str] = []
    live = Live(cfg, ports, work, requests, notes)
    for check in cfg.checks:
        try:
            check(live)
        except Inactive as e:
            raise Inactive(f"{what}: not active: {e}") from None
    return notes


def callgrind_total(out: Path) -> int:
    """The file's `totals:` line: instructions counted while instrumentation was on (its
    `summary:` line stays 0 with --instr-atstart=no)."""
    m = re.search(r"^totals:\s*(\d+)", out.read_text(errors="replace"), re.M)
    if not m or not int(m.group(1)):
        raise RuntimeError(f"no instructions counted in {out}")
    return int(m.group(1))


def count(label: str, cfg: Cfg, settle: float, args, env: Env) -> dict:
    """Instructions per request of one side under callgrind."""
    out = env.tmp / f"callgrind.{label}.out"
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no", "--instr-atstart=no"]
    R.log(f"{label}: callgrind, {args.warmup} + {args.n} requests")
    proc, work, ports = start(label, cfg, args.gateway, env.tmp, vg, 180)
    notes: list[str] = []
    try:
        client = Client(cfg, ports)
        client.send(args.warmup)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        client.send(args.n)
        time.sleep(settle)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
        client.close()
        notes = verify(cfg, ports, work, args.warmup + args.n, label)
    finally:
        stop(proc, 180)
    return {"per_request": callgrind_total(out) / args.n, "out": str(out), "notes": notes}


def wrk_cmd(cfg: Cfg, port: int, seconds: float) -> list[str]:
    cmd = [R.which("wrk"), "-t1", f"-c{R.CONNECTIONS}", f"-d{seconds}s", "-H", f"Host: {HOST}"]
    for k, v in cfg.headers.items():
        cmd += ["-H", f"{k}: {v}"]
    return cmd + [f"{cfg.scheme}://127.0.0.1:{port}{PATH}"]


def cpu_run(label: str, cfg: Cfg, settle: float, args, env: Env) -> dict:
    """CPU µs per request of one fresh gateway process under wrk (run.py's pinning)."""
    proc, work, ports = start(label, cfg, args.gateway, env.tmp, [], 60)
    try:
        port = ports[cfg.scheme]
        status, body = Live(cfg, ports, work, 0, []).get()
        if (status, body) != (200, BODY):
            raise RuntimeError(f"{label}: answered {status} ({len(body)} bytes) before the run")
        warm = R.run_pinned(R.CLIENT_CPU, wrk_cmd(cfg, port, 1))
        cpus0, t0, (u0, s0) = R.cpu_times(), time.monotonic(), R.proc_cpu_split(proc.pid)
        r = R.run_pinned(R.CLIENT_CPU, wrk_cmd(cfg, port, args.duration))
        wall = time.monotonic() - t0
        cpus1 = R.cpu_times()
        time.sleep(settle)
        u1, s1 = R.proc_cpu_split(proc.pid)
        if r.returncode != 0 or warm.returncode != 0:
            raise RuntimeError(f"{label}: wrk failed: {r.stderr}{warm.stderr}")
        w, w0 = R.parse_wrk(r.stdout), R.parse_wrk(warm.stdout)
        if w["errors"] or w["non2xx"] or not w["requests"]:
            raise RuntimeError(f"{label}: wrk saw {w['errors']} errors, {w['non2xx']} non-2xx:\n{r.stdout}")
        notes = verify(cfg, ports, work, w["requests"] + w0["requests"], label) if cfg.checks else []
    finally:
        stop(proc, 10)
    n = w["requests"]
    busy0 = R.busy_pct(cpus0, cpus1, R.PROXY_CPU) or 0.0
    proxy_pct = 100 * (u1 - u0 + s1 - s0) / wall
    res = {"us": (u1 - u0 + s1 - s0) * 1e6 / n, "user_us": (u1 - u0) * 1e6 / n, "sys_us": (s1 - s0) * 1e6 / n,
           "rps": n / w["seconds"], "proxy_cpu_pct": proxy_pct, "cpu0_other_pct": max(0.0, busy0 - proxy_pct),
           "notes": notes}
    R.log(f"{label}: {res['us']:.2f} µs/request (user {res['user_us']:.2f}, kernel {res['sys_us']:.2f}), "
          f"{res['rps']:,.0f} req/s, proxy CPU {proxy_pct:.0f} %, other work on CPU 0 {res['cpu0_other_pct']:.1f} %"
          + "".join(f"; {x}" for x in notes))
    return res


# --------------------------------------------------------------------------------------------
# Measuring features
# --------------------------------------------------------------------------------------------


def sides(f: Feature, env: Env) -> tuple[Cfg, Cfg]:
    base, with_ = plain(env), plain(env)
    base.headers = dict(f.headers)
    with_.headers = dict(f.headers)
    f.apply(with_)
    if not with_.checks:
        raise ValueError(f"feature {f.name} has no check that it is active")
    return base, with_


def base_key(f: Feature) -> str:
    """Features whose "without" side is the same (plain route, same client, same settle) share
    one count of it."""
    return json.dumps([sorted(f.headers.items()), f.settle])


def measure(f: Feature, args, env: Env, base_counts: dict) -> dict:
    base, with_ = sides(f, env)
    res: dict = {"feature": f.name, "configured": f.configured}
    if not args.no_instructions:
        key = base_key(f)
        if key not in base_counts:
            base_counts[key] = count(f"{f.name}-without", base, f.settle, args, env)
        b, w = base_counts[key], count(f"{f.name}-with", with_, f.settle, args, env)
        res["instructions"] = {"without": b["per_request"], "with": w["per_request"], "notes": w["notes"],
                               "out": [b["out"], w["out"]]}
        R.log(f"{f.name}: {b['per_request']:,.0f} → {w['per_request']:,.0f} instructions/request"
              + "".join(f"; {x}" for x in w["notes"]))
        if args.top:
            top_differences(b["out"], w["out"], args)
    if not args.no_cpu:
        runs: dict[str, list[dict]] = {"without": [], "with": []}
        for rep in range(args.repeat):
            for side, cfg in (("without", base), ("with", with_)):
                runs[side].append(cpu_run(f"{f.name}-{side}-{rep}", cfg, f.settle, args, env))
        res["cpu"] = {side: statistics.median(r["us"] for r in rs) for side, rs in runs.items()}
        res["cpu"]["runs"] = runs
        res["cpu"]["plain_client"] = not f.headers
    return res


def top_differences(base_out: str, with_out: str, args) -> None:
    b, w = I.exclusive_counts(Path(base_out)), I.exclusive_counts(Path(with_out))
    diffs = sorted(((w.get(k, 0) - b.get(k, 0)) / args.n, k) for k in set(b) | set(w))
    print(f"  largest differences, instructions per request (exclusive, with − without):")
    for d, k in sorted(diffs, key=lambda x: -abs(x[0]))[: args.top]:
        print(f"  {d:+9,.0f}  {k[:110]}")


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def instr_cell(r: dict) -> str:
    i = r.get("instructions")
    if not i:
        return "–"
    d = i["with"] - i["without"]
    return f"{i['without']:,.0f} → {i['with']:,.0f} ({d:+,.0f}, {100 * d / i['without']:+.1f} %)"


def cpu_cell(r: dict) -> str:
    c = r.get("cpu")
    if not c:
        return "–"
    busy = max(x["cpu0_other_pct"] for rs in c["runs"].values() for x in rs)
    flag = f" ⚠ {busy:.0f} %" if busy > NOISY else ""
    return f"{c['without']:.1f} → {c['with']:.1f} ({c['with'] / c['without']:.2f}×){flag}"


def plain_row(plain_instr: float | None, plain_cpu: float | None, date: str, commit: str) -> str:
    i = f"{plain_instr:,.0f}" if plain_instr is not None else "–"
    c = f"{plain_cpu:.1f}" if plain_cpu is not None else "–"
    return (f"| {PLAIN} (baseline) | nothing: one Gateway (ports 80 and 443), one route to a one-endpoint Service; "
            f"access log off, tracing off, metrics on | {i} | {c} | {date} | {commit} |")


def row(r: dict, date: str, commit: str) -> str:
    return f"| `{r['feature']}` | {r['configured']} | {instr_cell(r)} | {cpu_cell(r)} | {date} | {commit} |"


def row_key(line: str) -> str:
    first = line.strip().strip("|").split("|")[0].strip().strip("`")
    return PLAIN if first.startswith(PLAIN) else first


SECTION_TEXT = f"""{SECTION}

What one capability costs on one route. `python3 tests/load/feature_cost.py FEATURE` measures
the plain route (run.py's one-route config: one Gateway with ports 80 and 443, one VirtualService
route to a Service whose one Pod is the upstream nginx; access log off, tracing off, metrics on)
and the same route with the feature configured, one after the other in the same run:

- **instructions/request**: callgrind's total over 2,000 keep-alive `GET /1k` sent one at a time
  after 200 warm-up requests on the same connection (so a TLS handshake is not in the count).
  This is the `totals:` line of the callgrind file, which counts every function;
  `instructions.py` sums the functions `callgrind_annotate` lists, which stop at 99 % of the
  total, so its figures read ~1 % (~900 instructions) lower for the same build. Differences
  within ~±500 are noise: which allocations take mimalloc's slow path and how often Pingora's
  wall-clock timers fire move by a few hundred between configurations and runs.
- **CPU µs/request**: the gateway's utime+stime over `wrk -t1 -c16` divided by the requests,
  gateway on CPU 0, wrk and upstream on CPU 1 (run.py's pinning); median of 3 interleaved
  pairs of 3 s runs on fresh processes. ⚠ N %: other work used up to N % of CPU 0 during a run
  (above 5 %), so the figure is noisy; on this shared machine only a large ratio means anything.

Each "with" gateway is checked to have run the feature (the probe, access-log file, span
export or per-endpoint metric named in the script); a feature that is not active fails the run
and writes no row. The plain route's row is the baseline rule: **the route with nothing
configured stays at today's cost**; compare it with the previous row's before reading the
others.

{BEGIN}
{TABLE_HEAD[0]}
{TABLE_HEAD[1]}
{END}

**Use.** `python3 tests/load/feature_cost.py --list` names the features;
`python3 tests/load/feature_cost.py access-log tracing` measures some, `--all` every one
(about a minute per feature), `--write-docs` rewrites their rows here and the plain route's,
keyed by feature name (other rows stay). `--gateway PATH` measures another build (default
`target/release/gateway`), `--commit` names it when it was not built from the checkout's HEAD,
`--top N` lists the functions whose instruction counts differ most, `--no-cpu` or
`--no-instructions` takes one figure only, and `-n`, `--repeat` and `--duration` size the runs.

**Adding a feature.** One function in `tests/load/feature_cost.py`, decorated with
`@feature(name, what-it-configures, headers=..., settle=...)`. It edits the "with" side's
config: `c.route` is the benchmarked route and `c.vs` its VirtualService, `c.add(file, objects)`
adds YAML, `c.destination_rule(host, spec)` adds a DestinationRule, `c.two_endpoints()` gives
the Service a second endpoint, `c.args` takes gateway flags, and `c.scheme = "https"` makes the
client speak TLS. It must register at least one `c.check(...)` that proves the feature ran: a
probe with `expect(status, why, ...)`, the metrics through `live.metric()` / `live.versions()`,
or files in `live.work`. `headers` are sent by the client on both sides; `settle` keeps counting
after the last request, for asynchronous work such as the span exporter's flush. Then run it
with `--write-docs` and commit the row.
"""


def write_docs(path: Path, results: list[dict], plain_instr: float | None, plain_cpu: float | None,
               date: str, commit: str) -> None:
    text = path.read_text()
    if SECTION not in text:
        anchor = "\n## Configuration at scale"
        at = text.find(anchor)
        text = (text[:at + 1] + SECTION_TEXT + "\n" + text[at + 1:]) if at >= 0 else text.rstrip() + "\n\n" + SECTION_TEXT
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        sys.exit(f"feature_cost.py: {path} has the section but not its table markers")
    lines = text[start + len(BEGIN):end].strip("\n").splitlines()
    rows = {row_key(l): l for l in lines[2:] if l.startswith("|")}
    if plain_instr is not None or plain_cpu is not None:
        rows[PLAIN] = plain_row(plain_instr, plain_cpu, date, commit)
    for r in results:
        rows[r["feature"]] = row(r, date, commit)
    order = [PLAIN, *FEATURES] + [k for k in rows if k != PLAIN and k not in FEATURES]
    body = "\n".join([*TABLE_HEAD, *(rows[k] for k in order if k in rows)])
    path.write_text(text[:start + len(BEGIN)] + "\n" + body + "\n" + text[end:])
    R.log(f"wrote {len(results)} feature row(s) to {path}")


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class Stall:
    """A TCP server that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            self.held.append(conn)


def make_certificates(tmp: Path) -> str:
    """run.py's certificate is self-signed (a CA certificate), which an upstream TLS client
    rightly refuses as a server's. Here a CA signs an ECDSA P-256 leaf for bench.local, which
    the Gateway's port 443 server and the upstream nginx's HTTPS port both serve (in R.TLS, where
    run.py's functions read it); returns the CA's file, for DestinationRule caCertificates."""
    R.make_certificate(tmp)  # tls.pem & co., replaced below
    ca_key, ca, key, csr, crt = (tmp / n for n in ("ca.key", "ca.crt", "tls.key", "tls.csr", "tls.crt"))
    ext = tmp / "leaf.ext"
    ext.write_text(f"subjectAltName=DNS:{HOST}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                   "extendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=feature-cost CA"],
                ["req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={HOST}"],
                ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", crt,
                 "-days", "2", "-extfile", ext]):
        r = subprocess.run([R.which("openssl"), *map(str, cmd)], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"openssl {cmd[0]} failed: {r.stderr}")
    (tmp / "tls.pem").write_text(crt.read_text() + key.read_text())
    R.TLS.update(crt=str(crt), key=str(key), pem=str(tmp / "tls.pem"))
    return str(ca)


def commit_of_checkout() -> str:
    r = subprocess.run(["git", "-C", str(R.ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("features", nargs="*", help="features to measure (see --list)")
    ap.add_argument("--all", action="store_true", help="measure every registered feature")
    ap.add_argument("--list", action="store_true", help="list the registered features and exit")
    ap.add_argument("--write-docs", action="store_true", help=f"update the rows in {DOCS.relative_to(R.ROOT)}")
    ap.add_argument("--docs", type=Path, default=DOCS, help="the markdown file --write-docs edits")
    ap.add_argument("--gateway", type=Path, default=I.RELEASE / "gateway", help="gateway binary (default: %(default)s)")
    ap.add_argument("--commit", help="commit the binary was built from, for the table (default: the checkout's HEAD)")
    ap.add_argument("-n", type=int, default=2000, help="counted requests per side under callgrind (default 2000)")
    ap.add_argument("--warmup", type=int, default=200, help="requests before counting (default 200)")
    ap.add_argument("--repeat", type=int, default=3, help="CPU: interleaved without/with pairs (default 3)")
    ap.add_argument("--duration", type=int, default=3, help="CPU: seconds per wrk run (default 3)")
    ap.add_argument("--top", type=int, default=0, help="print the N functions whose counts differ most")
    ap.add_argument("--no-cpu", action="store_true", help="instructions only")
    ap.add_argument("--no-instructions", action="store_true", help="CPU only")
    ap.add_argument("--nice", type=int, default=None,
                    help="nice value of every benchmark process, as run.py (default -10 as root, else 0)")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (configs, logs, callgrind files)")
    args = ap.parse_args()

    if args.list:
        width = max(map(len, FEATURES))
        for f in FEATURES.values():
            print(f"{f.name:{width}}  {f.configured}")
        return 0
    names = list(FEATURES) if args.all else args.features
    if not names:
        ap.error("name features, or --all (see --list)")
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        ap.error(f"unknown feature(s) {', '.join(unknown)}; see --list")
    if args.write_docs and (args.no_cpu or args.no_instructions):
        ap.error("--write-docs needs both figures")
    tools = ["nginx", "wrk", "taskset"] + ([] if args.no_instructions else ["valgrind", "callgrind_control"])
    missing = [t for t in tools if not R.which(t)]
    if missing:
        sys.exit(f"feature_cost.py: missing {', '.join(missing)} (apt-get install valgrind nginx wrk)")
    if not args.gateway.is_file():
        sys.exit(f"feature_cost.py: no gateway binary at {args.gateway} (build it, or pass --gateway)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("feature_cost.py: needs 2 CPUs (gateway on CPU 0, client and upstream on CPU 1)")
    if args.nice is None:
        args.nice = -10 if os.geteuid() == 0 else 0
    if args.nice:
        R.NICE[:] = ["nice", "-n", str(args.nice)]
    # This script (the callgrind client, the collector and stall stubs) stays off the gateway's CPU.
    os.sched_setaffinity(0, {int(R.CLIENT_CPU)})

    date = dt.date.today().isoformat()
    commit = args.commit or commit_of_checkout()
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-feature-cost-"))
    # A copy: a build finishing during the run changes nothing measured.
    shutil.copy2(args.gateway, tmp / "gateway")
    args.gateway = str(tmp / "gateway")
    R.log(f"gateway {commit} ({args.gateway}); work folder {tmp}")
    ca = make_certificates(tmp)
    upstream, ports = R.start_upstream(tmp)
    (tmp / "second").mkdir()
    upstream2, ports2 = R.start_upstream(tmp / "second")
    env = Env(tmp, ca, ports, ports2["http"], I.Collector(), Stall().port)
    results: list[dict] = []
    failed: list[str] = []
    base_counts: dict = {}
    plain_instr = plain_cpu = None
    try:
        for name in names:
            try:
                results.append(measure(FEATURES[name], args, env, base_counts))
            except Exception as e:  # noqa: BLE001  (one feature's failure must not hide the others')
                R.log(f"FAILED {name}: {type(e).__name__}: {e}")
                failed.append(name)
        # The baseline row: the plain route with the plain client.
        plain_feature = Feature(PLAIN, "", lambda c: None, {}, 0.0)
        if not args.no_instructions:
            key = base_key(plain_feature)
            if key not in base_counts:
                base_counts[key] = count("plain", plain(env), 0.0, args, env)
            plain_instr = base_counts[key]["per_request"]
        if not args.no_cpu:
            runs = [x["us"] for r in results if r["cpu"]["plain_client"] for x in r["cpu"]["runs"]["without"]]
            if not runs:
                runs = [cpu_run(f"plain-{rep}", plain(env), 0.0, args, env)["us"] for rep in range(args.repeat)]
            plain_cpu = statistics.median(runs)
    finally:
        upstream.stop()
        upstream2.stop()

    print(f"\n{TABLE_HEAD[0]}\n{TABLE_HEAD[1]}")
    print(plain_row(plain_instr, plain_cpu, date, commit))
    for r in results:
        print(row(r, date, commit))
    if args.out:
        args.out.write_text(json.dumps({"date": date, "commit": commit, "n": args.n, "repeat": args.repeat,
                                        "duration": args.duration, "plain": {"instructions": plain_instr,
                                                                             "cpu_us": plain_cpu},
                                        "features": results}, indent=1))
    if args.write_docs and results:
        write_docs(args.docs, results, plain_instr, plain_cpu, date, commit)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        print(f"\nNOT ACTIVE (no row written): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
