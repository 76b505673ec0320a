#!/usr/bin/env bash
# Runs one example end to end on this machine: its upstreams (one per Pod / ServiceEntry
# endpoint in the YAML) and the gateway serving the example's folder.
#   examples/run.sh demoapp        then, in another terminal, the curl from its README
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
name=${1:-demoapp}
shift || true
dir="$here/$name"
[ -d "$dir" ] || { echo "no example named $name (have: $(ls -d "$here"/*/ | xargs -n1 basename | tr '\n' ' '))" >&2; exit 2; }
cd "$here/.."
cargo build --release -q -p gateway -p meshgate-e2e
./target/release/upstreams "$dir" &
upstreams=$!
trap 'kill $upstreams 2>/dev/null || true' EXIT
exec_args=(--config "$dir" "$@")
./target/release/gateway "${exec_args[@]}"
