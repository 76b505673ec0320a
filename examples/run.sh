#!/usr/bin/env bash
# Runs one example end to end on this machine: its upstreams (one per Pod / ServiceEntry
# endpoint in the YAML) and the gateway serving the example's folder.
#   examples/run.sh demoapp [gateway flags...]     then the curl from the example's README
#
# Gateway port 80 is served on 127.0.0.1:8080 here (not 0.0.0.0:8080 as in a pod): the
# stand-in pods listen on 127.0.0.x:8080 like the seed's containers, and Linux does not let a
# wildcard listener share a port with them. Pass --port-map 80=ADDR to choose another address.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
name=${1:-demoapp}
shift || true
dir="$here/$name"
[ -d "$dir" ] || { echo "no example named $name (have: $(ls -d "$here"/*/ | xargs -n1 basename | tr '\n' ' '))" >&2; exit 2; }
cd "$here/.."
# Two builds, not one: built together, the test crate's features of shared dependencies (hyper's
# http2, say) would change the gateway's symbol names and undo its link order (gateway/build.rs).
cargo build --release -q -p gateway
cargo build --release -q -p meshgate-e2e --bin upstreams
./target/release/upstreams "$dir" &
upstreams=$!
./target/release/gateway --config "$dir" --port-map 80=127.0.0.1:8080 "$@" &
gateway=$!
trap 'kill $gateway $upstreams 2>/dev/null || true; wait' INT TERM EXIT
wait $gateway
