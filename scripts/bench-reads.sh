#!/usr/bin/env bash
# The read figures alone, for a change on the request path: GET info and GET gpus under wrk
# (1 thread, 8 connections, 10 s), for each server binary given, next to a bare axum handler,
# without and with a token. Compare the tree before a change and after it:
#
#   git worktree add /tmp/before HEAD~1 && CARGO_TARGET_DIR=/tmp/before-target \
#     cargo build --release -p gpu-replica-cli --manifest-path /tmp/before/Cargo.toml
#   scripts/bench-reads.sh /tmp/before-target/release/gpu-replica target/release/gpu-replica
#
# With no argument it measures target/release/gpu-replica. Needs Docker and wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null; }
cargo build -q --release -p gpu-replica-cli
cargo build -q --release --example bench_image --example hello
[ $# -gt 0 ] || set -- target/release/gpu-replica
examples=target/release/examples
work=$(mktemp -d -t gpu-replica-reads.XXXXXX)
label=io.gpu-replica.bench=1
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ids=$(docker ps -aq --filter label=$label); [ -z "$ids" ] || docker rm -f $ids >/dev/null
  docker rmi -f gpu-replica-bench/img:2MB >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
load() { # url [token] -> "requests/s p99-ms"
  local auth=()
  [ -z "${2:-}" ] || auth=(-H "Authorization: Bearer $2")
  wrk -t1 -c8 -d10s --latency "${auth[@]}" "$1" | python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
scale = {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
print(f"{rps:.0f} {float(p99.group(1)) * scale:.2f}")'
}

"$examples/bench_image" gpu-replica-bench/img:2MB 0 >/dev/null
hello_addr=127.0.0.1:$(port)
"$examples/hello" "$hello_addr" & pids+=($!)
until curl -sf "http://$hello_addr/" >/dev/null; do sleep 0.01; done
read -r hello_rps hello_p99 < <(load "http://$hello_addr/")
echo "| server | request | req/s | p99 ms | of bare axum ($hello_rps req/s) |"
echo "|---|---|---|---|---|"
n=0
for bin in "$@"; do
  n=$((n + 1))
  for token in "" "reads-token"; do
    addr=127.0.0.1:$(port)
    args=()
    [ -z "$token" ] || args=(--token "$token")
    "$bin" serve --addr "$addr" --data-dir "$work/data-$n-${token:-none}" --gpus fake:8 --gpu-attach env \
      --stop-timeout 0 --port-range 48200-48399 --label $label --log-level warn "${args[@]}" \
      >"$work/server-$n.log" 2>&1 &
    server=$!; pids+=($server)
    until curl -sf "http://$addr/ping" >/dev/null; do sleep 0.01; done
    curl -sf -XPOST ${token:+-H "Authorization: Bearer $token"} "http://$addr/api/v1/replicaSet" \
      -d '{"imageName":"gpu-replica-bench/img:2MB","replicaSetName":"benchreads","gpuCount":2}' >/dev/null
    for path in /api/v1/replicaSet/benchreads /api/v1/resources/gpus; do
      read -r rps p99 < <(load "http://$addr$path" "$token")
      echo "| $bin | GET $path${token:+ (token)} | $rps | $p99 | $(python3 -c "print(f'{$rps / $hello_rps * 100:.0f}')")% |"
    done
    curl -sf -XDELETE ${token:+-H "Authorization: Bearer $token"} "http://$addr/api/v1/replicaSet/benchreads" >/dev/null
    kill "$server"; wait "$server" 2>/dev/null || true
  done
done
echo
echo "machine: $(nproc) cores; wrk -t1 -c8 -d10s"
